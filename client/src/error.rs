//! `ClientError`, the one error of this crate.

use reqwest::StatusCode;

/// Why a request failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A node answered with the API's error (`{"error": {"code", "message", "retryable"}}`).
    #[error("{status}: {code}: {message}{}{}", if *.retryable { " (retryable)" } else { "" }, if *.outcome_unknown { "; outcome unknown: the write may or may not have been applied" } else { "" })]
    Api {
        status: StatusCode,
        /// The contract's error code: `not_found`, `precondition_failed`, `unavailable`, ...
        code: String,
        message: String,
        retryable: bool,
        /// A write that timed out (`"outcome": "unknown"`): it may or may not have been applied.
        outcome_unknown: bool,
        /// For `precondition_failed`: the key's `mod_index` now (`None` when it is absent).
        mod_index: Option<u64>,
    },
    /// No endpoint gave an answer that could be used; `last` is the last reason.
    #[error("no endpoint answered; last error: {last}")]
    Unreachable { last: String },
    /// A write was sent without an idempotency key and its connection broke: it may or may not
    /// have been applied, and sending it again could apply it twice.
    #[error("{endpoint}: {message} (the write may or may not have been applied)")]
    OutcomeUnknown { endpoint: String, message: String },
    /// An answer that is not what the contract says (a bug or not a mirrorkv node).
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A request this client refuses to send (an empty endpoint list, an empty key, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ClientError {
    /// May the same request succeed if sent again later?
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { retryable, .. } => *retryable,
            ClientError::Unreachable { .. } => true,
            ClientError::OutcomeUnknown { .. } | ClientError::Decode(_) => false,
            ClientError::Invalid(_) => false,
        }
    }

    /// For a write that failed with this error: may it have been applied? `false` only when it
    /// certainly was not. A 504 (the node gave up waiting) or a 500 may have applied, and so
    /// may a write whose connection broke after sending or whose answer could not be read;
    /// every other answer (400, 404, 410, 412, 413, 422, 429, 503) is given before anything is
    /// appended, and no connection means nothing was sent.
    pub fn write_may_have_applied(&self) -> bool {
        match self {
            ClientError::Api {
                status,
                outcome_unknown,
                ..
            } => {
                *outcome_unknown
                    || *status == StatusCode::GATEWAY_TIMEOUT
                    || *status == StatusCode::INTERNAL_SERVER_ERROR
            }
            ClientError::Unreachable { .. } | ClientError::Invalid(_) => false,
            ClientError::OutcomeUnknown { .. } | ClientError::Decode(_) => true,
        }
    }

    /// The API's error code, if a node answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The error of a non-success answer's body (`status` when the body is not the API's).
    pub(crate) fn from_answer(status: StatusCode, body: &[u8]) -> ClientError {
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let error = &parsed["error"];
        if !error.is_object() {
            return ClientError::Api {
                status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(body).chars().take(500).collect(),
                retryable: false,
                outcome_unknown: false,
                mod_index: None,
            };
        }
        ClientError::Api {
            status,
            code: error["code"].as_str().unwrap_or("error").to_string(),
            message: error["message"].as_str().unwrap_or("").to_string(),
            retryable: error["retryable"].as_bool() == Some(true),
            outcome_unknown: parsed["outcome"] == "unknown",
            mod_index: parsed["mod_index"].as_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_timeout_a_500_or_a_lost_answer_leaves_a_write_open() {
        let api = |status: u16, outcome_unknown: bool| ClientError::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: "x".into(),
            message: String::new(),
            retryable: false,
            outcome_unknown,
            mod_index: None,
        };
        for open in [api(504, false), api(500, false), api(503, true)] {
            assert!(open.write_may_have_applied(), "{open}");
        }
        for not_applied in [400, 404, 410, 412, 413, 422, 429, 503] {
            assert!(
                !api(not_applied, false).write_may_have_applied(),
                "{not_applied}"
            );
        }
        let lost = ClientError::OutcomeUnknown {
            endpoint: "e".into(),
            message: "reset".into(),
        };
        assert!(lost.write_may_have_applied());
        assert!(ClientError::Decode("half a body".into()).write_may_have_applied());
        let never_connected = ClientError::Unreachable {
            last: "refused".into(),
        };
        assert!(!never_connected.write_may_have_applied());
    }

    #[test]
    fn an_api_error_keeps_its_code_retry_and_outcome() {
        let body = br#"{"error":{"code":"timeout","message":"deadline passed","retryable":true},"outcome":"unknown"}"#;
        let error = ClientError::from_answer(StatusCode::GATEWAY_TIMEOUT, body);
        assert_eq!(error.code(), Some("timeout"));
        assert!(error.is_retryable());
        let text = error.to_string();
        assert!(
            text.contains("504") && text.contains("timeout: deadline passed (retryable)"),
            "{text}"
        );
        assert!(text.contains("outcome unknown"), "{text}");
    }

    #[test]
    fn a_precondition_failure_carries_the_current_mod_index() {
        let body = br#"{"error":{"code":"precondition_failed","message":"m","retryable":false},"mod_index":7}"#;
        match ClientError::from_answer(StatusCode::PRECONDITION_FAILED, body) {
            ClientError::Api {
                mod_index,
                retryable,
                ..
            } => {
                assert_eq!(mod_index, Some(7));
                assert!(!retryable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_body_that_is_not_the_api_error_is_kept_as_the_message() {
        let error = ClientError::from_answer(StatusCode::BAD_GATEWAY, b"proxy says no");
        assert_eq!(error.code(), Some("unknown"));
        assert!(error.to_string().contains("proxy says no"));
        assert!(!error.is_retryable());
    }
}
