//! Credits: what a tenant's tasks cost Kling, per UTC day, and the reservations that keep a
//! tenant with a budget inside it (`CREDIT_BUDGETS`, or a browser token's `budget`).
//!
//! A task's cost is Kling's `final_unit_deduction`, learned when the task ends (by callback
//! or poll). Until then, a create of a tenant with a budget holds a reservation of its
//! estimate: the last cost Kling charged this tenant for the same endpoint and options, or
//! the deployment's table (`CREDIT_ESTIMATES`). A create that would take the day's spent and
//! reserved credits past the budget is refused before Kling is called. The reservation is
//! taken in the tenant's coordinator in one read-modify-write, so concurrent creates cannot
//! overshoot: the one that finds no room is refused.
//!
//! A reservation is a hold by the create's nonce, for a while: a create's time, then (its
//! task recorded) until its coordinator stops following the task. The task's end replaces
//! it with the real cost (a failed task costs what Kling says, usually nothing), whichever
//! comes first of the end and the record; a later report with another deduction counts the
//! difference. A create refused by Kling, or that never reached it, gives its hold back (its
//! intent's checks say so for one cut off); a hold nothing ever settles runs out by itself,
//! so the ledger never drifts.
//!
//! Credits are kept in thousandths (Kling's deductions may have decimals). Pure: time comes
//! as an argument.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One day, in ms: budgets renew at 00:00 UTC.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// The metadata name the ledger is kept under.
pub const LEDGER: &str = "credit_ledger";
/// The metadata name of the last costs Kling charged, by what was created.
pub const LAST_COSTS: &str = "credit_costs";
/// How many kinds of create the last costs remember.
const COSTS_KEPT: usize = 64;

/// Credits, in thousandths.
pub type Millicredits = u64;

/// Credits as a decimal (`12`, `0.5`, `"1.25"`), in thousandths; `None` if it is not one.
/// Past three decimals, the rest is dropped.
pub fn parse_credits(text: &str) -> Option<Millicredits> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = |part: &str| part.is_empty() || part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let fraction: u64 = format!("{:0<3}", &fraction[..fraction.len().min(3)]).parse().ok()?;
    whole.checked_mul(1000)?.checked_add(fraction)
}

/// Thousandths as the decimal a client reads (`1.5`).
pub fn show(credits: Millicredits) -> f64 {
    credits as f64 / 1000.0
}

/// The UTC day of `now`.
pub fn day_of(now: u64) -> u64 {
    now / DAY_MS
}

/// A create's reservation, by its nonce: until its task is recorded, then until its task
/// ends (or, never heard to end, until its coordinator stops following it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hold {
    nonce: String,
    credits: Millicredits,
    until: u64,
}

/// A tenant's credits today. What is reserved is the sum of the holds still in force, so a
/// reservation nothing ever settles runs out by itself: the ledger cannot drift.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    day: u64,
    /// What today's ended tasks cost.
    spent: Millicredits,
    holds: Vec<Hold>,
}

/// A create refused by the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub spent: Millicredits,
    pub reserved: Millicredits,
    pub budget: Millicredits,
    /// When the budget renews (epoch ms).
    pub renews_at: u64,
}

/// A tenant's credits as `GET /v1/usage` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credits {
    pub spent: Millicredits,
    pub reserved: Millicredits,
}

impl Ledger {
    pub fn read(stored: Option<&str>) -> Ledger {
        stored.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }

    pub fn write(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A new day starts with nothing spent (reservations carry over until their tasks end);
    /// holds past their time are dropped.
    fn roll(&mut self, now: u64) {
        if day_of(now) != self.day {
            self.day = day_of(now);
            self.spent = 0;
        }
        self.holds.retain(|hold| hold.until > now);
    }

    fn reserved(&self, now: u64) -> Millicredits {
        self.holds.iter().filter(|hold| hold.until > now).map(|hold| hold.credits).sum()
    }

    /// Reserves `estimate` for the create of `nonce` until `now + hold_ms`, if the day's spent
    /// and reserved credits leave room under `budget`.
    pub fn reserve(
        &mut self,
        nonce: &str,
        estimate: Millicredits,
        budget: Millicredits,
        now: u64,
        hold_ms: u64,
    ) -> Result<(), OverBudget> {
        self.roll(now);
        if self.holds.iter().any(|hold| hold.nonce == nonce) {
            return Ok(());
        }
        let reserved = self.reserved(now);
        if self.spent.saturating_add(reserved).saturating_add(estimate) > budget {
            return Err(OverBudget {
                spent: self.spent,
                reserved,
                budget,
                renews_at: (self.day + 1) * DAY_MS,
            });
        }
        self.holds.push(Hold {
            nonce: nonce.to_owned(),
            credits: estimate,
            until: now.saturating_add(hold_ms),
        });
        Ok(())
    }

    /// The reservation of `nonce` holds until at least `until` (its task was recorded, or its
    /// create is still being looked for at Kling). Answers whether there was one.
    pub fn keep(&mut self, nonce: &str, until: u64) -> bool {
        match self.holds.iter_mut().find(|hold| hold.nonce == nonce) {
            Some(hold) => {
                hold.until = hold.until.max(until);
                true
            }
            None => false,
        }
    }

    /// The create of `nonce` spent nothing: its reservation is given back. Answers whether
    /// there was one.
    pub fn release(&mut self, nonce: &str) -> bool {
        let before = self.holds.len();
        self.holds.retain(|hold| hold.nonce != nonce);
        self.holds.len() != before
    }

    /// The task of `nonce` ended (or its cost changed), costing `added` more than was counted:
    /// its reservation, if it still has one, is given back, and the cost counted today.
    pub fn settle(&mut self, nonce: &str, added: Millicredits, now: u64) {
        self.roll(now);
        self.release(nonce);
        self.spent = self.spent.saturating_add(added);
    }

    /// The credits spent and reserved at `now`.
    pub fn at(&self, now: u64) -> Credits {
        let spent = if day_of(now) == self.day { self.spent } else { 0 };
        Credits { spent, reserved: self.reserved(now) }
    }
}

/// The last cost Kling charged the tenant for each kind of create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LastCosts(BTreeMap<String, Millicredits>);

impl LastCosts {
    pub fn read(stored: Option<&str>) -> LastCosts {
        stored.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }

    pub fn write(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn of(&self, kind: &str) -> Option<Millicredits> {
        self.0.get(kind).copied()
    }

    /// Remembers what a kind of create cost (a bounded number of kinds: past it, one is
    /// forgotten, and its next create is estimated from the table).
    pub fn learn(&mut self, kind: &str, cost: Millicredits) {
        if !self.0.contains_key(kind) && self.0.len() >= COSTS_KEPT {
            if let Some(first) = self.0.keys().next().cloned() {
                self.0.remove(&first);
            }
        }
        self.0.insert(kind.to_owned(), cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 20_000 * DAY_MS + 3_600_000;

    #[test]
    fn credits_are_decimals_kept_in_thousandths() {
        assert_eq!(parse_credits("12"), Some(12_000));
        assert_eq!(parse_credits("0.5"), Some(500));
        assert_eq!(parse_credits(" 1.25 "), Some(1_250));
        assert_eq!(parse_credits(".5"), Some(500));
        assert_eq!(parse_credits("1.2345"), Some(1_234), "past three decimals, dropped");
        for bad in ["", ".", "-1", "1e3", "one", "1.-2"] {
            assert_eq!(parse_credits(bad), None, "{bad}");
        }
        assert_eq!(show(1_500), 1.5);
    }

    #[test]
    fn a_budget_of_three_takes_three_creates_of_one_and_refuses_the_fourth() {
        let mut ledger = Ledger::default();
        for nonce in ["a", "b", "c"] {
            ledger.reserve(nonce, 1_000, 3_000, NOW, 40_000).unwrap();
        }
        let refused = ledger.reserve("d", 1_000, 3_000, NOW, 40_000).unwrap_err();
        assert_eq!((refused.spent, refused.reserved, refused.budget), (0, 3_000, 3_000));
        assert_eq!(refused.renews_at, 20_001 * DAY_MS, "at 00:00 UTC");
        // A create Kling refused gives its credits back; the next fits.
        assert!(ledger.release("c"));
        ledger.reserve("d", 1_000, 3_000, NOW, 40_000).unwrap();
        assert!(ledger.reserve("d", 1_000, 3_000, NOW, 40_000).is_ok(), "a repeat reserves nothing more");
        assert_eq!(ledger.at(NOW).reserved, 3_000);
    }

    #[test]
    fn a_task_that_ends_turns_its_reservation_into_its_cost_whatever_the_order() {
        let mut ledger = Ledger::default();
        ledger.reserve("a", 1_000, 10_000, NOW, 40_000).unwrap();
        assert!(ledger.keep("a", NOW + DAY_MS), "recorded: held until its task ends");
        assert_eq!(
            ledger.at(NOW + 60_000),
            Credits { spent: 0, reserved: 1_000 },
            "past the create's own time"
        );
        ledger.settle("a", 2_500, NOW + 60_000);
        assert_eq!(ledger.at(NOW + 60_000), Credits { spent: 2_500, reserved: 0 });
        // The end learned before the task's record: settled by the nonce, nothing left to keep.
        ledger.reserve("b", 1_000, 10_000, NOW, 40_000).unwrap();
        ledger.settle("b", 0, NOW + 1_000);
        assert!(!ledger.keep("b", NOW + DAY_MS));
        assert_eq!(ledger.at(NOW + 1_000), Credits { spent: 2_500, reserved: 0 });
    }

    #[test]
    fn a_reservation_nothing_settles_runs_out_and_a_new_day_starts_at_nothing_spent() {
        let mut ledger = Ledger::default();
        ledger.reserve("died", 1_000, 1_000, NOW, 40_000).unwrap();
        assert!(ledger.reserve("next", 1_000, 1_000, NOW + 39_999, 40_000).is_err());
        assert!(ledger.reserve("next", 1_000, 1_000, NOW + 40_000, 40_000).is_ok(), "the dead hold ran out");
        ledger.settle("next", 1_000, NOW + 50_000);
        assert!(ledger.reserve("late", 1_000, 1_000, NOW + 60_000, 40_000).is_err(), "spent today");
        let tomorrow = (day_of(NOW) + 1) * DAY_MS;
        assert_eq!(ledger.at(tomorrow), Credits { spent: 0, reserved: 0 });
        assert!(ledger.reserve("late", 1_000, 1_000, tomorrow, 40_000).is_ok());
    }

    #[test]
    fn the_last_costs_are_bounded() {
        let mut costs = LastCosts::default();
        for i in 0..100 {
            costs.learn(&format!("kind-{i:03}"), i);
        }
        assert_eq!(costs.0.len(), COSTS_KEPT);
        assert_eq!(costs.of("kind-099"), Some(99));
    }
}
