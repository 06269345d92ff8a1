#!/usr/bin/env node
// `make dev`: runs the worker locally in workerd (wrangler dev, local KV).
//
// With Kling credentials in .dev.vars it talks to the real Kling. Without them it starts
// the local Kling stand-in (the same fake the tests use, here moving every task to
// `succeed` by itself and sending callbacks), so the worker works with no Kling account.
// A local client key, browser-token secret and webhook secret are generated once and kept in
// target/dev/local.env. Ports: PORT (default 8787) for the worker, STAND_IN_PORT (default
// 8790) for the stand-in; a port in use is reported and a free one taken instead.
// ALLOWED_ORIGINS from the environment grants CORS to your own local app. HTTPS=1 serves
// the worker over https, for clients that insist on it (npm kling-api), with a certificate
// made once for this machine (target/dev/cert.pem; Node clients trust it with
// NODE_EXTRA_CA_CERTS, and so does this script, which runs itself again that way).

import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { FakeKling } from '../tests/support/fake-kling.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const STATE = path.join(ROOT, 'target/dev');
// Where wrangler keeps local KV, Durable Objects and R2 (`make reset` clears the default).
const PERSIST_TO = process.env.KLING_EDGE_STATE ?? path.join(ROOT, '.wrangler/state');
const WANTED_PORT = Number(process.env.PORT ?? 8787);
const HTTPS = process.env.HTTPS === '1';
const CERT = path.join(STATE, 'cert.pem');
const CERT_KEY = path.join(STATE, 'cert-key.pem');

if (HTTPS && process.env.NODE_EXTRA_CA_CERTS !== CERT) {
  fs.mkdirSync(STATE, { recursive: true });
  if (!fs.existsSync(CERT) || !fs.existsSync(CERT_KEY)) {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '825',
      '-keyout', CERT_KEY, '-out', CERT, '-subj', '/CN=kling-edge local development',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], { stdio: 'ignore' });
  }
  // Trusting the certificate takes effect only at start-up: run again, trusting it.
  const again = spawn(process.execPath, process.argv.slice(1), {
    stdio: 'inherit', env: { ...process.env, NODE_EXTRA_CA_CERTS: CERT },
  });
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => again.kill(signal));
  again.on('exit', (code) => process.exit(code ?? 0));
  await new Promise(() => {});
}
const WANTED_STAND_IN_PORT = Number(process.env.STAND_IN_PORT ?? 8790);

/** Whether something already listens on `port` (on any local address). */
async function inUse(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(true));
    probe.listen(port, () => probe.close(() => resolve(false)));
  });
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** What answers on a busy port, in words, for the message that says we moved. */
async function whoIsOn(port) {
  try {
    const response = await fetch(`http://localhost:${port}/health`, { signal: AbortSignal.timeout(1000) });
    const body = await response.json().catch(() => null);
    if (body?.message === 'ok' && body.request_id) return 'another kling-edge (a second `make dev`?)';
  } catch { /* not HTTP, or not answering */ }
  return 'another program';
}

/** The wanted port if it is free, else a free one, saying why. */
async function pickPort(wanted, name, variable) {
  if (!(await inUse(wanted))) return wanted;
  const port = await freePort();
  console.log(`Port ${wanted} (${name}) is in use by ${await whoIsOn(wanted)}; using ${port} instead. Set ${variable} to choose.`);
  return port;
}

const PORT = await pickPort(WANTED_PORT, 'the worker', 'PORT');

/** KEY=VALUE lines (the subset of dotenv that .dev.vars uses). */
function readEnvFile(file) {
  if (!fs.existsSync(file)) return {};
  const settings = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const match = line.match(/^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/);
    if (!match) continue;
    settings[match[1]] = match[2].replace(/^(['"])(.*)\1$/, '$2');
  }
  return settings;
}

function writeEnvFile(file, settings) {
  const lines = Object.entries(settings).map(([k, v]) => `${k}='${v}'`);
  fs.writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
}

const hex = (bytes) => crypto.randomBytes(bytes).toString('hex');

fs.mkdirSync(STATE, { recursive: true });
const localEnv = path.join(STATE, 'local.env');
const localDefaults = {
  PROXY_API_KEYS: `dev:dev_${hex(16)}`,
  PROXY_WEBHOOK_SECRET: `whsec_${crypto.randomBytes(32).toString('base64')}`,
  PROXY_TOKEN_SECRET: hex(32),
};
writeEnvFile(localEnv, { ...localDefaults, ...readEnvFile(localEnv) });

const devVarsFile = path.join(ROOT, '.dev.vars');
const devVars = readEnvFile(devVarsFile);
const settings = { ...readEnvFile(localEnv), ...devVars };
// Any Kling credential (one account's, or several accounts' in KLING_ACCOUNT_KEYS) means a
// real Kling: the stand-in is only for a machine with none.
const realKling = Boolean(settings.KLING_API_KEY || (settings.KLING_ACCESS_KEY && settings.KLING_SECRET_KEY)
  || settings.KLING_ACCOUNTS || settings.KLING_ACCOUNT_KEYS);

const envFiles = [localEnv];
if (fs.existsSync(devVarsFile)) envFiles.push(devVarsFile);

let standIn;
if (!realKling) {
  const credentials = { accessKey: `ak_local_${hex(8)}`, secretKey: hex(24) };
  // The stand-in runs as many tasks at once as the worker believes the account does (Kling's
  // 1303 past them), so the line at the edge shows on the demo page.
  const concurrency = Number(settings.KLING_MAX_CONCURRENCY ?? 5) || Infinity;
  standIn = new FakeKling({ ...credentials, autoProgress: true, maxConcurrency: concurrency });
  await standIn.listen(await pickPort(WANTED_STAND_IN_PORT, 'the Kling stand-in', 'STAND_IN_PORT'));
  const standInEnv = path.join(STATE, 'stand-in.env');
  writeEnvFile(standInEnv, {
    KLING_API_BASE: standIn.url,
    KLING_ACCESS_KEY: credentials.accessKey,
    KLING_SECRET_KEY: credentials.secretKey,
    ALLOW_PRIVATE_URLS: 'true',
  });
  envFiles.push(standInEnv);
}

// Settings from the environment that make dev honours (after .dev.vars, so they win).
const fromEnvironment = Object.fromEntries(['ALLOWED_ORIGINS'].filter((name) => process.env[name]).map((name) => [name, process.env[name]]));
if (Object.keys(fromEnvironment).length) {
  const overrides = path.join(STATE, 'environment.env');
  writeEnvFile(overrides, fromEnvironment);
  envFiles.push(overrides);
}

const wrangler = spawn(path.join(ROOT, 'node_modules/.bin/wrangler'), [
  'dev', '--port', String(PORT), '--inspector-port', String(await freePort()), '--show-interactive-dev-session=false',
  '--persist-to', PERSIST_TO,
  ...envFiles.flatMap((file) => ['--env-file', file]),
  ...(HTTPS ? ['--local-protocol', 'https', '--https-key-path', CERT_KEY, '--https-cert-path', CERT] : []),
], { cwd: ROOT, stdio: ['inherit', 'pipe', 'pipe'], env: { ...process.env, WRANGLER_SEND_METRICS: 'false' } });
// wrangler's output (the build, then its log) passes through; its time tells when it is quiet.
let lastOutputAt = Date.now();
wrangler.stdout.on('data', (chunk) => { lastOutputAt = Date.now(); process.stdout.write(chunk); });
wrangler.stderr.on('data', (chunk) => { lastOutputAt = Date.now(); process.stderr.write(chunk); });

const stop = async () => {
  wrangler.kill('SIGTERM');
  await standIn?.close();
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
wrangler.on('exit', async (code) => {
  await standIn?.close();
  process.exit(code ?? 0);
});

const base = `${HTTPS ? 'https' : 'http'}://localhost:${PORT}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// However long the first build takes (it compiles the Rust crate: a few minutes on a new
// machine), wait for the worker to answer, saying now and then that it is still coming.
const startedAt = Date.now();
let saidAt = startedAt;
for (;;) {
  try {
    if ((await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) })).ok) break;
  } catch { /* still starting */ }
  if (wrangler.exitCode !== null) process.exit(wrangler.exitCode || 1);
  if (Date.now() - saidAt >= 20_000) {
    saidAt = Date.now();
    console.log(`==> waiting for the worker to start (${Math.round((saidAt - startedAt) / 1000)} s; the first build compiles the crate and takes a few minutes)`);
  }
  await sleep(250);
}

const [clientName, ...keyParts] = settings.PROXY_API_KEYS.split(',')[0].split(':');
const clientKey = keyParts.join(':').trim();
const videoUrl = standIn ? `${standIn.url}/samples/sample-video.mp4` : 'https://example.com/your-video.mp4';

// A development browser token for the demo page: the page gets it in the link's fragment,
// never a key. Tokens last at most an hour; restart `make dev` (or mint one, below) after.
let pageLink = `${base}/`;
try {
  const minted = await fetch(`${base}/v1/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${clientKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ sub: 'developer', ttl_seconds: 3600 }),
  }).then((r) => r.json());
  if (minted.code === 0) {
    pageLink = `${base}/#token=${minted.data.token}&video=${encodeURIComponent(videoUrl)}`;
  } else {
    console.log(`(no development token: ${minted.message})`);
  }
} catch (error) {
  console.log(`(no development token: ${error.message})`);
}

// The banner is the last thing on screen: it waits for wrangler's own start-up lines.
for (const quietSince = Date.now(); Date.now() - lastOutputAt < 750 && Date.now() - quietSince < 5_000;) await sleep(100);

console.log(`
kling-edge is running at ${base}
  Kling: ${realKling ? `the real Kling (${settings.KLING_API_BASE ?? 'https://api-singapore.klingai.com'})` : `the local stand-in at ${standIn.url} (tasks succeed after a few seconds; add ?case=fail to the sample video's URL to see one fail)`}
  Client key (from ${devVars.PROXY_API_KEYS ? '.dev.vars' : 'target/dev/local.env'}): ${clientKey}
  Secrets (browser tokens, webhooks) are in target/dev/local.env; reset local state with \`make reset\`.
  CORS: ${fromEnvironment.ALLOWED_ORIGINS || settings.ALLOWED_ORIGINS || 'no origin allowed (start with ALLOWED_ORIGINS=http://localhost:5173 make dev)'}

Open the demo page (signed in for an hour as "developer"):
  ${pageLink}

Or call the API with the client key (tenant "${clientName.trim()}": it sees its own tasks, not the page's,
which belong to the tenant "${clientName.trim()}/developer"):
  curl -s ${base}/v1/audio/video-to-audio \\
    -H 'Authorization: Bearer ${clientKey}' -H 'Content-Type: application/json' \\
    -d '{"video_url": "${videoUrl}", "sound_effect_prompt": "waves on a beach"}'
  curl -s ${base}/v1/audio/video-to-audio/<task_id> -H 'Authorization: Bearer ${clientKey}'
  curl -s ${base}/v1/tokens -H 'Authorization: Bearer ${clientKey}' \\
    -H 'Content-Type: application/json' -d '{"sub": "developer"}'      # a new browser token

${HTTPS ? `Over https with a certificate made for this machine: trust ${path.relative(ROOT, CERT)}, e.g.
  NODE_EXTRA_CA_CERTS=${path.relative(ROOT, CERT)} node your-app.mjs    (npm kling-api: accessKey '${clientName.trim()}', baseUrl '${base}')

` : ''}API document: ${base}/openapi.json · Press Ctrl+C to stop.
`);
