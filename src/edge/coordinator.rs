//! The task coordinator: a SQLite-backed Durable Object per tenant, and the edge's way to
//! call it.
//!
//! **Why one per tenant.** A tenant (a client, or one browser user of a client) is the unit
//! everything about a task is scoped to: who may see it, whose list it is in, whose webhook
//! secret signs it, whose rate limits and caps apply. One object per tenant keeps each of
//! those in one place with no cross-object coordination, spreads load as tenants multiply
//! (a busy app's browser users each get their own), and keeps every list a plain SQL query.
//! One object for the deployment would serialise every callback through one thread; one per
//! task would make the list a scatter-gather. The object is named by the tenant's shard
//! (`crate::task::tenant_shard`), which the callback capability carries, so Kling's
//! callbacks reach the right object with no lookup.
//!
//! The object runs the flows of `crate::flows::coordinator` with real ports: its SQLite
//! database, Kling over `fetch`, clients' receivers, Workers KV. Its alarm drives every
//! schedule (polls, webhook retries, edge copies), so they survive eviction and restarts.

use std::cell::{Cell, OnceCell, RefCell};

use worker::wasm_bindgen::{prelude::wasm_bindgen, JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{durable_object, js_sys, web_sys, Env, Request, Response, ScheduledTime, State};

use crate::error::{code, ApiError};
use crate::flows::coordinator::{Coordinator, LinkSettings, Settings};
use crate::flows::protocol;

use super::bucket::R2Results;
use super::clock::{self, WorkerRuntime};
use super::read_model::KvReadModel;
use super::settings;
use super::sql_store::SqlStore;
use super::upstream::{Kling, QUERY_REFRESH_TIMEOUT_MS};
use super::webhooks::FetchWebhooks;

/// The Durable Object binding in `wrangler.toml`.
pub const BINDING: &str = "COORDINATOR";
/// An alarm never reschedules itself sooner than this, so a task that stays due (a store
/// that cannot save) cannot spin.
const ALARM_FLOOR_MS: u64 = 500;

#[durable_object]
pub struct TaskCoordinator {
    state: State,
    env: Env,
    /// Opened (its tables created) once per instance.
    store: OnceCell<SqlStore>,
    /// The alarm this object last set, if known (`None`: ask storage).
    alarm_at: Cell<Option<Option<u64>>>,
    /// The shard and tenant this object has recorded, so it records them only once.
    learned: RefCell<(Option<String>, Option<String>)>,
}

impl worker::DurableObject for TaskCoordinator {
    fn new(state: State, env: Env) -> Self {
        TaskCoordinator {
            state,
            env,
            store: OnceCell::new(),
            alarm_at: Cell::new(None),
            learned: RefCell::new((None, None)),
        }
    }

    async fn fetch(&self, mut request: Request) -> worker::Result<Response> {
        let body = request.text().await.unwrap_or_default();
        let answer = match serde_json::from_str::<protocol::Request>(&body) {
            Ok(call) => self.handle(call).await,
            Err(_) => Err(ApiError::internal("the coordinator got a request it cannot read")),
        };
        Response::from_json(&protocol::Response::from(answer))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(Some(None));
        let outcome = self.run_due().await;
        if let Err(error) = &outcome {
            WorkerRuntime.log_problem("alarm", &error.message);
        }
        self.reschedule(true).await;
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

    /// Records the shard and tenant a call names, unless this instance already did.
    fn learn(&self, coordinator: &RealCoordinator<'_>, call: &protocol::Request) -> Result<(), ApiError> {
        let known = self.learned.borrow().clone();
        let shard = Some(call.shard().to_owned());
        let tenant = call.tenant().map(str::to_owned);
        if known.0 == shard && (tenant.is_none() || known.1 == tenant) {
            return Ok(());
        }
        coordinator.learn(call.shard(), call.tenant())?;
        *self.learned.borrow_mut() = (shard, tenant.or(known.1));
        Ok(())
    }

    /// The real ports the flows run with. A call a client waits on gives Kling a shorter
    /// deadline (`QUERY_REFRESH_TIMEOUT_MS`) than the alarm does.
    fn ports(&self, client_waits: bool) -> Result<Ports<'_>, ApiError> {
        let config = settings::config(&self.env)?;
        let kling = Kling::new(&config);
        let bucket = R2Results::open(&self.env, config.allow_private_urls);
        Ok(Ports {
            store: self.store()?,
            kling: if client_waits { kling.with_timeout_ms(QUERY_REFRESH_TIMEOUT_MS) } else { kling },
            read_model: KvReadModel::open(&self.env)?,
            settings: flow_settings(&config, &bucket),
            bucket,
        })
    }

    async fn handle(&self, call: protocol::Request) -> Result<serde_json::Value, ApiError> {
        let ports = self.ports(true)?;
        let coordinator = ports.coordinator();
        self.learn(&coordinator, &call)?;
        let answer = match call {
            protocol::Request::Register { registration, .. } => coordinator.register(registration),
            protocol::Request::Report { nonce, endpoint, report, .. } => {
                coordinator.report(&nonce, endpoint, &report).map(|()| serde_json::Value::Null)
            }
            protocol::Request::Query { tenant, endpoint, id, .. } => coordinator
                .query(&tenant, endpoint, &id)
                .await?
                .ok_or_else(|| ApiError::not_found(&format!("task {id}"))),
            protocol::Request::List { tenant, endpoint, page_num, page_size, .. } => {
                coordinator.list(&tenant, endpoint, page_num, page_size).map(serde_json::Value::Array)
            }
            protocol::Request::Running { tenant, .. } => {
                coordinator.running(&tenant).map(serde_json::Value::from)
            }
        };
        self.reschedule(false).await;
        answer
    }

    async fn run_due(&self) -> Result<(), ApiError> {
        self.ports(false)?.coordinator().run_due().await
    }

    /// Sets the alarm for the next thing due, unless an earlier alarm is already set.
    async fn reschedule(&self, from_alarm: bool) {
        let Ok(store) = self.store() else { return };
        let Ok(Some(due)) = crate::ports::TaskStore::next_due(store) else { return };
        let now = clock::now_ms();
        let at = if from_alarm { due.max(now + ALARM_FLOOR_MS) } else { due.max(now) };
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

/// The ports of one call or alarm.
struct Ports<'a> {
    store: &'a SqlStore,
    kling: Kling,
    read_model: KvReadModel,
    bucket: R2Results,
    settings: Settings,
}

type RealCoordinator<'a> =
    Coordinator<'a, SqlStore, Kling, FetchWebhooks, KvReadModel, R2Results, WorkerRuntime>;

impl Ports<'_> {
    fn coordinator(&self) -> RealCoordinator<'_> {
        Coordinator {
            store: self.store,
            kling: &self.kling,
            webhooks: &FetchWebhooks,
            read_model: &self.read_model,
            bucket: &self.bucket,
            runtime: &WorkerRuntime,
            settings: &self.settings,
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
    }
}

#[wasm_bindgen]
extern "C" {
    /// A Durable Object stub as the runtime gives it: `fetch(request)` resolves to a
    /// `Response` (used directly, so its body is read in one native call).
    type RawStub;

    #[wasm_bindgen(method, catch)]
    fn fetch(this: &RawStub, request: &web_sys::Request) -> Result<js_sys::Promise, JsValue>;
}

/// Calls the coordinator of `request`'s shard from the edge.
pub async fn call(env: &Env, request: &protocol::Request) -> Result<serde_json::Value, ApiError> {
    let unavailable =
        || ApiError::new(503, code::UNAVAILABLE, "the task coordinator is unavailable; retry shortly");
    let namespace = env
        .durable_object(BINDING)
        .map_err(|_| ApiError::config(BINDING, "is not bound: add the Durable Object to wrangler.toml"))?;
    let stub: RawStub = namespace
        .id_from_name(request.shard())
        .and_then(|id| id.get_stub())
        .map_err(|_| unavailable())?
        .into_rpc();
    let body =
        serde_json::to_string(request).map_err(|_| ApiError::internal("encoding a coordinator call"))?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&body));
    let outgoing =
        web_sys::Request::new_with_str_and_init("https://coordinator/", &init).map_err(|_| unavailable())?;
    let promise = stub.fetch(&outgoing).map_err(|_| unavailable())?;
    let response: web_sys::Response =
        JsFuture::from(promise).await.and_then(|value| value.dyn_into()).map_err(|_| unavailable())?;
    let bytes = super::http::body_bytes(&response).await.map_err(|_| unavailable())?;
    let answer: protocol::Response = serde_json::from_slice(&bytes).map_err(|_| unavailable())?;
    answer.into()
}
