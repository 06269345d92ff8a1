//! Credit budgets against in-memory ports, with the real coordinators behind the request
//! path: a budget of three one-credit tasks takes three and refuses the fourth before Kling,
//! concurrent creates with one credit left reach Kling once, Kling's real cost replaces the
//! estimate (and becomes the next one), a failed or refused create gives its credits back,
//! other tenants are unaffected, and a create cut off at any `await` never lets the tenant
//! spend past its budget.

use futures_util::future::{FutureExt, LocalBoxFuture};

use super::*;
use crate::flows::budget::Usage;
use crate::ports::Coordinators;

fn body(n: usize) -> Value {
    json!({"video_url": VIDEO, "sound_effect_prompt": format!("rain {n}")})
}

impl World {
    fn usage_of(&self, tenant: &str) -> Usage {
        let coordinators = self.coordinators();
        let shard = task::tenant_shard(tenant);
        block_on(coordinators.call(&shard, crate::flows::protocol::GetUsage { tenant: tenant.into() }))
            .unwrap()
    }

    /// Kling ends the task `task_id` as `status`, charging `cost`, and calls back about it.
    fn end_with_cost(&self, n: usize, status: &str, cost: &str) {
        let task_id = format!("task-{}", n + 1);
        // Each report later than the last (Kling's `updated_at` moves on).
        let last =
            self.kling.tasks.borrow()[&task_id]["updated_at"].as_u64().unwrap_or(START).max(START + 100);
        let mut done = report(&task_id, status, last + 1, status == "succeed");
        done["task_info"] = self.kling.tasks.borrow()[&task_id]["task_info"].clone();
        done["final_unit_deduction"] = json!(cost);
        self.kling.set(done.clone());
        self.callback(&self.capability(n), &done).unwrap();
    }
}

fn budgeted(budgets: &str) -> World {
    let world = World::with(&[("CREDIT_BUDGETS", budgets)]);
    world.kling.now_ms.set(START);
    world
}

#[test]
fn a_budget_of_three_credits_takes_three_one_credit_tasks_and_refuses_the_fourth_before_kling() {
    let world = budgeted("web:3");
    let client = server("web");
    for n in 0..3 {
        world.create_and_record(&client, &V2A, body(n));
    }
    assert_eq!(world.usage_of("web").credits.reserved, 3_000);
    let refused = world.create(&client, &V2A, body(3)).unwrap_err();
    assert_eq!(refused.status, 429);
    assert!(refused.message.starts_with("budget: today's credits are spent"), "{}", refused.message);
    assert!(refused.message.contains("renews at 00:00 UTC"), "{}", refused.message);
    assert!(refused.header.as_ref().is_some_and(|(name, _)| *name == "Retry-After"));
    assert_eq!(world.kling.created.borrow().len(), 3, "the fourth never reached Kling");
    // Other tenants are unaffected: ops has no budget.
    world.create_and_record(&server("ops"), &V2A, body(4));
    assert_eq!(world.kling.created.borrow().len(), 4);
}

#[test]
fn six_concurrent_creates_with_one_credit_left_reach_kling_at_most_once() {
    let world = budgeted("web:3");
    let client = server("web");
    world.create_and_record(&client, &V2A, body(0));
    world.create_and_record(&client, &V2A, body(1));
    let bodies: Vec<Vec<u8>> = (2..8).map(|n| body(n).to_string().into_bytes()).collect();
    let outcomes = world.edge(|edge| {
        let creates: Vec<LocalBoxFuture<'_, Result<Created, ApiError>>> =
            bodies.iter().map(|bytes| edge.create(&client, &V2A, bytes.clone()).boxed_local()).collect();
        run_together(creates)
    });
    assert_eq!(world.kling.created.borrow().len(), 3, "one of the six reached Kling");
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1);
    assert!(outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).all(|error| error.status == 429));
}

#[test]
fn klings_cost_replaces_the_estimate_and_estimates_the_next_create_like_it() {
    let world = budgeted("web:5");
    let client = server("web");
    world.create_and_record(&client, &V2A, body(0));
    world.end_with_cost(0, "succeed", "2");
    let usage = world.usage_of("web");
    assert_eq!((usage.credits.spent, usage.credits.reserved), (2_000, 0));
    // The next create of the same kind reserves what the last cost: 2 + 2 fits in 5, a third
    // (2 + 2 + 2) does not.
    world.create_and_record(&client, &V2A, body(1));
    assert_eq!(world.usage_of("web").credits.reserved, 2_000);
    assert_eq!(world.create(&client, &V2A, body(2)).unwrap_err().status, 429);
    // A failed task gives its reservation back and costs what Kling says (nothing).
    world.end_with_cost(1, "failed", "0");
    let usage = world.usage_of("web");
    assert_eq!((usage.credits.spent, usage.credits.reserved), (2_000, 0));
    assert!(usage.tasks.contains(&("video-to-audio".into(), "failed".into(), 1)), "{:?}", usage.tasks);
    world.create_and_record(&client, &V2A, body(3));
}

#[test]
fn a_create_that_spends_nothing_gives_its_credits_back() {
    let world = budgeted("web:1");
    let client = server("web");
    let refusal =
        KlingReply { status: 400, body: br#"{"code":1201,"message":"bad video","request_id":"r"}"#.to_vec() };
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(refusal));
    world.create(&client, &V2A, body(0)).unwrap();
    assert_eq!(world.usage_of("web").credits.reserved, 0, "Kling refused it: nothing reserved");
    world.create_and_record(&client, &V2A, body(1));
    assert_eq!(world.usage_of("web").credits.reserved, 1_000);
}

#[test]
fn a_browser_users_budget_is_its_tokens_capped_by_its_apps() {
    let world = budgeted("web:2");
    let mut alice = browser("web", "alice", None);
    alice.token_budget = Some(5_000);
    // Capped at the app's 2 credits a day, and her own, apart from the app's tenant.
    world.create_and_record(&alice, &V2A, body(0));
    world.create_and_record(&alice, &V2A, body(1));
    assert_eq!(world.create(&alice, &V2A, body(2)).unwrap_err().status, 429);
    let mut bob = browser("web", "bob", None);
    bob.token_budget = Some(1_000);
    world.create_and_record(&bob, &V2A, body(3));
    assert_eq!(world.create(&bob, &V2A, body(4)).unwrap_err().status, 429);
    world.create_and_record(&server("web"), &V2A, body(5));
}

#[test]
fn a_tenant_without_a_budget_makes_no_call_for_one_and_still_sees_its_spend() {
    let world = World::new();
    let client = server("web");
    world.create_and_record(&client, &V2A, body(0));
    assert!(world.calls().iter().all(|op| !op.contains("credits")), "{:?}", world.calls());
    world.end_with_cost(0, "succeed", "1.5");
    assert_eq!(world.usage_of("web").credits.spent, 1_500);
}

#[test]
fn a_create_cut_off_at_any_await_never_takes_the_tenant_past_its_budget() {
    for cut in 0.. {
        let world = budgeted("web:1");
        let client = server("web");
        let bytes = body(0).to_string().into_bytes();
        let finished = world.edge(|edge| run_until_crash(edge.create(&client, &V2A, bytes), cut));
        if let Some(Ok(created)) = &finished {
            if let Some(recording) = created.record.clone() {
                world.edge(|edge| block_on(edge.record_created(recording))).unwrap();
            }
        }
        // Kling's callbacks of a task it took may be lost: the intent finds it.
        world.run_alarms_for(3 * 60 * 60 * 1000);
        // The client tries again, as often as it is let.
        for n in 1..4 {
            if let Ok(created) = world.create(&client, &V2A, body(n)) {
                if let Some(recording) = created.record {
                    world.edge(|edge| block_on(edge.record_created(recording))).unwrap();
                }
            }
        }
        let made = world.kling.tasks.borrow().len();
        assert!(made <= 1, "cut after {cut}: {made} one-credit tasks made under a budget of one");
        let usage = world.usage_of("web");
        assert!(usage.credits.spent + usage.credits.reserved <= 1_000, "cut after {cut}: {usage:?}");
        if finished.is_some() {
            break;
        }
    }
}

#[test]
fn an_end_learned_before_the_tasks_record_settles_its_reservation() {
    let world = budgeted("web:1");
    let client = server("web");
    let created = world.create(&client, &V2A, body(0)).unwrap();
    // Kling calls back that the task failed before the create's record lands.
    world.end_with_cost(0, "failed", "0");
    world.edge(|edge| block_on(edge.record_created(created.record.unwrap()))).unwrap();
    assert_eq!(world.usage_of("web").credits.reserved, 0, "nothing left reserved");
    world.create_and_record(&client, &V2A, body(1));
}

#[test]
fn a_task_whose_end_is_never_learned_gives_its_credits_back_once_it_is_no_longer_followed() {
    let world = budgeted("web:1");
    let client = server("web");
    world.create_and_record(&client, &V2A, body(0));
    assert_eq!(world.create(&client, &V2A, body(1)).unwrap_err().status, 429);
    world.runtime.now.set(START + crate::flows::budget::TASK_HOLD_MS + 1);
    assert_eq!(world.usage_of("web").credits.reserved, 0);
    world.create_and_record(&client, &V2A, body(2));
}

#[test]
fn a_later_report_with_another_deduction_counts_the_difference() {
    let world = budgeted("web:10");
    let client = server("web");
    world.create_and_record(&client, &V2A, body(0));
    let info = world.kling.tasks.borrow()["task-1"]["task_info"].clone();
    // A `succeed` without its files, and no deduction yet; then the whole task with it.
    let mut partial = report("task-1", "succeed", START + 200, false);
    partial["task_info"] = info.clone();
    world.callback(&world.capability(0), &partial).unwrap();
    assert_eq!(world.usage_of("web").credits.spent, 0);
    let mut whole = report("task-1", "succeed", START + 300, true);
    whole["task_info"] = info;
    whole["final_unit_deduction"] = json!("2");
    world.callback(&world.capability(0), &whole).unwrap();
    assert_eq!(world.usage_of("web").credits.spent, 2_000, "counted once Kling said");
    world.callback(&world.capability(0), &whole).unwrap();
    assert_eq!(world.usage_of("web").credits.spent, 2_000, "and only once");
}
