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

use serde_json::{json, Map, Value};

use crate::api;
use crate::error::{code, ApiError};
use crate::kling::task;
use crate::ports::{
    AssetStore, Coordinators, Dispatched, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream,
    Webhooks,
};
use crate::record::gate::{Cancel, InLine};
use crate::record::queued::{self, Queued, TenantLine, WaitingTask};
use crate::record::{TaskAnswer, TaskRecord};

use super::coordinator::{Coordinator, Registration};
use super::edge::{Answer, Edge, EdgePorts};
use super::gate_protocol::{self, CancelTicket};
use super::protocol;
use crate::api::surfaces::{Style, Surface};
use crate::api::useapi;
use crate::auth::Client;

/// Kling's code for a create past the account's concurrency.
pub const OVER_CONCURRENCY: u32 = 1303;

/// Whether Kling's answer to a create is its 1303 (HTTP 429).
pub fn is_over_concurrency(status: u16, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope {
        code: u32,
    }
    status == 429
        && serde_json::from_slice::<Envelope>(body).is_ok_and(|envelope| envelope.code == OVER_CONCURRENCY)
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
    /// Keeps a create the gate put in line (or one Kling answered 1303 with the slot it got
    /// at once): listed and queried as `submitted` under the worker's id, until it is sent.
    /// A repeat changes nothing.
    pub fn enqueue(
        &self,
        registration: Registration,
        body: Map<String, Value>,
        max_wait_ms: u64,
    ) -> Result<(), ApiError> {
        let now = self.runtime.now_ms();
        if self.store.find_nonce(&registration.nonce)?.is_some() {
            return Ok(());
        }
        let Registration { task_id, endpoint, nonce, tenant, data, max_jobs_hold, .. } = registration;
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
        });
        self.store.save(&record)?;
        self.store.delete_intent(&nonce)?;
        match max_jobs_hold {
            Some(hold_id) => self.release_job(&hold_id),
            None => Ok(()),
        }
    }

    /// The gate's turn for the create of `nonce`: sends it to Kling, unless it went already
    /// or is going, and answers how it fared.
    pub async fn dispatch(&self, nonce: &str) -> Result<Dispatched, ApiError> {
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
            // A send whose answer never came: Kling may have the task.
            let external_task_id = task::external_task_id_of(&record.data).unwrap_or_default().to_owned();
            match self.kling.task_by_external_id(endpoint, &external_task_id).await {
                Ok(found) => return self.taken(&task_id, &found),
                Err(error) if error.status == 404 => {}
                Err(_) => return Ok(Dispatched::Unknown),
            }
        }
        // Marked before the send: a send cut off is found by the next one.
        let started = self.store.update(&task_id, |record| match &mut record.queued {
            Some(waiting) if waiting.sending_since == checked_since => {
                waiting.sending_since = Some(now);
                Some(waiting.body.clone())
            }
            _ => None,
        })?;
        let Some(Some(body)) = started else { return Ok(Dispatched::Unknown) };
        let reply = self.kling.create(endpoint, &body).await;
        drop(body);
        match reply {
            Ok(reply) if reply.status == 200 => match task::envelope_data(&reply.body) {
                Some(data) if task::task_id_of(&data).is_some() => self.taken(&task_id, &data),
                _ => self.refused_for_good(&task_id, "Kling's answer had no task"),
            },
            Ok(reply) if is_over_concurrency(reply.status, &reply.body) => {
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
        self.runtime.log(json!({"event": "dispatch", "task_id": task_id, "kling_task_id": kling_task_id}));
        Ok(Dispatched::Taken)
    }

    /// Kling refused the queued create for a reason a resend would not change: it ends as
    /// failed, saying so, and its slot is the gate's again.
    fn refused_for_good(&self, task_id: &str, message: &str) -> Result<Dispatched, ApiError> {
        let now = self.runtime.now_ms();
        self.store.update(task_id, |record| record.end_unsent(&queued::refused(message), now))?;
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

    /// `GET /v1/queue`, for a server key: the account's slots, and the caller's creates in
    /// line (in the order they will go) and tasks running.
    pub async fn queue(&self, client: &Client) -> Result<Answer, ApiError> {
        client.require_server_key("see the line")?;
        let (account, waiting) = futures_util::future::join(
            self.gates.call(gate_protocol::Look),
            self.gates.call(gate_protocol::WaitingFor { tenant: client.tenant.clone() }),
        )
        .await;
        let shard = task::tenant_shard(&client.tenant);
        let line = protocol::Line { tenant: client.tenant.clone(), waiting: waiting? };
        let line = self.coordinators.call(&shard, line).await?;
        Ok(Answer::Success(json!({
            "account": account?,
            "tenant": client.tenant,
            "waiting": line.waiting,
            "running": line.running,
        })))
    }
}
