//! The coordinator's flows against in-memory ports: the whole life of a task, with Kling
//! failing, receivers down, callbacks duplicated, reordered and racing an alarm, and the
//! alarm cut off at every `await` and run again.

use std::rc::Rc;

use serde_json::{json, Value};

use super::coordinator::{Coordinator, LinkSettings, Registration, Settings};
use super::prompt::PromptSteps;
use super::protocol::StepNow;
use crate::api::VIDEO_TO_AUDIO;
use crate::links::result_links::render;
use crate::links::result_links::LinkKey;
use crate::links::webhook::{SignatureHeaders, WebhookKey};
use crate::record::delivery::DeliveryState;
use crate::record::edge_copy::{self, EdgeCopy};
use crate::schedule::Schedule;
use crate::testing::{
    block_on, poll_once, run_until_crash, MemoryBucket, MemoryGates, MemoryKv, MemoryStore, Receiver,
    ScriptedKling, TestRuntime,
};

const START: u64 = 1_800_000_000_000;
const SHARD: &str = "0123456789abcdef0123456789abcdef";
const TENANT: &str = "web/alice";
const HOOK: &str = "https://app.example.com/hooks/kling";
const V2A: u8 = VIDEO_TO_AUDIO.code;

fn deployment_key() -> WebhookKey {
    WebhookKey::from_secret("whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=").unwrap()
}

struct World {
    store: MemoryStore,
    kling: ScriptedKling,
    receiver: Receiver,
    kv: MemoryKv,
    bucket: MemoryBucket,
    runtime: Rc<TestRuntime>,
    settings: Settings,
    prompts: PromptSteps,
    gates: MemoryGates,
}

impl World {
    fn new() -> World {
        let runtime = Rc::new(TestRuntime::default());
        let world = World {
            store: MemoryStore::default(),
            kling: ScriptedKling::default(),
            receiver: Receiver::default(),
            kv: MemoryKv::default(),
            bucket: MemoryBucket::default(),
            gates: MemoryGates::new(runtime.clone(), &crate::testing::config(&[])),
            runtime,
            prompts: PromptSteps::default(),
            settings: Settings {
                poll: crate::config::default_delays("KLING_POLL_SECONDS"),
                forward: Schedule::parse("5,300,1800,7200").unwrap(),
                webhook_key: Some(deployment_key()),
                copies: None,
                links: LinkSettings {
                    key: LinkKey::derive("sk-example", ""),
                    ttl_secs: 3600,
                    public_base_url: None,
                },
                send_deadline_ms: 35_000,
                accounts: vec![crate::accounts::DEFAULT_ACCOUNT.to_owned()],
            },
        };
        world.runtime.now.set(START);
        world
    }

    fn coordinator(
        &self,
    ) -> Coordinator<'_, MemoryStore, ScriptedKling, Receiver, MemoryKv, MemoryBucket, TestRuntime, MemoryGates>
    {
        Coordinator {
            gates: &self.gates,
            shard: SHARD,
            store: &self.store,
            kling: &self.kling,
            webhooks: &self.receiver,
            edge_copies: &self.kv,
            bucket: &self.bucket,
            runtime: &self.runtime,
            settings: &self.settings,
            prompts: &self.prompts,
        }
    }

    /// A world whose callbacks promise no prompt step: every step is the alarm's.
    fn alarm_only() -> World {
        World { prompts: PromptSteps::bounded(0), ..World::new() }
    }

    fn now(&self) -> u64 {
        self.runtime.now.get()
    }

    fn advance(&self, ms: u64) {
        self.runtime.advance(ms);
        self.receiver.clock.set(self.now());
    }

    /// Kling's data for the task at a status, as a callback or a query carries it.
    fn data(&self, task_id: &str, status: &str, updated_at: u64, audios: bool) -> Value {
        let mut data = json!({"task_id": task_id, "task_status": status, "updated_at": updated_at,
                              "task_info": {"external_task_id": format!("ext-{task_id}")}});
        if audios {
            data["task_result"] = json!({"videos": [{"id": "v", "url": "https://kling.example/v.mp4"}],
                                         "audios": [{"id": "a", "url_mp3": "https://kling.example/a.mp3"}]});
        }
        data
    }

    fn register(&self, task_id: &str, nonce: &str, webhook: bool) -> Value {
        self.register_with(task_id, nonce, webhook.then_some(HOOK))
    }

    fn register_with(&self, task_id: &str, nonce: &str, hook: Option<&str>) -> Value {
        let coordinator = self.coordinator();
        coordinator.learn_tenant(Some(TENANT)).unwrap();
        let data = self.data(task_id, "submitted", START, false);
        self.kling.set(data.clone());
        coordinator
            .register(Registration {
                task_id: task_id.into(),
                endpoint: V2A,
                nonce: nonce.into(),
                tenant: TENANT.into(),
                client_callback_url: hook.map(str::to_owned),
                style: None,
                reply_ref: None,
                origin: Some("https://edge.example.com".into()),
                data,
                max_jobs_hold: None,
                holds_slot: false,
                account: None,
                key_answer: None,
                cost_kind: None,
            })
            .unwrap();
        self.record(task_id).answer().data
    }

    /// A callback, and then its prompt step if it was promised one (as the edge asks for it).
    fn callback(&self, nonce: &str, data: &Value) -> Result<(), crate::error::ApiError> {
        let coordinator = self.coordinator();
        if let Some(StepNow { task_id }) = coordinator.report(nonce, V2A, data, None)? {
            block_on(coordinator.step_now(&task_id))?;
        }
        Ok(())
    }

    /// Kling moves the task on (what a query now answers), and calls back unless `silent`.
    fn kling_moves(
        &self,
        task_id: &str,
        nonce: &str,
        status: &str,
        updated_at: u64,
        audios: bool,
        silent: bool,
    ) {
        let data = self.data(task_id, status, updated_at, audios);
        self.kling.set(data.clone());
        if !silent {
            self.callback(nonce, &data).unwrap();
        }
    }

    /// Runs every alarm due within the next `ms`, moving the clock from one to the next.
    fn run_alarms_for(&self, ms: u64) {
        let end = self.now() + ms;
        for _ in 0..10_000 {
            match self.coordinator().next_due().unwrap() {
                Some(due) if due <= end => {
                    if due > self.now() {
                        self.advance(due - self.now());
                    }
                    block_on(self.coordinator().run_due()).unwrap();
                }
                _ => break,
            }
        }
        if end > self.now() {
            self.advance(end - self.now());
        }
    }

    fn record(&self, task_id: &str) -> crate::record::TaskRecord {
        use crate::ports::TaskStore;
        self.store.load(task_id).unwrap().expect("the task is recorded")
    }

    fn edge_copy(&self, task_id: &str) -> Option<EdgeCopy> {
        self.kv
            .entries
            .borrow()
            .get(&edge_copy::key(SHARD, task_id))
            .map(|v| serde_json::from_str(v).unwrap())
    }

    fn message_ids(&self) -> Vec<String> {
        self.receiver.deliveries.borrow().iter().map(|d| d.headers["webhook-id"].clone()).collect()
    }
}

#[test]
fn a_task_lives_its_whole_life_with_one_kv_write_and_one_webhook() {
    let world = World::new();
    let answer = world.register("t1", "n1", true);
    assert_eq!(answer["task_status"], "submitted");
    assert_eq!(answer["delivery"]["state"], "none");
    world.kling_moves("t1", "n1", "submitted", START + 1, false, false);
    world.advance(1_000);
    world.kling_moves("t1", "n1", "processing", START + 2, false, false);
    for _ in 0..10 {
        let seen = block_on(world.coordinator().query(TENANT, V2A, "t1")).unwrap().unwrap().data;
        assert_eq!(seen["task_status"], "processing");
    }
    assert_eq!(world.kling.calls.get(), 0, "fresh news: queries answered from the store");
    world.advance(1_000);
    world.kling_moves("t1", "n1", "succeed", START + 3, true, false);
    world.run_alarms_for(1_000);

    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    let delivery = &world.receiver.deliveries.borrow()[0];
    assert_eq!(delivery.url, HOOK);
    let body: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!((body["tenant"].as_str(), body["task_status"].as_str()), (Some(TENANT), Some("succeed")));
    let headers = SignatureHeaders {
        id: Some(&delivery.headers["webhook-id"]),
        timestamp: Some(&delivery.headers["webhook-timestamp"]),
        signature: Some(&delivery.headers["webhook-signature"]),
    };
    let web = deployment_key().for_client("web");
    assert_eq!(
        web.verify(&headers, &delivery.body, (world.now() / 1000) as i64),
        Ok(()),
        "signed with web's key"
    );
    assert!(deployment_key()
        .for_client("other")
        .verify(&headers, &delivery.body, (world.now() / 1000) as i64)
        .is_err());

    let copy = world.edge_copy("t1").expect("copied to the edge");
    assert_eq!(copy.tenant, TENANT);
    assert_eq!(copy.task.data["delivery"]["state"], "delivered");
    assert_eq!(world.kv.writes.get(), 1, "one KV write for the whole life");
    world.run_alarms_for(3 * 24 * 3600 * 1000);
    assert_eq!(
        (world.kv.writes.get(), world.receiver.deliveries.borrow().len()),
        (1, 1),
        "and nothing after"
    );
    assert_eq!(world.kling.calls.get(), 0, "callbacks came: Kling was never polled");
}

#[test]
fn a_callback_before_the_creates_answer_is_merged_not_lost() {
    let world = World::new();
    world.coordinator().learn_tenant(Some(TENANT)).unwrap();
    world.kling.set(world.data("t1", "processing", START + 5, false));
    world.callback("n1", &world.data("t1", "processing", START + 5, false)).unwrap();
    let answer = world.register("t1", "n1", true);
    assert_eq!(answer["task_status"], "processing", "the older create answer does not regress it");
    let record = world.record("t1");
    assert!(record.registered);
    assert_eq!(record.client_callback_url.as_deref(), Some(HOOK));
    world.kling_moves("t1", "n1", "failed", START + 9, false, false);
    world.run_alarms_for(1_000);
    assert_eq!(world.message_ids(), ["msg_t1_failed"]);
}

#[test]
fn a_callback_to_a_coordinator_that_never_met_its_tenant_waits_for_it() {
    let world = World::new();
    world.callback("n1", &world.data("t1", "succeed", START + 5, true)).unwrap();
    world.run_alarms_for(1_000);
    assert_eq!(world.kv.writes.get(), 0, "no tenant yet: no edge copy");
    world.register("t1", "n1", true);
    world.run_alarms_for(1_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    assert_eq!(world.edge_copy("t1").unwrap().tenant, TENANT);
}

#[test]
fn duplicated_and_reordered_callbacks_always_end_the_same() {
    let reports = |world: &World| {
        vec![
            world.data("t1", "submitted", START + 1, false),
            world.data("t1", "processing", START + 2, false),
            world.data("t1", "succeed", START + 3, true),
            world.data("t1", "processing", START + 2, false),
            world.data("t1", "succeed", START + 3, true),
        ]
    };
    // Every order of five reports (120), two of them duplicates.
    let mut orders = vec![];
    permutations(&mut (0..5).collect::<Vec<_>>(), 0, &mut orders);
    assert_eq!(orders.len(), 120);
    for order in orders {
        let world = World::new();
        world.register("t1", "n1", true);
        for &i in &order {
            world.callback("n1", &reports(&world)[i]).unwrap();
            world.advance(10);
        }
        world.run_alarms_for(60_000);
        let record = world.record("t1");
        assert_eq!(record.data["task_status"], "succeed", "{order:?}");
        assert_eq!(world.message_ids(), ["msg_t1_succeed"], "{order:?}");
        assert_eq!(world.kv.writes.get(), 1, "{order:?}");
        let listed = world.coordinator().list(TENANT, V2A, 1, 30).unwrap();
        assert_eq!(listed.len(), 1, "listed once: {order:?}");
    }
}

fn permutations(items: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k == items.len() {
        out.push(items.clone());
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, out);
        items.swap(k, i);
    }
}

#[test]
fn a_callback_racing_an_alarms_poll_is_never_undone() {
    let world = World::new();
    world.register("t1", "n1", true);
    // The alarm's poll is on its way to Kling, which still says processing...
    world.kling.set(world.data("t1", "processing", START + 2, false));
    world.advance(30_000);
    let coordinator = world.coordinator();
    let mut alarm = std::pin::pin!(coordinator.run_due());
    assert!(poll_once(alarm.as_mut()).is_none(), "the alarm waits on Kling");
    // ...when the final callback arrives.
    world.callback("n1", &world.data("t1", "succeed", START + 3, true)).unwrap();
    block_on(alarm).unwrap();
    assert_eq!(world.record("t1").data["task_status"], "succeed", "the older poll answer did not regress it");
    world.run_alarms_for(1_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    assert!(world.edge_copy("t1").unwrap().task.data["task_result"]["audios"].is_array());
}

#[test]
fn a_task_kling_never_calls_back_about_is_found_by_polling() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.kling_moves("t1", "n1", "processing", START + 2, false, true);
    world.run_alarms_for(29_000);
    assert_eq!(world.kling.calls.get(), 0, "the first poll waits 30 s");
    world.run_alarms_for(2_000);
    assert_eq!(world.kling.calls.get(), 1);
    assert_eq!(world.record("t1").data["task_status"], "processing");
    world.kling_moves("t1", "n1", "succeed", START + 3, true, true);
    world.run_alarms_for(10 * 60_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed"], "forwarded as if the callback had come");
    assert_eq!(world.edge_copy("t1").unwrap().task.data["task_status"], "succeed");
    let polls = world.kling.calls.get();
    world.run_alarms_for(24 * 3600 * 1000);
    assert_eq!(world.kling.calls.get(), polls, "a complete task is never polled again");
}

#[test]
fn polls_slow_down_and_stop_after_a_day() {
    let world = World::new();
    world.register("t1", "n1", false);
    world.run_alarms_for(10 * 60_000);
    // 30 s, then 1, 2, 5 min after each: polls at 0:30, 1:30, 3:30, 8:30.
    assert_eq!(world.kling.calls.get(), 4);
    world.run_alarms_for(25 * 3600 * 1000);
    let total = world.kling.calls.get();
    assert!((140..=150).contains(&total), "every 10 min for the rest of the day: {total}");
    world.run_alarms_for(24 * 3600 * 1000);
    assert_eq!(world.kling.calls.get(), total, "none after the horizon");
}

#[test]
fn kling_failing_during_polls_only_delays_the_result() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.kling_moves("t1", "n1", "succeed", START + 3, true, true);
    world.kling.faults.borrow_mut().extend(["Kling answered 503".to_owned(), "no answer in time".to_owned()]);
    world.run_alarms_for(2 * 60_000);
    assert_eq!(world.record("t1").data["task_status"], "submitted", "two failed polls");
    world.run_alarms_for(3 * 60_000);
    assert_eq!(world.record("t1").data["task_status"], "succeed");
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    let logged = world.runtime.logs.borrow().iter().filter(|l| l["event"] == "poll").count();
    assert_eq!(logged, 2);
}

#[test]
fn a_receiver_down_for_a_while_still_gets_the_webhook_under_one_id() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.receiver.down.set(true);
    world.kling_moves("t1", "n1", "failed", START + 3, false, false);
    world.run_alarms_for(6_000);
    let record = world.record("t1");
    assert_eq!((record.delivery.state, record.delivery.attempts), (DeliveryState::Pending, 2));
    assert_eq!(record.delivery.last_error.as_deref(), Some("the receiver was unreachable"));
    assert_eq!(
        world.edge_copy("t1").unwrap().task.data["delivery"]["state"],
        "pending",
        "copied to the edge after the first attempt"
    );
    world.receiver.down.set(false);
    world.receiver.answers.borrow_mut().extend([503, 500]);
    world.run_alarms_for(4 * 3600 * 1000);
    assert_eq!(world.message_ids(), ["msg_t1_failed"; 3], "two refusals, then delivered: one id throughout");
    let record = world.record("t1");
    assert_eq!((record.delivery.state, record.delivery.attempts), (DeliveryState::Delivered, 5));
    assert_eq!(world.edge_copy("t1").unwrap().task.data["delivery"]["state"], "delivered");
    assert_eq!(world.kv.writes.get(), 2, "a failed first attempt costs one more write");
    let gaps: Vec<u64> =
        world.receiver.deliveries.borrow().windows(2).map(|pair| pair[1].at - pair[0].at).collect();
    assert_eq!(gaps, [1_800_000, 7_200_000], "FORWARD_RETRY_SECONDS apart");
}

#[test]
fn a_receiver_that_never_recovers_is_given_up_on_after_the_schedule() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.receiver.down.set(true);
    world.kling_moves("t1", "n1", "failed", START + 3, false, false);
    world.run_alarms_for(24 * 3600 * 1000);
    let record = world.record("t1");
    assert_eq!((record.delivery.state, record.delivery.attempts), (DeliveryState::Failed, 5));
    assert_eq!(world.edge_copy("t1").unwrap().task.data["delivery"]["state"], "failed");
    assert_eq!(world.coordinator().next_due().unwrap(), None, "nothing left to do");
}

#[test]
fn a_refusing_receiver_is_not_retried() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.receiver.answers.borrow_mut().push_back(410);
    world.kling_moves("t1", "n1", "failed", START + 3, false, false);
    world.run_alarms_for(24 * 3600 * 1000);
    assert_eq!(world.message_ids().len(), 1);
    assert_eq!(world.record("t1").delivery.last_http_status, Some(410));
}

#[test]
fn the_alarm_cut_off_at_any_await_is_made_whole_by_the_next_one() {
    for cut_after in 1..12 {
        let world = World::alarm_only();
        world.register("t1", "n1", true);
        world.kling_moves("t1", "n1", "succeed", START + 3, false, false);
        world.kling.set(world.data("t1", "succeed", START + 3, true));
        world.advance(1);
        // The alarm: poll (completes the result), deliver, publish; cut at each await.
        let finished = run_until_crash(world.coordinator().run_due(), cut_after);
        world.run_alarms_for(3600 * 1000);
        let record = world.record("t1");
        assert_eq!(record.data["task_status"], "succeed", "cut after {cut_after}");
        assert_eq!(record.delivery.state, DeliveryState::Delivered, "cut after {cut_after}");
        let ids = world.message_ids();
        assert!(!ids.is_empty(), "cut after {cut_after}: at least once");
        assert!(
            ids.iter().all(|id| id == "msg_t1_succeed"),
            "cut after {cut_after}: one id, no partial: {ids:?}"
        );
        assert!(ids.len() <= 2, "a duplicate only when cut between the POST and its record");
        let copy = world.edge_copy("t1").expect("copied to the edge in the end");
        assert_eq!(copy.task.data["delivery"]["state"], "delivered", "cut after {cut_after}");
        if finished.is_some() {
            assert_eq!(ids.len(), 1);
        }
    }
}

#[test]
fn a_succeed_without_audios_is_completed_before_it_is_forwarded() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.kling.set(world.data("t1", "succeed", START + 3, true));
    world.callback("n1", &world.data("t1", "succeed", START + 3, false)).unwrap();
    world.run_alarms_for(1_000);
    assert_eq!(world.kling.calls.get(), 1, "one poll, at once");
    assert_eq!(world.message_ids(), ["msg_t1_succeed"], "never a partial when Kling has the audios");
}

#[test]
fn a_succeed_kling_cannot_complete_goes_out_partial_then_complete() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.kling_moves("t1", "n1", "succeed", START + 3, false, false);
    world.run_alarms_for(1_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed_partial"]);
    assert!(world.edge_copy("t1").is_none(), "an incomplete result has no edge copy");
    world.kling.set(world.data("t1", "succeed", START + 4, true));
    world.run_alarms_for(2 * 60_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed_partial", "msg_t1_succeed"]);
    assert!(world.edge_copy("t1").is_some());
}

#[test]
fn forged_and_misdirected_callbacks_are_refused_and_change_nothing() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.register("t2", "n2", false);
    let before = world.store.all();
    let refused = world.callback("n2", &world.data("t1", "succeed", START + 9, true)).unwrap_err();
    assert_eq!((refused.status, refused.code), (403, 1103), "another task's nonce");
    let refused = world.callback("n1", &world.data("t9", "succeed", START + 9, true)).unwrap_err();
    assert_eq!(refused.status, 403, "a nonce bound to t1 cannot speak for t9");
    assert_eq!(
        world
            .coordinator()
            .report("n1", 99, &world.data("t1", "failed", START + 9, false), None)
            .unwrap_err()
            .status,
        403
    );
    assert_eq!(world.store.all(), before);
}

#[test]
fn a_task_id_kling_hands_out_again_replaces_the_old_task() {
    let world = World::new();
    world.register("t1", "old", false);
    world.kling_moves("t1", "old", "succeed", START + 3, true, false);
    world.run_alarms_for(1_000);
    assert!(world.edge_copy("t1").is_some());
    world.advance(60_000);
    let answer = world.register("t1", "new", false);
    assert_eq!(answer["task_status"], "submitted", "not merged into the old, finished task");
    assert!(world.runtime.logs.borrow().iter().any(|l| l["event"] == "task_id_reused"));
    world.run_alarms_for(1_000);
    assert!(world.edge_copy("t1").is_none(), "the old task's edge copy is removed");
    assert_eq!(world.callback("old", &world.data("t1", "failed", START + 9, false)).unwrap_err().status, 403);
    world.kling_moves("t1", "new", "succeed", START + 70_000, true, false);
    world.run_alarms_for(1_000);
    assert_eq!(world.edge_copy("t1").unwrap().task.data["updated_at"], START + 70_000);
    assert_eq!(world.coordinator().list(TENANT, V2A, 1, 30).unwrap().len(), 1);
}

#[test]
fn a_poll_answered_about_another_task_is_never_merged() {
    let world = World::new();
    world.register("t1", "n1", false);
    world.kling.set(world.data("other", "succeed", START + 3, true));
    *world.kling.answer_with.borrow_mut() = Some("other".into());
    world.run_alarms_for(31_000);
    assert_eq!(world.record("t1").data["task_status"], "submitted");
    assert!(world.runtime.logs.borrow().iter().any(|l| l["problem"] == "Kling answered about another task"));
}

#[test]
fn queries_find_by_task_or_external_id_refresh_only_when_stale_and_stay_in_their_tenant() {
    let world = World::new();
    world.register("t1", "n1", false);
    let by_external = block_on(world.coordinator().query(TENANT, V2A, "ext-t1")).unwrap().unwrap().data;
    assert_eq!(by_external["task_id"], "t1");
    assert_eq!(world.kling.calls.get(), 0, "fresh: no call to Kling");
    world.kling.set(world.data("t1", "processing", START + 2, false));
    world.advance(6_000);
    let refreshed = block_on(world.coordinator().query(TENANT, V2A, "t1")).unwrap().unwrap().data;
    assert_eq!((refreshed["task_status"].as_str(), world.kling.calls.get()), (Some("processing"), 1));
    for _ in 0..5 {
        block_on(world.coordinator().query(TENANT, V2A, "t1")).unwrap();
    }
    assert_eq!(world.kling.calls.get(), 1, "at most one refresh every few seconds");
    assert_eq!(block_on(world.coordinator().query("web/bob", V2A, "t1")).unwrap(), None);
    assert_eq!(
        block_on(world.coordinator().query(TENANT, V2A + 1, "t1")).unwrap(),
        None,
        "another endpoint's path"
    );
    assert_eq!(block_on(world.coordinator().query(TENANT, V2A, "nope")).unwrap(), None);
}

#[test]
fn the_list_pages_newest_first() {
    let world = World::new();
    for i in 0..5 {
        world.register(&format!("t{i}"), &format!("n{i}"), false);
        world.advance(1_000);
    }
    let ids = |page: u32, size: u32| -> Vec<String> {
        world
            .coordinator()
            .list(TENANT, V2A, page, size)
            .unwrap()
            .iter()
            .map(|t| t.data["task_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(1, 30), ["t4", "t3", "t2", "t1", "t0"]);
    assert_eq!(ids(2, 2), ["t2", "t1"]);
    assert_eq!(ids(3, 2), ["t0"]);
    assert!(ids(4, 2).is_empty());
    assert!(world.coordinator().list("web/bob", V2A, 1, 30).unwrap().is_empty());
}

#[test]
fn a_kv_outage_delays_the_edge_copy_only() {
    let world = World::new();
    world.register("t1", "n1", false);
    world.kv.broken.set(true);
    world.kling_moves("t1", "n1", "failed", START + 3, false, false);
    world.run_alarms_for(10_000);
    assert!(world.edge_copy("t1").is_none());
    assert_eq!(
        block_on(world.coordinator().query(TENANT, V2A, "t1")).unwrap().unwrap().data["task_status"],
        "failed"
    );
    world.kv.broken.set(false);
    world.run_alarms_for(30_000);
    assert!(world.edge_copy("t1").is_some(), "written on the next try");
}

#[test]
fn a_storage_outage_is_an_error_not_a_loss() {
    let world = World::new();
    world.register("t1", "n1", false);
    world.store.broken.set(true);
    let error = world.callback("n1", &world.data("t1", "failed", START + 3, false)).unwrap_err();
    assert_eq!(error.status, 503, "the callback is refused, so Kling (or the poller) reports it again");
    world.store.broken.set(false);
    assert_eq!(world.record("t1").data["task_status"], "submitted");
}

#[test]
fn running_tasks_and_held_slots_are_counted_for_max_jobs() {
    use crate::record::max_jobs::HoldOutcome;
    let world = World::new();
    world.register("t1", "n1", false);
    world.register("t2", "n2", false);
    let coordinator = world.coordinator();
    assert_eq!(coordinator.hold_job(TENANT, 2, "h1", 1_000).unwrap(), HoldOutcome::Full { counted: 2 });
    world.kling_moves("t1", "n1", "failed", START + 3, false, false);
    let coordinator = world.coordinator();
    assert_eq!(coordinator.hold_job(TENANT, 2, "h1", 1_000).unwrap(), HoldOutcome::Held);
    assert_eq!(coordinator.hold_job(TENANT, 2, "h2", 1_000).unwrap(), HoldOutcome::Full { counted: 2 });
    coordinator.release_job("h1").unwrap();
    assert_eq!(coordinator.hold_job(TENANT, 2, "h2", 1_000).unwrap(), HoldOutcome::Held);
}

#[test]
fn finished_tasks_are_forgotten_after_retention() {
    let world = World::alarm_only();
    world.register("t1", "n1", false);
    world.kling_moves("t1", "n1", "failed", START + 3, false, false);
    world.run_alarms_for(1_000);
    world.register("t2", "n2", false);
    world.advance(31 * 24 * 3600 * 1000);
    world.kling_moves("t2", "n2", "failed", START + 3, false, false);
    world.run_alarms_for(1_000);
    use crate::ports::TaskStore;
    assert!(world.store.load("t1").unwrap().is_none());
    assert!(
        world.store.load("t2").unwrap().is_some(),
        "t2 finished just now: retention counts from its last news"
    );
}

// --- result copies ---------------------------------------------------------------------

const MP3: &str = "https://kling.example/a.mp3";
const MP4: &str = "https://kling.example/v.mp4";

/// A world whose deployment has a bucket, with Kling's files served (unless `kling_down`).
fn world_with_bucket(kling_down: bool) -> World {
    with_bucket(World::new(), kling_down)
}

fn with_bucket(mut world: World, kling_down: bool) -> World {
    world.settings.copies = Some(crate::record::copies::CopySettings::default());
    if !kling_down {
        world.bucket.sources.borrow_mut().insert(MP3.into(), b"ID3 an mp3".to_vec());
        world.bucket.sources.borrow_mut().insert(MP4.into(), b"an mp4 with its new sound".to_vec());
    }
    world
}

/// Polls a flow at most `polls` times: whether it ended.
fn polled_to_its_end<F: std::future::Future>(mut flow: std::pin::Pin<&mut F>, polls: usize) -> bool {
    (0..polls).any(|_| poll_once(flow.as_mut()).is_some())
}

fn finish(world: &World) {
    world.register("t1", "n1", true);
    world.kling_moves("t1", "n1", "succeed", START + 3, true, false);
}

/// The `copies` entry of a file in an answer.
fn copy_entry<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["copies"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .expect("the file's entry")
}

#[test]
fn the_webhook_links_the_copies_from_the_start_and_the_edge_copy_waits_for_them() {
    let world = world_with_bucket(false);
    finish(&world);
    world.run_alarms_for(1_000);
    let objects = world.bucket.objects.borrow().clone();
    assert_eq!(
        objects[&format!("results/{SHARD}/t1/audio-0.mp3")],
        ("audio/mpeg".to_owned(), b"ID3 an mp3".to_vec())
    );
    assert_eq!(objects[&format!("results/{SHARD}/t1/video-0.mp4")].0, "video/mp4");

    // The webhook went out beside the copies, not after them: it links them anyway (the
    // link serves Kling's file until the copy is made).
    let delivery = &world.receiver.deliveries.borrow()[0];
    let body: Value = serde_json::from_slice(&delivery.body).unwrap();
    let link = body["task_result"]["audios"][0]["copy_url_mp3"].as_str().expect("the webhook links the copy");
    assert!(
        link.starts_with(&format!("https://edge.example.com/v1/results/{SHARD}/t1/audio-0.mp3?expires=")),
        "{link}"
    );
    assert!(body["task_result"]["videos"][0]["copy_url"].as_str().is_some());
    assert_eq!(body["task_result"]["audios"][0]["url_mp3"], MP3, "Kling's link is kept");
    assert_eq!(copy_entry(&body, "audio-0.mp3")["state"], "pending");
    assert_eq!(
        copy_entry(&body, "audio-0.mp3")["note"],
        "being copied; until it is, its link serves Kling's file"
    );

    let copy = world.edge_copy("t1").unwrap();
    assert_eq!(
        copy_entry(&render(&copy.task, None), "audio-0.mp3")["state"],
        "copied",
        "the edge copy waited"
    );
    assert!(
        copy.task.data["task_result"]["audios"][0].get("copy_url_mp3").is_none(),
        "links are minted per answer"
    );
    assert_eq!(world.kv.writes.get(), 1, "still one KV write for the whole life");
    world.run_alarms_for(3 * 24 * 3600 * 1000);
    assert_eq!((world.bucket.copies.get(), world.kv.writes.get()), (2, 1), "and nothing after");
    assert_eq!(world.receiver.deliveries.borrow().len(), 1, "one webhook");
}

#[test]
fn a_copy_that_fails_is_retried_and_the_edge_copy_follows_it() {
    let world = world_with_bucket(true);
    finish(&world);
    world.run_alarms_for(1_000);
    let answer = render(&world.record("t1").answer(), None);
    let note = copy_entry(&answer, "audio-0.mp3")["note"].as_str().unwrap().to_owned();
    assert!(note.contains("not copied yet (Kling's server answered 503)"), "{note}");
    assert!(note.ends_with("until it is, its link serves Kling's file"), "{note}");
    assert_eq!(
        copy_entry(&render(&world.edge_copy("t1").unwrap().task, None), "audio-0.mp3")["state"],
        "pending"
    );

    world.bucket.sources.borrow_mut().insert(MP3.into(), b"ID3 an mp3".to_vec());
    world.bucket.sources.borrow_mut().insert(MP4.into(), b"an mp4".to_vec());
    world.run_alarms_for(10_000);
    assert_eq!(world.bucket.copies.get(), 4, "each tried again after the schedule's first delay (5 s)");
    assert_eq!(
        copy_entry(&render(&world.edge_copy("t1").unwrap().task, None), "audio-0.mp3")["state"],
        "copied"
    );
    // The webhook went out with the callback, the first copies a moment later: the files'
    // retries fall due a second apart, and the edge copy follows each landing.
    assert_eq!(world.kv.writes.get(), 3, "the edge copy is written again as the copies land");
    assert_eq!(world.receiver.deliveries.borrow().len(), 1, "the webhook is not sent again");
}

#[test]
fn a_copy_cut_off_at_any_await_is_made_whole_by_the_next_alarm() {
    for cut_after in 1..14 {
        let world = world_with_bucket(false);
        finish(&world);
        world.advance(1);
        let _ = run_until_crash(world.coordinator().run_due(), cut_after);
        world.run_alarms_for(3600 * 1000);
        let record = world.record("t1");
        assert!(
            record.copies.iter().all(|copy| copy.state == crate::record::copies::CopyState::Copied),
            "cut after {cut_after}"
        );
        assert_eq!(world.bucket.objects.borrow().len(), 2, "cut after {cut_after}");
        assert!(world.bucket.copies.get() <= 3, "cut after {cut_after}: at most one repeat");
        assert_eq!(
            copy_entry(&render(&world.edge_copy("t1").unwrap().task, None), "video-0.mp4")["state"],
            "copied"
        );
    }
}

#[test]
fn a_file_over_the_cap_is_left_as_klings_link() {
    let mut world = world_with_bucket(false);
    world.settings.copies = Some(crate::record::copies::CopySettings { max_bytes: 12, ..Default::default() });
    finish(&world);
    world.run_alarms_for(1_000);
    assert_eq!(world.bucket.objects.borrow().len(), 1, "the MP3 only");
    let copy = world.edge_copy("t1").unwrap();
    let rendered = render(&copy.task, None);
    let file = copy_entry(&rendered, "video-0.mp4");
    assert_eq!(file["state"], "too_large");
    assert!(file["note"].as_str().unwrap().contains("over this deployment's cap"));
}

#[test]
fn without_a_bucket_nothing_is_copied_and_answers_are_as_before() {
    let world = World::new();
    finish(&world);
    world.run_alarms_for(1_000);
    assert_eq!(world.bucket.copies.get(), 0);
    assert!(world.edge_copy("t1").unwrap().task.copies.is_empty());
}

#[test]
fn copies_are_kept_for_their_retention_and_forgotten_with_the_task() {
    let mut world = with_bucket(World::alarm_only(), false);
    world.settings.copies = Some(crate::record::copies::CopySettings {
        retention_ms: crate::record::copies::days_ms(60),
        ..Default::default()
    });
    finish(&world);
    world.run_alarms_for(1_000);
    world.register("t2", "n2", false);
    world.advance(45 * 24 * 3600 * 1000);
    world.kling_moves("t2", "n2", "failed", START + 3, false, false);
    world.run_alarms_for(1_000);
    assert!(world.record("t1").copies[0].expires_at.is_some(), "past Kling's 30 days, the copy is kept");
    world.advance(16 * 24 * 3600 * 1000);
    // The sweep runs with the coordinator's next alarm.
    world.register("t3", "n3", false);
    world.kling_moves("t3", "n3", "failed", START + 3, false, false);
    world.run_alarms_for(1_000);
    use crate::ports::TaskStore;
    assert!(world.store.load("t1").unwrap().is_none(), "forgotten after 60 days");
    assert!(world.bucket.objects.borrow().is_empty(), "with its copies");
}

#[test]
fn a_forged_callback_that_beats_the_create_leaves_nothing_behind() {
    let world = world_with_bucket(false);
    world.coordinator().learn_tenant(Some(TENANT)).unwrap();
    // A leaked callback URL reports a task of the forger's, with files, before the create's
    // answer is recorded: nothing is copied or published for a task no create recorded.
    let forged = world.data("forged-1", "succeed", START + 5, true);
    world.callback("n1", &forged).unwrap();
    world.run_alarms_for(60_000);
    assert!(world.bucket.objects.borrow().is_empty(), "nothing copied for it");
    assert!(world.edge_copy("forged-1").is_none(), "nothing published for it");
    // The create's answer binds its capability: the forged task is dropped and forgotten.
    world.register("t1", "n1", false);
    assert_eq!(block_on(world.coordinator().query(TENANT, V2A, "forged-1")).unwrap(), None);
    world.run_alarms_for(1_000);
    use crate::ports::TaskStore;
    assert!(world.store.load("forged-1").unwrap().is_none(), "forgotten");
    let listed = world.coordinator().list(TENANT, V2A, 1, 30).unwrap();
    assert_eq!(listed.iter().map(|task| task.data["task_id"].clone()).collect::<Vec<_>>(), [json!("t1")]);
    // The real task's callbacks still land.
    world.kling_moves("t1", "n1", "succeed", START + 9, true, false);
    world.run_alarms_for(1_000);
    assert!(world.edge_copy("t1").is_some());
    assert!(!world.bucket.objects.borrow().keys().any(|key| key.contains("forged-1")));
}

#[test]
fn a_dropped_task_that_was_published_has_its_edge_copy_and_copies_removed() {
    use crate::ports::TaskStore;
    let world = world_with_bucket(false);
    world.coordinator().learn_tenant(Some(TENANT)).unwrap();
    world.callback("n1", &world.data("forged-1", "succeed", START + 5, true)).unwrap();
    // Claimed by a read (as a task whose create's record was lost would be), then published.
    block_on(world.coordinator().query(TENANT, V2A, "forged-1")).unwrap().unwrap();
    world.run_alarms_for(60_000);
    assert!(world.edge_copy("forged-1").is_some());
    assert!(world.bucket.objects.borrow().keys().any(|key| key.contains("forged-1")));
    world.register("t1", "n1", false);
    world.run_alarms_for(1_000);
    assert!(world.store.load("forged-1").unwrap().is_none());
    assert!(world.edge_copy("forged-1").is_none(), "its edge copy is removed");
    assert!(!world.bucket.objects.borrow().keys().any(|key| key.contains("forged-1")), "and its copies");
}

#[test]
fn a_dropped_task_whose_edge_copy_cannot_be_removed_waits_and_never_jams_the_alarm() {
    use crate::ports::TaskStore;
    let world = World::new();
    world.coordinator().learn_tenant(Some(TENANT)).unwrap();
    world.callback("n1", &world.data("forged-1", "succeed", START + 5, true)).unwrap();
    world.register("t1", "n1", false);
    world.kv.broken.set(true);
    block_on(world.coordinator().run_due()).unwrap();
    let kept = world.record("forged-1");
    assert!(kept.dropped);
    assert_eq!(
        kept.due_at(),
        Some(world.now() + crate::record::edge_copy::RETRY_MS),
        "it waits, it does not spin"
    );
    // Meanwhile the real task's work goes on; once KV is back, the dropped one goes.
    world.kling_moves("t1", "n1", "failed", START + 9, false, false);
    world.kv.broken.set(false);
    world.run_alarms_for(60_000);
    assert!(world.store.load("forged-1").unwrap().is_none());
    assert!(world.edge_copy("t1").is_some());
}

#[test]
fn an_unclaimed_task_is_listed_but_claimed_only_by_its_own_task_id_and_never_dated_ahead() {
    let world = World::new();
    world.coordinator().learn_tenant(Some(TENANT)).unwrap();
    // A callback's alone, dated far ahead (it would top every list and never expire).
    let mut report = world.data("lone-1", "succeed", START + 5, true);
    report["created_at"] = json!(START + 10 * 365 * 24 * 3_600_000);
    world.callback("n1", &report).unwrap();
    assert!(world.record("lone-1").created_at <= world.now());
    let listed = world.coordinator().list(TENANT, V2A, 1, 30).unwrap();
    assert_eq!(listed.len(), 1, "listed, so its tenant can find it");
    assert!(!world.record("lone-1").claimed(), "a list does not claim it");
    assert_eq!(
        block_on(world.coordinator().query(TENANT, V2A, "ext-lone-1")).unwrap(),
        None,
        "nor its external id"
    );
    assert!(block_on(world.coordinator().query(TENANT, V2A, "lone-1")).unwrap().is_some());
    assert!(world.record("lone-1").claimed(), "its task id does");
}

#[test]
fn a_receiver_that_never_answers_holds_back_only_its_own_webhooks() {
    use super::coordinator::PER_RECEIVER;
    let world = World::alarm_only();
    let slow = "https://slow.example.com/hooks/kling";
    // The slow receiver's tasks come first in the alarm's order.
    for i in 0..12 {
        world.register_with(&format!("a-slow-{i}"), &format!("ns{i}"), Some(slow));
        world.kling_moves(&format!("a-slow-{i}"), &format!("ns{i}"), "succeed", START + 3, true, false);
        world.register_with(&format!("b-fast-{i}"), &format!("nf{i}"), Some(HOOK));
        world.kling_moves(&format!("b-fast-{i}"), &format!("nf{i}"), "succeed", START + 3, true, false);
    }
    world.receiver.stalled.borrow_mut().push("https://slow.example.com/".into());
    let coordinator = world.coordinator();
    assert!(
        run_until_crash(coordinator.run_due(), 10_000).is_none(),
        "the alarm still waits on the slow receiver"
    );
    let delivered = world.receiver.deliveries.borrow().iter().filter(|d| d.url == HOOK).count();
    assert_eq!(delivered, 12, "every webhook of the other receiver went out meanwhile");
    let started_slow = world.receiver.started.borrow().iter().filter(|url| url.as_str() == slow).count();
    assert_eq!(started_slow, PER_RECEIVER, "the slow receiver holds its lanes, no more");
    // Cut off there (the runtime's deadline on each POST ends it in the Worker), the slow
    // receiver's webhooks are still due, and go out once it answers.
    world.receiver.stalled.borrow_mut().clear();
    world.run_alarms_for(60_000);
    let slow_delivered = world.receiver.deliveries.borrow().iter().filter(|d| d.url == slow).count();
    assert_eq!(slow_delivered, 12);
}

#[test]
fn a_due_poll_is_not_queued_behind_a_backlog_of_webhooks() {
    use super::coordinator::DUE_BATCH;
    let world = World::new();
    // More finished tasks than one alarm takes, each with its webhook due.
    for i in 0..DUE_BATCH + 10 {
        world.register(&format!("a-done-{i}"), &format!("nd{i}"), true);
        world.kling_moves(&format!("a-done-{i}"), &format!("nd{i}"), "succeed", START + 3, true, false);
    }
    world.receiver.down.set(true);
    block_on(world.coordinator().run_due()).unwrap();
    // A task Kling says nothing about: its poll falls due behind the webhooks' retries.
    world.register("z-quiet", "nq", false);
    world.advance(10 * 60 * 1000);
    let polls_before = world.kling.calls.get();
    block_on(world.coordinator().run_due()).unwrap();
    assert!(
        world.kling.calls.get() > polls_before,
        "the quiet task was polled in the first alarm after its poll fell due"
    );
}

#[test]
fn copies_that_never_end_hold_back_no_webhook_not_even_their_own() {
    use super::coordinator::COPY_LANES;
    let world = with_bucket(World::alarm_only(), false);
    // Six tasks whose downloads stall come first in the alarm's order, then four quick ones.
    for i in 0..6 {
        world.bucket.stalled.borrow_mut().push(format!("/a-stalled-{i}/"));
        world.register(&format!("a-stalled-{i}"), &format!("ns{i}"), true);
        world.kling_moves(&format!("a-stalled-{i}"), &format!("ns{i}"), "succeed", START + 3, true, false);
    }
    for i in 0..4 {
        world.register(&format!("b-quick-{i}"), &format!("nq{i}"), true);
        world.kling_moves(&format!("b-quick-{i}"), &format!("nq{i}"), "succeed", START + 3, true, false);
    }
    world.runtime.manual_clock.set(true);
    let coordinator = world.coordinator();
    let mut alarm = Box::pin(coordinator.run_due());
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none(), "the alarm still waits on the stalled copies");
    }
    assert_eq!(
        world.receiver.deliveries.borrow().len(),
        10,
        "every webhook went out, the stalled tasks' too"
    );
    assert_eq!(world.bucket.copies.get() as usize, COPY_LANES, "the copies hold their lanes, no more");

    // A task that finishes while the copies hang gets its webhook from the same alarm.
    world.register("c-later", "nl", true);
    world.kling_moves("c-later", "nl", "succeed", START + 4, true, false);
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none());
    }
    assert_eq!(world.receiver.deliveries.borrow().len(), 10, "not before the alarm looks again");
    world.advance(super::coordinator::REFILL_TICK_MS);
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none());
    }
    let later = world
        .receiver
        .deliveries
        .borrow()
        .iter()
        .filter(|d| d.body.windows(7).any(|w| w == b"c-later"))
        .count();
    assert_eq!(later, 1, "the alarm looked again for due webhooks while the copies ran");
    let body: Value = serde_json::from_slice(&world.receiver.deliveries.borrow()[0].body).unwrap();
    assert!(body["task_result"]["audios"][0]["copy_url_mp3"].is_string(), "a stalled copy is linked too");
    // Its link serves Kling's file meanwhile.
    assert_eq!(coordinator.copy_source("a-stalled-0", "audio-0.mp3").unwrap().as_deref(), Some(MP3));
    assert_eq!(coordinator.copy_source("a-stalled-0", "audio-9.mp3").unwrap(), None);
    assert_eq!(coordinator.copy_source("z-unknown", "audio-0.mp3").unwrap(), None);

    // Cut off there (the copy's own deadline ends it in the Worker), every copy is made by
    // later alarms once the downloads answer, and no webhook is sent twice.
    drop(alarm);
    world.runtime.manual_clock.set(false);
    world.bucket.stalled.borrow_mut().clear();
    world.run_alarms_for(60_000);
    assert_eq!(world.bucket.objects.borrow().len(), 22, "two files of each of the eleven tasks");
    assert_eq!(world.receiver.deliveries.borrow().len(), 11);
    assert_eq!(
        world.coordinator().copy_source("a-stalled-0", "audio-0.mp3").unwrap(),
        None,
        "the copy itself now"
    );
}

#[test]
fn a_backlog_of_copies_never_hides_a_newly_due_webhook() {
    use super::coordinator::DUE_BATCH;
    let world = world_with_bucket(false);
    // More finished tasks than one alarm takes, all with copies due (and stalled), no webhook.
    for i in 0..DUE_BATCH + 20 {
        world.bucket.stalled.borrow_mut().push(format!("/a-backlog-{i}/"));
        world.register(&format!("a-backlog-{i}"), &format!("nb{i}"), false);
        world.kling_moves(&format!("a-backlog-{i}"), &format!("nb{i}"), "succeed", START + 3, true, false);
    }
    world.advance(1_000);
    world.register("z-hook", "nz", true);
    world.kling_moves("z-hook", "nz", "succeed", START + 5, true, false);
    world.runtime.manual_clock.set(true);
    let coordinator = world.coordinator();
    let mut alarm = Box::pin(coordinator.run_due());
    for _ in 0..50 {
        assert!(poll_once(alarm.as_mut()).is_none(), "the copies hang");
    }
    assert_eq!(
        world.message_ids(),
        ["msg_z-hook_succeed"],
        "its webhook went out in the first look, at once"
    );
}

#[test]
fn a_copy_cut_off_costs_one_edge_copy_write_not_two() {
    let world = world_with_bucket(false);
    // The video is copied at once; the sound's copy hangs, and its alarm is cut off.
    world.bucket.stalled.borrow_mut().push("/t1/audio-0".into());
    finish(&world);
    world.runtime.manual_clock.set(true);
    let coordinator = world.coordinator();
    let mut alarm = Box::pin(coordinator.run_due());
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none(), "the copy hangs");
    }
    drop(alarm);
    world.runtime.manual_clock.set(false);
    assert_eq!(world.message_ids(), ["msg_t1_succeed"], "the webhook did not wait");
    // The next alarm, before the copy's next attempt: the copy has no outcome yet.
    block_on(world.coordinator().run_due()).unwrap();
    assert!(world.edge_copy("t1").is_none(), "the edge copy waits for the copies' outcome");
    world.bucket.stalled.borrow_mut().clear();
    world.run_alarms_for(60_000);
    let shown = world.edge_copy("t1").expect("written once the copies are made");
    assert!(shown.task.copies.iter().all(|copy| copy.state == crate::record::copies::CopyState::Copied));
    assert_eq!(world.kv.writes.get(), 1, "one write, with the copies made");
}

#[test]
fn past_its_span_an_alarm_draining_copies_still_delivers_what_falls_due() {
    use super::coordinator::{ALARM_SPAN_MS, REFILL_TICK_MS};
    let world = world_with_bucket(false);
    for i in 0..3 {
        world.bucket.stalled.borrow_mut().push(format!("/a-stalled-{i}/"));
        world.register(&format!("a-stalled-{i}"), &format!("ns{i}"), false);
        world.kling_moves(&format!("a-stalled-{i}"), &format!("ns{i}"), "succeed", START + 3, true, false);
    }
    // A task Kling is quiet about: its poll falls due while the copies hang.
    world.register("q-quiet", "nq", false);
    let poll_at = world.record("q-quiet").next_poll_at.expect("a poll is booked");
    world.runtime.manual_clock.set(true);
    let coordinator = world.coordinator();
    let mut alarm = Box::pin(coordinator.run_due());
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none(), "the copies hang");
    }
    let polls = world.kling.calls.get();
    world.advance(poll_at.saturating_sub(world.now()) + REFILL_TICK_MS);
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none());
    }
    assert_eq!(world.kling.calls.get(), polls + 1, "the poll that fell due during the alarm was made");

    // Past the span, a task that finishes still gets its webhook while the copies drain.
    world.advance(ALARM_SPAN_MS);
    world.register("z-late", "nz", true);
    world.kling_moves("z-late", "nz", "succeed", START + 5, true, false);
    world.advance(REFILL_TICK_MS);
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none());
    }
    assert_eq!(world.message_ids(), ["msg_z-late_succeed"]);
    world.bucket.stalled.borrow_mut().clear();
    let ended = polled_to_its_end(alarm.as_mut(), 200);
    assert!(ended, "the alarm ends once its copies do, without waiting for a tick");
    {
        let objects = world.bucket.objects.borrow();
        assert_eq!(objects.len(), 3, "the files in flight were made, and no other file was started");
        assert!(!objects.keys().any(|key| key.contains("z-late")));
    }
    drop(alarm);
    world.runtime.manual_clock.set(false);
    world.run_alarms_for(60_000);
    assert_eq!(world.bucket.objects.borrow().len(), 8, "the next alarms made the rest");
}

#[test]
fn a_step_the_steps_index_misses_is_found_and_its_time_saved() {
    let world = World::new();
    world.register("t1", "n1", true);
    world.kling_moves("t1", "n1", "succeed", START + 3, true, false);
    world.store.unindexed_steps.borrow_mut().push("t1".into());
    block_on(world.coordinator().run_due()).unwrap();
    assert_eq!(world.message_ids(), ["msg_t1_succeed"], "found by its due time");
}

#[test]
fn a_copy_made_for_a_task_forgotten_meanwhile_is_removed() {
    use crate::ports::TaskStore;
    let world = world_with_bucket(false);
    world.bucket.stalled.borrow_mut().push("/t1/".into());
    finish(&world);
    let coordinator = world.coordinator();
    let mut alarm = Box::pin(coordinator.run_due());
    for _ in 0..30 {
        assert!(poll_once(alarm.as_mut()).is_none(), "the copy hangs");
    }
    world.store.delete("t1").unwrap();
    world.bucket.stalled.borrow_mut().clear();
    let ended = polled_to_its_end(alarm.as_mut(), 100);
    assert!(ended, "the copy in flight ended");
    assert_eq!(world.bucket.copies.get(), 1, "and it was made, then removed; nothing more was copied");
    assert!(world.bucket.objects.borrow().is_empty(), "{:?}", world.bucket.objects.borrow().keys());
}

#[test]
fn copies_queued_before_the_bucket_was_removed_end_and_the_alarm_settles() {
    let mut world = world_with_bucket(false);
    finish(&world);
    // The operator removes the bucket before any copy was made.
    world.settings.copies = None;
    world.run_alarms_for(60_000);
    let record = world.record("t1");
    assert!(record.copies.iter().all(|copy| copy.state == crate::record::copies::CopyState::Failed));
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    assert!(world.edge_copy("t1").is_some(), "its edge copy is written");
    assert_eq!(world.coordinator().next_due().unwrap(), None, "nothing is left due: no alarm spins");
}

/// Kling's `succeed` callback for the task, recorded: the prompt step it was promised, if any
/// (the caller makes it, or plays an edge that never does).
fn succeed_reported(world: &World, task_id: &str, nonce: &str) -> Option<StepNow> {
    let data = world.data(task_id, "succeed", START + 3, true);
    world.kling.set(data.clone());
    world.coordinator().report(nonce, V2A, &data, None).unwrap()
}

#[test]
fn a_callback_delivers_its_webhook_by_its_prompt_step_with_no_alarm() {
    let world = World::new();
    world.register("t1", "n1", true);
    let step = succeed_reported(&world, "t1", "n1").expect("a prompt step is promised");
    assert_eq!(step, StepNow { task_id: "t1".into() });
    let held = world.coordinator().next_due().unwrap().expect("the alarm keeps the step");
    assert_eq!(held, world.now() + super::prompt::PROMPT_GRACE_MS, "after the grace only");
    block_on(world.coordinator().step_now("t1")).unwrap();
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    assert_eq!(world.kv.writes.get(), 1, "and its edge copy");
    assert_eq!(world.coordinator().next_due().unwrap(), None, "nothing is left for the alarm");
    assert_eq!(world.prompts.promised(Some("https://app.example.com"), world.now()), 0, "room again");
    block_on(world.coordinator().step_now("t1")).unwrap();
    assert_eq!(world.message_ids().len(), 1, "a prompt step asked again finds nothing to do");
}

#[test]
fn a_prompt_step_that_never_comes_is_made_by_the_alarm_after_its_grace() {
    let world = World::new();
    world.register("t1", "n1", true);
    assert!(succeed_reported(&world, "t1", "n1").is_some(), "promised, and the edge never asks");
    block_on(world.coordinator().run_due()).unwrap();
    assert!(world.message_ids().is_empty(), "the alarm leaves it to the prompt step meanwhile");
    world.run_alarms_for(super::prompt::PROMPT_GRACE_MS);
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);
    assert_eq!(world.kv.writes.get(), 1);
}

#[test]
fn a_prompt_step_cut_off_at_any_await_is_made_whole_by_the_alarm() {
    for cut_after in 1..8 {
        let world = World::new();
        world.register("t1", "n1", true);
        succeed_reported(&world, "t1", "n1").expect("promised");
        let finished = run_until_crash(world.coordinator().step_now("t1"), cut_after);
        world.run_alarms_for(3600 * 1000);
        let record = world.record("t1");
        assert_eq!(record.delivery.state, DeliveryState::Delivered, "cut after {cut_after}");
        let ids = world.message_ids();
        assert!(ids.iter().all(|id| id == "msg_t1_succeed"), "cut after {cut_after}: {ids:?}");
        assert!(!ids.is_empty() && ids.len() <= 2, "cut after {cut_after}: at least once, {ids:?}");
        if finished.is_some() {
            assert_eq!(ids.len(), 1, "cut after {cut_after}");
        }
        let copy = world.edge_copy("t1").expect("copied to the edge in the end");
        assert_eq!(copy.task.data["delivery"]["state"], "delivered", "cut after {cut_after}");
    }
}

#[test]
fn a_prompt_step_and_the_alarm_that_cross_post_one_webhook_at_a_time() {
    let world = World::new();
    world.register("t1", "n1", true);
    succeed_reported(&world, "t1", "n1").expect("promised");
    // The prompt step comes late: its grace is over and the alarm is posting the webhook to a
    // receiver that does not answer.
    world.advance(super::prompt::PROMPT_GRACE_MS);
    world.receiver.stalled.borrow_mut().push("https://app.example.com/".into());
    let coordinator = world.coordinator();
    let mut alarm = Box::pin(coordinator.run_due());
    for _ in 0..10 {
        assert!(poll_once(alarm.as_mut()).is_none(), "the alarm waits on the receiver");
    }
    assert_eq!(world.receiver.started.borrow().len(), 1);
    block_on(coordinator.step_now("t1")).unwrap();
    assert_eq!(world.receiver.started.borrow().len(), 1, "the prompt step does not post it too");
    // The POST's deadline ends the alarm; the receiver answers again, and the next step
    // delivers it.
    drop(alarm);
    world.receiver.stalled.borrow_mut().clear();
    world.run_alarms_for(60_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed"]);

    // And the other way: the alarm finds the prompt step in flight and leaves it.
    world.register("t2", "n2", true);
    succeed_reported(&world, "t2", "n2").expect("promised");
    world.receiver.stalled.borrow_mut().push("https://app.example.com/".into());
    let mut prompt = Box::pin(coordinator.step_now("t2"));
    for _ in 0..10 {
        assert!(poll_once(prompt.as_mut()).is_none());
    }
    world.advance(super::prompt::PROMPT_GRACE_MS);
    block_on(coordinator.run_due()).unwrap();
    assert_eq!(world.receiver.started.borrow().len(), 3, "the alarm did not post t2's too");
    drop(prompt);
    world.receiver.stalled.borrow_mut().clear();
    world.run_alarms_for(60_000);
    assert_eq!(world.message_ids(), ["msg_t1_succeed", "msg_t2_succeed"]);
}

#[test]
fn a_burst_past_a_receivers_prompt_steps_is_left_to_the_alarm_and_a_slow_one_holds_only_its_own() {
    use super::prompt::PROMPT_PER_RECEIVER;
    let world = World::new();
    let slow = "https://slow.example.com/hooks/kling";
    let burst = PROMPT_PER_RECEIVER + 4;
    let mut promised = Vec::new();
    for i in 0..burst {
        world.register_with(&format!("s{i}"), &format!("ns{i}"), Some(slow));
        promised.extend(succeed_reported(&world, &format!("s{i}"), &format!("ns{i}")));
    }
    assert_eq!(promised.len(), PROMPT_PER_RECEIVER, "so many at once for one receiver");
    let coordinator = world.coordinator();
    let mut hanging: Vec<_> =
        promised.iter().map(|step| Box::pin(coordinator.step_now(&step.task_id))).collect();
    for step in &mut hanging {
        assert!(poll_once(step.as_mut()).is_none(), "the slow receiver has not answered yet");
    }
    assert_eq!(world.receiver.started.borrow().len(), PROMPT_PER_RECEIVER);
    // Another receiver's callbacks meanwhile: promised and made at once.
    for i in 0..3 {
        world.register(&format!("f{i}"), &format!("nf{i}"), true);
        let step = succeed_reported(&world, &format!("f{i}"), &format!("nf{i}")).expect("room for it");
        block_on(coordinator.step_now(&step.task_id)).unwrap();
    }
    assert_eq!(world.message_ids(), ["msg_f0_succeed", "msg_f1_succeed", "msg_f2_succeed"]);
    // The slow receiver answers; the burst's rest is the alarm's at once (no grace: nothing
    // was promised for it).
    for step in hanging {
        block_on(step).unwrap();
    }
    assert_eq!(world.message_ids().len(), 3 + PROMPT_PER_RECEIVER);
    block_on(coordinator.run_due()).unwrap();
    assert_eq!(world.message_ids().len(), 3 + burst, "the alarm sent the rest in its first run");
}
