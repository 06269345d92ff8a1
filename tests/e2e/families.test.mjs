// The sound family and the other shapes, end to end: text and image to video (with sound),
// text to audio, useapi.net's add-sound, and clients that sign Kling's own JWTs. Each
// endpoint creates, queries, lists and isolates like video to audio, and its refusals never
// reach Kling.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { Receiver } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, CALLBACK_URL, clientFields, clientWebhookSecret, OPS_KEY, SECRET_KEY, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, freshRateLimitWindow, startWorker } from '../support/worker.mjs';

const T2V = '/v1/videos/text2video';
const I2V = '/v1/videos/image2video';
const T2A = '/v1/audio/text-to-audio';
const ADD_SOUND = '/v1/kling/videos/add-sound';
const PROXY_WEBHOOK_SECRET = webhookSecret('families-proxy-webhook-secret-32');
/** A 1x1 PNG, Base64. */
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';

let fake;
let worker;
let receiver;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  worker = await startWorker(baseSettings(fake, {
    PROXY_WEBHOOK_SECRET,
    ALLOW_PRIVATE_URLS: 'true',
    KLING_ACCOUNT_EMAIL: 'Team@Example.com',
    PROXY_TOKEN_SECRET: 'families-token-secret-0123456789abcdef',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  await receiver?.close();
});

const upstream = (path) => fake.requests.filter((r) => r.path.startsWith(path));

/** Asserts a refusal in Kling's envelope naming `field`, and that Kling saw nothing. */
async function refused(path, body, { field, words, status = 400, key = WEB_KEY }) {
  const before = fake.requests.length;
  const response = await call(worker, 'POST', path, { key, body });
  assert.equal(response.status, status, response.text);
  assert.ok(response.json.message.startsWith(`${field}:`), response.json.message);
  if (words) assert.ok(response.json.message.includes(words), response.json.message);
  assert.equal(fake.requests.length, before, 'a refused create never reaches Kling');
}

describe('text to video with sound', () => {
  it('creates on Kling\'s own path, forwarding exactly the checked fields', async () => {
    const body = { model_name: 'kling-v2-6', prompt: 'Ocean waves crashing on shore', mode: 'pro', sound: 'on', duration: '10', aspect_ratio: '9:16', external_task_id: 't2v-sound-1' };
    const created = await call(worker, 'POST', T2V, { key: WEB_KEY, body });
    assert.equal(created.status, 200, created.text);
    assert.equal(created.json.data.task_status, 'submitted');
    const [sent] = upstream(T2V).slice(-1);
    const { callback_url: callbackUrl, ...rest } = sent.body;
    assert.deepEqual(rest, body);
    assert.match(callbackUrl, CALLBACK_URL(worker.url));
    assert.equal(sent.token.split('.').length, 3, 'signed with a Kling JWT');
  });

  it('queries by task id and external id, lists, and serves the finished video', async () => {
    const created = await call(worker, 'POST', T2V, { key: WEB_KEY, body: { prompt: 'a lighthouse', external_task_id: 't2v-2' } });
    const taskId = created.json.data.task_id;
    await fake.advance(taskId, 'succeed');
    for (const id of [taskId, 't2v-2']) {
      const task = await eventually(async () => {
        const r = await call(worker, 'GET', `${T2V}/${id}`, { key: WEB_KEY });
        return r.json?.data?.task_status === 'succeed' && r;
      }, { what: 'the finished task' });
      assert.equal(task.json.data.task_result.videos.length, 1);
      assert.equal(task.json.data.task_result.audios, undefined, 'a video task is complete with its video');
    }
    const list = await call(worker, 'GET', `${T2V}?pageSize=50`, { key: WEB_KEY });
    assert.ok(list.json.data.some((t) => t.task_id === taskId));
    const v2a = await call(worker, 'GET', '/v1/audio/video-to-audio?pageSize=500', { key: WEB_KEY });
    assert.ok(!v2a.json.data.some((t) => t.task_id === taskId), 'each endpoint lists its own tasks');
    assert.equal((await call(worker, 'GET', `/v1/audio/video-to-audio/${taskId}`, { key: WEB_KEY })).status, 404, "another endpoint's path does not find it");
    assert.equal((await call(worker, 'GET', `${T2V}/${taskId}`, { key: OPS_KEY })).status, 404, 'another tenant does not find it');
  });

  it('refuses sound on an older model, naming the rule, before Kling', async () => {
    await refused(T2V, { model_name: 'kling-v2-5-turbo', prompt: 'x', sound: 'on' }, { field: 'sound', words: 'only for kling-v2-6 and kling-v3' });
    await refused(T2V, { prompt: 'x', sound: 'on' }, { field: 'sound', words: 'model_name is kling-v1' });
    await refused(T2V, { model_name: 'kling-v2-6', prompt: 'x', sound: 'on' }, { field: 'sound', words: 'pro mode' });
    await refused(T2V, { prompt: 'x'.repeat(2501) }, { field: 'prompt', words: 'at most 2500 characters' });
    await refused(T2V, { prompt: 'x', mode: 'turbo' }, { field: 'mode', words: 'std, pro' });
    await refused(T2V, { prompt: 'x', duration: '7' }, { field: 'duration' });
    await refused(T2V, { prompt: 'x', aspect_ratio: '4:3' }, { field: 'aspect_ratio' });
    await refused(T2V, { model_name: 'kling-v2-master', prompt: 'x', cfg_scale: 0.5 }, { field: 'cfg_scale', words: 'does not support' });
    await refused(T2V, { prompt: 'x', camera_control: { type: 'simple' } }, { field: 'camera_control.config' });
    await refused(T2V, { prompt: 'x', sund: 'on' }, { field: 'sund', words: 'unknown field' });
    await refused(T2V, { prompt: 'x', sounds: 'on' }, { field: 'sounds', words: 'did you mean `sound`?' });
    for (const blank of ['', '   ']) {
      await refused(T2V, { prompt: blank }, { field: 'prompt', words: 'must not be empty or only spaces' });
      await refused(T2A, { prompt: blank, duration: 5 }, { field: 'prompt', words: 'must not be empty or only spaces' });
    }
  });
});

describe("fields Kling's own clients send where Kling does not take them", () => {
  it('drops aspect_ratio on image to video, says so in X-Kling-Edge-Ignored, and never refuses it', async () => {
    const created = await call(worker, 'POST', I2V, { key: WEB_KEY, body: { image: PNG, aspect_ratio: '16:9', mode: 'std' } });
    assert.equal(created.status, 200, created.text);
    assert.equal(created.headers.get('x-kling-edge-ignored'), 'aspect_ratio');
    const sent = upstream(I2V).at(-1).body;
    assert.equal(sent.aspect_ratio, undefined);
    assert.equal(sent.mode, 'std');
    const plain = await call(worker, 'POST', I2V, { key: WEB_KEY, body: { image: PNG } });
    assert.equal(plain.headers.get('x-kling-edge-ignored'), null, 'nothing dropped, no header');
  });

  it('refuses a near miss of a real field, naming the field meant', async () => {
    await refused('/v1/audio/video-to-audio', { video_url: VIDEO, asmr_mod: true }, { field: 'asmr_mod', words: 'did you mean `asmr_mode`?' });
    await refused(T2V, { prompt: 'x', aspectRatio: '16:9' }, { field: 'aspectRatio', words: 'did you mean `aspect_ratio`?' });
  });
});

describe("Kling's account costs, which Kling's clients read when a session opens", () => {
  it("answers a server key with Kling's own answer, and refuses browser tokens and bad keys", async () => {
    const query = `/account/costs?start_time=${Date.now() - 1000}&end_time=${Date.now()}`;
    const costs = await call(worker, 'GET', query, { key: WEB_KEY });
    assert.equal(costs.status, 200, costs.text);
    assert.equal(costs.json.data.resource_pack_subscribe_infos[0].status, 'online');
    assert.equal(fake.apiRequests('GET', '/account/costs').at(-1).path, query, 'sent on as asked');
    const badKey = await call(worker, 'GET', query, { key: 'not-a-key' });
    assert.equal(badKey.status, 401, badKey.text);
    const minted = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'alice' } });
    const browser = await call(worker, 'GET', query, { key: minted.json.data.token });
    assert.equal(browser.status, 403, browser.text);
    const before = fake.requests.length;
    const malformed = await call(worker, 'GET', '/account/costs?start_time=2&end_time=1', { key: WEB_KEY });
    assert.equal(malformed.status, 400, malformed.text);
    assert.ok(malformed.json.message.startsWith('start_time:'), malformed.json.message);
    assert.equal(fake.requests.length, before, 'refused before Kling');
  });
});

describe('image to video', () => {
  it('creates from an image URL or raw Base64', async () => {
    for (const image of ['https://cdn.example.com/first.png', PNG]) {
      const created = await call(worker, 'POST', I2V, { key: WEB_KEY, body: { image, prompt: 'it moves' } });
      assert.equal(created.status, 200, created.text);
      assert.equal(upstream(I2V).at(-1).body.image, image);
    }
  });

  it('refuses what Kling would refuse, before Kling', async () => {
    await refused(I2V, { prompt: 'x' }, { field: 'image', words: 'at least one of image, image_tail' });
    await refused(I2V, { image: `data:image/png;base64,${PNG}` }, { field: 'image', words: 'data: prefix' });
    await refused(I2V, { image: 'https://cdn.example.com/a.gif' }, { field: 'image', words: '.gif' });
    await refused(I2V, { image: PNG, image_tail: PNG, camera_control: { type: 'down_back' } }, { field: 'camera_control', words: 'mutually exclusive' });
    await refused(I2V, { image: PNG, voice_list: [{ voice_id: 'v1' }] }, { field: 'sound', words: 'voice' });
  });
});

describe('text to audio', () => {
  it('creates, completes with its audio, and is served like video to audio', async () => {
    const created = await call(worker, 'POST', T2A, { key: WEB_KEY, body: { prompt: 'rain on a tin roof', duration: 5.5 } });
    assert.equal(created.status, 200, created.text);
    const taskId = created.json.data.task_id;
    const sent = clientFields(upstream(T2A).at(-1).body);
    assert.deepEqual(sent, { prompt: 'rain on a tin roof', duration: 5.5 });
    await fake.advance(taskId, 'succeed');
    const task = await eventually(async () => {
      const r = await call(worker, 'GET', `${T2A}/${taskId}`, { key: WEB_KEY });
      return r.json?.data?.task_status === 'succeed' && r.json.data;
    }, { what: 'the finished audio' });
    assert.ok(task.task_result.audios[0].url_mp3.endsWith('.mp3'));
  });

  it('refuses a prompt over 200 characters or a duration outside 3 to 10, before Kling', async () => {
    await refused(T2A, { prompt: 'x'.repeat(201), duration: 5 }, { field: 'prompt', words: 'at most 200 characters (got 201)' });
    await refused(T2A, { prompt: 'x', duration: 10.5 }, { field: 'duration', words: 'from 3 to 10' });
    await refused(T2A, { prompt: 'x', duration: 2 }, { field: 'duration', words: 'from 3 to 10' });
    await refused(T2A, { prompt: 'x', duration: 5.55 }, { field: 'duration', words: 'one decimal place' });
    await refused(T2A, { prompt: 'x' }, { field: 'duration', words: 'is required' });
  });

  it('forwards the finished task to the client webhook', async () => {
    const hook = '/hooks/t2a';
    const created = await call(worker, 'POST', T2A, { key: WEB_KEY, body: { prompt: 'birdsong', duration: 4, callback_url: `${receiver.url}${hook}` } });
    await fake.advance(created.json.data.task_id, 'succeed');
    const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { what: 'the webhook' });
    assert.equal(delivery.verdict, null);
    assert.equal(delivery.json.task_result.audios.length, 1);
  });

  it('counts against the create limit like any create', async () => {
    const limited = await startWorker(baseSettings(fake), { productionLimits: true });
    try {
      await freshRateLimitWindow();
      const statuses = [];
      for (let i = 0; i < 11; i += 1) {
        statuses.push((await call(limited, 'POST', T2A, { key: OPS_KEY, body: { prompt: `p${i}`, duration: 3 } })).status);
      }
      assert.deepEqual(statuses, [...Array(10).fill(200), 429]);
    } finally {
      await limited.stop();
    }
  });
});

describe("useapi.net's add-sound", () => {
  it('creates Kling\'s video to audio and answers in useapi\'s shape', async () => {
    const created = await call(worker, 'POST', ADD_SOUND, { key: WEB_KEY, body: { video: VIDEO } });
    assert.equal(created.status, 200, created.text);
    const { task } = created.json;
    assert.match(task.id, /^\d{18}$/);
    assert.equal(task.status_name, 'submitted');
    assert.equal(task.status_final, false);
    assert.equal(created.json.status_final, false);
    const sent = clientFields(fake.requests.filter((r) => r.path === '/v1/audio/video-to-audio' && r.method === 'POST').at(-1).body);
    assert.deepEqual(sent, { video_url: VIDEO }, 'video became video_url, nothing else went to Kling');

    await fake.advance(task.id, 'succeed');
    const status = await eventually(async () => {
      const r = await call(worker, 'GET', `/v1/kling/tasks/${task.id}`, { key: WEB_KEY });
      return r.json?.status_final && r;
    }, { what: 'the finished task' });
    assert.equal(status.json.task.status_name, 'succeed');
    assert.equal(status.json.task.taskInfo.inputs[0].url, VIDEO);
    assert.equal(status.json.kling.task_result.audios.length, 1);
    const other = await call(worker, 'GET', `/v1/kling/tasks/${task.id}`, { key: OPS_KEY });
    assert.equal(other.status, 404);
    assert.deepEqual(Object.keys(other.json).sort(), ['code', 'error']);
  });

  it('sends the finished job to replyUrl, signed, with replyRef as given', async () => {
    const hook = '/hooks/reply';
    const created = await call(worker, 'POST', ADD_SOUND, { key: WEB_KEY, body: { video: VIDEO, replyUrl: `${receiver.url}${hook}`, replyRef: 'my-id-1234 ✓' } });
    assert.equal(created.status, 200, created.text);
    await fake.advance(created.json.task.id, 'succeed');
    const [delivery] = await eventually(() => receiver.at(hook).length && receiver.at(hook), { what: 'the reply' });
    assert.equal(delivery.verdict, null, 'signed like every forwarded webhook');
    assert.equal(delivery.json.replyRef, 'my-id-1234 ✓');
    assert.equal(delivery.json.task.id, created.json.task.id);
    assert.equal(delivery.json.status_final, true);
    assert.equal(delivery.json.tenant, 'web');
  });

  it("answers errors as useapi does, with its texts, naming the problem, before Kling", async () => {
    const before = fake.requests.length;
    for (const [body, status, words] of [
      [{ video: 'not a url' }, 400, /^Invalid video URL format \(video: /],
      [{ video: 'https://cdn.example.com/a.avi' }, 400, /^Invalid video URL format \(video: must point to an \.mp4 or \.mov file/],
      [{ video: VIDEO, cropVideoOriginalSound: true }, 400, /^cropVideoOriginalSound: cannot be true: Kling's API has no way/],
      [{ video: VIDEO, email: 'someone@example.com' }, 400, /^email: is not this deployment's Kling account/],
      [{ video: VIDEO, maxJobs: 0 }, 400, /^maxJobs: must be a whole number/],
      [{ vidoe: VIDEO }, 400, /^vidoe: unknown field/],
    ]) {
      const response = await call(worker, 'POST', ADD_SOUND, { key: WEB_KEY, body });
      assert.equal(response.status, status, response.text);
      assert.deepEqual(Object.keys(response.json).sort(), ['code', 'error'], response.text);
      assert.equal(response.json.code, status);
      assert.match(response.json.error, words);
    }
    const unauthorized = await call(worker, 'POST', ADD_SOUND, { key: 'nope', body: { video: VIDEO } });
    assert.deepEqual(unauthorized.json, { error: 'Unauthorized (Authorization: unknown API key)', code: 401 });
    assert.equal(fake.requests.length, before, 'nothing reached Kling');
  });

  it('applies email when it names the account, and maxJobs against running tasks', async () => {
    const ok = await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, email: 'team@example.com' } });
    assert.equal(ok.status, 200, ok.text);
    const jobs = await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, maxJobs: 1 } });
    assert.equal(jobs.status, 429, jobs.text);
    assert.match(jobs.json.error, /^maxJobs: 1 of your tasks are running or starting/);
    await fake.advance(ok.json.task.id, 'failed');
    await eventually(async () => (await call(worker, 'POST', ADD_SOUND, { key: OPS_KEY, body: { video: VIDEO, maxJobs: 1 } })).status === 200, { what: 'a free slot' });
  });

  it('reserves maxJobs: of eight concurrent creates with maxJobs 1, one reaches Kling', async () => {
    // A tenant of its own, with nothing running (the trial's reproduction: 8 of 8 were accepted).
    const token = await call(worker, 'POST', '/v1/tokens', { key: OPS_KEY, body: { sub: 'max-jobs-race' } });
    assert.equal(token.status, 200, token.text);
    const creates = () => fake.requests.filter((r) => r.method === 'POST' && r.path.startsWith('/v1/audio/')).length;
    const before = creates();
    const answers = await Promise.all(Array.from({ length: 8 }, () =>
      call(worker, 'POST', ADD_SOUND, { key: token.json.data.token, body: { video: VIDEO, maxJobs: 1 } })));
    const statuses = answers.map((a) => a.status).sort();
    assert.deepEqual(statuses, [200, 429, 429, 429, 429, 429, 429, 429], answers.map((a) => a.text).join('\n'));
    assert.equal(creates(), before + 1, 'Kling was called once');
    for (const refused of answers.filter((a) => a.status === 429)) {
      assert.match(refused.json.error, /^maxJobs: 1 of your tasks are running or starting/);
    }
  });
});

describe('clients that sign Kling\'s JWT', () => {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const jwt = (claims, key = WEB_KEY, header = { alg: 'HS256', typ: 'JWT' }) => {
    const input = `${encode(header)}.${encode(claims)}`;
    return `${input}.${crypto.createHmac('sha256', key).update(input).digest('base64url')}`;
  };
  const now = () => Math.floor(Date.now() / 1000);

  it('authenticate with iss = their client name, signed with their key, as Kling\'s SDKs sign', async () => {
    const token = jwt({ iss: 'web', exp: now() + 1800, nbf: now() - 5 });
    const created = await call(worker, 'POST', T2A, { key: token, body: { prompt: 'wind', duration: 3 } });
    assert.equal(created.status, 200, created.text);
    const mine = await call(worker, 'GET', `${T2A}/${created.json.data.task_id}`, { key: WEB_KEY });
    assert.equal(mine.status, 200, "the token's tenant is the client");
  });

  it("are refused with Kling's codes", async () => {
    for (const [token, code, words] of [
      [jwt({ iss: 'web', exp: now() + 600, nbf: now() + 120 }), 1003, 'not valid yet'],
      [jwt({ iss: 'web', exp: now() - 10, nbf: now() - 600 }), 1004, 'expired'],
      [jwt({ iss: 'web', exp: now() + 600, nbf: now() - 5 }, OPS_KEY), 1002, 'signature'],
      [jwt({ iss: 'web', exp: now() + 600, nbf: now() - 5 }, WEB_KEY, { alg: 'HS512', typ: 'JWT' }), 1002, 'HS256'],
      [jwt({ iss: 'nobody', exp: now() + 600, nbf: now() - 5 }), 1002, 'not a client'],
      [jwt({ iss: 'web', exp: now() + 86_400, nbf: now() - 5 }), 1002, 'more than an hour'],
    ]) {
      const response = await call(worker, 'GET', T2A, { key: token });
      assert.equal(response.status, 401, response.text);
      assert.equal(response.json.code, code, response.text);
      assert.ok(response.json.message.includes(words), response.json.message);
    }
  });
});
