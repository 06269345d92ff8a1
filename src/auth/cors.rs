//! CORS: which browser origins may call the worker, and the headers that say so.
//!
//! `ALLOWED_ORIGINS` lists exact origins. A request from one of them gets
//! `Access-Control-Allow-Origin` with exactly that origin (never `*`, and never a list:
//! browsers reject a header naming several origins, which is what
//! `worker::Cors::with_origins` would send) and `Vary: Origin`. Any other origin gets no
//! grant, so the browser withholds the answer from the page.

use url::Url;

pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";
/// `Range` and `If-None-Match` for the result copies (seeking, revalidating);
/// `Idempotency-Key` for creates a page may retry.
pub const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Range, If-None-Match, Idempotency-Key";
/// Headers a page may read from an answer (the last four from a result copy's).
pub const EXPOSED_HEADERS: &str =
    "X-Request-Id, Retry-After, Content-Range, Content-Length, Accept-Ranges, ETag, X-Kling-Edge-Ignored, Idempotent-Replayed";
/// How long a browser may cache a preflight (Chromium caps this at 2 hours).
pub const MAX_AGE_SECS: u32 = 7200;

/// The origins from `ALLOWED_ORIGINS`, normalised (`https://app.example.com`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    pub fn parse(raw: &str) -> Result<AllowedOrigins, &'static str> {
        let mut origins = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return Err("must list exact origins: '*' is never allowed");
            }
            origins.push(normalise(entry).ok_or("must list origins like https://app.example.com (no path)")?);
        }
        Ok(AllowedOrigins(origins))
    }

    /// The origin to grant, if the request's `Origin` is allowed. Browsers always send the
    /// canonical form (`https://app.example.com`), so only that form is granted: other
    /// spellings of an allowed origin (`HTTPS://APP.EXAMPLE.COM`, a trailing `/`) are not.
    pub fn grant<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        let origin = origin?;
        let canonical = normalise(origin)?;
        (canonical == origin && self.0.contains(&canonical)).then_some(origin)
    }
}

/// `scheme://host[:port]`, lowercase, default port dropped; `None` if it is not an origin.
fn normalise(origin: &str) -> Option<String> {
    let url = Url::parse(origin).ok()?;
    let bare = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
    let plain = url.username().is_empty() && url.password().is_none();
    if !bare || !plain || !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

/// The CORS headers of an ordinary answer.
pub fn response_headers(granted: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("Vary", "Origin".to_owned())];
    if let Some(origin) = granted {
        headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
        headers.push(("Access-Control-Expose-Headers", EXPOSED_HEADERS.to_owned()));
    }
    headers
}

/// The headers of a preflight answer (204).
pub fn preflight_headers(granted: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("Vary", "Origin".to_owned())];
    if let Some(origin) = granted {
        headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
        headers.push(("Access-Control-Allow-Methods", ALLOWED_METHODS.to_owned()));
        headers.push(("Access-Control-Allow-Headers", ALLOWED_HEADERS.to_owned()));
        headers.push(("Access-Control-Max-Age", MAX_AGE_SECS.to_string()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedOrigins {
        AllowedOrigins::parse("https://app.example.com, http://localhost:5173,https://Admin.Example.com:443/")
            .unwrap()
    }

    #[test]
    fn grants_exactly_the_listed_origins() {
        let origins = allowed();
        assert_eq!(origins.grant(Some("https://app.example.com")), Some("https://app.example.com"));
        assert_eq!(origins.grant(Some("http://localhost:5173")), Some("http://localhost:5173"));
        assert_eq!(origins.grant(Some("https://admin.example.com")), Some("https://admin.example.com"));
        for other in [
            "https://evil.example.com",
            "http://app.example.com",
            "https://app.example.com.evil.com",
            "https://app.example.com:8443",
            "http://localhost:5174",
            "null",
            "*",
            "",
            "https://APP.EXAMPLE.COM",
            "https://app.example.com/",
            "https://app.example.com:443",
        ] {
            assert_eq!(origins.grant(Some(other)), None, "{other}");
        }
        assert_eq!(origins.grant(None), None);
    }

    #[test]
    fn an_empty_list_grants_nothing() {
        let none = AllowedOrigins::parse("").unwrap();
        assert_eq!(none.grant(Some("https://app.example.com")), None);
        assert_eq!(AllowedOrigins::default().grant(Some("http://localhost")), None);
    }

    #[test]
    fn wildcards_and_paths_are_configuration_errors() {
        assert!(AllowedOrigins::parse("*").is_err());
        assert!(AllowedOrigins::parse("https://a.example.com,*").is_err());
        assert!(AllowedOrigins::parse("https://a.example.com/app").is_err());
        assert!(AllowedOrigins::parse("app.example.com").is_err());
    }

    #[test]
    fn headers_never_carry_a_wildcard_or_a_list() {
        let granted = preflight_headers(Some("https://app.example.com"));
        let value = |name: &str| granted.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(value("Access-Control-Allow-Origin").as_deref(), Some("https://app.example.com"));
        assert_eq!(value("Access-Control-Allow-Headers").as_deref(), Some(ALLOWED_HEADERS));
        assert!(ALLOWED_HEADERS.contains("Range"), "a page may seek in a result copy");
        assert_eq!(value("Vary").as_deref(), Some("Origin"));
        assert!(value("Access-Control-Max-Age").is_some());
        let refused = preflight_headers(None);
        assert_eq!(refused, vec![("Vary", "Origin".to_owned())]);
        assert_eq!(response_headers(None), vec![("Vary", "Origin".to_owned())]);
        assert!(response_headers(Some("https://a.example.com")).iter().all(|(_, v)| v != "*"));
    }
}
