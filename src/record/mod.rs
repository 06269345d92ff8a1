//! What the coordinator keeps about each task, and the rules of a task's life: when Kling
//! is asked about it again, when and how often its webhook is attempted, and when the
//! answer clients read at the edge (the Workers KV copy) must be written or removed.
//!
//! Every rule here is a plain function of the record and the time, so the flows that drive
//! them (`crate::flows::coordinator`) stay short and the rules are tested one by one.

pub mod asset;
pub mod budget;
pub mod cache;
pub mod copies;
pub mod delivery;
pub mod edge_copy;
pub mod gate;
pub mod idempotency;
pub mod intent;
pub mod max_jobs;
pub mod queued;
pub mod table;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::copies::Copy;
use self::delivery::{Attempt, Delivery, DeliveryState};
use self::queued::Queued;
use crate::api;
use crate::kling::task;
use crate::kling::task::Results;
use crate::schedule::{Schedule, POLL_HORIZON_MS};

/// [`TaskRecord::style`] of a task created in useapi.net's shape.
pub const USEAPI_STYLE: &str = "useapi";

/// Copies at the edge expire with Kling's files, 30 days after they were written; so does a
/// finished task's record in the coordinator, unless its result copies are kept longer
/// (see [`TaskRecord::expired`]).
pub use crate::kling::RETENTION_MS;
/// A query of a running task asks Kling itself when nothing was heard for this long.
pub const QUERY_REFRESH_MS: u64 = 5_000;

/// One task, as its coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    /// The endpoint's code (`crate::api`): which Kling path knows the task.
    pub endpoint: u8,
    /// The client that created it; unknown only while a callback has arrived before the
    /// create's answer was recorded, in a coordinator that never heard from its tenant.
    pub tenant: Option<String>,
    /// The nonce of the create's callback capability: only callbacks carrying it may report
    /// about this task.
    pub nonce: String,
    /// The client's own webhook, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_callback_url: Option<String>,
    /// `useapi` for a task created in useapi.net's shape (its webhook takes that shape too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// useapi.net's `replyRef`, passed back as-is in the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_ref: Option<String>,
    /// The worker's origin the create came to: the links in its webhooks are on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Kling's latest `data` for the task, as Kling reported it.
    pub data: Value,
    /// When the worker first learned of the task (epoch ms): orders the task list.
    pub created_at: u64,
    /// Whether the create's own answer has been recorded (a callback may come first).
    pub registered: bool,
    /// The last time a report changed what is known (epoch ms).
    pub last_news_at: u64,
    /// Polls since that news that learned nothing: how far along the poll schedule it is.
    pub polls_since_news: u32,
    pub next_poll_at: Option<u64>,
    pub last_polled_at: Option<u64>,
    #[serde(default)]
    pub delivery: Delivery,
    /// A digest of what the edge copy holds for this task id, if anything (see `edge_copy`).
    #[serde(default, rename = "published", skip_serializing_if = "Option::is_none")]
    pub edge_copy_digest: Option<String>,
    /// When a write of the edge copy that failed is tried again.
    #[serde(default, rename = "publish_retry_at", skip_serializing_if = "Option::is_none")]
    pub edge_copy_retry_at: Option<u64>,
    /// The deployment's copies of the result files (`crate::record::copies`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<Copy>,
    /// Replaced by the create whose callback capability it had bound (only a forged callback
    /// can bind a fresh capability first): it is forgotten at the next alarm, with its copies
    /// and its edge copy, and never answered meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// Until when the alarm leaves the task's step to a prompt step that a callback promised
    /// (`crate::flows::prompt`); any step made clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_until: Option<u64>,
    /// A create waiting at the edge for a free Kling slot (`queued`): its body, until Kling
    /// takes it. The task id is then the worker's, and Kling's is [`Self::kling_task_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Queued>,
    /// Kling's id for a task that was queued at the edge (its `task_id` is the worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kling_task_id: Option<String>,
    /// The task holds one of its account's slots at the gate (its ticket: the nonce) until
    /// the coordinator tells the gate it ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_slot: bool,
    /// When a call to the gate that failed (a slot's release, a 1303's return to the line)
    /// is made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_retry_at: Option<u64>,
    /// What of its cost is counted in its tenant's credits (`crate::record::budget`), once
    /// it ended: Kling's deduction then, in thousandths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_cost: Option<budget::Millicredits>,
    /// What kind of create it was (endpoint and options), to estimate the next like it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_kind: Option<String>,
    /// The Kling account that has the task (`crate::accounts`): every call about it goes
    /// there. `None`: a record from before accounts had names (the first account), or a
    /// create still waiting in line for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// A task as its client reads it, before the links to its copies are minted: Kling's data
/// (with the worker's `delivery` when the client gave a webhook) and its result copies,
/// typed. `crate::links::result_links::render` makes it the JSON the client gets, minting
/// fresh links to the copies each time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAnswer {
    pub data: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<Copy>,
}

impl TaskRecord {
    /// A task first heard of at `now`, from a create answer or a callback. It is listed by
    /// Kling's own `created_at` when the report has one.
    pub fn new(task_id: &str, endpoint: u8, nonce: &str, data: Value, now: u64) -> TaskRecord {
        // Never later than now: a report's future time would top every list and never expire.
        let created_at =
            data.get("created_at").and_then(Value::as_u64).filter(|at| *at > 0).unwrap_or(now).min(now);
        TaskRecord {
            task_id: task_id.to_owned(),
            endpoint,
            tenant: None,
            nonce: nonce.to_owned(),
            client_callback_url: None,
            style: None,
            reply_ref: None,
            origin: None,
            data,
            created_at,
            registered: false,
            last_news_at: now,
            polls_since_news: 0,
            next_poll_at: None,
            last_polled_at: None,
            delivery: Delivery::default(),
            edge_copy_digest: None,
            edge_copy_retry_at: None,
            copies: Vec::new(),
            dropped: false,
            prompt_until: None,
            queued: None,
            kling_task_id: None,
            holds_slot: false,
            gate_retry_at: None,
            counted_cost: None,
            cost_kind: None,
            account: None,
        }
    }

    pub fn results(&self) -> Results {
        api::by_code(self.endpoint).map_or(Results::Audios, |endpoint| endpoint.results)
    }

    pub fn is_complete(&self) -> bool {
        task::is_complete(&self.data, self.results())
    }

    /// Queues a copy of each result file of a task that succeeded with them (a no-op once
    /// queued). Returns whether anything was queued.
    pub fn queue_copies(&mut self, now: u64) -> bool {
        // Nothing is copied for a task no create recorded (a callback's alone, which may be
        // forged) until its tenant has claimed it (see `flows::coordinator`).
        if !self.claimed() || !self.is_complete() || task::status_of(&self.data) != Some("succeed") {
            return false;
        }
        let files = copies::result_files(&self.data);
        copies::queue(&mut self.copies, files, now)
    }

    /// Whether a create recorded the task, or its tenant claimed it (records of the previous
    /// version that already have copies or an edge copy count as claimed).
    pub fn claimed(&self) -> bool {
        self.registered || self.edge_copy_digest.is_some() || !self.copies.is_empty()
    }

    /// The `PROXY_API_KEYS` name behind the tenant (`web` for `web` and for `web/alice`):
    /// whose webhook secret signs this task's webhooks.
    pub fn app(&self) -> Option<&str> {
        self.tenant.as_deref().map(|tenant| tenant.split('/').next().unwrap_or(tenant))
    }

    /// Merges a report from Kling (callback, poll or create answer). Returns whether it
    /// changed what is known; if so, it counts as news: the poll schedule starts over and a
    /// newly final state is queued for the client's webhook.
    pub fn apply_report(&mut self, report: &Value, now: u64, poll: &Schedule) -> bool {
        let Some(merged) = task::merge(&self.data, report, self.results()) else {
            return false;
        };
        self.data = merged;
        self.last_news_at = now;
        self.polls_since_news = 0;
        self.schedule_poll(now, poll);
        self.queue_delivery(now);
        true
    }

    /// After a poll that learned nothing new (or failed): the next one is further away.
    pub fn polled_without_news(&mut self, now: u64, poll: &Schedule) {
        self.last_polled_at = Some(now);
        self.polls_since_news = self.polls_since_news.saturating_add(1);
        self.schedule_poll(now, poll);
    }

    /// When Kling is asked next: never once complete or a day after creation; at once for a
    /// `succeed` that lacks its files (the first time); else after the schedule's next delay.
    pub fn schedule_poll(&mut self, now: u64, poll: &Schedule) {
        self.next_poll_at = if self.is_complete() || self.queued.is_some() {
            None
        } else if task::is_incomplete_success(&self.data, self.results()) && self.polls_since_news == 0 {
            Some(now)
        } else {
            let at = now.saturating_add(poll.repeating_delay_ms(self.polls_since_news));
            (at <= self.created_at.saturating_add(POLL_HORIZON_MS)).then_some(at)
        };
    }

    /// Whether a query should ask Kling now rather than answer from what is known.
    pub fn wants_refresh(&self, now: u64) -> bool {
        let heard = self.last_news_at.max(self.last_polled_at.unwrap_or(0));
        !self.is_complete() && self.queued.is_none() && now.saturating_sub(heard) >= QUERY_REFRESH_MS
    }

    /// The id Kling knows the task by (a task queued at the edge has the worker's id).
    pub fn kling_id(&self) -> &str {
        self.kling_task_id.as_deref().unwrap_or(&self.task_id)
    }

    /// A report from Kling about this task, with the worker's task id where Kling has its
    /// own (a task queued at the edge): what the record and its client see.
    pub fn as_ours(&self, report: &Value) -> Value {
        let mut report = report.clone();
        if let (Some(_), Some(object)) = (&self.kling_task_id, report.as_object_mut()) {
            object.insert("task_id".into(), Value::String(self.task_id.clone()));
        }
        report
    }

    /// Whether the task's end must still be told to its account's gate, to free its slot.
    pub fn slot_release_due(&self) -> bool {
        self.holds_slot && !self.dropped && task::is_final(&self.data)
    }

    /// Whether the gate must still be told that Kling answered 1303 to this create, sent with
    /// the slot it got at once (until then the gate counts it as Kling's).
    pub fn refusal_untold(&self) -> bool {
        self.queued.as_ref().is_some_and(|queued| queued.tell_refused)
    }

    /// Whether a queued create has waited past its limit at `now` (and is not being sent).
    pub fn queue_wait_over(&self, now: u64) -> bool {
        self.queued.as_ref().is_some_and(|queued| queued.sending_since.is_none() && queued.wait_until <= now)
    }

    /// Ends a create that never reached Kling as failed, saying why; its webhook is queued.
    pub fn end_unsent(&mut self, message: &str, now: u64) {
        self.queued = None;
        queued::failed(&mut self.data, message, now);
        self.last_news_at = now;
        self.next_poll_at = None;
        self.queue_delivery(now);
    }

    /// Queues the task's current final state for the client's webhook, unless that very
    /// message is already queued or done. A `succeed` still without its files is a message
    /// of its own (`..._partial`); the complete one follows under its own id.
    pub fn queue_delivery(&mut self, now: u64) {
        if self.client_callback_url.is_none() || !task::is_final(&self.data) {
            return;
        }
        self.delivery.queue(delivery::message_id(&self.data, self.results()), now);
    }

    /// Records how an attempt to send `message_id` went (see [`Delivery::record`]).
    pub fn record_attempt(&mut self, message_id: &str, attempt: Attempt, now: u64, forward: &Schedule) {
        self.delivery.record(message_id, attempt, now, forward);
    }

    /// Whether the delivery's next attempt is due at `now` (and can be made: the tenant,
    /// whose secret signs it, is known).
    pub fn delivery_due(&self, now: u64) -> bool {
        self.tenant.is_some() && self.delivery.is_due(now)
    }

    /// The task as its client reads it: Kling's data, with a `delivery` object when the
    /// client gave a webhook, and the result copies.
    pub fn answer(&self) -> TaskAnswer {
        let mut data = self.data.clone();
        if let Some(object) = data.as_object_mut() {
            if let Some(kling_task_id) = &self.kling_task_id {
                object.insert("kling_task_id".into(), Value::String(kling_task_id.clone()));
            }
            if let Some(queued) = &self.queued {
                object.insert("queue".into(), serde_json::json!({"queued_at": queued.queued_at}));
            }
        }
        if self.client_callback_url.is_some() {
            if let (Some(object), Ok(delivery)) = (data.as_object_mut(), serde_json::to_value(&self.delivery))
            {
                object.insert("delivery".into(), delivery);
            }
        }
        TaskAnswer { data, copies: self.copies.clone() }
    }

    /// The body of the webhook: Kling's data and its copies, as `render` makes them JSON
    /// (with links, see `crate::links::result_links::render`), or for a useapi.net-style
    /// task useapi's answer around it, with its `replyRef`; plus `tenant`, the client that
    /// created the task (for a browser user, `{app}/{sub}`).
    pub fn webhook_body(&self, render: impl FnOnce(&TaskAnswer) -> Value) -> Vec<u8> {
        let data = render(&TaskAnswer { data: self.data.clone(), copies: self.copies.clone() });
        let mut body = match self.style.as_deref() {
            Some(USEAPI_STYLE) => api::useapi::reply_body(&data, self.reply_ref.as_deref()),
            _ => data,
        };
        if let Some(object) = body.as_object_mut() {
            object.insert("tenant".into(), Value::String(self.tenant.clone().unwrap_or_default()));
        }
        body.to_string().into_bytes()
    }

    /// Whether Kling is still working on the task.
    pub fn is_running(&self) -> bool {
        !task::is_final(&self.data)
    }

    /// The next time something is due for this task (epoch ms; 0 for "at once"): a poll, a
    /// webhook attempt, a result copy's attempt, or a write of its edge copy.
    pub fn due_at(&self) -> Option<u64> {
        if self.dropped {
            return self.step_due_at();
        }
        [self.step_due_at(), copies::next_due(&self.copies)].into_iter().flatten().min()
    }

    /// The next time the alarm's step for the task is due (epoch ms; 0 for "at once"): a
    /// poll of Kling, a webhook attempt or a write of its edge copy, or forgetting it once
    /// dropped. Its copies are the other lane. A step promised to a prompt step is not due
    /// before its promise ends.
    pub fn step_due_at(&self) -> Option<u64> {
        if self.dropped {
            return Some(self.edge_copy_retry_at.unwrap_or(0));
        }
        let delivery = (self.delivery.state == DeliveryState::Pending && self.tenant.is_some())
            .then_some(self.delivery.next_attempt_at)
            .flatten();
        let edge_copy = self.edge_copy_due(u64::MAX).then(|| self.edge_copy_retry_at.unwrap_or(0));
        let gate =
            (self.slot_release_due() || self.refusal_untold()).then(|| self.gate_retry_at.unwrap_or(0));
        let waited =
            self.queued.as_ref().filter(|queued| queued.sending_since.is_none()).map(|q| q.wait_until);
        let due = [self.next_poll_at, delivery, edge_copy, gate, waited].into_iter().flatten().min();
        due.map(|at| at.max(self.prompt_until.unwrap_or(0)))
    }

    /// Whether the alarm's step for the task is due at `now` ([`Self::step_due_at`]; its
    /// copies are the other lane, [`Self::copies_due`]).
    pub fn step_due(&self, now: u64) -> bool {
        self.step_due_at().is_some_and(|at| at <= now)
    }

    /// Whether one of the task's result copies is due for an attempt at `now`.
    pub fn copies_due(&self, now: u64) -> bool {
        !self.dropped && copies::next_due(&self.copies).is_some_and(|at| at <= now)
    }

    /// The origin of the client's webhook receiver (`https://host:port`), if it gave one: the
    /// alarm bounds how many deliveries wait on one receiver at once.
    pub fn receiver_origin(&self) -> Option<String> {
        let url = url::Url::parse(self.client_callback_url.as_deref()?).ok()?;
        Some(url.origin().ascii_serialization())
    }

    /// When the task's next poll of Kling is due (none for a dropped task, which is only
    /// forgotten).
    pub fn poll_due_at(&self) -> Option<u64> {
        self.next_poll_at.filter(|_| !self.dropped)
    }

    /// Whether the record may be forgotten at `now`: nothing left to do, no news for longer
    /// than `keep_ms` (retention, or the result copies' retention when that is longer), and
    /// its result copies gone.
    pub fn expired(&self, now: u64, keep_ms: u64) -> bool {
        self.due_at().is_none()
            && now.saturating_sub(self.last_news_at.max(self.created_at)) > keep_ms.max(RETENTION_MS)
            && copies::last_expiry(&self.copies).is_none_or(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::edge_copy::{self, EdgeCopy, Write};
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000_000;

    fn poll() -> Schedule {
        crate::config::default_delays("KLING_POLL_SECONDS")
    }

    fn forward() -> Schedule {
        Schedule::parse("1,2").unwrap()
    }

    fn report(status: &str, updated_at: u64) -> Value {
        json!({"task_id": "t1", "task_status": status, "updated_at": updated_at})
    }

    fn with_audios(mut data: Value) -> Value {
        data["task_result"] = json!({"audios": [{"id": "a1", "url_mp3": "https://x/a.mp3"}]});
        data
    }

    fn record(webhook: bool) -> TaskRecord {
        let mut record = TaskRecord::new("t1", api::VIDEO_TO_AUDIO.code, "n1", report("submitted", 1), NOW);
        record.tenant = Some("web/alice".into());
        record.registered = true;
        if webhook {
            record.client_callback_url = Some("https://app.example.com/hook".into());
        }
        record.schedule_poll(NOW, &poll());
        record
    }

    #[test]
    fn a_running_task_is_polled_on_the_schedule_and_news_starts_it_over() {
        let mut task = record(false);
        assert_eq!(task.next_poll_at, Some(NOW + 30_000));
        task.polled_without_news(NOW + 30_000, &poll());
        assert_eq!(task.next_poll_at, Some(NOW + 90_000));
        task.polled_without_news(NOW + 90_000, &poll());
        assert_eq!(task.next_poll_at, Some(NOW + 210_000));
        assert!(task.apply_report(&report("processing", 2), NOW + 100_000, &poll()));
        assert_eq!(task.next_poll_at, Some(NOW + 130_000), "news: back to the first delay");
        assert!(
            !task.apply_report(&report("processing", 2), NOW + 101_000, &poll()),
            "a duplicate is no news"
        );
        assert_eq!(task.next_poll_at, Some(NOW + 130_000));
    }

    #[test]
    fn polling_stops_when_complete_or_after_a_day() {
        let mut task = record(false);
        assert!(task.apply_report(&with_audios(report("succeed", 3)), NOW + 1, &poll()));
        assert_eq!(task.next_poll_at, None);
        let mut old = record(false);
        old.polled_without_news(NOW + POLL_HORIZON_MS - 1_000, &poll());
        assert_eq!(old.next_poll_at, None, "the next poll would be past the horizon");
    }

    #[test]
    fn a_succeed_without_its_files_is_polled_at_once_then_on_the_schedule() {
        let mut task = record(false);
        assert!(task.apply_report(&report("succeed", 3), NOW + 5, &poll()));
        assert_eq!(task.next_poll_at, Some(NOW + 5));
        task.polled_without_news(NOW + 6, &poll());
        assert_eq!(task.next_poll_at, Some(NOW + 6 + 60_000));
    }

    #[test]
    fn a_final_state_is_queued_once_per_message() {
        let mut task = record(true);
        assert!(task.apply_report(&report("processing", 2), NOW, &poll()));
        assert_eq!(task.delivery.state, DeliveryState::None);
        assert!(task.apply_report(&report("succeed", 3), NOW + 1, &poll()));
        assert_eq!(task.delivery.message_id.as_deref(), Some("msg_t1_succeed_partial"));
        assert_eq!(task.delivery.next_attempt_at, Some(NOW + 1));
        task.record_attempt("msg_t1_succeed_partial", Attempt::Delivered(200), NOW + 2, &forward());
        assert_eq!(task.delivery.state, DeliveryState::Delivered);
        task.queue_delivery(NOW + 3);
        assert_eq!(task.delivery.state, DeliveryState::Delivered, "the same message is not queued again");
        assert!(task.apply_report(&with_audios(report("succeed", 3)), NOW + 4, &poll()));
        assert_eq!(task.delivery.message_id.as_deref(), Some("msg_t1_succeed"));
        assert_eq!((task.delivery.state, task.delivery.attempts), (DeliveryState::Pending, 0));
        let mut silent = record(false);
        silent.apply_report(&report("failed", 9), NOW, &poll());
        assert_eq!(silent.delivery.state, DeliveryState::None, "no webhook, nothing to forward");
    }

    #[test]
    fn attempts_follow_the_retry_schedule_then_fail() {
        let mut task = record(true);
        task.apply_report(&report("failed", 9), NOW, &poll());
        let id = "msg_t1_failed";
        let retry = || Attempt::Retry { status: Some(503), error: "the receiver answered 503".into() };
        task.record_attempt(id, retry(), NOW, &forward());
        assert_eq!(
            (task.delivery.state, task.delivery.next_attempt_at),
            (DeliveryState::Pending, Some(NOW + 1_000))
        );
        task.record_attempt(id, retry(), NOW + 1_000, &forward());
        assert_eq!(task.delivery.next_attempt_at, Some(NOW + 3_000));
        task.record_attempt(id, retry(), NOW + 3_000, &forward());
        assert_eq!((task.delivery.state, task.delivery.attempts), (DeliveryState::Failed, 3));
        assert_eq!(task.delivery.last_http_status, Some(503));
        task.record_attempt(id, Attempt::Delivered(200), NOW + 4_000, &forward());
        assert_eq!(task.delivery.state, DeliveryState::Failed, "a finished delivery is not reopened");
    }

    #[test]
    fn a_refusal_is_final_and_a_stale_attempt_changes_nothing() {
        let mut task = record(true);
        task.apply_report(&report("failed", 9), NOW, &poll());
        task.record_attempt("msg_t1_other", Attempt::Delivered(200), NOW, &forward());
        assert_eq!((task.delivery.state, task.delivery.attempts), (DeliveryState::Pending, 0));
        task.record_attempt("msg_t1_failed", Attempt::from_status(410), NOW, &forward());
        assert_eq!((task.delivery.state, task.delivery.last_http_status), (DeliveryState::Failed, Some(410)));
    }

    #[test]
    fn statuses_classify_attempts() {
        assert_eq!(Attempt::from_status(204), Attempt::Delivered(204));
        for retry in [408, 429, 500, 503, 599] {
            assert!(matches!(Attempt::from_status(retry), Attempt::Retry { .. }), "{retry}");
        }
        for give_up in [301, 400, 401, 404, 410] {
            assert_eq!(Attempt::from_status(give_up), Attempt::GiveUp { status: give_up });
        }
    }

    #[test]
    fn the_edge_copy_is_written_once_complete_and_after_the_first_attempt() {
        let mut task = record(true);
        assert_eq!(task.edge_copy_write(NOW), None, "running tasks are served by the coordinator");
        task.apply_report(&with_audios(report("succeed", 3)), NOW, &poll());
        assert_eq!(task.edge_copy_write(NOW), None, "waits for the first webhook attempt");
        assert!(!task.edge_copy_due(NOW));
        task.record_attempt("msg_t1_succeed", Attempt::Delivered(200), NOW, &forward());
        assert!(task.edge_copy_due(NOW));
        let Some(Write::Put { value, digest }) = task.edge_copy_write(NOW) else { panic!("a put") };
        let copy: EdgeCopy = serde_json::from_str(&value).unwrap();
        assert_eq!(copy.tenant, "web/alice");
        assert_eq!(copy.task.data["delivery"]["state"], "delivered");
        assert_eq!(copy.task.data["task_result"]["audios"][0]["id"], "a1");
        task.edge_copy_digest = Some(digest);
        assert_eq!(task.edge_copy_write(NOW), None, "written once");
        assert!(!task.edge_copy_due(NOW));
        assert_eq!(task.due_at(), None, "nothing left to do");
    }

    #[test]
    fn a_stale_copy_of_an_earlier_task_is_removed() {
        let mut task = record(false);
        task.edge_copy_digest = Some("old".into());
        assert_eq!(task.edge_copy_write(NOW), Some(Write::Delete));
        assert_eq!(task.due_at(), Some(0), "at once");
        task.edge_copy_retry_at = Some(NOW + edge_copy::RETRY_MS);
        assert_eq!(task.edge_copy_write(NOW), None, "a failed write waits before the next try");
        assert_eq!(task.due_at(), Some(NOW + 30_000));
    }

    #[test]
    fn nothing_is_forwarded_or_copied_to_the_edge_for_an_unknown_tenant() {
        let mut task = TaskRecord::new("t1", 1, "n1", report("submitted", 1), NOW);
        task.client_callback_url = Some("https://app.example.com/hook".into());
        task.apply_report(&with_audios(report("succeed", 2)), NOW, &poll());
        assert!(!task.delivery_due(NOW));
        assert_eq!(task.edge_copy_write(NOW), None);
        assert_eq!(task.due_at(), None);
        task.tenant = Some("web".into());
        assert!(task.delivery_due(NOW));
        assert_eq!(task.due_at(), Some(NOW));
    }

    #[test]
    fn answers_and_webhooks_carry_what_the_client_needs() {
        let mut task = record(true);
        task.apply_report(&report("failed", 2), NOW, &poll());
        let answer = task.answer().data;
        assert_eq!(answer["task_status"], "failed");
        assert_eq!(answer["delivery"]["state"], "pending");
        assert_eq!(record(false).answer().data.get("delivery"), None);
        let body: Value = serde_json::from_slice(&task.webhook_body(|answer| answer.data.clone())).unwrap();
        assert_eq!(body["tenant"], "web/alice");
        assert_eq!(body.get("delivery"), None);
        assert_eq!(task.app(), Some("web"));
    }

    #[test]
    fn a_useapi_task_answers_its_webhook_in_useapis_shape_with_its_reference() {
        let mut task = record(true);
        task.style = Some(USEAPI_STYLE.into());
        task.reply_ref = Some("my-id-1234".into());
        task.apply_report(&with_audios(report("succeed", 2)), NOW, &poll());
        let body: Value = serde_json::from_slice(&task.webhook_body(|answer| answer.data.clone())).unwrap();
        assert_eq!(body["replyRef"], "my-id-1234");
        assert_eq!(body["task"]["id"], "t1");
        assert_eq!(body["status_final"], true);
        assert_eq!(body["tenant"], "web/alice");
        assert_eq!(body["kling"]["task_result"]["audios"][0]["id"], "a1");
    }

    #[test]
    fn finished_records_expire_after_retention() {
        let mut task = record(false);
        task.apply_report(&report("failed", 2), NOW, &poll());
        task.edge_copy_digest = match task.edge_copy_write(NOW) {
            Some(Write::Put { digest, .. }) => Some(digest),
            other => panic!("{other:?}"),
        };
        assert!(!task.expired(NOW + RETENTION_MS, RETENTION_MS));
        assert!(task.expired(NOW + RETENTION_MS + 1, RETENTION_MS));
        assert!(
            !record(false).expired(NOW + RETENTION_MS + 1, RETENTION_MS),
            "a running task is never forgotten"
        );
        assert!(edge_copy::key("00ff", "t1").starts_with("task:v3:00ff:"));
    }
}
