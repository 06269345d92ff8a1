// The findings of issue 18's adversarial trial that only native tests covered, each
// reproduced against the built worker in workerd: the attack as it was found, and proof that
// it no longer works. (The others are in memory.test.mjs, webhooks.test.mjs, proxy.test.mjs,
// results.test.mjs and families.test.mjs, beside what they touch.)

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { MEDIA_DIR, startMediaServer } from '../support/media-server.mjs';
import { Receiver } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, clientWebhookSecret, OFFICIAL, OPS_KEY, SECRET_KEY, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, freePort, freshRateLimitWindow, startWorker } from '../support/worker.mjs';

const T2A = '/v1/audio/text-to-audio';
const TOKEN_SECRET = 'browser-token-secret-for-the-trial-tests-0123';
const PROXY_WEBHOOK_SECRET = webhookSecret('trial-deployment-webhook-secret!!');

let fake;
let media;
let later;
let laterDir;
let receiver;
let staging;
let production;

// Two deployments on one Kling account, sharing every secret, as staging and production
// often do: only their origins differ. Staging may reach private addresses (local
// development's setting); production may not.
before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  media = await startMediaServer();
  laterDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kling-edge-later-'));
  later = await startMediaServer({ dir: laterDir, prefix: '/later/' });
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  const [stagingPort, productionPort] = [await freePort(), await freePort()];
  const shared = { PROXY_TOKEN_SECRET: TOKEN_SECRET, PROXY_WEBHOOK_SECRET, VIDEO_PROBE: 'strict' };
  [staging, production] = await Promise.all([
    startWorker(baseSettings(fake, { ...shared, ALLOW_PRIVATE_URLS: 'true', PUBLIC_BASE_URL: `http://localhost:${stagingPort}` }), { port: stagingPort }),
    startWorker(baseSettings(fake, { ...shared, PUBLIC_BASE_URL: `http://127.0.0.1:${productionPort}` }), { port: productionPort }),
  ]);
});

after(async () => {
  await staging?.stop();
  await production?.stop();
  await fake?.close();
  await media?.close();
  await later?.close();
  await receiver?.close();
  fs.rmSync(laterDir, { recursive: true, force: true });
});

const klingCreates = () => fake.requests.filter((r) => r.method === 'POST' && !r.path.startsWith('/samples/')).length;

async function mint(worker, key, body) {
  const response = await call(worker, 'POST', '/v1/tokens', { key, body });
  assert.equal(response.status, 200, response.text);
  return response.json.data.token;
}

describe('capabilities and result links of another deployment on the same Kling account', () => {
  it("are refused: staging's callback URL cannot put a task into production's tenant list", async () => {
    const created = await call(staging, 'POST', T2A, { key: WEB_KEY, body: { prompt: 'rain on a tin roof', duration: 5 } });
    assert.equal(created.status, 200, created.text);
    const taskId = created.json.data.task_id;
    const capabilityPath = new URL(fake.tasks.get(taskId).callbackUrl).pathname;
    const report = { ...fake.tasks.get(taskId).data, task_status: 'succeed', updated_at: Date.now() + 1000 };
    const crossed = await fake.sendCallback(taskId, { url: `${production.url}${capabilityPath}`, data: report });
    assert.equal(crossed.status, 404, crossed.body);
    const listed = await call(production, 'GET', `${T2A}?pageSize=50`, { key: WEB_KEY });
    assert.equal(listed.status, 200, listed.text);
    assert.ok(!listed.text.includes(taskId), 'production never learned of it');
    assert.equal((await call(production, 'GET', `${T2A}/${taskId}`, { key: WEB_KEY })).status, 404);
  });

  it("are refused: staging's link to a result copy does not open on production", async () => {
    const created = await call(staging, 'POST', T2A, { key: WEB_KEY, body: { prompt: 'a door creaks', duration: 5 } });
    const taskId = created.json.data.task_id;
    await fake.advance(taskId, 'succeed');
    const link = await eventually(async () => {
      const answer = await call(staging, 'GET', `${T2A}/${taskId}`, { key: WEB_KEY });
      return answer.json?.data?.task_result?.audios?.[0]?.copy_url_mp3;
    }, { what: 'the copy', timeoutMs: 20_000 });
    const { pathname, search } = new URL(link);
    assert.equal((await fetch(`${staging.url}${pathname}${search}`)).status, 200, 'it opens where it was minted');
    const elsewhere = await fetch(`${production.url}${pathname}${search}`);
    assert.equal(elsewhere.status, 403);
    assert.match((await elsewhere.json()).message, /^link: /);
  });
});

describe("a browser token's pinned webhook", () => {
  it('is checked again at every create: one minted where private URLs were allowed is refused where they are not', async () => {
    const token = await mint(staging, WEB_KEY, { sub: 'pinned', callback_url: `${receiver.url}/pinned` });
    const body = { prompt: 'waves on pebbles', duration: 5 };
    assert.equal((await call(staging, 'POST', T2A, { key: token, body })).status, 200, 'accepted where it was minted');
    const before = klingCreates();
    const refused = await call(production, 'POST', T2A, { key: token, body });
    assert.equal(refused.status, 403, refused.text);
    assert.match(refused.json.message, /the webhook this browser token was minted with/);
    assert.match(refused.json.request_id, /\S/);
    assert.equal(klingCreates(), before, 'Kling was never called');
  });
});

describe('a video that could not be measured', () => {
  it("is not remembered across tenants: one tenant's 404 does not refuse the file for another once it is there", async () => {
    const url = `${later.url}/later/clip-${Date.now()}.mp4`;
    const early = await call(staging, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: url } });
    assert.equal(early.status, 400, early.text);
    assert.match(early.json.message, /answered 404/);
    fs.copyFileSync(path.join(MEDIA_DIR, 'twelve-seconds-fast-start.mp4'), path.join(laterDir, path.basename(new URL(url).pathname)));
    const other = await call(staging, 'POST', OFFICIAL, { key: OPS_KEY, body: { video_url: url } });
    assert.equal(other.status, 200, other.text);
    const again = await call(staging, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: url } });
    assert.equal(again.status, 200, again.text);
  });
});

describe('the probe', () => {
  let limited;

  before(async () => {
    limited = await startWorker(baseSettings(fake, {
      ALLOW_PRIVATE_URLS: 'true', VIDEO_PROBE: 'strict', PROXY_TOKEN_SECRET: TOKEN_SECRET,
    }), { productionLimits: true });
  });

  after(async () => {
    await limited?.stop();
  });

  it("is metered per app: its browser users together measure 60 videos a minute, then are refused before any fetch", async () => {
    await freshRateLimitWindow(40);
    const users = await Promise.all(['u1', 'u2', 'u3'].map((sub) => mint(limited, WEB_KEY, { sub })));
    let unique = 0;
    const video = () => {
      unique += 1;
      return { url: `${media.url}/media/two-seconds.mp4?probe=${unique}`, key: `/media/two-seconds.mp4?probe=${unique}` };
    };
    // 60 measurements, 30 per user: each refused for what was measured (2 s), never counted
    // as a create, so neither user reaches the create or request limit.
    for (let i = 0; i < 60; i += 1) {
      const answer = await call(limited, 'POST', OFFICIAL, { key: users[i % 2], body: { video_url: video().url } });
      assert.equal(answer.status, 400, `measurement ${i + 1}: ${answer.text}`);
      assert.match(answer.json.message, /lasts 2\.0 s/);
    }
    const next = video();
    const refused = await call(limited, 'POST', OFFICIAL, { key: users[2], body: { video_url: next.url } });
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.json.code, 1302);
    assert.match(refused.json.message, /^video_url: too many videos measured for this app this minute/);
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    assert.equal(media.stats(next.key).requests, 0, 'nothing was fetched');
    // Another app is unaffected.
    const ops = await call(limited, 'POST', OFFICIAL, { key: OPS_KEY, body: { video_url: video().url } });
    assert.equal(ops.status, 400, ops.text);
    assert.match(ops.json.message, /lasts 2\.0 s/);
  });
});

describe('hardening', () => {
  it('refuses a redirect hop that carries user info', async () => {
    const target = new URL(`${media.url}/media/twelve-seconds-fast-start.mp4`);
    target.username = 'user';
    target.password = 'pass';
    const url = `${media.url}/media/hop.mp4?location=${encodeURIComponent(target.href)}`;
    const before = klingCreates();
    const refused = await call(staging, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: url } });
    assert.equal(refused.status, 400, refused.text);
    assert.match(refused.json.message, /user info/);
    assert.equal(media.stats(`${target.pathname}`).requests, 0, 'the hop was not followed');
    assert.equal(klingCreates(), before);
  });

  it('refuses .svc names as local, in video_url and callback_url', async () => {
    for (const body of [
      { video_url: 'https://videos.default.svc/clip.mp4' },
      { video_url: VIDEO, callback_url: 'https://hooks.apps.svc/kling' },
    ]) {
      const refused = await call(production, 'POST', OFFICIAL, { key: WEB_KEY, body });
      assert.equal(refused.status, 400, refused.text);
      assert.match(refused.json.message, /is a local name \(\.svc\)/);
    }
  });

  it('refuses to start serving with a client key shorter than 16 characters', async () => {
    const weak = await startWorker(baseSettings(fake, { PROXY_API_KEYS: 'weak:abcdefghijklmno' }));
    try {
      const answer = await call(weak, 'GET', `${T2A}?pageSize=1`, { key: 'abcdefghijklmno' });
      assert.equal(answer.status, 500, answer.text);
      assert.match(answer.json.message, /PROXY_API_KEYS is malformed: a key must be at least 16 characters/);
      assert.ok(!answer.text.includes('abcdefghijklmno'), 'the key is never quoted');
    } finally {
      await weak.stop();
    }
  });
});
