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
//! It is answered only once the coordinator has recorded it. A callback that makes its task's
//! webhook (or edge copy) due then asks the coordinator for the task's prompt step, after the
//! answer ([`Edge::step_now`], in `wait_until`: see `super::prompt`); everything else that
//! follows (completing a result, copying) is the coordinator's alarm's work, and so is a
//! prompt step that never comes.

use crate::error::{code, ApiError};
use crate::kling::task;
use crate::links::capability::Capability;
use crate::links::webhook::SignatureHeaders;
use crate::ports::{Coordinators, Runtime};

use super::edge::{Answer, Edge, EdgePorts};
use super::protocol::{self, StepNow};

/// A callback taken: the answer for Kling, and the prompt step to ask for once it is sent.
#[derive(Debug)]
pub struct Taken {
    pub answer: Answer,
    pub step_now: Option<PromptStep>,
}

/// A prompt step the tenant's coordinator promised: which coordinator, and the call.
#[derive(Debug)]
pub struct PromptStep {
    pub shard: String,
    pub call: StepNow,
}

impl<P: EdgePorts> Edge<'_, P> {
    /// A callback with its capability (the URL's last segment), signature headers and body.
    pub async fn callback(
        &self,
        capability: &str,
        signature: &SignatureHeaders<'_>,
        body: &[u8],
    ) -> Result<Taken, ApiError> {
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
        let call = protocol::Report {
            nonce: capability.nonce,
            endpoint: capability.endpoint,
            report,
            account: capability.account,
        };
        let step_now = self.coordinators.call(&capability.shard, call).await?;
        Ok(Taken {
            answer: Answer::Acknowledged,
            step_now: step_now.map(|call| PromptStep { shard: capability.shard, call }),
        })
    }

    /// The prompt step a callback's coordinator promised (its failure is the alarm's to make
    /// good, once the promise ends).
    pub async fn step_now(&self, step: PromptStep) -> Result<(), ApiError> {
        self.coordinators.call(&step.shard, step.call).await
    }
}
