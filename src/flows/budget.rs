//! Credit budgets and usage, both sides: the tenant's coordinator keeps the day's ledger
//! (`crate::record::budget`) and reserves, settles and gives back credits in it; the edge
//! asks for a reservation before Kling is called (only for a tenant with a budget), gives
//! it back when the create spent nothing, and answers `GET /v1/usage`.
//!
//! Every task's cost is counted when it ends, budget or not, so usage is known for every
//! tenant; only a tenant with a budget pays the reservation's call before its creates.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{self, surfaces::Surface};
use crate::auth::{Client, ClientKind};
use crate::error::{code, ApiError};
use crate::kling::task;
use crate::ports::{
    AssetStore, Coordinators, EdgeCopies, Gates, ResultBucket, Runtime, TaskStore, Upstream, Webhooks,
};
use crate::record::budget::{self, Credits, LastCosts, Ledger, Millicredits};
use crate::record::TaskRecord;

use super::coordinator::Coordinator;
use super::edge::{Answer, Edge, EdgePorts};
use super::protocol;

/// How long a create's reservation is held before its task is recorded: past the checks of
/// its intent at Kling (about an hour), so a create cut off after Kling took it still holds
/// its credits when its task is found (and gives them back at once if none is).
pub const RESERVATION_HOLD_MS: u64 = 2 * 60 * 60 * 1000;

/// How long a recorded task's reservation holds if its end is never learned: past the day
/// its coordinator follows it (`crate::schedule::POLL_HORIZON_MS`).
pub const TASK_HOLD_MS: u64 = crate::schedule::POLL_HORIZON_MS + 60 * 60 * 1000;

/// A tenant's usage today, as its coordinator knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub credits: Credits,
    /// Today's tasks by endpoint name, then by status, with their counts.
    pub tasks: Vec<(String, String, u32)>,
}

/// The kind of create a cost is learned and estimated for: its endpoint and the options that
/// change Kling's price.
pub fn cost_kind(endpoint: &api::Endpoint, upstream: &serde_json::Map<String, Value>) -> String {
    let option = |name: &str| match upstream.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    };
    format!(
        "{}|{}|{}|{}|{}",
        endpoint.name,
        option("model_name"),
        option("mode"),
        option("duration"),
        option("sound")
    )
}

/// Kling's `final_unit_deduction` of a task's data (a decimal string or a number), in
/// thousandths; none is nothing.
pub fn deduction(data: &Value) -> Millicredits {
    match data.get("final_unit_deduction") {
        Some(Value::String(text)) => budget::parse_credits(text).unwrap_or(0),
        Some(Value::Number(number)) => budget::parse_credits(&number.to_string()).unwrap_or(0),
        _ => 0,
    }
}

impl<
        S: TaskStore + AssetStore,
        K: Upstream,
        W: Webhooks,
        R: EdgeCopies,
        B: ResultBucket,
        T: Runtime,
        G: Gates,
    > Coordinator<'_, S, K, W, R, B, T, G>
{
    fn ledger(&self) -> Result<Ledger, ApiError> {
        Ok(Ledger::read(self.store.meta(budget::LEDGER)?.as_deref()))
    }

    /// Reserves a create's estimate under `budget` (the last cost Kling charged for this
    /// `kind`, else `estimate`), or refuses it with 429 saying when the budget renews.
    pub fn reserve_credits(
        &self,
        nonce: &str,
        kind: &str,
        estimate: Millicredits,
        budget: Millicredits,
        hold_ms: u64,
    ) -> Result<Millicredits, ApiError> {
        let now = self.runtime.now_ms();
        let estimate =
            LastCosts::read(self.store.meta(budget::LAST_COSTS)?.as_deref()).of(kind).unwrap_or(estimate);
        let mut ledger = self.ledger()?;
        match ledger.reserve(nonce, estimate, budget, now, hold_ms) {
            Ok(()) => {
                self.store.set_meta(budget::LEDGER, &ledger.write())?;
                Ok(estimate)
            }
            Err(over) => {
                let retry_after = over.renews_at.saturating_sub(now).div_ceil(1000).max(1);
                Err(ApiError::new(
                    429,
                    code::RATE_LIMITED,
                    format!(
                        "budget: today's credits are spent ({} spent and {} reserved of {} a day, and this create is estimated at {}); the budget renews at 00:00 UTC, in {} s",
                        budget::show(over.spent),
                        budget::show(over.reserved),
                        budget::show(over.budget),
                        budget::show(estimate),
                        retry_after
                    ),
                )
                .with_retry_after(retry_after))
            }
        }
    }

    /// A create that spent nothing gives its reservation back.
    pub fn release_credits(&self, nonce: &str) -> Result<(), ApiError> {
        let Some(stored) = self.store.meta(budget::LEDGER)? else { return Ok(()) };
        let mut ledger = Ledger::read(Some(&stored));
        if ledger.release(nonce) {
            self.store.set_meta(budget::LEDGER, &ledger.write())?;
        }
        Ok(())
    }

    /// The reservation of the create of `nonce` (if it has one) holds until at least `until`:
    /// its task was recorded, or it is still looked for at Kling.
    pub(crate) fn keep_credits(&self, nonce: &str, until: u64) -> Result<(), ApiError> {
        let Some(stored) = self.store.meta(budget::LEDGER)? else { return Ok(()) };
        let mut ledger = Ledger::read(Some(&stored));
        if ledger.keep(nonce, until) {
            self.store.set_meta(budget::LEDGER, &ledger.write())?;
        }
        Ok(())
    }

    /// The create of `nonce` became a task: its reservation holds until the task ends, or
    /// until its coordinator stops following it.
    pub(crate) fn take_credits(&self, nonce: &str) -> Result<(), ApiError> {
        self.keep_credits(nonce, self.runtime.now_ms().saturating_add(TASK_HOLD_MS))
    }

    /// A task that ended has its cost counted: its reservation is given back, Kling's
    /// deduction counted today (a later report with another deduction counts the
    /// difference), and, for a task that succeeded, remembered as the estimate of the next
    /// create like it. The caller saves the record.
    pub(crate) fn count_cost(&self, record: &mut TaskRecord) -> Result<(), ApiError> {
        if !task::is_final(&record.data) {
            return Ok(());
        }
        let cost = deduction(&record.data);
        if record.counted_cost.is_some_and(|counted| counted >= cost) {
            return Ok(());
        }
        let added = cost - record.counted_cost.unwrap_or(0);
        let mut ledger = self.ledger()?;
        ledger.settle(&record.nonce, added, self.runtime.now_ms());
        self.store.set_meta(budget::LEDGER, &ledger.write())?;
        record.counted_cost = Some(cost);
        if let (Some(kind), true) =
            (&record.cost_kind, cost > 0 && task::status_of(&record.data) == Some("succeed"))
        {
            let mut costs = LastCosts::read(self.store.meta(budget::LAST_COSTS)?.as_deref());
            if costs.of(kind) != Some(cost) {
                costs.learn(kind, cost);
                self.store.set_meta(budget::LAST_COSTS, &costs.write())?;
            }
        }
        Ok(())
    }

    /// Counts the cost of the task `task_id` if it has ended with a cost not yet counted
    /// (after a change saved elsewhere, with no `await` between: one atomic step with it).
    pub(crate) fn settle_cost(&self, task_id: &str) -> Result<(), ApiError> {
        let due = self.store.load(task_id)?.is_some_and(|record| {
            task::is_final(&record.data)
                && record.counted_cost.is_none_or(|counted| counted < deduction(&record.data))
        });
        if due {
            self.store.update(task_id, |record| self.count_cost(record))?.transpose()?;
        }
        Ok(())
    }

    /// The tenant's credits and tasks today.
    pub fn usage(&self) -> Result<Usage, ApiError> {
        let now = self.runtime.now_ms();
        let since = budget::day_of(now) * budget::DAY_MS;
        let mut tasks = Vec::new();
        for endpoint in api::ENDPOINTS {
            for (status, count) in self.store.statuses_since(endpoint.code, since)? {
                tasks.push((endpoint.name.to_owned(), status, count));
            }
        }
        Ok(Usage { credits: self.ledger()?.at(now), tasks })
    }
}

impl<P: EdgePorts> Edge<'_, P> {
    /// Reserves a create's estimate in its tenant's coordinator, if the tenant has a budget
    /// (none: no call). Answers whether it did.
    pub(crate) async fn reserve_credits(
        &self,
        client: &Client,
        shard: &str,
        nonce: &str,
        surface: &Surface,
        upstream: &serde_json::Map<String, Value>,
    ) -> Result<bool, ApiError> {
        let Some(budget) = client.budget(&self.config.credit_budgets) else { return Ok(false) };
        let call = protocol::ReserveCredits {
            tenant: client.tenant.clone(),
            nonce: nonce.to_owned(),
            kind: cost_kind(surface.endpoint, upstream),
            estimate: self.config.credit_estimates.of(surface.endpoint.name),
            budget,
            hold_ms: RESERVATION_HOLD_MS,
        };
        self.coordinators.call(shard, call).await?;
        Ok(true)
    }

    /// Gives back the reservation of a create that spent nothing.
    pub(crate) async fn release_credits(&self, shard: &str, nonce: &str) {
        let call = protocol::ReleaseCredits { nonce: nonce.to_owned() };
        if let Err(error) = self.coordinators.call(shard, call).await {
            self.runtime.log(json!({"event": "release_credits", "problem": error.message}));
        }
    }

    /// `GET /v1/usage[?user=sub]`: the caller's credits spent and reserved today, its budget,
    /// and its tasks today by endpoint and status; a server key may name one of its browser
    /// users.
    pub async fn usage(&self, client: &Client, query: Option<&str>) -> Result<Answer, ApiError> {
        let user = query
            .into_iter()
            .flat_map(|query| url::form_urlencoded::parse(query.as_bytes()))
            .find(|(name, _)| name == "user")
            .map(|(_, value)| value.into_owned());
        let (tenant, budget) = match &user {
            None => (client.tenant.clone(), client.budget(&self.config.credit_budgets)),
            Some(sub) => {
                client.require_server_key("see a browser user's usage")?;
                if sub.is_empty() || sub.len() > 128 || sub.contains(['/', ':']) {
                    return Err(ApiError::bad_param("user", "must be a browser token's sub"));
                }
                // The user's own budget is in its token; its app's caps it.
                (format!("{}/{sub}", client.app), self.config.credit_budgets.of(&client.app))
            }
        };
        let shard = task::tenant_shard(&tenant);
        let usage = self.coordinators.call(&shard, protocol::GetUsage { tenant: tenant.clone() }).await?;
        let mut tasks = serde_json::Map::new();
        for (endpoint, status, count) in usage.tasks {
            let by_status = tasks.entry(endpoint).or_insert_with(|| json!({}));
            by_status[status] = json!(count);
        }
        let now = self.runtime.now_ms();
        let mut answer = json!({
            "tenant": tenant,
            "day": utc_date(now),
            "renews_at": (budget::day_of(now) + 1) * budget::DAY_MS,
            "credits": {"spent": budget::show(usage.credits.spent), "reserved": budget::show(usage.credits.reserved)},
            "tasks": tasks,
        });
        if let Some(budget) = budget {
            let left = budget.saturating_sub(usage.credits.spent.saturating_add(usage.credits.reserved));
            answer["credits"]["budget"] = json!(budget::show(budget));
            answer["credits"]["left"] = json!(budget::show(left));
        }
        if client.kind == ClientKind::BrowserToken && user.is_none() && budget.is_some() {
            answer["credits"]["budget_from"] =
                json!(if client.token_budget.is_some() { "token" } else { "client" });
        }
        Ok(Answer::Success(answer))
    }
}

/// The UTC date of `now` (`2026-12-04`), by the days-from-civil inverse (proleptic
/// Gregorian).
fn utc_date(now: u64) -> String {
    let days = (now / budget::DAY_MS) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_is_the_utc_date() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_796_342_400_000), "2026-12-04");
        assert_eq!(utc_date(1_796_428_799_999), "2026-12-04");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn kinds_of_create_are_their_endpoint_and_priced_options() {
        let body = serde_json::json!({"model_name": "kling-v2-6", "mode": "pro", "duration": "10", "sound": "on", "prompt": "x"});
        assert_eq!(cost_kind(&api::TEXT2VIDEO, body.as_object().unwrap()), "text2video|kling-v2-6|pro|10|on");
        assert_eq!(deduction(&serde_json::json!({"final_unit_deduction": "1.5"})), 1_500);
        assert_eq!(deduction(&serde_json::json!({"final_unit_deduction": 2})), 2_000);
        assert_eq!(deduction(&serde_json::json!({})), 0);
    }
}
