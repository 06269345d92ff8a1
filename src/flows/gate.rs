//! A Kling account's gate, as its Durable Object runs it: admitting creates, freeing slots
//! as tasks end, cancels, and the alarm that sends waiting creates to Kling through their
//! tenants' coordinators (which hold each create's body and send it once).
//!
//! The rules (who is next, backoff after 1303, the bounds) are in `crate::record::gate`;
//! this is the order of loads, saves and calls around them. Every change is a load, a rule
//! and a save with no `await` between, so it is atomic in the object. A send is marked
//! before it starts and its outcome applied to the gate as it is then, so a send cut off (an
//! evicted alarm) is made again after its deadline. The coordinator's side of the contract:
//! it sends a create to Kling at most once at a time, and never again once Kling took it or
//! it is gone (cancelled, expired), answering a repeat with that; after a 1303 it may be
//! sent again. So a create reaches Kling once, and a slot the gate sent never leaks. (A slot
//! the edge got at once is released by the create's coordinator, from its record or its
//! intent's check; [`GateSettings::max_hold_ms`] is the last resort.)

use futures_util::future::{FutureExt, LocalBoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

use crate::error::ApiError;
use crate::ports::{Dispatched, Dispatcher, GateStore, Runtime};
use crate::record::gate::{AccountSlots, Admission, Cancel, GateView, InLine, Ticket};

/// How many creates one alarm sends at once.
pub const DISPATCH_PARALLEL: usize = 6;

/// What the gate follows (each account's concurrency, `QUEUE_MAX_PER_TENANT`,
/// `QUEUE_MAX_WAIT_SECONDS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSettings {
    /// The accounts, the first one first, with their concurrency (`0`: no bound).
    pub accounts: Vec<AccountSlots>,
    /// How many creates one tenant may have waiting.
    pub queue_bound: u32,
    /// How long a create may wait before it ends as failed.
    pub max_wait_ms: u64,
    /// How long a slot may be held before it is taken back (a task whose end was never
    /// learned: its coordinator stops following it after a day).
    pub max_hold_ms: u64,
    /// How long a send may go unanswered before it is made again.
    pub send_deadline_ms: u64,
}

impl GateSettings {
    /// What the gate follows, from the deployment's settings. A slot is taken back a while
    /// after its task's coordinator stops following it (a day), and a send is made again
    /// only after its coordinator would look for the task at Kling.
    pub fn of(config: &crate::config::Config) -> GateSettings {
        GateSettings {
            accounts: config
                .accounts
                .all()
                .iter()
                .map(|account| AccountSlots { name: account.name.clone(), capacity: account.max_concurrency })
                .collect(),
            queue_bound: config.queue_max_per_tenant,
            max_wait_ms: config.queue_max_wait_ms,
            max_hold_ms: crate::schedule::POLL_HORIZON_MS + MAX_HOLD_MARGIN_MS,
            send_deadline_ms: coordinator_send_deadline_ms(config) + RESEND_MARGIN_MS,
        }
    }
}

/// A slot is taken back this long after its coordinator stops following its task.
const MAX_HOLD_MARGIN_MS: u64 = 60 * 60 * 1000;
/// The gate sends a create again only this long after its coordinator would look for it.
const RESEND_MARGIN_MS: u64 = 10_000;

/// How long a coordinator's send to Kling may go unanswered before it looks for the task at
/// Kling by its external id: past the create's deadline.
pub fn coordinator_send_deadline_ms(config: &crate::config::Config) -> u64 {
    u64::from(config.kling_timeout_ms) + 5_000
}

pub struct GateFlows<'a, S, D, R> {
    pub store: &'a S,
    pub dispatcher: &'a D,
    pub runtime: &'a R,
    pub settings: &'a GateSettings,
}

impl<S: GateStore, D: Dispatcher, R: Runtime> GateFlows<'_, S, D, R> {
    /// A new create (`pin`: the one account it may go to): a slot at once (the edge sends
    /// it), a place in line, or refused.
    pub fn admit(&self, ticket: Ticket, pin: Option<&str>) -> Result<Admission, ApiError> {
        let now = self.runtime.now_ms();
        let mut gate = self.store.load_gate()?;
        let settings = self.settings;
        let admission = gate.admit(ticket, pin, &settings.accounts, settings.queue_bound, now);
        if matches!(admission, Admission::Go { .. } | Admission::Queued { .. }) {
            self.store.save_gate(&gate)?;
        }
        Ok(admission)
    }

    /// The task `id` ended, or never reached Kling: its slot is free (the next create is
    /// sent by the alarm, which the object sets at once).
    pub fn release(&self, id: &str) -> Result<bool, ApiError> {
        let mut gate = self.store.load_gate()?;
        let released = gate.release(id);
        if released {
            self.store.save_gate(&gate)?;
        }
        Ok(released)
    }

    /// Kling answered 1303 on `account` to a create the edge sent with a slot it got at once
    /// (or while the gate could not be asked): the create (which its coordinator now holds)
    /// goes back to the front of the line.
    pub fn refused(&self, ticket: Ticket, account: &str, pin: Option<String>) -> Result<bool, ApiError> {
        let mut gate = self.store.load_gate()?;
        let now = self.runtime.now_ms();
        let first = self.settings.accounts.first().map_or("", |first| first.name.as_str());
        let account = if account.is_empty() { first } else { account };
        let refused = gate.refused(&ticket.id, false, now) || gate.refused_unseen(ticket, account, pin, now);
        if refused {
            self.store.save_gate(&gate)?;
        }
        Ok(refused)
    }

    pub fn cancel(&self, id: &str, tenant: &str) -> Result<Cancel, ApiError> {
        let mut gate = self.store.load_gate()?;
        let cancel = gate.cancel(id, tenant);
        if cancel == Cancel::Cancelled {
            self.store.save_gate(&gate)?;
        }
        Ok(cancel)
    }

    /// Where the create `id` waits in line (1 is next), if it waits.
    pub fn position(&self, id: &str) -> Result<Option<u32>, ApiError> {
        Ok(self.store.load_gate()?.position(id))
    }

    /// A tenant's creates in line, in the order they will go.
    pub fn waiting_for(&self, tenant: &str) -> Result<Vec<InLine>, ApiError> {
        Ok(self.store.load_gate()?.waiting_for(tenant))
    }

    /// The accounts' slots and the line now.
    pub fn look(&self) -> Result<GateView, ApiError> {
        Ok(self.store.load_gate()?.view(&self.settings.accounts, self.runtime.now_ms()))
    }

    /// The alarm: drops creates that waited too long (their coordinators end them by the
    /// same rule), takes back slots held too long, sends again what went unanswered, then
    /// sends waiting creates while slots are free, [`DISPATCH_PARALLEL`] at once.
    pub async fn run_due(&self) -> Result<(), ApiError> {
        let settings = self.settings;
        let now = self.runtime.now_ms();
        let mut gate = self.store.load_gate()?;
        let expired = gate.expire(settings.max_wait_ms, now);
        let reclaimed = gate.reclaim(settings.max_hold_ms, now);
        let again = gate.unsent(settings.send_deadline_ms, now);
        self.store.save_gate(&gate)?;
        if !expired.is_empty() || !reclaimed.is_empty() {
            self.runtime
                .log(json!({"event": "gate", "expired": expired.len(), "reclaimed": reclaimed.len()}));
        }
        let mut in_flight: FuturesUnordered<LocalBoxFuture<'_, (Ticket, Dispatched)>> =
            FuturesUnordered::new();
        let send = |(ticket, account): (Ticket, String)| {
            async move {
                let outcome = self.dispatcher.dispatch(&ticket, &account).await;
                (ticket, outcome)
            }
            .boxed_local()
        };
        in_flight.extend(again.into_iter().map(send));
        loop {
            while in_flight.len() < DISPATCH_PARALLEL {
                let mut gate = self.store.load_gate()?;
                let Some(next) = gate.next(&settings.accounts, self.runtime.now_ms()) else { break };
                self.store.save_gate(&gate)?;
                in_flight.push(send(next));
            }
            let Some((ticket, outcome)) = in_flight.next().await else { break };
            self.apply(&ticket, outcome)?;
        }
        Ok(())
    }

    /// Applies how a send went to the gate as it is now.
    fn apply(&self, ticket: &Ticket, outcome: Dispatched) -> Result<(), ApiError> {
        let mut gate = self.store.load_gate()?;
        match outcome {
            Dispatched::Taken => {
                gate.sent(&ticket.id);
            }
            Dispatched::Refused => {
                gate.refused(&ticket.id, true, self.runtime.now_ms());
            }
            Dispatched::Gone => {
                gate.release(&ticket.id);
            }
            Dispatched::Unknown => return Ok(()),
        }
        self.store.save_gate(&gate)
    }

    /// When the alarm should run next: now if a create waits for a free slot, else when a
    /// pause ends, a wait or a hold runs out, or a send may be made again.
    pub fn next_due(&self) -> Result<Option<u64>, ApiError> {
        let gate = self.store.load_gate()?;
        let settings = self.settings;
        let now = self.runtime.now_ms();
        if gate.can_dispatch_now(&settings.accounts, now) {
            return Ok(Some(now));
        }
        let due = gate.next_due(settings.max_wait_ms, settings.max_hold_ms, now);
        Ok(due.into_iter().chain(gate.next_resend(settings.send_deadline_ms)).min())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::record::gate::Gate;
    use crate::testing::{block_on, run_together, run_until_crash, TestRuntime};

    const START: u64 = 1_800_000_000_000;

    #[derive(Default)]
    struct MemoryGate {
        gate: RefCell<Gate>,
        saves: Cell<u32>,
    }

    impl GateStore for MemoryGate {
        fn load_gate(&self) -> Result<Gate, ApiError> {
            Ok(self.gate.borrow().clone())
        }
        fn save_gate(&self, gate: &Gate) -> Result<(), ApiError> {
            self.saves.set(self.saves.get() + 1);
            *self.gate.borrow_mut() = gate.clone();
            Ok(())
        }
    }

    /// The coordinators and Kling behind them, as strict as the stand-in: Kling runs at most
    /// `kling_slots` tasks and answers 1303 past them; a coordinator sends each create once
    /// and answers a repeat with how the first went.
    #[derive(Default)]
    struct Coordinators {
        kling_slots: usize,
        /// Creates Kling is running, and every create it ever took (with how often).
        running: RefCell<BTreeSet<String>>,
        taken: RefCell<BTreeMap<String, u32>>,
        refusals: Cell<u32>,
        /// Creates cancelled or failed at their coordinator: never sent.
        gone: RefCell<BTreeSet<String>>,
        /// Sends that get no answer (the next ones in order), then go through.
        unanswered: Cell<u32>,
        /// The account each create reached Kling on (`kling_slots` is each account's).
        accounts: RefCell<BTreeMap<String, String>>,
    }

    impl Coordinators {
        fn running_on(&self, account: &str) -> usize {
            let accounts = self.accounts.borrow();
            let on = |id: &&String| accounts.get(*id).map_or(ACCOUNT, String::as_str) == account;
            self.running.borrow().iter().filter(on).count()
        }
    }

    impl Dispatcher for Coordinators {
        async fn dispatch(&self, ticket: &Ticket, account: &str) -> Dispatched {
            crate::testing::yield_now().await;
            if self.gone.borrow().contains(&ticket.id) {
                return Dispatched::Gone;
            }
            if self.taken.borrow().contains_key(&ticket.id) {
                return Dispatched::Taken;
            }
            if self.running_on(account) >= self.kling_slots {
                self.refusals.set(self.refusals.get() + 1);
                return Dispatched::Refused;
            }
            self.accounts.borrow_mut().insert(ticket.id.clone(), account.to_owned());
            self.running.borrow_mut().insert(ticket.id.clone());
            *self.taken.borrow_mut().entry(ticket.id.clone()).or_default() += 1;
            crate::testing::yield_now().await;
            if self.unanswered.get() > 0 {
                self.unanswered.set(self.unanswered.get() - 1);
                std::future::pending::<()>().await;
            }
            Dispatched::Taken
        }
    }

    struct World {
        store: MemoryGate,
        coordinators: Coordinators,
        runtime: TestRuntime,
        settings: GateSettings,
    }

    /// The account of a one-account world.
    const ACCOUNT: &str = "default";

    impl World {
        fn new(capacity: u32, kling_slots: usize) -> World {
            World::with_accounts(&[(ACCOUNT, capacity)], kling_slots)
        }

        fn with_accounts(accounts: &[(&str, u32)], kling_slots: usize) -> World {
            let accounts = accounts
                .iter()
                .map(|(name, capacity)| AccountSlots { name: (*name).to_owned(), capacity: *capacity })
                .collect();
            let world = World {
                store: MemoryGate::default(),
                coordinators: Coordinators { kling_slots, ..Default::default() },
                runtime: TestRuntime::default(),
                settings: GateSettings {
                    accounts,
                    queue_bound: 100,
                    max_wait_ms: 3_600_000,
                    max_hold_ms: 24 * 3_600_000,
                    send_deadline_ms: 40_000,
                },
            };
            world.runtime.now.set(START);
            world
        }

        fn flows(&self) -> GateFlows<'_, MemoryGate, Coordinators, TestRuntime> {
            GateFlows {
                store: &self.store,
                dispatcher: &self.coordinators,
                runtime: &self.runtime,
                settings: &self.settings,
            }
        }

        fn admit(&self, id: &str, tenant: &str) -> Admission {
            self.admit_pinned(id, tenant, None)
        }

        fn admit_pinned(&self, id: &str, tenant: &str, pin: Option<&str>) -> Admission {
            let ticket = Ticket { id: id.into(), tenant: tenant.into() };
            let admission = self.flows().admit(ticket, pin).unwrap();
            if let Admission::Go { account } = &admission {
                // The edge sends it itself.
                self.coordinators.accounts.borrow_mut().insert(id.into(), account.clone());
                self.coordinators.running.borrow_mut().insert(id.into());
                *self.coordinators.taken.borrow_mut().entry(id.into()).or_default() += 1;
            }
            admission
        }

        /// Kling finishes the task `id`; its coordinator tells the gate.
        fn finish(&self, id: &str) {
            assert!(self.coordinators.running.borrow_mut().remove(id), "{id} was running");
            self.flows().release(id).unwrap();
        }

        /// Runs every alarm due within `ms`, moving the clock from one to the next.
        fn run_alarms_for(&self, ms: u64) {
            let end = self.runtime.now.get() + ms;
            for _ in 0..1_000 {
                match self.flows().next_due().unwrap() {
                    Some(due) if due <= end => {
                        if due > self.runtime.now.get() {
                            self.runtime.now.set(due);
                        }
                        block_on(self.flows().run_due()).unwrap();
                    }
                    _ => break,
                }
            }
            self.runtime.now.set(end.max(self.runtime.now.get()));
        }

        fn check(&self) {
            let view = self.store.gate.borrow().view(&self.settings.accounts, self.runtime.now.get());
            for account in &view.accounts {
                assert!(account.holding <= account.capacity, "no more slots than the setting: {view:?}");
                assert!(self.coordinators.running_on(&account.name) <= self.coordinators.kling_slots);
            }
            let taken = self.coordinators.taken.borrow();
            assert!(taken.values().all(|&sends| sends == 1), "a create reached Kling twice: {taken:?}");
        }

        fn go(&self) -> Admission {
            Admission::Go { account: ACCOUNT.into() }
        }
    }

    #[test]
    fn six_creates_of_three_tenants_all_reach_kling_two_at_a_time_in_turn() {
        let world = World::new(2, 2);
        let mut admitted = Vec::new();
        for (id, tenant) in [("a0", "a"), ("a1", "a"), ("a2", "a"), ("a3", "a"), ("b0", "b"), ("c0", "c")] {
            admitted.push(world.admit(id, tenant));
        }
        assert_eq!(admitted[..2], [world.go(), world.go()]);
        assert!(admitted[2..].iter().all(|a| matches!(a, Admission::Queued { .. })), "{admitted:?}");
        let mut order = Vec::new();
        for _ in 0..6 {
            let running: Vec<String> = world.coordinators.running.borrow().iter().cloned().collect();
            let Some(first) = running.first() else { break };
            let new: Vec<String> = running.iter().filter(|id| !order.contains(*id)).cloned().collect();
            order.extend(new);
            world.finish(first);
            world.run_alarms_for(1_000);
            world.check();
        }
        for id in world.coordinators.running.borrow().iter() {
            if !order.contains(id) {
                order.push(id.clone());
            }
        }
        assert_eq!(world.coordinators.taken.borrow().len(), 6, "all six reached Kling");
        let b = order.iter().position(|id| id == "b0").unwrap();
        let a3 = order.iter().position(|id| id == "a3").unwrap();
        assert!(b < a3, "b's single create went before the rest of a's burst: {order:?}");
        assert_eq!(world.coordinators.refusals.get(), 0);
    }

    #[test]
    fn a_1303_below_the_setting_ends_with_the_create_sent_and_kling_not_hammered() {
        // The setting says 3; another app holds one of the account's 2.
        let world = World::new(3, 1);
        world.coordinators.running.borrow_mut().insert("other-app".into());
        assert_eq!(world.admit("a0", "a"), world.go());
        // The edge's send gets 1303 (Kling holds two): the create goes back in line.
        world.coordinators.running.borrow_mut().remove("a0");
        world.coordinators.taken.borrow_mut().remove("a0");
        let ticket = Ticket { id: "a0".into(), tenant: "a".into() };
        assert!(world.flows().refused(ticket, ACCOUNT, None).unwrap());
        world.admit("a1", "a");
        world.run_alarms_for(30_000);
        let refusals_while_full = world.coordinators.refusals.get();
        assert!(refusals_while_full <= 5, "backoff: {refusals_while_full} refusals in 30 s");
        world.coordinators.running.borrow_mut().remove("other-app");
        world.run_alarms_for(120_000);
        assert!(world.coordinators.taken.borrow().contains_key("a0"), "sent in the end");
        world.finish("a0");
        world.run_alarms_for(120_000);
        assert!(world.coordinators.taken.borrow().contains_key("a1"));
        world.check();
    }

    #[test]
    fn a_send_cut_off_at_any_await_is_made_once_and_its_slot_never_leaks() {
        for cut in 1..12 {
            let world = World::new(1, 1);
            world.admit("a0", "a");
            world.admit("b0", "b");
            world.finish("a0");
            let _ = run_until_crash(world.flows().run_due(), cut);
            world.run_alarms_for(5 * 60_000);
            world.check();
            assert!(world.coordinators.taken.borrow().contains_key("b0"), "cut after {cut}");
            world.finish("b0");
            assert_eq!(world.store.gate.borrow().counts(), (0, 0), "cut after {cut}: no slot kept");
        }
    }

    #[test]
    fn an_unanswered_send_is_asked_again_and_the_create_still_reaches_kling_once() {
        let world = World::new(1, 1);
        world.admit("a0", "a");
        world.admit("b0", "b");
        world.coordinators.unanswered.set(1);
        world.finish("a0");
        // The alarm waits on the unanswered send until the runtime cuts it off.
        let _ = run_until_crash(world.flows().run_due(), 50);
        world.run_alarms_for(2 * world.settings.send_deadline_ms);
        world.check();
        assert_eq!(world.coordinators.taken.borrow().get("b0"), Some(&1));
        assert_eq!(world.store.gate.borrow().next_resend(world.settings.send_deadline_ms), None, "settled");
    }

    #[test]
    fn a_cancel_and_a_dispatch_crossing_leave_one_outcome() {
        let world = World::new(1, 1);
        world.admit("a0", "a");
        world.admit("b0", "b");
        world.finish("a0");
        // The cancel comes while the alarm is sending b0.
        let flows = world.flows();
        let cancel = async {
            crate::testing::yield_now().await;
            flows.cancel("b0", "b").unwrap()
        };
        let alarm = async {
            flows.run_due().await.unwrap();
            Cancel::Unknown
        };
        let outcomes = run_together(vec![alarm.boxed_local(), cancel.boxed_local()]);
        assert_eq!(outcomes[1], Cancel::AtKling, "already being sent: Kling cannot cancel it");
        assert_eq!(world.coordinators.taken.borrow().get("b0"), Some(&1));
        // Cancelled while still in line, it never goes.
        world.admit("c0", "c");
        assert_eq!(world.flows().cancel("c0", "c").unwrap(), Cancel::Cancelled);
        world.finish("b0");
        world.run_alarms_for(60_000);
        assert!(!world.coordinators.taken.borrow().contains_key("c0"));
        world.check();
    }

    /// An admission is one change with no `await` inside: two creates at once cannot both
    /// take the last slot, whichever comes first.
    #[test]
    fn two_creates_for_the_last_slot_get_one_slot() {
        let world = World::new(1, 1);
        let flows = &world.flows();
        let admit = |id: &'static str| async move {
            crate::testing::yield_now().await;
            flows.admit(Ticket { id: id.into(), tenant: "a".into() }, None).unwrap()
        };
        let outcomes = run_together(vec![admit("a0").boxed_local(), admit("a1").boxed_local()]);
        assert_eq!(outcomes.iter().filter(|a| **a == world.go()).count(), 1, "{outcomes:?}");
        assert_eq!(world.store.gate.borrow().counts(), (1, 1));
    }

    #[test]
    fn creates_spread_over_two_accounts_and_one_pinned_waits_for_its_own() {
        let world = World::with_accounts(&[("main", 2), ("spare", 2)], 2);
        let go = |account: &str| Admission::Go { account: account.into() };
        // The least loaded account each time: they take turns.
        assert_eq!(world.admit("a0", "a"), go("main"));
        assert_eq!(world.admit("a1", "a"), go("spare"));
        assert_eq!(world.admit_pinned("b0", "b", Some("spare")), go("spare"), "pinned");
        assert_eq!(world.admit("c0", "c"), go("main"));
        // Both full: a create pinned to main waits, and so does one that may go anywhere.
        assert!(matches!(world.admit_pinned("d0", "d", Some("main")), Admission::Queued { position: 1 }));
        assert!(matches!(world.admit("e0", "e"), Admission::Queued { position: 2 }));
        // A slot of spare frees: the pinned create cannot take it, the next one does.
        world.finish("a1");
        world.run_alarms_for(1_000);
        assert_eq!(world.coordinators.accounts.borrow().get("e0").map(String::as_str), Some("spare"));
        assert!(!world.coordinators.taken.borrow().contains_key("d0"), "waits for main");
        // With a create of main's waiting, a new one that main could take waits behind it.
        world.finish("b0");
        assert_eq!(world.admit("f0", "f"), go("spare"), "spare is free and nobody in line may take it");
        world.finish("a0");
        world.run_alarms_for(1_000);
        assert_eq!(world.coordinators.accounts.borrow().get("d0").map(String::as_str), Some("main"));
        world.check();
        let view = world.flows().look().unwrap();
        let holding: Vec<(String, u32)> = view.accounts.iter().map(|a| (a.name.clone(), a.holding)).collect();
        assert_eq!(holding, [("main".to_owned(), 2), ("spare".to_owned(), 2)]);
        assert_eq!(view.waiting, 0);
    }

    #[test]
    fn a_1303_on_one_account_pauses_it_alone() {
        let world = World::with_accounts(&[("main", 2), ("spare", 2)], 2);
        // Another app fills main at Kling: the gate's sends there get 1303.
        world.coordinators.running.borrow_mut().insert("other-1".into());
        world.coordinators.running.borrow_mut().insert("other-2".into());
        for id in ["h0", "h1", "h2", "h3"] {
            world.admit(id, "h");
        }
        for id in ["h0", "h1", "h2", "h3"] {
            let on_main = world.coordinators.accounts.borrow().get(id).is_some_and(|a| a == "main");
            if on_main {
                world.coordinators.running.borrow_mut().remove(id);
                world.coordinators.taken.borrow_mut().remove(id);
                world.coordinators.accounts.borrow_mut().remove(id);
                let ticket = Ticket { id: id.into(), tenant: "h".into() };
                assert!(world.flows().refused(ticket, "main", None).unwrap());
            }
        }
        let view = world.flows().look().unwrap();
        assert!(
            view.accounts[0].paused_until.is_some() && view.accounts[1].paused_until.is_none(),
            "{view:?}"
        );
        assert_eq!(view.accounts[0].slots, 1, "what Kling showed main has");
        // Spare frees a slot: a refused create goes there, not waiting out main's pause.
        world.finish("h1");
        world.run_alarms_for(500);
        assert_eq!(world.coordinators.refusals.get(), 0);
        assert_eq!(world.coordinators.running_on("spare"), 2);
        world.check();
    }
}
