//! The edge copy: a finished task's answer kept in Workers KV, so that a query of it is
//! answered at the edge with no coordinator call and no Kling call (`crate::flows::read`).
//!
//! The coordinator writes it (its alarm, `crate::flows::coordinator`) once the task is
//! complete and its first webhook attempt was made, so the copy says how that went; again
//! only when what a client reads changes (the data, the delivery's outcome, a result copy's
//! state), not on every retry; and removes a copy an earlier task with the same id left.
//! Whether a write is due is decided from a digest streamed from the record, without
//! building the answer, so saving a record (which computes when it is next due) stays cheap.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::copies;
use super::delivery::DeliveryState;
use super::{TaskAnswer, TaskRecord};

/// A write of the edge copy that failed is tried again after this long.
pub const RETRY_MS: u64 = 30_000;

/// What KV holds for a finished task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeCopy {
    pub tenant: String,
    pub endpoint: u8,
    /// The task as its client reads it (links to its copies are minted at each read).
    pub task: TaskAnswer,
}

/// The key of a task's edge copy: `task:v3:{shard}:{task_id}` (at most 109 bytes). The
/// previous version's copies (`task:v2:`, answers with their copies described in JSON) are
/// not read: their tasks are answered by their coordinators until those copies expire.
pub fn key(shard: &str, task_id: &str) -> String {
    format!("task:v3:{shard}:{task_id}")
}

/// The write an edge copy needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Put this value (JSON of an [`EdgeCopy`]) under the task's key; `digest` is what the
    /// record keeps once it is written.
    Put { value: String, digest: String },
    /// Remove what the key holds (it belonged to an earlier task with the same id).
    Delete,
}

/// What is due, before any value is built.
enum Due {
    Put { digest: String },
    Delete,
}

impl TaskRecord {
    /// Whether a write of the edge copy is due at `now` (cheap: no answer is built).
    pub fn edge_copy_due(&self, now: u64) -> bool {
        self.edge_copy_pending(now).is_some()
    }

    /// The write the edge copy needs at `now`, if any.
    pub fn edge_copy_write(&self, now: u64) -> Option<Write> {
        match self.edge_copy_pending(now)? {
            Due::Delete => Some(Write::Delete),
            Due::Put { digest } => {
                let copy =
                    EdgeCopy { tenant: self.tenant.clone()?, endpoint: self.endpoint, task: self.answer() };
                let value = serde_json::to_string(&copy).ok()?;
                Some(Write::Put { value, digest })
            }
        }
    }

    fn edge_copy_pending(&self, now: u64) -> Option<Due> {
        // Nothing is copied to the edge for a task no create recorded (see `queue_copies`).
        if self.edge_copy_retry_at.is_some_and(|at| at > now) || self.tenant.is_none() || !self.claimed() {
            return None;
        }
        if !self.is_complete() {
            return self.edge_copy_digest.is_some().then_some(Due::Delete);
        }
        if self.delivery.state == DeliveryState::Pending && self.delivery.attempts == 0
            || copies::first_outcome_pending(&self.copies)
        {
            return None;
        }
        let digest = self.edge_copy_digest_now();
        (self.edge_copy_digest.as_deref() != Some(digest.as_str())).then_some(Due::Put { digest })
    }

    /// The digest of what the edge copy shows: the data, the delivery's outcome and each
    /// result copy's state (not the attempts of a delivery or a copy still being retried: a
    /// write per attempt would cost more than it tells). Streamed into the hash.
    fn edge_copy_digest_now(&self) -> String {
        struct Hashing(Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let copy_states: Vec<_> = self.copies.iter().map(|copy| (&copy.name, copy.state)).collect();
        let shown = (&self.data, self.delivery.state, &self.delivery.message_id, copy_states);
        let mut hashing = Hashing(Sha256::new());
        let _ = serde_json::to_writer(&mut hashing, &shown);
        let _ = hashing.flush();
        crate::ids::hex(&hashing.0.finalize()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_streamed_digest_is_the_one_earlier_versions_stored() {
        // Records written before the digest was streamed keep theirs: the same bytes are hashed.
        let data = json!({"task_id": "t1", "task_status": "succeed", "updated_at": 2});
        let mut record = TaskRecord::new("t1", 1, "n1", data.clone(), 1);
        record.tenant = Some("web".into());
        let copy_states: Vec<(&String, copies::CopyState)> = Vec::new();
        let stable =
            json!([data, record.delivery.state, record.delivery.message_id, copy_states]).to_string();
        let expected = crate::ids::hex(&Sha256::digest(stable.as_bytes())[..12]);
        assert_eq!(record.edge_copy_digest_now(), expected);
    }
}
