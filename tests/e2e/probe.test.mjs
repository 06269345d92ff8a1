// The video probe, end to end: before a video-to-audio create, the worker in workerd reads
// the video at the client's URL (real files, from a local server that honours Range or not),
// and refuses what Kling would refuse, with the measured fact, before a credit is spent.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { MEDIA_DIR, startMediaServer } from '../support/media-server.mjs';
import { ACCESS_KEY, baseSettings, OFFICIAL, SECRET_KEY, SIMPLIFIED, WEB_KEY } from '../support/settings.mjs';
import { call, freePort, startWorker } from '../support/worker.mjs';

const ADD_SOUND = '/v1/kling/videos/add-sound';
const KIB = 1024;
const PROBE_CAP = 512 * KIB;

let fake;
let media;
let strict;
let lenient;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  media = await startMediaServer();
  // The media server is on loopback, so these workers may fetch private addresses.
  [strict, lenient] = await Promise.all([
    startWorker(baseSettings(fake, { ALLOW_PRIVATE_URLS: 'true', VIDEO_PROBE: 'strict', VIDEO_PROBE_TIMEOUT_MS: '1500' })),
    startWorker(baseSettings(fake, { ALLOW_PRIVATE_URLS: 'true', VIDEO_PROBE: 'lenient', VIDEO_PROBE_TIMEOUT_MS: '1500' })),
  ]);
});

after(async () => {
  await strict?.stop();
  await lenient?.stop();
  await fake?.close();
  await media?.close();
});

/** A URL of the media server, unique to the test (the worker caches what it measured per URL). */
let unique = 0;
function mediaUrl(name, query = {}) {
  unique += 1;
  const search = new URLSearchParams({ ...query, test: String(unique) });
  return { url: `${media.url}/media/${name}?${search}`, key: `/media/${name}?${search}` };
}

const kling = () => fake.requests.filter((r) => r.method === 'POST').length;

async function accepted(worker, body, pathname = OFFICIAL) {
  const before = kling();
  const response = await call(worker, 'POST', pathname, { key: WEB_KEY, body });
  assert.equal(response.status, 200, response.text);
  assert.equal(kling(), before + 1, 'the create reached Kling');
  return response;
}

async function refused(worker, body, message, pathname = OFFICIAL) {
  const before = kling();
  const response = await call(worker, 'POST', pathname, { key: WEB_KEY, body });
  assert.equal(response.status, 400, response.text);
  if (typeof message === 'string') assert.equal(response.json.message, message);
  else assert.match(response.json.message, message);
  assert.equal(response.json.code, 1201);
  assert.match(response.json.request_id, /\S/);
  assert.equal(kling(), before, 'a refused create never reaches Kling');
  return response;
}

/** The worker's log lines about probes. */
function probeLogs(worker) {
  return worker.logs().split('\n').filter((line) => line.includes('"event":"video_probe"'))
    .map((line) => JSON.parse(line.slice(line.indexOf('{'))));
}

describe('videos Kling accepts are measured and created', () => {
  for (const [what, name, query, seconds] of [
    ['a 10 s MP4 indexed at its tail', 'ten-seconds-tail-indexed.mp4', {}, 10],
    ['a 12 s fast-start MP4', 'twelve-seconds-fast-start.mp4', {}, 12],
    ['an 8 s MOV', 'eight-seconds.mov', {}, 8],
    ['a video behind two redirects', 'twelve-seconds-fast-start.mp4', { redirects: '2' }, 12],
    ['a video on a server that ignores Range', 'ten-seconds-tail-indexed.mp4', { range: 'ignore' }, 10],
  ]) {
    it(what, async () => {
      const { url, key } = mediaUrl(name, query);
      await accepted(strict, { video_url: url, sound_effect_prompt: 'waves' });
      const [sent] = fake.requests.filter((r) => r.method === 'POST').slice(-1);
      assert.equal(sent.body.video_url, url, 'Kling gets the client\'s URL');
      const read = media.stats(key.replace(/redirects=2/, 'redirects=0'));
      assert.ok(read.requests >= 1 && read.bytes <= PROBE_CAP, JSON.stringify(read));
      const logged = probeLogs(strict).find((line) => Math.abs(line.outcome.seconds - seconds) < 0.05);
      assert.ok(logged?.accepted, `a log line with the measured ${seconds} s`);
      assert.ok(!JSON.stringify(probeLogs(strict)).includes(media.url), 'the video URL (it may be signed) is not logged');
    });
  }

  it('on the simpler path and in useapi.net\'s add-sound shape too', async () => {
    await accepted(strict, { video_url: mediaUrl('eight-seconds.mov').url, prompt: 'rain' }, SIMPLIFIED);
    const useapi = await accepted(strict, { video: mediaUrl('twelve-seconds-fast-start.mp4').url }, ADD_SOUND);
    assert.match(useapi.json.jobid ?? useapi.json.task_id ?? JSON.stringify(useapi.json), /\S/);
  });
});

describe('videos Kling would refuse are refused before Kling, with the measured fact', () => {
  it('a 2 s video', async () => {
    await refused(strict, { video_url: mediaUrl('two-seconds.mp4').url }, 'video_url: the video lasts 2.0 s; Kling accepts 3 to 20 s');
  });

  it('a 25 s video', async () => {
    await refused(strict, { video_url: mediaUrl('twenty-five-seconds.mp4').url }, 'video_url: the video lasts 25.0 s; Kling accepts 3 to 20 s');
  });

  it('an HTML page named .mp4', async () => {
    await refused(strict, { video_url: mediaUrl('beach.mp4', { as: 'html' }).url }, 'video_url: is not an MP4 or MOV video (text/html; charset=utf-8); give a direct link to the .mp4 or .mov file itself, not to a page that plays it');
  });

  it('a 404', async () => {
    await refused(strict, { video_url: mediaUrl('missing.mp4').url }, 'video_url: answered 404');
  });

  it('a file whose size says 150 MB, from its first read', async () => {
    const { url, key } = mediaUrl('twelve-seconds-fast-start.mp4', { claim: String(150 * 1024 * 1024) });
    await refused(strict, { video_url: url }, 'video_url: is 150 MB; Kling accepts at most 100 MB');
    assert.equal(media.stats(key).requests, 1);
  });

  it('more redirects than three', async () => {
    await refused(strict, { video_url: mediaUrl('twelve-seconds-fast-start.mp4', { redirects: '4' }).url }, 'video_url: redirects more than 3 times');
  });

  it('in useapi.net\'s shape, naming its field', async () => {
    const before = kling();
    const response = await call(strict, 'POST', ADD_SOUND, { key: WEB_KEY, body: { video: mediaUrl('two-seconds.mp4').url } });
    assert.equal(response.status, 400, response.text);
    assert.match(response.json.error, /video: the video lasts 2\.0 s; Kling accepts 3 to 20 s/);
    assert.equal(kling(), before);
  });

  it('a video that cannot be measured, under VIDEO_PROBE=strict: unreachable or too slow', async () => {
    const closed = await freePort();
    await refused(strict, { video_url: `http://127.0.0.1:${closed}/clip.mp4` },
      'video_url: could not be measured (its server could not be reached), and this deployment only accepts videos it can measure: host it where it answers quickly, or try again');
    await refused(strict, { video_url: mediaUrl('ten-seconds-tail-indexed.mp4', { delay: '4000' }).url },
      /^video_url: could not be measured \(no answer within 1500 ms\)/);
  });
});

describe('the client\'s hint', () => {
  it('never overrides the measured length', async () => {
    await accepted(strict, { video_url: mediaUrl('ten-seconds-tail-indexed.mp4').url, video_duration: 25 });
    await refused(strict, { video_url: mediaUrl('twenty-five-seconds.mp4').url, video_duration: 10 },
      'video_url: the video lasts 25.0 s; Kling accepts 3 to 20 s');
    const [line] = probeLogs(strict).filter((l) => l.note?.includes('the client said 25')).slice(-1);
    assert.ok(line, 'the disagreement is logged');
  });

  it('stands in for what cannot be measured, under VIDEO_PROBE=lenient (and is logged)', async () => {
    const closed = await freePort();
    await accepted(lenient, { video_url: `http://127.0.0.1:${closed}/clip.mp4`, video_duration: 8 });
    await refused(lenient, { video_url: `http://127.0.0.1:${closed}/clip.mp4`, video_duration: 25 },
      /^video_duration: must be from 3 to 20 seconds/);
    assert.ok(probeLogs(lenient).some((l) => l.accepted && /not measured \(its server could not be reached\)/.test(l.note)));
    // What can be measured is still judged by its measurement.
    await refused(lenient, { video_url: mediaUrl('two-seconds.mp4').url, video_duration: 8 }, 'video_url: the video lasts 2.0 s; Kling accepts 3 to 20 s');
  });

  it('is all there is for a Kling video (video_id), which is not probed', async () => {
    const requests = [...media.served.values()].reduce((sum, s) => sum + s.requests, 0);
    await accepted(strict, { video_id: '860000000000000001', video_duration: 8 });
    await refused(strict, { video_id: '860000000000000001', video_duration: 2 }, /^video_duration: must be from 3 to 20 seconds/);
    assert.equal([...media.served.values()].reduce((sum, s) => sum + s.requests, 0), requests);
  });
});

describe('the probe reads only what it needs', () => {
  it('judges a multi-megabyte video indexed at its tail from two ranged reads, at most 512 KiB', async () => {
    const pad = 8 * 1024 * KIB;
    const { url, key } = mediaUrl('ten-seconds-tail-indexed.mp4', { pad: String(pad) });
    await accepted(strict, { video_url: url });
    const read = media.stats(key);
    const size = fs.statSync(path.join(MEDIA_DIR, 'ten-seconds-tail-indexed.mp4')).size + pad;
    assert.ok(read.bytes <= PROBE_CAP, `read ${read.bytes} bytes of ${size}`);
    assert.equal(read.requests, 2, 'the head, then the tail');
    assert.ok(read.ranges.every((range) => /^bytes=\d+-\d+$/.test(range)), read.ranges.join());
  });

  it('stops at 512 KiB of a server that ignores Range', async () => {
    const pad = 48 * 1024 * KIB;
    const fast = mediaUrl('twelve-seconds-fast-start.mp4', { pad: String(pad), range: 'ignore' });
    await accepted(strict, { video_url: fast.url });
    const tail = mediaUrl('ten-seconds-tail-indexed.mp4', { pad: String(pad), range: 'ignore' });
    await refused(strict, { video_url: tail.url },
      'video_url: could not be measured (its server ignores Range requests and its movie header is beyond the first 512 KiB), and this deployment only accepts videos it can measure: move its index to the front (ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4) or host it where Range requests work');
    for (const { key } of [fast, tail]) {
      // What the server pushed into the connection before the worker hung up; the worker
      // itself took at most 512 KiB of it.
      assert.ok(media.stats(key).bytes < pad / 4, `the download was cut short: ${media.stats(key).bytes} bytes sent`);
      assert.equal(media.stats(key).requests, 1);
    }
  });

  it('measures a URL once for a while: a retried create reads nothing', async () => {
    const { url, key } = mediaUrl('twelve-seconds-fast-start.mp4');
    await accepted(strict, { video_url: url });
    const first = media.stats(key).requests;
    await accepted(strict, { video_url: url });
    await refused(strict, { video_url: mediaUrl('two-seconds.mp4').url }, /lasts 2\.0 s/);
    assert.equal(media.stats(key).requests, first);
  });
});
