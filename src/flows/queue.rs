//! The coordinator's side of a create queued at the edge (`crate::record::queued`): keeping
//! it until its account's gate sends it, sending it to Kling once, a client's cancel, and
//! the end of one that waited too long.
//!
//! The gate decides who goes when (`super::gate`); the coordinator holds the create's body
//! and is the one that sends it. Its side of their contract: a create is sent at most once
//! at a time; once Kling took it (or it ended unsent) it is never sent again, and a repeat
//! of the gate's answers with how it went. A send whose answer never came (the object was
//! cut off, Kling did not answer in time) is looked for at Kling by its external id before
//! it is sent again, so a create reaches Kling once (Kling also refuses a second create with
//! the same external id). A cancel and an expiry ask the gate first: only a create the gate
//! took out of its line ends unsent, so neither can cross a send.

use serde_json::{json, Value};

use crate::api;
use crate::error::{code, ApiError};
use crate::kling::task;
use crate::ports::{
    AssetStore, Coordinators, Dispatched, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream,
    Webhooks,
};
use crate::record::gate::{Cancel, InLine, Ticket};
use crate::record::intent::{CLOCK_SKEW_MS, EDGE_PREFIX};
use crate::record::queued::{self, Queued, TenantLine, WaitingTask};
use crate::record::{TaskAnswer, TaskRecord};

use super::coordinator::{Coordinator, Registration};
use super::edge::{Answer, Edge, EdgePorts};
use super::gate_protocol::{self, CancelTicket, Refused};
use super::protocol;
use crate::api::surfaces::{Style, Surface};
use crate::api::useapi;
use crate::auth::Client;

/// How long an expiry the gate refused (the create is on its way to Kling) waits to look
/// again.
pub const EXPIRY_RECHECK_MS: u64 = 60_000;

/// Kling's code for a create past the account's concurrency.
pub const OVER_CONCURRENCY: u32 = 1303;

/// Kling's code for a create past the account's rate (queries per second).
pub const RATE_LIMITED: u32 = 1302;

/// Whether Kling's answer to a create is its 1303 (HTTP 429).
pub fn is_over_concurrency(status: u16, body: &[u8]) -> bool {
    status == 429 && kling_code(body) == Some(OVER_CONCURRENCY)
}

/// Whether Kling's answer to a create is its 1302 (HTTP 429): too many calls, not too many
/// tasks.
pub fn is_rate_limited(status: u16, body: &[u8]) -> bool {
    status == 429 && kling_code(body) == Some(RATE_LIMITED)
}

fn kling_code(body: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        code: u32,
    }
    serde_json::from_slice::<Envelope>(body).ok().map(|envelope| envelope.code)
}

/// Whether the task Kling found by a waiting create's external id was made by one of its
/// sends: the worker's own external ids name one create only; a client's own may name an
/// older task of the account, so the task must be no older than the first send (with the
/// clocks' allowance).
fn made_by_a_send(found: &Value, external_task_id: &str, sending_since: u64) -> bool {
    let created_at = found.get("created_at").and_then(Value::as_u64).unwrap_or(0);
    external_task_id.starts_with(EDGE_PREFIX) || created_at.saturating_add(CLOCK_SKEW_MS) >= sending_since
}

/// How long a failed call to the gate waits before it is made again.
pub const GATE_RETRY_MS: u64 = 5_000;

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
    /// Keeps a create the gate put in line (or one Kling answered 1303 with the slot it got
    /// at once, which it then puts back in the gate's line: `refused_by`): listed and
    /// queried as `submitted` under the worker's id, until it is sent. A repeat changes
    /// nothing.
    pub async fn enqueue(&self, enqueue: protocol::Enqueue) -> Result<(), ApiError> {
        let task_id = enqueue.registration.task_id.clone();
        let refused_at_once = enqueue.refused_by.is_some();
        self.keep_waiting(enqueue)?;
        if refused_at_once {
            self.tell_refused(&task_id).await;
        }
        Ok(())
    }

    fn keep_waiting(&self, enqueue: protocol::Enqueue) -> Result<(), ApiError> {
        let protocol::Enqueue { registration, body, max_wait_ms, refused_by, pin } = enqueue;
        let now = self.runtime.now_ms();
        if self.store.find_nonce(&registration.nonce)?.is_some() {
            return Ok(());
        }
        let Registration { task_id, endpoint, nonce, tenant, data, max_jobs_hold, cost_kind, .. } =
            registration;
        let mut record = TaskRecord::new(&task_id, endpoint, &nonce, data, now);
        record.registered = true;
        record.tenant = Some(tenant);
        record.client_callback_url = registration.client_callback_url;
        record.style = registration.style;
        record.reply_ref = registration.reply_ref;
        record.origin = registration.origin;
        record.queued = Some(Queued {
            body,
            queued_at: now,
            wait_until: now.saturating_add(max_wait_ms),
            sending_since: None,
            tell_refused: refused_by.is_some(),
            pin,
            refused_by,
        });
        record.cost_kind = cost_kind;
        // Held while it waits, and then while its task runs.
        self.keep_credits(
            &nonce,
            now.saturating_add(max_wait_ms).saturating_add(super::budget::TASK_HOLD_MS),
        )?;
        self.store.save(&record)?;
        self.store.delete_intent(&nonce)?;
        match max_jobs_hold {
            Some(hold_id) => self.release_job(&hold_id),
            None => Ok(()),
        }
    }

    /// Tells the gate that Kling answered 1303 to a create the edge sent at once, so that it
    /// goes back in line (until then the gate counts its slot as Kling's); a call that fails
    /// is made again by the task's step.
    pub(crate) async fn tell_refused(&self, task_id: &str) {
        let Some(record) = self.store.load(task_id).ok().flatten().filter(TaskRecord::refusal_untold) else {
            return;
        };
        let ticket = Ticket { id: record.nonce.clone(), tenant: record.tenant.clone().unwrap_or_default() };
        let (account, pin) = match &record.queued {
            Some(waiting) => (waiting.refused_by.clone().unwrap_or_default(), waiting.pin.clone()),
            None => (String::new(), None),
        };
        let told = self.gates.call(Refused { ticket, account, pin }).await;
        let retry_at = self.runtime.now_ms().saturating_add(GATE_RETRY_MS);
        let told_ok = told.is_ok();
        let saved = self.store.update(task_id, |record| match (told_ok, &mut record.queued) {
            (true, Some(waiting)) => {
                waiting.tell_refused = false;
                record.gate_retry_at = None;
            }
            _ => record.gate_retry_at = Some(retry_at),
        });
        if let Some(problem) = told.err().or(saved.err()) {
            self.runtime.log(json!({"event": "gate", "task_id": task_id, "problem": problem.message}));
        }
    }

    /// The gate's turn for the create of `nonce`, with a slot of `account`: sends it to Kling
    /// there, unless it went already or is going, and answers how it fared.
    pub async fn dispatch(&self, nonce: &str, account: &str) -> Result<Dispatched, ApiError> {
        let first = self.settings.accounts.first().map_or("", String::as_str);
        let account = if account.is_empty() { first } else { account };
        let Some(task_id) = self.store.find_nonce(nonce)? else {
            // Its create's enqueue may still be on its way (its intent is here), or it never
            // will be.
            return Ok(if self.store.has_intent(nonce)? { Dispatched::Unknown } else { Dispatched::Gone });
        };
        let Some(record) = self.store.load(&task_id)? else { return Ok(Dispatched::Gone) };
        let Some(waiting) = &record.queued else {
            return Ok(if record.holds_slot || record.kling_task_id.is_some() {
                Dispatched::Taken
            } else {
                Dispatched::Gone
            });
        };
        let Some(endpoint) = api::by_code(record.endpoint) else { return Ok(Dispatched::Gone) };
        let now = self.runtime.now_ms();
        let checked_since = waiting.sending_since;
        if let Some(since) = checked_since {
            if now.saturating_sub(since) < self.settings.send_deadline_ms {
                return Ok(Dispatched::Unknown);
            }
            // A send whose answer never came: Kling may have the task. One of its callbacks
            // may have said so already.
            if let Some(kling_task_id) = &record.kling_task_id {
                return self.taken(&task_id, &json!({"task_id": kling_task_id}));
            }
            let external_task_id = task::external_task_id_of(&record.data).unwrap_or_default().to_owned();
            let sent_to = record.account.as_deref();
            match self.kling.task_by_external_id(sent_to, endpoint, &external_task_id).await {
                // The task Kling made from one of its sends (a client's own external id may
                // name an older task of the account).
                Ok(found) if made_by_a_send(&found, &external_task_id, since) => {
                    return self.taken(&task_id, &found)
                }
                Ok(_) => {
                    return self
                        .refused_for_good(&task_id, "its external_task_id names another task at Kling")
                }
                // Kling has none: sent again, unless it has waited too long by now.
                Err(error) if error.status == 404 => {
                    if waiting.wait_until <= now {
                        let waited = waiting.wait_until.saturating_sub(waiting.queued_at) / 1000;
                        let message = queued::waited_too_long(waited);
                        self.store.update(&task_id, |record| record.end_unsent(&message, now))?;
                        self.settle_cost(&task_id)?;
                        return Ok(Dispatched::Gone);
                    }
                }
                Err(_) => return Ok(Dispatched::Unknown),
            }
        }
        // Marked before the send, with the account it goes to: a send cut off is looked for
        // there by the next one.
        let started = self.store.update(&task_id, |record| match &mut record.queued {
            Some(waiting) if waiting.sending_since == checked_since => {
                waiting.sending_since = Some(now);
                record.account = Some(account.to_owned());
                Some(waiting.body.clone())
            }
            _ => None,
        })?;
        let Some(Some(body)) = started else { return Ok(Dispatched::Unknown) };
        let reply = self.kling.create(Some(account), endpoint, &body).await;
        drop(body);
        match reply {
            Ok(reply) if reply.status == 200 => match task::envelope_data(&reply.body) {
                Some(data) if task::task_id_of(&data).is_some() => self.taken(&task_id, &data),
                _ => self.refused_for_good(&task_id, "Kling's answer had no task"),
            },
            // Kling's gateway failed: it may have made the task, so the next send looks first.
            Ok(reply) if reply.status >= 500 => {
                let problem = format!("Kling answered {}", reply.status);
                self.runtime.log(json!({"event": "dispatch", "task_id": task_id, "problem": problem}));
                Ok(Dispatched::Unknown)
            }
            // Over the account's concurrency, or its rate: back in line, and the gate waits.
            Ok(reply)
                if is_over_concurrency(reply.status, &reply.body)
                    || is_rate_limited(reply.status, &reply.body) =>
            {
                self.store.update(&task_id, |record| {
                    if let Some(waiting) = &mut record.queued {
                        waiting.sending_since = None;
                    }
                })?;
                self.runtime.log(json!({"event": "dispatch", "task_id": task_id, "outcome": "1303"}));
                Ok(Dispatched::Refused)
            }
            Ok(reply) => {
                let message = kling_message(&reply.body).unwrap_or_else(|| format!("HTTP {}", reply.status));
                self.refused_for_good(&task_id, &message)
            }
            // Kling may have it: the next send looks for it first.
            Err(error) => {
                self.runtime.log(json!({"event": "dispatch", "task_id": task_id, "problem": error.message}));
                Ok(Dispatched::Unknown)
            }
        }
    }

    /// The tenant's creates the gate has in line (by ticket), as its client knows them, and
    /// how many of its tasks Kling runs.
    pub fn line(&self, waiting: &[InLine]) -> Result<TenantLine, ApiError> {
        let mut line = TenantLine { waiting: Vec::new(), running: 0 };
        for in_line in waiting {
            let Some(task_id) = self.store.find_nonce(&in_line.id)? else { continue };
            let Some(record) = self.store.load(&task_id)?.filter(|record| record.queued.is_some()) else {
                continue;
            };
            line.waiting.push(WaitingTask {
                task_id,
                endpoint: api::by_code(record.endpoint).map_or("", |endpoint| endpoint.kling_path).to_owned(),
                position: in_line.position,
                queued_at: in_line.queued_at,
            });
        }
        line.running = self.store.running()?.saturating_sub(line.waiting.len() as u32);
        Ok(line)
    }

    /// Kling took the queued create (its answer, or a task found by its external id): it
    /// holds its slot from now, is followed by Kling's id, and reads as Kling reports it.
    fn taken(&self, task_id: &str, kling_data: &Value) -> Result<Dispatched, ApiError> {
        let now = self.runtime.now_ms();
        let kling_task_id = task::task_id_of(kling_data).unwrap_or_default().to_owned();
        self.store.update(task_id, |record| {
            record.queued = None;
            record.holds_slot = true;
            record.kling_task_id = Some(kling_task_id.clone());
            let report = record.as_ours(kling_data);
            // Still the worker's own `submitted` (no callback came first): Kling's data
            // replaces it, whatever Kling's clock says.
            if task::status_of(&record.data) == Some("submitted") {
                if let (Some(data), Some(report)) = (record.data.as_object_mut(), report.as_object()) {
                    // Kling's create answer says nothing of the wait that is over.
                    data.insert("task_status_msg".into(), Value::String(String::new()));
                    for (key, value) in report {
                        data.insert(key.clone(), value.clone());
                    }
                }
                record.last_news_at = now;
            } else {
                record.apply_report(&report, now, &self.settings.poll);
            }
            record.schedule_poll(now, &self.settings.poll);
        })?;
        self.settle_cost(task_id)?;
        self.runtime.log(json!({"event": "dispatch", "task_id": task_id, "kling_task_id": kling_task_id}));
        Ok(Dispatched::Taken)
    }

    /// Kling refused the queued create for a reason a resend would not change: it ends as
    /// failed, saying so, and its slot is the gate's again.
    fn refused_for_good(&self, task_id: &str, message: &str) -> Result<Dispatched, ApiError> {
        let now = self.runtime.now_ms();
        self.store.update(task_id, |record| record.end_unsent(&queued::refused(message), now))?;
        self.settle_cost(task_id)?;
        self.runtime.log(json!({"event": "dispatch", "task_id": task_id, "outcome": "refused"}));
        Ok(Dispatched::Gone)
    }

    /// A client's cancel of its task: one still in line ends as failed and never reaches
    /// Kling (its webhook says so); one Kling has is refused with 409, as Kling cannot cancel.
    pub async fn cancel(&self, tenant: &str, endpoint: u8, id: &str) -> Result<TaskAnswer, ApiError> {
        let found = self.store.load(id)?.filter(|record| {
            record.tenant.as_deref() == Some(tenant) && record.endpoint == endpoint && !record.dropped
        });
        let Some(record) = found else { return Err(ApiError::not_found(&format!("task {id}"))) };
        let conflict = |why: &str| ApiError::new(409, code::INVALID_REQUEST, format!("task {id}: {why}"));
        match &record.queued {
            None if task::is_final(&record.data) => {
                return Err(conflict("has already ended; there is nothing to cancel"))
            }
            None => return Err(conflict(
                "Kling has this task, and Kling cannot cancel a task: it runs to its end (only a task still waiting for a free Kling slot can be cancelled)",
            )),
            Some(Queued { sending_since: Some(_), .. }) => {
                return Err(conflict("is on its way to Kling right now, and Kling cannot cancel a task"))
            }
            Some(_) => {}
        }
        if !self.end_waiting(id, &record.nonce, Some(tenant)).await? {
            return Err(conflict("is on its way to Kling right now, and Kling cannot cancel a task"));
        }
        let record = self.store.load(id)?.ok_or_else(|| ApiError::not_found(&format!("task {id}")))?;
        Ok(record.answer())
    }

    /// Ends a create still in line, unsent: cancelled by its client (`tenant`), or waited too
    /// long. The gate takes it out of its line first; one the gate has sent meanwhile is left
    /// alone. Answers whether it ended.
    pub(crate) async fn end_waiting(
        &self,
        task_id: &str,
        nonce: &str,
        tenant: Option<&str>,
    ) -> Result<bool, ApiError> {
        let owner = match tenant {
            Some(tenant) => tenant.to_owned(),
            None => self.store.load(task_id)?.and_then(|record| record.tenant).unwrap_or_default(),
        };
        let outcome = self.gates.call(CancelTicket { id: nonce.to_owned(), tenant: owner }).await?;
        if outcome == Cancel::AtKling {
            // The gate is sending it (its send arrives in a moment), or holds it as a create
            // Kling refused whose return to the line was never told: either way it is not
            // ended here; an expiry looks again in a minute.
            let again = self.runtime.now_ms().saturating_add(EXPIRY_RECHECK_MS);
            self.store.update(task_id, |record| {
                if let Some(waiting) = record.queued.as_mut().filter(|waiting| waiting.wait_until < again) {
                    waiting.wait_until = again;
                }
            })?;
            return Ok(false);
        }
        let now = self.runtime.now_ms();
        let message = match tenant {
            Some(_) => queued::cancelled().to_owned(),
            None => queued::waited_too_long(
                self.store
                    .load(task_id)?
                    .and_then(|record| record.queued.map(|q| q.wait_until.saturating_sub(q.queued_at) / 1000))
                    .unwrap_or_default(),
            ),
        };
        let ended = self.store.update(task_id, |record| {
            let unsent = record.queued.as_ref().is_some_and(|waiting| waiting.sending_since.is_none());
            if unsent {
                record.end_unsent(&message, now);
            }
            unsent
        })?;
        if ended == Some(true) {
            self.settle_cost(task_id)?;
            self.runtime.log(json!({"event": "queue", "task_id": task_id,
                "outcome": if tenant.is_some() { "cancelled" } else { "waited too long" }}));
        }
        Ok(ended == Some(true))
    }
}

/// The `message` of Kling's envelope, if the body is one.
fn kling_message(body: &[u8]) -> Option<String> {
    let envelope: Value = serde_json::from_slice(body).ok()?;
    let code = envelope.get("code").and_then(Value::as_u64).unwrap_or(0);
    let message = envelope.get("message").and_then(Value::as_str)?;
    Some(format!("{message} (code {code})"))
}

impl<P: EdgePorts> Edge<'_, P> {
    /// `POST {path}/{id}/cancel` (and useapi.net's `DELETE /v1/kling/tasks/{id}`): the task
    /// as it ended, cancelled; 409 if Kling has it; 404 if it is not the caller's.
    pub async fn cancel(&self, client: &Client, surface: &Surface, id: &str) -> Result<Answer, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let call = protocol::CancelTask {
            tenant: client.tenant.clone(),
            endpoint: surface.endpoint.code,
            id: id.to_owned(),
        };
        let task = self.render(&shard, &self.coordinators.call(&shard, call).await?);
        Ok(match surface.style {
            Style::Kling => Answer::Success(task),
            Style::UseApi => Answer::UseApi(useapi::task_answer(&task)),
        })
    }

    /// `GET /v1/queue`, for a server key: each account's slots, and the caller's creates in
    /// line (in the order they will go) and tasks running.
    pub async fn queue(&self, client: &Client) -> Result<Answer, ApiError> {
        client.require_server_key("see the line")?;
        let (gate, waiting) = futures_util::future::join(
            self.gates.call(gate_protocol::Look),
            self.gates.call(gate_protocol::WaitingFor { tenant: client.tenant.clone() }),
        )
        .await;
        let shard = task::tenant_shard(&client.tenant);
        let line = protocol::Line { tenant: client.tenant.clone(), waiting: waiting? };
        let line = self.coordinators.call(&shard, line).await?;
        let gate = gate?;
        // `account`: the first account's, as the answer had it before there were several.
        let first = gate.accounts.first().map(|first| {
            let mut view = json!({"capacity": first.capacity, "slots": first.slots, "holding": first.holding,
                "waiting": gate.waiting});
            if let Some(until) = first.paused_until {
                view["paused_until"] = json!(until);
            }
            view
        });
        Ok(Answer::Success(json!({
            "account": first,
            "accounts": gate.accounts,
            "line": gate.waiting,
            "tenant": client.tenant,
            "waiting": line.waiting,
            "running": line.running,
        })))
    }
}
