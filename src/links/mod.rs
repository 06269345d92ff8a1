//! What the worker signs so that others can use it without a credential, and checks when
//! they do: the callback capabilities in the URLs Kling calls back ([`capability`]), the
//! links to the deployment's copies of result files ([`result_links`]) and to users' uploads
//! ([`asset_links`]), and the Standard
//! Webhooks signatures of callbacks and of the webhooks forwarded to clients ([`webhook`]).

pub mod asset_links;
pub mod capability;
pub mod result_links;
pub mod webhook;
