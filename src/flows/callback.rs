//! Kling's callbacks: `POST /v1/callbacks/kling/{capability}`.
//!
//! Each create gives Kling a callback URL carrying a fresh capability (see
//! `crate::links::capability`). A callback is recorded only if, in this order:
//! 1. its Standard Webhooks signature is valid, when `KLING_WEBHOOK_SECRET` is set (401);
//! 2. its capability is one the worker issued, unaltered and unexpired (404);
//! 3. its body is a task report (400);
//! 4. its tenant's coordinator agrees the report is about the task the capability was
//!    issued for (403).
//!
//! It is answered only once the coordinator has recorded it; everything that follows
//! (completing a result, copying, forwarding, publishing) is the coordinator's alarm's work.

use crate::error::{code, ApiError};
use crate::kling::task;
use crate::links::capability::Capability;
use crate::links::webhook::SignatureHeaders;
use crate::ports::{Coordinators, Runtime};

use super::edge::{Answer, Edge, EdgePorts};
use super::protocol;

impl<P: EdgePorts> Edge<'_, P> {
    /// A callback with its capability (the URL's last segment), signature headers and body.
    pub async fn callback(
        &self,
        capability: &str,
        signature: &SignatureHeaders<'_>,
        body: &[u8],
    ) -> Result<Answer, ApiError> {
        let now_secs = (self.runtime.now_ms() / 1000) as i64;
        if let Some(key) = &self.config.kling_webhook_key {
            key.verify(signature, body, now_secs).map_err(|rejection| {
                ApiError::new(401, code::AUTH_FAILED, format!("callback signature: {rejection}"))
            })?;
        }
        let capability =
            Capability::verify(capability, &self.config.capability_key, now_secs).map_err(|_| {
                ApiError::new(404, code::NOT_FOUND, "callback: no task was created with this URL")
            })?;
        let report = task::parse_callback(body)?;
        let call = protocol::Report { nonce: capability.nonce, endpoint: capability.endpoint, report };
        self.coordinators.call(&capability.shard, call).await?;
        Ok(Answer::Acknowledged)
    }
}
