//! # kling-edge
//!
//! A Cloudflare Worker that puts Kling's video-to-audio API behind a web app: it holds the
//! Kling credentials and signs Kling's JWTs, authenticates its own clients, validates every
//! request before a credit is spent, and proxies Kling's create, query and list calls on
//! Kling's own paths.
//!
//! ## Two kinds of module
//! - **Pure modules** (everything at this level): Kling's wire types, validation, routing,
//!   configuration, signing, errors. They never import `worker`, take the current time and
//!   any randomness as arguments, and are tested natively with `cargo test`. `worker` is not
//!   even a dependency on native targets, so the compiler keeps this line.
//! - **Edge modules** ([`edge`], wasm32 only): the fetch handler, reading `Env`, calling
//!   Kling, answering. Each handler reads as: authenticate, validate, call, answer.

pub mod api;
pub mod auth;
pub mod browser_token;
pub mod byte_range;
pub mod capability;
pub mod client_jwt;
pub mod config;
pub mod copies;
pub mod cors;
pub mod delivery;
pub mod error;
pub mod flows;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod ids;
pub mod jwt;
pub mod kling;
pub mod ports;
pub mod probe;
pub mod record;
pub mod result_links;
pub mod routes;
pub mod schedule;
pub mod task;
#[cfg(test)]
pub mod testing;
pub mod url_safety;
pub mod validate;
pub mod video_check;
pub mod webhook;

#[cfg(target_arch = "wasm32")]
pub mod edge;
