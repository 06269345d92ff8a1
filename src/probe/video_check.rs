//! What the worker does with a video before creating a video-to-audio task: the policy
//! (`VIDEO_PROBE`), and the judgement of what the probe learned, so that a video Kling would
//! refuse is refused here first, with the measured fact, and costs nothing.
//!
//! Kling takes MP4 or MOV videos of 3 to 20 seconds and at most 100 MB. A measured length
//! always wins over the client's `video_duration` hint; the hint only stands in when the
//! video could not be measured and the policy lets that through.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::probe::Facts;

pub const MIN_SECONDS: f64 = 3.0;
pub const MAX_SECONDS: f64 = 20.0;
/// Kling's limit, taken as 100 MiB (a file Kling's "100 MB" might mean is never refused).
pub const MAX_BYTES: u64 = 100 * 1024 * 1024;

/// `VIDEO_PROBE`: what to do about a video that cannot be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Refuse it, saying why (the default).
    #[default]
    Strict,
    /// Let it through, checking the client's hint if it gave one, and log it.
    Lenient,
    /// Do not probe at all (the hint, if given, is checked).
    Off,
}

impl Policy {
    pub fn parse(raw: &str) -> Option<Policy> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "strict" => Some(Policy::Strict),
            "lenient" => Some(Policy::Lenient),
            "off" => Some(Policy::Off),
            _ => None,
        }
    }
}

/// What probing a video URL came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Its container and length, and its size if the server said.
    Measured { container: String, seconds: f64, bytes: Option<u64> },
    /// The server answered with this status (after any redirects).
    Status { status: u16 },
    /// The bytes are not an MP4 or MOV (with the `Content-Type` the server claimed).
    NotVideo { content_type: Option<String> },
    /// Its size alone is too large (known before its length was).
    TooLarge { bytes: u64 },
    /// Refused for what its URL does (redirects too often, or to a private address).
    Refused { why: String },
    /// It could not be measured: why (unreachable, too slow, no movie header in reach...).
    Unmeasured { why: String },
}

impl Outcome {
    pub fn measured(facts: Facts, bytes: Option<u64>) -> Outcome {
        Outcome::Measured {
            container: facts.container.name().to_owned(),
            seconds: facts.duration_secs,
            bytes,
        }
    }

    /// Whether the outcome is a fact about the video (worth caching for a while), rather
    /// than about the moment (a timeout, an unreachable server).
    pub fn is_settled(&self) -> bool {
        !matches!(self, Outcome::Unmeasured { .. })
    }
}

/// The judgement: the length to go by, if known, and a note to log if the policy let an
/// unmeasured video through.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub seconds: Option<f64>,
    pub note: Option<String>,
}

fn megabytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    format!("{} MB", bytes / MIB + u64::from(bytes % MIB >= MIB / 2))
}

/// Seconds to one decimal place (`25.0`), without the float formatting machinery `{:.1}`
/// would add to the Worker.
fn tenths(seconds: f64) -> String {
    let tenths = (seconds * 10.0).round() as u64;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Checks the client's hint against Kling's rule (when nothing was measured).
pub fn hint_rule(hint: Option<f64>) -> Result<(), ApiError> {
    match hint {
        Some(seconds) if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) => Err(ApiError::bad_param(
            "video_duration",
            format!("must be from {MIN_SECONDS} to {MAX_SECONDS} seconds (Kling accepts videos of 3 to 20 seconds; got {seconds})"),
        )),
        _ => Ok(()),
    }
}

/// Judges a probe's outcome under `policy`, with the client's `hint` of the length. A
/// refusal names `field`, the client's name for the video's URL (`video_url`, or useapi.net's
/// `video`).
pub fn judge(
    outcome: &Outcome,
    policy: Policy,
    hint: Option<f64>,
    field: &str,
) -> Result<Judgement, ApiError> {
    let refuse = |rule: String| ApiError::bad_param(field, rule);
    match outcome {
        Outcome::Measured { bytes: Some(bytes), .. } | Outcome::TooLarge { bytes } if *bytes > MAX_BYTES => {
            Err(refuse(format!("is {}; Kling accepts at most 100 MB", megabytes(*bytes))))
        }
        Outcome::Measured { seconds, .. } if !(MIN_SECONDS..=MAX_SECONDS).contains(seconds) => {
            Err(refuse(format!("the video lasts {} s; Kling accepts 3 to 20 s", tenths(*seconds))))
        }
        Outcome::Measured { seconds, .. } => {
            let note = hint
                .filter(|hint| (hint - seconds).abs() > 0.5)
                .map(|hint| format!("the client said {hint} s; the video lasts {} s", tenths(*seconds)));
            Ok(Judgement { seconds: Some(*seconds), note })
        }
        Outcome::Status { status } => Err(refuse(format!("answered {status}"))),
        Outcome::NotVideo { content_type } => Err(refuse(match content_type {
            Some(kind) => format!("is not an MP4 or MOV video ({kind}); give a direct link to the .mp4 or .mov file itself, not to a page that plays it"),
            None => "is not an MP4 or MOV video; give a direct link to the .mp4 or .mov file itself".to_owned(),
        })),
        Outcome::TooLarge { .. } => Err(refuse("is larger than Kling accepts (100 MB)".to_owned())),
        Outcome::Refused { why } => Err(refuse(why.clone())),
        Outcome::Unmeasured { why } => match policy {
            Policy::Strict => {
                let advice = if why.contains("ignores Range") {
                    "move its index to the front (ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4) or host it where Range requests work"
                } else {
                    "host it where it answers quickly, or try again"
                };
                Err(refuse(format!(
                    "could not be measured ({why}), and this deployment only accepts videos it can measure: {advice}"
                )))
            }
            Policy::Lenient | Policy::Off => {
                hint_rule(hint)?;
                Ok(Judgement { seconds: hint, note: Some(format!("not measured ({why}); let through")) })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(seconds: f64, bytes: Option<u64>) -> Outcome {
        Outcome::Measured { container: "MP4".into(), seconds, bytes }
    }

    fn message(result: Result<Judgement, ApiError>) -> String {
        let error = result.unwrap_err();
        assert_eq!((error.status, error.code), (400, 1201));
        error.message
    }

    #[test]
    fn measured_facts_refuse_what_kling_would() {
        assert_eq!(
            message(judge(&measured(25.0, None), Policy::Strict, None, "video_url")),
            "video_url: the video lasts 25.0 s; Kling accepts 3 to 20 s"
        );
        assert_eq!(
            message(judge(&measured(2.04, None), Policy::Lenient, None, "video_url")),
            "video_url: the video lasts 2.0 s; Kling accepts 3 to 20 s"
        );
        assert_eq!(
            message(judge(&measured(10.0, Some(150 * 1024 * 1024)), Policy::Strict, None, "video_url")),
            "video_url: is 150 MB; Kling accepts at most 100 MB"
        );
        assert_eq!(
            message(judge(&Outcome::Status { status: 404 }, Policy::Lenient, None, "video_url")),
            "video_url: answered 404"
        );
        assert_eq!(
            message(judge(
                &Outcome::NotVideo { content_type: Some("text/html".into()) },
                Policy::Strict,
                None,
                "video_url"
            )),
            "video_url: is not an MP4 or MOV video (text/html); give a direct link to the .mp4 or .mov file itself, not to a page that plays it"
        );
        assert!(judge(&measured(3.0, Some(MAX_BYTES)), Policy::Strict, None, "video_url").is_ok());
        let private = Outcome::Refused { why: "redirects to a private or local address".into() };
        assert_eq!(
            message(judge(&private, Policy::Lenient, None, "video_url")),
            "video_url: redirects to a private or local address"
        );
        assert!(judge(&measured(20.0, None), Policy::Strict, None, "video_url").is_ok());
    }

    #[test]
    fn any_size_is_worded_without_overflow() {
        let huge = judge(&Outcome::TooLarge { bytes: u64::MAX }, Policy::Strict, None, "video_url");
        assert_eq!(message(huge), "video_url: is 17592186044416 MB; Kling accepts at most 100 MB");
    }

    #[test]
    fn a_refusal_names_the_clients_field() {
        assert_eq!(
            message(judge(&measured(2.0, None), Policy::Strict, None, "video")),
            "video: the video lasts 2.0 s; Kling accepts 3 to 20 s"
        );
    }

    #[test]
    fn the_measured_length_wins_over_the_hint() {
        let judgement = judge(&measured(10.0, None), Policy::Strict, Some(25.0), "video_url").unwrap();
        assert_eq!(judgement.seconds, Some(10.0));
        assert!(judgement.note.unwrap().contains("the client said 25"));
        assert!(message(judge(&measured(25.0, None), Policy::Strict, Some(10.0), "video_url"))
            .contains("lasts 25.0 s"));
    }

    #[test]
    fn an_unmeasured_video_follows_the_policy() {
        let unmeasured = Outcome::Unmeasured { why: "no answer within 4000 ms".into() };
        assert!(message(judge(&unmeasured, Policy::Strict, Some(10.0), "video_url"))
            .contains("could not be measured (no answer within 4000 ms)"));
        let lenient = judge(&unmeasured, Policy::Lenient, Some(10.0), "video_url").unwrap();
        assert_eq!(lenient.seconds, Some(10.0));
        assert!(lenient.note.is_some());
        assert!(message(judge(&unmeasured, Policy::Lenient, Some(25.0), "video_url"))
            .starts_with("video_duration: must be from 3 to 20"));
        assert!(judge(&unmeasured, Policy::Lenient, None, "video_url").is_ok());
    }

    #[test]
    fn policies_parse() {
        assert_eq!(Policy::parse(" Strict "), Some(Policy::Strict));
        assert_eq!(Policy::parse("lenient"), Some(Policy::Lenient));
        assert_eq!(Policy::parse("off"), Some(Policy::Off));
        assert_eq!(Policy::parse("maybe"), None);
        assert!(hint_rule(Some(2.0)).is_err() && hint_rule(None).is_ok() && hint_rule(Some(20.0)).is_ok());
    }
}
