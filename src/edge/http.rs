//! Building the worker's responses and reading request bodies.

use std::future::Future;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use worker::wasm_bindgen::JsCast;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys, AbortController, Delay, Headers, Request, Response};

use crate::api::surfaces::Style;
use crate::api::useapi;
use crate::error::ApiError;
use crate::flows::edge::Answer;

/// Request bodies above this are refused with 413 before they are read in full (a create
/// body may allow more: see `crate::api::fields::Body::max_bytes`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON response with the headers every answer carries.
pub fn json(status: u16, body: impl Into<Vec<u8>>, request_id: &str) -> Response {
    let headers = Headers::new();
    let _ = headers.set("Content-Type", "application/json; charset=utf-8");
    let _ = headers.set("Cache-Control", "no-store");
    let _ = headers.set("X-Content-Type-Options", "nosniff");
    let _ = headers.set("X-Request-Id", request_id);
    Response::builder().with_status(status).with_headers(headers).fixed(body.into())
}

/// A success in Kling's envelope: `{"code": 0, "message": "SUCCEED", "request_id", "data"}`.
pub fn success(data: &serde_json::Value, request_id: &str) -> Response {
    let body = serde_json::json!({
        "code": 0,
        "message": "SUCCEED",
        "request_id": request_id,
        "data": data,
    });
    json(200, body.to_string(), request_id)
}

/// A flow's answer as a response.
pub fn answer(answer: Answer, request_id: &str) -> Response {
    match answer {
        // Kling's `request_id` becomes `X-Request-Id`.
        Answer::Kling(reply) => {
            let kling_id = crate::kling::envelope_request_id(&reply.body);
            json(reply.status, reply.body, kling_id.as_deref().unwrap_or(request_id))
        }
        Answer::Success(data) => success(&data, request_id),
        Answer::UseApi(body) => json(200, body.to_string(), request_id),
        Answer::Acknowledged => {
            json(200, format!(r#"{{"code":0,"message":"SUCCEED","request_id":"{request_id}"}}"#), request_id)
        }
    }
}

/// An error in Kling's envelope (or useapi.net's, on its paths), with its extra header if
/// it has one.
pub fn error(error: &ApiError, request_id: &str, style: Style) -> Response {
    let body = match style {
        Style::Kling => error.envelope(request_id),
        Style::UseApi => useapi::error_body(error),
    };
    let response = json(error.status, body, request_id);
    if let Some((name, value)) = &error.header {
        let _ = response.headers().set(name, value);
    }
    response
}

/// Reads the body, refusing (413) one larger than `limit` bytes without reading the rest: by
/// its `Content-Length` when it declares one (the runtime holds the sender to it, so a
/// declared body is read in one call), else as soon as the stream passes it.
pub async fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = request.headers().get("Content-Length").ok().flatten();
    if let Some(length) = declared.and_then(|value| value.trim().parse::<u64>().ok()) {
        if length > limit as u64 {
            return Err(ApiError::payload_too_large(limit));
        }
        return request.bytes().await.map_err(|_| ApiError::bad_request("body: could not be read"));
    }
    let Ok(mut stream) = request.stream() else {
        return Ok(Vec::new());
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("body: could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why an outgoing call produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// The connection failed or dropped before a whole answer arrived.
    Unreachable,
    /// No whole answer (headers and body) within the deadline.
    TimedOut,
}

/// Sends `request` and reads the whole answer, giving up (and aborting the call) when
/// `timeout` passes first. Returns the status and body, whatever the status.
pub async fn fetch_with_deadline(
    request: Request,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), FetchFailure> {
    let controller = AbortController::default();
    let signal = controller.signal();
    let exchange = async {
        let init = web_sys::RequestInit::new();
        init.set_signal(Some(&signal));
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let promise = global.fetch_with_request_and_init(request.inner(), &init);
        let response: web_sys::Response = JsFuture::from(promise)
            .await
            .and_then(|value| value.dyn_into())
            .map_err(|_| FetchFailure::Unreachable)?;
        let body = body_bytes(&response).await.map_err(|_| FetchFailure::Unreachable)?;
        Ok((response.status(), body))
    };
    let outcome = within(timeout, exchange).await;
    if outcome.is_none() {
        controller.abort();
    }
    outcome.unwrap_or(Err(FetchFailure::TimedOut))
}

/// `future`'s output, or `None` when `timeout` passes first (the future is then dropped).
pub async fn within<F: Future>(timeout: Duration, future: F) -> Option<F::Output> {
    futures_util::pin_mut!(future);
    match select(future, Delay::from(timeout)).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(((), _)) => None,
    }
}

/// A GET of someone else's file (a client's video, Kling's result): the file's own bytes
/// (`Accept-Encoding: identity`: a compressed answer's length is not the file's), and
/// redirects returned rather than followed, so the caller checks each hop.
pub fn file_request(
    url: &str,
    headers: &[(&str, String)],
    signal: Option<&web_sys::AbortSignal>,
) -> Result<web_sys::Request, worker::wasm_bindgen::JsValue> {
    let sent = web_sys::Headers::new()?;
    sent.set("Accept-Encoding", "identity")?;
    for (name, value) in headers {
        sent.set(name, value)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    init.set_headers(&sent);
    init.set_redirect(web_sys::RequestRedirect::Manual);
    init.set_signal(signal);
    web_sys::Request::new_with_str_and_init(url, &init)
}

/// Sends a request as the runtime's `fetch` does, answering with its response.
pub async fn send(request: &web_sys::Request) -> Result<web_sys::Response, worker::wasm_bindgen::JsValue> {
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    JsFuture::from(global.fetch_with_request(request)).await?.dyn_into()
}

/// The next chunk of a body being read; `None` at its end.
pub async fn next_chunk(
    reader: &web_sys::ReadableStreamDefaultReader,
) -> Result<Option<js_sys::Uint8Array>, worker::wasm_bindgen::JsValue> {
    use worker::wasm_bindgen::JsValue;
    let chunk = JsFuture::from(reader.read()).await?;
    if js_sys::Reflect::get(&chunk, &JsValue::from_str("done"))?.as_bool() != Some(false) {
        return Ok(None);
    }
    Ok(Some(js_sys::Reflect::get(&chunk, &JsValue::from_str("value"))?.unchecked_into()))
}

/// A response's whole body, in one native read (rather than a stream read chunk by chunk).
pub async fn body_bytes(response: &web_sys::Response) -> Result<Vec<u8>, worker::wasm_bindgen::JsValue> {
    let buffer = JsFuture::from(response.array_buffer()?).await?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}
