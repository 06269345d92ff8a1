//! The rules every request shares, whatever its endpoint: URLs (absolute http(s), a public
//! host, a bounded length), identifiers (task ids, external task ids) and list pagination.
//! The rules of each create body are tables in `crate::api`; they build on these.
//!
//! A rejection is a 400 in Kling's envelope whose message starts with the field's name and
//! states the rule (`"pageSize: must be a whole number from 1 to 500"`).

use url::Url;

use crate::error::ApiError;
use crate::url_safety;

pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_PAGE_NUM: u32 = 1000;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const DEFAULT_PAGE_SIZE: u32 = 30;
pub const IDENTIFIER_RULE: &str = "must be 1 to 64 characters, each a letter, digit, '-', '_', '.' or ':'";

/// Whether URLs may point at private and local addresses (`ALLOW_PRIVATE_URLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UrlPolicy {
    pub allow_private: bool,
}

/// Checks a task id or external task id (from a path or a body).
pub fn task_id(field: &str, id: &str) -> Result<(), ApiError> {
    if is_identifier(id) {
        Ok(())
    } else {
        Err(ApiError::bad_param(field, IDENTIFIER_RULE))
    }
}

fn is_identifier(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// An absolute http(s) URL with a host, without user info, at most 2048 characters, and
/// (unless the policy allows it) not aimed at a private or local address.
pub fn http_url(field: &str, raw: &str, policy: UrlPolicy) -> Result<Url, ApiError> {
    let chars = raw.chars().count();
    if chars > MAX_URL_CHARS {
        return Err(ApiError::bad_param(
            field,
            format!("must be at most {MAX_URL_CHARS} characters (got {chars})"),
        ));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_param(field, "must not contain spaces or control characters"));
    }
    let not_http = || ApiError::bad_param(field, "must be an absolute http or https URL");
    let url = Url::parse(raw).map_err(|_| not_http())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(not_http());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_param(field, "must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::bad_param(field, "must not contain user info (user:password@)"));
    }
    // What is forwarded is the normalised form, which percent-encodes what needs it.
    let normalised = url.as_str().chars().count();
    if normalised > MAX_URL_CHARS {
        return Err(ApiError::bad_param(
            field,
            format!("must be at most {MAX_URL_CHARS} characters once percent-encoded (got {normalised})"),
        ));
    }
    if !policy.allow_private {
        if let Err(reason) = url_safety::check_public(&url) {
            return Err(ApiError::bad_param(
                field,
                format!("must not point to a private or local address ({reason})"),
            ));
        }
    }
    Ok(url)
}

/// The extension of the URL path's last segment, if it has one.
pub fn path_extension(url: &Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    let last = percent_encoding::percent_decode_str(last).decode_utf8_lossy();
    let (stem, extension) = last.rsplit_once('.')?;
    (!stem.is_empty() || !extension.is_empty()).then(|| extension.to_owned())
}

/// One page of a list: `pageNum` 1..=1000, `pageSize` 1..=500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub num: u32,
    pub size: u32,
}

/// Parses a list call's query string.
pub fn page(query: Option<&str>) -> Result<Page, ApiError> {
    let mut num = None;
    let mut size = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let (slot, max) = match name.as_ref() {
            "pageNum" => (&mut num, MAX_PAGE_NUM),
            "pageSize" => (&mut size, MAX_PAGE_SIZE),
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(ApiError::bad_param(
                    &shown,
                    "unknown query parameter (expected pageNum, pageSize)",
                ));
            }
        };
        if slot.is_some() {
            return Err(ApiError::bad_param(&name, "must be given at most once"));
        }
        let parsed = value.parse::<u32>().ok().filter(|n| (1..=max).contains(n));
        *slot =
            Some(parsed.ok_or_else(|| {
                ApiError::bad_param(&name, format!("must be a whole number from 1 to {max}"))
            })?);
    }
    Ok(Page { num: num.unwrap_or(1), size: size.unwrap_or(DEFAULT_PAGE_SIZE) })
}

/// The query of `GET /account/costs`: Kling's `start_time` and `end_time` (epoch ms, both
/// required, start first) and an optional `resource_pack_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostsQuery {
    pub start_time: u64,
    pub end_time: u64,
    pub resource_pack_name: Option<String>,
}

impl CostsQuery {
    /// The query string sent on to Kling, rebuilt from the checked values.
    pub fn to_query(&self) -> String {
        let mut query = format!("start_time={}&end_time={}", self.start_time, self.end_time);
        if let Some(name) = &self.resource_pack_name {
            query.push_str("&resource_pack_name=");
            query.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
        }
        query
    }
}

/// Parses the query string of `GET /account/costs`.
pub fn costs_query(query: Option<&str>) -> Result<CostsQuery, ApiError> {
    let (mut start, mut end, mut name) = (None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let time = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= 99_999_999_999_999)
                .ok_or_else(|| ApiError::bad_param(&key, "must be epoch milliseconds (a whole number)"))
        };
        match key.as_ref() {
            "start_time" if start.is_none() => start = Some(time()?),
            "end_time" if end.is_none() => end = Some(time()?),
            "resource_pack_name" if name.is_none() && value.chars().count() <= 128 => {
                name = Some(value.to_string())
            }
            "resource_pack_name" => {
                return Err(ApiError::bad_param(&key, "must be given once, at most 128 characters"))
            }
            "start_time" | "end_time" => return Err(ApiError::bad_param(&key, "must be given at most once")),
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(ApiError::bad_param(
                    &shown,
                    "unknown query parameter (expected start_time, end_time, resource_pack_name)",
                ));
            }
        }
    }
    let start_time =
        start.ok_or_else(|| ApiError::bad_param("start_time", "is required (epoch milliseconds)"))?;
    let end_time = end.ok_or_else(|| ApiError::bad_param("end_time", "is required (epoch milliseconds)"))?;
    if start_time > end_time {
        return Err(ApiError::bad_param("start_time", "must not be after end_time"));
    }
    Ok(CostsQuery { start_time, end_time, resource_pack_name: name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costs_query_needs_both_times_in_order_and_nothing_else() {
        let query = costs_query(Some("start_time=1&end_time=2&resource_pack_name=Video%20pack")).unwrap();
        assert_eq!(query.to_query(), "start_time=1&end_time=2&resource_pack_name=Video+pack");
        for (raw, field) in [
            ("end_time=2", "start_time"),
            ("start_time=1", "end_time"),
            ("start_time=3&end_time=2", "start_time"),
            ("start_time=x&end_time=2", "start_time"),
            ("start_time=1&end_time=2&debug=1", "debug"),
            ("start_time=1&start_time=1&end_time=2", "start_time"),
        ] {
            let error = costs_query(Some(raw)).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(error.message.starts_with(&format!("{field}:")), "{raw}: {error}");
        }
    }

    const PUBLIC: UrlPolicy = UrlPolicy { allow_private: false };

    #[test]
    fn identifiers() {
        assert!(task_id("external_task_id", "a.b:c_d-1").is_ok());
        assert!(task_id("task_id", &"x".repeat(64)).is_ok());
        for bad in ["", "a b", "ä", "x/y", &"x".repeat(65)] {
            let error = task_id("external_task_id", bad).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(error.message.starts_with("external_task_id: must be 1 to 64"), "{error}");
        }
    }

    #[test]
    fn url_rules() {
        for (url, words) in [
            ("cdn.example.com/a.mp4", "absolute http or https"),
            ("/a.mp4", "absolute http or https"),
            ("ftp://cdn.example.com/a.mp4", "absolute http or https"),
            ("javascript:alert(1)", "absolute http or https"),
            ("file:///etc/passwd", "absolute http or https"),
            ("https://user:pw@cdn.example.com/a.mp4", "user info"),
            ("https://user@cdn.example.com/a.mp4", "user info"),
            ("https://cdn.example.com/a b.mp4", "spaces"),
            ("https://cdn.example.com/a.mp4\n", "control"),
            ("http://10.0.0.1/a.mp4", "private or local address"),
        ] {
            let error = http_url("video_url", url, PUBLIC).unwrap_err();
            assert!(
                error.message.starts_with("video_url:") && error.message.contains(words),
                "{url}: {error}"
            );
        }
        assert!(http_url("video_url", "http://10.0.0.1/a.mp4", UrlPolicy { allow_private: true }).is_ok());
        let long = format!("https://cdn.example.com/{}.mp4", "a".repeat(2048));
        assert!(http_url("video_url", &long, PUBLIC)
            .unwrap_err()
            .message
            .contains("at most 2048 characters"));
        let encoded = format!("https://cdn.example.com/{}.mp4", "中".repeat(2000));
        assert!(http_url("video_url", &encoded, PUBLIC)
            .unwrap_err()
            .message
            .contains("once percent-encoded (got 18028)"));
        assert_eq!(
            http_url("video_url", "HTTPS://CDN.Example.COM/a.mp4", PUBLIC).unwrap().as_str(),
            "https://cdn.example.com/a.mp4"
        );
    }

    #[test]
    fn extensions() {
        let ext = |raw: &str| path_extension(&Url::parse(raw).unwrap());
        assert_eq!(ext("https://cdn.example.com/a.MP4").as_deref(), Some("MP4"));
        assert_eq!(ext("https://cdn.example.com/a%2Ewebm").as_deref(), Some("webm"));
        assert_eq!(ext("https://cdn.example.com/v1.2/video"), None);
        assert_eq!(ext("https://cdn.example.com/"), None);
    }

    #[test]
    fn pagination() {
        assert_eq!(page(None), Ok(Page { num: 1, size: 30 }));
        assert_eq!(page(Some("pageNum=3&pageSize=500")), Ok(Page { num: 3, size: 500 }));
        assert_eq!(page(Some("pageNum=1000&pageSize=1")), Ok(Page { num: 1000, size: 1 }));
        for (query, field) in [
            ("pageNum=0", "pageNum"),
            ("pageNum=1001", "pageNum"),
            ("pageSize=501", "pageSize"),
            ("pageSize=0", "pageSize"),
            ("pageSize=-1", "pageSize"),
            ("pageSize=2.5", "pageSize"),
            ("pageSize=abc", "pageSize"),
            ("pageNum=", "pageNum"),
            ("pageNum=1&pageNum=2", "pageNum"),
            ("page_size=3", "page_size"),
        ] {
            let error = page(Some(query)).unwrap_err();
            assert_eq!(error.status, 400, "{query}");
            assert!(error.message.starts_with(&format!("{field}:")), "{query}: {error}");
        }
    }
}
