//! The request path's flows against in-memory ports, with the real coordinator flows behind
//! them: refusals that cost nothing, Kling refusing, a callback beating the create's
//! record, finished tasks served from the edge copy, a coordinator that is down, and each
//! flow cut off at every `await`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{json, Value};

use super::callback::Taken;
use super::coordinator::{LinkSettings, Settings};
use super::create::Created;
use super::edge::{Answer, Edge, EdgePorts};
use super::prompt::PromptSteps;
use crate::api::surfaces::{Surface, ADD_SOUND, I2V, T2A, T2V, V2A, V2A_SIMPLE};
use crate::api::VIDEO_TO_AUDIO;
use crate::auth::{Client, ClientKind};
use crate::config::Config;
use crate::error::ApiError;
use crate::kling::task;
use crate::links::result_links::LinkKey;
use crate::links::webhook::SignatureHeaders;
use crate::ports::{KlingReply, Limit, TaskStore};
use crate::probe::video_check::Outcome;
use crate::record::max_jobs::{self, Holds};
use crate::testing::{
    block_on, config, run_together, run_until_crash, CreateScript, MemoryBucket, MemoryCoordinators,
    MemoryGates, MemoryKv, MemoryLimiter, MemoryStore, Receiver, ScriptedKling, ScriptedProbe, TestRuntime,
};
use crate::validate::Page;

const START: u64 = 1_800_000_000_000;
const ORIGIN: &str = "https://edge.example.com";
const VIDEO: &str = "https://cdn.example.com/clips/beach.mp4";

/// A deployment in memory: its settings and every port of the request path and of the
/// coordinators behind it.
struct World {
    config: Config,
    kling: ScriptedKling,
    receiver: Receiver,
    kv: MemoryKv,
    bucket: MemoryBucket,
    runtime: Rc<TestRuntime>,
    settings: Settings,
    gates: MemoryGates,
    stores: RefCell<BTreeMap<String, Rc<MemoryStore>>>,
    prompts: RefCell<BTreeMap<String, Rc<PromptSteps>>>,
    coordinators_down: Cell<bool>,
    coordinator_calls: RefCell<Vec<String>>,
    limiter: MemoryLimiter,
    probe: ScriptedProbe,
}

/// The request path's ports in memory.
struct TestPorts<'a>(std::marker::PhantomData<&'a ()>);

impl<'a> EdgePorts for TestPorts<'a> {
    type Kling = ScriptedKling;
    type Coordinators = MemoryCoordinators<'a>;
    type Gates = MemoryGates;
    type Limiter = MemoryLimiter;
    type Probe = ScriptedProbe;
    type EdgeCopies = MemoryKv;
    type Assets = MemoryBucket;
    type Runtime = TestRuntime;
}

type TestEdge<'a> = Edge<'a, TestPorts<'a>>;

impl World {
    fn new() -> World {
        World::with(&[])
    }

    fn with(settings: &[(&str, &str)]) -> World {
        let config = config(settings);
        let runtime = Rc::new(TestRuntime::default());
        let world = World {
            gates: MemoryGates::new(runtime.clone(), &config),
            settings: Settings {
                poll: config.kling_poll.clone(),
                forward: config.forward_retry.clone(),
                webhook_key: config.proxy_webhook_key.clone(),
                copies: None,
                links: LinkSettings {
                    key: LinkKey::derive("sk-example", ""),
                    ttl_secs: 3600,
                    public_base_url: None,
                },
                send_deadline_ms: crate::flows::gate::coordinator_send_deadline_ms(&config),
                accounts: config.accounts.all().iter().map(|account| account.name.clone()).collect(),
            },
            config,
            kling: ScriptedKling::default(),
            receiver: Receiver::default(),
            kv: MemoryKv::default(),
            bucket: MemoryBucket::default(),
            runtime,
            stores: RefCell::default(),
            prompts: RefCell::default(),
            coordinators_down: Cell::new(false),
            coordinator_calls: RefCell::default(),
            limiter: MemoryLimiter::default(),
            probe: ScriptedProbe::default(),
        };
        world.runtime.now.set(START);
        world
    }

    fn coordinators(&self) -> MemoryCoordinators<'_> {
        MemoryCoordinators {
            kling: &self.kling,
            receiver: &self.receiver,
            kv: &self.kv,
            bucket: &self.bucket,
            runtime: &self.runtime,
            settings: &self.settings,
            stores: &self.stores,
            prompts: &self.prompts,
            down: &self.coordinators_down,
            calls: &self.coordinator_calls,
            gates: &self.gates,
        }
    }

    /// Runs `flow` with the request path's ports.
    fn edge<O>(&self, flow: impl FnOnce(&TestEdge<'_>) -> O) -> O {
        let coordinators = self.coordinators();
        let edge = Edge {
            config: &self.config,
            origin: ORIGIN,
            kling: &self.kling,
            coordinators: &coordinators,
            gates: &self.gates,
            limiter: &self.limiter,
            probe: &self.probe,
            edge_copies: &self.kv,
            assets: &self.bucket,
            runtime: &*self.runtime,
        };
        flow(&edge)
    }

    fn create(&self, client: &Client, surface: &'static Surface, body: Value) -> Result<Created, ApiError> {
        self.edge(|edge| block_on(edge.create(client, surface, body.to_string().into_bytes())))
    }

    /// A create, answered and then recorded with its coordinator (as `wait_until` does).
    fn create_and_record(&self, client: &Client, surface: &'static Surface, body: Value) -> Created {
        let created = self.create(client, surface, body).expect("accepted");
        if let Some(recording) = created.record.clone() {
            self.edge(|edge| block_on(edge.record_created(recording))).expect("recorded");
        }
        created
    }

    /// The capability of the callback URL the worker gave Kling with its `n`-th create.
    fn capability(&self, n: usize) -> String {
        let created = self.kling.created.borrow();
        let url = created[n].1["callback_url"].as_str().unwrap().to_owned();
        url.rsplit('/').next().unwrap().to_owned()
    }

    /// A callback, answered, and then its prompt step if it was promised one (as
    /// `wait_until` makes it).
    fn callback(&self, capability: &str, report: &Value) -> Result<Answer, ApiError> {
        let taken = self.callback_taken(capability, report)?;
        if let Some(step) = taken.step_now {
            self.edge(|edge| block_on(edge.step_now(step))).expect("stepped");
        }
        Ok(taken.answer)
    }

    /// A callback, answered: its prompt step is the caller's to make, or not.
    fn callback_taken(&self, capability: &str, report: &Value) -> Result<Taken, ApiError> {
        let headers = SignatureHeaders { id: None, timestamp: None, signature: None };
        self.edge(|edge| block_on(edge.callback(capability, &headers, report.to_string().as_bytes())))
    }

    fn query(&self, client: &Client, id: &str) -> Result<Value, ApiError> {
        match self.edge(|edge| block_on(edge.query(client, VIDEO_TO_AUDIO.code, id)))? {
            Answer::Success(task) => Ok(task),
            other => panic!("a query answers in Kling's envelope: {other:?}"),
        }
    }

    fn list(&self, client: &Client) -> Vec<Value> {
        let page = Page { num: 1, size: 30 };
        match self.edge(|edge| block_on(edge.list(client, VIDEO_TO_AUDIO.code, page))).unwrap() {
            Answer::Success(Value::Array(tasks)) => tasks,
            other => panic!("a list answers an array: {other:?}"),
        }
    }

    /// Runs the alarms of every coordinator that has something due within `ms`.
    fn run_alarms_for(&self, ms: u64) {
        let end = self.runtime.now.get() + ms;
        let coordinators = self.coordinators();
        let gate = self.gates.flows(&coordinators);
        for _ in 0..10_000 {
            // The earliest alarm first, the gate's among the coordinators' (`None`: the gate).
            let shards: Vec<String> = self.stores.borrow().keys().cloned().collect();
            let mut next: Option<(u64, Option<String>)> = gate.next_due().unwrap().map(|due| (due, None));
            for shard in shards {
                let (store, prompts) = (coordinators.store(&shard), coordinators.prompts(&shard));
                let due = coordinators.coordinator(&shard, &store, &prompts).next_due().unwrap();
                if let Some(due) = due.filter(|due| next.as_ref().is_none_or(|(first, _)| due < first)) {
                    next = Some((due, Some(shard)));
                }
            }
            let Some((due, which)) = next.filter(|(due, _)| *due <= end) else { break };
            if due > self.runtime.now.get() {
                self.runtime.now.set(due);
            }
            match which {
                Some(shard) => {
                    let (store, prompts) = (coordinators.store(&shard), coordinators.prompts(&shard));
                    block_on(coordinators.coordinator(&shard, &store, &prompts).run_due()).unwrap();
                }
                // The gate's alarm, which sends waiting creates through their coordinators.
                None => block_on(gate.run_due()).unwrap(),
            }
        }
        self.runtime.now.set(end.max(self.runtime.now.get()));
    }

    fn calls(&self) -> Vec<String> {
        self.coordinator_calls.borrow().clone()
    }

    /// Nothing that costs was reached: no Kling create, no coordinator call, no create counted.
    fn assert_nothing_spent(&self, why: &str) {
        assert!(self.kling.created.borrow().is_empty(), "{why}: Kling was called");
        assert!(self.calls().is_empty(), "{why}: a coordinator was called");
        assert_eq!(self.limiter.count(Limit::Creates), 0, "{why}: counted against the create limit");
        assert!(
            self.stores.borrow().values().all(|store| store.all().is_empty()),
            "{why}: something was stored"
        );
    }
}

fn server(name: &str) -> Client {
    Client {
        tenant: name.into(),
        app: name.into(),
        kind: ClientKind::ServerKey,
        token_callback_url: None,
        token_budget: None,
    }
}

fn browser(app: &str, sub: &str, callback: Option<&str>) -> Client {
    Client {
        tenant: format!("{app}/{sub}"),
        app: app.into(),
        kind: ClientKind::BrowserToken,
        token_callback_url: callback.map(str::to_owned),
        token_budget: None,
    }
}

fn kling_task_id(created: &Created) -> String {
    kling_task_id_of(&created.answer)
}

fn kling_task_id_of(answer: &Answer) -> String {
    let Answer::Kling(reply) = answer else { panic!("Kling's answer: {answer:?}") };
    task::envelope_data(&reply.body).unwrap()["task_id"].as_str().unwrap().to_owned()
}

fn report(task_id: &str, status: &str, updated_at: u64, audios: bool) -> Value {
    let mut data = json!({"task_id": task_id, "task_status": status, "updated_at": updated_at});
    if audios {
        data["task_result"] = json!({"videos": [{"id": "v", "url": "https://kling.example/v.mp4"}],
            "audios": [{"id": "a", "url_mp3": "https://kling.example/a.mp3", "url_wav": "https://kling.example/a.wav"}]});
    }
    data
}

#[test]
fn every_refusal_reaches_no_port_that_costs_anything() {
    /// Why, where, the body, who sends it, and the deployment's settings.
    type Refusal = (&'static str, &'static Surface, Value, Client, &'static [(&'static str, &'static str)]);
    let refusals: Vec<Refusal> = vec![
        ("an unknown field", &V2A, json!({"video_url": VIDEO, "sounds": "x"}), server("web"), &[]),
        ("no video", &V2A, json!({"sound_effect_prompt": "waves"}), server("web"), &[]),
        ("not JSON", &T2V, json!("a string"), server("web"), &[]),
        ("an empty prompt", &T2A, json!({"prompt": "", "duration": 5}), server("web"), &[]),
        (
            "a private webhook",
            &V2A,
            json!({"video_url": VIDEO, "callback_url": "http://10.0.0.1/hook"}),
            server("web"),
            &[],
        ),
        (
            "a webhook a browser token may not choose",
            &V2A_SIMPLE,
            json!({"video_url": VIDEO, "callback_url": "https://attacker.example/hook"}),
            browser("web", "u1", None),
            &[],
        ),
        (
            "an email with no account configured",
            &ADD_SOUND,
            json!({"video": VIDEO, "email": "someone@example.com"}),
            server("web"),
            &[],
        ),
        (
            "an email of another account",
            &ADD_SOUND,
            json!({"video": VIDEO, "email": "someone@example.com"}),
            server("web"),
            &[("KLING_ACCOUNT_EMAIL", "ops@example.com")],
        ),
        (
            "a webhook with no PROXY_WEBHOOK_SECRET",
            &V2A,
            json!({"video_url": VIDEO, "callback_url": "https://app.example.com/hook"}),
            server("web"),
            &[("PROXY_WEBHOOK_SECRET", " ")],
        ),
        (
            "sound on a silent model",
            &I2V,
            json!({"image": "https://cdn.example.com/a.png", "sound": "on", "model_name": "kling-v1"}),
            server("web"),
            &[],
        ),
        (
            "a hint outside 3 to 20 s with the probe off",
            &V2A,
            json!({"video_url": VIDEO, "video_duration": 2}),
            server("web"),
            &[("VIDEO_PROBE", "off")],
        ),
    ];
    for (why, surface, body, client, settings) in refusals {
        let world = World::with(settings);
        let refusal = match world.create(&client, surface, body) {
            Err(refusal) => refusal,
            Ok(created) => panic!("{why}: accepted ({:?})", created.answer),
        };
        assert!((400..500).contains(&refusal.status), "{why}: {refusal}");
        world.assert_nothing_spent(why);
        assert_eq!(world.probe.calls.get(), 0, "{why}: the video was probed");
    }
}

#[test]
fn a_video_kling_would_refuse_is_refused_with_the_measured_fact_and_costs_nothing() {
    let world = World::new();
    world.probe.outcomes.borrow_mut().insert(
        VIDEO.into(),
        Outcome::Measured { container: "mp4".into(), seconds: 1.0, bytes: Some(10_000) },
    );
    let refusal =
        world.create(&server("web"), &V2A, json!({"video_url": VIDEO, "video_duration": 8})).unwrap_err();
    assert_eq!(refusal.status, 400);
    assert!(refusal.message.starts_with("video_url:") && refusal.message.contains("1.0"), "{refusal}");
    assert_eq!(world.probe.calls.get(), 1);
    world.assert_nothing_spent("a 1 s video");
    // useapi.net's field is named as its client knows it; the measurement is remembered.
    let refusal = world.create(&server("web"), &ADD_SOUND, json!({"video": VIDEO})).unwrap_err();
    assert!(refusal.message.starts_with("video:"), "{refusal}");
    assert_eq!(world.probe.calls.get(), 1, "measured once");
    // A Kling video (video_id) is Kling's to measure: no probe.
    world.create(&server("web"), &V2A, json!({"video_id": "kling-video-1"})).unwrap();
    assert_eq!(world.probe.calls.get(), 1);
    assert_eq!(world.limiter.count(Limit::Probes), 1, "each measurement counted against the app");
}

#[test]
fn a_browser_tokens_pinned_webhook_is_checked_again_at_each_create() {
    let world = World::new();
    let pinned = browser("web", "alice", Some("http://127.0.0.1:9/hook"));
    let refused = world.create(&pinned, &V2A, json!({"video_url": VIDEO})).unwrap_err();
    assert_eq!(refused.status, 403, "{refused}");
    assert!(
        refused.message.starts_with("callback_url:") && refused.message.contains("minted with"),
        "{refused}"
    );
    world.assert_nothing_spent("a pinned private webhook");
    let public = browser("web", "bob", Some("https://app.example.com/hook"));
    let created = world.create(&public, &V2A, json!({"video_url": VIDEO})).unwrap();
    assert_eq!(
        created.record.unwrap().registration.client_callback_url.as_deref(),
        Some("https://app.example.com/hook")
    );
}

#[test]
fn measurements_count_against_the_app_before_they_fetch_and_refusals_are_not_remembered() {
    let world = World::new();
    world.limiter.allowance.borrow_mut().insert(Limit::Probes, 2);
    let missing = "https://cdn.example.com/clips/not-yet-uploaded.mp4";
    world.probe.outcomes.borrow_mut().insert(missing.into(), Outcome::Status { status: 404 });
    // One browser user's 404 is not remembered for the others: the next asker measures again.
    let first =
        world.create(&browser("web", "alice", None), &V2A, json!({"video_url": missing})).unwrap_err();
    assert!(first.message.contains("answered 404"), "{first}");
    assert!(world.probe.remembered.borrow().is_empty());
    world.probe.outcomes.borrow_mut().remove(missing);
    world.create(&browser("web", "bob", None), &V2A, json!({"video_url": missing})).unwrap();
    assert_eq!(world.probe.calls.get(), 2);
    // The app's probes are spent, whichever of its users asks: refused before any fetch.
    let other = "https://cdn.example.com/clips/other.mp4";
    let refused =
        world.create(&browser("web", "carol", None), &V2A, json!({"video_url": other})).unwrap_err();
    assert_eq!(refused.status, 429, "{refused}");
    assert_eq!(world.probe.calls.get(), 2, "no fetch past the limit");
    // A remembered measurement needs no fetch, so it costs no probe.
    world.create(&browser("web", "dave", None), &V2A, json!({"video_url": missing})).unwrap();
    // Another app has its own.
    world.create(&browser("ops", "erin", None), &V2A, json!({"video_url": other})).unwrap();
    assert_eq!(world.probe.calls.get(), 3);
}

#[test]
fn a_valid_create_over_the_create_limit_reaches_no_coordinator_and_no_kling() {
    let world = World::new();
    world.limiter.allowance.borrow_mut().insert(Limit::Creates, 1);
    world.create_and_record(&server("web"), &T2A, json!({"prompt": "rain", "duration": 5}));
    let refusal = world.create(&server("web"), &T2A, json!({"prompt": "rain", "duration": 5})).unwrap_err();
    assert_eq!((refusal.status, refusal.header.as_ref().map(|h| h.0)), (429, Some("Retry-After")));
    assert_eq!(world.kling.created.borrow().len(), 1, "only the first reached Kling");
    assert_eq!(world.calls(), ["intend", "register"], "only the first was recorded");
}

#[test]
fn kling_refusing_a_create_is_passed_on_and_records_nothing() {
    let world = World::new();
    let refusal = json!({"code": 1102, "message": "resource pack exhausted", "request_id": "k-1"});
    let reply = KlingReply { status: 429, body: refusal.to_string().into_bytes() };
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(reply.clone()));
    let created = world.create(&server("web"), &V2A, json!({"video_url": VIDEO})).unwrap();
    assert_eq!(created.answer, Answer::Kling(reply.clone()), "a Kling client gets Kling's answer unchanged");
    assert!(created.record.is_none());

    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(reply));
    let refusal = world.create(&server("web"), &ADD_SOUND, json!({"video": VIDEO})).unwrap_err();
    assert_eq!((refusal.status, refusal.code), (429, 1102), "useapi.net's shape: {refusal}");
    assert!(refusal.message.contains("resource pack exhausted"), "{refusal}");
    assert_eq!(world.gates.store.gate.borrow().counts(), (0, 0), "the refused creates' slots are free");

    world
        .kling
        .create_scripts
        .borrow_mut()
        .push_back(CreateScript::Fail(ApiError::upstream_timeout("no answer")));
    let refusal = world.create(&server("web"), &T2V, json!({"prompt": "a cat"})).unwrap_err();
    assert_eq!(refusal.status, 504);
    // A refusal abandons its intent; a create with no answer keeps it (Kling may have the task).
    assert_eq!(world.calls(), ["intend", "abandon", "intend", "abandon", "intend"], "nothing recorded");
    let store = world.coordinators().store(&task::tenant_shard("web"));
    let kept = store.due_intents(u64::MAX, 10).unwrap();
    assert_eq!(kept.len(), 1, "the create that got no answer is still intended");
}

#[test]
fn a_create_gives_kling_the_workers_callback_and_keeps_the_clients_webhook() {
    let world = World::new();
    let client = server("web");
    let body = json!({"video_url": VIDEO, "callback_url": "https://app.example.com/hook", "external_task_id": "mine-1"});
    let created = world.create_and_record(&client, &V2A, body);
    let task_id = kling_task_id_of(&created.answer);
    let sent = world.kling.created.borrow()[0].1.clone();
    let callback = sent["callback_url"].as_str().unwrap();
    assert!(callback.starts_with(&format!("{ORIGIN}/v1/callbacks/kling/")), "{callback}");
    assert!(!sent.contains_key("video_duration"));
    let recording = created.record.unwrap();
    assert_eq!(recording.shard, task::tenant_shard("web"));
    assert_eq!(recording.registration.client_callback_url.as_deref(), Some("https://app.example.com/hook"));
    assert_eq!(world.query(&client, "mine-1").unwrap()["task_id"], task_id);
}

#[test]
fn a_callback_that_beats_the_creates_record_is_merged_not_lost() {
    let world = World::new();
    let client = server("web");
    let created = world.create(&client, &V2A, json!({"video_url": VIDEO})).unwrap();
    let task_id = kling_task_id(&created);
    world.callback(&world.capability(0), &report(&task_id, "processing", START + 5, false)).unwrap();
    world.edge(|edge| block_on(edge.record_created(created.record.unwrap()))).unwrap();
    let task = world.query(&client, &task_id).unwrap();
    assert_eq!(task["task_status"], "processing", "the older create answer does not regress it");
    assert_eq!(world.list(&client).len(), 1, "one task, listed once");
}

#[test]
fn a_finished_task_is_answered_from_its_edge_copy_with_no_coordinator_call() {
    let world = World::new();
    let client = browser("web", "alice", None);
    let created =
        world.create_and_record(&client, &V2A_SIMPLE, json!({"video_url": VIDEO, "prompt": "waves"}));
    let task_id = kling_task_id(&created);
    world.kling.set(report(&task_id, "succeed", START + 9, true));
    world.callback(&world.capability(0), &report(&task_id, "succeed", START + 9, true)).unwrap();
    world.run_alarms_for(1_000);
    let calls_before = world.calls().len();
    let polls_before = world.kling.calls.get();
    let task = world.query(&client, &task_id).unwrap();
    assert_eq!(task["task_status"], "succeed");
    assert_eq!(world.calls().len(), calls_before, "no coordinator call: {:?}", world.calls());
    assert_eq!(world.kling.calls.get(), polls_before, "no Kling call");
    // Another tenant, even of the same app, finds nothing, as if the task did not exist.
    let stranger = world.query(&browser("web", "bob", None), &task_id).unwrap_err();
    assert_eq!(stranger.status, 404);
}

#[test]
fn a_coordinator_that_is_down_costs_no_accepted_task() {
    let world = World::new();
    let client = server("web");
    world.coordinators_down.set(true);
    let created = world.create(&client, &V2A, json!({"video_url": VIDEO})).unwrap();
    let task_id = kling_task_id(&created);
    assert!(
        matches!(created.answer, Answer::Kling(KlingReply { status: 200, .. })),
        "the client has its task"
    );
    let started = world.runtime.now.get();
    let recorded = world.edge(|edge| block_on(edge.record_created(created.record.unwrap())));
    assert_eq!(recorded.unwrap_err().status, 503);
    assert_eq!(world.calls(), ["intend", "register", "register", "register"], "tried three times");
    assert_eq!(world.runtime.now.get() - started, 1_200, "waiting 200 ms, then 1 s");
    assert_eq!(world.query(&client, &task_id).unwrap_err().status, 503, "a query says it is unavailable");
    // Back up: Kling's next callback records the task, and its tenant's next call names it.
    world.coordinators_down.set(false);
    world.callback(&world.capability(0), &report(&task_id, "processing", START + 5, false)).unwrap();
    assert_eq!(world.query(&client, &task_id).unwrap()["task_status"], "processing");
}

#[test]
fn max_jobs_counts_the_tenants_running_tasks_before_kling_is_called() {
    let world = World::new();
    let client = server("web");
    world.create_and_record(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1}));
    let refusal = world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).unwrap_err();
    assert_eq!(refusal.status, 429);
    assert!(refusal.message.starts_with("maxJobs: 1 of your tasks are running or starting"), "{refusal}");
    assert_eq!(world.kling.created.borrow().len(), 1);
    assert_eq!(world.limiter.count(Limit::Creates), 1, "a create refused by maxJobs is not counted");
}

#[test]
fn max_jobs_is_a_reservation_concurrent_creates_cannot_all_take_the_last_slot() {
    let world = World::new();
    let client = server("web");
    let body = json!({"video": VIDEO, "maxJobs": 1}).to_string();
    let outcomes = world.edge(|edge| {
        run_together((0..8).map(|_| edge.create(&client, &ADD_SOUND, body.clone().into_bytes())).collect())
    });
    let accepted: Vec<_> = outcomes.into_iter().filter_map(Result::ok).collect();
    assert_eq!(accepted.len(), 1, "one of eight at once");
    assert_eq!(world.kling.created.borrow().len(), 1, "Kling is called once");
    // The accepted create holds its slot until its record lands, and then counts as running.
    let refused = world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).unwrap_err();
    assert_eq!(refused.status, 429);
    let recording = accepted.into_iter().next().and_then(|created| created.record).unwrap();
    world.edge(|edge| block_on(edge.record_created(recording))).unwrap();
    assert!(world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).is_err());
    assert!(world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 2})).is_ok());
}

#[test]
fn a_create_refused_after_its_max_jobs_hold_gives_the_slot_back() {
    let world = World::new();
    let client = server("web");
    world.limiter.allowance.borrow_mut().insert(Limit::Creates, 2);
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Fail(ApiError::unavailable("Kling")));
    assert!(world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).is_err());
    assert!(
        world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).is_ok(),
        "slot given back"
    );
    // Over the create limit: the slot held for it is given back too, so the next create
    // counts one task starting, not two.
    for max_jobs in [5, 2] {
        let refusal =
            world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": max_jobs})).unwrap_err();
        assert!(!refusal.message.starts_with("maxJobs"), "{refusal}");
    }
    assert_eq!(world.kling.created.borrow().len(), 2);
}

#[test]
fn a_max_jobs_hold_whose_create_died_expires() {
    let client = server("web");
    let body = json!({"video": VIDEO, "maxJobs": 1}).to_string();
    // Cut off right after the hold: the isolate died before Kling was called.
    for cut in 1..100 {
        let world = World::new();
        world.edge(|edge| run_until_crash(edge.create(&client, &ADD_SOUND, body.clone().into_bytes()), cut));
        let store = world.coordinators().store(&task::tenant_shard(&client.tenant));
        if store.meta(max_jobs::META).unwrap().is_none_or(|holds| Holds::read(Some(&holds)).is_empty()) {
            continue;
        }
        assert!(world.kling.created.borrow().is_empty(), "cut before Kling");
        assert_eq!(
            world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).unwrap_err().status,
            429
        );
        world.runtime.advance(u64::from(world.config.kling_timeout_ms) + 10_000);
        assert!(world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).is_ok());
        return;
    }
    panic!("no cut fell between the hold and Kling");
}

#[test]
fn a_create_whose_outcome_is_unknown_keeps_its_max_jobs_slot() {
    let world = World::new();
    let client = server("web");
    world
        .kling
        .create_scripts
        .borrow_mut()
        .push_back(CreateScript::Fail(ApiError::upstream_timeout("no answer")));
    let unknown = world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).unwrap_err();
    assert_eq!(unknown.status, 504);
    // Kling may be running it: the slot stays held until the hold expires.
    let refused = world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).unwrap_err();
    assert!(refused.message.starts_with("maxJobs"), "{refused}");
    world.runtime.advance(u64::from(world.config.kling_timeout_ms) + 10_000);
    assert!(world.create(&client, &ADD_SOUND, json!({"video": VIDEO, "maxJobs": 1})).is_ok());
}

#[test]
fn the_create_cut_off_at_any_await_spends_at_most_once_and_loses_no_task_kling_calls_back_about() {
    let mut cut = 0;
    loop {
        let world = World::new();
        let client = server("web");
        let body = json!({"video_url": VIDEO}).to_string();
        let finished =
            world.edge(|edge| run_until_crash(edge.create(&client, &V2A, body.clone().into_bytes()), cut));
        let sent = world.kling.created.borrow().len();
        assert!(sent <= 1, "cut after {cut} polls: {sent} creates");
        if sent == 0 {
            // Cut before Kling: at most the create's intent and its slot at the gate are
            // left, and both go once Kling is found to have no such task.
            world.run_alarms_for(3 * 3_600_000);
            let stored = world.stores.borrow().values().map(|store| store.all().len()).sum::<usize>();
            assert_eq!(stored, 0, "cut after {cut}: nothing kept");
            assert_eq!(world.gates.store.gate.borrow().counts(), (0, 0), "cut after {cut}: the slot is free");
            assert!(world.kling.created.borrow().is_empty(), "cut after {cut}: Kling was called");
        }
        // The create's record may be cut off too, at any point.
        let mut recorded_cut = 0;
        if let Some(created) = &finished {
            let created = created.as_ref().unwrap();
            let recording = created.record.clone().unwrap();
            recorded_cut = cut % 4;
            let _ = world.edge(|edge| run_until_crash(edge.record_created(recording), recorded_cut));
        }
        if sent == 1 {
            // Kling calls back about every task it accepted: the worker knows it, once.
            let task_id = "task-1";
            world.callback(&world.capability(0), &report(task_id, "processing", START + 5, false)).unwrap();
            let listed = world.list(&client);
            assert_eq!(listed.len(), 1, "cut after {cut}/{recorded_cut}: {listed:?}");
            assert_eq!(listed[0]["task_id"], task_id);
        }
        if finished.is_some() {
            break;
        }
        cut += 1;
    }
    assert!(cut >= 3, "the create has several awaits to cut at ({cut})");
}

#[test]
fn callbacks_need_a_capability_the_worker_issued_and_a_signature_when_configured() {
    let world = World::new();
    let created = world.create_and_record(&server("web"), &V2A, json!({"video_url": VIDEO}));
    let task_id = kling_task_id(&created);
    let calls = world.calls().len();
    let forged =
        world.callback(&"A".repeat(world.capability(0).len()), &report(&task_id, "succeed", START + 5, true));
    assert_eq!(forged.unwrap_err().status, 404);
    let malformed = world.callback(&world.capability(0), &json!({"task_status": "succeed"}));
    assert_eq!(malformed.unwrap_err().status, 400);
    assert_eq!(world.calls().len(), calls, "refused before any coordinator call");
    // Another task's report with this task's capability: the coordinator refuses it.
    let misdirected = world.callback(&world.capability(0), &report("task-999", "succeed", START + 5, true));
    assert_eq!(misdirected.unwrap_err().status, 403);

    let signed =
        World::with(&[("KLING_WEBHOOK_SECRET", "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=")]);
    signed.create_and_record(&server("web"), &V2A, json!({"video_url": VIDEO}));
    let unsigned = signed.callback(&signed.capability(0), &report("task-1", "processing", START + 5, false));
    assert_eq!(unsigned.unwrap_err().status, 401);
    let key = signed.config.kling_webhook_key.clone().unwrap();
    let body = report("task-1", "processing", START + 5, false).to_string();
    let timestamp = (START / 1000) as i64;
    let signature = key.sign("msg-1", timestamp, body.as_bytes());
    let timestamp = timestamp.to_string();
    let headers =
        SignatureHeaders { id: Some("msg-1"), timestamp: Some(&timestamp), signature: Some(&signature) };
    let capability = signed.capability(0);
    let answer = signed.edge(|edge| block_on(edge.callback(&capability, &headers, body.as_bytes())));
    assert_eq!(answer.unwrap().answer, Answer::Acknowledged);
}

#[test]
fn only_a_server_key_mints_tokens_and_reads_its_webhook_secret() {
    let world = World::new();
    let alice = browser("web", "alice", None);
    assert_eq!(world.edge(|edge| edge.mint_token(&alice, br#"{"sub": "eve"}"#)).unwrap_err().status, 403);
    assert_eq!(world.edge(|edge| edge.webhook_secret(&alice)).unwrap_err().status, 403);
    let Answer::Success(minted) =
        world.edge(|edge| edge.mint_token(&server("web"), br#"{"sub": "alice"}"#)).unwrap()
    else {
        panic!("minted in Kling's envelope")
    };
    let token = minted["token"].as_str().unwrap();
    let client =
        crate::auth::authenticate(&world.config, Some(&format!("Bearer {token}")), (START / 1000) as i64);
    assert_eq!(client.unwrap().tenant, "web/alice");
    let Answer::Success(secret) = world.edge(|edge| edge.webhook_secret(&server("ops"))).unwrap() else {
        panic!("in Kling's envelope")
    };
    assert_eq!(secret["client"], "ops");
    assert!(secret["secret"].as_str().unwrap().starts_with("whsec_"));
    world.assert_nothing_spent("tokens");
}

#[test]
fn the_accounts_costs_are_kling_s_answer_for_a_server_key_only() {
    let world = World::new();
    let query = Some("start_time=1&end_time=2");
    let refused = world.edge(|edge| block_on(edge.account_costs(&browser("web", "alice", None), query)));
    assert_eq!(refused.unwrap_err().status, 403);
    let malformed =
        world.edge(|edge| block_on(edge.account_costs(&server("web"), Some("start_time=2&end_time=1"))));
    assert_eq!(malformed.unwrap_err().status, 400);
    assert!(world.kling.costs_queries.borrow().is_empty(), "refused before Kling");
    let Answer::Kling(reply) =
        world.edge(|edge| block_on(edge.account_costs(&server("web"), query))).unwrap()
    else {
        panic!("Kling's answer")
    };
    assert_eq!(reply.status, 200);
    assert_eq!(*world.kling.costs_queries.borrow(), ["start_time=1&end_time=2"]);
}

#[test]
fn useapi_creates_answer_useapis_shape_and_its_task_is_read_by_the_same_id() {
    let world = World::new();
    let client = server("web");
    let created = world.create_and_record(&client, &ADD_SOUND, json!({"video": VIDEO, "replyRef": "ref-1"}));
    let Answer::UseApi(answer) = &created.answer else { panic!("useapi.net's shape: {:?}", created.answer) };
    let task_id = created.record.as_ref().unwrap().registration.task_id.clone();
    assert_eq!(created.record.as_ref().unwrap().registration.reply_ref.as_deref(), Some("ref-1"));
    let Answer::UseApi(status) = world.edge(|edge| block_on(edge.useapi_task(&client, &task_id))).unwrap()
    else {
        panic!("useapi.net's shape")
    };
    assert_eq!(status, *answer);
}

#[test]
fn no_randomness_refuses_the_create_before_kling() {
    let world = World::new();
    world.runtime.no_randomness.set(true);
    assert_eq!(world.create(&server("web"), &T2V, json!({"prompt": "a cat"})).unwrap_err().status, 500);
    assert!(world.kling.created.borrow().is_empty());
    let store = world.coordinators().store(&task::tenant_shard("web"));
    assert!(store.all().is_empty() && store.load("task-1").unwrap().is_none());
}

#[test]
fn a_create_whose_record_and_callbacks_are_all_lost_is_found_at_kling_by_its_external_id() {
    // The runtime stops after Kling took the create, at any point; Kling's callbacks land
    // while it is down and are never repeated. Once the intent had landed, the task is known
    // after the create's deadline, with its webhook.
    let hook = "https://app.example.com/hooks/kling";
    let mut adopted = 0;
    for cut in 0.. {
        let world = World::new();
        let client = server("web");
        let body = json!({"video_url": VIDEO, "callback_url": hook}).to_string();
        let finished =
            world.edge(|edge| run_until_crash(edge.create(&client, &V2A, body.clone().into_bytes()), cut));
        let store = world.coordinators().store(&task::tenant_shard("web"));
        let intended = !store.due_intents(u64::MAX, 10).unwrap().is_empty();
        if world.kling.tasks.borrow().contains_key("task-1") && intended {
            // Kling finishes the task; its callbacks are lost.
            let task_id = "task-1";
            let mut done = report(task_id, "succeed", START + 5, true);
            done["task_info"] = world.kling.tasks.borrow()[task_id]["task_info"].clone();
            world.kling.set(done);
            world.run_alarms_for(60_000);
            let listed = world.list(&client);
            assert_eq!(listed.len(), 1, "cut after {cut}: {listed:?}");
            assert_eq!(listed[0]["task_status"], "succeed");
            let delivered = world.receiver.deliveries.borrow().iter().filter(|d| d.url == hook).count();
            assert_eq!(delivered, 1, "cut after {cut}: the client's webhook went out");
            assert!(store.due_intents(u64::MAX, 10).unwrap().is_empty(), "the intent is gone");
            adopted += 1;
        }
        if finished.is_some() {
            break;
        }
    }
    assert!(adopted >= 1, "some cut fell after the intent landed");
}

#[test]
fn an_intent_gives_way_to_the_creates_record_and_is_dropped_when_kling_never_had_the_task() {
    let world = World::new();
    let client = server("web");
    // Recorded as usual: the record removes the intent, and Kling is never asked by it.
    let created =
        world.create_and_record(&client, &V2A, json!({"video_url": VIDEO, "external_task_id": "mine-7"}));
    let sent = world.kling.created.borrow()[0].1.clone();
    assert_eq!(sent["external_task_id"], "mine-7", "a client's own external id is kept");
    let store = world.coordinators().store(&task::tenant_shard("web"));
    assert!(store.due_intents(u64::MAX, 10).unwrap().is_empty());
    assert!(created.record.is_some());
    // A create that got no answer, at a Kling that never had it: asked a few times, then dropped.
    world
        .kling
        .create_scripts
        .borrow_mut()
        .push_back(CreateScript::Fail(ApiError::upstream_timeout("no answer")));
    world.kling.tasks.borrow_mut().clear();
    assert_eq!(world.create(&client, &V2A, json!({"video_url": VIDEO})).unwrap_err().status, 504);
    let sent = world.kling.created.borrow()[1].1.clone();
    assert!(sent["external_task_id"].as_str().unwrap().starts_with("kling-edge-"), "{sent:?}");
    let before = world.kling.calls.get();
    world.run_alarms_for(3 * 3_600_000);
    assert_eq!(
        world.kling.calls.get() - before,
        4,
        "checked at the deadline, then after 1 min, 10 min and 1 h"
    );
    assert!(store.due_intents(u64::MAX, 10).unwrap().is_empty(), "then dropped");
}

#[test]
fn an_intent_never_takes_a_task_that_is_another_creates() {
    let world = World::new();
    let client = server("web");
    // An earlier task with the client's own external id, recorded as usual.
    let first =
        world.create_and_record(&client, &V2A, json!({"video_url": VIDEO, "external_task_id": "order-42"}));
    let first_id = kling_task_id(&first);
    world.runtime.advance(60_000);
    // The id again: Kling refuses it as taken, but that answer is lost (no answer in time).
    world
        .kling
        .create_scripts
        .borrow_mut()
        .push_back(CreateScript::Fail(ApiError::upstream_timeout("no answer")));
    assert_eq!(
        world
            .create(&client, &V2A, json!({"video_url": VIDEO, "external_task_id": "order-42"}))
            .unwrap_err()
            .status,
        504
    );
    let before = world.coordinators().store(&task::tenant_shard("web")).load(&first_id).unwrap().unwrap();
    world.run_alarms_for(3 * 3_600_000);
    let after = world.coordinators().store(&task::tenant_shard("web")).load(&first_id).unwrap().unwrap();
    assert_eq!(
        (after.nonce, after.created_at),
        (before.nonce, before.created_at),
        "the first task is untouched"
    );
    assert_eq!(world.list(&client).len(), 1);
    assert!(world
        .coordinators()
        .store(&task::tenant_shard("web"))
        .due_intents(u64::MAX, 10)
        .unwrap()
        .is_empty());
}

#[cfg(test)]
mod accounts;
#[cfg(test)]
mod budget;
#[cfg(test)]
mod idempotency;
#[cfg(test)]
mod queue;
#[cfg(test)]
mod uploads;

#[test]
fn a_callback_that_finishes_a_task_asks_for_its_prompt_step_after_its_answer() {
    let world = World::new();
    let client = server("web");
    let created = world.create_and_record(
        &client,
        &V2A,
        json!({"video_url": VIDEO, "callback_url": "https://app.example.com/hook"}),
    );
    let task_id = kling_task_id(&created);
    world.kling.set(report(&task_id, "succeed", START + 9, true));
    let calls_before = world.calls().len();
    let taken =
        world.callback_taken(&world.capability(0), &report(&task_id, "succeed", START + 9, true)).unwrap();
    assert_eq!(taken.answer, Answer::Acknowledged);
    let step = taken.step_now.expect("the coordinator promised a prompt step");
    assert_eq!(
        (step.shard.as_str(), step.call.task_id.as_str()),
        (task::tenant_shard("web").as_str(), task_id.as_str())
    );
    assert!(world.receiver.deliveries.borrow().is_empty(), "nothing is sent before Kling has its answer");
    world.edge(|edge| block_on(edge.step_now(step))).unwrap();
    assert_eq!(world.calls()[calls_before..], ["report", "step_now"]);
    let delivered = world.receiver.deliveries.borrow();
    assert_eq!(delivered.len(), 1, "the webhook went out with no alarm");
    assert_eq!(delivered[0].headers["webhook-id"], format!("msg_{task_id}_succeed"));
    drop(delivered);
    // A repeated callback changes nothing: it promises no step.
    let again =
        world.callback_taken(&world.capability(0), &report(&task_id, "succeed", START + 9, true)).unwrap();
    assert!(again.step_now.is_none());
}
