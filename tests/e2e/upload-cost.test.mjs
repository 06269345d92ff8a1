// What a 100 MB upload costs workerd, side by side with a null uploader (a Worker that only
// stores the body in the same bucket, tests/support/null-uploader.js) on the same runtime:
// the time, the CPU per MB and how much the peak resident memory of the process grew, with
// a Content-Length (piped into R2, the bytes never entering the isolate) and streamed
// without one (read through wasm, stored in 8 MiB parts). On workerd through Miniflare with
// no `wrangler dev` proxy in front (that proxy holds a declared body whole before passing
// it on, and would be what is measured). The process also runs the local R2 service, so
// both figures include R2's side, which is why the null uploader is the yardstick. The
// figures are printed; only memory, relative to the null uploader, is bounded.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { cpuMs, peakBytes, workerdPids } from '../support/processes.mjs';
import { call, ROOT, startDirectWorker } from '../support/worker.mjs';

const MIB = 1024 * 1024;
let fake;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
});

after(async () => {
  await fake?.close();
});

/** Peak resident memory (bytes) and CPU milliseconds of each workerd process. */
function readings() {
  return workerdPids().map((pid) => ({ pid, peak: peakBytes(pid), cpu: cpuMs([pid]) }));
}

/** What `send` cost workerd: the peak's growth (MiB), CPU ms per MB, and the wall time. */
async function cost(send, megabytes) {
  const before = readings();
  assert.ok(before.length > 0, 'found the workerd process');
  const started = performance.now();
  const response = await send();
  const seconds = (performance.now() - started) / 1000;
  const afterwards = readings();
  const was = (pid) => before.find((reading) => reading.pid === pid) ?? { peak: 0, cpu: 0 };
  const growth = Math.max(...afterwards.map((now) => now.peak - was(now.pid).peak)) / MIB;
  const cpu = afterwards.reduce((sum, now) => sum + now.cpu - was(now.pid).cpu, 0);
  return { response, growth, seconds, cpuMsPerMb: cpu / megabytes };
}

/** A valid MP4 of `size` bytes: a 6 s video, then a `free` box of random bytes. */
function paddedVideo(size) {
  const six = fs.readFileSync(path.join(ROOT, 'tests/media/six-seconds.mp4'));
  const file = crypto.randomBytes(size);
  six.copy(file);
  file.writeUInt32BE(size - six.length, six.length);
  file.write('free', six.length + 4);
  return file;
}

/** Uploads `file` to `target` (`kling-edge` or `null`) in a fresh workerd (a peak, once
 * reached, stays), with or without a Content-Length; what it cost. */
async function measure(target, file, streamed) {
  const worker = await startDirectWorker(baseSettings(fake), { nullUploader: true });
  try {
    await call(worker, 'GET', '/health');
    const url = `${target === 'null' ? worker.nullUrl : worker.url}/v1/assets`;
    const headers = { authorization: `Bearer ${WEB_KEY}`, 'content-type': 'video/mp4' };
    const send = async () => {
      const body = streamed
        ? new ReadableStream({
          start(controller) {
            for (let at = 0; at < file.length; at += 256 * 1024) controller.enqueue(file.subarray(at, at + 256 * 1024));
            controller.close();
          },
        })
        : file;
      const answer = await fetch(url, { method: 'POST', body, duplex: 'half', headers });
      return { status: answer.status, json: await answer.json() };
    };
    const measured = await cost(send, file.length / MIB);
    assert.equal(measured.response.status, 200, JSON.stringify(measured.response.json));
    assert.equal(measured.response.json.data.bytes, file.length);
    return measured;
  } finally {
    await worker.stop();
  }
}

const figures = ({ seconds, cpuMsPerMb, growth }) =>
  `${seconds.toFixed(1)} s, CPU ${cpuMsPerMb.toFixed(1)} ms/MB, peak memory +${growth.toFixed(0)} MiB`;

describe("a 100 MB upload's cost, beside a null uploader", () => {
  const file = paddedVideo(100 * MIB);

  for (const [what, streamed, allowance] of [['with a Content-Length', false, 16], ['streamed with no Content-Length', true, 40]]) {
    it(what, async () => {
      const edge = await measure('kling-edge', file, streamed);
      const baseline = await measure('null', file, streamed);
      console.log(`# 100 MB ${what}: kling-edge ${figures(edge)}; null uploader ${figures(baseline)}; `
        + `time ${(edge.seconds / baseline.seconds).toFixed(2)}x, CPU ${(edge.cpuMsPerMb / baseline.cpuMsPerMb).toFixed(2)}x`);
      // kling-edge holds at most a part or two more than storing the body at all takes.
      assert.ok(edge.growth < baseline.growth + allowance,
        `kling-edge's peak grew ${edge.growth.toFixed(0)} MiB, the null uploader's ${baseline.growth.toFixed(0)} MiB`);
    });
  }
});
