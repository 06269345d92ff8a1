//! Request bodies described as data: each field with its rule, the rules across fields, and
//! the one engine that checks a body against them.
//!
//! A surface (`super::surfaces`) lists its fields and checks; [`validate`] parses a body,
//! refuses unknown fields (a typo like `video_ulr` must not silently create a task without
//! the field the client meant), applies every rule, and returns what goes upstream, rebuilt
//! from the checked values (URLs in their normalised form), apart from what the worker keeps
//! for itself (the client's webhook, hints). The same tables generate the OpenAPI document
//! (`super::openapi`), so the document and the rules cannot drift apart.
//!
//! Every refusal is a 400 in Kling's envelope whose message starts with the field's name and
//! states the rule: `"sound: is only for kling-v2-6 and later models (model_name is kling-v1)"`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64ct::{Base64, Encoding};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::validate::{self, UrlPolicy};

/// What a field must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// A string of at most `max` characters (Unicode scalar values), not empty if `nonempty`.
    Text {
        max: usize,
        nonempty: bool,
    },
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A JSON number from `min` to `max`, with at most `decimals` decimal places.
    Number {
        min: f64,
        max: f64,
        decimals: Option<u32>,
    },
    /// A whole JSON number from `min` to `max`.
    Integer {
        min: i64,
        max: i64,
    },
    Boolean,
    /// 1 to 64 letters, digits, `-`, `_`, `.`, `:` (task ids, external task ids, video ids).
    Identifier,
    /// An absolute http(s) URL to a public host (see `validate::http_url`), whose path, if it
    /// has an extension, ends in one of `extensions` (none: any path).
    Url {
        extensions: &'static [&'static str],
    },
    /// An image: an http(s) URL as [`Rule::Url`] with jpg/jpeg/png, or raw Base64 (no
    /// `data:` prefix) of a JPEG or PNG of at most 10 MB.
    Image,
    /// Kling's `camera_control`: `{type, config}`, six axes from -10 to 10, one non-zero.
    CameraControl,
    /// `[{voice_id}]`, at most `max`.
    VoiceList {
        max: usize,
    },
    /// `[{element_id}]`, at most `max`.
    ElementList {
        max: usize,
    },
    /// `[{mask, trajectories: [{x, y}]}]`, at most `max` groups of 2 to 77 points.
    DynamicMasks {
        max: usize,
    },
    /// `[{index, prompt, duration}]`: 1 to 6 shots, prompts of at most 512 characters.
    MultiPrompt,
    /// `{enabled: bool}`.
    Watermark,
}

/// Where a checked field goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// To Kling, under its own name.
    Upstream,
    /// To Kling, under another name (useapi's `video` is Kling's `video_url`).
    UpstreamAs(&'static str),
    /// Kept by the worker (hints, options of the surface), never sent to Kling.
    Edge,
    /// The client's own webhook: kept by the worker, replaced by the worker's own upstream.
    Webhook,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub rule: Rule,
    pub required: bool,
    pub target: Target,
    /// For the API document.
    pub doc: &'static str,
}

/// A rule across fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// Exactly one of these fields.
    ExactlyOne(&'static [&'static str]),
    /// At least one of these fields.
    AtLeastOne(&'static [&'static str]),
    /// At most one of these groups of fields may appear.
    Exclusive(&'static [&'static [&'static str]]),
    /// `sound: "on"` only with these models (`model_name`, default `kling-v1`).
    SoundModels(&'static [&'static str]),
    /// `sound: "on"` with this model makes sound only in `mode: "pro"`.
    SoundNeedsPro(&'static str),
    /// A voice (`voice_list`, or `<<<voice_N>>>` in the prompt) needs `sound: "on"`.
    VoiceNeedsSound,
    /// `cfg_scale` is not for models whose name starts with one of these.
    CfgScaleNotFor(&'static [&'static str]),
    /// `duration` (a video's): `"3"` to `"15"` for these models, `"5"` or `"10"` for others.
    VideoDurationByModel(&'static [&'static str]),
    /// `prompt` is required unless `multi_shot` is true with `shot_type: "customize"`.
    PromptUnlessCustomShots,
    /// `multi_shot` needs `shot_type`; `shot_type: "customize"` needs `multi_prompt`.
    MultiShot,
    /// This field may not be `true` (an option the surface cannot honour), with the reason.
    NotTrue(&'static str, &'static str),
}

/// The body of one surface's create call.
#[derive(Debug, PartialEq)]
pub struct Body {
    pub fields: &'static [Field],
    pub checks: &'static [Check],
    /// Bodies above this are refused with 413 before they are read in full.
    pub max_bytes: usize,
    /// Fields Kling's own clients send to this endpoint that Kling does not take here:
    /// dropped, never refused, and named to the caller in `X-Kling-Edge-Ignored`.
    pub ignored: &'static [&'static str],
}

impl Body {
    /// The client's name for the (first) field with this target.
    /// The name of an ignored field (`Body::ignored`) as this body's table spells it.
    pub fn ignored_name(&self, name: &str) -> Option<&'static str> {
        self.ignored.iter().find(|ignored| **ignored == name).copied()
    }

    pub fn client_name(&self, target: Target) -> Option<&'static str> {
        self.fields.iter().find(|field| field.target == target).map(|field| field.name)
    }

    /// The client's name for what Kling receives as `upstream` (useapi.net's `video` for
    /// Kling's `video_url`).
    pub fn client_name_of_upstream(&self, upstream: &str) -> Option<&'static str> {
        self.fields
            .iter()
            .find(|field| match field.target {
                Target::Upstream => field.name == upstream,
                Target::UpstreamAs(name) => name == upstream,
                _ => false,
            })
            .map(|field| field.name)
    }
}

/// A body that passed every rule.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Validated {
    /// What goes to Kling (the worker adds its own `callback_url`).
    pub upstream: Map<String, Value>,
    /// The client's own webhook, if it gave one.
    pub webhook: Option<String>,
    /// What the worker keeps for itself.
    pub options: EdgeOptions,
    /// The body's fields that were dropped (`Body::ignored`).
    pub ignored: Vec<&'static str>,
}

/// The fields a create body gives the worker itself (`Target::Edge`), never sent to Kling.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EdgeOptions {
    /// The client's hint of the input video's length, in seconds (`video_duration`).
    pub video_duration: Option<f64>,
    /// useapi.net's `replyRef`: passed back in the webhook.
    pub reply_ref: Option<String>,
    /// useapi.net's `maxJobs`: refuse when this many of the tenant's tasks are running or
    /// starting (a slot is held for each create in flight: `crate::record::max_jobs`).
    pub max_jobs: Option<u32>,
    /// useapi.net's `email`: the Kling account to use.
    pub email: Option<String>,
    /// The simpler video-to-audio body's `prompt` and `audio_type`, which its transform
    /// turns into Kling's fields.
    pub prompt: Option<String>,
    pub audio_type: Option<String>,
}

impl EdgeOptions {
    /// Keeps a checked edge field; `false` for a name no option has (a table's mistake,
    /// caught by the surfaces' tests).
    pub(crate) fn keep(&mut self, name: &str, value: Value) -> bool {
        let text = |value: Value| value.as_str().map(str::to_owned);
        match name {
            "video_duration" => self.video_duration = value.as_f64(),
            "replyRef" => self.reply_ref = text(value),
            "maxJobs" => self.max_jobs = value.as_u64().and_then(|n| u32::try_from(n).ok()),
            "email" => self.email = text(value),
            "prompt" => self.prompt = text(value),
            "audio_type" => self.audio_type = text(value),
            // Checked (it may only be false) and otherwise meaningless to Kling's API.
            "cropVideoOriginalSound" => {}
            _ => return false,
        }
        true
    }
}

/// The default model of the video endpoints when `model_name` is absent.
pub const DEFAULT_MODEL: &str = "kling-v1";
const IMAGE_MAX_BYTES: usize = 10 * 1024 * 1024;
const CAMERA_TYPES: &[&str] =
    &["simple", "down_back", "forward_up", "right_turn_forward", "left_turn_forward"];
const CAMERA_AXES: &[&str] = &["horizontal", "vertical", "pan", "tilt", "roll", "zoom"];

/// Checks `raw` against `body`.
///
/// The body is read as a map of each field's raw JSON, borrowed from `raw`; a field is
/// parsed only once it is known to be small enough to parse: a field whose rule takes a
/// string must be one (seen from its first character, before anything is built), and no
/// field holds more than [`MAX_VALUES`] JSON values. So a 14 MiB array where an image
/// belongs is refused for what it is without ever being built, and no body can make the
/// isolate hold more than a small multiple of its own size.
pub fn validate(body: &Body, raw: &[u8], policy: UrlPolicy) -> Result<Validated, ApiError> {
    let given = parse_object(raw)?;
    let allowed: Vec<&str> = body.fields.iter().map(|field| field.name).collect();
    let mut ignored = Vec::new();
    for key in given.keys().filter(|key| !allowed.contains(&key.as_ref())) {
        if let Some(name) = body.ignored.iter().find(|name| **name == key.as_ref()) {
            ignored.push(*name);
            continue;
        }
        let shown: String = key.chars().take(40).collect();
        let rule = match closest(key, &allowed) {
            Some(near) => format!("unknown field; did you mean `{near}`?"),
            None => format!("unknown field (expected one of {})", allowed.join(", ")),
        };
        return Err(ApiError::bad_param(&shown, rule));
    }
    let mut checked = Map::new();
    for field in body.fields {
        // `null` counts as absent, as Kling's own SDKs send it for unset optional fields.
        match given.get(field.name).filter(|raw| raw.get() != "null") {
            Some(raw) => {
                let value = parse_field(field.name, field.rule, raw)?;
                checked.insert(field.name.to_owned(), apply(field.name, field.rule, value, policy)?);
            }
            None if field.required => return Err(ApiError::bad_param(field.name, "is required")),
            None => {}
        }
    }
    for check in body.checks {
        apply_check(*check, &checked)?;
    }
    let mut validated = Validated { ignored, ..Validated::default() };
    for field in body.fields {
        let Some(value) = checked.remove(field.name) else { continue };
        match field.target {
            Target::Upstream => {
                validated.upstream.insert(field.name.to_owned(), value);
            }
            Target::UpstreamAs(name) => {
                validated.upstream.insert(name.to_owned(), value);
            }
            Target::Edge => {
                if !validated.options.keep(field.name, value) {
                    return Err(ApiError::internal("a body field the worker has no option for"));
                }
            }
            Target::Webhook => validated.webhook = value.as_str().map(str::to_owned),
        }
    }
    Ok(validated)
}

/// The field `name` most likely meant, if it is a near miss of one: the same but for case,
/// `_` or `-` (`asmrMode`), or one or two edits away (`asmr_mod`, `video_ulr`, `sounds`),
/// one for short names.
fn closest<'a>(name: &str, fields: &[&'a str]) -> Option<&'a str> {
    if name.len() > 64 {
        return None;
    }
    let plain = |s: &str| {
        s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect::<Vec<_>>()
    };
    let given = plain(name);
    if given.is_empty() || given.len() > 64 {
        return None;
    }
    let allowed_edits = if given.len() <= 4 { 1 } else { 2 };
    fields
        .iter()
        .map(|field| (edits(&given, &plain(field)), *field))
        .filter(|(distance, _)| *distance <= allowed_edits)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, field)| field)
}

/// Edits (insert, delete, substitute, swap two neighbours) between `a` and `b`.
fn edits(a: &[char], b: &[char]) -> usize {
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The most JSON values (each string, number, array or object counts) one field may hold.
/// Kling's largest fields hold a few hundred (dynamic masks: 6 groups of 77 points).
pub const MAX_VALUES: usize = 10_000;
/// The most fields a body may have (Kling's largest body has about 25).
pub const MAX_MEMBERS: usize = 256;

/// The body as each field's raw JSON, borrowed from `raw` (nothing is copied but the keys).
fn parse_object(raw: &[u8]) -> Result<BTreeMap<Cow<'_, str>, &RawValue>, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("body: must be a JSON object; the body is empty"));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| ApiError::bad_request("body: must be valid JSON (it is not UTF-8)"))?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return Err(ApiError::bad_request(format!(
            "body: must be a JSON object, not {}",
            kind_of_raw(first)
        )));
    }
    let members: Members<'_> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("body: must be valid JSON ({e})")))?;
    if members.too_many {
        return Err(ApiError::bad_request(format!("body: must have at most {MAX_MEMBERS} fields")));
    }
    Ok(members.fields)
}

/// A body's fields, at most [`MAX_MEMBERS`] of them: past that, the rest is read to check
/// it is JSON but not kept (a body of a million short keys would otherwise build a map
/// several times its own size before its first unknown key is refused).
struct Members<'a> {
    fields: BTreeMap<Cow<'a, str>, &'a RawValue>,
    too_many: bool,
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Members<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut fields = BTreeMap::new();
                while fields.len() < MAX_MEMBERS {
                    let Some((name, value)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? else {
                        return Ok(Members { fields, too_many: false });
                    };
                    fields.insert(name, value);
                }
                let mut too_many = false;
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {
                    too_many = true;
                }
                Ok(Members { fields, too_many })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// What a JSON text is, from its first character (`{"a"...` is an object).
fn kind_of_raw(first: Option<u8>) -> &'static str {
    match first {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "valid JSON",
    }
}

/// How many JSON values a (valid) JSON text holds, counted without building any.
pub(crate) fn values_in(text: &str) -> usize {
    let (mut values, mut in_string, mut escaped, mut in_scalar) = (0usize, false, false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                values += 1;
                in_scalar = false;
            }
            b'[' | b'{' => {
                values += 1;
                in_scalar = false;
            }
            b',' | b':' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t' => in_scalar = false,
            _ if !in_scalar => {
                values += 1;
                in_scalar = true;
            }
            _ => {}
        }
    }
    values
}

/// Whether a rule takes a JSON string.
fn takes_string(rule: Rule) -> bool {
    matches!(rule, Rule::Text { .. } | Rule::OneOf(_) | Rule::Identifier | Rule::Url { .. } | Rule::Image)
}

/// One field's raw JSON, parsed once it is known to be fit to parse (see [`validate`]).
fn parse_field(name: &str, rule: Rule, raw: &RawValue) -> Result<Value, ApiError> {
    let text = raw.get();
    let first = text.as_bytes().first().copied();
    if takes_string(rule) && first != Some(b'"') {
        return Err(ApiError::bad_param(name, format!("must be a string, not {}", kind_of_raw(first))));
    }
    if first != Some(b'"') && values_in(text) > MAX_VALUES {
        return Err(ApiError::bad_param(name, format!("must hold at most {MAX_VALUES} values")));
    }
    serde_json::from_str(text).map_err(|e| ApiError::bad_param(name, format!("must be valid JSON ({e})")))
}

pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(name: &str, value: Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(ApiError::bad_param(name, format!("must be a string, not {}", kind(&other)))),
    }
}

fn text(name: &str, value: Value, max: usize, nonempty: bool) -> Result<String, ApiError> {
    let s = string(name, value)?;
    let chars = s.chars().count();
    if chars > max {
        return Err(ApiError::bad_param(name, format!("must be at most {max} characters (got {chars})")));
    }
    if nonempty && s.trim().is_empty() {
        return Err(ApiError::bad_param(name, "must not be empty or only spaces"));
    }
    Ok(s)
}

/// Applies one field's rule; returns the value to keep (normalised where that matters).
fn apply(name: &str, rule: Rule, value: Value, policy: UrlPolicy) -> Result<Value, ApiError> {
    match rule {
        Rule::Text { max, nonempty } => text(name, value, max, nonempty).map(Value::String),
        Rule::OneOf(values) => {
            let s = string(name, value)?;
            if values.contains(&s.as_str()) {
                Ok(Value::String(s))
            } else {
                Err(ApiError::bad_param(name, format!("must be one of {}", values.join(", "))))
            }
        }
        Rule::Number { min, max, decimals } => {
            let Value::Number(number) = &value else {
                return Err(ApiError::bad_param(name, format!("must be a number, not {}", kind(&value))));
            };
            let n = number.as_f64().unwrap_or(f64::NAN);
            if !(min..=max).contains(&n) {
                return Err(ApiError::bad_param(name, format!("must be from {min} to {max} (got {n})")));
            }
            if let Some(places) = decimals {
                let scale = 10f64.powi(places as i32);
                if ((n * scale).round() - n * scale).abs() > 1e-6 {
                    let unit = if places == 1 {
                        "one decimal place".to_owned()
                    } else {
                        format!("{places} decimal places")
                    };
                    return Err(ApiError::bad_param(name, format!("must have at most {unit} (got {n})")));
                }
            }
            Ok(value)
        }
        Rule::Integer { min, max } => {
            let n = value.as_i64().filter(|_| value.is_i64() || value.is_u64());
            match n {
                Some(n) if (min..=max).contains(&n) => Ok(value),
                _ => Err(ApiError::bad_param(name, format!("must be a whole number from {min} to {max}"))),
            }
        }
        Rule::Boolean => match value {
            Value::Bool(_) => Ok(value),
            other => Err(ApiError::bad_param(
                name,
                format!("must be a boolean (true or false), not {}", kind(&other)),
            )),
        },
        Rule::Identifier => {
            let s = string(name, value)?;
            validate::task_id(name, &s)?;
            Ok(Value::String(s))
        }
        Rule::Url { extensions } => url(name, &string(name, value)?, extensions, policy).map(Value::String),
        Rule::Image => image(name, string(name, value)?, policy).map(Value::String),
        Rule::CameraControl => camera_control(name, value),
        Rule::VoiceList { max } => list_of(name, value, max, 1, |entry, at| {
            let map = object_of(&at, entry, &[("voice_id", true)])?;
            text(&format!("{at}.voice_id"), map["voice_id"].clone(), 128, true).map(|_| ())
        }),
        Rule::ElementList { max } => list_of(name, value, max, 1, |entry, at| {
            let map = object_of(&at, entry, &[("element_id", true)])?;
            if map["element_id"].as_u64().is_none() {
                return Err(ApiError::bad_param(&format!("{at}.element_id"), "must be a whole number"));
            }
            Ok(())
        }),
        Rule::DynamicMasks { max } => list_of(name, value, max, 1, |entry, at| {
            let map = object_of(&at, entry, &[("mask", true), ("trajectories", true)])?;
            image(&format!("{at}.mask"), string(&format!("{at}.mask"), map["mask"].clone())?, policy)?;
            let points = format!("{at}.trajectories");
            list_of(&points, map["trajectories"].clone(), 77, 2, |point, p| {
                let point = object_of(&p, point, &[("x", true), ("y", true)])?;
                for axis in ["x", "y"] {
                    if point[axis].as_i64().is_none() {
                        return Err(ApiError::bad_param(&format!("{p}.{axis}"), "must be a whole number"));
                    }
                }
                Ok(())
            })
            .map(|_| ())
        }),
        Rule::MultiPrompt => list_of(name, value, 6, 1, |entry, at| {
            let map = object_of(&at, entry, &[("index", true), ("prompt", true), ("duration", true)])?;
            if map["index"].as_u64().is_none() {
                return Err(ApiError::bad_param(&format!("{at}.index"), "must be a whole number"));
            }
            text(&format!("{at}.prompt"), map["prompt"].clone(), 512, true)?;
            let duration = string(&format!("{at}.duration"), map["duration"].clone())?;
            if duration.parse::<u32>().ok().filter(|d| (1..=15).contains(d)).is_none() {
                return Err(ApiError::bad_param(
                    &format!("{at}.duration"),
                    "must be whole seconds from \"1\" to \"15\"",
                ));
            }
            Ok(())
        }),
        Rule::Watermark => {
            let map = object_of(name, value.clone(), &[("enabled", true)])?;
            if !map["enabled"].is_boolean() {
                return Err(ApiError::bad_param(&format!("{name}.enabled"), "must be a boolean"));
            }
            Ok(value)
        }
    }
}

/// A URL under `validate::http_url`'s rules, with an allowed extension if its path has one.
fn url(name: &str, raw: &str, extensions: &[&str], policy: UrlPolicy) -> Result<String, ApiError> {
    let parsed = validate::http_url(name, raw, policy)?;
    if !extensions.is_empty() {
        if let Some(extension) = validate::path_extension(&parsed) {
            if !extensions.iter().any(|allowed| extension.eq_ignore_ascii_case(allowed)) {
                let listed: Vec<String> = extensions.iter().map(|e| format!(".{e}")).collect();
                let (last, rest) = listed.split_last().expect("extensions is not empty");
                let choices =
                    if rest.is_empty() { last.clone() } else { format!("{} or {last}", rest.join(", ")) };
                return Err(ApiError::bad_param(
                    name,
                    format!("must point to an {choices} file (the path ends in .{extension})"),
                ));
            }
        }
    }
    Ok(parsed.into())
}

fn image(name: &str, raw: String, policy: UrlPolicy) -> Result<String, ApiError> {
    if raw.starts_with("http://") || raw.starts_with("https://") || raw.contains("://") {
        return url(name, &raw, &["jpg", "jpeg", "png"], policy);
    }
    if raw.starts_with("data:") {
        return Err(ApiError::bad_param(
            name,
            "must be raw Base64 without a data: prefix (Kling refuses data: URLs), or an http(s) URL",
        ));
    }
    if raw.len() > IMAGE_MAX_BYTES.div_ceil(3) * 4 + 4 {
        return Err(ApiError::bad_param(name, "must be at most 10 MB (Kling's limit for an image)"));
    }
    // Checked without decoding the whole image (it may be 10 MB): the alphabet and padding
    // of all of it, and the file's signature from its first bytes.
    let encoded = raw.trim();
    let invalid = || ApiError::bad_param(name, "must be an http(s) URL or raw Base64 of a JPG or PNG image");
    let body = encoded.trim_end_matches('=');
    let padding = encoded.len() - body.len();
    let alphabet = body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !alphabet || padding > 2 || !encoded.len().is_multiple_of(4) || encoded.is_empty() {
        return Err(invalid());
    }
    // The last block is decoded too: its padding bits must be zero, as Kling's decoder wants.
    Base64::decode(&encoded[encoded.len() - 4..], &mut [0u8; 3]).map_err(|_| invalid())?;
    let head = &encoded[..encoded.len().min(16)];
    let bytes = Base64::decode_vec(head).map_err(|_| invalid())?;
    let png = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    let jpeg = bytes.starts_with(&[0xff, 0xd8, 0xff]);
    if !png && !jpeg {
        return Err(ApiError::bad_param(
            name,
            "must be a JPG or PNG image (the Base64 decodes to something else)",
        ));
    }
    Ok(raw)
}

/// The object at `at`, with exactly the `keys` allowed (and those marked `true` required).
fn object_of(at: &str, value: Value, keys: &[(&str, bool)]) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::bad_param(at, format!("must be an object, not {}", kind(&value))));
    };
    if let Some(unknown) = map.keys().find(|key| !keys.iter().any(|(name, _)| name == key)) {
        let shown: String = unknown.chars().take(40).collect();
        let expected: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
        return Err(ApiError::bad_param(
            &format!("{at}.{shown}"),
            format!("unknown field (expected {})", expected.join(", ")),
        ));
    }
    for (key, required) in keys {
        if *required && map.get(*key).is_none_or(Value::is_null) {
            return Err(ApiError::bad_param(&format!("{at}.{key}"), "is required"));
        }
    }
    Ok(map)
}

/// An array of `min` to `max` entries, each checked by `each(entry, "name[i]")`.
fn list_of(
    name: &str,
    value: Value,
    max: usize,
    min: usize,
    mut each: impl FnMut(Value, String) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    let Value::Array(entries) = &value else {
        return Err(ApiError::bad_param(name, format!("must be an array, not {}", kind(&value))));
    };
    if entries.len() < min || entries.len() > max {
        return Err(ApiError::bad_param(
            name,
            format!("must have {min} to {max} entries (got {})", entries.len()),
        ));
    }
    for (i, entry) in entries.iter().enumerate() {
        each(entry.clone(), format!("{name}[{i}]"))?;
    }
    Ok(value)
}

fn camera_control(name: &str, value: Value) -> Result<Value, ApiError> {
    let map = object_of(name, value.clone(), &[("type", true), ("config", false)])?;
    let kind_of = map["type"].as_str().filter(|t| CAMERA_TYPES.contains(t)).ok_or_else(|| {
        ApiError::bad_param(&format!("{name}.type"), format!("must be one of {}", CAMERA_TYPES.join(", ")))
    })?;
    let config = map.get("config").filter(|c| !c.is_null());
    match (kind_of, config) {
        ("simple", None) => {
            Err(ApiError::bad_param(&format!("{name}.config"), "is required when type is simple"))
        }
        ("simple", Some(config)) => {
            let axes = object_of(
                &format!("{name}.config"),
                config.clone(),
                &CAMERA_AXES.iter().map(|axis| (*axis, false)).collect::<Vec<_>>(),
            )?;
            let mut moving = Vec::new();
            for (axis, value) in &axes {
                let n = value.as_f64().filter(|n| (-10.0..=10.0).contains(n)).ok_or_else(|| {
                    ApiError::bad_param(&format!("{name}.config.{axis}"), "must be a number from -10 to 10")
                })?;
                if n != 0.0 {
                    moving.push(axis.as_str());
                }
            }
            if moving.len() != 1 {
                return Err(ApiError::bad_param(
                    &format!("{name}.config"),
                    format!(
                        "exactly one of {} must be non-zero (got {})",
                        CAMERA_AXES.join(", "),
                        moving.len()
                    ),
                ));
            }
            Ok(value)
        }
        (other, Some(_)) => Err(ApiError::bad_param(
            &format!("{name}.config"),
            format!("must be left out when type is {other} (only simple takes a config)"),
        )),
        (_, None) => Ok(value),
    }
}

fn present(checked: &Map<String, Value>, name: &str) -> bool {
    checked.get(name).is_some_and(|value| !value.is_null())
}

fn model(checked: &Map<String, Value>) -> &str {
    checked.get("model_name").and_then(Value::as_str).unwrap_or(DEFAULT_MODEL)
}

fn sound_on(checked: &Map<String, Value>) -> bool {
    checked.get("sound").and_then(Value::as_str) == Some("on")
}

fn apply_check(check: Check, checked: &Map<String, Value>) -> Result<(), ApiError> {
    match check {
        Check::ExactlyOne(names) => {
            let given: Vec<&&str> = names.iter().filter(|name| present(checked, name)).collect();
            let listed = names.join(" and ");
            match given.len() {
                1 => Ok(()),
                0 => Err(ApiError::bad_param(
                    names[names.len() - 1],
                    format!("is required (or {}): give exactly one of {listed}", names[0]),
                )),
                _ => Err(ApiError::bad_param(given[0], format!("give exactly one of {listed}, not both"))),
            }
        }
        Check::AtLeastOne(names) => {
            if names.iter().any(|name| present(checked, name)) {
                Ok(())
            } else {
                Err(ApiError::bad_param(
                    names[0],
                    format!("is required: give at least one of {}", names.join(", ")),
                ))
            }
        }
        Check::Exclusive(groups) => {
            let used: Vec<&str> = groups
                .iter()
                .filter_map(|group| group.iter().find(|name| present(checked, name)).copied())
                .collect();
            if used.len() > 1 {
                let all: Vec<String> = groups.iter().map(|group| group.join("/")).collect();
                return Err(ApiError::bad_param(
                    used[1],
                    format!(
                        "cannot be combined with {} (Kling: {} are mutually exclusive)",
                        used[0],
                        all.join(", ")
                    ),
                ));
            }
            Ok(())
        }
        Check::SoundModels(models) => {
            if sound_on(checked) && !models.contains(&model(checked)) {
                return Err(ApiError::bad_param(
                    "sound",
                    format!("is only for {} (model_name is {})", models.join(" and "), model(checked)),
                ));
            }
            Ok(())
        }
        Check::SoundNeedsPro(the_model) => {
            let mode = checked.get("mode").and_then(Value::as_str).unwrap_or("std");
            if sound_on(checked) && model(checked) == the_model && mode != "pro" {
                return Err(ApiError::bad_param(
                    "sound",
                    format!("{the_model} makes sound only in pro mode: set mode to pro (std makes a silent video)"),
                ));
            }
            Ok(())
        }
        Check::VoiceNeedsSound => {
            let voices = checked.get("voice_list").and_then(Value::as_array).is_some_and(|v| !v.is_empty());
            let referenced =
                checked.get("prompt").and_then(Value::as_str).is_some_and(|p| p.contains("<<<voice_"));
            if (voices || referenced) && !sound_on(checked) {
                return Err(ApiError::bad_param(
                    "sound",
                    "must be on when a voice is given or referenced (voice_list, <<<voice_N>>>)",
                ));
            }
            Ok(())
        }
        Check::CfgScaleNotFor(prefixes) => {
            if present(checked, "cfg_scale")
                && prefixes.iter().any(|prefix| model(checked).starts_with(prefix))
            {
                return Err(ApiError::bad_param(
                    "cfg_scale",
                    format!(
                        "{} does not support cfg_scale (only kling-v1 models do): leave it out",
                        model(checked)
                    ),
                ));
            }
            Ok(())
        }
        Check::VideoDurationByModel(long_models) => {
            let Some(duration) = checked.get("duration").and_then(Value::as_str) else { return Ok(()) };
            if long_models.contains(&model(checked)) || matches!(duration, "5" | "10") {
                return Ok(());
            }
            Err(ApiError::bad_param(
                "duration",
                format!(
                    "must be \"5\" or \"10\" for {} (\"3\" to \"15\" only for {})",
                    model(checked),
                    long_models.join(", ")
                ),
            ))
        }
        Check::PromptUnlessCustomShots => {
            let custom = checked.get("multi_shot").and_then(Value::as_bool) == Some(true)
                && checked.get("shot_type").and_then(Value::as_str) == Some("customize");
            let blank =
                checked.get("prompt").and_then(Value::as_str).is_some_and(|prompt| prompt.trim().is_empty());
            if !custom && (!present(checked, "prompt") || blank) {
                return Err(ApiError::bad_param(
                    "prompt",
                    "is required and must not be empty or only spaces (unless multi_shot is true with shot_type customize)",
                ));
            }
            Ok(())
        }
        Check::MultiShot => {
            let multi = checked.get("multi_shot").and_then(Value::as_bool) == Some(true);
            if multi && !present(checked, "shot_type") {
                return Err(ApiError::bad_param("shot_type", "is required when multi_shot is true"));
            }
            let customize = checked.get("shot_type").and_then(Value::as_str) == Some("customize");
            if multi && customize && !present(checked, "multi_prompt") {
                return Err(ApiError::bad_param("multi_prompt", "is required when shot_type is customize"));
            }
            if multi && present(checked, "image_tail") {
                return Err(ApiError::bad_param(
                    "image_tail",
                    "cannot be combined with multi_shot (Kling: no end frame for multi-shot videos)",
                ));
            }
            Ok(())
        }
        Check::NotTrue(name, why) => {
            if checked.get(name).and_then(Value::as_bool) == Some(true) {
                return Err(ApiError::bad_param(name, why));
            }
            Ok(())
        }
    }
}
