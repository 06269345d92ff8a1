//! Every create call the worker offers, as data: the client's path, the Kling endpoint it
//! reaches, its body's fields and rules, and the shape of its answers.
//!
//! Adding an endpoint (lip-sync, video-extend) is one `Endpoint` in `super`, one `Surface`
//! here, and its tests: routing, validation, the coordinator, publishing and the API
//! document all read these tables.

use serde_json::Value;

use super::fields::{Body, Check, Field, Rule, Target, Validated};
use super::{Endpoint, IMAGE2VIDEO, TEXT2VIDEO, TEXT_TO_AUDIO, VIDEO_TO_AUDIO};
use crate::error::ApiError;

/// How a surface answers: in Kling's envelope, or in useapi.net's shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    #[default]
    Kling,
    UseApi,
}

/// Turns a surface's checked fields into Kling's body, where it renames or combines them.
pub type Transform = fn(&mut Validated) -> Result<(), ApiError>;

#[derive(Debug)]
pub struct Surface {
    /// The create path (`POST`); with `queries`, also `GET {path}/{id}` and `GET {path}`.
    pub path: &'static str,
    pub endpoint: &'static Endpoint,
    pub body: &'static Body,
    pub style: Style,
    /// Whether the surface also answers queries and lists on its own path.
    pub queries: bool,
    /// Turns the checked fields into Kling's body, where a surface renames or combines them.
    pub transform: Option<Transform>,
    /// For the API document.
    pub summary: &'static str,
}

const PROMPT_200: Rule = Rule::Text { max: 200, nonempty: false };
const PROMPT_2500: Rule = Rule::Text { max: 2500, nonempty: false };
const VIDEO_FILE: Rule = Rule::Url { extensions: &["mp4", "mov"] };
const WEBHOOK: Rule = Rule::Url { extensions: &[] };

const fn field(name: &'static str, rule: Rule, doc: &'static str) -> Field {
    Field { name, rule, required: false, target: Target::Upstream, doc }
}

const fn required(name: &'static str, rule: Rule, doc: &'static str) -> Field {
    Field { name, rule, required: true, target: Target::Upstream, doc }
}

const fn edge(name: &'static str, rule: Rule, doc: &'static str) -> Field {
    Field { name, rule, required: false, target: Target::Edge, doc }
}

const CALLBACK_URL: Field = Field {
    name: "callback_url",
    rule: WEBHOOK,
    required: false,
    target: Target::Webhook,
    doc: "Your webhook: the worker POSTs the finished task to it, signed with your client's secret (GET /v1/webhook-secret). Kling is given the worker's own callback URL instead.",
};
const EXTERNAL_TASK_ID: Field = field(
    "external_task_id",
    Rule::Identifier,
    "Your own id for the task (unique per Kling account); queries accept it in place of the task id. Without one, the worker gives Kling kling-edge-<32 hex digits>, by which it can find the task at Kling if the create's record is lost.",
);
const VIDEO_DURATION: Field = edge(
    "video_duration",
    Rule::Number { min: 0.0, max: 86_400.0, decimals: None },
    "Your hint of the video's length in seconds. The worker measures the video itself and its measurement wins; the hint stands in (and must be 3 to 20) only for a video that cannot be measured, or with video_id. Never sent to Kling.",
);

/// Kling's video models, as `model_name` takes them.
pub const TEXT2VIDEO_MODELS: &[&str] = &[
    "kling-v1",
    "kling-v1-6",
    "kling-v2-master",
    "kling-v2-1-master",
    "kling-v2-5-turbo",
    "kling-v2-6",
    "kling-v3",
];
pub const IMAGE2VIDEO_MODELS: &[&str] = &[
    "kling-v1",
    "kling-v1-5",
    "kling-v1-6",
    "kling-v2-master",
    "kling-v2-1",
    "kling-v2-1-master",
    "kling-v2-5-turbo",
    "kling-v2-6",
    "kling-v3",
];
/// The models that make sound (`sound: "on"`).
pub const SOUND_MODELS: &[&str] = &["kling-v2-6", "kling-v3"];
/// The models that take any duration from 3 to 15 seconds; the others take 5 or 10.
pub const LONG_DURATION_MODELS: &[&str] = &["kling-v3"];
const VIDEO_DURATIONS: &[&str] = &["3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15"];
const CFG_SCALE_UNSUPPORTED: &[&str] = &["kling-v2", "kling-v3"];

const VIDEO_OPTIONS: [Field; 8] = [
    field("negative_prompt", PROMPT_2500, "What the video should not show, at most 2500 characters."),
    field("cfg_scale", Rule::Number { min: 0.0, max: 1.0, decimals: None }, "How closely to follow the prompt, 0 to 1 (kling-v1 models only)."),
    field("mode", Rule::OneOf(&["std", "pro"]), "std (default) or pro."),
    field("duration", Rule::OneOf(VIDEO_DURATIONS), "Seconds, as a string: \"5\" (default) or \"10\"; \"3\" to \"15\" for kling-v3."),
    field("camera_control", Rule::CameraControl, "{type: simple|down_back|forward_up|right_turn_forward|left_turn_forward, config (simple only): one of horizontal, vertical, pan, tilt, roll, zoom from -10 to 10, the others 0}."),
    field("sound", Rule::OneOf(&["on", "off"]), "on makes the video with sound: kling-v2-6 (pro mode) and kling-v3 only."),
    field("multi_shot", Rule::Boolean, "true for a video of several shots (shot_type, multi_prompt)."),
    field("shot_type", Rule::OneOf(&["customize", "intelligence"]), "With multi_shot: customize (your multi_prompt) or intelligence."),
];

static V2A_OFFICIAL: Body = Body {
    fields: &[
        field(
            "video_id",
            Rule::Identifier,
            "A Kling-generated video of the last 30 days (or give video_url).",
        ),
        field(
            "video_url",
            VIDEO_FILE,
            "The video to add sound to: .mp4 or .mov, 3 to 20 seconds, at most 100 MB (or give video_id).",
        ),
        field("sound_effect_prompt", PROMPT_200, "The sound effects wanted, at most 200 characters."),
        field("bgm_prompt", PROMPT_200, "The background music wanted, at most 200 characters."),
        field("asmr_mode", Rule::Boolean, "true for ASMR-style sound."),
        CALLBACK_URL,
        EXTERNAL_TASK_ID,
        VIDEO_DURATION,
    ],
    checks: &[Check::ExactlyOne(&["video_id", "video_url"])],
    max_bytes: 64 * 1024,
    ignored: &[],
};

static V2A_SIMPLIFIED: Body = Body {
    fields: &[
        required("video_url", VIDEO_FILE, "The video to add sound to: .mp4 or .mov, 3 to 20 seconds."),
        edge("prompt", PROMPT_200, "The sound wanted, at most 200 characters."),
        edge(
            "audio_type",
            Rule::OneOf(&["sound_effect", "ambient", "music", "bgm", "asmr"]),
            "sound_effect (default) or ambient: the prompt is sound_effect_prompt; music or bgm: bgm_prompt; asmr: sound_effect_prompt with asmr_mode.",
        ),
        CALLBACK_URL,
        EXTERNAL_TASK_ID,
        VIDEO_DURATION,
    ],
    checks: &[],
    max_bytes: 64 * 1024,
    ignored: &[],
};

static TEXT2VIDEO_BODY: Body = Body {
    fields: &[
        field("model_name", Rule::OneOf(TEXT2VIDEO_MODELS), "The model (default kling-v1)."),
        field("prompt", PROMPT_2500, "What the video shows, at most 2500 characters."),
        VIDEO_OPTIONS[0],
        VIDEO_OPTIONS[1],
        VIDEO_OPTIONS[2],
        field("aspect_ratio", Rule::OneOf(&["16:9", "9:16", "1:1"]), "16:9 (default), 9:16 or 1:1."),
        VIDEO_OPTIONS[3],
        VIDEO_OPTIONS[4],
        VIDEO_OPTIONS[5],
        VIDEO_OPTIONS[6],
        VIDEO_OPTIONS[7],
        field(
            "multi_prompt",
            Rule::MultiPrompt,
            "With shot_type customize: 1 to 6 shots {index, prompt (at most 512 characters), duration}.",
        ),
        field("watermark_info", Rule::Watermark, "{enabled}: also make a watermarked copy."),
        CALLBACK_URL,
        EXTERNAL_TASK_ID,
    ],
    checks: &[
        Check::PromptUnlessCustomShots,
        Check::MultiShot,
        Check::SoundModels(SOUND_MODELS),
        Check::SoundNeedsPro("kling-v2-6"),
        Check::CfgScaleNotFor(CFG_SCALE_UNSUPPORTED),
        Check::VideoDurationByModel(LONG_DURATION_MODELS),
    ],
    max_bytes: 64 * 1024,
    ignored: &[],
};

static IMAGE2VIDEO_BODY: Body = Body {
    fields: &[
        field("model_name", Rule::OneOf(IMAGE2VIDEO_MODELS), "The model (default kling-v1)."),
        field("image", Rule::Image, "The first frame: an http(s) URL or raw Base64 (no data: prefix) of a JPG or PNG, at most 10 MB, at least 300 px."),
        field("image_tail", Rule::Image, "The last frame, as image."),
        field("prompt", PROMPT_2500, "What happens in the video, at most 2500 characters."),
        VIDEO_OPTIONS[0],
        VIDEO_OPTIONS[1],
        VIDEO_OPTIONS[2],
        VIDEO_OPTIONS[3],
        VIDEO_OPTIONS[4],
        VIDEO_OPTIONS[5],
        VIDEO_OPTIONS[6],
        VIDEO_OPTIONS[7],
        field("multi_prompt", Rule::MultiPrompt, "With shot_type customize: 1 to 6 shots {index, prompt (at most 512 characters), duration}."),
        field("static_mask", Rule::Image, "The motion brush's static area, as image."),
        field("dynamic_masks", Rule::DynamicMasks { max: 6 }, "Up to 6 {mask, trajectories: 2 to 77 points {x, y}}."),
        field("voice_list", Rule::VoiceList { max: 2 }, "Up to 2 {voice_id}, referenced as <<<voice_1>>> in the prompt (needs sound on)."),
        field("element_list", Rule::ElementList { max: 3 }, "Up to 3 {element_id}."),
        field("watermark_info", Rule::Watermark, "{enabled}: also make a watermarked copy."),
        CALLBACK_URL,
        EXTERNAL_TASK_ID,
    ],
    checks: &[
        Check::AtLeastOne(&["image", "image_tail"]),
        Check::Exclusive(&[&["image_tail"], &["static_mask", "dynamic_masks"], &["camera_control"]]),
        Check::Exclusive(&[&["element_list"], &["voice_list"]]),
        Check::MultiShot,
        Check::SoundModels(SOUND_MODELS),
        Check::SoundNeedsPro("kling-v2-6"),
        Check::VoiceNeedsSound,
        Check::CfgScaleNotFor(CFG_SCALE_UNSUPPORTED),
        Check::VideoDurationByModel(LONG_DURATION_MODELS),
    ],
    // Two images of 10 MB in Base64, and the rest.
    // One image at Kling's 10 MB limit in Base64 (13.4 MiB), or two of about 5 MB; larger
    // images go as http(s) URLs. Two 10 MB images (25 MiB) took the isolate's peak 157 MiB
    // up, past the 128 MB an isolate has at the edge (tests/e2e/memory.test.mjs measures it).
    max_bytes: 14 * 1024 * 1024,
    // Kling's own clients send their text-to-video default here too (the PyPI `klingai-api`
    // sends `aspect_ratio: "16:9"` in every image2video body); an image sets the shape.
    ignored: &["aspect_ratio"],
};

static TEXT_TO_AUDIO_BODY: Body = Body {
    fields: &[
        required(
            "prompt",
            Rule::Text { max: 200, nonempty: true },
            "The sound wanted, at most 200 characters.",
        ),
        required(
            "duration",
            Rule::Number { min: 3.0, max: 10.0, decimals: Some(1) },
            "Seconds, a number from 3.0 to 10.0 with at most one decimal place.",
        ),
        CALLBACK_URL,
        EXTERNAL_TASK_ID,
    ],
    checks: &[],
    max_bytes: 64 * 1024,
    ignored: &[],
};

static ADD_SOUND_BODY: Body = Body {
    fields: &[
        Field {
            name: "video",
            rule: VIDEO_FILE,
            required: true,
            target: Target::UpstreamAs("video_url"),
            doc: "The video to add sound to (Kling's video_url): .mp4 or .mov, 3 to 20 seconds.",
        },
        edge(
            "cropVideoOriginalSound",
            Rule::Boolean,
            "Only false (the default): Kling's API replaces the video's sound and has no switch to keep it.",
        ),
        Field {
            name: "replyUrl",
            rule: WEBHOOK,
            required: false,
            target: Target::Webhook,
            doc: "Your webhook for the finished job, signed with your client's secret.",
        },
        edge(
            "replyRef",
            Rule::Text { max: 1024, nonempty: false },
            "Passed back as-is in the replyUrl webhook.",
        ),
        edge(
            "maxJobs",
            Rule::Integer { min: 1, max: 100 },
            "Refuse (429) when your running tasks already number this many.",
        ),
        edge(
            "email",
            Rule::Text { max: 254, nonempty: true },
            "The Kling account to use: one of the deployment's accounts (an email of KLING_ACCOUNTS, or KLING_ACCOUNT_EMAIL); the create goes to that account only (waiting for its slots). Unknown: 400.",
        ),
    ],
    checks: &[Check::NotTrue(
        "cropVideoOriginalSound",
        "cannot be true: Kling's API has no way to keep the original sound (its video to audio replaces it)",
    )],
    max_bytes: 64 * 1024,
    ignored: &[],
};

/// The simpler video-to-audio body some write-ups describe, mapped onto Kling's official call.
fn simplified_audio(validated: &mut Validated) -> Result<(), ApiError> {
    let prompt = validated.options.prompt.take().map(Value::String);
    let audio_type = validated.options.audio_type.take();
    let upstream = &mut validated.upstream;
    match audio_type.as_deref().unwrap_or("sound_effect") {
        "music" | "bgm" => {
            if let Some(prompt) = prompt {
                upstream.insert("bgm_prompt".into(), prompt);
            }
        }
        kind => {
            if let Some(prompt) = prompt {
                upstream.insert("sound_effect_prompt".into(), prompt);
            }
            if kind == "asmr" {
                upstream.insert("asmr_mode".into(), Value::Bool(true));
            }
        }
    }
    Ok(())
}

pub static V2A: Surface = Surface {
    path: "/v1/audio/video-to-audio",
    endpoint: &VIDEO_TO_AUDIO,
    body: &V2A_OFFICIAL,
    style: Style::Kling,
    queries: true,
    transform: None,
    summary: "Video to audio: add sound effects, music or ASMR to a video (Kling's own path and body)",
};

pub static V2A_SIMPLE: Surface = Surface {
    path: "/v1/videos/video-to-audio",
    endpoint: &VIDEO_TO_AUDIO,
    body: &V2A_SIMPLIFIED,
    style: Style::Kling,
    queries: true,
    transform: Some(simplified_audio),
    summary: "Video to audio with the simpler body (video_url, prompt, audio_type), mapped onto Kling's call",
};

pub static T2V: Surface = Surface {
    path: "/v1/videos/text2video",
    endpoint: &TEXT2VIDEO,
    body: &TEXT2VIDEO_BODY,
    style: Style::Kling,
    queries: true,
    transform: None,
    summary: "Text to video, with sound on kling-v2-6 (pro) and kling-v3",
};

pub static I2V: Surface = Surface {
    path: "/v1/videos/image2video",
    endpoint: &IMAGE2VIDEO,
    body: &IMAGE2VIDEO_BODY,
    style: Style::Kling,
    queries: true,
    transform: None,
    summary: "Image to video, with sound on kling-v2-6 (pro) and kling-v3",
};

pub static T2A: Surface = Surface {
    path: "/v1/audio/text-to-audio",
    endpoint: &TEXT_TO_AUDIO,
    body: &TEXT_TO_AUDIO_BODY,
    style: Style::Kling,
    queries: true,
    transform: None,
    summary: "Text to audio: a sound of 3 to 10 seconds from a prompt",
};

pub static ADD_SOUND: Surface = Surface {
    path: "/v1/kling/videos/add-sound",
    endpoint: &VIDEO_TO_AUDIO,
    body: &ADD_SOUND_BODY,
    style: Style::UseApi,
    queries: false,
    transform: None,
    summary: "useapi.net's \"Add sound to Kling video\", as Kling's video to audio",
};

/// Every surface, in the order the API document lists them.
pub static SURFACES: &[&Surface] = &[&V2A, &V2A_SIMPLE, &T2V, &I2V, &T2A, &ADD_SOUND];

impl Surface {
    /// Whether a create may come as `multipart/form-data` (useapi.net's add-sound: its
    /// fields as text parts, its video as a URL or the file itself).
    pub fn takes_forms(&self) -> bool {
        self.style == Style::UseApi && self.endpoint.video_input
    }

    /// Checks a create body and builds Kling's body from it.
    pub fn validate(&self, raw: &[u8], policy: crate::validate::UrlPolicy) -> Result<Validated, ApiError> {
        let mut validated = super::fields::validate(self.body, raw, policy)?;
        if let Some(transform) = self.transform {
            transform(&mut validated)?;
        }
        Ok(validated)
    }
}

impl PartialEq for Surface {
    /// Surfaces are statics: one is itself.
    fn eq(&self, other: &Surface) -> bool {
        std::ptr::eq(self, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::UrlPolicy;
    use serde_json::json;

    const PUBLIC: UrlPolicy = UrlPolicy { allow_private: false };
    const VIDEO: &str = "https://cdn.example.com/clips/beach.mp4";
    /// A PNG's signature and header, Base64.
    const PNG_BASE64: &str =
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

    fn create(surface: &Surface, body: Value) -> Result<Validated, ApiError> {
        surface.validate(body.to_string().as_bytes(), PUBLIC)
    }

    /// Asserts a 400 whose message starts with `field:` and mentions `rule_words`.
    fn assert_rejected(result: Result<Validated, ApiError>, field: &str, rule_words: &str) {
        let error = result.expect_err("should be rejected");
        assert_eq!(error.status, 400, "{error}");
        assert!(error.message.starts_with(&format!("{field}:")), "{error}");
        assert!(error.message.contains(rule_words), "{error}");
    }

    // --- video to audio, Kling's body ---------------------------------------------------

    #[test]
    fn full_official_body_is_forwarded() {
        let validated = create(
            &V2A,
            json!({
                "video_url": VIDEO, "sound_effect_prompt": "waves", "bgm_prompt": "calm piano",
                "asmr_mode": false, "callback_url": "https://app.example.com/hooks/kling",
                "external_task_id": "order-42", "video_duration": 8.5
            }),
        )
        .unwrap();
        assert_eq!(
            Value::Object(validated.upstream),
            json!({"video_url": VIDEO, "sound_effect_prompt": "waves", "bgm_prompt": "calm piano",
                   "asmr_mode": false, "external_task_id": "order-42"})
        );
        assert_eq!(validated.webhook.as_deref(), Some("https://app.example.com/hooks/kling"));
        assert_eq!(validated.options.video_duration, Some(8.5), "kept at the edge");
    }

    #[test]
    fn exactly_one_video_source() {
        assert!(create(&V2A, json!({"video_id": "842250903629086785"})).is_ok());
        assert_rejected(
            create(&V2A, json!({"video_id": "1", "video_url": VIDEO})),
            "video_id",
            "exactly one",
        );
        assert_rejected(create(&V2A, json!({"sound_effect_prompt": "x"})), "video_url", "exactly one");
        assert_rejected(create(&V2A, json!({"video_id": null, "video_url": null})), "video_url", "required");
    }

    #[test]
    fn body_must_be_a_json_object() {
        for (body, words) in [
            ("", "empty"),
            ("   ", "empty"),
            ("[]", "not an array"),
            ("\"x\"", "not a string"),
            ("{", "valid JSON"),
        ] {
            let error = V2A.validate(body.as_bytes(), PUBLIC).unwrap_err();
            assert_eq!((error.status, error.code), (400, 1200), "{body}");
            assert!(error.message.starts_with("body:") && error.message.contains(words), "{body}: {error}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert_rejected(create(&V2A, json!({"video_ulr": VIDEO})), "video_ulr", "unknown field");
        assert_rejected(create(&V2A, json!({"video_url": VIDEO, "prompt": "x"})), "prompt", "unknown field");
        assert_rejected(
            create(&V2A_SIMPLE, json!({"video_url": VIDEO, "bgm_prompt": "x"})),
            "bgm_prompt",
            "unknown",
        );
        assert_rejected(
            create(&T2A, json!({"prompt": "rain", "duration": 5, "model_name": "x"})),
            "model_name",
            "unknown",
        );
    }

    #[test]
    fn types_are_checked() {
        assert_rejected(create(&V2A, json!({"video_url": 5})), "video_url", "must be a string, not a number");
        assert_rejected(
            create(&V2A, json!({"video_url": VIDEO, "asmr_mode": "yes"})),
            "asmr_mode",
            "boolean",
        );
        assert_rejected(
            create(&V2A, json!({"video_url": VIDEO, "video_duration": "8"})),
            "video_duration",
            "number",
        );
        assert_rejected(
            create(&V2A, json!({"video_url": VIDEO, "bgm_prompt": ["a"]})),
            "bgm_prompt",
            "an array",
        );
    }

    #[test]
    fn prompts_count_characters_not_bytes() {
        assert!(create(&V2A, json!({"video_url": VIDEO, "bgm_prompt": "é".repeat(200)})).is_ok());
        assert_rejected(
            create(&V2A, json!({"video_url": VIDEO, "sound_effect_prompt": "a".repeat(201)})),
            "sound_effect_prompt",
            "at most 200 characters (got 201)",
        );
        assert_rejected(
            create(&V2A_SIMPLE, json!({"video_url": VIDEO, "prompt": "🙂".repeat(201)})),
            "prompt",
            "at most 200",
        );
    }

    #[test]
    fn video_duration_is_a_hint_of_seconds() {
        for ok in [json!(3), json!(25), json!(12.75)] {
            assert!(
                create(&V2A, json!({"video_url": VIDEO, "video_duration": ok})).is_ok(),
                "{ok}: checked after measuring"
            );
        }
        for bad in [json!(-5), json!(1e300)] {
            assert_rejected(
                create(&V2A, json!({"video_url": VIDEO, "video_duration": bad})),
                "video_duration",
                "from 0 to 86400",
            );
        }
    }

    #[test]
    fn video_urls() {
        assert_rejected(
            create(&V2A, json!({"video_url": "https://cdn.example.com/a.avi"})),
            "video_url",
            "(the path ends in .avi)",
        );
        assert_rejected(
            create(&V2A, json!({"video_url": "https://cdn.example.com/a.mp4.exe"})),
            "video_url",
            ".mp4 or .mov",
        );
        for url in [
            "https://cdn.example.com/a.MP4",
            "https://cdn.example.com/a.Mov",
            "https://cdn.example.com/signed/3f2a?sig=a.b",
        ] {
            assert!(create(&V2A, json!({"video_url": url})).is_ok(), "{url}");
        }
        let validated = create(&V2A, json!({"video_url": "HTTPS://CDN.Example.COM/a.mp4"})).unwrap();
        assert_eq!(validated.upstream["video_url"], "https://cdn.example.com/a.mp4", "forwarded normalised");
        assert!(create(
            &V2A,
            json!({"video_url": VIDEO, "callback_url": "https://app.example.com/hook.php"})
        )
        .is_ok());
        assert_rejected(
            create(&V2A, json!({"video_url": VIDEO, "callback_url": "mailto:a@b.c"})),
            "callback_url",
            "absolute http",
        );
    }

    // --- video to audio, the simpler body -----------------------------------------------

    #[test]
    fn simplified_body_maps_onto_official() {
        for (audio_type, sound, bgm, asmr) in [
            (json!(null), Some("p"), None, None),
            (json!("sound_effect"), Some("p"), None, None),
            (json!("ambient"), Some("p"), None, None),
            (json!("music"), None, Some("p"), None),
            (json!("bgm"), None, Some("p"), None),
            (json!("asmr"), Some("p"), None, Some(true)),
        ] {
            let upstream =
                create(&V2A_SIMPLE, json!({"video_url": VIDEO, "prompt": "p", "audio_type": audio_type}))
                    .unwrap()
                    .upstream;
            assert_eq!(upstream.get("sound_effect_prompt").and_then(Value::as_str), sound, "{audio_type}");
            assert_eq!(upstream.get("bgm_prompt").and_then(Value::as_str), bgm, "{audio_type}");
            assert_eq!(upstream.get("asmr_mode").and_then(Value::as_bool), asmr, "{audio_type}");
            assert_eq!(upstream["video_url"], VIDEO);
            assert!(upstream.get("prompt").is_none() && upstream.get("audio_type").is_none());
        }
        assert_rejected(create(&V2A_SIMPLE, json!({"prompt": "x"})), "video_url", "is required");
        assert_rejected(
            create(&V2A_SIMPLE, json!({"video_url": VIDEO, "audio_type": "speech"})),
            "audio_type",
            "must be one of",
        );
    }

    // --- text to video ------------------------------------------------------------------

    #[test]
    fn text2video_with_sound_on_a_model_that_makes_it() {
        let validated = create(
            &T2V,
            json!({"model_name": "kling-v2-6", "prompt": "waves crashing", "mode": "pro", "sound": "on",
                   "duration": "10", "aspect_ratio": "9:16", "negative_prompt": "blur", "external_task_id": "t2v-1"}),
        )
        .unwrap();
        assert_eq!(validated.upstream["sound"], "on");
        assert_eq!(validated.upstream.len(), 8);
        assert!(create(
            &T2V,
            json!({"model_name": "kling-v3", "prompt": "x", "sound": "on", "duration": "13"})
        )
        .is_ok());
    }

    #[test]
    fn sound_only_where_kling_makes_it() {
        assert_rejected(
            create(&T2V, json!({"prompt": "x", "sound": "on"})),
            "sound",
            "only for kling-v2-6 and kling-v3 (model_name is kling-v1)",
        );
        assert_rejected(
            create(&T2V, json!({"model_name": "kling-v2-5-turbo", "prompt": "x", "sound": "on"})),
            "sound",
            "kling-v2-5-turbo",
        );
        assert_rejected(
            create(&T2V, json!({"model_name": "kling-v2-6", "prompt": "x", "sound": "on"})),
            "sound",
            "only in pro mode",
        );
        assert!(create(&T2V, json!({"model_name": "kling-v1", "prompt": "x", "sound": "off"})).is_ok());
    }

    #[test]
    fn text2video_rules() {
        assert_rejected(create(&T2V, json!({"model_name": "kling-v1"})), "prompt", "is required");
        assert_rejected(
            create(&T2V, json!({"prompt": "a".repeat(2501)})),
            "prompt",
            "at most 2500 characters (got 2501)",
        );
        assert_rejected(create(&T2V, json!({"prompt": "x", "mode": "standard"})), "mode", "std, pro");
        assert_rejected(
            create(&T2V, json!({"prompt": "x", "aspect_ratio": "4:3"})),
            "aspect_ratio",
            "16:9, 9:16, 1:1",
        );
        assert_rejected(create(&T2V, json!({"prompt": "x", "duration": 5})), "duration", "must be a string");
        assert_rejected(
            create(&T2V, json!({"prompt": "x", "duration": "7"})),
            "duration",
            "\"5\" or \"10\" for kling-v1",
        );
        assert_rejected(create(&T2V, json!({"prompt": "x", "cfg_scale": 1.5})), "cfg_scale", "from 0 to 1");
        assert_rejected(
            create(&T2V, json!({"model_name": "kling-v2-master", "prompt": "x", "cfg_scale": 0.5})),
            "cfg_scale",
            "does not support",
        );
        assert!(create(&T2V, json!({"prompt": "x", "cfg_scale": 0.5})).is_ok());
        assert_rejected(
            create(&T2V, json!({"model_name": "kling-v1-5", "prompt": "x"})),
            "model_name",
            "must be one of",
        );
        assert_rejected(create(&T2V, json!({"prompt": "x", "image": PNG_BASE64})), "image", "unknown field");
        let shots = json!([{"index": 1, "prompt": "a", "duration": "2"}, {"index": 2, "prompt": "b", "duration": "3"}]);
        assert!(create(&T2V, json!({"multi_shot": true, "shot_type": "customize", "multi_prompt": shots}))
            .is_ok());
        assert_rejected(
            create(&T2V, json!({"multi_shot": true, "shot_type": "customize"})),
            "multi_prompt",
            "is required",
        );
    }

    #[test]
    fn camera_control() {
        let simple = json!({"type": "simple", "config": {"horizontal": 0, "vertical": 0, "pan": 5, "tilt": 0, "roll": 0, "zoom": 0}});
        assert!(create(&T2V, json!({"prompt": "x", "camera_control": simple})).is_ok());
        assert!(create(&T2V, json!({"prompt": "x", "camera_control": {"type": "down_back"}})).is_ok());
        for (control, field, words) in [
            (json!({"type": "simple"}), "camera_control.config", "is required"),
            (json!({"type": "zoom_in"}), "camera_control.type", "must be one of"),
            (json!({"type": "down_back", "config": {"pan": 1}}), "camera_control.config", "must be left out"),
            (
                json!({"type": "simple", "config": {"pan": 1, "zoom": 2}}),
                "camera_control.config",
                "exactly one",
            ),
            (json!({"type": "simple", "config": {"pan": 11}}), "camera_control.config.pan", "from -10 to 10"),
            (json!({"type": "simple", "config": {"spin": 1}}), "camera_control.config.spin", "unknown field"),
        ] {
            assert_rejected(create(&T2V, json!({"prompt": "x", "camera_control": control})), field, words);
        }
    }

    // --- image to video -----------------------------------------------------------------

    #[test]
    fn image2video_takes_a_url_or_raw_base64() {
        assert!(create(&I2V, json!({"image": "https://cdn.example.com/first.png", "prompt": "x"})).is_ok());
        assert!(create(&I2V, json!({"image": PNG_BASE64})).is_ok());
        assert!(create(&I2V, json!({"image_tail": "https://cdn.example.com/last.jpg"})).is_ok());
        assert_rejected(create(&I2V, json!({"prompt": "x"})), "image", "at least one of image, image_tail");
        assert_rejected(
            create(&I2V, json!({"image": format!("data:image/png;base64,{PNG_BASE64}")})),
            "image",
            "without a data: prefix",
        );
        assert_rejected(
            create(&I2V, json!({"image": "https://cdn.example.com/a.gif"})),
            "image",
            "(the path ends in .gif)",
        );
        assert_rejected(create(&I2V, json!({"image": "R0lGODlhAQABAAAAACw="})), "image", "JPG or PNG");
        assert_rejected(create(&I2V, json!({"image": "not base64!"})), "image", "http(s) URL or raw Base64");
        assert_rejected(
            create(&I2V, json!({"image": "http://169.254.169.254/a.png"})),
            "image",
            "private or local",
        );
        // Kling's clients send text-to-video's aspect_ratio here too: dropped and named, not refused.
        let validated = create(&I2V, json!({"image": PNG_BASE64, "aspect_ratio": "16:9"})).unwrap();
        assert_eq!(validated.ignored, ["aspect_ratio"]);
        assert!(!validated.upstream.contains_key("aspect_ratio"));
    }

    #[test]
    fn image2video_exclusions() {
        let control = json!({"type": "down_back"});
        let masks = json!([{"mask": PNG_BASE64, "trajectories": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}]);
        assert!(create(&I2V, json!({"image": PNG_BASE64, "dynamic_masks": masks.clone()})).is_ok());
        assert_rejected(
            create(&I2V, json!({"image": PNG_BASE64, "image_tail": PNG_BASE64, "camera_control": control})),
            "camera_control",
            "cannot be combined with image_tail",
        );
        assert_rejected(
            create(&I2V, json!({"image": PNG_BASE64, "image_tail": PNG_BASE64, "dynamic_masks": masks})),
            "dynamic_masks",
            "mutually exclusive",
        );
        let voices = json!([{"voice_id": "v1"}]);
        assert_rejected(
            create(
                &I2V,
                json!({"image": PNG_BASE64, "voice_list": voices.clone(), "element_list": [{"element_id": 1}]}),
            ),
            "voice_list",
            "cannot be combined with element_list",
        );
        assert_rejected(
            create(&I2V, json!({"image": PNG_BASE64, "voice_list": voices.clone()})),
            "sound",
            "must be on when a voice",
        );
        assert_rejected(
            create(&I2V, json!({"image": PNG_BASE64, "prompt": "<<<voice_1>>> says hi"})),
            "sound",
            "must be on",
        );
        assert!(create(&I2V, json!({"model_name": "kling-v2-6", "mode": "pro", "sound": "on", "image": PNG_BASE64, "voice_list": voices})).is_ok());
        assert_rejected(
            create(
                &I2V,
                json!({"image": PNG_BASE64, "voice_list": [{"voice_id": "a"}, {"voice_id": "b"}, {"voice_id": "c"}]}),
            ),
            "voice_list",
            "1 to 2 entries",
        );
    }

    // --- text to audio ------------------------------------------------------------------

    #[test]
    fn text_to_audio() {
        let validated = create(&T2A, json!({"prompt": "rain on a tin roof", "duration": 5.5})).unwrap();
        assert_eq!(
            Value::Object(validated.upstream),
            json!({"prompt": "rain on a tin roof", "duration": 5.5})
        );
        assert!(create(&T2A, json!({"prompt": "x", "duration": 3})).is_ok());
        assert!(create(&T2A, json!({"prompt": "x", "duration": 10.0})).is_ok());
        assert_rejected(create(&T2A, json!({"duration": 5})), "prompt", "is required");
        assert_rejected(create(&T2A, json!({"prompt": "", "duration": 5})), "prompt", "must not be empty");
        assert_rejected(
            create(&T2A, json!({"prompt": "a".repeat(201), "duration": 5})),
            "prompt",
            "at most 200 characters",
        );
        assert_rejected(create(&T2A, json!({"prompt": "x"})), "duration", "is required");
        assert_rejected(create(&T2A, json!({"prompt": "x", "duration": 2.9})), "duration", "from 3 to 10");
        assert_rejected(create(&T2A, json!({"prompt": "x", "duration": 10.5})), "duration", "from 3 to 10");
        assert_rejected(
            create(&T2A, json!({"prompt": "x", "duration": 5.25})),
            "duration",
            "one decimal place",
        );
        assert_rejected(
            create(&T2A, json!({"prompt": "x", "duration": "5"})),
            "duration",
            "must be a number",
        );
    }

    // --- useapi's add-sound --------------------------------------------------------------

    #[test]
    fn add_sound_is_video_to_audio() {
        let validated = create(
            &ADD_SOUND,
            json!({"video": VIDEO, "replyUrl": "https://my.domain.com/webhook", "replyRef": "my-id-1234",
                   "cropVideoOriginalSound": false, "maxJobs": 3, "email": "me@example.com"}),
        )
        .unwrap();
        assert_eq!(Value::Object(validated.upstream), json!({"video_url": VIDEO}));
        assert_eq!(validated.webhook.as_deref(), Some("https://my.domain.com/webhook"));
        assert_eq!(validated.options.reply_ref.as_deref(), Some("my-id-1234"));
        assert_eq!(validated.options.max_jobs, Some(3));
        assert_eq!(ADD_SOUND.endpoint, &VIDEO_TO_AUDIO);
        assert_rejected(
            create(&ADD_SOUND, json!({"video": VIDEO, "cropVideoOriginalSound": true})),
            "cropVideoOriginalSound",
            "cannot be true",
        );
        assert_rejected(create(&ADD_SOUND, json!({"video": "not a url"})), "video", "spaces");
        assert_rejected(
            create(&ADD_SOUND, json!({"video": "https://cdn.example.com/a.webm"})),
            "video",
            ".mp4 or .mov",
        );
        assert_rejected(create(&ADD_SOUND, json!({"replyRef": "x"})), "video", "is required");
        assert_rejected(
            create(&ADD_SOUND, json!({"video": VIDEO, "maxJobs": 0})),
            "maxJobs",
            "from 1 to 100",
        );
    }

    #[test]
    fn a_body_too_big_to_build_is_refused_for_what_it_is_before_it_is_built() {
        // A 28 MiB array where an image belongs: refused from its first character.
        let zeros = format!("{{\"image\": [{}0]}}", "0,".repeat(1_000_000));
        let error = I2V.validate(zeros.as_bytes(), PUBLIC).unwrap_err();
        assert_eq!(error.message, "image: must be a string, not an array");
        // A body of many short keys is refused, its map never past 256 fields.
        let keys: Vec<String> = (0..30_000).map(|i| format!("\"k{i}\": 0")).collect();
        let many = format!("{{{}}}", keys.join(","));
        assert_eq!(
            V2A.validate(many.as_bytes(), PUBLIC).unwrap_err().message,
            "body: must have at most 256 fields"
        );
        let broken = format!("{{{}, \"x\": }}", keys.join(","));
        assert!(V2A
            .validate(broken.as_bytes(), PUBLIC)
            .unwrap_err()
            .message
            .starts_with("body: must be valid JSON"));
        // A Base64 image whose last block has stray padding bits is refused, as Kling would.
        let stray = format!("{{\"image\": \"{}\"}}", PNG_BASE64.replace("ggg==", "ggh=="));
        assert_ne!(stray, format!("{{\"image\": \"{PNG_BASE64}\"}}"), "the fixture ends in ggg==");
        assert_rejected(I2V.validate(stray.as_bytes(), PUBLIC), "image", "raw Base64");
        // Where a list belongs, a list with too many values is refused before it is built.
        let masks = format!("{{\"image\": \"{PNG_BASE64}\", \"dynamic_masks\": [{}0]}}", "0,".repeat(20_000));
        assert_rejected(I2V.validate(masks.as_bytes(), PUBLIC), "dynamic_masks", "at most 10000 values");
        for (text, values) in
            [(r#""a,[b]""#, 1), (r#"[1, 2.5e3, -3, true, null, "x\"y", {"k": [ ]}]"#, 10), ("[[[]]]", 3)]
        {
            assert_eq!(super::super::fields::values_in(text), values, "{text}");
        }
    }

    #[test]
    fn a_required_prompt_of_only_spaces_is_no_prompt_on_every_endpoint() {
        for blank in ["", "   ", "\n\t "] {
            assert_rejected(
                create(&T2V, json!({"prompt": blank})),
                "prompt",
                "must not be empty or only spaces",
            );
            assert_rejected(
                create(&T2A, json!({"prompt": blank, "duration": 5})),
                "prompt",
                "must not be empty or only spaces",
            );
            // The video endpoints' prompts are optional: image to video needs an image, and
            // video to audio's prompts steer a sound Kling makes from the video alone.
            assert!(create(&I2V, json!({"image": PNG_BASE64, "prompt": blank})).is_ok());
            assert!(create(&V2A, json!({"video_url": VIDEO, "sound_effect_prompt": blank})).is_ok());
        }
        // Custom shots carry their own prompts.
        let shots = json!([{"index": 1, "prompt": "a wave", "duration": "5"}]);
        assert!(create(
            &T2V,
            json!({"model_name": "kling-v3", "multi_shot": true, "shot_type": "customize",
            "multi_prompt": shots, "prompt": " ", "duration": "5"})
        )
        .is_ok());
    }

    #[test]
    fn near_misses_of_a_field_are_refused_with_the_field_meant() {
        for (surface, body, field, meant) in [
            (&V2A, json!({"video_url": VIDEO, "asmr_mod": true}), "asmr_mod", "asmr_mode"),
            (&V2A, json!({"video_url": VIDEO, "asmrMode": true}), "asmrMode", "asmr_mode"),
            (&V2A, json!({"video_ulr": VIDEO}), "video_ulr", "video_url"),
            (&T2V, json!({"prompt": "x", "sounds": "on"}), "sounds", "sound"),
            (&T2V, json!({"prompt": "x", "sund": "on"}), "sund", "sound"),
            (&ADD_SOUND, json!({"video": VIDEO, "replyurl": "https://a.example/h"}), "replyurl", "replyUrl"),
        ] {
            assert_rejected(create(surface, body), field, &format!("unknown field; did you mean `{meant}`?"));
        }
        // A huge unknown name is refused as it is, without being compared letter by letter.
        let huge = format!("{{\"video_url\": \"{VIDEO}\", \"{}\": 1}}", "a".repeat(1_000_000));
        assert_rejected(V2A.validate(huge.as_bytes(), PUBLIC), &"a".repeat(40), "expected one of video_id");
        // Neither near nor ignored: refused, listing the fields.
        assert_rejected(
            create(&V2A, json!({"video_url": VIDEO, "sounds": 1})),
            "sounds",
            "expected one of video_id",
        );
        // A text-to-video field on text to audio is no near miss and not ignored there.
        assert_rejected(
            create(&T2A, json!({"prompt": "x", "duration": 5, "aspect_ratio": "16:9"})),
            "aspect_ratio",
            "unknown field",
        );
    }

    #[test]
    fn every_edge_field_has_a_typed_option() {
        for surface in SURFACES {
            for field in surface.body.fields.iter().filter(|field| field.target == Target::Edge) {
                let mut options = super::super::fields::EdgeOptions::default();
                assert!(options.keep(field.name, Value::Null), "{}: {}", surface.path, field.name);
            }
        }
    }

    #[test]
    fn every_surface_reaches_a_distinct_path() {
        for (i, a) in SURFACES.iter().enumerate() {
            for b in &SURFACES[i + 1..] {
                assert_ne!(a.path, b.path);
                assert!(
                    !a.path.starts_with(&format!("{}/", b.path))
                        && !b.path.starts_with(&format!("{}/", a.path))
                );
            }
        }
    }
}
