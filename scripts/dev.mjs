#!/usr/bin/env node
// `make dev`: runs the worker locally in workerd (wrangler dev, local KV).
//
// With Kling credentials in .dev.vars it talks to the real Kling. Without them it starts
// the local Kling stand-in (the same fake the tests use, here moving every task to
// `succeed` by itself and sending callbacks), so the worker works with no Kling account.
// A local client key is generated once and kept in target/dev/local.env.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { FakeKling } from '../tests/support/fake-kling.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const STATE = path.join(ROOT, 'target/dev');
const PORT = Number(process.env.PORT ?? 8787);
const STAND_IN_PORT = Number(process.env.STAND_IN_PORT ?? 8790);

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
const realKling = Boolean(settings.KLING_API_KEY || (settings.KLING_ACCESS_KEY && settings.KLING_SECRET_KEY));

const envFiles = [localEnv];
if (fs.existsSync(devVarsFile)) envFiles.push(devVarsFile);

let standIn;
if (!realKling) {
  const credentials = { accessKey: `ak_local_${hex(8)}`, secretKey: hex(24) };
  standIn = new FakeKling({ ...credentials, autoProgress: true });
  await standIn.listen(STAND_IN_PORT).catch(() => standIn.listen(0));
  const standInEnv = path.join(STATE, 'stand-in.env');
  writeEnvFile(standInEnv, {
    KLING_API_BASE: standIn.url,
    KLING_ACCESS_KEY: credentials.accessKey,
    KLING_SECRET_KEY: credentials.secretKey,
    ALLOW_PRIVATE_URLS: 'true',
  });
  envFiles.push(standInEnv);
}

const wrangler = spawn(path.join(ROOT, 'node_modules/.bin/wrangler'), [
  'dev', '--port', String(PORT), '--show-interactive-dev-session=false',
  ...envFiles.flatMap((file) => ['--env-file', file]),
], { cwd: ROOT, stdio: 'inherit', env: { ...process.env, WRANGLER_SEND_METRICS: 'false' } });

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

const base = `http://localhost:${PORT}`;
for (let i = 0; i < 600; i += 1) {
  try {
    if ((await fetch(`${base}/health`)).ok) break;
  } catch { /* still starting */ }
  await new Promise((resolve) => setTimeout(resolve, 250));
}

const clientKey = settings.PROXY_API_KEYS.split(',')[0].split(':').slice(1).join(':').trim();
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

console.log(`
kling-edge is running at ${base}
  Kling: ${realKling ? `the real Kling (${settings.KLING_API_BASE ?? 'https://api-singapore.klingai.com'})` : `the local stand-in at ${standIn.url} (tasks succeed after a few seconds; a video URL containing "fail" fails)`}
  Client key (from ${devVars.PROXY_API_KEYS ? '.dev.vars' : 'target/dev/local.env'}): ${clientKey}

Open the demo page (signed in for an hour as "developer"):
  ${pageLink}

Or call the API:
  curl -s ${base}/v1/audio/video-to-audio \\
    -H 'Authorization: Bearer ${clientKey}' -H 'Content-Type: application/json' \\
    -d '{"video_url": "${videoUrl}", "sound_effect_prompt": "waves on a beach"}'
  curl -s ${base}/v1/audio/video-to-audio/<task_id> -H 'Authorization: Bearer ${clientKey}'
  curl -s ${base}/v1/tokens -H 'Authorization: Bearer ${clientKey}' \\
    -H 'Content-Type: application/json' -d '{"sub": "developer"}'      # a new browser token

API document: ${base}/openapi.json · Press Ctrl+C to stop.
`);
