//! The deployment's own copies of a task's result files, in R2: which files a finished task
//! has, what each copy's state is, and when its next attempt falls due.
//!
//! Kling deletes its files after 30 days, and its links are for downloading. So when a task
//! completes with its files, its coordinator copies each one (`task_result.audios[].url_mp3`
//! and `url_wav`, `task_result.videos[].url` and `watermark_url`) into the `RESULTS` bucket,
//! streaming, and tries again on the webhook schedule until the copy succeeds or Kling's
//! 30 days are over. A file above the size cap stays Kling's link, and the answer says so.
//!
//! Each copy keeps its state in the task's record; answers describe it in a `copies` object
//! (see [`describe`]), and `crate::links::result_links` puts a signed link to each stored copy next
//! to Kling's.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::kling::task::Results;
use crate::schedule::Schedule;

/// At most this many files are copied per task (Kling's answers carry one or two).
const MAX_FILES: usize = 16;

/// One result file of a task, as Kling links it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFile {
    /// Where Kling's link sits in the task's data (a JSON pointer: `/task_result/audios/0/url_mp3`).
    pub pointer: String,
    pub url: String,
    /// The copy's name among the task's files (`audio-0.mp3`): its key's and its link's last part.
    pub name: String,
}

/// The link fields of each kind of result item, and what their copies are called.
const AUDIO_FIELDS: &[(&str, &str)] = &[("url_mp3", ".mp3"), ("url_wav", ".wav")];
const VIDEO_FIELDS: &[(&str, &str)] = &[("url", ".mp4"), ("watermark_url", "-watermark.mp4")];

/// The result files of a task's data: each http(s) link of each result item, videos and
/// audios alike (video to audio yields both: the video with its new sound, and the sound).
pub fn result_files(data: &Value) -> Vec<ResultFile> {
    let mut files = Vec::new();
    for (results, fields, stem) in
        [(Results::Videos, VIDEO_FIELDS, "video"), (Results::Audios, AUDIO_FIELDS, "audio")]
    {
        let Some(items) =
            data.pointer(&format!("/task_result/{}", results.field())).and_then(Value::as_array)
        else {
            continue;
        };
        for (index, item) in items.iter().enumerate() {
            for (field, suffix) in fields {
                let Some(url) = item.get(*field).and_then(Value::as_str) else { continue };
                if !(url.starts_with("https://") || url.starts_with("http://")) || files.len() >= MAX_FILES {
                    continue;
                }
                files.push(ResultFile {
                    pointer: format!("/task_result/{}/{index}/{field}", results.field()),
                    url: url.to_owned(),
                    name: format!("{stem}-{index}{suffix}"),
                });
            }
        }
    }
    files
}

/// The `Content-Type` a copy is stored and served with, from its name.
pub fn content_type(name: &str) -> &'static str {
    if name.ends_with(".mp3") {
        "audio/mpeg"
    } else if name.ends_with(".wav") {
        "audio/wav"
    } else if name.ends_with(".mp4") {
        "video/mp4"
    } else {
        "application/octet-stream"
    }
}

/// Whether `name` is one [`result_files`] can give (what a link may name).
pub fn is_copy_name(name: &str) -> bool {
    let Some((stem, rest)) = name.split_once('-') else { return false };
    let (index, suffix) = rest.find(|c: char| !c.is_ascii_digit()).map_or((rest, ""), |at| rest.split_at(at));
    let suffixes: &[(&str, &str)] = match stem {
        "audio" => AUDIO_FIELDS,
        "video" => VIDEO_FIELDS,
        _ => return false,
    };
    !index.is_empty() && index.len() <= 2 && suffixes.iter().any(|(_, known)| *known == suffix)
}

/// A copy's key in the bucket: `results/{shard}/{task_id}/{name}`.
pub fn object_key(shard: &str, task_id: &str, name: &str) -> String {
    format!("results/{shard}/{task_id}/{name}")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Waiting for its next attempt.
    #[default]
    Pending,
    /// In the bucket.
    Copied,
    /// Larger than the deployment's cap: Kling's link only.
    TooLarge,
    /// Every attempt failed until Kling's files were gone.
    Failed,
}

/// One file's copy, as the task's record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    pub pointer: String,
    /// Kling's link it is copied from.
    pub source: String,
    pub name: String,
    pub state: CopyState,
    /// When it was queued (epoch ms): attempts go on until Kling's files are gone, 30 days on.
    pub queued_at: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When the copy was stored (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_at: Option<u64>,
    /// When the bucket's lifecycle rule removes it (`copied_at` + the retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How one copy attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    Copied {
        bytes: u64,
    },
    /// Its size (from `Content-Length`, or as far as it was read) is over the cap.
    TooLarge {
        bytes: u64,
    },
    /// Worth another attempt (Kling's server failed or answered an error, R2 failed...).
    Retry(String),
}

/// What copying needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySettings {
    /// `RESULT_COPY_MAX_BYTES`.
    pub max_bytes: u64,
    /// `RESULT_RETENTION_DAYS`, in ms.
    pub retention_ms: u64,
}

impl Default for CopySettings {
    fn default() -> CopySettings {
        use crate::config::default_whole;
        CopySettings {
            max_bytes: default_whole("RESULT_COPY_MAX_BYTES"),
            retention_ms: days_ms(default_whole("RESULT_RETENTION_DAYS") as u32),
        }
    }
}

pub fn days_ms(days: u32) -> u64 {
    u64::from(days) * 24 * 60 * 60 * 1000
}

/// Queues a copy of each result file the copies do not have yet, due at `now`. Returns
/// whether anything was queued.
pub fn queue(copies: &mut Vec<Copy>, files: Vec<ResultFile>, now: u64) -> bool {
    let mut queued = false;
    for file in files {
        if copies.iter().any(|copy| copy.pointer == file.pointer && copy.source == file.url) {
            continue;
        }
        queued = true;
        copies.retain(|copy| copy.pointer != file.pointer);
        copies.push(Copy {
            pointer: file.pointer,
            source: file.url,
            name: file.name,
            state: CopyState::Pending,
            queued_at: now,
            attempts: 0,
            next_attempt_at: Some(now),
            bytes: None,
            copied_at: None,
            expires_at: None,
            last_error: None,
        });
    }
    queued
}

/// The copies due at `now`, by name.
pub fn due(copies: &[Copy], now: u64) -> Vec<String> {
    copies
        .iter()
        .filter(|copy| copy.state == CopyState::Pending && copy.next_attempt_at.is_some_and(|at| at <= now))
        .map(|copy| copy.name.clone())
        .collect()
}

/// The earliest next attempt of any copy.
pub fn next_due(copies: &[Copy]) -> Option<u64> {
    copies
        .iter()
        .filter(|copy| copy.state == CopyState::Pending)
        .filter_map(|copy| copy.next_attempt_at)
        .min()
}

/// Kling's link for the file `name` when it is not copied (being copied, or never will be)
/// and Kling still keeps it: what a link to the copy serves meanwhile.
pub fn kling_source<'a>(copies: &'a [Copy], name: &str, now: u64) -> Option<&'a str> {
    copies
        .iter()
        .find(|copy| copy.name == name && copy.state != CopyState::Copied)
        .filter(|copy| now < copy.queued_at.saturating_add(crate::kling::RETENTION_MS))
        .map(|copy| copy.source.as_str())
}

/// Whether a copy has no outcome yet: not tried, or its first attempt still in flight (or cut
/// off). The edge copy waits for every first outcome, so it is written once with each copy's
/// state rather than once before and once after.
pub fn first_outcome_pending(copies: &[Copy]) -> bool {
    copies.iter().any(|copy| copy.state == CopyState::Pending && copy.last_error.is_none())
}

/// The time of the attempt after `attempts` failed ones, if it comes before Kling's files
/// are gone, 30 days after the copy was queued.
fn retry_at(copy: &Copy, now: u64, schedule: &Schedule) -> Option<u64> {
    let next = now.saturating_add(schedule.repeating_delay_ms(copy.attempts.saturating_sub(1)));
    (next <= copy.queued_at.saturating_add(crate::kling::RETENTION_MS)).then_some(next)
}

/// Starts an attempt at the copy `name`, if one is due: counts it and books the next one
/// first, so an attempt cut off (an alarm evicted in the middle of a copy) is made again
/// later and counts toward the end. An attempt due after Kling's files are gone is not
/// started: the copy has failed.
pub fn start_attempt(copies: &mut [Copy], name: &str, now: u64, schedule: &Schedule) -> bool {
    let Some(copy) = copies.iter_mut().find(|copy| copy.name == name && copy.state == CopyState::Pending)
    else {
        return false;
    };
    if now > copy.queued_at.saturating_add(crate::kling::RETENTION_MS) {
        copy.state = CopyState::Failed;
        copy.next_attempt_at = None;
        copy.last_error.get_or_insert_with(|| "every attempt was cut off".to_owned());
        return false;
    }
    copy.attempts = copy.attempts.saturating_add(1);
    copy.next_attempt_at = Some(retry_at(copy, now, schedule).unwrap_or(now));
    true
}

/// Records how an attempt at the copy `name` (started by [`start_attempt`]) went. Failed
/// attempts are retried after the schedule's delays (the last repeating) until Kling's
/// files are gone, 30 days after the copy was queued.
pub fn record(
    copies: &mut [Copy],
    name: &str,
    outcome: CopyOutcome,
    now: u64,
    schedule: &Schedule,
    settings: &CopySettings,
) {
    let Some(copy) = copies.iter_mut().find(|copy| copy.name == name && copy.state == CopyState::Pending)
    else {
        return;
    };
    copy.next_attempt_at = None;
    match outcome {
        CopyOutcome::Copied { bytes } => {
            copy.state = CopyState::Copied;
            copy.bytes = Some(bytes);
            copy.copied_at = Some(now);
            copy.expires_at = Some(now.saturating_add(settings.retention_ms));
            copy.last_error = None;
        }
        CopyOutcome::TooLarge { bytes } => {
            copy.state = CopyState::TooLarge;
            copy.bytes = Some(bytes);
            copy.last_error = Some(format!(
                "{} is over this deployment's cap of {} (RESULT_COPY_MAX_BYTES)",
                size(bytes),
                size(settings.max_bytes)
            ));
        }
        CopyOutcome::Retry(error) => {
            copy.last_error = Some(error);
            match retry_at(copy, now, schedule) {
                Some(next) => copy.next_attempt_at = Some(next),
                None => copy.state = CopyState::Failed,
            }
        }
    }
}

/// An attempt from start to outcome (for tests).
#[cfg(test)]
pub fn attempt(
    copies: &mut [Copy],
    name: &str,
    outcome: CopyOutcome,
    now: u64,
    schedule: &Schedule,
    settings: &CopySettings,
) {
    if start_attempt(copies, name, now, schedule) {
        record(copies, name, outcome, now, schedule, settings);
    }
}

/// The keys of the copies in the bucket.
pub fn stored_keys(copies: &[Copy], shard: &str, task_id: &str) -> Vec<String> {
    copies
        .iter()
        .filter(|copy| copy.state == CopyState::Copied)
        .map(|copy| object_key(shard, task_id, &copy.name))
        .collect()
}

/// Ends every copy still waiting as failed, for `reason` (a deployment whose bucket was
/// removed: nothing could ever copy them). Answers whether any was waiting.
pub fn give_up(copies: &mut [Copy], reason: &str) -> bool {
    let mut any = false;
    for copy in copies.iter_mut().filter(|copy| copy.state == CopyState::Pending) {
        copy.state = CopyState::Failed;
        copy.next_attempt_at = None;
        copy.last_error = Some(reason.to_owned());
        any = true;
    }
    any
}

/// When the last copy leaves the bucket (the record is kept until then).
pub fn last_expiry(copies: &[Copy]) -> Option<u64> {
    copies.iter().filter_map(|copy| copy.expires_at).max()
}

/// A size in words: `108 KB`, `12.5 MB`.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes < MIB {
        format!("{} KB", bytes.div_ceil(1024))
    } else {
        format!("{}.{} MB", bytes / MIB, (bytes % MIB) * 10 / MIB)
    }
}

/// One file of an answer's `copies` object: its state, in words where it is not a copy.
/// Links are added when the answer is given (`crate::links::result_links::render`), since
/// they are signed for a while from then.
pub fn describe(copy: &Copy) -> Value {
    let mut file = json!({"field": copy.pointer, "name": copy.name, "state": copy.state});
    if let Some(bytes) = copy.bytes {
        file["bytes"] = json!(bytes);
    }
    if let Some(at) = copy.expires_at {
        file["expires_at"] = json!(at);
    }
    let note = match copy.state {
        CopyState::Pending if copy.last_error.is_none() => {
            Some("being copied; until it is, its link serves Kling's file".to_owned())
        }
        CopyState::Pending => Some(format!(
            "not copied yet ({}); tried {} time{}, trying again; until it is, its link serves Kling's file",
            copy.last_error.as_deref().unwrap_or("failed"),
            copy.attempts,
            if copy.attempts == 1 { "" } else { "s" }
        )),
        CopyState::Copied => None,
        CopyState::TooLarge => Some(format!(
            "not copied: {}; use Kling's link",
            copy.last_error.as_deref().unwrap_or("too large")
        )),
        CopyState::Failed => Some(format!(
            "not copied: every attempt failed ({}); use Kling's link",
            copy.last_error.as_deref().unwrap_or("failed")
        )),
    };
    if let Some(note) = note {
        file["note"] = json!(note);
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn audio_task() -> Value {
        json!({"task_id": "t1", "task_status": "succeed", "task_result": {"audios": [
            {"id": "a", "url_mp3": "https://kling.example/a.mp3", "url_wav": "https://kling.example/a.wav", "duration_mp3": "5.0"}
        ]}})
    }

    fn schedule() -> Schedule {
        Schedule::parse("5,300").unwrap()
    }

    #[test]
    fn each_link_of_each_result_item_is_a_file() {
        let files = result_files(&audio_task());
        assert_eq!(
            files.iter().map(|f| (f.pointer.as_str(), f.name.as_str())).collect::<Vec<_>>(),
            [
                ("/task_result/audios/0/url_mp3", "audio-0.mp3"),
                ("/task_result/audios/0/url_wav", "audio-0.wav")
            ]
        );
        let video = json!({"task_result": {"videos": [{"url": "https://k/v.mp4", "watermark_url": "https://k/w.mp4"},
                                                     {"url": "ftp://k/v.mp4"}, {"url": 5}]}});
        let names: Vec<_> = result_files(&video).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["video-0.mp4", "video-0-watermark.mp4"]);
        assert!(result_files(&json!({"task_result": {"audios": "x"}})).is_empty());
        let both = json!({"task_result": {"videos": [{"url": "https://k/v.mp4"}], "audios": [{"url_mp3": "https://k/a.mp3"}]}});
        let names: Vec<_> = result_files(&both).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["video-0.mp4", "audio-0.mp3"], "video to audio yields both");
        for name in ["audio-0.mp3", "audio-0.wav", "video-12.mp4", "video-0-watermark.mp4"] {
            assert!(is_copy_name(name), "{name}");
        }
        for name in [
            "audio-.mp3",
            "audio-0.mp4",
            "video-0.wav",
            "x-0.mp3",
            "audio-123.mp3",
            "../a",
            "audio-0.mp3/x",
            "",
        ] {
            assert!(!is_copy_name(name), "{name}");
        }
        assert_eq!(content_type("audio-0.mp3"), "audio/mpeg");
        assert_eq!(content_type("audio-0.wav"), "audio/wav");
        assert_eq!(content_type("video-0-watermark.mp4"), "video/mp4");
    }

    #[test]
    fn a_copy_is_queued_once_and_stored_with_its_expiry() {
        let settings = CopySettings::default();
        let mut copies = Vec::new();
        queue(&mut copies, result_files(&audio_task()), NOW);
        queue(&mut copies, result_files(&audio_task()), NOW + 5);
        assert_eq!(copies.len(), 2);
        assert!(first_outcome_pending(&copies));
        assert_eq!(due(&copies, NOW), ["audio-0.mp3", "audio-0.wav"]);
        attempt(
            &mut copies,
            "audio-0.mp3",
            CopyOutcome::Copied { bytes: 30_000 },
            NOW,
            &schedule(),
            &settings,
        );
        assert_eq!(copies[0].state, CopyState::Copied);
        assert_eq!(copies[0].expires_at, Some(NOW + days_ms(90)));
        assert_eq!(stored_keys(&copies, "s", "t1"), ["results/s/t1/audio-0.mp3"]);
        // An attempt reported twice (an alarm run again) changes nothing more.
        record(&mut copies, "audio-0.mp3", CopyOutcome::Retry("late".into()), NOW, &schedule(), &settings);
        assert_eq!(copies[0].state, CopyState::Copied);
        assert_eq!(copies[0].attempts, 1);
    }

    #[test]
    fn failures_are_retried_on_the_schedule_until_klings_files_are_gone() {
        let settings = CopySettings::default();
        let mut copies = Vec::new();
        queue(&mut copies, result_files(&audio_task()), NOW);
        let mut now = NOW;
        attempt(
            &mut copies,
            "audio-0.wav",
            CopyOutcome::Retry("answered 503".into()),
            now,
            &schedule(),
            &settings,
        );
        assert_eq!(copies[1].next_attempt_at, Some(now + 5_000));
        assert!(!first_outcome_pending(&copies[1..]));
        let mut attempts = 1;
        while copies[1].state == CopyState::Pending {
            now = copies[1].next_attempt_at.unwrap();
            attempt(
                &mut copies,
                "audio-0.wav",
                CopyOutcome::Retry("answered 404".into()),
                now,
                &schedule(),
                &settings,
            );
            attempts += 1;
        }
        assert_eq!(copies[1].state, CopyState::Failed);
        assert!(now <= NOW + crate::kling::RETENTION_MS);
        assert_eq!(
            attempts,
            2 + (crate::kling::RETENTION_MS - 5_000) / 300_000,
            "every 5 minutes after the first delay"
        );
        assert!(describe(&copies[1])["note"]
            .as_str()
            .unwrap()
            .contains("every attempt failed (answered 404)"));
    }

    #[test]
    fn a_file_over_the_cap_stays_klings_link_and_says_so() {
        let settings = CopySettings { max_bytes: 40_000, ..CopySettings::default() };
        let mut copies = Vec::new();
        queue(&mut copies, result_files(&audio_task()), NOW);
        attempt(
            &mut copies,
            "audio-0.wav",
            CopyOutcome::TooLarge { bytes: 110_000 },
            NOW,
            &schedule(),
            &settings,
        );
        assert_eq!(next_due(&copies), Some(NOW), "the MP3 is still due");
        assert_eq!(describe(&copies[1])["state"], "too_large");
        assert_eq!(
            describe(&copies[1])["note"],
            "not copied: 108 KB is over this deployment's cap of 40 KB (RESULT_COPY_MAX_BYTES); use Kling's link"
        );
        assert_eq!(describe(&copies[0])["note"], "being copied; until it is, its link serves Kling's file");
    }

    #[test]
    fn a_file_not_copied_is_served_from_klings_link_while_kling_keeps_it() {
        let data = json!({"task_id": "t1", "task_status": "succeed", "task_result": {"audios": [
            {"id": "a", "url_mp3": "https://kling.example/a.mp3", "url_wav": "https://kling.example/a.wav"}]}});
        let mut copies = Vec::new();
        queue(&mut copies, result_files(&data), NOW);
        assert_eq!(kling_source(&copies, "audio-0.mp3", NOW), Some("https://kling.example/a.mp3"));
        let settings = CopySettings { max_bytes: 40_000, retention_ms: days_ms(90) };
        attempt(&mut copies, "audio-0.mp3", CopyOutcome::Copied { bytes: 9 }, NOW, &schedule(), &settings);
        attempt(
            &mut copies,
            "audio-0.wav",
            CopyOutcome::TooLarge { bytes: 90_000 },
            NOW,
            &schedule(),
            &settings,
        );
        assert_eq!(kling_source(&copies, "audio-0.mp3", NOW), None, "the copy itself");
        assert_eq!(kling_source(&copies, "audio-0.wav", NOW), Some("https://kling.example/a.wav"));
        assert_eq!(
            kling_source(&copies, "audio-0.wav", NOW + crate::kling::RETENTION_MS),
            None,
            "Kling's is gone"
        );
        assert_eq!(kling_source(&copies, "video-0.mp4", NOW), None);
    }
}
