//! Which endpoint a request is for: a pure function of method and path.
//!
//! The worker has a handful of fixed routes, so a `match` on path segments is both smaller
//! than `worker::Router` and testable natively. It also gives unknown paths (404) and wrong
//! methods (405 with `Allow`) the same envelope as every other error.

use percent_encoding::percent_decode_str;

use crate::api::surfaces::{Style, Surface, ADD_SOUND, SURFACES};
use crate::error::ApiError;
use crate::links::asset_links::{self, ASSETS_PATH};
use crate::links::capability;
use crate::record::asset;
use crate::record::copies;
use crate::validate;

/// Where Kling's callbacks arrive: `{KLING_CALLBACK_PATH}/{token}`.
pub const KLING_CALLBACK_PATH: &str = "/v1/callbacks/kling";

/// Where the copies of result files are served: `{RESULTS_PATH}/{shard}/{task_id}/{name}`.
pub const RESULTS_PATH: &str = "/v1/results";

/// The callback URL given to Kling for one task.
pub fn kling_callback_url(origin: &str, token: &str) -> String {
    format!("{origin}{KLING_CALLBACK_PATH}/{token}")
}

/// The path as it may be logged or quoted in an answer: anything after a `callbacks`
/// segment may be a capability (a callback URL's secret), whatever the spelling of the rest
/// of the path (`//v1/callbacks/kling/...`, `/v1/Callbacks/KLING/...`, percent-encoded
/// letters), so it is replaced by `<redacted>`. Other paths are cut to 200 characters.
pub fn loggable_path(path: &str) -> String {
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let lowercase = decoded.to_ascii_lowercase();
    match lowercase.find("callbacks") {
        Some(at) => format!("{}callbacks/<redacted>", &decoded[..at].chars().take(100).collect::<String>()),
        None => decoded.chars().take(200).collect(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Health,
    /// A CORS preflight (`OPTIONS`, any path).
    Preflight,
    /// A callback from Kling, with the capability of its URL (already checked for form).
    KlingCallback(String),
    /// `GET`/`HEAD` of a result copy, by signed link (no Authorization).
    ResultCopy(ResultCopy),
    /// `GET`/`HEAD` of an upload, by signed link (no Authorization: Kling fetches it so).
    AssetFile(AssetFile),
    /// A route for an authenticated client.
    Client(ClientRoute),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientRoute {
    /// `POST /v1/tokens`: a server key mints a browser token.
    MintToken,
    /// `GET /v1/webhook-secret`: a server key reads the secret its webhooks are signed with.
    WebhookSecret,
    CreateTask(&'static Surface),
    /// One task by task id or external task id (already validated and percent-decoded).
    QueryTask(&'static Surface, String),
    ListTasks(&'static Surface),
    /// `GET /v1/kling/tasks/{id}`: one add-sound task, useapi.net's way.
    UseApiTask(String),
    /// `POST {path}/{id}/cancel`, or useapi.net's `DELETE /v1/kling/tasks/{id}` (on the
    /// add-sound surface): a task still waiting for a free Kling slot leaves the line.
    CancelTask(&'static Surface, String),
    /// `GET /v1/queue`: the tenant's waiting creates and the account's slots, for a server key.
    Queue,
    /// `GET /v1/usage`: the tenant's credits and tasks today.
    Usage,
    /// `GET /v1/account`: the Kling accounts' resource packs, for a server key.
    Account,
    /// `GET /account/costs`: the Kling account's resource packs, for a server key.
    AccountCosts,
    /// `POST /v1/assets` (Kling's envelope) or `POST /v1/kling/assets` (useapi.net's shape):
    /// an upload.
    Upload(Style),
    /// `GET /v1/assets`: a page of the tenant's uploads.
    ListAssets,
    /// `GET /v1/assets/{id}`.
    GetAsset(String),
    /// `DELETE /v1/assets/{id}`.
    DeleteAsset(String),
}

/// The upload an asset link names (each part already checked for form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetFile {
    pub shard: String,
    pub asset_id: String,
    pub name: String,
}

/// useapi.net's upload path.
pub const USEAPI_ASSETS_PATH: &str = "/v1/kling/assets";

/// The copy a result link names (each part already checked for form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCopy {
    pub shard: String,
    pub task_id: String,
    pub name: String,
}

/// `GET` of the tenant's line and the account's slots.
pub const QUEUE_PATH: &str = "/v1/queue";
/// The caller's credits and tasks today.
pub const USAGE_PATH: &str = "/v1/usage";

/// A task's cancel: `{path}/{id}/cancel`.
pub const CANCEL_SUFFIX: &str = "/cancel";

/// `GET` path of one task in useapi.net's shape.
pub const USEAPI_TASKS_PATH: &str = "/v1/kling/tasks";

/// Whether a path is one of useapi.net's (answered in its shapes, errors included).
pub fn is_useapi_path(path: &str) -> bool {
    path.starts_with("/v1/kling/")
}

/// Finds the route for `method` and `path` (the URL path, still percent-encoded).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    const GET: &str = "GET";
    const GET_POST: &str = "GET, POST";

    if method == "OPTIONS" {
        return Ok(Route::Preflight);
    }
    if path == "/health" {
        return only(method, GET, Route::Health);
    }
    if path == "/v1/tokens" {
        return only(method, "POST", Route::Client(ClientRoute::MintToken));
    }
    if path == "/v1/webhook-secret" {
        return only(method, GET, Route::Client(ClientRoute::WebhookSecret));
    }
    if path == "/account/costs" {
        return only(method, GET, Route::Client(ClientRoute::AccountCosts));
    }
    if path == "/v1/account" {
        return only(method, GET, Route::Client(ClientRoute::Account));
    }
    if path == USAGE_PATH {
        return only(method, GET, Route::Client(ClientRoute::Usage));
    }
    if path == QUEUE_PATH {
        return only(method, GET, Route::Client(ClientRoute::Queue));
    }
    if let Some(token) = path.strip_prefix(KLING_CALLBACK_PATH).and_then(|rest| rest.strip_prefix('/')) {
        // Any token-shaped segment reaches the receiver, which refuses (and counts against
        // the sender's address) what it did not issue.
        let plain = token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if token.is_empty() || token.len() > 2 * capability::ENCODED_CHARS || !plain {
            return Err(ApiError::not_found("callback"));
        }
        return only(method, "POST", Route::KlingCallback(token.to_owned()));
    }
    if let Some(rest) = path.strip_prefix(RESULTS_PATH).and_then(|rest| rest.strip_prefix('/')) {
        let mut parts = rest.split('/');
        let (Some(shard), Some(task_id), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ApiError::not_found("result"));
        };
        let hex =
            shard.len() == 32 && shard.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || validate::task_id("task_id", task_id).is_err() || !copies::is_copy_name(name) {
            return Err(ApiError::not_found("result"));
        }
        let copy = ResultCopy { shard: shard.to_owned(), task_id: task_id.to_owned(), name: name.to_owned() };
        return match method {
            "GET" | "HEAD" => Ok(Route::ResultCopy(copy)),
            _ => Err(ApiError::method_not_allowed(method, "GET, HEAD")),
        };
    }
    if path == ASSETS_PATH {
        return match method {
            "POST" => Ok(Route::Client(ClientRoute::Upload(Style::Kling))),
            GET => Ok(Route::Client(ClientRoute::ListAssets)),
            _ => Err(ApiError::method_not_allowed(method, GET_POST)),
        };
    }
    if path == USEAPI_ASSETS_PATH {
        return only(method, "POST", Route::Client(ClientRoute::Upload(Style::UseApi)));
    }
    if let Some(rest) = path.strip_prefix(ASSETS_PATH).and_then(|rest| rest.strip_prefix('/')) {
        if !rest.contains('/') {
            if !asset::is_asset_id(rest) {
                return Err(ApiError::not_found(&format!("asset {}", loggable_path(rest))));
            }
            return match method {
                GET => Ok(Route::Client(ClientRoute::GetAsset(rest.to_owned()))),
                "DELETE" => Ok(Route::Client(ClientRoute::DeleteAsset(rest.to_owned()))),
                _ => Err(ApiError::method_not_allowed(method, "GET, DELETE")),
            };
        }
        let Some((shard, asset_id, name)) = asset_links::parse_path(rest) else {
            return Err(ApiError::not_found("asset"));
        };
        return match method {
            "GET" | "HEAD" => Ok(Route::AssetFile(AssetFile { shard, asset_id, name })),
            _ => Err(ApiError::method_not_allowed(method, "GET, HEAD")),
        };
    }
    if let Some(raw_id) = path.strip_prefix(USEAPI_TASKS_PATH).and_then(|rest| rest.strip_prefix('/')) {
        if !raw_id.contains('/') {
            let id = decoded_id(raw_id)?;
            return match method {
                GET => Ok(Route::Client(ClientRoute::UseApiTask(id))),
                "DELETE" => Ok(Route::Client(ClientRoute::CancelTask(&ADD_SOUND, id))),
                _ => Err(ApiError::method_not_allowed(method, "GET, DELETE")),
            };
        }
    }
    for surface in SURFACES {
        let Some(rest) = path.strip_prefix(surface.path) else {
            continue;
        };
        if rest.is_empty() {
            return match (method, surface.queries) {
                ("POST", _) => Ok(Route::Client(ClientRoute::CreateTask(surface))),
                ("GET", true) => Ok(Route::Client(ClientRoute::ListTasks(surface))),
                (_, true) => Err(ApiError::method_not_allowed(method, GET_POST)),
                (_, false) => Err(ApiError::method_not_allowed(method, "POST")),
            };
        }
        if let Some(raw_id) = rest.strip_prefix('/').filter(|_| surface.queries) {
            if let Some(raw_id) = raw_id.strip_suffix(CANCEL_SUFFIX).filter(|id| !id.contains('/')) {
                let id = decoded_id(raw_id)?;
                return only(method, "POST", Route::Client(ClientRoute::CancelTask(surface, id)));
            }
            if raw_id.contains('/') {
                break;
            }
            if method != GET {
                return Err(ApiError::method_not_allowed(method, GET));
            }
            return Ok(Route::Client(ClientRoute::QueryTask(surface, decoded_id(raw_id)?)));
        }
    }
    Err(ApiError::no_route(&loggable_path(path)))
}

/// A task id from a path: percent-decoded, then checked.
fn decoded_id(raw_id: &str) -> Result<String, ApiError> {
    let id = percent_decode_str(raw_id)
        .decode_utf8()
        .map_err(|_| ApiError::bad_param("task_id", validate::IDENTIFIER_RULE))?;
    validate::task_id("task_id", &id)?;
    Ok(id.into_owned())
}

fn only(method: &str, allowed: &'static str, route: Route) -> Result<Route, ApiError> {
    if method == allowed {
        Ok(route)
    } else {
        Err(ApiError::method_not_allowed(method, allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_surface_routes_alike() {
        for surface in SURFACES {
            let base = surface.path;
            assert_eq!(route("POST", base), Ok(Route::Client(ClientRoute::CreateTask(surface))));
            if surface.queries {
                assert_eq!(route("GET", base), Ok(Route::Client(ClientRoute::ListTasks(surface))));
                assert_eq!(
                    route("GET", &format!("{base}/task-1")),
                    Ok(Route::Client(ClientRoute::QueryTask(surface, "task-1".into())))
                );
            } else {
                assert_eq!(route("GET", base).unwrap_err().status, 405);
                assert_eq!(route("GET", &format!("{base}/task-1")).unwrap_err().status, 404);
            }
        }
        assert_eq!(
            route("GET", "/v1/kling/tasks/860000000000000001"),
            Ok(Route::Client(ClientRoute::UseApiTask("860000000000000001".into())))
        );
        assert_eq!(route("POST", "/v1/kling/tasks/1").unwrap_err().status, 405);
        assert_eq!(
            route("DELETE", "/v1/kling/tasks/ke_1"),
            Ok(Route::Client(ClientRoute::CancelTask(&ADD_SOUND, "ke_1".into())))
        );
        for surface in SURFACES.iter().filter(|surface| surface.queries) {
            let cancel = format!("{}/ke_1/cancel", surface.path);
            assert_eq!(
                route("POST", &cancel),
                Ok(Route::Client(ClientRoute::CancelTask(surface, "ke_1".into())))
            );
            assert_eq!(route("GET", &cancel).unwrap_err().status, 405);
        }
        assert_eq!(route("GET", "/v1/queue"), Ok(Route::Client(ClientRoute::Queue)));
        assert_eq!(route("POST", "/v1/queue").unwrap_err().status, 405);
    }

    #[test]
    fn uploads_route_by_method_and_their_links_by_form() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(route("POST", "/v1/assets"), Ok(Route::Client(ClientRoute::Upload(Style::Kling))));
        assert_eq!(route("POST", "/v1/kling/assets"), Ok(Route::Client(ClientRoute::Upload(Style::UseApi))));
        assert_eq!(route("GET", "/v1/assets"), Ok(Route::Client(ClientRoute::ListAssets)));
        assert_eq!(
            route("GET", &format!("/v1/assets/{id}")),
            Ok(Route::Client(ClientRoute::GetAsset(id.into())))
        );
        assert_eq!(
            route("DELETE", &format!("/v1/assets/{id}")),
            Ok(Route::Client(ClientRoute::DeleteAsset(id.into())))
        );
        assert_eq!(route("PUT", &format!("/v1/assets/{id}")).unwrap_err().status, 405);
        assert_eq!(route("GET", "/v1/assets/..%2Fx").unwrap_err().status, 404);
        let file = AssetFile { shard: id.into(), asset_id: id.into(), name: "video.mov".into() };
        assert_eq!(route("HEAD", &format!("/v1/assets/{id}/{id}/video.mov")), Ok(Route::AssetFile(file)));
        assert_eq!(route("GET", &format!("/v1/assets/{id}/{id}/audio.mp3")).unwrap_err().status, 404);
        assert_eq!(route("POST", &format!("/v1/assets/{id}/{id}/video.mp4")).unwrap_err().status, 405);
    }

    #[test]
    fn task_ids_are_percent_decoded_then_validated() {
        assert_eq!(
            route("GET", "/v1/audio/video-to-audio/order%3A42"),
            Ok(Route::Client(ClientRoute::QueryTask(&crate::api::surfaces::V2A, "order:42".into())))
        );
        let error = route("GET", "/v1/audio/video-to-audio/a%20b").unwrap_err();
        assert_eq!((error.status, error.code), (400, 1201));
        assert!(error.message.starts_with("task_id:"), "{}", error.message);
        let long = "x".repeat(65);
        assert_eq!(route("GET", &format!("/v1/audio/video-to-audio/{long}")).unwrap_err().status, 400);
        assert_eq!(route("GET", "/v1/audio/video-to-audio/%FF").unwrap_err().status, 400);
    }

    #[test]
    fn kling_callbacks() {
        let token = "A".repeat(capability::ENCODED_CHARS);
        let token = token.as_str();
        let path = format!("/v1/callbacks/kling/{token}");
        assert_eq!(route("POST", &path), Ok(Route::KlingCallback(token.into())));
        assert_eq!(route("GET", &path).unwrap_err().status, 405);
        let long = format!("/v1/callbacks/kling/{}", "A".repeat(2 * capability::ENCODED_CHARS + 1));
        let dotted = format!("/v1/callbacks/kling/{}.", "A".repeat(capability::ENCODED_CHARS - 1));
        for bad in ["/v1/callbacks/kling/", "/v1/callbacks/kling/x.y", long.as_str(), dotted.as_str()] {
            let error = route("POST", bad).unwrap_err();
            assert_eq!((error.status, error.code), (404, 1203), "{bad}");
        }
        assert_eq!(route("POST", "/v1/callbacks/kling").unwrap_err().status, 404);
        assert_eq!(
            kling_callback_url("https://edge.example.com", token),
            format!("https://edge.example.com{path}")
        );
        assert_eq!(loggable_path(&path), "/v1/callbacks/<redacted>");
        assert_eq!(loggable_path("/v1/audio/video-to-audio/t1"), "/v1/audio/video-to-audio/t1");
    }

    #[test]
    fn result_copies() {
        let shard = "0123456789abcdef0123456789abcdef";
        let path = format!("/v1/results/{shard}/860000000000000001/audio-0.mp3");
        let copy = ResultCopy {
            shard: shard.into(),
            task_id: "860000000000000001".into(),
            name: "audio-0.mp3".into(),
        };
        assert_eq!(route("GET", &path), Ok(Route::ResultCopy(copy.clone())));
        assert_eq!(route("HEAD", &path), Ok(Route::ResultCopy(copy)));
        assert_eq!(route("POST", &path).unwrap_err().header, Some(("Allow", "GET, HEAD".into())));
        for bad in [
            format!("/v1/results/{shard}/t1/audio-0.exe"),
            format!("/v1/results/{shard}/t1/../audio-0.mp3"),
            format!("/v1/results/{shard}/t%201/audio-0.mp3"),
            format!("/v1/results/{shard}/t1/audio-0.mp3/x"),
            format!("/v1/results/{}/t1/audio-0.mp3", shard.to_uppercase()),
            "/v1/results/abc/t1/audio-0.mp3".to_owned(),
            "/v1/results".to_owned(),
            "/v1/results/".to_owned(),
        ] {
            assert_eq!(route("GET", &bad).unwrap_err().status, 404, "{bad}");
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(route("GET", "/v1/audio/video-to-audiox").unwrap_err().status, 404);
        assert_eq!(route("GET", "/v1/audio/video-to-audio/a/b").unwrap_err().status, 404);
        assert_eq!(route("GET", "/").unwrap_err().status, 404);
        let error = route("DELETE", "/v1/audio/video-to-audio").unwrap_err();
        assert_eq!(error.status, 405);
        assert_eq!(error.header, Some(("Allow", "GET, POST".into())));
        assert_eq!(route("POST", "/v1/audio/video-to-audio/t").unwrap_err().status, 405);
        assert_eq!(route("POST", "/health").unwrap_err().status, 405);
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(route("POST", "/v1/tokens"), Ok(Route::Client(ClientRoute::MintToken)));
        assert_eq!(route("GET", "/v1/tokens").unwrap_err().status, 405);
        assert_eq!(route("OPTIONS", "/v1/audio/video-to-audio"), Ok(Route::Preflight));
        assert_eq!(route("GET", "/v1/webhook-secret"), Ok(Route::Client(ClientRoute::WebhookSecret)));
        for method in ["PROPFIND", "HEAD", "PUT", "get", "BREW"] {
            for path in ["/v1/audio/video-to-audio", "/v1/audio/video-to-audio/t1", "/health", "/v1/tokens"] {
                let error = route(method, path).unwrap_err();
                assert_eq!(error.status, 405, "{method} {path}");
                assert!(error.header.is_some(), "{method} {path}: Allow");
            }
        }
    }

    #[test]
    fn capabilities_never_leave_in_a_path_whatever_its_spelling() {
        let token = "0123456789abcdef0123456789abcdef";
        for path in [
            format!("/v1/callbacks/kling/{token}"),
            format!("//v1/callbacks/kling/{token}"),
            format!("/v1/callbacks/KLING/{token}"),
            format!("/v1/Callbacks/kling/{token}"),
            format!("/prefix/v1/callbacks/kling/{token}"),
            format!("/v1/%63allbacks/kling/{token}"),
            format!("/v1/callbacks%2Fkling%2F{token}"),
            format!("/v1/callbacks/kling/{token}/extra"),
        ] {
            let logged = loggable_path(&path);
            assert!(!logged.contains(token), "{path} -> {logged}");
            let refusal = route("POST", &path);
            if let Err(error) = refusal {
                assert!(!error.message.contains(token), "{path} -> {}", error.message);
            }
        }
    }
}
