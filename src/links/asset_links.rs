//! Signed links to a tenant's uploads (`crate::record::asset`): what an upload answers with
//! and what the worker hands Kling in a create's `video_url`. Kling fetches the video with
//! no credential, so the link is its own, checked without storage:
//!
//! ```text
//! {origin}/v1/assets/{shard}/{asset_id}/{video.mp4|video.mov}?expires={epoch seconds}&signature={22 chars}
//! signature = base64url(first 16 bytes of
//!             HMAC-SHA256(key, "kling-edge asset link v1\0" shard "\0" asset_id "\0" name "\0" expires))
//! ```
//!
//! The key is the result links' (`crate::links::result_links::LinkKey`), under another
//! label, so neither kind of link opens the other. The shard names the tenant, so a create
//! can tell another tenant's upload from its own before anything is fetched.

use url::Url;

use crate::error::{code, ApiError};
use crate::links::result_links::{verify_signed, LinkKey};
use crate::record::asset;

const LABEL: &[u8] = b"kling-edge asset link v1\0";
/// Where asset links point: `{ASSETS_PATH}/{shard}/{asset_id}/{name}`.
pub const ASSETS_PATH: &str = "/v1/assets";

/// An asset link, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetLink {
    pub shard: String,
    pub asset_id: String,
    pub name: String,
    pub query: Option<String>,
}

/// The link to an asset of `shard`, valid until `expires` (epoch seconds).
pub fn mint(key: &LinkKey, origin: &str, shard: &str, asset_id: &str, name: &str, expires: u64) -> String {
    let signature = key.signature(LABEL, &[shard, asset_id, name], expires);
    format!("{origin}{ASSETS_PATH}/{shard}/{asset_id}/{name}?expires={expires}&signature={signature}")
}

/// The parts of a link's path after [`ASSETS_PATH`], if they have an asset link's form.
pub fn parse_path(rest: &str) -> Option<(String, String, String)> {
    let mut parts = rest.split('/');
    let (Some(shard), Some(asset_id), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (asset::is_asset_id(shard) && asset::is_asset_id(asset_id) && asset::is_file_name(name))
        .then(|| (shard.to_owned(), asset_id.to_owned(), name.to_owned()))
}

/// `url` as a link to one of this deployment's assets (on `origin`), if it is one.
pub fn parse(origin: &str, url: &str) -> Option<AssetLink> {
    let parsed = Url::parse(url).ok()?;
    if parsed.origin().ascii_serialization() != origin {
        return None;
    }
    let rest = parsed.path().strip_prefix(ASSETS_PATH)?.strip_prefix('/')?;
    let (shard, asset_id, name) = parse_path(rest)?;
    Some(AssetLink { shard, asset_id, name, query: parsed.query().map(str::to_owned) })
}

/// Checks a link's signature and expiry, at `now_secs`.
pub fn verify(key: &LinkKey, link: &AssetLink, now_secs: u64) -> Result<(), ApiError> {
    let parts = [link.shard.as_str(), link.asset_id.as_str(), link.name.as_str()];
    verify_signed(
        key,
        LABEL,
        &parts,
        link.query.as_deref(),
        now_secs,
        "ask for the asset again (GET /v1/assets/{id})",
    )
}

/// The refusal of a create naming another tenant's upload.
pub fn not_yours(field: &str) -> ApiError {
    ApiError::new(
        403,
        code::NO_PERMISSION,
        format!("{field}: this upload belongs to another tenant; upload the video with your own credentials"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "https://edge.example.com";
    const SHARD: &str = "0123456789abcdef0123456789abcdef";
    const ID: &str = "fedcba9876543210fedcba9876543210";
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_link_opens_its_asset_only_until_it_expires() {
        let key = LinkKey::derive("sk-example", "");
        let url = mint(&key, ORIGIN, SHARD, ID, "video.mp4", NOW + 60);
        let link = parse(ORIGIN, &url).unwrap();
        assert_eq!(
            (link.shard.as_str(), link.asset_id.as_str(), link.name.as_str()),
            (SHARD, ID, "video.mp4")
        );
        assert!(verify(&key, &link, NOW).is_ok());
        let expired = verify(&key, &link, NOW + 60).unwrap_err();
        assert_eq!(expired.status, 403);
        assert!(expired.message.contains("GET /v1/assets/{id}"), "{}", expired.message);
        // Another deployment's key, another name, another shard: refused.
        assert!(verify(&LinkKey::derive("sk-example", "https://other.example"), &link, NOW).is_err());
        let renamed = AssetLink { name: "video.mov".into(), ..link.clone() };
        assert!(verify(&key, &renamed, NOW).is_err());
        let moved = AssetLink { shard: ID.into(), ..link.clone() };
        assert!(verify(&key, &moved, NOW).is_err());
        // A result link's signature over the same parts is not an asset link's.
        assert_ne!(
            key.signature(LABEL, &[SHARD, ID, "video.mp4"], NOW),
            key.signature(b"kling-edge result link v1\0", &[SHARD, ID, "video.mp4"], NOW)
        );
    }

    #[test]
    fn only_this_origins_asset_paths_are_asset_links() {
        let url = format!("{ORIGIN}/v1/assets/{SHARD}/{ID}/video.mov?expires=1&signature=x");
        assert!(parse(ORIGIN, &url).is_some());
        assert!(parse("https://other.example.com", &url).is_none());
        assert!(parse(ORIGIN, &format!("{ORIGIN}/v1/assets/{SHARD}/{ID}/clip.mp4")).is_none());
        assert!(parse(ORIGIN, &format!("{ORIGIN}/v1/assets/{ID}")).is_none());
        assert!(parse(ORIGIN, "https://cdn.example.com/a.mp4").is_none());
        assert!(parse(ORIGIN, "not a url").is_none());
    }
}
