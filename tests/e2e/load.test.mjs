// A bounded load trial on loopback: many creates from several tenants over concurrent
// connections, then Kling's callbacks for all of them shuffled, a third of them repeated, with
// result copies and webhooks verified by a receiver. Nothing may be lost: every task Kling
// took is final, listed exactly once by its tenant, and delivered under exactly one
// webhook-id, with no 5xx anywhere.
//
// LOAD_TASKS (default 120, the size CI runs) and LOAD_TENANTS (default 4) scale it; the
// trial of issue 19 ran 8,000 tasks over 16 tenants (LOAD_TASKS=8000 LOAD_TENANTS=16).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { Receiver } from '../support/receiver.mjs';
import { ACCESS_KEY, baseSettings, clientWebhookSecret, OFFICIAL, SECRET_KEY, VIDEO, WEB_KEY, webhookSecret } from '../support/settings.mjs';
import { call, eventually, startWorker } from '../support/worker.mjs';

const TASKS = Number(process.env.LOAD_TASKS ?? 120);
const TENANTS = Number(process.env.LOAD_TENANTS ?? 4);
const CONNECTIONS = 16;
const PROXY_WEBHOOK_SECRET = webhookSecret('load-trial-deployment-webhook-secret');
const TOKEN_SECRET = 'load-trial-browser-token-secret-0123456789';

let fake;
let receiver;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  // Browser users of one app: each its own tenant and coordinator, all signing with the
  // app's webhook secret, so one receiver verifies every webhook.
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  worker = await startWorker(baseSettings(fake, {
    PROXY_WEBHOOK_SECRET, PROXY_TOKEN_SECRET: TOKEN_SECRET, ALLOW_PRIVATE_URLS: 'true',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  await receiver?.close();
});

/** Runs `work` on every item, `width` at a time. */
async function pool(items, width, work) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const item = items[next];
      next += 1;
      await work(item);
    }
  }));
}

describe(`a load trial: ${TASKS} tasks of ${TENANTS} tenants`, () => {
  it('loses nothing: every task final, listed once by its tenant, delivered once, no 5xx', { timeout: Math.max(15, TASKS / 200) * 60_000 }, async () => {
    const hook = '/hooks/load';
    // Each tenant's token, minted again for the last step (a full-size run outlives one).
    const mint = async () => {
      const minted = [];
      for (let i = 0; i < TENANTS; i += 1) {
        const answer = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: `load-${i}`, callback_url: `${receiver.url}${hook}` } });
        assert.equal(answer.status, 200, answer.text);
        minted.push(answer.json.data.token);
      }
      return minted;
    };
    const tokens = await mint();
    const owner = new Map();
    const statuses = [];
    await pool(Array.from({ length: TASKS }, (_, i) => i), CONNECTIONS, async (i) => {
      const token = tokens[i % TENANTS];
      const created = await call(worker, 'POST', OFFICIAL, { key: token, body: { video_url: `${VIDEO}?load=${i}` } });
      statuses.push(created.status);
      if (created.status === 200) owner.set(created.json.data.task_id, i % TENANTS);
    });
    assert.deepEqual([...new Set(statuses)], [200], 'every create accepted');
    assert.equal(fake.apiRequests('POST').length, TASKS, 'Kling was asked once per create');
    const taken = [...fake.tasks.keys()];
    assert.deepEqual(new Set(taken), new Set(owner.keys()), 'each client has the task Kling took');

    // Every task moves on and finishes; the callbacks arrive shuffled, a third repeated.
    const callbacks = [];
    for (const taskId of taken) {
      const task = fake.tasks.get(taskId);
      const at = task.data.updated_at;
      await fake.advance(taskId, 'succeed', { callback: false, updatedAt: at + 10 });
      const final = structuredClone(task.data);
      callbacks.push({ taskId, data: { ...final, task_status: 'processing', task_result: undefined, updated_at: at + 5 } });
      callbacks.push({ taskId, data: final });
      if (callbacks.length % 3 === 0) callbacks.push({ taskId, data: final });
    }
    callbacks.sort(() => Math.random() - 0.5);
    const callbackStatuses = new Set();
    await pool(callbacks, CONNECTIONS, async ({ taskId, data }) => {
      callbackStatuses.add((await fake.sendCallback(taskId, { data })).status);
    });
    assert.deepEqual([...callbackStatuses], [200], 'every callback taken');

    await eventually(() => new Set(receiver.at(hook).map((d) => d.headers['webhook-id'])).size >= TASKS,
      { timeoutMs: 10 * 60_000, intervalMs: 500, what: 'a webhook for every task' });
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    const deliveries = receiver.at(hook);
    assert.ok(deliveries.every((d) => d.verdict === null), 'every webhook verifies');
    const ids = deliveries.map((d) => d.headers['webhook-id']);
    assert.deepEqual(new Set(ids), new Set(taken.map((id) => `msg_${id}_succeed`)), 'one webhook-id per task, each succeed');
    assert.ok(deliveries.every((d) => d.json.task_status === 'succeed' && d.json.task_result?.audios?.length === 1));

    for (const [tenant, token] of (await mint()).entries()) {
      const mine = taken.filter((id) => owner.get(id) === tenant);
      const listed = await call(worker, 'GET', `${OFFICIAL}?pageSize=500`, { key: token });
      assert.equal(listed.status, 200, listed.text);
      const listedIds = listed.json.data.map((t) => t.task_id);
      assert.equal(listedIds.length, new Set(listedIds).size, 'listed once');
      assert.deepEqual(new Set(listedIds), new Set(mine), "each tenant lists its own tasks, all of them");
      assert.ok(listed.json.data.every((t) => t.task_status === 'succeed'), 'all final');
    }
    const serverErrors = worker.logs().split('\n').filter((line) => /"status":5\d\d/.test(line));
    assert.deepEqual(serverErrors, [], 'no 5xx');
  });
});
