//! The endpoint tables: each Kling family the worker speaks, described once, as data.
//!
//! An [`Endpoint`] is Kling's side: its path (where creates and queries go upstream), a code
//! (carried in callback capabilities, so a callback knows which path to poll), and which
//! result files a finished task yields (what "complete" means for it). A surface
//! ([`surfaces`]) is the client's side: a path, the endpoint it reaches, its body's fields and
//! rules ([`fields`]), and its answers' shape. Routing, validation, the coordinator,
//! publishing and the API document ([`openapi`]) all read these tables, so adding an endpoint
//! is one entry in each and its tests.

pub mod fields;
pub mod multipart;
pub mod openapi;
pub mod surfaces;
pub mod useapi;

use crate::kling::task::Results;

#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable across versions: it is carried in callback URLs and stored with each task.
    pub code: u8,
    /// A name for logs and storage (`video-to-audio`).
    pub name: &'static str,
    /// Kling's path of the create; queries add `/{id}`, lists `?pageNum=&pageSize=`.
    pub kling_path: &'static str,
    pub results: Results,
    /// Its create names a video Kling fetches (`video_url`), which the worker measures first.
    pub video_input: bool,
}

pub static VIDEO_TO_AUDIO: Endpoint = Endpoint {
    code: 1,
    name: "video-to-audio",
    kling_path: "/v1/audio/video-to-audio",
    results: Results::Audios,
    video_input: true,
};

pub static TEXT2VIDEO: Endpoint = Endpoint {
    code: 2,
    name: "text2video",
    kling_path: "/v1/videos/text2video",
    results: Results::Videos,
    video_input: false,
};
pub static IMAGE2VIDEO: Endpoint = Endpoint {
    code: 3,
    name: "image2video",
    kling_path: "/v1/videos/image2video",
    results: Results::Videos,
    video_input: false,
};
pub static TEXT_TO_AUDIO: Endpoint = Endpoint {
    code: 4,
    name: "text-to-audio",
    kling_path: "/v1/audio/text-to-audio",
    results: Results::Audios,
    video_input: false,
};

/// Every endpoint, in code order.
pub static ENDPOINTS: &[&Endpoint] = &[&VIDEO_TO_AUDIO, &TEXT2VIDEO, &IMAGE2VIDEO, &TEXT_TO_AUDIO];

pub fn by_code(code: u8) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().copied().find(|endpoint| endpoint.code == code)
}

pub fn by_name(name: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().copied().find(|endpoint| endpoint.name == name)
}

impl Endpoint {
    /// `GET` path of one task by its task id, which must already be valid (no escaping).
    pub fn query_path(&self, task_id: &str) -> String {
        format!("{}/{task_id}", self.kling_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique_and_found() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            assert_eq!(by_code(a.code), Some(*a));
            assert_eq!(by_name(a.name), Some(*a));
            for b in &ENDPOINTS[i + 1..] {
                assert_ne!(a.code, b.code);
                assert_ne!(a.name, b.name);
                assert_ne!(a.kling_path, b.kling_path);
            }
        }
        assert_eq!(by_code(0), None);
        assert_eq!(VIDEO_TO_AUDIO.query_path("t1"), "/v1/audio/video-to-audio/t1");
    }
}
