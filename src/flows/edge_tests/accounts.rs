//! Several Kling accounts against in-memory ports, with the real gate and coordinators
//! behind the request path, and a Kling that keeps each account's tasks apart (a call on one
//! account never sees another's task) and runs no more tasks on each than its slots: creates
//! spread over the least loaded accounts, useapi.net's `email` pins one, and every later
//! call about a task (its polls, the look for a create whose record never came) goes to the
//! account that has it.

use super::*;
use crate::record::queued::EDGE_TASK_PREFIX;

const HOOK: &str = "https://app.example.com/hooks/kling";
const ACCOUNTS: &[(&str, &str)] = &[
    ("KLING_ACCOUNTS", "main:main@example.com:2,spare:spare@example.com:2"),
    ("KLING_ACCOUNT_KEYS", "spare:ak-spare:sk-spare"),
];

/// Two accounts of two slots each (`extra` settings on top), and a Kling that enforces them.
fn two_accounts(extra: &[(&str, &str)]) -> World {
    let mut settings = ACCOUNTS.to_vec();
    settings.extend_from_slice(extra);
    let world = World::with(&settings);
    world.kling.slots.set(Some(2));
    world.kling.first_account.replace("main".into());
    world
}

fn account_of(world: &World, task_id: &str) -> String {
    world.kling.task_accounts.borrow().get(task_id).cloned().unwrap_or_default()
}

/// The Kling task a recorded create made, whatever its surface's shape.
fn task_of(created: &Created) -> String {
    created.record.as_ref().expect("recorded").registration.task_id.clone()
}

fn body(prompt: &str) -> Value {
    json!({"video_url": VIDEO, "callback_url": HOOK, "sound_effect_prompt": prompt})
}

#[test]
fn creates_go_to_the_least_loaded_account_and_queue_past_both() {
    let world = two_accounts(&[]);
    let client = server("web");
    let created: Vec<Created> =
        (0..4).map(|n| world.create_and_record(&client, &V2A, body(&n.to_string()))).collect();
    let accounts: Vec<String> = created.iter().map(|c| account_of(&world, &task_of(c))).collect();
    assert_eq!(accounts, ["main", "spare", "main", "spare"], "each to the least loaded");
    assert_eq!(world.kling.running_on("main"), 2);
    assert_eq!(world.kling.running_on("spare"), 2);
    // The callback URL names the account unless it is the first: a one-account URL is as it was.
    let main_capability = world.capability(0);
    let spare_capability = world.capability(1);
    assert_eq!(main_capability.len(), crate::links::capability::ENCODED_CHARS);
    assert!(spare_capability.ends_with("spare"), "{spare_capability}");

    // Both full: the fifth waits, and goes to the first account that frees a slot.
    let fifth = world.create(&client, &V2A, body("5")).unwrap();
    let Answer::Success(waiting) = &fifth.answer else { panic!("waits: {:?}", fifth.answer) };
    assert!(waiting["task_id"].as_str().unwrap().starts_with(EDGE_TASK_PREFIX));
    let spare_task = task_of(&created[1]);
    let mut done = report(&spare_task, "succeed", START + 50, true);
    done["task_info"] = world.kling.tasks.borrow()[&spare_task]["task_info"].clone();
    world.kling.set(done.clone());
    world.callback(&spare_capability, &done).unwrap();
    world.run_alarms_for(1_000);
    assert_eq!(world.kling.created.borrow().len(), 5, "the fifth went");
    assert_eq!(account_of(&world, "task-5"), "spare", "to the account that had room");
    let store = world.coordinators().store(&task::tenant_shard("web"));
    let record = store.load(waiting["task_id"].as_str().unwrap()).unwrap().unwrap();
    assert_eq!(record.account.as_deref(), Some("spare"), "recorded with its account");
    assert!(world.kling.peak_running.get() <= 4);
}

#[test]
fn every_later_call_about_a_task_asks_the_account_that_created_it() {
    let world = two_accounts(&[]);
    let client = server("web");
    let main = world.create_and_record(&client, &V2A, body("a"));
    let spare = world.create_and_record(&client, &V2A, body("b"));
    assert_eq!(account_of(&world, &task_of(&spare)), "spare");
    // No callback ever comes: a query a few seconds on asks Kling, on the task's own account
    // (the scripted Kling answers 404 on the other).
    world.runtime.now.set(START + 10_000);
    for (created, account) in [(&main, "main"), (&spare, "spare")] {
        let id = task_of(created);
        let mut done = report(&id, "succeed", START + 5_000, true);
        done["task_info"] = world.kling.tasks.borrow()[&id]["task_info"].clone();
        world.kling.set(done);
        world.kling.calls_on.borrow_mut().clear();
        let answer = world.query(&client, &id).unwrap();
        assert_eq!(answer["task_status"], "succeed", "{answer}");
        assert_eq!(*world.kling.calls_on.borrow(), [account], "asked {account} only");
    }
}

#[test]
fn email_pins_one_account_and_an_unknown_one_is_refused_before_kling() {
    let world = two_accounts(&[]);
    let client = server("ops");
    for email in ["spare@example.com", "Spare@Example.com "] {
        let created = world.create_and_record(&client, &ADD_SOUND, json!({"video": VIDEO, "email": email}));
        assert_eq!(account_of(&world, &task_of(&created)), "spare", "{email}");
    }
    // Spare is full: a create pinned to it waits though main has room, and goes to spare.
    let pinned =
        world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "email": "spare@example.com"})).unwrap();
    assert_eq!(world.kling.created.borrow().len(), 2, "it waits");
    let other = world.create_and_record(&client, &ADD_SOUND, json!({"video": VIDEO}));
    assert_eq!(account_of(&world, &task_of(&other)), "main", "an unpinned one goes to main");
    let spare_first = "task-1";
    let mut done = report(spare_first, "succeed", START + 50, true);
    done["task_info"] = world.kling.tasks.borrow()[spare_first]["task_info"].clone();
    world.kling.set(done.clone());
    world.callback(&world.capability(0), &done).unwrap();
    world.run_alarms_for(1_000);
    assert_eq!(world.kling.created.borrow().len(), 4);
    assert_eq!(account_of(&world, "task-4"), "spare", "the pinned create, on its account");
    assert!(pinned.record.is_none(), "it waited");

    let before = world.kling.created.borrow().len();
    let refused = world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "email": "nobody@example.com"}));
    let error = refused.unwrap_err();
    assert_eq!(error.status, 400);
    assert!(
        error.message.starts_with("email: is not one of this deployment's Kling accounts"),
        "{}",
        error.message
    );
    assert_eq!(world.kling.created.borrow().len(), before, "nothing reached Kling");
}

#[test]
fn without_the_line_creates_still_spread_and_are_followed_on_their_account() {
    let world = two_accounts(&[("KLING_ACCOUNTS", "main:main@example.com:0,spare:spare@example.com:0")]);
    world.kling.slots.set(None);
    let client = server("web");
    let created: Vec<Created> =
        (0..4).map(|n| world.create_and_record(&client, &V2A, body(&n.to_string()))).collect();
    let mut accounts: Vec<String> = created.iter().map(|c| account_of(&world, &task_of(c))).collect();
    accounts.sort();
    accounts.dedup();
    assert_eq!(accounts, ["main", "spare"], "spread over both");
    assert!(world.gates.calls.borrow().is_empty(), "no gate without a bound");
    let pinned =
        world.create_and_record(&client, &ADD_SOUND, json!({"video": VIDEO, "email": "main@example.com"}));
    assert_eq!(account_of(&world, &task_of(&pinned)), "main");
    let store = world.coordinators().store(&task::tenant_shard("web"));
    for created in &created {
        let id = task_of(created);
        assert_eq!(store.load(&id).unwrap().unwrap().account, Some(account_of(&world, &id)));
    }
}

#[test]
fn a_create_whose_record_never_came_is_found_on_whichever_account_has_it() {
    // The gate chose spare after the intent was written: the intent names no account, and
    // its check looks on each. The create is cut off at every await after Kling took it.
    let mut found = 0;
    for cut in 0.. {
        let world = two_accounts(&[]);
        // Main is busy with another create, so this one goes to spare.
        world.create_and_record(&server("ops"), &V2A, body("busy"));
        let client = server("web");
        let create = world.edge(|edge| {
            let body = body("lost").to_string().into_bytes();
            run_until_crash(edge.create(&client, &V2A, body), cut)
        });
        let store = world.coordinators().store(&task::tenant_shard("web"));
        let intended = !store.due_intents(u64::MAX, 10).unwrap().is_empty();
        if world.kling.tasks.borrow().contains_key("task-2") && intended {
            assert_eq!(account_of(&world, "task-2"), "spare");
            world.run_alarms_for(60_000);
            let record = store.load("task-2").unwrap().expect("found at Kling");
            assert_eq!(record.account.as_deref(), Some("spare"), "cut after {cut}");
            found += 1;
        }
        if create.is_some() {
            break;
        }
    }
    assert!(found >= 1, "some cut fell after the intent landed");
}

#[test]
fn a_lost_create_is_not_mistaken_for_another_accounts_task_with_its_external_id() {
    // External ids are unique per account only: main has an older task by the client's own
    // id, and the lost create went to spare. The look passes main's over and finds spare's.
    for cut in 0.. {
        let world = two_accounts(&[]);
        world.kling.now_ms.set(START);
        world.create_and_record(&server("ops"), &V2A, body("busy"));
        world
            .kling
            .set(json!({"task_id": "old-1", "task_status": "succeed", "created_at": START - 86_400_000,
            "updated_at": START - 86_000_000, "task_info": {"external_task_id": "order-42"}}));
        world.kling.task_accounts.borrow_mut().insert("old-1".into(), "main".into());
        let client = server("web");
        let lost = json!({"video_url": VIDEO, "external_task_id": "order-42"}).to_string().into_bytes();
        let create = world.edge(|edge| run_until_crash(edge.create(&client, &V2A, lost), cut));
        let store = world.coordinators().store(&task::tenant_shard("web"));
        let intended = !store.due_intents(u64::MAX, 10).unwrap().is_empty();
        if world.kling.tasks.borrow().contains_key("task-2") && intended {
            assert_eq!(account_of(&world, "task-2"), "spare");
            world.run_alarms_for(60_000);
            assert!(store.load("old-1").unwrap().is_none(), "main's older task is not taken");
            let record = store.load("task-2").unwrap().expect("the create's own task, found on spare");
            assert_eq!(record.account.as_deref(), Some("spare"));
            return;
        }
        assert!(create.is_none(), "a cut after the intent landed and before the record");
    }
}

#[test]
fn one_account_is_as_it_was() {
    let world = World::new();
    let client = server("web");
    let created = world.create_and_record(&client, &V2A, body("one"));
    assert_eq!(world.capability(0).len(), crate::links::capability::ENCODED_CHARS, "the URL of before");
    let id = task_of(&created);
    let store = world.coordinators().store(&task::tenant_shard("web"));
    assert_eq!(store.load(&id).unwrap().unwrap().account.as_deref(), Some(crate::accounts::DEFAULT_ACCOUNT));
}

#[test]
fn the_accounts_packs_are_each_accounts_for_a_server_key_only() {
    let world = two_accounts(&[]);
    let refused = world.edge(|edge| block_on(edge.account(&browser("web", "alice", None))));
    assert_eq!(refused.unwrap_err().status, 403);
    assert!(world.kling.costs_queries.borrow().is_empty(), "refused before Kling");
    let Answer::Success(answer) = world.edge(|edge| block_on(edge.account(&server("web")))).unwrap() else {
        panic!("the worker's envelope")
    };
    let names: Vec<&str> =
        answer["accounts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["main", "spare"]);
    assert_eq!(answer["accounts"][1]["packs"][0]["remaining"], 10);
    assert_eq!(*world.kling.calls_on.borrow(), ["main", "spare"], "each asked on its own account");
    let year = world.kling.costs_queries.borrow()[0].clone();
    assert_eq!(year, format!("start_time={}&end_time={START}", START - 365 * 86_400_000));
}
