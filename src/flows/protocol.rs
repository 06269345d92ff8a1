//! What the edge asks a tenant's coordinator, and what each request answers: JSON over the
//! Durable Object's `fetch`, one request per call.
//!
//! Each request is its own type with its own answer type ([`Call::Answer`]), so neither side
//! walks untyped JSON. The object is named by the tenant's shard and learns that name from
//! its own id, so no request carries it. Client requests name the tenant, so a coordinator
//! first woken by a callback learns whom it serves at the first client call.
//!
//! [`serve`] is the object's side, written once: the Durable Object and the in-memory
//! coordinators of `crate::testing` both run it on the same JSON.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::ports::{
    AssetStore, Dispatched, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream, Webhooks,
};
use crate::record::asset::{Admission, Asset, Measured};
use crate::record::budget::Millicredits;
use crate::record::gate::InLine;
use crate::record::idempotency::{Claim, StoredAnswer};
use crate::record::intent::Intent;
use crate::record::max_jobs::HoldOutcome;
use crate::record::queued::TenantLine;
use crate::record::TaskAnswer;

use super::coordinator::{Coordinator, Registration};

/// A request to a coordinator, with the type of its answer.
pub trait Call: Into<Request> {
    type Answer: Serialize + DeserializeOwned;
}

/// A create Kling accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register(pub Registration);

/// A callback from Kling, its capability checked by the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub nonce: String,
    pub endpoint: u8,
    pub report: Value,
    /// The account the capability names (`None`: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// A create brings an `Idempotency-Key` (`crate::record::idempotency`): the key is the
/// create of `nonce`'s, or it answers what the key's create answered, or refuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimKey {
    pub tenant: String,
    pub key: String,
    pub fingerprint: String,
    pub nonce: String,
    /// How long the create may be on its way.
    pub in_flight_ms: u64,
}

/// The create holding a key answered: a repeat answers this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettleKey {
    pub nonce: String,
    pub answer: KeyAnswer,
}

/// A create holding a key spent nothing (refused before Kling, or by Kling): the key is free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseKey {
    pub key: String,
    pub nonce: String,
}

/// Reserves a create's estimate of its tenant's budget (`crate::record::budget`): the
/// estimate reserved, or 429 past the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveCredits {
    pub tenant: String,
    pub nonce: String,
    /// What kind of create it is (its endpoint and options), for the last cost of one like it.
    pub kind: String,
    /// The table's estimate, if Kling has charged none like it yet.
    pub estimate: Millicredits,
    pub budget: Millicredits,
    /// How long the create may take to be recorded.
    pub hold_ms: u64,
}

/// A create that spent nothing gives its reservation back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseCredits {
    pub nonce: String,
}

/// The tenant's credits and tasks today, for `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetUsage {
    pub tenant: String,
}

/// A key and the answer its create gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyAnswer {
    pub key: String,
    pub answer: StoredAnswer,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// A task's prompt step (`super::prompt`): the call a callback's answer asks the edge to
/// make once Kling has its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepNow {
    pub task_id: String,
}

/// A create that waits at the edge for a free Kling slot (`crate::record::queued`): its
/// registration (the worker's task id, its waiting data) and the body to send Kling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enqueue {
    pub registration: Registration,
    pub body: Map<String, Value>,
    /// `QUEUE_MAX_WAIT_SECONDS`, in ms.
    pub max_wait_ms: u64,
    /// Kling answered 1303 to it, sent at once to this account with the slot the gate gave:
    /// the coordinator puts it back in the gate's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// The account useapi.net's `email` pinned it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// The gate's turn for a queued create (its ticket is the create's nonce): send it to Kling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    pub nonce: String,
    /// The account whose slot it got (empty from a gate of before accounts had names: the
    /// first).
    #[serde(default)]
    pub account: String,
}

/// A client's cancel of one of its tasks of `endpoint`, by the id it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelTask {
    pub tenant: String,
    pub endpoint: u8,
    pub id: String,
}

/// The tenant's creates in line (as the gate has them, by ticket), as its client sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub tenant: String,
    pub waiting: Vec<InLine>,
}

/// One task, by task id or external task id: its answer (Kling's data with the worker's
/// `delivery`, and its copies), or 404.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub tenant: String,
    pub endpoint: u8,
    pub id: String,
}

/// A page of the tenant's tasks of one endpoint, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List {
    pub tenant: String,
    pub endpoint: u8,
    pub page_num: u32,
    pub page_size: u32,
}

/// useapi.net's `maxJobs`: hold one of the tenant's job slots for a create about to call
/// Kling, if its running tasks and the other holds leave one (`crate::record::max_jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldJob {
    pub tenant: String,
    pub max_jobs: u32,
    pub hold_id: String,
    /// How long the hold lasts unless released (at least as long as the create can take).
    pub hold_ms: u64,
}

/// A create on its way to Kling (`crate::record::intent`), sent while Kling is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intend(pub Intent);

/// A create Kling refused: its intent is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abandon {
    pub nonce: String,
}

/// Kling's link for a result file whose copy is not in the bucket, for a signed link to the
/// copy that was followed before the copy was made (or if it never is): `None` when there is
/// no such file or Kling no longer keeps it. The link's signature named the task's shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopySource {
    pub task_id: String,
    pub name: String,
}

/// Gives a job slot back: the create it was held for was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseJob {
    pub hold_id: String,
}

/// An upload about to start: its bytes reserved against the tenant's bytes of the day (its
/// declared size, or what is left) and recorded as uploading; or refused, with when the day
/// renews.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeginUpload {
    pub tenant: String,
    pub asset_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_bytes: Option<u64>,
    /// `UPLOAD_BYTES_PER_DAY`.
    pub day_limit: u64,
}

/// An upload stored and measured: kept from now on (`retention_ms` from its start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishUpload {
    pub tenant: String,
    pub asset_id: String,
    pub measured: Measured,
    pub retention_ms: u64,
}

/// An upload refused or broken off: its object (if any) and its record are removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropUpload {
    pub tenant: String,
    pub asset_id: String,
    /// What arrived, counted against the day instead of what was declared.
    pub bytes: u64,
}

/// One stored asset of the tenant, or 404.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetAsset {
    pub tenant: String,
    pub asset_id: String,
}

/// A page of the tenant's stored assets, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListAssets {
    pub tenant: String,
    pub page_num: u32,
    pub page_size: u32,
}

/// A client's removal of one of its stored assets (404 if there is none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteAsset {
    pub tenant: String,
    pub asset_id: String,
}

impl Call for BeginUpload {
    type Answer = Admission;
}
impl Call for FinishUpload {
    type Answer = Asset;
}
impl Call for DropUpload {
    type Answer = ();
}
impl Call for GetAsset {
    type Answer = Asset;
}
impl Call for ListAssets {
    type Answer = Vec<Asset>;
}
impl Call for DeleteAsset {
    type Answer = ();
}

impl Call for Register {
    type Answer = ();
}
impl Call for ReserveCredits {
    type Answer = Millicredits;
}
impl Call for ReleaseCredits {
    type Answer = ();
}
impl Call for GetUsage {
    type Answer = super::budget::Usage;
}
impl Call for ClaimKey {
    type Answer = Claim;
}
impl Call for SettleKey {
    type Answer = ();
}
impl Call for ReleaseKey {
    type Answer = ();
}
impl Call for Enqueue {
    type Answer = ();
}
impl Call for Dispatch {
    type Answer = Dispatched;
}
impl Call for CancelTask {
    type Answer = TaskAnswer;
}
impl Call for Line {
    type Answer = TenantLine;
}
impl Call for Report {
    /// The task's prompt step, if the report made its step due and it was promised one.
    type Answer = Option<StepNow>;
}
impl Call for StepNow {
    type Answer = ();
}
impl Call for Query {
    type Answer = TaskAnswer;
}
impl Call for List {
    type Answer = Vec<TaskAnswer>;
}
impl Call for HoldJob {
    type Answer = HoldOutcome;
}
impl Call for ReleaseJob {
    type Answer = ();
}
impl Call for Intend {
    type Answer = ();
}
impl Call for Abandon {
    type Answer = ();
}
impl Call for CopySource {
    type Answer = Option<String>;
}

/// Every request, as it crosses to the object: `{"op": "query", ...its fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Register(Register),
    ClaimKey(ClaimKey),
    SettleKey(SettleKey),
    ReleaseKey(ReleaseKey),
    ReserveCredits(ReserveCredits),
    ReleaseCredits(ReleaseCredits),
    GetUsage(GetUsage),
    Enqueue(Enqueue),
    Dispatch(Dispatch),
    CancelTask(CancelTask),
    Line(Line),
    Report(Report),
    StepNow(StepNow),
    Query(Query),
    List(List),
    HoldJob(HoldJob),
    ReleaseJob(ReleaseJob),
    Intend(Intend),
    Abandon(Abandon),
    CopySource(CopySource),
    BeginUpload(BeginUpload),
    FinishUpload(FinishUpload),
    DropUpload(DropUpload),
    GetAsset(GetAsset),
    ListAssets(ListAssets),
    DeleteAsset(DeleteAsset),
}

macro_rules! into_request {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Request {
            fn from(call: $variant) -> Request {
                Request::$variant(call)
            }
        }
    )*};
}
into_request!(
    Register,
    ClaimKey,
    SettleKey,
    ReleaseKey,
    ReserveCredits,
    ReleaseCredits,
    GetUsage,
    Enqueue,
    Dispatch,
    CancelTask,
    Line,
    Report,
    StepNow,
    Query,
    List,
    HoldJob,
    ReleaseJob,
    Intend,
    Abandon,
    CopySource,
    BeginUpload,
    FinishUpload,
    DropUpload,
    GetAsset,
    ListAssets,
    DeleteAsset
);

impl Request {
    /// The tenant the request speaks for, if it is a client's.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Request::Register(Register(registration)) | Request::Enqueue(Enqueue { registration, .. }) => {
                Some(&registration.tenant)
            }
            Request::Intend(Intend(intent)) => Some(&intent.tenant),
            Request::Query(Query { tenant, .. })
            | Request::ClaimKey(ClaimKey { tenant, .. })
            | Request::ReserveCredits(ReserveCredits { tenant, .. })
            | Request::GetUsage(GetUsage { tenant })
            | Request::CancelTask(CancelTask { tenant, .. })
            | Request::Line(Line { tenant, .. })
            | Request::List(List { tenant, .. })
            | Request::HoldJob(HoldJob { tenant, .. })
            | Request::BeginUpload(BeginUpload { tenant, .. })
            | Request::FinishUpload(FinishUpload { tenant, .. })
            | Request::DropUpload(DropUpload { tenant, .. })
            | Request::GetAsset(GetAsset { tenant, .. })
            | Request::ListAssets(ListAssets { tenant, .. })
            | Request::DeleteAsset(DeleteAsset { tenant, .. }) => Some(tenant),
            Request::Report(_)
            | Request::SettleKey(_)
            | Request::ReleaseKey(_)
            | Request::ReleaseCredits(_)
            | Request::Dispatch(_)
            | Request::StepNow(_)
            | Request::ReleaseJob(_)
            | Request::Abandon(_)
            | Request::CopySource(_) => None,
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            Request::Register(_) => "register",
            Request::ClaimKey(_) => "claim_key",
            Request::SettleKey(_) => "settle_key",
            Request::ReleaseKey(_) => "release_key",
            Request::ReserveCredits(_) => "reserve_credits",
            Request::ReleaseCredits(_) => "release_credits",
            Request::GetUsage(_) => "usage",
            Request::Enqueue(_) => "enqueue",
            Request::Dispatch(_) => "dispatch",
            Request::CancelTask(_) => "cancel_task",
            Request::Line(_) => "line",
            Request::Report(_) => "report",
            Request::StepNow(_) => "step_now",
            Request::Query(_) => "query",
            Request::List(_) => "list",
            Request::HoldJob(_) => "hold_job",
            Request::ReleaseJob(_) => "release_job",
            Request::Intend(_) => "intend",
            Request::Abandon(_) => "abandon",
            Request::CopySource(_) => "copy_source",
            Request::BeginUpload(_) => "begin_upload",
            Request::FinishUpload(_) => "finish_upload",
            Request::DropUpload(_) => "drop_upload",
            Request::GetAsset(_) => "get_asset",
            Request::ListAssets(_) => "list_assets",
            Request::DeleteAsset(_) => "delete_asset",
        }
    }
}

/// A request's answer as it crosses back: its value, or the error to pass on to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireAnswer<A> {
    Ok(A),
    Error {
        status: u16,
        code: u32,
        message: String,
        /// The error's `Retry-After`, in seconds, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

impl<A> From<Result<A, ApiError>> for WireAnswer<A> {
    fn from(result: Result<A, ApiError>) -> WireAnswer<A> {
        match result {
            Ok(value) => WireAnswer::Ok(value),
            Err(error) => {
                let retry_after = match &error.header {
                    Some(("Retry-After", seconds)) => seconds.parse().ok(),
                    _ => None,
                };
                WireAnswer::Error {
                    status: error.status,
                    code: error.code,
                    message: error.message,
                    retry_after,
                }
            }
        }
    }
}

impl<A> From<WireAnswer<A>> for Result<A, ApiError> {
    fn from(answer: WireAnswer<A>) -> Result<A, ApiError> {
        match answer {
            WireAnswer::Ok(value) => Ok(value),
            WireAnswer::Error { status, code, message, retry_after } => {
                let error = ApiError::new(status, code, message);
                Err(match retry_after {
                    Some(seconds) => error.with_retry_after(seconds),
                    None => error,
                })
            }
        }
    }
}

/// The JSON of a request, as the edge sends it.
pub fn encode<C: Call>(call: C) -> Result<String, ApiError> {
    serde_json::to_string(&call.into()).map_err(|_| ApiError::internal("encoding a coordinator call"))
}

/// A request's answer read back at the edge; an unreadable one is a coordinator that failed.
pub fn decode<C: Call>(bytes: &[u8]) -> Result<C::Answer, ApiError> {
    serde_json::from_slice::<WireAnswer<C::Answer>>(bytes)
        .map_err(|_| ApiError::internal("the coordinator's answer is unreadable"))?
        .into()
}

/// The object's side: reads a request, runs its flow, and answers in JSON.
pub async fn serve<S, K, W, R, B, T, G>(
    coordinator: &Coordinator<'_, S, K, W, R, B, T, G>,
    body: &[u8],
) -> String
where
    S: TaskStore + AssetStore,
    K: Upstream,
    W: Webhooks,
    R: EdgeCopies,
    B: ResultBucket,
    T: Runtime,
    G: Gates,
{
    fn answer<A: Serialize>(result: Result<A, ApiError>) -> String {
        serde_json::to_string(&WireAnswer::from(result)).unwrap_or_else(|_| {
            r#"{"error":{"status":500,"code":5000,"message":"encoding the coordinator's answer"}}"#.to_owned()
        })
    }
    let request = match serde_json::from_slice::<Request>(body) {
        Ok(request) => request,
        Err(_) => {
            return answer::<()>(Err(ApiError::internal("the coordinator got a request it cannot read")))
        }
    };
    if let Err(error) = coordinator.learn_tenant(request.tenant()) {
        return answer::<()>(Err(error));
    }
    match request {
        Request::Register(Register(registration)) => answer(coordinator.register(registration)),
        Request::ClaimKey(ClaimKey { key, fingerprint, nonce, in_flight_ms, .. }) => {
            answer(coordinator.claim_key(&key, &fingerprint, &nonce, in_flight_ms))
        }
        Request::SettleKey(SettleKey { nonce, answer: settled }) => {
            answer(coordinator.settle_key(&nonce, settled))
        }
        Request::ReleaseKey(ReleaseKey { key, nonce }) => answer(coordinator.release_key(&key, &nonce)),
        Request::ReserveCredits(ReserveCredits { nonce, kind, estimate, budget, hold_ms, .. }) => {
            answer(coordinator.reserve_credits(&nonce, &kind, estimate, budget, hold_ms))
        }
        Request::ReleaseCredits(ReleaseCredits { nonce }) => answer(coordinator.release_credits(&nonce)),
        Request::GetUsage(GetUsage { .. }) => answer(coordinator.usage()),
        Request::Enqueue(enqueue) => answer(coordinator.enqueue(enqueue).await),
        Request::Dispatch(Dispatch { nonce, account }) => {
            answer(coordinator.dispatch(&nonce, &account).await)
        }
        Request::CancelTask(CancelTask { tenant, endpoint, id }) => {
            answer(coordinator.cancel(&tenant, endpoint, &id).await)
        }
        Request::Line(Line { waiting, .. }) => answer(coordinator.line(&waiting)),
        Request::Report(Report { nonce, endpoint, report, account }) => {
            answer(coordinator.report(&nonce, endpoint, &report, account.as_deref()))
        }
        Request::StepNow(StepNow { task_id }) => answer(coordinator.step_now(&task_id).await),
        Request::Query(Query { tenant, endpoint, id }) => answer(
            coordinator
                .query(&tenant, endpoint, &id)
                .await
                .and_then(|found| found.ok_or_else(|| ApiError::not_found(&format!("task {id}")))),
        ),
        Request::List(List { tenant, endpoint, page_num, page_size }) => {
            answer(coordinator.list(&tenant, endpoint, page_num, page_size))
        }
        Request::HoldJob(HoldJob { tenant, max_jobs, hold_id, hold_ms }) => {
            answer(coordinator.hold_job(&tenant, max_jobs, &hold_id, hold_ms))
        }
        Request::ReleaseJob(ReleaseJob { hold_id }) => answer(coordinator.release_job(&hold_id)),
        Request::Intend(Intend(intent)) => answer(coordinator.intend(intent)),
        Request::Abandon(Abandon { nonce }) => answer(coordinator.store.delete_intent(&nonce)),
        Request::CopySource(CopySource { task_id, name }) => answer(coordinator.copy_source(&task_id, &name)),
        Request::BeginUpload(BeginUpload { asset_id, declared_bytes, day_limit, .. }) => {
            answer(coordinator.begin_upload(&asset_id, declared_bytes, day_limit))
        }
        Request::FinishUpload(FinishUpload { asset_id, measured, retention_ms, .. }) => {
            answer(coordinator.finish_upload(&asset_id, &measured, retention_ms))
        }
        Request::DropUpload(DropUpload { asset_id, bytes, .. }) => {
            answer(coordinator.drop_upload(&asset_id, bytes).await)
        }
        Request::GetAsset(GetAsset { asset_id, .. }) => answer(coordinator.stored_asset(&asset_id)),
        Request::ListAssets(ListAssets { page_num, page_size, .. }) => {
            answer(coordinator.list_assets(page_num, page_size))
        }
        Request::DeleteAsset(DeleteAsset { asset_id, .. }) => {
            answer(coordinator.delete_asset(&asset_id).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_cross_as_tagged_json() {
        let query = Query { tenant: "web/alice".into(), endpoint: 1, id: "t1".into() };
        let text = encode(query.clone()).unwrap();
        assert_eq!(text, r#"{"op":"query","tenant":"web/alice","endpoint":1,"id":"t1"}"#);
        let request: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(request, Request::Query(query));
        assert_eq!((request.tenant(), request.op()), (Some("web/alice"), "query"));
        let report =
            Request::from(Report { nonce: "n".into(), endpoint: 1, report: json!({}), account: None });
        assert_eq!(report.tenant(), None);
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), report);
        let begin = Request::from(BeginUpload {
            tenant: "web/bob".into(),
            asset_id: "a".into(),
            declared_bytes: Some(5),
            day_limit: 10,
        });
        assert_eq!((begin.tenant(), begin.op()), (Some("web/bob"), "begin_upload"));
        let text = serde_json::to_string(&begin).unwrap();
        assert!(text.starts_with(r#"{"op":"begin_upload","tenant":"web/bob""#), "{text}");
        let spent = Admission::Spent { used: 9, limit: 10, retry_after_secs: 60 };
        let crossed = serde_json::to_string(&WireAnswer::Ok(spent)).unwrap();
        assert_eq!(decode::<BeginUpload>(crossed.as_bytes()).unwrap(), spent);
    }

    #[test]
    fn answers_and_errors_cross_typed() {
        let task = TaskAnswer { data: json!({"task_id": "t1"}), copies: Vec::new() };
        let page = serde_json::to_string(&WireAnswer::Ok(vec![task.clone()])).unwrap();
        assert_eq!(decode::<List>(page.as_bytes()).unwrap(), vec![task]);
        let error = ApiError::not_found("task t1");
        let crossed = serde_json::to_string(&WireAnswer::<()>::from(Err(error.clone()))).unwrap();
        assert_eq!(decode::<ReleaseJob>(crossed.as_bytes()), Err(error));
        let unreadable = decode::<HoldJob>(b"{\"ok\":\"three\"}").unwrap_err();
        assert_eq!(unreadable.status, 500);
    }
}
