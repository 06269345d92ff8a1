//! What the worker remembers about a task, and how new reports about it are merged.
//!
//! Kling reports a task's state three ways: the create answer, its callbacks, and query
//! answers. They can arrive late, twice, or out of order, so merging is monotonic: a report
//! that is less final (`submitted` < `processing` < `succeed`/`failed`) or older
//! (`updated_at`) than what is stored never replaces it, a final report without the audios
//! never replaces one with them, and a duplicate changes nothing. Reports are kept as
//! Kling's own JSON, so a query answered from the store has exactly Kling's shape.
//!
//! Also here: the KV key layout and the records kept under it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::validate;

/// Records expire with Kling's files: 30 days after they are written.
pub const RECORD_TTL_SECS: u64 = 30 * 24 * 60 * 60;

/// The task record, one KV entry per task (`task:{task_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The client that created the task; only it can see the task.
    pub tenant: String,
    /// The secret in the callback URL the worker gave Kling for this task.
    pub callback_token: String,
    /// The client's own webhook, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_callback_url: Option<String>,
    /// Kling's latest `data` for the task, as Kling reported it.
    pub data: Value,
    /// When the worker first learned of the task (epoch ms): orders the task list.
    pub created_at: u64,
    #[serde(default)]
    pub delivery: Delivery,
}

/// Written before a create is sent (`callback:{token}`), so a callback that arrives before
/// the create's answer is stored still finds who the task belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackTicket {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_callback_url: Option<String>,
    /// Set once the create's answer names the task; from then on the token is bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub created_at: u64,
}

impl CallbackTicket {
    /// A record for the task this ticket's callback (or create answer) reports.
    pub fn new_record(&self, token: &str, data: Value) -> TaskRecord {
        TaskRecord {
            tenant: self.tenant.clone(),
            callback_token: token.to_owned(),
            client_callback_url: self.client_callback_url.clone(),
            data,
            created_at: self.created_at,
            delivery: Delivery::default(),
        }
    }
}

/// The forwarding of a finished task to the client's webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: DeliveryState,
    /// Attempts made for the last message forwarded.
    #[serde(default)]
    pub attempts: u32,
    /// The `webhook-id` of the last message forwarded (see [`forward_message_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the state last changed (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Nothing to forward yet (or no client webhook).
    #[default]
    None,
    Delivered,
    /// Every attempt failed; `last_error` says why.
    Failed,
}

impl TaskRecord {
    /// Whether the task is final and its client webhook has not yet been sent (or given up
    /// on) this version of it. A `succeed` without audios and the same task completed are
    /// two messages, so a client that got the first also gets the second.
    pub fn needs_forwarding(&self) -> bool {
        self.client_callback_url.is_some()
            && is_final(&self.data)
            && self.delivery.message_id.as_deref() != Some(forward_message_id(&self.data).as_str())
    }
}

impl TaskRecord {
    /// The `PROXY_API_KEYS` name behind the tenant (`web` for `web` and for `web/alice`):
    /// whose webhook secret signs this task's webhooks.
    pub fn app(&self) -> &str {
        self.tenant.split('/').next().unwrap_or(&self.tenant)
    }

    /// The body of the webhook forwarded for this task: Kling's data, plus `tenant`, the
    /// client that created the task (for a browser user, `{app}/{sub}`).
    pub fn forward_body(&self) -> Vec<u8> {
        let mut body = self.data.as_object().cloned().unwrap_or_default();
        body.insert("tenant".into(), Value::String(self.tenant.clone()));
        Value::Object(body).to_string().into_bytes()
    }
}

/// KV keys. A tenant appears only as its [`tenant_shard`] (32 hex digits), so no tenant,
/// however long, can push a key past a backend's limit (KV: 512 bytes), and one tenant's
/// prefixes cannot overlap another's.
pub mod keys {
    use super::tenant_shard;

    /// Index entries sort newest first: the key carries `MAX - created_at`.
    const NEWEST_FIRST_BASE: u64 = 9_999_999_999_999;

    pub fn task(task_id: &str) -> String {
        format!("task:{task_id}")
    }

    pub fn ticket(token: &str) -> String {
        format!("callback:{token}")
    }

    pub fn external(tenant: &str, external_task_id: &str) -> String {
        format!("external:{}:{external_task_id}", tenant_shard(tenant))
    }

    pub fn index_prefix(tenant: &str) -> String {
        format!("index:{}:", tenant_shard(tenant))
    }

    pub fn index(tenant: &str, created_at_ms: u64, task_id: &str) -> String {
        let newest_first = NEWEST_FIRST_BASE.saturating_sub(created_at_ms);
        format!("{}{newest_first:013}:{task_id}", index_prefix(tenant))
    }

    /// The task id at the end of an index key (`index:{tenant}:{13 digits}:{task id}`; the
    /// tenant never contains `:`, a task id may).
    pub fn task_id_of_index(key: &str) -> Option<&str> {
        let mut parts = key.splitn(4, ':');
        let (_index, _tenant, _order) = (parts.next()?, parts.next()?, parts.next()?);
        parts.next().filter(|id| !id.is_empty())
    }
}

/// A tenant's fixed-length name in storage: the first 128 bits of its SHA-256, in hex.
pub fn tenant_shard(tenant: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::ids::hex(&Sha256::digest(tenant.as_bytes())[..16])
}

/// The task's `task_status`, if it has one.
pub fn status_of(data: &Value) -> Option<&str> {
    data.get("task_status").and_then(Value::as_str)
}

/// How final a status is: the order reports may only move forward in.
fn rank(status: Option<&str>) -> u8 {
    match status {
        Some("succeed" | "failed") => 2,
        Some("processing") => 1,
        _ => 0,
    }
}

pub fn is_final(data: &Value) -> bool {
    rank(status_of(data)) == 2
}

/// `updated_at` in epoch ms (0 when absent).
pub fn updated_at(data: &Value) -> u64 {
    data.get("updated_at").and_then(Value::as_u64).unwrap_or(0)
}

/// Whether the task's result includes at least one generated audio.
pub fn has_audios(data: &Value) -> bool {
    data.pointer("/task_result/audios").and_then(Value::as_array).is_some_and(|audios| !audios.is_empty())
}

/// A `succeed` that lacks the audios, which Kling does not promise to put in callbacks.
pub fn is_incomplete_success(data: &Value) -> bool {
    status_of(data) == Some("succeed") && !has_audios(data)
}

/// Whether the task has ended with everything it will ever report: `failed`, or `succeed`
/// with its audios. Such a task never changes again, so a replayed or forged report cannot
/// alter a finished result.
pub fn is_complete(data: &Value) -> bool {
    match status_of(data) {
        Some("failed") => true,
        Some("succeed") => has_audios(data),
        _ => false,
    }
}

/// Merges a new report into the stored one. `None` when the stored data stays as it is;
/// otherwise the new data: the stored fields overlaid with the report's top-level fields,
/// so fields a partial report (a create answer) lacks are kept.
///
/// A task moves forward only (`submitted` < `processing` < `succeed`/`failed`), and within
/// a status only to a report at least as recent (`updated_at`). Once `succeed` or `failed`
/// it never switches to the other; a `succeed` without audios takes a `succeed` with them
/// whatever its time, and a complete task never changes again.
pub fn merge(stored: &Value, incoming: &Value) -> Option<Value> {
    // A report about another task (Kling may resolve a queried id as someone's external id)
    // never touches this one.
    if is_complete(stored) || incoming.get("task_id") != stored.get("task_id") {
        return None;
    }
    let (old_rank, new_rank) = (rank(status_of(stored)), rank(status_of(incoming)));
    let completes =
        is_incomplete_success(stored) && status_of(incoming) == Some("succeed") && has_audios(incoming);
    if !completes {
        if new_rank < old_rank || (new_rank == 2 && old_rank == 2 && status_of(incoming) != status_of(stored))
        {
            return None;
        }
        if new_rank == old_rank && updated_at(incoming) < updated_at(stored) {
            return None;
        }
    }
    let mut merged = stored.as_object().cloned().unwrap_or_default();
    for (key, value) in incoming.as_object().into_iter().flatten() {
        merged.insert(key.clone(), value.clone());
    }
    let merged = Value::Object(merged);
    (merged != *stored).then_some(merged)
}

/// The `data` of a Kling success envelope (`code` 0), if the body is one.
pub fn envelope_data(body: &[u8]) -> Option<Value> {
    let mut envelope: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if envelope.get("code").and_then(Value::as_i64) != Some(0) {
        return None;
    }
    envelope.remove("data")
}

/// The task id of a task's data, if it has a valid one.
pub fn task_id_of(data: &Value) -> Option<&str> {
    data.get("task_id").and_then(Value::as_str).filter(|id| validate::task_id("task_id", id).is_ok())
}

/// The external task id of a task's data, if it has a non-empty one.
pub fn external_task_id_of(data: &Value) -> Option<&str> {
    data.pointer("/task_info/external_task_id").and_then(Value::as_str).filter(|id| !id.is_empty())
}

/// Parses a callback body: a JSON object with a valid `task_id` and a known `task_status`.
pub fn parse_callback(body: &[u8]) -> Result<Value, ApiError> {
    let data: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: must be valid JSON ({e})")))?;
    if !data.is_object() {
        return Err(ApiError::bad_request("body: must be a JSON object"));
    }
    match data.get("task_id").and_then(Value::as_str) {
        Some(id) => validate::task_id("task_id", id)?,
        None => return Err(ApiError::bad_param("task_id", "is required (a string)")),
    }
    match status_of(&data) {
        Some("submitted" | "processing" | "succeed" | "failed") => {}
        _ => {
            return Err(ApiError::bad_param(
                "task_status",
                "must be one of submitted, processing, succeed, failed",
            ))
        }
    }
    if data.get("updated_at").is_some_and(|v| !v.is_u64()) {
        return Err(ApiError::bad_param("updated_at", "must be epoch milliseconds"));
    }
    Ok(data)
}

/// The id the forwarded webhook carries: the same for every attempt of one message, so
/// receivers can drop duplicates; `msg_{task_id}_{status}`, with `_partial` for a `succeed`
/// still without its audios (the complete one follows under its own id).
pub fn forward_message_id(data: &Value) -> String {
    let task_id = data.get("task_id").and_then(Value::as_str).unwrap_or("unknown");
    let status = status_of(data).unwrap_or("unknown");
    let partial = if is_incomplete_success(data) { "_partial" } else { "" };
    format!("msg_{task_id}_{status}{partial}")
}

/// Work after a response must end within `wait_until`'s 30 s: the query that completes a
/// `succeed` (at most [`FOLLOW_UP_QUERY_TIMEOUT_MS`]), then the forwarding attempts (waits of
/// [`FORWARD_BACKOFF_MS`], each attempt at most [`FORWARD_TIMEOUT_MS`]): 4 + 11 + 4 x 3 = 27 s.
pub const FOLLOW_UP_QUERY_TIMEOUT_MS: u32 = 4_000;
pub const FORWARD_BACKOFF_MS: [u64; 4] = [0, 1_000, 3_000, 7_000];
pub const FORWARD_TIMEOUT_MS: u64 = 3_000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(status: &str, updated_at: u64) -> Value {
        json!({"task_id": "t1", "task_status": status, "updated_at": updated_at})
    }

    fn with_audios(mut data: Value) -> Value {
        data["task_result"] = json!({"audios": [{"id": "a1", "url_mp3": "https://x/a.mp3"}]});
        data
    }

    #[test]
    fn newer_and_more_final_reports_win() {
        assert_eq!(merge(&task("submitted", 1), &task("processing", 2)), Some(task("processing", 2)));
        assert_eq!(merge(&task("processing", 2), &task("succeed", 3)), Some(task("succeed", 3)));
        assert_eq!(merge(&task("processing", 2), &task("failed", 3)), Some(task("failed", 3)));
        assert_eq!(merge(&task("processing", 2), &task("processing", 5)), Some(task("processing", 5)));
    }

    #[test]
    fn older_or_less_final_reports_never_overwrite() {
        assert_eq!(merge(&task("succeed", 3), &task("processing", 9)), None);
        assert_eq!(merge(&task("processing", 3), &task("submitted", 9)), None);
        assert_eq!(merge(&task("processing", 5), &task("processing", 4)), None);
        assert_eq!(merge(&task("failed", 5), &task("submitted", 1)), None);
    }

    #[test]
    fn even_a_more_final_report_cannot_drop_the_audios() {
        let complete = with_audios(task("succeed", 5));
        assert_eq!(merge(&complete, &task("succeed", 5)), None);
        assert_eq!(merge(&complete, &task("succeed", 6)), None);
        assert_eq!(merge(&task("succeed", 5), &complete), Some(complete.clone()));
        assert_eq!(merge(&task("succeed", 5), &task("succeed", 7)), Some(task("succeed", 7)));
        assert_eq!(merge(&task("succeed", 5), &task("succeed", 4)), None);
    }

    #[test]
    fn a_complete_task_never_changes_again() {
        let complete = with_audios(task("succeed", 5));
        let mut replaced = with_audios(task("succeed", 9));
        replaced["task_result"]["audios"][0]["url_mp3"] = json!("https://evil.example.com/a.mp3");
        assert_eq!(merge(&complete, &replaced), None);
        assert_eq!(merge(&task("failed", 5), &with_audios(task("succeed", 9))), None);
        assert!(is_complete(&task("failed", 1)));
        assert!(!is_complete(&task("succeed", 1)));
        assert!(!is_complete(&task("processing", 1)));
    }

    #[test]
    fn audios_complete_a_succeed_whatever_their_time() {
        let complete = with_audios(task("succeed", 9));
        assert_eq!(merge(&task("succeed", 10), &complete), Some(complete.clone()));
    }

    #[test]
    fn succeed_and_failed_never_switch() {
        assert_eq!(merge(&task("succeed", 5), &task("failed", 9)), None);
        assert_eq!(merge(&task("failed", 5), &with_audios(task("succeed", 9))), None);
    }

    #[test]
    fn a_report_about_another_task_is_never_merged() {
        let stored = task("processing", 1);
        let mut other = with_audios(task("succeed", 9));
        other["task_id"] = json!("t2");
        assert_eq!(merge(&stored, &other), None);
        let mut nameless = task("succeed", 9);
        nameless.as_object_mut().unwrap().remove("task_id");
        assert_eq!(merge(&stored, &nameless), None);
    }

    #[test]
    fn duplicates_change_nothing() {
        let data = with_audios(task("succeed", 5));
        assert_eq!(merge(&data, &data), None);
        assert_eq!(merge(&task("submitted", 1), &task("submitted", 1)), None);
    }

    #[test]
    fn partial_reports_keep_stored_fields() {
        let stored = json!({"task_id": "t1", "task_status": "submitted", "updated_at": 1,
                            "task_info": {"external_task_id": "e1", "parent_video": {"url": "u"}}});
        let merged =
            merge(&stored, &json!({"task_id": "t1", "task_status": "processing", "updated_at": 2})).unwrap();
        assert_eq!(merged["task_info"]["parent_video"]["url"], "u");
        assert_eq!(merged["task_status"], "processing");
    }

    #[test]
    fn any_order_of_the_same_reports_ends_in_the_same_state() {
        let reports = [
            task("submitted", 1),
            task("processing", 2),
            task("succeed", 3),
            with_audios(task("succeed", 3)),
            task("processing", 2),
        ];
        let mut outcomes = std::collections::HashSet::new();
        let mut order: Vec<usize> = (0..reports.len()).collect();
        // Every permutation of five reports (Heap's algorithm).
        fn permute(
            k: usize,
            order: &mut Vec<usize>,
            reports: &[Value],
            outcomes: &mut std::collections::HashSet<String>,
        ) {
            if k == 1 {
                let mut state = reports[order[0]].clone();
                for &i in &order[1..] {
                    if let Some(next) = merge(&state, &reports[i]) {
                        state = next;
                    }
                }
                outcomes.insert(state.to_string());
                return;
            }
            for i in 0..k {
                permute(k - 1, order, reports, outcomes);
                let swap = if k.is_multiple_of(2) { i } else { 0 };
                order.swap(swap, k - 1);
            }
        }
        permute(reports.len(), &mut order, &reports, &mut outcomes);
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert!(outcomes.contains(&with_audios(task("succeed", 3)).to_string()));
    }

    #[test]
    fn callbacks_are_parsed_strictly() {
        assert!(parse_callback(br#"{"task_id":"t1","task_status":"succeed","updated_at":5}"#).is_ok());
        for (body, field) in [
            (&b"not json"[..], "body"),
            (b"[]", "body"),
            (br#"{"task_status":"succeed"}"#, "task_id"),
            (br#"{"task_id":"has space","task_status":"succeed"}"#, "task_id"),
            (br#"{"task_id":"t1","task_status":"done"}"#, "task_status"),
            (br#"{"task_id":"t1"}"#, "task_status"),
            (br#"{"task_id":"t1","task_status":"failed","updated_at":"yesterday"}"#, "updated_at"),
        ] {
            let error = parse_callback(body).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(error.message.starts_with(field), "{}", error.message);
        }
    }

    #[test]
    fn forwarding_is_needed_once_per_final_state() {
        let mut record = TaskRecord {
            tenant: "web".into(),
            callback_token: "tok".into(),
            client_callback_url: Some("https://app.example.com/hook".into()),
            data: task("processing", 1),
            created_at: 1,
            delivery: Delivery::default(),
        };
        assert!(!record.needs_forwarding());
        record.data = task("succeed", 2);
        assert!(record.needs_forwarding());
        record.delivery = Delivery {
            state: DeliveryState::Delivered,
            message_id: Some(forward_message_id(&record.data)),
            ..Delivery::default()
        };
        assert!(!record.needs_forwarding());
        record.delivery.state = DeliveryState::Failed;
        assert!(!record.needs_forwarding(), "a message given up on is not retried");
        record.data = with_audios(task("succeed", 3));
        assert!(record.needs_forwarding(), "the complete result follows a partial one");
        record.client_callback_url = None;
        record.delivery = Delivery::default();
        assert!(!record.needs_forwarding());
    }

    #[test]
    fn index_keys_sort_newest_first_and_stay_in_their_tenant() {
        let older = keys::index("web", 1_700_000_000_000, "t-old");
        let newer = keys::index("web", 1_800_000_000_000, "t-new");
        assert!(newer < older);
        assert!(older.starts_with(&keys::index_prefix("web")));
        assert!(!older.starts_with(&keys::index_prefix("we")));
        assert!(!keys::index("web/alice", 1, "t").starts_with(&keys::index_prefix("web")));
        assert_eq!(keys::task_id_of_index(&newer), Some("t-new"));
        assert_eq!(keys::task_id_of_index(&keys::index("web/alice", 5, "order:42")), Some("order:42"));
        let long_tenant = format!("web/{}", "🙂".repeat(32));
        let longest = keys::index(&long_tenant, 1, &"x".repeat(64));
        assert!(longest.len() <= 512 && keys::external(&long_tenant, &"x".repeat(64)).len() <= 512);
    }

    #[test]
    fn envelopes_and_ids() {
        let body = br#"{"code":0,"message":"SUCCEED","request_id":"r","data":{"task_id":"t1","task_info":{"external_task_id":"e1"}}}"#;
        let data = envelope_data(body).unwrap();
        assert_eq!(task_id_of(&data), Some("t1"));
        assert_eq!(external_task_id_of(&data), Some("e1"));
        assert_eq!(envelope_data(br#"{"code":1201,"message":"bad"}"#), None);
        assert_eq!(external_task_id_of(&json!({"task_info": {"external_task_id": ""}})), None);
        assert_eq!(forward_message_id(&task("succeed", 1)), "msg_t1_succeed_partial");
        assert_eq!(forward_message_id(&with_audios(task("succeed", 1))), "msg_t1_succeed");
        assert_eq!(forward_message_id(&task("failed", 1)), "msg_t1_failed");
    }
}
