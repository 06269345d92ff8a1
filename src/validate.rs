//! Every rule a client request must pass before anything is sent to Kling.
//!
//! A rejected create never reaches Kling, so it never costs a credit. Each rejection is a
//! 400 in Kling's envelope whose message starts with the field's name and states the rule
//! (`"sound_effect_prompt: must be at most 200 characters (got 230)"`). Unknown fields are
//! rejected too: a typo such as `video_ulr` must not silently create a task without the
//! field the client meant.
//!
//! What is forwarded is rebuilt from the parsed values, never the raw body, so Kling sees
//! exactly what was checked (URLs in their normalised form).

use serde_json::{Map, Value};
use url::Url;

use crate::error::ApiError;
use crate::kling::CreateVideoToAudio;
use crate::routes::Family;
use crate::url_safety;

pub const MAX_PROMPT_CHARS: usize = 200;
pub const MAX_URL_CHARS: usize = 2048;
pub const MIN_VIDEO_SECONDS: f64 = 3.0;
pub const MAX_VIDEO_SECONDS: f64 = 20.0;
pub const MAX_PAGE_NUM: u32 = 1000;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const DEFAULT_PAGE_SIZE: u32 = 30;
pub const IDENTIFIER_RULE: &str = "must be 1 to 64 characters, each a letter, digit, '-', '_', '.' or ':'";

const OFFICIAL_FIELDS: &[&str] = &[
    "video_id",
    "video_url",
    "sound_effect_prompt",
    "bgm_prompt",
    "asmr_mode",
    "callback_url",
    "external_task_id",
    "video_duration",
];
const SIMPLIFIED_FIELDS: &[&str] =
    &["video_url", "prompt", "audio_type", "callback_url", "external_task_id", "video_duration"];
const AUDIO_TYPES: &str = "sound_effect, ambient, music, bgm, asmr";

/// Whether URLs may point at private and local addresses (`ALLOW_PRIVATE_URLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UrlPolicy {
    pub allow_private: bool,
}

/// A create request that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The official body to send upstream; `callback_url` is still the client's own.
    pub upstream: CreateVideoToAudio,
    /// The client's hint of the video's length. Checked here, never sent upstream.
    pub video_duration_seconds: Option<f64>,
}

/// Parses and checks a create body of either path family.
pub fn create_request(family: Family, body: &[u8], policy: UrlPolicy) -> Result<CreateRequest, ApiError> {
    match family {
        Family::Official => official_create(body, policy),
        Family::Simplified => simplified_create(body, policy),
    }
}

fn official_create(body: &[u8], policy: UrlPolicy) -> Result<CreateRequest, ApiError> {
    let mut fields = Fields::parse(body, OFFICIAL_FIELDS)?;
    let video_id = fields.string("video_id")?;
    let video_url = fields.string("video_url")?;
    let upstream = CreateVideoToAudio {
        video_id: match video_id {
            Some(id) => Some(identifier("video_id", id)?),
            None => None,
        },
        video_url: match video_url {
            Some(url) => Some(video_url_rule(&url, policy)?),
            None => None,
        },
        sound_effect_prompt: prompt_rule("sound_effect_prompt", fields.string("sound_effect_prompt")?)?,
        bgm_prompt: prompt_rule("bgm_prompt", fields.string("bgm_prompt")?)?,
        asmr_mode: fields.boolean("asmr_mode")?,
        callback_url: callback_url_rule(fields.string("callback_url")?, policy)?,
        external_task_id: external_task_id_rule(fields.string("external_task_id")?)?,
    };
    match (&upstream.video_id, &upstream.video_url) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_param(
                "video_id",
                "give exactly one of video_id and video_url, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_param(
                "video_url",
                "is required (or video_id): give exactly one of video_id and video_url",
            ))
        }
        _ => {}
    }
    let video_duration_seconds = video_duration_rule(fields.number("video_duration")?)?;
    Ok(CreateRequest { upstream, video_duration_seconds })
}

fn simplified_create(body: &[u8], policy: UrlPolicy) -> Result<CreateRequest, ApiError> {
    let mut fields = Fields::parse(body, SIMPLIFIED_FIELDS)?;
    let video_url = match fields.string("video_url")? {
        Some(url) => video_url_rule(&url, policy)?,
        None => return Err(ApiError::bad_param("video_url", "is required")),
    };
    let prompt = prompt_rule("prompt", fields.string("prompt")?)?;
    let audio_type = fields.string("audio_type")?;
    let mut upstream = CreateVideoToAudio {
        video_url: Some(video_url),
        callback_url: callback_url_rule(fields.string("callback_url")?, policy)?,
        external_task_id: external_task_id_rule(fields.string("external_task_id")?)?,
        ..CreateVideoToAudio::default()
    };
    match audio_type.as_deref().unwrap_or("sound_effect") {
        "sound_effect" | "ambient" => upstream.sound_effect_prompt = prompt,
        "music" | "bgm" => upstream.bgm_prompt = prompt,
        "asmr" => {
            upstream.sound_effect_prompt = prompt;
            upstream.asmr_mode = Some(true);
        }
        _ => return Err(ApiError::bad_param("audio_type", format!("must be one of {AUDIO_TYPES}"))),
    }
    let video_duration_seconds = video_duration_rule(fields.number("video_duration")?)?;
    Ok(CreateRequest { upstream, video_duration_seconds })
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

fn identifier(field: &str, id: String) -> Result<String, ApiError> {
    task_id(field, &id).map(|()| id)
}

fn external_task_id_rule(id: Option<String>) -> Result<Option<String>, ApiError> {
    id.map(|id| identifier("external_task_id", id)).transpose()
}

fn prompt_rule(field: &str, prompt: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(prompt) = &prompt {
        let chars = prompt.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(ApiError::bad_param(
                field,
                format!("must be at most {MAX_PROMPT_CHARS} characters (got {chars})"),
            ));
        }
    }
    Ok(prompt)
}

fn video_duration_rule(seconds: Option<f64>) -> Result<Option<f64>, ApiError> {
    match seconds {
        Some(s) if !(MIN_VIDEO_SECONDS..=MAX_VIDEO_SECONDS).contains(&s) => Err(ApiError::bad_param(
            "video_duration",
            format!(
                "must be from {MIN_VIDEO_SECONDS} to {MAX_VIDEO_SECONDS} seconds \
                 (Kling accepts videos of 3 to 20 seconds; got {s})"
            ),
        )),
        other => Ok(other),
    }
}

fn video_url_rule(raw: &str, policy: UrlPolicy) -> Result<String, ApiError> {
    let url = http_url("video_url", raw, policy)?;
    if let Some(extension) = path_extension(&url) {
        if !extension.eq_ignore_ascii_case("mp4") && !extension.eq_ignore_ascii_case("mov") {
            return Err(ApiError::bad_param(
                "video_url",
                format!("must point to an .mp4 or .mov file (the path ends in .{extension})"),
            ));
        }
    }
    Ok(url.into())
}

fn callback_url_rule(raw: Option<String>, policy: UrlPolicy) -> Result<Option<String>, ApiError> {
    raw.map(|raw| http_url("callback_url", &raw, policy).map(String::from)).transpose()
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
fn path_extension(url: &Url) -> Option<String> {
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

/// The fields of a JSON object body, taken one by one with their type checked.
/// `null` counts as absent, as Kling's own SDKs send it for unset optional fields.
struct Fields(Map<String, Value>);

impl Fields {
    fn parse(body: &[u8], allowed: &[&str]) -> Result<Fields, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("body: must be a JSON object; the body is empty"));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body: must be valid JSON ({e})")))?;
        let Value::Object(map) = value else {
            return Err(ApiError::bad_request(format!(
                "body: must be a JSON object, not {}",
                json_kind(&value)
            )));
        };
        if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
            let shown: String = unknown.chars().take(40).collect();
            return Err(ApiError::bad_param(
                &shown,
                format!("unknown field (expected one of {})", allowed.join(", ")),
            ));
        }
        Ok(Fields(map))
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name).filter(|value| !value.is_null())
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(ApiError::bad_param(name, format!("must be a string, not {}", json_kind(&other))))
            }
        }
    }

    fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(ApiError::bad_param(
                name,
                format!("must be a boolean (true or false), not {}", json_kind(&other)),
            )),
        }
    }

    fn number(&mut self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => {
                Err(ApiError::bad_param(name, format!("must be a number, not {}", json_kind(&other))))
            }
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PUBLIC: UrlPolicy = UrlPolicy { allow_private: false };
    const VIDEO: &str = "https://cdn.example.com/clips/beach.mp4";

    fn official(body: Value) -> Result<CreateRequest, ApiError> {
        create_request(Family::Official, body.to_string().as_bytes(), PUBLIC)
    }

    fn simplified(body: Value) -> Result<CreateRequest, ApiError> {
        create_request(Family::Simplified, body.to_string().as_bytes(), PUBLIC)
    }

    /// Asserts a 400 whose message starts with `field:` and mentions `rule_words`.
    fn assert_rejected(result: Result<CreateRequest, ApiError>, field: &str, rule_words: &str) {
        let error = result.expect_err("should be rejected");
        assert_eq!(error.status, 400, "{error}");
        assert!(error.message.starts_with(&format!("{field}:")), "{error}");
        assert!(error.message.contains(rule_words), "{error}");
    }

    #[test]
    fn full_official_body_is_forwarded() {
        let request = official(json!({
            "video_url": VIDEO,
            "sound_effect_prompt": "waves",
            "bgm_prompt": "calm piano",
            "asmr_mode": false,
            "callback_url": "https://app.example.com/hooks/kling",
            "external_task_id": "order-42",
            "video_duration": 8.5
        }))
        .unwrap();
        assert_eq!(
            request.upstream,
            CreateVideoToAudio {
                video_id: None,
                video_url: Some(VIDEO.into()),
                sound_effect_prompt: Some("waves".into()),
                bgm_prompt: Some("calm piano".into()),
                asmr_mode: Some(false),
                callback_url: Some("https://app.example.com/hooks/kling".into()),
                external_task_id: Some("order-42".into()),
            }
        );
        assert_eq!(request.video_duration_seconds, Some(8.5));
    }

    #[test]
    fn video_id_alone_is_enough() {
        let request = official(json!({"video_id": "842250903629086785"})).unwrap();
        assert_eq!(request.upstream.video_id.as_deref(), Some("842250903629086785"));
        assert_eq!(request.upstream.video_url, None);
    }

    #[test]
    fn exactly_one_video_source() {
        assert_rejected(official(json!({"video_id": "1", "video_url": VIDEO})), "video_id", "exactly one");
        assert_rejected(official(json!({"sound_effect_prompt": "x"})), "video_url", "exactly one");
        assert_rejected(official(json!({"video_id": null, "video_url": null})), "video_url", "required");
    }

    #[test]
    fn body_must_be_a_json_object() {
        for (body, words) in [
            ("", "empty"),
            ("   ", "empty"),
            ("[]", "not an array"),
            ("\"x\"", "not a string"),
            ("{", "valid JSON"),
            ("{\"video_url\": }", "valid JSON"),
        ] {
            let error = create_request(Family::Official, body.as_bytes(), PUBLIC).unwrap_err();
            assert_eq!((error.status, error.code), (400, 1200), "{body}");
            assert!(error.message.starts_with("body:"), "{error}");
            assert!(error.message.contains(words), "{body}: {error}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert_rejected(official(json!({"video_ulr": VIDEO})), "video_ulr", "unknown field");
        assert_rejected(official(json!({"video_url": VIDEO, "prompt": "x"})), "prompt", "unknown field");
        assert_rejected(simplified(json!({"video_url": VIDEO, "bgm_prompt": "x"})), "bgm_prompt", "unknown");
    }

    #[test]
    fn types_are_checked() {
        assert_rejected(official(json!({"video_url": 5})), "video_url", "must be a string, not a number");
        assert_rejected(official(json!({"video_url": VIDEO, "asmr_mode": "yes"})), "asmr_mode", "boolean");
        assert_rejected(
            official(json!({"video_url": VIDEO, "video_duration": "8"})),
            "video_duration",
            "number",
        );
        assert_rejected(official(json!({"video_url": VIDEO, "bgm_prompt": ["a"]})), "bgm_prompt", "an array");
    }

    #[test]
    fn prompts_count_characters_not_bytes() {
        let exactly = "é".repeat(200);
        assert!(official(json!({"video_url": VIDEO, "bgm_prompt": exactly})).is_ok());
        let over = "a".repeat(201);
        assert_rejected(
            official(json!({"video_url": VIDEO, "sound_effect_prompt": over})),
            "sound_effect_prompt",
            "at most 200 characters (got 201)",
        );
        assert_rejected(
            simplified(json!({"video_url": VIDEO, "prompt": "🙂".repeat(201)})),
            "prompt",
            "at most 200",
        );
    }

    #[test]
    fn video_duration_is_3_to_20_seconds() {
        for ok in [3, 20] {
            assert!(official(json!({"video_url": VIDEO, "video_duration": ok})).is_ok());
        }
        assert!(official(json!({"video_url": VIDEO, "video_duration": 12.75})).is_ok());
        for bad in [json!(2.99), json!(20.01), json!(0), json!(-5), json!(1e300)] {
            assert_rejected(
                official(json!({"video_url": VIDEO, "video_duration": bad})),
                "video_duration",
                "from 3 to 20",
            );
        }
    }

    #[test]
    fn identifiers() {
        assert!(official(json!({"video_url": VIDEO, "external_task_id": "a.b:c_d-1"})).is_ok());
        for bad in ["", "a b", "ä", "x/y", &"x".repeat(65)] {
            assert_rejected(
                official(json!({"video_url": VIDEO, "external_task_id": bad})),
                "external_task_id",
                "1 to 64",
            );
        }
        assert_rejected(official(json!({"video_id": "../etc"})), "video_id", "1 to 64");
        assert!(task_id("task_id", &"x".repeat(64)).is_ok());
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
            ("https://cdn.example.com/a.avi", "(the path ends in .avi)"),
            ("https://cdn.example.com/a.mp4.exe", ".mp4 or .mov"),
            ("https://cdn.example.com/a%2Ewebm", ".mp4 or .mov"),
        ] {
            assert_rejected(official(json!({"video_url": url})), "video_url", words);
        }
        let long = format!("https://cdn.example.com/{}.mp4", "a".repeat(2048));
        assert_rejected(official(json!({"video_url": long})), "video_url", "at most 2048 characters");
        let encoded = format!("https://cdn.example.com/{}.mp4", "中".repeat(2000));
        assert_rejected(
            official(json!({"video_url": encoded})),
            "video_url",
            "once percent-encoded (got 18028)",
        );
    }

    #[test]
    fn video_extensions_are_case_insensitive_and_optional() {
        for url in [
            "https://cdn.example.com/a.MP4",
            "https://cdn.example.com/a.Mov",
            "https://cdn.example.com/signed/3f2a9c?sig=abc.def&exp=1",
            "https://cdn.example.com/",
            "https://cdn.example.com/v1.2/video",
        ] {
            assert!(official(json!({"video_url": url})).is_ok(), "{url}");
        }
    }

    #[test]
    fn urls_are_forwarded_normalised() {
        let request = official(json!({"video_url": "HTTPS://CDN.Example.COM/a.mp4"})).unwrap();
        assert_eq!(request.upstream.video_url.as_deref(), Some("https://cdn.example.com/a.mp4"));
    }

    #[test]
    fn callback_url_follows_url_rules_without_extension_rule() {
        assert!(
            official(json!({"video_url": VIDEO, "callback_url": "https://app.example.com/hook.php"})).is_ok()
        );
        assert_rejected(
            official(json!({"video_url": VIDEO, "callback_url": "not a url"})),
            "callback_url",
            "spaces",
        );
        assert_rejected(
            official(json!({"video_url": VIDEO, "callback_url": "mailto:a@b.c"})),
            "callback_url",
            "absolute http",
        );
    }

    #[test]
    fn simplified_body_maps_onto_official() {
        let cases = [
            (json!(null), Some("p"), None, None),
            (json!("sound_effect"), Some("p"), None, None),
            (json!("ambient"), Some("p"), None, None),
            (json!("music"), None, Some("p"), None),
            (json!("bgm"), None, Some("p"), None),
            (json!("asmr"), Some("p"), None, Some(true)),
        ];
        for (audio_type, sound, bgm, asmr) in cases {
            let request =
                simplified(json!({"video_url": VIDEO, "prompt": "p", "audio_type": audio_type})).unwrap();
            assert_eq!(request.upstream.sound_effect_prompt.as_deref(), sound, "{audio_type}");
            assert_eq!(request.upstream.bgm_prompt.as_deref(), bgm, "{audio_type}");
            assert_eq!(request.upstream.asmr_mode, asmr, "{audio_type}");
            assert_eq!(request.upstream.video_url.as_deref(), Some(VIDEO));
        }
        let request = simplified(json!({"video_url": VIDEO, "audio_type": "asmr"})).unwrap();
        assert_eq!(request.upstream.asmr_mode, Some(true));
        assert_eq!(request.upstream.sound_effect_prompt, None);
    }

    #[test]
    fn simplified_rules() {
        assert_rejected(simplified(json!({"prompt": "x"})), "video_url", "is required");
        assert_rejected(
            simplified(json!({"video_url": VIDEO, "audio_type": "speech"})),
            "audio_type",
            "must be one of",
        );
        assert_rejected(simplified(json!({"video_url": VIDEO, "audio_type": 3})), "audio_type", "string");
        let request = simplified(json!({
            "video_url": VIDEO, "callback_url": "https://app.example.com/h",
            "external_task_id": "e-1", "video_duration": 4
        }))
        .unwrap();
        assert_eq!(request.upstream.external_task_id.as_deref(), Some("e-1"));
        assert_eq!(request.upstream.callback_url.as_deref(), Some("https://app.example.com/h"));
        assert_eq!(request.video_duration_seconds, Some(4.0));
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
