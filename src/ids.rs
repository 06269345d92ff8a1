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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(request_id([0x5a; 16]).len(), 32);
    }
}
