//! The small interfaces the flows need from the outside world, so the same flows run in the
//! Worker (SQLite, `fetch`, Workers KV, R2, the Rate Limiting bindings, the Workers clock)
//! and in `cargo test` (memory, scripted fakes, a manual clock; see `crate::testing`).
//!
//! Two groups: the coordinator's ports (its store, Kling's task queries, clients'
//! receivers, the result bucket), the request path's (Kling's creates, the coordinators, the
//! rate limiter, the video probe, the bucket uploads go to), and both: the edge copies and
//! the runtime.
//! [`Runtime`] serves both. Every port that can fail answers with [`ApiError`], the one
//! error type of the flows.
//!
//! The store is synchronous: a Durable Object's SQLite calls are, and a read-modify-write
//! with no `await` between its steps is atomic there (nothing else runs in the object
//! meanwhile). Everything that crosses the network is `async`; a flow re-reads the record
//! after every `await`, because other events may have changed it meanwhile.

#![allow(async_fn_in_trait)] // The Workers runtime is single-threaded: no `Send` bounds.

use serde_json::{Map, Value};

use crate::api::Endpoint;
use crate::error::ApiError;
use crate::flows::gate_protocol::GateCall;
use crate::flows::protocol::Call;
use crate::probe::video_check;
use crate::record::asset::Asset;
use crate::record::copies::CopyOutcome;
use crate::record::delivery::Attempt;
use crate::record::edge_copy::EdgeCopy;
use crate::record::gate::{Gate, Ticket};
use crate::record::idempotency::KeyEntry;
use crate::record::intent::Intent;
use crate::record::TaskRecord;
use crate::validate::CostsQuery;

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
    /// Up to `limit` tasks whose step (poll, webhook, edge copy) is due at or before `now`,
    /// most overdue first (so a backlog of copies never hides a webhook).
    fn due_steps(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError>;
    /// Up to `limit` tasks whose poll of Kling is due at or before `now`, most overdue first
    /// (so a due poll is never queued behind a backlog of webhooks).
    fn due_polls(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError>;
    /// Records a create on its way to Kling (or its next check), by its nonce.
    fn save_intent(&self, intent: &Intent) -> Result<(), ApiError>;
    fn delete_intent(&self, nonce: &str) -> Result<(), ApiError>;
    /// Whether a create on its way to Kling has an intent by this nonce.
    fn has_intent(&self, nonce: &str) -> Result<bool, ApiError>;
    /// Saves an intent's next check, if the intent is still there (its record may have come
    /// meanwhile, and removed it).
    fn reschedule_intent(&self, intent: &Intent) -> Result<(), ApiError>;
    /// Up to `limit` intents whose check is due at or before `now`, most overdue first.
    fn due_intents(&self, now: u64, limit: u32) -> Result<Vec<Intent>, ApiError>;
    /// The earliest time anything is due (a task's step, an intent's check or an asset's
    /// next step), if anything is.
    fn next_due(&self) -> Result<Option<u64>, ApiError>;
    /// Tasks that may be forgotten (see `TaskRecord::expired`, with `keep_ms`), at most
    /// `limit` of them.
    fn expired(&self, now: u64, keep_ms: u64, limit: u32) -> Result<Vec<String>, ApiError>;
    /// How many of the endpoint's tasks created at or after `since` are in each status.
    fn statuses_since(&self, endpoint: u8, since: u64) -> Result<Vec<(String, u32)>, ApiError>;
    /// The tenant's `Idempotency-Key` entry (`crate::record::idempotency`), if kept.
    fn load_key(&self, key: &str) -> Result<Option<KeyEntry>, ApiError>;
    /// Inserts or replaces a key's entry.
    fn save_key(&self, entry: &KeyEntry) -> Result<(), ApiError>;
    fn delete_key(&self, key: &str) -> Result<(), ApiError>;
    /// Forgets up to `limit` keys expired at `now`.
    fn forget_keys(&self, now: u64, limit: u32) -> Result<(), ApiError>;
    /// A fact the coordinator keeps about itself (`tenant`, `shard`), learned from the
    /// calls it gets.
    fn meta(&self, name: &str) -> Result<Option<String>, ApiError>;
    fn set_meta(&self, name: &str, value: &str) -> Result<(), ApiError>;

    /// Loads the task, lets `change` change it, and saves it: one read-modify-write with no
    /// `await` inside, so it is atomic in the object. `None` (and nothing saved) if the task
    /// is gone, as it may be after an `await`.
    fn update<T>(
        &self,
        task_id: &str,
        change: impl FnOnce(&mut TaskRecord) -> T,
    ) -> Result<Option<T>, ApiError> {
        let Some(mut record) = self.load(task_id)? else { return Ok(None) };
        let outcome = change(&mut record);
        self.save(&record)?;
        Ok(Some(outcome))
    }
}

/// One tenant's uploads (`crate::record::asset`), in the same store as its tasks.
pub trait AssetStore {
    fn load_asset(&self, asset_id: &str) -> Result<Option<Asset>, ApiError>;
    /// Inserts or replaces the asset (atomically).
    fn save_asset(&self, asset: &Asset) -> Result<(), ApiError>;
    fn delete_asset(&self, asset_id: &str) -> Result<(), ApiError>;
    /// One page of the stored (measured) assets, newest first.
    fn asset_page(&self, offset: u32, limit: u32) -> Result<Vec<Asset>, ApiError>;
    /// Up to `limit` assets due at or before `now` (an upload past its deadline, an expired
    /// asset, a removal to try), most overdue first.
    fn due_assets(&self, now: u64, limit: u32) -> Result<Vec<Asset>, ApiError>;
}

/// Kling, as the coordinator asks it about a task, and sends it a create that waited at the
/// edge for a free slot: each call on the account it names (`crate::accounts`; `None`, a
/// task from before accounts had names, is the first).
pub trait Upstream {
    /// Sends a queued create to Kling, once (see [`KlingApi::create`]), with the create's
    /// full deadline.
    async fn create(
        &self,
        account: Option<&str>,
        endpoint: &Endpoint,
        body: &Map<String, Value>,
    ) -> Result<KlingReply, ApiError>;
    /// The task's `data` as Kling reports it now (by task id only), or why Kling did not say.
    async fn current_task(
        &self,
        account: Option<&str>,
        endpoint: &Endpoint,
        task_id: &str,
    ) -> Result<Value, ApiError>;
    /// The task Kling knows by this `external_task_id`, or why Kling did not say (404: none).
    async fn task_by_external_id(
        &self,
        account: Option<&str>,
        endpoint: &Endpoint,
        external_task_id: &str,
    ) -> Result<Value, ApiError>;
}

/// A signed webhook POST to a client's receiver.
pub trait Webhooks {
    async fn post(&self, url: &str, headers: &[(&str, String)], body: &[u8]) -> Attempt;
}

/// The deployment's bucket of result copies (R2).
pub trait ResultBucket {
    /// Streams the file at `source` into the bucket under `key`, unless it is larger than
    /// `max_bytes` (known from its `Content-Length`, or found while streaming).
    async fn copy(&self, source: &str, key: &str, content_type: &str, max_bytes: u64) -> CopyOutcome;
    /// Removes objects: the copies of a task being forgotten, an asset being removed.
    async fn delete(&self, keys: &[String]) -> Result<(), ApiError>;
}

/// Why an upload's bytes did not all reach the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadFault {
    /// The client's body ended early or broke off.
    BrokeOff,
    /// The bucket refused or failed (why).
    Bucket(String),
}

/// The deployment's bucket as the request path stores uploads in it (R2): a request body
/// piped in whole when its length is known, else read chunk by chunk into a multipart
/// upload; and ranged reads of what was stored, for the probe.
pub trait AssetBucket {
    /// A client's request body, as the runtime holds it.
    type Body;
    /// A multipart upload under way.
    type Parts;
    /// The next bytes of `body`; `None` at its end.
    async fn next_chunk(&self, body: &mut Self::Body) -> Result<Option<Vec<u8>>, UploadFault>;
    /// Streams a body that declared `length` into the bucket under `key`, its bytes never
    /// passing through the flow; one that brings fewer or more is not stored.
    async fn put_whole(
        &self,
        key: &str,
        content_type: &str,
        body: Self::Body,
        length: u64,
    ) -> Result<(), UploadFault>;
    async fn begin_parts(&self, key: &str, content_type: &str) -> Result<Self::Parts, UploadFault>;
    /// Uploads the next part (every part but the last has the same size).
    async fn put_part(&self, parts: &mut Self::Parts, bytes: Vec<u8>) -> Result<(), UploadFault>;
    async fn complete(&self, parts: Self::Parts) -> Result<(), UploadFault>;
    /// Gives a multipart upload up: nothing of it is kept.
    async fn abort(&self, parts: Self::Parts);
    /// Up to `length` bytes of the object at `offset` (fewer where it ends).
    async fn read(&self, key: &str, offset: u64, length: u64) -> Result<Vec<u8>, ApiError>;
    async fn remove(&self, key: &str) -> Result<(), ApiError>;
}

/// The gate of the Kling accounts (`crate::record::gate`), kept whole by its object. Synchronous,
/// like the coordinator's store: a load-change-save with no `await` between is atomic.
pub trait GateStore {
    fn load_gate(&self) -> Result<Gate, ApiError>;
    fn save_gate(&self, gate: &Gate) -> Result<(), ApiError>;
}

/// How a create the gate sent to its tenant's coordinator fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatched {
    /// Kling took it (now or at an earlier send): it holds its slot until its task ends.
    Taken,
    /// Kling answered 1303: back in line.
    Refused,
    /// It will never reach Kling (cancelled, waited too long, refused for another reason,
    /// or unknown to its coordinator): its slot is free.
    Gone,
    /// No answer in time: the gate asks again later (a coordinator sends a create at most
    /// once at a time, and never again once Kling took it).
    Unknown,
}

/// The coordinators, as a gate reaches them: send a queued create to Kling, on `account`.
pub trait Dispatcher {
    async fn dispatch(&self, ticket: &Ticket, account: &str) -> Dispatched;
}

/// The gate of the Kling accounts, as the request path and the coordinators call it (one
/// object; see `crate::flows::gate_protocol`).
pub trait Gates {
    async fn call<C: GateCall>(&self, call: C) -> Result<C::Answer, ApiError>;
}

/// The time, randomness, waiting, and where a flow's events go.
pub trait Runtime {
    /// The time, in epoch milliseconds.
    fn now_ms(&self) -> u64;
    /// 16 bytes from a CSPRNG.
    fn random_16(&self) -> Result<[u8; 16], ApiError>;
    /// Waits `ms` (between retries of work done after an answer).
    async fn sleep(&self, ms: u64);
    /// One structured log line (never a secret: flows log ids, states and reasons only).
    fn log(&self, event: Value);
}

/// Kling's answer to a create, whatever its status: a Kling client gets it unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct KlingReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Kling, as the request path calls it. A create is sent exactly once (a second send could
/// cost a second credit), with the worker's credentials; a connection that fails or an
/// answer that does not come in time is an error (502, 504) saying the task may or may not
/// exist. Reading the account's costs is free and read-only.
pub trait KlingApi {
    /// A create on the account named `account`.
    async fn create(
        &self,
        account: &str,
        endpoint: &Endpoint,
        body: &Map<String, Value>,
    ) -> Result<KlingReply, ApiError>;
    /// `GET /account/costs?{query}`: the first account's resource packs, Kling's answer
    /// unchanged.
    async fn account_costs(&self, query: &CostsQuery) -> Result<KlingReply, ApiError>;
    /// The resource packs of the account named `account` (of the year to `now_ms`), as Kling
    /// answered at most [`ACCOUNT_PACKS_CACHE_SECS`] ago: Kling asks for one call a second
    /// at most, and its figures lag by hours anyway.
    async fn account_packs(&self, account: &str, now_ms: u64) -> Result<KlingReply, ApiError>;
}

/// How long an account's packs are answered from the cache (Workers KV's shortest).
pub const ACCOUNT_PACKS_CACHE_SECS: u64 = 60;

/// The tenants' coordinators, as the edge calls them: `shard` names the object.
pub trait Coordinators {
    async fn call<C: Call>(&self, shard: &str, call: C) -> Result<C::Answer, ApiError>;
}

/// The rate limits a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Every request of a tenant, and refused ones per address.
    Requests,
    /// Creates of a tenant that passed validation.
    Creates,
    /// Videos an app's creates had measured at their URL (all its tenants together).
    Probes,
}

/// The rate limiter: one more request under `key`, or 429 with `Retry-After`. A limiter
/// that fails lets the request through.
pub trait RateLimiter {
    async fn check(&self, limit: Limit, key: &str) -> Result<(), ApiError>;
}

/// Measuring a video at its URL before Kling is paid to fetch it.
pub trait VideoProbe {
    /// What an earlier measurement of `url` found, if it is still fresh.
    async fn remembered(&self, url: &str) -> Option<video_check::Outcome>;
    /// Measures the video at `url` (a few ranged reads of someone else's file), and
    /// remembers a measurement for a while.
    async fn measure(&self, url: &str) -> video_check::Outcome;
}

/// The edge copies of finished tasks (Workers KV, see `crate::record::edge_copy`): the
/// coordinator writes them, the request path reads them. A copy that cannot be read counts
/// as none: the coordinator answers instead.
pub trait EdgeCopies {
    async fn put(&self, key: &str, value: &str) -> Result<(), ApiError>;
    async fn delete(&self, key: &str) -> Result<(), ApiError>;
    /// The edge copy of a task of this shard, if there is one.
    async fn get(&self, shard: &str, task_id: &str) -> Option<EdgeCopy>;
    /// A task recorded by the previous version in KV, if it is the tenant's.
    async fn legacy_task(&self, tenant: &str, id: &str) -> Option<Value>;
}
