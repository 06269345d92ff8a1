//! # kling-edge
//!
//! A Cloudflare Worker that puts Kling's sound generation behind a web app: it holds the
//! Kling credentials and signs Kling's JWTs, authenticates its own clients, validates every
//! request (the video itself included) before a credit is spent, proxies Kling's create,
//! query and list calls on Kling's own paths and in useapi.net's shape, keeps each task in
//! its tenant's coordinator, forwards signed webhooks, and copies results into R2.
//!
//! ## Two kinds of module
//! - **Pure modules** (everything but [`edge`]): they never import `worker`, take the
//!   current time and any randomness as arguments, and are tested natively with
//!   `cargo test`. `worker` is not even a dependency on native targets, so the compiler
//!   keeps this line. Grouped by concept:
//!   - [`kling`]: Kling's envelopes, task data and its monotonic merge;
//!   - [`api`]: the endpoint tables (each family and useapi.net's shape, as data), the
//!     rules engine and the generated OpenAPI document;
//!   - [`auth`]: who is calling (server keys, Kling-style JWTs, browser tokens) and CORS;
//!   - [`links`]: what the worker signs for others: callback capabilities, result links,
//!     webhook signatures;
//!   - [`probe`]: the MP4/MOV reader and the judgement of what Kling would refuse;
//!   - [`record`]: what a coordinator keeps per task: delivery, result copies, the edge copy;
//!   - [`flows`]: every flow of a task's life, against the [`ports`], with [`testing`]'s
//!     in-memory ports;
//!   - and the shared pieces: [`config`] (the settings table), [`accounts`] (the Kling
//!     accounts), [`error`], [`routes`],
//!     [`validate`], [`schedule`], [`url_safety`], [`byte_range`], [`jwt`], [`ids`].
//! - **Edge modules** ([`edge`], wasm32 only): glue that implements the ports with the
//!   Workers runtime and turns each flow's answer into a response.

pub mod accounts;
pub mod api;
pub mod auth;
pub mod byte_range;
pub mod config;
pub mod error;
pub mod flows;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod ids;
pub mod jwt;
pub mod kling;
pub mod links;
pub mod ports;
pub mod probe;
pub mod record;
pub mod routes;
pub mod schedule;
#[cfg(test)]
pub mod testing;
pub mod url_safety;
pub mod validate;

#[cfg(target_arch = "wasm32")]
pub mod edge;
