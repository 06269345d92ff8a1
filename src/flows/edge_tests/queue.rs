//! The line against in-memory ports, with the real gate and coordinators behind the request
//! path, and a Kling that runs no more tasks than its slots (answering 1303 past them):
//! creates wait and go once each, two creates race for the last slot, a send cut off at
//! any `await` still reaches Kling once, a cancel crossing a send never lets both happen, a
//! 1303 puts a create back in line, and a create that waits too long ends with its webhook.

use futures_util::future::{FutureExt, LocalBoxFuture};

use super::*;
use crate::record::queued::EDGE_TASK_PREFIX;

const HOOK: &str = "https://app.example.com/hooks/kling";

/// A deployment whose account runs `slots` tasks, and a Kling that enforces them.
fn busy(slots: usize, settings: &[(&str, &str)]) -> World {
    let capacity = slots.to_string();
    let mut all = vec![("KLING_MAX_CONCURRENCY", capacity.as_str())];
    all.extend_from_slice(settings);
    let world = World::with(&all);
    world.kling.slots.set(Some(slots));
    world
}

fn body() -> Value {
    json!({"video_url": VIDEO, "callback_url": HOOK})
}

/// The id a create's client got: Kling's, or the worker's for one that waits.
fn id_of(created: &Created) -> String {
    match &created.answer {
        Answer::Success(data) => data["task_id"].as_str().unwrap().to_owned(),
        other => kling_task_id_of(other),
    }
}

fn waits(created: &Created) -> bool {
    id_of(created).starts_with(EDGE_TASK_PREFIX)
}

impl World {
    /// Kling finishes every task it runs, and calls back about each.
    fn finish_running(&self) {
        let running: Vec<Value> =
            self.kling.tasks.borrow().values().filter(|data| !task::is_final(data)).cloned().collect();
        for data in running {
            let id = data["task_id"].as_str().unwrap().to_owned();
            let mut done = report(&id, "succeed", START + 100, true);
            done["task_info"] = data["task_info"].clone();
            self.kling.set(done.clone());
            // `task-n` is the answer to the n-th create Kling was sent.
            let n: usize = id.trim_start_matches("task-").parse().unwrap();
            self.callback(&self.capability(n - 1), &done).unwrap();
        }
    }

    /// How many creates reached Kling and were taken (not refused with 1303).
    fn taken_by_kling(&self) -> usize {
        self.kling.tasks.borrow().len()
    }

    /// What the gate holds: slots held, creates waiting.
    fn gate(&self) -> (u32, u32) {
        self.gates.store.gate.borrow().counts()
    }
}

#[test]
fn creates_past_the_slots_wait_in_line_and_each_reaches_kling_once_as_tasks_end() {
    let world = busy(2, &[]);
    let clients = [server("web"), server("ops")];
    let created: Vec<(Client, Created)> = (0..6)
        .map(|n| {
            let client = clients[n % 2].clone();
            let created = world.create_and_record(&client, &V2A, body());
            (client, created)
        })
        .collect();
    assert_eq!(created.iter().filter(|(_, c)| waits(c)).count(), 4, "two went at once");
    assert_eq!(world.gate(), (2, 4));
    for round in 0.. {
        world.finish_running();
        world.run_alarms_for(5_000);
        if world.gate() == (0, 0) {
            break;
        }
        assert!(round < 6, "the line never emptied: {:?}", world.gate());
    }
    assert_eq!(world.kling.created.borrow().len(), 6, "each create was sent once, none refused");
    assert!(world.kling.peak_running.get() <= 2);
    assert_eq!(world.gate(), (0, 0), "every slot was given back");
    for (client, created) in &created {
        let id = id_of(created);
        let task = world.query(client, &id).unwrap();
        assert_eq!(
            (task["task_id"].as_str(), task["task_status"].as_str()),
            (Some(id.as_str()), Some("succeed"))
        );
        if waits(created) {
            assert!(task["kling_task_id"].as_str().unwrap().starts_with("task-"), "{task}");
        }
        let hooks = world.receiver.deliveries.borrow();
        let mine: Vec<_> = hooks.iter().filter(|d| d.body_json()["task_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 1, "{id}: one webhook");
    }
}

#[test]
fn two_creates_for_the_last_slot_send_one_and_queue_the_other() {
    let world = busy(1, &[]);
    let (web, ops) = (server("web"), server("ops"));
    let outcomes = world.edge(|edge| {
        run_together(vec![
            edge.create(&web, &V2A, body().to_string().into_bytes()),
            edge.create(&ops, &V2A, body().to_string().into_bytes()),
        ])
    });
    let created: Vec<Created> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(created.iter().filter(|c| waits(c)).count(), 1, "{created:?}");
    assert_eq!(world.kling.created.borrow().len(), 1, "Kling was sent one");
    assert_eq!(world.gate(), (1, 1));
}

#[test]
fn a_send_cut_off_at_any_await_still_reaches_kling_once() {
    for cut in 0.. {
        let world = busy(1, &[]);
        let (web, ops) = (server("web"), server("ops"));
        world.create_and_record(&web, &V2A, body());
        let waiting = world.create_and_record(&ops, &V2A, body());
        assert!(waits(&waiting));
        world.finish_running();
        let coordinators = world.coordinators();
        let finished = run_until_crash(world.gates.flows(&coordinators).run_due(), cut);
        // Whatever was cut, the alarms (the gate's sends again after its deadline) make it whole.
        world.run_alarms_for(5 * 60_000);
        assert_eq!(world.taken_by_kling(), 2, "cut after {cut}: Kling took the waiting create once");
        // (A send cut inside Kling's create never made a task: the next made another.)
        let task = world.query(&ops, &id_of(&waiting)).unwrap();
        let kling_task_id = task["kling_task_id"].as_str().unwrap_or_default();
        assert!(world.kling.tasks.borrow().contains_key(kling_task_id), "cut after {cut}: {task}");
        assert_eq!(task["task_status_msg"], "", "cut after {cut}: no longer waiting");
        assert_eq!(world.gate(), (1, 0), "cut after {cut}: it holds the slot");
        if finished.is_some() {
            break;
        }
        assert!(cut < 50, "the send ends");
    }
}

#[test]
fn a_cancel_crossing_a_send_never_lets_both_happen() {
    for cancel_first in [true, false] {
        let world = busy(1, &[]);
        let (web, ops) = (server("web"), server("ops"));
        world.create_and_record(&web, &V2A, body());
        let waiting = world.create_and_record(&ops, &V2A, body());
        let id = id_of(&waiting);
        // The running task ends (its slot frees) as the client cancels the waiting one.
        world.finish_running();
        let coordinators = world.coordinators();
        let gate = world.gates.flows(&coordinators);
        let outcomes = world.edge(|edge| {
            let cancel: LocalBoxFuture<'_, Result<(), ApiError>> =
                async { edge.cancel(&ops, &V2A, &id).await.map(|_| ()) }.boxed_local();
            let send: LocalBoxFuture<'_, Result<(), ApiError>> = gate.run_due().boxed_local();
            run_together(if cancel_first { vec![cancel, send] } else { vec![send, cancel] })
        });
        let cancelled = outcomes[if cancel_first { 0 } else { 1 }].clone();
        world.run_alarms_for(5 * 60_000);
        let task = world.query(&ops, &id).unwrap();
        match cancelled {
            Ok(()) => {
                assert_eq!(world.taken_by_kling(), 1, "cancelled: it never reached Kling");
                assert_eq!(task["task_status"], "failed");
                assert_eq!(world.gate(), (0, 0));
            }
            Err(refusal) => {
                assert_eq!(refusal.status, 409, "{refusal}");
                assert_eq!(world.taken_by_kling(), 2, "sent: Kling has it");
                assert_eq!(task["kling_task_id"], "task-2");
                assert_eq!(world.gate(), (1, 0));
            }
        }
        let webhooks = world
            .receiver
            .deliveries
            .borrow()
            .iter()
            .filter(|d| d.body_json()["task_id"] == id.as_str())
            .count();
        assert!(webhooks <= 1);
    }
}

#[test]
fn a_1303_to_a_create_sent_at_once_puts_it_back_in_line_and_it_goes_later() {
    // The gate believes in two slots; Kling (another app on the account) has one.
    let world = busy(2, &[]);
    world.kling.slots.set(Some(1));
    let (web, ops) = (server("web"), server("ops"));
    world.create_and_record(&web, &V2A, body());
    let crowded = world.create_and_record(&ops, &V2A, body());
    assert!(waits(&crowded), "a 1303 is never the client's failure: {:?}", crowded.answer);
    assert_eq!(world.kling.created.borrow().len(), 2, "Kling was sent it, and refused it");
    assert_eq!(world.gate(), (1, 1));
    // Until a slot frees, the gate sends nothing (it learned Kling has fewer).
    world.run_alarms_for(10_000);
    assert_eq!(world.kling.created.borrow().len(), 2, "Kling is not hammered");
    world.finish_running();
    world.run_alarms_for(10_000);
    assert_eq!(world.taken_by_kling(), 2);
    let task = world.query(&ops, &id_of(&crowded)).unwrap();
    assert_eq!(task["kling_task_id"], "task-3", "{task}");
}

#[test]
fn a_create_that_waits_too_long_ends_failed_with_its_webhook_and_never_reaches_kling() {
    let world = busy(1, &[("QUEUE_MAX_WAIT_SECONDS", "60")]);
    let (web, ops) = (server("web"), server("ops"));
    world.create_and_record(&web, &V2A, body());
    let waiting = world.create_and_record(&ops, &V2A, body());
    let id = id_of(&waiting);
    world.run_alarms_for(61_000);
    let task = world.query(&ops, &id).unwrap();
    assert_eq!(task["task_status"], "failed");
    assert!(task["task_status_msg"].as_str().unwrap().starts_with("waited longer than 60 s"), "{task}");
    let webhook = world.receiver.deliveries.borrow().iter().any(|d| {
        let body = d.body_json();
        body["task_id"] == id.as_str() && body["task_status"] == "failed"
    });
    assert!(webhook, "its webhook says so");
    world.finish_running();
    world.run_alarms_for(10_000);
    assert_eq!(world.kling.created.borrow().len(), 1, "it never reached Kling");
    assert_eq!(world.gate(), (0, 0));
}

#[test]
fn a_tenants_full_line_refuses_with_429_and_keeps_nothing() {
    let world = busy(1, &[("QUEUE_MAX_PER_TENANT", "2")]);
    let web = server("web");
    for _ in 0..3 {
        world.create_and_record(&web, &V2A, body());
    }
    let stored = world.coordinators().store(&task::tenant_shard("web")).all().len();
    let refused = world.create(&web, &V2A, body()).unwrap_err();
    assert_eq!((refused.status, refused.header.as_ref().map(|h| h.0)), (429, Some("Retry-After")));
    assert!(refused.message.contains("QUEUE_MAX_PER_TENANT"), "{refused}");
    assert_eq!(world.coordinators().store(&task::tenant_shard("web")).all().len(), stored);
    assert!(world
        .coordinators()
        .store(&task::tenant_shard("web"))
        .due_intents(u64::MAX, 10)
        .unwrap()
        .is_empty());
    assert_eq!(world.kling.created.borrow().len(), 1);
    // Another tenant still gets in line.
    assert!(waits(&world.create_and_record(&server("ops"), &V2A, body())));
}

#[test]
fn a_create_cut_off_while_it_joins_the_line_leaves_nothing_that_reaches_kling_or_holds_a_slot() {
    for cut in 0.. {
        let world = busy(1, &[]);
        let (web, ops) = (server("web"), server("ops"));
        world.create_and_record(&web, &V2A, body());
        let finished =
            world.edge(|edge| run_until_crash(edge.create(&ops, &V2A, body().to_string().into_bytes()), cut));
        world.finish_running();
        // Past the intent's last check: a create cut off before its record is given up.
        world.run_alarms_for(3 * 3_600_000);
        // A create whose record landed is kept (and sent), answered or not.
        let kept = !world.coordinators().store(&task::tenant_shard("ops")).all().is_empty();
        if let Some(created) = &finished {
            assert!(waits(created.as_ref().unwrap()) && kept);
        }
        assert_eq!(
            world.taken_by_kling(),
            1 + usize::from(kept),
            "cut after {cut}: {:?} {:?}",
            world.coordinators().store(&task::tenant_shard("ops")).all(),
            world.gates.store.gate.borrow()
        );
        assert_eq!(
            world.gate(),
            (u32::from(kept), 0),
            "cut after {cut}: no slot held by a create that is gone"
        );
        if finished.is_some() {
            break;
        }
        assert!(cut < 50);
    }
}

#[test]
fn a_send_that_kling_fails_with_5xx_is_looked_for_then_sent_again_once() {
    let world = busy(1, &[]);
    let (web, ops) = (server("web"), server("ops"));
    world.create_and_record(&web, &V2A, body());
    let waiting = world.create_and_record(&ops, &V2A, body());
    world.finish_running();
    // Kling's gateway fails the first send: it may have the task, so nothing is ended.
    let failed = KlingReply { status: 503, body: b"<html>busy</html>".to_vec() };
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(failed));
    world.run_alarms_for(1_000);
    let task = world.query(&ops, &id_of(&waiting)).unwrap();
    assert_eq!(task["task_status"], "submitted", "{task}");
    // After the send's deadline the gate sends again; Kling has no such task, so it is sent.
    world.run_alarms_for(5 * 60_000);
    assert_eq!(world.taken_by_kling(), 2);
    let task = world.query(&ops, &id_of(&waiting)).unwrap();
    assert!(task["kling_task_id"].as_str().is_some(), "{task}");
}

#[test]
fn kling_rate_limiting_a_send_puts_the_create_back_in_line() {
    let world = busy(1, &[]);
    let (web, ops) = (server("web"), server("ops"));
    world.create_and_record(&web, &V2A, body());
    let waiting = world.create_and_record(&ops, &V2A, body());
    world.finish_running();
    let limited = json!({"code": 1302, "message": "rate limit exceeded", "request_id": "k"});
    let reply = KlingReply { status: 429, body: limited.to_string().into_bytes() };
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(reply));
    world.run_alarms_for(60_000);
    let task = world.query(&ops, &id_of(&waiting)).unwrap();
    assert!(task["kling_task_id"].as_str().is_some(), "sent after the pause, not failed: {task}");
}

#[test]
fn a_1303_to_a_body_too_large_to_wait_is_refused_and_gives_its_slot_back() {
    use base64ct::{Base64, Encoding};
    let world = busy(2, &[]);
    world.kling.slots.set(Some(1));
    let web = server("web");
    world.create_and_record(&web, &V2A, body());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(1_200_000, 0);
    let big = json!({"prompt": "a cat", "image": Base64::encode_string(&png)});
    let refused = world.create(&server("ops"), &I2V, big).unwrap_err();
    assert_eq!((refused.status, refused.header.as_ref().map(|h| h.0)), (429, Some("Retry-After")));
    assert!(refused.message.contains("cannot wait in line"), "{refused}");
    assert_eq!(world.gate(), (1, 0), "only the first holds a slot");
}

#[test]
fn a_1303_while_the_gate_cannot_be_asked_still_ends_with_the_create_in_line_and_sent() {
    let world = busy(2, &[]);
    world.kling.slots.set(Some(1));
    let (web, ops) = (server("web"), server("ops"));
    world.create_and_record(&web, &V2A, body());
    world.gates.down.set(true);
    let crowded = world.create_and_record(&ops, &V2A, body());
    assert!(waits(&crowded), "kept, not failed: {:?}", crowded.answer);
    world.gates.down.set(false);
    world.finish_running();
    world.run_alarms_for(60_000);
    let task = world.query(&ops, &id_of(&crowded)).unwrap();
    assert!(task["kling_task_id"].as_str().is_some(), "told the gate later, and sent: {task}");
}

#[test]
fn a_gate_that_cannot_be_told_a_task_ended_holds_back_no_webhook() {
    let world = busy(2, &[]);
    let web = server("web");
    let created = world.create_and_record(&web, &V2A, body());
    world.gates.down.set(true);
    world.finish_running();
    let delivered = world
        .receiver
        .deliveries
        .borrow()
        .iter()
        .any(|d| d.body_json()["task_id"] == id_of(&created).as_str());
    assert!(delivered, "its webhook went out");
    assert_eq!(world.gate(), (1, 0), "the gate has not heard yet");
    world.gates.down.set(false);
    world.run_alarms_for(60_000);
    assert_eq!(world.gate(), (0, 0), "told later");
}
