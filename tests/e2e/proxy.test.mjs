// The proxy end to end: the built worker in workerd (wrangler dev, local KV), over real
// HTTP, in front of the strict fake Kling. Covers client authentication, every validation
// rule (and that a rejected request never reaches Kling), both path families, JWT signing
// and reuse, upstream error passthrough, dropped and hanging connections, configuration
// errors, and that no secret leaves in a response or a log line.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import {
  ACCESS_KEY, baseSettings, CALLBACK_URL, clientFields, KLING_API_KEY, OFFICIAL, OPS_KEY, QUERY_REFRESH_MS, SECRET_KEY, SECRETS,
  SIMPLIFIED, VIDEO, WEB_KEY,
} from '../support/settings.mjs';
import { call, startWorker, transcript } from '../support/worker.mjs';

let fake;
let worker;
const workers = [];

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, apiKey: KLING_API_KEY });
  worker = await startWorker(baseSettings(fake));
  workers.push(worker);
});

after(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await fake?.close();
});

function decodeJwt(token) {
  const [header, claims] = token.split('.').slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, claims };
}

/** The body Kling received, less the callback URL the worker put in (checked for form). */
function upstreamBody(received) {
  assert.match(received.body.callback_url, CALLBACK_URL(worker.url));
  return clientFields(received.body);
}

/** Asserts a rejection in Kling's envelope that names `field`, and that Kling saw nothing. */
async function assertRejected(request, { status = 400, code = 1201, field, words }) {
  const before = fake.requests.length;
  const response = await request();
  assert.equal(response.status, status, response.text);
  assert.equal(response.json.code, code, response.text);
  assert.equal(typeof response.json.request_id, 'string');
  assert.equal(response.headers.get('x-request-id'), response.json.request_id);
  if (field) assert.ok(response.json.message.startsWith(`${field}:`), response.json.message);
  if (words) assert.ok(response.json.message.includes(words), response.json.message);
  assert.equal(fake.requests.length, before, 'a rejected request must not reach Kling');
  return response;
}

describe('health and routing', () => {
  it('answers /health without credentials and reveals nothing', async () => {
    const response = await call(worker, 'GET', '/health');
    assert.equal(response.status, 200);
    assert.deepEqual(Object.keys(response.json).sort(), ['code', 'message', 'request_id']);
    assert.equal(response.json.code, 0);
  });

  it('answers unknown paths and methods in the envelope', async () => {
    await assertRejected(() => call(worker, 'GET', '/v2/nothing', { key: WEB_KEY }), { status: 404, code: 1202 });
    const response = await assertRejected(
      () => call(worker, 'DELETE', OFFICIAL, { key: WEB_KEY }), { status: 405, code: 1202 },
    );
    assert.equal(response.headers.get('allow'), 'GET, POST');
  });
});

describe('client authentication', () => {
  it('rejects a missing Authorization header with 1001', async () => {
    await assertRejected(() => call(worker, 'POST', OFFICIAL, { body: { video_url: VIDEO } }), { status: 401, code: 1001, field: 'Authorization' });
    await assertRejected(() => call(worker, 'GET', `${OFFICIAL}/t1`), { status: 401, code: 1001 });
  });

  it('rejects an unknown key with 1002', async () => {
    await assertRejected(() => call(worker, 'POST', OFFICIAL, { key: 'pk_nobody', body: { video_url: VIDEO } }), { status: 401, code: 1002 });
    await assertRejected(() => call(worker, 'GET', OFFICIAL, { headers: { authorization: `Basic ${WEB_KEY}` } }), { status: 401, code: 1002 });
  });

  it('authenticates before validating, so a stranger learns nothing about the rules', async () => {
    await assertRejected(() => call(worker, 'POST', OFFICIAL, { key: 'pk_nobody', body: { video_ulr: VIDEO } }), { status: 401, code: 1002 });
  });
});

describe('create on the official path', () => {
  it('forwards exactly the validated fields, signed with a valid Kling JWT', async () => {
    const body = {
      video_url: VIDEO,
      sound_effect_prompt: 'waves on the shore',
      bgm_prompt: 'calm piano',
      asmr_mode: false,
      external_task_id: 'official-1',
      video_duration: 7.5,
    };
    const response = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body });
    assert.equal(response.status, 200, response.text);
    assert.equal(response.json.code, 0);
    assert.equal(response.json.data.task_status, 'submitted');
    assert.equal(response.json.data.task_info.external_task_id, 'official-1');
    assert.equal(response.headers.get('x-request-id'), response.json.request_id);

    const [received] = fake.apiRequests('POST').slice(-1);
    const { video_duration: _hint, ...expected } = body;
    assert.deepEqual(upstreamBody(received), expected, 'video_duration stays at the edge');

    const { header, claims } = decodeJwt(received.token);
    assert.deepEqual(header, { alg: 'HS256', typ: 'JWT' });
    assert.equal(claims.iss, ACCESS_KEY);
    const now = Math.floor(Date.now() / 1000);
    assert.ok(Math.abs(claims.exp - 1800 - now) <= 60, `exp ${claims.exp} vs now ${now}`);
    assert.equal(claims.exp - claims.nbf, 1805);
  });

  it('accepts video_id instead of video_url', async () => {
    const response = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_id: '842250903629086785' } });
    assert.equal(response.status, 200, response.text);
    assert.deepEqual(upstreamBody(fake.apiRequests('POST').at(-1)), { video_id: '842250903629086785' });
  });

  it('reuses one token across requests', async () => {
    const start = fake.requests.length;
    await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_id: '842250903629086785' } });
    await call(worker, 'POST', SIMPLIFIED, { key: OPS_KEY, body: { video_url: VIDEO } });
    const tokens = new Set(fake.requests.slice(start).map((r) => r.token));
    assert.equal(fake.requests.length - start, 3);
    assert.equal(tokens.size, 1, 'one signed token serves every request of the isolate');
  });
});

describe('create on the simplified path', () => {
  const cases = [
    [undefined, { sound_effect_prompt: 'p' }],
    ['sound_effect', { sound_effect_prompt: 'p' }],
    ['ambient', { sound_effect_prompt: 'p' }],
    ['music', { bgm_prompt: 'p' }],
    ['bgm', { bgm_prompt: 'p' }],
    ['asmr', { sound_effect_prompt: 'p', asmr_mode: true }],
  ];
  for (const [audioType, mapped] of cases) {
    it(`maps audio_type ${audioType ?? '(default)'} onto the official call`, async () => {
      const body = { video_url: VIDEO, prompt: 'p', video_duration: 5 };
      if (audioType) body.audio_type = audioType;
      const response = await call(worker, 'POST', SIMPLIFIED, { key: WEB_KEY, body });
      assert.equal(response.status, 200, response.text);
      const received = fake.apiRequests('POST').at(-1);
      assert.equal(received.path, OFFICIAL, 'upstream it is always the official call');
      assert.deepEqual(upstreamBody(received), { video_url: VIDEO, ...mapped });
    });
  }
});

describe('validation before anything reaches Kling', () => {
  const long = (n, ch = 'a') => ch.repeat(n);
  const official = [
    ['an empty body', '', { code: 1200, field: 'body', words: 'empty' }],
    ['invalid JSON', '{"video_url":', { code: 1200, field: 'body', words: 'valid JSON' }],
    ['an array', '[]', { code: 1200, field: 'body', words: 'not an array' }],
    ['a misspelt field', { video_ulr: VIDEO }, { field: 'video_ulr', words: 'unknown field' }],
    ['both video sources', { video_id: '1', video_url: VIDEO }, { field: 'video_id', words: 'exactly one' }],
    ['no video source', { bgm_prompt: 'x' }, { field: 'video_url', words: 'exactly one' }],
    ['a relative URL', { video_url: '/clips/a.mp4' }, { field: 'video_url', words: 'absolute http or https' }],
    ['an ftp URL', { video_url: 'ftp://cdn.example.com/a.mp4' }, { field: 'video_url', words: 'absolute http or https' }],
    ['user info in a URL', { video_url: 'https://u:p@cdn.example.com/a.mp4' }, { field: 'video_url', words: 'user info' }],
    ['a URL over 2048 characters', { video_url: `https://cdn.example.com/${long(2040)}.mp4` }, { field: 'video_url', words: '2048' }],
    ['a .avi video', { video_url: 'https://cdn.example.com/a.avi' }, { field: 'video_url', words: '.mp4 or .mov' }],
    ['a bad callback_url', { video_url: VIDEO, callback_url: 'hooks/kling' }, { field: 'callback_url', words: 'absolute' }],
    ['a 201-character prompt', { video_url: VIDEO, sound_effect_prompt: long(201) }, { field: 'sound_effect_prompt', words: 'at most 200 characters' }],
    ['a 201-character bgm prompt', { video_url: VIDEO, bgm_prompt: long(201, 'é') }, { field: 'bgm_prompt', words: 'at most 200 characters' }],
    ['a string asmr_mode', { video_url: VIDEO, asmr_mode: 'true' }, { field: 'asmr_mode', words: 'boolean' }],
    ['a 2.9 s video', { video_url: VIDEO, video_duration: 2.9 }, { field: 'video_duration', words: '3 to 20' }],
    ['a 21 s video', { video_url: VIDEO, video_duration: 21 }, { field: 'video_duration', words: '3 to 20' }],
    ['a text video_duration', { video_url: VIDEO, video_duration: '8' }, { field: 'video_duration', words: 'number' }],
    ['a bad external_task_id', { video_url: VIDEO, external_task_id: 'has space' }, { field: 'external_task_id', words: '1 to 64' }],
    ['a 65-character external_task_id', { video_url: VIDEO, external_task_id: long(65) }, { field: 'external_task_id', words: '1 to 64' }],
  ];
  for (const [name, body, expected] of official) {
    it(`rejects ${name} on the official path`, async () => {
      const options = typeof body === 'string'
        ? { key: WEB_KEY, raw: body, headers: { 'content-type': 'application/json' } }
        : { key: WEB_KEY, body };
      await assertRejected(() => call(worker, 'POST', OFFICIAL, options), expected);
    });
  }

  const simplified = [
    ['a missing video_url', { prompt: 'x' }, { field: 'video_url', words: 'required' }],
    ['an unknown audio_type', { video_url: VIDEO, audio_type: 'speech' }, { field: 'audio_type', words: 'must be one of' }],
    ['an official-only field', { video_url: VIDEO, asmr_mode: true }, { field: 'asmr_mode', words: 'unknown field' }],
    ['a 201-character prompt', { video_url: VIDEO, prompt: long(201) }, { field: 'prompt', words: 'at most 200' }],
    ['a 25 s video', { video_url: VIDEO, video_duration: 25 }, { field: 'video_duration', words: '3 to 20' }],
  ];
  for (const [name, body, expected] of simplified) {
    it(`rejects ${name} on the simplified path`, async () => {
      await assertRejected(() => call(worker, 'POST', SIMPLIFIED, { key: WEB_KEY, body }), expected);
    });
  }

  it('rejects bad path task ids', async () => {
    await assertRejected(() => call(worker, 'GET', `${OFFICIAL}/${'x'.repeat(65)}`, { key: WEB_KEY }), { field: 'task_id', words: '1 to 64' });
    await assertRejected(() => call(worker, 'GET', `${SIMPLIFIED}/a%20b`, { key: WEB_KEY }), { field: 'task_id' });
  });

  it('rejects bad pagination', async () => {
    for (const [query, field] of [
      ['pageNum=0', 'pageNum'], ['pageNum=1001', 'pageNum'], ['pageSize=501', 'pageSize'],
      ['pageSize=x', 'pageSize'], ['pagenum=2', 'pagenum'],
    ]) {
      await assertRejected(() => call(worker, 'GET', `${OFFICIAL}?${query}`, { key: WEB_KEY }), { field, words: '' });
    }
  });

  it('refuses a body over 64 KiB with 413', async () => {
    await assertRejected(
      () => call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO, bgm_prompt: 'x'.repeat(70_000) } }),
      { status: 413, code: 1200, field: 'body', words: 'at most 65536 bytes' },
    );
  });
});

describe('query', () => {
  it('answers an unfinished task on both path families, by task id or external id, asking Kling (by task id) only when it has been quiet', async () => {
    const created = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO, external_task_id: 'query-1' } });
    const taskId = created.json.data.task_id;
    const asked = () => fake.apiRequests('GET').filter((r) => r.path.endsWith(`/${taskId}`) || r.path.endsWith('/query-1'));
    for (const prefix of [OFFICIAL, SIMPLIFIED]) {
      for (const id of [taskId, 'query-1']) {
        const response = await call(worker, 'GET', `${prefix}/${id}`, { key: WEB_KEY });
        assert.equal(response.status, 200, response.text);
        assert.equal(response.json.code, 0);
        assert.equal(response.json.data.task_id, taskId);
        assert.equal(response.json.data.task_info.external_task_id, 'query-1');
        assert.equal(response.headers.get('x-request-id'), response.json.request_id);
      }
    }
    assert.equal(asked().length, 0, 'just created: the coordinator answers from what Kling said');
    await new Promise((resolve) => setTimeout(resolve, QUERY_REFRESH_MS + 200));
    await fake.advance(taskId, 'processing', { callback: false });
    const response = await call(worker, 'GET', `${SIMPLIFIED}/query-1`, { key: WEB_KEY });
    assert.equal(response.json.data.task_status, 'processing', 'a quiet task is refreshed from Kling');
    assert.deepEqual(asked().map((r) => r.path), [`${OFFICIAL}/${taskId}`], 'asked once, by task id, on the official path');
  });

  it('answers 404 for a task it never created, without asking Kling', async () => {
    await assertRejected(() => call(worker, 'GET', `${OFFICIAL}/860000000000000999`, { key: WEB_KEY }), { status: 404, code: 1203 });
  });
});

describe('Kling failures', () => {
  it("passes Kling's own errors through unchanged (but 1303, which waits in line: queue.test.mjs)", async () => {
    const klingError = { code: 1102, message: 'account balance not enough', request_id: 'kling-req-1102' };
    fake.injectFault({ method: 'POST', kind: 'status', status: 429, body: klingError });
    const response = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    assert.equal(response.status, 429);
    assert.deepEqual(response.json, klingError);
    assert.equal(response.headers.get('x-request-id'), 'kling-req-1102');
  });

  it('answers 502 when Kling drops a create, and never sends it twice', async () => {
    const creates = fake.apiRequests('POST').length;
    fake.injectFault({ method: 'POST', kind: 'drop' });
    const response = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    assert.equal(response.status, 502, response.text);
    assert.equal(response.json.code, 5001);
    assert.match(response.json.message, /external_task_id/);
    assert.equal(fake.apiRequests('POST').length, creates + 1, 'a create is never retried');
  });

  it('retries a query once when Kling drops the connection', async () => {
    const first = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    const second = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    await new Promise((resolve) => setTimeout(resolve, QUERY_REFRESH_MS + 200));
    const gets = fake.apiRequests('GET').length;
    fake.injectFault({ method: 'GET', kind: 'drop' });
    const response = await call(worker, 'GET', `${OFFICIAL}/${first.json.data.task_id}`, { key: WEB_KEY });
    assert.equal(response.status, 200, response.text);
    assert.equal(fake.apiRequests('GET').length, gets + 2);

    fake.injectFault({ method: 'GET', kind: 'drop', count: 2 });
    const stale = await call(worker, 'GET', `${OFFICIAL}/${second.json.data.task_id}`, { key: WEB_KEY });
    assert.equal(fake.apiRequests('GET').length, gets + 4, 'retried once, not more');
    assert.equal(stale.status, 200, 'the last state Kling reported is served from the store');
    assert.equal(stale.json.data.task_status, 'submitted');
  });

  it('answers 504 when Kling does not answer in time', async () => {
    fake.injectFault({ method: 'POST', kind: 'hang' });
    const started = Date.now();
    const response = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    assert.equal(response.status, 504, response.text);
    assert.equal(response.json.code, 5002);
    assert.ok(Date.now() - started < 10_000);
  });
});

describe('Kling credentials', () => {
  it('uses KLING_API_KEY as the bearer token, winning over access keys', async () => {
    const apiKeyWorker = await startWorker(baseSettings(fake, { KLING_API_KEY }));
    workers.push(apiKeyWorker);
    const response = await call(apiKeyWorker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    assert.equal(response.status, 200, response.text);
    assert.equal(fake.apiRequests('POST').at(-1).token, KLING_API_KEY);
  });

  it('is refused by Kling with a wrong secret, and passes that refusal on', async () => {
    const wrong = await startWorker(baseSettings(fake, { KLING_SECRET_KEY: 'sk_wrong_value_for_test' }));
    workers.push(wrong);
    const response = await call(wrong, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    assert.equal(response.status, 401);
    assert.equal(response.json.code, 1002);
    assert.match(response.json.message, /signature/);
    SECRETS.push('sk_wrong_value_for_test');
  });

  it('answers 500 naming a missing or malformed setting, never its value', async () => {
    const broken = await startWorker({
      KLING_API_BASE: fake.url,
      KLING_ACCESS_KEY: ACCESS_KEY,
      PROXY_API_KEYS: `web:${WEB_KEY}`,
    });
    workers.push(broken);
    const missing = await call(broken, 'GET', OFFICIAL, { key: WEB_KEY });
    assert.equal(missing.status, 500);
    assert.equal(missing.json.code, 5000);
    assert.match(missing.json.message, /KLING_SECRET_KEY/);
    assert.equal((await call(broken, 'GET', '/health')).status, 200);

    const malformed = await startWorker(baseSettings(fake, { PROXY_API_KEYS: `web-${WEB_KEY}` }));
    workers.push(malformed);
    const response = await call(malformed, 'GET', OFFICIAL, { key: WEB_KEY });
    assert.equal(response.status, 500);
    assert.match(response.json.message, /PROXY_API_KEYS/);
    assert.ok(!response.text.includes(WEB_KEY));
  });
});

describe('secrets', () => {
  it('never appear in a response or a log line', async () => {
    const tokens = new Set(fake.requests.map((r) => r.token).filter(Boolean));
    const needles = [...SECRETS, ACCESS_KEY, ...tokens];
    assert.ok(tokens.size >= 1);
    for (const exchange of transcript) {
      const seen = JSON.stringify(exchange);
      for (const needle of needles) {
        assert.ok(!seen.includes(needle), `a secret leaked in ${exchange.method} ${exchange.pathname}`);
      }
    }
    for (const w of workers) {
      const logs = w.logs();
      assert.ok(logs.includes('"request_id"'), 'the worker logs one line per request');
      for (const needle of needles) assert.ok(!logs.includes(needle), 'a secret leaked into the logs');
    }
  });
});
