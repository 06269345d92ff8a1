//! Whether a URL's host is a public address, so that Kling (which fetches `video_url`) and
//! the worker (which posts to a client's `callback_url`) are never aimed at a private
//! network, a loopback interface or a cloud metadata service.
//!
//! The host is taken from the URL as the WHATWG parser (the `url` crate, like browsers and
//! Kling's fetchers) reads it, so other spellings of an address — `2130706433`,
//! `0x7f.0.0.1`, `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]` — are already normalised to the
//! address they mean before the ranges are checked. Names are checked for the reserved
//! local suffixes and for single labels (`http://metadata/`), which only a local resolver
//! answers. A public name that resolves to a private address (DNS rebinding) cannot be
//! seen here without resolving it.

use std::net::{Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// `Ok` when the URL's host is public; otherwise why not (`"127.0.0.1 is loopback"`).
pub fn check_public(url: &Url) -> Result<(), String> {
    match url.host() {
        None => Err("it has no host".to_owned()),
        Some(Host::Domain(name)) => check_name(name),
        Some(Host::Ipv4(address)) => match ipv4_range(address) {
            Some(range) => Err(format!("{address} is {range}")),
            None => Ok(()),
        },
        Some(Host::Ipv6(address)) => match ipv6_range(address) {
            Some(range) => Err(format!("{address} is {range}")),
            None => Ok(()),
        },
    }
}

const LOCAL_SUFFIXES: &[&str] =
    &["localhost", "local", "internal", "localdomain", "home.arpa", "lan", "intranet", "corp"];

fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err("it has no host".to_owned());
    }
    for suffix in LOCAL_SUFFIXES {
        let matches = name == *suffix || name.strip_suffix(suffix).is_some_and(|head| head.ends_with('.'));
        if matches {
            return Err(format!("{name} is a local name (.{suffix})"));
        }
    }
    if !name.contains('.') {
        return Err(format!("{name} is a single-label (local) name"));
    }
    Ok(())
}

/// The special-purpose range an IPv4 address is in, if any (IANA's registry, less the
/// few ranges that are globally reachable).
pub fn ipv4_range(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (this network)",
        (10, _, _) => "private (RFC 1918)",
        (100, 64..=127, _) => "shared address space (CGNAT)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local (cloud metadata)",
        (172, 16..=31, _) => "private (RFC 1918)",
        (192, 0, 0) => "reserved for protocol assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "reserved for documentation",
        (192, 88, 99) => "a 6to4 relay anycast address",
        (192, 168, _) => "private (RFC 1918)",
        (198, 18..=19, _) => "reserved for benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved (or broadcast)",
        _ => return None,
    })
}

/// The special-purpose range an IPv6 address is in, if any. Addresses that embed an IPv4
/// address (mapped, compatible, NAT64, 6to4) are judged by the address they embed.
pub fn ipv6_range(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    if address.is_unspecified() {
        return Some("unspecified");
    }
    if address.is_loopback() {
        return Some("loopback");
    }
    let embedded_low = || Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7]));
    match segments {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => {
            return Some(ipv4_range(embedded_low()).unwrap_or("an IPv4-embedding address"))
        }
        // NAT64, well-known prefix
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return ipv4_range(embedded_low()),
        [0x64, 0xff9b, 1, ..] => return Some("local-use NAT64"),
        [0x100, 0, 0, 0, ..] => return Some("discard-only"),
        [0x2001, 0x0db8, ..] => return Some("reserved for documentation"),
        [0x2001, 0, ..] => return Some("a Teredo tunnel address"),
        [0x2002, high, low, ..] => {
            let embedded = Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
            return ipv4_range(embedded);
        }
        _ => {}
    }
    match segments[0] {
        0xfc00..=0xfdff => Some("unique local (private)"),
        0xfe80..=0xfebf => Some("link-local"),
        0xfec0..=0xfeff => Some("site-local (private)"),
        0xff00..=0xffff => Some("multicast"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(raw: &str) -> Result<(), String> {
        check_public(&Url::parse(raw).unwrap())
    }

    #[test]
    fn public_hosts_pass() {
        for raw in [
            "https://cdn.example.com/a.mp4",
            "https://8.8.8.8/a.mp4",
            "https://[2606:4700::1111]/a.mp4",
            "https://[2002:808:808::1]/a.mp4",
            "https://[64:ff9b::808:808]/a.mp4",
            "https://172.32.0.1/",
            "https://100.128.0.1/",
            "https://localhost.example.com/",
            "https://my-internal.example.com/",
        ] {
            assert_eq!(verdict(raw), Ok(()), "{raw}");
        }
    }

    #[test]
    fn every_spelling_of_loopback_is_caught() {
        for raw in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://0177.1/",
            "http://017700000001/",
            "http://127.000.000.001/",
            "http://[::1]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[2002:7f00:1::]/",
        ] {
            let error = verdict(raw).expect_err(raw);
            assert!(error.contains("loopback"), "{raw}: {error}");
        }
    }

    #[test]
    fn private_and_special_ranges_are_caught() {
        for (raw, words) in [
            ("http://0.0.0.0/", "unspecified"),
            ("http://0/", "unspecified"),
            ("http://10.1.2.3/", "RFC 1918"),
            ("http://172.16.0.1/", "RFC 1918"),
            ("http://172.31.255.255/", "RFC 1918"),
            ("http://192.168.1.1/", "RFC 1918"),
            ("http://0xc0a80101/", "RFC 1918"),
            ("http://3232235777/", "RFC 1918"),
            ("http://100.64.0.1/", "CGNAT"),
            ("http://100.127.255.255/", "CGNAT"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://0xa9fea9fe/", "metadata"),
            ("http://224.0.0.1/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://192.0.2.1/", "documentation"),
            ("http://198.18.0.1/", "benchmarking"),
            ("http://[::]/", "unspecified"),
            ("http://[fc00::1]/", "unique local"),
            ("http://[fd12:3456::1]/", "unique local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[fec0::1]/", "site-local"),
            ("http://[ff02::1]/", "multicast"),
            ("http://[::ffff:10.0.0.1]/", "RFC 1918"),
            ("http://[::ffff:169.254.169.254]/", "metadata"),
            ("http://[2001:db8::1]/", "documentation"),
            ("http://[2001:0:4136:e378::1]/", "Teredo"),
            ("http://[2002:c0a8:101::1]/", "RFC 1918"),
        ] {
            let error = verdict(raw).expect_err(raw);
            assert!(error.contains(words), "{raw}: {error}");
        }
    }

    #[test]
    fn local_names_are_caught() {
        for raw in [
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://printer.local/",
            "http://metadata.google.internal/",
            "http://box.localdomain/",
            "http://nas.home.arpa/",
            "http://metadata/",
            "http://intranet/",
        ] {
            assert!(verdict(raw).is_err(), "{raw}");
        }
    }
}
