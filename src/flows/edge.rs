//! The request path's context: the deployment's settings, the worker's origin, and the
//! ports every edge flow ([`super::create`], [`super::read`], [`super::callback`],
//! [`super::tokens`]) is written against, and the [`Answer`] each gives the Worker to send.
//!
//! `crate::edge` implements the ports with the Workers runtime (and builds each only when a
//! flow first asks it for something); `crate::testing` implements them in memory, so every
//! decision on the path that spends a Kling credit is a `cargo test`.

use serde_json::Value;

use crate::config::Config;
use crate::ports::KlingReply;

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

/// One request's view of the deployment: its settings, the origin of the URLs it gives out,
/// and its ports.
pub struct Edge<'a, K, C, L, P, M, T> {
    pub config: &'a Config,
    /// The worker's origin for the URLs it gives out (callbacks, result links):
    /// `PUBLIC_BASE_URL`, or the request's.
    pub origin: &'a str,
    pub kling: &'a K,
    pub coordinators: &'a C,
    pub limiter: &'a L,
    pub probe: &'a P,
    pub edge_copies: &'a M,
    pub runtime: &'a T,
}

/// The rate-limit key of a tenant's requests and creates.
pub fn tenant_key(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The rate-limit key of what an app's tenants share (the videos measured for them).
pub fn app_key(app: &str) -> String {
    format!("app:{app}")
}
