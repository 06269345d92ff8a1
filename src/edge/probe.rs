//! Measuring a video from the edge: the reads the pure probe (`crate::probe`) asks for, over
//! `fetch`, with redirects checked hop by hop, one deadline for the whole probe, and a
//! cache per URL, so a retried create does not probe again.
//!
//! A read asks for a range. A server that honours it answers 206 with the file's size in
//! `Content-Range`; one that ignores it answers 200 with `Content-Length`, and is read only up
//! to the probe's cap (512 KiB), then cut off. Each hop of a redirect (at most three) must be
//! an http(s) URL to a public address, like the URL the client gave. The whole probe costs a
//! handful of subrequests: the redirects, a read of the head, and, for a file whose movie
//! header is at its end, a read there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use url::Url;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{web_sys, AbortController, Cache, Response};

use crate::config::Config;
use crate::probe::video_check::{self, Outcome};
use crate::probe::{Probe, Problem, Step, HEAD_BYTES, MAX_BYTES};
use crate::url_safety;

use super::{clock, http};

/// Redirects followed, at most.
const MAX_REDIRECTS: usize = 3;
/// How long a settled outcome (a measurement, a refusal) is reused.
const CACHE_SECS: u64 = 600;
/// Outcomes kept in an isolate's memory (the Cache API has no effect on workers.dev).
const MEMORY_ENTRIES: usize = 256;

thread_local! {
    static RECENT: RefCell<HashMap<String, (u64, Outcome)>> = RefCell::new(HashMap::new());
}

/// The probe as the create flow's port.
pub struct FetchProbe<'a> {
    pub config: &'a Config,
}

impl crate::ports::VideoProbe for FetchProbe<'_> {
    async fn remembered(&self, url: &str) -> Option<Outcome> {
        remembered(&cache_key(url, self.config.allow_private_urls)).await
    }

    /// Only measurements are remembered: a refusal (a 404, a page that is not a video) is
    /// about the moment and the asker (one tenant probing a URL not yet uploaded must not
    /// make it "answered 404" for everyone).
    async fn measure(&self, url: &str) -> Outcome {
        let outcome = run(self.config, url).await;
        if matches!(outcome, Outcome::Measured { .. }) {
            remember(&cache_key(url, self.config.allow_private_urls), &outcome).await;
        }
        outcome
    }
}

async fn remembered(key: &str) -> Option<Outcome> {
    let now = clock::now_ms();
    let recent = RECENT
        .with(|recent| recent.borrow().get(key).filter(|(until, _)| *until > now).map(|(_, o)| o.clone()));
    if recent.is_some() {
        return recent;
    }
    let mut cached = Cache::default().get(key, false).await.ok()??;
    cached.json::<Outcome>().await.ok()
}

async fn remember(key: &str, outcome: &Outcome) {
    let until = clock::now_ms() + CACHE_SECS * 1000;
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if recent.len() >= MEMORY_ENTRIES {
            let now = clock::now_ms();
            recent.retain(|_, (until, _)| *until > now);
            if recent.len() >= MEMORY_ENTRIES {
                recent.clear();
            }
        }
        recent.insert(key.to_owned(), (until, outcome.clone()));
    });
    if let Ok(response) = Response::from_json(outcome) {
        let _ = response.headers().set("Cache-Control", &format!("public, max-age={CACHE_SECS}"));
        let _ = Cache::default().put(key, response).await;
    }
}

/// The cache's key for a video URL: a URL of its own, never fetched. It says whether private
/// addresses were allowed, so a development deployment's outcomes never serve another's.
fn cache_key(url: &str, allow_private: bool) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
    format!("https://kling-edge.invalid/video-probe/v1?private={allow_private}&url={encoded}")
}

/// One read's answer.
struct Read {
    status: u16,
    headers: web_sys::Headers,
    bytes: Vec<u8>,
    /// Whether the body ended before the read stopped taking it.
    ended: bool,
}

enum ReadFailure {
    Unreachable,
    TimedOut,
}

async fn run(config: &Config, url: &str) -> Outcome {
    let started = clock::now_ms();
    let deadline = started + u64::from(config.video_probe_timeout_ms);
    let Ok(mut current) = Url::parse(url) else {
        return Outcome::Refused { why: "must be an absolute http or https URL".into() };
    };
    let mut probe = Probe::new(None);
    let mut content_type = None;
    let mut ranges_honoured = true;
    // Redirects are followed on the first read only; later reads go where it landed.
    let mut landed = false;
    for _ in 0..8 {
        let (offset, length) = match probe.step() {
            Step::Done(facts) => return Outcome::measured(facts, probe.size),
            Step::Refuse(Problem::NotMp4) => return Outcome::NotVideo { content_type },
            Step::Refuse(Problem::NoMovieHeader(_))
                if !ranges_honoured && probe.bytes_read() >= MAX_BYTES =>
            {
                return ignored_ranges()
            }
            Step::Refuse(Problem::NoMovieHeader(why)) => return Outcome::Unmeasured { why },
            Step::Need { .. } if !ranges_honoured => return ignored_ranges(),
            Step::Need { offset, length } if offset.checked_add(length).is_some_and(|end| end < 1 << 53) => {
                (offset, length)
            }
            Step::Need { .. } => return Outcome::Unmeasured { why: "the file's boxes are malformed".into() },
        };
        let first = !landed;
        landed = true;
        let read = match read_following_redirects(config, &mut current, offset, length, first, deadline).await
        {
            Ok(read) => read,
            Err(Ok(refusal)) => return refusal,
            Err(Err(ReadFailure::TimedOut)) => {
                return Outcome::Unmeasured {
                    why: format!("no answer within {} ms", config.video_probe_timeout_ms),
                }
            }
            Err(Err(ReadFailure::Unreachable)) => {
                return Outcome::Unmeasured { why: "its server could not be reached".into() }
            }
        };
        if first {
            content_type =
                read.headers.get("Content-Type").ok().flatten().map(|kind| kind.chars().take(80).collect());
        }
        match read.status {
            206 if range_start(&read.headers) != Some(offset) => {
                return Outcome::Unmeasured {
                    why: "its server answered another range than the one asked for".into(),
                };
            }
            206 => {
                if let Some(total) = total_size(&read.headers) {
                    probe.size = Some(total);
                    if total > video_check::MAX_BYTES {
                        return Outcome::TooLarge { bytes: total };
                    }
                }
                probe.feed(offset, read.bytes, false);
            }
            200 if offset == 0 => {
                let size = read
                    .headers
                    .get("Content-Length")
                    .ok()
                    .flatten()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(total) = size.filter(|total| *total > video_check::MAX_BYTES) {
                    return Outcome::TooLarge { bytes: total };
                }
                probe.size = size.or(read.ended.then_some(read.bytes.len() as u64));
                ranges_honoured = false;
                probe.feed(0, read.bytes, read.ended);
            }
            200 => {
                return Outcome::Unmeasured { why: "its server stopped honouring Range requests".into() };
            }
            // A busy or failing server says nothing about the video: not a fact to refuse it on.
            status @ (408 | 429 | 500..=599) => {
                return Outcome::Unmeasured { why: format!("its server answered {status}") }
            }
            status => return Outcome::Status { status },
        }
    }
    Outcome::Unmeasured { why: "it took too many reads".into() }
}

/// What a file comes to when its server sent it whole and its movie header was not in the
/// part read.
fn ignored_ranges() -> Outcome {
    Outcome::Unmeasured {
        why: format!(
            "its server ignores Range requests and its movie header is beyond the first {} KiB",
            MAX_BYTES / 1024
        ),
    }
}

/// `Content-Range: bytes a-b/total` → a.
fn range_start(headers: &web_sys::Headers) -> Option<u64> {
    let range = headers.get("Content-Range").ok().flatten()?;
    range.trim().strip_prefix("bytes ")?.split_once('-')?.0.trim().parse().ok()
}

/// `Content-Range: bytes a-b/total` → total.
fn total_size(headers: &web_sys::Headers) -> Option<u64> {
    let range = headers.get("Content-Range").ok().flatten()?;
    range.rsplit_once('/')?.1.trim().parse().ok()
}

/// Reads `length` bytes at `offset` of `current`, following redirects (only on the first
/// read: later reads go to where the first one landed). `Err(Ok(..))` is a refusal of the
/// URL itself, `Err(Err(..))` a failure to read.
async fn read_following_redirects(
    config: &Config,
    current: &mut Url,
    offset: u64,
    length: u64,
    first: bool,
    deadline: u64,
) -> Result<Read, Result<Outcome, ReadFailure>> {
    let mut hops = 0;
    loop {
        let cap = if first && offset == 0 { MAX_BYTES.max(HEAD_BYTES) } else { length };
        let read = read(current.as_str(), offset, length, cap, deadline).await.map_err(Err)?;
        if !matches!(read.status, 301 | 302 | 303 | 307 | 308) {
            return Ok(read);
        }
        if !first {
            return Err(Ok(Outcome::Refused { why: "redirected a later read elsewhere".into() }));
        }
        hops += 1;
        if hops > MAX_REDIRECTS {
            return Err(Ok(Outcome::Refused { why: format!("redirects more than {MAX_REDIRECTS} times") }));
        }
        let location = read.headers.get("Location").ok().flatten();
        let next = url_safety::redirect_target(current, location.as_deref(), config.allow_private_urls)
            .map_err(|why| Ok(Outcome::Refused { why }))?;
        *current = next;
    }
}

/// One GET of `length` bytes at `offset` (a `Range` request), reading at most `cap` bytes of
/// the answer, whatever the server sends, before `deadline` (epoch ms).
async fn read(url: &str, offset: u64, length: u64, cap: u64, deadline: u64) -> Result<Read, ReadFailure> {
    let remaining = deadline.saturating_sub(clock::now_ms());
    if remaining == 0 {
        return Err(ReadFailure::TimedOut);
    }
    let controller = AbortController::default();
    let signal = controller.signal();
    let exchange = async {
        let range = format!("bytes={offset}-{}", offset.saturating_add(length.max(1) - 1));
        let request = http::file_request(
            url,
            &[("Range", range), ("User-Agent", "kling-edge video probe".to_owned())],
            Some(&signal),
        )
        .map_err(|_| ReadFailure::Unreachable)?;
        let response = http::send(&request).await.map_err(|_| ReadFailure::Unreachable)?;
        let status = response.status();
        let (bytes, ended) = if (200..300).contains(&status) {
            read_at_most(&response, cap).await.map_err(|_| ReadFailure::Unreachable)?
        } else {
            (Vec::new(), true)
        };
        Ok(Read { status, headers: response.headers(), bytes, ended })
    };
    let outcome =
        http::within(Duration::from_millis(remaining), exchange).await.unwrap_or(Err(ReadFailure::TimedOut));
    // Whatever is left of the body (a server that ignored the range) is not downloaded.
    controller.abort();
    outcome
}

/// Reads a body chunk by chunk, stopping after `cap` bytes. Returns the bytes (at most `cap`)
/// and whether the body ended.
async fn read_at_most(response: &web_sys::Response, cap: u64) -> Result<(Vec<u8>, bool), JsValue> {
    let Some(body) = response.body() else { return Ok((Vec::new(), true)) };
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut bytes = Vec::new();
    while let Some(value) = http::next_chunk(&reader).await? {
        let take = (cap - bytes.len()).min(value.length() as usize);
        bytes.extend_from_slice(&value.subarray(0, take as u32).to_vec());
        if bytes.len() >= cap {
            let _ = reader.cancel();
            return Ok((bytes, false));
        }
    }
    Ok((bytes, true))
}
