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
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
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
    // The stand-in's sample video is on loopback, as in `make dev`.
    ALLOW_PRIVATE_URLS: 'true',
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

describe('the demo page in Chromium', () => {
  it('signs in with the token from the link, and drops it from the address bar', async () => {
    await page.getByTestId('whoami').filter({ hasText: 'Signed in as demo' }).waitFor();
    assert.ok(!page.url().includes('token='), page.url());
    assert.equal(await page.evaluate(() => document.documentElement.outerHTML.includes('pk_')), false, 'no key in the page');
  });

  it('creates a task, follows it to succeed, and plays the video and the audio', async () => {
    await page.locator('#duration').filter({ hasText: '5.0 s' }).waitFor();
    await page.getByTestId('kind-music').check();
    await page.getByTestId('prompt').fill('calm piano over gentle waves');
    await page.getByTestId('submit').click();
    await page.getByTestId('status').filter({ hasText: 'succeed' }).waitFor({ timeout: 20_000 });

    const created = fake.apiRequests('POST').at(-1).body;
    assert.equal(created.bgm_prompt, 'calm piano over gentle waves');
    assert.equal(created.video_url, `${fake.url}/samples/sample-video.mp4`);

    await page.getByTestId('players').waitFor({ state: 'visible' });
    // HAVE_CURRENT_DATA: a frame (or audio) was actually decoded, so Chromium can play it.
    const ready = (selector) => page.evaluate((s) => new Promise((resolve, reject) => {
      const element = document.querySelector(s);
      if (element.readyState >= 2) return resolve(element.readyState);
      element.addEventListener('loadeddata', () => resolve(element.readyState), { once: true });
      element.addEventListener('error', () => reject(new Error(`${s} cannot play ${element.currentSrc}`)), { once: true });
      setTimeout(() => reject(new Error(`${s} did not load`)), 10_000);
    }), selector);
    assert.ok(await ready('#video-player') >= 2);
    assert.ok(await ready('#audio-player') >= 2);
    const durations = await page.evaluate(() => [document.querySelector('#video-player').duration, document.querySelector('#audio-player').duration]);
    assert.ok(durations.every((d) => d > 4 && d < 6), `${durations}`);
    assert.match(await page.getByTestId('audio-player').getAttribute('src'), /sample-audio\.mp3$/);

    await page.getByTestId('task-list').filter({ hasText: 'succeed' }).waitFor();
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

  it('shows a rejected input as the worker words it', async () => {
    const before = fake.apiRequests('POST').length;
    await page.getByTestId('video-url').fill('https://cdn.example.com/holiday.avi');
    await page.getByTestId('submit').click();
    const error = page.getByTestId('error');
    await error.filter({ hasText: 'video_url:' }).waitFor();
    assert.match(await text('error'), /video_url: must point to an \.mp4 or \.mov file \(the path ends in \.avi\)/);
    assert.match(await text('error'), /code 1201/);

    await page.getByTestId('video-url').fill(`${fake.url}/samples/sample-video.mp4`);
    await page.getByTestId('kind-sound').check();
    await page.getByTestId('prompt').fill('x'.repeat(201));
    await page.getByTestId('submit').click();
    await error.filter({ hasText: 'at most 200 characters (got 201)' }).waitFor();
    assert.match(await text('error'), /^sound_effect_prompt: must be at most 200 characters \(got 201\)/);
    assert.equal(fake.apiRequests('POST').length, before, 'nothing reached Kling');
  });

  it('logged no page errors', () => {
    assert.deepEqual(consoleErrors, []);
  });
});
