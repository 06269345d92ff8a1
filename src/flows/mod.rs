//! The flows of a task's life, each written once against the ports of `crate::ports`, so
//! the Worker runs them with the Workers runtime and `cargo test` runs them in memory, with
//! faults, races and crashes between any two steps (`crate::testing`).
//!
//! - The request path ([`edge`]'s context): [`create`] (with [`idempotency`]'s keys and
//!   [`budget`]'s credits, both sides), [`upload`] (a user's own video),
//!   [`read`] (query, list, useapi.net's task), [`callback`] (Kling's callbacks), [`tokens`] (browser tokens, webhook secrets).
//! - The coordinator's ([`coordinator`]): record a create, take a callback, answer a query
//!   or a list, and the alarm that polls Kling, copies results, forwards webhooks and
//!   publishes finished tasks to the edge; [`prompt`], the steps a callback's own request
//!   makes at once; [`assets`], its side of the tenant's uploads;
//!   and the [`protocol`] the edge speaks to it.
//! - The Kling accounts' [`gate`]: their slots, the line of creates waiting for one, and the
//!   alarm that sends them.

pub mod assets;
pub mod budget;
pub mod callback;
pub mod coordinator;
pub mod create;
pub mod edge;
pub mod gate;
pub mod gate_protocol;
pub mod idempotency;
pub mod prompt;
pub mod protocol;
pub mod queue;
pub mod read;
pub mod tokens;
pub mod upload;

#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod tests;
