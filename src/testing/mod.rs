//! In-memory ports, so every flow and every fault is a `cargo test`: a store that survives a
//! "crash" (as SQLite does), a scripted Kling, a receiver that can be down, a KV that counts
//! its writes, a manual clock, and an executor that can stop a flow at any `await` and drop
//! it, as an evicted isolate would.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use serde_json::{Map, Value};

use crate::api::Endpoint;
use crate::config::Config;
use crate::error::ApiError;
use crate::flows::coordinator::{Coordinator, Settings};
use crate::flows::gate::{GateFlows, GateSettings};
use crate::flows::gate_protocol::{self, GateCall};
use crate::flows::prompt::PromptSteps;
use crate::flows::protocol::{self, Call};
use crate::ports::{
    AssetBucket, AssetStore, Coordinators, Dispatched, Dispatcher, EdgeCopies, GateStore, Gates, KlingApi,
    KlingReply, Limit, RateLimiter, ResultBucket, Runtime, TaskStore, UploadFault, Upstream, VideoProbe,
    Webhooks,
};
use crate::probe::video_check;
use crate::record::asset::Asset;
use crate::record::copies::CopyOutcome;
use crate::record::delivery::Attempt;
use crate::record::edge_copy::{self, EdgeCopy};
use crate::record::gate::{Gate, Ticket};
use crate::record::intent::Intent;
use crate::record::TaskRecord;

/// Polls `future` to completion (the flows only ever wait on the fakes here, which wake at once).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

/// Polls `future` at most `polls` times, then drops it: a flow cut off at an `await`, as by
/// an isolate evicted mid-flight. `Some` if it finished first.
pub fn run_until_crash<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..polls {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Some(output);
        }
    }
    None
}

/// Runs `futures` concurrently on one thread, as requests in one isolate are: each is
/// polled in turn, so they interleave at every `await`. The outputs, in order.
pub fn run_together<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut context = Context::from_waker(Waker::noop());
    while outputs.iter().any(Option::is_none) {
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                if let Poll::Ready(done) = future.as_mut().poll(&mut context) {
                    *output = Some(done);
                }
            }
        }
    }
    outputs.into_iter().flatten().collect()
}

/// Polls once: returns the output if done, else leaves the future at its first `await`.
pub fn poll_once<F: Future>(future: Pin<&mut F>) -> Option<F::Output> {
    let mut context = Context::from_waker(Waker::noop());
    match future.poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A future that is pending once: every fake port call is an `await` a flow can be cut at.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

async fn yield_once() {
    YieldOnce(false).await;
}

/// An `await` a fake port makes, where a flow can be cut off or another interleave.
pub async fn yield_now() {
    yield_once().await;
}

/// One tenant's tasks in memory, with the due times a save computes (as the SQL store does).
#[derive(Default)]
pub struct MemoryStore {
    tasks: RefCell<BTreeMap<String, TaskRecord>>,
    meta: RefCell<HashMap<String, String>>,
    intents: RefCell<BTreeMap<String, Intent>>,
    assets: RefCell<BTreeMap<String, Asset>>,
    pub keys: RefCell<BTreeMap<String, crate::record::idempotency::KeyEntry>>,
    /// Makes every call fail, as a storage outage would.
    pub broken: Cell<bool>,
    /// Tasks the steps' index misses until they are saved again (rows an earlier version
    /// wrote without a step time).
    pub unindexed_steps: RefCell<Vec<String>>,
}

impl MemoryStore {
    /// Up to `limit` task ids whose time (by `at`) is at or before `now`, earliest first.
    fn due_by(
        &self,
        now: u64,
        limit: u32,
        at: fn(&TaskRecord) -> Option<u64>,
    ) -> Result<Vec<String>, ApiError> {
        self.check()?;
        let mut due: Vec<(u64, String)> = self
            .tasks
            .borrow()
            .values()
            .filter_map(|record| at(record).filter(|at| *at <= now).map(|at| (at, record.task_id.clone())))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit as usize).map(|(_, id)| id).collect())
    }

    fn check(&self) -> Result<(), ApiError> {
        if self.broken.get() {
            Err(ApiError::new(503, 5001, "storage is unavailable"))
        } else {
            Ok(())
        }
    }

    pub fn all(&self) -> Vec<TaskRecord> {
        self.tasks.borrow().values().cloned().collect()
    }
}

impl TaskStore for MemoryStore {
    fn load(&self, task_id: &str) -> Result<Option<TaskRecord>, ApiError> {
        self.check()?;
        Ok(self.tasks.borrow().get(task_id).cloned())
    }

    fn save(&self, record: &TaskRecord) -> Result<(), ApiError> {
        self.check()?;
        self.unindexed_steps.borrow_mut().retain(|task_id| *task_id != record.task_id);
        self.tasks.borrow_mut().insert(record.task_id.clone(), record.clone());
        Ok(())
    }

    fn delete(&self, task_id: &str) -> Result<(), ApiError> {
        self.check()?;
        self.tasks.borrow_mut().remove(task_id);
        Ok(())
    }

    fn find_external(&self, external_task_id: &str) -> Result<Option<String>, ApiError> {
        self.check()?;
        Ok(self
            .tasks
            .borrow()
            .values()
            .filter(|record| crate::kling::task::external_task_id_of(&record.data) == Some(external_task_id))
            .max_by_key(|record| record.created_at)
            .map(|record| record.task_id.clone()))
    }

    fn find_nonce(&self, nonce: &str) -> Result<Option<String>, ApiError> {
        self.check()?;
        Ok(self
            .tasks
            .borrow()
            .values()
            .find(|record| record.nonce == nonce)
            .map(|record| record.task_id.clone()))
    }

    fn page(&self, endpoint: u8, offset: u32, limit: u32) -> Result<Vec<TaskRecord>, ApiError> {
        self.check()?;
        let mut records: Vec<TaskRecord> =
            self.tasks.borrow().values().filter(|record| record.endpoint == endpoint).cloned().collect();
        records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.task_id.cmp(&a.task_id)));
        Ok(records.into_iter().skip(offset as usize).take(limit as usize).collect())
    }

    fn running(&self) -> Result<u32, ApiError> {
        self.check()?;
        Ok(self.tasks.borrow().values().filter(|record| record.is_running()).count() as u32)
    }

    fn due(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.due_by(now, limit, TaskRecord::due_at)
    }

    fn due_steps(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        let mut due = self.due_by(now, limit, TaskRecord::step_due_at)?;
        due.retain(|task_id| !self.unindexed_steps.borrow().contains(task_id));
        Ok(due)
    }

    fn due_polls(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.due_by(now, limit, TaskRecord::poll_due_at)
    }

    fn save_intent(&self, intent: &Intent) -> Result<(), ApiError> {
        self.check()?;
        self.intents.borrow_mut().insert(intent.nonce.clone(), intent.clone());
        Ok(())
    }

    fn delete_intent(&self, nonce: &str) -> Result<(), ApiError> {
        self.check()?;
        self.intents.borrow_mut().remove(nonce);
        Ok(())
    }

    fn has_intent(&self, nonce: &str) -> Result<bool, ApiError> {
        self.check()?;
        Ok(self.intents.borrow().contains_key(nonce))
    }

    fn reschedule_intent(&self, intent: &Intent) -> Result<(), ApiError> {
        self.check()?;
        if let Some(kept) = self.intents.borrow_mut().get_mut(&intent.nonce) {
            *kept = intent.clone();
        }
        Ok(())
    }

    fn due_intents(&self, now: u64, limit: u32) -> Result<Vec<Intent>, ApiError> {
        self.check()?;
        let mut due: Vec<Intent> =
            self.intents.borrow().values().filter(|intent| intent.check_at <= now).cloned().collect();
        due.sort_by_key(|intent| intent.check_at);
        due.truncate(limit as usize);
        Ok(due)
    }

    fn next_due(&self) -> Result<Option<u64>, ApiError> {
        self.check()?;
        let tasks = self.tasks.borrow().values().filter_map(TaskRecord::due_at).min();
        let intents = self.intents.borrow().values().map(|intent| intent.check_at).min();
        let assets = self.assets.borrow().values().map(|asset| asset.due_at).min();
        Ok(tasks.into_iter().chain(intents).chain(assets).min())
    }

    fn expired(&self, now: u64, keep_ms: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.check()?;
        Ok(self
            .tasks
            .borrow()
            .values()
            .filter(|record| record.expired(now, keep_ms))
            .take(limit as usize)
            .map(|record| record.task_id.clone())
            .collect())
    }

    fn meta(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.check()?;
        Ok(self.meta.borrow().get(name).cloned())
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<(), ApiError> {
        self.check()?;
        self.meta.borrow_mut().insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    fn statuses_since(&self, endpoint: u8, since: u64) -> Result<Vec<(String, u32)>, ApiError> {
        self.check()?;
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for record in self.tasks.borrow().values().filter(|r| r.endpoint == endpoint && r.created_at >= since)
        {
            let status = crate::kling::task::status_of(&record.data).unwrap_or_default().to_owned();
            *counts.entry(status).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    fn load_key(&self, key: &str) -> Result<Option<crate::record::idempotency::KeyEntry>, ApiError> {
        self.check()?;
        Ok(self.keys.borrow().get(key).cloned())
    }

    fn save_key(&self, entry: &crate::record::idempotency::KeyEntry) -> Result<(), ApiError> {
        self.check()?;
        self.keys.borrow_mut().insert(entry.key.clone(), entry.clone());
        Ok(())
    }

    fn delete_key(&self, key: &str) -> Result<(), ApiError> {
        self.check()?;
        self.keys.borrow_mut().remove(key);
        Ok(())
    }

    fn forget_keys(&self, now: u64, limit: u32) -> Result<(), ApiError> {
        self.check()?;
        let mut keys = self.keys.borrow_mut();
        let expired: Vec<String> = keys
            .values()
            .filter(|entry| entry.expired(now))
            .take(limit as usize)
            .map(|e| e.key.clone())
            .collect();
        for key in expired {
            keys.remove(&key);
        }
        Ok(())
    }
}

impl MemoryStore {
    pub fn all_assets(&self) -> Vec<Asset> {
        self.assets.borrow().values().cloned().collect()
    }
}

impl AssetStore for MemoryStore {
    fn load_asset(&self, asset_id: &str) -> Result<Option<Asset>, ApiError> {
        self.check()?;
        Ok(self.assets.borrow().get(asset_id).cloned())
    }

    fn save_asset(&self, asset: &Asset) -> Result<(), ApiError> {
        self.check()?;
        self.assets.borrow_mut().insert(asset.asset_id.clone(), asset.clone());
        Ok(())
    }

    fn delete_asset(&self, asset_id: &str) -> Result<(), ApiError> {
        self.check()?;
        self.assets.borrow_mut().remove(asset_id);
        Ok(())
    }

    fn asset_page(&self, offset: u32, limit: u32) -> Result<Vec<Asset>, ApiError> {
        self.check()?;
        let mut stored: Vec<Asset> =
            self.assets.borrow().values().filter(|a| a.is_stored()).cloned().collect();
        stored.sort_by(|a, b| (b.created_at, &b.asset_id).cmp(&(a.created_at, &a.asset_id)));
        Ok(stored.into_iter().skip(offset as usize).take(limit as usize).collect())
    }

    fn due_assets(&self, now: u64, limit: u32) -> Result<Vec<Asset>, ApiError> {
        self.check()?;
        let mut due: Vec<Asset> =
            self.assets.borrow().values().filter(|a| a.due_at <= now).cloned().collect();
        due.sort_by_key(|asset| asset.due_at);
        due.truncate(limit as usize);
        Ok(due)
    }
}

/// Kling as the coordinator sees it: each task's current data, set by the test, and faults.
#[derive(Default)]
pub struct ScriptedKling {
    pub tasks: RefCell<HashMap<String, Value>>,
    /// The answers of the next calls, in order, before the tasks are consulted.
    pub faults: RefCell<VecDeque<String>>,
    /// Answers every call with this task's data, whatever was asked (Kling resolving an id as
    /// someone else's external id).
    pub answer_with: RefCell<Option<String>>,
    pub calls: Cell<u32>,
    /// Every create Kling was sent: the endpoint's code and the body.
    pub created: RefCell<Vec<(u8, Map<String, Value>)>>,
    /// The answers of the next creates, in order (then Kling accepts each).
    pub create_scripts: RefCell<VecDeque<CreateScript>>,
    /// Every `GET /account/costs` query Kling was sent.
    pub costs_queries: RefCell<Vec<String>>,
    /// The account's concurrency, as Kling enforces it: a create while this many tasks run
    /// is answered 429, code 1303 (unlimited when `None`).
    pub slots: Cell<Option<usize>>,
    /// The most tasks that ever ran at once.
    pub peak_running: Cell<usize>,
    /// The account each task was created on: Kling knows a task only on its own account
    /// (a task `set` by a test is known on every one). `slots` is each account's.
    pub task_accounts: RefCell<HashMap<String, String>>,
    /// The account every create and query was sent to, in order.
    pub calls_on: RefCell<Vec<String>>,
    /// The account a call that names none goes to (a task from before accounts had names):
    /// the deployment's first, `default` unless a test says.
    pub first_account: RefCell<String>,
    /// The `created_at` of the tasks Kling makes (1 unless a test gives Kling a clock).
    pub now_ms: Cell<u64>,
}

impl ScriptedKling {
    /// How many of Kling's tasks have not ended (each holds one of the account's slots).
    pub fn running(&self) -> usize {
        self.tasks.borrow().values().filter(|data| !crate::kling::task::is_final(data)).count()
    }

    /// How many tasks of `account` have not ended.
    pub fn running_on(&self, account: &str) -> usize {
        let accounts = self.task_accounts.borrow();
        let tasks = self.tasks.borrow();
        let on = |(id, data): &(&String, &Value)| {
            accounts.get(*id).is_some_and(|own| own == account) && !crate::kling::task::is_final(data)
        };
        tasks.iter().filter(on).count()
    }

    fn account_of_call(&self, account: Option<&str>) -> String {
        let first = self.first_account.borrow();
        let name =
            account.unwrap_or(if first.is_empty() { crate::accounts::DEFAULT_ACCOUNT } else { &first });
        self.calls_on.borrow_mut().push(name.to_owned());
        name.to_owned()
    }

    /// Whether `account` knows the task `id`.
    fn knows(&self, account: &str, id: &str) -> bool {
        self.task_accounts.borrow().get(id).is_none_or(|own| own == account)
    }

    pub fn set(&self, data: Value) {
        let id = data["task_id"].as_str().unwrap_or_default().to_owned();
        self.tasks.borrow_mut().insert(id, data);
    }
}

impl Upstream for ScriptedKling {
    async fn create(
        &self,
        account: Option<&str>,
        endpoint: &Endpoint,
        body: &Map<String, Value>,
    ) -> Result<KlingReply, ApiError> {
        let first = self.first_account.borrow().clone();
        let default = if first.is_empty() { crate::accounts::DEFAULT_ACCOUNT.to_owned() } else { first };
        let account = account.map_or(default, str::to_owned);
        <ScriptedKling as KlingApi>::create(self, &account, endpoint, body).await
    }

    async fn current_task(
        &self,
        account: Option<&str>,
        _endpoint: &Endpoint,
        task_id: &str,
    ) -> Result<Value, ApiError> {
        let account = self.account_of_call(account);
        self.calls.set(self.calls.get() + 1);
        yield_once().await;
        if let Some(fault) = self.faults.borrow_mut().pop_front() {
            return Err(ApiError::upstream_unreachable(&fault));
        }
        let id = self.answer_with.borrow().clone().unwrap_or_else(|| task_id.to_owned());
        let found = self.tasks.borrow().get(&id).cloned().filter(|_| self.knows(&account, &id));
        found.ok_or_else(|| ApiError::not_found("Kling answered 404"))
    }

    async fn task_by_external_id(
        &self,
        account: Option<&str>,
        _endpoint: &Endpoint,
        external_task_id: &str,
    ) -> Result<Value, ApiError> {
        let account = self.account_of_call(account);
        self.calls.set(self.calls.get() + 1);
        yield_once().await;
        if let Some(fault) = self.faults.borrow_mut().pop_front() {
            return Err(ApiError::upstream_unreachable(&fault));
        }
        let tasks = self.tasks.borrow();
        let found = tasks.iter().find(|(id, data)| {
            crate::kling::task::external_task_id_of(data) == Some(external_task_id)
                && self.knows(&account, id)
        });
        found.map(|(_, data)| data.clone()).ok_or_else(|| ApiError::not_found("Kling answered 404"))
    }
}

/// A delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: u64,
}

/// A client's receiver: records every POST, answers with the scripted statuses (then 200),
/// or is unreachable while `down`.
#[derive(Default)]
pub struct Receiver {
    pub deliveries: RefCell<Vec<Delivery>>,
    pub answers: RefCell<VecDeque<u16>>,
    pub down: Cell<bool>,
    /// The time each delivery is stamped with (shared with the test's clock).
    pub clock: Cell<u64>,
    /// Receivers (URL prefixes) that never answer: their POSTs stay pending.
    pub stalled: RefCell<Vec<String>>,
    /// Every POST started, answered or not.
    pub started: RefCell<Vec<String>>,
}

impl Delivery {
    /// The webhook's body, as JSON.
    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

impl Webhooks for Receiver {
    async fn post(&self, url: &str, headers: &[(&str, String)], body: &[u8]) -> Attempt {
        self.started.borrow_mut().push(url.to_owned());
        yield_once().await;
        if self.stalled.borrow().iter().any(|prefix| url.starts_with(prefix.as_str())) {
            std::future::pending::<()>().await;
        }
        if self.down.get() {
            return Attempt::Retry { status: None, error: "the receiver was unreachable".into() };
        }
        self.deliveries.borrow_mut().push(Delivery {
            url: url.to_owned(),
            headers: headers.iter().map(|(name, value)| (name.to_ascii_lowercase(), value.clone())).collect(),
            body: body.to_vec(),
            at: self.clock.get(),
        });
        Attempt::from_status(self.answers.borrow_mut().pop_front().unwrap_or(200))
    }
}

/// Workers KV in memory, counting writes (puts and deletes).
#[derive(Default)]
pub struct MemoryKv {
    pub entries: RefCell<HashMap<String, String>>,
    pub writes: Cell<u32>,
    pub reads: Cell<u32>,
    pub broken: Cell<bool>,
}

impl EdgeCopies for MemoryKv {
    async fn put(&self, key: &str, value: &str) -> Result<(), ApiError> {
        yield_once().await;
        if self.broken.get() {
            return Err(ApiError::unavailable("KV"));
        }
        self.writes.set(self.writes.get() + 1);
        eprintln!("KVPUT {key} {value}");
        self.entries.borrow_mut().insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), ApiError> {
        yield_once().await;
        if self.broken.get() {
            return Err(ApiError::unavailable("KV"));
        }
        self.writes.set(self.writes.get() + 1);
        self.entries.borrow_mut().remove(key);
        Ok(())
    }

    async fn get(&self, shard: &str, task_id: &str) -> Option<EdgeCopy> {
        self.reads.set(self.reads.get() + 1);
        yield_once().await;
        if self.broken.get() {
            return None;
        }
        let text = self.entries.borrow().get(&edge_copy::key(shard, task_id)).cloned()?;
        serde_json::from_str(&text).ok()
    }

    async fn legacy_task(&self, tenant: &str, id: &str) -> Option<Value> {
        yield_once().await;
        let text = self.entries.borrow().get(&format!("task:{id}")).cloned()?;
        let record: Value = serde_json::from_str(&text).ok()?;
        (record["tenant"] == tenant).then(|| record["data"].clone())
    }
}

/// An R2 bucket in memory, with Kling's files as a map from URL to bytes (a URL missing
/// from it fails, as Kling's server down would).
#[derive(Default)]
pub struct MemoryBucket {
    pub sources: RefCell<HashMap<String, Vec<u8>>>,
    pub objects: RefCell<BTreeMap<String, (String, Vec<u8>)>>,
    pub copies: Cell<u32>,
    /// Multipart uploads begun and neither completed nor aborted (by key).
    pub open_uploads: RefCell<Vec<String>>,
    /// Makes multipart uploads fail, as an R2 outage would.
    pub refuses_parts: Cell<bool>,
    /// Ranged reads made (the probe's).
    pub reads: Cell<u32>,
    /// Makes removals fail.
    pub refuses_deletes: Cell<bool>,
    /// Copies into keys containing one of these do not end while it is there (a stalled
    /// download).
    pub stalled: RefCell<Vec<String>>,
}

impl ResultBucket for MemoryBucket {
    async fn copy(&self, source: &str, key: &str, content_type: &str, max_bytes: u64) -> CopyOutcome {
        self.copies.set(self.copies.get() + 1);
        yield_once().await;
        while self.stalled.borrow().iter().any(|part| key.contains(part.as_str())) {
            yield_once().await;
        }
        let Some(bytes) = self.sources.borrow().get(source).cloned() else {
            return CopyOutcome::Retry("Kling's server answered 503".into());
        };
        if bytes.len() as u64 > max_bytes {
            return CopyOutcome::TooLarge { bytes: bytes.len() as u64 };
        }
        yield_once().await;
        let length = bytes.len() as u64;
        self.objects.borrow_mut().insert(key.to_owned(), (content_type.to_owned(), bytes));
        CopyOutcome::Copied { bytes: length }
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ApiError> {
        yield_once().await;
        if self.refuses_deletes.get() {
            return Err(ApiError::unavailable("the bucket"));
        }
        let mut objects = self.objects.borrow_mut();
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }
}

/// A request body in memory: its chunks, and whether it breaks off after them (a client
/// that went away).
#[derive(Debug, Default)]
pub struct MemoryBody {
    pub chunks: VecDeque<Vec<u8>>,
    pub breaks_off: bool,
}

impl MemoryBody {
    /// `bytes` in chunks of `chunk` bytes.
    pub fn of(bytes: &[u8], chunk: usize) -> MemoryBody {
        MemoryBody { chunks: bytes.chunks(chunk.max(1)).map(<[u8]>::to_vec).collect(), breaks_off: false }
    }
}

/// A multipart upload under way in the memory bucket.
#[derive(Debug)]
pub struct MemoryParts {
    key: String,
    content_type: String,
    parts: Vec<Vec<u8>>,
}

impl AssetBucket for MemoryBucket {
    type Body = MemoryBody;
    type Parts = MemoryParts;

    async fn next_chunk(&self, body: &mut MemoryBody) -> Result<Option<Vec<u8>>, UploadFault> {
        yield_once().await;
        match body.chunks.pop_front() {
            Some(chunk) => Ok(Some(chunk)),
            None if body.breaks_off => Err(UploadFault::BrokeOff),
            None => Ok(None),
        }
    }

    async fn put_whole(
        &self,
        key: &str,
        content_type: &str,
        mut body: MemoryBody,
        length: u64,
    ) -> Result<(), UploadFault> {
        let mut bytes = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != length {
            return Err(UploadFault::BrokeOff);
        }
        self.objects.borrow_mut().insert(key.to_owned(), (content_type.to_owned(), bytes));
        Ok(())
    }

    async fn begin_parts(&self, key: &str, content_type: &str) -> Result<MemoryParts, UploadFault> {
        yield_once().await;
        if self.refuses_parts.get() {
            return Err(UploadFault::Bucket("the bucket is unavailable".into()));
        }
        self.open_uploads.borrow_mut().push(key.to_owned());
        Ok(MemoryParts { key: key.to_owned(), content_type: content_type.to_owned(), parts: Vec::new() })
    }

    async fn put_part(&self, parts: &mut MemoryParts, bytes: Vec<u8>) -> Result<(), UploadFault> {
        yield_once().await;
        if self.refuses_parts.get() {
            return Err(UploadFault::Bucket("the bucket is unavailable".into()));
        }
        parts.parts.push(bytes);
        Ok(())
    }

    async fn complete(&self, parts: MemoryParts) -> Result<(), UploadFault> {
        yield_once().await;
        self.open_uploads.borrow_mut().retain(|key| *key != parts.key);
        let whole = parts.parts.concat();
        self.objects.borrow_mut().insert(parts.key, (parts.content_type, whole));
        Ok(())
    }

    async fn abort(&self, parts: MemoryParts) {
        yield_once().await;
        self.open_uploads.borrow_mut().retain(|key| *key != parts.key);
    }

    async fn read(&self, key: &str, offset: u64, length: u64) -> Result<Vec<u8>, ApiError> {
        yield_once().await;
        self.reads.set(self.reads.get() + 1);
        let objects = self.objects.borrow();
        let Some((_, bytes)) = objects.get(key) else { return Err(ApiError::not_found("object")) };
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(length as usize).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    async fn remove(&self, key: &str) -> Result<(), ApiError> {
        yield_once().await;
        self.objects.borrow_mut().remove(key);
        Ok(())
    }
}

/// A clock the test moves (a sleep moves it too), counted randomness, and the log lines
/// the flows wrote.
#[derive(Default)]
pub struct TestRuntime {
    pub now: Cell<u64>,
    pub logs: RefCell<Vec<Value>>,
    /// How many random values were drawn (each is the count, so every draw differs).
    pub draws: Cell<u64>,
    /// Makes drawing randomness fail, as a platform without it would.
    pub no_randomness: Cell<bool>,
    /// Makes a sleep wait until the test moves the clock past its end (by default a sleep
    /// moves the clock itself).
    pub manual_clock: Cell<bool>,
}

impl TestRuntime {
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }
}

impl Runtime for TestRuntime {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn random_16(&self) -> Result<[u8; 16], ApiError> {
        if self.no_randomness.get() {
            return Err(ApiError::internal("no randomness available"));
        }
        self.draws.set(self.draws.get() + 1);
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&self.draws.get().to_be_bytes());
        Ok(bytes)
    }

    async fn sleep(&self, ms: u64) {
        if self.manual_clock.get() {
            let end = self.now_ms().saturating_add(ms);
            while self.now_ms() < end {
                yield_once().await;
            }
            return;
        }
        yield_once().await;
        self.advance(ms);
    }

    fn log(&self, event: Value) {
        self.logs.borrow_mut().push(event);
    }
}

// --- the request path's ports -------------------------------------------------------------

/// A deployment's settings from `pairs` over a working base (Kling's keys, two clients, the
/// webhook and token secrets), as `wrangler.toml` and secrets would give them.
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let mut settings: HashMap<String, String> = [
        ("KLING_ACCESS_KEY", "ak-example"),
        ("KLING_SECRET_KEY", "sk-example"),
        ("PROXY_API_KEYS", "web:k_web_example_key,ops:k_ops_example_key"),
        ("PROXY_WEBHOOK_SECRET", "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="),
        ("PROXY_TOKEN_SECRET", "token-secret-example-0123456789abcdef"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    for (name, value) in pairs {
        settings.insert(name.to_string(), value.to_string());
    }
    Config::from_lookup(|name| settings.get(name).cloned()).expect("a valid test configuration")
}

/// What a create to Kling answers next, when scripted.
#[derive(Debug, Clone)]
pub enum CreateScript {
    /// Kling answers with this status and body.
    Reply(KlingReply),
    /// The call fails (the connection, or the deadline).
    Fail(ApiError),
}

impl KlingApi for ScriptedKling {
    /// Records the body; answers the next scripted answer, else accepts the task as Kling
    /// does (`submitted`, a fresh id), which later queries then find.
    async fn create(
        &self,
        account: &str,
        endpoint: &Endpoint,
        body: &Map<String, Value>,
    ) -> Result<KlingReply, ApiError> {
        self.account_of_call(Some(account));
        self.created.borrow_mut().push((endpoint.code, body.clone()));
        yield_once().await;
        if let Some(script) = self.create_scripts.borrow_mut().pop_front() {
            return match script {
                CreateScript::Reply(reply) => Ok(reply),
                CreateScript::Fail(error) => Err(error),
            };
        }
        if self.slots.get().is_some_and(|slots| self.running_on(account) >= slots) {
            let envelope = serde_json::json!({"code": 1303, "message": "parallel task over resource pack limit", "request_id": "kling-req"});
            return Ok(KlingReply { status: 429, body: envelope.to_string().into_bytes() });
        }
        let task_id = format!("task-{}", self.created.borrow().len());
        let at = self.now_ms.get().max(1);
        let mut data = serde_json::json!({"task_id": task_id, "task_status": "submitted",
            "created_at": at, "updated_at": at});
        if let Some(external) = body.get("external_task_id") {
            data["task_info"] = serde_json::json!({"external_task_id": external});
        }
        self.set(data.clone());
        self.task_accounts.borrow_mut().insert(task_id, account.to_owned());
        self.peak_running.set(self.peak_running.get().max(self.running()));
        let envelope =
            serde_json::json!({"code": 0, "message": "SUCCEED", "request_id": "kling-req", "data": data});
        Ok(KlingReply { status: 200, body: envelope.to_string().into_bytes() })
    }

    async fn account_packs(&self, account: &str, now_ms: u64) -> Result<KlingReply, ApiError> {
        self.account_of_call(Some(account));
        let query = crate::validate::CostsQuery {
            start_time: now_ms.saturating_sub(365 * 86_400_000),
            end_time: now_ms,
            resource_pack_name: None,
        };
        <ScriptedKling as KlingApi>::account_costs(self, &query).await
    }

    async fn account_costs(&self, query: &crate::validate::CostsQuery) -> Result<KlingReply, ApiError> {
        self.costs_queries.borrow_mut().push(query.to_query());
        yield_once().await;
        let data = serde_json::json!({"resource_pack_subscribe_infos": [{"resource_pack_name": "Video", "remaining_quantity": 10}]});
        let envelope =
            serde_json::json!({"code": 0, "message": "SUCCEED", "request_id": "kling-req", "data": data});
        Ok(KlingReply { status: 200, body: envelope.to_string().into_bytes() })
    }
}

/// The rate limits in memory: each `(limit, key)` may be counted up to its allowance.
#[derive(Default)]
pub struct MemoryLimiter {
    pub counts: RefCell<HashMap<(Limit, String), u32>>,
    /// Allowances by limit (unlimited when absent).
    pub allowance: RefCell<HashMap<Limit, u32>>,
}

impl MemoryLimiter {
    pub fn count(&self, limit: Limit) -> u32 {
        self.counts.borrow().iter().filter(|((l, _), _)| *l == limit).map(|(_, n)| n).sum()
    }
}

impl RateLimiter for MemoryLimiter {
    async fn check(&self, limit: Limit, key: &str) -> Result<(), ApiError> {
        yield_once().await;
        let mut counts = self.counts.borrow_mut();
        let count = counts.entry((limit, key.to_owned())).or_default();
        *count += 1;
        match self.allowance.borrow().get(&limit) {
            Some(allowed) if *count > *allowed => Err(ApiError::rate_limited(60)),
            _ => Ok(()),
        }
    }
}

/// The video probe: answers what the test set for a URL (else an 8 s MP4), counting calls.
#[derive(Default)]
pub struct ScriptedProbe {
    pub outcomes: RefCell<HashMap<String, video_check::Outcome>>,
    /// Measurements kept, as the edge's cache keeps them.
    pub remembered: RefCell<HashMap<String, video_check::Outcome>>,
    pub calls: Cell<u32>,
}

impl VideoProbe for ScriptedProbe {
    async fn remembered(&self, url: &str) -> Option<video_check::Outcome> {
        yield_once().await;
        self.remembered.borrow().get(url).cloned()
    }

    async fn measure(&self, url: &str) -> video_check::Outcome {
        self.calls.set(self.calls.get() + 1);
        yield_once().await;
        let outcome = self.outcomes.borrow().get(url).cloned().unwrap_or(video_check::Outcome::Measured {
            container: "mp4".into(),
            seconds: 8.0,
            bytes: Some(1_000_000),
        });
        if matches!(outcome, video_check::Outcome::Measured { .. }) {
            self.remembered.borrow_mut().insert(url.to_owned(), outcome.clone());
        }
        outcome
    }
}

/// Every tenant's coordinator in memory, sharing Kling, the receivers, KV, the bucket and
/// the clock: each call crosses as JSON to [`protocol::serve`], as it does to the Durable
/// Object, on the store of the shard it names (created on first use, kept across crashes).
pub struct MemoryCoordinators<'a> {
    pub kling: &'a ScriptedKling,
    pub receiver: &'a Receiver,
    pub kv: &'a MemoryKv,
    pub bucket: &'a MemoryBucket,
    pub runtime: &'a TestRuntime,
    pub settings: &'a Settings,
    pub stores: &'a RefCell<BTreeMap<String, Rc<MemoryStore>>>,
    /// Each object instance's memory (its prompt steps): cleared, it is a restart.
    pub prompts: &'a RefCell<BTreeMap<String, Rc<PromptSteps>>>,
    /// Makes every call fail as an unreachable object would (503).
    pub down: &'a Cell<bool>,
    pub calls: &'a RefCell<Vec<String>>,
    pub gates: &'a MemoryGates,
}

impl MemoryCoordinators<'_> {
    pub fn store(&self, shard: &str) -> Rc<MemoryStore> {
        self.stores.borrow_mut().entry(shard.to_owned()).or_default().clone()
    }

    pub fn prompts(&self, shard: &str) -> Rc<PromptSteps> {
        self.prompts.borrow_mut().entry(shard.to_owned()).or_default().clone()
    }

    pub fn coordinator<'s>(
        &'s self,
        shard: &'s str,
        store: &'s MemoryStore,
        prompts: &'s PromptSteps,
    ) -> Coordinator<'s, MemoryStore, ScriptedKling, Receiver, MemoryKv, MemoryBucket, TestRuntime, MemoryGates>
    {
        Coordinator {
            shard,
            store,
            prompts,
            gates: self.gates,
            kling: self.kling,
            webhooks: self.receiver,
            edge_copies: self.kv,
            bucket: self.bucket,
            runtime: self.runtime,
            settings: self.settings,
        }
    }
}

impl Coordinators for MemoryCoordinators<'_> {
    async fn call<C: Call>(&self, shard: &str, call: C) -> Result<C::Answer, ApiError> {
        let body = protocol::encode(call)?;
        let op: Value = serde_json::from_str(&body).unwrap_or_default();
        self.calls.borrow_mut().push(op["op"].as_str().unwrap_or_default().to_owned());
        yield_once().await;
        if self.down.get() {
            return Err(ApiError::new(
                503,
                crate::error::code::UNAVAILABLE,
                "the task coordinator is unavailable",
            ));
        }
        let (store, prompts) = (self.store(shard), self.prompts(shard));
        let answer = protocol::serve(&self.coordinator(shard, &store, &prompts), body.as_bytes()).await;
        protocol::decode::<C>(answer.as_bytes())
    }
}

/// A Kling account's gate kept whole in memory (kept across crashes, as the object's
/// storage is), counting its saves.
#[derive(Default)]
pub struct MemoryGate {
    pub gate: RefCell<Gate>,
    pub saves: Cell<u32>,
}

impl GateStore for MemoryGate {
    fn load_gate(&self) -> Result<Gate, ApiError> {
        Ok(self.gate.borrow().clone())
    }
    fn save_gate(&self, gate: &Gate) -> Result<(), ApiError> {
        self.saves.set(self.saves.get() + 1);
        *self.gate.borrow_mut() = gate.clone();
        Ok(())
    }
}

/// The gate as its callers reach it: each call crosses as JSON to [`gate_protocol::serve`],
/// as it does to the Durable Object. Its alarm is driven by the test ([`GateFlows::run_due`]
/// with the coordinators as its dispatcher).
pub struct MemoryGates {
    pub store: MemoryGate,
    pub settings: GateSettings,
    /// The test's clock, shared.
    pub runtime: Rc<TestRuntime>,
    /// Makes every call fail as an unreachable object would (503).
    pub down: Cell<bool>,
    pub calls: RefCell<Vec<String>>,
}

impl MemoryGates {
    /// The gate of a deployment with these settings, on the test's clock.
    pub fn new(runtime: Rc<TestRuntime>, config: &Config) -> MemoryGates {
        MemoryGates {
            store: MemoryGate::default(),
            settings: GateSettings::of(config),
            runtime,
            down: Cell::new(false),
            calls: RefCell::default(),
        }
    }

    /// The gate's flows, with `dispatcher` for its alarm.
    pub fn flows<'a, D: Dispatcher>(
        &'a self,
        dispatcher: &'a D,
    ) -> GateFlows<'a, MemoryGate, D, TestRuntime> {
        GateFlows { store: &self.store, dispatcher, runtime: &self.runtime, settings: &self.settings }
    }
}

/// The dispatcher a gate's request never uses (only its alarm sends creates).
pub struct NoDispatch;

impl Dispatcher for NoDispatch {
    async fn dispatch(&self, _ticket: &Ticket, _account: &str) -> Dispatched {
        Dispatched::Unknown
    }
}

impl Gates for MemoryGates {
    async fn call<C: GateCall>(&self, call: C) -> Result<C::Answer, ApiError> {
        let body = gate_protocol::encode(call)?;
        let op: Value = serde_json::from_str(&body).unwrap_or_default();
        self.calls.borrow_mut().push(op["op"].as_str().unwrap_or_default().to_owned());
        yield_once().await;
        if self.down.get() {
            return Err(ApiError::new(503, crate::error::code::UNAVAILABLE, "the gate is unavailable"));
        }
        let flows = self.flows(&NoDispatch);
        gate_protocol::decode::<C>(gate_protocol::serve(&flows, body.as_bytes()).as_bytes())
    }
}

/// The coordinators as the gate's alarm reaches them: a queued create's turn.
impl Dispatcher for MemoryCoordinators<'_> {
    async fn dispatch(&self, ticket: &Ticket, account: &str) -> Dispatched {
        let shard = crate::kling::task::tenant_shard(&ticket.tenant);
        let call = protocol::Dispatch { nonce: ticket.id.clone(), account: account.to_owned() };
        self.call(&shard, call).await.unwrap_or(Dispatched::Unknown)
    }
}
