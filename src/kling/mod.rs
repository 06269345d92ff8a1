//! Kling's wire format, where the worker reads it: the request id of an envelope.
//!
//! Kling's answers are passed on (or stored) as JSON values, so a field Kling adds tomorrow
//! reaches clients unchanged; the create bodies are built from `crate::api`'s tables.

pub mod task;

/// How long Kling keeps a task and its result files: 30 days.
pub const RETENTION_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The `request_id` of a Kling envelope, if the body is one.
pub fn envelope_request_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        request_id: Option<String>,
    }
    serde_json::from_slice::<Head>(body)
        .ok()?
        .request_id
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_read_from_envelopes_only() {
        assert_eq!(
            envelope_request_id(br#"{"code":0,"request_id":"r-1","data":{}}"#).as_deref(),
            Some("r-1")
        );
        assert_eq!(envelope_request_id(b"<html>"), None);
        assert_eq!(envelope_request_id(br#"{"request_id":"bad\nid"}"#), None);
    }
}
