//! The small interfaces the flows need from the outside world, so the same flows run in the
//! Durable Object (SQLite, `fetch`, Workers KV, the Workers clock) and in `cargo test`
//! (memory, scripted fakes, a manual clock; see `crate::testing`).
//!
//! The store is synchronous: a Durable Object's SQLite calls are, and a read-modify-write
//! with no `await` between its steps is atomic there (nothing else runs in the object
//! meanwhile). Everything that crosses the network is `async`; a flow re-reads the record
//! after every `await`, because other events may have changed it meanwhile.

#![allow(async_fn_in_trait)] // The Workers runtime is single-threaded: no `Send` bounds.

use serde_json::Value;

use crate::api::Endpoint;
use crate::copies::CopyOutcome;
use crate::error::ApiError;
use crate::record::{Attempt, TaskRecord};

/// One tenant's tasks (a coordinator owns exactly one tenant).
pub trait TaskStore {
    fn load(&self, task_id: &str) -> Result<Option<TaskRecord>, ApiError>;
    /// Inserts or replaces the record (atomically).
    fn save(&self, record: &TaskRecord) -> Result<(), ApiError>;
    fn delete(&self, task_id: &str) -> Result<(), ApiError>;
    /// The task whose Kling data carries this external task id (the newest, if several).
    fn find_external(&self, external_task_id: &str) -> Result<Option<String>, ApiError>;
    /// The task a callback capability's nonce is bound to.
    fn find_nonce(&self, nonce: &str) -> Result<Option<String>, ApiError>;
    /// One page of an endpoint's tasks, newest first.
    fn page(&self, endpoint: u8, offset: u32, limit: u32) -> Result<Vec<TaskRecord>, ApiError>;
    /// How many tasks Kling is still working on (not `succeed` or `failed`).
    fn running(&self) -> Result<u32, ApiError>;
    /// Up to `limit` tasks with something due at or before `now`, most overdue first.
    fn due(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError>;
    /// The earliest time anything is due, if anything is.
    fn next_due(&self) -> Result<Option<u64>, ApiError>;
    /// Tasks that may be forgotten (see `TaskRecord::expired`, with `keep_ms`), at most
    /// `limit` of them.
    fn expired(&self, now: u64, keep_ms: u64, limit: u32) -> Result<Vec<String>, ApiError>;
    /// A fact the coordinator keeps about itself (`tenant`, `shard`), learned from the
    /// calls it gets.
    fn meta(&self, name: &str) -> Result<Option<String>, ApiError>;
    fn set_meta(&self, name: &str, value: &str) -> Result<(), ApiError>;
}

/// Kling, as the coordinator asks it about a task.
pub trait Upstream {
    /// The task's `data` as Kling reports it now (by task id only), or why Kling did not say.
    async fn current_task(&self, endpoint: &Endpoint, task_id: &str) -> Result<Value, String>;
}

/// A signed webhook POST to a client's receiver.
pub trait Webhooks {
    async fn post(&self, url: &str, headers: &[(&str, String)], body: &[u8]) -> Attempt;
}

/// The edge copy of finished tasks (Workers KV).
pub trait ReadModel {
    async fn put(&self, key: &str, value: &str) -> Result<(), String>;
    async fn delete(&self, key: &str) -> Result<(), String>;
}

/// The deployment's bucket of result copies (R2).
pub trait ResultBucket {
    /// Streams the file at `source` into the bucket under `key`, unless it is larger than
    /// `max_bytes` (known from its `Content-Length`, or found while streaming).
    async fn copy(&self, source: &str, key: &str, content_type: &str, max_bytes: u64) -> CopyOutcome;
    /// Removes copies (those of a task being forgotten).
    async fn delete(&self, keys: &[String]) -> Result<(), String>;
}

/// The time, and where a flow's events go.
pub trait Runtime {
    /// The time, in epoch milliseconds.
    fn now_ms(&self) -> u64;
    /// One structured log line (never a secret: flows log ids, states and reasons only).
    fn log(&self, event: Value);
}
