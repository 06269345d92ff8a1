//! The `RESULTS` bucket (R2) as the request path's `crate::ports::AssetBucket`: an upload's
//! body piped straight into R2 when it declared its length (through a `FixedLengthStream`,
//! so its bytes never enter WebAssembly), else read chunk by chunk for the flow to send as a
//! multipart upload; ranged reads for the probe. And `GET`/`HEAD` of an upload's signed link
//! (`crate::links::asset_links`), served like a result copy.

use worker::wasm_bindgen::JsCast;
use worker::{web_sys, Bucket, Env, HttpMetadata, MultipartUpload, Range, Request, Response, UploadedPart};

use crate::error::{code, ApiError};
use crate::links::asset_links::{self, AssetLink};
use crate::ports::{AssetBucket, UploadFault};
use crate::record::asset;
use crate::routes::AssetFile;

use super::clock::WorkerRuntime;
use super::copies::{self, pipe_whole};
use super::result_links::{link_expiry, serve_object, Caching, SignedFile};
use super::{clock, http, Call};

/// An upload's body: the request's stream, read by the flow or piped whole.
pub struct UploadBody {
    stream: Option<web_sys::ReadableStream>,
    reader: Option<web_sys::ReadableStreamDefaultReader>,
}

impl UploadBody {
    pub fn of(request: &Request) -> UploadBody {
        UploadBody { stream: request.inner().body(), reader: None }
    }
}

/// A multipart upload under way, with the parts sent so far.
pub struct R2Parts {
    upload: MultipartUpload,
    sent: Vec<UploadedPart>,
}

pub struct R2Assets<'a> {
    pub env: &'a Env,
}

/// The bucket's failure: logged here in its own words (the client is told only that the
/// bucket failed).
fn bucket_fault(error: impl std::fmt::Display) -> UploadFault {
    let why = error.to_string();
    WorkerRuntime.log_problem("upload", &why);
    UploadFault::Bucket(why)
}

impl R2Assets<'_> {
    fn bucket(&self) -> Result<Bucket, UploadFault> {
        self.env
            .bucket(copies::BINDING)
            .map_err(|_| UploadFault::Bucket(format!("the deployment has no {} bucket", copies::BINDING)))
    }

    fn metadata(content_type: &str) -> HttpMetadata {
        HttpMetadata {
            content_type: Some(content_type.to_owned()),
            content_disposition: Some(format!(
                "inline; filename=\"{}\"",
                asset::file_name(Some(content_type))
            )),
            ..HttpMetadata::default()
        }
    }
}

impl AssetBucket for R2Assets<'_> {
    type Body = UploadBody;
    type Parts = R2Parts;

    async fn next_chunk(&self, body: &mut UploadBody) -> Result<Option<Vec<u8>>, UploadFault> {
        if body.reader.is_none() {
            let Some(stream) = body.stream.take() else { return Ok(None) };
            body.reader = Some(stream.get_reader().unchecked_into());
        }
        let Some(reader) = &body.reader else { return Ok(None) };
        match http::next_chunk(reader).await {
            Ok(chunk) => Ok(chunk.map(|chunk| chunk.to_vec())),
            Err(_) => Err(UploadFault::BrokeOff),
        }
    }

    async fn put_whole(
        &self,
        key: &str,
        content_type: &str,
        body: UploadBody,
        length: u64,
    ) -> Result<(), UploadFault> {
        let stream = body.stream.ok_or(UploadFault::BrokeOff)?;
        let piped = pipe_whole(&self.bucket()?, key, Self::metadata(content_type), stream, length).await;
        if let Err(UploadFault::Bucket(why)) = &piped {
            WorkerRuntime.log_problem("upload", why);
        }
        piped
    }

    async fn begin_parts(&self, key: &str, content_type: &str) -> Result<R2Parts, UploadFault> {
        let upload = self
            .bucket()?
            .create_multipart_upload(key)
            .http_metadata(Self::metadata(content_type))
            .execute()
            .await
            .map_err(bucket_fault)?;
        Ok(R2Parts { upload, sent: Vec::new() })
    }

    async fn put_part(&self, parts: &mut R2Parts, bytes: Vec<u8>) -> Result<(), UploadFault> {
        let number = parts.sent.len() as u16 + 1;
        let uploaded = parts.upload.upload_part(number, bytes).await.map_err(bucket_fault)?;
        parts.sent.push(uploaded);
        Ok(())
    }

    async fn complete(&self, parts: R2Parts) -> Result<(), UploadFault> {
        parts.upload.complete(parts.sent).await.map(drop).map_err(bucket_fault)
    }

    async fn abort(&self, parts: R2Parts) {
        let _ = parts.upload.abort().await;
    }

    async fn read(&self, key: &str, offset: u64, length: u64) -> Result<Vec<u8>, ApiError> {
        let unavailable =
            |_| ApiError::new(503, code::UNAVAILABLE, "upload: the bucket failed; retry shortly");
        let bucket = self.bucket().map_err(|_| ApiError::config(copies::BINDING, "is not bound"))?;
        let object = bucket
            .get(key)
            .range(Range::OffsetWithLength { offset, length })
            .execute()
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                ApiError::new(503, code::UNAVAILABLE, "upload: the stored file vanished; send it again")
            })?;
        match object.body() {
            Some(body) => body.bytes().await.map_err(unavailable),
            None => Ok(Vec::new()),
        }
    }

    async fn remove(&self, key: &str) -> Result<(), ApiError> {
        let bucket = self.bucket().map_err(|_| ApiError::config(copies::BINDING, "is not bound"))?;
        bucket.delete(key).await.map_err(ApiError::unavailable)
    }
}

/// `GET`/`HEAD /v1/assets/{shard}/{asset_id}/{name}?expires=..&signature=..`: an upload, to
/// whoever holds a valid link (Kling, or the page that uploaded it).
pub async fn serve(
    request: &Request,
    call: &Call<'_>,
    file: &AssetFile,
    head_only: bool,
) -> Result<Response, ApiError> {
    let url = request.url().map_err(|_| ApiError::bad_request("the request URL is unreadable"))?;
    let link = AssetLink {
        shard: file.shard.clone(),
        asset_id: file.asset_id.clone(),
        name: file.name.clone(),
        query: url.query().map(str::to_owned),
    };
    asset_links::verify(&call.config.link_key, &link, clock::now_secs().max(0) as u64)?;
    let signed = SignedFile {
        key: asset::object_key(&file.shard, &file.asset_id),
        name: &file.name,
        content_type: if file.name.ends_with(".mov") { "video/quicktime" } else { "video/mp4" },
        gone: "asset: this upload is no longer kept (ASSET_RETENTION_DAYS, or deleted)",
        cache: Caching::Private,
    };
    serve_object(request, call, &signed, link_expiry(url.query()), head_only).await
}
