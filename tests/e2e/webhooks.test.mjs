// Callbacks, coordinators and webhooks end to end: Kling's callbacks reach the worker (never
// the client) with a capability it checks without storage, each tenant's coordinator (a
// Durable Object) merges them atomically, finished tasks are published to Workers KV and
// served from there, and webhooks are forwarded, signed, on a durable schedule that
// survives a restart of the runtime.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { klingPart } from '../support/answers.mjs';
import { signWebhook, startFakeKling } from '../support/fake-kling.mjs';
import { Receiver } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, CALLBACK_URL, clientWebhookSecret, OFFICIAL, OPS_KEY, QUERY_REFRESH_MS, SECRET_KEY,
  SIMPLIFIED, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, freePort, startWorker } from '../support/worker.mjs';

const LIST_KEY = 'pk_list_test_6e5d4c3b2a1f0e9d';
const PROXY_WEBHOOK_SECRET = webhookSecret('proxy-webhook-secret-for-tests!!');
const KLING_WEBHOOK_SECRET = webhookSecret('kling-webhook-secret-for-tests!!');
const OTHER_SECRET = webhookSecret('some-other-secret-not-klings-one');
/** Fast retries for the tests: attempts at 0, 1, 3, 7 and 15 s. */
const FORWARD_RETRY_SECONDS = '1,2,4,8';

let fake;
let worker;
let receiver;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  worker = await startWorker(baseSettings(fake, {
    PROXY_API_KEYS: `web:${WEB_KEY},ops:${OPS_KEY},lister:${LIST_KEY}`,
    PROXY_WEBHOOK_SECRET,
    FORWARD_RETRY_SECONDS,
    // The test receiver listens on loopback.
    ALLOW_PRIVATE_URLS: 'true',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  await receiver?.close();
});

/** Creates a task through the worker; returns its id and the callback URL Kling was given. */
async function createTask(w = worker, { key = WEB_KEY, body = {}, path = OFFICIAL, kling = fake } = {}) {
  const response = await call(w, 'POST', path, { key, body: { video_url: VIDEO, ...body } });
  assert.equal(response.status, 200, response.text);
  const taskId = response.json.data.task_id;
  return { taskId, callbackUrl: kling.tasks.get(taskId).callbackUrl, response };
}

const getsFor = (taskId, kling = fake) => kling.apiRequests('GET').filter((r) => r.path === `${OFFICIAL}/${taskId}`).length;
const coordinatorCalls = (w, op) => w.logs().split('\n').filter((line) => line.includes(`"event":"coordinator","op":"${op}"`)).length;
const kvWrites = (w) => w.logs().split('\n').filter((line) => line.includes('"event":"kv_write"')).length;

/** Makes every call to Kling fail for the duration of `fn`. */
async function withKlingDown(fn, kling = fake) {
  kling.injectFault({ kind: 'status', status: 503, count: 1000 });
  try {
    return await fn();
  } finally {
    kling.faults.length = 0;
  }
}

/** The task as its client sees it, once `check` holds. */
function taskOnce(check, taskId, { w = worker, key = WEB_KEY, what = 'the task', timeoutMs } = {}) {
  return eventually(async () => {
    const response = await call(w, 'GET', `${OFFICIAL}/${taskId}`, { key });
    return response.status === 200 && check(response.json.data) && response.json.data;
  }, { what, timeoutMs });
}

describe('the callback URL Kling is given', () => {
  it("is the worker's own, with a fresh capability per task, and the client's is kept back", async () => {
    const hook = `${receiver.url}/hooks/first`;
    const a = await createTask(worker, { body: { callback_url: hook } });
    const b = await createTask();
    for (const { callbackUrl } of [a, b]) assert.match(callbackUrl, CALLBACK_URL(worker.url));
    assert.notEqual(a.callbackUrl, b.callbackUrl);
    assert.ok(!JSON.stringify(fake.tasks.get(a.taskId).body).includes(receiver.url), "Kling never sees the client's webhook");
  });

  it('uses PUBLIC_BASE_URL when it is set', async () => {
    const port = await freePort();
    const publicBase = `http://localhost:${port}`;
    const w = await startWorker(baseSettings(fake, { PUBLIC_BASE_URL: publicBase }), { port });
    try {
      const { callbackUrl, taskId } = await createTask(w);
      assert.match(callbackUrl, CALLBACK_URL(publicBase));
      const answer = await fake.advance(taskId, 'processing');
      assert.equal(answer.status, 200, answer.body);
    } finally {
      await w.stop();
    }
  });
});

describe('genuine callbacks', () => {
  it('are stored, then served when Kling is down', async () => {
    const { taskId } = await createTask();
    const answer = await fake.advance(taskId, 'processing');
    assert.equal(answer.status, 200, answer.body);
    assert.equal(JSON.parse(answer.body).code, 0);
    const response = await withKlingDown(() => call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY }));
    assert.equal(response.status, 200, response.text);
    assert.equal(response.json.data.task_status, 'processing');
  });

  it('make a finished task answer from KV, asking neither Kling nor the coordinator', async () => {
    const { taskId } = await createTask(worker, { body: { external_task_id: 'kv-path-1' } });
    await fake.advance(taskId, 'processing');
    await fake.advance(taskId, 'succeed');
    await taskOnce((t) => t.task_status === 'succeed', taskId);
    // The edge copy is written by the coordinator's alarm, just after the task finished.
    await eventually(async () => {
      const before = coordinatorCalls(worker, 'query');
      await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
      return coordinatorCalls(worker, 'query') === before;
    }, { what: 'the edge copy' });
    const gets = fake.apiRequests('GET').length;
    const queries = coordinatorCalls(worker, 'query');
    await withKlingDown(async () => {
      for (const path of [`${OFFICIAL}/${taskId}`, `${SIMPLIFIED}/${taskId}`]) {
        const response = await call(worker, 'GET', path, { key: WEB_KEY });
        assert.equal(response.status, 200, response.text);
        assert.deepEqual(Object.keys(response.json).sort(), ['code', 'data', 'message', 'request_id']);
        assert.deepEqual(klingPart(response.json.data), fake.tasks.get(taskId).data, "exactly Kling's data");
      }
    });
    assert.equal(coordinatorCalls(worker, 'query'), queries, 'the coordinator was not asked');
    const byExternal = await call(worker, 'GET', `${OFFICIAL}/kv-path-1`, { key: WEB_KEY });
    assert.equal(byExternal.json.data.task_id, taskId, 'an external id is resolved by the coordinator');
    assert.equal(fake.apiRequests('GET').length, gets, 'Kling was not asked');
  });

  it('of a failed task are final too', async () => {
    const { taskId } = await createTask();
    await fake.advance(taskId, 'failed');
    const response = await withKlingDown(() => call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY }));
    assert.equal(response.json.data.task_status, 'failed');
    assert.equal(response.json.data.task_status_msg, 'The video could not be processed');
  });

  it('may arrive before the create is answered', async () => {
    fake.callbackBeforeAnswering = 'processing';
    const { taskId, response } = await createTask();
    assert.equal(response.json.data.task_status, 'submitted', "the create's own answer is passed on");
    assert.equal(fake.callbacks.at(-1).taskId, taskId);
    assert.equal(fake.callbacks.at(-1).status, 200, 'the early callback was accepted');
    const stored = await withKlingDown(() => call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY }));
    assert.equal(stored.json.data.task_status, 'processing', 'the older create answer did not overwrite it');
  });

  it('30 at once, shuffled, leave the task final with its audios, listed once, forwarded once', async () => {
    const hook = '/hooks/thirty';
    const { taskId, callbackUrl } = await createTask(worker, { key: LIST_KEY, body: { callback_url: `${receiver.url}${hook}` } });
    const base = fake.tasks.get(taskId).data;
    await fake.advance(taskId, 'succeed', { callback: false, updatedAt: base.updated_at + 20 });
    const final = structuredClone(fake.tasks.get(taskId).data);
    const reports = [];
    for (let i = 0; i < 10; i += 1) {
      reports.push({ ...base, task_status: 'submitted', updated_at: base.updated_at + i });
      reports.push({ ...base, task_status: 'processing', updated_at: base.updated_at + 10 + i });
      reports.push(final);
    }
    reports.sort(() => Math.random() - 0.5);
    const answers = await Promise.all(reports.map((data) => fake.sendCallback(taskId, { url: callbackUrl, data })));
    assert.deepEqual([...new Set(answers.map((a) => a.status))], [200]);
    const stored = await taskOnce((t) => t.task_status === 'succeed', taskId, { key: LIST_KEY });
    assert.equal(stored.task_result.audios.length, 1);
    const listed = await call(worker, 'GET', `${OFFICIAL}?pageSize=500`, { key: LIST_KEY });
    assert.equal(listed.json.data.filter((t) => t.task_id === taskId).length, 1);
    await eventually(() => receiver.at(hook).length >= 1, { what: 'the webhook' });
    await new Promise((resolve) => setTimeout(resolve, 2000));
    assert.equal(receiver.at(hook).length, 1, 'forwarded once');
    assert.equal(receiver.at(hook)[0].headers['webhook-id'], `msg_${taskId}_succeed`);
  });
});

describe('forged callbacks', () => {
  it('with an unknown, altered or missing capability answer 404 and change nothing', async () => {
    const hook = '/hooks/forged';
    const { taskId, callbackUrl } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    const capability = callbackUrl.split('/').pop();
    const altered = `${capability.slice(0, 40)}${capability[40] === 'A' ? 'B' : 'A'}${capability.slice(41)}`;
    for (const url of [
      `${worker.url}/v1/callbacks/kling/${altered}`,
      `${worker.url}/v1/callbacks/kling/${crypto.randomBytes(53).toString('base64url')}`,
      `${worker.url}/v1/callbacks/kling/${crypto.randomBytes(16).toString('hex')}`,
      `${worker.url}/v1/callbacks/kling/`,
      `${worker.url}/v1/callbacks/kling`,
      `${worker.url}/v1/callbacks/kling/not.a.token`,
    ]) {
      const forged = { ...fake.tasks.get(taskId).data, task_status: 'succeed', updated_at: Date.now() + 1000 };
      const answer = await fake.sendCallback(taskId, { url, data: forged });
      assert.equal(answer.status, 404, `${url}: ${answer.body}`);
      assert.ok([1202, 1203].includes(JSON.parse(answer.body).code), answer.body);
    }
    const response = await withKlingDown(() => call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY }));
    assert.equal(response.json.data.task_status, 'submitted');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(receiver.at(hook).length, 0, 'nothing forwarded');
  });

  it("with another task's capability answer 403 and change nothing", async () => {
    const victim = await createTask();
    const attacker = await createTask();
    const forged = {
      ...fake.tasks.get(victim.taskId).data,
      task_status: 'succeed',
      updated_at: Date.now() + 1000,
      task_result: { audios: [{ id: 'x', url_mp3: 'https://evil.example.com/a.mp3' }] },
    };
    const answer = await fake.sendCallback(victim.taskId, { url: attacker.callbackUrl, data: forged });
    assert.equal(answer.status, 403, answer.body);
    const response = await call(worker, 'GET', `${OFFICIAL}/${victim.taskId}`, { key: WEB_KEY });
    assert.equal(response.json.data.task_status, 'submitted');
    assert.ok(!response.text.includes('evil.example.com'));
  });

  it("for another task id, beating the create's record, leave nothing behind once the create is recorded", async () => {
    // A leaked callback URL, used before the create's answer is recorded: the forged report
    // names a task Kling never made, with the attacker's file as its result.
    let forgedId;
    fake.beforeAnswering = async (task) => {
      forgedId = `${task.data.task_id}7`;
      const now = Date.now();
      const forged = {
        task_id: forgedId, task_status: 'succeed', task_status_msg: '', created_at: now, updated_at: now,
        task_result: { audios: [{ id: 'x', url_mp3: `${fake.url}/samples/sample-audio.mp3`, duration: '5' }] },
      };
      const answer = await fake.sendCallback(task.data.task_id, { url: task.callbackUrl, data: forged });
      assert.equal(answer.status, 200, 'the capability is valid, so the report is taken for now');
    };
    const { taskId } = await createTask();
    await eventually(async () => (await call(worker, 'GET', `${OFFICIAL}/${forgedId}`, { key: WEB_KEY })).status === 404,
      { what: 'the forged task forgotten' });
    const listed = await call(worker, 'GET', `${OFFICIAL}?pageSize=100`, { key: WEB_KEY });
    assert.ok(!listed.text.includes(forgedId), 'not listed');
    const own = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
    assert.equal(own.status, 200, own.text);
    assert.equal(own.json.data.task_id, taskId, 'the real task is recorded');
  });

  it('with a malformed body answer 400 and change nothing', async () => {
    const { taskId, callbackUrl } = await createTask();
    for (const rawBody of ['not json', '[]', '{}', JSON.stringify({ task_id: taskId, task_status: 'done' }), JSON.stringify({ task_status: 'succeed' })]) {
      const answer = await fake.sendCallback(taskId, { url: callbackUrl, rawBody });
      assert.equal(answer.status, 400, `${rawBody}: ${answer.body}`);
    }
    const response = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
    assert.equal(response.json.data.task_status, 'submitted');
  });
});

describe('merging', () => {
  it('ignores duplicates and forwards once', async () => {
    const hook = '/hooks/duplicates';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'succeed');
    const again = await fake.sendCallback(taskId);
    assert.equal(again.status, 200);
    await eventually(() => receiver.at(hook).length === 1, { what: 'the delivery' });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(receiver.at(hook).length, 1, 'a duplicate callback is not forwarded twice');
  });

  it('never lets an older or less final report overwrite a newer one', async () => {
    const { taskId } = await createTask();
    const processing = { ...fake.tasks.get(taskId).data, task_status: 'processing', updated_at: Date.now() };
    await fake.advance(taskId, 'succeed', { updatedAt: processing.updated_at + 5000 });
    const succeeded = structuredClone(fake.tasks.get(taskId).data);
    // Late and out of order: the older processing report, then a processing report that
    // claims to be newer but is less final.
    assert.equal((await fake.sendCallback(taskId, { data: processing })).status, 200);
    assert.equal((await fake.sendCallback(taskId, { data: { ...processing, updated_at: Date.now() + 60_000 } })).status, 200);
    const response = await withKlingDown(() => call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY }));
    assert.deepEqual(klingPart(response.json.data), succeeded);
  });

  it('completes a succeed that arrives without audios with one query to Kling, then forwards it once', async () => {
    const hook = '/hooks/completed';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    const gets = getsFor(taskId);
    const answer = await fake.advance(taskId, 'succeed', { audiosInCallback: false });
    assert.equal(answer.status, 200);
    const task = await taskOnce((t) => t.task_result?.audios?.length, taskId, { what: 'the stored audios' });
    assert.equal(task.task_status, 'succeed');
    assert.equal(getsFor(taskId), gets + 1, 'one query to Kling');
    const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { what: 'the delivery' });
    assert.equal(delivery.headers['webhook-id'], `msg_${taskId}_succeed`, 'the complete result, never a partial one');
    assert.equal(delivery.json.task_result.audios.length, 1);
  });
});

describe('signed callbacks (KLING_WEBHOOK_SECRET)', () => {
  let signed;
  let signingFake;

  before(async () => {
    signingFake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, webhookSecret: KLING_WEBHOOK_SECRET });
    signed = await startWorker(baseSettings(signingFake, { KLING_WEBHOOK_SECRET }));
  });

  after(async () => {
    await signed?.stop();
    await signingFake?.close();
  });

  async function signedTask() {
    const response = await call(signed, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    return response.json.data.task_id;
  }

  const stateOf = async (taskId) => (await call(signed, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY })).json.data.task_status;

  it('accept a good signature', async () => {
    const taskId = await signedTask();
    const answer = await signingFake.advance(taskId, 'succeed');
    assert.equal(answer.status, 200, answer.body);
  });

  it('accept any matching signature while the secret is rotated', async () => {
    const taskId = await signedTask();
    const answer = await signingFake.advance(taskId, 'processing', { extraSignatures: ['v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='] });
    assert.equal(answer.status, 200, answer.body);
  });

  for (const [name, options] of [
    ['a bad signature', { signWith: OTHER_SECRET }],
    ['a stale timestamp', { timestamp: Math.floor(Date.now() / 1000) - 6 * 60 }],
    ['a future timestamp', { timestamp: Math.floor(Date.now() / 1000) + 6 * 60 }],
    ['no signature', { sign: false }],
  ]) {
    it(`refuse ${name} with 401 and store nothing`, async () => {
      const taskId = await signedTask();
      signingFake.tasks.get(taskId).data.task_status = 'succeed';
      const answer = await signingFake.sendCallback(taskId, options);
      assert.equal(answer.status, 401, answer.body);
      assert.match(JSON.parse(answer.body).message, /callback signature/);
      signingFake.tasks.get(taskId).data.task_status = 'submitted';
      assert.equal(await stateOf(taskId), 'submitted');
    });
  }

  it('refuse a signed body that was altered', async () => {
    const taskId = await signedTask();
    const body = JSON.stringify({ ...signingFake.tasks.get(taskId).data, task_status: 'failed' });
    const id = 'msg_1';
    const at = Math.floor(Date.now() / 1000);
    const response = await fetch(signingFake.tasks.get(taskId).callbackUrl, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'webhook-id': id,
        'webhook-timestamp': String(at),
        'webhook-signature': signWebhook(KLING_WEBHOOK_SECRET, id, at, body.replace('failed', 'succeed')),
      },
      body,
    });
    assert.equal(response.status, 401);
    assert.equal(await stateOf(taskId), 'submitted');
  });

  it('refuse creates with a callback_url when forwarding is not configured', async () => {
    const response = await call(signed, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO, callback_url: 'https://app.example.com/hook' } });
    assert.equal(response.status, 400);
    assert.match(response.json.message, /^callback_url: .*PROXY_WEBHOOK_SECRET/);
  });
});

describe('tenants', () => {
  it("never see each other's tasks", async () => {
    const { taskId } = await createTask(worker, { body: { external_task_id: 'tenant-web-1' } });
    await fake.advance(taskId, 'succeed');
    for (const id of [taskId, 'tenant-web-1']) {
      const response = await call(worker, 'GET', `${OFFICIAL}/${id}`, { key: OPS_KEY });
      assert.equal(response.status, 404, response.text);
      assert.equal(response.json.code, 1203);
      const unknown = await call(worker, 'GET', `${OFFICIAL}/860000000000099999`, { key: OPS_KEY });
      assert.equal(unknown.json.message.replace('860000000000099999', id), response.json.message, 'the same answer as a task that does not exist');
    }
    const list = await call(worker, 'GET', OFFICIAL, { key: OPS_KEY });
    assert.ok(!list.json.data.some((t) => t.task_id === taskId));
    const own = await call(worker, 'GET', `${OFFICIAL}?pageSize=500`, { key: WEB_KEY });
    assert.ok(own.json.data.some((t) => t.task_id === taskId));
  });

  it("cannot query another tenant's task by its external_task_id", async () => {
    const ops = await call(worker, 'POST', OFFICIAL, { key: OPS_KEY, body: { video_url: VIDEO, external_task_id: 'shared-ext' } });
    assert.equal(ops.status, 200);
    const response = await call(worker, 'GET', `${OFFICIAL}/shared-ext`, { key: WEB_KEY });
    assert.equal(response.status, 404);
    const own = await call(worker, 'GET', `${OFFICIAL}/shared-ext`, { key: OPS_KEY });
    assert.equal(own.json.data.task_id, ops.json.data.task_id);
  });
});

describe('the task list', () => {
  it("pages the caller's own tasks from its coordinator, newest first", async () => {
    const lister = 'pk_lister_only_test_0a1b2c3d4e5f';
    const w = await startWorker(baseSettings(fake, { PROXY_API_KEYS: `lister:${lister}` }));
    try {
      const ids = [];
      for (let i = 0; i < 5; i += 1) {
        const { taskId } = await createTask(w, { key: lister, path: i % 2 ? SIMPLIFIED : OFFICIAL });
        ids.push(taskId);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const newestFirst = [...ids].reverse();
      const gets = fake.apiRequests('GET').length;
      const all = await call(w, 'GET', OFFICIAL, { key: lister });
      assert.equal(all.status, 200);
      assert.deepEqual(all.json.data.map((t) => t.task_id), newestFirst);
      const pages = [];
      for (const pageNum of [1, 2, 3]) {
        const page = await call(w, 'GET', `${SIMPLIFIED}?pageNum=${pageNum}&pageSize=2`, { key: lister });
        pages.push(page.json.data.map((t) => t.task_id));
      }
      assert.deepEqual(pages, [newestFirst.slice(0, 2), newestFirst.slice(2, 4), newestFirst.slice(4)]);
      const beyond = await call(w, 'GET', `${OFFICIAL}?pageNum=9&pageSize=2`, { key: lister });
      assert.deepEqual(beyond.json.data, []);
      assert.equal(fake.apiRequests('GET').length, gets, 'the list never asks Kling');
      assert.equal(kvWrites(w), 0, 'running tasks cost no KV write');
    } finally {
      await w.stop();
    }
  });
});

describe('forwarding to the client webhook', () => {
  it('POSTs the finished task, signed, and shows the delivery on the task', async () => {
    const hook = '/hooks/signed';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'processing');
    await fake.advance(taskId, 'succeed');
    const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { what: 'the delivery' });
    assert.equal(delivery.verdict, null, "the signature verifies with the client's own secret");
    assert.equal(delivery.headers['webhook-id'], `msg_${taskId}_succeed`);
    const { tenant, ...kling } = delivery.json;
    assert.equal(tenant, 'web', 'the body names the tenant that created the task');
    assert.deepEqual(klingPart(kling), fake.tasks.get(taskId).data, "the same JSON as Kling's callback, with its copies' links");
    assert.equal(receiver.at(hook).length, 1, 'only the final state is forwarded');
    const task = await taskOnce((t) => t.delivery?.state === 'delivered', taskId, { what: 'the recorded delivery' });
    assert.equal(task.delivery.attempts, 1);
    assert.equal(task.delivery.last_http_status, 200);
    assert.equal(task.delivery.message_id, `msg_${taskId}_succeed`);
  });

  it('is not held back by another receiver that answers after 1 s', async () => {
    const slow = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
    slow.answerAfter(1000);
    try {
      const tasks = [];
      for (let i = 0; i < 12; i += 1) {
        tasks.push({ ...(await createTask(worker, { body: { callback_url: `${slow.url}/slow` } })), to: 'slow' });
        tasks.push({ ...(await createTask(worker, { body: { callback_url: `${receiver.url}/beside-slow` } })), to: 'fast' });
      }
      await Promise.all(tasks.map(({ taskId }) => fake.advance(taskId, 'succeed')));
      await eventually(() => receiver.at('/beside-slow').length === 12, { what: "the fast receiver's webhooks", timeoutMs: 20_000 });
      await eventually(() => slow.at('/slow').length === 12, { what: "the slow receiver's webhooks", timeoutMs: 60_000 });
      // The slow receiver takes its webhooks four at a time, a second each: the other
      // receiver's all arrived before the slow one's fifth (its second round).
      const lastFast = Math.max(...receiver.at('/beside-slow').map((d) => d.receivedAt));
      const slowArrivals = slow.at('/slow').map((d) => d.receivedAt).sort((a, b) => a - b);
      assert.ok(lastFast < slowArrivals[4], `the last fast webhook came ${lastFast - slowArrivals[0]} ms after the first slow one; the fifth slow one at ${slowArrivals[4] - slowArrivals[0]} ms`);
    } finally {
      await slow.close();
    }
  });

  it('reaches a receiver that answers 503 for its first 12 seconds, on FORWARD_RETRY_SECONDS', async () => {
    const hook = '/hooks/flaky';
    receiver.failFor(hook, 12_000, 503);
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'failed');
    await eventually(() => receiver.at(hook).some((d) => d.status === 200), { timeoutMs: 30_000, what: 'the delivery' });
    const attempts = receiver.at(hook);
    assert.deepEqual(attempts.map((d) => d.status), [503, 503, 503, 503, 200], 'attempts at 0, 1, 3, 7 and 15 s');
    assert.ok(attempts.every((d) => d.verdict === null), 'every attempt signed afresh');
    assert.equal(new Set(attempts.map((d) => d.headers['webhook-id'])).size, 1, 'one message id for every attempt');
    assert.equal(new Set(attempts.map((d) => d.headers['webhook-signature'])).size > 1, true, 'fresh signatures');
    const gaps = attempts.slice(1).map((d, i) => d.receivedAt - attempts[i].receivedAt);
    assert.ok(gaps.every((gap, i) => gap >= [1, 2, 4, 8][i] * 1000 - 100), `the schedule: ${gaps} ms`);
    const task = await taskOnce((t) => t.delivery?.state === 'delivered', taskId, { what: 'the recorded delivery' });
    assert.equal(task.delivery.attempts, 5);
  });

  it('records a refused delivery as failed without retrying it', async () => {
    const hook = '/hooks/gone';
    receiver.failNext(hook, 410);
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'succeed');
    const task = await taskOnce((t) => t.delivery?.state === 'failed', taskId, { what: 'the failed delivery' });
    assert.equal(task.delivery.attempts, 1);
    assert.equal(task.delivery.last_http_status, 410);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(receiver.at(hook).length, 1);
  });

  it('forwards a succeed it cannot complete as partial, then the complete result', async () => {
    const hook = '/hooks/partial';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    // Kling calls back without the audios, then cannot be reached for the query that would complete it.
    await withKlingDown(async () => {
      await fake.advance(taskId, 'succeed', { audiosInCallback: false });
      await eventually(() => receiver.at(hook).length === 1, { what: 'the partial delivery' });
    });
    const [partial] = receiver.at(hook);
    assert.equal(partial.headers['webhook-id'], `msg_${taskId}_succeed_partial`);
    assert.equal(partial.json.task_result.audios, undefined);

    // A query once the task has been quiet for a few seconds asks Kling (reachable again),
    // stores the audios, and the complete result is forwarded under its own message id.
    await new Promise((resolve) => setTimeout(resolve, QUERY_REFRESH_MS + 200));
    const response = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
    assert.equal(response.json.data.task_result.audios.length, 1);
    await eventually(() => receiver.at(hook).length === 2, { what: 'the complete delivery' });
    const complete = receiver.at(hook)[1];
    assert.equal(complete.headers['webhook-id'], `msg_${taskId}_succeed`);
    assert.deepEqual(klingPart(complete.json), { ...fake.tasks.get(taskId).data, tenant: 'web' });
  });
});

describe('a task Kling never calls back about', () => {
  it('reaches the store and the client webhook by polling (KLING_POLL_SECONDS)', async () => {
    const silent = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
    const w = await startWorker(baseSettings(silent, {
      PROXY_WEBHOOK_SECRET, ALLOW_PRIVATE_URLS: 'true', KLING_POLL_SECONDS: '1,1,2',
    }));
    try {
      const hook = '/hooks/never-called-back';
      const { taskId } = await createTask(w, { body: { callback_url: `${receiver.url}${hook}` }, kling: silent });
      await silent.advance(taskId, 'processing', { callback: false });
      await silent.advance(taskId, 'succeed', { callback: false });
      const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { timeoutMs: 20_000, what: 'the webhook' });
      assert.equal(delivery.headers['webhook-id'], `msg_${taskId}_succeed`);
      assert.equal(delivery.verdict, null);
      assert.equal(silent.callbacks.length, 0, 'Kling never called back');
      const polled = getsFor(taskId, silent);
      assert.ok(polled >= 1, 'the coordinator asked Kling');
      const task = await taskOnce((t) => t.task_status === 'succeed', taskId, { w, what: 'the stored result' });
      assert.equal(task.task_result.audios.length, 1);
      await new Promise((resolve) => setTimeout(resolve, 3000));
      assert.equal(getsFor(taskId, silent), polled, 'a finished task is polled no more');
    } finally {
      await w.stop();
      await silent.close();
    }
  });
});

describe('a restart of the runtime', () => {
  it('does not lose a pending delivery: it arrives once the worker is back', async () => {
    const state = await fs.mkdtemp(path.join(os.tmpdir(), 'kling-edge-restart-'));
    const downPort = await freePort();
    const settings = baseSettings(fake, {
      PROXY_WEBHOOK_SECRET, ALLOW_PRIVATE_URLS: 'true', FORWARD_RETRY_SECONDS: '2,2,2,2,2,2,2,2,2,2',
    });
    const port = await freePort();
    let w = await startWorker(settings, { persistTo: state, port });
    const hook = '/hooks/after-restart';
    let late;
    try {
      // The receiver is not listening yet: the first attempts fail to connect.
      const { taskId } = await createTask(w, { body: { callback_url: `http://127.0.0.1:${downPort}${hook}` } });
      await fake.advance(taskId, 'succeed');
      await taskOnce((t) => t.delivery?.state === 'pending' && t.delivery.attempts >= 1, taskId, { w, what: 'a failed first attempt' });
      await w.stop();

      late = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen(downPort);
      w = await startWorker(settings, { persistTo: state, port });
      const [delivery] = await eventually(() => late.at(hook).length && late.at(hook), { timeoutMs: 30_000, what: 'the delivery after the restart' });
      assert.equal(delivery.verdict, null);
      assert.equal(delivery.headers['webhook-id'], `msg_${taskId}_succeed`);
      const task = await taskOnce((t) => t.delivery?.state === 'delivered', taskId, { w, what: 'the recorded delivery' });
      assert.ok(task.delivery.attempts >= 2);
    } finally {
      await w.stop();
      await late?.close();
      await fs.rm(state, { recursive: true, force: true });
    }
  });
});

describe('a runtime killed with creates in flight', () => {
  it('loses no task Kling took: those whose callbacks landed while it was down are found, listed and delivered', async () => {
    const state = await fs.mkdtemp(path.join(os.tmpdir(), 'kling-edge-killed-'));
    const port = await freePort();
    const settings = baseSettings(fake, { PROXY_WEBHOOK_SECRET, ALLOW_PRIVATE_URLS: 'true', KLING_TIMEOUT_MS: '2000' });
    let w = await startWorker(settings, { persistTo: state, port });
    const hook = '/hooks/killed-in-flight';
    const creates = 5;
    const taken = [];
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    let allTaken;
    const tookAll = new Promise((resolve) => { allTaken = resolve; });
    // Kling takes each create and holds its answer; meanwhile the runtime is killed.
    const hold = async (task) => {
      taken.push(task.data.task_id);
      if (taken.length < creates) fake.beforeAnswering = hold;
      else allTaken();
      await gate;
    };
    fake.beforeAnswering = hold;
    try {
      const inFlight = Array.from({ length: creates }, (_, i) => call(w, 'POST', OFFICIAL, {
        key: WEB_KEY, body: { video_url: VIDEO, callback_url: `${receiver.url}${hook}`, ...(i === 0 ? { external_task_id: `own-${Date.now()}` } : {}) },
      }).catch((error) => error));
      await tookAll;
      await new Promise((resolve) => setTimeout(resolve, 300));
      await w.kill();
      const answers = await Promise.all(inFlight);
      assert.ok(answers.every((answer) => answer instanceof Error || answer.status >= 500), 'no client got its answer');
      // Kling finishes every task and calls back while the worker is down; it never retries.
      for (const taskId of taken) {
        await fake.advance(taskId, 'succeed').catch(() => {});
      }
      release();
      w = await startWorker(settings, { persistTo: state, port });
      await eventually(() => new Set(receiver.at(hook).map((d) => d.json.task_id)).size === creates,
        { timeoutMs: 60_000, what: 'a webhook for every task Kling took' });
      assert.deepEqual(new Set(receiver.at(hook).map((d) => d.json.task_id)), new Set(taken));
      assert.ok(receiver.at(hook).every((d) => d.verdict === null && d.json.task_status === 'succeed'));
      const listed = await call(w, 'GET', `${OFFICIAL}?pageSize=500`, { key: WEB_KEY });
      for (const taskId of taken) assert.ok(listed.json.data.some((t) => t.task_id === taskId), `${taskId} is listed`);
    } finally {
      fake.beforeAnswering = null;
      release();
      await w.stop();
      await fs.rm(state, { recursive: true, force: true });
    }
  });
});

describe('an upstream that hands out a task id again (a restarted stand-in)', () => {
  it('gets the new task recorded in place of the old one, never merged into it', async () => {
    fake.reuseIdsFrom = '870000000000000000';
    fake.nextId = 1;
    try {
      const first = await createTask();
      await fake.advance(first.taskId, 'succeed');
      await taskOnce((t) => t.task_status === 'succeed', first.taskId, { what: 'the first task finished' });
      fake.nextId = 1;
      const second = await createTask(worker, { body: { external_task_id: 'second-of-its-id' } });
      assert.equal(second.taskId, first.taskId, 'the upstream repeated the id');
      const fresh = await taskOnce((t) => t.task_status === 'submitted', second.taskId, { what: 'the new task, not the old result' });
      assert.equal(fresh.task_info.external_task_id, 'second-of-its-id');
      assert.equal(fresh.task_result, undefined);
      const callback = await fake.advance(second.taskId, 'processing');
      assert.equal(callback.status, 200, `the new task's callbacks are accepted: ${callback.body}`);
      const stale = await fake.sendCallback(first.taskId, { url: first.callbackUrl, data: { ...fake.tasks.get(first.taskId).data, task_status: 'failed' } });
      assert.equal(stale.status, 403, "the old task's callback URL no longer speaks for this id");
    } finally {
      delete fake.reuseIdsFrom;
    }
  });
});

describe('records of the previous version (KV task:{id} entries)', () => {
  it('stay readable by task id and external id, for their tenant only', async () => {
    const data = { task_id: '850000000000000001', task_status: 'succeed', task_info: { external_task_id: 'legacy-ext' },
      task_result: { audios: [{ id: 'a', url_mp3: 'https://kling.example/a.mp3' }] }, created_at: 1, updated_at: 2 };
    await worker.kvPut(`task:${data.task_id}`, JSON.stringify({ tenant: 'web', callback_token: '0'.repeat(32), data, created_at: 1, delivery: { state: 'none', attempts: 0 } }));
    await worker.kvPut('external:web:legacy-ext', JSON.stringify(data.task_id));
    for (const id of [data.task_id, 'legacy-ext']) {
      const response = await call(worker, 'GET', `${OFFICIAL}/${id}`, { key: WEB_KEY });
      assert.equal(response.status, 200, response.text);
      assert.deepEqual(response.json.data, data);
      const other = await call(worker, 'GET', `${OFFICIAL}/${id}`, { key: OPS_KEY });
      assert.equal(other.status, 404, 'never another tenant\'s');
    }
  });
});

describe('secrets', () => {
  it('callback capabilities and webhook secrets never appear in a log line', async () => {
    const capabilities = [...fake.tasks.values()].map((t) => t.callbackUrl?.split('/').at(-1)).filter(Boolean);
    assert.ok(capabilities.length > 10);
    // wrangler dev's own access log ("[wrangler:info] POST /v1/callbacks/kling/...") prints
    // request URLs, as Workers' invocation logs do in production: the worker cannot change
    // that (see the README on KLING_WEBHOOK_SECRET). Everything the worker logs is checked.
    const logs = worker.logs().split('\n').filter((line) => !line.startsWith('[wrangler:info] POST /v1/callbacks/')).join('\n');
    assert.match(logs, /\/v1\/callbacks\/<redacted>/, 'callback paths are logged redacted');
    for (const needle of [...capabilities, PROXY_WEBHOOK_SECRET, KLING_WEBHOOK_SECRET, WEB_KEY, OPS_KEY, LIST_KEY, SECRET_KEY]) {
      assert.ok(!logs.includes(needle), `leaked into the logs: ${needle.slice(0, 6)}…`);
    }
  });
});
