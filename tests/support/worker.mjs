// Runs the built worker in workerd through `wrangler dev` (local KV, real HTTP) for a test
// file, with settings of the test's choosing, and collects everything it logs.
//
// The settings go into a temporary env file passed with --env-file, so a developer's own
// .dev.vars never leaks into a test run.

import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'node_modules/.bin');

/**
 * wrangler.toml as the tests run it: the same worker, bindings and assets, with rate limits
 * high enough for a test suite (the rate-limit tests use the real file). Every edit is
 * checked, so the copy cannot silently drift from the original.
 */
let testConfigFile;
function testConfig() {
  // Written once per test process (each wrangler dev would reload on a rewrite), whole and
  // renamed into place, so test files run in parallel never read a half-written copy.
  if (testConfigFile) return testConfigFile;
  const file = path.join(ROOT, `target/e2e/wrangler.${process.pid}.toml`);
  let text = readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8');
  const edit = (pattern, replacement) => {
    const edited = text.replace(pattern, replacement);
    if (edited === text) throw new Error(`wrangler.toml changed: update testConfig() (${pattern})`);
    text = edited;
  };
  edit(/^main = "build\/index.js"$/m, `main = "${ROOT}/build/index.js"`);
  edit(/^command = "\.\/scripts\/build.sh"$/m, `command = "${ROOT}/scripts/build.sh"`);
  edit(/^watch_dir = .*$/m, `watch_dir = ["${ROOT}/src"]`);
  edit(/^directory = "\.\/public"$/m, `directory = "${ROOT}/public"`);
  edit(/simple = \{ limit = \d+, period = (\d+) \}/g, 'simple = { limit = 1000000, period = $1 }');
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
  testConfigFile = file;
  return file;
}

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function envFileLine(name, value) {
  return `${name}='${String(value).replace(/'/g, '')}'`;
}

export class WorkerProcess {
  constructor() {
    this.output = '';
  }

  /** Everything wrangler and the worker printed (logs included). */
  logs() {
    return this.output;
  }

  /** Reads a key of the worker's local KV (through wrangler, as an operator would). */
  async kvGet(key) {
    const child = spawn(path.join(BIN, 'wrangler'), [
      'kv', 'key', 'get', key, '--binding', 'TASKS', '--local', '--persist-to', this.persistTo,
    ], { cwd: ROOT, env: { ...process.env, PATH: `${BIN}:${process.env.PATH}`, WRANGLER_SEND_METRICS: 'false' } });
    let out = '';
    child.stdout.on('data', (chunk) => { out += chunk; });
    const code = await new Promise((resolve) => child.on('exit', resolve));
    if (code !== 0 || out.trim() === 'Value not found') return undefined;
    return JSON.parse(out);
  }

  /** Writes a key of the worker's local KV (through wrangler, as an operator would). */
  async kvPut(key, value) {
    const child = spawn(path.join(BIN, 'wrangler'), [
      'kv', 'key', 'put', key, value, '--binding', 'TASKS', '--local', '--persist-to', this.persistTo,
    ], { cwd: ROOT, env: { ...process.env, PATH: `${BIN}:${process.env.PATH}`, WRANGLER_SEND_METRICS: 'false' } });
    const code = await new Promise((resolve) => child.on('exit', resolve));
    if (code !== 0) throw new Error(`wrangler kv key put ${key} failed`);
  }

  /** Kills the runtime at once (SIGKILL), requests in flight and all, as a crash would. */
  async kill() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    process.kill(-this.child.pid, 'SIGKILL');
    await exited;
    await fs.rm(this.dir, { recursive: true, force: true });
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    process.kill(-this.child.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      try { process.kill(-this.child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }, 5000);
    await exited;
    clearTimeout(timer);
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts `wrangler dev` with `settings` (name -> value) as its vars and secrets, with the
 * test copy of wrangler.toml (high rate limits) unless `productionLimits`.
 * Resolves once /health answers.
 */
export async function startWorker(settings, options = {}) {
  try {
    return await startWorkerOnce(settings, options);
  } catch (error) {
    // The ports are picked free but bound a moment later; another process may have won one.
    if (options.port || !/exited/.test(error.message)) throw error;
    return startWorkerOnce(settings, options);
  }
}

/** GET `url` and resolve with the status (trusting `ca`, for a worker served over https). */
function statusOf(url, ca) {
  if (!url.startsWith('https:')) return fetch(url).then((response) => response.status);
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, (response) => { response.resume(); resolve(response.statusCode); }).on('error', reject);
  });
}

async function startWorkerOnce(settings, { port: wantedPort, persistTo, productionLimits = false, logLevel, https: tls } = {}) {
  const worker = new WorkerProcess();
  worker.dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kling-edge-test-'));
  const envFile = path.join(worker.dir, 'settings.env');
  await fs.writeFile(envFile, Object.entries(settings).map(([k, v]) => envFileLine(k, v)).join('\n'));
  const port = wantedPort ?? await freePort();
  worker.persistTo = persistTo ?? path.join(worker.dir, 'state');
  const inspectorPort = await freePort();
  worker.url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  worker.child = spawn(path.join(BIN, 'wrangler'), [
    'dev',
    '--ip', '127.0.0.1',
    '--port', String(port),
    '--inspector-port', String(inspectorPort),
    '--env-file', envFile,
    '--persist-to', worker.persistTo,
    '--show-interactive-dev-session=false',
    // Rate limits high enough for a test suite, unless a test is about them.
    ...(productionLimits ? [] : ['--config', testConfig()]),
    ...(logLevel ? ['--log-level', logLevel] : []),
    // https with the test's own certificate, so a client can verify it (not skip verifying).
    ...(tls ? ['--local-protocol', 'https', '--https-key-path', tls.keyPath, '--https-cert-path', tls.certPath] : []),
  ], {
    cwd: ROOT,
    detached: true,
    env: {
      ...process.env,
      PATH: `${BIN}:${process.env.PATH}`,
      WRANGLER_SEND_METRICS: 'false',
      // A worker under test must not reload because a file changed under it.
      WRANGLER_CI_DISABLE_CONFIG_WATCHING: 'true',
      CI: '1',
      NO_COLOR: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const append = (chunk) => { worker.output += chunk.toString(); };
  worker.child.stdout.on('data', append);
  worker.child.stderr.on('data', append);

  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (worker.child.exitCode !== null) {
      await fs.rm(worker.dir, { recursive: true, force: true });
      throw new Error(`wrangler dev exited (${worker.child.exitCode}):\n${worker.output}`);
    }
    try {
      if (await statusOf(`${worker.url}/health`, tls?.ca) === 200) return worker;
    } catch { /* not listening yet */ }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  await worker.stop();
  throw new Error(`wrangler dev did not become healthy:\n${worker.output}`);
}

/**
 * One HTTP call to the worker. Returns status, headers, the raw text and the parsed JSON
 * (or undefined), and records the exchange on `transcript` for the secret audit.
 */
export async function call(worker, method, pathname, { key, body, headers = {}, raw } = {}) {
  const sent = { ...headers };
  if (key) sent.authorization = `Bearer ${key}`;
  let payload = raw;
  if (body !== undefined) {
    payload = JSON.stringify(body);
    sent['content-type'] = 'application/json';
  }
  const response = await fetch(`${worker.url}${pathname}`, { method, headers: sent, body: payload });
  const text = await response.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  const result = { status: response.status, headers: response.headers, text, json };
  transcript.push({ method, pathname, status: response.status, headers: [...response.headers], text });
  return result;
}

/** Every response the tests received, for the audit that no secret ever leaves. */
export const transcript = [];

/** Polls `check` until it returns a truthy value (returned) or `timeoutMs` passes. */
export async function eventually(check, { timeoutMs = 15_000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Waits for a fresh one-minute rate-limit window if the current one is about to roll over. */
export async function freshRateLimitWindow(needSeconds = 20) {
  const intoWindow = (Date.now() / 1000) % 60;
  if (60 - intoWindow < needSeconds) await new Promise((resolve) => setTimeout(resolve, (60 - intoWindow + 0.5) * 1000));
}

/**
 * The built worker in workerd through Miniflare's API, on a socket of its own: no
 * `wrangler dev` proxy in front. That proxy holds a request whose body declared its
 * length until the whole body has arrived, so what the worker does before it reads a body
 * (a 413 by Content-Length, a client that breaks off halfway) is only seen this way. The
 * bindings are wrangler.toml's (KV, R2, the Durable Object), in a fresh temporary state;
 * no rate limiters (a limiter that is missing lets every request through). `nullUploader`
 * adds, beside it, a Worker that only stores a body in the same bucket (the baseline of an
 * upload's cost).
 */
export async function startDirectWorker(settings, { nullUploader = false } = {}) {
  const { convertV4MiniflareOptions, Miniflare } = await import('miniflare');
  const port = await freePort();
  const nullPort = await freePort();
  const state = await fs.mkdtemp(path.join(os.tmpdir(), 'kling-edge-direct-'));
  const compatibilityDate = readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8').match(/^compatibility_date = "([^"]+)"/m)[1];
  const logs = [];
  const mf = new Miniflare(convertV4MiniflareOptions({
    resourcePersistencePath: state,
    handleStructuredLogs: (log) => logs.push(String(log.message ?? '')),
    workers: [{
      name: 'kling-edge',
      modulesRoot: path.join(ROOT, 'build'),
      modules: [
        { type: 'ESModule', path: path.join(ROOT, 'build/index.js') },
        { type: 'CompiledWasm', path: path.join(ROOT, 'build/index_bg.wasm') },
      ],
      compatibilityDate,
      bindings: settings,
      kvNamespaces: ['TASKS'],
      r2Buckets: ['RESULTS'],
      durableObjects: { COORDINATOR: { className: 'TaskCoordinator', useSQLite: true }, GATE: { className: 'AccountGate', useSQLite: true } },
      unsafeDirectSockets: [{ host: '127.0.0.1', port }],
    }, ...(nullUploader ? [{
      name: 'null-uploader',
      modules: true,
      scriptPath: path.join(ROOT, 'tests/support/null-uploader.js'),
      compatibilityDate,
      r2Buckets: ['RESULTS'],
      unsafeDirectSockets: [{ host: '127.0.0.1', port: nullPort }],
    }] : [])],
  }));
  await mf.ready;
  return {
    url: `http://127.0.0.1:${port}`,
    nullUrl: nullUploader ? `http://127.0.0.1:${nullPort}` : undefined,
    logs,
    /** The local R2 bucket, to see what is stored. */
    bucket: () => mf.getR2Bucket('RESULTS'),
    async stop() {
      await mf.dispose();
      await fs.rm(state, { recursive: true, force: true });
    },
  };
}
