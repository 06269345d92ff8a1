// The demo page end to end, in headless Chromium (Debian's, driven by playwright-core):
// sign in with a development token, submit a video with a music prompt, watch the status
// go to succeed, see the players load the video and the generated audio; and see a
// rejected input shown as the worker words it. Saves test-results/demo.png.

import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { chromium } from 'playwright-core';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, OPS_KEY, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { call, ROOT, startWorker } from '../support/worker.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'test-results/demo.png');

let fake;
let worker;
let browser;
let page;
const consoleErrors = [];

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, autoProgress: true, stepMs: 400 });
  worker = await startWorker(baseSettings(fake, {
    PROXY_TOKEN_SECRET: 'demo-token-secret-for-the-chromium-test-0123',
    // The stand-in's sample video is on loopback, and measured before each create, as in `make dev`.
    ALLOW_PRIVATE_URLS: 'true',
    VIDEO_PROBE: 'strict',
    // Each demo user may spend 50 credits a day (the stand-in charges one a task).
    CREDIT_BUDGETS: 'web:50',
  }));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
  });
  page = await browser.newPage({ viewport: { width: 960, height: 1300 } });
  page.on('console', (message) => {
    // A 4xx answer is logged by Chromium itself (the page shows it, which is the point), and
    // the page's duration probe of an unreachable example URL fails to resolve.
    const expected = /status of 4\d\d|ERR_NAME_NOT_RESOLVED/.test(message.text());
    if (message.type() === 'error' && !expected) consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(error.message));
  const minted = await call(worker, 'POST', '/v1/tokens', { key: WEB_KEY, body: { sub: 'demo', ttl_seconds: 900 } });
  const video = `${fake.url}/samples/sample-video.mp4`;
  await page.goto(`${worker.url}/#token=${minted.json.data.token}&video=${encodeURIComponent(video)}`);
});

after(async () => {
  await browser?.close();
  await worker?.stop();
  await fake?.close();
});

const text = (testId) => page.getByTestId(testId).textContent();
const sample = (query = '') => `${fake.url}/samples/sample-video.mp4${query}`;

/** Resolves once the media element decoded data (HAVE_CURRENT_DATA), so Chromium can play it. */
const ready = (selector) => page.evaluate((s) => new Promise((resolve, reject) => {
  const element = document.querySelector(s);
  if (element.readyState >= 2) return resolve(element.readyState);
  element.addEventListener('loadeddata', () => resolve(element.readyState), { once: true });
  element.addEventListener('error', () => reject(new Error(`${s} cannot play ${element.currentSrc}`)), { once: true });
  setTimeout(() => reject(new Error(`${s} did not load`)), 10_000);
}), selector);

async function submitVideo(url, { kind = 'kind-sound', prompt = '' } = {}) {
  await page.getByTestId('video-url').fill(url);
  await page.getByTestId('video-url').dispatchEvent('change');
  await page.getByTestId(kind).check();
  await page.getByTestId('prompt').fill(prompt);
  await page.getByTestId('submit').click();
}

describe('the demo page in Chromium', () => {
  it('signs in with the token from the link, and drops it from the address bar', async () => {
    await page.getByTestId('whoami').filter({ hasText: 'Signed in as demo' }).waitFor();
    assert.ok(!page.url().includes('token='), page.url());
    assert.equal(await page.evaluate(() => document.documentElement.outerHTML.includes('pk_')), false, 'no key in the page');
  });

  it('keeps a working token when a wrong one is pasted, and says what was wrong', async () => {
    await page.getByTestId('token-input').fill(WEB_KEY);
    await page.getByRole('button', { name: 'Use token' }).click();
    await page.getByTestId('token-note').filter({ hasText: 'not a browser token' }).waitFor();
    assert.match(await text('token-note'), /belongs on your server/);
    const forged = `${(await page.evaluate(() => sessionStorage.getItem('kling-edge-token'))).slice(0, -6)}AAAAAA`;
    await page.getByTestId('token-input').fill(forged);
    await page.getByRole('button', { name: 'Use token' }).click();
    await page.getByTestId('token-note').filter({ hasText: 'refused that token' }).waitFor();
    assert.match(await text('token-note'), /still signed in/);
    assert.match(await text('whoami'), /Signed in as demo/);
    assert.notEqual(await page.evaluate(() => sessionStorage.getItem('kling-edge-token')), forged);
  });

  it('serves a favicon', async () => {
    const response = await fetch(`${worker.url}/favicon.ico`);
    assert.equal(response.status, 200);
    assert.equal(Buffer.from(await response.arrayBuffer()).readUInt16LE(2), 1, 'an ICO file');
  });

  it('creates a task, follows it to succeed, and plays the video and the audio', async () => {
    await page.locator('#duration').filter({ hasText: '5.0 s' }).waitFor();
    await page.getByTestId('kind-music').check();
    await page.getByTestId('prompt').fill('calm piano over gentle waves');
    await page.getByTestId('submit').click();
    // While it runs, no player shows: there is nothing to play yet.
    await page.getByTestId('status').filter({ hasText: /Submitted|Processing/ }).waitFor();
    assert.equal(await page.getByTestId('players').isVisible(), false, 'no players before the result');
    assert.equal(await page.getByText('Play both together').isVisible(), false);
    await page.getByTestId('status').filter({ hasText: 'Done' }).waitFor({ timeout: 20_000 });

    const created = fake.apiRequests('POST').at(-1).body;
    assert.equal(created.bgm_prompt, 'calm piano over gentle waves');
    assert.equal(created.video_url, sample());

    await page.getByTestId('players').waitFor({ state: 'visible' });
    // The audio plays from the worker's own copy (a signed link on its origin), not Kling's.
    await page.getByTestId('audio-source').filter({ hasText: 'from this deployment\'s copy' }).waitFor({ timeout: 10_000 });
    const audioSrc = await page.getByTestId('audio-player').getAttribute('src');
    assert.match(audioSrc, new RegExp(`^${worker.url}/v1/results/[0-9a-f]{32}/\\d+/audio-0\\.mp3\\?expires=\\d+&signature=`));
    assert.ok(await ready('#video-player') >= 2);
    // The video that plays is the result, with its new sound (the worker's copy of Kling's
    // videos[0]), offered for download; the input is not what plays.
    const videoSrc = await page.getByTestId('video-player').getAttribute('src');
    assert.match(videoSrc, new RegExp(`^${worker.url}/v1/results/[0-9a-f]{32}/\\d+/video-0\\.mp4\\?expires=`));
    assert.equal(await page.getByTestId('video-download').getAttribute('href'), videoSrc);
    assert.ok(await page.getByTestId('video-download').isVisible());
    assert.equal(await page.locator('#video-caption').textContent(), 'Your video, with its new sound');
    assert.ok(await ready('#audio-player') >= 2, 'the copy decodes in the audio element');
    const durations = await page.evaluate(() => [document.querySelector('#video-player').duration, document.querySelector('#audio-player').duration]);
    assert.ok(durations.every((d) => d > 4 && d < 6), `${durations}`);
    // And the page decoded it itself (Web Audio) to draw its waveform.
    await page.getByTestId('waveform').waitFor({ state: 'visible' });
    const decoded = Number(await page.getByTestId('waveform').getAttribute('data-seconds'));
    assert.ok(decoded > 4 && decoded < 6, `decoded ${decoded} s from the copy`);

    await page.getByTestId('task-list').filter({ hasText: 'Done' }).waitFor();
    // For the screenshot: the whole (small) video buffered, so its controls show no spinner.
    await page.evaluate(() => new Promise((resolve) => {
      const video = document.querySelector('#video-player');
      if (video.readyState >= 4) return resolve();
      video.addEventListener('canplaythrough', resolve, { once: true });
      setTimeout(resolve, 5000);
    }));
    await fs.mkdir(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  });

  it('shows a failed task after a succeeded one as Failed, with no players', async () => {
    await submitVideo(sample('?case=fail'));
    await page.getByTestId('status').filter({ hasText: 'Failed' }).waitFor({ timeout: 20_000 });
    assert.equal(await page.getByTestId('players').isVisible(), false, "the previous task's media is gone");
    assert.equal(await page.getByText('Generated audio').isVisible(), false);
    assert.equal(await page.locator('.steps li.failed').textContent(), 'Failed');
    assert.equal(await page.locator('.steps li.active').count(), 0, 'nothing still shows as in progress');
    assert.equal(await page.getByTestId('video-player').getAttribute('src'), null);
  });

  it('follows a long task with backoff, updates its row, and shows the time elapsed', async () => {
    await submitVideo(sample('?case=hold'));
    await page.getByTestId('status').filter({ hasText: 'Processing' }).waitFor({ timeout: 10_000 });
    const taskId = await text('task-id');
    await page.locator(`tr[data-task-id="${taskId}"]`).filter({ hasText: 'Processing' }).waitFor({ timeout: 10_000 });
    let gets = 0;
    const count = (request) => { if (request.url().endsWith(`/${taskId}`)) gets += 1; };
    page.on('request', count);
    await new Promise((resolve) => setTimeout(resolve, 8000));
    page.off('request', count);
    // Polls slow down from 1 s by half again each time (1.5, 2.25, 3.4 s...): 3 or 4 in 8 s, not 5+.
    assert.ok(gets >= 2 && gets <= 4, `${gets} polls in 8 s`);
    assert.match(await text('elapsed'), /^0:(0[89]|1\d) elapsed$/);
    await fake.advance(taskId, 'succeed');
    await page.locator(`tr[data-task-id="${taskId}"]`).filter({ hasText: 'Done' }).waitFor({ timeout: 20_000 });
  });

  it('waits for a slow video\'s length before creating, so the worker can check it', async () => {
    const answered = page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/v1/audio/video-to-audio'));
    await submitVideo(sample('?delay=1500'));
    const response = await answered;
    const body = JSON.parse(response.request().postData());
    assert.equal(body.video_url, sample('?delay=1500'));
    assert.ok(Math.abs(body.video_duration - 5) < 0.2, `the length, read before the create went out: ${body.video_duration}`);
    const { data } = await response.json();
    await page.getByTestId('task-id').filter({ hasText: data.task_id }).waitFor();
  });

  it('shows a rejected input as the worker words it, naming the page\'s field', async () => {
    const before = fake.apiRequests('POST').length;
    await submitVideo('https://cdn.example.com/holiday.avi');
    const error = page.getByTestId('error');
    await error.filter({ hasText: 'Video URL:' }).waitFor();
    assert.match(await text('error'), /^Video URL: must point to an \.mp4 or \.mov file \(the path ends in \.avi\)/);
    assert.match(await text('error'), /field video_url · code 1201/);
    assert.equal(fake.apiRequests('POST').length, before, `nothing reached Kling: ${JSON.stringify(fake.apiRequests('POST').slice(before).map((r) => r.body))}`);
  });

  it('does not submit a prompt over 200 characters, and says why', async () => {
    await page.getByTestId('video-url').fill(sample());
    await page.getByTestId('prompt').fill('x'.repeat(201));
    assert.equal(await page.getByTestId('submit').isDisabled(), true);
    assert.match(await page.locator('#prompt-count').textContent(), /201\/200: too long/);
    await page.getByTestId('prompt').fill('x'.repeat(200));
    assert.equal(await page.getByTestId('submit').isDisabled(), false);
  });

  it('makes a sound from text, another family, and plays it', async () => {
    await page.getByTestId('family-t2a').click();
    await page.getByTestId('prompt').fill('rain on a tin roof, distant thunder');
    await page.getByTestId('audio-duration').fill('6.5');
    const answered = page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/v1/audio/text-to-audio'));
    await page.getByTestId('submit').click();
    assert.deepEqual(JSON.parse((await answered).request().postData()), { prompt: 'rain on a tin roof, distant thunder', duration: 6.5 });
    await page.getByTestId('status').filter({ hasText: 'Done' }).waitFor({ timeout: 20_000 });
    await page.getByTestId('players').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#video-figure').isVisible(), false, 'a sound has no video');
    assert.ok(await ready('#audio-player') >= 2, 'the generated audio decodes');
    const created = fake.apiRequests('POST', '/v1/audio/text-to-audio').at(-1).body;
    assert.equal(created.duration, 6.5);
    await page.getByTestId('task-list').filter({ hasText: 'Done' }).waitFor();
  });

  it('makes a video with sound from text, and plays the video with its sound', async () => {
    await page.getByTestId('family-t2v').click();
    await page.getByTestId('prompt').fill('waves crashing on a rocky shore at dusk');
    await page.getByTestId('submit').click();
    await page.getByTestId('status').filter({ hasText: 'Done' }).waitFor({ timeout: 20_000 });
    const sent = fake.apiRequests('POST', '/v1/videos/text2video').at(-1).body;
    assert.equal(sent.model_name, 'kling-v2-6');
    assert.equal(sent.sound, 'on');
    assert.equal(sent.mode, 'pro');
    assert.ok(await ready('#video-player') >= 2);
    assert.equal(await page.locator('#audio-figure').isVisible(), false);
    const videoSrc = await page.getByTestId('video-player').getAttribute('src');
    assert.match(videoSrc, new RegExp(`^${worker.url}/v1/results/[0-9a-f]{32}/\\d+/video-0\\.mp4\\?`), 'the worker\'s copy');
    const copy = Buffer.from(await (await fetch(videoSrc)).arrayBuffer());
    assert.ok(copy.equals(await fs.readFile(path.join(ROOT, 'samples/sample-video-sound.mp4'))), 'of the video with its sound');
    await page.getByTestId('family-v2a').click();
  });

  it('uploads a dropped video with a progress bar, creates with its link, and plays the result', async () => {
    await page.getByTestId('family-v2a').click();
    const file = await fs.readFile(path.join(ROOT, 'tests/media/six-seconds.mp4'));
    const uploads = [];
    const seen = (request) => { if (request.url().endsWith('/v1/assets')) uploads.push(request.method()); };
    page.on('request', seen);
    // Dropped on the page, as a person drags it from their desktop.
    const dropped = await page.evaluateHandle((bytes) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([new Uint8Array(bytes)], 'beach.mp4', { type: 'video/mp4' }));
      return transfer;
    }, [...file]);
    await page.getByTestId('drop-zone').dispatchEvent('drop', { dataTransfer: dropped });
    await page.getByTestId('duration').filter({ hasText: '6.0 s ✓' }).waitFor();
    await page.getByTestId('prompt').fill('waves on a beach');
    await page.getByTestId('kind-sound').check();
    await page.getByTestId('submit').click();
    await page.getByTestId('duration').filter({ hasText: 'measured by the worker' }).waitFor();
    assert.equal(await page.getByTestId('upload-progress').evaluate((bar) => bar.value), 100);
    await page.getByTestId('status').filter({ hasText: 'Done' }).waitFor({ timeout: 20_000 });
    const created = fake.apiRequests('POST').at(-1);
    assert.match(created.body.video_url, new RegExp(`^${worker.url}/v1/assets/[0-9a-f]{32}/[0-9a-f]{32}/video\\.mp4\\?`));
    const fetched = await [...fake.tasks.values()].find((task) => task.body === created.body).videoFetch;
    assert.equal(fetched.bytes, file.length, 'Kling fetched the upload through its link');
    assert.deepEqual(uploads, ['POST'], 'uploaded once');
    await page.getByTestId('players').waitFor({ state: 'visible' });
    assert.ok(await ready('#video-player') >= 2);
    assert.equal(await page.locator('#video-caption').textContent(), 'Your video, with its new sound');
    page.off('request', seen);
  });

  it('refuses a 1 s file in the browser before sending it, and shows the worker refusing a file that is no video', async () => {
    const uploads = [];
    const seen = (request) => { if (request.url().endsWith('/v1/assets')) uploads.push(request.method()); };
    page.on('request', seen);
    await page.getByTestId('video-file').setInputFiles(path.join(ROOT, 'tests/media/one-second.mp4'));
    await page.getByTestId('duration').filter({ hasText: 'Kling needs 3 to 20 seconds' }).waitFor();
    await page.getByTestId('submit').click();
    await page.getByTestId('error').filter({ hasText: 'Your video: the video lasts 1.0 s' }).waitFor();
    assert.deepEqual(uploads, [], 'nothing was sent');

    // A page saved as .mp4: the browser cannot read a length, so the worker measures it.
    await page.getByTestId('video-file').setInputFiles({ name: 'clip.mp4', mimeType: 'video/mp4', buffer: Buffer.from('<!doctype html><p>not a video</p>') });
    await page.getByTestId('submit').click();
    await page.getByTestId('error').filter({ hasText: 'Your video: is not an MP4 or MOV video' }).waitFor({ timeout: 10_000 });
    assert.deepEqual(uploads, ['POST']);
    assert.match(await text('error'), /code 1201/);
    await page.getByTestId('clear-file').click();
    assert.equal(await page.getByTestId('video-url').isEnabled(), true);
    page.off('request', seen);
  });

  it('shows a create that waits for a free Kling slot, and its place in line as it moves', async () => {
    // Another app holds the account's one slot: creates wait in line at the edge.
    fake.maxConcurrency = 1;
    fake.otherRunning = 1;
    for (const prompt of ['ahead one', 'ahead two']) {
      const ahead = await call(worker, 'POST', '/v1/audio/text-to-audio', { key: OPS_KEY, body: { prompt, duration: 5 } });
      assert.match(ahead.json.data.task_id, /^ke_/, ahead.text);
    }
    await page.getByTestId('family-t2a').click();
    await page.getByTestId('prompt').fill('waiting in line');
    await page.getByTestId('audio-duration').fill('5');
    await page.getByTestId('submit').click();
    await page.getByTestId('status').filter({ hasText: 'Waiting for a free slot' }).waitFor();
    await page.locator('#status-msg').filter({ hasText: /waiting for a free Kling slot \(2nd in line\)/ }).waitFor();
    await fs.mkdir(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT.replace('.png', '-waiting.png'), fullPage: true });
    // The other app's task ends: the line moves, and the page's create gets its turn.
    fake.otherRunning = 0;
    await page.locator('#status-msg').filter({ hasText: /1st in line/ }).waitFor({ timeout: 20_000 });
    await page.getByTestId('status').filter({ hasText: 'Done' }).waitFor({ timeout: 40_000 });
    fake.maxConcurrency = Infinity;
  });

  it('shows the credits the user spent today and what is left of the budget', async () => {
    await page.reload();
    const credits = page.getByTestId('credits').filter({ hasText: /Credits today: [1-9]\d*(\.\d+)? spent/ });
    await credits.waitFor({ timeout: 20_000 });
    const shown = await text('credits');
    assert.match(shown, /; \d+(\.\d+)? of 50 left today \(renews at 00:00 UTC\)\.$/, shown);
    const usage = await page.evaluate(async () => {
      const token = sessionStorage.getItem('kling-edge-token');
      return (await (await fetch('/v1/usage', { headers: { Authorization: `Bearer ${token}` } })).json()).data;
    });
    assert.ok(shown.startsWith(`Credits today: ${usage.credits.spent} spent`), `${shown} vs ${JSON.stringify(usage)}`);
  });

  it('logged no page errors', () => {
    assert.deepEqual(consoleErrors, []);
  });
});
