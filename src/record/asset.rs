//! A user's own video (an **asset**): what its tenant's coordinator keeps about it, where
//! its bytes live in the bucket, and the rules of its life.
//!
//! An upload is recorded before its first byte is stored ([`AssetState::Uploading`], with a
//! deadline), so whatever stops it (a client that goes away, a refused file, a runtime that
//! dies) leaves a record the coordinator's alarm finds: past its deadline the object, if
//! any, is removed, then the record. Only a measured video becomes [`AssetState::Stored`],
//! and only those are listed or may be named in a create. A stored asset is kept
//! `ASSET_RETENTION_DAYS`, then removed the same way ([`AssetState::Removing`] until the
//! bucket confirms).
//!
//! Its bytes are in the deployment's `RESULTS` bucket under `assets/{shard}/{asset_id}`,
//! beside the result copies (`results/...`): one bucket for operators to create and bind,
//! one lifecycle rule per prefix.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{code, ApiError};
use crate::probe::Container;

/// Every asset's object key starts with this (the bucket's lifecycle rule names it).
pub const KEY_PREFIX: &str = "assets/";
/// Kling takes videos of at most 100 MB; so does an upload.
pub const MAX_BYTES: u64 = crate::probe::video_check::MAX_BYTES;
/// How long an upload may take, from its start to its measurement: 100 MB over a slow
/// mobile link (1 Mbit/s) takes about 14 minutes, so an hour leaves room. Past it, the
/// coordinator's alarm removes what the upload left.
pub const UPLOAD_DEADLINE_MS: u64 = 60 * 60 * 1000;
/// How long a link to an asset works: the one an upload answers with, and the one given to
/// Kling with a create. Kling fetches a task's video when it starts the task, which may be
/// minutes after the create, or longer on a busy account; a day covers that with room, and
/// a link leaked with a task's data stops working the next day.
pub const LINK_TTL_SECS: u64 = 24 * 60 * 60;
/// A removal the bucket refused is tried again after this.
pub const REMOVE_RETRY_MS: u64 = 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetState {
    /// Its bytes are on their way to the bucket, or being measured.
    Uploading,
    /// Measured and kept: listed, and usable in a create.
    Stored,
    /// Refused, deleted or expired: its object is being removed.
    Removing,
}

/// One upload, as its coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    pub asset_id: String,
    pub state: AssetState,
    pub created_at: u64,
    /// When the alarm acts on it: an upload's deadline, a stored asset's expiry, a
    /// removal's next try.
    pub due_at: u64,
    /// Measured: `video/mp4` or `video/quicktime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Its size: measured once stored; while uploading, the bytes reserved for it.
    #[serde(default)]
    pub bytes: u64,
    /// The day (`day_of`) its reservation was counted on: a correction on a later day
    /// leaves that day's count alone.
    #[serde(default)]
    pub counted_on: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
}

/// What a measured upload is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub container: String,
    pub bytes: u64,
    pub duration_secs: f64,
}

impl Asset {
    /// An upload about to store its first byte, with the bytes `reserved` for it against
    /// the day's, until its real size is known.
    pub fn begin(asset_id: &str, now: u64, reserved: u64) -> Asset {
        Asset {
            asset_id: asset_id.to_owned(),
            state: AssetState::Uploading,
            created_at: now,
            due_at: now + UPLOAD_DEADLINE_MS,
            content_type: None,
            bytes: reserved,
            counted_on: day_of(now),
            duration_secs: None,
        }
    }

    /// The upload was measured and is kept until `retention_ms` from its start.
    pub fn store(&mut self, measured: &Measured, retention_ms: u64) {
        self.state = AssetState::Stored;
        self.content_type = Some(content_type_of(&measured.container).to_owned());
        self.bytes = measured.bytes;
        self.duration_secs = Some(measured.duration_secs);
        self.due_at = self.created_at.saturating_add(retention_ms);
    }

    /// Its object is to be removed (now, then every [`REMOVE_RETRY_MS`] until it is).
    pub fn remove(&mut self, now: u64) {
        self.state = AssetState::Removing;
        self.due_at = now;
    }

    pub fn is_stored(&self) -> bool {
        self.state == AssetState::Stored
    }

    /// The file name in its link: Kling reads the extension.
    pub fn file_name(&self) -> &'static str {
        file_name(self.content_type.as_deref())
    }

    /// The answer's `data` for this asset, with its link.
    pub fn describe(&self, url: &str, link_expires_secs: u64) -> Value {
        json!({
            "asset_id": self.asset_id,
            "url": url,
            "content_type": self.content_type,
            "bytes": self.bytes,
            "duration": self.duration_secs,
            "created_at": self.created_at,
            "expires_at": self.due_at,
            "link_expires_at": link_expires_secs * 1000,
        })
    }
}

/// `video.mp4` or `video.mov`, by the measured content type.
pub fn file_name(content_type: Option<&str>) -> &'static str {
    match content_type {
        Some("video/quicktime") => "video.mov",
        _ => "video.mp4",
    }
}

/// Whether a link's last segment is an asset's file name.
pub fn is_file_name(name: &str) -> bool {
    matches!(name, "video.mp4" | "video.mov")
}

/// The content type of a measured container.
pub fn content_type_of(container: &str) -> &'static str {
    if container == Container::Mov.name() {
        "video/quicktime"
    } else {
        "video/mp4"
    }
}

/// The bucket key of an asset of the tenant with this shard.
pub fn object_key(shard: &str, asset_id: &str) -> String {
    format!("{KEY_PREFIX}{shard}/{asset_id}")
}

/// An asset id: 32 lowercase hex digits (128 random bits).
pub fn is_asset_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The content type to store an upload with, from the one it declared (parameters aside),
/// or 415 naming the rule. `in_form`: a form's file part, which may also be
/// `application/octet-stream` (what browsers send for an unknown extension; stored as
/// `video/mp4`, the probe decides what it is).
pub fn content_type_rule(declared: Option<&str>, in_form: bool) -> Result<&'static str, ApiError> {
    let essence = declared.and_then(|value| value.split(';').next()).map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("video/quicktime") => return Ok("video/quicktime"),
        Some("video/mp4") => return Ok("video/mp4"),
        Some("application/octet-stream") if in_form => return Ok("video/mp4"),
        _ => {}
    }
    let said = match essence {
        Some(essence) if !essence.is_empty() => format!("is {essence}"),
        _ => "is missing".to_owned(),
    };
    let field = if in_form { "the file part's Content-Type" } else { "Content-Type" };
    Err(ApiError::new(
        415,
        code::INVALID_REQUEST,
        format!("{field}: {said}; an upload must be video/mp4 or video/quicktime (or multipart/form-data with one such file)"),
    ))
}

/// The bytes a tenant uploaded on one UTC day (kept in its coordinator's meta as
/// `{day} {bytes}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadDay {
    pub day: u64,
    pub bytes: u64,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Whether an upload may start, with the bytes it may bring, or when the day renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Admission {
    /// It may bring up to `reserved` bytes (counted against the day until its real size is
    /// known).
    Admitted { reserved: u64 },
    /// The day's bytes are spent: `used` of `limit`, renewing in `retry_after_secs`.
    Spent { used: u64, limit: u64, retry_after_secs: u64 },
}

impl UploadDay {
    /// The day's count as kept (a count from an earlier day starts over).
    pub fn read(kept: Option<&str>, now: u64) -> UploadDay {
        let today = now / DAY_MS;
        let parsed = kept.and_then(|kept| {
            let (day, bytes) = kept.split_once(' ')?;
            Some(UploadDay { day: day.parse().ok()?, bytes: bytes.parse().ok()? })
        });
        parsed.filter(|kept| kept.day == today).unwrap_or(UploadDay { day: today, bytes: 0 })
    }

    pub fn encode(&self) -> String {
        format!("{} {}", self.day, self.bytes)
    }

    /// Reserves what an upload may bring: its `declared` size, or (undeclared) what is left
    /// of the day, up to [`MAX_BYTES`]; so concurrent uploads can never together pass the
    /// limit. Refused when the declared size does not fit, or nothing is left.
    pub fn admit(&mut self, declared: Option<u64>, limit: u64, now: u64) -> Admission {
        let left = limit.saturating_sub(self.bytes);
        let reserved = declared.unwrap_or(left.min(MAX_BYTES));
        if left == 0 || reserved > left {
            return Admission::Spent { used: self.bytes, limit, retry_after_secs: seconds_to_renewal(now) };
        }
        self.bytes = self.bytes.saturating_add(reserved);
        Admission::Admitted { reserved }
    }

    /// Corrects the count once an upload's real size is known (it was counted as reserved).
    pub fn correct(&mut self, counted: u64, actual: u64) {
        self.bytes = self.bytes.saturating_sub(counted).saturating_add(actual);
    }
}

/// Seconds until the next 00:00 UTC, when a day's bytes renew (at least 1).
pub fn seconds_to_renewal(now: u64) -> u64 {
    let renews = (now / DAY_MS + 1) * DAY_MS;
    renews.saturating_sub(now).div_ceil(1000).max(1)
}

/// The day (days since the epoch, UTC) `now` falls on.
pub fn day_of(now: u64) -> u64 {
    now / DAY_MS
}

/// The 429 of an upload that would bring more than its reservation: what was left of the
/// day when it started.
pub fn reservation_passed(reserved: u64, now: u64) -> ApiError {
    let retry_after_secs = seconds_to_renewal(now);
    ApiError::new(
        429,
        code::RATE_LIMITED,
        format!(
            "uploads: this upload brings more than the {reserved} bytes left of this tenant's day (UPLOAD_BYTES_PER_DAY); nothing was kept; the day renews at 00:00 UTC, in {retry_after_secs} s"
        ),
    )
    .with_retry_after(retry_after_secs)
}

/// The 429 of an upload past its tenant's daily bytes.
pub fn spent_refusal(used: u64, limit: u64, retry_after_secs: u64) -> ApiError {
    ApiError::new(
        429,
        code::RATE_LIMITED,
        format!(
            "uploads: {used} of the {limit} bytes a day this tenant may upload are used (UPLOAD_BYTES_PER_DAY); the day renews at 00:00 UTC, in {retry_after_secs} s"
        ),
    )
    .with_retry_after(retry_after_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn an_upload_is_kept_from_its_start_and_listed_only_once_measured() {
        let mut asset = Asset::begin("a", NOW, 0);
        assert_eq!((asset.state, asset.due_at), (AssetState::Uploading, NOW + UPLOAD_DEADLINE_MS));
        assert!(!asset.is_stored());
        let measured = Measured { container: "MOV".into(), bytes: 5_000, duration_secs: 9.0 };
        asset.store(&measured, 7 * DAY_MS);
        assert!(asset.is_stored());
        assert_eq!((asset.due_at, asset.file_name()), (NOW + 7 * DAY_MS, "video.mov"));
        assert_eq!(asset.content_type.as_deref(), Some("video/quicktime"));
        asset.remove(NOW + 5);
        assert_eq!((asset.state, asset.due_at), (AssetState::Removing, NOW + 5));
        let text = serde_json::to_string(&asset).unwrap();
        assert_eq!(serde_json::from_str::<Asset>(&text).unwrap(), asset);
    }

    #[test]
    fn only_videos_kling_takes_may_be_uploaded() {
        assert_eq!(content_type_rule(Some("video/mp4"), false), Ok("video/mp4"));
        assert_eq!(content_type_rule(Some("Video/QuickTime; codecs=x"), false), Ok("video/quicktime"));
        assert_eq!(content_type_rule(Some("application/octet-stream"), true), Ok("video/mp4"));
        let refusal = content_type_rule(Some("image/gif"), false).unwrap_err();
        assert_eq!(refusal.status, 415);
        assert!(refusal.message.starts_with("Content-Type: is image/gif;"), "{}", refusal.message);
        assert!(content_type_rule(Some("application/octet-stream"), false).is_err());
        assert!(content_type_rule(None, true).unwrap_err().message.contains("is missing"));
    }

    #[test]
    fn a_days_bytes_are_reserved_and_renew_at_midnight() {
        let limit = 1_000;
        let mut day = UploadDay::read(None, NOW);
        assert_eq!(day.admit(Some(600), limit, NOW), Admission::Admitted { reserved: 600 });
        let kept = day.encode();
        let mut day = UploadDay::read(Some(&kept), NOW + 1);
        assert_eq!(day.bytes, 600);
        let Admission::Spent { used, retry_after_secs, .. } = day.admit(Some(500), limit, NOW) else {
            panic!()
        };
        assert_eq!(used, 600);
        assert!(retry_after_secs > 0 && retry_after_secs <= 24 * 3600);
        // Undeclared: what is left is reserved, so a second one at once finds nothing.
        assert_eq!(day.admit(None, limit, NOW), Admission::Admitted { reserved: 400 });
        assert!(matches!(day.admit(None, limit, NOW), Admission::Spent { .. }));
        // It brought 100: the rest is given back.
        day.correct(400, 100);
        assert_eq!(day.bytes, 700);
        assert_eq!(day.admit(None, limit, NOW), Admission::Admitted { reserved: 300 });
        let tomorrow = UploadDay::read(Some(&day.encode()), NOW + DAY_MS);
        assert_eq!(tomorrow.bytes, 0);
        assert_eq!(UploadDay::read(Some("garbage"), NOW).bytes, 0);
        // A big day still reserves at most one upload's worth.
        let mut big = UploadDay::read(None, NOW);
        assert_eq!(big.admit(None, u64::MAX, NOW), Admission::Admitted { reserved: MAX_BYTES });
    }

    #[test]
    fn keys_and_ids_have_one_form() {
        assert_eq!(object_key("s", "a"), "assets/s/a");
        assert!(is_asset_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_asset_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_asset_id("../x"));
        assert!(is_file_name("video.mov") && !is_file_name("audio.mp3"));
    }
}
