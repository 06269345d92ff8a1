// Two Kling accounts, end to end: the stand-in keeps each account's tasks apart (a token
// of one account never sees the other's tasks) and runs at most two tasks on each. The
// worker spreads creates over both, pins one to an account by useapi.net's `email`, and
// follows every task on the account that created it.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, OPS_KEY, SECRET_KEY, VIDEO, WEB_KEY } from '../support/settings.mjs';
import { call, eventually, startWorker } from '../support/worker.mjs';

const T2A = '/v1/audio/text-to-audio';
const ADD_SOUND = '/v1/kling/videos/add-sound';
const SPARE_ACCESS_KEY = 'ak_spare_test_3e5a7c9b';
const SPARE_SECRET_KEY = 'sk_spare_test_0f2d4b6a8c1e3a5b7d9f';

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({
    accounts: [
      { name: 'main', accessKey: ACCESS_KEY, secretKey: SECRET_KEY, maxConcurrency: 2 },
      { name: 'spare', accessKey: SPARE_ACCESS_KEY, secretKey: SPARE_SECRET_KEY, maxConcurrency: 2 },
    ],
  });
  worker = await startWorker(baseSettings(fake, {
    // The first account keeps the one-account credential (KLING_ACCESS_KEY); the second
    // has its own in KLING_ACCOUNT_KEYS.
    KLING_ACCOUNTS: 'main:main@example.com:2,spare:Spare@Example.com:2',
    KLING_ACCOUNT_KEYS: `spare:${SPARE_ACCESS_KEY}:${SPARE_SECRET_KEY}`,
    ALLOW_PRIVATE_URLS: 'true',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

const klingTasks = () => [...fake.tasks.values()];
const klingTaskOf = (prompt) => klingTasks().find((task) => task.body.prompt === prompt);

async function finishRunning() {
  for (const task of klingTasks()) {
    if (!['succeed', 'failed'].includes(task.data.task_status)) await fake.advance(task.data.task_id, 'succeed');
  }
}

async function queueView() {
  const response = await call(worker, 'GET', '/v1/queue', { key: WEB_KEY });
  assert.equal(response.status, 200, response.text);
  return response.json.data;
}

async function drain() {
  await eventually(async () => {
    await finishRunning();
    const view = await queueView();
    return view.accounts.every((account) => account.holding === 0) && view.line === 0;
  }, { timeoutMs: 30_000, what: 'both accounts to drain' });
}

describe('two Kling accounts', () => {
  it('spread creates over both, the least loaded first, and queue past both', async () => {
    const creates = await Promise.all([1, 2, 3, 4].map((n) => call(worker, 'POST', T2A, {
      key: n % 2 ? WEB_KEY : OPS_KEY,
      body: { prompt: `spread ${n}`, duration: 5 },
    })));
    for (const r of creates) {
      assert.equal(r.status, 200, r.text);
      assert.match(r.json.data.task_id, /^\d+$/, 'each found a free slot: Kling\'s own id');
    }
    assert.equal(fake.running('main'), 2);
    assert.equal(fake.running('spare'), 2);
    assert.equal(fake.refusedOverConcurrency, 0);
    const view = await queueView();
    assert.deepEqual(view.accounts.map((a) => [a.name, a.capacity, a.holding]), [['main', 2, 2], ['spare', 2, 2]]);

    // A fifth waits, and goes to whichever account frees a slot first.
    const fifth = await call(worker, 'POST', T2A, { key: WEB_KEY, body: { prompt: 'spread 5', duration: 5 } });
    assert.match(fifth.json.data.task_id, /^ke_/, fifth.text);
    const onSpare = klingTasks().find((t) => t.account === 'spare' && t.body.prompt.startsWith('spread'));
    await fake.advance(onSpare.data.task_id, 'succeed');
    await eventually(() => klingTaskOf('spread 5'), { what: 'the fifth create sent' });
    assert.equal(klingTaskOf('spread 5').account, 'spare', 'the account that had room');
    assert.ok(fake.peakRunningOf.main <= 2 && fake.peakRunningOf.spare <= 2);
    await drain();
    const done = await call(worker, 'GET', `${T2A}/${fifth.json.data.task_id}`, { key: WEB_KEY });
    assert.equal(done.json.data.task_status, 'succeed', done.text);
  });

  it('follow each task on the account that created it: a query with no callback asks that account', async () => {
    await drain();
    const made = [];
    for (const n of [1, 2]) {
      made.push(await call(worker, 'POST', T2A, { key: WEB_KEY, body: { prompt: `quiet ${n}`, duration: 5 } }));
    }
    assert.deepEqual(made.map((r) => klingTaskOf(`quiet ${made.indexOf(r) + 1}`).account).sort(), ['main', 'spare']);
    for (const [n, r] of made.entries()) {
      // Kling finishes the task but its callback never comes: the worker's query asks Kling,
      // and only the task's own account knows it.
      await fake.advance(klingTaskOf(`quiet ${n + 1}`).data.task_id, 'succeed', { callback: false });
      const answer = await eventually(async () => {
        const got = await call(worker, 'GET', `${T2A}/${r.json.data.task_id}`, { key: WEB_KEY });
        return got.json?.data?.task_status === 'succeed' && got;
      }, { timeoutMs: 20_000, what: `the quiet task on ${klingTaskOf(`quiet ${n + 1}`).account} refreshed` });
      assert.equal(answer.status, 200);
    }
    const queries = fake.requests.filter((r) => r.method === 'GET' && r.path.startsWith(`${T2A}/`));
    for (const query of queries) {
      const id = decodeURIComponent(query.path.slice(T2A.length + 1));
      const task = klingTasks().find((t) => t.data.task_id === id || t.data.task_info.external_task_id === id);
      if (task) assert.equal(query.account, task.account, `asked ${query.account} about a task of ${task.account}`);
    }
  });

  it('pin a create to the account useapi.net\'s email names, and refuse an unknown email with 400 before Kling', async () => {
    await drain();
    for (const email of ['spare@example.com', 'SPARE@example.com']) {
      const pinned = await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, email } });
      assert.equal(pinned.status, 200, pinned.text);
      const sent = klingTasks().at(-1);
      assert.equal(sent.account, 'spare', `${email} pins spare`);
    }
    const onMain = await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, email: 'main@example.com' } });
    assert.equal(onMain.status, 200, onMain.text);
    assert.equal(klingTasks().at(-1).account, 'main');

    const creates = () => fake.requests.filter((r) => r.method === 'POST').length;
    const seen = creates();
    const unknown = await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, email: 'nobody@example.com' } });
    assert.equal(unknown.status, 400, unknown.text);
    assert.match(unknown.json.error, /^email: is not one of this deployment's Kling accounts/);
    assert.equal(creates(), seen, 'Kling saw nothing');

    // Spare is full (two pinned there): a third create pinned to it waits, though main has room.
    const third = await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, email: 'spare@example.com' } });
    assert.equal(third.status, 200, third.text);
    assert.equal(fake.running('spare'), 2);
    assert.equal(creates(), seen, 'it waits for spare, not sent to main');
    const addSoundOn = (account) => klingTasks().filter((t) => t.path === '/v1/audio/video-to-audio' && t.account === account);
    await finishRunning();
    await eventually(() => addSoundOn('spare').length === 3, { what: 'the pinned create sent to spare' });
    assert.equal(addSoundOn('main').length, 1, 'never to main');
    await drain();
  });
});
