//! In-memory ports, so every flow and every fault is a `cargo test`: a store that survives a
//! "crash" (as SQLite does), a scripted Kling, a receiver that can be down, a KV that counts
//! its writes, a manual clock, and an executor that can stop a flow at any `await` and drop
//! it, as an evicted isolate would.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde_json::Value;

use crate::api::Endpoint;
use crate::copies::CopyOutcome;
use crate::error::ApiError;
use crate::ports::{ReadModel, ResultBucket, Runtime, TaskStore, Upstream, Webhooks};
use crate::record::{Attempt, TaskRecord};

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

/// One tenant's tasks in memory, with the due times a save computes (as the SQL store does).
#[derive(Default)]
pub struct MemoryStore {
    tasks: RefCell<BTreeMap<String, TaskRecord>>,
    meta: RefCell<HashMap<String, String>>,
    /// Makes every call fail, as a storage outage would.
    pub broken: Cell<bool>,
}

impl MemoryStore {
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
            .filter(|record| crate::task::external_task_id_of(&record.data) == Some(external_task_id))
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
        self.check()?;
        let mut due: Vec<(u64, String)> = self
            .tasks
            .borrow()
            .values()
            .filter_map(|record| {
                record.due_at().filter(|at| *at <= now).map(|at| (at, record.task_id.clone()))
            })
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit as usize).map(|(_, id)| id).collect())
    }

    fn next_due(&self) -> Result<Option<u64>, ApiError> {
        self.check()?;
        Ok(self.tasks.borrow().values().filter_map(TaskRecord::due_at).min())
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
}

impl ScriptedKling {
    pub fn set(&self, data: Value) {
        let id = data["task_id"].as_str().unwrap_or_default().to_owned();
        self.tasks.borrow_mut().insert(id, data);
    }
}

impl Upstream for ScriptedKling {
    async fn current_task(&self, _endpoint: &Endpoint, task_id: &str) -> Result<Value, String> {
        self.calls.set(self.calls.get() + 1);
        yield_once().await;
        if let Some(fault) = self.faults.borrow_mut().pop_front() {
            return Err(fault);
        }
        let id = self.answer_with.borrow().clone().unwrap_or_else(|| task_id.to_owned());
        self.tasks.borrow().get(&id).cloned().ok_or_else(|| "Kling answered 404".to_owned())
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
}

impl Webhooks for Receiver {
    async fn post(&self, url: &str, headers: &[(&str, String)], body: &[u8]) -> Attempt {
        yield_once().await;
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
    pub broken: Cell<bool>,
}

impl ReadModel for MemoryKv {
    async fn put(&self, key: &str, value: &str) -> Result<(), String> {
        yield_once().await;
        if self.broken.get() {
            return Err("KV is unavailable".into());
        }
        self.writes.set(self.writes.get() + 1);
        self.entries.borrow_mut().insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        yield_once().await;
        if self.broken.get() {
            return Err("KV is unavailable".into());
        }
        self.writes.set(self.writes.get() + 1);
        self.entries.borrow_mut().remove(key);
        Ok(())
    }
}

/// An R2 bucket in memory, with Kling's files as a map from URL to bytes (a URL missing
/// from it fails, as Kling's server down would).
#[derive(Default)]
pub struct MemoryBucket {
    pub sources: RefCell<HashMap<String, Vec<u8>>>,
    pub objects: RefCell<BTreeMap<String, (String, Vec<u8>)>>,
    pub copies: Cell<u32>,
}

impl ResultBucket for MemoryBucket {
    async fn copy(&self, source: &str, key: &str, content_type: &str, max_bytes: u64) -> CopyOutcome {
        self.copies.set(self.copies.get() + 1);
        yield_once().await;
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

    async fn delete(&self, keys: &[String]) -> Result<(), String> {
        yield_once().await;
        let mut objects = self.objects.borrow_mut();
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }
}

/// A clock the test moves, and the log lines the flows wrote.
#[derive(Default)]
pub struct TestRuntime {
    pub now: Cell<u64>,
    pub logs: RefCell<Vec<Value>>,
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

    fn log(&self, event: Value) {
        self.logs.borrow_mut().push(event);
    }
}
