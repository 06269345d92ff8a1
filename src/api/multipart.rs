//! `multipart/form-data` (RFC 7578) read as it streams, so a 100 MB file part never has to
//! be held whole: [`FormReader::push`] takes the body chunk by chunk and hands back what it
//! found (a part's head, a run of its bytes, the end), keeping back only what could be the
//! start of the next boundary.
//!
//! What the worker takes this way: `POST /v1/assets` with one file part, and useapi.net's
//! add-sound with its fields as text parts and `video` as a URL or the file itself
//! ([`json_fields`] turns the text parts into the JSON body the surface validates).

use serde_json::{Map, Number, Value};

use crate::api::fields::{Body, Rule};
use crate::error::ApiError;

/// A part's headers larger than this are refused.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A form with more parts than this is refused.
pub const MAX_PARTS: usize = 32;
/// A text part (a form field) larger than this is refused.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// The boundary of a `multipart/form-data` content type, if it is one.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim())
    })?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    (1..=70).contains(&value.len()).then_some(())?;
    value.bytes().all(allowed).then(|| value.to_owned())
}

/// What a part's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHead {
    /// `Content-Disposition: form-data; name="..."`.
    pub name: String,
    /// Present for a file part.
    pub filename: Option<String>,
    pub content_type: Option<String>,
}

impl PartHead {
    pub fn is_file(&self) -> bool {
        self.filename.is_some()
    }
}

/// What the body held, in order: each part's head, then its bytes (in runs), and the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Part(PartHead),
    Data(Vec<u8>),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first boundary.
    Preamble,
    /// Right after a boundary: `--` (the end) or a line break (a part) follows.
    AfterBoundary,
    Head,
    Body,
    /// After the closing boundary: ignored.
    Epilogue,
}

/// Reads one `multipart/form-data` body as it arrives.
#[derive(Debug)]
pub struct FormReader {
    /// `\r\n--{boundary}`: what ends every part (the body is read as if it began with a
    /// line break, so the first boundary is found the same way).
    delimiter: Vec<u8>,
    pending: Vec<u8>,
    state: State,
    parts: usize,
}

fn malformed(rule: &str) -> ApiError {
    ApiError::bad_param("body", format!("is not readable multipart/form-data: {rule}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&b| b == first) {
        let start = from + at;
        if haystack.len() - start < needle.len() {
            return None;
        }
        if &haystack[start..start + needle.len()] == needle {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

impl FormReader {
    pub fn new(boundary: &str) -> FormReader {
        FormReader {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            pending: b"\r\n".to_vec(),
            state: State::Preamble,
            parts: 0,
        }
    }

    /// Takes the next chunk of the body and answers what it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, ApiError> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            match self.state {
                State::Preamble => match find(&self.pending, &self.delimiter) {
                    Some(at) => {
                        self.pending.drain(..at + self.delimiter.len());
                        self.state = State::AfterBoundary;
                    }
                    None => {
                        let keep = self.delimiter.len() - 1;
                        let cut = self.pending.len().saturating_sub(keep);
                        self.pending.drain(..cut);
                        return Ok(events);
                    }
                },
                State::AfterBoundary => {
                    // Transport padding (spaces, tabs) may follow a boundary.
                    let padding = self.pending.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
                    let rest = &self.pending[padding..];
                    if rest.len() < 2 {
                        return Ok(events);
                    }
                    if rest.starts_with(b"--") {
                        self.state = State::Epilogue;
                        events.push(Event::End);
                    } else if rest.starts_with(b"\r\n") {
                        self.parts += 1;
                        if self.parts > MAX_PARTS {
                            return Err(malformed(&format!("it has more than {MAX_PARTS} parts")));
                        }
                        self.pending.drain(..padding + 2);
                        self.state = State::Head;
                    } else {
                        return Err(malformed("a boundary is followed by neither a line break nor --"));
                    }
                }
                State::Head => {
                    let Some(at) = find(&self.pending, b"\r\n\r\n") else {
                        if self.pending.len() > MAX_HEAD_BYTES {
                            return Err(malformed("a part's headers are too long"));
                        }
                        return Ok(events);
                    };
                    let head = parse_head(&self.pending[..at])?;
                    self.pending.drain(..at + 4);
                    events.push(Event::Part(head));
                    self.state = State::Body;
                }
                State::Body => match find(&self.pending, &self.delimiter) {
                    Some(at) => {
                        if at > 0 {
                            events.push(Event::Data(self.pending[..at].to_vec()));
                        }
                        self.pending.drain(..at + self.delimiter.len());
                        self.state = State::AfterBoundary;
                    }
                    None => {
                        let keep = self.delimiter.len() - 1;
                        let cut = self.pending.len().saturating_sub(keep);
                        if cut > 0 {
                            events.push(Event::Data(self.pending.drain(..cut).collect()));
                        }
                        return Ok(events);
                    }
                },
                State::Epilogue => {
                    self.pending.clear();
                    return Ok(events);
                }
            }
        }
    }

    /// The body ended: it must have ended with its closing boundary.
    pub fn finish(&self) -> Result<(), ApiError> {
        match self.state {
            State::Epilogue => Ok(()),
            State::Preamble => {
                Err(malformed("no boundary was found (is the boundary in Content-Type the one used?)"))
            }
            _ => Err(malformed("the body ends before its closing boundary")),
        }
    }
}

/// A header value's parameters: split at each `;` that is not inside a quoted string (a
/// file may be named `a; name=b.mp4`).
fn split_outside_quotes(value: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&value[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// A part's header block (the lines before its blank line).
fn parse_head(block: &[u8]) -> Result<PartHead, ApiError> {
    let text = std::str::from_utf8(block).map_err(|_| malformed("a part's headers are not UTF-8"))?;
    let (mut name, mut filename, mut content_type) = (None, None, None);
    for line in text.split("\r\n") {
        let Some((header, value)) = line.split_once(':') else {
            return Err(malformed("a part has a header line with no colon"));
        };
        let header = header.trim();
        if header.eq_ignore_ascii_case("content-disposition") {
            let mut params = split_outside_quotes(value).into_iter();
            if !params.next().unwrap_or("").trim().eq_ignore_ascii_case("form-data") {
                return Err(malformed("a part's Content-Disposition is not form-data"));
            }
            for param in params {
                let Some((key, raw)) = param.split_once('=') else { continue };
                let raw = raw.trim();
                let unquoted = raw.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(raw);
                match key.trim().to_ascii_lowercase().as_str() {
                    "name" if name.is_none() => name = Some(unquoted.to_owned()),
                    "filename" if filename.is_none() => filename = Some(unquoted.to_owned()),
                    _ => {}
                }
            }
        } else if header.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_owned());
        }
    }
    let name = name.filter(|name| !name.is_empty()).ok_or_else(|| malformed("a part has no name"))?;
    Ok(PartHead { name, filename, content_type })
}

/// The JSON body a surface validates, from a form's text parts: each value typed as the
/// field's rule expects (`true`/`false`, whole numbers), else kept as text for the rule to
/// judge. A field sent twice is refused.
pub fn json_fields(body: &Body, parts: Vec<(String, String)>) -> Result<Vec<u8>, ApiError> {
    let mut object = Map::new();
    for (name, text) in parts {
        let rule = body.fields.iter().find(|field| field.name == name).map(|field| &field.rule);
        let value = match rule {
            Some(Rule::Boolean) => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text),
            },
            Some(Rule::Integer { .. }) => text
                .trim()
                .parse::<i64>()
                .map(|n| Value::Number(Number::from(n)))
                .unwrap_or(Value::String(text)),
            _ => Value::String(text),
        };
        if object.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_param(&name, "is sent twice"));
        }
    }
    serde_json::to_vec(&Value::Object(object)).map_err(|_| ApiError::internal("encoding a form"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDARY: &str = "----kling-edge-test";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = b"preamble to ignore\r\n".to_vec();
        for (name, filename, bytes) in parts {
            body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            match filename {
                Some(file) => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: video/mp4\r\n\r\n").as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\nepilogue").as_bytes());
        body
    }

    /// Reads `body` in chunks of `size`, joining each part's runs.
    fn read(body: &[u8], size: usize) -> Result<Vec<(PartHead, Vec<u8>)>, ApiError> {
        let mut reader = FormReader::new(BOUNDARY);
        let mut parts: Vec<(PartHead, Vec<u8>)> = Vec::new();
        let mut ended = false;
        for chunk in body.chunks(size) {
            for event in reader.push(chunk)? {
                match event {
                    Event::Part(head) => parts.push((head, Vec::new())),
                    Event::Data(bytes) => parts.last_mut().unwrap().1.extend_from_slice(&bytes),
                    Event::End => ended = true,
                }
            }
        }
        reader.finish()?;
        assert!(ended);
        Ok(parts)
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc"), Some("abc".into()));
        assert_eq!(boundary("Multipart/Form-Data;boundary=\"a b:c\""), Some("a b:c".into()));
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/mixed; boundary=abc"), None);
        assert_eq!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))), None);
        assert_eq!(boundary("multipart/form-data; boundary=a\r\nb"), None);
    }

    #[test]
    fn parts_come_whole_whatever_the_chunking() {
        // Bytes that look like a boundary's start, and a CR LF, inside the file.
        let file: Vec<u8> = (0..20_000u32)
            .flat_map(|i| if i % 997 == 0 { b"\r\n------kling".to_vec() } else { vec![(i % 251) as u8] })
            .collect();
        let body = form(&[("prompt", None, b"rain on a roof"), ("video", Some("clip.mp4"), &file)]);
        for size in [1, 2, 7, 64, 1_000, 4_096, body.len()] {
            let parts = read(&body, size).unwrap();
            assert_eq!(parts.len(), 2, "chunks of {size}");
            assert_eq!(parts[0].0, PartHead { name: "prompt".into(), filename: None, content_type: None });
            assert_eq!(parts[0].1, b"rain on a roof");
            assert_eq!(parts[1].0.filename.as_deref(), Some("clip.mp4"));
            assert_eq!(parts[1].0.content_type.as_deref(), Some("video/mp4"));
            assert!(parts[1].1 == file, "chunks of {size}");
        }
    }

    #[test]
    fn an_empty_part_and_padding_after_a_boundary_are_read() {
        let body =
            format!("--{BOUNDARY}  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\r\n--{BOUNDARY}--");
        let parts = read(body.as_bytes(), 3).unwrap();
        assert_eq!(parts.len(), 1);
        assert!(parts[0].1.is_empty());
    }

    #[test]
    fn a_semicolon_in_a_quoted_file_name_stays_in_the_name() {
        let body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a; name=x.mp4\"\r\n\r\nxy\r\n--{BOUNDARY}--"
        );
        let parts = read(body.as_bytes(), 5).unwrap();
        assert_eq!(parts[0].0.name, "video");
        assert_eq!(parts[0].0.filename.as_deref(), Some("a; name=x.mp4"));
    }

    #[test]
    fn what_is_not_a_whole_form_is_refused_and_never_panics() {
        let body = form(&[("video", Some("clip.mp4"), b"0123456789")]);
        // Cut off anywhere before its closing boundary.
        for cut in 0..body.len() - 12 {
            let mut reader = FormReader::new(BOUNDARY);
            let pushed = reader.push(&body[..cut]);
            assert!(pushed.is_err() || reader.finish().is_err(), "cut at {cut}");
        }
        let refusal = |body: &str| {
            let mut reader = FormReader::new(BOUNDARY);
            reader.push(body.as_bytes()).and_then(|_| reader.finish()).unwrap_err().message
        };
        assert!(refusal("no boundary here").contains("no boundary"));
        assert!(
            refusal(&format!("--{BOUNDARY}\r\nX-Other: 1\r\n\r\nv\r\n--{BOUNDARY}--")).contains("no name")
        );
        assert!(refusal(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nv\r\n--{BOUNDARY}--"
        ))
        .contains("not form-data"));
        assert!(refusal(&format!("--{BOUNDARY}xx")).contains("neither"));
        let long_head = format!("--{BOUNDARY}\r\nX: {}", "y".repeat(MAX_HEAD_BYTES));
        assert!(refusal(&long_head).contains("too long"));
        let many: String = (0..=MAX_PARTS)
            .map(|i| format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"))
            .collect();
        assert!(refusal(&many).contains("more than"));
        // Arbitrary bytes.
        let mut seed = 7u32;
        for _ in 0..200 {
            let noise: Vec<u8> = (0..300)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    b"-\r\nab:;=\"form-data name"[(seed >> 16) as usize % 23]
                })
                .collect();
            let mut reader = FormReader::new("ab");
            let _ = reader.push(&noise).map(|_| reader.finish());
        }
    }

    #[test]
    fn text_parts_become_the_json_a_surface_validates() {
        let body = crate::api::surfaces::ADD_SOUND.body;
        let json = json_fields(
            body,
            vec![
                ("video".into(), "https://cdn.example.com/a.mp4".into()),
                ("maxJobs".into(), "3".into()),
                ("cropVideoOriginalSound".into(), "false".into()),
                ("replyRef".into(), "42".into()),
            ],
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"video": "https://cdn.example.com/a.mp4", "maxJobs": 3,
                "cropVideoOriginalSound": false, "replyRef": "42"})
        );
        let twice = json_fields(body, vec![("video".into(), "a".into()), ("video".into(), "b".into())]);
        assert!(twice.unwrap_err().message.contains("video: is sent twice"));
    }
}
