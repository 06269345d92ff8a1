//! Kling's task data, and how new reports about a task are merged.
//!
//! Kling reports a task's state three ways: the create answer, its callbacks, and query
//! answers. They can arrive late, twice, or out of order, so merging is monotonic: a report
//! that is less final (`submitted` < `processing` < `succeed`/`failed`) or older
//! (`updated_at`) than what is stored never replaces it, a final report without the result
//! files never replaces one with them, a report about another task never touches this one,
//! and a duplicate changes nothing. Reports are kept as Kling's own JSON, so an answer from
//! the worker's store has exactly Kling's shape.
//!
//! What a task's result files are depends on its endpoint ([`Results`]): audios for video
//! to audio, videos for text to video.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::validate;

/// Which result files a finished task of an endpoint yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Results {
    /// `task_result.audios[]`: `url_mp3`, `url_wav` (video to audio, text to audio).
    Audios,
    /// `task_result.videos[]`: `url` (text or image to video, with or without sound).
    Videos,
}

impl Results {
    /// The array under `task_result` that holds the files.
    pub fn field(self) -> &'static str {
        match self {
            Results::Audios => "audios",
            Results::Videos => "videos",
        }
    }
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

/// Whether the task's result includes at least one file of the endpoint's kind.
pub fn has_results(data: &Value, results: Results) -> bool {
    data.get("task_result")
        .and_then(|result| result.get(results.field()))
        .and_then(Value::as_array)
        .is_some_and(|files| !files.is_empty())
}

/// A `succeed` that lacks its result files, which Kling does not promise to put in callbacks.
pub fn is_incomplete_success(data: &Value, results: Results) -> bool {
    status_of(data) == Some("succeed") && !has_results(data, results)
}

/// Whether the task has ended with everything it will ever report: `failed`, or `succeed`
/// with its result files. Such a task never changes again, so a replayed or forged report
/// cannot alter a finished result.
pub fn is_complete(data: &Value, results: Results) -> bool {
    match status_of(data) {
        Some("failed") => true,
        Some("succeed") => has_results(data, results),
        _ => false,
    }
}

/// Merges a new report into the stored one. `None` when the stored data stays as it is;
/// otherwise the new data: the stored fields overlaid with the report's top-level fields,
/// so fields a partial report (a create answer) lacks are kept.
///
/// A task moves forward only (`submitted` < `processing` < `succeed`/`failed`), and within
/// a status only to a report at least as recent (`updated_at`). Once `succeed` or `failed`
/// it never switches to the other; a `succeed` without its files takes a `succeed` with them
/// whatever its time, and a complete task never changes again.
pub fn merge(stored: &Value, incoming: &Value, results: Results) -> Option<Value> {
    // A report about another task (Kling may resolve a queried id as someone's external id)
    // never touches this one.
    if is_complete(stored, results) || incoming.get("task_id") != stored.get("task_id") {
        return None;
    }
    let (old_rank, new_rank) = (rank(status_of(stored)), rank(status_of(incoming)));
    let completes = is_incomplete_success(stored, results)
        && status_of(incoming) == Some("succeed")
        && has_results(incoming, results);
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

/// A tenant's fixed-length name in storage: the first 128 bits of its SHA-256, in hex. It
/// names the tenant's coordinator and prefixes its keys, so no tenant, however long, can
/// push a key past a backend's limit, and no tenant's keys overlap another's.
pub fn tenant_shard(tenant: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::ids::hex(&Sha256::digest(tenant.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: Results = Results::Audios;

    fn task(status: &str, updated_at: u64) -> Value {
        json!({"task_id": "t1", "task_status": status, "updated_at": updated_at})
    }

    fn with_audios(mut data: Value) -> Value {
        data["task_result"] = json!({"audios": [{"id": "a1", "url_mp3": "https://x/a.mp3"}]});
        data
    }

    #[test]
    fn newer_and_more_final_reports_win() {
        assert_eq!(merge(&task("submitted", 1), &task("processing", 2), A), Some(task("processing", 2)));
        assert_eq!(merge(&task("processing", 2), &task("succeed", 3), A), Some(task("succeed", 3)));
        assert_eq!(merge(&task("processing", 2), &task("failed", 3), A), Some(task("failed", 3)));
        assert_eq!(merge(&task("processing", 2), &task("processing", 5), A), Some(task("processing", 5)));
    }

    #[test]
    fn older_or_less_final_reports_never_overwrite() {
        assert_eq!(merge(&task("succeed", 3), &task("processing", 9), A), None);
        assert_eq!(merge(&task("processing", 3), &task("submitted", 9), A), None);
        assert_eq!(merge(&task("processing", 5), &task("processing", 4), A), None);
        assert_eq!(merge(&task("failed", 5), &task("submitted", 1), A), None);
    }

    #[test]
    fn even_a_more_final_report_cannot_drop_the_audios() {
        let complete = with_audios(task("succeed", 5));
        assert_eq!(merge(&complete, &task("succeed", 5), A), None);
        assert_eq!(merge(&complete, &task("succeed", 6), A), None);
        assert_eq!(merge(&task("succeed", 5), &complete, A), Some(complete.clone()));
        assert_eq!(merge(&task("succeed", 5), &task("succeed", 7), A), Some(task("succeed", 7)));
        assert_eq!(merge(&task("succeed", 5), &task("succeed", 4), A), None);
    }

    #[test]
    fn a_complete_task_never_changes_again() {
        let complete = with_audios(task("succeed", 5));
        let mut replaced = with_audios(task("succeed", 9));
        replaced["task_result"]["audios"][0]["url_mp3"] = json!("https://evil.example.com/a.mp3");
        assert_eq!(merge(&complete, &replaced, A), None);
        assert_eq!(merge(&task("failed", 5), &with_audios(task("succeed", 9)), A), None);
        assert!(is_complete(&task("failed", 1), A));
        assert!(!is_complete(&task("succeed", 1), A));
        assert!(!is_complete(&task("processing", 1), A));
    }

    #[test]
    fn audios_complete_a_succeed_whatever_their_time() {
        let complete = with_audios(task("succeed", 9));
        assert_eq!(merge(&task("succeed", 10), &complete, A), Some(complete.clone()));
    }

    #[test]
    fn succeed_and_failed_never_switch() {
        assert_eq!(merge(&task("succeed", 5), &task("failed", 9), A), None);
        assert_eq!(merge(&task("failed", 5), &with_audios(task("succeed", 9)), A), None);
    }

    #[test]
    fn a_report_about_another_task_is_never_merged() {
        let stored = task("processing", 1);
        let mut other = with_audios(task("succeed", 9));
        other["task_id"] = json!("t2");
        assert_eq!(merge(&stored, &other, A), None);
        let mut nameless = task("succeed", 9);
        nameless.as_object_mut().unwrap().remove("task_id");
        assert_eq!(merge(&stored, &nameless, A), None);
    }

    #[test]
    fn duplicates_change_nothing() {
        let data = with_audios(task("succeed", 5));
        assert_eq!(merge(&data, &data, A), None);
        assert_eq!(merge(&task("submitted", 1), &task("submitted", 1), A), None);
    }

    #[test]
    fn partial_reports_keep_stored_fields() {
        let stored = json!({"task_id": "t1", "task_status": "submitted", "updated_at": 1,
                            "task_info": {"external_task_id": "e1", "parent_video": {"url": "u"}}});
        let merged =
            merge(&stored, &json!({"task_id": "t1", "task_status": "processing", "updated_at": 2}), A)
                .unwrap();
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
                    if let Some(next) = merge(&state, &reports[i], A) {
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
    fn completeness_follows_the_endpoint() {
        let video =
            json!({"task_id": "t1", "task_status": "succeed", "task_result": {"videos": [{"url": "u"}]}});
        assert!(is_complete(&video, Results::Videos));
        assert!(!is_complete(&video, Results::Audios));
        assert!(is_incomplete_success(&video, Results::Audios));
    }

    #[test]
    fn envelopes_and_ids() {
        let body = br#"{"code":0,"message":"SUCCEED","request_id":"r","data":{"task_id":"t1","task_info":{"external_task_id":"e1"}}}"#;
        let data = envelope_data(body).unwrap();
        assert_eq!(task_id_of(&data), Some("t1"));
        assert_eq!(external_task_id_of(&data), Some("e1"));
        assert_eq!(envelope_data(br#"{"code":1201,"message":"bad"}"#), None);
        assert_eq!(external_task_id_of(&json!({"task_info": {"external_task_id": ""}})), None);
    }
}
