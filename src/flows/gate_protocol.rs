//! What the request path and the coordinators ask a Kling account's gate, and what each
//! request answers: JSON over the gate object's `fetch`, one request per call, typed like
//! the coordinator's (`super::protocol`).
//!
//! [`serve`] is the object's side, written once: the Durable Object and the in-memory gate of
//! `crate::testing` both run it on the same JSON.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ports::{Dispatcher, GateStore, Runtime};
use crate::record::gate::{Admission, Cancel, GateView, InLine, Ticket};

use super::gate::GateFlows;
use super::protocol::WireAnswer;

/// A request to the gate, with the type of its answer.
pub trait GateCall: Into<GateRequest> {
    type Answer: Serialize + DeserializeOwned;
}

/// A new create: a slot now, a place in line, or refused (the tenant's line is full).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admit {
    pub ticket: Ticket,
    /// The one account it may go to (useapi.net's `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// A task that held a slot ended, or a create that got one never reached Kling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
}

/// Kling answered 1303 to a create the edge sent with the slot it got at once, or while
/// the gate could not be asked (its coordinator now holds it queued): back to the front of
/// its tenant's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub ticket: Ticket,
    /// The account that refused it (empty from a coordinator of before accounts had names:
    /// the first).
    #[serde(default)]
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// A client's cancel of its queued create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelTicket {
    pub id: String,
    pub tenant: String,
}

/// Where a create waits in line (1 is next), if it waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub id: String,
}

/// A tenant's creates in line, in the order they will go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingFor {
    pub tenant: String,
}

/// The accounts' slots and the line, for `GET /v1/queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Look;

impl GateCall for Admit {
    type Answer = Admission;
}
impl GateCall for Release {
    type Answer = bool;
}
impl GateCall for Refused {
    type Answer = bool;
}
impl GateCall for CancelTicket {
    type Answer = Cancel;
}
impl GateCall for Position {
    type Answer = Option<u32>;
}
impl GateCall for WaitingFor {
    type Answer = Vec<InLine>;
}
impl GateCall for Look {
    type Answer = GateView;
}

/// Every request, as it crosses to the object: `{"op": "admit", ...its fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GateRequest {
    Admit(Admit),
    Release(Release),
    Refused(Refused),
    CancelTicket(CancelTicket),
    Position(Position),
    WaitingFor(WaitingFor),
    Look(Look),
}

macro_rules! into_request {
    ($($variant:ident),*) => {$(
        impl From<$variant> for GateRequest {
            fn from(call: $variant) -> GateRequest {
                GateRequest::$variant(call)
            }
        }
    )*};
}
into_request!(Admit, Release, Refused, CancelTicket, Position, WaitingFor, Look);

/// The JSON of a request, as its caller sends it.
pub fn encode<C: GateCall>(call: C) -> Result<String, ApiError> {
    serde_json::to_string(&call.into()).map_err(|_| ApiError::internal("encoding a gate call"))
}

/// A request's answer read back; an unreadable one is a gate that failed.
pub fn decode<C: GateCall>(bytes: &[u8]) -> Result<C::Answer, ApiError> {
    serde_json::from_slice::<WireAnswer<C::Answer>>(bytes)
        .map_err(|_| ApiError::internal("the gate's answer is unreadable"))?
        .into()
}

/// The object's side: reads a request, runs its flow, and answers in JSON.
pub fn serve<S: GateStore, D: Dispatcher, R: Runtime>(gate: &GateFlows<'_, S, D, R>, body: &[u8]) -> String {
    fn answer<A: Serialize>(result: Result<A, ApiError>) -> String {
        serde_json::to_string(&WireAnswer::from(result)).unwrap_or_else(|_| {
            r#"{"error":{"status":500,"code":5000,"message":"encoding the gate's answer"}}"#.to_owned()
        })
    }
    let Ok(request) = serde_json::from_slice::<GateRequest>(body) else {
        return answer::<()>(Err(ApiError::internal("the gate got a request it cannot read")));
    };
    match request {
        GateRequest::Admit(Admit { ticket, pin }) => answer(gate.admit(ticket, pin.as_deref())),
        GateRequest::Release(Release { id }) => answer(gate.release(&id)),
        GateRequest::Refused(Refused { ticket, account, pin }) => answer(gate.refused(ticket, &account, pin)),
        GateRequest::CancelTicket(CancelTicket { id, tenant }) => answer(gate.cancel(&id, &tenant)),
        GateRequest::Position(Position { id }) => answer(gate.position(&id)),
        GateRequest::WaitingFor(WaitingFor { tenant }) => answer(gate.waiting_for(&tenant)),
        GateRequest::Look(Look) => answer(gate.look()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_requests_cross_as_tagged_json() {
        let admit = Admit { ticket: Ticket { id: "n1".into(), tenant: "web/alice".into() }, pin: None };
        let text = encode(admit.clone()).unwrap();
        assert_eq!(text, r#"{"op":"admit","ticket":{"id":"n1","tenant":"web/alice"}}"#);
        assert_eq!(serde_json::from_str::<GateRequest>(&text).unwrap(), GateRequest::Admit(admit));
        assert_eq!(encode(Look).unwrap(), r#"{"op":"look"}"#);
        let queued = serde_json::to_string(&WireAnswer::Ok(Admission::Queued { position: 3 })).unwrap();
        assert_eq!(decode::<Admit>(queued.as_bytes()).unwrap(), Admission::Queued { position: 3 });
        assert_eq!(decode::<Position>(b"nonsense").unwrap_err().status, 500);
    }
}
