//! Values in JSON bodies: `"value"` when the bytes are UTF-8, `"value_base64"` otherwise. Both are
//! accepted on input; nothing is ever lossy. Pure.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mirrorkv_storage::KeyRecord;

use crate::error::ApiError;
use crate::schema::Item;

/// `bytes` as `(value, value_base64)`: exactly one is `Some`.
pub fn split_value(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(STANDARD.encode(bytes))),
    }
}

/// The JSON item of a key: `key`, the value (unless `keys_only`), `mod_index`, `create_index`.
pub fn item(key: &str, record: &KeyRecord, keys_only: bool) -> Item {
    let (value, value_base64) = match keys_only {
        true => (None, None),
        false => split_value(&record.value),
    };
    Item {
        key: key.to_string(),
        value,
        value_base64,
        mod_index: record.mod_index,
        create_index: record.create_index,
    }
}

/// The bytes of an input value given as `value` or `value_base64` (exactly one).
pub fn decode_value(
    value: Option<String>,
    value_base64: Option<String>,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    match (value, value_base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(encoded)) => STANDARD.decode(encoded.as_bytes()).map_err(|e| {
            ApiError::InvalidArgument(format!("{what}: value_base64 is not base64: {e}"))
        }),
        (Some(_), Some(_)) => Err(ApiError::InvalidArgument(format!(
            "{what}: give value or value_base64, not both"
        ))),
        (None, None) => Err(ApiError::InvalidArgument(format!(
            "{what}: value or value_base64 is required"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_as_text_binary_as_base64_and_back() {
        let record = KeyRecord {
            value: vec![0xff, 0x00, 0x41],
            mod_index: 3,
            create_index: 2,
        };
        let binary = serde_json::to_value(item("k", &record, false)).unwrap();
        assert_eq!(binary["value_base64"], "/wBB");
        assert!(binary.get("value").is_none());
        let decoded = decode_value(None, Some("/wBB".into()), "t").unwrap();
        assert_eq!(decoded, record.value);

        let text = serde_json::to_value(item(
            "k",
            &KeyRecord {
                value: "héllo".into(),
                mod_index: 1,
                create_index: 1,
            },
            false,
        ))
        .unwrap();
        assert_eq!(text["value"], "héllo");
        let bare = item("k", &record, true);
        assert!(bare.value_base64.is_none() && bare.value.is_none());
        assert!(decode_value(Some("a".into()), Some("YQ==".into()), "t").is_err());
        assert!(decode_value(None, None, "t").is_err());
        assert!(decode_value(None, Some("!!".into()), "t").is_err());
    }
}
