//! Measuring a video before a credit is spent: whether it is an MP4 or MOV, and how long it
//! lasts, from as few of its bytes as possible.
//!
//! An ISO base media file (MP4, and QuickTime's MOV, its ancestor) is a chain of boxes, each
//! `size (4 bytes) | type (4 bytes) | [64-bit size] | payload`. The movie's length is in the
//! movie header (`mvhd`), inside the `moov` box, which sits either near the start (a
//! "fast-start" file) or after the media data (`mdat`), at the end. [`Probe`] walks the
//! top-level boxes from offset 0, asking for the bytes it needs one range at a time, and
//! never for more than [`MAX_BYTES`] in all.
//!
//! This module does no I/O (the edge fetches what a [`Step::Need`] asks for), so it is
//! tested on real files and fuzzed natively; whatever a server sends, it never panics.

pub mod video_check;

use std::collections::BTreeMap;

/// Never read more of any file than this.
pub const MAX_BYTES: u64 = 512 * 1024;
/// What the first read asks for: enough for a fast-start file's movie header.
pub const HEAD_BYTES: u64 = 64 * 1024;
/// What a later read asks for, when a box header or a movie header is needed.
const READ_BYTES: u64 = 64 * 1024;
/// A file with more top-level boxes than this before its movie header is not worth walking.
const MAX_BOXES: usize = 64;

/// The container, as its `ftyp` brand (or its lack of one) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Mov,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::Mp4 => "MP4",
            Container::Mov => "MOV",
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facts {
    pub container: Container,
    pub duration_secs: f64,
}

/// Why a file is not a video Kling would take, or could not be measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Its bytes are not an ISO base media file.
    NotMp4,
    /// It is one, but its movie header could not be reached within the budget or the file.
    NoMovieHeader(String),
}

/// What the probe needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The bytes `offset .. offset + length` (fewer if the file ends first).
    Need {
        offset: u64,
        length: u64,
    },
    Done(Facts),
    Refuse(Problem),
}

/// The bytes fetched so far, by offset, and what is known of the file's size.
#[derive(Debug, Default, Clone)]
pub struct Probe {
    chunks: BTreeMap<u64, Vec<u8>>,
    /// The file's size, when the server said.
    pub size: Option<u64>,
    /// Whether the file is known to end where the bytes fetched so far end (a server that
    /// ignored a range request and sent everything it had, up to the read cap).
    complete_to: Option<u64>,
    read: u64,
}

impl Probe {
    pub fn new(size: Option<u64>) -> Probe {
        Probe { size, ..Probe::default() }
    }

    /// Bytes read so far (what [`MAX_BYTES`] caps).
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Adds bytes fetched at `offset`. `is_all` says the server sent the whole file from
    /// `offset` (it ignored a range, and the body ended), so nothing lies beyond them.
    pub fn feed(&mut self, offset: u64, bytes: Vec<u8>, is_all: bool) {
        let end = offset.saturating_add(bytes.len() as u64);
        self.read = self.read.saturating_add(bytes.len() as u64);
        if is_all {
            self.complete_to = Some(end);
        }
        if !bytes.is_empty() {
            self.chunks.insert(offset, bytes);
        }
    }

    /// `len` bytes at `offset`, if fetched.
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let (start, chunk) = self.chunks.range(..=offset).next_back()?;
        let from = usize::try_from(offset - start).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        chunk.get(from..to)
    }

    /// The bytes at `offset`, as many as were fetched contiguously (at most `max`).
    fn available(&self, offset: u64, max: u64) -> Option<&[u8]> {
        let (start, chunk) = self.chunks.range(..=offset).next_back()?;
        let from = usize::try_from(offset - start).ok()?;
        let rest = chunk.get(from..)?;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        (!rest.is_empty()).then(|| &rest[..rest.len().min(max)])
    }

    /// Whether the file is known to end at or before `offset`.
    fn ends_by(&self, offset: u64) -> bool {
        self.size.is_some_and(|size| offset >= size) || self.complete_to.is_some_and(|end| offset >= end)
    }

    /// Asks for `length` bytes at `offset`, within the file and the budget.
    fn need(&self, offset: u64, length: u64, wanted: &str) -> Step {
        let budget = MAX_BYTES.saturating_sub(self.read);
        if self.complete_to.is_some_and(|end| offset >= end) || budget == 0 {
            return Step::Refuse(Problem::NoMovieHeader(format!(
                "{wanted} is beyond the first {} KiB of the file",
                MAX_BYTES / 1024
            )));
        }
        let length = length.min(budget);
        let length = match self.size {
            Some(size) => length.min(size.saturating_sub(offset)),
            None => length,
        };
        Step::Need { offset, length: length.max(1) }
    }

    /// What to do next, given everything fetched so far.
    pub fn step(&self) -> Step {
        let mut offset = 0u64;
        let mut container = None;
        for index in 0..MAX_BOXES {
            if self.ends_by(offset) {
                return Step::Refuse(if container.is_some() {
                    Problem::NoMovieHeader("the file has no movie header (moov)".into())
                } else {
                    Problem::NotMp4
                });
            }
            let Some(header) = self.bytes(offset, 8) else {
                let first = if index == 0 { HEAD_BYTES } else { READ_BYTES };
                return self.need(offset, first, "the next box");
            };
            let size32 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let kind = [header[4], header[5], header[6], header[7]];
            let (size, header_len) = match size32 {
                1 => match self.bytes(offset + 8, 8) {
                    Some(large) => (u64::from_be_bytes(large.try_into().unwrap_or([0; 8])), 16),
                    None => return self.need(offset, READ_BYTES, "the next box"),
                },
                0 => match self.size {
                    Some(total) => (total.saturating_sub(offset), 8),
                    None => (u64::MAX - offset, 8),
                },
                n => (u64::from(n), 8),
            };
            if index == 0 {
                container = Some(match &kind {
                    b"ftyp" => match self.bytes(offset + 8, 4) {
                        Some(brand) if brand == b"qt  " => Container::Mov,
                        Some(_) => Container::Mp4,
                        None => return self.need(offset, HEAD_BYTES, "the file type"),
                    },
                    // QuickTime files may start without a file type box.
                    b"moov" | b"mdat" | b"wide" | b"free" | b"skip" | b"pnot" => Container::Mov,
                    _ => return Step::Refuse(Problem::NotMp4),
                });
            }
            if !is_box_type(&kind) || size < header_len {
                return Step::Refuse(if index == 0 {
                    Problem::NotMp4
                } else {
                    Problem::NoMovieHeader("the file's boxes are malformed".into())
                });
            }
            if size32 == 0 && &kind != b"moov" {
                // A box of size 0 runs to the end of the file: nothing follows it.
                return Step::Refuse(Problem::NoMovieHeader(
                    "the file ends in a box that comes before any movie header".into(),
                ));
            }
            if &kind == b"moov" {
                let payload = offset + header_len;
                let Some(body) = self.available(payload, size - header_len) else {
                    return self.need(payload, READ_BYTES.min(size - header_len), "the movie header");
                };
                return match movie_duration(body) {
                    MovieHeader::Found(duration_secs) => {
                        Step::Done(Facts { container: container.unwrap_or(Container::Mp4), duration_secs })
                    }
                    MovieHeader::Truncated if (body.len() as u64) < size - header_len => {
                        let at = payload + body.len() as u64;
                        self.need(
                            at,
                            READ_BYTES.min(size - header_len - body.len() as u64),
                            "the movie header",
                        )
                    }
                    MovieHeader::NoDuration => Step::Refuse(Problem::NoMovieHeader(
                        "it is a fragmented MP4 whose movie header gives no duration".into(),
                    )),
                    _ => Step::Refuse(Problem::NoMovieHeader(
                        "its movie header (mvhd) is missing or malformed".into(),
                    )),
                };
            }
            offset = match offset.checked_add(size) {
                Some(next) => next,
                None => return Step::Refuse(Problem::NoMovieHeader("the file's boxes are malformed".into())),
            };
        }
        Step::Refuse(Problem::NoMovieHeader(format!("no movie header among its first {MAX_BOXES} boxes")))
    }
}

/// Box types are four printable ASCII characters (`©` appears in QuickTime metadata, never
/// at the top level).
fn is_box_type(kind: &[u8; 4]) -> bool {
    kind.iter().all(|b| b.is_ascii_alphanumeric() || *b == b' ' || *b == b'-' || *b == b'_')
}

enum MovieHeader {
    Found(f64),
    /// The bytes end before the `mvhd` box does: more are needed.
    Truncated,
    Malformed,
    /// A fragmented file whose `mvhd` says 0 and that has no `mehd`: its length is only the
    /// sum of its fragments, which are not read.
    NoDuration,
}

/// The movie's length from a `moov` payload: its `mvhd` child's duration over its timescale
/// (or, for a fragmented file whose `mvhd` says 0, `mvex/mehd`'s fragment duration).
fn movie_duration(moov: &[u8]) -> MovieHeader {
    let mut at = 0usize;
    let mut timescale = None;
    let mut duration = None;
    while at + 8 <= moov.len() {
        let size = u32::from_be_bytes([moov[at], moov[at + 1], moov[at + 2], moov[at + 3]]) as usize;
        let kind = &moov[at + 4..at + 8];
        if size < 8 {
            return MovieHeader::Malformed;
        }
        let Some(body) = moov.get(at + 8..at + size) else {
            return if duration.is_none() { MovieHeader::Truncated } else { MovieHeader::Malformed };
        };
        match kind {
            b"mvhd" => {
                let version = body.first().copied();
                let parsed = match version {
                    Some(0) if body.len() >= 20 => {
                        Some((be32(&body[12..16]) as u64, be32(&body[16..20]) as u64))
                    }
                    Some(1) if body.len() >= 32 => Some((be32(&body[20..24]) as u64, be64(&body[24..32]))),
                    _ => None,
                };
                let Some((scale, length)) = parsed else { return MovieHeader::Malformed };
                timescale = Some(scale);
                duration = Some(length);
            }
            b"mvex" => {
                if let (Some(scale), Some(0)) = (timescale, duration) {
                    if let Some(fragments) = fragment_duration(body) {
                        duration = Some(fragments);
                        timescale = Some(scale);
                    }
                }
            }
            _ => {}
        }
        at += size;
    }
    match (timescale, duration) {
        (Some(0), _) => MovieHeader::Malformed,
        (Some(_), Some(0)) => MovieHeader::NoDuration,
        (Some(scale), Some(length)) if length != u64::MAX && length != u64::from(u32::MAX) => {
            MovieHeader::Found(length as f64 / scale as f64)
        }
        (Some(_), Some(_)) => MovieHeader::Malformed,
        _ if at < moov.len() || moov.len() < 8 => MovieHeader::Truncated,
        _ => MovieHeader::Truncated,
    }
}

/// `mehd`'s fragment duration inside an `mvex` payload.
fn fragment_duration(mvex: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    while at + 8 <= mvex.len() {
        let size = be32(&mvex[at..at + 4]) as usize;
        if size < 8 {
            return None;
        }
        let body = mvex.get(at + 8..at + size)?;
        if &mvex[at + 4..at + 8] == b"mehd" {
            return match body.first() {
                Some(0) if body.len() >= 8 => Some(be32(&body[4..8]) as u64),
                Some(1) if body.len() >= 12 => Some(be64(&body[4..12])),
                _ => None,
            };
        }
        at += size;
    }
    None
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn be64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

/// Runs a probe over a whole file held in memory, fetching as the edge would (ranges of what
/// each step asks for): what the tests and the fuzzer use. Returns the outcome and the bytes
/// read.
pub fn probe_bytes(file: &[u8], honours_ranges: bool) -> (Step, u64) {
    let mut probe = Probe::new(honours_ranges.then_some(file.len() as u64));
    for _ in 0..32 {
        match probe.step() {
            Step::Need { offset, length } => {
                if !honours_ranges {
                    if probe.bytes_read() > 0 {
                        return (
                            probe.need(offset, length, "what was needed").into_refusal(),
                            probe.bytes_read(),
                        );
                    }
                    let end = file.len().min(MAX_BYTES as usize);
                    probe.feed(0, file[..end].to_vec(), end == file.len());
                    if end < file.len() {
                        probe.complete_to = Some(end as u64);
                    }
                    continue;
                }
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(file.len());
                let end = start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX)).min(file.len());
                probe.feed(offset, file[start..end].to_vec(), false);
            }
            done => return (done, probe.bytes_read()),
        }
    }
    (Step::Refuse(Problem::NoMovieHeader("too many reads".into())), probe.bytes_read())
}

impl Step {
    fn into_refusal(self) -> Step {
        match self {
            Step::Need { .. } => Step::Refuse(Problem::NoMovieHeader(format!(
                "the server ignores ranges and the movie header is beyond the first {} KiB",
                MAX_BYTES / 1024
            ))),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_box_to_the_end_of_the_file_or_a_fragmented_file_without_a_duration_is_unmeasured() {
        let mut file = Vec::new();
        file.extend_from_slice(&[0, 0, 0, 16]);
        file.extend_from_slice(b"ftypisom\0\0\0\0");
        file.extend_from_slice(&[0, 0, 0, 0]);
        file.extend_from_slice(b"mdat");
        file.extend_from_slice(&[0; 64]);
        let mut probe = Probe::new(None);
        probe.feed(0, file, false);
        assert!(
            matches!(probe.step(), Step::Refuse(Problem::NoMovieHeader(ref why)) if why.contains("ends in a box")),
            "{:?}",
            probe.step()
        );
    }

    use super::*;

    /// A box: size, type, payload.
    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn mvhd(version: u8, timescale: u32, duration: u64) -> Vec<u8> {
        let mut payload = vec![version, 0, 0, 0];
        if version == 1 {
            payload.extend_from_slice(&[0; 16]);
            payload.extend_from_slice(&timescale.to_be_bytes());
            payload.extend_from_slice(&duration.to_be_bytes());
        } else {
            payload.extend_from_slice(&[0; 8]);
            payload.extend_from_slice(&timescale.to_be_bytes());
            payload.extend_from_slice(&(duration as u32).to_be_bytes());
        }
        payload.extend_from_slice(&[0; 80]);
        boxed(b"mvhd", &payload)
    }

    fn file(fast_start: bool, brand: &[u8; 4], mdat_len: usize, moov: Vec<u8>) -> Vec<u8> {
        let mut ftyp = brand.to_vec();
        ftyp.extend_from_slice(&[0, 0, 2, 0]);
        ftyp.extend_from_slice(b"isomiso2mp41");
        let (ftyp, mdat) = (boxed(b"ftyp", &ftyp), boxed(b"mdat", &vec![0x55; mdat_len]));
        let moov = boxed(b"moov", &moov);
        if fast_start {
            [ftyp, moov, mdat].concat()
        } else {
            [ftyp, mdat, moov].concat()
        }
    }

    fn measured(step: Step) -> (Container, f64) {
        match step {
            Step::Done(facts) => (facts.container, (facts.duration_secs * 1000.0).round() / 1000.0),
            other => panic!("not measured: {other:?}"),
        }
    }

    #[test]
    fn fast_start_files_are_measured_from_their_head() {
        let file = file(true, b"isom", 3_000_000, mvhd(0, 1000, 12_000));
        let (step, read) = probe_bytes(&file, true);
        assert_eq!(measured(step), (Container::Mp4, 12.0));
        assert!(read <= HEAD_BYTES, "{read}");
    }

    #[test]
    fn tail_indexed_files_are_measured_by_walking_to_the_movie_header() {
        let file = file(false, b"mp42", 5_000_000, mvhd(1, 90_000, 900_000));
        let (step, read) = probe_bytes(&file, true);
        assert_eq!(measured(step), (Container::Mp4, 10.0));
        assert!(read <= 2 * READ_BYTES + HEAD_BYTES, "a head read and one at the movie header: {read}");
    }

    #[test]
    fn quicktime_brands_are_mov() {
        let (step, _) = probe_bytes(&file(true, b"qt  ", 1000, mvhd(0, 600, 4800)), true);
        assert_eq!(measured(step), (Container::Mov, 8.0));
        let classic =
            [boxed(b"wide", &[]), boxed(b"mdat", &[0; 100]), boxed(b"moov", &mvhd(0, 600, 1800))].concat();
        assert_eq!(measured(probe_bytes(&classic, true).0), (Container::Mov, 3.0));
    }

    #[test]
    fn anything_else_is_not_an_mp4() {
        for bytes in [
            &b"<!doctype html><html><body>not found</body></html>"[..],
            b"GIF89a\x01\x00\x01\x00",
            b"",
            b"\x1aE\xdf\xa3 webm",
            b"\x00\x00\x00\x10abcd\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert_eq!(probe_bytes(bytes, true).0, Step::Refuse(Problem::NotMp4), "{bytes:?}");
        }
    }

    #[test]
    fn a_server_ignoring_ranges_is_read_to_the_cap_only() {
        let fast = file(true, b"isom", 3_000_000, mvhd(0, 1000, 12_000));
        let (step, read) = probe_bytes(&fast, false);
        assert_eq!(measured(step), (Container::Mp4, 12.0));
        assert!(read <= MAX_BYTES, "{read}");
        let tail = file(false, b"isom", 3_000_000, mvhd(0, 1000, 12_000));
        let (step, read) = probe_bytes(&tail, false);
        assert!(matches!(step, Step::Refuse(Problem::NoMovieHeader(_))), "{step:?}");
        assert!(read <= MAX_BYTES, "{read}");
        let small_tail = file(false, b"isom", 10_000, mvhd(0, 1000, 7_000));
        assert_eq!(measured(probe_bytes(&small_tail, false).0), (Container::Mp4, 7.0), "all of it fits");
    }

    #[test]
    fn never_more_than_the_cap_whatever_the_layout() {
        // A movie header whose mvhd is beyond 512 KiB of moov payload.
        let mut moov = boxed(b"trak", &vec![0; 700 * 1024]);
        moov.extend(mvhd(0, 1000, 5000));
        let file = file(false, b"isom", 100, moov);
        let (step, read) = probe_bytes(&file, true);
        assert!(matches!(step, Step::Refuse(Problem::NoMovieHeader(_))), "{step:?}");
        assert!(read <= MAX_BYTES, "{read}");
    }

    #[test]
    fn fragmented_files_take_the_fragment_duration() {
        let mut moov = mvhd(0, 1000, 0);
        moov.extend(boxed(b"mvex", &boxed(b"mehd", &[0, 0, 0, 0, 0, 0, 0x27, 0x10])));
        let (step, _) = probe_bytes(&file(true, b"iso6", 10, moov), true);
        assert_eq!(measured(step), (Container::Mp4, 10.0));
    }

    #[test]
    fn malformed_headers_are_refused_not_trusted() {
        let zero_scale = file(true, b"isom", 10, mvhd(0, 0, 5000));
        assert!(matches!(probe_bytes(&zero_scale, true).0, Step::Refuse(Problem::NoMovieHeader(_))));
        let no_mvhd = file(true, b"isom", 10, boxed(b"trak", &[0; 10]));
        assert!(matches!(probe_bytes(&no_mvhd, true).0, Step::Refuse(Problem::NoMovieHeader(_))));
        let mut lying = file(true, b"isom", 10, mvhd(0, 1000, 5000));
        lying[28..32].copy_from_slice(&[0xff; 4]); // moov claims 4 GB: its mvhd is still read
        assert_eq!(measured(probe_bytes(&lying, true).0), (Container::Mp4, 5.0));
        let no_moov = [boxed(b"ftyp", b"isom\0\0\0\0"), boxed(b"mdat", &[0; 10])].concat();
        assert_eq!(
            probe_bytes(&no_moov, true).0,
            Step::Refuse(Problem::NoMovieHeader("the file has no movie header (moov)".into()))
        );
    }

    /// Real files, made by ffmpeg (`scripts/make-test-media.sh`).
    #[test]
    fn real_files() {
        for (bytes, container, seconds) in [
            (&include_bytes!("../../tests/media/two-seconds.mp4")[..], Container::Mp4, 2.0),
            (include_bytes!("../../tests/media/ten-seconds-tail-indexed.mp4"), Container::Mp4, 10.0),
            (include_bytes!("../../tests/media/twelve-seconds-fast-start.mp4"), Container::Mp4, 12.0),
            (include_bytes!("../../tests/media/twenty-five-seconds.mp4"), Container::Mp4, 25.0),
            (include_bytes!("../../tests/media/eight-seconds.mov"), Container::Mov, 8.0),
        ] {
            for ranges in [true, false] {
                let (step, read) = probe_bytes(bytes, ranges);
                assert_eq!(measured(step), (container, seconds), "ranges: {ranges}");
                assert!(read <= bytes.len() as u64);
            }
        }
        // A fragmented file without a total (ffmpeg's frag_keyframe+empty_moov) cannot be
        // measured from its header: it is not taken for a 0-second video.
        let (step, _) = probe_bytes(include_bytes!("../../tests/media/five-seconds-fragmented.mp4"), true);
        assert!(
            matches!(step, Step::Refuse(Problem::NoMovieHeader(ref why)) if why.contains("fragmented")),
            "{step:?}"
        );
        // Every prefix of a real file is refused or measured, never a panic.
        let file = include_bytes!("../../tests/media/ten-seconds-tail-indexed.mp4");
        for end in 0..file.len() {
            let mut probe = Probe::new(Some(end as u64));
            probe.feed(0, file[..end].to_vec(), true);
            let _ = probe.step();
        }
    }
}
