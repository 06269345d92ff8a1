//! `Idempotency-Key` against in-memory ports, with the real coordinators behind the request
//! path: a retry answers what the first create answered and never reaches Kling again,
//! concurrent creates with one key make one task, a key reused with another body is refused,
//! keys are per tenant, a create that spent nothing frees its key, one whose outcome is
//! unknown keeps it until its intent settles it, and a create cut off at any `await` never
//! lets a retry make a second task.

use futures_util::future::{FutureExt, LocalBoxFuture};

use super::*;

const KEY: &str = "3f2b8c1e-4c1a-4c4e-9e55-4b1d2a6f0c11";

fn body() -> Value {
    json!({"video_url": VIDEO, "sound_effect_prompt": "rain"})
}

impl World {
    fn create_with_key(&self, client: &Client, body: &Value, key: Option<&str>) -> Result<Created, ApiError> {
        let bytes = body.to_string().into_bytes();
        self.edge(|edge| block_on(edge.create_keyed(client, &V2A, bytes, key)))
    }

    /// A keyed create, answered and recorded (as `wait_until` does).
    fn create_with_key_and_record(
        &self,
        client: &Client,
        body: &Value,
        key: &str,
    ) -> Result<Created, ApiError> {
        let created = self.create_with_key(client, body, Some(key))?;
        if let Some(recording) = created.record.clone() {
            self.edge(|edge| block_on(edge.record_created(recording))).expect("recorded");
        }
        Ok(created)
    }
}

fn answer_of(created: &Created) -> Vec<u8> {
    match &created.answer {
        Answer::Kling(reply) => reply.body.clone(),
        other => serde_json::to_vec(&format!("{other:?}")).unwrap(),
    }
}

#[test]
fn a_retry_with_the_same_key_answers_the_first_answer_and_kling_is_called_once() {
    let world = World::new();
    let client = server("web");
    let first = world.create_with_key_and_record(&client, &body(), KEY).unwrap();
    assert!(!first.replayed);
    // The same body, spelled otherwise.
    let spelled = json!({"sound_effect_prompt": "rain", "video_url": VIDEO});
    let again = world.create_with_key_and_record(&client, &spelled, KEY).unwrap();
    assert!(again.replayed, "answered from the key");
    assert_eq!(answer_of(&again), answer_of(&first), "exactly the first answer");
    assert!(again.record.is_none(), "nothing new to record");
    assert_eq!(world.kling.created.borrow().len(), 1, "Kling was called once");
    assert_eq!(world.list(&client).len(), 1);
}

#[test]
fn eight_concurrent_creates_with_one_key_make_one_kling_task() {
    let world = World::new();
    let client = server("web");
    let bytes = body().to_string().into_bytes();
    let outcomes = world.edge(|edge| {
        let creates: Vec<LocalBoxFuture<'_, Result<Created, ApiError>>> = (0..8)
            .map(|_| edge.create_keyed(&client, &V2A, bytes.clone(), Some(KEY)).boxed_local())
            .collect();
        run_together(creates)
    });
    assert_eq!(world.kling.created.borrow().len(), 1, "one Kling task");
    let accepted =
        outcomes.iter().filter(|outcome| matches!(outcome, Ok(created) if !created.replayed)).count();
    assert_eq!(accepted, 1, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(refused.status, 409, "{refused:?}");
        assert!(refused.message.starts_with("Idempotency-Key: a create with this key is still on its way"));
        assert!(refused.header.as_ref().is_some_and(|(name, _)| *name == "Retry-After"));
    }
    // Once the first is recorded, a retry gets its answer.
    let recording = outcomes.into_iter().find_map(|outcome| outcome.ok()).unwrap().record.unwrap();
    world.edge(|edge| block_on(edge.record_created(recording))).unwrap();
    assert!(world.create_with_key(&client, &body(), Some(KEY)).unwrap().replayed);
    assert_eq!(world.kling.created.borrow().len(), 1);
}

#[test]
fn a_key_reused_with_another_body_is_refused_and_keys_are_per_tenant() {
    let world = World::new();
    let web = server("web");
    world.create_with_key_and_record(&web, &body(), KEY).unwrap();
    let other = json!({"video_url": VIDEO, "sound_effect_prompt": "thunder"});
    let refused = world.create_with_key(&web, &other, Some(KEY)).unwrap_err();
    assert_eq!(refused.status, 422);
    assert!(
        refused.message.starts_with("Idempotency-Key: was used with another body"),
        "{}",
        refused.message
    );
    assert_eq!(world.kling.created.borrow().len(), 1, "never reached Kling");
    // Another tenant's key of the same name is its own.
    let ops = world.create_with_key_and_record(&server("ops"), &body(), KEY).unwrap();
    assert!(!ops.replayed);
    assert_eq!(world.kling.created.borrow().len(), 2);
    // A browser user is a tenant of its own.
    let alice = browser("web", "alice", None);
    assert!(!world.create_with_key_and_record(&alice, &body(), KEY).unwrap().replayed);
}

#[test]
fn a_create_that_spends_nothing_frees_its_key() {
    let world = World::new();
    let client = server("web");
    // Refused before Kling: the create limit.
    world.limiter.allowance.borrow_mut().insert(Limit::Creates, 0);
    assert_eq!(world.create_with_key(&client, &body(), Some(KEY)).unwrap_err().status, 429);
    world.limiter.allowance.borrow_mut().clear();
    // Refused by Kling: nothing charged, the key is free again.
    let refusal =
        KlingReply { status: 400, body: br#"{"code":1201,"message":"bad video","request_id":"r"}"#.to_vec() };
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(refusal));
    let refused = world.create_with_key(&client, &body(), Some(KEY)).unwrap();
    assert!(matches!(&refused.answer, Answer::Kling(reply) if reply.status == 400));
    let taken = world.create_with_key_and_record(&client, &body(), KEY).unwrap();
    assert!(!taken.replayed, "the key was free");
    assert_eq!(world.kling.created.borrow().len(), 2);
    // A body that breaks a rule claims nothing.
    let broken = world.create_with_key(&client, &json!({"video_url": 5}), Some("another-key")).unwrap_err();
    assert_eq!(broken.status, 400);
    let store = world.coordinators().store(&task::tenant_shard("web"));
    assert!(store.keys.borrow().get("another-key").is_none());
    let bad_key = world.create_with_key(&client, &body(), Some("a key with spaces")).unwrap_err();
    assert!(bad_key.message.starts_with("Idempotency-Key: "), "{}", bad_key.message);
}

#[test]
fn a_create_whose_outcome_is_unknown_keeps_its_key_until_kling_is_asked() {
    let world = World::new();
    let client = server("web");
    // Kling takes the task but its answer never comes.
    world
        .kling
        .create_scripts
        .borrow_mut()
        .push_back(CreateScript::Fail(ApiError::upstream_timeout("no answer")));
    let lost = world.create_with_key(&client, &body(), Some(KEY)).unwrap_err();
    assert_eq!(lost.status, 504);
    // The scripted failure left no task: play Kling having made it anyway.
    let sent = world.kling.created.borrow()[0].1.clone();
    world.kling.set(json!({"task_id": "task-lost", "task_status": "submitted", "created_at": START,
        "updated_at": START, "task_info": {"external_task_id": sent["external_task_id"]}}));
    let waiting = world.create_with_key(&client, &body(), Some(KEY)).unwrap_err();
    assert_eq!(waiting.status, 409, "never a second task while it may exist");
    // The create's intent finds the task at Kling: the key answers it.
    world.run_alarms_for(60_000);
    let replayed = world.create_with_key(&client, &body(), Some(KEY)).unwrap();
    assert!(replayed.replayed);
    let Answer::Success(data) = &replayed.answer else { panic!("the task: {:?}", replayed.answer) };
    assert_eq!(data["task_id"], "task-lost");
    assert_eq!(world.kling.created.borrow().len(), 1, "Kling was sent the create once");
}

#[test]
fn a_keyed_create_cut_off_at_any_await_never_makes_a_second_task_on_retry() {
    for cut in 0.. {
        let world = World::new();
        let client = server("web");
        let bytes = body().to_string().into_bytes();
        let finished =
            world.edge(|edge| run_until_crash(edge.create_keyed(&client, &V2A, bytes, Some(KEY)), cut));
        // The client retries until it has an answer, while the coordinators' alarms run: a
        // create cut off before its answer keeps its key until its intent is given up at
        // Kling (about an hour), never letting a retry make a second task meanwhile.
        let mut answered = None;
        for _ in 0..150 {
            match world.create_with_key_and_record(&client, &body(), KEY) {
                Ok(created) => {
                    answered = Some(created);
                    break;
                }
                Err(error) => {
                    assert_eq!(error.status, 409, "cut after {cut}: {error:?}");
                    world.run_alarms_for(60_000);
                }
            }
        }
        let store = world.coordinators().store(&task::tenant_shard("web"));
        let answered = answered.unwrap_or_else(|| {
            panic!(
                "cut after {cut}: the retry never got an answer: keys {:?}, intents {:?}, tasks {:?}, kling {:?}",
                store.keys.borrow(),
                store.due_intents(u64::MAX, 10),
                store.all().iter().map(|r| r.task_id.clone()).collect::<Vec<_>>(),
                world.kling.tasks.borrow().keys().collect::<Vec<_>>()
            )
        });
        // Kling's tasks, not the sends: a send cut off before Kling took it made none.
        let made = world.kling.tasks.borrow().len();
        assert_eq!(made, 1, "cut after {cut}: Kling made {made} tasks of one key");
        if !answered.replayed {
            assert!(answered.record.is_some(), "cut after {cut}: the retry made the one task");
        }
        if finished.is_some() {
            break;
        }
    }
}

#[test]
fn a_create_without_a_key_makes_no_call_for_one() {
    let world = World::new();
    world.create_with_key_and_record(&server("web"), &body(), KEY).unwrap();
    world.coordinator_calls.borrow_mut().clear();
    world.create_and_record(&server("web"), &V2A, body());
    assert!(world.calls().iter().all(|op| !op.contains("key")), "{:?}", world.calls());
}

#[test]
fn a_keyed_create_that_waits_in_line_is_answered_again_with_its_place() {
    let world = World::with(&[("KLING_MAX_CONCURRENCY", "1")]);
    world.kling.slots.set(Some(1));
    let client = server("web");
    world.create_and_record(&client, &V2A, json!({"video_url": VIDEO}));
    let waiting = world.create_with_key(&client, &body(), Some(KEY)).unwrap();
    let Answer::Success(first) = &waiting.answer else { panic!("waits: {:?}", waiting.answer) };
    let again = world.create_with_key(&client, &body(), Some(KEY)).unwrap();
    assert!(again.replayed);
    assert_eq!(again.answer, Answer::Success(first.clone()));
    assert_eq!(world.kling.created.borrow().len(), 1, "still waiting, sent once at most");
}

#[test]
fn a_keyed_useapi_create_that_waits_in_line_keeps_its_key() {
    let world = World::with(&[("KLING_MAX_CONCURRENCY", "1")]);
    world.kling.slots.set(Some(1));
    let client = server("web");
    world.create_and_record(&client, &V2A, json!({"video_url": VIDEO}));
    let body = json!({"video": VIDEO}).to_string().into_bytes();
    let first =
        world.edge(|edge| block_on(edge.create_keyed(&client, &ADD_SOUND, body.clone(), Some(KEY)))).unwrap();
    assert!(matches!(first.answer, Answer::UseApi(_)), "{:?}", first.answer);
    let again = world.edge(|edge| block_on(edge.create_keyed(&client, &ADD_SOUND, body, Some(KEY)))).unwrap();
    assert!(again.replayed, "the key is the waiting create's");
    assert_eq!(again.answer, first.answer);
    let store = world.coordinators().store(&task::tenant_shard("web"));
    let waiting = store.all().into_iter().filter(|record| record.queued.is_some()).count();
    assert_eq!(waiting, 1, "one create waits, not two");
}

#[test]
fn a_5xx_from_klings_gateway_keeps_the_key_until_the_task_is_looked_for() {
    let world = World::new();
    let client = server("web");
    let failed =
        KlingReply { status: 503, body: br#"{"code":5000,"message":"busy","request_id":"r"}"#.to_vec() };
    world.kling.create_scripts.borrow_mut().push_back(CreateScript::Reply(failed));
    let first = world.create_with_key(&client, &body(), Some(KEY)).unwrap();
    assert!(
        matches!(&first.answer, Answer::Kling(reply) if reply.status == 503),
        "Kling's answer, passed on"
    );
    // Kling made the task all the same.
    let sent = world.kling.created.borrow()[0].1.clone();
    world.kling.set(json!({"task_id": "task-made", "task_status": "submitted", "created_at": START,
        "updated_at": START, "task_info": {"external_task_id": sent["external_task_id"]}}));
    assert_eq!(world.create_with_key(&client, &body(), Some(KEY)).unwrap_err().status, 409, "no second send");
    world.run_alarms_for(60_000);
    let replayed = world.create_with_key(&client, &body(), Some(KEY)).unwrap();
    assert!(replayed.replayed);
    assert_eq!(world.kling.created.borrow().len(), 1, "Kling was sent the create once");
}
