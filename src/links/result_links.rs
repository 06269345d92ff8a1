//! Signed links to the deployment's copies of result files (`crate::record::copies`): minted into
//! each answer and webhook for the task's tenant, checked without storage when a browser
//! (an `<audio>` element, a download) follows one with no Authorization header.
//!
//! ```text
//! {origin}/v1/results/{shard}/{task_id}/{name}?expires={epoch seconds}&signature={22 chars}
//! signature = base64url(first 16 bytes of
//!             HMAC-SHA256(key, "kling-edge result link v1\0" shard "\0" task_id "\0" name "\0" expires))
//! ```
//!
//! The shard is the tenant's (`crate::kling::task::tenant_shard`) and names the copy's key, so a
//! link opens one tenant's file and no other; it is minted only into answers the tenant
//! gets, and lasts `RESULT_LINK_TTL_SECONDS` (an hour by default; each answer mints fresh
//! ones). The key is derived from the deployment's Kling credential and origin, like the
//! callback capabilities' (with another label).

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{code, ApiError};
use crate::record::copies::{self, CopyState};
use crate::record::TaskAnswer;

const LABEL: &[u8] = b"kling-edge result link v1\0";
const MAC_BYTES: usize = 16;
/// The prefix of the field that holds a copy's link, next to Kling's (`copy_url_mp3` beside `url_mp3`).
pub const FIELD_PREFIX: &str = "copy_";

/// The key that signs result links.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(<redacted>)")
    }
}

impl LinkKey {
    /// `HMAC-SHA256(secret, "kling-edge result link key v1" || origin)`, from Kling's secret
    /// key or API key and the deployment's origin (`PUBLIC_BASE_URL`, empty when unset), so
    /// a link works on the deployment that minted it only.
    pub fn derive(secret: &str, deployment: &str) -> LinkKey {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(b"kling-edge result link key v1");
        mac.update(deployment.as_bytes());
        LinkKey(mac.finalize().into_bytes().into())
    }

    /// `base64url(first 16 bytes of HMAC(key, label part "\0" part "\0" ... expires))`: one
    /// link's signature; the label says what kind of link it is.
    pub(crate) fn signature(&self, label: &[u8], parts: &[&str], expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        mac.update(expires.to_string().as_bytes());
        Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()[..MAC_BYTES])
    }
}

/// Mints the links of one answer.
#[derive(Debug, Clone, Copy)]
pub struct Minter<'a> {
    pub key: &'a LinkKey,
    /// The worker's origin (`PUBLIC_BASE_URL`, or the request's).
    pub origin: &'a str,
    /// The task's tenant's shard.
    pub shard: &'a str,
    pub now_ms: u64,
    pub ttl_secs: u32,
}

impl Minter<'_> {
    /// When links minted now expire (epoch seconds).
    pub fn expires(&self) -> u64 {
        self.now_ms / 1000 + u64::from(self.ttl_secs)
    }

    /// The link to the copy `name` of `task_id`, valid until `expires`.
    pub fn link(&self, task_id: &str, name: &str, expires: u64) -> String {
        let signature = self.key.signature(LABEL, &[self.shard, task_id, name], expires);
        format!(
            "{}/v1/results/{}/{task_id}/{name}?expires={expires}&signature={signature}",
            self.origin, self.shard
        )
    }
}

fn refused(rule: &str) -> ApiError {
    ApiError::new(403, code::NO_PERMISSION, format!("link: {rule}"))
}

/// Checks a link's query (`expires=...&signature=...`) for the copy it names, at `now_secs`.
pub fn verify(
    key: &LinkKey,
    shard: &str,
    task_id: &str,
    name: &str,
    query: Option<&str>,
    now_secs: u64,
) -> Result<(), ApiError> {
    verify_signed(key, LABEL, &[shard, task_id, name], query, now_secs, "ask for the task again")
}

/// Checks a signed link's query (`expires=...&signature=...`) for what `parts` name, under
/// `label`, at `now_secs`; `renew` says how to get a fresh link.
pub(crate) fn verify_signed(
    key: &LinkKey,
    label: &[u8],
    parts: &[&str],
    query: Option<&str>,
    now_secs: u64,
    renew: &str,
) -> Result<(), ApiError> {
    let (mut expires, mut signature) = (None, None);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("expires", value)) if expires.is_none() => expires = Some(value),
            Some(("signature", value)) if signature.is_none() => signature = Some(value),
            _ => {}
        }
    }
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return Err(refused(
            "is not signed: use the link exactly as an answer gave it (with expires and signature)",
        ));
    };
    let expires_at = expires
        .parse::<u64>()
        .ok()
        .filter(|at| {
            expires.len() <= 12
                && expires.bytes().all(|b| b.is_ascii_digit())
                && !expires.starts_with('0')
                && *at > 0
        })
        .ok_or_else(|| refused("expires must be the epoch seconds the link was given with"))?;
    let expected = key.signature(label, parts, expires_at);
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(refused("the signature does not match: use the link exactly as an answer gave it"));
    }
    if now_secs >= expires_at {
        return Err(refused(&format!("has expired: {renew} for a fresh link")));
    }
    Ok(())
}

/// The JSON a client gets for a task: Kling's data, with a `copies` object describing each
/// result file when there are copies. With a `minter`, each copy in the bucket, or still
/// being made, gets a signed link next to Kling's (`copy_url_mp3` beside `url_mp3`, and
/// `url` in its entry under `copies`); until the copy is made, the link redirects to Kling's
/// file (`crate::edge::result_links`), so a webhook need not wait for its copies. Copies past
/// their retention say so (Kling's links then stand alone).
pub fn render(answer: &TaskAnswer, minter: Option<&Minter>) -> Value {
    let mut data = answer.data.clone();
    if answer.copies.is_empty() || !data.is_object() {
        return data;
    }
    let task_id = data.get("task_id").and_then(Value::as_str).map(str::to_owned);
    let mut files = Vec::with_capacity(answer.copies.len());
    let mut any_link = false;
    for copy in &answer.copies {
        let mut file = copies::describe(copy);
        let linked = matches!(copy.state, CopyState::Copied | CopyState::Pending);
        if let (true, Some(minter), Some(task_id)) = (linked, minter, &task_id) {
            let copy_expires_ms = copy.expires_at.unwrap_or(u64::MAX);
            if minter.now_ms >= copy_expires_ms {
                file["state"] = json!("expired");
                file["note"] = json!(
                    "the copy has expired (RESULT_RETENTION_DAYS); only Kling's link is left, which Kling keeps 30 days"
                );
            } else {
                let link = minter.link(task_id, &copy.name, minter.expires().min(copy_expires_ms / 1000));
                if let Some((parent, field)) = copy.pointer.rsplit_once('/') {
                    if let Some(item) = data.pointer_mut(parent).and_then(Value::as_object_mut) {
                        item.insert(format!("{FIELD_PREFIX}{field}"), json!(link));
                    }
                }
                file["url"] = json!(link);
                any_link = true;
            }
        }
        files.push(file);
    }
    let mut described = json!({ "files": files });
    if let (true, Some(minter)) = (any_link, minter) {
        described["links_expire_at"] = json!(minter.expires() * 1000);
    }
    data["copies"] = described;
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::copies::{self, CopyOutcome, CopySettings};
    use crate::schedule::Schedule;

    const NOW: u64 = 1_800_000_000_000;
    const SHARD: &str = "0123456789abcdef0123456789abcdef";

    fn key() -> LinkKey {
        LinkKey::derive("sk-example", "")
    }

    fn minter(key: &LinkKey, now_ms: u64) -> Minter<'_> {
        Minter { key, origin: "https://edge.example.com", shard: SHARD, now_ms, ttl_secs: 3_600 }
    }

    fn query_of(link: &str) -> &str {
        link.split_once('?').unwrap().1
    }

    /// A finished task's answer with its MP3 copied and its WAV over the cap.
    fn answer() -> TaskAnswer {
        let data = json!({"task_id": "t1", "task_status": "succeed", "task_result": {"audios": [
            {"id": "a", "url_mp3": "https://kling.example/a.mp3", "url_wav": "https://kling.example/a.wav"}]}});
        let mut list = Vec::new();
        copies::queue(&mut list, copies::result_files(&data), NOW);
        let settings = CopySettings { max_bytes: 50_000, retention_ms: copies::days_ms(90) };
        let schedule = Schedule::parse("5").unwrap();
        copies::attempt(
            &mut list,
            "audio-0.mp3",
            CopyOutcome::Copied { bytes: 30_633 },
            NOW,
            &schedule,
            &settings,
        );
        copies::attempt(
            &mut list,
            "audio-0.wav",
            CopyOutcome::TooLarge { bytes: 110_328 },
            NOW,
            &schedule,
            &settings,
        );
        TaskAnswer { data, copies: list }
    }

    #[test]
    fn a_copys_link_sits_next_to_klings_and_verifies() {
        let key = key();
        let answer = render(&answer(), Some(&minter(&key, NOW + 1_000)));
        let audio = &answer["task_result"]["audios"][0];
        assert_eq!(audio["url_mp3"], "https://kling.example/a.mp3", "Kling's link is kept");
        let link = audio["copy_url_mp3"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("https://edge.example.com/v1/results/{SHARD}/t1/audio-0.mp3?expires=")),
            "{link}"
        );
        assert_eq!(answer["copies"]["files"][0]["url"], link);
        assert!(audio.get("copy_url_wav").is_none(), "the WAV was not copied");
        assert!(answer["copies"]["files"][1]["note"]
            .as_str()
            .unwrap()
            .contains("108 KB is over this deployment's cap of 49 KB"));
        assert_eq!(answer["copies"]["links_expire_at"], json!((NOW / 1000 + 1 + 3600) * 1000));
        assert!(verify(&key, SHARD, "t1", "audio-0.mp3", Some(query_of(link)), NOW / 1000 + 3600).is_ok());
    }

    #[test]
    fn a_tampered_expired_or_unsigned_link_is_refused() {
        let key = key();
        let minter = minter(&key, NOW);
        let link = minter.link("t1", "audio-0.mp3", minter.expires());
        let query = query_of(&link);
        let now = NOW / 1000;
        let refusal = |shard: &str, task: &str, name: &str, query: Option<&str>, now: u64| {
            let error = verify(&key, shard, task, name, query, now).unwrap_err();
            assert_eq!((error.status, error.code), (403, 1103));
            error.message
        };
        assert!(refusal(SHARD, "t1", "audio-0.wav", Some(query), now).contains("signature does not match"));
        assert!(refusal(SHARD, "t2", "audio-0.mp3", Some(query), now).contains("signature does not match"));
        let other_tenant = "fedcba9876543210fedcba9876543210";
        assert!(
            refusal(other_tenant, "t1", "audio-0.mp3", Some(query), now).contains("signature does not match")
        );
        let later = query.replace(
            &format!("expires={}", minter.expires()),
            &format!("expires={}", minter.expires() + 3600),
        );
        assert!(refusal(SHARD, "t1", "audio-0.mp3", Some(&later), now).contains("signature does not match"));
        assert!(refusal(SHARD, "t1", "audio-0.mp3", Some(query), minter.expires()).contains("has expired"));
        let plus = query.replace("expires=", "expires=+");
        assert!(
            refusal(SHARD, "t1", "audio-0.mp3", Some(&plus), now).contains("epoch seconds"),
            "one spelling per link"
        );
        assert!(refusal(SHARD, "t1", "audio-0.mp3", None, now).contains("is not signed"));
        assert!(refusal(SHARD, "t1", "audio-0.mp3", Some("expires=1"), now).contains("is not signed"));
        assert!(
            refusal(SHARD, "t1", "audio-0.mp3", Some("expires=x&signature=y"), now).contains("epoch seconds")
        );
        let other_key = LinkKey::derive("another-secret", "");
        assert!(verify(&other_key, SHARD, "t1", "audio-0.mp3", Some(query), now).is_err());
    }

    #[test]
    fn an_expired_copy_says_so_and_leaves_klings_link() {
        let key = key();
        let answer = render(&answer(), Some(&minter(&key, NOW + copies::days_ms(90))));
        assert_eq!(answer["copies"]["files"][0]["state"], "expired");
        assert!(answer["copies"]["files"][0]["note"].as_str().unwrap().contains("has expired"));
        assert!(answer["task_result"]["audios"][0].get("copy_url_mp3").is_none());
        assert!(answer["copies"].get("links_expire_at").is_none());
        // A link never outlives its copy.
        let answer = render(&self::answer(), Some(&minter(&key, NOW + copies::days_ms(90) - 60_000)));
        let link = answer["task_result"]["audios"][0]["copy_url_mp3"].as_str().unwrap();
        assert!(link.contains(&format!("expires={}", (NOW + copies::days_ms(90)) / 1000)), "{link}");
    }

    #[test]
    fn answers_without_copies_are_left_alone() {
        let key = key();
        let data = json!({"task_id": "t1", "task_status": "processing"});
        let answer = TaskAnswer { data: data.clone(), copies: Vec::new() };
        assert_eq!(render(&answer, Some(&minter(&key, NOW))), data);
        assert_eq!(
            render(&self::answer(), None)["copies"]["files"][0].get("url"),
            None,
            "no minter, no links"
        );
    }
}
