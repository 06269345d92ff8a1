//! What the edge asks a tenant's coordinator, and what it answers: JSON over the Durable
//! Object's `fetch`, one request per call.
//!
//! Every request names the shard (the coordinator's own name, so it can write the edge
//! copies of its tasks); client requests also name the tenant, so a coordinator first woken
//! by a callback learns whom it serves at the first client call.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

use super::coordinator::Registration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A create Kling accepted.
    Register { shard: String, registration: Registration },
    /// A callback from Kling, its capability checked by the edge.
    Report { shard: String, nonce: String, endpoint: u8, report: Value },
    /// One task, by task id or external task id.
    Query { shard: String, tenant: String, endpoint: u8, id: String },
    /// A page of the tenant's tasks of one endpoint.
    List { shard: String, tenant: String, endpoint: u8, page_num: u32, page_size: u32 },
    /// How many of the tenant's tasks Kling is still working on.
    Running { shard: String, tenant: String },
}

impl Request {
    pub fn shard(&self) -> &str {
        match self {
            Request::Register { shard, .. }
            | Request::Report { shard, .. }
            | Request::Query { shard, .. }
            | Request::List { shard, .. }
            | Request::Running { shard, .. } => shard,
        }
    }

    /// The tenant the request speaks for, if it is a client's.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Request::Register { registration, .. } => Some(&registration.tenant),
            Request::Query { tenant, .. }
            | Request::List { tenant, .. }
            | Request::Running { tenant, .. } => Some(tenant),
            Request::Report { .. } => None,
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            Request::Register { .. } => "register",
            Request::Report { .. } => "report",
            Request::Query { .. } => "query",
            Request::List { .. } => "list",
            Request::Running { .. } => "running",
        }
    }
}

/// The coordinator's answer: a value, or an error to pass on to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Value),
    Error { status: u16, code: u32, message: String },
}

impl From<Result<Value, ApiError>> for Response {
    fn from(result: Result<Value, ApiError>) -> Response {
        match result {
            Ok(value) => Response::Ok(value),
            Err(error) => Response::Error { status: error.status, code: error.code, message: error.message },
        }
    }
}

impl From<Response> for Result<Value, ApiError> {
    fn from(response: Response) -> Result<Value, ApiError> {
        match response {
            Response::Ok(value) => Ok(value),
            Response::Error { status, code, message } => Err(ApiError::new(status, code, message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_round_trip_as_json() {
        let request =
            Request::Query { shard: "ab".into(), tenant: "web/alice".into(), endpoint: 1, id: "t1".into() };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.starts_with(r#"{"op":"query""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        assert_eq!((request.shard(), request.tenant(), request.op()), ("ab", Some("web/alice"), "query"));
        let report =
            Request::Report { shard: "ab".into(), nonce: "n".into(), endpoint: 1, report: json!({}) };
        assert_eq!(report.tenant(), None);
    }

    #[test]
    fn errors_cross_unchanged() {
        let error = ApiError::not_found("task t1");
        let crossed: Result<Value, ApiError> = serde_json::from_str::<Response>(
            &serde_json::to_string(&Response::from(Err(error.clone()))).unwrap(),
        )
        .unwrap()
        .into();
        assert_eq!(crossed, Err(error));
    }
}
