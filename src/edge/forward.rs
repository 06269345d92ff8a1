//! Forwarding a finished task to the client's own webhook.
//!
//! The body is the task's data, the same JSON Kling's callback carries, plus the `tenant`
//! that created the task, signed the Standard Webhooks way with the client's own secret
//! (derived from `PROXY_WEBHOOK_SECRET` and the client's name). The message id is the same on every
//! attempt (`msg_{task_id}_{status}`) so a receiver can drop duplicates; a `succeed` whose
//! audios Kling has not reported yet goes out as `..._partial`, and the complete one later
//! under its own id. Attempts follow
//! `crate::task::FORWARD_BACKOFF_MS` inside the request's `wait_until` (which the runtime
//! keeps alive for 30 s after the response); the outcome is recorded on the task.
//!
//! The guarantee is at least once *attempt* per final state while the worker is reachable:
//! a receiver down for longer than the attempts span is recorded as `failed`, not retried
//! later. (A Cloudflare Queue would make it durable: see the README.)

use std::time::Duration;

use worker::{console_log, Delay, Headers, Method, Request, RequestInit, RequestRedirect};

use crate::task::{forward_message_id, DeliveryState, TaskRecord, FORWARD_BACKOFF_MS, FORWARD_TIMEOUT_MS};
use crate::webhook::WebhookKey;

use super::clock;
use super::http::{fetch_with_deadline, FetchFailure};
use super::store::Store;

enum Attempt {
    Delivered(u16),
    /// Worth another attempt (5xx, 408, 429, no answer).
    Retry {
        status: Option<u16>,
        error: String,
    },
    /// The receiver refused the message (another 4xx, or a redirect): retrying cannot help.
    GiveUp {
        status: u16,
    },
}

/// Delivers the task's current state to its client webhook and records the outcome.
pub async fn deliver(store: &Store, key: &WebhookKey, task_id: &str, record: &TaskRecord) {
    let Some(url) = record.client_callback_url.as_deref() else { return };
    let body = record.forward_body();
    let key = key.for_client(record.app());
    let key = &key;
    let message_id = forward_message_id(&record.data);

    let mut attempts = 0;
    let mut outcome = Attempt::Retry { status: None, error: "not attempted".into() };
    for delay_ms in FORWARD_BACKOFF_MS {
        if delay_ms > 0 {
            Delay::from(Duration::from_millis(delay_ms)).await;
        }
        attempts += 1;
        outcome = attempt(url, key, &message_id, &body).await;
        if !matches!(outcome, Attempt::Retry { .. }) {
            break;
        }
    }

    // Re-read before writing, so a report stored meanwhile is not overwritten.
    let Ok(Some(mut latest)) = store.task(task_id).await else { return };
    let delivery = &mut latest.delivery;
    delivery.attempts = attempts;
    delivery.message_id = Some(message_id.clone());
    delivery.updated_at = Some(clock::now_ms());
    let (state, status, error) = match outcome {
        Attempt::Delivered(status) => (DeliveryState::Delivered, Some(status), None),
        Attempt::GiveUp { status } => {
            (DeliveryState::Failed, Some(status), Some(format!("the receiver answered {status}")))
        }
        Attempt::Retry { status, error } => (DeliveryState::Failed, status, Some(error)),
    };
    delivery.state = state;
    delivery.last_http_status = status;
    delivery.last_error = error;
    console_log!(
        "{}",
        serde_json::json!({"event": "forward", "task_id": task_id, "message_id": message_id, "state": state, "attempts": attempts, "http_status": status})
    );
    let _ = store.put_task(task_id, &latest).await;
}

async fn attempt(url: &str, key: &WebhookKey, message_id: &str, body: &[u8]) -> Attempt {
    let timestamp = clock::now_secs();
    let headers = Headers::new();
    let _ = headers.set("Content-Type", "application/json");
    let _ = headers.set("User-Agent", "kling-edge");
    let _ = headers.set("webhook-id", message_id);
    let _ = headers.set("webhook-timestamp", &timestamp.to_string());
    let _ = headers.set("webhook-signature", &key.sign(message_id, timestamp, body));
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_redirect(RequestRedirect::Manual)
        .with_body(Some(js_sys_bytes(body)));
    let Ok(request) = Request::new_with_init(url, &init) else {
        return Attempt::GiveUp { status: 0 };
    };
    match fetch_with_deadline(request, Duration::from_millis(FORWARD_TIMEOUT_MS)).await {
        Ok((status, _)) if (200..300).contains(&status) => Attempt::Delivered(status),
        Ok((status, _)) if status >= 500 || status == 408 || status == 429 => {
            Attempt::Retry { status: Some(status), error: format!("the receiver answered {status}") }
        }
        Ok((status, _)) => Attempt::GiveUp { status },
        Err(FetchFailure::TimedOut) => Attempt::Retry { status: None, error: "no answer in time".into() },
        Err(FetchFailure::Unreachable) => {
            Attempt::Retry { status: None, error: "the receiver was unreachable".into() }
        }
    }
}

fn js_sys_bytes(body: &[u8]) -> worker::wasm_bindgen::JsValue {
    worker::js_sys::Uint8Array::from(body).into()
}
