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

/// `url` as a link to one of this deployment's assets, if it is one: on `origin`, or on
/// another origin of the same deployment (another of its hostnames, http for https), known
/// by its signature under `key`, so a link's host cannot be changed to slip past the
/// rules. A link of the same form on someone else's host is no link of ours.
pub fn parse(key: &LinkKey, origin: &str, url: &str) -> Option<AssetLink> {
    let parsed = Url::parse(url).ok()?;
    let rest = parsed.path().strip_prefix(ASSETS_PATH)?.strip_prefix('/')?;
    let (shard, asset_id, name) = parse_path(rest)?;
    let link = AssetLink { shard, asset_id, name, query: parsed.query().map(str::to_owned) };
    // At time 0 no link has expired: this checks the signature alone.
    let ours = parsed.origin().ascii_serialization() == origin || verify(key, &link, 0).is_ok();
    ours.then_some(link)
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
        let link = parse(&key, ORIGIN, &url).unwrap();
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
    fn asset_paths_are_asset_links_on_this_origin_or_when_signed_here() {
        let key = LinkKey::derive("sk-example", "");
        let url = format!("{ORIGIN}/v1/assets/{SHARD}/{ID}/video.mov?expires=1&signature=x");
        assert!(parse(&key, ORIGIN, &url).is_some());
        assert!(parse(&key, "https://other.example.com", &url).is_none(), "unsigned, elsewhere");
        assert!(parse(&key, ORIGIN, &format!("{ORIGIN}/v1/assets/{SHARD}/{ID}/clip.mp4")).is_none());
        assert!(parse(&key, ORIGIN, &format!("{ORIGIN}/v1/assets/{ID}")).is_none());
        assert!(parse(&key, ORIGIN, "https://cdn.example.com/a.mp4").is_none());
        assert!(parse(&key, ORIGIN, "not a url").is_none());
        // Our link with its host changed (another hostname of this deployment) is still ours,
        // expired or not.
        let minted = mint(&key, ORIGIN, SHARD, ID, "video.mp4", NOW + 60);
        let moved = minted.replace(ORIGIN, "http://kling-edge.example.workers.dev");
        assert_eq!(parse(&key, ORIGIN, &moved).map(|link| link.asset_id), Some(ID.to_owned()));
    }
}
