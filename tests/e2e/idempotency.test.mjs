// Idempotency-Key end to end: a retry of a create answers what the first answered and never
// reaches Kling again, eight concurrent creates with one key make one Kling task, a key
// reused with another body is refused, and keys are per tenant.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, OPS_KEY, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { call, startWorker } from '../support/worker.mjs';

const T2A = '/v1/audio/text-to-audio';
const ADD_SOUND = '/v1/kling/videos/add-sound';

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake, { ALLOWED_ORIGINS: 'https://app.example.com' }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

const creates = () => fake.requests.filter((r) => r.method === 'POST').length;
const create = (key, body, idempotencyKey, path = T2A) => call(worker, 'POST', path, {
  key,
  body,
  headers: idempotencyKey ? { 'idempotency-key': idempotencyKey } : {},
});

describe('Idempotency-Key', () => {
  it('answers a retry with the first answer, and Kling is called once', async () => {
    const before = creates();
    const body = { prompt: 'retry me', duration: 5 };
    const first = await create(WEB_KEY, body, 'key-retry-1');
    assert.equal(first.status, 200, first.text);
    const again = await create(WEB_KEY, body, 'key-retry-1');
    assert.equal(again.status, 200, again.text);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.text, first.text, 'exactly the first answer');
    assert.equal(creates() - before, 1, 'Kling was called once');
    // On useapi.net's path too.
    const useapi = { video: 'https://cdn.example.com/clips/beach.mp4' };
    const made = await create(WEB_KEY, useapi, 'key-useapi', ADD_SOUND);
    const repeat = await create(WEB_KEY, useapi, 'key-useapi', ADD_SOUND);
    assert.equal(repeat.status, 200, repeat.text);
    assert.deepEqual(repeat.json, made.json);
    assert.equal(creates() - before, 2);
  });

  it('makes one Kling task of eight concurrent creates with one key', async () => {
    const before = creates();
    const body = { prompt: 'eight at once', duration: 5 };
    const answers = await Promise.all(Array.from({ length: 8 }, () => create(WEB_KEY, body, 'key-eight')));
    assert.equal(creates() - before, 1, 'one Kling create');
    const accepted = answers.filter((r) => r.status === 200);
    const waiting = answers.filter((r) => r.status === 409);
    assert.ok(accepted.length >= 1, answers.map((r) => r.status).join(','));
    assert.equal(accepted.length + waiting.length, 8, answers.map((r) => r.text).join('\n'));
    for (const r of waiting) {
      assert.match(r.json.message, /^Idempotency-Key: a create with this key is still on its way/);
      assert.ok(Number(r.headers.get('retry-after')) >= 1);
    }
    const ids = new Set(accepted.map((r) => r.json.data.task_id));
    assert.equal(ids.size, 1, 'every answer names the one task');
    // A retry once it has settled gets the task too.
    const later = await create(WEB_KEY, body, 'key-eight');
    assert.equal(later.status, 200, later.text);
    assert.equal(later.json.data.task_id, [...ids][0]);
    assert.equal(creates() - before, 1);
  });

  it('refuses a key reused with another body with 422, before Kling', async () => {
    await create(WEB_KEY, { prompt: 'first body', duration: 5 }, 'key-reused');
    const before = creates();
    const refused = await create(WEB_KEY, { prompt: 'another body', duration: 5 }, 'key-reused');
    assert.equal(refused.status, 422, refused.text);
    assert.deepEqual(Object.keys(refused.json).sort(), ['code', 'message', 'request_id']);
    assert.match(refused.json.message, /^Idempotency-Key: was used with another body/);
    assert.equal(creates(), before, 'Kling saw nothing');
    const malformed = await create(WEB_KEY, { prompt: 'x', duration: 5 }, 'a key with spaces');
    assert.equal(malformed.status, 400, malformed.text);
    assert.match(malformed.json.message, /^Idempotency-Key: /);
    assert.equal(creates(), before);
  });

  it('keeps keys per tenant', async () => {
    const before = creates();
    const body = { prompt: 'per tenant', duration: 5 };
    const web = await create(WEB_KEY, body, 'key-shared-name');
    const ops = await create(OPS_KEY, body, 'key-shared-name');
    assert.equal(web.status, 200, web.text);
    assert.equal(ops.status, 200, ops.text);
    assert.notEqual(web.json.data.task_id, ops.json.data.task_id);
    assert.equal(ops.headers.get('idempotent-replayed'), null);
    assert.equal(creates() - before, 2);
  });

  it('lets a page send the header and read the answer\'s', async () => {
    const preflight = await fetch(`${worker.url}${T2A}`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, idempotency-key' },
    });
    assert.match(preflight.headers.get('access-control-allow-headers') ?? '', /Idempotency-Key/);
    const answered = await call(worker, 'POST', T2A, { key: WEB_KEY, body: { prompt: 'from a page', duration: 5 }, headers: { origin: 'https://app.example.com', 'idempotency-key': 'key-page' } });
    assert.match(answered.headers.get('access-control-expose-headers') ?? '', /Idempotent-Replayed/);
  });
});
