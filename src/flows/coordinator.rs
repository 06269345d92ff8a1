//! The coordinator's flows: what happens to one tenant's tasks when a create is recorded,
//! when Kling calls back, when a client asks, and when something falls due (the alarm).
//!
//! Written once against the ports of `crate::ports`: the Durable Object runs them with
//! SQLite, `fetch` and Workers KV; `cargo test` runs them in memory, with faults, races and
//! crashes between any two steps. The rules themselves are in `crate::record`.
//!
//! Every change is a read-modify-write with no `await` inside it, so it is atomic in the
//! object. Across an `await` (a call to Kling, a webhook, a KV write) the world may change:
//! each flow re-reads the record afterwards and applies only what the outcome says, so
//! concurrent callbacks, queries and alarms all converge. Work that falls due is done by
//! the alarm, which the runtime runs at least once: every step is safe to repeat. A callback
//! that makes a task's step due may have it made at once instead, by a request of its own
//! (`super::prompt`); the alarm makes it if that never comes.

use std::collections::{HashMap, VecDeque};

use futures_util::future::{FutureExt, LocalBoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api;
use crate::error::{code, ApiError};
use crate::kling::task;
use crate::links::result_links::{self, LinkKey, Minter};
use crate::links::webhook::WebhookKey;
use crate::ports::{AssetStore, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream, Webhooks};
use crate::record::copies::{self, CopySettings};
use crate::record::delivery::{self, Attempt};
use crate::record::edge_copy::{self, Write};
use crate::record::idempotency::StoredAnswer;
use crate::record::intent::Intent;
use crate::record::max_jobs::{self, HoldOutcome, Holds};
use crate::record::queued::{self, Queued};
use crate::record::{TaskAnswer, TaskRecord, RETENTION_MS};
use crate::schedule::Schedule;

use super::gate_protocol::{Position, Release};
use super::prompt::PromptSteps;
use super::protocol::StepNow;
use super::queue;

/// How many due tasks one alarm handles before scheduling itself again.
pub const DUE_BATCH: u32 = 60;
/// How many due tasks one alarm works on at once. A Worker invocation keeps at most six
/// connections open at once (more wait for one to close), and each task's step holds one.
pub const DUE_PARALLEL: usize = 6;
/// How many of the steps in flight may be waiting on one receiver (its origin): most apps
/// have one receiver, which gets four lanes; a slow one never takes the lanes of others
/// (one at least stays free for them, and one for copies).
pub const PER_RECEIVER: usize = 4;
/// How many of the six lanes copies of result files may hold: one whenever copies wait, up
/// to three when no step waits. Webhooks, polls and edge copies take milliseconds where a
/// copy takes seconds, and a copy's link serves Kling's file until it is made.
pub const COPY_LANES: usize = 3;
/// While copies are in flight, how often the alarm looks for newly due steps.
pub const REFILL_TICK_MS: u64 = 1_000;
/// How long an alarm starts new copies: then it lets those in flight finish (going on with
/// due steps meanwhile) and ends, and the next alarm takes what is left (the runtime bounds
/// an alarm's duration).
pub const ALARM_SPAN_MS: u64 = 30_000;

/// The alarm's work, planned: the tasks whose step is due (with their receiver's origin) and
/// those whose copies are, in the order they are started; and, by task, whether this alarm
/// has planned its step, and whether it has looked at its copies (planned them or not).
#[derive(Default)]
struct Plan {
    steps: VecDeque<(String, Option<String>)>,
    copies: VecDeque<String>,
    planned: HashMap<String, (bool, bool)>,
}

/// A piece of the alarm's work that ended.
enum Finished {
    Step(Result<(), ApiError>, Option<String>),
    Copies(Result<(), ApiError>),
    /// Time to look for newly due steps.
    Tick,
}

/// The settings the flows follow.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KLING_POLL_SECONDS`.
    pub poll: Schedule,
    /// `FORWARD_RETRY_SECONDS`.
    pub forward: Schedule,
    /// `PROXY_WEBHOOK_SECRET`'s key, from which each client's signing key is derived.
    pub webhook_key: Option<WebhookKey>,
    /// Copying result files into the bucket; `None` when the deployment has no bucket.
    pub copies: Option<CopySettings>,
    /// Signing the links to the copies in webhooks.
    pub links: LinkSettings,
    /// How long a queued create's send to Kling may go unanswered before it is looked for at
    /// Kling (by its external id) and sent again if Kling has none: past a create's deadline.
    pub send_deadline_ms: u64,
    /// The Kling accounts' names, the first one first: a create whose account was not known
    /// when its intent was written is looked for on each.
    pub accounts: Vec<String>,
}

/// What the links in webhooks need: the key, how long they last, and the origin to use for
/// a task whose create's origin is unknown (`PUBLIC_BASE_URL`).
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub key: LinkKey,
    pub ttl_secs: u32,
    pub public_base_url: Option<String>,
}

impl Settings {
    /// How long a finished task's record is kept: Kling's 30 days, or longer if copies are.
    pub fn keep_ms(&self) -> u64 {
        self.copies.as_ref().map_or(RETENTION_MS, |copies| copies.retention_ms.max(RETENTION_MS))
    }
}

/// A create Kling accepted, as the edge reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub task_id: String,
    pub endpoint: u8,
    pub nonce: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_callback_url: Option<String>,
    /// `useapi` when created in useapi.net's shape (see `TaskRecord::style`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_ref: Option<String>,
    /// The worker's origin the create came to (for the links in its webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Kling's answer to the create (`data`).
    pub data: Value,
    /// The `maxJobs` hold the create took (`crate::record::max_jobs`): released as the task
    /// is recorded, since it then counts as running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs_hold: Option<String>,
    /// The create holds one of its account's slots at the gate (its ticket: the nonce),
    /// given back when the task ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_slot: bool,
    /// The Kling account that has the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The create's `Idempotency-Key` and its answer, kept for a repeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_answer: Option<super::protocol::KeyAnswer>,
    /// What kind of create it was (`super::budget::cost_kind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_kind: Option<String>,
}

pub struct Coordinator<'a, S, K, W, R, B, T, G> {
    /// The tenant's shard: the object's own name, and the prefix of its tasks' keys (edge
    /// copies, result copies, links).
    pub shard: &'a str,
    pub store: &'a S,
    pub kling: &'a K,
    pub webhooks: &'a W,
    pub edge_copies: &'a R,
    pub bucket: &'a B,
    pub runtime: &'a T,
    pub settings: &'a Settings,
    /// This instance's prompt steps and steps in flight (memory, not storage).
    pub prompts: &'a PromptSteps,
    /// The Kling account's gate: told when a task holding a slot ends, asked about queued
    /// creates.
    pub gates: &'a G,
}

fn wrong_task() -> ApiError {
    ApiError::new(403, code::NO_PERMISSION, "callback: this URL belongs to another task")
}

impl<
        S: TaskStore + AssetStore,
        K: Upstream,
        W: Webhooks,
        R: EdgeCopies,
        B: ResultBucket,
        T: Runtime,
        G: Gates,
    > Coordinator<'_, S, K, W, R, B, T, G>
{
    /// Remembers which tenant this coordinator serves (every client call says; a callback
    /// may wake it first).
    pub fn learn_tenant(&self, tenant: Option<&str>) -> Result<(), ApiError> {
        if let Some(tenant) = tenant {
            if self.store.meta("tenant")?.as_deref() != Some(tenant) {
                self.store.set_meta("tenant", tenant)?;
            }
        }
        Ok(())
    }

    /// Records a create Kling accepted. A callback may have come first: its report is kept
    /// and this one merged in. A record with this task id from another create (an upstream
    /// that repeated an id) is replaced, never merged, and its edge copy removed.
    pub fn register(&self, registration: Registration) -> Result<(), ApiError> {
        let now = self.runtime.now_ms();
        let Registration {
            task_id,
            endpoint,
            nonce,
            tenant,
            client_callback_url,
            style,
            reply_ref,
            origin,
            data,
            max_jobs_hold,
            holds_slot,
            account,
            key_answer,
            cost_kind,
        } = registration;
        if let Some(bound) = self.store.find_nonce(&nonce)?.filter(|bound| *bound != task_id) {
            // Only a forged callback (with a leaked URL) could have bound this fresh nonce
            // to another task before the create's answer: the create's answer wins.
            // It is dropped, to be forgotten by the alarm with its copies and edge copy, and
            // its capability unbound.
            self.runtime.log(json!({"event": "nonce_rebound", "task_id": task_id, "dropped": bound}));
            self.store.update(&bound, |forged| {
                forged.dropped = true;
                forged.nonce = format!("dropped:{}", forged.nonce);
            })?;
        }
        let mut record = match self.store.load(&task_id)? {
            Some(existing) if existing.nonce == nonce => existing,
            Some(existing) => {
                self.runtime.log(json!({"event": "task_id_reused", "task_id": task_id,
                    "previous_created_at": existing.created_at}));
                let mut fresh = TaskRecord::new(&task_id, endpoint, &nonce, data.clone(), now);
                fresh.edge_copy_digest = existing.edge_copy_digest;
                fresh
            }
            None => TaskRecord::new(&task_id, endpoint, &nonce, data.clone(), now),
        };
        record.registered = true;
        record.holds_slot |= holds_slot;
        record.endpoint = endpoint;
        record.tenant = Some(tenant);
        record.client_callback_url = client_callback_url;
        record.style = style;
        record.reply_ref = reply_ref;
        record.origin = origin;
        if account.is_some() {
            record.account = account;
        }
        if cost_kind.is_some() {
            record.cost_kind = cost_kind;
        }
        record.apply_report(&data, now, &self.settings.poll);
        if record.next_poll_at.is_none() {
            record.schedule_poll(now, &self.settings.poll);
        }
        record.queue_delivery(now);
        self.queue_copies_of(&mut record, now);
        self.take_credits(&nonce)?;
        self.count_cost(&mut record)?;
        self.store.save(&record)?;
        self.store.delete_intent(&nonce)?;
        if let Some(key_answer) = key_answer {
            self.settle_key(&nonce, key_answer)?;
        }
        match max_jobs_hold {
            Some(hold_id) => self.release_job(&hold_id),
            None => Ok(()),
        }
    }

    /// Records a callback from Kling, whose capability named this coordinator, `nonce` and
    /// `endpoint`. The nonce binds to the first task it reports about; a report about
    /// another task with it is refused, and so is one for a task created with another nonce.
    /// A report that makes the task's step due answers with its prompt step, if its receiver
    /// has room for one (`super::prompt`). `account` is the capability's: the account a task
    /// first learned from its callback is followed on.
    pub fn report(
        &self,
        nonce: &str,
        endpoint: u8,
        report: &Value,
        account: Option<&str>,
    ) -> Result<Option<StepNow>, ApiError> {
        let now = self.runtime.now_ms();
        let reported = task::task_id_of(report)
            .ok_or_else(|| ApiError::bad_param("task_id", "is required (a string)"))?
            .to_owned();
        let task_id = match self.store.find_nonce(nonce)? {
            Some(bound) if bound != reported => self.kling_side_of(&bound, &reported)?,
            _ => reported,
        };
        let mut record = match self.store.load(&task_id)? {
            Some(record) if record.nonce != nonce || record.endpoint != endpoint => return Err(wrong_task()),
            Some(record) => record,
            None => {
                let mut record = TaskRecord::new(&task_id, endpoint, nonce, report.clone(), now);
                record.tenant = self.store.meta("tenant")?;
                record.account = account.map(str::to_owned);
                record.schedule_poll(now, &self.settings.poll);
                record.queue_delivery(now);
                let step_now = self.promise_step(&mut record, now);
                self.count_cost(&mut record)?;
                self.store.save(&record)?;
                return Ok(step_now);
            }
        };
        if !record.apply_report(&record.as_ours(report), now, &self.settings.poll) {
            return Ok(None);
        }
        self.queue_copies_of(&mut record, now);
        let step_now = self.promise_step(&mut record, now);
        self.count_cost(&mut record)?;
        self.store.save(&record)?;
        Ok(step_now)
    }

    /// The task a nonce is bound to, when a callback about Kling's task `reported` comes with
    /// it: a create queued at the edge has the worker's id, and Kling's beside it. A callback
    /// that beats the answer of the send that made the task binds Kling's id then (only Kling
    /// has the capability's URL); any other task is not the capability's.
    fn kling_side_of(&self, bound: &str, reported: &str) -> Result<String, ApiError> {
        let Some(record) = self.store.load(bound)? else { return Err(wrong_task()) };
        match (&record.kling_task_id, &record.queued) {
            (Some(kling_task_id), _) if kling_task_id == reported => Ok(bound.to_owned()),
            (None, Some(Queued { sending_since: Some(_), .. })) => {
                self.store.update(bound, |record| record.kling_task_id = Some(reported.to_owned()))?;
                Ok(bound.to_owned())
            }
            _ => Err(wrong_task()),
        }
    }

    /// Promises the task a prompt step if its step is due at `now` and its receiver has room:
    /// the alarm then leaves the step alone for a while (the caller saves the record).
    fn promise_step(&self, record: &mut TaskRecord, now: u64) -> Option<StepNow> {
        record.prompt_until = None;
        if record.dropped || !record.step_due(now) {
            return None;
        }
        let until = self.prompts.promise(&record.task_id, record.receiver_origin().as_deref(), now)?;
        record.prompt_until = Some(until);
        Some(StepNow { task_id: record.task_id.clone() })
    }

    /// A prompt step that a report promised: the task's step, unless it is in flight already
    /// (or was made meanwhile, when there is nothing left to do). Its receiver's room frees
    /// when it ends.
    pub async fn step_now(&self, task_id: &str) -> Result<(), ApiError> {
        let receiver = self.store.load(task_id)?.and_then(|record| record.receiver_origin());
        let outcome = self.step(task_id).await;
        self.prompts.redeem(task_id, receiver.as_deref());
        outcome
    }

    /// One of the tenant's tasks of `endpoint`, by task id or external task id, as the client
    /// sees it. A running task that sent no news for a few seconds is refreshed from Kling
    /// first (by task id only), so a client polling the worker never waits on the schedule.
    pub async fn query(&self, tenant: &str, endpoint: u8, id: &str) -> Result<Option<TaskAnswer>, ApiError> {
        let Some(record) = self.find(tenant, endpoint, id)? else { return Ok(None) };
        let now = self.runtime.now_ms();
        if record.queued.is_some() {
            return Ok(Some(self.queued_answer(&record).await));
        }
        if !record.wants_refresh(now) {
            return Ok(Some(record.answer()));
        }
        let task_id = record.task_id.clone();
        self.poll(&task_id).await?;
        Ok(self.store.load(&task_id)?.map(|record| record.answer()))
    }

    /// A queued create's answer, with its place in line as the gate has it now (none if the
    /// gate cannot say: it is being sent, or the gate did not answer).
    async fn queued_answer(&self, record: &TaskRecord) -> TaskAnswer {
        let mut answer = record.answer();
        let sending = record.queued.as_ref().is_some_and(|queued| queued.sending_since.is_some());
        let position = match sending {
            true => None,
            false => self.gates.call(Position { id: record.nonce.clone() }).await.ok().flatten(),
        };
        if let Some(data) = answer.data.as_object_mut() {
            let message = match sending {
                true => "on its way to Kling".to_owned(),
                false => queued::status_message(position),
            };
            data.insert("task_status_msg".into(), Value::String(message));
            if let (Some(position), Some(queue)) =
                (position, data.get_mut("queue").and_then(Value::as_object_mut))
            {
                queue.insert("position".into(), Value::from(position));
            }
        }
        answer
    }

    fn find(&self, tenant: &str, endpoint: u8, id: &str) -> Result<Option<TaskRecord>, ApiError> {
        let mine = |record: &TaskRecord| {
            record.tenant.as_deref().is_none_or(|owner| owner == tenant)
                && record.endpoint == endpoint
                && !record.dropped
        };
        if let Some(record) = self.store.load(id)?.filter(mine) {
            return self.adopt(record, tenant).map(Some);
        }
        // By external id only a claimed task is found: an unclaimed one (a callback's alone,
        // perhaps forged) is claimed only by its own task id.
        let Some(task_id) = self.store.find_external(id)? else { return Ok(None) };
        Ok(self.store.load(&task_id)?.filter(mine).filter(TaskRecord::claimed))
    }

    /// Every task in a coordinator is its tenant's: the object is named by the tenant's
    /// shard, and so is every capability that reaches it. A task only a callback recorded
    /// (its create's record never landed) is listed, and claimed by its tenant's first query
    /// of its task id (the id Kling gave the create); from then on it is copied and published
    /// like any other.
    fn adopt(&self, mut record: TaskRecord, tenant: &str) -> Result<TaskRecord, ApiError> {
        if record.tenant.is_none() || !record.registered {
            record.tenant = Some(tenant.to_owned());
            record.registered = true;
            self.queue_copies_of(&mut record, self.runtime.now_ms());
            self.store.save(&record)?;
        }
        Ok(record)
    }

    /// One page of the tenant's tasks of `endpoint`, newest first, from the store alone.
    pub fn list(
        &self,
        tenant: &str,
        endpoint: u8,
        page_num: u32,
        page_size: u32,
    ) -> Result<Vec<TaskAnswer>, ApiError> {
        let offset = page_num.saturating_sub(1).saturating_mul(page_size);
        let mut answers = Vec::new();
        for record in self.store.page(endpoint, offset, page_size)? {
            // An unclaimed task (a callback's alone) is listed, so its tenant can find it, but a
            // list does not claim it: a query of its task id does.
            if record.tenant.as_deref().is_none_or(|owner| owner == tenant) && !record.dropped {
                answers.push(record.answer());
            }
        }
        Ok(answers)
    }

    /// Records a create on its way to Kling (`crate::record::intent`), unless its record
    /// came first.
    pub fn intend(&self, intent: Intent) -> Result<(), ApiError> {
        if self.recorded(&intent.nonce)? {
            return Ok(());
        }
        self.store.save_intent(&intent)
    }

    /// Asks Kling about a create whose record never came, by the external id it was given:
    /// a task found that can be this create's is recorded as the create's record would have
    /// recorded it; none found is asked about again later, and in the end forgotten.
    async fn check_intent(&self, mut intent: Intent) -> Result<(), ApiError> {
        let Some(endpoint) = api::by_code(intent.endpoint) else {
            return self.store.delete_intent(&intent.nonce);
        };
        if self.recorded(&intent.nonce)? {
            return self.store.delete_intent(&intent.nonce);
        }
        let (account, answer) = self.find_intended(&intent, endpoint).await?;
        // The create's record may have come meanwhile (and removed the intent).
        if self.recorded(&intent.nonce)? {
            self.take_credits(&intent.nonce)?;
            return self.store.delete_intent(&intent.nonce);
        }
        let now = self.runtime.now_ms();
        let data = match answer {
            Ok(data) => data,
            Err(error) => {
                let absent = error.status == 404;
                if intent.not_found(now, absent) {
                    // Still looked for: its credits stay reserved until its next check.
                    self.keep_credits(&intent.nonce, intent.check_at.saturating_add(60 * 60 * 1000))?;
                    return self.store.reschedule_intent(&intent);
                }
                self.runtime.log(json!({"event": "intent", "outcome": "dropped", "problem": error.message}));
                return self.drop_intent(&intent).await;
            }
        };
        let Some(task_id) = task::task_id_of(&data).map(str::to_owned) else {
            return self.drop_intent(&intent).await;
        };
        if !self.may_be_intended(&intent, &data)? {
            self.runtime.log(json!({"event": "intent", "task_id": task_id,
                "outcome": "dropped: Kling's task by that external id is another create's"}));
            return self.drop_intent(&intent).await;
        }
        self.runtime.log(json!({"event": "intent", "task_id": task_id, "outcome": "recorded from Kling"}));
        // A repeat of the create's key answers the task found, in the create's shape.
        let key_answer = intent.idempotency_key.clone().map(|key| super::protocol::KeyAnswer {
            key,
            answer: match intent.style.as_deref() {
                Some(crate::record::USEAPI_STYLE) => {
                    StoredAnswer::UseApi { body: crate::api::useapi::task_answer(&data) }
                }
                _ => StoredAnswer::Success { data: data.clone() },
            },
            ignored: Vec::new(),
        });
        self.register(Registration {
            task_id,
            endpoint: intent.endpoint,
            nonce: intent.nonce,
            tenant: intent.tenant,
            client_callback_url: intent.client_callback_url,
            style: intent.style,
            reply_ref: intent.reply_ref,
            origin: intent.origin,
            data,
            max_jobs_hold: None,
            holds_slot: intent.gated,
            account,
            key_answer,
            cost_kind: None,
        })
    }

    /// The task Kling has by an intent's external id, and the account that has it: on the
    /// intent's account, or (the gate chose the account after the intent was written) on
    /// each account in turn. An external id is unique per account only, so a task another
    /// account has by it that cannot be this create's is passed over while another account
    /// may still have the create's own; Kling's "none" only if every account said so.
    async fn find_intended(
        &self,
        intent: &Intent,
        endpoint: &api::Endpoint,
    ) -> Result<(Option<String>, Result<Value, ApiError>), ApiError> {
        let accounts: Vec<Option<&str>> = match (&intent.account, self.settings.accounts.len()) {
            (Some(account), _) => vec![Some(account.as_str())],
            (None, 0 | 1) => vec![None],
            (None, _) => self.settings.accounts.iter().map(|name| Some(name.as_str())).collect(),
        };
        // An account that does not answer is not one that has none: asked again later.
        let mut unanswered = None;
        let mut another = None;
        for account in accounts {
            match self.kling.task_by_external_id(account, endpoint, &intent.external_task_id).await {
                Ok(data) if self.may_be_intended(intent, &data)? => {
                    return Ok((account.map(str::to_owned), Ok(data)))
                }
                Ok(data) => another = another.or(Some((account.map(str::to_owned), Ok(data)))),
                Err(error) if error.status == 404 => {}
                Err(error) => unanswered = Some(error),
            }
        }
        if let Some(error) = unanswered {
            return Ok((intent.account.clone(), Err(error)));
        }
        let none =
            || (intent.account.clone(), Err(ApiError::not_found("Kling's task by the intent's external id")));
        Ok(another.unwrap_or_else(none))
    }

    /// Whether Kling's task can be the intent's create: not a task this coordinator knows
    /// from another create, and not one Kling made before it (a client's own external id
    /// reused).
    fn may_be_intended(&self, intent: &Intent, data: &Value) -> Result<bool, ApiError> {
        let Some(task_id) = task::task_id_of(data) else { return Ok(false) };
        let another_creates = self.store.load(task_id)?.is_some_and(|record| record.nonce != intent.nonce);
        Ok(!another_creates && intent.may_be(data))
    }

    /// Drops an intent Kling has no task for: its create never became a task, so the slot
    /// it got at its account's gate (if it did) is free.
    async fn drop_intent(&self, intent: &Intent) -> Result<(), ApiError> {
        if intent.gated {
            self.gates.call(Release { id: intent.nonce.clone() }).await?;
        }
        // Its key (if it had one) and its credits are free: the create never became a task.
        if let Some(key) = &intent.idempotency_key {
            self.release_key(key, &intent.nonce)?;
        }
        self.release_credits(&intent.nonce)?;
        self.store.delete_intent(&intent.nonce)
    }

    /// Whether a create's record (not a callback's alone) is bound to this nonce.
    fn recorded(&self, nonce: &str) -> Result<bool, ApiError> {
        let Some(task_id) = self.store.find_nonce(nonce)? else { return Ok(false) };
        Ok(self.store.load(&task_id)?.is_some_and(|record| record.registered))
    }

    /// useapi.net's `maxJobs`: holds a job slot for a create about to call Kling, if the
    /// tenant's running tasks and the holds of other creates in flight leave one.
    pub fn hold_job(
        &self,
        tenant: &str,
        max_jobs: u32,
        hold_id: &str,
        hold_ms: u64,
    ) -> Result<HoldOutcome, ApiError> {
        let _ = tenant; // a coordinator holds one tenant's tasks
        let mut holds = Holds::read(self.store.meta(max_jobs::META)?.as_deref());
        let outcome = holds.take(hold_id, self.store.running()?, max_jobs, self.runtime.now_ms(), hold_ms);
        if outcome == HoldOutcome::Held {
            self.store.set_meta(max_jobs::META, &holds.write())?;
        }
        Ok(outcome)
    }

    /// Gives a job slot back (its create was refused, or its task is now recorded).
    pub fn release_job(&self, hold_id: &str) -> Result<(), ApiError> {
        let Some(stored) = self.store.meta(max_jobs::META)? else { return Ok(()) };
        let mut holds = Holds::read(Some(&stored));
        if holds.release(hold_id) {
            self.store.set_meta(max_jobs::META, &holds.write())?;
        }
        Ok(())
    }

    /// The alarm. It works on due tasks in two lanes, [`DUE_PARALLEL`] at once: each task's
    /// **step** (a due poll of Kling, the webhook, the edge copy; forgetting a dropped task)
    /// and its **copies** of result files, which take seconds to minutes a file and so hold
    /// at most [`COPY_LANES`] lanes. Due polls come first (a backlog of webhooks never holds
    /// them back), and no more than [`PER_RECEIVER`] steps in flight wait on one receiver,
    /// so a slow receiver holds back its own webhooks only. A webhook does not wait for its
    /// task's copies: it links them from the start (see `crate::links::result_links`).
    ///
    /// While copies are in flight the alarm keeps looking for newly due steps (each time its
    /// steps run out, and every [`REFILL_TICK_MS`]), so a slow copy delays no webhook that
    /// falls due meanwhile. It starts new copies for [`ALARM_SPAN_MS`]; while those it started
    /// finish, it goes on with the steps that fall due. A task is worked on at most once per
    /// lane in one alarm. A task that
    /// fails does not stop the others; the first failure is the alarm's outcome (logged; the
    /// next alarm tries again). Then uploads are swept and what retention allows is
    /// forgotten. Answers how many due tasks the first look found, or a full batch
    /// ([`DUE_BATCH`]) if work was left for the next alarm.
    pub async fn run_due(&self) -> Result<u32, ApiError> {
        let started_at = self.runtime.now_ms();
        let copies_start_by = started_at.saturating_add(ALARM_SPAN_MS);
        self.check_intents(started_at).await;
        let mut plan = Plan::default();
        let worked = self.plan_due(started_at, &mut plan)?;
        let mut first_failure = None;
        let mut busy: HashMap<String, usize> = HashMap::new();
        let (mut steps_in_flight, mut copies_in_flight, mut ticking) = (0usize, 0usize, false);
        let mut in_flight: FuturesUnordered<LocalBoxFuture<'_, Finished>> = FuturesUnordered::new();
        loop {
            // Past the span no new copy starts; steps still do while copies are in flight, as
            // the alarm waits for those anyway.
            let within_span = self.runtime.now_ms().saturating_sub(started_at) < ALARM_SPAN_MS;
            let stepping = within_span || copies_in_flight > 0;
            while stepping && steps_in_flight + copies_in_flight < DUE_PARALLEL {
                let free = |receiver: &Option<String>| {
                    receiver
                        .as_ref()
                        .is_none_or(|origin| busy.get(origin).copied().unwrap_or(0) < PER_RECEIVER)
                };
                let next_step = plan.steps.iter().position(|(_, receiver)| free(receiver));
                let copy_lane_free = within_span
                    && (copies_in_flight == 0 || (copies_in_flight < COPY_LANES && next_step.is_none()));
                if let Some(task_id) = copy_lane_free.then(|| plan.copies.pop_front()).flatten() {
                    copies_in_flight += 1;
                    in_flight.push(
                        async move { Finished::Copies(self.copy_results(&task_id, copies_start_by).await) }
                            .boxed_local(),
                    );
                    continue;
                }
                let Some((task_id, receiver)) = next_step.and_then(|next| plan.steps.remove(next)) else {
                    break;
                };
                if let Some(origin) = &receiver {
                    *busy.entry(origin.clone()).or_default() += 1;
                }
                steps_in_flight += 1;
                in_flight
                    .push(async move { Finished::Step(self.step(&task_id).await, receiver) }.boxed_local());
            }
            // Only copies left in flight: look again for due steps in a while.
            if !ticking && copies_in_flight > 0 && steps_in_flight == 0 && plan.steps.is_empty() {
                ticking = true;
                in_flight.push(
                    async move {
                        self.runtime.sleep(REFILL_TICK_MS).await;
                        Finished::Tick
                    }
                    .boxed_local(),
                );
            }
            if steps_in_flight + copies_in_flight == 0 {
                // Nothing left but a tick, if that: nothing more can be planned.
                break;
            }
            let Some(finished) = in_flight.next().await else { break };
            let outcome = match finished {
                Finished::Step(outcome, receiver) => {
                    steps_in_flight -= 1;
                    if let Some(count) = receiver.and_then(|origin| busy.get_mut(&origin)) {
                        *count -= 1;
                    }
                    outcome
                }
                Finished::Copies(outcome) => {
                    copies_in_flight -= 1;
                    outcome
                }
                Finished::Tick => {
                    ticking = false;
                    Ok(())
                }
            };
            if let Err(error) = outcome {
                first_failure.get_or_insert(error);
            }
            let steps_ran_out = steps_in_flight == 0 && plan.steps.is_empty();
            if steps_ran_out && copies_in_flight > 0 {
                if let Err(error) = self.plan_due(self.runtime.now_ms(), &mut plan) {
                    first_failure.get_or_insert(error);
                }
            }
        }
        // Uploads are swept whatever happened to the tasks (a task that fails every time
        // must not keep a refused upload's object forever).
        let swept = self.sweep_assets(started_at).await;
        if let Some(error) = first_failure {
            return Err(error);
        }
        swept?;
        for task_id in self.store.expired(started_at, self.settings.keep_ms(), DUE_BATCH)? {
            self.forget(&task_id).await?;
        }
        // Keys past their day (a key's claim treats one as free anyway; this keeps the table
        // to a day of creates).
        self.store.forget_keys(started_at, DUE_BATCH)?;
        let left_over = !plan.steps.is_empty() || !plan.copies.is_empty();
        Ok(if left_over { worked.max(DUE_BATCH) } else { worked })
    }

    /// Creates whose record never came, checked a lane's worth at once (each may be a task
    /// nobody else will ever report; each check has the poll's deadline).
    async fn check_intents(&self, now: u64) {
        let due = match self.store.due_intents(now, DUE_PARALLEL as u32) {
            Ok(due) => due,
            Err(error) => return self.runtime.log(json!({"event": "intent", "problem": error.message})),
        };
        let checks = due.into_iter().map(|intent| self.check_intent(intent));
        for outcome in futures_util::future::join_all(checks).await {
            if let Err(error) = outcome {
                self.runtime.log(json!({"event": "intent", "problem": error.message}));
            }
        }
    }

    /// Adds the tasks due at `now` to the alarm's plan, each lane of a task once per alarm:
    /// steps from their own due times (due polls first), so a backlog of copies never hides a
    /// newly due webhook, and copies in the order tasks fell due (with any step the steps'
    /// index missed, found by the task's due time). Tasks already planned are passed over
    /// (each query asks for as many more). Answers how many tasks were found due.
    fn plan_due(&self, now: u64, plan: &mut Plan) -> Result<u32, ApiError> {
        let limit = DUE_BATCH.saturating_add(plan.planned.len() as u32);
        let mut steps = self.store.due_polls(now, DUE_BATCH / 2)?;
        for task_id in self.store.due_steps(now, limit)? {
            if !steps.contains(&task_id) {
                steps.push(task_id);
            }
        }
        let due = self.store.due(now, limit)?;
        // (Without a bucket, tasks due only for copies are no work: they do not count.)
        let copy_work = if self.settings.copies.is_some() { due.len() } else { 0 };
        let found = steps.len().max(copy_work).min(DUE_BATCH as usize) as u32;
        let mut steps_added = 0;
        for task_id in steps {
            if steps_added >= DUE_BATCH || plan.planned.get(&task_id).is_some_and(|(stepped, _)| *stepped) {
                continue;
            }
            let Some(mut record) = self.store.load(&task_id)? else { continue };
            // (Records written by the previous version queue their copies here.)
            let queued = self.queue_copies_of(&mut record, now);
            if !record.step_due(now) {
                // Its step's time was stale (as after the migration to schema 3): saved right.
                self.store.save(&record)?;
                continue;
            }
            if queued {
                self.store.save(&record)?;
            }
            plan.steps.push_back((task_id.clone(), record.receiver_origin()));
            plan.planned.entry(task_id).or_default().0 = true;
            steps_added += 1;
        }
        let mut copies_added = 0;
        for task_id in due {
            let (stepped, looked) = plan.planned.get(&task_id).copied().unwrap_or_default();
            if copies_added >= DUE_BATCH || looked || (stepped && self.settings.copies.is_none()) {
                continue;
            }
            let Some(mut record) = self.store.load(&task_id)? else { continue };
            plan.planned.entry(task_id.clone()).or_default().1 = true;
            // Copies queued while the deployment had a bucket, and it has none now: no alarm
            // could ever make them, so they end (and the task's edge copy can be written).
            let abandoned = self.settings.copies.is_none()
                && copies::give_up(&mut record.copies, "this deployment no longer has a RESULTS bucket");
            let queued = abandoned || self.queue_copies_of(&mut record, now);
            // A step the steps' index missed (its time unset or late, as in a row written by an
            // earlier version after the migration) is planned here, and its time saved right.
            let step_missed = !stepped && steps_added < DUE_BATCH && record.step_due(now);
            if queued || step_missed {
                self.store.save(&record)?;
            }
            if step_missed {
                plan.steps.push_back((task_id.clone(), record.receiver_origin()));
                plan.planned.entry(task_id.clone()).or_default().0 = true;
                steps_added += 1;
            }
            if self.settings.copies.is_some() && record.copies_due(now) {
                plan.copies.push_back(task_id);
                copies_added += 1;
            }
        }
        Ok(found)
    }

    /// One due task's step, in this order: ask Kling about it (if its poll is due), try its
    /// webhook, write its edge copy; a dropped task is forgotten instead.
    async fn step(&self, task_id: &str) -> Result<(), ApiError> {
        // One step of a task at a time: the alarm's and a prompt one may cross.
        let Some(_stepping) = self.prompts.begin(task_id) else { return Ok(()) };
        let Some(record) = self.store.load(task_id)? else { return Ok(()) };
        if record.dropped {
            return self.forget(task_id).await;
        }
        if record.queue_wait_over(self.runtime.now_ms()) {
            self.end_waiting(task_id, &record.nonce, None).await?;
        }
        if record.next_poll_at.is_some_and(|at| at <= self.runtime.now_ms()) {
            self.poll(task_id).await?;
        }
        self.release_slot(task_id).await?;
        self.tell_refused(task_id).await;
        self.deliver(task_id).await?;
        self.write_edge_copy(task_id).await
    }

    /// Removes a task's record, and its result copies from the bucket (the bucket's lifecycle
    /// rule removes them too; this is for a deployment without one). A record whose copies
    /// could not be removed is kept until they are.
    async fn forget(&self, task_id: &str) -> Result<(), ApiError> {
        let Some(record) = self.store.load(task_id)? else { return Ok(()) };
        // A dropped task's edge copy goes first, whatever its record says was written (a
        // forgotten one's expires in KV by itself).
        let mut problem = None;
        if record.dropped {
            problem = self.edge_copies.delete(&edge_copy::key(self.shard, task_id)).await.err();
        }
        let keys = copies::stored_keys(&record.copies, self.shard, task_id);
        if problem.is_none() && !keys.is_empty() {
            problem = self.bucket.delete(&keys).await.err();
        }
        if let Some(problem) = problem {
            // Kept, to try again: with the next sweep, or a dropped one after a while.
            self.runtime.log(json!({"event": "forget", "task_id": task_id, "problem": problem.message}));
            let retry_at = self.runtime.now_ms().saturating_add(edge_copy::RETRY_MS);
            self.store.update(task_id, |record| record.edge_copy_retry_at = Some(retry_at))?;
            return Ok(());
        }
        self.store.delete(task_id)
    }

    /// Queues copies of the task's result files once it has them, when the deployment has a
    /// bucket: as Kling's news is merged, so its answers and webhook list them from then on.
    fn queue_copies_of(&self, record: &mut TaskRecord, now: u64) -> bool {
        self.settings.copies.is_some() && record.queue_copies(now)
    }

    /// Copies the task's result files into the bucket: makes each attempt that is due, one
    /// file after another, and records how it went. No file's attempt starts at or after
    /// `start_by` (the alarm's span): those stay due for the next alarm.
    async fn copy_results(&self, task_id: &str, start_by: u64) -> Result<(), ApiError> {
        let Some(settings) = &self.settings.copies else { return Ok(()) };
        let Some(record) = self.store.load(task_id)? else { return Ok(()) };
        // One log line for the task's attempts, not one a file.
        let mut attempts = Vec::new();
        let outcome = self.copy_due_files(task_id, &record, settings, start_by, &mut attempts).await;
        if !attempts.is_empty() {
            self.runtime.log(json!({"event": "copy", "task_id": task_id, "files": attempts}));
        }
        outcome
    }

    /// The due files, one after another. Each attempt is counted and the next one booked
    /// before the copy starts, so an alarm cut off in the middle of it is made good by a later
    /// one; an outcome is recorded in the same write that starts the next file's attempt.
    async fn copy_due_files(
        &self,
        task_id: &str,
        record: &TaskRecord,
        settings: &CopySettings,
        start_by: u64,
        attempts: &mut Vec<Value>,
    ) -> Result<(), ApiError> {
        let mut waiting: VecDeque<String> = copies::due(&record.copies, self.runtime.now_ms()).into();
        if waiting.is_empty() {
            return Ok(());
        }
        let forward = &self.settings.forward;
        let start_next = |record: &mut TaskRecord, waiting: &mut VecDeque<String>, now: u64| {
            if now >= start_by {
                return None;
            }
            while let Some(name) = waiting.pop_front() {
                if copies::start_attempt(&mut record.copies, &name, now, forward) {
                    let source =
                        record.copies.iter().find(|copy| copy.name == name).map(|copy| copy.source.clone());
                    if let Some(source) = source {
                        return Some((name, source));
                    }
                }
            }
            None
        };
        let now = self.runtime.now_ms();
        let Some(mut started) = self.store.update(task_id, |record| start_next(record, &mut waiting, now))?
        else {
            return Ok(());
        };
        while let Some((name, source)) = started {
            let key = copies::object_key(self.shard, task_id, &name);
            let outcome =
                self.bucket.copy(&source, &key, copies::content_type(&name), settings.max_bytes).await;
            let now = self.runtime.now_ms();
            attempts.push(json!({"file": name, "outcome": format!("{outcome:?}")}));
            let stored = matches!(outcome, copies::CopyOutcome::Copied { .. });
            let recorded = self.store.update(task_id, |fresh| {
                copies::record(&mut fresh.copies, &name, outcome, now, forward, settings);
                start_next(fresh, &mut waiting, now)
            })?;
            let Some(next) = recorded else {
                // Forgotten while it was copied: the copy is nobody's, so it goes too.
                if stored {
                    self.bucket.delete(&[key]).await?;
                }
                return Ok(());
            };
            started = next;
        }
        Ok(())
    }

    /// Kling's link for the task's result file `name` while its copy is not in the bucket
    /// (see [`protocol::CopySource`](super::protocol::CopySource)).
    pub fn copy_source(&self, task_id: &str, name: &str) -> Result<Option<String>, ApiError> {
        let Some(record) = self.store.load(task_id)?.filter(|record| record.claimed() && !record.dropped)
        else {
            return Ok(None);
        };
        Ok(copies::kling_source(&record.copies, name, self.runtime.now_ms()).map(str::to_owned))
    }

    /// When the alarm should run next.
    pub fn next_due(&self) -> Result<Option<u64>, ApiError> {
        self.store.next_due()
    }

    /// Asks Kling about a task and merges what it says.
    async fn poll(&self, task_id: &str) -> Result<(), ApiError> {
        let Some(record) = self.store.load(task_id)? else { return Ok(()) };
        let Some(endpoint) = api::by_code(record.endpoint) else { return Ok(()) };
        let answer = self.kling.current_task(record.account.as_deref(), endpoint, record.kling_id()).await;
        let now = self.runtime.now_ms();
        let data = match answer {
            Ok(data) if task::task_id_of(&data) == Some(record.kling_id()) => Some(record.as_ours(&data)),
            Ok(_) => {
                self.runtime.log(json!({"event": "poll", "task_id": task_id, "problem": "Kling answered about another task"}));
                None
            }
            Err(problem) => {
                self.runtime.log(json!({"event": "poll", "task_id": task_id, "problem": problem.message}));
                None
            }
        };
        self.store.update(task_id, |record| {
            record.prompt_until = None;
            if data.is_some_and(|data| record.apply_report(&data, now, &self.settings.poll)) {
                record.last_polled_at = Some(now);
                self.queue_copies_of(record, now);
            } else {
                record.polled_without_news(now, &self.settings.poll);
            }
        })?;
        self.settle_cost(task_id)
    }

    /// Tells the gate that a task holding one of its account's slots ended, so the next
    /// create in line goes; until it has, the step stays due.
    async fn release_slot(&self, task_id: &str) -> Result<(), ApiError> {
        let Some(record) = self.store.load(task_id)?.filter(TaskRecord::slot_release_due) else {
            return Ok(());
        };
        if record.gate_retry_at.is_some_and(|at| at > self.runtime.now_ms()) {
            return Ok(());
        }
        // A gate that cannot answer holds back no webhook: the release is tried again later.
        let released = self.gates.call(Release { id: record.nonce.clone() }).await;
        let retry_at = self.runtime.now_ms().saturating_add(queue::GATE_RETRY_MS);
        if let Err(problem) = &released {
            self.runtime.log(json!({"event": "gate", "task_id": task_id, "problem": problem.message}));
        }
        self.store.update(task_id, |record| match released {
            Ok(_) => {
                record.holds_slot = false;
                record.gate_retry_at = None;
            }
            Err(_) => record.gate_retry_at = Some(retry_at),
        })?;
        Ok(())
    }

    /// Makes the webhook attempt that is due, if one is, and records how it went.
    async fn deliver(&self, task_id: &str) -> Result<(), ApiError> {
        let now = self.runtime.now_ms();
        let Some(record) = self.store.load(task_id)?.filter(|record| record.delivery_due(now)) else {
            return Ok(());
        };
        let (Some(url), Some(message_id), Some(app)) =
            (record.client_callback_url.clone(), record.delivery.message_id.clone(), record.app())
        else {
            return Ok(());
        };
        let attempt = match &self.settings.webhook_key {
            Some(key) => {
                let links = &self.settings.links;
                let origin = record.origin.as_deref().or(links.public_base_url.as_deref());
                let minter = origin.map(|origin| Minter {
                    key: &links.key,
                    origin,
                    shard: self.shard,
                    now_ms: now,
                    ttl_secs: links.ttl_secs,
                });
                let body = record.webhook_body(|answer| result_links::render(answer, minter.as_ref()));
                let headers = delivery::signed_headers(key, app, &message_id, now, &body);
                self.webhooks.post(&url, &headers, &body).await
            }
            None => Attempt::Retry {
                status: None,
                error: "the deployment has no PROXY_WEBHOOK_SECRET to sign with".into(),
            },
        };
        let now = self.runtime.now_ms();
        let delivery = self.store.update(task_id, |record| {
            record.prompt_until = None;
            record.record_attempt(&message_id, attempt, now, &self.settings.forward);
            record.delivery.clone()
        })?;
        if let Some(delivery) = delivery {
            self.runtime.log(json!({"event": "forward", "task_id": task_id, "message_id": message_id,
                "state": delivery.state, "attempts": delivery.attempts, "http_status": delivery.last_http_status}));
        }
        Ok(())
    }

    /// Writes (or removes) the task's edge copy, if that is due.
    async fn write_edge_copy(&self, task_id: &str) -> Result<(), ApiError> {
        let now = self.runtime.now_ms();
        let Some(record) = self.store.load(task_id)? else { return Ok(()) };
        let Some(write) = record.edge_copy_write(now) else { return Ok(()) };
        let key = edge_copy::key(self.shard, task_id);
        let (outcome, written) = match &write {
            Write::Put { value, digest } => (self.edge_copies.put(&key, value).await, Some(digest.clone())),
            Write::Delete => (self.edge_copies.delete(&key).await, None),
        };
        if let Err(problem) = &outcome {
            self.runtime.log(json!({"event": "edge_copy", "task_id": task_id, "problem": problem.message}));
        }
        let retry_at = self.runtime.now_ms().saturating_add(edge_copy::RETRY_MS);
        self.store.update(task_id, |record| {
            record.prompt_until = None;
            match outcome {
                Ok(()) => {
                    record.edge_copy_digest = written;
                    record.edge_copy_retry_at = None;
                }
                Err(_) => record.edge_copy_retry_at = Some(retry_at),
            }
        })?;
        Ok(())
    }
}
