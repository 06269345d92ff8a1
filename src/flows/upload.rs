//! The request path's side of a user's own video (`crate::record::asset`): an upload stored
//! in the bucket and measured there, and the asset routes (one, a page, a removal).
//!
//! An upload, in order, each step only if the ones before passed:
//! 1. its declared type (415) and size (413, before a byte is read);
//! 2. the tenant's coordinator counts it against the day's bytes (429) and records it as
//!    uploading, with a deadline, before the first byte is stored;
//! 3. the bytes go to the bucket: piped whole when the body declared its length, else read
//!    chunk by chunk into a multipart upload of [`PART_BYTES`] parts; a form
//!    (`multipart/form-data`) is read as it streams, its one file part stored, its text
//!    parts kept (useapi.net's add-sound sends its fields that way);
//! 4. the stored object is measured with the probe that measures a `video_url` (a few
//!    ranged reads), and refused (400, naming the measured fact) if Kling would refuse it;
//! 5. the coordinator keeps it, and the answer carries a signed link to it.
//!
//! Whatever stops an upload after step 2 (a refusal, a client that broke off, a bucket
//! failure) aborts the multipart upload and has the coordinator remove the object and the
//! record before the answer. If the isolate dies instead, the record's deadline passes and
//! the coordinator's alarm removes what it left (`super::assets`).

use serde_json::{json, Value};

use crate::api::multipart::{self, Event, FormReader};
use crate::api::surfaces::{Style, Surface};
use crate::auth::Client;
use crate::error::{code, ApiError};
use crate::ids::hex;
use crate::kling::task;
use crate::links::asset_links;
use crate::ports::{AssetBucket, Coordinators, Runtime, UploadFault};
use crate::probe::video_check::{self, Outcome, Policy};
use crate::probe::{Probe, Problem, Step};
use crate::record::asset::{self, Admission, Asset, Measured};
use crate::validate::Page;

use super::create::Created;
use super::edge::{Answer, Edge, EdgePorts};
use super::protocol;

/// The part size of a multipart upload (R2 takes parts of 5 MiB or more, all but the last
/// of one size).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// What a form may carry beside its file: its boundaries, part heads and text fields.
pub const FORM_OVERHEAD_BYTES: u64 = 64 * 1024;
/// A create may name an asset only if it is kept at least this much longer: Kling fetches
/// the video when it starts the task.
pub const MIN_LIFE_FOR_CREATE_MS: u64 = 60 * 60 * 1000;
/// The probe's reads of a stored object, at most.
const MAX_READS: usize = 32;

/// An upload's request, as the Worker read its headers.
pub struct Upload<B> {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub body: B,
}

/// A form's contents once stored: its text fields, and its file as an asset, if it had one.
struct Received {
    fields: Vec<(String, String)>,
    asset: Option<Asset>,
}

/// An upload under way, once the coordinator has counted it.
struct Started<Parts> {
    asset_id: String,
    key: String,
    content_type: &'static str,
    parts: Option<Parts>,
    /// The bytes that arrived so far.
    bytes: u64,
    /// The bytes the day's count holds for it: it may bring no more.
    reserved: u64,
    /// Bytes not yet sent as a part.
    pending: Vec<u8>,
}

fn too_large(what: &str) -> ApiError {
    ApiError::new(
        413,
        code::INVALID_REQUEST,
        format!(
            "{what}: is larger than Kling accepts (100 MB); an upload may be at most {} bytes",
            asset::MAX_BYTES
        ),
    )
}

/// An upload's fault as the client's error; `arrived` is what is known to have arrived. (The
/// bucket's own words are logged where it failed, not told.)
fn fault(fault: UploadFault, arrived: Option<u64>) -> ApiError {
    match fault {
        UploadFault::BrokeOff => {
            let when = match arrived {
                Some(bytes) => format!("after {bytes} bytes"),
                None => "before its declared length".to_owned(),
            };
            ApiError::new(
                400,
                code::INVALID_REQUEST,
                format!("upload: the body broke off {when}; nothing was kept, send it again"),
            )
        }
        UploadFault::Bucket(_) => ApiError::new(
            503,
            code::UNAVAILABLE,
            "upload: the bucket failed; nothing was kept, retry shortly",
        ),
    }
}

impl<P: EdgePorts> Edge<'_, P> {
    /// `POST /v1/assets` (and useapi.net's `POST /v1/kling/assets`): stores, measures and
    /// keeps one video, answering with its signed link.
    pub async fn upload(
        &self,
        client: &Client,
        style: Style,
        upload: Upload<<P::Assets as AssetBucket>::Body>,
    ) -> Result<Answer, ApiError> {
        let boundary = upload.content_type.as_deref().and_then(multipart::boundary);
        let stored = match boundary {
            Some(boundary) => {
                let received = self.receive_form(client, &boundary, upload).await?;
                received.asset.ok_or_else(|| {
                    ApiError::new(
                        400,
                        code::INVALID_REQUEST,
                        "file: the form has no file part (send the video as one part with a filename)",
                    )
                })?
            }
            None => self.receive_raw(client, upload).await?,
        };
        Ok(self.describe(client, style, &stored))
    }

    /// useapi.net's add-sound sent as a form: its fields as text parts, and `video` as a URL
    /// or as the file itself (stored as an asset first, then named by its link).
    pub async fn create_from_form(
        &self,
        client: &Client,
        surface: &'static Surface,
        upload: Upload<<P::Assets as AssetBucket>::Body>,
    ) -> Result<Created, ApiError> {
        let boundary = upload.content_type.as_deref().and_then(multipart::boundary).ok_or_else(|| {
            ApiError::new(
                415,
                code::INVALID_REQUEST,
                "Content-Type: must be application/json or multipart/form-data",
            )
        })?;
        let Received { mut fields, asset } = self.receive_form(client, &boundary, upload).await?;
        let Some(asset) = asset else {
            let body = multipart::json_fields(surface.body, fields)?;
            return self.create(client, surface, body).await;
        };
        let created = if fields.iter().any(|(name, _)| name == "video") {
            Err(ApiError::bad_param("video", "is given twice (as a file and as text)"))
        } else {
            fields.push(("video".to_owned(), self.link(&task::tenant_shard(&client.tenant), &asset).0));
            match multipart::json_fields(surface.body, fields) {
                Ok(body) => self.create(client, surface, body).await,
                Err(refusal) => Err(refusal),
            }
        };
        // A refused create keeps nothing of its file. One whose outcome is unknown (Kling
        // did not answer in time) keeps it: Kling may have the task, and fetch the video.
        if let Err(refusal) = &created {
            if !matches!(refusal.status, 502 | 504) {
                if let Err(problem) = self.delete_asset(client, &asset.asset_id).await {
                    self.runtime.log(
                        json!({"event": "upload", "asset_id": asset.asset_id, "problem": problem.message}),
                    );
                }
            }
        }
        created
    }

    /// `GET /v1/assets/{id}`: one stored asset of the tenant, with a fresh link.
    pub async fn get_asset(&self, client: &Client, asset_id: &str) -> Result<Answer, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let call = protocol::GetAsset { tenant: client.tenant.clone(), asset_id: asset_id.to_owned() };
        let kept = self.coordinators.call(&shard, call).await?;
        Ok(self.describe(client, Style::Kling, &kept))
    }

    /// `GET /v1/assets`: a page of the tenant's stored assets, newest first.
    pub async fn list_assets(&self, client: &Client, page: Page) -> Result<Answer, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let call =
            protocol::ListAssets { tenant: client.tenant.clone(), page_num: page.num, page_size: page.size };
        let kept = self.coordinators.call(&shard, call).await?;
        let described = kept.iter().map(|kept| self.described(&shard, kept)).collect();
        Ok(Answer::Success(Value::Array(described)))
    }

    /// `DELETE /v1/assets/{id}`.
    pub async fn delete_asset(&self, client: &Client, asset_id: &str) -> Result<Answer, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let call = protocol::DeleteAsset { tenant: client.tenant.clone(), asset_id: asset_id.to_owned() };
        self.coordinators.call(&shard, call).await?;
        Ok(Answer::Success(json!({"asset_id": asset_id, "deleted": true})))
    }

    /// A link to one of the tenant's assets, and when it expires (epoch seconds): a day, or
    /// until the asset is removed if that is sooner.
    pub fn link(&self, shard: &str, kept: &Asset) -> (String, u64) {
        let now_secs = self.runtime.now_ms() / 1000;
        let expires = (now_secs + asset::LINK_TTL_SECS).min(kept.due_at / 1000).max(now_secs + 1);
        let url = asset_links::mint(
            &self.config.link_key,
            self.origin,
            shard,
            &kept.asset_id,
            kept.file_name(),
            expires,
        );
        (url, expires)
    }

    fn described(&self, shard: &str, kept: &Asset) -> Value {
        let (url, expires) = self.link(shard, kept);
        kept.describe(&url, expires)
    }

    fn describe(&self, client: &Client, style: Style, kept: &Asset) -> Answer {
        let shard = task::tenant_shard(&client.tenant);
        match style {
            Style::Kling => Answer::Success(self.described(&shard, kept)),
            Style::UseApi => {
                let (url, _) = self.link(&shard, kept);
                let extension = if kept.file_name().ends_with(".mov") { "mov" } else { "mp4" };
                Answer::UseApi(json!({
                    "status": 1,
                    "url": url,
                    "message": "",
                    "fileName": format!("{}.{extension}", kept.asset_id),
                }))
            }
        }
    }

    /// A raw body: the file itself.
    async fn receive_raw(
        &self,
        client: &Client,
        upload: Upload<<P::Assets as AssetBucket>::Body>,
    ) -> Result<Asset, ApiError> {
        let content_type = asset::content_type_rule(upload.content_type.as_deref(), false)?;
        if upload.content_length.is_some_and(|length| length > asset::MAX_BYTES) {
            return Err(too_large("Content-Length"));
        }
        if upload.content_length == Some(0) {
            return Err(ApiError::new(400, code::INVALID_REQUEST, "upload: the body is empty"));
        }
        let mut started = self.start(client, content_type, upload.content_length).await?;
        let outcome = match upload.content_length {
            Some(length) => {
                let key = started.key.clone();
                let piped = self.assets.put_whole(&key, content_type, upload.body, length).await;
                // What arrived of a body that failed is not known: none of it was kept.
                piped.map(|()| started.bytes = length).map_err(|why| fault(why, None))
            }
            None => {
                let mut body = upload.body;
                self.stream_raw(&mut started, &mut body).await
            }
        };
        self.settle(client, started, outcome).await
    }

    async fn stream_raw(
        &self,
        started: &mut Started<<P::Assets as AssetBucket>::Parts>,
        body: &mut <P::Assets as AssetBucket>::Body,
    ) -> Result<(), ApiError> {
        loop {
            match self.assets.next_chunk(body).await {
                Ok(Some(chunk)) => self.add_bytes(started, &chunk).await?,
                Ok(None) => return self.finish_parts(started).await,
                Err(why) => return Err(fault(why, Some(started.bytes))),
            }
        }
    }

    /// A form: its file part stored as it streams (the first one only; a second is
    /// refused), its text parts kept.
    async fn receive_form(
        &self,
        client: &Client,
        boundary: &str,
        upload: Upload<<P::Assets as AssetBucket>::Body>,
    ) -> Result<Received, ApiError> {
        if upload.content_length.is_some_and(|length| length > asset::MAX_BYTES + FORM_OVERHEAD_BYTES) {
            return Err(too_large("Content-Length"));
        }
        let mut body = upload.body;
        let mut reader = FormReader::new(boundary);
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut started: Option<Started<_>> = None;
        // Where the current part's bytes go: a text field (by index) or the file.
        let mut text: Option<(String, Vec<u8>)> = None;
        let mut in_file = false;
        let outcome: Result<(), ApiError> = async {
            loop {
                let chunk = match self.assets.next_chunk(&mut body).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        reader.finish()?;
                        break;
                    }
                    Err(why) => return Err(fault(why, Some(started.as_ref().map_or(0, |s| s.bytes)))),
                };
                for event in reader.push(&chunk)? {
                    match event {
                        Event::Part(head) => {
                            if let Some((name, bytes)) = text.take() {
                                fields.push((name, text_value(bytes)?));
                            }
                            if let Some(file) = started.as_mut().filter(|_| in_file) {
                                self.finish_parts(file).await?;
                            }
                            in_file = head.is_file();
                            // A file input left empty comes as a file part with no name and
                            // no bytes: it is no file (and no field).
                            if head.filename.as_deref() == Some("") {
                                in_file = false;
                                continue;
                            }
                            if !in_file {
                                text = Some((head.name, Vec::new()));
                                continue;
                            }
                            if started.is_some() {
                                return Err(ApiError::new(
                                    400,
                                    code::INVALID_REQUEST,
                                    "file: the form has more than one file part; send one video",
                                ));
                            }
                            let content_type = asset::content_type_rule(head.content_type.as_deref(), true)?;
                            let declared = upload.content_length.map(|length| length.min(asset::MAX_BYTES));
                            started = Some(self.start(client, content_type, declared).await?);
                        }
                        Event::Data(bytes) => match (&mut text, started.as_mut().filter(|_| in_file)) {
                            (Some((_, value)), _) => {
                                value.extend_from_slice(&bytes);
                                if value.len() > multipart::MAX_TEXT_BYTES {
                                    return Err(ApiError::bad_request(format!(
                                        "a form field is longer than {} bytes",
                                        multipart::MAX_TEXT_BYTES
                                    )));
                                }
                            }
                            (None, Some(file)) => self.add_bytes(file, &bytes).await?,
                            (None, None) => {}
                        },
                        Event::End => {
                            if let Some((name, bytes)) = text.take() {
                                fields.push((name, text_value(bytes)?));
                            }
                            if let Some(file) = started.as_mut().filter(|_| in_file) {
                                self.finish_parts(file).await?;
                            }
                            in_file = false;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        let asset = match started {
            Some(started) => Some(self.settle(client, started, outcome).await?),
            None => {
                outcome?;
                None
            }
        };
        Ok(Received { fields, asset })
    }

    /// Reserves the upload's bytes with the tenant's coordinator (its declared size, else
    /// what is left of the day) and records it as uploading.
    async fn start(
        &self,
        client: &Client,
        content_type: &'static str,
        declared: Option<u64>,
    ) -> Result<Started<<P::Assets as AssetBucket>::Parts>, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let asset_id = hex(&self.runtime.random_16()?);
        let call = protocol::BeginUpload {
            tenant: client.tenant.clone(),
            asset_id: asset_id.clone(),
            declared_bytes: declared,
            day_limit: self.config.upload_bytes_per_day,
        };
        let reserved = match self.coordinators.call(&shard, call).await? {
            Admission::Admitted { reserved } => reserved,
            Admission::Spent { used, limit, retry_after_secs } => {
                return Err(asset::spent_refusal(used, limit, retry_after_secs))
            }
        };
        let key = asset::object_key(&shard, &asset_id);
        Ok(Started { asset_id, key, content_type, parts: None, bytes: 0, reserved, pending: Vec::new() })
    }

    /// Adds a file's bytes, sending each full part; past the cap, 413. A part is filled to
    /// exactly [`PART_BYTES`] in a buffer of that size, so no more than one is held.
    async fn add_bytes(
        &self,
        started: &mut Started<<P::Assets as AssetBucket>::Parts>,
        bytes: &[u8],
    ) -> Result<(), ApiError> {
        started.bytes = started.bytes.saturating_add(bytes.len() as u64);
        if started.bytes > asset::MAX_BYTES {
            return Err(too_large("file"));
        }
        if started.bytes > started.reserved {
            return Err(asset::reservation_passed(started.reserved, self.runtime.now_ms()));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if started.pending.capacity() == 0 {
                started.pending.reserve_exact(PART_BYTES);
            }
            let room = PART_BYTES - started.pending.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            started.pending.extend_from_slice(now);
            rest = later;
            if started.pending.len() == PART_BYTES {
                let part = std::mem::take(&mut started.pending);
                self.put_part(started, part).await?;
            }
        }
        Ok(())
    }

    async fn put_part(
        &self,
        started: &mut Started<<P::Assets as AssetBucket>::Parts>,
        part: Vec<u8>,
    ) -> Result<(), ApiError> {
        if started.parts.is_none() {
            let parts = self.assets.begin_parts(&started.key, started.content_type).await;
            started.parts = Some(parts.map_err(|why| fault(why, Some(started.bytes)))?);
        }
        let Some(parts) = started.parts.as_mut() else { return Ok(()) };
        self.assets.put_part(parts, part).await.map_err(|why| fault(why, Some(started.bytes)))
    }

    /// Sends the last part and completes the multipart upload.
    async fn finish_parts(
        &self,
        started: &mut Started<<P::Assets as AssetBucket>::Parts>,
    ) -> Result<(), ApiError> {
        if started.bytes == 0 {
            return Err(ApiError::new(400, code::INVALID_REQUEST, "upload: the file is empty"));
        }
        let last = std::mem::take(&mut started.pending);
        if !last.is_empty() || started.parts.is_none() {
            self.put_part(started, last).await?;
        }
        let Some(parts) = started.parts.take() else { return Ok(()) };
        self.assets.complete(parts).await.map_err(|why| fault(why, Some(started.bytes)))
    }

    /// Measures what was stored and has the coordinator keep it; or, on any failure (the
    /// one passed in, or the measurement's), removes what the upload left and answers why.
    async fn settle(
        &self,
        client: &Client,
        mut started: Started<<P::Assets as AssetBucket>::Parts>,
        stored: Result<(), ApiError>,
    ) -> Result<Asset, ApiError> {
        let shard = task::tenant_shard(&client.tenant);
        let kept = match stored {
            Ok(()) => self.measure_and_keep(client, &shard, &started).await,
            Err(error) => Err(error),
        };
        let error = match kept {
            Ok(kept) => {
                self.runtime.log(json!({"event": "upload", "asset_id": kept.asset_id, "bytes": kept.bytes,
                    "duration": kept.duration_secs, "outcome": "stored"}));
                return Ok(kept);
            }
            Err(error) => error,
        };
        if let Some(parts) = started.parts.take() {
            self.assets.abort(parts).await;
        }
        let drop = protocol::DropUpload {
            tenant: client.tenant.clone(),
            asset_id: started.asset_id.clone(),
            bytes: started.bytes,
        };
        if let Err(problem) = self.coordinators.call(&shard, drop).await {
            // The record's deadline passes and the alarm removes the object then.
            self.runtime
                .log(json!({"event": "upload", "asset_id": started.asset_id, "problem": problem.message}));
        }
        self.runtime.log(json!({"event": "upload", "asset_id": started.asset_id, "bytes": started.bytes,
            "outcome": "refused", "why": error.message}));
        Err(error)
    }

    async fn measure_and_keep(
        &self,
        client: &Client,
        shard: &str,
        started: &Started<<P::Assets as AssetBucket>::Parts>,
    ) -> Result<Asset, ApiError> {
        let (outcome, reads) = self.measure(&started.key, started.bytes).await?;
        self.runtime.log(json!({"event": "video_probe", "outcome": outcome, "reads": reads, "of": "upload"}));
        let measured = match outcome {
            Outcome::Measured { container, seconds, .. }
                if (video_check::MIN_SECONDS..=video_check::MAX_SECONDS).contains(&seconds) =>
            {
                Measured { container, bytes: started.bytes, duration_secs: seconds }
            }
            Outcome::NotVideo { .. } => return Err(ApiError::bad_param(
                "file",
                "is not an MP4 or MOV video (its bytes are not an ISO media file): Kling takes .mp4 and .mov",
            )),
            other => {
                video_check::judge(&other, Policy::Strict, None, "file")?;
                return Err(ApiError::bad_param("file", "could not be measured"));
            }
        };
        let call = protocol::FinishUpload {
            tenant: client.tenant.clone(),
            asset_id: started.asset_id.clone(),
            measured,
            retention_ms: self.config.asset_retention_ms,
        };
        match self.coordinators.call(shard, call).await {
            Ok(kept) => Ok(kept),
            // Its record is gone (past its deadline): the object would be nobody's. Any other
            // failure may have kept it with its answer lost: the record decides (one still
            // uploading is removed with its object by the alarm).
            Err(error) if error.status == 408 => {
                if let Err(problem) = self.assets.remove(&started.key).await {
                    self.runtime.log(
                        json!({"event": "upload", "asset_id": started.asset_id, "problem": problem.message}),
                    );
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Walks the stored object's boxes with the probe, a ranged read at a time.
    async fn measure(&self, key: &str, size: u64) -> Result<(Outcome, usize), ApiError> {
        let mut probe = Probe::new(Some(size));
        for reads in 0..MAX_READS {
            let outcome = match probe.step() {
                Step::Need { offset, length } => {
                    let bytes = self.assets.read(key, offset, length).await?;
                    probe.feed(offset, bytes, false);
                    continue;
                }
                Step::Done(facts) => Outcome::measured(facts, Some(size)),
                Step::Refuse(Problem::NotMp4) => Outcome::NotVideo { content_type: None },
                Step::Refuse(Problem::NoMovieHeader(why)) => Outcome::Unmeasured { why },
            };
            return Ok((outcome, reads));
        }
        Ok((Outcome::Unmeasured { why: "the file's boxes need too many reads".into() }, MAX_READS))
    }
}

fn text_value(bytes: Vec<u8>) -> Result<String, ApiError> {
    String::from_utf8(bytes).map_err(|_| ApiError::bad_request("a form field is not UTF-8 text"))
}
