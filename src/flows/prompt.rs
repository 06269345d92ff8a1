//! Prompt steps: a task's step (its webhook, its edge copy) made at once, by a request of its
//! own, when a callback makes it due, rather than by the coordinator's alarm.
//!
//! The alarm is one invocation with six connections, four of them for one receiver; when a
//! burst of tasks finishes, their webhooks would queue behind those lanes while every
//! callback still arrives. So a callback that makes a task's step due answers with a
//! [`StepNow`](super::protocol::StepNow) for the edge to send once it has answered Kling (in
//! `wait_until`), and the coordinator makes the step in that request, with that request's
//! own connections. The alarm stays the guarantee: the callback's record holds the step back
//! from the alarm for [`PROMPT_GRACE_MS`] only, so a prompt step that never comes (the edge
//! stopped, the call failed) is made by the alarm after that.
//!
//! This is the object's memory, not its storage: what is promised and what is in flight in
//! this instance. A restart forgets it, and nothing is lost with it: each step's outcome is
//! recorded in storage by the step itself.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// How long a callback's record holds its step back from the alarm for the prompt step:
/// longer than a webhook's deadline (10 s) and an edge copy's write, so a prompt step that
/// came is normally done by then.
pub const PROMPT_GRACE_MS: u64 = 15_000;
/// How many prompt steps may be promised or in flight for one receiver (its origin) at once.
/// Past it a callback leaves its task's step to the alarm, so a burst never sends a receiver
/// more than this many webhooks at once beyond the alarm's own.
pub const PROMPT_PER_RECEIVER: usize = 64;

/// One coordinator instance's prompt steps: those promised (by receiver, each task with the
/// time its promise ends) and the steps in flight (the alarm's and prompt ones), so a task's
/// step never runs twice at once.
#[derive(Debug)]
pub struct PromptSteps {
    per_receiver: usize,
    promised: RefCell<HashMap<String, HashMap<String, u64>>>,
    stepping: RefCell<HashSet<String>>,
}

impl Default for PromptSteps {
    fn default() -> PromptSteps {
        PromptSteps::bounded(PROMPT_PER_RECEIVER)
    }
}

/// A step in flight: the task is stepping until this is dropped.
pub struct Stepping<'a> {
    steps: &'a PromptSteps,
    task_id: String,
}

impl Drop for Stepping<'_> {
    fn drop(&mut self) {
        self.steps.stepping.borrow_mut().remove(&self.task_id);
    }
}

impl PromptSteps {
    /// Prompt steps, at most `per_receiver` promised or in flight for one receiver (0: none,
    /// every step is the alarm's).
    pub fn bounded(per_receiver: usize) -> PromptSteps {
        PromptSteps { per_receiver, promised: RefCell::default(), stepping: RefCell::default() }
    }

    /// Promises the task a prompt step if its receiver (`None`: the task has no webhook) has
    /// room at `now`: answers until when the alarm leaves the step to it.
    pub fn promise(&self, task_id: &str, receiver: Option<&str>, now: u64) -> Option<u64> {
        let mut promised = self.promised.borrow_mut();
        let held = promised.entry(receiver.unwrap_or_default().to_owned()).or_default();
        held.retain(|_, until| *until > now);
        if held.len() >= self.per_receiver && !held.contains_key(task_id) {
            return None;
        }
        let until = now.saturating_add(PROMPT_GRACE_MS);
        held.insert(task_id.to_owned(), until);
        Some(until)
    }

    /// The task's promise is kept (its prompt step came) or given up: its receiver's room
    /// frees once the step it starts is done.
    pub fn redeem(&self, task_id: &str, receiver: Option<&str>) {
        let mut promised = self.promised.borrow_mut();
        if let Some(held) = promised.get_mut(receiver.unwrap_or_default()) {
            held.remove(task_id);
            if held.is_empty() {
                promised.remove(receiver.unwrap_or_default());
            }
        }
    }

    /// Starts the task's step, unless it is in flight already.
    pub fn begin(&self, task_id: &str) -> Option<Stepping<'_>> {
        self.stepping
            .borrow_mut()
            .insert(task_id.to_owned())
            .then(|| Stepping { steps: self, task_id: task_id.to_owned() })
    }

    /// How many prompt steps the receiver has promised at `now` (for tests and logs).
    pub fn promised(&self, receiver: Option<&str>, now: u64) -> usize {
        self.promised
            .borrow()
            .get(receiver.unwrap_or_default())
            .map_or(0, |held| held.values().filter(|until| **until > now).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: Option<&str> = Some("https://hooks.example");

    #[test]
    fn a_receiver_gets_so_many_promises_at_once_and_they_expire() {
        let steps = PromptSteps::default();
        for i in 0..PROMPT_PER_RECEIVER {
            assert_eq!(steps.promise(&format!("t{i}"), HOOK, 1_000), Some(1_000 + PROMPT_GRACE_MS));
        }
        assert_eq!(steps.promise("one-more", HOOK, 1_000), None, "the receiver is at its bound");
        assert_eq!(steps.promise("t0", HOOK, 1_000), Some(1_000 + PROMPT_GRACE_MS), "a task it holds");
        assert!(steps.promise("other", Some("https://elsewhere.example"), 1_000).is_some());
        assert!(steps.promise("no-hook", None, 1_000).is_some());
        steps.redeem("t3", HOOK);
        assert!(steps.promise("one-more", HOOK, 1_000).is_some(), "a redeemed promise frees room");
        assert_eq!(steps.promise("late", HOOK, 1_000), None);
        let later = 1_000 + PROMPT_GRACE_MS;
        assert_eq!(steps.promised(HOOK, later), 0, "promises end with their grace");
        assert!(steps.promise("late", HOOK, later).is_some());
        assert_eq!(PromptSteps::bounded(0).promise("t1", HOOK, 1_000), None, "none: all the alarm's");
    }

    #[test]
    fn a_step_in_flight_cannot_start_again_until_it_ends() {
        let steps = PromptSteps::default();
        let first = steps.begin("t1").expect("nothing in flight");
        assert!(steps.begin("t1").is_none());
        assert!(steps.begin("t2").is_some());
        drop(first);
        assert!(steps.begin("t1").is_some());
    }
}
