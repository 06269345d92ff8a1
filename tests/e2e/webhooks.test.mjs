// Webhooks at the edge, end to end: Kling's callbacks reach the worker (never the client),
// are checked (token, signature), merged monotonically into Workers KV, served from KV,
// and forwarded, signed, to the client's own webhook.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { signWebhook, startFakeKling } from '../support/fake-kling.mjs';
import { Receiver } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, clientWebhookSecret, OFFICIAL, OPS_KEY, SECRET_KEY, SIMPLIFIED, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, freePort, startWorker } from '../support/worker.mjs';

const LIST_KEY = 'pk_list_test_6e5d4c3b2a1f0e9d';
const PROXY_WEBHOOK_SECRET = webhookSecret('proxy-webhook-secret-for-tests!!');
const KLING_WEBHOOK_SECRET = webhookSecret('kling-webhook-secret-for-tests!!');
const OTHER_SECRET = webhookSecret('some-other-secret-not-klings-one');

let fake;
let worker;
let receiver;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  worker = await startWorker(baseSettings(fake, {
    PROXY_API_KEYS: `web:${WEB_KEY},ops:${OPS_KEY},lister:${LIST_KEY}`,
    PROXY_WEBHOOK_SECRET,
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
async function createTask(w = worker, { key = WEB_KEY, body = {}, path = OFFICIAL } = {}) {
  const response = await call(w, 'POST', path, { key, body: { video_url: VIDEO, ...body } });
  assert.equal(response.status, 200, response.text);
  const taskId = response.json.data.task_id;
  return { taskId, callbackUrl: fake.tasks.get(taskId).callbackUrl, response };
}

const getsFor = (taskId) => fake.apiRequests('GET').filter((r) => r.path === `${OFFICIAL}/${taskId}`).length;

/** Makes every call to Kling fail for the duration of `fn`. */
async function withKlingDown(fn) {
  fake.injectFault({ kind: 'status', status: 503, count: 1000 });
  try {
    return await fn();
  } finally {
    fake.faults.length = 0;
  }
}

describe('the callback URL Kling is given', () => {
  it("is the worker's own, with a fresh token per task, and the client's is kept back", async () => {
    const hook = `${receiver.url}/hooks/first`;
    const a = await createTask(worker, { body: { callback_url: hook } });
    const b = await createTask();
    for (const { callbackUrl } of [a, b]) {
      assert.match(callbackUrl, new RegExp(`^${worker.url}/v1/callbacks/kling/[0-9a-f]{32}$`));
    }
    assert.notEqual(a.callbackUrl, b.callbackUrl);
    assert.ok(!JSON.stringify(fake.tasks.get(a.taskId).body).includes(receiver.url), "Kling never sees the client's webhook");
  });

  it('uses PUBLIC_BASE_URL when it is set', async () => {
    const port = await freePort();
    const publicBase = `http://localhost:${port}`;
    const w = await startWorker(baseSettings(fake, { PUBLIC_BASE_URL: publicBase }), { port });
    try {
      const { callbackUrl, taskId } = await createTask(w);
      assert.ok(callbackUrl.startsWith(`${publicBase}/v1/callbacks/kling/`), callbackUrl);
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

  it('make a finished task answer from KV without calling Kling, on both path families', async () => {
    const { taskId } = await createTask(worker, { body: { external_task_id: 'kv-path-1' } });
    await fake.advance(taskId, 'processing');
    const answer = await fake.advance(taskId, 'succeed');
    assert.equal(answer.status, 200, answer.body);
    const gets = fake.apiRequests('GET').length;
    await withKlingDown(async () => {
      for (const path of [`${OFFICIAL}/${taskId}`, `${SIMPLIFIED}/${taskId}`, `${OFFICIAL}/kv-path-1`]) {
        const response = await call(worker, 'GET', path, { key: WEB_KEY });
        assert.equal(response.status, 200, response.text);
        assert.deepEqual(Object.keys(response.json).sort(), ['code', 'data', 'message', 'request_id']);
        assert.equal(response.json.code, 0);
        assert.deepEqual(response.json.data, fake.tasks.get(taskId).data, "exactly Kling's data");
        assert.equal(response.json.data.task_result.audios.length, 1);
      }
    });
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
});

describe('forged callbacks', () => {
  it('with an unknown token, or none, answer 404 and store nothing', async () => {
    const { taskId } = await createTask();
    for (const url of [
      `${worker.url}/v1/callbacks/kling/${crypto.randomBytes(16).toString('hex')}`,
      `${worker.url}/v1/callbacks/kling/`,
      `${worker.url}/v1/callbacks/kling`,
      `${worker.url}/v1/callbacks/kling/not-a-token`,
    ]) {
      const forged = { ...fake.tasks.get(taskId).data, task_status: 'succeed', updated_at: Date.now() + 1000 };
      const answer = await fake.sendCallback(taskId, { url, data: forged });
      assert.equal(answer.status, 404, `${url}: ${answer.body}`);
      assert.ok([1202, 1203].includes(JSON.parse(answer.body).code), answer.body);
    }
    const gets = getsFor(taskId);
    const response = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
    assert.equal(response.json.data.task_status, 'submitted');
    assert.equal(getsFor(taskId), gets + 1, 'still unfinished, so Kling was asked');
  });

  it("with another task's token answer 403 and store nothing", async () => {
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

  it('with a malformed body answer 400 and store nothing', async () => {
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
    assert.deepEqual(response.json.data, succeeded);
  });

  it('completes a succeed that arrives without audios with one query to Kling', async () => {
    const { taskId } = await createTask();
    const gets = getsFor(taskId);
    const answer = await fake.advance(taskId, 'succeed', { audiosInCallback: false });
    assert.equal(answer.status, 200);
    await eventually(() => getsFor(taskId) === gets + 1, { what: 'the follow-up query' });
    const response = await eventually(async () => {
      const r = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
      return r.json.data.task_result?.audios?.length ? r : null;
    }, { what: 'the stored audios' });
    assert.deepEqual(response.json.data, fake.tasks.get(taskId).data);
    assert.equal(getsFor(taskId), gets + 1, 'queried once; then served from KV');
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
  it("pages the caller's own tasks from KV, newest first", async () => {
    const ids = [];
    for (let i = 0; i < 5; i += 1) {
      const { taskId } = await createTask(worker, { key: LIST_KEY, path: i % 2 ? SIMPLIFIED : OFFICIAL });
      ids.push(taskId);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const newestFirst = [...ids].reverse();
    const gets = fake.apiRequests('GET').length;
    const all = await call(worker, 'GET', OFFICIAL, { key: LIST_KEY });
    assert.equal(all.status, 200);
    assert.deepEqual(all.json.data.map((t) => t.task_id), newestFirst);
    const pages = [];
    for (const pageNum of [1, 2, 3]) {
      const page = await call(worker, 'GET', `${SIMPLIFIED}?pageNum=${pageNum}&pageSize=2`, { key: LIST_KEY });
      pages.push(page.json.data.map((t) => t.task_id));
    }
    assert.deepEqual(pages, [newestFirst.slice(0, 2), newestFirst.slice(2, 4), newestFirst.slice(4)]);
    const beyond = await call(worker, 'GET', `${OFFICIAL}?pageNum=9&pageSize=2`, { key: LIST_KEY });
    assert.deepEqual(beyond.json.data, []);
    assert.equal(fake.apiRequests('GET').length, gets, 'the list never asks Kling');
  });
});

/** The task's KV record once its delivery state is `state` (read as an operator would). */
function recordedDelivery(taskId, state) {
  return eventually(async () => {
    const stored = await worker.kvGet(`task:${taskId}`);
    return stored?.delivery?.state === state && stored;
  }, { what: `a ${state} delivery recorded on ${taskId}` });
}

describe('forwarding to the client webhook', () => {
  it('POSTs the finished task, signed, and records the delivery', async () => {
    const hook = '/hooks/signed';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'processing');
    await fake.advance(taskId, 'succeed');
    const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { what: 'the delivery' });
    assert.equal(delivery.verdict, null, "the signature verifies with the client's own secret");
    assert.equal(delivery.headers['webhook-id'], `msg_${taskId}_succeed`);
    const { tenant, ...kling } = delivery.json;
    assert.equal(tenant, 'web', 'the body names the tenant that created the task');
    assert.deepEqual(kling, fake.tasks.get(taskId).data, "the same JSON as Kling's callback");
    assert.equal(receiver.at(hook).length, 1, 'only the final state is forwarded');
    const record = await recordedDelivery(taskId, 'delivered');
    assert.equal(record.delivery.attempts, 1);
    assert.equal(record.delivery.last_http_status, 200);
    assert.equal(record.client_callback_url, `${receiver.url}${hook}`);
  });

  it('retries with backoff when the receiver fails', async () => {
    const hook = '/hooks/flaky';
    receiver.failNext(hook, 503, 500);
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'failed');
    await eventually(() => receiver.at(hook).some((d) => d.status === 200), { timeoutMs: 20_000, what: 'the third attempt' });
    const attempts = receiver.at(hook);
    assert.deepEqual(attempts.map((d) => d.status), [503, 500, 200]);
    assert.equal(new Set(attempts.map((d) => d.headers['webhook-id'])).size, 1, 'one message id for every attempt');
    // The backoff is 1 s, then 3 s after the first attempt (2 s after the second).
    const gaps = attempts.slice(1).map((d, i) => d.receivedAt - attempts[i].receivedAt);
    assert.ok(gaps[0] >= 900 && gaps[1] >= 1900 && gaps[1] > gaps[0], `backoff grows: ${gaps} ms`);
    const record = await recordedDelivery(taskId, 'delivered');
    assert.equal(record.delivery.attempts, 3);
  });

  it('records a refused delivery as failed without retrying it', async () => {
    const hook = '/hooks/gone';
    receiver.failNext(hook, 410);
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'succeed');
    const record = await recordedDelivery(taskId, 'failed');
    assert.equal(record.delivery.attempts, 1);
    assert.equal(record.delivery.last_http_status, 410);
    assert.equal(receiver.at(hook).length, 1);
  });

  it('forwards a succeed it cannot complete as partial, then the complete result', async () => {
    const hook = '/hooks/partial';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    // Kling calls back without the audios, then cannot be reached for the follow-up query.
    await withKlingDown(async () => {
      await fake.advance(taskId, 'succeed', { audiosInCallback: false });
      await eventually(() => receiver.at(hook).length === 1, { what: 'the partial delivery' });
    });
    const [partial] = receiver.at(hook);
    assert.equal(partial.headers['webhook-id'], `msg_${taskId}_succeed_partial`);
    assert.equal(partial.json.task_result.audios, undefined);

    // A later query finds the task incomplete, asks Kling (reachable again), stores the
    // audios, and the complete result is forwarded under its own message id.
    const response = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
    assert.equal(response.json.data.task_result.audios.length, 1);
    await eventually(() => receiver.at(hook).length === 2, { what: 'the complete delivery' });
    const complete = receiver.at(hook)[1];
    assert.equal(complete.headers['webhook-id'], `msg_${taskId}_succeed`);
    assert.deepEqual(complete.json, { ...fake.tasks.get(taskId).data, tenant: 'web' });
  });

  it('forwards a succeed only once it is complete', async () => {
    const hook = '/hooks/complete';
    const { taskId } = await createTask(worker, { body: { callback_url: `${receiver.url}${hook}` } });
    await fake.advance(taskId, 'succeed', { audiosInCallback: false });
    const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { what: 'the delivery' });
    assert.equal(delivery.json.task_result.audios.length, 1);
  });
});

describe('secrets', () => {
  it('callback tokens and webhook secrets never appear in a log line', async () => {
    const tokens = [...fake.tasks.values()].map((t) => t.callbackUrl?.split('/').at(-1)).filter(Boolean);
    assert.ok(tokens.length > 10);
    // wrangler dev's own access log ("[wrangler:info] POST /v1/callbacks/kling/...") prints
    // request URLs, as Workers' invocation logs do in production: the worker cannot change
    // that (see the README on KLING_WEBHOOK_SECRET). Everything the worker logs is checked.
    const logs = worker.logs().split('\n').filter((line) => !line.startsWith('[wrangler:info] POST /v1/callbacks/kling/')).join('\n');
    assert.match(logs, /\/v1\/callbacks\/<redacted>/, 'callback paths are logged redacted');
    for (const needle of [...tokens, PROXY_WEBHOOK_SECRET, KLING_WEBHOOK_SECRET, WEB_KEY, OPS_KEY, LIST_KEY, SECRET_KEY]) {
      assert.ok(!logs.includes(needle), `leaked into the logs: ${needle.slice(0, 6)}…`);
    }
  });
});
