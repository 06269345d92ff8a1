//! Uploads against in-memory ports, with the real coordinator behind them: stored and
//! measured, refused with the fact and leaving nothing, counted against the day, cut off at
//! every `await` and cleaned up by the alarm, and named in creates.

use serde_json::{json, Value};

use super::*;
use crate::api::multipart::MAX_TEXT_BYTES;
use crate::api::surfaces::Style;
use crate::flows::upload::{Upload, PART_BYTES};
use crate::ports::AssetStore;
use crate::record::asset::{self, AssetState, UPLOAD_DEADLINE_MS};
use crate::testing::MemoryBody;

const SIX_SECONDS: &[u8] = include_bytes!("../../../tests/media/six-seconds.mp4");
const NINE_SECONDS_MOV: &[u8] = include_bytes!("../../../tests/media/nine-seconds.mov");
const ONE_SECOND: &[u8] = include_bytes!("../../../tests/media/one-second.mp4");
const THIRTY_SECONDS: &[u8] = include_bytes!("../../../tests/media/thirty-seconds.mp4");
const BOUNDARY: &str = "----kling-edge-test";

fn raw(content_type: &str, bytes: &[u8], declared: bool) -> Upload<MemoryBody> {
    Upload {
        content_type: Some(content_type.to_owned()),
        content_length: declared.then_some(bytes.len() as u64),
        body: MemoryBody::of(bytes, 1_000),
    }
}

/// A form with these text fields and one file part (if given), in chunks of 777 bytes.
fn form(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Upload<MemoryBody> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    if let Some((content_type, bytes)) = file {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"clip\"\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Upload {
        content_type: Some(format!("multipart/form-data; boundary={BOUNDARY}")),
        content_length: None,
        body: MemoryBody::of(&body, 777),
    }
}

impl World {
    fn upload(&self, client: &Client, upload: Upload<MemoryBody>) -> Result<Value, ApiError> {
        match self.edge(|edge| block_on(edge.upload(client, Style::Kling, upload)))? {
            Answer::Success(data) => Ok(data),
            other => panic!("an upload answers in Kling's envelope: {other:?}"),
        }
    }

    fn assets_of(&self, client: &Client) -> Vec<crate::record::asset::Asset> {
        self.coordinators().store(&task::tenant_shard(&client.tenant)).all_assets()
    }

    fn asset_objects(&self) -> Vec<String> {
        self.bucket
            .objects
            .borrow()
            .keys()
            .filter(|key| key.starts_with(asset::KEY_PREFIX))
            .cloned()
            .collect()
    }

    /// Nothing of an upload is left: no record, no object, no multipart upload open.
    fn assert_nothing_kept(&self, client: &Client, why: &str) {
        assert!(self.assets_of(client).is_empty(), "{why}: a record was kept");
        assert!(self.asset_objects().is_empty(), "{why}: an object was kept");
        assert!(self.bucket.open_uploads.borrow().is_empty(), "{why}: a multipart upload was left open");
    }
}

fn stored_object(world: &World, data: &Value) -> Vec<u8> {
    let url = data["url"].as_str().unwrap();
    let link = asset_links::parse(&world.config.link_key, ORIGIN, url).expect("an asset link");
    world.bucket.objects.borrow()[&asset::object_key(&link.shard, &link.asset_id)].1.clone()
}

use crate::links::asset_links;

#[test]
fn a_raw_mp4_and_a_mov_form_are_stored_measured_and_listed_newest_first() {
    let world = World::new();
    let web = server("web");
    let mp4 = world.upload(&web, raw("video/mp4", SIX_SECONDS, true)).unwrap();
    assert_eq!(mp4["content_type"], "video/mp4");
    assert_eq!(mp4["bytes"], SIX_SECONDS.len());
    assert!((mp4["duration"].as_f64().unwrap() - 6.0).abs() < 0.2, "{mp4}");
    assert_eq!(stored_object(&world, &mp4), SIX_SECONDS);
    let url = mp4["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{ORIGIN}/v1/assets/")) && url.contains("/video.mp4?expires="), "{url}");
    assert!(world.bucket.reads.get() <= 3, "measured with a few ranged reads");

    world.runtime.advance(1_000);
    let mov = world
        .upload(&web, form(&[("note", "ignored")], Some(("video/quicktime", NINE_SECONDS_MOV))))
        .unwrap();
    assert_eq!(mov["content_type"], "video/quicktime");
    assert!((mov["duration"].as_f64().unwrap() - 9.0).abs() < 0.2, "{mov}");
    assert!(mov["url"].as_str().unwrap().contains("/video.mov?"));
    assert_eq!(stored_object(&world, &mov), NINE_SECONDS_MOV);
    assert!(world.bucket.open_uploads.borrow().is_empty());

    let page = Page { num: 1, size: 10 };
    let Answer::Success(Value::Array(listed)) =
        world.edge(|edge| block_on(edge.list_assets(&web, page))).unwrap()
    else {
        panic!()
    };
    let ids: Vec<&Value> = listed.iter().map(|asset| &asset["asset_id"]).collect();
    assert_eq!(ids, [&mov["asset_id"], &mp4["asset_id"]]);
    // Another tenant sees none of them, and cannot read one.
    let ops = server("ops");
    let Answer::Success(Value::Array(theirs)) =
        world.edge(|edge| block_on(edge.list_assets(&ops, page))).unwrap()
    else {
        panic!()
    };
    assert!(theirs.is_empty());
    let id = mp4["asset_id"].as_str().unwrap();
    assert_eq!(world.edge(|edge| block_on(edge.get_asset(&ops, id))).unwrap_err().status, 404);
    let Answer::Success(again) = world.edge(|edge| block_on(edge.get_asset(&web, id))).unwrap() else {
        panic!()
    };
    assert_eq!(again["bytes"], SIX_SECONDS.len());
}

#[test]
fn what_kling_would_refuse_is_refused_with_the_measured_fact_and_leaves_nothing() {
    let world = World::new();
    let web = server("web");
    let cases: Vec<(&str, Upload<MemoryBody>, u16, &str)> = vec![
        (
            "1 s",
            raw("video/mp4", ONE_SECOND, true),
            400,
            "file: the video lasts 1.0 s; Kling accepts 3 to 20 s",
        ),
        (
            "30 s",
            raw("video/mp4", THIRTY_SECONDS, false),
            400,
            "file: the video lasts 30.0 s; Kling accepts 3 to 20 s",
        ),
        (
            "a page",
            raw("video/mp4", b"<!doctype html><html><body>hi</body></html>", true),
            400,
            "file: is not an MP4 or MOV video",
        ),
        ("a gif", raw("image/gif", b"GIF89a....", true), 415, "Content-Type: is image/gif;"),
        (
            "a form's gif",
            form(&[], Some(("image/gif", b"GIF89a"))),
            415,
            "the file part's Content-Type: is image/gif",
        ),
        ("a form of text", form(&[("video", "x")], None), 400, "file: the form has no file part"),
        ("an empty body", raw("video/mp4", b"", true), 400, "upload: the body is empty"),
    ];
    for (what, upload, status, message) in cases {
        let refusal = world.upload(&web, upload).unwrap_err();
        assert_eq!(refusal.status, status, "{what}: {refusal:?}");
        assert!(refusal.message.starts_with(message), "{what}: {}", refusal.message);
        world.assert_nothing_kept(&web, what);
    }
}

#[test]
fn an_upload_over_100_mb_is_refused_before_a_byte_is_read_or_anything_is_counted() {
    let world = World::new();
    let web = server("web");
    let declared = Upload {
        content_type: Some("video/mp4".into()),
        content_length: Some(200 * 1024 * 1024),
        body: MemoryBody::of(SIX_SECONDS, 1_000),
    };
    let refusal = world.upload(&web, declared).unwrap_err();
    assert_eq!(refusal.status, 413);
    assert!(world.calls().is_empty(), "no coordinator was asked");
    // Undeclared, it is cut off as soon as it passes the cap, its multipart upload aborted.
    let mut huge = MemoryBody::default();
    huge.chunks.push_back(SIX_SECONDS.to_vec());
    for _ in 0..13 {
        huge.chunks.push_back(vec![0; PART_BYTES]);
    }
    let streamed = Upload { content_type: Some("video/mp4".into()), content_length: None, body: huge };
    assert_eq!(world.upload(&web, streamed).unwrap_err().status, 413);
    world.assert_nothing_kept(&web, "too large");
    // What arrived before the cut counts against the day; nothing of the declared one does.
    let shard = task::tenant_shard(&web.tenant);
    let day = world.coordinators().store(&shard).meta(crate::flows::assets::UPLOAD_DAY_META).unwrap();
    let counted = asset::UploadDay::read(day.as_deref(), world.runtime.now.get()).bytes;
    assert!(counted > asset::MAX_BYTES && counted <= asset::MAX_BYTES + PART_BYTES as u64, "{counted}");
}

#[test]
fn a_large_upload_without_a_length_goes_in_parts_of_one_size() {
    let world = World::new();
    let web = server("web");
    // The video, then a `free` box of 17 MiB: three parts, the last one shorter.
    let mut file = SIX_SECONDS.to_vec();
    let padding = 17 * 1024 * 1024;
    file.extend_from_slice(&(padding as u32).to_be_bytes());
    file.extend_from_slice(b"free");
    file.resize(SIX_SECONDS.len() + padding, 0);
    let stored = world.upload(&web, raw("video/mp4", &file, false)).unwrap();
    assert_eq!(stored["bytes"], file.len());
    assert_eq!(stored_object(&world, &stored), file);
}

#[test]
fn a_body_that_breaks_off_or_a_bucket_that_fails_leaves_nothing() {
    let world = World::new();
    let web = server("web");
    for declared in [true, false] {
        let mut upload = raw("video/mp4", &SIX_SECONDS[..3_000], false);
        upload.content_length = declared.then_some(SIX_SECONDS.len() as u64);
        upload.body.breaks_off = true;
        let refusal = world.upload(&web, upload).unwrap_err();
        assert_eq!(refusal.status, 400, "{refusal:?}");
        assert!(refusal.message.contains("broke off"), "{}", refusal.message);
        world.assert_nothing_kept(&web, "broken off");
        let shard = task::tenant_shard(&web.tenant);
        let day = world.coordinators().store(&shard).meta(crate::flows::assets::UPLOAD_DAY_META).unwrap();
        let counted = asset::UploadDay::read(day.as_deref(), world.runtime.now.get()).bytes;
        // A declared body that broke off counts nothing (what arrived is not known); a
        // streamed one counts what arrived.
        assert_eq!(counted, if declared { 0 } else { 3_000 }, "declared: {declared}");
        world.coordinators().store(&shard).set_meta(crate::flows::assets::UPLOAD_DAY_META, "0 0").unwrap();
    }
    world.bucket.refuses_parts.set(true);
    let refusal = world.upload(&web, form(&[], Some(("video/mp4", SIX_SECONDS)))).unwrap_err();
    assert_eq!(refusal.status, 503);
    world.assert_nothing_kept(&web, "bucket down");
}

#[test]
fn uploads_count_against_the_tenants_bytes_of_the_day() {
    let limit = 1024 * 1024;
    let world = World::with(&[("UPLOAD_BYTES_PER_DAY", &limit.to_string())]);
    let web = server("web");
    let mut padded = SIX_SECONDS.to_vec();
    let padding = 700 * 1024;
    padded.extend_from_slice(&(padding as u32).to_be_bytes());
    padded.extend_from_slice(b"free");
    padded.resize(SIX_SECONDS.len() + padding, 0);
    world.upload(&web, raw("video/mp4", &padded, false)).unwrap();
    // Declared: refused before a byte is stored, saying when the day renews.
    let refusal = world.upload(&web, raw("video/mp4", &padded, true)).unwrap_err();
    assert_eq!(refusal.status, 429);
    let (name, retry_after) = refusal.header.clone().unwrap();
    assert_eq!(name, "Retry-After");
    assert!(retry_after.parse::<u64>().unwrap() <= 24 * 3600);
    // A small one still fits; another tenant has its own day.
    world.upload(&web, raw("video/mp4", SIX_SECONDS, true)).unwrap();
    world.upload(&server("ops"), raw("video/mp4", &padded, true)).unwrap();
    // The next day renews it.
    world.runtime.advance(24 * 3600 * 1000);
    world.upload(&web, raw("video/mp4", &padded, true)).unwrap();
}

#[test]
fn an_upload_cut_off_at_any_await_is_kept_whole_or_removed_by_the_alarm() {
    let web = server("web");
    for declared in [true, false] {
        let mut finished = false;
        for polls in 0..200 {
            let world = World::new();
            let upload = if declared {
                raw("video/mp4", SIX_SECONDS, true)
            } else {
                form(&[], Some(("video/mp4", SIX_SECONDS)))
            };
            let outcome = world.edge(|edge| run_until_crash(edge.upload(&web, Style::Kling, upload), polls));
            if let Some(outcome) = outcome {
                outcome.expect("an upload that runs to its end is kept");
                finished = true;
                break;
            }
            // Past the upload's deadline the alarm removes what it left.
            world.run_alarms_for(UPLOAD_DEADLINE_MS + 1_000);
            assert!(world.assets_of(&web).is_empty(), "cut off after {polls} polls: a record was kept");
            assert!(world.asset_objects().is_empty(), "cut off after {polls} polls: an object was kept");
            let shard = task::tenant_shard(&web.tenant);
            let day = world.coordinators().store(&shard).meta(crate::flows::assets::UPLOAD_DAY_META).unwrap();
            let counted = asset::UploadDay::read(day.as_deref(), world.runtime.now.get()).bytes;
            assert_eq!(counted, 0, "cut off after {polls} polls: its reservation was not given back");
        }
        assert!(finished, "the upload finishes given enough polls");
    }
}

#[test]
fn a_removal_the_bucket_refuses_is_tried_again_and_expiry_removes_the_asset() {
    let world = World::new();
    let web = server("web");
    let stored = world.upload(&web, raw("video/mp4", SIX_SECONDS, true)).unwrap();
    let id = stored["asset_id"].as_str().unwrap().to_owned();
    world.bucket.refuses_deletes.set(true);
    world.edge(|edge| block_on(edge.delete_asset(&web, &id))).unwrap();
    assert_eq!(world.assets_of(&web)[0].state, AssetState::Removing, "kept until its object is gone");
    assert_eq!(world.edge(|edge| block_on(edge.get_asset(&web, &id))).unwrap_err().status, 404);
    world.bucket.refuses_deletes.set(false);
    world.run_alarms_for(asset::REMOVE_RETRY_MS + 1);
    world.assert_nothing_kept(&web, "deleted");
    // Expiry: ASSET_RETENTION_DAYS after its upload.
    world.upload(&web, raw("video/mp4", SIX_SECONDS, true)).unwrap();
    world.run_alarms_for(7 * 24 * 3600 * 1000 + 1);
    world.assert_nothing_kept(&web, "expired");
}

#[test]
fn a_create_naming_an_own_upload_gives_kling_a_fresh_link_without_a_probe() {
    let world = World::new();
    let web = browser("web", "alice", None);
    let stored = world.upload(&web, raw("video/mp4", SIX_SECONDS, true)).unwrap();
    let url = stored["url"].as_str().unwrap().to_owned();
    world.runtime.advance(60_000);
    world.create_and_record(&web, &V2A, json!({"video_url": url}));
    let sent = world.kling.created.borrow()[0].1["video_url"].as_str().unwrap().to_owned();
    let link =
        asset_links::parse(&world.config.link_key, ORIGIN, &sent).expect("Kling is given an asset link");
    assert_eq!(link.asset_id, stored["asset_id"]);
    assert_ne!(sent, url, "a fresh link, lasting a day from the create");
    assert_eq!(world.probe.calls.get(), 0, "measured on upload, not probed again");

    // Another tenant (another browser user of the same app) is refused before Kling.
    let bob = browser("web", "bob", None);
    let refusal = world.create(&bob, &V2A, json!({"video_url": url})).unwrap_err();
    assert_eq!(refusal.status, 403, "{refusal:?}");
    assert!(refusal.message.contains("belongs to another tenant"));
    // A tampered link, and a removed upload.
    let tampered = url.replace("signature=", "signature=A");
    assert_eq!(world.create(&web, &V2A, json!({"video_url": tampered})).unwrap_err().status, 403);
    let id = stored["asset_id"].as_str().unwrap();
    world.edge(|edge| block_on(edge.delete_asset(&web, id))).unwrap();
    let gone = world.create(&web, &V2A, json!({"video_url": url})).unwrap_err();
    assert_eq!(gone.status, 400);
    assert!(gone.message.contains("no longer kept"), "{}", gone.message);
    assert_eq!(world.kling.created.borrow().len(), 1);
}

#[test]
fn useapi_add_sound_takes_a_form_with_the_video_as_a_file_or_a_url() {
    let world = World::new();
    let web = server("web");
    let upload = form(&[("maxJobs", "3"), ("replyRef", "order-7")], Some(("video/mp4", SIX_SECONDS)));
    let created = world.edge(|edge| block_on(edge.create_from_form(&web, &ADD_SOUND, upload))).unwrap();
    assert!(matches!(created.answer, Answer::UseApi(_)), "{:?}", created.answer);
    let sent = world.kling.created.borrow()[0].1.clone();
    assert!(
        asset_links::parse(&world.config.link_key, ORIGIN, sent["video_url"].as_str().unwrap()).is_some(),
        "{sent:?}"
    );
    assert_eq!(world.assets_of(&web).len(), 1, "the file is kept as an asset");

    let by_url = form(&[("video", VIDEO)], None);
    world.edge(|edge| block_on(edge.create_from_form(&web, &ADD_SOUND, by_url))).unwrap();
    assert_eq!(world.kling.created.borrow()[1].1["video_url"], VIDEO);
    // Both a file and a URL, a field too long, and a bad field are refused before Kling.
    let both = form(&[("video", VIDEO)], Some(("video/mp4", SIX_SECONDS)));
    let refusal = world.edge(|edge| block_on(edge.create_from_form(&web, &ADD_SOUND, both))).unwrap_err();
    assert_eq!(refusal.status, 400);
    let bad_with_file = form(&[("maxJobs", "many")], Some(("video/mp4", SIX_SECONDS)));
    assert_eq!(
        world
            .edge(|edge| block_on(edge.create_from_form(&web, &ADD_SOUND, bad_with_file)))
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(world.assets_of(&web).len(), 1, "a refused create keeps nothing of its file");
    assert_eq!(world.asset_objects().len(), 1);
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    let too_long = form(&[("replyRef", &long), ("video", VIDEO)], None);
    assert_eq!(
        world.edge(|edge| block_on(edge.create_from_form(&web, &ADD_SOUND, too_long))).unwrap_err().status,
        400
    );
    let bad = form(&[("maxJobs", "many"), ("video", VIDEO)], None);
    let refusal = world.edge(|edge| block_on(edge.create_from_form(&web, &ADD_SOUND, bad))).unwrap_err();
    assert!(refusal.message.starts_with("maxJobs"), "{}", refusal.message);
    assert_eq!(world.kling.created.borrow().len(), 2);
}

#[test]
fn an_upload_that_outlives_its_deadline_is_not_kept() {
    let world = World::new();
    let web = server("web");
    let shard = task::tenant_shard(&web.tenant);
    // As if the alarm ran while the bytes were still arriving: the record is gone.
    let mut upload = raw("video/mp4", SIX_SECONDS, false);
    upload.body.chunks.push_front(Vec::new());
    let store = world.coordinators().store(&shard);
    let mut polls = 0;
    let outcome = world.edge(|edge| {
        let mut future = std::pin::pin!(edge.upload(&web, Style::Kling, upload));
        loop {
            if let Some(done) = crate::testing::poll_once(future.as_mut()) {
                break done;
            }
            polls += 1;
            if let Some(kept) = store.all_assets().first().filter(|kept| kept.state == AssetState::Uploading)
            {
                store.delete_asset(&kept.asset_id).unwrap();
            }
        }
    });
    assert_eq!(outcome.unwrap_err().status, 408);
    assert!(polls > 0);
    world.assert_nothing_kept(&web, "outlived its deadline");
}

#[test]
fn concurrent_uploads_cannot_all_take_the_last_bytes_of_the_day() {
    let limit = 1024 * 1024;
    let world = World::with(&[("UPLOAD_BYTES_PER_DAY", &limit.to_string())]);
    let web = server("web");
    // Four declared uploads of 400 KiB against a day of 1 MiB: two fit, whatever the order.
    let mut file = SIX_SECONDS.to_vec();
    let padding = 400 * 1024;
    file.extend_from_slice(&(padding as u32).to_be_bytes());
    file.extend_from_slice(b"free");
    file.resize(SIX_SECONDS.len() + padding, 0);
    let outcomes = world.edge(|edge| {
        let uploads =
            (0..4).map(|_| edge.upload(&web, Style::Kling, raw("video/mp4", &file, true))).collect();
        run_together(uploads)
    });
    let stored = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let spent = outcomes.iter().filter(|outcome| outcome.as_ref().is_err_and(|e| e.status == 429)).count();
    assert_eq!((stored, spent), (2, 2), "{outcomes:?}");
    assert_eq!(world.assets_of(&web).len(), 2);
    assert_eq!(world.asset_objects().len(), 2, "a refused upload stored nothing");

    // Undeclared, each reserves what is left of the day: together they never pass it.
    world.runtime.advance(24 * 3600 * 1000);
    let outcomes = world.edge(|edge| {
        let uploads =
            (0..4).map(|_| edge.upload(&web, Style::Kling, raw("video/mp4", &file, false))).collect();
        run_together(uploads)
    });
    let stored = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert!(stored >= 1 && stored as u64 * file.len() as u64 <= limit, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|outcome| outcome.as_ref().is_ok() || outcome.as_ref().is_err_and(|e| e.status == 429)));
}

#[test]
fn a_retried_upload_with_its_key_answers_the_first_asset_and_stores_nothing_again() {
    let world = World::new();
    let client = server("web");
    let key = Some("upload-key-1");
    let upload = |bytes: &[u8]| raw("video/mp4", bytes, true);
    let (first, again) = world
        .edge(|edge| block_on(edge.upload_keyed(&client, Style::Kling, upload(SIX_SECONDS), key)))
        .unwrap();
    assert!(!again);
    let (second, replayed) = world
        .edge(|edge| block_on(edge.upload_keyed(&client, Style::Kling, upload(SIX_SECONDS), key)))
        .unwrap();
    assert!(replayed, "answered from the key");
    assert_eq!(second, first);
    assert_eq!(world.assets_of(&client).len(), 1, "one asset stored");
    assert_eq!(world.asset_objects().len(), 1);
    // Another file under the same key is refused; a refused upload frees its key.
    let other =
        world.edge(|edge| block_on(edge.upload_keyed(&client, Style::Kling, upload(ONE_SECOND), key)));
    assert_eq!(other.unwrap_err().status, 422);
    let refused = world.edge(|edge| {
        block_on(edge.upload_keyed(
            &client,
            Style::Kling,
            raw("video/mp4", b"not a video", true),
            Some("upload-key-2"),
        ))
    });
    assert_eq!(refused.unwrap_err().status, 400);
    let store = world.coordinators().store(&task::tenant_shard("web"));
    assert!(store.keys.borrow().get("upload-key-2").is_none(), "nothing stored, the key is free");
}
