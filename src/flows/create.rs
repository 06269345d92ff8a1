//! A create, on every surface (`crate::api::surfaces`): the one flow that spends a Kling
//! credit.
//!
//! In order, and each step only if every one before it passed: the body's rules, the
//! client's webhook, useapi.net's `email`, the video measured at its URL (for an endpoint
//! whose create names one; an upload of the tenant's own, measured when it arrived, is
//! checked to be the tenant's instead), useapi.net's `maxJobs` (a slot held in the tenant's coordinator:
//! `crate::record::max_jobs`), the create limit, then Kling, once. So every refusal costs
//! nothing: it reaches no port that spends (Kling), and none that counts against the client
//! (the create limit) unless the create was valid. A refused create gives its slot back.
//!
//! The client gets Kling's answer as soon as Kling gives it. The task is recorded with its
//! tenant's coordinator only after that ([`Edge::record_created`], run after the answer): a
//! callback that beats the record carries what is needed to record the task, and is merged
//! into it, not lost.

use serde_json::{json, Map, Value};

use crate::accounts::KlingAccount;
use crate::api::fields::{Target, Validated};
use crate::api::surfaces::{Style, Surface};
use crate::api::useapi;
use crate::auth::{Client, ClientKind};
use crate::error::{code, ApiError};
use crate::ids::hex;
use crate::links::asset_links::{self, AssetLink};
use crate::links::capability::Capability;
use crate::ports::{Coordinators, Gates, KlingApi, KlingReply, Limit, RateLimiter, Runtime, VideoProbe};
use crate::probe::video_check::{self, Policy};
use crate::record::gate::{Admission, Ticket};
use crate::record::intent::Intent;
use crate::record::max_jobs::HoldOutcome;
use crate::record::queued;
use crate::record::USEAPI_STYLE;
use crate::validate::{self, UrlPolicy};
use crate::{kling::task, routes};

use super::coordinator::Registration;
use super::edge::{app_key, tenant_key, Answer, Edge, EdgePorts};
use super::upload::MIN_LIFE_FOR_CREATE_MS;
use super::{gate_protocol, protocol, queue};

/// Tries of recording a create with its coordinator (after the answer), and the waits before each.
pub const RECORD_RETRY_MS: [u64; 3] = [0, 200, 1_000];
/// A `maxJobs` hold lasts the Kling call's deadline plus this: the tries of recording it,
/// with room to spare.
const MAX_JOBS_HOLD_MARGIN_MS: u64 = 10_000;
/// A create's intent is first checked at Kling this long after the create's deadline.
pub const INTENT_MARGIN_MS: u64 = 10_000;
/// The largest create body that may wait in line (its coordinator keeps it in one row).
pub const MAX_QUEUED_BODY_BYTES: usize = 1024 * 1024;
/// When a create refused because the line is full (or its body too large to wait) may try
/// again.
pub const BUSY_RETRY_AFTER_SECS: u64 = 10;

/// A create's outcome: the answer, the task to record once it is sent, and the body's
/// fields that were dropped (for `X-Kling-Edge-Ignored`).
#[derive(Debug)]
pub struct Created {
    pub answer: Answer,
    pub record: Option<Recording>,
    pub ignored: Vec<&'static str>,
    /// The answer of an earlier create with the same `Idempotency-Key` (`super::idempotency`).
    pub replayed: bool,
    /// What the create came to: what its key and its reserved credits follow.
    pub spent: Spent,
}

/// What a create came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// A task: Kling's (its record lands after the answer), or one waiting in line (recorded).
    Task,
    /// Nothing: refused before Kling, or by Kling.
    Nothing,
    /// Kling may or may not have the task (its gateway failed): its intent finds out.
    Unknown,
}

/// A create Kling accepted, for its tenant's coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub shard: String,
    pub registration: Registration,
}

impl<'a, P: EdgePorts> Edge<'a, P> {
    /// `POST` on a surface's path, with its body read: validate, call Kling, answer. The
    /// body is dropped once validated (an image-to-video body may be 14 MiB).
    pub async fn create(
        &self,
        client: &Client,
        surface: &'static Surface,
        body: Vec<u8>,
    ) -> Result<Created, ApiError> {
        self.create_as(client, surface, body, None).await
    }

    /// A create, as the create of `keyed`'s nonce and `Idempotency-Key` when it has one (the
    /// key already claimed: `super::idempotency`).
    pub(crate) async fn create_as(
        &self,
        client: &Client,
        surface: &'static Surface,
        body: Vec<u8>,
        keyed: Option<([u8; 16], &str)>,
    ) -> Result<Created, ApiError> {
        let config = self.config;
        let policy = UrlPolicy { allow_private: config.allow_private_urls };
        let mut validated = surface.validate(&body, policy)?;
        drop(body);
        let client_webhook = client.webhook_for_create(validated.webhook.take())?;
        // A browser token's webhook was checked when it was minted, perhaps where private
        // addresses were allowed, or before an operator stopped allowing them: check it again.
        if let (ClientKind::BrowserToken, Some(url)) = (client.kind, &client_webhook) {
            let field = surface.body.client_name(Target::Webhook).unwrap_or("callback_url");
            validate::http_url(field, url, policy).map_err(|refusal| {
                ApiError::new(
                    403,
                    code::NO_PERMISSION,
                    format!("{} (the webhook this browser token was minted with)", refusal.message),
                )
            })?;
        }
        if client_webhook.is_some() && config.proxy_webhook_key.is_none() {
            let field = surface.body.client_name(Target::Webhook).unwrap_or("callback_url");
            return Err(ApiError::bad_param(
                field,
                "this deployment does not forward webhooks (its operator has not set PROXY_WEBHOOK_SECRET)",
            ));
        }
        let pin = match &validated.options.email {
            Some(email) => Some(self.account_email_rule(email)?),
            None => None,
        };
        let endpoint = surface.endpoint;
        if endpoint.video_input {
            let url = validated.upstream.get("video_url").and_then(Value::as_str).map(str::to_owned);
            if let Some(fresh) =
                self.video_rules(client, surface, url.as_deref(), validated.options.video_duration).await?
            {
                validated.upstream.insert("video_url".into(), Value::String(fresh));
            }
        }
        let shard = task::tenant_shard(&client.tenant);
        let max_jobs_hold = match validated.options.max_jobs {
            Some(max_jobs) => Some(self.hold_job(client, &shard, max_jobs).await?),
            None => None,
        };
        let spent = self
            .spend(client, surface, validated, &shard, client_webhook, max_jobs_hold.clone(), pin, keyed)
            .await;
        // A create Kling refused (or that never reached it) gives its slot back at once. One
        // whose outcome is unknown (no answer in time, a broken connection) keeps it until it
        // expires: Kling may be running the task.
        if let Some(hold_id) = max_jobs_hold {
            let outcome_unknown = matches!(&spent, Err(error) if error.status == 502 || error.status == 504);
            if !outcome_unknown && !matches!(&spent, Ok(Created { record: Some(_), .. })) {
                self.release_job(&shard, hold_id).await;
            }
        }
        spent
    }

    /// The create limit, then Kling, once: what a create that passed every rule spends.
    /// `pin` is the account useapi.net's `email` named.
    #[allow(clippy::too_many_arguments)]
    async fn spend(
        &self,
        client: &Client,
        surface: &'static Surface,
        validated: Validated,
        shard: &str,
        client_webhook: Option<String>,
        max_jobs_hold: Option<String>,
        pin: Option<&KlingAccount>,
        keyed: Option<([u8; 16], &str)>,
    ) -> Result<Created, ApiError> {
        let endpoint = surface.endpoint;
        // Only a create that passed every rule counts against the create limit.
        self.limiter.check(Limit::Creates, &tenant_key(&client.tenant)).await?;
        let now_secs = (self.runtime.now_ms() / 1000) as i64;
        let random = match keyed {
            Some((random, _)) => random,
            None => self.runtime.random_16()?,
        };
        let mut capability = Capability::issue(shard, random, endpoint.code, now_secs);
        let accounts = &self.config.accounts;
        let gated = accounts.gated();
        // Without the line, the account is chosen now; with it, the gate chooses (a create
        // that waits in line is recorded before it is sent, so its callbacks need no account).
        let ungated_account = (!gated).then(|| accounts.pick_ungated(pin, random[15]).name.clone());
        let mut upstream = validated.upstream;
        let cost_kind = super::budget::cost_kind(endpoint, &upstream);
        // A tenant with a budget reserves the create's estimate before Kling is called.
        let reserved = self.reserve_credits(client, shard, &capability.nonce, surface, &upstream).await?;
        let nonce = capability.nonce.clone();
        let sent: Result<Created, ApiError> = async {
            self.name_account(&mut capability, &mut upstream, ungated_account.as_deref());
            // What Kling can be asked by if this create's record never comes (`Intent`): the
            // client's own external id, or one the worker gives it.
            let external_task_id = match upstream.get("external_task_id").and_then(Value::as_str) {
                Some(own) if !own.is_empty() => own.to_owned(),
                _ => {
                    let edge_id = Intent::edge_external_id(&capability.nonce);
                    upstream.insert("external_task_id".into(), Value::String(edge_id.clone()));
                    edge_id
                }
            };
            let intent = Intent {
                nonce: capability.nonce.clone(),
                endpoint: endpoint.code,
                tenant: client.tenant.clone(),
                external_task_id: external_task_id.clone(),
                client_callback_url: client_webhook.clone(),
                style: (surface.style == Style::UseApi).then(|| USEAPI_STYLE.to_owned()),
                reply_ref: validated.options.reply_ref.clone(),
                origin: Some(self.origin.to_owned()),
                created_at: self.runtime.now_ms(),
                check_at: self.runtime.now_ms() + u64::from(self.config.kling_timeout_ms) + INTENT_MARGIN_MS,
                checks: 0,
                gated,
                account: ungated_account.clone(),
                idempotency_key: keyed.map(|(_, key)| key.to_owned()),
            };
            let ticket = Ticket { id: nonce.clone(), tenant: client.tenant.clone() };
            let waiting = Waiting {
                client,
                surface,
                shard,
                nonce: &nonce,
                external_task_id: &external_task_id,
                client_webhook: client_webhook.clone(),
                reply_ref: validated.options.reply_ref.clone(),
                ignored: validated.ignored.clone(),
                pin: pin.map(|account| account.name.clone()),
                cost_kind: cost_kind.clone(),
            };
            // The intent is recorded while the gate is asked, and the gate skipped when the line
            // is off, so a create that finds a free slot answers as fast as Kling does.
            let (holds_slot, account, reply) = if gated {
                let admit = gate_protocol::Admit { ticket, pin: waiting.pin.clone() };
                let (admitted, intended) = futures_util::future::join(
                    self.gates.call(admit),
                    self.coordinators.call(shard, protocol::Intend(intent)),
                )
                .await;
                if let Err(error) = &intended {
                    self.runtime.log(json!({"event": "intend", "problem": error.message}));
                }
                match admitted {
                    // The record the enqueue writes holds the create (its intent is not needed).
                    Ok(Admission::Queued { position }) => {
                        return self.queue_create(&waiting, upstream, Joins::NoSlot(position)).await;
                    }
                    Ok(Admission::Full { bound }) => {
                        self.abandon(shard, &nonce).await;
                        return Err(queue_full(bound));
                    }
                    Ok(Admission::Go { account }) => {
                        self.name_account(&mut capability, &mut upstream, Some(&account));
                        let reply = self.kling.create(&account, endpoint, &upstream).await;
                        (true, account, reply)
                    }
                    // Admitted twice (never, for a fresh nonce), or a gate that cannot answer: the
                    // create goes through, as it would go without one (if the gate did admit it,
                    // the task's end gives the slot back all the same).
                    other => {
                        if let Err(error) = other {
                            self.runtime.log(json!({"event": "gate", "problem": error.message}));
                        }
                        let account = accounts.pick_ungated(pin, random[15]).name.clone();
                        self.name_account(&mut capability, &mut upstream, Some(&account));
                        let reply = self.kling.create(&account, endpoint, &upstream).await;
                        (true, account, reply)
                    }
                }
            } else {
                let account = ungated_account.unwrap_or_default();
                let (intended, reply) = futures_util::future::join(
                    self.coordinators.call(shard, protocol::Intend(intent)),
                    self.kling.create(&account, endpoint, &upstream),
                )
                .await;
                if let Err(error) = &intended {
                    self.runtime.log(json!({"event": "intend", "problem": error.message}));
                }
                (false, account, reply)
            };
            // A create whose outcome is unknown (no answer in time) keeps its intent (and its
            // slot): Kling may have the task.
            let reply = reply?;
            let reply_status = reply.status;
            if holds_slot && queue::is_over_concurrency(reply.status, &reply.body) {
                // Kling has fewer slots than the gate believed: the create waits at the front of
                // its tenant's line instead of failing, and the gate learns.
                // (Its coordinator puts it back in the gate's line as it keeps it.) It may go to
                // another account: its callback URL names none (its record is kept first).
                self.name_account(&mut capability, &mut upstream, None);
                return self.queue_create(&waiting, upstream, Joins::RefusedBy(&account)).await;
            }
            drop(upstream);

            let data = task::envelope_data(&reply.body).filter(|_| reply.status == 200);
            let record = match data.as_ref().map(|data| (data, task::task_id_of(data))) {
                Some((data, Some(task_id))) => Some(Recording {
                    shard: shard.to_owned(),
                    registration: Registration {
                        task_id: task_id.to_owned(),
                        endpoint: endpoint.code,
                        nonce: nonce.clone(),
                        tenant: client.tenant.clone(),
                        client_callback_url: client_webhook,
                        style: (surface.style == Style::UseApi).then(|| USEAPI_STYLE.to_owned()),
                        reply_ref: validated.options.reply_ref,
                        origin: Some(self.origin.to_owned()),
                        data: data.clone(),
                        max_jobs_hold,
                        holds_slot,
                        account: Some(account),
                        key_answer: None,
                        cost_kind: Some(cost_kind),
                    },
                }),
                Some((_, None)) => {
                    self.runtime
                        .log(json!({"event": "create", "problem": "Kling's create answer has no task_id"}));
                    None
                }
                None => None,
            };
            // Kling refused it: there is no task to look for, and its slot is free. (A 5xx
            // from Kling's gateway may come after Kling made the task: its intent looks.)
            if record.is_none() && reply_status < 500 {
                if holds_slot {
                    self.release_slot(&nonce).await;
                }
                self.abandon(shard, &nonce).await;
            }
            let answer = match (surface.style, data) {
                (Style::Kling, _) => Answer::Kling(reply),
                (Style::UseApi, Some(data)) => Answer::UseApi(useapi::task_answer(&data)),
                (Style::UseApi, None) if reply_status >= 500 => {
                    return Err(ApiError::upstream_unreachable(&format!(
                        "Kling answered {reply_status}, so the task may or may not exist"
                    )))
                }
                (Style::UseApi, None) => return Err(kling_refusal(&reply)),
            };
            // A 5xx from Kling's gateway may come after Kling made the task: its intent looks.
            let spent = match (&record, reply_status) {
                (Some(_), _) => Spent::Task,
                (None, 500..) => Spent::Unknown,
                (None, _) => Spent::Nothing,
            };
            Ok(Created { answer, record, ignored: validated.ignored, replayed: false, spent })
        }
        .await;
        // Credits reserved stay reserved for a task (on its record, or its create waiting in
        // line) and for a create whose outcome is unknown (its intent settles them); a create
        // that spent nothing gives them back.
        if reserved && spent_of(&sent) == Spent::Nothing {
            self.release_credits(shard, &nonce).await;
        }
        sent
    }

    /// Gives the create's callback URL its capability, naming `account` unless it is the
    /// first (see `crate::links::capability`).
    fn name_account(
        &self,
        capability: &mut Capability,
        upstream: &mut Map<String, Value>,
        account: Option<&str>,
    ) {
        let first = &self.config.accounts.first().name;
        capability.account = account.filter(|account| *account != first.as_str()).map(str::to_owned);
        let callback =
            routes::kling_callback_url(self.origin, &capability.encode(&self.config.capability_key));
        upstream.insert("callback_url".into(), Value::String(callback));
    }

    /// Puts a create in line at its tenant's coordinator (it holds the body until the gate
    /// sends it) and answers it at once: the worker's task id, `submitted`, its place in line
    /// (after a 1303 at once, at the front). A body too large to wait is refused instead.
    async fn queue_create(
        &self,
        waiting: &Waiting<'_>,
        upstream: Map<String, Value>,
        joins: Joins<'_>,
    ) -> Result<Created, ApiError> {
        let (position, refused_by) = match joins {
            Joins::NoSlot(position) => (Some(position), None),
            Joins::RefusedBy(account) => (None, Some(account.to_owned())),
        };
        let Waiting { client, surface, shard, nonce, .. } = *waiting;
        let body_bytes = serde_json::to_vec(&upstream).map_or(usize::MAX, |body| body.len());
        let now = self.runtime.now_ms();
        let task_id = queued::edge_task_id(nonce);
        let data = queued::waiting_data(&task_id, waiting.external_task_id, now);
        let enqueue = protocol::Enqueue {
            registration: Registration {
                task_id,
                endpoint: surface.endpoint.code,
                nonce: nonce.to_owned(),
                tenant: client.tenant.clone(),
                client_callback_url: waiting.client_webhook.clone(),
                style: (surface.style == Style::UseApi).then(|| USEAPI_STYLE.to_owned()),
                reply_ref: waiting.reply_ref.clone(),
                origin: Some(self.origin.to_owned()),
                data: data.clone(),
                max_jobs_hold: None,
                holds_slot: false,
                account: None,
                key_answer: None,
                cost_kind: Some(waiting.cost_kind.clone()),
            },
            body: upstream,
            max_wait_ms: self.config.queue_max_wait_ms,
            refused_by,
            pin: waiting.pin.clone(),
        };
        let enqueued = match body_bytes > MAX_QUEUED_BODY_BYTES {
            true => Err(ApiError::new(
                429,
                code::RATE_LIMITED,
                format!("the Kling account is busy, and a create of over {MAX_QUEUED_BODY_BYTES} bytes cannot wait in line (send images as http(s) URLs); retry shortly"),
            )
            .with_retry_after(BUSY_RETRY_AFTER_SECS)),
            false => self.coordinators.call(shard, enqueue).await,
        };
        if let Err(error) = enqueued {
            // Nothing will send it: out of line again if it waits, or (refused by Kling with
            // the slot it got at once) that slot given back.
            match position {
                Some(_) => {
                    let cancel =
                        gate_protocol::CancelTicket { id: nonce.to_owned(), tenant: client.tenant.clone() };
                    if let Err(problem) = self.gates.call(cancel).await {
                        self.runtime.log(json!({"event": "gate", "problem": problem.message}));
                    }
                }
                None => self.release_slot(nonce).await,
            }
            self.abandon(shard, nonce).await;
            return Err(error);
        }
        let mut data = data;
        if let Some(object) = data.as_object_mut() {
            object.insert(
                "task_status_msg".into(),
                Value::String(queued::status_message(Some(position.unwrap_or(1)))),
            );
            object.insert("queue".into(), json!({"position": position.unwrap_or(1), "queued_at": now}));
        }
        self.runtime.log(json!({"event": "queued", "task_id": data["task_id"], "position": position}));
        let answer = match surface.style {
            Style::Kling => Answer::Success(data),
            Style::UseApi => Answer::UseApi(useapi::task_answer(&data)),
        };
        Ok(Created {
            answer,
            record: None,
            ignored: waiting.ignored.clone(),
            replayed: false,
            spent: Spent::Task,
        })
    }

    /// Drops a create's intent: it never reached Kling, or Kling refused it.
    async fn abandon(&self, shard: &str, nonce: &str) {
        let abandon = protocol::Abandon { nonce: nonce.to_owned() };
        if let Err(error) = self.coordinators.call(shard, abandon).await {
            self.runtime.log(json!({"event": "abandon", "problem": error.message}));
        }
    }

    /// Gives a slot the create got at once back to the gate: Kling refused the create.
    async fn release_slot(&self, nonce: &str) {
        if let Err(error) = self.gates.call(gate_protocol::Release { id: nonce.to_owned() }).await {
            self.runtime.log(json!({"event": "gate", "problem": error.message}));
        }
    }

    /// useapi.net's `maxJobs`: holds one of the tenant's job slots in its coordinator, or
    /// refuses the create (`crate::record::max_jobs`). The hold outlasts the longest create.
    async fn hold_job(&self, client: &Client, shard: &str, max_jobs: u32) -> Result<String, ApiError> {
        let hold_id = hex(&self.runtime.random_16()?);
        let hold_ms = u64::from(self.config.kling_timeout_ms) + MAX_JOBS_HOLD_MARGIN_MS;
        let call =
            protocol::HoldJob { tenant: client.tenant.clone(), max_jobs, hold_id: hold_id.clone(), hold_ms };
        match self.coordinators.call(shard, call).await? {
            HoldOutcome::Held => Ok(hold_id),
            HoldOutcome::Full { counted } => Err(ApiError::new(
                429,
                code::RATE_LIMITED,
                format!("maxJobs: {counted} of your tasks are running or starting, the most you allowed ({max_jobs}); retry when one finishes"),
            )),
        }
    }

    /// Gives a refused create's job slot back; if that fails, the hold expires by itself.
    async fn release_job(&self, shard: &str, hold_id: String) {
        if let Err(error) = self.coordinators.call(shard, protocol::ReleaseJob { hold_id }).await {
            self.runtime.log(json!({"event": "release_job", "problem": error.message}));
        }
    }

    /// Records a create Kling accepted with its coordinator, trying again a couple of times:
    /// until it lands, the task is known only from Kling's callbacks (which carry what is
    /// needed to record it).
    pub async fn record_created(&self, recording: Recording) -> Result<(), ApiError> {
        let mut outcome = Ok(());
        for wait_ms in RECORD_RETRY_MS {
            if wait_ms > 0 {
                self.runtime.sleep(wait_ms).await;
            }
            let call = protocol::Register(recording.registration.clone());
            outcome = self.coordinators.call(&recording.shard, call).await;
            if outcome.is_ok() {
                return outcome;
            }
        }
        if let Err(error) = &outcome {
            self.runtime.log(json!({"event": "register", "task_id": recording.registration.task_id,
                "problem": error.message}));
        }
        outcome
    }

    /// A video to add sound to must be one Kling accepts: measured at its URL (`VIDEO_PROBE`),
    /// else judged by the client's `video_duration` hint. A Kling video (`video_id`) is not
    /// probed, and neither is one of the tenant's own uploads (measured when it arrived):
    /// Kling is given a fresh link to it instead (the answer's `Some`).
    async fn video_rules(
        &self,
        client: &Client,
        surface: &Surface,
        url: Option<&str>,
        hint: Option<f64>,
    ) -> Result<Option<String>, ApiError> {
        let field = surface.body.client_name_of_upstream("video_url").unwrap_or("video_url");
        if let Some(link) = url.and_then(|url| asset_links::parse(&self.config.link_key, self.origin, url)) {
            return self.asset_rules(client, field, &link).await.map(Some);
        }
        let policy = self.config.video_probe;
        let (Some(url), false) = (url, policy == Policy::Off) else {
            return video_check::hint_rule(hint).map(|()| None);
        };
        // A measurement still fresh was logged when it was made.
        if let Some(outcome) = self.probe.remembered(url).await {
            return video_check::judge(&outcome, policy, hint, field).map(|_| None);
        }
        // A measurement fetches someone else's file: it counts against the app's probes
        // (all its browser users together) before it starts.
        self.limiter.check(Limit::Probes, &app_key(&client.app)).await.map_err(|mut refusal| {
            refusal.message =
                format!("{field}: too many videos measured for this app this minute ({})", refusal.message);
            refusal
        })?;
        let started_ms = self.runtime.now_ms();
        let outcome = self.probe.measure(url).await;
        let judged = video_check::judge(&outcome, policy, hint, field);
        // The URL is not logged: it may carry a signature.
        self.runtime.log(json!({
            "event": "video_probe",
            "outcome": outcome,
            "accepted": judged.is_ok(),
            "note": judged.as_ref().ok().and_then(|judgement| judgement.note.clone()),
            "ms": self.runtime.now_ms().saturating_sub(started_ms),
        }));
        judged.map(|_| None)
    }

    /// A create naming one of this deployment's upload links: the link must be valid and
    /// the tenant's own (403), and the asset still kept for a while (400). Answers the link
    /// to give Kling: a fresh one, lasting as long as Kling may take to fetch it.
    async fn asset_rules(&self, client: &Client, field: &str, link: &AssetLink) -> Result<String, ApiError> {
        let now_ms = self.runtime.now_ms();
        asset_links::verify(&self.config.link_key, link, now_ms / 1000).map_err(|refusal| {
            ApiError::new(refusal.status, refusal.code, format!("{field}: {}", refusal.message))
        })?;
        let shard = task::tenant_shard(&client.tenant);
        if link.shard != shard {
            return Err(asset_links::not_yours(field));
        }
        let call = protocol::GetAsset { tenant: client.tenant.clone(), asset_id: link.asset_id.clone() };
        let kept = self.coordinators.call(&shard, call).await.map_err(|refusal| match refusal.status {
            404 => ApiError::bad_param(
                field,
                "names an upload that is no longer kept (ASSET_RETENTION_DAYS): upload it again",
            ),
            _ => refusal,
        })?;
        if kept.due_at < now_ms.saturating_add(MIN_LIFE_FOR_CREATE_MS) {
            return Err(ApiError::bad_param(
                field,
                "names an upload that is removed within the hour, before Kling may fetch it: upload it again",
            ));
        }
        Ok(self.link(&shard, &kept).0)
    }

    /// `email` of a useapi.net-style call: the account it names, which the create then goes
    /// to (`KLING_ACCOUNTS`, or the one account's `KLING_ACCOUNT_EMAIL`).
    fn account_email_rule(&self, email: &str) -> Result<&'a KlingAccount, ApiError> {
        let accounts = &self.config.accounts;
        if let Some(account) = accounts.by_email(email) {
            return Ok(account);
        }
        let several = accounts.all().len() > 1;
        let named = accounts.all().iter().any(|account| account.email.is_some());
        Err(ApiError::bad_param(
            "email",
            match (several, named) {
                (true, _) => "is not one of this deployment's Kling accounts (KLING_ACCOUNTS): name one of them, or leave email out",
                (false, true) => "is not this deployment's Kling account (it has one: KLING_ACCOUNT_EMAIL, or the one of KLING_ACCOUNTS)",
                (false, false) => "this deployment has one Kling account and its operator has not named it (KLING_ACCOUNT_EMAIL): leave email out",
            },
        ))
    }
}

/// What a create to be queued needs besides its body.
struct Waiting<'a> {
    client: &'a Client,
    surface: &'static Surface,
    shard: &'a str,
    nonce: &'a str,
    external_task_id: &'a str,
    client_webhook: Option<String>,
    reply_ref: Option<String>,
    ignored: Vec<&'static str>,
    /// The account useapi.net's `email` named.
    pin: Option<String>,
    /// What kind of create it is (`super::budget::cost_kind`).
    cost_kind: String,
}

/// How a create joins the line: no slot was free (its place), or Kling answered 1303 at
/// once on an account (it goes back to the front).
enum Joins<'a> {
    NoSlot(u32),
    RefusedBy(&'a str),
}

/// What a create's outcome came to: an error with no answer in time (or a broken
/// connection) may have reached Kling; any other error spent nothing.
pub fn spent_of(outcome: &Result<Created, ApiError>) -> Spent {
    match outcome {
        Ok(created) => created.spent,
        Err(error) if matches!(error.status, 502 | 504) => Spent::Unknown,
        Err(_) => Spent::Nothing,
    }
}

/// A tenant's line is full (`QUEUE_MAX_PER_TENANT`).
fn queue_full(bound: u32) -> ApiError {
    ApiError::new(
        429,
        code::RATE_LIMITED,
        format!("queue: {bound} of your creates already wait for a free Kling slot, the most one client may have waiting (QUEUE_MAX_PER_TENANT); retry when one has started"),
    )
    .with_retry_after(BUSY_RETRY_AFTER_SECS)
}

/// Kling's own refusal of a create, as an error a useapi.net-style client reads.
fn kling_refusal(reply: &KlingReply) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        code: u32,
        message: Option<String>,
    }
    let envelope: Option<Envelope> = serde_json::from_slice(&reply.body).ok();
    let code = envelope.as_ref().map_or(0, |envelope| envelope.code);
    let message =
        envelope.and_then(|envelope| envelope.message).unwrap_or_else(|| "Kling refused the task".into());
    let status = if reply.status == 200 { 502 } else { reply.status };
    ApiError::new(status, code, format!("Kling: {message} (code {code})"))
}
