//! A create on its way to Kling, recorded with its tenant's coordinator while Kling is
//! called, so that no task Kling accepted is unknown to the worker.
//!
//! A create is recorded with its coordinator after Kling answers (the create's record), or
//! first by one of Kling's callbacks. If the runtime stops in between and the callbacks land
//! while it is down (Kling does not retry them), neither ever arrives. The intent closes
//! that window: written before Kling's answer, it says which tenant, webhook and endpoint the
//! create was for, and which `external_task_id` it gave Kling (the client's own, or one the
//! worker chose: [`EDGE_PREFIX`] and the capability's nonce), the one field of the caller's
//! that Kling echoes and can be queried by.
//!
//! The create's record removes it. An intent still there once the create's own deadline
//! has passed is checked at Kling by that external id; a task found is recorded as the create
//! would have recorded it (its webhook included), and an intent Kling never heard of is
//! dropped after a few checks ([`CHECK_AFTER_MS`]).

use serde::{Deserialize, Serialize};

/// The prefix of the `external_task_id` the worker gives a create that has none.
pub const EDGE_PREFIX: &str = "kling-edge-";
/// After the first check (at the create's deadline), the waits before the next ones; then
/// the intent is dropped.
pub const CHECK_AFTER_MS: [u64; 3] = [60_000, 10 * 60_000, 60 * 60_000];

/// What the create knew before Kling answered (a registration without Kling's answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// The create's capability nonce: its record and its callbacks carry it too.
    pub nonce: String,
    pub endpoint: u8,
    pub tenant: String,
    /// What Kling can be asked by: the client's `external_task_id`, or the worker's own.
    pub external_task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When Kling is first asked about it, if the create's record has not come (epoch ms).
    pub check_at: u64,
    /// How many checks found nothing.
    #[serde(default)]
    pub checks: u32,
}

impl Intent {
    /// The external id the worker gives a create without one.
    pub fn edge_external_id(nonce: &str) -> String {
        format!("{EDGE_PREFIX}{nonce}")
    }

    /// A check found no task: schedules the next one, or `false` when there is none left.
    pub fn found_nothing(&mut self, now: u64) -> bool {
        let Some(wait) = CHECK_AFTER_MS.get(self.checks as usize) else { return false };
        self.checks += 1;
        self.check_at = now.saturating_add(*wait);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_is_checked_a_few_times_then_dropped() {
        let mut intent = Intent {
            nonce: "n".into(),
            endpoint: 1,
            tenant: "web".into(),
            external_task_id: Intent::edge_external_id("n"),
            client_callback_url: None,
            style: None,
            reply_ref: None,
            origin: None,
            check_at: 0,
            checks: 0,
        };
        assert_eq!(intent.external_task_id, "kling-edge-n");
        let mut at = Vec::new();
        while intent.found_nothing(1_000) {
            at.push(intent.check_at);
        }
        assert_eq!(at, [61_000, 601_000, 3_601_000]);
        let stored: Intent = serde_json::from_str(&serde_json::to_string(&intent).unwrap()).unwrap();
        assert_eq!(stored, intent);
    }
}
