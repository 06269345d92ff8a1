//! The gate of the Kling accounts: a SQLite-backed Durable Object that holds each account's
//! slots and the one line of creates waiting for a slot (`crate::record::gate`), and the way
//! the request path and the coordinators call it.
//!
//! **Why one object.** Kling counts concurrency per account, across every tenant and every
//! key: only one place can know how many slots are held and who is next, and decide it
//! atomically. The object runs the flows of `crate::flows::gate`: each request (admit,
//! release, cancel) is a load, a rule and a save with no `await` between. Its alarm sends
//! waiting creates to Kling through their tenants' coordinators (which hold each create's
//! body), so the line survives eviction and restarts. One object holds every account (each
//! with its own slots and pace): choosing the least loaded account is then one decision in
//! one place, with no round trip per account, and a create in line goes to whichever account
//! frees a slot first; an object per account could not give a create to whichever frees
//! first without calls between the objects. What that costs: every account shares the one
//! object's throughput, and each change rewrites the whole state, which grows with the
//! accounts and the line. It is one small request per create and one per task's end: at
//! Cloudflare's ~1,000 requests a second per object it serves far more creates than a few
//! accounts can run.

use std::cell::{Cell, RefCell};

use serde::Deserialize;
use worker::wasm_bindgen::JsValue;
use worker::{durable_object, Env, Request, Response, ScheduledTime, SqlStorage, State};

use crate::error::{code, ApiError};
use crate::flows::gate::{GateFlows, GateSettings};
use crate::flows::gate_protocol::{self, GateCall};
use crate::flows::protocol::{self, WireAnswer};
use crate::kling::task;
use crate::ports::{Coordinators, Dispatched, Dispatcher, GateStore, Gates};
use crate::record::gate::{Gate, Ticket};

use super::clock::{self, WorkerRuntime};
use super::config;
use super::coordinator::{post_to_object, DurableCoordinators};

/// The Durable Object binding in `wrangler.toml`.
pub const BINDING: &str = "GATE";
/// The gate's object: a name kept from when the deployment had one account, so that a line
/// waiting at an upgrade is still there after it.
pub const ACCOUNT: &str = "account:default";
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gate (id INTEGER PRIMARY KEY, state TEXT NOT NULL)";
const LOAD: &str = "SELECT state FROM gate WHERE id = 0";
const SAVE: &str = "INSERT OR REPLACE INTO gate (id, state) VALUES (0, ?)";

#[durable_object]
pub struct AccountGate {
    state: State,
    env: Env,
    /// The gate as last read or written (this object is its only writer).
    gate: RefCell<Option<Gate>>,
    /// The alarm this object last set, if known.
    alarm_at: Cell<Option<Option<u64>>>,
    opened: Cell<bool>,
}

struct SqlGate<'a> {
    sql: SqlStorage,
    /// The deployment's accounts: slots held on none of them are the first's.
    accounts: &'a [crate::record::gate::AccountSlots],
    cache: &'a RefCell<Option<Gate>>,
    /// Whether this instance has made its table.
    opened: &'a Cell<bool>,
}

impl SqlGate<'_> {
    fn open(&self) -> Result<(), ApiError> {
        if !self.opened.get() {
            self.sql.exec(SCHEMA, None).map_err(failed)?;
            self.opened.set(true);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

fn failed(error: worker::Error) -> ApiError {
    worker::console_error!("{}", serde_json::json!({"event": "gate_sql", "problem": error.to_string()}));
    ApiError::new(503, code::UNAVAILABLE, "the account's gate storage failed; retry shortly")
}

impl GateStore for SqlGate<'_> {
    fn load_gate(&self) -> Result<Gate, ApiError> {
        if let Some(gate) = self.cache.borrow().as_ref() {
            return Ok(gate.clone());
        }
        self.open()?;
        let rows: Vec<StateRow> = self.sql.exec(LOAD, None).and_then(|c| c.to_array()).map_err(failed)?;
        let mut gate: Gate = match rows.first() {
            Some(row) => serde_json::from_str(&row.state)
                .map_err(|_| ApiError::internal("the account's gate state is unreadable"))?,
            None => Gate::default(),
        };
        gate.name_unnamed(self.accounts);
        *self.cache.borrow_mut() = Some(gate.clone());
        Ok(gate)
    }

    fn save_gate(&self, gate: &Gate) -> Result<(), ApiError> {
        let state = serde_json::to_string(gate).map_err(|_| ApiError::internal("encoding the gate"))?;
        self.open()?;
        *self.cache.borrow_mut() = None;
        self.sql.exec(SAVE, vec![state.into()]).map_err(failed)?;
        *self.cache.borrow_mut() = Some(gate.clone());
        Ok(())
    }
}

/// The coordinators as the gate's alarm reaches them: a queued create's turn. A call that
/// fails is an outcome unknown, asked again after the send's deadline.
struct CoordinatorDispatcher<'a> {
    env: &'a Env,
    calls: Cell<u32>,
}

impl Dispatcher for CoordinatorDispatcher<'_> {
    async fn dispatch(&self, ticket: &Ticket, account: &str) -> Dispatched {
        let coordinators = DurableCoordinators { env: self.env, calls: &self.calls };
        let shard = task::tenant_shard(&ticket.tenant);
        let call = protocol::Dispatch { nonce: ticket.id.clone(), account: account.to_owned() };
        match coordinators.call(&shard, call).await {
            Ok(outcome) => outcome,
            Err(error) => {
                WorkerRuntime.log_problem("dispatch", &error.message);
                Dispatched::Unknown
            }
        }
    }
}

impl worker::DurableObject for AccountGate {
    fn new(state: State, env: Env) -> Self {
        AccountGate {
            state,
            env,
            gate: RefCell::new(None),
            alarm_at: Cell::new(None),
            opened: Cell::new(false),
        }
    }

    async fn fetch(&self, mut request: Request) -> worker::Result<Response> {
        let body = request.bytes().await.unwrap_or_default();
        let answer = match config::read(&self.env) {
            Ok(config) => {
                let settings = GateSettings::of(&config);
                let dispatcher = CoordinatorDispatcher { env: &self.env, calls: Cell::new(0) };
                let store = self.store(&settings);
                let flows = GateFlows {
                    store: &store,
                    dispatcher: &dispatcher,
                    runtime: &WorkerRuntime,
                    settings: &settings,
                };
                let answer = gate_protocol::serve(&flows, &body);
                self.reschedule(&flows, 0).await;
                answer
            }
            Err(error) => serde_json::to_string(&WireAnswer::<()>::from(Err(error)))?,
        };
        Response::ok(answer)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(Some(None));
        let config = match config::read(&self.env) {
            Ok(config) => config,
            Err(error) => {
                WorkerRuntime.log_problem("gate_alarm", &error.message);
                return Response::ok("done");
            }
        };
        let settings = GateSettings::of(&config);
        let dispatcher = CoordinatorDispatcher { env: &self.env, calls: Cell::new(0) };
        let store = self.store(&settings);
        let flows = GateFlows {
            store: &store,
            dispatcher: &dispatcher,
            runtime: &WorkerRuntime,
            settings: &settings,
        };
        if let Err(error) = flows.run_due().await {
            WorkerRuntime.log_problem("gate_alarm", &error.message);
        }
        // Not sooner than a second from now, so a gate that cannot save cannot spin.
        self.reschedule(&flows, 1_000).await;
        Response::ok("done")
    }
}

impl AccountGate {
    fn store<'a>(&'a self, settings: &'a GateSettings) -> SqlGate<'a> {
        SqlGate {
            sql: self.state.storage().sql(),
            accounts: &settings.accounts,
            cache: &self.gate,
            opened: &self.opened,
        }
    }

    /// Sets the alarm for the gate's next work (`floor_ms` from now at the earliest), unless
    /// an earlier alarm is set.
    async fn reschedule<D: Dispatcher>(
        &self,
        flows: &GateFlows<'_, SqlGate<'_>, D, WorkerRuntime>,
        floor_ms: u64,
    ) {
        let now = clock::now_ms();
        if self.alarm_at.get().flatten().is_some_and(|current| current <= now) {
            return;
        }
        let Ok(Some(due)) = flows.next_due() else { return };
        let at = due.max(now + floor_ms);
        let storage = self.state.storage();
        let current = match self.alarm_at.get() {
            Some(known) => known,
            None => storage.get_alarm().await.ok().flatten().map(|ms| ms.max(0) as u64),
        };
        if current.is_some_and(|current| current <= at) {
            self.alarm_at.set(Some(current));
            return;
        }
        let date = worker::js_sys::Date::new(&JsValue::from_f64(at as f64));
        match storage.set_alarm(ScheduledTime::new(date)).await {
            Ok(()) => self.alarm_at.set(Some(Some(at))),
            Err(error) => {
                self.alarm_at.set(None);
                WorkerRuntime.log_problem("gate_set_alarm", &error.to_string());
            }
        }
    }
}

/// The gate as the request path and the coordinators call it, counting the calls (for the
/// log line).
pub struct DurableGates<'a> {
    pub env: &'a Env,
    pub calls: &'a Cell<u32>,
}

impl Gates for DurableGates<'_> {
    async fn call<C: GateCall>(&self, call: C) -> Result<C::Answer, ApiError> {
        self.calls.set(self.calls.get() + 1);
        let bytes = send(self.env, gate_protocol::encode(call)?).await?;
        gate_protocol::decode::<C>(&bytes)
    }
}

async fn send(env: &Env, body: String) -> Result<Vec<u8>, ApiError> {
    post_to_object(env, BINDING, ACCOUNT, body, "the account's gate").await
}
