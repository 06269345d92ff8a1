//! The one error type every handler returns, and the Kling envelope it turns into.
//!
//! Kling answers every call with `{"code", "message", "request_id", "data"}`; clients written
//! for Kling already branch on `code`. The worker's own rejections therefore use the same
//! envelope and Kling's own code table (see `../shared/KLING_API.md`), so a client cannot tell
//! whether a 401 came from the edge or from Kling, and need not care.
//!
//! Messages name the field or setting and the rule that was broken. They never quote a
//! credential or a setting's value.

use serde::Serialize;

/// Kling's error codes that the worker itself answers with.
pub mod code {
    /// Authentication failed (generic).
    pub const AUTH_FAILED: u32 = 1000;
    /// The `Authorization` header is missing or empty.
    pub const AUTH_MISSING: u32 = 1001;
    /// The bearer token is not valid.
    pub const AUTH_INVALID: u32 = 1002;
    /// The bearer token is not valid yet (`nbf`).
    pub const AUTH_NOT_YET_VALID: u32 = 1003;
    /// The bearer token has expired (`exp`).
    pub const AUTH_EXPIRED: u32 = 1004;
    /// The credential has no permission for this call.
    pub const NO_PERMISSION: u32 = 1103;
    /// The request as a whole is invalid (not the value of one parameter).
    pub const INVALID_REQUEST: u32 = 1200;
    /// A parameter is invalid.
    pub const INVALID_PARAMETER: u32 = 1201;
    /// The method is not valid for this path (or the path does not exist).
    pub const INVALID_METHOD: u32 = 1202;
    /// The resource (a task) does not exist, or is not the caller's.
    pub const NOT_FOUND: u32 = 1203;
    /// Too many requests.
    pub const RATE_LIMITED: u32 = 1302;
    /// Internal error (including a misconfigured deployment).
    pub const INTERNAL: u32 = 5000;
    /// The service (Kling, seen from the edge) is unavailable.
    pub const UNAVAILABLE: u32 = 5001;
    /// The service (Kling, seen from the edge) timed out.
    pub const TIMEOUT: u32 = 5002;
}

/// An error answer: HTTP status, Kling code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: u32,
    pub message: String,
    /// One extra response header the answer needs (`Retry-After`, `Allow`).
    pub header: Option<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), header: None }
    }

    /// A parameter broke a rule: 400, code 1201, `"<field>: <rule>"`.
    pub fn bad_param(field: &str, rule: impl AsRef<str>) -> Self {
        Self::new(400, code::INVALID_PARAMETER, format!("{field}: {}", rule.as_ref()))
    }

    /// The request as a whole is unusable (not JSON, not an object...): 400, code 1200.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, code::INVALID_REQUEST, message)
    }

    pub fn auth_missing() -> Self {
        Self::new(401, code::AUTH_MISSING, "Authorization: missing; send \"Authorization: Bearer <key>\"")
    }

    pub fn auth_invalid(why: &str) -> Self {
        Self::new(401, code::AUTH_INVALID, format!("Authorization: {why}"))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(404, code::NOT_FOUND, format!("{what}: not found"))
    }

    pub fn no_route(path: &str) -> Self {
        Self::new(404, code::INVALID_METHOD, format!("path {path}: no such endpoint"))
    }

    pub fn method_not_allowed(method: &str, allow: &'static str) -> Self {
        let mut error = Self::new(
            405,
            code::INVALID_METHOD,
            format!("method {method}: not allowed here (allowed: {allow})"),
        );
        error.header = Some(("Allow", allow.to_owned()));
        error
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        // Only image-to-video bodies may be this large: their images can go as URLs instead.
        let hint = if limit_bytes > 1024 * 1024 { "; send large images as http(s) URLs" } else { "" };
        Self::new(413, code::INVALID_REQUEST, format!("body: must be at most {limit_bytes} bytes{hint}"))
    }

    pub fn rate_limited(retry_after_seconds: u32) -> Self {
        Self::new(
            429,
            code::RATE_LIMITED,
            format!("rate limit exceeded; retry after {retry_after_seconds} seconds"),
        )
        .with_retry_after(u64::from(retry_after_seconds))
    }

    /// The same error, telling the client when to try again (`Retry-After`).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.header = Some(("Retry-After", seconds.to_string()));
        self
    }

    /// The deployment is misconfigured. Names the setting, never its value.
    pub fn config(setting: &str, problem: &str) -> Self {
        Self::new(500, code::INTERNAL, format!("configuration: {setting} {problem}"))
    }

    pub fn internal(what: &str) -> Self {
        Self::new(500, code::INTERNAL, format!("internal error: {what}"))
    }

    /// A part of the deployment (storage, KV, the bucket) failed; the request may be retried.
    pub fn unavailable(what: impl std::fmt::Display) -> Self {
        Self::new(503, code::UNAVAILABLE, format!("unavailable: {what}"))
    }

    pub fn upstream_unreachable(detail: &str) -> Self {
        Self::new(502, code::UNAVAILABLE, format!("Kling could not be reached: {detail}"))
    }

    pub fn upstream_timeout(detail: &str) -> Self {
        Self::new(504, code::TIMEOUT, format!("Kling did not answer in time: {detail}"))
    }

    /// The JSON body of this error, in Kling's envelope.
    pub fn envelope(&self, request_id: &str) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            code: u32,
            message: &'a str,
            request_id: &'a str,
        }
        serde_json::to_string(&Envelope { code: self.code, message: &self.message, request_id })
            .unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {}, code {})", self.message, self.status, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn envelope_has_kling_shape() {
        let body =
            ApiError::bad_param("video_url", "must be an absolute http or https URL").envelope("req-1");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            json!({
                "code": 1201,
                "message": "video_url: must be an absolute http or https URL",
                "request_id": "req-1"
            })
        );
    }

    #[test]
    fn statuses_follow_kling_table() {
        assert_eq!(ApiError::bad_param("x", "y").status, 400);
        assert_eq!(ApiError::auth_missing().code, 1001);
        assert_eq!(ApiError::auth_invalid("unknown key").code, 1002);
        assert_eq!(ApiError::auth_invalid("unknown key").status, 401);
        assert_eq!(ApiError::not_found("task abc").status, 404);
        assert_eq!(ApiError::not_found("task abc").code, 1203);
        assert_eq!(ApiError::upstream_unreachable("x").status, 502);
        assert_eq!(ApiError::upstream_timeout("x").status, 504);
        assert_eq!(ApiError::config("PROXY_API_KEYS", "is not set").status, 500);
    }

    #[test]
    fn rate_limit_carries_retry_after() {
        let error = ApiError::rate_limited(60);
        assert_eq!((error.status, error.code), (429, 1302));
        assert_eq!(error.header, Some(("Retry-After", "60".to_owned())));
    }

    #[test]
    fn messages_escape_into_valid_json() {
        let body = ApiError::bad_param("prompt", "quote \" and newline \n").envelope("r");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["message"], "prompt: quote \" and newline \n");
    }
}
