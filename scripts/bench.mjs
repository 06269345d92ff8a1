#!/usr/bin/env node
// `make bench`: measures, and prints, what the worker costs. Nothing here passes or fails.
//   - the release wasm's size, raw and gzipped (what Cloudflare's size limit counts);
//   - latency: the same query sent straight to the (fake) Kling and through the worker,
//     and the difference the worker adds, for a running task (the worker asks Kling and
//     updates KV) and a finished one (answered from KV, Kling not called); also a rejected
//     create (validation only);
//   - throughput: requests per second through the worker at a fixed concurrency.
// The worker runs in workerd under `wrangler dev` (request logging off) with local KV, on
// this machine, next to the load generator and the fake Kling. wrangler's dev proxy adds
// a floor of its own to every request, measured with /health and with a static asset and
// subtracted below; read the figures as relative, not as production.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

import { signKlingJwt, startFakeKling } from '../tests/support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY } from '../tests/support/settings.mjs';
import { call, ROOT, startWorker } from '../tests/support/worker.mjs';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 400);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const API = '/v1/audio/video-to-audio';

const klingJwt = () => signKlingJwt(ACCESS_KEY, SECRET_KEY);

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function latencies(url, init) {
  const times = [];
  for (let i = 0; i < SAMPLES + 20; i += 1) {
    const started = process.hrtime.bigint();
    const response = await fetch(url, init);
    await response.arrayBuffer();
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (i >= 20) times.push(ms); // the first ones warm up connections and the isolate
  }
  times.sort((a, b) => a - b);
  return { p50: percentile(times, 50), p95: percentile(times, 95), p99: percentile(times, 99) };
}

async function throughput(url, init) {
  const deadline = Date.now() + SECONDS * 1000;
  let done = 0;
  let failed = 0;
  const worker = async () => {
    while (Date.now() < deadline) {
      const response = await fetch(url, init);
      await response.arrayBuffer();
      if (response.ok) done += 1; else failed += 1;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return { rps: done / SECONDS, failed };
}

const fmt = (ms) => `${ms.toFixed(2)} ms`;

const wasmPath = path.join(ROOT, 'build/index_bg.wasm');
const wasm = fs.readFileSync(wasmPath);
// GNU gzip where there is one (what people compare), else Node's zlib (a little larger).
let gzipped;
try {
  gzipped = execFileSync('gzip', ['-9', '-c', wasmPath], { maxBuffer: 64 << 20 }).length;
} catch {
  gzipped = zlib.gzipSync(wasm, { level: 9 }).length;
}
console.log('kling-edge benchmark');
console.log(`  machine: ${os.cpus().length} × ${os.cpus()[0].model.trim()}, node ${process.version}`);
console.log(`  wasm (build/index_bg.wasm): ${(wasm.length / 1024).toFixed(1)} KiB raw, ${(gzipped / 1024).toFixed(1)} KiB gzip -9`);

const fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
const worker = await startWorker(baseSettings(fake), { logLevel: 'warn' });
try {
  const running = (await call(worker, 'POST', API, { key: WEB_KEY, body: { video_url: 'https://cdn.example.com/a.mp4' } })).json.data.task_id;
  const finished = (await call(worker, 'POST', API, { key: WEB_KEY, body: { video_url: 'https://cdn.example.com/b.mp4' } })).json.data.task_id;
  await fake.advance(finished, 'succeed'); // the callback stores it in KV, final

  const toKling = { headers: { authorization: `Bearer ${klingJwt()}` } };
  const toWorker = { headers: { authorization: `Bearer ${WEB_KEY}` } };
  const rejected = { ...toWorker, method: 'POST', headers: { ...toWorker.headers, 'content-type': 'application/json' }, body: '{"video_ulr":"x"}' };

  const direct = await latencies(`${fake.url}${API}/${running}`, toKling);
  const viaRunning = await latencies(`${worker.url}${API}/${running}`, toWorker);
  const viaFinished = await latencies(`${worker.url}${API}/${finished}`, toWorker);
  const viaRejected = await latencies(`${worker.url}${API}`, rejected);
  const health = await latencies(`${worker.url}/health`, {});
  const asset = await latencies(`${worker.url}/app.css`, {});

  console.log(`\nLatency, ${SAMPLES} sequential requests each (p50 / p95 / p99):`);
  const row = (name, l) => console.log(`  ${name.padEnd(50)} ${fmt(l.p50).padStart(9)} ${fmt(l.p95).padStart(9)} ${fmt(l.p99).padStart(9)}`);
  row('static asset (wrangler dev floor, no worker)', asset);
  row('GET /health (floor + a worker invocation)', health);
  row('query straight to Kling (the fake)', direct);
  row('query through the worker, running task', viaRunning);
  row('query through the worker, finished (KV only)', viaFinished);
  row('create refused by validation', viaRejected);
  const added = viaRunning.p50 - direct.p50;
  const own = viaRunning.p50 - health.p50 - direct.p50;
  console.log(`\n  added over a direct call (p50): ${fmt(added)} in all, of which ${fmt(health.p50)} is the`);
  console.log(`  local runtime's floor and ${fmt(own)} the worker's own work (auth, KV read and write,`);
  console.log(`  the JWT, the call to Kling); a finished task costs ${fmt(viaFinished.p50 - health.p50)} over the floor`);
  console.log('  and never reaches Kling.');

  console.log(`\nThroughput, ${CONCURRENCY} concurrent clients for ${SECONDS} s:`);
  for (const [name, url, init] of [
    ['finished task from KV', `${worker.url}${API}/${finished}`, toWorker],
    ['running task (Kling + KV)', `${worker.url}${API}/${running}`, toWorker],
    ['straight to the fake Kling', `${fake.url}${API}/${running}`, toKling],
  ]) {
    const { rps, failed } = await throughput(url, init);
    console.log(`  ${name.padEnd(30)} ${rps.toFixed(0).padStart(6)} req/s${failed ? ` (${failed} failed)` : ''}`);
  }
} finally {
  await worker.stop();
  await fake.close();
}
