//! Identifiers the worker mints, from randomness its caller passes in.

use std::fmt::Write;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A request id: 128 random bits as 32 hex digits.
pub fn request_id(random: [u8; 16]) -> String {
    hex(&random)
}

/// A callback token: 128 random bits as 32 hex digits. It is the only secret in the
/// callback URL Kling is given for one task.
pub fn callback_token(random: [u8; 16]) -> String {
    hex(&random)
}

/// Whether `token` has a callback token's form (checked before any lookup).
pub fn is_callback_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(request_id([0x5a; 16]).len(), 32);
    }

    #[test]
    fn callback_tokens() {
        let token = callback_token([0xab; 16]);
        assert!(is_callback_token(&token));
        assert!(!is_callback_token(&token.to_uppercase()));
        assert!(!is_callback_token(&token[1..]));
        assert!(!is_callback_token("zz".repeat(16).as_str()));
    }
}
