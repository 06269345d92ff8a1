#!/usr/bin/env node
// `make bench`: measures, and prints, what the worker costs. Nothing here passes or fails.
//
// The worker runs the way production runs it: in workerd, through Miniflare's API, each
// Worker on its own socket (no `wrangler dev` proxy, which caps every Worker near 300
// requests per second here), with local KV, Durable Objects and rate limiters. Beside it, in
// the same workerd and measured in the same run against the same upstream:
//   - a null Worker, which forwards every request and does nothing else: throughput is
//     given as a ratio against it;
//   - a reference Worker (scripts/bench/reference-worker.js), the least a developer would
//     write by hand (a key check, a video-to-audio body validated, a cached Kling JWT signed
//     with Web Crypto, a forward): the runtime's CPU time per request is given as a ratio
//     against it.
// The CPU time is workerd's own (user + system, from /proc) over each wrk run, divided by
// the requests served; it includes the local services workerd runs for the bindings (KV,
// Durable Objects, rate limiters). Ratios, because these machines are shared and noisy.
//
// The upstream is nginx on loopback, in one of three modes chosen per phase by a file:
//   - setup: it proxies to the strict fake Kling, which keeps tasks and calls back, so the
//     worker's tasks (a running one, a finished one, a whole lifecycle) are real;
//   - fast: it answers at once with a canned Kling answer (a fresh task id per create);
//   - slow: it proxies to a server that answers the same after 150 ms, a distant Kling.
// Load comes from wrk, 16 connections.
//
// Two configurations are measured, one after the other:
//   - "as configured": the bindings of wrangler.toml as Miniflare provides them locally:
//     rate limiters (a separate service inside workerd here) and storage on disk;
//   - "without local service overheads": no rate limiter bindings, and storage in memory
//     (this Miniflare always keeps it in files, so they go to a tmpfs, /dev/shm), to
//     separate the worker's own cost from the local stand-ins for Cloudflare's services.
//
// Printed: throughput and latency of a create, a query of a running task and a query of a
// finished task, through the null Worker and through kling-edge, against both upstreams;
// KV writes and coordinator calls over one task's life; the wasm size; and delivery: how
// long 1,000 tasks finishing at once take to reach their webhooks, from one tenant and from
// 16, as a multiple of the time their callbacks took (BENCH_DELIVERY_TASKS for another count),
// and the webhook lag of one tenant under a steady 50 creates and 150 callbacks a second
// (BENCH_STEADY_SECONDS, default 120); and what an old tenant costs: CPU per task delivered
// and time to the last webhook in a coordinator holding 100,000 finished tasks, against one
// holding 100 (BENCH_SCALE_TASKS, default 300, finishing at once).
//   And what the line at the edge adds to a create that finds a free slot (line on against
//   KLING_MAX_CONCURRENCY 0, BENCH_GATE_CREATES creates, default 400); the other phases run
//   with the line off (requests: the zero-latency upstream's tasks never end) or an account
//   that fits every task (delivery, scale).
//   BENCH_PHASES (default requests,gate,keys,delivery,scale) picks what to measure; `keys`
//   compares creates with an Idempotency-Key and without (BENCH_GATE_CREATES each).
//   BENCH_SECONDS (default 5) per figure, BENCH_CONNECTIONS (default 16).
//   BENCH_PROFILE=1 (`make bench PROFILE=1`) also samples kling-edge's isolate with the
//   V8 profiler (through Miniflare's inspector) during each zero-latency case of the "as
//   configured" run, with the module that keeps its function names, and prints where the
//   time goes: the share of samples in each function (self) and under each of ours (total).

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import zlib from 'node:zlib';

import { convertV4MiniflareOptions, Miniflare } from 'miniflare';

import { startFakeKling } from '../tests/support/fake-kling.mjs';
import { Receiver } from '../tests/support/receiver.mjs';
import { ACCESS_KEY, clientWebhookSecret, SECRET_KEY, WEB_KEY, webhookSecret } from '../tests/support/settings.mjs';
import { cpuMs, workerdPids } from '../tests/support/processes.mjs';
import { freePort, ROOT } from '../tests/support/worker.mjs';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const SLOW_MS = 150;
const PROFILE = process.env.BENCH_PROFILE === '1';
const API = '/v1/audio/video-to-audio';
const COMPATIBILITY_DATE = fs.readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8').match(/^compatibility_date = "([^"]+)"/m)[1];
const WORK = fs.mkdtempSync(path.join(os.tmpdir(), 'kling-edge-bench-'));
const PROXY_WEBHOOK_SECRET = webhookSecret('bench-proxy-webhook-secret-32byte');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const children = [];
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
  fs.rmSync(WORK, { recursive: true, force: true });
});

// --- the wasm --------------------------------------------------------------------------

const wasmPath = path.join(ROOT, 'build/index_bg.wasm');
const wasm = fs.readFileSync(wasmPath);
let gzipped;
try {
  gzipped = execFileSync('gzip', ['-9', '-c', wasmPath], { maxBuffer: 64 << 20 }).length;
} catch {
  gzipped = zlib.gzipSync(wasm, { level: 9 }).length;
}

// --- the upstreams ---------------------------------------------------------------------

const fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });

/** Kling's answers, canned: a create gets a fresh task id, a query a running task. */
const cannedCreate = (taskId) => JSON.stringify({ code: 0, message: 'SUCCEED', request_id: `r${taskId}`, data: { task_id: taskId, task_status: 'submitted', task_info: { external_task_id: '' }, created_at: 1, updated_at: 1 } });
const cannedQuery = JSON.stringify({ code: 0, message: 'SUCCEED', request_id: 'r', data: { task_id: 'canned', task_status: 'processing', task_status_msg: '', created_at: 1, updated_at: 2 } });

let slowCount = 0;
const slow = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => setTimeout(() => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(req.method === 'POST' ? cannedCreate(`slow${Date.now()}${(slowCount += 1)}`) : cannedQuery);
  }, SLOW_MS));
});
await new Promise((resolve) => slow.listen(0, '127.0.0.1', resolve));

// nginx's workers run as another user: they must be able to see the mode files.
const modeDir = path.join(WORK, 'mode');
fs.mkdirSync(modeDir);
fs.chmodSync(WORK, 0o755);
fs.chmodSync(modeDir, 0o755);
const setMode = (mode) => {
  for (const name of ['fast', 'slow']) fs.rmSync(path.join(modeDir, name), { force: true });
  if (mode !== 'setup') fs.writeFileSync(path.join(modeDir, mode), '');
};
const nginxPort = await freePort();
const nginxConf = path.join(WORK, 'nginx.conf');
const nginxString = (body) => `'${body.replace(/'/g, "\\'")}'`;
fs.writeFileSync(nginxConf, `
worker_processes 1;
daemon off;
pid ${WORK}/nginx.pid;
error_log ${WORK}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${WORK}/body;
  proxy_temp_path ${WORK}/proxy;
  fastcgi_temp_path ${WORK}/fastcgi;
  uwsgi_temp_path ${WORK}/uwsgi;
  scgi_temp_path ${WORK}/scgi;
  map $request_method $canned {
    POST ${nginxString(cannedCreate('n$request_id'))};
    default ${nginxString(cannedQuery)};
  }
  upstream fake { server 127.0.0.1:${new URL(fake.url).port}; keepalive 64; }
  upstream slow { server 127.0.0.1:${slow.address().port}; keepalive 64; }
  server {
    listen 127.0.0.1:${nginxPort};
    default_type application/json;
    # The videos creates point at (the worker measures each before its create): real files,
    # Range honoured, whatever the mode.
    location /media/ { alias ${ROOT}/tests/media/; default_type video/mp4; }
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      if (-f ${modeDir}/fast) { return 200 $canned; }
      if (-f ${modeDir}/slow) { proxy_pass http://slow; }
      proxy_pass http://fake;
    }
  }
}
`);
const nginx = spawn('nginx', ['-c', nginxConf, '-p', WORK], { stdio: ['ignore', 'inherit', 'inherit'] });
children.push(nginx);
const upstream = `http://127.0.0.1:${nginxPort}`;
const VIDEO = `${upstream}/media/twelve-seconds-fast-start.mp4`;
for (let i = 0; i < 100; i += 1) {
  try { await fetch(`${upstream}/health`); break; } catch { await sleep(50); }
}

// --- load ------------------------------------------------------------------------------

const createScript = path.join(WORK, 'create.lua');
fs.writeFileSync(createScript, `wrk.method = "POST"
wrk.body = '{"video_url":"${VIDEO}","sound_effect_prompt":"waves"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${WEB_KEY}"
`);
// Each create names a video the worker has not seen, so each is measured (a ranged read).
const newVideoScript = path.join(WORK, 'new-video.lua');
fs.writeFileSync(newVideoScript, `wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${WEB_KEY}"
counter = 0
request = function()
  counter = counter + 1
  local url = "${VIDEO}?n=" .. math.random(1, 1000000000) .. "-" .. counter
  return wrk.format(nil, nil, nil, '{"video_url":"' .. url .. '","sound_effect_prompt":"waves"}')
end
`);
const getScript = path.join(WORK, 'get.lua');
fs.writeFileSync(getScript, `wrk.headers["Authorization"] = "Bearer ${WEB_KEY}"\n`);

/** Runs wrk (asynchronously: Miniflare serves some of the runtime's calls from this process). */
async function wrk(url, script, seconds = SECONDS) {
  const child = spawn('wrk', ['-t', '2', '-c', String(CONNECTIONS), '-d', `${seconds}s`, '--latency', '-s', script, url]);
  let out = '';
  child.stdout.on('data', (chunk) => { out += chunk; });
  child.stderr.on('data', (chunk) => { out += chunk; });
  await new Promise((resolve) => child.on('exit', resolve));
  const rps = Number(out.match(/Requests\/sec:\s+([\d.]+)/)?.[1] ?? 0);
  const unit = (value, suffix) => Number(value) * ({ us: 0.001, ms: 1, s: 1000 }[suffix]);
  const p50 = out.match(/50%\s+([\d.]+)(us|ms|s)/);
  const non2xx = Number(out.match(/Non-2xx or 3xx responses: (\d+)/)?.[1] ?? 0);
  const requests = Number(out.match(/(\d+) requests in/)?.[1] ?? 0);
  return { rps, p50: p50 ? unit(p50[1], p50[2]) : NaN, non2xx, requests };
}

// --- the runtime's CPU time --------------------------------------------------------------

/** wrk against `url`, with workerd's CPU time per request served. */
async function measured(pids, url, script) {
  const before = cpuMs(pids);
  const run = await wrk(url, script);
  return { ...run, cpuPerRequest: run.requests ? (cpuMs(pids) - before) / run.requests : NaN };
}

// --- where the time goes (BENCH_PROFILE=1) ---------------------------------------------

/** Samples the isolate behind `inspector` (a DevTools websocket URL) while `during` runs. */
async function profiled(inspector, during) {
  const socket = new WebSocket(inspector);
  await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = reject; });
  let nextId = 0;
  const pending = new Map();
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.id !== undefined && pending.has(message.id)) {
      pending.get(message.id)(message.result);
      pending.delete(message.id);
    }
  };
  const send = (method, params = {}) => new Promise((resolve) => {
    nextId += 1;
    pending.set(nextId, resolve);
    socket.send(JSON.stringify({ id: nextId, method, params }));
  });
  await send('Profiler.enable');
  await send('Profiler.setSamplingInterval', { interval: 200 });
  await send('Profiler.start');
  const outcome = await during();
  const { profile } = await send('Profiler.stop');
  socket.close();
  return { outcome, profile };
}

/** The share of samples each function takes itself, and under each of kling-edge's. */
function whereTheTimeGoes(profile) {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const name = (node) => {
    const { functionName, url } = node.callFrame;
    const clean = (functionName || `(anonymous ${url.split('/').pop() || 'js'})`).replace(/::h[0-9a-f]{16}$/, '');
    return clean.length > 110 ? `${clean.slice(0, 107)}...` : clean;
  };
  const self = new Map();
  const total = new Map();
  let all = 0;
  for (const [i, sample] of profile.samples.entries()) {
    const weight = profile.timeDeltas[i] ?? 0;
    const node = nodes.get(sample);
    if (!node || node.callFrame.functionName === '(idle)') continue;
    all += weight;
    self.set(name(node), (self.get(name(node)) ?? 0) + weight);
    const seen = new Set();
    for (let at = node; at; at = nodes.get(parent.get(at.id))) {
      const key = name(at);
      if (!seen.has(key) && key.includes('kling_edge')) total.set(key, (total.get(key) ?? 0) + weight);
      seen.add(key);
    }
  }
  const top = (map, n) => [...map].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([key, weight]) => `      ${(100 * weight / all).toFixed(1).padStart(5)} %  ${key}`).join('\n');
  const busy = `    kling-edge's isolate was busy for ${(all / 1000).toFixed(0)} ms of samples (idle excluded)\n`;
  return `${busy}    self (the function itself):\n${top(self, 14)}\n    total (kling-edge's functions, with what they call):\n${top(total, 14)}`;
}

// --- one configuration, measured -------------------------------------------------------

/**
 * Starts kling-edge and the null Worker in one workerd, prepares a running and a finished
 * task (and, if asked, counts one task's whole life), and measures every case against both
 * upstreams.
 */
async function measure({ limiters, persisted, countLife, profile = false }) {
  const [edgePort, nullPort, referencePort] = [await freePort(), await freePort(), await freePort()];
  const inspectorPort = profile ? await freePort() : undefined;
  // Profiled runs use the module that keeps its function names.
  const wasmModule = profile
    ? { type: 'CompiledWasm', path: path.join(ROOT, 'build/index_bg.wasm'), contents: fs.readFileSync(path.join(ROOT, 'target/wasm-names/index_bg.wasm')) }
    : { type: 'CompiledWasm', path: path.join(ROOT, 'build/index_bg.wasm') };
  const logs = [];
  const state = fs.mkdtempSync(persisted ? path.join(WORK, 'state-') : '/dev/shm/kling-edge-bench-');
  const receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  const limiter = (id) => ({ namespace_id: id, simple: { limit: 1_000_000_000, period: 60 } });
  const mf = new Miniflare(convertV4MiniflareOptions({
    resourcePersistencePath: state,
    ...(profile ? { inspectorPort } : {}),
    handleStructuredLogs: (log) => logs.push(String(log.message ?? '')),
    workers: [
      {
        name: 'kling-edge',
        modulesRoot: path.join(ROOT, 'build'),
        modules: [
          { type: 'ESModule', path: path.join(ROOT, 'build/index.js') },
          wasmModule,
        ],
        compatibilityDate: COMPATIBILITY_DATE,
        bindings: {
          KLING_ACCESS_KEY: ACCESS_KEY,
          KLING_SECRET_KEY: SECRET_KEY,
          KLING_API_BASE: upstream,
          PROXY_API_KEYS: `web:${WEB_KEY}`,
          PROXY_WEBHOOK_SECRET,
          ALLOW_PRIVATE_URLS: 'true',
          PUBLIC_BASE_URL: `http://127.0.0.1:${edgePort}`,
          // The line off: the zero-latency upstream's tasks never end, so they would fill
          // any account; the gate phase measures the line on against it.
          KLING_MAX_CONCURRENCY: '0',
        },
        kvNamespaces: ['TASKS'],
        r2Buckets: ['RESULTS'],
        durableObjects: { COORDINATOR: { className: 'TaskCoordinator', useSQLite: true }, GATE: { className: 'AccountGate', useSQLite: true } },
        ...(limiters ? { ratelimits: { REQUEST_LIMITER: limiter('7101'), CREATE_LIMITER: limiter('7102') } } : {}),
        unsafeDirectSockets: [{ host: '127.0.0.1', port: edgePort }],
      },
      {
        name: 'null-forwarder',
        modules: true,
        script: `export default {
          async fetch(request, env) {
            const url = new URL(request.url);
            return fetch(new Request(env.UPSTREAM + url.pathname + url.search, request));
          },
        };`,
        compatibilityDate: COMPATIBILITY_DATE,
        bindings: { UPSTREAM: upstream },
        unsafeDirectSockets: [{ host: '127.0.0.1', port: nullPort }],
      },
      {
        name: 'reference',
        modules: true,
        scriptPath: path.join(ROOT, 'scripts/bench/reference-worker.js'),
        compatibilityDate: COMPATIBILITY_DATE,
        bindings: { UPSTREAM: upstream, CLIENT_KEY: WEB_KEY, KLING_ACCESS_KEY: ACCESS_KEY, KLING_SECRET_KEY: SECRET_KEY },
        unsafeDirectSockets: [{ host: '127.0.0.1', port: referencePort }],
      },
    ],
  }));
  await mf.ready;
  const edge = `http://127.0.0.1:${edgePort}`;
  const nullWorker = `http://127.0.0.1:${nullPort}`;
  const referenceWorker = `http://127.0.0.1:${referencePort}`;
  const pids = workerdPids();
  if (pids.length === 0) throw new Error('no workerd process found to read CPU time from');
  const auth = { authorization: `Bearer ${WEB_KEY}`, 'content-type': 'application/json' };
  const post = (body) => fetch(`${edge}${API}`, { method: 'POST', headers: auth, body: JSON.stringify(body) }).then((r) => r.json());
  const get = (id) => fetch(`${edge}${API}/${id}`, { headers: auth }).then((r) => r.json());
  const kvWrites = () => logs.filter((line) => line.includes('"event":"kv_write"')).length;
  /** Coordinator calls made while serving requests, from the worker's own log lines. */
  const coordinatorCalls = () => logs.reduce((sum, line) => sum + Number(line.match(/"coordinator":(\d+)/)?.[1] ?? 0), 0);
  async function until(check, what) {
    for (let i = 0; i < 300; i += 1) {
      if (await check()) return;
      await sleep(100);
    }
    throw new Error(`timed out waiting for ${what}`);
  }
  const servedAtTheEdge = (taskId) => until(async () => {
    const before = coordinatorCalls();
    await get(taskId);
    await sleep(20);
    return coordinatorCalls() === before;
  }, 'the edge copy');

  setMode('setup');
  let life;
  if (countLife) {
    // One task's life: a create with a webhook, three callbacks, ten queries along the way.
    const [kvBefore, coordinatorBefore, klingBefore] = [kvWrites(), coordinatorCalls(), fake.apiRequests().length];
    const taskId = (await post({ video_url: `${VIDEO}?life`, callback_url: `${receiver.url}/life` })).data.task_id;
    await sleep(100);
    await fake.advance(taskId, 'submitted');
    for (let i = 0; i < 3; i += 1) await get(taskId);
    await fake.advance(taskId, 'processing');
    for (let i = 0; i < 3; i += 1) await get(taskId);
    await fake.advance(taskId, 'succeed');
    await until(() => receiver.at('/life').length > 0, 'the webhook');
    await servedAtTheEdge(taskId);
    for (let i = 0; i < 3; i += 1) await get(taskId);
    await sleep(500);
    life = {
      kvWrites: kvWrites() - kvBefore,
      // (A request's log line counts the calls it leaves for after its answer: the create's
      // record, a callback's prompt step.)
      coordinatorCalls: coordinatorCalls() - coordinatorBefore,
      klingCalls: fake.apiRequests().length - klingBefore,
      webhooks: receiver.at('/life').length,
      copies: logs.filter((line) => line.includes('"event":"copy"')).reduce((n, line) => n + (line.match(/Copied/g) ?? []).length, 0),
    };
  }
  const running = (await post({ video_url: `${VIDEO}?running` })).data.task_id;
  const finished = (await post({ video_url: `${VIDEO}?finished` })).data.task_id;
  await sleep(100);
  await fake.advance(finished, 'succeed');
  await servedAtTheEdge(finished);

  const cases = [
    ['create', API, createScript, API],
    ['create, unseen video', API, newVideoScript, API],
    ['query, running task', `${API}/${running}`, getScript, `${API}/${running}`],
    ['query, finished task', `${API}/${finished}`, getScript, `${API}/${finished}`],
  ];
  const results = {};
  const profiles = {};
  let inspector;
  if (profile) {
    const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json();
    inspector = targets.find((target) => /[/:]kling-edge$/.test(target.webSocketDebuggerUrl))?.webSocketDebuggerUrl;
    if (!inspector) throw new Error('kling-edge\'s isolate is not among the inspector\'s targets');
  }
  for (const mode of ['fast', 'slow']) {
    setMode(mode);
    for (const [name, edgePath, script, nullPath] of cases) {
      await wrk(`${edge}${edgePath}`, script, 2); // warm up
      await wrk(`${referenceWorker}${nullPath}`, script, 1);
      let ours;
      if (inspector && mode === 'fast') {
        const run = await profiled(inspector, () => measured(pids, `${edge}${edgePath}`, script));
        ours = run.outcome;
        profiles[name] = whereTheTimeGoes(run.profile);
      } else {
        ours = await measured(pids, `${edge}${edgePath}`, script);
      }
      const theirs = await measured(pids, `${nullWorker}${nullPath}`, script);
      const reference = await measured(pids, `${referenceWorker}${nullPath}`, script);
      results[`${mode} ${name}`] = { ours, theirs, reference };
    }
  }
  setMode('setup');
  await mf.dispose();
  await receiver.close();
  if (!persisted) fs.rmSync(state, { recursive: true, force: true });
  return { results, cases: cases.map(([name]) => name), life, profiles };
}

// --- delivery: many tasks finishing at once ----------------------------------------------

/** Runs `work` on every item, `width` at a time. */
async function pool(items, width, work) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await work(items[next++]);
  }));
}

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};

/**
 * kling-edge alone in workerd for the delivery phases, talking to the fake Kling directly,
 * with a receiver that verifies every webhook: storage in memory, no rate limiters, the
 * video probe off.
 */
async function startDeliveryWorker({ state = fs.mkdtempSync('/dev/shm/kling-edge-bench-delivery-'), keepState = false, profile = false, settings = {} } = {}) {
  const port = await freePort();
  const inspectorPort = profile ? await freePort() : undefined;
  const receiver = await new Receiver(clientWebhookSecret(PROXY_WEBHOOK_SECRET, 'web')).listen();
  const edge = `http://127.0.0.1:${port}`;
  const logs = [];
  const mf = new Miniflare(convertV4MiniflareOptions({
    resourcePersistencePath: state,
    handleStructuredLogs: (log) => { if (logs.length < 100_000) logs.push(String(log.message ?? '')); },
    ...(profile ? { inspectorPort } : {}),
    workers: [{
      name: 'kling-edge',
      modulesRoot: path.join(ROOT, 'build'),
      modules: [
        { type: 'ESModule', path: path.join(ROOT, 'build/index.js') },
        profile
          ? { type: 'CompiledWasm', path: path.join(ROOT, 'build/index_bg.wasm'), contents: fs.readFileSync(path.join(ROOT, 'target/wasm-names/index_bg.wasm')) }
          : { type: 'CompiledWasm', path: path.join(ROOT, 'build/index_bg.wasm') },
      ],
      compatibilityDate: COMPATIBILITY_DATE,
      bindings: {
        KLING_ACCESS_KEY: ACCESS_KEY,
        KLING_SECRET_KEY: SECRET_KEY,
        KLING_API_BASE: fake.url,
        PROXY_API_KEYS: `web:${WEB_KEY}`,
        PROXY_WEBHOOK_SECRET,
        PROXY_TOKEN_SECRET: 'bench-browser-token-secret-0123456789abcdef',
        ALLOW_PRIVATE_URLS: 'true',
        VIDEO_PROBE: 'off',
        PUBLIC_BASE_URL: edge,
        // The delivery phases' 1,000 tasks run at once: the account is taken to run them all.
        KLING_MAX_CONCURRENCY: '10000',
        QUEUE_MAX_PER_TENANT: '10000',
        ...settings,
      },
      kvNamespaces: ['TASKS'],
      r2Buckets: ['RESULTS'],
      durableObjects: { COORDINATOR: { className: 'TaskCoordinator', useSQLite: true }, GATE: { className: 'AccountGate', useSQLite: true } },
      unsafeDirectSockets: [{ host: '127.0.0.1', port }],
    }],
  }));
  await mf.ready;
  const headers = (key) => ({ authorization: `Bearer ${key}`, 'content-type': 'application/json' });
  const hook = `${receiver.url}/delivery`;
  let inspector;
  if (profile) {
    const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json();
    inspector = targets.find((target) => /[/:]kling-edge$/.test(target.webSocketDebuggerUrl))?.webSocketDebuggerUrl;
  }
  return {
    edge,
    inspector,
    receiver,
    hook,
    headers,
    async create(key, withHook, idempotencyKey) {
      const body = { video_url: `${fake.url}/samples/sample-video.mp4`, ...(withHook ? { callback_url: hook } : {}) };
      const sent = { ...headers(key), ...(idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}) };
      const created = await (await fetch(`${edge}${API}`, { method: 'POST', headers: sent, body: JSON.stringify(body) })).json();
      if (created.code !== 0) throw new Error(`create refused: ${JSON.stringify(created)}`);
      return created.data.task_id;
    },
    logs,
    delivered: () => receiver.deliveries.filter((d) => d.status === 200),
    async close() {
      await mf.dispose();
      await receiver.close();
      if (!keepState) fs.rmSync(state, { recursive: true, force: true });
    },
  };
}

/**
 * `count` tasks of `tenants` tenants (one server key, or browser users of one app, each its
 * own tenant and coordinator), each with a webhook, all finishing at once: Kling's `succeed`
 * callbacks are sent as fast as the worker takes them (32 at a time), and the coordinators
 * copy each task's three result files into R2, post its webhook and write its edge copy.
 */
async function deliveryPhase(tenants, count) {
  const w = await startDeliveryWorker({ profile: PROFILE });
  let keys = [WEB_KEY];
  if (tenants > 1) {
    keys = await Promise.all(Array.from({ length: tenants }, async (_, i) => {
      const minted = await fetch(`${w.edge}/v1/tokens`, { method: 'POST', headers: w.headers(WEB_KEY), body: JSON.stringify({ sub: `bench-${i}`, callback_url: w.hook }) });
      return (await minted.json()).data.token;
    }));
  }
  const ids = [];
  await pool(Array.from({ length: count }, (_, i) => i), 16, async (i) => {
    ids.push(await w.create(keys[i % keys.length], tenants === 1));
  });
  await sleep(2_000); // the creates' records land after their answers
  const sentAt = new Map();
  const pids = workerdPids();
  const cpuBefore = cpuMs(pids);
  const started = Date.now();
  let callbacksMs;
  const finishing = async () => {
    await pool(ids, 32, async (id) => {
      sentAt.set(id, Date.now());
      const answer = await fake.advance(id, 'succeed');
      if (answer.status !== 200) throw new Error(`callback answered ${answer.status}: ${answer.body}`);
    });
    callbacksMs = Date.now() - started;
    const deadline = Date.now() + 20 * 60_000;
    while (w.delivered().length < count && Date.now() < deadline) await sleep(100);
  };
  let profile = w.inspector ? whereTheTimeGoes((await profiled(w.inspector, finishing)).profile) : (await finishing(), undefined);
  const cpuPerTask = (cpuMs(pids) - cpuBefore) / count;
  if (profile) profile = `    the runtime's CPU meanwhile: ${(cpuPerTask * count).toFixed(0)} ms (its local R2 and KV included)\n${profile}`;
  const done = w.delivered();
  const lags = done.map((d) => d.receivedAt - (sentAt.get(d.json.task_id) ?? started));
  const lastMs = Math.max(...done.map((d) => d.receivedAt)) - started;
  await w.close();
  return { tenants, count, delivered: done.length, callbacksMs, lastMs, cpuPerTask, profile, p50: percentile(lags, 50), p99: percentile(lags, 99) };
}

/**
 * One tenant under a steady load for `seconds`: 50 creates a second, each task called back
 * three times (submitted, processing, succeed, 0.5 s apart: 150 callbacks a second), each
 * with a webhook. The lag from the `succeed` callback to its webhook, p50 and p99, per
 * 30-second window of callbacks, shows whether it grows.
 */
async function steadyPhase(seconds) {
  const w = await startDeliveryWorker();
  const sentAt = new Map();
  const inFlight = [];
  const started = Date.now();
  let creates = 0;
  while (Date.now() - started < seconds * 1000) {
    const due = Math.floor(((Date.now() - started) / 1000) * 50);
    for (; creates < due; creates += 1) {
      inFlight.push((async () => {
        const id = await w.create(WEB_KEY, true);
        await sleep(500);
        await fake.advance(id, 'submitted');
        await sleep(500);
        await fake.advance(id, 'processing');
        await sleep(500);
        sentAt.set(id, Date.now());
        await fake.advance(id, 'succeed');
      })());
    }
    await sleep(20);
  }
  await Promise.all(inFlight);
  const deadline = Date.now() + 10 * 60_000;
  while (w.delivered().length < sentAt.size && Date.now() < deadline) await sleep(200);
  const windows = [];
  for (const d of w.delivered()) {
    const at = sentAt.get(d.json.task_id);
    if (at === undefined) continue;
    const window = Math.floor((at - started) / 30_000);
    (windows[window] ??= []).push(d.receivedAt - at);
  }
  const delivered = w.delivered().length;
  await w.close();
  return { seconds, tasks: sentAt.size, delivered, windows: windows.map((lags) => ({ p50: percentile(lags, 50), p99: percentile(lags, 99) })) };
}

/**
 * What an old tenant's coordinator costs: one tenant holding `settled` finished tasks (up to
 * 23 days old, inside the retention, as a busy tenant keeps them) delivers `count` more
 * finishing at once. The settled
 * rows are written into the object's SQLite file between two runs of the runtime (copies of
 * the tenant's first task, finished), so the table is as big as 100,000 creates make it.
 * Measures the runtime's CPU time and the wall time from the first callback to the last
 * webhook.
 */
async function scalePhase(settled, count) {
  const state = fs.mkdtempSync('/dev/shm/kling-edge-bench-scale-');
  let w = await startDeliveryWorker({ state, keepState: true });
  await w.create(WEB_KEY, false);
  await sleep(1_000);
  await w.close();
  const files = fs.readdirSync(state, { recursive: true }).filter((f) => String(f).endsWith('.sqlite'));
  let seeded = 0;
  for (const file of files) {
    const db = new DatabaseSync(path.join(state, String(file)));
    const hasTasks = db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'tasks'").get().n;
    if (hasTasks) {
      db.prepare(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO tasks (task_id, endpoint, nonce, external_id, created_at, due_at, running, record, poll_at, step_at)
        SELECT 'settled-' || i, endpoint, nonce || '-' || i, NULL, created_at - i * 20000, NULL, 0,
               json_set(record, '$.task_id', 'settled-' || i, '$.data.task_id', 'settled-' || i,
                        '$.data.task_status', 'succeed', '$.next_poll_at', NULL),
               NULL, NULL
        FROM n, (SELECT * FROM tasks LIMIT 1)`).run(settled);
      seeded = db.prepare('SELECT COUNT(*) AS n FROM tasks').get().n;
    }
    db.close();
  }
  // The settled tasks, and the first one, which made the object.
  if (seeded !== settled + 1) throw new Error(`seeded ${seeded - 1} of ${settled} tasks`);
  w = await startDeliveryWorker({ state, keepState: true });
  const ids = [];
  await pool(Array.from({ length: count }, (_, i) => i), 16, async () => { ids.push(await w.create(WEB_KEY, true)); });
  await sleep(2_000);
  const pids = workerdPids();
  const cpuBefore = cpuMs(pids);
  const started = Date.now();
  await pool(ids, 32, async (id) => {
    const answer = await fake.advance(id, 'succeed');
    if (answer.status !== 200) throw new Error(`callback answered ${answer.status}: ${answer.body}`);
  });
  const deadline = Date.now() + 10 * 60_000;
  while (w.delivered().length < count && Date.now() < deadline) await sleep(100);
  const lastMs = Math.max(...w.delivered().map((d) => d.receivedAt)) - started;
  const cpu = cpuMs(pids) - cpuBefore;
  const delivered = w.delivered().length;
  await w.close();
  // The coordinator worked in the seeded table: the new tasks are in it beside the old ones.
  const tables = files.map((file) => new DatabaseSync(path.join(state, String(file))));
  const rows = tables.map((db) => {
    const has = db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'tasks'").get().n;
    return has ? db.prepare('SELECT COUNT(*) AS n FROM tasks').get().n : 0;
  }).reduce((a, b) => a + b, 0);
  tables.forEach((db) => db.close());
  fs.rmSync(state, { recursive: true, force: true });
  if (rows !== seeded + count) throw new Error(`the seeded table holds ${rows} tasks, not ${seeded + count}`);
  return { settled, count, delivered, lastMs, cpuPerTask: cpu / count };
}

/**
 * What the line costs a create that finds a free slot: `count` creates, 8 at a time, each
 * task finished by Kling's callback as soon as it is answered (so the account always has a
 * free slot), with the line on (KLING_MAX_CONCURRENCY 1000: the gate admits the create and
 * is told when its task ends) and off (0), alternating twice. The create's latency as the
 * client sees it, the creates per second, and the runtime's CPU per create (the callback
 * and, with the line on, the slot's release included).
 */
async function gatePhase(count) {
  const runs = [];
  for (const line of ['off', 'on', 'off', 'on']) {
    const w = await startDeliveryWorker({ settings: { KLING_MAX_CONCURRENCY: line === 'on' ? '1000' : '0' } });
    for (let i = 0; i < 20; i += 1) await fake.advance(await w.create(WEB_KEY, false), 'succeed'); // warm up
    await sleep(500);
    const pids = workerdPids();
    const cpuBefore = cpuMs(pids);
    const logsBefore = w.logs.length;
    const latencies = [];
    const finishing = [];
    const started = Date.now();
    await pool(Array.from({ length: count }, (_, i) => i), 8, async () => {
      const sent = Date.now();
      const id = await w.create(WEB_KEY, false);
      latencies.push(Date.now() - sent);
      if (id.startsWith('ke_')) throw new Error('a create waited in line: the account was full');
      finishing.push(fake.advance(id, 'succeed'));
    });
    const createsMs = Date.now() - started;
    await Promise.all(finishing);
    await sleep(1_000); // the prompt steps (and the releases) after the callbacks' answers
    const cpu = cpuMs(pids) - cpuBefore;
    const gateCalls = w.logs.slice(logsBefore).reduce((sum, l) => sum + Number(l.match(/"gate":(\d+)/)?.[1] ?? 0), 0);
    await w.close();
    runs.push({ line, p50: percentile(latencies, 50), p99: percentile(latencies, 99), rate: (count / createsMs) * 1000, cpuPerCreate: cpu / count, gateCalls: gateCalls / count });
  }
  const mean = (line, key) => runs.filter((r) => r.line === line).reduce((sum, r) => sum + r[key], 0) / 2;
  return { count, runs, ratio: (key) => mean('on', key) / mean('off', key), mean };
}

/**
 * What an Idempotency-Key costs a create: `count` creates, 8 at a time, each task finished
 * by its callback at once, without a key and with a fresh key each (the line off, so only
 * the key differs), alternating twice; then `count` repeats of keyed creates, each answered
 * from its key.
 */
async function keyPhase(count) {
  const runs = [];
  for (const keyed of [false, true, false, true]) {
    const w = await startDeliveryWorker({ settings: { KLING_MAX_CONCURRENCY: '0' } });
    for (let i = 0; i < 20; i += 1) await fake.advance(await w.create(WEB_KEY, false, keyed ? `warm-${i}` : undefined), 'succeed');
    await sleep(500);
    const pids = workerdPids();
    const cpuBefore = cpuMs(pids);
    const latencies = [];
    const finishing = [];
    const keys = [];
    const started = Date.now();
    await pool(Array.from({ length: count }, (_, i) => i), 8, async (i) => {
      const sent = Date.now();
      const key = keyed ? `bench-${i}-${crypto.randomUUID()}` : undefined;
      const id = await w.create(WEB_KEY, false, key);
      latencies.push(Date.now() - sent);
      if (key) keys.push(key);
      finishing.push(fake.advance(id, 'succeed'));
    });
    const createsMs = Date.now() - started;
    await Promise.all(finishing);
    await sleep(1_000);
    const cpu = cpuMs(pids) - cpuBefore;
    let replay;
    if (keyed) {
      const posts = () => fake.requests.filter((r) => r.method === 'POST').length;
      const before = posts();
      const replays = [];
      await pool(keys, 8, async (key) => {
        const sent = Date.now();
        await w.create(WEB_KEY, false, key);
        replays.push(Date.now() - sent);
      });
      if (posts() !== before) throw new Error('a repeat of a keyed create reached Kling');
      replay = percentile(replays, 50);
    }
    await w.close();
    runs.push({ keyed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), rate: (count / createsMs) * 1000, cpuPerCreate: cpu / count, replay });
  }
  const mean = (keyed, key) => runs.filter((r) => r.keyed === keyed).reduce((sum, r) => sum + r[key], 0) / 2;
  return { count, runs, ratio: (key) => mean(true, key) / mean(false, key), mean };
}

const PHASES = (process.env.BENCH_PHASES ?? 'requests,gate,keys,delivery,scale').split(',');
const GATE_CREATES = Number(process.env.BENCH_GATE_CREATES ?? 400);
const gate = PHASES.includes('gate') ? await gatePhase(GATE_CREATES) : undefined;
const keyRuns = PHASES.includes('keys') ? await keyPhase(GATE_CREATES) : undefined;
const DELIVERY_TASKS = Number(process.env.BENCH_DELIVERY_TASKS ?? 1000);
const deliveries = PHASES.includes('delivery')
  ? [await deliveryPhase(1, DELIVERY_TASKS), await deliveryPhase(16, DELIVERY_TASKS)] : [];
const STEADY_SECONDS = Number(process.env.BENCH_STEADY_SECONDS ?? 120);
const steady = PHASES.includes('delivery') ? await steadyPhase(STEADY_SECONDS) : undefined;

const SCALE_TASKS = Number(process.env.BENCH_SCALE_TASKS ?? 300);
const scale = PHASES.includes('scale')
  ? [await scalePhase(100, SCALE_TASKS), await scalePhase(100_000, SCALE_TASKS)] : [];

const requests = PHASES.includes('requests');
const configured = requests ? await measure({ limiters: true, persisted: true, countLife: true, profile: PROFILE }) : undefined;
const bare = requests ? await measure({ limiters: false, persisted: false, countLife: false }) : undefined;

// --- the report ------------------------------------------------------------------------

const fmt = (ms) => `${ms.toFixed(2)} ms`;
console.log('kling-edge benchmark (measured; read the ratios, not the absolute figures)');
console.log(`  machine: ${os.cpus().length} × ${os.cpus()[0].model.trim()}, node ${process.version}, wrk ${CONNECTIONS} connections × ${SECONDS} s per figure`);
console.log(`  wasm (build/index_bg.wasm): ${wasm.length.toLocaleString('en')} B raw, ${gzipped.toLocaleString('en')} B gzip -9`);
console.log('  workerd through Miniflare, each Worker on its own socket; the null Worker forwards to the same upstream');
for (const [title, { results, cases }] of !requests ? [] : [
  ['As configured (rate limiters and storage on disk, as Miniflare provides them locally)', configured],
  ['Without local service overheads (no rate limiter bindings, in-memory storage)', bare],
]) {
  console.log(`\n${title}:`);
  for (const [mode, label] of [['fast', 'zero-latency upstream'], ['slow', `${SLOW_MS} ms upstream`]]) {
    console.log(`  ${label.padEnd(24)} ${'null req/s'.padStart(10)} ${'edge req/s'.padStart(10)} ${'ratio'.padStart(7)} ${'added p50'.padStart(10)} ${'CPU/req: edge'.padStart(14)} ${'reference'.padStart(10)} ${'null'.padStart(8)} ${'edge/ref'.padStart(9)}`);
    for (const name of cases) {
      const { ours, theirs, reference } = results[`${mode} ${name}`];
      const errors = ours.non2xx || theirs.non2xx || reference.non2xx
        ? `  (non-2xx: edge ${ours.non2xx}, null ${theirs.non2xx}, reference ${reference.non2xx})` : '';
      console.log(`    ${name.padEnd(22)} ${theirs.rps.toFixed(0).padStart(10)} ${ours.rps.toFixed(0).padStart(10)} ${`${(ours.rps / theirs.rps).toFixed(2)}x`.padStart(7)} ${fmt(ours.p50 - theirs.p50).padStart(10)} ${fmt(ours.cpuPerRequest).padStart(14)} ${fmt(reference.cpuPerRequest).padStart(10)} ${fmt(theirs.cpuPerRequest).padStart(8)} ${`${(ours.cpuPerRequest / reference.cpuPerRequest).toFixed(2)}x`.padStart(9)}${errors}`);
    }
  }
}
if (requests) {
  const { life } = configured;
  console.log('\nOne task\'s life (a create with a webhook, 3 callbacks, 9 queries, the webhook delivered, its files copied):');
  console.log(`  KV writes: ${life.kvWrites}`);
  console.log(`  coordinator calls: ${life.coordinatorCalls} (the create's record, the 3 callbacks, the prompt step, and the queries asked before the edge copy existed)`);
  console.log(`  calls to Kling: ${life.klingCalls} (the create; the callbacks came, so nothing was polled)`);
  console.log(`  webhooks delivered: ${life.webhooks}`);
  console.log(`  result files copied into R2: ${life.copies} (the video, the MP3 and the WAV, before the KV write)`);
}

if (gate) {
  console.log(`\nThe line at the edge: ${gate.count} creates that find a free slot (8 at a time, each task finished by its callback at once), line on (KLING_MAX_CONCURRENCY 1000) vs off (0), two runs each:`);
  for (const run of gate.runs) {
    console.log(`  line ${run.line.padEnd(3)} create p50 ${fmt(run.p50)}, p99 ${fmt(run.p99)}; ${run.rate.toFixed(0)} creates/s; runtime CPU ${fmt(run.cpuPerCreate)} per create (its callback included); gate calls per create: ${run.gateCalls.toFixed(2)}`);
  }
  console.log(`  on vs off: create p50 ${gate.ratio('p50').toFixed(2)}x, creates/s ${gate.ratio('rate').toFixed(2)}x, CPU per create ${gate.ratio('cpuPerCreate').toFixed(2)}x`);
}

if (keyRuns) {
  console.log(`\nIdempotency-Key: ${keyRuns.count} creates (8 at a time, the line off, each task finished by its callback at once) without a key and with a fresh key each, two runs each:`);
  for (const run of keyRuns.runs) {
    const replay = run.keyed ? `; a repeat answered from its key: p50 ${fmt(run.replay)}` : '';
    console.log(`  ${(run.keyed ? 'with a key' : 'no key').padEnd(10)} create p50 ${fmt(run.p50)}, p99 ${fmt(run.p99)}; ${run.rate.toFixed(0)} creates/s; runtime CPU ${fmt(run.cpuPerCreate)} per create${replay}`);
  }
  console.log(`  with vs without: create p50 ${keyRuns.ratio('p50').toFixed(2)}x, creates/s ${keyRuns.ratio('rate').toFixed(2)}x, CPU per create ${keyRuns.ratio('cpuPerCreate').toFixed(2)}x`);
}

if (deliveries.length) {
  console.log(`\nDelivery: ${DELIVERY_TASKS} tasks finishing at once, each with a webhook and three result files copied into R2:`);
  for (const run of deliveries) {
    const who = run.tenants === 1 ? 'one tenant' : `${run.tenants} tenants`;
    console.log(`  ${who.padEnd(11)} callbacks took ${(run.callbacksMs / 1000).toFixed(1)} s; last webhook after ${(run.lastMs / 1000).toFixed(1)} s (${(run.lastMs / run.callbacksMs).toFixed(2)}x the callbacks); lag p50 ${(run.p50 / 1000).toFixed(1)} s, p99 ${(run.p99 / 1000).toFixed(1)} s; runtime CPU ${fmt(run.cpuPerTask)} per task; delivered ${run.delivered}/${run.count}`);
  }
  for (const run of deliveries.filter((r) => r.profile)) {
    console.log(`  where the time goes, ${run.tenants === 1 ? 'one tenant' : `${run.tenants} tenants`} (the profiler slows what it samples: shares, not costs):\n${run.profile}`);
  }
  console.log(`  one tenant's last webhook vs 16 tenants': ${(deliveries[0].lastMs / deliveries[1].lastMs).toFixed(2)}x`);
  console.log(`\nSteady load, one tenant, ${steady.seconds} s: 50 creates/s, 150 callbacks/s, a webhook per task (${steady.delivered}/${steady.tasks} delivered);`);
  console.log('  lag from the succeed callback to its webhook, per 30 s of the run:');
  steady.windows.forEach((w, i) => console.log(`    ${String(i * 30).padStart(4)}-${String((i + 1) * 30).padEnd(4)} s  p50 ${(w.p50 / 1000).toFixed(1)} s, p99 ${(w.p99 / 1000).toFixed(1)} s`));
}

if (scale.length) {
  console.log(`\nAn old tenant: ${SCALE_TASKS} tasks finishing at once in a coordinator that already holds N finished tasks:`);
  for (const run of scale) {
    console.log(`  N = ${String(run.settled).padStart(7)}: CPU ${fmt(run.cpuPerTask)} per task delivered; last webhook after ${(run.lastMs / 1000).toFixed(1)} s; delivered ${run.delivered}/${run.count}`);
  }
  console.log(`  ${scale[1].settled.toLocaleString('en')} vs ${scale[0].settled.toLocaleString('en')} tasks: CPU per task ${(scale[1].cpuPerTask / scale[0].cpuPerTask).toFixed(2)}x, time to the last webhook ${(scale[1].lastMs / scale[0].lastMs).toFixed(2)}x`);
}

if (PROFILE && requests) {
  console.log('\nWhere the time goes (V8 samples of kling-edge\'s isolate, as configured, zero-latency upstream;');
  console.log('the profiler slows what it samples, so these figures are shares, not costs):');
  for (const [name, text] of Object.entries(configured.profiles)) console.log(`  ${name}:\n${text}`);
}

await fake.close();
await new Promise((resolve) => slow.close(resolve));
nginx.kill('SIGTERM');
process.exit(0);
