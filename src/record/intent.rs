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
/// After the first check (at the create's deadline), the waits before the next ones when
/// Kling says it has no such task; after the last, the intent is dropped.
pub const CHECK_AFTER_MS: [u64; 3] = [60_000, 10 * 60_000, 60 * 60_000];
/// While Kling does not answer at all, an intent is asked about hourly, and kept this long.
pub const GIVE_UP_AFTER_MS: u64 = 2 * 24 * 60 * 60 * 1000;
/// How far Kling's clock may be behind the worker's when a task is matched by a client's
/// own external id (see [`Intent::may_be`]).
pub const CLOCK_SKEW_MS: u64 = 5_000;

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
    /// When the create was about to call Kling (epoch ms).
    pub created_at: u64,
    /// When Kling is first asked about it, if the create's record has not come (epoch ms).
    pub check_at: u64,
    /// How many checks found nothing.
    #[serde(default)]
    pub checks: u32,
    /// The create got one of its account's slots at the gate (its ticket: the nonce): the
    /// task found holds it, and a create never found gives it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
    /// The Kling account the create is sent to (`None`: an intent from before accounts had
    /// names, the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The create's `Idempotency-Key`: settled by the task found, freed if none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Intent {
    /// The external id the worker gives a create without one.
    pub fn edge_external_id(nonce: &str) -> String {
        format!("{EDGE_PREFIX}{nonce}")
    }

    /// A check that did not find the task: `absent` when Kling said it has none (counted:
    /// past the last of [`CHECK_AFTER_MS`] the intent is dropped), else Kling did not answer
    /// (asked again an hour later, for [`GIVE_UP_AFTER_MS`]). `false` when it is dropped.
    pub fn not_found(&mut self, now: u64, absent: bool) -> bool {
        if now.saturating_sub(self.created_at) > GIVE_UP_AFTER_MS {
            return false;
        }
        let wait = if absent {
            let Some(wait) = CHECK_AFTER_MS.get(self.checks as usize) else { return false };
            self.checks += 1;
            *wait
        } else {
            CHECK_AFTER_MS[CHECK_AFTER_MS.len() - 1]
        };
        self.check_at = now.saturating_add(wait);
        true
    }

    /// Whether the task Kling found by the external id can be this create's. The worker's own
    /// id names one create only. A client's own id may name an older task of the account (a
    /// create whose answer was lost after Kling refused the id as taken, perhaps another
    /// client's): only a task Kling made no earlier than this intent can be it.
    pub fn may_be(&self, kling_data: &serde_json::Value) -> bool {
        if self.external_task_id == Intent::edge_external_id(&self.nonce) {
            return true;
        }
        let created_at = kling_data.get("created_at").and_then(serde_json::Value::as_u64);
        created_at.is_some_and(|at| at.saturating_add(CLOCK_SKEW_MS) >= self.created_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(external_task_id: &str) -> Intent {
        Intent {
            nonce: "n".into(),
            endpoint: 1,
            tenant: "web".into(),
            external_task_id: external_task_id.into(),
            client_callback_url: None,
            style: None,
            reply_ref: None,
            origin: None,
            created_at: 1_000,
            check_at: 0,
            checks: 0,
            gated: false,
            account: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn an_intent_kling_has_no_task_for_is_checked_a_few_times_then_dropped() {
        let mut intent = intent(&Intent::edge_external_id("n"));
        assert_eq!(intent.external_task_id, "kling-edge-n");
        let mut at = Vec::new();
        while intent.not_found(1_000, true) {
            at.push(intent.check_at);
        }
        assert_eq!(at, [61_000, 601_000, 3_601_000]);
        let stored: Intent = serde_json::from_str(&serde_json::to_string(&intent).unwrap()).unwrap();
        assert_eq!(stored, intent);
    }

    #[test]
    fn while_kling_does_not_answer_an_intent_is_kept_for_two_days() {
        let mut intent = intent("kling-edge-n");
        for hour in 0..48 {
            assert!(intent.not_found(1_000 + hour * 3_600_000, false), "hour {hour}");
        }
        assert_eq!(intent.checks, 0, "no answer is not a no");
        assert!(!intent.not_found(1_000 + GIVE_UP_AFTER_MS + 1, false));
    }

    #[test]
    fn a_clients_own_external_id_matches_only_a_task_made_after_the_intent() {
        let own = intent("order-42");
        assert!(own.may_be(&serde_json::json!({"created_at": 1_500})));
        assert!(own.may_be(&serde_json::json!({"created_at": 1})), "within the clocks' skew");
        let mut late = own.clone();
        late.created_at = 1_000 + CLOCK_SKEW_MS + 1;
        assert!(!late.may_be(&serde_json::json!({"created_at": 1_000})), "an older task of the account");
        assert!(!own.may_be(&serde_json::json!({})), "no creation time, no match");
        assert!(
            intent("kling-edge-n").may_be(&serde_json::json!({})),
            "the worker's own id names one create"
        );
    }
}
