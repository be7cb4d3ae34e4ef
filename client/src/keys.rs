//! The one encoding of keys in URLs: every byte but RFC 3986's unreserved characters is
//! percent-encoded, `/` included (`/v1/kv/a%2Fb` is the key `a/b`, as the contract writes it).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but `A-Z a-z 0-9 - _ . ~`.
const UNRESERVED_KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `key` as one path segment of `/v1/kv/{key}`.
pub fn key_path(key: &str) -> String {
    utf8_percent_encode(key, UNRESERVED_KEPT).to_string()
}

/// `value` as a query-string value (`prefix=`, `start=`, ...).
pub fn query_value(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED_KEPT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_stay_as_they_are() {
        assert_eq!(key_path("a/b"), "a%2Fb");
        assert_eq!(key_path("Az09-_.~"), "Az09-_.~");
        assert_eq!(key_path("a b?c#d%e&f=g+h"), "a%20b%3Fc%23d%25e%26f%3Dg%2Bh");
        assert_eq!(key_path("ключ"), "%D0%BA%D0%BB%D1%8E%D1%87");
        assert_eq!(query_value("x/y z"), "x%2Fy%20z");
    }
}
