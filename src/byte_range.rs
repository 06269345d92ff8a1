//! The `Range` header of a GET (RFC 9110, section 14): one range of bytes, which the storage
//! is asked for without knowing the object's size, then resolved against the size it has
//! for the `Content-Range` of the answer.
//!
//! Only single ranges are served as such; a header that asks for several, or that this does
//! not understand, is ignored (the whole object, 200), as the RFC allows.

/// The largest offset taken: offsets and lengths go to the storage as JavaScript numbers,
/// exact up to 2^53 - 1, and a length is at most one more than an offset.
const MAX_OFFSET: u64 = (1 << 53) - 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last` (inclusive).
    FromTo { first: u64, last: u64 },
    /// `bytes=first-`.
    From { first: u64 },
    /// `bytes=-length`: the last `length` bytes.
    Suffix { length: u64 },
}

impl ByteRange {
    /// The range a header asks for, if it asks for exactly one this understands.
    pub fn parse(header: Option<&str>) -> Option<ByteRange> {
        let spec = header?.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |text: &str| -> Option<u64> {
            let text = text.trim();
            (!text.is_empty() && text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())
                .flatten()
                .filter(|n| *n <= MAX_OFFSET)
        };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, false) => Some(ByteRange::Suffix { length: number(last)? }),
            (false, true) => Some(ByteRange::From { first: number(first)? }),
            (false, false) => {
                let (first, last) = (number(first)?, number(last)?);
                (first <= last).then_some(ByteRange::FromTo { first, last })
            }
            (true, true) => None,
        }
    }

    /// The bytes served of an object of `size` bytes, as `(offset, length)`; `None` when the
    /// range cannot be satisfied (416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo { first, last } if first < size => {
                Some((first, last.min(size - 1) - first + 1))
            }
            ByteRange::From { first } if first < size => Some((first, size - first)),
            ByteRange::Suffix { length } if length > 0 && size > 0 => {
                let length = length.min(size);
                Some((size - length, length))
            }
            _ => None,
        }
    }
}

/// `Content-Range` of a part: `bytes {first}-{last}/{size}`.
pub fn content_range(offset: u64, length: u64, size: u64) -> String {
    format!("bytes {offset}-{}/{size}", offset + length - 1)
}

/// The entity tags of an `If-None-Match` header, as R2 compares them: each one's opaque
/// part, without `W/` or quotes (`*` for any). `"a", W/"b"` gives `a` and `b`.
pub fn if_none_match(header: &str) -> Vec<String> {
    header
        .split(',')
        .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"').to_owned())
        .filter(|tag| !tag.is_empty())
        .take(32)
        .collect()
}

/// Whether an object with `etag` (its HTTP form, quoted) is among `tags` (see [`if_none_match`]).
pub fn etag_listed(tags: &[String], etag: &str) -> bool {
    let etag = etag.trim_start_matches("W/").trim_matches('"');
    tags.iter().any(|tag| tag == "*" || tag == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_every_tag() {
        let tags = if_none_match(r#""abc", W/"def" , "ghi""#);
        assert_eq!(tags, ["abc", "def", "ghi"]);
        assert!(etag_listed(&tags, "\"def\""));
        assert!(!etag_listed(&tags, "\"xyz\""));
        assert!(etag_listed(&if_none_match("*"), "\"anything\""));
        assert!(if_none_match(" , ").is_empty());
    }

    #[test]
    fn single_ranges_parse_and_resolve() {
        let parse = |h: &str| ByteRange::parse(Some(h));
        assert_eq!(parse("bytes=0-99"), Some(ByteRange::FromTo { first: 0, last: 99 }));
        assert_eq!(parse("bytes=100-"), Some(ByteRange::From { first: 100 }));
        assert_eq!(parse("bytes=-500"), Some(ByteRange::Suffix { length: 500 }));
        assert_eq!(parse(" bytes= 5 - 9 "), Some(ByteRange::FromTo { first: 5, last: 9 }));
        assert_eq!(parse("bytes=0-99").unwrap().resolve(1000), Some((0, 100)));
        assert_eq!(parse("bytes=900-5000").unwrap().resolve(1000), Some((900, 100)), "clipped to the end");
        assert_eq!(parse("bytes=100-").unwrap().resolve(1000), Some((100, 900)));
        assert_eq!(parse("bytes=-500").unwrap().resolve(300), Some((0, 300)));
        assert_eq!(content_range(900, 100, 1000), "bytes 900-999/1000");
        // The widest range stays a length JavaScript holds exactly.
        let widest = parse("bytes=0-9007199254740990").unwrap();
        assert_eq!(widest, ByteRange::FromTo { first: 0, last: (1 << 53) - 2 });
        assert_eq!(parse("bytes=0-9007199254740991"), None);
    }

    #[test]
    fn what_cannot_be_satisfied_or_understood() {
        let parse = |h: &str| ByteRange::parse(Some(h));
        assert_eq!(parse("bytes=1000-").unwrap().resolve(1000), None);
        assert_eq!(parse("bytes=-0").unwrap().resolve(1000), None);
        assert_eq!(parse("bytes=0-0").unwrap().resolve(0), None);
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=9-1",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=0x1-2",
            "bytes=99999999999999999-",
            "bytes=+1-2",
            "",
            "bytes=1-2-3",
        ] {
            assert_eq!(parse(ignored), None, "{ignored}");
        }
        assert_eq!(ByteRange::parse(None), None);
    }
}
