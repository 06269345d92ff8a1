//! useapi.net's `maxJobs` as a reservation, not a check: a create that names it holds one of
//! the tenant's job slots in its coordinator before Kling is called, so concurrent creates
//! cannot all see a free slot and all spend (8 of 8 did, when the slot was only counted).
//!
//! A hold lasts until the create's record lands (the task then counts as running), the
//! create is refused (the edge releases it), or it expires: an isolate that dies between the
//! hold and the record leaks nothing for longer than one create can take.
//!
//! The holds are one small list in the coordinator's metadata; every change to it is a
//! read-modify-write with no `await` inside, so it is atomic in the object.

use serde::{Deserialize, Serialize};

/// The metadata name the holds are kept under.
pub const META: &str = "max_jobs_holds";

/// One create's hold on a job slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hold {
    id: String,
    until_ms: u64,
}

/// The tenant's holds still in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Holds(Vec<Hold>);

/// Whether a create may go to Kling under its `maxJobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldOutcome {
    Held,
    /// Refused: this many of the tenant's tasks are running or about to be.
    Full {
        counted: u32,
    },
}

impl Holds {
    /// The holds as stored; unreadable metadata holds nothing (it only ever delays a create).
    pub fn read(stored: Option<&str>) -> Holds {
        stored.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }

    pub fn write(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "[]".to_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes a slot for `id` until `now + hold_ms`, if the tenant's `running` tasks and the
    /// holds still in force leave one under `max_jobs`. Expired holds are dropped first.
    pub fn take(&mut self, id: &str, running: u32, max_jobs: u32, now: u64, hold_ms: u64) -> HoldOutcome {
        self.0.retain(|hold| hold.until_ms > now && hold.id != id);
        let counted = running.saturating_add(u32::try_from(self.0.len()).unwrap_or(u32::MAX));
        if counted >= max_jobs {
            return HoldOutcome::Full { counted };
        }
        self.0.push(Hold { id: id.to_owned(), until_ms: now.saturating_add(hold_ms) });
        HoldOutcome::Held
    }

    /// Gives the slot back (the create was refused, or its task is now recorded as running).
    /// `false` if there was no such hold (it expired, or was released already).
    pub fn release(&mut self, id: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|hold| hold.id != id);
        self.0.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_held_until_released_and_counts_with_running_tasks() {
        let mut holds = Holds::default();
        assert_eq!(holds.take("a", 1, 3, 0, 1_000), HoldOutcome::Held);
        assert_eq!(holds.take("b", 1, 3, 0, 1_000), HoldOutcome::Held);
        assert_eq!(holds.take("c", 1, 3, 0, 1_000), HoldOutcome::Full { counted: 3 });
        assert!(holds.release("a"));
        assert!(!holds.release("a"), "released once");
        assert_eq!(holds.take("c", 1, 3, 0, 1_000), HoldOutcome::Held);
    }

    #[test]
    fn a_hold_expires_so_a_create_that_died_leaks_no_slot() {
        let mut holds = Holds::default();
        assert_eq!(holds.take("a", 0, 1, 0, 1_000), HoldOutcome::Held);
        assert_eq!(holds.take("b", 0, 1, 999, 1_000), HoldOutcome::Full { counted: 1 });
        assert_eq!(holds.take("b", 0, 1, 1_000, 1_000), HoldOutcome::Held);
        assert_eq!(Holds::read(Some(&holds.write())), holds, "stored and read back");
    }

    #[test]
    fn the_same_create_holding_again_holds_one_slot() {
        let mut holds = Holds::default();
        assert_eq!(holds.take("a", 0, 2, 0, 1_000), HoldOutcome::Held);
        assert_eq!(holds.take("a", 0, 2, 10, 1_000), HoldOutcome::Held);
        assert_eq!(holds.take("b", 0, 2, 10, 1_000), HoldOutcome::Held);
        assert_eq!(Holds::read(Some("not json")), Holds::default());
    }
}
