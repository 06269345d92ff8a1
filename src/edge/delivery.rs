//! Webhook POSTs to clients' receivers, as the coordinator's flows make them
//! (`crate::ports::Webhooks`). Signing, message ids and the retry schedule are decided by the
//! flows; this only sends, with a deadline, and says how it went.

use std::time::Duration;

use worker::{Headers, Method, Request, RequestInit, RequestRedirect};

use crate::ports::Webhooks;
use crate::record::delivery::Attempt;

use super::http::{fetch_with_deadline, FetchFailure};

/// How long one attempt may take; a slow receiver counts as down and is tried again later.
pub const ATTEMPT_TIMEOUT_MS: u64 = 10_000;

pub struct FetchWebhooks;

impl Webhooks for FetchWebhooks {
    async fn post(&self, url: &str, headers: &[(&str, String)], body: &[u8]) -> Attempt {
        let sent = Headers::new();
        for (name, value) in headers {
            let _ = sent.set(name, value);
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(sent)
            // A redirect is the receiver's answer (refused), never followed: the signed body
            // must not travel to a URL the client did not give.
            .with_redirect(RequestRedirect::Manual)
            .with_body(Some(worker::js_sys::Uint8Array::from(body).into()));
        let Ok(request) = Request::new_with_init(url, &init) else {
            return Attempt::GiveUp { status: 0 };
        };
        match fetch_with_deadline(request, Duration::from_millis(ATTEMPT_TIMEOUT_MS)).await {
            Ok((status, _)) => Attempt::from_status(status),
            Err(FetchFailure::TimedOut) => Attempt::Retry { status: None, error: "no answer in time".into() },
            Err(FetchFailure::Unreachable) => {
                Attempt::Retry { status: None, error: "the receiver was unreachable".into() }
            }
        }
    }
}
