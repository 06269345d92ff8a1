//! The task coordinator: a SQLite-backed Durable Object per tenant, and the edge's way to
//! call it.
//!
//! **Why one per tenant.** A tenant (a client, or one browser user of a client) is the unit
//! everything about a task is scoped to: who may see it, whose list it is in, whose webhook
//! secret signs it, whose rate limits and caps apply. One object per tenant keeps each of
//! those in one place with no cross-object coordination, spreads load as tenants multiply
//! (a busy app's browser users each get their own), and keeps every list a plain SQL query.
//! One object for the deployment would serialise every callback through one thread; one per
//! task would make the list a scatter-gather. A tenant does not outgrow one object: at about
//! 1,000 requests a second and five per task, it takes far more tasks than a Kling account
//! can run (see the README, "How big one tenant can get"). The object is named by the
//! tenant's shard (`crate::kling::task::tenant_shard`), which the callback capability
//! carries, so Kling's callbacks reach the right object with no lookup.
//!
//! The object runs the flows of `crate::flows::coordinator` with real ports: its SQLite
//! database, Kling over `fetch`, clients' receivers, Workers KV. Its alarm drives every
//! schedule (polls, webhook retries, result copies, edge copies), so they survive eviction
//! and restarts; a callback's prompt step (`crate::flows::prompt`) makes a finished task's
//! first webhook and edge copy at once, in a request of its own, and the instance keeps in
//! memory what is promised and in flight.

use std::cell::{Cell, OnceCell};

use worker::wasm_bindgen::{prelude::wasm_bindgen, JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{durable_object, js_sys, web_sys, Env, Request, Response, ScheduledTime, State};

use crate::config::Config;
use crate::error::{code, ApiError};
use crate::flows::coordinator::{Coordinator, LinkSettings, Settings, DUE_BATCH};
use crate::flows::prompt::PromptSteps;
use crate::flows::protocol::{self, Call};
use crate::ports::{Coordinators, TaskStore};

use super::clock::{self, WorkerRuntime};
use super::config;
use super::copies::R2Results;
use super::delivery::FetchWebhooks;
use super::edge_copy::KvEdgeCopies;
use super::gate::DurableGates;
use super::kling::{Kling, ALARM_POLL_TIMEOUT_MS, QUERY_REFRESH_TIMEOUT_MS};
use super::sql_store::SqlStore;

/// The Durable Object binding in `wrangler.toml`.
pub const BINDING: &str = "COORDINATOR";
/// An alarm never reschedules itself sooner than this, so a task that stays due (a store
/// that cannot save) cannot spin; after a full batch, which leaves a backlog, the floor is
/// `BACKLOG_FLOOR_MS`.
const ALARM_FLOOR_MS: u64 = 500;
const BACKLOG_FLOOR_MS: u64 = 50;

/// When the next alarm may run.
#[derive(Clone, Copy)]
enum Reschedule {
    /// As soon as something is due (after a request).
    Now,
    /// After a full batch: not sooner than `BACKLOG_FLOOR_MS` from now.
    Backlog,
    /// Not sooner than `ALARM_FLOOR_MS` from now.
    AfterAlarm,
}

#[durable_object]
pub struct TaskCoordinator {
    state: State,
    env: Env,
    /// Opened (its tables created) once per instance.
    store: OnceCell<SqlStore>,
    /// The tenant's shard: this object's name.
    shard: OnceCell<String>,
    /// The alarm this object last set, if known (`None`: ask storage).
    alarm_at: Cell<Option<Option<u64>>>,
    /// The prompt steps promised and the steps in flight in this instance.
    prompts: PromptSteps,
    /// Calls to the account's gate (not logged per call).
    gate_calls: Cell<u32>,
}

impl worker::DurableObject for TaskCoordinator {
    fn new(state: State, env: Env) -> Self {
        TaskCoordinator {
            state,
            env,
            store: OnceCell::new(),
            shard: OnceCell::new(),
            alarm_at: Cell::new(None),
            prompts: PromptSteps::default(),
            gate_calls: Cell::new(0),
        }
    }

    async fn fetch(&self, mut request: Request) -> worker::Result<Response> {
        let body = request.bytes().await.unwrap_or_default();
        let answer = match self.ports(true) {
            Ok(ports) => protocol::serve(&ports.coordinator(), &body).await,
            Err(error) => serde_json::to_string(&protocol::WireAnswer::<()>::from(Err(error)))?,
        };
        self.reschedule(Reschedule::Now).await;
        Response::ok(answer)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(Some(None));
        let outcome = match self.ports(false) {
            Ok(ports) => ports.coordinator().run_due().await,
            Err(error) => Err(error),
        };
        if let Err(error) = &outcome {
            WorkerRuntime.log_problem("alarm", &error.message);
        }
        // A full batch that went well leaves a backlog: the next alarm starts almost at once.
        let backlog = outcome.is_ok_and(|worked| worked >= DUE_BATCH);
        self.reschedule(if backlog { Reschedule::Backlog } else { Reschedule::AfterAlarm }).await;
        Response::ok("done")
    }
}

impl TaskCoordinator {
    fn store(&self) -> Result<&SqlStore, ApiError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = SqlStore::open(self.state.storage().sql())?;
        Ok(self.store.get_or_init(|| store))
    }

    /// The object's name (the edge names each coordinator by its tenant's shard); an object
    /// of the previous version, whose runtime did not pass names through, wrote it down.
    fn shard(&self) -> Result<&str, ApiError> {
        if let Some(shard) = self.shard.get() {
            return Ok(shard);
        }
        let shard = match self.state.id().name() {
            Some(name) => name,
            None => self.store()?.meta("shard")?.unwrap_or_default(),
        };
        Ok(self.shard.get_or_init(|| shard))
    }

    /// The real ports the flows run with. Kling's answers to polls have a deadline shorter
    /// than `KLING_TIMEOUT_MS`: `QUERY_REFRESH_TIMEOUT_MS` when a client waits, else
    /// `ALARM_POLL_TIMEOUT_MS`.
    fn ports(&self, client_waits: bool) -> Result<Ports<'_>, ApiError> {
        let config = config::read(&self.env)?;
        let bucket = R2Results::open(&self.env, config.allow_private_urls);
        Ok(Ports {
            gates: DurableGates { env: &self.env, calls: &self.gate_calls },
            shard: self.shard()?,
            store: self.store()?,
            prompts: &self.prompts,
            kling: AccountKling { config: config.clone(), client_waits },
            edge_copies: KvEdgeCopies { env: &self.env },
            settings: flow_settings(&config, &bucket),
            bucket,
        })
    }

    /// Sets the alarm for the next thing due, unless an earlier alarm is already set.
    async fn reschedule(&self, when: Reschedule) {
        let now = clock::now_ms();
        // An alarm already set for now or earlier covers whatever is due (the alarm forgets
        // what it knew as it starts): no need to ask the store.
        if self.alarm_at.get().flatten().is_some_and(|current| current <= now) {
            return;
        }
        let Ok(store) = self.store() else { return };
        let Ok(Some(due)) = store.next_due() else { return };
        let at = match when {
            Reschedule::Now => due.max(now),
            Reschedule::Backlog => due.max(now + BACKLOG_FLOOR_MS),
            Reschedule::AfterAlarm => due.max(now + ALARM_FLOOR_MS),
        };
        let storage = self.state.storage();
        let current = match self.alarm_at.get() {
            Some(known) => known,
            None => storage.get_alarm().await.ok().flatten().map(|ms| ms.max(0) as u64),
        };
        if current.is_some_and(|current| current <= at) {
            self.alarm_at.set(Some(current));
            return;
        }
        let date = worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(at as f64));
        match storage.set_alarm(ScheduledTime::new(date)).await {
            Ok(()) => self.alarm_at.set(Some(Some(at))),
            Err(error) => {
                self.alarm_at.set(None);
                WorkerRuntime.log_problem("set_alarm", &error.to_string());
            }
        }
    }
}

/// Kling for the coordinator: a client (and its account's token, from the isolate's cache)
/// for each call, on the account of the task it is about.
struct AccountKling {
    config: std::rc::Rc<Config>,
    client_waits: bool,
}

impl AccountKling {
    fn kling(&self, account: Option<&str>) -> Kling {
        let kling = Kling::new(&self.config, self.config.accounts.of_task(account));
        kling.with_timeout_ms(if self.client_waits {
            QUERY_REFRESH_TIMEOUT_MS
        } else {
            ALARM_POLL_TIMEOUT_MS
        })
    }
}

impl crate::ports::Upstream for AccountKling {
    /// With the create's own deadline (`KLING_TIMEOUT_MS`), not a poll's.
    async fn create(
        &self,
        account: Option<&str>,
        endpoint: &crate::api::Endpoint,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<crate::ports::KlingReply, ApiError> {
        let kling = Kling::new(&self.config, self.config.accounts.of_task(account));
        kling.create(endpoint, body).await
    }

    async fn current_task(
        &self,
        account: Option<&str>,
        endpoint: &crate::api::Endpoint,
        task_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        self.kling(account).current_task(endpoint, task_id).await
    }

    async fn task_by_external_id(
        &self,
        account: Option<&str>,
        endpoint: &crate::api::Endpoint,
        external_task_id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        self.kling(account).task_by_external_id(endpoint, external_task_id).await
    }
}

/// The ports of one call or alarm.
struct Ports<'a> {
    gates: DurableGates<'a>,
    shard: &'a str,
    store: &'a SqlStore,
    prompts: &'a PromptSteps,
    kling: AccountKling,
    edge_copies: KvEdgeCopies<'a>,
    bucket: R2Results,
    settings: Settings,
}

type RealCoordinator<'a> = Coordinator<
    'a,
    SqlStore,
    AccountKling,
    FetchWebhooks,
    KvEdgeCopies<'a>,
    R2Results,
    WorkerRuntime,
    DurableGates<'a>,
>;

impl Ports<'_> {
    fn coordinator(&self) -> RealCoordinator<'_> {
        Coordinator {
            shard: self.shard,
            store: self.store,
            kling: &self.kling,
            webhooks: &FetchWebhooks,
            edge_copies: &self.edge_copies,
            bucket: &self.bucket,
            runtime: &WorkerRuntime,
            settings: &self.settings,
            prompts: self.prompts,
            gates: &self.gates,
        }
    }
}

fn flow_settings(config: &crate::config::Config, bucket: &R2Results) -> Settings {
    Settings {
        poll: config.kling_poll.clone(),
        forward: config.forward_retry.clone(),
        webhook_key: config.proxy_webhook_key.clone(),
        copies: bucket.bucket().map(|_| config.copies.clone()),
        links: LinkSettings {
            key: config.link_key.clone(),
            ttl_secs: config.result_link_ttl_secs,
            public_base_url: config.public_base_url.clone(),
        },
        send_deadline_ms: crate::flows::gate::coordinator_send_deadline_ms(config),
        accounts: config.accounts.all().iter().map(|account| account.name.clone()).collect(),
    }
}

#[wasm_bindgen]
extern "C" {
    /// A Durable Object stub as the runtime gives it: `fetch(request)` resolves to a
    /// `Response` (used directly, so its body is read in one native call).
    pub type RawStub;

    #[wasm_bindgen(method, catch)]
    pub fn fetch(this: &RawStub, request: &web_sys::Request) -> Result<js_sys::Promise, JsValue>;
}

/// The coordinators as the request path calls them, counting the calls (for the log line;
/// `make bench` counts them).
pub struct DurableCoordinators<'a> {
    pub env: &'a Env,
    pub calls: &'a Cell<u32>,
}

impl Coordinators for DurableCoordinators<'_> {
    async fn call<C: Call>(&self, shard: &str, call: C) -> Result<C::Answer, ApiError> {
        self.calls.set(self.calls.get() + 1);
        let bytes = send(self.env, shard, protocol::encode(call)?).await?;
        protocol::decode::<C>(&bytes)
    }
}

/// Sends one request's JSON to the coordinator named `shard`; its answer's bytes.
async fn send(env: &Env, shard: &str, body: String) -> Result<Vec<u8>, ApiError> {
    post_to_object(env, BINDING, shard, body, "the task coordinator").await
}

/// POSTs `body` to the Durable Object `name` of the namespace bound as `binding` (`what`
/// names it in the 503 a failure answers); its answer's bytes.
pub async fn post_to_object(
    env: &Env,
    binding: &str,
    name: &str,
    body: String,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    let unavailable =
        || ApiError::new(503, code::UNAVAILABLE, format!("{what} is unavailable; retry shortly"));
    let namespace = env
        .durable_object(binding)
        .map_err(|_| ApiError::config(binding, "is not bound: add the Durable Object to wrangler.toml"))?;
    let stub: RawStub =
        namespace.id_from_name(name).and_then(|id| id.get_stub()).map_err(|_| unavailable())?.into_rpc();
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&body));
    let outgoing =
        web_sys::Request::new_with_str_and_init("https://object/", &init).map_err(|_| unavailable())?;
    let promise = stub.fetch(&outgoing).map_err(|_| unavailable())?;
    let response: web_sys::Response =
        JsFuture::from(promise).await.and_then(|value| value.dyn_into()).map_err(|_| unavailable())?;
    super::http::body_bytes(&response).await.map_err(|_| unavailable())
}
