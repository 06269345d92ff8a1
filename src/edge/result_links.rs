//! `GET`/`HEAD /v1/results/{shard}/{task_id}/{name}?expires=..&signature=..`: a copy of a
//! result file, served from the bucket to whoever holds a valid link, with no Authorization
//! header (an `<audio>` element sends none).
//!
//! Answers as a media server does: `Range` gives 206 with `Content-Range` (seeking), an
//! `If-None-Match` with the copy's `ETag` gives 304, and `Cache-Control` lets a CDN or the
//! browser keep the bytes until the link expires, no longer. CORS is granted to the allowed
//! origins (so a page can draw a waveform), like every other answer. A link that is not
//! the worker's, or has expired, answers 403 in the envelope. A link to a copy not made yet
//! (webhooks link copies from the start) redirects to Kling's file, uncached, until it is.

use worker::{Conditional, Headers, Range, Request, Response};

use crate::byte_range::{self, ByteRange};
use crate::error::{code, ApiError};
use crate::flows::protocol;
use crate::links::result_links;
use crate::ports::Coordinators;
use crate::record::copies;
use crate::routes::ResultCopy;

use super::coordinator::DurableCoordinators;
use super::copies::R2Results;
use super::{clock, Call};

pub async fn serve(
    request: &Request,
    call: &Call<'_>,
    copy: &ResultCopy,
    head_only: bool,
) -> Result<Response, ApiError> {
    let url = request.url().map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    let now_secs = clock::now_secs().max(0) as u64;
    result_links::verify(
        &call.config.link_key,
        &copy.shard,
        &copy.task_id,
        &copy.name,
        url.query(),
        now_secs,
    )?;
    let file = SignedFile {
        key: copies::object_key(&copy.shard, &copy.task_id, &copy.name),
        name: &copy.name,
        content_type: copies::content_type(&copy.name),
        gone: "result: this copy is no longer kept (RESULT_RETENTION_DAYS); Kling's link may still work",
        cache: Caching::UntilExpiry,
    };
    match serve_object(request, call, &file, link_expiry(url.query()), head_only).await {
        // A link minted while the copy was being made (a webhook does not wait for copies):
        // Kling's file, until the copy is in the bucket.
        Err(gone) if gone.status == 404 => match kling_source(call, copy).await {
            Some(source) => Ok(redirect(&source, call.request_id)),
            None => Err(gone),
        },
        served => served,
    }
}

/// Kling's link for a result file not in the bucket, from the task's coordinator.
async fn kling_source(call: &Call<'_>, copy: &ResultCopy) -> Option<String> {
    let coordinators = DurableCoordinators { env: call.env, calls: call.coordinator_calls };
    let source = protocol::CopySource { task_id: copy.task_id.clone(), name: copy.name.clone() };
    coordinators.call(&copy.shard, source).await.ok().flatten()
}

/// A temporary redirect no cache keeps (the copy replaces it once made).
fn redirect(location: &str, request_id: &str) -> Response {
    let headers = Headers::new();
    let _ = headers.set("Location", location);
    let _ = headers.set("Cache-Control", "no-store");
    let _ = headers.set("X-Request-Id", request_id);
    Response::builder().with_status(302).with_headers(headers).empty()
}

/// An object a verified link names: its key, the file name and type to serve it with, what
/// to say if it is gone, and who may cache it.
pub(super) struct SignedFile<'a> {
    pub key: String,
    pub name: &'a str,
    pub content_type: &'a str,
    pub gone: &'static str,
    pub cache: Caching,
}

/// Who may keep a served file.
pub(super) enum Caching {
    /// Any cache, until the link expires (a result copy does not change).
    UntilExpiry,
    /// The browser only, for at most [`PRIVATE_MAX_AGE_SECS`] (an upload may be deleted).
    Private,
}

const PRIVATE_MAX_AGE_SECS: u64 = 300;

/// Serves the object a verified link (expiring at `expires`) names, as a media server does.
/// Uploads' links (`super::assets`) are served the same way.
pub(super) async fn serve_object(
    request: &Request,
    call: &Call<'_>,
    file: &SignedFile<'_>,
    expires: u64,
    head_only: bool,
) -> Result<Response, ApiError> {
    let now_secs = clock::now_secs().max(0) as u64;
    let gone = || ApiError::new(404, code::NOT_FOUND, file.gone);
    let results = R2Results::open(call.env, false);
    let bucket = results.bucket().ok_or_else(gone)?;
    let key = &file.key;
    let unavailable = |_| ApiError::new(503, code::UNAVAILABLE, "the bucket is unavailable; retry shortly");

    let range = ByteRange::parse(request.headers().get("Range").ok().flatten().as_deref());
    let if_none_match = request.headers().get("If-None-Match").ok().flatten();
    let listed_tags = if_none_match.as_deref().map(byte_range::if_none_match).unwrap_or_default();
    let object = if head_only {
        bucket.head(key).await.map_err(unavailable)?
    } else {
        let mut get = bucket.get(key);
        // R2 compares one tag; a list (or `*`) is compared below, once the object is known.
        if let [tag] = listed_tags.as_slice() {
            if tag != "*" {
                get = get.only_if(Conditional {
                    etag_does_not_match: Some(tag.clone()),
                    ..Conditional::default()
                });
            }
        }
        if let Some(range) = range {
            get = get.range(match range {
                ByteRange::FromTo { first, last } => {
                    Range::OffsetWithLength { offset: first, length: last - first + 1 }
                }
                ByteRange::From { first } => Range::OffsetToEnd { offset: first },
                ByteRange::Suffix { length } => Range::Suffix { suffix: length },
            });
        }
        match get.execute().await {
            Ok(object) => object,
            // R2 refuses a range beyond the object: say so with its size (any other failure
            // is the bucket's).
            Err(error) => {
                let head = bucket.head(key).await.map_err(unavailable)?.ok_or_else(gone)?;
                return match range {
                    Some(range) if range.resolve(head.size()).is_none() => Err(unsatisfiable(head.size())),
                    _ => Err(unavailable(error)),
                };
            }
        }
    };
    let object = object.ok_or_else(gone)?;

    let size = object.size();
    let headers = Headers::new();
    let content_type = object.http_metadata().content_type.unwrap_or_else(|| file.content_type.to_owned());
    let _ = headers.set("Content-Type", &content_type);
    let _ = headers.set("ETag", &object.http_etag());
    let _ = headers.set("Accept-Ranges", "bytes");
    let _ = headers.set("Content-Disposition", &format!("inline; filename=\"{}\"", file.name));
    // Shared caches may keep a result copy until the link expires (a new link is a new
    // URL); an upload, which its owner may delete, only the browser, briefly.
    let max_age = expires.saturating_sub(now_secs);
    let cache_control = match file.cache {
        Caching::UntilExpiry => format!("public, max-age={max_age}, immutable"),
        Caching::Private => format!("private, max-age={}", max_age.min(PRIVATE_MAX_AGE_SECS)),
    };
    let _ = headers.set("Cache-Control", &cache_control);
    let _ = headers.set("X-Content-Type-Options", "nosniff");
    let _ = headers.set("X-Request-Id", call.request_id);

    if head_only {
        let _ = headers.set("Content-Length", &size.to_string());
        return Ok(Response::builder().with_status(200).with_headers(headers).empty());
    }
    let already_held = listed_tags.len() > 1 || listed_tags.first().is_some_and(|tag| tag == "*");
    let body = object
        .body()
        .filter(|_| !(already_held && byte_range::etag_listed(&listed_tags, &object.http_etag())));
    let Some(body) = body else {
        // The condition failed: the client has these bytes.
        return Ok(Response::builder().with_status(304).with_headers(headers).empty());
    };
    let status = match range.map(|range| range.resolve(size)) {
        // A range R2 clipped to nothing (one starting at the end).
        Some(None) => return Err(unsatisfiable(size)),
        Some(Some((offset, length))) => {
            let _ = headers.set("Content-Range", &byte_range::content_range(offset, length, size));
            let _ = headers.set("Content-Length", &length.to_string());
            206
        }
        None => {
            let _ = headers.set("Content-Length", &size.to_string());
            200
        }
    };
    let body = body.response_body().map_err(|_| ApiError::internal("reading a stored file"))?;
    Ok(Response::builder().with_status(status).with_headers(headers).body(body))
}

/// `expires` of a verified link's query.
pub(super) fn link_expiry(query: Option<&str>) -> u64 {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("expires="))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// 416 for a range that starts past the end.
fn unsatisfiable(size: u64) -> ApiError {
    let mut error = ApiError::new(416, code::INVALID_REQUEST, format!("Range: the file has {size} bytes"));
    error.header = Some(("Content-Range", format!("bytes */{size}")));
    error
}
