//! The one place that turns values into bytes and back.
//!
//! Everything persisted (log entries, vote, state-machine records, snapshots) and everything sent
//! between nodes (raft-net frames) goes through these two functions, so the wire and disk format
//! can change in exactly one place. The format is postcard: compact, serde-based, maintained.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(#[from] postcard::Error);

/// Encode a value into a fresh byte vector.
///
/// Sized first, then written into one allocation of exactly that size: growing the vector as
/// it fills (postcard's `to_stdvec`) copied a log entry of a few KiB about ten times over.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())?;
    let encoded = postcard::serialize_with_flavor(value, Exact(Vec::with_capacity(bytes)))?;
    debug_assert_eq!(encoded.len(), bytes);
    Ok(encoded)
}

/// A postcard output that appends to a vector allocated beforehand.
struct Exact(Vec<u8>);

impl postcard::ser_flavors::Flavor for Exact {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// A stable 64-bit fingerprint of a value: FNV-1a over its encoding, hashed as it is encoded
/// (nothing is allocated). The same on every node and build that encodes the value the same way.
pub fn fingerprint<T: Serialize + ?Sized>(value: &T) -> Result<u64, CodecError> {
    Ok(postcard::serialize_with_flavor(
        value,
        Fnv1a(0xcbf2_9ce4_8422_2325),
    )?)
}

/// A postcard output that only hashes the bytes.
struct Fnv1a(u64);

impl postcard::ser_flavors::Flavor for Fnv1a {
    type Output = u64;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<u64> {
        Ok(self.0)
    }
}

/// Decode a value from bytes; trailing bytes are an error so that truncated or padded input
/// never decodes silently.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
}

/// Decode a value from the front of `bytes` and return it with the bytes after it (for a
/// record that carries an optional suffix, such as a leased key's lease id).
pub fn decode_prefix<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), CodecError> {
    Ok(postcard::take_from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes_rejected() {
        let value = (42u64, "key".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&value).unwrap();
        let back: (u64, String, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(back, value);

        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode::<(u64, String, Vec<u8>)>(&padded).is_err());
        assert!(decode::<(u64, String, Vec<u8>)>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_fingerprint_is_fnv1a_of_the_encoding() {
        let value = (42u64, "key".to_string(), vec![1u8, 2, 3]);
        let mut expected: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in encode(&value).unwrap() {
            expected = (expected ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(fingerprint(&value).unwrap(), expected);
        assert_ne!(fingerprint(&(43u64, "key", [1u8, 2, 3])).unwrap(), expected);
    }
}
