// The isolate's memory under the largest bodies a client may send: image to video takes up
// to 14 MiB (one Base64 image at Kling's 10 MB limit), every other body 64 KiB. The worker
// must refuse a body that would take more memory to build than to read (an array where an
// image belongs) before building it, and keep the largest legitimate body well under the
// 128 MB an isolate has at the edge. Measured as the growth of workerd's peak resident memory
// (VmHWM) over the request, in the process that runs the worker, which under `wrangler dev`
// also runs its proxy (one more copy of the body); workerd enforces no such limit locally.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, beforeEach, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { call, startWorker } from '../support/worker.mjs';

const I2V = '/v1/videos/image2video';
const MIB = 1024 * 1024;
let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

/** A fresh worker for each measurement: a peak, once reached, stays. */
beforeEach(async () => {
  await worker?.stop();
  worker = await startWorker(baseSettings(fake));
  await call(worker, 'GET', '/health');
});

/** The workerd processes below `pid` (wrangler dev's), with their peak resident memory. */
function workerdPeaks(pid) {
  const children = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const name = stat.slice(stat.indexOf('(') + 1, close);
      const parent = stat.slice(close + 2).split(' ')[1];
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push({ pid: entry, name });
    } catch { /* gone */ }
  }
  const found = [];
  const walk = (at) => {
    for (const child of children.get(at) ?? []) {
      if (child.name.startsWith('workerd')) {
        const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
        found.push(Number(status.match(/VmHWM:\s+(\d+) kB/)[1]) * 1024);
      }
      walk(child.pid);
    }
  };
  walk(String(pid));
  return found;
}

/** How much the peak resident memory of workerd grew while `send` ran, in MiB. */
async function peakGrowth(send) {
  const before = workerdPeaks(worker.child.pid);
  assert.ok(before.length > 0, 'found the workerd process');
  const response = await send();
  const afterPeaks = workerdPeaks(worker.child.pid);
  const growth = Math.max(...afterPeaks.map((peak, i) => peak - (before[i] ?? 0))) / MIB;
  return { response, growth };
}

/** Raw Base64 of a PNG of `bytes` bytes (a PNG signature, then noise). */
function png(bytes) {
  const data = crypto.randomBytes(bytes);
  Buffer.from('89504e470d0a1a0a', 'hex').copy(data);
  return data.toString('base64');
}

describe("the isolate's memory under the largest bodies", () => {
  it('refuses a 14 MiB array where an image belongs before building it', async () => {
    const zeros = `{"image": [${'0,'.repeat(7 * MIB - 10)}0]}`;
    const { response, growth } = await peakGrowth(() => call(worker, 'POST', I2V, { key: WEB_KEY, raw: zeros, headers: { 'content-type': 'application/json' } }));
    assert.equal(response.status, 400, response.text.slice(0, 300));
    assert.equal(response.json.message, 'image: must be a string, not an array');
    console.log(`# peak memory grew ${growth.toFixed(0)} MiB for a ${(zeros.length / MIB).toFixed(0)} MiB array`);
    assert.ok(growth < 64, `the peak grew ${growth.toFixed(0)} MiB (a 28 MiB array grew it 812 MiB when arrays were built)`);
  });

  it('keeps the largest legitimate body, an image at Kling\'s 10 MB limit, well under 128 MB', async () => {
    const body = JSON.stringify({ image: png(10_000_000), image_tail: 'https://cdn.example.com/frames/last.png', prompt: 'from the first frame to the last' });
    assert.ok(body.length > 12.5 * MIB);
    const before = fake.apiRequests('POST', I2V).length;
    const { response, growth } = await peakGrowth(() => call(worker, 'POST', I2V, { key: WEB_KEY, raw: body, headers: { 'content-type': 'application/json' } }));
    assert.equal(response.status, 200, response.text.slice(0, 300));
    assert.equal(fake.apiRequests('POST', I2V).length, before + 1);
    console.log(`# peak memory grew ${growth.toFixed(0)} MiB for a ${(body.length / MIB).toFixed(0)} MiB body`);
    assert.ok(growth < 115, `the peak grew ${growth.toFixed(0)} MiB`);
  });

  it('refuses two images at 10 MB each with 413 before reading them, saying to send URLs', async () => {
    const body = JSON.stringify({ image: png(10_000_000), image_tail: png(10_000_000) });
    const response = await call(worker, 'POST', I2V, { key: WEB_KEY, raw: body, headers: { 'content-type': 'application/json' } });
    assert.equal(response.status, 413, response.text.slice(0, 300));
    assert.match(response.json.message, /^body: must be at most 14680064 bytes; send large images as http\(s\) URLs/);
  });
});
