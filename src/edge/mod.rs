//! The Worker: the fetch entry point, the ports the flows run with, and logging.
//!
//! `edge` is the only part of the crate that owns `worker` types, and it is glue: each
//! route reads what its flow needs from the request (the body, a header), runs the flow of
//! `crate::flows` with the real ports, and turns the flow's answer into a response. Each
//! file is named after the pure concept it serves and implements its port: `kling`
//! (Kling's creates and queries), `coordinator` (the coordinators, and the Durable Object
//! itself with its `sql_store`), `limits` (the rate limiter), `probe` (the video's reads),
//! `edge_copy` (KV), `delivery` (webhook POSTs), `copies` (result files into R2),
//! `result_links` (serving them), `assets` (uploads into R2, and serving them), `config` (settings once per isolate) and `clock` (the
//! runtime). Each port is built only when a flow first asks it for something. Every
//! failure is an [`ApiError`] that becomes Kling's envelope in one place ([`fetch`]), and
//! every response leaves with an `X-Request-Id` and one log line that carries no credential.

mod assets;
pub mod clock;
mod config;
pub mod coordinator;
mod copies;
mod delivery;
mod edge_copy;
pub mod gate;
mod http;
mod kling;
mod limits;
mod probe;
mod result_links;
mod sql_store;

use std::cell::Cell;
use std::rc::Rc;

use worker::{console_error, console_log, event, Context, Env, Request, Response};

use crate::api::surfaces::Style;
use crate::auth;
use crate::auth::cors::{self, AllowedOrigins};
use crate::config::Config;
use crate::error::ApiError;
use crate::flows::edge::{tenant_key, Edge, EdgePorts};
use crate::flows::idempotency;
use crate::flows::upload::Upload;
use crate::links::webhook::SignatureHeaders;
use crate::ports::Runtime;
use crate::routes::{self, ClientRoute, Route};
use crate::validate;

use self::assets::{R2Assets, UploadBody};
use self::clock::WorkerRuntime;
use self::coordinator::DurableCoordinators;
use self::edge_copy::KvEdgeCopies;
use self::gate::DurableGates;
use self::kling::KlingForRequests;
use self::limits::Bindings;
use self::probe::FetchProbe;

/// What every handler needs about the request being served.
pub struct Call<'a> {
    pub env: &'a Env,
    pub ctx: &'a Context,
    pub config: Rc<Config>,
    pub request_id: &'a str,
    /// The worker's origin for the URLs it gives out (callbacks, result links):
    /// `PUBLIC_BASE_URL`, or the request's.
    pub origin: String,
    /// Calls to a coordinator made while serving, or left for after the answer (`wait_until`):
    /// for the log line (`make bench` counts them).
    pub coordinator_calls: &'a Cell<u32>,
    /// Calls to the account's gate, likewise.
    pub gate_calls: &'a Cell<u32>,
}

/// Names the body's fields a create dropped (`crate::api::fields::Body::ignored`).
pub const IGNORED_HEADER: &str = "X-Kling-Edge-Ignored";

/// The request path's ports with the Workers runtime.
struct WorkerPortTypes<'a>(std::marker::PhantomData<&'a ()>);

impl<'a> EdgePorts for WorkerPortTypes<'a> {
    type Kling = KlingForRequests<'a>;
    type Coordinators = DurableCoordinators<'a>;
    type Gates = DurableGates<'a>;
    type Limiter = Bindings<'a>;
    type Probe = FetchProbe<'a>;
    type EdgeCopies = KvEdgeCopies<'a>;
    type Assets = R2Assets<'a>;
    type Runtime = RequestRuntime<'a>;
}

/// The flows' view of the deployment, with the Workers runtime's ports.
type WorkerEdge<'a> = Edge<'a, WorkerPortTypes<'a>>;

/// The runtime as one request's flows see it: every log line names the request.
pub struct RequestRuntime<'a> {
    pub request_id: &'a str,
}

impl Runtime for RequestRuntime<'_> {
    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }

    fn random_16(&self) -> Result<[u8; 16], ApiError> {
        clock::random_bytes::<16>()
    }

    async fn sleep(&self, ms: u64) {
        WorkerRuntime.sleep(ms).await;
    }

    fn log(&self, mut event: serde_json::Value) {
        event["request_id"] = self.request_id.into();
        WorkerRuntime.log(event);
    }
}

/// The real ports of one request (or of the work it leaves for after its answer).
struct WorkerPorts<'a> {
    config: &'a Config,
    origin: &'a str,
    kling: KlingForRequests<'a>,
    coordinators: DurableCoordinators<'a>,
    gates: DurableGates<'a>,
    limiter: Bindings<'a>,
    probe: FetchProbe<'a>,
    edge_copies: KvEdgeCopies<'a>,
    assets: R2Assets<'a>,
    runtime: RequestRuntime<'a>,
}

impl<'a> WorkerPorts<'a> {
    fn new(
        env: &'a Env,
        config: &'a Config,
        origin: &'a str,
        request_id: &'a str,
        calls: &'a Cell<u32>,
        gate_calls: &'a Cell<u32>,
    ) -> Self {
        WorkerPorts {
            config,
            origin,
            kling: KlingForRequests { config, env },
            coordinators: DurableCoordinators { env, calls },
            gates: DurableGates { env, calls: gate_calls },
            limiter: Bindings { env },
            probe: FetchProbe { config },
            edge_copies: KvEdgeCopies { env },
            assets: R2Assets { env },
            runtime: RequestRuntime { request_id },
        }
    }

    fn edge(&self) -> WorkerEdge<'_> {
        Edge {
            config: self.config,
            origin: self.origin,
            kling: &self.kling,
            coordinators: &self.coordinators,
            gates: &self.gates,
            limiter: &self.limiter,
            probe: &self.probe,
            edge_copies: &self.edge_copies,
            assets: &self.assets,
            runtime: &self.runtime,
        }
    }
}

/// Once per isolate: a panic (a bug, never input: nothing panics on input) is logged with
/// where it happened before the runtime reports the request as failed.
#[event(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        console_error!("{}", serde_json::json!({"event": "panic", "at": location, "message": message}));
    }));
}

/// What the entry point learns while handling a request, for the answer's CORS headers
/// and the log line.
#[derive(Default)]
struct Seen {
    tenant: Option<String>,
    allowed_origins: Option<AllowedOrigins>,
    coordinator_calls: Cell<u32>,
    gate_calls: Cell<u32>,
    /// The shape errors take: useapi.net's on its paths, else Kling's envelope.
    style: Style,
}

#[event(fetch)]
pub async fn fetch(mut request: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let started_ms = clock::now_ms();
    let request_id = clock::new_request_id();
    // The method as sent: `worker::Method` would read any method it does not know as GET.
    let method = request.inner().method();
    let path = request.path();
    let origin = request.headers().get("Origin").ok().flatten();

    let mut seen = Seen::default();
    let response = match handle(&mut request, &env, &ctx, &request_id, &mut seen).await {
        Ok(response) => response,
        Err(error) => http::error(&error, &request_id, seen.style),
    };
    if method != "OPTIONS" {
        let granted = seen.allowed_origins.as_ref().and_then(|allowed| allowed.grant(origin.as_deref()));
        for (name, value) in cors::response_headers(granted) {
            let _ = response.headers().set(name, &value);
        }
    }
    let answered_id = response.headers().get("X-Request-Id").ok().flatten();
    console_log!(
        "{}",
        serde_json::json!({
            "request_id": answered_id.as_deref().unwrap_or(&request_id),
            "method": method,
            "path": routes::loggable_path(&path),
            "status": response.status_code(),
            "tenant": seen.tenant,
            "coordinator": seen.coordinator_calls.get(),
            "gate": seen.gate_calls.get(),
            "ms": clock::now_ms().saturating_sub(started_ms),
        })
    );
    Ok(response)
}

async fn handle(
    request: &mut Request,
    env: &Env,
    ctx: &Context,
    request_id: &str,
    seen: &mut Seen,
) -> Result<Response, ApiError> {
    let url = request.url().map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    let method = request.inner().method();
    let route = routes::route(&method, url.path());
    // useapi.net's paths answer its way, whatever goes wrong (even a malformed id).
    seen.style = if routes::is_useapi_path(url.path()) { Style::UseApi } else { Style::Kling };
    if route == Ok(Route::Health) {
        return Ok(health(request_id));
    }
    let config = config::read(env)?;
    let request_origin = url.origin().ascii_serialization();
    // Checked by the routes that give out URLs on it (creates, queries, lists).
    let own_origin = crate::config::own_origin(config.public_base_url.as_deref(), &request_origin);
    let origin = own_origin.clone().unwrap_or(request_origin);
    let call = Call {
        env,
        ctx,
        config,
        request_id,
        origin,
        coordinator_calls: &seen.coordinator_calls,
        gate_calls: &seen.gate_calls,
    };
    // From here on, even a refusal carries the CORS grant, so a page can read why.
    seen.allowed_origins = Some(call.config.allowed_origins.clone());
    let route = route?;

    let client_route = match route {
        Route::Health => return Ok(health(request_id)),
        Route::Preflight => return preflight(request, &call).await,
        // Kling authenticates with the URL's token (and a signature, when configured); only
        // refused callbacks count against the sender's address, so Kling's are never limited.
        Route::KlingCallback(token) => {
            let outcome = receive_callback(request, &call, &token).await;
            if outcome.as_ref().is_err_and(|refusal| matches!(refusal.status, 401 | 403 | 404)) {
                limits::check(env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
            }
            return outcome;
        }
        // A signed link is its own credential (an `<audio>` element sends no Authorization);
        // refused links count against the sender's address.
        Route::ResultCopy(copy) => {
            let outcome = result_links::serve(request, &call, &copy, method == "HEAD").await;
            if outcome.as_ref().is_err_and(|refusal| refusal.status == 403) {
                limits::check(env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
            }
            return outcome;
        }
        Route::AssetFile(file) => {
            let outcome = assets::serve(request, &call, &file, method == "HEAD").await;
            if outcome.as_ref().is_err_and(|refusal| refusal.status == 403) {
                limits::check(env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
            }
            return outcome;
        }
        Route::Client(client_route) => client_route,
    };

    let now_secs = clock::now_secs();
    let authorization = request.headers().get("Authorization").ok().flatten();
    let client = match auth::authenticate(&call.config, authorization.as_deref(), now_secs) {
        Ok(client) => client,
        Err(refusal) => {
            // Guessing credentials is limited per address.
            limits::check(env, limits::REQUESTS, &limits::ip_key(request), now_secs).await?;
            return Err(refusal);
        }
    };
    seen.tenant = Some(client.tenant.clone());
    limits::check(env, limits::REQUESTS, &tenant_key(&client.tenant), now_secs).await?;

    if matches!(
        client_route,
        ClientRoute::CreateTask(_)
            | ClientRoute::QueryTask(..)
            | ClientRoute::ListTasks(_)
            | ClientRoute::UseApiTask(_)
            | ClientRoute::CancelTask(..)
            | ClientRoute::Upload(_)
            | ClientRoute::ListAssets
            | ClientRoute::GetAsset(_)
    ) {
        own_origin?;
    }
    let ports = WorkerPorts::new(
        env,
        &call.config,
        &call.origin,
        request_id,
        call.coordinator_calls,
        call.gate_calls,
    );
    let edge = ports.edge();
    let mut ignored = Vec::new();
    let mut replayed = false;
    let answer = match client_route {
        ClientRoute::MintToken => {
            let body = http::read_body(request, http::MAX_BODY_BYTES).await?;
            edge.mint_token(&client, &body)?
        }
        ClientRoute::WebhookSecret => edge.webhook_secret(&client)?,
        ClientRoute::CreateTask(surface) => {
            let key = request.headers().get(idempotency::HEADER).ok().flatten();
            let created = if surface.takes_forms()
                && upload_of(request).content_type.as_deref().is_some_and(is_form)
            {
                if key.is_some() {
                    return Err(ApiError::bad_param(
                            idempotency::HEADER,
                            "is not taken with a multipart create yet: upload the video first (POST /v1/assets), then create with its link and the key",
                        ));
                }
                edge.create_from_form(&client, surface, upload_of(request)).await?
            } else {
                let body = http::read_body(request, surface.body.max_bytes).await?;
                edge.create_keyed(&client, surface, body, key.as_deref()).await?
            };
            ignored = created.ignored;
            replayed = created.replayed;
            if let Some(recording) = created.record {
                call.coordinator_calls.set(call.coordinator_calls.get() + 1);
                let (env, config, origin, request_id) =
                    (env.clone(), call.config.clone(), call.origin.clone(), request_id.to_owned());
                ctx.wait_until(async move {
                    let (calls, gate_calls) = (Cell::new(0), Cell::new(0));
                    let ports = WorkerPorts::new(&env, &config, &origin, &request_id, &calls, &gate_calls);
                    let _ = ports.edge().record_created(recording).await;
                });
            }
            created.answer
        }
        ClientRoute::QueryTask(surface, id) => edge.query(&client, surface.endpoint.code, &id).await?,
        ClientRoute::ListTasks(surface) => {
            let page = validate::page(url.query())?;
            edge.list(&client, surface.endpoint.code, page).await?
        }
        ClientRoute::UseApiTask(id) => edge.useapi_task(&client, &id).await?,
        ClientRoute::CancelTask(surface, id) => edge.cancel(&client, surface, &id).await?,
        ClientRoute::Queue => edge.queue(&client).await?,
        ClientRoute::Usage => edge.usage(&client, url.query()).await?,
        ClientRoute::Account => edge.account(&client).await?,
        ClientRoute::AccountCosts => edge.account_costs(&client, url.query()).await?,
        ClientRoute::Upload(style) => {
            let key = request.headers().get(idempotency::HEADER).ok().flatten();
            let (answer, again) =
                edge.upload_keyed(&client, style, upload_of(request), key.as_deref()).await?;
            replayed = again;
            answer
        }
        ClientRoute::ListAssets => edge.list_assets(&client, validate::page(url.query())?).await?,
        ClientRoute::GetAsset(id) => edge.get_asset(&client, &id).await?,
        ClientRoute::DeleteAsset(id) => edge.delete_asset(&client, &id).await?,
    };
    let response = http::answer(answer, request_id);
    if !ignored.is_empty() {
        // Fields Kling's own clients send where Kling does not take them: dropped, and named.
        let _ = response.headers().set(IGNORED_HEADER, &ignored.join(", "));
    }
    if replayed {
        let _ = response.headers().set(idempotency::REPLAYED_HEADER, "true");
    }
    Ok(response)
}

/// An upload's headers and body, as the upload flow takes them.
fn upload_of(request: &Request) -> Upload<UploadBody> {
    let header = |name: &str| request.headers().get(name).ok().flatten();
    Upload {
        content_type: header("Content-Type"),
        content_length: header("Content-Length").and_then(|value| value.trim().parse().ok()),
        body: UploadBody::of(request),
    }
}

fn is_form(content_type: &str) -> bool {
    crate::api::multipart::boundary(content_type).is_some()
}

/// `POST /v1/callbacks/kling/{capability}`: Kling's callback, with its signature headers.
async fn receive_callback(
    request: &mut Request,
    call: &Call<'_>,
    capability: &str,
) -> Result<Response, ApiError> {
    let body = http::read_body(request, http::MAX_BODY_BYTES).await?;
    let header = |name: &str| request.headers().get(name).ok().flatten();
    let (id, timestamp, signature) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let headers = SignatureHeaders {
        id: id.as_deref(),
        timestamp: timestamp.as_deref(),
        signature: signature.as_deref(),
    };
    let ports = WorkerPorts::new(
        call.env,
        &call.config,
        &call.origin,
        call.request_id,
        call.coordinator_calls,
        call.gate_calls,
    );
    let taken = ports.edge().callback(capability, &headers, &body).await?;
    if let Some(step) = taken.step_now {
        call.coordinator_calls.set(call.coordinator_calls.get() + 1);
        let (env, config, origin, request_id) =
            (call.env.clone(), call.config.clone(), call.origin.clone(), call.request_id.to_owned());
        call.ctx.wait_until(async move {
            let (calls, gate_calls) = (Cell::new(0), Cell::new(0));
            let ports = WorkerPorts::new(&env, &config, &origin, &request_id, &calls, &gate_calls);
            let edge = ports.edge();
            if let Err(error) = edge.step_now(step).await {
                edge.runtime.log(serde_json::json!({"event": "step_now", "problem": error.message}));
            }
        });
    }
    Ok(http::answer(taken.answer, call.request_id))
}

/// `OPTIONS`: a CORS preflight, granted to the allowed origins only.
async fn preflight(request: &Request, call: &Call<'_>) -> Result<Response, ApiError> {
    limits::check(call.env, limits::REQUESTS, &limits::ip_key(request), clock::now_secs()).await?;
    let origin = request.headers().get("Origin").ok().flatten();
    let granted = call.config.allowed_origins.grant(origin.as_deref());
    let response = Response::builder().with_status(204).empty();
    for (name, value) in cors::preflight_headers(granted) {
        let _ = response.headers().set(name, &value);
    }
    let _ = response.headers().set("X-Request-Id", call.request_id);
    Ok(response)
}

/// `GET /health`: liveness only; it needs no credential and reveals nothing.
fn health(request_id: &str) -> Response {
    http::json(200, format!(r#"{{"code":0,"message":"ok","request_id":"{request_id}"}}"#), request_id)
}
