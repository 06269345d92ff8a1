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

/// Where a redirect from `current` to `location` (its `Location` header) leads, if the
/// worker may follow it: an http(s) URL with a host, public unless `allow_private`.
pub fn redirect_target(current: &Url, location: Option<&str>, allow_private: bool) -> Result<Url, String> {
    let next = current
        .join(location.unwrap_or_default())
        .ok()
        .filter(|next| {
            matches!(next.scheme(), "http" | "https") && next.host_str().is_some_and(|h| !h.is_empty())
        })
        .ok_or_else(|| "redirects to something that is not an http(s) URL".to_owned())?;
    if !next.username().is_empty() || next.password().is_some() {
        return Err("redirects to a URL with credentials in it (user info)".to_owned());
    }
    if !allow_private {
        check_public(&next)
            .map_err(|reason| format!("redirects to a private or local address ({reason})"))?;
    }
    Ok(next)
}

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
    &["localhost", "local", "internal", "localdomain", "home.arpa", "lan", "intranet", "corp", "svc"];

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

/// A block of IANA's special-purpose registries: the address, the prefix length, what it is,
/// and whether IANA marks it globally reachable. The most specific block containing an
/// address decides (`192.0.0.9/32` is reachable inside the unreachable `192.0.0.0/24`).
struct Block<A> {
    network: A,
    prefix: u8,
    name: &'static str,
    globally_reachable: bool,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, name: &'static str, reachable: bool) -> Block<u32> {
    Block { network: u32::from_be_bytes([a, b, c, d]), prefix, name, globally_reachable: reachable }
}

const fn v6(network: u128, prefix: u8, name: &'static str, reachable: bool) -> Block<u128> {
    Block { network, prefix, name, globally_reachable: reachable }
}

/// IANA's IPv4 Special-Purpose Address Registry (as of 2026), plus multicast.
const IPV4_SPECIAL: &[Block<u32>] = &[
    v4(0, 0, 0, 0, 8, "unspecified (this network)", false),
    v4(10, 0, 0, 0, 8, "private (RFC 1918)", false),
    v4(100, 64, 0, 0, 10, "shared address space (CGNAT)", false),
    v4(127, 0, 0, 0, 8, "loopback", false),
    v4(169, 254, 0, 0, 16, "link-local (cloud metadata)", false),
    v4(172, 16, 0, 0, 12, "private (RFC 1918)", false),
    v4(192, 0, 0, 0, 24, "reserved for protocol assignments", false),
    v4(192, 0, 0, 9, 32, "PCP anycast", true),
    v4(192, 0, 0, 10, 32, "TURN anycast", true),
    v4(192, 0, 2, 0, 24, "reserved for documentation", false),
    v4(192, 31, 196, 0, 24, "AS112", true),
    v4(192, 52, 193, 0, 24, "AMT", true),
    v4(192, 88, 99, 0, 24, "a deprecated 6to4 relay anycast address", false),
    v4(192, 168, 0, 0, 16, "private (RFC 1918)", false),
    v4(192, 175, 48, 0, 24, "AS112 direct delegation", true),
    v4(198, 18, 0, 0, 15, "reserved for benchmarking", false),
    v4(198, 51, 100, 0, 24, "reserved for documentation", false),
    v4(203, 0, 113, 0, 24, "reserved for documentation", false),
    v4(224, 0, 0, 0, 4, "multicast", false),
    v4(240, 0, 0, 0, 4, "reserved (or broadcast)", false),
];

/// IANA's IPv6 Special-Purpose Address Registry (as of 2026). Blocks that embed an IPv4
/// address (mapped, translated, compatible, NAT64, 6to4) are judged by that address first.
const IPV6_SPECIAL: &[Block<u128>] = &[
    v6(0x0100_0000_0000_0000 << 64, 64, "discard-only", false),
    v6(0x0100_0000_0000_0001 << 64, 64, "a dummy prefix", false),
    v6(0x2001_0000 << 96, 23, "reserved for protocol assignments", false),
    v6(0x2001_0000 << 96, 32, "a Teredo tunnel address", false),
    v6((0x2001_0001 << 96) | 1, 128, "PCP anycast", true),
    v6((0x2001_0001 << 96) | 2, 128, "TURN anycast", true),
    v6((0x2001_0001 << 96) | 3, 128, "DNS-SD SRP anycast", true),
    v6(0x2001_0002_0000 << 80, 48, "reserved for benchmarking", false),
    v6(0x2001_0003 << 96, 32, "AMT", true),
    v6(0x2001_0004_0112 << 80, 48, "AS112", true),
    v6(0x2001_0010 << 96, 28, "deprecated ORCHID", false),
    v6(0x2001_0020 << 96, 28, "ORCHIDv2", true),
    v6(0x2001_0030 << 96, 28, "drone remote ID tags", true),
    v6(0x2001_0db8 << 96, 32, "reserved for documentation", false),
    v6(0x2620_004f_8000 << 80, 48, "AS112 direct delegation", true),
    v6(0x3fff << 112, 20, "reserved for documentation", false),
    v6(0x5f00 << 112, 16, "SRv6 segment identifiers", false),
    v6(0xfc00 << 112, 7, "unique local (private)", false),
    v6(0xfe80 << 112, 10, "link-local", false),
    v6(0xfec0 << 112, 10, "site-local (private)", false),
    v6(0xff00 << 112, 8, "multicast", false),
];

fn most_specific<A: Copy + Into<u128>>(blocks: &[Block<A>], address: u128, bits: u8) -> Option<&Block<A>> {
    blocks
        .iter()
        .filter(|block| {
            let shift = bits - block.prefix;
            let network: u128 = block.network.into();
            shift >= bits || (address >> shift) == (network >> shift)
        })
        .max_by_key(|block| block.prefix)
}

/// The special-purpose range an IPv4 address is in, if it is not globally reachable.
pub fn ipv4_range(address: Ipv4Addr) -> Option<&'static str> {
    if address == Ipv4Addr::BROADCAST {
        return Some("broadcast");
    }
    match most_specific(IPV4_SPECIAL, u32::from(address).into(), 32) {
        Some(block) if !block.globally_reachable => Some(block.name),
        _ => None,
    }
}

/// The special-purpose range an IPv6 address is in, if it is not globally reachable.
/// Anything outside the global unicast space `2000::/3` is refused as well: nothing else is
/// routed on the Internet, save the NAT64 prefix, which is judged by its IPv4 address.
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
        // ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (translated) and ::a.b.c.d (compatible)
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] | [0, 0, 0, 0, 0, 0, _, _] => {
            return Some(ipv4_range(embedded_low()).unwrap_or("an IPv4-embedding address"))
        }
        // NAT64's well-known prefix: as reachable as the IPv4 address it carries
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return ipv4_range(embedded_low()),
        [0x64, 0xff9b, 1, ..] => return Some("local-use NAT64"),
        // 6to4: judged by its IPv4 address, and refused anyway (IANA: not globally reachable)
        [0x2002, high, low, ..] => {
            let embedded = Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
            return Some(ipv4_range(embedded).unwrap_or("a 6to4 address"));
        }
        _ => {}
    }
    match most_specific(IPV6_SPECIAL, u128::from(address), 128) {
        Some(block) if !block.globally_reachable => Some(block.name),
        Some(_) => None,
        None if segments[0] & 0xe000 != 0x2000 => Some("outside the global unicast range (2000::/3)"),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redirects_lead_only_to_public_http_urls() {
        let here = Url::parse("https://cdn.example.com/a/clip.mp4").unwrap();
        assert_eq!(
            redirect_target(&here, Some("b.mp4"), false).unwrap().as_str(),
            "https://cdn.example.com/a/b.mp4"
        );
        assert_eq!(
            redirect_target(&here, Some("https://other.example.net/x"), false).unwrap().host_str(),
            Some("other.example.net")
        );
        assert!(redirect_target(&here, Some("http://127.0.0.1/x"), false)
            .unwrap_err()
            .contains("private or local"));
        assert!(redirect_target(&here, Some("http://127.0.0.1/x"), true).is_ok());
        assert!(redirect_target(&here, Some("file:///etc/passwd"), true)
            .unwrap_err()
            .contains("not an http(s) URL"));
        assert!(redirect_target(&here, Some("data:text/plain,x"), false).is_err());
        assert_eq!(
            redirect_target(&here, None, false).unwrap(),
            here,
            "no Location: the same URL (a loop the caller counts)"
        );
    }

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
            ("http://[2002:808:808::1]/", "6to4"),
            ("http://[::ffff:0:127.0.0.1]/", "loopback"),
            ("http://[::ffff:0:a9fe:a9fe]/", "metadata"),
            ("http://[::ffff:0:8.8.8.8]/", "IPv4-embedding"),
            ("http://[2001:2::1]/", "benchmarking"),
            ("http://[3fff::1]/", "documentation"),
            ("http://[5f00::1]/", "SRv6"),
            ("http://[2001:10::1]/", "ORCHID"),
            ("http://[4000::1]/", "2000::/3"),
        ] {
            let error = verdict(raw).expect_err(raw);
            assert!(error.contains(words), "{raw}: {error}");
        }
    }

    #[test]
    fn redirects_with_user_info_are_not_followed() {
        let from = Url::parse("https://cdn.example.com/a.mp4").unwrap();
        for location in ["https://user:secret@cdn.example.com/b.mp4", "https://user@cdn.example.com/b.mp4"] {
            let refused = redirect_target(&from, Some(location), true).unwrap_err();
            assert!(refused.contains("user info"), "{location}: {refused}");
        }
        assert!(redirect_target(&from, Some("/b.mp4"), false).is_ok());
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
            "http://kubernetes.default.svc/",
        ] {
            assert!(verdict(raw).is_err(), "{raw}");
        }
    }

    /// IANA's IPv4 and IPv6 Special-Purpose Address Registries, row by row (as of 2026),
    /// with an address inside each and whether IANA calls it globally reachable: the guard
    /// must refuse exactly the rows that are not. Rows IANA leaves blank or N/A (Teredo,
    /// 6to4, the terminated 6to4 relay and ORCHID blocks) are refused too.
    #[test]
    fn the_guard_follows_the_iana_special_purpose_registries() {
        const REGISTRY: &[(&str, &str, bool)] = &[
            ("0.0.0.0/8", "0.1.2.3", false),
            ("0.0.0.0/32", "0.0.0.0", false),
            ("10.0.0.0/8", "10.1.2.3", false),
            ("100.64.0.0/10", "100.64.0.1", false),
            ("127.0.0.0/8", "127.0.0.1", false),
            ("169.254.0.0/16", "169.254.169.254", false),
            ("172.16.0.0/12", "172.16.0.1", false),
            ("192.0.0.0/24", "192.0.0.100", false),
            ("192.0.0.0/24, unassigned", "192.0.0.11", false),
            ("192.0.0.0/29", "192.0.0.1", false),
            ("192.0.0.8/32", "192.0.0.8", false),
            ("192.0.0.9/32", "192.0.0.9", true),
            ("192.0.0.10/32", "192.0.0.10", true),
            ("192.0.0.170/32", "192.0.0.170", false),
            ("192.0.0.171/32", "192.0.0.171", false),
            ("192.0.2.0/24", "192.0.2.1", false),
            ("192.31.196.0/24", "192.31.196.1", true),
            ("192.52.193.0/24", "192.52.193.1", true),
            ("192.88.99.0/24", "192.88.99.1", false),
            ("192.88.99.2/32", "192.88.99.2", false),
            ("192.168.0.0/16", "192.168.1.1", false),
            ("192.175.48.0/24", "192.175.48.1", true),
            ("198.18.0.0/15", "198.19.255.255", false),
            ("198.51.100.0/24", "198.51.100.1", false),
            ("203.0.113.0/24", "203.0.113.1", false),
            ("240.0.0.0/4", "240.0.0.1", false),
            ("255.255.255.255/32", "255.255.255.255", false),
            ("224.0.0.0/4 (multicast registry)", "224.0.0.1", false),
            ("::1/128", "[::1]", false),
            ("::/128", "[::]", false),
            ("::ffff:0:0/96", "[::ffff:7f00:1]", false),
            ("::ffff:0:0:0/96 (RFC 2765, translated)", "[::ffff:0:7f00:1]", false),
            ("64:ff9b::/96, public inside", "[64:ff9b::808:808]", true),
            ("64:ff9b::/96, loopback inside", "[64:ff9b::7f00:1]", false),
            ("64:ff9b:1::/48", "[64:ff9b:1::a00:1]", false),
            ("100::/64", "[100::1]", false),
            ("100:0:0:1::/64", "[100:0:0:1::1]", false),
            ("2001::/23", "[2001:100::1]", false),
            ("2001::/23, unassigned", "[2001:1::4]", false),
            ("2001::/23, unassigned", "[2001:1ff:ffff::1]", false),
            ("2001::/32", "[2001::1]", false),
            ("2001:1::1/128", "[2001:1::1]", true),
            ("2001:1::2/128", "[2001:1::2]", true),
            ("2001:1::3/128", "[2001:1::3]", true),
            ("2001:2::/48", "[2001:2::1]", false),
            ("2001:3::/32", "[2001:3::1]", true),
            ("2001:4:112::/48", "[2001:4:112::1]", true),
            ("2001:10::/28", "[2001:10::1]", false),
            ("2001:20::/28", "[2001:20::1]", true),
            ("2001:20::/28, last", "[2001:2f:ffff::1]", true),
            ("2001:30::/28", "[2001:30::1]", true),
            ("2001:db8::/32", "[2001:db8::1]", false),
            ("2002::/16", "[2002:808:808::1]", false),
            ("2620:4f:8000::/48", "[2620:4f:8000::1]", true),
            ("3fff::/20", "[3fff::1]", false),
            ("3fff::/20, last", "[3fff:fff:ffff::1]", false),
            ("5f00::/16", "[5f00::1]", false),
            ("fc00::/7", "[fd00::1]", false),
            ("fe80::/10", "[fe80::1]", false),
            ("fec0::/10 (deprecated site-local)", "[fec0::1]", false),
            ("ff00::/8 (multicast)", "[ff02::1]", false),
            ("outside every block: global unicast", "[2001:200::1]", true),
            ("outside every block: global unicast", "[3fff:1000::1]", true),
            ("outside every block: global unicast", "[2606:4700::1111]", true),
            ("outside every block: global unicast", "8.8.8.8", true),
            ("outside 2000::/3: unallocated", "[4000::1]", false),
        ];
        for (row, host, reachable) in REGISTRY {
            let verdict = verdict(&format!("https://{host}/clip.mp4"));
            assert_eq!(verdict.is_ok(), *reachable, "{row}: {host} -> {verdict:?}");
        }
    }
}
