// Results that outlive Kling, end to end: when a task finishes, its coordinator in workerd
// copies each result file from Kling's server (a local file server here) into the local R2
// bucket, and every answer links the copies with signed links that work with no
// Authorization header, with Range, ETag, caching and CORS, for the task's tenant only.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { SAMPLES_DIR, startMediaServer } from '../support/media-server.mjs';
import { Receiver } from '../support/receiver.mjs';
import {
  ACCESS_KEY, baseSettings, clientWebhookSecret, OFFICIAL, OPS_KEY, SECRET_KEY, VIDEO, WEB_KEY, webhookSecret,
} from '../support/settings.mjs';
import { call, eventually, startWorker } from '../support/worker.mjs';

const APP = 'https://app.example.com';
const PROXY_WEBHOOK_SECRET = webhookSecret('results-proxy-webhook-secret-32b');
const SAMPLE = (name) => fs.readFileSync(path.join(SAMPLES_DIR, name));
const FILES = {
  copy_url: { kling: 'url', sample: 'sample-video-sound.mp4', type: 'video/mp4' },
  copy_url_mp3: { kling: 'url_mp3', sample: 'sample-audio.mp3', type: 'audio/mpeg' },
  copy_url_wav: { kling: 'url_wav', sample: 'sample-audio.wav', type: 'audio/wav' },
};

let files;
let fake;
let worker;
let receiver;

before(async () => {
  files = await startMediaServer({ dir: SAMPLES_DIR, prefix: '/samples/' });
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, resultBase: `${files.url}/samples` });
  receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  worker = await startWorker(baseSettings(fake, {
    ALLOW_PRIVATE_URLS: 'true',
    ALLOWED_ORIGINS: APP,
    PROXY_WEBHOOK_SECRET,
    // Copies are retried on the webhook schedule: short here.
    FORWARD_RETRY_SECONDS: '1,1,1,1,1,1',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  await receiver?.close();
  await files?.close().catch(() => {});
});

/** Creates a video-to-audio task for `key` and lets Kling finish it (with a video with sound). */
async function finishedTask(key = WEB_KEY, body = {}) {
  const created = await call(worker, 'POST', OFFICIAL, { key, body: { video_url: VIDEO, ...body } });
  assert.equal(created.status, 200, created.text);
  const taskId = created.json.data.task_id;
  fake.tasks.get(taskId).body.sound = 'on';
  await fake.advance(taskId, 'succeed');
  return taskId;
}

/** The task's answer once every copy has settled (copied, or given up on). */
async function settled(taskId, key = WEB_KEY) {
  return eventually(async () => {
    const answer = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key });
    const copies = answer.json?.data?.copies?.files;
    return copies?.length === 3 && copies.every((file) => file.state !== 'pending') && answer.json.data;
  }, { what: 'the copies', timeoutMs: 20_000 });
}

/** Each copy link of an answer, by field, with its Kling link. */
function links(task) {
  const video = task.task_result.videos[0];
  const audio = task.task_result.audios[0];
  return Object.fromEntries(Object.entries(FILES).map(([field, { kling }]) => {
    const item = field === 'copy_url' ? video : audio;
    return [field, { link: item[field], kling: item[kling] }];
  }));
}

describe('copies of the results', () => {
  let task;

  before(async () => {
    const taskId = await finishedTask(WEB_KEY, { callback_url: `${receiver.url}/done` });
    task = await settled(taskId);
  });

  it('are linked next to Kling\'s links, on the worker\'s origin', () => {
    for (const [field, { link, kling }] of Object.entries(links(task))) {
      assert.ok(link?.startsWith(`${worker.url}/v1/results/`), `${field}: ${link}`);
      assert.match(link, /\?expires=\d+&signature=[A-Za-z0-9_-]{22}$/);
      assert.ok(kling.startsWith(`${files.url}/samples/`), `Kling's link is kept: ${kling}`);
    }
    assert.ok(task.copies.files.every((file) => file.state === 'copied' && file.url && file.bytes > 0));
    assert.ok(task.copies.links_expire_at > Date.now() + 3_500_000, 'links last an hour');
  });

  it('are served byte for byte with no Authorization header, with Kling\'s server down', async () => {
    await files.stop();
    try {
      for (const [field, { link }] of Object.entries(links(task))) {
        const response = await fetch(link);
        assert.equal(response.status, 200, field);
        assert.ok(Buffer.from(await response.arrayBuffer()).equals(SAMPLE(FILES[field].sample)), `${field}: the same bytes`);
        assert.equal(response.headers.get('content-type'), FILES[field].type, field);
        assert.match(response.headers.get('etag'), /^"[0-9a-f]+"$/);
        assert.equal(response.headers.get('accept-ranges'), 'bytes');
        const maxAge = Number(response.headers.get('cache-control').match(/^public, max-age=(\d+), immutable$/)?.[1]);
        assert.ok(maxAge > 3_500 && maxAge <= 3_600, `cacheable until the link expires: ${response.headers.get('cache-control')}`);
      }
    } finally {
      await files.start();
    }
  });

  it('answer Range with 206, and a range past the end with 416', async () => {
    const { link } = links(task).copy_url_mp3;
    const mp3 = SAMPLE('sample-audio.mp3');
    const part = await fetch(link, { headers: { Range: 'bytes=100-1099' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 100-1099/${mp3.length}`);
    assert.ok(Buffer.from(await part.arrayBuffer()).equals(mp3.subarray(100, 1100)));
    const tail = await fetch(link, { headers: { Range: 'bytes=-500' } });
    assert.equal(tail.status, 206);
    assert.ok(Buffer.from(await tail.arrayBuffer()).equals(mp3.subarray(mp3.length - 500)));
    const beyond = await fetch(link, { headers: { Range: `bytes=${mp3.length + 10}-` } });
    assert.equal(beyond.status, 416);
    assert.equal(beyond.headers.get('content-range'), `bytes */${mp3.length}`);
  });

  it('revalidate with ETag (304) and answer HEAD', async () => {
    const { link } = links(task).copy_url_wav;
    const first = await fetch(link);
    await first.arrayBuffer();
    const again = await fetch(link, { headers: { 'If-None-Match': first.headers.get('etag') } });
    assert.equal(again.status, 304);
    // A list of tags (as a cache holding several versions sends) and the wildcard.
    const listed = await fetch(link, { headers: { 'If-None-Match': `"other", W/${first.headers.get('etag')}` } });
    assert.equal(listed.status, 304);
    const any = await fetch(link, { headers: { 'If-None-Match': '*' } });
    assert.equal(any.status, 304);
    const stale = await fetch(link, { headers: { 'If-None-Match': '"other", "older"' } });
    assert.equal(stale.status, 200);
    await stale.arrayBuffer();
    const head = await fetch(link, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-type'), 'audio/wav');
  });

  it('grant CORS to an allowed origin only, Range included', async () => {
    const { link } = links(task).copy_url_mp3;
    const allowed = await fetch(link, { headers: { Origin: APP, Range: 'bytes=0-9' } });
    assert.equal(allowed.headers.get('access-control-allow-origin'), APP);
    assert.match(allowed.headers.get('access-control-expose-headers'), /Content-Range/);
    await allowed.arrayBuffer();
    const other = await fetch(link, { headers: { Origin: 'https://evil.example.com' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null);
    await other.arrayBuffer();
    const preflight = await fetch(link, {
      method: 'OPTIONS',
      headers: { Origin: APP, 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'range' },
    });
    assert.equal(preflight.status, 204);
    assert.match(preflight.headers.get('access-control-allow-headers'), /Range/);
  });

  it('refuse a tampered link with 403 in the envelope', async () => {
    const { link } = links(task).copy_url_mp3;
    const url = new URL(link);
    const signature = url.searchParams.get('signature');
    const tampered = [
      link.replace(signature, `${signature[0] === 'A' ? 'B' : 'A'}${signature.slice(1)}`),
      link.replace(/expires=(\d+)/, (_, at) => `expires=${Number(at) + 3600}`),
      link.replace('audio-0.mp3', 'audio-0.wav'),
      link.replace(/\?.*$/, ''),
    ];
    for (const bad of tampered) {
      const response = await fetch(bad);
      assert.equal(response.status, 403, bad);
      const body = await response.json();
      assert.equal(body.code, 1103);
      assert.match(body.message, /^link: /);
      assert.match(body.request_id, /\S/);
    }
  });

  it('are linked in the webhook too', async () => {
    const [delivery] = await eventually(() => receiver.at('/done').length > 0 && receiver.at('/done'), { what: 'the webhook' });
    const body = JSON.parse(delivery.body);
    const link = body.task_result.audios[0].copy_url_mp3;
    assert.ok(link?.startsWith(`${worker.url}/v1/results/`), link);
    const response = await fetch(link);
    assert.ok(Buffer.from(await response.arrayBuffer()).equals(SAMPLE('sample-audio.mp3')));
  });
});

describe('tenants', () => {
  it('stay isolated: no answer, and no link, opens another tenant\'s copies', async () => {
    const webTask = await finishedTask(WEB_KEY);
    const webAnswer = await settled(webTask);
    const opsTask = await finishedTask(OPS_KEY);
    const opsAnswer = await settled(opsTask, OPS_KEY);
    assert.equal((await call(worker, 'GET', `${OFFICIAL}/${webTask}`, { key: OPS_KEY })).status, 404);
    const listed = await call(worker, 'GET', `${OFFICIAL}?pageNum=1&pageSize=500`, { key: OPS_KEY });
    assert.ok(!listed.text.includes(webTask));
    const webLink = new URL(links(webAnswer).copy_url_mp3.link);
    const opsLink = new URL(links(opsAnswer).copy_url_mp3.link);
    const [, , , webShard] = webLink.pathname.split('/');
    const [, , , opsShard] = opsLink.pathname.split('/');
    assert.notEqual(webShard, opsShard, 'each tenant\'s copies under its own shard');
    // ops's valid signature on web's file, and web's path with ops's shard: both refused.
    const crossed = [
      `${worker.url}${webLink.pathname}${opsLink.search}`,
      `${worker.url}${webLink.pathname.replace(webShard, opsShard)}${webLink.search}`,
    ];
    for (const link of crossed) {
      assert.equal((await fetch(link)).status, 403, link);
    }
  });
});

describe('copying', () => {
  it('is retried until Kling\'s server answers; meanwhile the webhook goes out and its links serve Kling\'s file', async () => {
    await files.stop();
    let taskId;
    let link;
    try {
      taskId = await finishedTask(WEB_KEY, { callback_url: `${receiver.url}/copy-pending` });
      const waiting = await eventually(async () => {
        const answer = await call(worker, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
        const file = answer.json?.data?.copies?.files?.find((f) => f.name === 'audio-0.mp3');
        return file?.state === 'pending' && file.note?.startsWith('not copied yet') && answer.json.data;
      }, { what: 'a failed first attempt' });
      assert.match(waiting.copies.files[0].note, /until it is, its link serves Kling's file$/);
      // The webhook did not wait for the copies: it links them from the start.
      const [delivery] = await eventually(() => receiver.at('/copy-pending').length > 0 && receiver.at('/copy-pending'), { what: 'the webhook' });
      const audio = delivery.json.task_result.audios[0];
      link = audio.copy_url_mp3;
      assert.ok(link?.startsWith(`${worker.url}/v1/results/`), link);
      assert.equal(delivery.json.copies.files.find((f) => f.name === 'audio-0.mp3').state, 'pending');
      const meanwhile = await fetch(link, { redirect: 'manual' });
      assert.equal(meanwhile.status, 302, 'Kling\'s file until the copy is made');
      assert.equal(meanwhile.headers.get('location'), audio.url_mp3);
      assert.equal(meanwhile.headers.get('cache-control'), 'no-store');
      assert.equal((await fetch(link, { method: 'HEAD', redirect: 'manual' })).status, 302);
    } finally {
      await files.start();
    }
    const task = await settled(taskId);
    assert.ok(task.copies.files.every((file) => file.state === 'copied'));
    const copied = await fetch(link, { redirect: 'manual' });
    assert.equal(copied.status, 200, 'the same link serves the copy once it is made');
    assert.ok(Buffer.from(await copied.arrayBuffer()).equals(SAMPLE('sample-audio.mp3')));
    assert.equal(receiver.at('/copy-pending').length, 1, 'one webhook');
  });

  it('streams files of unknown length (no Content-Length) in parts of one size', async () => {
    // 17 MiB each: two parts of 8 MiB and the rest, as R2 requires.
    const size = 17 * 1024 * 1024;
    files.omitLength = true;
    files.padTo = size;
    try {
      const task = await settled(await finishedTask(WEB_KEY));
      assert.ok(task.copies.files.every((file) => file.state === 'copied' && file.bytes === size), JSON.stringify(task.copies));
      const response = await fetch(links(task).copy_url_wav.link);
      const copy = Buffer.from(await response.arrayBuffer());
      const wav = SAMPLE('sample-audio.wav');
      assert.equal(copy.length, size);
      assert.ok(copy.subarray(0, wav.length).equals(wav) && copy.subarray(wav.length).every((b) => b === 0), 'byte for byte');
    } finally {
      files.omitLength = false;
      files.padTo = 0;
    }
  });
});

describe('a deployment with a size cap and short links', () => {
  let small;

  before(async () => {
    small = await startWorker(baseSettings(fake, {
      ALLOW_PRIVATE_URLS: 'true',
      RESULT_COPY_MAX_BYTES: '40000',
      RESULT_LINK_TTL_SECONDS: '10',
    }));
  });

  after(async () => {
    await small?.stop();
  });

  it('leaves a file over the cap as Kling\'s link and says so; an expired link is refused', async () => {
    const created = await call(small, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: VIDEO } });
    const taskId = created.json.data.task_id;
    await fake.advance(taskId, 'succeed');
    const task = await eventually(async () => {
      const answer = await call(small, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
      const copies = answer.json?.data?.copies?.files;
      return copies?.every((file) => file.state !== 'pending') && answer.json.data;
    }, { what: 'the copies' });
    const wav = task.copies.files.find((file) => file.name === 'audio-0.wav');
    assert.equal(wav.state, 'too_large');
    assert.match(wav.note, /^not copied: 108 KB is over this deployment's cap of 40 KB \(RESULT_COPY_MAX_BYTES\); use Kling's link$/);
    assert.equal(task.task_result.audios[0].copy_url_wav, undefined);
    assert.ok(task.task_result.audios[0].url_wav);
    const link = task.task_result.audios[0].copy_url_mp3;
    assert.equal((await fetch(link)).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 10_500));
    const expired = await fetch(link);
    assert.equal(expired.status, 403);
    assert.match((await expired.json()).message, /^link: has expired/);
    const fresh = await call(small, 'GET', `${OFFICIAL}/${taskId}`, { key: WEB_KEY });
    assert.equal((await fetch(fresh.json.data.task_result.audios[0].copy_url_mp3)).status, 200, 'a fresh answer, a fresh link');
  });
});
