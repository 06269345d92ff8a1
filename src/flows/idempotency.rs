//! A create with an `Idempotency-Key`, both sides: the tenant's coordinator keeps the key
//! (`crate::record::idempotency`), and the edge claims it before anything is spent, answers
//! a repeat from it, and settles or frees it once the create's outcome is known.
//!
//! Uploads take a key too ([`Edge::upload_keyed`]): a retried upload answers the asset the
//! first stored.
//!
//! A create without a key never reaches this module: it costs nothing more than before.
//! With one, the edge validates the body (a body that breaks a rule claims nothing), claims
//! the key in one call to the coordinator, and only then runs the create. What became of
//! the create decides the key:
//! - an answer with a task (Kling's, or a create waiting in line): kept as the key's answer,
//!   with the task's record (or, for a create in line, at once);
//! - refused before Kling, or by Kling: the key is freed, as nothing was spent;
//! - no answer in time, or the isolate cut off: the key stays claimed, and the create's
//!   intent settles it (the task found at Kling) or frees it (none), so a repeat meanwhile
//!   waits (409) and never makes a second task.

use serde_json::json;

use crate::api::surfaces::{Style, Surface};
use crate::auth::Client;
use crate::error::{code, ApiError};
use crate::ports::{
    AssetBucket, AssetStore, Coordinators, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream,
    Webhooks,
};
use crate::record::asset::UPLOAD_DEADLINE_MS;
use crate::record::idempotency::{self, Claim, Fate, KeyEntry, StoredAnswer};
use crate::record::USEAPI_STYLE;
use crate::validate::UrlPolicy;
use crate::{api::useapi, ids::hex, kling::task};

use super::coordinator::Coordinator;
use super::create::{spent_of, Created, Spent, INTENT_MARGIN_MS};
use super::edge::{Answer, Edge, EdgePorts};
use super::protocol::{self, KeyAnswer};
use super::upload::Upload;

/// The header.
pub const HEADER: &str = "Idempotency-Key";
/// What a key is claimed for (its refusals say so).
#[derive(Debug, Clone, Copy)]
enum Keyed {
    Create,
    Upload,
}

/// The header a repeat's answer carries.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

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
    /// A create of `nonce` brings `key` with `fingerprint` (`crate::record::idempotency::claim`).
    pub fn claim_key(
        &self,
        key: &str,
        fingerprint: &str,
        nonce: &str,
        in_flight_ms: u64,
    ) -> Result<Claim, ApiError> {
        let now = self.runtime.now_ms();
        let kept = self.store.load_key(key)?;
        let fresh = KeyEntry::claimed(key, fingerprint, nonce, now, in_flight_ms);
        let (claim, save) =
            idempotency::claim(kept.as_ref(), fingerprint, fresh, now, |entry| self.fate_of(entry));
        if let Some(entry) = save {
            self.store.save_key(&entry)?;
        }
        Ok(claim)
    }

    /// What became of the create holding a key past its time in flight: its task (as the
    /// client would read it now), its intent still being looked for at Kling, or nothing.
    fn fate_of(&self, entry: &KeyEntry) -> Fate {
        let found = self.store.find_nonce(&entry.nonce).and_then(|task| match task {
            Some(task_id) => self.store.load(&task_id),
            None => Ok(None),
        });
        match found {
            Ok(Some(record)) => {
                let data = record.answer().data;
                Fate::Recorded(match record.style.as_deref() {
                    Some(USEAPI_STYLE) => StoredAnswer::UseApi { body: useapi::task_answer(&data) },
                    _ => StoredAnswer::Success { data },
                })
            }
            Ok(None) if self.store.has_intent(&entry.nonce).unwrap_or(true) => Fate::LookedFor,
            Ok(None) => Fate::Nothing,
            // A store that cannot say keeps the repeat waiting: never a second task.
            Err(_) => Fate::LookedFor,
        }
    }

    /// The create of `nonce` answered: a repeat of its key answers the same.
    pub fn settle_key(&self, nonce: &str, settled: KeyAnswer) -> Result<(), ApiError> {
        let Some(mut entry) = self.store.load_key(&settled.key)? else { return Ok(()) };
        if entry.nonce != nonce || entry.answer.is_some() {
            return Ok(());
        }
        entry.answer = Some(settled.answer);
        entry.ignored = settled.ignored;
        self.store.save_key(&entry)
    }

    /// The create of `nonce` spent nothing: its key is free (unless another create holds it
    /// now, or it has an answer).
    pub fn release_key(&self, key: &str, nonce: &str) -> Result<(), ApiError> {
        match self.store.load_key(key)? {
            Some(entry) if entry.nonce == nonce && entry.answer.is_none() => self.store.delete_key(key),
            _ => Ok(()),
        }
    }
}

impl StoredAnswer {
    /// What a create answered, to be answered again.
    pub fn of(answer: &Answer) -> Option<StoredAnswer> {
        match answer {
            Answer::Kling(reply) => Some(StoredAnswer::Kling {
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            }),
            Answer::Success(data) => Some(StoredAnswer::Success { data: data.clone() }),
            Answer::UseApi(body) => Some(StoredAnswer::UseApi { body: body.clone() }),
            Answer::Acknowledged => None,
        }
    }

    pub fn into_answer(self) -> Answer {
        match self {
            StoredAnswer::Kling { status, body } => {
                Answer::Kling(crate::ports::KlingReply { status, body: body.into_bytes() })
            }
            StoredAnswer::Success { data } => Answer::Success(data),
            StoredAnswer::UseApi { body } => Answer::UseApi(body),
        }
    }
}

impl<P: EdgePorts> Edge<'_, P> {
    /// A create with its `Idempotency-Key`, if it has one (see the module's doc).
    pub async fn create_keyed(
        &self,
        client: &Client,
        surface: &'static Surface,
        body: Vec<u8>,
        key: Option<&str>,
    ) -> Result<Created, ApiError> {
        let Some(key) = key else { return self.create(client, surface, body).await };
        idempotency::check_key(key).map_err(|rule| ApiError::bad_param(HEADER, rule))?;
        // A body that breaks a rule claims nothing.
        surface.validate(&body, UrlPolicy { allow_private: self.config.allow_private_urls })?;
        let fingerprint = idempotency::fingerprint(surface.path, &body);
        let random = self.runtime.random_16()?;
        let nonce = hex(&random);
        // Until its intent is written the create may still be measuring its video.
        let in_flight_ms = u64::from(self.config.kling_timeout_ms)
            + u64::from(self.config.video_probe_timeout_ms)
            + INTENT_MARGIN_MS;
        let shard = task::tenant_shard(&client.tenant);
        let claim =
            self.claim_for(client, &shard, key, fingerprint, &nonce, in_flight_ms, Keyed::Create).await?;
        if let Some((answer, ignored)) = claim {
            let ignored = ignored.iter().filter_map(|name| surface.body.ignored_name(name)).collect();
            return Ok(Created {
                answer: answer.into_answer(),
                record: None,
                ignored,
                replayed: true,
                spent: Spent::Task,
            });
        }
        let outcome = self.create_as(client, surface, body, Some((random, key))).await;
        self.decide_key(&shard, key, &nonce, outcome).await
    }

    /// Settles or frees a claimed key by what became of its create.
    async fn decide_key(
        &self,
        shard: &str,
        key: &str,
        nonce: &str,
        outcome: Result<Created, ApiError>,
    ) -> Result<Created, ApiError> {
        match spent_of(&outcome) {
            // Kling may have the task: the create's intent settles the key, or frees it.
            Spent::Unknown => return outcome,
            Spent::Nothing => {
                self.free_key(shard, key, nonce).await;
                return outcome;
            }
            Spent::Task => {}
        }
        let Ok(mut created) = outcome else { return outcome };
        let ignored: Vec<String> = created.ignored.iter().map(|name| (*name).to_owned()).collect();
        let answer = StoredAnswer::of(&created.answer);
        let settled = answer.map(|answer| KeyAnswer { key: key.to_owned(), answer, ignored });
        match (&mut created.record, settled) {
            // Kept with the task's record, which lands after the answer.
            (Some(recording), settled) => recording.registration.key_answer = settled,
            // A create waiting in line has its record already: its answer is kept now.
            (None, Some(settled)) => self.keep_answer(shard, nonce, settled).await,
            (None, None) => {}
        }
        Ok(created)
    }

    /// An upload (`POST /v1/assets`, useapi.net's `/v1/kling/assets`) with its
    /// `Idempotency-Key`, if it has one: a retry answers the asset the first stored, and
    /// stores (and counts against the day's bytes) nothing again. An upload's bytes are not
    /// read before it is stored, so the same key is compared by what the request declares
    /// (its type and length): another answers 422. Answers whether it was answered again.
    pub async fn upload_keyed(
        &self,
        client: &Client,
        style: Style,
        upload: Upload<<P::Assets as AssetBucket>::Body>,
        key: Option<&str>,
    ) -> Result<(Answer, bool), ApiError> {
        let Some(key) = key else { return Ok((self.upload(client, style, upload).await?, false)) };
        idempotency::check_key(key).map_err(|rule| ApiError::bad_param(HEADER, rule))?;
        let declared = format!(
            "{}|{}",
            upload.content_type.as_deref().unwrap_or_default(),
            upload.content_length.map_or_else(|| "-".to_owned(), |length| length.to_string())
        );
        let scope = match style {
            Style::Kling => "upload",
            Style::UseApi => "upload:useapi",
        };
        let nonce = hex(&self.runtime.random_16()?);
        let shard = task::tenant_shard(&client.tenant);
        let fingerprint = idempotency::fingerprint(scope, declared.as_bytes());
        let claim = self
            .claim_for(client, &shard, key, fingerprint, &nonce, UPLOAD_DEADLINE_MS, Keyed::Upload)
            .await?;
        if let Some((answer, _)) = claim {
            return Ok((answer.into_answer(), true));
        }
        let outcome = self.upload(client, style, upload).await;
        match outcome.as_ref().ok().and_then(StoredAnswer::of) {
            Some(answer) => {
                self.keep_answer(
                    &shard,
                    &nonce,
                    KeyAnswer { key: key.to_owned(), answer, ignored: Vec::new() },
                )
                .await
            }
            // Nothing stored: the key is free.
            None => self.free_key(&shard, key, &nonce).await,
        }
        outcome.map(|answer| (answer, false))
    }

    /// Claims `key` for the request of `nonce` in its tenant's coordinator: `None`, the key is
    /// this request's; the answer (and fields dropped) of the key's earlier request; or the
    /// key's refusal (409 while that request is under way, 422 for another body).
    #[allow(clippy::too_many_arguments)]
    async fn claim_for(
        &self,
        client: &Client,
        shard: &str,
        key: &str,
        fingerprint: String,
        nonce: &str,
        in_flight_ms: u64,
        keyed: Keyed,
    ) -> Result<Option<(StoredAnswer, Vec<String>)>, ApiError> {
        let claim = protocol::ClaimKey {
            tenant: client.tenant.clone(),
            key: key.to_owned(),
            fingerprint,
            nonce: nonce.to_owned(),
            in_flight_ms,
        };
        match self.coordinators.call(shard, claim).await? {
            Claim::Fresh => Ok(None),
            Claim::Replay { answer, ignored } => Ok(Some((answer, ignored))),
            Claim::InFlight { retry_after_secs } => {
                let what = match keyed {
                    Keyed::Create => "a create with this key is still on its way to Kling",
                    Keyed::Upload => "an upload with this key is still under way",
                };
                Err(ApiError::new(
                    409,
                    code::INVALID_REQUEST,
                    format!("{HEADER}: {what}; retry in {retry_after_secs} s for its answer"),
                )
                .with_retry_after(retry_after_secs))
            }
            Claim::Mismatch => {
                let what = match keyed {
                    Keyed::Create => "was used with another body in the last 24 hours; use a new key for another create",
                    Keyed::Upload => "was used with another upload (another type or length) in the last 24 hours; use a new key",
                };
                Err(ApiError::new(422, code::INVALID_PARAMETER, format!("{HEADER}: {what}")))
            }
        }
    }

    /// Keeps the answer of the request of `nonce` under its key; if that fails, a repeat
    /// waits until the key's time in flight ends and then finds what became of it.
    async fn keep_answer(&self, shard: &str, nonce: &str, settled: KeyAnswer) {
        let call = protocol::SettleKey { nonce: nonce.to_owned(), answer: settled };
        if let Err(error) = self.coordinators.call(shard, call).await {
            self.runtime.log(json!({"event": "settle_key", "problem": error.message}));
        }
    }

    /// Frees a key whose create spent nothing; if that fails, a repeat waits until the key's
    /// time in flight ends and then finds the create came to nothing.
    async fn free_key(&self, shard: &str, key: &str, nonce: &str) {
        let call = protocol::ReleaseKey { key: key.to_owned(), nonce: nonce.to_owned() };
        if let Err(error) = self.coordinators.call(shard, call).await {
            self.runtime.log(json!({"event": "release_key", "problem": error.message}));
        }
    }
}
