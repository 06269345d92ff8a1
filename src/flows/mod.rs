//! The stateful flows of a task's life, written once against the ports of `crate::ports`:
//! the coordinator's (record a create, take a callback, answer a query or a list, and the
//! alarm that polls Kling, forwards webhooks and publishes finished tasks to the edge), and
//! the protocol the edge speaks to it.

pub mod coordinator;
pub mod protocol;

#[cfg(test)]
mod tests;
