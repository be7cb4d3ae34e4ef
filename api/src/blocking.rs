//! Blocking reads (`wait_index`, `wait`), Consul-style: a KV read that first waits until a
//! change to its keys is applied past `wait_index`, or `wait` runs out.

use std::collections::HashMap;
use std::time::Duration;

use mirrorkv_coordinator::watch::WaitOutcome;
use mirrorkv_storage::changes::KeyFilter;

use crate::error::ApiError;
use crate::state::ApiState;

/// `wait=` as a duration: `30s`, `500ms`, `5m`, or a number of seconds; at most `max_wait_s`
/// (longer waits are shortened to it, as Consul does).
fn parse_wait(text: &str, max_wait_s: u64) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::InvalidArgument(format!(
            "wait must be a duration like 30s, 500ms or 5m (at most {max_wait_s}s), got {text:?}"
        ))
    };
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1000)
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let wait_ms = number.saturating_mul(unit_ms);
    Ok(Duration::from_millis(
        wait_ms.min(max_wait_s.saturating_mul(1000)),
    ))
}

/// A blocking read's `wait_index` and `wait`, if it asks for one.
pub fn wait_request(
    state: &ApiState,
    params: &HashMap<String, String>,
) -> Result<Option<(u64, Duration)>, ApiError> {
    let Some(wait_index) = params.get("wait_index") else {
        if params.contains_key("wait") {
            return Err(ApiError::InvalidArgument(
                "wait needs wait_index (the X-Mirrorkv-Index of the previous answer)".into(),
            ));
        }
        return Ok(None);
    };
    let wait_index: u64 = wait_index.parse().map_err(|_| {
        ApiError::InvalidArgument(format!(
            "wait_index must be a non-negative integer, got {wait_index:?}"
        ))
    })?;
    let config = &state.node.watch.config;
    let wait = match params.get("wait") {
        Some(text) => parse_wait(text, config.max_wait_s)?,
        None => Duration::from_secs(config.default_wait_s.min(config.max_wait_s)),
    };
    Ok(Some((wait_index, wait)))
}

/// Wait (at most `wait`) until a change matching `filter` is applied after `wait_index`.
pub async fn wait_for_change(
    state: &ApiState,
    filter: KeyFilter,
    wait_index: u64,
    wait: Duration,
) -> Result<WaitOutcome, ApiError> {
    let stream = state
        .node
        .watch_stream(filter, wait_index.saturating_add(1))?;
    Ok(stream.wait_for_change(wait).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_takes_units_and_is_capped() {
        assert_eq!(parse_wait("30s", 600).unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_wait("250ms", 600).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_wait("2m", 600).unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("7", 600).unwrap(), Duration::from_secs(7));
        assert!(parse_wait("1h", 600).is_err());
        assert_eq!(parse_wait("9000s", 600).unwrap(), Duration::from_secs(600));
        assert!(parse_wait("-1s", 600).is_err());
    }
}
