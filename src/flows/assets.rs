//! The coordinator's side of a tenant's uploads (`crate::record::asset`): counting an upload
//! against the day's bytes and recording it before its first byte is stored, keeping it once
//! measured, answering for it, and removing its object (refused, deleted, expired, or an
//! upload that never finished) before its record.
//!
//! Removal always goes object first, record second: a record whose object could not be
//! removed stays `Removing` and the alarm tries again, so no object outlives its record
//! unnoticed. The request path's side is `super::upload`.

use serde_json::json;

use crate::error::{code, ApiError};
use crate::ports::{AssetStore, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream, Webhooks};
use crate::record::asset::{self, Admission, Asset, AssetState, Measured, UploadDay};

use super::coordinator::Coordinator;

/// Where the day's uploaded bytes are counted (`meta`).
pub const UPLOAD_DAY_META: &str = "upload_day";
/// How many due assets one alarm removes.
pub const ASSET_BATCH: u32 = 25;

fn no_asset(asset_id: &str) -> ApiError {
    ApiError::new(
        404,
        code::NOT_FOUND,
        format!(
            "asset {asset_id}: there is no such upload of yours (it may have expired: ASSET_RETENTION_DAYS)"
        ),
    )
}

impl<
        S: TaskStore + AssetStore,
        K: Upstream,
        W: Webhooks,
        R: EdgeCopies,
        B: ResultBucket,
        T: Runtime,
        G: Gates,
    > Coordinator<'_, S, K, W, R, B, T, G>
{
    /// Reserves an upload's bytes against the day's (its declared size, else what is left)
    /// and records it as uploading, with its deadline; or says when the day renews.
    pub fn begin_upload(
        &self,
        asset_id: &str,
        declared: Option<u64>,
        day_limit: u64,
    ) -> Result<Admission, ApiError> {
        let now = self.runtime.now_ms();
        let mut day = UploadDay::read(self.store.meta(UPLOAD_DAY_META)?.as_deref(), now);
        let admission = day.admit(declared, day_limit, now);
        if let Admission::Admitted { reserved } = admission {
            self.store.set_meta(UPLOAD_DAY_META, &day.encode())?;
            self.store.save_asset(&Asset::begin(asset_id, now, reserved))?;
        }
        Ok(admission)
    }

    /// Keeps a measured upload. One that is no longer uploading (past its deadline, the
    /// alarm took it away) is refused: the edge removes what it stored.
    pub fn finish_upload(
        &self,
        asset_id: &str,
        measured: &Measured,
        retention_ms: u64,
    ) -> Result<Asset, ApiError> {
        let Some(mut kept) =
            self.store.load_asset(asset_id)?.filter(|kept| kept.state == AssetState::Uploading)
        else {
            return Err(ApiError::new(
                408,
                code::INVALID_REQUEST,
                format!(
                    "upload: took longer than the {} minutes an upload may take; send it again",
                    asset::UPLOAD_DEADLINE_MS / 60_000
                ),
            ));
        };
        self.correct_day(&kept, measured.bytes)?;
        kept.store(measured, retention_ms);
        self.store.save_asset(&kept)?;
        Ok(kept)
    }

    /// Removes an upload that was refused or broke off, counting what arrived. One whose
    /// record is already gone (past its deadline) has its object removed all the same.
    pub async fn drop_upload(&self, asset_id: &str, arrived: u64) -> Result<(), ApiError> {
        let mut kept = match self.store.load_asset(asset_id)? {
            Some(kept) if kept.is_stored() => return Ok(()),
            Some(kept) => kept,
            None => {
                let key = asset::object_key(self.shard, asset_id);
                if let Err(problem) = self.bucket.delete(&[key]).await {
                    self.runtime
                        .log(json!({"event": "asset", "asset_id": asset_id, "problem": problem.message}));
                }
                return Ok(());
            }
        };
        if kept.state == AssetState::Uploading {
            self.correct_day(&kept, arrived)?;
        }
        kept.remove(self.runtime.now_ms());
        self.store.save_asset(&kept)?;
        self.remove(&kept).await
    }

    /// Replaces an upload's reservation by what it brought, in the count of the day it was
    /// reserved on (a day since renewed is left alone).
    fn correct_day(&self, upload: &Asset, actual: u64) -> Result<(), ApiError> {
        let now = self.runtime.now_ms();
        let mut day = UploadDay::read(self.store.meta(UPLOAD_DAY_META)?.as_deref(), now);
        if day.day != upload.counted_on {
            return Ok(());
        }
        day.correct(upload.bytes, actual);
        self.store.set_meta(UPLOAD_DAY_META, &day.encode())
    }

    /// A stored asset, or 404 (an upload still on its way, or being removed, is not one).
    pub fn stored_asset(&self, asset_id: &str) -> Result<Asset, ApiError> {
        let now = self.runtime.now_ms();
        self.store
            .load_asset(asset_id)?
            .filter(|kept| kept.is_stored() && kept.due_at > now)
            .ok_or_else(|| no_asset(asset_id))
    }

    /// A page of the stored assets, newest first (one expired and not yet removed is not
    /// listed).
    pub fn list_assets(&self, page_num: u32, page_size: u32) -> Result<Vec<Asset>, ApiError> {
        let offset = page_num.saturating_sub(1).saturating_mul(page_size);
        let now = self.runtime.now_ms();
        Ok(self.store.asset_page(offset, page_size)?.into_iter().filter(|kept| kept.due_at > now).collect())
    }

    /// A client's removal of a stored asset: gone from the list at once, its object removed
    /// now or by the alarm.
    pub async fn delete_asset(&self, asset_id: &str) -> Result<(), ApiError> {
        let mut kept = self.stored_asset(asset_id)?;
        kept.remove(self.runtime.now_ms());
        self.store.save_asset(&kept)?;
        self.remove(&kept).await
    }

    /// The alarm's part: removes what is due (uploads past their deadline, expired assets,
    /// removals to try again), [`ASSET_BATCH`] at most.
    pub async fn sweep_assets(&self, now: u64) -> Result<(), ApiError> {
        for mut due in self.store.due_assets(now, ASSET_BATCH)? {
            if due.state == AssetState::Uploading {
                // An upload that never finished gives its reservation back.
                self.correct_day(&due, 0)?;
            }
            if due.state != AssetState::Removing {
                self.runtime.log(json!({"event": "asset", "asset_id": due.asset_id, "outcome": "removed",
                    "why": if due.is_stored() { "expired" } else { "the upload never finished" }}));
                due.remove(now);
                self.store.save_asset(&due)?;
            }
            self.remove(&due).await?;
        }
        Ok(())
    }

    /// Removes a `Removing` asset's object, then its record; if the bucket refuses, the
    /// record stays and the alarm tries again after [`asset::REMOVE_RETRY_MS`].
    async fn remove(&self, removing: &Asset) -> Result<(), ApiError> {
        let key = asset::object_key(self.shard, &removing.asset_id);
        match self.bucket.delete(&[key]).await {
            Ok(()) => {
                // Re-read: nothing else changes a removing asset, but it may be gone already.
                if self
                    .store
                    .load_asset(&removing.asset_id)?
                    .is_some_and(|kept| kept.state == AssetState::Removing)
                {
                    self.store.delete_asset(&removing.asset_id)?;
                }
                Ok(())
            }
            Err(problem) => {
                self.runtime.log(
                    json!({"event": "asset", "asset_id": removing.asset_id, "problem": problem.message}),
                );
                let retry_at = self.runtime.now_ms().saturating_add(asset::REMOVE_RETRY_MS);
                if let Some(mut kept) = self.store.load_asset(&removing.asset_id)? {
                    kept.due_at = retry_at;
                    self.store.save_asset(&kept)?;
                }
                Ok(())
            }
        }
    }
}
