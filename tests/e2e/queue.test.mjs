// A busy Kling account, end to end: the stand-in runs at most two tasks at once and answers
// 1303 past them, as Kling does; the worker is told its account has two slots. Creates past
// them wait in line at the edge (fair across tenants, cancellable, bounded, durable across
// a restart) instead of failing, and keep the ids their clients were given.

import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { Receiver } from '../support/receiver.mjs';
import { ACCESS_KEY, baseSettings, clientWebhookSecret, OPS_KEY, SECRET_KEY, WEB_KEY, webhookSecret } from '../support/settings.mjs';
import { call, eventually, freePort, startWorker } from '../support/worker.mjs';

const T2A = '/v1/audio/text-to-audio';
const LAB_KEY = 'pk_lab_test_5e6f7a8b9c0d1e2f';
const KEYS = { web: WEB_KEY, ops: OPS_KEY, lab: LAB_KEY };
const PROXY_WEBHOOK_SECRET = webhookSecret('queue-proxy-webhook-secret-0123');
const HOOK = '/hooks/queue';

let fake;
let worker;
let state;
let port;
const receivers = {};

const settings = () => baseSettings(fake, {
  PROXY_API_KEYS: Object.entries(KEYS).map(([name, key]) => `${name}:${key}`).join(','),
  PROXY_WEBHOOK_SECRET,
  ALLOW_PRIVATE_URLS: 'true',
  KLING_MAX_CONCURRENCY: '2',
  QUEUE_MAX_PER_TENANT: '4',
});

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, maxConcurrency: 2 });
  for (const tenant of Object.keys(KEYS)) {
    receivers[tenant] = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, tenant)).listen();
  }
  state = await fs.mkdtemp(path.join(os.tmpdir(), 'kling-edge-queue-'));
  port = await freePort();
  worker = await startWorker(settings(), { persistTo: state, port });
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  for (const receiver of Object.values(receivers)) await receiver.close();
  if (state) await fs.rm(state, { recursive: true, force: true });
});

/** A text-to-audio create of `tenant`'s, with its webhook. */
function create(tenant, prompt, extra = {}) {
  const body = { prompt, duration: 5, callback_url: `${receivers[tenant].url}${HOOK}`, ...extra };
  return call(worker, 'POST', T2A, { key: KEYS[tenant], body });
}

/** The stand-in's tasks by the prompt they were created with, in the order Kling took them. */
const klingTasks = () => [...fake.tasks.values()].filter((task) => task.path === T2A);
const klingTaskOf = (prompt) => klingTasks().find((task) => task.body.prompt === prompt);

/** Kling finishes every task it is running (each calls back). */
async function finishRunning() {
  for (const task of klingTasks()) {
    if (!['succeed', 'failed'].includes(task.data.task_status)) await fake.advance(task.data.task_id, 'succeed');
  }
}

/** The account's slots and line, as `GET /v1/queue` shows them to `tenant`. */
async function line(tenant = 'web') {
  const response = await call(worker, 'GET', '/v1/queue', { key: KEYS[tenant] });
  assert.equal(response.status, 200, response.text);
  return response.json.data;
}

/** Finishes what Kling runs until nothing holds a slot or waits. */
async function drain() {
  await eventually(async () => {
    await finishRunning();
    const view = await line();
    return view.accounts.every((account) => account.holding === 0) && view.line === 0;
  }, { timeoutMs: 30_000, what: 'the account to drain' });
}

/** Waits until the stand-in runs `count` tasks. */
const running = (count) => eventually(() => fake.running() === count, { what: `${count} tasks running at Kling` });

async function task(tenant, id) {
  const response = await call(worker, 'GET', `${T2A}/${id}`, { key: KEYS[tenant] });
  return response;
}

describe('a create past the account\'s concurrency', () => {
  it('waits in line: six concurrent creates from three tenants are accepted, Kling never runs more than two, and all six finish with their webhooks under the ids the clients got', async () => {
    const creates = await Promise.all(['web', 'ops', 'lab'].flatMap((tenant) => [1, 2].map((n) => create(tenant, `six ${tenant} ${n}`).then((r) => ({ tenant, r })))));
    for (const { r } of creates) {
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.code, 0, r.text);
      assert.equal(r.json.data.task_status, 'submitted');
    }
    const queued = creates.filter(({ r }) => r.json.data.task_id.startsWith('ke_'));
    assert.equal(queued.length, 4, 'two went at once, four wait');
    for (const { r } of queued) {
      assert.match(r.json.data.task_status_msg, /^waiting for a free Kling slot \(\d(st|nd|rd|th) in line\)$/);
      assert.ok(r.json.data.queue.position >= 1 && r.json.data.queue.queued_at > 0, r.text);
    }
    assert.equal(fake.refusedOverConcurrency, 0, 'Kling never had to refuse one');

    // One waiting task, queried by the id its client got, says where it is.
    const { tenant: someone, r: waiting } = queued[0];
    const before = await task(someone, waiting.json.data.task_id);
    assert.equal(before.json.data.task_status, 'submitted');
    assert.ok(before.json.data.queue.position >= 1, before.text);

    for (let round = 0; round < 6 && klingTasks().length < 6; round += 1) {
      await running(2);
      await finishRunning();
      await eventually(() => klingTasks().length >= Math.min(6, 2 * (round + 2)) || fake.running() > 0, { what: 'the next creates sent' });
    }
    await drain();
    assert.ok(fake.peakRunning <= 2, `Kling ran ${fake.peakRunning} at once`);
    assert.equal(fake.refusedOverConcurrency, 0);
    assert.equal(klingTasks().filter((t) => t.body.prompt.startsWith('six ')).length, 6, 'each create reached Kling once');

    for (const { tenant, r } of creates) {
      const id = r.json.data.task_id;
      const done = await eventually(async () => {
        const answer = await task(tenant, id);
        return answer.json?.data?.task_status === 'succeed' && answer;
      }, { what: `task ${id} finished` });
      assert.equal(done.json.data.task_id, id, 'served by the id its client got');
      if (id.startsWith('ke_')) assert.match(done.json.data.kling_task_id, /^\d+$/, 'with Kling\'s own id beside it');
      const hooks = await eventually(() => {
        const got = receivers[tenant].at(HOOK).filter((d) => d.json.task_id === id);
        return got.length && got;
      }, { what: `the webhook of ${id}` });
      assert.equal(hooks[0].verdict, null);
      assert.equal(hooks[0].json.task_status, 'succeed');
    }
  });

  it('serves one tenant\'s single create before the rest of another\'s earlier burst', async () => {
    await drain();
    const burst = [];
    for (let n = 1; n <= 4; n += 1) burst.push(await create('web', `burst ${n}`));
    await running(2);
    const single = await create('ops', 'single');
    assert.equal(single.status, 200, single.text);
    assert.equal(single.json.data.queue.position, 2, single.text);
    // The first slot that frees goes to web's oldest waiting create, the next to ops's.
    await fake.advance(klingTaskOf('burst 1').data.task_id, 'succeed');
    await eventually(() => klingTaskOf('burst 3'), { what: 'web\'s next create sent' });
    await fake.advance(klingTaskOf('burst 2').data.task_id, 'succeed');
    await eventually(() => klingTaskOf('single'), { what: 'ops\'s create sent' });
    assert.equal(klingTaskOf('burst 4'), undefined, 'web\'s last create still waits');
    const view = await line('web');
    assert.deepEqual(view.waiting.map((w) => [w.task_id, w.position]), [[burst[3].json.data.task_id, 1]]);
    await drain();
  });

  it('refuses with 429 past the tenant\'s bound, reaching nothing', async () => {
    await drain();
    await create('web', 'bound hold 1');
    await create('web', 'bound hold 2');
    await running(2);
    for (let n = 1; n <= 4; n += 1) assert.equal((await create('lab', `bound ${n}`)).status, 200);
    const sent = fake.requests.length;
    const refused = await create('lab', 'bound 5');
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.headers.get('retry-after'), '10');
    assert.match(refused.json.message, /QUEUE_MAX_PER_TENANT/);
    assert.equal(fake.requests.length, sent, 'Kling saw nothing');
    // Another tenant still gets in line.
    assert.equal((await create('ops', 'bound other')).status, 200);
    await drain();
  });
});

describe('cancel', () => {
  it('takes a waiting create out of line: it ends failed, its webhook says so, and it never reaches Kling', async () => {
    await drain();
    const first = await create('web', 'cancel hold 1');
    await create('web', 'cancel hold 2');
    await running(2);
    const waiting = await create('ops', 'cancel me');
    const id = waiting.json.data.task_id;
    assert.match(id, /^ke_/);

    assert.equal((await call(worker, 'POST', `${T2A}/${id}/cancel`, { key: WEB_KEY })).status, 404, 'not another tenant\'s to cancel');
    const atKling = await call(worker, 'POST', `${T2A}/${first.json.data.task_id}/cancel`, { key: WEB_KEY });
    assert.equal(atKling.status, 409, atKling.text);
    assert.match(atKling.json.message, /Kling cannot cancel/);

    const cancelled = await call(worker, 'POST', `${T2A}/${id}/cancel`, { key: OPS_KEY });
    assert.equal(cancelled.status, 200, cancelled.text);
    assert.equal(cancelled.json.data.task_status, 'failed');
    assert.match(cancelled.json.data.task_status_msg, /^cancelled/);
    const [hook] = await eventually(() => receivers.ops.at(HOOK).filter((d) => d.json.task_id === id).length && receivers.ops.at(HOOK).filter((d) => d.json.task_id === id), { what: 'the cancelled task\'s webhook' });
    assert.equal(hook.json.task_status, 'failed');
    assert.equal((await call(worker, 'POST', `${T2A}/${id}/cancel`, { key: OPS_KEY })).status, 409, 'already ended');

    await drain();
    assert.equal(klingTaskOf('cancel me'), undefined, 'it never reached Kling');
    assert.equal((await task('ops', id)).json.data.task_status, 'failed');
  });
});

describe('a callback that beats the answer to a waiting create\'s send', () => {
  it('is kept under the id the client got, and the task finishes', async () => {
    await drain();
    await create('web', 'race hold 1');
    await create('web', 'race hold 2');
    await running(2);
    const waiting = await create('ops', 'race waits');
    const id = waiting.json.data.task_id;
    fake.callbackBeforeAnswering = 'processing';
    await fake.advance(klingTaskOf('race hold 1').data.task_id, 'succeed');
    await eventually(() => klingTaskOf('race waits'), { what: 'the waiting create sent' });
    const processing = await eventually(async () => {
      const answer = await task('ops', id);
      return answer.json.data.task_status === 'processing' && answer;
    }, { what: 'the early callback recorded' });
    assert.equal(processing.json.data.kling_task_id, klingTaskOf('race waits').data.task_id);
    assert.equal(fake.callbacks.filter((c) => c.taskId === klingTaskOf('race waits').data.task_id)[0].status, 200);
    await drain();
    assert.equal((await task('ops', id)).json.data.task_status, 'succeed');
  });
});

describe('a restart', () => {
  it('keeps the line: creates queued before it are sent after it', async () => {
    await drain();
    await create('web', 'restart hold 1');
    await create('web', 'restart hold 2');
    await running(2);
    const waiting = [await create('ops', 'restart wait 1'), await create('lab', 'restart wait 2')];
    await worker.stop();
    worker = await startWorker(settings(), { persistTo: state, port });
    await finishRunning();
    await eventually(() => klingTaskOf('restart wait 1') && klingTaskOf('restart wait 2'), { timeoutMs: 30_000, what: 'the queued creates sent after the restart' });
    await drain();
    for (const [tenant, created] of [['ops', waiting[0]], ['lab', waiting[1]]]) {
      const answer = await task(tenant, created.json.data.task_id);
      assert.equal(answer.json.data.task_status, 'succeed', answer.text);
    }
  });
});

describe('Kling\'s 1303 below the configured concurrency', () => {
  // Last: the gate then believes the account has one slot for a few minutes.
  it('is never a failure: the create waits and is sent once Kling has room', async () => {
    await drain();
    fake.otherRunning = 1; // another app on the same account
    await create('web', 'crowded 1');
    await running(1);
    const refusedBefore = fake.refusedOverConcurrency;
    const crowded = await create('web', 'crowded 2');
    assert.equal(crowded.status, 200, crowded.text);
    assert.equal(crowded.json.code, 0);
    assert.equal(fake.refusedOverConcurrency, refusedBefore + 1, 'Kling answered 1303 to it');
    assert.match(crowded.json.data.task_id, /^ke_/, 'it waits in line');
    fake.otherRunning = 0;
    await finishRunning();
    await eventually(() => klingTaskOf('crowded 2'), { timeoutMs: 30_000, what: 'the create sent after the backoff' });
    await drain();
    const done = await eventually(async () => {
      const answer = await task('web', crowded.json.data.task_id);
      return answer.json.data.task_status === 'succeed' && answer;
    }, { what: 'the crowded create finished' });
    assert.equal(done.json.data.kling_task_id, klingTaskOf('crowded 2').data.task_id);
  });
});
