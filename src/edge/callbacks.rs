//! Kling's callbacks: `POST /v1/callbacks/kling/{capability}`.
//!
//! Each create gives Kling a callback URL carrying a fresh capability (see
//! `crate::capability`). A callback is recorded only if, in this order:
//! 1. its Standard Webhooks signature is valid, when `KLING_WEBHOOK_SECRET` is set (401);
//! 2. its capability is one the worker issued, unaltered and unexpired (404);
//! 3. its body is a task report (400);
//! 4. its tenant's coordinator agrees the report is about the task the capability was
//!    issued for (403).
//!
//! It is answered 200 only once the coordinator has recorded it; everything that follows
//! (completing a result, forwarding, publishing) is the coordinator's alarm's work.

use worker::{Request, Response};

use crate::capability::Capability;
use crate::error::{code, ApiError};
use crate::flows::protocol;
use crate::task;
use crate::webhook::SignatureHeaders;

use super::{clock, http, Call};

pub async fn receive(request: &mut Request, call: &Call<'_>, token: &str) -> Result<Response, ApiError> {
    let body = http::read_body(request, http::MAX_BODY_BYTES).await?;
    if let Some(key) = &call.config.kling_webhook_key {
        let header = |name: &str| request.headers().get(name).ok().flatten();
        let (id, timestamp, signature) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        let headers = SignatureHeaders {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
        };
        key.verify(&headers, &body, clock::now_secs()).map_err(|rejection| {
            ApiError::new(401, code::AUTH_FAILED, format!("callback signature: {rejection}"))
        })?;
    }
    let capability = Capability::verify(token, &call.config.capability_key, clock::now_secs())
        .map_err(|_| ApiError::new(404, code::NOT_FOUND, "callback: no task was created with this URL"))?;
    let report = task::parse_callback(&body)?;
    let request = protocol::Request::Report {
        shard: capability.shard,
        nonce: capability.nonce,
        endpoint: capability.endpoint,
        report,
    };
    call.coordinator(&request).await?;
    Ok(http::json(
        200,
        format!(r#"{{"code":0,"message":"SUCCEED","request_id":"{}"}}"#, call.request_id),
        call.request_id,
    ))
}
