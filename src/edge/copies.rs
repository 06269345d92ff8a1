//! The `RESULTS` bucket (R2) as the coordinator's `crate::ports::ResultBucket`: a result file
//! is streamed from Kling's server into the bucket, without passing through the isolate's
//! memory when its size is known.
//!
//! With a `Content-Length`, the body is piped into R2 through a `FixedLengthStream` (the
//! bytes never enter WebAssembly). Without one, it is read in parts of 8 MiB and stored as a
//! multipart upload, so at most one part is held at a time. Either way a file above the cap
//! is not stored: known from its length before any byte is read, or found while reading.

use std::time::Duration;

use worker::wasm_bindgen::JsCast;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys, worker_sys, Bucket, Data, Env, HttpMetadata};

use crate::error::ApiError;
use crate::ports::{ResultBucket, UploadFault};
use crate::record::copies::CopyOutcome;
use crate::url_safety;

use super::http;

/// The R2 binding in `wrangler.toml`.
pub const BINDING: &str = "RESULTS";
/// How long Kling's server may take to start answering.
const HEADERS_TIMEOUT_MS: u64 = 30_000;
/// How long one copy may take in all (a stalled download must not hold the alarm).
const COPY_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// Redirects followed, at most, each to a public http(s) URL.
const MAX_REDIRECTS: usize = 3;
/// The part size of a multipart copy (R2 takes parts of 5 MiB or more, but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;

pub struct R2Results {
    /// `None` when the deployment binds no bucket: results are then not copied.
    bucket: Option<Bucket>,
    allow_private: bool,
}

impl R2Results {
    pub fn open(env: &Env, allow_private: bool) -> R2Results {
        R2Results { bucket: env.bucket(BINDING).ok(), allow_private }
    }

    pub fn bucket(&self) -> Option<&Bucket> {
        self.bucket.as_ref()
    }

    fn bound(&self) -> Result<&Bucket, String> {
        self.bucket.as_ref().ok_or_else(|| format!("the deployment has no {BINDING} bucket"))
    }

    /// Kling's answer for `source`, or why there is none. Redirects are followed by hand, each
    /// hop checked like the first URL.
    async fn fetch(&self, source: &str) -> Result<web_sys::Response, String> {
        let mut url = worker::Url::parse(source).map_err(|_| "Kling's link is not a URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("Kling's link is not an http(s) URL".into());
        }
        if !self.allow_private && url_safety::check_public(&url).is_err() {
            return Err("Kling's link points at a private address".into());
        }
        for _ in 0..=MAX_REDIRECTS {
            let response = Self::get(&url).await?;
            if !matches!(response.status(), 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let location = response.headers().get("Location").ok().flatten();
            url = url_safety::redirect_target(&url, location.as_deref(), self.allow_private)
                .map_err(|why| format!("Kling's link {why}"))?;
        }
        Err(format!("Kling's link redirects more than {MAX_REDIRECTS} times"))
    }

    /// One GET, with a deadline on the answer's headers.
    async fn get(url: &worker::Url) -> Result<web_sys::Response, String> {
        let request = http::file_request(url.as_str(), &[], None)
            .map_err(|_| "Kling's link cannot be requested".to_owned())?;
        match http::within(Duration::from_millis(HEADERS_TIMEOUT_MS), http::send(&request)).await {
            Some(Ok(response)) => Ok(response),
            Some(Err(_)) => Err("Kling's server could not be reached".into()),
            None => Err(format!("Kling's server did not answer within {} s", HEADERS_TIMEOUT_MS / 1000)),
        }
    }

    fn metadata(content_type: &str, key: &str) -> HttpMetadata {
        let name = key.rsplit('/').next().unwrap_or(key);
        HttpMetadata {
            content_type: Some(content_type.to_owned()),
            content_disposition: Some(format!("inline; filename=\"{name}\"")),
            ..HttpMetadata::default()
        }
    }

    /// Pipes a body of known length into the bucket.
    async fn put_known_length(
        &self,
        body: web_sys::ReadableStream,
        length: u64,
        key: &str,
        content_type: &str,
    ) -> Result<(), String> {
        pipe_whole(self.bound()?, key, Self::metadata(content_type, key), body, length).await.map_err(
            |fault| match fault {
                UploadFault::BrokeOff => "Kling's server broke off the file".to_owned(),
                UploadFault::Bucket(why) => format!("the bucket refused the copy ({why})"),
            },
        )
    }

    /// Reads a body of unknown length part by part into a multipart upload.
    async fn put_in_parts(
        &self,
        body: web_sys::ReadableStream,
        key: &str,
        content_type: &str,
        max_bytes: u64,
    ) -> Result<CopyOutcome, String> {
        let upload = self
            .bound()?
            .create_multipart_upload(key)
            .http_metadata(Self::metadata(content_type, key))
            .execute()
            .await
            .map_err(|error| format!("the bucket refused the copy ({error})"))?;
        let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        let mut parts = Vec::new();
        let mut part = Vec::with_capacity(PART_BYTES);
        let mut total: u64 = 0;
        let outcome = loop {
            let bytes = match http::next_chunk(&reader).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break Ok(None),
                Err(_) => break Err("Kling's server broke off the file".to_owned()),
            };
            total += u64::from(bytes.length());
            if total > max_bytes {
                let _ = reader.cancel();
                break Ok(Some(CopyOutcome::TooLarge { bytes: total }));
            }
            part.extend_from_slice(&bytes.to_vec());
            // R2 takes parts of one size (all but the last): exactly PART_BYTES each.
            let mut refused = None;
            while part.len() >= PART_BYTES && refused.is_none() {
                let number = parts.len() as u16 + 1;
                let rest = part.split_off(PART_BYTES);
                match upload.upload_part(number, std::mem::replace(&mut part, rest)).await {
                    Ok(uploaded) => parts.push(uploaded),
                    Err(error) => refused = Some(format!("the bucket refused a part ({error})")),
                }
            }
            if let Some(refused) = refused {
                break Err(refused);
            }
        };
        match outcome {
            Ok(None) => {
                if !part.is_empty() || parts.is_empty() {
                    let number = parts.len() as u16 + 1;
                    match upload.upload_part(number, part).await {
                        Ok(uploaded) => parts.push(uploaded),
                        Err(error) => {
                            let _ = upload.abort().await;
                            return Err(format!("the bucket refused a part ({error})"));
                        }
                    }
                }
                upload
                    .complete(parts)
                    .await
                    .map_err(|error| format!("the bucket refused the copy ({error})"))?;
                Ok(CopyOutcome::Copied { bytes: total })
            }
            Ok(Some(too_large)) => {
                let _ = upload.abort().await;
                Ok(too_large)
            }
            Err(problem) => {
                let _ = upload.abort().await;
                Err(problem)
            }
        }
    }
}

/// Pipes a body of known length into `bucket` under `key` through a `FixedLengthStream`: its
/// bytes never enter WebAssembly. A body that ends early (or brings more) is not stored.
pub(super) async fn pipe_whole(
    bucket: &Bucket,
    key: &str,
    metadata: HttpMetadata,
    body: web_sys::ReadableStream,
    length: u64,
) -> Result<(), UploadFault> {
    let fixed = worker_sys::FixedLengthStream::new_big_int(js_sys::BigInt::from(length))
        .map_err(|_| UploadFault::Bucket("no FixedLengthStream".to_owned()))?;
    let transform: &web_sys::TransformStream = fixed.unchecked_ref();
    let piped = JsFuture::from(body.pipe_to(&transform.writable()));
    let stored =
        bucket.put(key, Data::ReadableStream(transform.readable())).http_metadata(metadata).execute();
    let (piped, stored) = futures_util::join!(piped, stored);
    if piped.is_err() {
        return Err(UploadFault::BrokeOff);
    }
    stored.map(drop).map_err(|error| UploadFault::Bucket(error.to_string()))
}

impl ResultBucket for R2Results {
    async fn copy(&self, source: &str, key: &str, content_type: &str, max_bytes: u64) -> CopyOutcome {
        let copy = self.copy_now(source, key, content_type, max_bytes);
        http::within(Duration::from_millis(COPY_TIMEOUT_MS), copy).await.unwrap_or_else(|| {
            CopyOutcome::Retry(format!("the copy took longer than {} minutes", COPY_TIMEOUT_MS / 60_000))
        })
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ApiError> {
        let bucket = self.bound().map_err(ApiError::unavailable)?;
        bucket.delete_multiple(keys.to_vec()).await.map_err(ApiError::unavailable)
    }
}

impl R2Results {
    async fn copy_now(&self, source: &str, key: &str, content_type: &str, max_bytes: u64) -> CopyOutcome {
        let response = match self.fetch(source).await {
            Ok(response) => response,
            Err(problem) => return CopyOutcome::Retry(problem),
        };
        let status = response.status();
        let Some(body) = response.body().filter(|_| status == 200) else {
            if let Some(body) = response.body() {
                let _ = JsFuture::from(body.cancel()).await;
            }
            return CopyOutcome::Retry(format!("Kling's server answered {status}"));
        };
        let headers = response.headers();
        let encoded = headers
            .get("Content-Encoding")
            .ok()
            .flatten()
            .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let length = headers
            .get("Content-Length")
            .ok()
            .flatten()
            .and_then(|value| value.trim().parse::<u64>().ok())
            .filter(|_| !encoded);
        let outcome = match length {
            Some(length) if length > max_bytes => {
                let _ = JsFuture::from(body.cancel()).await;
                return CopyOutcome::TooLarge { bytes: length };
            }
            Some(length) => self
                .put_known_length(body, length, key, content_type)
                .await
                .map(|()| CopyOutcome::Copied { bytes: length }),
            None => self.put_in_parts(body, key, content_type, max_bytes).await,
        };
        outcome.unwrap_or_else(CopyOutcome::Retry)
    }
}
