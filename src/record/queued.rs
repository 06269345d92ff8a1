//! A create waiting at the edge for one of its Kling account's slots (`crate::record::gate`),
//! as its tenant's coordinator keeps it until the gate sends it.
//!
//! The client was given a task id of the worker's ([`EDGE_TASK_PREFIX`]) and `submitted`
//! at once. The record keeps the whole body for Kling (its callback URL and external id
//! already in it) until Kling takes it, then drops it and keeps Kling's id beside the
//! client's (`TaskRecord::kling_task_id`). A queued create that never reached Kling ends as
//! `failed`, saying why ([`cancelled`], [`waited_too_long`], [`refused`]), and its webhook
//! says so.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The prefix of the task ids the worker gives queued creates (Kling's ids are digits).
pub const EDGE_TASK_PREFIX: &str = "ke_";

/// A create in line at its account's gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The body to send Kling, whole.
    pub body: Map<String, Value>,
    /// When it was queued (epoch ms).
    pub queued_at: u64,
    /// When it ends as failed if it has not reached Kling (`QUEUE_MAX_WAIT_SECONDS`).
    pub wait_until: u64,
    /// Since when it is being sent to Kling, until Kling's answer is known (a send whose
    /// answer never came is checked at Kling by its external id before it is sent again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_since: Option<u64>,
    /// Kling answered 1303 to it when the edge sent it with the slot it got at once: the
    /// gate must be told (its coordinator tells it as it keeps the create), so that it goes
    /// back in line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tell_refused: bool,
    /// The account useapi.net's `email` pinned it to: it waits for that account's slots only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The account the edge sent it to before Kling's 1303 at once (the gate learns that
    /// account has fewer slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
}

/// A tenant's line, as `GET /v1/queue` shows it: its creates waiting, in the order they
/// will go, and how many of its tasks Kling is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLine {
    pub waiting: Vec<WaitingTask>,
    pub running: u32,
}

/// One of a tenant's creates in line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingTask {
    pub task_id: String,
    /// Kling's path of its endpoint.
    pub endpoint: String,
    /// 1 is next.
    pub position: u32,
    pub queued_at: u64,
}

/// The task id a queued create's client gets: the worker's, from the create's nonce.
pub fn edge_task_id(nonce: &str) -> String {
    format!("{EDGE_TASK_PREFIX}{nonce}")
}

/// What a queued create reads as until Kling has it: Kling's shape, `submitted`.
pub fn waiting_data(task_id: &str, external_task_id: &str, now: u64) -> Value {
    json!({
        "task_id": task_id,
        "task_status": "submitted",
        "task_status_msg": status_message(None),
        "task_info": {"external_task_id": external_task_id},
        "created_at": now,
        "updated_at": now,
    })
}

/// The `task_status_msg` of a waiting create: where it is in line, when known.
pub fn status_message(position: Option<u32>) -> String {
    match position {
        Some(position) => format!("waiting for a free Kling slot ({} in line)", ordinal(position)),
        None => "waiting for a free Kling slot".to_owned(),
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, ... `11th`, `12th`, `13th`, `21st`.
pub fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Why a queued create that never reached Kling ended.
pub fn cancelled() -> &'static str {
    "cancelled by its client while it waited for a free Kling slot; it never reached Kling and cost nothing"
}

pub fn waited_too_long(max_wait_secs: u64) -> String {
    format!(
        "waited longer than {max_wait_secs} s for a free Kling slot (QUEUE_MAX_WAIT_SECONDS); it never reached Kling and cost nothing"
    )
}

pub fn refused(message: &str) -> String {
    format!("Kling refused the task when its turn came: {message}")
}

/// `data` ended as failed at `now` with `message`.
pub fn failed(data: &mut Value, message: &str, now: u64) {
    if let Some(object) = data.as_object_mut() {
        object.insert("task_status".into(), Value::String("failed".into()));
        object.insert("task_status_msg".into(), Value::String(message.to_owned()));
        object.insert("updated_at".into(), Value::from(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_as_english_ordinals() {
        let said: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111].map(ordinal).to_vec();
        assert_eq!(
            said,
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
        );
        assert_eq!(status_message(Some(3)), "waiting for a free Kling slot (3rd in line)");
    }

    #[test]
    fn a_waiting_create_reads_as_submitted_and_ends_failed_saying_why() {
        let mut data = waiting_data(&edge_task_id("abc"), "kling-edge-abc", 5);
        assert_eq!(data["task_id"], "ke_abc");
        assert_eq!(crate::kling::task::status_of(&data), Some("submitted"));
        assert!(crate::validate::task_id("task_id", "ke_0123456789abcdef0123456789abcdef").is_ok());
        failed(&mut data, cancelled(), 9);
        assert!(crate::kling::task::is_final(&data));
        assert_eq!(data["updated_at"], 9);
        assert!(data["task_status_msg"].as_str().unwrap().starts_with("cancelled"));
    }
}
