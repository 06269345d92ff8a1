//! The gate of the deployment's Kling accounts: each account's concurrency, the creates
//! holding its slots, and the one line of creates waiting for a slot, fair across tenants.
//!
//! Kling counts concurrency per account: a task holds a slot from `submitted` until it ends,
//! and a create past the limit is refused with 1303. The gate turns that refusal into a
//! line. A create that finds a free slot, with nobody waiting who could take it, goes at
//! once, to the least loaded account (the fewest slots held for its size); otherwise it
//! waits, and slots go to the waiting creates round-robin over tenants (the tenant served
//! longest ago first), first come first served within one, so one tenant's single create
//! never waits behind another tenant's whole burst. A create pinned to one account
//! (useapi.net's `email`) waits for that account's slots only; the others take any
//! account's, so a slot freed on any account goes to the next in line.
//!
//! Each account keeps its own pace: a 1303 that comes anyway (another app shares the
//! account, or the setting is too high) puts the create back at the front of its tenant's
//! line, holds that account's dispatch back for a while (from 1 s, doubling to a minute) and
//! lowers the slots the gate uses on it for a few minutes, so Kling is not hammered.
//!
//! Pure: time comes as an argument, and every change is one call with no `await` inside (the
//! gate's object keeps this whole, so each change is atomic there).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The first pause after a 1303, doubling on each one that follows, up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 1_000;
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// How long the slots Kling showed it has (at a 1303) are believed over the setting.
pub const LEARNED_FOR_MS: u64 = 5 * 60 * 1000;
/// How many tenants' turns are remembered once their line is empty (so a tenant that keeps
/// one create waiting at a time still takes its turn after the others); past it, those
/// served longest ago are forgotten, which puts them first, where they would be anyway.
pub const TURNS_KEPT: usize = 1_000;

/// A create the gate knows: the id its client was given, and its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub tenant: String,
}

/// One account as the gate counts it: its name and concurrency (`0`: no bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSlots {
    pub name: String,
    pub capacity: u32,
}

/// A create holding one of an account's slots (sent to Kling, or being sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    ticket: Ticket,
    /// The account whose slot it holds (empty in a gate saved before accounts had names:
    /// see [`Gate::name_unnamed`]).
    #[serde(default)]
    account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<String>,
    since: u64,
    /// When it came to the gate (kept if it goes back in line after a 1303).
    #[serde(default)]
    queued_at: u64,
    /// Since when the gate has been sending it to Kling, until Kling's answer is known (a
    /// create that got its slot at once is sent by the edge, not the gate: `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sending_since: Option<u64>,
}

/// A create waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Waiting {
    ticket: Ticket,
    /// The only account it may go to, if its client named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<String>,
    queued_at: u64,
    /// The order it came in (a create put back after a 1303 goes before its tenant's first).
    seq: i64,
}

impl Waiting {
    fn may_go_to(&self, account: &str) -> bool {
        self.pin.as_deref().is_none_or(|pin| pin == account)
    }
}

/// What Kling's 1303s taught about one account: fewer slots than the setting says, until
/// `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Learned {
    slots: u32,
    until: u64,
}

/// One account's pace after 1303s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Pace {
    learned: Option<Learned>,
    /// No dispatch to the account before this.
    paused_until: Option<u64>,
    /// The next pause, doubled by each 1303 and reset by a create Kling takes.
    backoff_ms: u64,
}

/// The gate of the deployment's accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    holders: Vec<Holder>,
    line: Vec<Waiting>,
    /// When each tenant was last given a slot (a counter, not a time; see [`TURNS_KEPT`]).
    served: BTreeMap<String, u64>,
    next_seq: i64,
    serves: u64,
    /// Each account's pace, by name (an account Kling never refused has none).
    #[serde(default)]
    paces: BTreeMap<String, Pace>,
}

/// A create in line: its ticket's id, its place (1 is next) and when it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InLine {
    pub id: String,
    pub position: u32,
    pub queued_at: u64,
}

/// One account's slots, as its operator sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    /// Its concurrency (`KLING_MAX_CONCURRENCY`, or its entry of `KLING_ACCOUNTS`).
    pub capacity: u32,
    /// The slots the gate uses now: the setting, or fewer for a while after a 1303.
    pub slots: u32,
    /// Creates holding a slot (at Kling, or being sent).
    pub holding: u32,
    /// No create is sent to it before this (epoch ms), after a 1303.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
}

/// The accounts' slots and the line, as `GET /v1/queue` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateView {
    pub accounts: Vec<AccountView>,
    /// Creates in line, all tenants together.
    pub waiting: u32,
}

/// How a create fared at the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Admission {
    /// A slot of `account` is the create's: send it to Kling there now.
    Go { account: String },
    /// In line, at this place (1 is next).
    Queued { position: u32 },
    /// The tenant already has `bound` creates in line (`QUEUE_MAX_PER_TENANT`).
    Full { bound: u32 },
    /// The id already holds a slot (a create admitted twice): nothing changed.
    Holding,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancel {
    /// Removed from the line: it never reaches Kling.
    Cancelled,
    /// Already Kling's (or on its way): Kling cannot cancel it.
    AtKling,
    /// No create of this tenant's by that id.
    Unknown,
}

impl Gate {
    /// Gives the slots held on no account of `accounts` (a gate saved before accounts had
    /// names, or the first account renamed, as from `default` to a name of `KLING_ACCOUNTS`)
    /// to the first: their tasks run on the account that gate served, and counting them
    /// there keeps it from being sent more than it runs.
    pub fn name_unnamed(&mut self, accounts: &[AccountSlots]) {
        let Some(first) = accounts.first() else { return };
        let known = |name: &str| accounts.iter().any(|account| account.name == name);
        for holder in self.holders.iter_mut().filter(|holder| !known(&holder.account)) {
            holder.account = first.name.clone();
        }
    }

    /// The slots the gate uses on `account` at `now`: its setting (all, for `0`), or fewer
    /// for a while after a 1303.
    pub fn slots(&self, account: &AccountSlots, now: u64) -> u32 {
        let capacity = if account.capacity == 0 { u32::MAX } else { account.capacity };
        match self.paces.get(&account.name).and_then(|pace| pace.learned) {
            Some(learned) if now < learned.until => learned.slots.min(capacity),
            _ => capacity,
        }
    }

    fn holding(&self, account: &str) -> u32 {
        self.holders.iter().filter(|holder| holder.account == account).count() as u32
    }

    /// Whether `account` can take a create at `now`: not paused, and a slot free.
    fn has_room(&self, account: &AccountSlots, now: u64) -> bool {
        let paused = self.paces.get(&account.name).and_then(|pace| pace.paused_until);
        paused.is_none_or(|until| now >= until) && self.holding(&account.name) < self.slots(account, now)
    }

    /// The least loaded of `candidates` with room at `now`: the fewest slots held for its
    /// size, the first listed on a tie.
    fn least_loaded<'a>(
        &self,
        candidates: impl Iterator<Item = &'a AccountSlots>,
        now: u64,
    ) -> Option<&'a AccountSlots> {
        candidates
            .filter(|account| self.has_room(account, now))
            .map(|account| {
                (account, u64::from(self.holding(&account.name)), u64::from(self.slots(account, now)))
            })
            .min_by(|(_, held_a, slots_a), (_, held_b, slots_b)| (held_a * slots_b).cmp(&(held_b * slots_a)))
            .map(|(account, _, _)| account)
    }

    /// The account a create in line (or a new one, `joining`) with `pin` goes to at `now`,
    /// if one has room. A new create never takes a slot a create in line could take; an
    /// unpinned one leaves the accounts that pinned creates in line wait for to them while
    /// another account has room.
    fn account_for<'a>(
        &self,
        accounts: &'a [AccountSlots],
        pin: Option<&str>,
        joining: bool,
        now: u64,
    ) -> Option<&'a AccountSlots> {
        let allowed = |account: &&AccountSlots| pin.is_none_or(|pin| pin == account.name);
        let unwanted =
            |account: &&AccountSlots| !self.line.iter().any(|waiting| waiting.may_go_to(&account.name));
        if joining {
            return self.least_loaded(accounts.iter().filter(allowed).filter(unwanted), now);
        }
        if pin.is_some() {
            return self.least_loaded(accounts.iter().filter(allowed), now);
        }
        let pinned_to = |account: &&AccountSlots| {
            self.line.iter().any(|waiting| waiting.pin.as_deref() == Some(account.name.as_str()))
        };
        self.least_loaded(accounts.iter().filter(|account| !pinned_to(account)), now)
            .or_else(|| self.least_loaded(accounts.iter(), now))
    }

    /// A new create of `ticket`'s tenant (`pin`: the one account it may go to): a slot at
    /// once if one is free that nobody in line could take, else a place in line, unless the
    /// tenant already has `bound` creates waiting. An id the gate already knows changes
    /// nothing: it answers where that create is.
    pub fn admit(
        &mut self,
        ticket: Ticket,
        pin: Option<&str>,
        accounts: &[AccountSlots],
        bound: u32,
        now: u64,
    ) -> Admission {
        if self.holders.iter().any(|holder| holder.ticket.id == ticket.id) {
            return Admission::Holding;
        }
        if let Some(position) = self.position(&ticket.id) {
            return Admission::Queued { position };
        }
        if let Some(account) = self.account_for(accounts, pin, true, now) {
            let account = account.name.clone();
            self.holders.push(Holder {
                ticket,
                account: account.clone(),
                pin: pin.map(str::to_owned),
                since: now,
                queued_at: now,
                sending_since: None,
            });
            return Admission::Go { account };
        }
        if self.waiting_of(&ticket.tenant) >= bound as usize {
            return Admission::Full { bound };
        }
        let id = ticket.id.clone();
        self.line.push(Waiting { ticket, pin: pin.map(str::to_owned), queued_at: now, seq: self.next_seq });
        self.next_seq += 1;
        Admission::Queued { position: self.position(&id).unwrap_or(1) }
    }

    fn waiting_of(&self, tenant: &str) -> usize {
        self.line.iter().filter(|waiting| waiting.ticket.tenant == tenant).count()
    }

    /// The next create to send to Kling, and the account whose slot it takes: the first in
    /// line that an account with room (not paused) may take. It holds the slot from now.
    pub fn next(&mut self, accounts: &[AccountSlots], now: u64) -> Option<(Ticket, String)> {
        let (first, account) = self.order().into_iter().find_map(|i| {
            let pin = self.line[i].pin.as_deref();
            self.account_for(accounts, pin, false, now).map(|account| (i, account.name.clone()))
        })?;
        if let Some(pace) = self.paces.get_mut(&account) {
            pace.paused_until = None;
        }
        let waiting = self.line.remove(first);
        self.serves += 1;
        self.served.insert(waiting.ticket.tenant.clone(), self.serves);
        self.forget_old_turns();
        self.holders.push(Holder {
            ticket: waiting.ticket.clone(),
            account: account.clone(),
            pin: waiting.pin,
            since: now,
            queued_at: waiting.queued_at,
            sending_since: Some(now),
        });
        Some((waiting.ticket, account))
    }

    /// Kling took the create `id` the gate sent: it holds its slot until its task ends, and
    /// its account's pause after 1303s starts over. Answers whether the gate was sending it.
    pub fn sent(&mut self, id: &str) -> bool {
        let Some(holder) = self.holders.iter_mut().find(|holder| holder.ticket.id == id) else {
            return false;
        };
        let was_sending = holder.sending_since.take().is_some();
        let account = holder.account.clone();
        self.taken(&account);
        was_sending
    }

    /// The creates the gate began sending `deadline_ms` or more before `now` whose outcome it
    /// never learned (it was cut off, or its call went unanswered), with their accounts: to
    /// be sent again (the coordinator sends a create once, and answers again with how it
    /// went). Each is counted as sent anew from `now`.
    pub fn unsent(&mut self, deadline_ms: u64, now: u64) -> Vec<(Ticket, String)> {
        let mut again = Vec::new();
        for holder in &mut self.holders {
            if holder.sending_since.is_some_and(|since| now.saturating_sub(since) >= deadline_ms) {
                holder.sending_since = Some(now);
                again.push((holder.ticket.clone(), holder.account.clone()));
            }
        }
        again
    }

    /// Keeps [`TURNS_KEPT`] tenants' turns at most, besides those of tenants in line.
    fn forget_old_turns(&mut self) {
        if self.served.len() <= TURNS_KEPT {
            return;
        }
        let mut idle: Vec<(u64, String)> = self
            .served
            .iter()
            .filter(|(tenant, _)| self.waiting_of(tenant) == 0)
            .map(|(tenant, turn)| (*turn, tenant.clone()))
            .collect();
        idle.sort_unstable();
        let excess = self.served.len().saturating_sub(TURNS_KEPT);
        for (_, tenant) in idle.into_iter().take(excess) {
            self.served.remove(&tenant);
        }
    }

    /// The line in the order it will be served, as indexes into it: round-robin over
    /// tenants (the one served longest ago first; a tenant new to the line before all that
    /// were served), each tenant's creates in the order they came.
    fn order(&self) -> Vec<usize> {
        let mut tenants: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut indexes: Vec<usize> = (0..self.line.len()).collect();
        indexes.sort_by_key(|&i| self.line[i].seq);
        for i in indexes {
            tenants.entry(self.line[i].ticket.tenant.as_str()).or_default().push(i);
        }
        let mut rotation: Vec<(&str, Vec<usize>)> = tenants.into_iter().collect();
        rotation.sort_by_key(|(tenant, creates)| {
            (self.served.get(*tenant).copied().unwrap_or(0), self.line[creates[0]].seq)
        });
        let mut order = Vec::with_capacity(self.line.len());
        let longest = rotation.iter().map(|(_, creates)| creates.len()).max().unwrap_or(0);
        for round in 0..longest {
            for (_, creates) in &rotation {
                if let Some(&i) = creates.get(round) {
                    order.push(i);
                }
            }
        }
        order
    }

    /// Where the create `id` is in line (1 is next), if it waits.
    pub fn position(&self, id: &str) -> Option<u32> {
        let order = self.order();
        order.iter().position(|&i| self.line[i].ticket.id == id).map(|place| place as u32 + 1)
    }

    /// Kling took a create on `account`: its pause after 1303s starts over.
    fn taken(&mut self, account: &str) {
        if let Some(pace) = self.paces.get_mut(account) {
            pace.backoff_ms = 0;
        }
    }

    /// Kling answered 1303 to the create `id`, sent by the gate (`by_gate`) or by the edge
    /// with the slot it got at once: it goes back to the front of its tenant's line, its
    /// account's dispatch pauses, and the gate uses no more of that account's slots than
    /// Kling showed it has (the ones held but this) for a while. Answers whether `id` held a
    /// slot sent that way (a late report of an earlier send, whose create the gate has sent
    /// again since, changes nothing).
    pub fn refused(&mut self, id: &str, by_gate: bool, now: u64) -> bool {
        let sent_so = |holder: &Holder| holder.ticket.id == id && holder.sending_since.is_some() == by_gate;
        let Some(at) = self.holders.iter().position(sent_so) else { return false };
        let holder = self.holders.remove(at);
        self.back_to_front(holder.ticket, holder.pin, holder.queued_at, &holder.account, now);
        true
    }

    /// Kling answered 1303 on `account` to a create the edge sent while the gate could not
    /// be asked (so it holds no slot here): it joins the line at the front, as
    /// [`Self::refused`] puts one. Answers whether it did (an id the gate knows changes
    /// nothing).
    pub fn refused_unseen(&mut self, ticket: Ticket, account: &str, pin: Option<String>, now: u64) -> bool {
        let known = self.holders.iter().any(|holder| holder.ticket.id == ticket.id)
            || self.line.iter().any(|waiting| waiting.ticket.id == ticket.id);
        if known {
            return false;
        }
        self.back_to_front(ticket, pin, now, account, now);
        true
    }

    /// Before every create in line (so before its tenant's), its tenant's turn first;
    /// `account`'s dispatch pauses, and the gate believes the slots held there are all it
    /// has.
    fn back_to_front(
        &mut self,
        ticket: Ticket,
        pin: Option<String>,
        queued_at: u64,
        account: &str,
        now: u64,
    ) {
        let seq = self.line.iter().map(|waiting| waiting.seq).min().unwrap_or(self.next_seq) - 1;
        self.served.insert(ticket.tenant.clone(), 0);
        self.line.push(Waiting { ticket, pin, queued_at, seq });
        let slots = self.holding(account).max(1);
        let pace = self.paces.entry(account.to_owned()).or_default();
        pace.backoff_ms = (pace.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS);
        pace.paused_until = Some(now.saturating_add(pace.backoff_ms));
        pace.learned = Some(Learned { slots, until: now.saturating_add(LEARNED_FOR_MS) });
    }

    /// The task `id` ended (Kling said so, or it never reached Kling): its slot is free.
    /// Answers whether it held one.
    pub fn release(&mut self, id: &str) -> bool {
        let before = self.holders.len();
        self.holders.retain(|holder| holder.ticket.id != id);
        self.holders.len() < before
    }

    /// A client's cancel of its create `id`.
    pub fn cancel(&mut self, id: &str, tenant: &str) -> Cancel {
        let mine = |ticket: &Ticket| ticket.id == id && ticket.tenant == tenant;
        if let Some(at) = self.line.iter().position(|waiting| mine(&waiting.ticket)) {
            self.line.remove(at);
            return Cancel::Cancelled;
        }
        if self.holders.iter().any(|holder| mine(&holder.ticket)) {
            return Cancel::AtKling;
        }
        Cancel::Unknown
    }

    /// Removes the creates that have waited `max_wait_ms` or longer at `now`: they end as
    /// failed, having never reached Kling.
    pub fn expire(&mut self, max_wait_ms: u64, now: u64) -> Vec<Ticket> {
        let (expired, kept): (Vec<Waiting>, Vec<Waiting>) =
            self.line.drain(..).partition(|waiting| now.saturating_sub(waiting.queued_at) >= max_wait_ms);
        self.line = kept;
        expired.into_iter().map(|waiting| waiting.ticket).collect()
    }

    /// Frees the slots of creates that have held one for `max_hold_ms` (a task whose end was
    /// never learned: its coordinator stops following a task after a day), answering them.
    pub fn reclaim(&mut self, max_hold_ms: u64, now: u64) -> Vec<Ticket> {
        let (stale, kept): (Vec<Holder>, Vec<Holder>) =
            self.holders.drain(..).partition(|holder| now.saturating_sub(holder.since) >= max_hold_ms);
        self.holders = kept;
        stale.into_iter().map(|holder| holder.ticket).collect()
    }

    /// When the gate has something to do next on its own, after `now`: dispatch when a pause
    /// ends, a create that will have waited `max_wait_ms`, a slot held `max_hold_ms`.
    pub fn next_due(&self, max_wait_ms: u64, max_hold_ms: u64, now: u64) -> Option<u64> {
        let waited = self.line.iter().map(|waiting| waiting.queued_at.saturating_add(max_wait_ms));
        let held = self.holders.iter().map(|holder| holder.since.saturating_add(max_hold_ms));
        let pauses = self
            .paces
            .values()
            .filter_map(|pace| pace.paused_until)
            .filter(|until| *until > now && !self.line.is_empty());
        waited.chain(held).chain(pauses).min()
    }

    /// When the next create being sent may be sent again (see [`Self::unsent`]).
    pub fn next_resend(&self, deadline_ms: u64) -> Option<u64> {
        self.holders
            .iter()
            .filter_map(|holder| holder.sending_since)
            .map(|since| since.saturating_add(deadline_ms))
            .min()
    }

    /// Whether a create waits that an account with room may take at `now`.
    pub fn can_dispatch_now(&self, accounts: &[AccountSlots], now: u64) -> bool {
        self.line
            .iter()
            .any(|waiting| self.account_for(accounts, waiting.pin.as_deref(), false, now).is_some())
    }

    /// The accounts' slots and the line at `now`, as `GET /v1/queue` shows them.
    pub fn view(&self, accounts: &[AccountSlots], now: u64) -> GateView {
        GateView {
            accounts: accounts
                .iter()
                .map(|account| AccountView {
                    name: account.name.clone(),
                    capacity: account.capacity,
                    slots: self.slots(account, now),
                    holding: self.holding(&account.name),
                    paused_until: self
                        .paces
                        .get(&account.name)
                        .and_then(|pace| pace.paused_until)
                        .filter(|until| *until > now),
                })
                .collect(),
            waiting: self.line.len() as u32,
        }
    }

    /// How many creates hold slots, and how many wait.
    pub fn counts(&self) -> (u32, u32) {
        (self.holders.len() as u32, self.line.len() as u32)
    }

    /// The creates of `tenant` in line, with their places, in the order they will go.
    pub fn waiting_for(&self, tenant: &str) -> Vec<InLine> {
        self.order()
            .into_iter()
            .enumerate()
            .filter(|(_, i)| self.line[*i].ticket.tenant == tenant)
            .map(|(place, i)| InLine {
                id: self.line[i].ticket.id.clone(),
                position: place as u32 + 1,
                queued_at: self.line[i].queued_at,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn ticket(id: &str, tenant: &str) -> Ticket {
        Ticket { id: id.into(), tenant: tenant.into() }
    }

    /// One account, `a`, of `capacity` slots.
    fn one(capacity: u32) -> Vec<AccountSlots> {
        vec![AccountSlots { name: "a".into(), capacity }]
    }

    fn go() -> Admission {
        Admission::Go { account: "a".into() }
    }

    /// The next create sent (by the gate's one account's slots).
    fn next(gate: &mut Gate, capacity: u32, now: u64) -> Option<Ticket> {
        gate.next(&one(capacity), now).map(|(ticket, _)| ticket)
    }

    /// Dispatches everything a slot allows, ending each dispatched create at once (as if
    /// Kling finished it), and answers the order they went in.
    fn drain(gate: &mut Gate, capacity: u32) -> Vec<String> {
        let mut sent = Vec::new();
        while let Some(next) = next(gate, capacity, NOW) {
            gate.release(&next.id);
            sent.push(next.id);
        }
        sent
    }

    #[test]
    fn a_1303_to_a_create_the_gate_never_admitted_puts_it_at_the_front_once() {
        let mut gate = Gate::default();
        assert_eq!(gate.admit(ticket("a0", "a"), None, &one(1), 10, NOW), go());
        assert!(matches!(gate.admit(ticket("a1", "a"), None, &one(1), 10, NOW), Admission::Queued { .. }));
        // Sent while the gate could not be asked, and refused by Kling.
        assert!(gate.refused_unseen(ticket("b0", "b"), "a", None, NOW));
        assert!(!gate.refused_unseen(ticket("b0", "b"), "a", None, NOW), "once");
        assert!(!gate.refused_unseen(ticket("a0", "a"), "a", None, NOW), "a holder is not new");
        assert_eq!(gate.position("b0"), Some(1));
        assert_eq!(gate.position("a1"), Some(2));
    }

    #[test]
    fn a_free_slot_goes_at_once_and_a_full_account_queues() {
        let mut gate = Gate::default();
        assert_eq!(gate.admit(ticket("a1", "a"), None, &one(2), 10, NOW), go());
        assert_eq!(gate.admit(ticket("a2", "a"), None, &one(2), 10, NOW), go());
        assert_eq!(gate.admit(ticket("a3", "a"), None, &one(2), 10, NOW), Admission::Queued { position: 1 });
        assert_eq!(gate.admit(ticket("b1", "b"), None, &one(2), 10, NOW), Admission::Queued { position: 2 });
        assert_eq!(next(&mut gate, 2, NOW), None, "no slot is free");
        assert!(gate.release("a1"));
        assert_eq!(next(&mut gate, 2, NOW), Some(ticket("a3", "a")));
        assert_eq!(gate.counts(), (2, 1));
        // A slot free while others wait is theirs, not a newcomer's.
        assert!(gate.release("a2"));
        assert_eq!(gate.admit(ticket("c1", "c"), None, &one(2), 10, NOW), Admission::Queued { position: 2 });
        assert_eq!(next(&mut gate, 2, NOW), Some(ticket("b1", "b")));
    }

    #[test]
    fn one_tenants_single_create_never_waits_behind_anothers_burst() {
        let mut gate = Gate::default();
        assert_eq!(gate.admit(ticket("busy", "x"), None, &one(1), 100, NOW), go());
        for i in 0..20 {
            gate.admit(ticket(&format!("a{i}"), "a"), None, &one(1), 100, NOW);
        }
        assert_eq!(gate.admit(ticket("b0", "b"), None, &one(1), 100, NOW), Admission::Queued { position: 2 });
        gate.release("busy");
        let sent = drain(&mut gate, 1);
        assert_eq!(&sent[..3], ["a0", "b0", "a1"], "second in line, behind one of the burst");
        assert_eq!(sent.len(), 21);
    }

    #[test]
    fn tenants_take_turns_first_come_first_served_within_each() {
        let mut gate = Gate::default();
        gate.admit(ticket("hold", "x"), None, &one(1), 100, NOW);
        for (id, tenant) in [("a0", "a"), ("a1", "a"), ("a2", "a"), ("b0", "b"), ("b1", "b"), ("c0", "c")] {
            gate.admit(ticket(id, tenant), None, &one(1), 100, NOW);
        }
        assert_eq!(
            gate.waiting_for("a").iter().map(|w| (w.id.as_str(), w.position)).collect::<Vec<_>>(),
            [("a0", 1), ("a1", 4), ("a2", 6)]
        );
        gate.release("hold");
        assert_eq!(drain(&mut gate, 1), ["a0", "b0", "c0", "a1", "b1", "a2"]);
    }

    #[test]
    fn a_tenant_just_served_goes_behind_the_others() {
        let mut gate = Gate::default();
        gate.admit(ticket("hold", "x"), None, &one(1), 100, NOW);
        gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("a1", "a"), None, &one(1), 100, NOW);
        gate.release("hold");
        assert_eq!(next(&mut gate, 1, NOW).unwrap().id, "a0");
        // b comes after a was served: b is next, then a again.
        gate.admit(ticket("b0", "b"), None, &one(1), 100, NOW);
        assert_eq!(gate.position("b0"), Some(1));
        assert_eq!(gate.position("a1"), Some(2));
    }

    #[test]
    fn a_tenant_past_its_bound_is_refused_and_others_are_not() {
        let mut gate = Gate::default();
        gate.admit(ticket("hold", "x"), None, &one(1), 2, NOW);
        assert!(matches!(gate.admit(ticket("a0", "a"), None, &one(1), 2, NOW), Admission::Queued { .. }));
        assert!(matches!(gate.admit(ticket("a1", "a"), None, &one(1), 2, NOW), Admission::Queued { .. }));
        assert_eq!(gate.admit(ticket("a2", "a"), None, &one(1), 2, NOW), Admission::Full { bound: 2 });
        assert!(matches!(gate.admit(ticket("b0", "b"), None, &one(1), 2, NOW), Admission::Queued { .. }));
        assert_eq!(gate.counts(), (1, 3), "the refused create left nothing");
    }

    #[test]
    fn a_1303_puts_the_create_back_first_pauses_and_lowers_the_slots() {
        let mut gate = Gate::default();
        // The setting says 3, but another app holds one of the account's slots.
        for id in ["a0", "a1", "a2"] {
            assert_eq!(gate.admit(ticket(id, "a"), None, &one(3), 100, NOW), go());
        }
        gate.admit(ticket("a3", "a"), None, &one(3), 100, NOW);
        assert!(gate.refused("a2", false, NOW));
        assert_eq!(gate.position("a2"), Some(1), "back at the front, before a3");
        assert_eq!(gate.slots(&one(3)[0], NOW), 2, "what Kling showed it has");
        assert_eq!(next(&mut gate, 3, NOW), None, "paused");
        gate.release("a0");
        assert_eq!(next(&mut gate, 3, NOW + FIRST_BACKOFF_MS - 1), None, "still paused");
        assert_eq!(next(&mut gate, 3, NOW + FIRST_BACKOFF_MS).unwrap().id, "a2");
        assert_eq!(next(&mut gate, 3, NOW + FIRST_BACKOFF_MS), None, "two slots, both held");
        // Another 1303 doubles the pause; a create Kling takes resets it.
        assert!(gate.refused("a2", true, NOW + 2_000));
        assert_eq!(next(&mut gate, 3, NOW + 3_999), None);
        assert_eq!(next(&mut gate, 3, NOW + 4_000), None, "one slot held, and one is all Kling showed");
        gate.release("a1");
        assert_eq!(next(&mut gate, 3, NOW + 4_000).unwrap().id, "a2");
        assert!(gate.sent("a2"), "Kling took it");
        assert_eq!(gate.paces["a"].backoff_ms, 0);
        assert!(gate.refused("a2", false, NOW + 5_000));
        assert_eq!(gate.paces["a"].paused_until, Some(NOW + 5_000 + FIRST_BACKOFF_MS));
        // The learned slots are forgotten after a while.
        assert_eq!(gate.slots(&one(3)[0], NOW + 5_000 + LEARNED_FOR_MS), 3);
    }

    #[test]
    fn the_pause_grows_to_a_minute_at_most() {
        let mut gate = Gate::default();
        let mut now = NOW;
        for _ in 0..20 {
            assert_eq!(gate.admit(ticket("a", "a"), None, &one(1), 100, now), go());
            gate.refused("a", false, now);
            assert_eq!(gate.cancel("a", "a"), Cancel::Cancelled);
            now = gate.paces["a"].paused_until.unwrap();
        }
        assert_eq!(gate.paces["a"].backoff_ms, MAX_BACKOFF_MS);
    }

    #[test]
    fn a_cancel_removes_a_waiting_create_and_refuses_one_kling_has() {
        let mut gate = Gate::default();
        gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("a1", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("b0", "b"), None, &one(1), 100, NOW);
        assert_eq!(gate.cancel("a1", "b"), Cancel::Unknown, "another tenant's");
        assert_eq!(gate.cancel("a0", "a"), Cancel::AtKling);
        assert_eq!(gate.cancel("a1", "a"), Cancel::Cancelled);
        assert_eq!(gate.cancel("a1", "a"), Cancel::Unknown, "once");
        gate.release("a0");
        assert_eq!(drain(&mut gate, 1), ["b0"], "the cancelled create never goes");
    }

    #[test]
    fn a_create_that_waited_too_long_leaves_the_line() {
        let mut gate = Gate::default();
        gate.admit(ticket("hold", "x"), None, &one(1), 100, NOW);
        gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("b0", "b"), None, &one(1), 100, NOW + 5_000);
        assert_eq!(gate.next_due(60_000, u64::MAX, NOW), Some(NOW + 60_000));
        assert!(gate.expire(60_000, NOW + 59_999).is_empty());
        assert_eq!(gate.expire(60_000, NOW + 60_000), [ticket("a0", "a")]);
        assert_eq!(gate.position("b0"), Some(1));
        assert_eq!(gate.next_due(60_000, u64::MAX, NOW), Some(NOW + 65_000));
    }

    #[test]
    fn a_callback_and_a_cancel_crossing_free_one_slot_once() {
        let mut gate = Gate::default();
        gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("b0", "b"), None, &one(1), 100, NOW);
        // The cancel of a0 comes as its end is learned: it is Kling's, and its slot frees once.
        assert_eq!(gate.cancel("a0", "a"), Cancel::AtKling);
        assert!(gate.release("a0"));
        assert!(!gate.release("a0"), "a second report of its end frees nothing");
        assert_eq!(next(&mut gate, 1, NOW).unwrap().id, "b0");
        assert_eq!(next(&mut gate, 1, NOW), None);
    }

    #[test]
    fn no_create_is_lost_or_doubled_and_the_slots_hold_whatever_the_order_of_events() {
        // A deterministic walk over admits, ends, 1303s, cancels, expiries and dispatches.
        let mut gate = Gate::default();
        let capacity = 2;
        let mut seed: u64 = 42;
        let mut step = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut now = NOW;
        let mut ids = 0;
        let mut alive: std::collections::BTreeSet<String> = Default::default();
        for _ in 0..5_000 {
            now += step() % 700;
            match step() % 6 {
                0 => {
                    ids += 1;
                    let id = format!("c{ids}");
                    let tenant = format!("t{}", step() % 4);
                    let waiting = gate.waiting_of(&tenant);
                    match gate.admit(ticket(&id, &tenant), None, &one(capacity), 5, now) {
                        Admission::Full { .. } => assert!(waiting >= 5),
                        Admission::Holding => panic!("a new id"),
                        _ => assert!(alive.insert(id.clone())),
                    }
                    // Admitted again (a retried create), it changes nothing.
                    let again = gate.admit(ticket(&id, &tenant), None, &one(capacity), 5, now);
                    assert!(!matches!(again, Admission::Go { .. }), "never sent twice");
                }
                1 => {
                    if let Some(holder) = gate.holders.first().map(|h| h.ticket.id.clone()) {
                        assert!(gate.release(&holder));
                        alive.remove(&holder);
                    }
                }
                2 => {
                    if let Some(holder) =
                        gate.holders.last().map(|h| (h.ticket.id.clone(), h.sending_since.is_some()))
                    {
                        assert!(!gate.refused(&holder.0, !holder.1, now), "not sent that way");
                        assert!(gate.refused(&holder.0, holder.1, now));
                    }
                }
                3 => {
                    let id = format!("c{}", step() % (ids + 1));
                    let tenant = format!("t{}", step() % 4);
                    if gate.cancel(&id, &tenant) == Cancel::Cancelled {
                        assert!(alive.remove(&id));
                    }
                }
                4 => {
                    for expired in gate.expire(30_000, now) {
                        assert!(alive.remove(&expired.id));
                    }
                    for stale in gate.reclaim(120_000, now) {
                        assert!(alive.remove(&stale.id));
                    }
                }
                _ => while next(&mut gate, capacity, now).is_some() {},
            }
            assert!(gate.holders.len() as u32 <= capacity, "never more than the setting's slots");
            let mut seen: Vec<String> = gate.holders.iter().map(|h| h.ticket.id.clone()).collect();
            seen.extend(gate.line.iter().map(|w| w.ticket.id.clone()));
            let count = seen.len();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), count, "a create is in one place only");
            assert_eq!(seen.into_iter().collect::<std::collections::BTreeSet<_>>(), alive, "none lost");
            for (place, i) in gate.order().into_iter().enumerate() {
                assert_eq!(gate.position(&gate.line[i].ticket.id), Some(place as u32 + 1));
            }
        }
        assert!(ids > 500);
    }

    #[test]
    fn a_tenant_that_keeps_one_create_waiting_takes_its_turn_after_the_others() {
        let mut gate = Gate::default();
        gate.admit(ticket("hold", "x"), None, &one(1), 100, NOW);
        for i in 0..6 {
            gate.admit(ticket(&format!("b{i}"), "b"), None, &one(1), 100, NOW);
            gate.admit(ticket(&format!("c{i}"), "c"), None, &one(1), 100, NOW);
        }
        gate.release("hold");
        let mut sent = Vec::new();
        for i in 0..6 {
            // a has one create in line at a time: a new one each time its last was sent.
            if gate.waiting_of("a") == 0 {
                gate.admit(ticket(&format!("a{i}"), "a"), None, &one(1), 100, NOW);
            }
            let next = next(&mut gate, 1, NOW).unwrap();
            gate.release(&next.id);
            sent.push(next.tenant);
        }
        let a = sent.iter().filter(|tenant| *tenant == "a").count();
        assert_eq!(a, 2, "a third of the turns, not half: {sent:?}");
    }

    #[test]
    fn a_1303_keeps_the_time_the_create_came_and_goes_before_a_newcomer() {
        let mut gate = Gate::default();
        assert_eq!(gate.admit(ticket("hold", "x"), None, &one(2), 100, NOW), go());
        assert_eq!(gate.admit(ticket("a0", "a"), None, &one(2), 100, NOW), go());
        gate.admit(ticket("b0", "b"), None, &one(2), 100, NOW + 10);
        assert!(gate.refused("a0", false, NOW + 20_000));
        assert_eq!(gate.position("a0"), Some(1), "before b0, though b was never served");
        assert_eq!(
            gate.waiting_for("a"),
            [InLine { id: "a0".to_owned(), position: 1, queued_at: NOW }],
            "it waits since it came"
        );
        assert_eq!(gate.expire(30_000, NOW + 30_000), [ticket("a0", "a")], "its wait counts from then");
    }

    #[test]
    fn a_pause_that_passed_is_not_due_again() {
        let mut gate = Gate::default();
        gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("a1", "a"), None, &one(1), 100, NOW);
        gate.refused("a0", false, NOW);
        let max_wait = 3_600_000;
        assert_eq!(gate.next_due(max_wait, u64::MAX, NOW), Some(NOW + FIRST_BACKOFF_MS));
        let later = NOW + FIRST_BACKOFF_MS + 5;
        assert_eq!(
            gate.next_due(max_wait, u64::MAX, later),
            Some(NOW + max_wait),
            "then only the wait bound"
        );
        assert_eq!(next(&mut gate, 1, later).unwrap().id, "a0");
        assert_eq!(gate.paces["a"].paused_until, None);
    }

    #[test]
    fn a_slot_held_past_its_bound_is_reclaimed_and_goes_to_the_next() {
        let mut gate = Gate::default();
        gate.admit(ticket("lost", "a"), None, &one(1), 100, NOW);
        gate.admit(ticket("b0", "b"), None, &one(1), 100, NOW + 1);
        let day = 24 * 3600 * 1000;
        assert_eq!(gate.next_due(2 * day, day, NOW), Some(NOW + day));
        assert!(gate.reclaim(day, NOW + day - 1).is_empty());
        assert_eq!(gate.reclaim(day, NOW + day), [ticket("lost", "a")]);
        assert_eq!(next(&mut gate, 1, NOW + day).unwrap().id, "b0");
    }

    #[test]
    fn a_create_admitted_twice_is_held_or_queued_once() {
        let mut gate = Gate::default();
        assert_eq!(gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW), go());
        assert_eq!(gate.admit(ticket("a0", "a"), None, &one(1), 100, NOW), Admission::Holding);
        assert_eq!(gate.admit(ticket("a1", "a"), None, &one(1), 100, NOW), Admission::Queued { position: 1 });
        assert_eq!(gate.admit(ticket("a1", "a"), None, &one(1), 100, NOW), Admission::Queued { position: 1 });
        assert_eq!(gate.counts(), (1, 1));
    }
    fn two() -> Vec<AccountSlots> {
        vec![
            AccountSlots { name: "main".into(), capacity: 2 },
            AccountSlots { name: "spare".into(), capacity: 2 },
        ]
    }

    #[test]
    fn an_unpinned_create_leaves_the_account_a_pinned_one_waits_for() {
        let accounts = two();
        let mut gate = Gate::default();
        // Taking turns: m0 and m1 on main, s0 and s1 on spare.
        for id in ["m0", "s0", "m1", "s1"] {
            gate.admit(ticket(id, "x"), None, &accounts, 10, NOW);
        }
        assert!(matches!(gate.admit(ticket("u", "a"), None, &accounts, 10, NOW), Admission::Queued { .. }));
        assert!(matches!(
            gate.admit(ticket("p", "b"), Some("main"), &accounts, 10, NOW),
            Admission::Queued { .. }
        ));
        // A slot frees on each: the unpinned create, first in line, takes spare's, so the
        // create pinned to main gets main's.
        gate.release("m0");
        gate.release("s0");
        let sent: Vec<(String, String)> = std::iter::from_fn(|| gate.next(&accounts, NOW))
            .map(|(ticket, account)| (ticket.id, account))
            .collect();
        assert_eq!(sent, [("u".to_owned(), "spare".to_owned()), ("p".to_owned(), "main".to_owned())]);
    }

    #[test]
    fn a_gate_saved_before_accounts_had_names_counts_its_slots_on_the_first() {
        let saved = r#"{"holders":[{"ticket":{"id":"a0","tenant":"a"},"since":1,"queued_at":1},
            {"ticket":{"id":"a1","tenant":"a"},"account":"default","since":1}],
            "line":[{"ticket":{"id":"b0","tenant":"b"},"queued_at":2,"seq":0}],
            "served":{},"next_seq":1,"serves":0,"learned":null,"paused_until":null,"backoff_ms":0}"#;
        let mut gate: Gate = serde_json::from_str(saved).unwrap();
        // The first account renamed from `default` to `main`, as KLING_ACCOUNTS may name it.
        gate.name_unnamed(&two());
        let view = gate.view(&two(), NOW);
        assert_eq!((view.accounts[0].holding, view.accounts[1].holding, view.waiting), (2, 0, 1));
        assert_eq!(gate.next(&two(), NOW).map(|(t, a)| (t.id, a)), Some(("b0".into(), "spare".into())));
    }

    #[test]
    fn with_two_accounts_and_pins_no_account_runs_past_its_slots_and_no_pin_is_broken() {
        let accounts = vec![
            AccountSlots { name: "main".into(), capacity: 2 },
            AccountSlots { name: "spare".into(), capacity: 1 },
        ];
        let mut gate = Gate::default();
        let mut seed: u64 = 7;
        let mut step = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut now = NOW;
        let mut pins: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut alive: std::collections::BTreeSet<String> = Default::default();
        for n in 0..4_000 {
            now += step() % 500;
            match step() % 5 {
                0 | 1 => {
                    let id = format!("c{n}");
                    let pin = match step() % 3 {
                        0 => Some("main".to_owned()),
                        1 => Some("spare".to_owned()),
                        _ => None,
                    };
                    let tenant = format!("t{}", step() % 3);
                    match gate.admit(ticket(&id, &tenant), pin.as_deref(), &accounts, 4, now) {
                        Admission::Full { .. } => {}
                        Admission::Go { account } => {
                            assert!(
                                pin.as_deref().is_none_or(|pin| pin == account),
                                "{id} pinned to {pin:?}"
                            );
                            alive.insert(id.clone());
                        }
                        _ => {
                            alive.insert(id.clone());
                        }
                    }
                    pins.insert(id, pin);
                }
                2 => {
                    if let Some(id) = gate.holders.first().map(|h| h.ticket.id.clone()) {
                        gate.release(&id);
                        alive.remove(&id);
                    }
                }
                3 => {
                    if let Some((id, by_gate)) =
                        gate.holders.last().map(|h| (h.ticket.id.clone(), h.sending_since.is_some()))
                    {
                        assert!(gate.refused(&id, by_gate, now));
                    }
                }
                _ => {
                    while let Some((sent, account)) = gate.next(&accounts, now) {
                        let pin = pins[&sent.id].as_deref();
                        assert!(
                            pin.is_none_or(|pin| pin == account),
                            "{} pinned to {pin:?}, sent to {account}",
                            sent.id
                        );
                        gate.sent(&sent.id);
                    }
                }
            }
            let view = gate.view(&accounts, now);
            for account in &view.accounts {
                assert!(account.holding <= account.capacity, "{view:?}");
            }
            for holder in &gate.holders {
                assert!(holder.pin.as_deref().is_none_or(|pin| pin == holder.account));
            }
            let mut seen: Vec<String> = gate.holders.iter().map(|h| h.ticket.id.clone()).collect();
            seen.extend(gate.line.iter().map(|w| w.ticket.id.clone()));
            let count = seen.len();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), count, "a create is in one place only");
            assert_eq!(seen.into_iter().collect::<std::collections::BTreeSet<_>>(), alive, "none lost");
        }
        assert!(pins.len() > 1_000);
    }
}
