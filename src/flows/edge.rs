//! The request path's context: the deployment's settings, the worker's origin, and the
//! ports every edge flow ([`super::create`], [`super::upload`], [`super::read`],
//! [`super::callback`], [`super::tokens`]) is written against, and the [`Answer`] each gives the Worker to send.
//!
//! `crate::edge` implements the ports with the Workers runtime (and builds each only when a
//! flow first asks it for something); `crate::testing` implements them in memory, so every
//! decision on the path that spends a Kling credit is a `cargo test`.

use serde_json::Value;

use crate::config::Config;
use crate::ports::{
    AssetBucket, Coordinators, EdgeCopies, Gates, KlingApi, KlingReply, RateLimiter, Runtime, VideoProbe,
};

/// What a flow answers a client with (the Worker adds the envelope's `request_id` and the
/// headers every answer carries).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Kling's own answer, status and body unchanged.
    Kling(KlingReply),
    /// A success in Kling's envelope, with this `data`.
    Success(Value),
    /// A success in useapi.net's shape: this body, status 200.
    UseApi(Value),
    /// Kling's callback, taken (an envelope with no `data`).
    Acknowledged,
}

/// The request path's ports, named once: the Worker's set (`crate::edge`) and the tests'
/// (`crate::flows::edge_tests`) each implement it.
pub trait EdgePorts {
    type Kling: KlingApi;
    type Coordinators: Coordinators;
    type Gates: Gates;
    type Limiter: RateLimiter;
    type Probe: VideoProbe;
    type EdgeCopies: EdgeCopies;
    type Assets: AssetBucket;
    type Runtime: Runtime;
}

/// One request's view of the deployment: its settings, the origin of the URLs it gives out,
/// and its ports.
pub struct Edge<'a, P: EdgePorts> {
    pub config: &'a Config,
    /// The worker's origin for the URLs it gives out (callbacks, result links):
    /// `PUBLIC_BASE_URL`, or the request's (in local development).
    pub origin: &'a str,
    pub kling: &'a P::Kling,
    pub coordinators: &'a P::Coordinators,
    /// The Kling account's gate (`super::gate`): creates past its concurrency wait in line.
    pub gates: &'a P::Gates,
    pub limiter: &'a P::Limiter,
    pub probe: &'a P::Probe,
    pub edge_copies: &'a P::EdgeCopies,
    pub assets: &'a P::Assets,
    pub runtime: &'a P::Runtime,
}

/// The rate-limit key of a tenant's requests and creates.
pub fn tenant_key(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The rate-limit key of what an app's tenants share (the videos measured for them).
pub fn app_key(app: &str) -> String {
    format!("app:{app}")
}
