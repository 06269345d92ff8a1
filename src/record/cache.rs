//! The records a coordinator read or wrote last, kept parsed for the object's life.
//!
//! The alarm and the calls of one task read its record several times within milliseconds
//! (its step, its webhook, its copies, each outcome's read-modify-write), and reading one
//! from SQLite costs a query and a JSON parse each time. The store is the object's only
//! writer of its table, so a cache it writes through on every save and removal is never
//! stale. Bounded: the oldest entry goes first.

use std::collections::{HashMap, VecDeque};

use super::TaskRecord;

/// How many records are kept: a full alarm's worth of tasks and then some, a few MB.
pub const RECORDS_KEPT: usize = 256;

#[derive(Debug, Default)]
pub struct RecordCache {
    records: HashMap<String, TaskRecord>,
    /// Task ids in the order they came in (each once).
    order: VecDeque<String>,
}

impl RecordCache {
    pub fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.records.get(task_id).cloned()
    }

    /// Keeps `record` as the task's current state (after it was read or saved).
    pub fn put(&mut self, record: &TaskRecord) {
        if let Some(kept) = self.records.get_mut(&record.task_id) {
            kept.clone_from(record);
            return;
        }
        while self.order.len() >= RECORDS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.records.remove(&oldest);
            }
        }
        self.order.push_back(record.task_id.clone());
        self.records.insert(record.task_id.clone(), record.clone());
    }

    pub fn remove(&mut self, task_id: &str) {
        if self.records.remove(task_id).is_some() {
            self.order.retain(|kept| kept != task_id);
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(task_id: &str, status: &str) -> TaskRecord {
        TaskRecord::new(task_id, 1, "n", json!({"task_id": task_id, "task_status": status}), 1)
    }

    #[test]
    fn it_answers_what_was_last_put_and_forgets_what_was_removed() {
        let mut cache = RecordCache::default();
        assert!(cache.get("t1").is_none());
        cache.put(&record("t1", "submitted"));
        cache.put(&record("t1", "succeed"));
        assert_eq!(cache.get("t1").unwrap().data["task_status"], "succeed");
        assert_eq!(cache.len(), 1);
        cache.remove("t1");
        assert!(cache.get("t1").is_none());
        assert!(cache.is_empty());
        cache.remove("t1");
        cache.put(&record("t1", "failed"));
        assert_eq!(cache.get("t1").unwrap().data["task_status"], "failed");
    }

    #[test]
    fn it_keeps_the_newest_records_within_its_bound() {
        let mut cache = RecordCache::default();
        for i in 0..RECORDS_KEPT * 3 {
            cache.put(&record(&format!("t{i}"), "submitted"));
            if i % 7 == 0 {
                cache.remove(&format!("t{}", i / 2));
            }
            assert!(cache.len() <= RECORDS_KEPT);
            assert_eq!(cache.order.len(), cache.records.len(), "the order lists each kept record once");
        }
        assert!(cache.get(&format!("t{}", RECORDS_KEPT * 3 - 1)).is_some(), "the newest is kept");
        assert!(cache.get("t1").is_none(), "the oldest went");
    }
}
