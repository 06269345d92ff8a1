//! useapi.net's shapes, for clients moving off its "Add sound to Kling video" call: its
//! answers (`{task: {id, status_name, status_final, ...}, ...}`) and its errors
//! (`{"error": "...", "code": N}`), filled from Kling's task data.
//!
//! Only what Kling's data says truthfully is filled: the task's id, its status (useapi's
//! `status_name` is Kling's `task_status`), whether it is final, its times, and the input
//! video. useapi's account fields (`userPoints`, `userTickets`, numeric `status` codes) have no
//! counterpart and are left out; the whole of Kling's data is under `kling`, result files
//! included.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::kling::task;

/// The answer to a create or a status call: useapi's top level, with the task inside.
pub fn task_answer(data: &Value) -> Value {
    let status = task::status_of(data).unwrap_or("submitted");
    let is_final = task::is_final(data);
    let mut inner = json!({
        "id": data.get("task_id").cloned().unwrap_or(Value::Null),
        "status_name": status,
        "status_final": is_final,
    });
    for (theirs, kling) in [("createTime", "created_at"), ("updateTime", "updated_at")] {
        if let Some(time) = data.get(kling).filter(|time| time.is_u64()) {
            inner[theirs] = time.clone();
        }
    }
    if let Some(url) =
        data.pointer("/task_info/parent_video/url").and_then(Value::as_str).filter(|u| !u.is_empty())
    {
        inner["taskInfo"] = json!({"inputs": [{"name": "video", "inputType": "URL", "url": url}]});
    }
    let message = data.get("task_status_msg").and_then(Value::as_str).unwrap_or("");
    json!({
        "task": inner,
        "status_name": status,
        "status_final": is_final,
        "message": message,
        "kling": data,
    })
}

/// The body of the webhook sent to `replyUrl`: the answer, with the client's `replyRef`.
pub fn reply_body(data: &Value, reply_ref: Option<&str>) -> Value {
    let mut body = task_answer(data);
    if let Some(reference) = reply_ref {
        body["replyRef"] = Value::String(reference.to_owned());
    }
    body
}

/// An error the useapi way: `{"error": "...", "code": <HTTP status>}`, using useapi's own
/// texts where they apply ("Invalid video URL format", "Unauthorized") followed by what was
/// wrong, so the message always names the problem.
pub fn error_body(error: &ApiError) -> String {
    let text = if error.status == 401 {
        format!("Unauthorized ({})", error.message)
    } else if error.message.starts_with("video:") || error.message.starts_with("video_url:") {
        format!("Invalid video URL format ({})", error.message)
    } else {
        error.message.clone()
    };
    json!({"error": text, "code": error.status}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(status: &str) -> Value {
        json!({"task_id": "860000000000000001", "task_status": status, "task_status_msg": "",
               "task_info": {"external_task_id": "", "parent_video": {"url": "https://cdn.example.com/a.mp4"}},
               "created_at": 1754630611379u64, "updated_at": 1754630611380u64})
    }

    #[test]
    fn answers_fill_what_kling_says_and_nothing_else() {
        let answer = task_answer(&data("submitted"));
        assert_eq!(answer["task"]["id"], "860000000000000001");
        assert_eq!(
            (answer["status_name"].as_str(), answer["status_final"].as_bool()),
            (Some("submitted"), Some(false))
        );
        assert_eq!(answer["task"]["status_final"], false);
        assert_eq!(answer["task"]["createTime"], 1754630611379u64);
        assert_eq!(answer["task"]["taskInfo"]["inputs"][0]["url"], "https://cdn.example.com/a.mp4");
        assert_eq!(answer["kling"], data("submitted"));
        for invented in ["userPoints", "userTickets", "works", "limitation"] {
            assert!(answer.get(invented).is_none(), "{invented}");
        }
        assert_eq!(task_answer(&data("failed"))["task"]["status_final"], true);
    }

    #[test]
    fn replies_carry_the_reference_as_is() {
        let body = reply_body(&data("succeed"), Some("my-id-1234"));
        assert_eq!(body["replyRef"], "my-id-1234");
        assert_eq!(body["status_final"], true);
        assert!(reply_body(&data("succeed"), None).get("replyRef").is_none());
    }

    #[test]
    fn errors_use_useapis_texts_and_name_the_problem() {
        let bad_url = ApiError::bad_param("video", "must be an absolute http or https URL");
        let body: Value = serde_json::from_str(&error_body(&bad_url)).unwrap();
        assert_eq!(
            body,
            json!({"error": "Invalid video URL format (video: must be an absolute http or https URL)", "code": 400})
        );
        let body: Value =
            serde_json::from_str(&error_body(&ApiError::auth_invalid("unknown API key"))).unwrap();
        assert_eq!(body, json!({"error": "Unauthorized (Authorization: unknown API key)", "code": 401}));
        let other = ApiError::bad_param("cropVideoOriginalSound", "cannot be true");
        assert_eq!(
            serde_json::from_str::<Value>(&error_body(&other)).unwrap()["error"],
            "cropVideoOriginalSound: cannot be true"
        );
    }
}
