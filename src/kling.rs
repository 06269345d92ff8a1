//! Kling's wire format: the video-to-audio create body, and the request id of an envelope.
//!
//! Only what the worker builds itself is typed here. Kling's answers are passed on (or
//! stored) as JSON values, so a field Kling adds tomorrow reaches clients unchanged.

use serde::Serialize;

/// Kling's create body for `POST /v1/audio/video-to-audio`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CreateVideoToAudio {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound_effect_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgm_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asmr_mode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_task_id: Option<String>,
}

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
    fn create_body_omits_absent_fields() {
        let body = CreateVideoToAudio {
            video_url: Some("https://cdn.example.com/a.mp4".into()),
            asmr_mode: Some(true),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"video_url":"https://cdn.example.com/a.mp4","asmr_mode":true}"#
        );
    }

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
