// The secrets audit: a worker holding every kind of secret serves every route, success and
// failure alike; then every response header and body, every forwarded webhook and every
// line the worker logged is searched for every secret, key and token it held or minted.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { Receiver } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, clientWebhookSecret, OFFICIAL, OPS_KEY, SECRET_KEY, SIMPLIFIED, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, startWorker } from '../support/worker.mjs';

const TOKEN_SECRET = 'audit-token-secret-0123456789abcdef0123';
const PROXY_WEBHOOK_SECRET = webhookSecret('audit-proxy-webhook-secret-32byt');
const KLING_WEBHOOK_SECRET = webhookSecret('audit-kling-webhook-secret-32byt');
const ORIGIN = 'https://app.example.com';

let fake;
let receiver;
let worker;
const exchanges = [];

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, webhookSecret: KLING_WEBHOOK_SECRET });
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  worker = await startWorker(baseSettings(fake, {
    PROXY_TOKEN_SECRET: TOKEN_SECRET,
    PROXY_WEBHOOK_SECRET,
    KLING_WEBHOOK_SECRET,
    ALLOWED_ORIGINS: ORIGIN,
    ALLOW_PRIVATE_URLS: 'true',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  await receiver?.close();
});

async function exchange(method, path, options = {}) {
  const response = await call(worker, method, path, { ...options, headers: { origin: ORIGIN, ...options.headers } });
  exchanges.push({ method, path, response });
  return response;
}

describe('the secrets audit', () => {
  it('drives every route, in success and failure', async () => {
    await exchange('GET', '/health');
    await exchange('OPTIONS', OFFICIAL, { headers: { 'access-control-request-method': 'POST' } });
    const hook = `${receiver.url}/audit`;
    const minted = await exchange('POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'auditor', callback_url: hook } });
    const browserToken = minted.json.data.token;
    await exchange('GET', '/v1/webhook-secret', { key: WEB_KEY });
    await exchange('GET', '/v1/webhook-secret', { key: browserToken });
    const created = await exchange('POST', OFFICIAL, { key: browserToken, body: { video_url: VIDEO, callback_url: hook, external_task_id: 'audit-1' } });
    const taskId = created.json.data.task_id;
    await exchange('POST', SIMPLIFIED, { key: WEB_KEY, body: { video_url: VIDEO, prompt: 'rain', audio_type: 'ambient' } });
    await fake.advance(taskId, 'processing');
    await exchange('GET', `${OFFICIAL}/${taskId}`, { key: browserToken });
    await fake.advance(taskId, 'succeed', { audiosInCallback: false });
    await eventually(() => receiver.at('/audit').length === 1, { what: 'the forwarded webhook' });
    await exchange('GET', `${SIMPLIFIED}/audit-1`, { key: browserToken });
    await exchange('GET', `${OFFICIAL}?pageNum=1&pageSize=10`, { key: browserToken });
    await fake.sendCallback(taskId, { signWith: webhookSecret('wrong-secret-wrong-secret-wrong!') });

    // Refusals of every kind.
    await exchange('GET', OFFICIAL);
    await exchange('GET', OFFICIAL, { key: 'pk_wrong_key' });
    await exchange('GET', OFFICIAL, { key: `${browserToken.slice(0, -4)}AAAA` });
    await exchange('POST', '/v1/tokens', { key: browserToken, body: { sub: 'x' } });
    await exchange('POST', OFFICIAL, { key: WEB_KEY, body: { video_ulr: VIDEO } });
    await exchange('POST', OFFICIAL, { key: WEB_KEY, body: { video_url: 'http://169.254.169.254/x.mp4' } });
    await exchange('POST', OFFICIAL, { key: WEB_KEY, raw: 'x'.repeat(70_000) });
    await exchange('GET', `${OFFICIAL}/nope-404`, { key: OPS_KEY });
    await exchange('DELETE', OFFICIAL, { key: WEB_KEY });
    fake.injectFault({ method: 'POST', kind: 'drop' });
    await exchange('POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    fake.injectFault({ method: 'POST', kind: 'hang' });
    await exchange('POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    fake.injectFault({ method: 'POST', kind: 'status', status: 401, body: { code: 1004, message: 'token expired', request_id: 'k-1' } });
    await exchange('POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });

    const statuses = new Set(exchanges.map((e) => e.response.status));
    for (const status of [200, 204, 400, 401, 403, 404, 405, 413, 502, 504]) {
      assert.ok(statuses.has(status), `the audit covered a ${status}`);
    }
  });

  it('finds no secret, key or token in any answer, forwarded webhook or log line', () => {
    const klingTokens = new Set(fake.requests.map((r) => r.token).filter(Boolean));
    const callbackTokens = [...fake.tasks.values()].map((t) => t.callbackUrl?.split('/').at(-1)).filter(Boolean);
    const browserTokens = exchanges.filter((e) => e.path === '/v1/tokens' && e.response.status === 200).map((e) => e.response.json.data.token);
    // The one answer that carries a client's webhook secret is its own server's request for it.
    const clientSecrets = ['web', 'ops'].map((name) => clientWebhookSecret(PROXY_WEBHOOK_SECRET, name).slice('whsec_'.length));
    assert.ok(klingTokens.size > 0 && callbackTokens.length > 0 && browserTokens.length > 0);

    const secrets = {
      'Kling secret key': SECRET_KEY,
      'Kling access key': ACCESS_KEY,
      'a client key': WEB_KEY,
      'another client key': OPS_KEY,
      'the token secret': TOKEN_SECRET,
      'the proxy webhook secret': PROXY_WEBHOOK_SECRET.slice('whsec_'.length),
      'the Kling webhook secret': KLING_WEBHOOK_SECRET.slice('whsec_'.length),
      ...Object.fromEntries([...klingTokens].map((t, i) => [`Kling JWT #${i}`, t])),
      ...Object.fromEntries(callbackTokens.map((t, i) => [`callback token #${i}`, t])),
    };
    const search = (where, text) => {
      for (const [name, value] of Object.entries(secrets)) {
        assert.ok(!text.includes(value), `${name} found in ${where}`);
      }
    };

    for (const { method, path, response } of exchanges) {
      const headers = JSON.stringify([...response.headers]);
      search(`the headers of ${method} ${path}`, headers);
      const isMint = path === '/v1/tokens' && response.status === 200;
      search(`the body of ${method} ${path}`, response.text);
      const isOwnSecret = path === '/v1/webhook-secret' && response.status === 200;
      for (const secret of clientSecrets) {
        if (!isOwnSecret) assert.ok(!response.text.includes(secret), `a client webhook secret in ${method} ${path}`);
        assert.ok(!headers.includes(secret), `a client webhook secret in the headers of ${method} ${path}`);
      }
      for (const token of browserTokens) {
        assert.ok(!headers.includes(token), `a browser token in the headers of ${method} ${path}`);
        if (!isMint) assert.ok(!response.text.includes(token), `a browser token in the body of ${method} ${path}`);
      }
    }
    for (const delivery of receiver.deliveries) {
      search('a forwarded webhook', JSON.stringify({ headers: delivery.headers, body: delivery.body }));
      for (const secret of clientSecrets) assert.ok(!JSON.stringify(delivery).includes(secret), 'a client webhook secret in a webhook');
    }

    // wrangler dev's own access log prints request URLs, callback paths included (the
    // README explains why KLING_WEBHOOK_SECRET matters); everything else is searched.
    const logs = worker.logs().split('\n')
      .filter((line) => !line.startsWith('[wrangler:info] POST /v1/callbacks/'))
      .join('\n');
    assert.match(logs, /"request_id"/);
    search('the logs', logs);
    for (const secret of clientSecrets) assert.ok(!logs.includes(secret), 'a client webhook secret in the logs');
    for (const token of browserTokens) assert.ok(!logs.includes(token), 'a browser token in the logs');
  });
});
