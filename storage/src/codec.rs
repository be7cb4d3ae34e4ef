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
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(value)?)
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
}
