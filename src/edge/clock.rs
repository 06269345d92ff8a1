//! The Worker's clock and randomness: the two inputs pure code takes as arguments.

use crate::error::ApiError;

/// Milliseconds since the Unix epoch, from the Workers runtime (`Date.now()`).
///
/// `std::time::SystemTime::now()` panics on wasm32-unknown-unknown, so nothing may call it.
/// In production the runtime advances this clock only across I/O, which is all the
/// precision token expiry and task timestamps need.
pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

pub fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

/// `N` bytes from the platform's CSPRNG (`crypto.getRandomValues`).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(bytes)
}

/// A fresh request id (falls back to the clock if randomness is unavailable: an id need
/// only be unique enough to find a log line).
pub fn new_request_id() -> String {
    match random_bytes::<16>() {
        Ok(random) => crate::ids::request_id(random),
        Err(_) => format!("t{}", now_ms()),
    }
}

/// The Workers runtime as the flows see it: its clock, its CSPRNG, its timers, and the
/// console for log lines.
pub struct WorkerRuntime;

impl crate::ports::Runtime for WorkerRuntime {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn random_16(&self) -> Result<[u8; 16], ApiError> {
        random_bytes::<16>()
    }

    async fn sleep(&self, ms: u64) {
        worker::Delay::from(std::time::Duration::from_millis(ms)).await;
    }

    fn log(&self, event: serde_json::Value) {
        worker::console_log!("{event}");
    }
}

impl WorkerRuntime {
    /// A log line about something that went wrong in the background (`event`, `problem`).
    pub fn log_problem(&self, event: &str, problem: &str) {
        crate::ports::Runtime::log(self, serde_json::json!({"event": event, "problem": problem}));
    }
}
