//! The callback capability: the secret part of the callback URL the worker gives Kling for
//! one create, checked without any storage.
//!
//! A create's record is written only after Kling answers, so the URL itself must say where a
//! callback belongs and prove that the worker issued it. It carries the tenant's shard (which
//! coordinator owns the task), the endpoint (which Kling path to ask about the task), a
//! fresh nonce (which create it was: the coordinator binds the nonce to the task it
//! reports), an expiry, and a MAC over all of them:
//!
//! ```text
//! base64url( shard[16] || nonce[16] || expires_at[4, big-endian seconds] || endpoint[1] || mac[16] )
//! mac = first 16 bytes of HMAC-SHA256(key, "kling-edge callback v1" || the 37 bytes before it)
//! ```
//!
//! 71 characters in all, followed by the name of the Kling account the create went to when
//! it is not the deployment's first (`crate::accounts`), which the MAC covers too
//! (`mac = HMAC(key, label || the 37 bytes || account)`): a task first learned from its
//! callback is followed on its own account, and a one-account deployment's URLs are as they
//! always were. A forged, altered, truncated or expired capability is refused
//! before anything is read or stored. The key is derived from the deployment's Kling
//! credential, which every deployment has, and its origin (see [`CapabilityKey::derive`]).

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long Kling may call back about a task (tasks end within a day; the margin is wide).
pub const LIFETIME_SECS: i64 = 7 * 24 * 60 * 60;
const LABEL: &[u8] = b"kling-edge callback v1";
const SHARD_BYTES: usize = 16;
const NONCE_BYTES: usize = 16;
const MAC_BYTES: usize = 16;
const BODY_BYTES: usize = SHARD_BYTES + NONCE_BYTES + 4 + 1;
const TOTAL_BYTES: usize = BODY_BYTES + MAC_BYTES;
/// The length of an encoded capability.
pub const ENCODED_CHARS: usize = (TOTAL_BYTES * 4).div_ceil(3);

/// The key that signs capabilities.
#[derive(Clone, PartialEq, Eq)]
pub struct CapabilityKey([u8; 32]);

impl std::fmt::Debug for CapabilityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CapabilityKey(<redacted>)")
    }
}

impl CapabilityKey {
    /// Derives the key from a secret the deployment already holds (Kling's secret key or API
    /// key) and the deployment's own origin (`PUBLIC_BASE_URL`, empty when unset):
    /// `HMAC-SHA256(secret, "kling-edge callback capability key v1" || origin)`. So staging
    /// and production on one Kling account refuse each other's callback URLs. Rotating either
    /// retires the URLs of running tasks; their results still arrive by polling.
    pub fn derive(secret: &str, deployment: &str) -> CapabilityKey {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(b"kling-edge callback capability key v1");
        mac.update(deployment.as_bytes());
        CapabilityKey(mac.finalize().into_bytes().into())
    }

    fn mac(&self, body: &[u8], account: &str) -> [u8; MAC_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(LABEL);
        mac.update(body);
        mac.update(account.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut truncated = [0u8; MAC_BYTES];
        truncated.copy_from_slice(&tag[..MAC_BYTES]);
        truncated
    }
}

/// What a capability says about the create it was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The tenant's shard, 32 hex digits (see `crate::kling::task::tenant_shard`).
    pub shard: String,
    /// 32 hex digits, fresh for each create.
    pub nonce: String,
    /// Epoch seconds after which the capability is refused.
    pub expires_at: u32,
    /// The endpoint's code (see `crate::api::Endpoint::code`).
    pub endpoint: u8,
    /// The Kling account the create went to, unless it is the deployment's first.
    pub account: Option<String>,
}

/// Why a capability was refused (never shown to the caller in detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    BadMac,
    Expired,
}

impl Capability {
    /// A capability for one create, valid for [`LIFETIME_SECS`] from `now_secs`.
    pub fn issue(shard: &str, nonce: [u8; NONCE_BYTES], endpoint: u8, now_secs: i64) -> Capability {
        let expires_at = u32::try_from(now_secs.saturating_add(LIFETIME_SECS).max(0)).unwrap_or(u32::MAX);
        Capability {
            shard: shard.to_owned(),
            nonce: crate::ids::hex(&nonce),
            expires_at,
            endpoint,
            account: None,
        }
    }

    /// The URL-safe form that goes into the callback URL.
    pub fn encode(&self, key: &CapabilityKey) -> String {
        let mut bytes = [0u8; TOTAL_BYTES];
        let shard = decode_hex::<SHARD_BYTES>(&self.shard).unwrap_or_default();
        let nonce = decode_hex::<NONCE_BYTES>(&self.nonce).unwrap_or_default();
        bytes[..SHARD_BYTES].copy_from_slice(&shard);
        bytes[SHARD_BYTES..SHARD_BYTES + NONCE_BYTES].copy_from_slice(&nonce);
        bytes[SHARD_BYTES + NONCE_BYTES..BODY_BYTES - 1].copy_from_slice(&self.expires_at.to_be_bytes());
        bytes[BODY_BYTES - 1] = self.endpoint;
        let account = self.account.as_deref().unwrap_or_default();
        let mac = key.mac(&bytes[..BODY_BYTES], account);
        bytes[BODY_BYTES..].copy_from_slice(&mac);
        let mut encoded = Base64UrlUnpadded::encode_string(&bytes);
        encoded.push_str(account);
        encoded
    }

    /// Checks an encoded capability at `now_secs`: its form, its MAC (in constant time),
    /// then its expiry.
    pub fn verify(encoded: &str, key: &CapabilityKey, now_secs: i64) -> Result<Capability, Refusal> {
        let (encoded, account) = encoded.split_at_checked(ENCODED_CHARS).ok_or(Refusal::Malformed)?;
        if !account.is_empty() && !crate::accounts::is_account_name(account) {
            return Err(Refusal::Malformed);
        }
        let mut bytes = [0u8; TOTAL_BYTES];
        let decoded = Base64UrlUnpadded::decode(encoded, &mut bytes).map_err(|_| Refusal::Malformed)?;
        if decoded.len() != TOTAL_BYTES {
            return Err(Refusal::Malformed);
        }
        let expected = key.mac(&bytes[..BODY_BYTES], account);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &bytes[BODY_BYTES..])) {
            return Err(Refusal::BadMac);
        }
        let mut expiry = [0u8; 4];
        expiry.copy_from_slice(&bytes[SHARD_BYTES + NONCE_BYTES..BODY_BYTES - 1]);
        let capability = Capability {
            shard: crate::ids::hex(&bytes[..SHARD_BYTES]),
            nonce: crate::ids::hex(&bytes[SHARD_BYTES..SHARD_BYTES + NONCE_BYTES]),
            expires_at: u32::from_be_bytes(expiry),
            endpoint: bytes[BODY_BYTES - 1],
            account: (!account.is_empty()).then(|| account.to_owned()),
        };
        if now_secs > i64::from(capability.expires_at) {
            return Err(Refusal::Expired);
        }
        Ok(capability)
    }
}

/// Whether a path segment has a capability's form (checked before anything else).
pub fn looks_like_capability(segment: &str) -> bool {
    (ENCODED_CHARS..=ENCODED_CHARS + 32).contains(&segment.len())
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const SHARD: &str = "00112233445566778899aabbccddeeff";

    fn key() -> CapabilityKey {
        CapabilityKey::derive("sk-example", "")
    }

    fn issued() -> Capability {
        Capability::issue(SHARD, [7; 16], 3, NOW)
    }

    #[test]
    fn round_trips_and_is_url_safe() {
        let encoded = issued().encode(&key());
        assert_eq!(encoded.len(), ENCODED_CHARS);
        assert_eq!(ENCODED_CHARS, 71);
        assert!(looks_like_capability(&encoded));
        let verified = Capability::verify(&encoded, &key(), NOW + 60).unwrap();
        assert_eq!(verified, issued());
        assert_eq!(verified.nonce, "07".repeat(16));
        assert_eq!(i64::from(verified.expires_at), NOW + LIFETIME_SECS);
    }

    #[test]
    fn each_create_gets_a_fresh_one() {
        let a = Capability::issue(SHARD, [1; 16], 3, NOW).encode(&key());
        let b = Capability::issue(SHARD, [2; 16], 3, NOW).encode(&key());
        assert_ne!(a, b);
    }

    #[test]
    fn forged_altered_and_expired_ones_are_refused() {
        let encoded = issued().encode(&key());
        assert_eq!(
            Capability::verify(&encoded, &CapabilityKey::derive("another", ""), NOW),
            Err(Refusal::BadMac)
        );
        // Every single-character change is caught (the MAC covers every byte).
        for position in 0..encoded.len() {
            let mut altered: Vec<u8> = encoded.clone().into_bytes();
            altered[position] = if altered[position] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert!(Capability::verify(&altered, &key(), NOW).is_err(), "position {position}");
        }
        assert_eq!(Capability::verify(&encoded, &key(), NOW + LIFETIME_SECS + 1), Err(Refusal::Expired));
        for garbage in ["", "abc", &encoded[1..], &format!("{encoded}A"), &"!".repeat(71)] {
            assert!(Capability::verify(garbage, &key(), NOW).is_err(), "{garbage}");
        }
        // Another shard or endpoint with the original MAC is refused.
        let mut moved = issued();
        moved.shard = "ff".repeat(16);
        let mut bytes = [0u8; TOTAL_BYTES];
        Base64UrlUnpadded::decode(moved.encode(&key()), &mut bytes).unwrap();
        let mut original = [0u8; TOTAL_BYTES];
        Base64UrlUnpadded::decode(&encoded, &mut original).unwrap();
        bytes[BODY_BYTES..].copy_from_slice(&original[BODY_BYTES..]);
        assert_eq!(
            Capability::verify(&Base64UrlUnpadded::encode_string(&bytes), &key(), NOW),
            Err(Refusal::BadMac)
        );
    }

    #[test]
    fn a_capability_names_its_account_and_the_mac_covers_it() {
        let mut spare = issued();
        spare.account = Some("spare".into());
        let encoded = spare.encode(&key());
        assert_eq!(encoded.len(), ENCODED_CHARS + "spare".len());
        assert!(encoded.starts_with(&issued().encode(&key())[..ENCODED_CHARS - 22]), "the same body");
        assert!(looks_like_capability(&encoded));
        assert_eq!(Capability::verify(&encoded, &key(), NOW).unwrap(), spare);
        // Another account's name, or none, with this MAC is refused.
        let moved = format!("{}main", &encoded[..ENCODED_CHARS]);
        assert_eq!(Capability::verify(&moved, &key(), NOW), Err(Refusal::BadMac));
        assert_eq!(Capability::verify(&encoded[..ENCODED_CHARS], &key(), NOW), Err(Refusal::BadMac));
        assert_eq!(Capability::verify(&format!("{encoded}.x"), &key(), NOW), Err(Refusal::Malformed));
    }

    #[test]
    fn known_answer() {
        // Python: k = hmac.new(b"sk-example", b"kling-edge callback capability key v1", sha256).digest();
        // body = bytes.fromhex(SHARD) + b"\x07"*16 + (NOW+604800).to_bytes(4,"big") + b"\x03";
        // base64.urlsafe_b64encode(body + hmac.new(k, b"kling-edge callback v1" + body, sha256).digest()[:16])
        assert_eq!(
            issued().encode(&key()),
            "ABEiM0RVZneImaq7zN3u_wcHBwcHBwcHBwcHBwcHBwdrUwyAAzLO_-z5i680DS08k4cO1Bw"
        );
    }
}
