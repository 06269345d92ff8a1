// Credit budgets end to end: the stand-in charges one credit a task (final_unit_deduction
// "1", as Kling reports it); a client with a budget of 3 gets three tasks and a 429 for the
// fourth, which never reaches Kling; six concurrent creates with one credit left reach Kling
// at most once; other tenants are unaffected; /v1/usage shows the spend; a browser user's
// budget comes from its token.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, OPS_KEY, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { call, eventually, startWorker } from '../support/worker.mjs';

const T2A = '/v1/audio/text-to-audio';
const LAB_KEY = 'pk_lab_test_7a8b9c0d1e2f3a4b';
const TOKEN_SECRET = 'budget-token-secret-0123456789abcdef0123';

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake, {
    PROXY_API_KEYS: `web:${WEB_KEY},ops:${OPS_KEY},lab:${LAB_KEY}`,
    CREDIT_BUDGETS: 'web:3,lab:3',
    PROXY_TOKEN_SECRET: TOKEN_SECRET,
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

const creates = () => fake.requests.filter((r) => r.method === 'POST').length;
const create = (key, prompt) => call(worker, 'POST', T2A, { key, body: { prompt, duration: 5 } });
const usage = async (key, query = '') => {
  const response = await call(worker, 'GET', `/v1/usage${query}`, { key });
  assert.equal(response.status, 200, response.text);
  return response.json.data;
};

describe('a credit budget', () => {
  it('takes three one-credit tasks of a budget of 3 and refuses the fourth with 429, before Kling', async () => {
    const made = [];
    for (let n = 1; n <= 3; n += 1) {
      const r = await create(WEB_KEY, `budget ${n}`);
      assert.equal(r.status, 200, r.text);
      made.push(r.json.data.task_id);
    }
    const before = creates();
    const fourth = await create(WEB_KEY, 'budget 4');
    assert.equal(fourth.status, 429, fourth.text);
    assert.deepEqual(Object.keys(fourth.json).sort(), ['code', 'message', 'request_id']);
    assert.match(fourth.json.message, /^budget: today's credits are spent/);
    assert.match(fourth.json.message, /renews at 00:00 UTC/);
    assert.ok(Number(fourth.headers.get('retry-after')) > 0);
    assert.equal(creates(), before, 'the fourth never reached Kling');

    // Other tenants are unaffected.
    assert.equal((await create(OPS_KEY, 'no budget')).status, 200);

    // Kling charges one credit each as they finish: usage shows the spend.
    for (const id of made) await fake.advance(id, 'succeed');
    const seen = await eventually(async () => {
      const today = await usage(WEB_KEY);
      return today.credits.spent === 3 && today;
    }, { what: 'the three credits spent' });
    assert.equal(seen.credits.reserved, 0);
    assert.equal(seen.credits.budget, 3);
    assert.equal(seen.credits.left, 0);
    assert.equal(seen.tasks['text-to-audio'].succeed, 3);
    assert.match(seen.day, /^\d{4}-\d{2}-\d{2}$/);
    assert.equal((await create(WEB_KEY, 'still spent')).status, 429, 'spent is spent');
    const ops = await usage(OPS_KEY);
    assert.equal(ops.credits.budget, undefined, 'ops has no budget');
  });

  it('lets six concurrent creates with one credit left reach Kling at most once', async () => {
    for (const n of [1, 2]) assert.equal((await create(LAB_KEY, `lab ${n}`)).status, 200);
    const before = creates();
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => create(LAB_KEY, `lab race ${i}`)));
    assert.equal(creates() - before, 1, 'the one credit left went to one create');
    assert.equal(answers.filter((r) => r.status === 200).length, creates() - before);
    assert.ok(answers.filter((r) => r.status !== 200).every((r) => r.status === 429), answers.map((r) => r.status).join(','));
  });

  it('gives a browser user the budget of its token, capped by its app\'s, and a server key sees it', async () => {
    const minted = await call(worker, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'maya', budget: 1 } });
    assert.equal(minted.status, 200, minted.text);
    const token = minted.json.data.token;
    assert.equal((await create(token, 'maya 1')).status, 200);
    const before = creates();
    const second = await create(token, 'maya 2');
    assert.equal(second.status, 429, second.text);
    assert.equal(creates(), before);
    const mine = await usage(token);
    assert.equal(mine.credits.budget, 1);
    assert.equal(mine.credits.budget_from, 'token');
    const hers = await usage(OPS_KEY, '?user=maya');
    assert.equal(hers.tenant, 'ops/maya');
    assert.equal(hers.credits.reserved, 1);
    assert.equal((await call(worker, 'GET', '/v1/usage?user=maya', { key: token })).status, 403, 'a browser user sees only its own');
    const refused = await call(worker, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'maya', budget: -1 } });
    assert.equal(refused.status, 400, refused.text);
    assert.match(refused.json.message, /^budget: /);
  });

  it('shows a server key the Kling account\'s packs at /v1/account, cached a minute', async () => {
    const costs = () => fake.requests.filter((r) => r.path.startsWith('/account/costs')).length;
    const before = costs();
    const first = await call(worker, 'GET', '/v1/account', { key: OPS_KEY });
    assert.equal(first.status, 200, first.text);
    const [account] = first.json.data.accounts;
    assert.equal(account.name, 'default');
    assert.equal(account.packs[0].remaining, 118);
    assert.equal(account.packs[0].status, 'online');
    assert.ok(account.packs[0].expires_at > Date.now());
    const again = await call(worker, 'GET', '/v1/account', { key: WEB_KEY });
    assert.deepEqual(again.json.data, first.json.data);
    assert.equal(costs() - before, 1, 'the second answer came from the cache');
    const minted = await call(worker, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'maya' } });
    assert.equal((await call(worker, 'GET', '/v1/account', { key: minted.json.data.token })).status, 403);
  });
});
