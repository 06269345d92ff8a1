// A user's own video, end to end in workerd with its local R2 bucket: uploaded raw (with a
// Content-Length, and streamed without one) or as a form, measured on arrival, served back
// by its signed link (Range too), named in creates that Kling (the stand-in) then fetches,
// and refused, with the measured fact and nothing kept, when Kling would refuse it. What
// happens before a body is read (413 by Content-Length, a client that breaks off) is
// tested on workerd without `wrangler dev`'s proxy, which holds such a body until it is
// whole.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, OFFICIAL, OPS_KEY, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { call, eventually, ROOT, startDirectWorker, startWorker } from '../support/worker.mjs';

const APP = 'https://app.example.com';
const MEDIA = (name) => fs.readFileSync(path.join(ROOT, 'tests/media', name));
const SIX = MEDIA('six-seconds.mp4');
const NINE_MOV = MEDIA('nine-seconds.mov');
const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');
const DAY_LIMIT = 1024 * 1024;

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake, {
    ALLOW_PRIVATE_URLS: 'true',
    ALLOWED_ORIGINS: APP,
    UPLOAD_BYTES_PER_DAY: String(DAY_LIMIT),
    PROXY_TOKEN_SECRET: 'assets-token-secret-0123456789abcdef0123',
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

/** POSTs `bytes` to `pathname` as the raw body, with its Content-Length. */
function upload(bytes, { key = WEB_KEY, type = 'video/mp4', pathname = '/v1/assets', idempotencyKey } = {}) {
  const headers = { 'content-type': type, ...(idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}) };
  return call(worker, 'POST', pathname, { key, raw: bytes, headers });
}

/** POSTs `bytes` with no Content-Length (a stream), in chunks of 1 KiB. */
async function uploadStreamed(bytes, { key = WEB_KEY, type = 'video/mp4' } = {}) {
  const body = new ReadableStream({
    start(controller) {
      for (let at = 0; at < bytes.length; at += 1024) controller.enqueue(bytes.subarray(at, at + 1024));
      controller.close();
    },
  });
  const response = await fetch(`${worker.url}/v1/assets`, {
    method: 'POST', body, duplex: 'half', headers: { authorization: `Bearer ${key}`, 'content-type': type },
  });
  return { status: response.status, json: await response.json() };
}

/** A form with these fields and, if given, the file as its `video` part. */
function form(fields, file) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) data.append(name, value);
  if (file) data.append('video', new Blob([file.bytes], { type: file.type }), file.name);
  return data;
}

async function postForm(pathname, data, key = WEB_KEY) {
  const response = await fetch(`${worker.url}${pathname}`, { method: 'POST', body: data, headers: { authorization: `Bearer ${key}` } });
  return { status: response.status, json: await response.json() };
}

async function listed(key = WEB_KEY) {
  const page = await call(worker, 'GET', '/v1/assets?pageSize=50', { key });
  assert.equal(page.status, 200, page.text);
  return page.json.data;
}

/** A valid MP4 of `size` bytes: the 6 s video, then a `free` box. */
function padded(size) {
  const file = Buffer.alloc(size);
  SIX.copy(file);
  file.writeUInt32BE(size - SIX.length, SIX.length);
  file.write('free', SIX.length + 4);
  return file;
}

describe('uploads', () => {
  let mp4;
  let mov;

  it('stores a 6 s MP4 sent raw and a 9 s MOV sent as a form, measured, with links serving the same bytes', async () => {
    const raw = await upload(SIX);
    assert.equal(raw.status, 200, raw.text);
    mp4 = raw.json.data;
    assert.equal(raw.json.code, 0);
    assert.match(mp4.asset_id, /^[0-9a-f]{32}$/);
    assert.equal(mp4.content_type, 'video/mp4');
    assert.equal(mp4.bytes, SIX.length);
    assert.ok(Math.abs(mp4.duration - 6) < 0.2, `measured ${mp4.duration} s`);
    assert.ok(mp4.expires_at > Date.now() + 6 * 24 * 3600 * 1000, 'kept ASSET_RETENTION_DAYS (7 by default)');
    assert.match(mp4.url, new RegExp(`^${worker.url}/v1/assets/[0-9a-f]{32}/${mp4.asset_id}/video\\.mp4\\?expires=\\d+&signature=`));

    const sent = await postForm('/v1/assets', form({}, { bytes: NINE_MOV, type: 'video/quicktime', name: 'holiday.mov' }));
    assert.equal(sent.status, 200, JSON.stringify(sent.json));
    mov = sent.json.data;
    assert.equal(mov.content_type, 'video/quicktime');
    assert.equal(mov.bytes, NINE_MOV.length);
    assert.ok(Math.abs(mov.duration - 9) < 0.2, `measured ${mov.duration} s`);
    assert.match(mov.url, /\/video\.mov\?/);

    for (const [asset, bytes, type] of [[mp4, SIX, 'video/mp4'], [mov, NINE_MOV, 'video/quicktime']]) {
      // No credential: the link is its own (Kling fetches it so).
      const whole = await fetch(asset.url);
      assert.equal(whole.status, 200);
      assert.equal(whole.headers.get('content-type'), type);
      assert.equal(whole.headers.get('accept-ranges'), 'bytes');
      assert.match(whole.headers.get('cache-control'), /^private, max-age=\d+$/, 'an upload may be deleted: no shared cache keeps it');
      assert.equal(sha256(Buffer.from(await whole.arrayBuffer())), sha256(bytes));
      const part = await fetch(asset.url, { headers: { range: 'bytes=100-1123' } });
      assert.equal(part.status, 206);
      assert.equal(part.headers.get('content-range'), `bytes 100-1123/${bytes.length}`);
      assert.deepEqual(Buffer.from(await part.arrayBuffer()), bytes.subarray(100, 1124));
      const head = await fetch(asset.url, { method: 'HEAD' });
      assert.equal(head.headers.get('content-length'), String(bytes.length));
    }
    // One character of the signature changed (never to itself).
    const tampered = await fetch(mp4.url.replace(/signature=(.)/, (_, first) => `signature=${first === 'A' ? 'B' : 'A'}`));
    assert.equal(tampered.status, 403);
  });

  it('stores a video streamed with no Content-Length, through a multipart upload', async () => {
    const streamed = await uploadStreamed(SIX);
    assert.equal(streamed.status, 200, JSON.stringify(streamed.json));
    assert.equal(streamed.json.data.bytes, SIX.length);
    const served = await fetch(streamed.json.data.url);
    assert.equal(sha256(Buffer.from(await served.arrayBuffer())), sha256(SIX));
    assert.equal((await call(worker, 'DELETE', `/v1/assets/${streamed.json.data.asset_id}`, { key: WEB_KEY })).status, 200);
  });

  it('lists the tenant\'s uploads newest first, gives one with a fresh link, and hides them from other tenants', async () => {
    const mine = await listed();
    assert.deepEqual(mine.map((asset) => asset.asset_id), [mov.asset_id, mp4.asset_id]);
    const one = await call(worker, 'GET', `/v1/assets/${mp4.asset_id}`, { key: WEB_KEY });
    assert.equal(one.status, 200);
    assert.equal(one.json.data.duration, mp4.duration);
    assert.equal((await fetch(one.json.data.url)).status, 200);
    assert.deepEqual(await listed(OPS_KEY), []);
    const theirs = await call(worker, 'GET', `/v1/assets/${mp4.asset_id}`, { key: OPS_KEY });
    assert.equal(theirs.status, 404);
    assert.equal(theirs.json.code, 1203);
    assert.equal((await call(worker, 'DELETE', `/v1/assets/${mp4.asset_id}`, { key: OPS_KEY })).status, 404);
    assert.equal((await call(worker, 'GET', '/v1/assets')).status, 401, 'never public');
  });

  it('hands Kling a link it fetches with no credential, and refuses another tenant\'s create with it', async () => {
    const creates = fake.apiRequests('POST', OFFICIAL).length;
    const created = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: mp4.url, sound_effect_prompt: 'waves' } });
    assert.equal(created.status, 200, created.text);
    const task = fake.tasks.get(created.json.data.task_id);
    assert.match(task.body.video_url, new RegExp(`/v1/assets/[0-9a-f]{32}/${mp4.asset_id}/video\\.mp4\\?`));
    const fetched = await task.videoFetch;
    assert.equal(fetched.status, 200, JSON.stringify(fetched));
    assert.equal(fetched.sha256, sha256(SIX));
    assert.equal(fetched.contentType, 'video/mp4');

    const refused = await call(worker, 'POST', OFFICIAL, { key: OPS_KEY, body: { video_url: mp4.url } });
    assert.equal(refused.status, 403, refused.text);
    assert.equal(refused.json.code, 1103);
    assert.match(refused.json.message, /^video_url: this upload belongs to another tenant/);
    assert.ok(refused.json.request_id);
    assert.equal(fake.apiRequests('POST', OFFICIAL).length, creates + 1, 'the refusal never reached Kling');
  });

  it('refuses what Kling would refuse with the measured fact, and lists none of it', async () => {
    const before = (await listed()).length;
    const cases = [
      { what: '1 s', send: () => upload(MEDIA('one-second.mp4')), status: 400, message: /^file: the video lasts 1\.0 s; Kling accepts 3 to 20 s$/ },
      { what: '30 s', send: () => upload(MEDIA('thirty-seconds.mp4')), status: 400, message: /^file: the video lasts 30\.0 s; Kling accepts 3 to 20 s$/ },
      { what: 'a page sent as video/mp4', send: () => upload(Buffer.from('<!doctype html><html><body>not a video</body></html>')), status: 400, message: /^file: is not an MP4 or MOV video/ },
      { what: 'a gif', send: () => upload(Buffer.from('GIF89a\x01\x00\x01\x00'), { type: 'image/gif' }), status: 415, message: /^Content-Type: is image\/gif; an upload must be video\/mp4 or video\/quicktime/ },
      { what: 'a gif in a form', send: () => postForm('/v1/assets', form({}, { bytes: Buffer.from('GIF89a'), type: 'image/gif', name: 'a.gif' })), status: 415, message: /file part's Content-Type: is image\/gif/ },
    ];
    for (const { what, send, status, message } of cases) {
      const response = await send();
      assert.equal(response.status, status, `${what}: ${JSON.stringify(response.json)}`);
      assert.match(response.json.message, message, what);
      assert.ok(response.json.request_id, what);
    }
    assert.equal((await listed()).length, before, 'nothing refused is listed');
  });

  it('counts uploads against the tenant\'s bytes of the day, with Retry-After past them', async () => {
    const minted = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'daily-user' } });
    const token = minted.json.data.token;
    const big = padded(700 * 1024);
    assert.equal((await upload(big, { key: token })).status, 200);
    const refused = await upload(big, { key: token });
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.json.code, 1302);
    assert.match(refused.json.message, /UPLOAD_BYTES_PER_DAY/);
    assert.ok(Number(refused.headers.get('retry-after')) > 0);
    // Another browser user of the same app has a day of their own.
    const other = (await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'other-user' } })).json.data.token;
    assert.equal((await upload(big, { key: other })).status, 200);
  });

  it('grants browsers on allowed origins CORS for uploads and deletes, preflight included', async () => {
    const preflight = await fetch(`${worker.url}/v1/assets/${mov.asset_id}`, {
      method: 'OPTIONS',
      headers: { origin: APP, 'access-control-request-method': 'DELETE', 'access-control-request-headers': 'authorization' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), APP);
    assert.match(preflight.headers.get('access-control-allow-methods'), /DELETE/);
    const uploaded = await fetch(`${worker.url}/v1/assets`, {
      method: 'POST', body: SIX, headers: { origin: APP, authorization: `Bearer ${WEB_KEY}`, 'content-type': 'video/mp4' },
    });
    assert.equal(uploaded.headers.get('access-control-allow-origin'), APP);
  });

  it('removes an upload on DELETE: gone from the list, its link 404', async () => {
    const deleted = await call(worker, 'DELETE', `/v1/assets/${mov.asset_id}`, { key: WEB_KEY });
    assert.equal(deleted.status, 200, deleted.text);
    assert.equal((await call(worker, 'GET', `/v1/assets/${mov.asset_id}`, { key: WEB_KEY })).status, 404);
    assert.ok(!(await listed()).some((asset) => asset.asset_id === mov.asset_id));
    assert.equal((await fetch(mov.url)).status, 404);
    const named = await call(worker, 'POST', OFFICIAL, { key: WEB_KEY, body: { video_url: mov.url } });
    assert.equal(named.status, 400);
    assert.match(named.json.message, /^video_url: names an upload that is no longer kept/);
  });
});

describe("useapi.net's shapes", () => {
  it('POST /v1/kling/assets answers status, url, message and fileName; errors as {error}', async () => {
    const stored = await upload(SIX, { pathname: '/v1/kling/assets' });
    assert.equal(stored.status, 200, stored.text);
    assert.deepEqual(Object.keys(stored.json).sort(), ['fileName', 'message', 'status', 'url']);
    assert.equal(stored.json.status, 1);
    assert.equal(stored.json.message, '');
    assert.match(stored.json.fileName, /^[0-9a-f]{32}\.mp4$/);
    assert.equal(sha256(Buffer.from(await (await fetch(stored.json.url)).arrayBuffer())), sha256(SIX));
    const refused = await upload(Buffer.from('GIF89a'), { pathname: '/v1/kling/assets', type: 'image/gif' });
    assert.equal(refused.status, 415);
    assert.match(refused.json.error, /Content-Type: is image\/gif/);
  });

  it('add-sound takes a form: its fields as text parts and the video as the file itself, stored first', async () => {
    const before = (await listed()).length;
    const sent = await postForm('/v1/kling/videos/add-sound', form({ replyRef: 'order-7', maxJobs: '5' }, { bytes: SIX, type: 'video/mp4', name: 'clip.mp4' }));
    assert.equal(sent.status, 200, JSON.stringify(sent.json));
    assert.match(sent.json.task.id, /^\d+$/);
    const task = fake.tasks.get(sent.json.task.id);
    assert.match(task.body.video_url, /\/v1\/assets\/[0-9a-f]{32}\/[0-9a-f]{32}\/video\.mp4\?/);
    assert.equal((await task.videoFetch).sha256, sha256(SIX));
    assert.equal((await listed()).length, before + 1, 'the file is kept as an asset');
    // The video as a URL in a text part, and a field that breaks its rule.
    const byUrl = await postForm('/v1/kling/videos/add-sound', form({ video: task.body.video_url }));
    assert.equal(byUrl.status, 200, JSON.stringify(byUrl.json));
    const bad = await postForm('/v1/kling/videos/add-sound', form({ video: task.body.video_url, maxJobs: 'many' }));
    assert.equal(bad.status, 400);
    assert.match(bad.json.error, /^maxJobs/);
  });
});

describe('the fetch Kling makes', () => {
  it('is served by the link alone, for as long as the link lasts', async () => {
    const stored = (await upload(NINE_MOV, { type: 'video/quicktime' })).json.data;
    const expires = Number(new URL(stored.url).searchParams.get('expires'));
    const lasts = expires * 1000 - Date.now();
    assert.ok(lasts > 23 * 3600 * 1000 && lasts <= 24 * 3600 * 1000 + 5000, `a day: ${lasts} ms`);
    await eventually(async () => (await fetch(stored.url)).status === 200, { what: 'the link' });
  });
});

describe('before the body is read, in workerd without the dev proxy', () => {
  let direct;
  before(async () => {
    direct = await startDirectWorker(baseSettings(fake, { ALLOW_PRIVATE_URLS: 'true' }));
  });
  after(async () => { await direct?.stop(); });

  /** Sends the head and the first `sent` bytes of a body declaring `length`; resolves with
   * the answer if one comes within `waitMs`, then drops the connection. */
  function partial(length, body, waitMs) {
    return new Promise((resolve) => {
      const url = new URL(direct.url);
      const socket = net.connect(Number(url.port), url.hostname);
      let answer = '';
      socket.on('data', (data) => { answer += data; });
      socket.on('error', () => {});
      socket.write(`POST /v1/assets HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: Bearer ${WEB_KEY}\r\n`
        + `Content-Type: video/mp4\r\nContent-Length: ${length}\r\n\r\n`);
      socket.write(body);
      setTimeout(() => { socket.destroy(); resolve(answer); }, waitMs);
    });
  }

  async function storedKeys() {
    const listed = await (await direct.bucket()).list({ prefix: 'assets/' });
    return listed.objects.map((object) => object.key);
  }

  it('refuses a 200 MB upload with 413 having read none of it', async () => {
    const answer = await partial(200 * 1024 * 1024, SIX, 3_000);
    assert.match(answer, /^HTTP\/1\.1 413 /, answer.slice(0, 200));
    const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4));
    assert.match(body.message, /^Content-Length: is larger than Kling accepts \(100 MB\)/);
    assert.ok(body.request_id);
  });

  it('keeps nothing of an upload cut off halfway, or of one refused', async () => {
    const file = padded(600 * 1024);
    const answer = await partial(file.length, file.subarray(0, 300 * 1024), 1_000);
    assert.equal(answer, '', 'no answer to a body still arriving');
    // The worker sees the body end early: the upload is removed, not listed, its object gone.
    await eventually(async () => {
      const page = await call(direct, 'GET', '/v1/assets', { key: WEB_KEY });
      return page.status === 200 && page.json.data.length === 0 && (await storedKeys()).length === 0;
    }, { what: 'nothing kept of the cut-off upload', timeoutMs: 10_000 });
    const refused = await call(direct, 'POST', '/v1/assets', { key: WEB_KEY, raw: MEDIA('one-second.mp4'), headers: { 'content-type': 'video/mp4' } });
    assert.equal(refused.status, 400);
    assert.deepEqual(await storedKeys(), [], 'a refused upload is deleted');
    const kept = await call(direct, 'POST', '/v1/assets', { key: WEB_KEY, raw: SIX, headers: { 'content-type': 'video/mp4' } });
    assert.equal(kept.status, 200, kept.text);
    assert.equal((await storedKeys()).length, 1, 'and a measured one is kept');
    assert.ok(direct.logs.some((line) => line.includes('"outcome":"refused"') && line.includes('broke off')), 'the cut-off was seen');
  });
});

describe('an upload with an Idempotency-Key', () => {
  it('answers a retry with the asset the first stored, and stores nothing again', async () => {
    const listed = async () => (await call(worker, 'GET', '/v1/assets', { key: OPS_KEY })).json.data.length;
    const before = await listed();
    const first = await upload(SIX, { key: OPS_KEY, idempotencyKey: 'upload-retry-1' });
    assert.equal(first.status, 200, first.text);
    const again = await upload(SIX, { key: OPS_KEY, idempotencyKey: 'upload-retry-1' });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.json.data.asset_id, first.json.data.asset_id);
    assert.equal(await listed(), before + 1, 'one asset, not two');
    const other = await upload(SIX.subarray(0, SIX.length - 1), { key: OPS_KEY, idempotencyKey: 'upload-retry-1' });
    assert.equal(other.status, 422, other.text);
    assert.match(other.json.message, /^Idempotency-Key: was used with another upload/);
  });
});
