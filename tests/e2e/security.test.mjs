// The findings of the adversarial trial (issue 14), each reproduced against the built worker:
// the attack as it was found, and proof that it no longer works.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { Receiver, verifyWebhook } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, OFFICIAL, SECRET_KEY, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, startWorker } from '../support/worker.mjs';

const ALICE_KEY = 'pk_alice_test_0f1e2d3c4b5a6978';
const BOB_KEY = 'pk_bob_test_8796a5b4c3d2e1f0';
const TOKEN_SECRET = 'browser-token-secret-for-the-security-tests-01';
const PROXY_WEBHOOK_SECRET = webhookSecret('deployment-webhook-secret-for-sec!');

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake, {
    PROXY_API_KEYS: `alice:${ALICE_KEY},bob:${BOB_KEY}`,
    PROXY_TOKEN_SECRET: TOKEN_SECRET,
    PROXY_WEBHOOK_SECRET,
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

async function mint(key, body) {
  const response = await call(worker, 'POST', '/v1/tokens', { key, body });
  assert.equal(response.status, 200, response.text);
  return response.json.data.token;
}

async function webhookSecretOf(key) {
  const response = await call(worker, 'GET', '/v1/webhook-secret', { key });
  assert.equal(response.status, 200, response.text);
  return response.json.data.secret;
}

describe('finding 1: a signed webhook delivered to another tenant', () => {
  let privateWorker;
  let aliceReceiver;

  before(async () => {
    // The receivers listen on loopback, so this worker allows private URLs.
    privateWorker = await startWorker(baseSettings(fake, {
      PROXY_API_KEYS: `alice:${ALICE_KEY},bob:${BOB_KEY}`,
      PROXY_TOKEN_SECRET: TOKEN_SECRET,
      PROXY_WEBHOOK_SECRET,
      ALLOW_PRIVATE_URLS: 'true',
    }));
    const secret = (await call(privateWorker, 'GET', '/v1/webhook-secret', { key: ALICE_KEY })).json.data.secret;
    aliceReceiver = await new Receiver(secret).listen();
  });

  after(async () => {
    await privateWorker?.stop();
    await aliceReceiver?.close();
  });

  it('each client reads its own secret with its server key, never with a browser token', async () => {
    const alice = await webhookSecretOf(ALICE_KEY);
    const bob = await webhookSecretOf(BOB_KEY);
    assert.match(alice, /^whsec_[A-Za-z0-9+/]{43}=$/);
    assert.notEqual(alice, bob);
    assert.notEqual(alice, PROXY_WEBHOOK_SECRET, 'the deployment secret itself is never handed out');
    const token = await mint(BOB_KEY, { sub: 'mallory' });
    const refused = await call(worker, 'GET', '/v1/webhook-secret', { key: token });
    assert.equal(refused.status, 403, refused.text);
    assert.equal(refused.json.code, 1103);
    assert.ok(!refused.text.includes('whsec_'), refused.text);
  });

  it("a browser user cannot aim a task's webhook at anyone's receiver", async () => {
    const token = (await call(privateWorker, 'POST', '/v1/tokens', { key: BOB_KEY, body: { sub: 'mallory' } })).json.data.token;
    const creates = fake.apiRequests('POST').length;
    const response = await call(privateWorker, 'POST', OFFICIAL, {
      key: token,
      body: { video_url: VIDEO, callback_url: `${aliceReceiver.url}/hooks/kling`, external_task_id: 'chosen-by-mallory' },
    });
    assert.equal(response.status, 403, response.text);
    assert.equal(response.json.code, 1103);
    assert.match(response.json.message, /^callback_url: /);
    assert.equal(fake.apiRequests('POST').length, creates, 'never reached Kling');
  });

  it("a webhook caused by bob's server fails alice's verification, and names its tenant", async () => {
    const hook = `${aliceReceiver.url}/hooks/kling`;
    const created = await call(privateWorker, 'POST', OFFICIAL, { key: BOB_KEY, body: { video_url: VIDEO, callback_url: hook } });
    assert.equal(created.status, 200, created.text);
    await fake.advance(created.json.data.task_id, 'succeed');
    const [delivery] = await eventually(() => aliceReceiver.at('/hooks/kling').length && aliceReceiver.at('/hooks/kling'), { what: 'the webhook' });
    assert.equal(delivery.verdict, 'bad signature', "alice's secret rejects it");
    assert.equal(delivery.json.tenant, 'bob');
    const bobSecret = (await call(privateWorker, 'GET', '/v1/webhook-secret', { key: BOB_KEY })).json.data.secret;
    assert.equal(verifyWebhook(bobSecret, delivery.headers, delivery.body), null, "bob's own secret verifies it");
  });

  it("a browser token's tasks go to the webhook its app set when minting, naming the user", async () => {
    const hook = `${aliceReceiver.url}/hooks/users`;
    const minted = await call(privateWorker, 'POST', '/v1/tokens', { key: ALICE_KEY, body: { sub: 'carol', callback_url: hook } });
    assert.equal(minted.status, 200, minted.text);
    const created = await call(privateWorker, 'POST', OFFICIAL, { key: minted.json.data.token, body: { video_url: VIDEO } });
    assert.equal(created.status, 200, created.text);
    await fake.advance(created.json.data.task_id, 'succeed');
    const [delivery] = await eventually(() => aliceReceiver.at('/hooks/users').length && aliceReceiver.at('/hooks/users'), { what: 'the webhook' });
    assert.equal(delivery.verdict, null, "alice's secret verifies her users' webhooks");
    assert.equal(delivery.json.tenant, 'alice/carol');
    assert.equal(delivery.json.task_id, created.json.data.task_id);
  });
});

describe("finding 2: a task's record overwritten with another tenant's task", () => {
  let externalFirst;
  let w;

  before(async () => {
    externalFirst = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, resolveExternalFirst: true });
    w = await startWorker(baseSettings(externalFirst, { PROXY_API_KEYS: `alice:${ALICE_KEY},bob:${BOB_KEY}` }));
  });

  after(async () => {
    await w?.stop();
    await externalFirst?.close();
  });

  it("alice's task never shows bob's result, though Kling resolves her id as his external id", async () => {
    const a = await call(w, 'POST', OFFICIAL, { key: ALICE_KEY, body: { video_url: VIDEO } });
    assert.equal(a.status, 200, a.text);
    const taskA = a.json.data.task_id;
    const b = await call(w, 'POST', OFFICIAL, {
      key: BOB_KEY, body: { video_url: 'https://cdn.example.com/bob.mp4', external_task_id: taskA },
    });
    assert.equal(b.status, 200, b.text);
    const taskB = b.json.data.task_id;
    await externalFirst.advance(taskB, 'succeed');
    assert.equal(externalFirst.tasks.get(taskA).data.task_status, 'submitted');

    for (let i = 0; i < 3; i += 1) {
      const seen = await call(w, 'GET', `${OFFICIAL}/${taskA}`, { key: ALICE_KEY });
      assert.equal(seen.status, 200, seen.text);
      assert.equal(seen.json.data.task_id, taskA, seen.text);
      assert.notEqual(seen.json.data.task_status, 'succeed');
      assert.ok(!seen.text.includes('bob.mp4'), seen.text);
    }
    // Alice's task, once it really succeeds, is hers.
    await externalFirst.advance(taskA, 'succeed');
    const done = await eventually(async () => {
      const seen = await call(w, 'GET', `${OFFICIAL}/${taskA}`, { key: ALICE_KEY });
      return seen.json.data.task_status === 'succeed' && seen;
    }, { what: "alice's result" });
    assert.equal(done.json.data.task_id, taskA);
    assert.ok(!done.text.includes('bob.mp4'));
  });
});

describe('finding 3: a sub long in UTF-8 bytes', () => {
  it('is refused at minting, naming the byte limit, before anything reaches Kling', async () => {
    const response = await call(worker, 'POST', '/v1/tokens', { key: ALICE_KEY, body: { sub: '🙂'.repeat(128) } });
    assert.equal(response.status, 400, response.text);
    assert.match(response.json.message, /^sub: must be 1 to 128 bytes/);
  });

  it('at the limit, works everywhere: create, list, query by external id', async () => {
    const token = await mint(ALICE_KEY, { sub: '🙂'.repeat(32) });
    const external = `emoji-${Date.now()}`;
    const created = await call(worker, 'POST', OFFICIAL, { key: token, body: { video_url: VIDEO, external_task_id: external } });
    assert.equal(created.status, 200, created.text);
    const taskId = created.json.data.task_id;
    const list = await eventually(async () => {
      const page = await call(worker, 'GET', `${OFFICIAL}?pageSize=10`, { key: token });
      return page.status === 200 && page.json.data.length === 1 && page;
    }, { what: 'the list' });
    assert.equal(list.json.data[0].task_id, taskId);
    const byExternal = await call(worker, 'GET', `${OFFICIAL}/${external}`, { key: token });
    assert.equal(byExternal.status, 200, byExternal.text);
    assert.equal(byExternal.json.data.task_id, taskId);
    const unknown = await call(worker, 'GET', `${OFFICIAL}/no-such-task`, { key: token });
    assert.equal(unknown.status, 404, unknown.text);
  });
});

describe('finding 4: unknown methods handled as GET', () => {
  it('answers 405 with Allow, and logs the method as sent', async () => {
    // (workerd itself answers 501 to methods it does not know at all, such as BREW.)
    for (const method of ['PROPFIND', 'PUT', 'PATCH', 'REPORT']) {
      const response = await call(worker, method, OFFICIAL, { key: ALICE_KEY });
      assert.equal(response.status, 405, `${method}: ${response.text}`);
      assert.equal(response.headers.get('allow'), 'GET, POST');
      assert.equal(response.json.code, 1202);
      assert.ok(!('data' in response.json));
    }
    const line = await eventually(
      () => worker.logs().split('\n').find((l) => l.includes('"method":"PROPFIND"')),
      { what: 'the log line' },
    );
    assert.match(line, /"status":405/);
  });
});

describe('finding 5: private-address guard gaps', () => {
  it('refuses IPv4-translated, benchmarking, documentation, SRv6 and ORCHID addresses', async () => {
    const creates = fake.apiRequests('POST').length;
    for (const host of [
      '[::ffff:0:127.0.0.1]', '[::ffff:0:a9fe:a9fe]', '[2001:2::1]', '[3fff::1]', '[5f00::1]', '[2001:10::1]',
    ]) {
      const response = await call(worker, 'POST', OFFICIAL, { key: ALICE_KEY, body: { video_url: `http://${host}/a.mp4` } });
      assert.equal(response.status, 400, `${host}: ${response.text}`);
      assert.match(response.json.message, /^video_url: must not point to a private or local address/);
    }
    assert.equal(fake.apiRequests('POST').length, creates, 'none reached Kling');
  });
});

describe('finding 6: a callback capability echoed for non-canonical paths', () => {
  it('never appears in an answer or a log line, whatever the spelling', async () => {
    const created = await call(worker, 'POST', OFFICIAL, { key: ALICE_KEY, body: { video_url: VIDEO } });
    const callbackUrl = fake.tasks.get(created.json.data.task_id).callbackUrl;
    const capability = callbackUrl.split('/').pop();
    for (const path of [
      `//v1/callbacks/kling/${capability}`,
      `/v1/callbacks/KLING/${capability}`,
      `/v1/Callbacks/kling/${capability}`,
      `/prefix/v1/callbacks/kling/${capability}`,
      `/v1/callbacks/kling/${capability}/x`,
    ]) {
      const response = await fetch(`${worker.url}${path}`, { method: 'POST', body: '{}' });
      const text = await response.text();
      assert.ok(response.status >= 400, `${path}: ${response.status}`);
      assert.ok(!text.includes(capability), `${path}: ${text}`);
    }
    await eventually(() => worker.logs().includes('/prefix/v1/callbacks/<redacted>'), { what: 'the log lines' });
    const ownLines = worker.logs().split('\n').filter((line) => line.includes('"request_id"'));
    assert.ok(ownLines.length > 0);
    assert.ok(ownLines.every((line) => !line.includes(capability)), 'no log line of the worker carries it');
  });

  it('PUBLIC_BASE_URL with a path is refused as a configuration error', async () => {
    const w = await startWorker(baseSettings(fake, { PUBLIC_BASE_URL: 'https://kling.example.org/edge' }));
    try {
      const response = await call(w, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
      assert.equal(response.status, 500, response.text);
      assert.match(response.json.message, /PUBLIC_BASE_URL must be the worker's origin/);
      assert.ok(!response.text.includes('kling.example.org'), 'the value is never quoted');
    } finally {
      await w.stop();
    }
  });
});
