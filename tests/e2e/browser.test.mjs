// Safe to call from a browser, end to end: CORS for allowed origins only, short-lived
// browser tokens (minting, using, every kind of refusal, isolation), rate limits per
// tenant and per address, private-address URLs, and the body size limit.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import {
  ACCESS_KEY, baseSettings, OFFICIAL, OPS_KEY, SECRET_KEY, VIDEO, WEB_KEY,
} from '../support/settings.mjs';
import { call, freshRateLimitWindow, startWorker } from '../support/worker.mjs';

const APP_ORIGIN = 'https://app.example.com';
const TOKEN_SECRET = 'browser-token-secret-for-the-e2e-tests-5f4e3d2c';

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake, {
    ALLOWED_ORIGINS: `${APP_ORIGIN},http://localhost:5173`,
    PROXY_TOKEN_SECRET: TOKEN_SECRET,
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

/** A JWT with any header and claims, HMAC-SHA256-signed with `secret`. */
function craftJwt(header, claims, secret = TOKEN_SECRET) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${encode(header)}.${encode(claims)}`;
  return `${input}.${crypto.createHmac('sha256', secret).update(input).digest('base64url')}`;
}

async function mint(sub, { key = WEB_KEY, ttl } = {}) {
  const body = { sub };
  if (ttl !== undefined) body.ttl_seconds = ttl;
  const response = await call(worker, 'POST', '/v1/tokens', { key, body });
  assert.equal(response.status, 200, response.text);
  return response.json.data.token;
}

/**
 * POSTs a chunked body, a chunk every few ms, until the server answers or drops the
 * connection; stops sending then. Resolves with the answer (or `reset`) and the chunks sent.
 */
function streamUntilAnswered(url, headers, chunk, maxChunks) {
  return new Promise((resolve) => {
    const request = http.request(url, { method: 'POST', headers: { ...headers, 'transfer-encoding': 'chunked' } });
    let sentChunks = 0;
    let settled = false;
    request.on('response', (response) => {
      settled = true;
      let body = '';
      response.on('data', (data) => { body += data; });
      response.on('end', () => resolve({ status: response.statusCode, body, sentChunks }));
    });
    // A server that answers early and closes can reset the connection before the client
    // reads the answer (the client was still sending): that, too, means it stopped reading.
    request.on('error', (error) => {
      if (settled) return;
      settled = true;
      resolve({ reset: error.code, sentChunks });
    });
    const pump = () => {
      if (settled || sentChunks >= maxChunks) return request.end();
      sentChunks += 1;
      request.write(chunk, () => setTimeout(pump, 5));
    };
    pump();
  });
}

async function preflight(w, origin, path = OFFICIAL) {
  return fetch(`${w.url}${path}`, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
  });
}

describe('CORS', () => {
  it('grants a preflight from an allowed origin exactly that origin', async () => {
    for (const origin of [APP_ORIGIN, 'http://localhost:5173']) {
      const response = await preflight(worker, origin);
      assert.equal(response.status, 204);
      assert.equal(response.headers.get('access-control-allow-origin'), origin);
      assert.equal(response.headers.get('vary'), 'Origin');
      assert.match(response.headers.get('access-control-allow-methods'), /POST/);
      assert.match(response.headers.get('access-control-allow-headers'), /Authorization/);
      assert.match(response.headers.get('access-control-allow-headers'), /Content-Type/);
      assert.ok(Number(response.headers.get('access-control-max-age')) > 0);
    }
  });

  it('grants nothing to any other origin', async () => {
    for (const origin of ['https://evil.example.com', 'http://app.example.com', 'https://app.example.com.evil.com', 'null']) {
      const response = await preflight(worker, origin);
      assert.equal(response.status, 204);
      assert.equal(response.headers.get('access-control-allow-origin'), null, origin);
      assert.equal(response.headers.get('access-control-allow-methods'), null, origin);
      const answer = await call(worker, 'GET', OFFICIAL, { key: WEB_KEY, headers: { origin } });
      assert.equal(answer.headers.get('access-control-allow-origin'), null, origin);
    }
  });

  it('puts the grant on answers and refusals, so a page can read its errors', async () => {
    const ok = await call(worker, 'GET', OFFICIAL, { key: WEB_KEY, headers: { origin: APP_ORIGIN } });
    assert.equal(ok.headers.get('access-control-allow-origin'), APP_ORIGIN);
    assert.equal(ok.headers.get('vary'), 'Origin');
    assert.match(ok.headers.get('access-control-expose-headers'), /X-Request-Id/);
    const refused = await call(worker, 'POST', OFFICIAL, { body: { video_url: VIDEO }, headers: { origin: APP_ORIGIN } });
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('access-control-allow-origin'), APP_ORIGIN);
    const missing = await call(worker, 'GET', '/v1/nothing', { key: WEB_KEY, headers: { origin: APP_ORIGIN } });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('access-control-allow-origin'), APP_ORIGIN);
  });

  it('never sends a wildcard', async () => {
    for (const origin of [APP_ORIGIN, 'https://evil.example.com', '*']) {
      const response = await preflight(worker, origin);
      assert.notEqual(response.headers.get('access-control-allow-origin'), '*');
    }
  });
});

describe('browser tokens', () => {
  it('are minted by a server key, for 15 minutes by default and at most an hour', async () => {
    const before = Date.now();
    const response = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'user-42' } });
    assert.equal(response.status, 200, response.text);
    assert.equal(response.json.code, 0);
    const { token, expires_at: expiresAt } = response.json.data;
    assert.ok(Math.abs(expiresAt - (before + 900_000)) < 5000, `${expiresAt}`);
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url'));
    assert.equal(claims.sub, 'user-42');
    assert.equal(claims.app, 'web');

    const hour = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'u', ttl_seconds: 3600 } });
    assert.equal(hour.status, 200);
    for (const [body, field] of [
      [{ sub: 'u', ttl_seconds: 3601 }, 'ttl_seconds'],
      [{ ttl_seconds: 60 }, 'sub'],
      [{ sub: 'has/slash' }, 'sub'],
      [{ sub: 'u', admin: true }, 'admin'],
    ]) {
      const refused = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body });
      assert.equal(refused.status, 400, refused.text);
      assert.ok(refused.json.message.startsWith(`${field}:`), refused.json.message);
    }
  });

  it('authenticate like a key, as a tenant of their own', async () => {
    const alice = await mint('alice');
    const bob = await mint('bob');
    const created = await call(worker, 'POST', OFFICIAL, { key: alice, body: { video_url: VIDEO, external_task_id: 'alice-1' } });
    assert.equal(created.status, 200, created.text);
    const taskId = created.json.data.task_id;
    assert.equal((await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: alice })).status, 200);
    assert.equal((await call(worker, 'GET', `${OFFICIAL}/alice-1`, { key: alice })).status, 200);
    for (const other of [bob, WEB_KEY, OPS_KEY, await mint('alice', { key: OPS_KEY })]) {
      const response = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: other });
      assert.equal(response.status, 404, 'users of one app, the app itself and other apps are isolated');
      assert.equal(response.json.code, 1203);
      const list = await call(worker, 'GET', OFFICIAL, { key: other });
      assert.ok(!list.json.data.some((t) => t.task_id === taskId));
    }
    const own = await call(worker, 'GET', OFFICIAL, { key: alice });
    assert.deepEqual(own.json.data.map((t) => t.task_id), [taskId]);
  });

  it('cannot mint tokens', async () => {
    const alice = await mint('alice');
    const response = await call(worker, 'POST', '/v1/tokens', { key: alice, body: { sub: 'mallory' } });
    assert.equal(response.status, 403);
    assert.equal(response.json.code, 1103);
  });

  const now = () => Math.floor(Date.now() / 1000);
  // The minting key's fingerprint, as the worker computes it (an HMAC under the token secret).
  const akf = (key) => crypto.createHmac('sha256', TOKEN_SECRET)
    .update(Buffer.concat([Buffer.from('kling-edge app key\0'), crypto.createHash('sha256').update(key).digest()]))
    .digest().subarray(0, 8).toString('hex');
  const claims = (extra = {}) => ({ iss: 'kling-edge', sub: 'alice', app: 'web', akf: akf(WEB_KEY), iat: now(), nbf: now(), exp: now() + 600, ...extra });
  const HS256 = { alg: 'HS256', typ: 'JWT' };
  for (const [name, token, code] of [
    ['an expired token', () => craftJwt(HS256, claims({ nbf: now() - 700, exp: now() - 100 })), 1004],
    ['a token not yet valid', () => craftJwt(HS256, claims({ nbf: now() + 300, exp: now() + 900 })), 1003],
    ['a token with a wrong signature', () => craftJwt(HS256, claims(), 'not-the-secret-not-the-secret-not-it'), 1002],
    ['an HS512 token', () => craftJwt({ alg: 'HS512', typ: 'JWT' }, claims()), 1002],
    ['an alg "none" token', () => `${craftJwt({ alg: 'none', typ: 'JWT' }, claims()).split('.').slice(0, 2).join('.')}.`, 1002],
    ['a token expiring more than an hour ahead', () => craftJwt(HS256, claims({ exp: now() + 3700 })), 1002],
    ['a token of an app whose key was removed', () => craftJwt(HS256, claims({ app: 'gone' })), 1002],
    ['a token minted by a key since rotated', () => craftJwt(HS256, claims({ akf: akf('pk_web_old_key') })), 1002],
    ['a token without a key fingerprint', () => craftJwt(HS256, claims({ akf: undefined })), 1002],
    ['a token of another issuer', () => craftJwt(HS256, claims({ iss: 'someone-else' })), 1002],
  ]) {
    it(`refuse ${name} with 401 (${code})`, async () => {
      // The same claims with the right fingerprint and times are accepted (the control).
      assert.equal((await call(worker, 'GET', OFFICIAL, { key: craftJwt(HS256, claims()) })).status, 200);
      const before = fake.requests.length;
      const response = await call(worker, 'POST', OFFICIAL, { key: token(), body: { video_url: VIDEO } });
      assert.equal(response.status, 401, response.text);
      assert.equal(response.json.code, code, response.text);
      assert.equal(fake.requests.length, before);
    });
  }
});

describe('input safety', () => {
  const privateUrls = [
    'http://127.0.0.1/a.mp4', 'http://localhost/a.mp4', 'http://LOCALHOST./a.mp4', 'http://[::1]/a.mp4',
    'http://2130706433/a.mp4', 'http://0x7f000001/a.mp4', 'http://0177.0.0.1/a.mp4', 'http://127.1/a.mp4',
    'http://10.0.0.5/a.mp4', 'http://172.16.3.4/a.mp4', 'http://192.168.1.20/a.mp4', 'http://0xc0a80114/a.mp4',
    'http://169.254.169.254/latest/meta-data', 'http://100.64.1.1/a.mp4', 'http://0.0.0.0/a.mp4',
    'http://224.0.0.1/a.mp4', 'http://[fc00::1]/a.mp4', 'http://[fe80::1]/a.mp4', 'http://[::ffff:127.0.0.1]/a.mp4',
    'http://[::ffff:169.254.169.254]/a.mp4', 'http://printer.local/a.mp4', 'http://metadata.google.internal/a.mp4',
    'http://metadata/a.mp4',
  ];
  it('refuses every private or local spelling of video_url and callback_url', async () => {
    const before = fake.requests.length;
    for (const url of privateUrls) {
      const video = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: url } });
      assert.equal(video.status, 400, `${url}: ${video.text}`);
      assert.match(video.json.message, /^video_url: must not point to a private or local address/, url);
      const hook = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO, callback_url: url } });
      assert.equal(hook.status, 400, `${url}: ${hook.text}`);
      assert.match(hook.json.message, /^callback_url: must not point to a private or local address/, url);
    }
    assert.equal(fake.requests.length, before, 'nothing reached Kling');
  });

  it('refuses a body over 64 KiB with 413, by Content-Length or while streaming', async () => {
    const before = fake.requests.length;
    const padded = JSON.stringify({ video_url: VIDEO }) + ' '.repeat(64 * 1024);
    const declared = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, raw: padded, headers: { 'content-type': 'application/json' } });
    assert.equal(declared.status, 413);
    assert.equal(declared.json.code, 1200);

    // No Content-Length: the body streams in 16 KiB chunks, up to 4 MiB, and the answer
    // must come before the client has sent it all.
    const streamed = await streamUntilAnswered(`${worker.url}${OFFICIAL}`, {
      authorization: `Bearer ${WEB_KEY}`, 'content-type': 'application/json',
    }, Buffer.alloc(16 * 1024, ' '), 256);
    assert.ok(streamed.sentChunks < 256, `stopped reading after ${streamed.sentChunks} of 256 chunks`);
    assert.ok(streamed.sentChunks >= 4, 'read at least the 64 KiB it allows');
    if (!streamed.reset) {
      assert.equal(streamed.status, 413, streamed.body);
      assert.equal(JSON.parse(streamed.body).code, 1200);
    }
    assert.equal(fake.requests.length, before);

    const atLimit = JSON.stringify({ video_url: VIDEO }).padEnd(64 * 1024, ' ');
    const accepted = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, raw: atLimit, headers: { 'content-type': 'application/json' } });
    assert.equal(accepted.status, 200, 'exactly 64 KiB is accepted');
  });
});

describe('rate limits (the defaults of wrangler.toml)', () => {
  let limited;
  let limitedFake;

  before(async () => {
    limitedFake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
    limited = await startWorker(baseSettings(limitedFake, { PROXY_TOKEN_SECRET: TOKEN_SECRET }), { productionLimits: true });
  });

  after(async () => {
    await limited?.stop();
    await limitedFake?.close();
  });

  const freshWindow = freshRateLimitWindow;

  it("stop a tenant's burst at 120 requests a minute, and only that tenant's", async () => {
    await freshWindow();
    const statuses = [];
    for (let i = 0; i < 121; i += 1) {
      statuses.push((await call(limited, 'GET', `${OFFICIAL}?pageSize=1`, { key: WEB_KEY })).status);
    }
    assert.equal(statuses.filter((s) => s === 200).length, 120);
    const refused = await call(limited, 'GET', OFFICIAL, { key: WEB_KEY });
    assert.equal(refused.status, 429);
    assert.equal(refused.json.code, 1302);
    const retryAfter = Number(refused.headers.get('retry-after'));
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
    assert.equal((await call(limited, 'GET', OFFICIAL, { key: OPS_KEY })).status, 200, 'another tenant is unaffected');
  });

  it('stop a tenant at 10 creates a minute, and only that tenant', async () => {
    await freshWindow();
    const alice = (await call(limited, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'alice' } })).json.data.token;
    const bob = (await call(limited, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'bob' } })).json.data.token;
    const before = limitedFake.apiRequests('POST').length;
    const statuses = [];
    for (let i = 0; i < 11; i += 1) {
      statuses.push((await call(limited, 'POST', OFFICIAL, { key: alice, body: { video_url: VIDEO } })).status);
    }
    assert.deepEqual(statuses, [...Array(10).fill(200), 429]);
    assert.equal(limitedFake.apiRequests('POST').length, before + 10, 'the refused create never reached Kling');
    assert.equal((await call(limited, 'POST', OFFICIAL, { key: bob, body: { video_url: VIDEO } })).status, 200);
  });

  it('count only creates that passed validation', async () => {
    await freshWindow();
    const carol = (await call(limited, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'carol' } })).json.data.token;
    const refused = [];
    for (let i = 0; i < 12; i += 1) {
      refused.push((await call(limited, 'POST', OFFICIAL, { key: carol, body: { video_url: 'https://cdn.example.com/clip.avi' } })).status);
    }
    assert.deepEqual(refused, Array(12).fill(400), 'every invalid create is refused for what it is, never 429');
    const valid = await call(limited, 'POST', OFFICIAL, { key: carol, body: { video_url: VIDEO } });
    assert.equal(valid.status, 200, `a refused create costs nothing: ${valid.text}`);
  });

  it('count failed authentication per address', async () => {
    await freshWindow();
    const statuses = [];
    for (let i = 0; i < 121; i += 1) {
      statuses.push((await call(limited, 'GET', OFFICIAL, { key: `pk_guess_${i}` })).status);
    }
    assert.equal(statuses.filter((s) => s === 401).length, 120);
    assert.equal(statuses.at(-1), 429);
    assert.equal((await call(limited, 'GET', OFFICIAL, { key: OPS_KEY })).status, 200, 'a valid key still works');
  });

  it('count refused callbacks against the address too, never genuine ones', async () => {
    // The address has just used its budget on failed authentication (the test above).
    const created = await call(limited, 'POST', OFFICIAL, { key: OPS_KEY, body: { video_url: VIDEO } });
    const taskId = created.json.data.task_id;
    const forged = await fetch(`${limited.url}/v1/callbacks/kling/${crypto.randomBytes(16).toString('hex')}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(limitedFake.tasks.get(taskId).data),
    });
    assert.equal(forged.status, 429);
    const genuine = await limitedFake.advance(taskId, 'processing');
    assert.equal(genuine.status, 200, 'Kling is never limited');
  });

  it('grant no CORS when ALLOWED_ORIGINS is empty', async () => {
    const response = await preflight(limited, APP_ORIGIN);
    assert.equal(response.headers.get('access-control-allow-origin'), null);
  });
});
