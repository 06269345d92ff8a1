//! Delivery: forwarding a finished task to its client's webhook, at least once. The message
//! and its id (the same on every attempt, so receivers drop duplicates), the attempts and
//! their outcomes, the retry schedule they follow (`FORWARD_RETRY_SECONDS`, see
//! `crate::schedule`), and the signed request each attempt sends (Standard Webhooks, with
//! the client's own key, see `crate::links::webhook`).
//!
//! The coordinator's alarm makes the attempts (`crate::flows::coordinator`); a task's record
//! keeps its [`Delivery`] (`crate::record`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kling::task;
use crate::kling::task::Results;
use crate::links::webhook::WebhookKey;
use crate::schedule::Schedule;

/// The forwarding of a finished task to the client's webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: DeliveryState,
    /// The `webhook-id` of the message being (or last) forwarded: the same on every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Attempts made for that message.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the last attempt was made (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Nothing to forward (yet, or ever: no client webhook).
    #[default]
    None,
    /// A message waits for its next attempt.
    Pending,
    Delivered,
    /// The receiver refused the message, or every attempt of the schedule failed.
    Failed,
}

/// How one webhook attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Any 2xx.
    Delivered(u16),
    /// Worth another attempt: 5xx, 408, 429, or no answer at all.
    Retry { status: Option<u16>, error: String },
    /// The receiver refused the message (another 4xx, a redirect): retrying cannot help.
    GiveUp { status: u16 },
}

impl Attempt {
    /// The outcome of an attempt the receiver answered with `status`.
    pub fn from_status(status: u16) -> Attempt {
        match status {
            200..=299 => Attempt::Delivered(status),
            408 | 429 | 500..=599 => {
                Attempt::Retry { status: Some(status), error: format!("the receiver answered {status}") }
            }
            _ => Attempt::GiveUp { status },
        }
    }
}

/// The id a message carries: the same for every attempt of one message, so receivers can
/// drop duplicates; `msg_{task_id}_{status}`, with `_partial` for a `succeed` still without
/// its files (the complete one follows under its own id).
pub fn message_id(data: &Value, results: Results) -> String {
    let task_id = data.get("task_id").and_then(Value::as_str).unwrap_or("unknown");
    let status = task::status_of(data).unwrap_or("unknown");
    let partial = if task::is_incomplete_success(data, results) { "_partial" } else { "" };
    format!("msg_{task_id}_{status}{partial}")
}

/// The headers of one attempt: the body's type, and its Standard Webhooks signature by the
/// key of the client (`app`) that created the task.
pub fn signed_headers(
    key: &WebhookKey,
    app: &str,
    message_id: &str,
    now_ms: u64,
    body: &[u8],
) -> [(&'static str, String); 5] {
    let timestamp = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let signature = key.for_client(app).sign(message_id, timestamp, body);
    [
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", "kling-edge".to_owned()),
        ("webhook-id", message_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ]
}

impl Delivery {
    /// Queues `message_id` for its first attempt at `now`, unless that very message is
    /// already queued or done.
    pub fn queue(&mut self, message_id: String, now: u64) {
        if self.message_id.as_deref() == Some(message_id.as_str()) {
            return;
        }
        *self = Delivery {
            state: DeliveryState::Pending,
            message_id: Some(message_id),
            attempts: 0,
            next_attempt_at: Some(now),
            ..Delivery::default()
        };
    }

    /// Whether an attempt is due at `now`.
    pub fn is_due(&self, now: u64) -> bool {
        self.state == DeliveryState::Pending && self.next_attempt_at.is_some_and(|at| at <= now)
    }

    /// Records how an attempt to send `message_id` went. An attempt of a message since
    /// replaced (the complete result after a partial one) changes nothing.
    pub fn record(&mut self, message_id: &str, attempt: Attempt, now: u64, forward: &Schedule) {
        let delivery = self;
        if delivery.message_id.as_deref() != Some(message_id) || delivery.state != DeliveryState::Pending {
            return;
        }
        delivery.attempts = delivery.attempts.saturating_add(1);
        delivery.updated_at = Some(now);
        match attempt {
            Attempt::Delivered(status) => {
                delivery.state = DeliveryState::Delivered;
                delivery.last_http_status = Some(status);
                delivery.last_error = None;
                delivery.next_attempt_at = None;
            }
            Attempt::GiveUp { status } => {
                delivery.state = DeliveryState::Failed;
                delivery.last_http_status = Some(status);
                delivery.last_error = Some(format!("the receiver answered {status}"));
                delivery.next_attempt_at = None;
            }
            Attempt::Retry { status, error } => {
                delivery.last_http_status = status;
                delivery.last_error = Some(error);
                match forward.retry_delay_ms(delivery.attempts) {
                    Some(delay) => delivery.next_attempt_at = Some(now.saturating_add(delay)),
                    None => {
                        delivery.state = DeliveryState::Failed;
                        delivery.next_attempt_at = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::webhook::SignatureHeaders;
    use serde_json::json;

    const A: Results = Results::Audios;

    #[test]
    fn a_message_id_names_the_task_its_state_and_a_partial_result() {
        let video =
            json!({"task_id": "t1", "task_status": "succeed", "task_result": {"videos": [{"url": "u"}]}});
        assert_eq!(message_id(&video, Results::Videos), "msg_t1_succeed");
        assert_eq!(message_id(&video, A), "msg_t1_succeed_partial");
        let audios =
            json!({"task_id": "t1", "task_status": "succeed", "task_result": {"audios": [{"url_mp3": "u"}]}});
        assert_eq!(message_id(&audios, A), "msg_t1_succeed");
        assert_eq!(message_id(&json!({"task_id": "t1", "task_status": "failed"}), A), "msg_t1_failed");
    }

    #[test]
    fn each_attempt_is_signed_with_the_clients_key_and_verifies() {
        let key = WebhookKey::from_secret("whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=").unwrap();
        let headers = signed_headers(&key, "web", "msg_t1_failed", 1_800_000_000_123, b"{}");
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("webhook-timestamp"), Some("1800000000"));
        let signed = SignatureHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        assert!(key.for_client("web").verify(&signed, b"{}", 1_800_000_000).is_ok());
        assert!(key.for_client("ops").verify(&signed, b"{}", 1_800_000_000).is_err(), "another client's key");
    }

    #[test]
    fn attempts_follow_the_schedule_then_give_up() {
        let forward = Schedule::parse("5,300").unwrap();
        let mut delivery = Delivery::default();
        delivery.queue("m1".into(), 0);
        assert!(delivery.is_due(0));
        delivery.record("m1", Attempt::Retry { status: Some(503), error: "down".into() }, 0, &forward);
        assert_eq!((delivery.state, delivery.next_attempt_at), (DeliveryState::Pending, Some(5_000)));
        delivery.record("other", Attempt::Delivered(200), 1, &forward);
        assert_eq!(delivery.attempts, 1, "an attempt of another message changes nothing");
        delivery.queue("m1".into(), 9);
        assert_eq!(delivery.attempts, 1, "queueing the same message again changes nothing");
        delivery.record("m1", Attempt::Retry { status: None, error: "down".into() }, 5_000, &forward);
        delivery.record("m1", Attempt::Retry { status: None, error: "down".into() }, 305_000, &forward);
        assert_eq!(delivery.state, DeliveryState::Failed);
        assert!(!delivery.is_due(u64::MAX));
    }
}
