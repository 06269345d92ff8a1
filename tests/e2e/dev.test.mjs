// `make dev` as a new user meets it: the script it runs (scripts/dev.mjs) starts the worker
// and the Kling stand-in, prints where they are, and copes with ports already in use.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { signKlingJwt, startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, SECRET_KEY } from '../support/settings.mjs';
import { eventually, freePort, ROOT } from '../support/worker.mjs';

const running = [];

after(async () => {
  for (const { child } of running) {
    if (child.exitCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      process.kill(-child.pid, 'SIGTERM');
      await exited;
    }
  }
});

/** Runs scripts/dev.mjs with `env`; resolves with its output once it printed its banner. */
async function startDev(env, { timeoutMs = 120_000 } = {}) {
  const state = await fs.mkdtemp(path.join(os.tmpdir(), 'kling-edge-dev-'));
  const child = spawn(process.execPath, ['scripts/dev.mjs'], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, PATH: `${ROOT}/node_modules/.bin:${process.env.PATH}`, KLING_EDGE_STATE: state, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const dev = { child, output: '' };
  running.push(dev);
  child.stdout.on('data', (chunk) => { dev.output += chunk; });
  child.stderr.on('data', (chunk) => { dev.output += chunk; });
  await eventually(() => dev.output.includes('Press Ctrl+C to stop') || child.exitCode !== null, { timeoutMs, what: 'the banner' });
  assert.equal(child.exitCode, null, dev.output);
  return dev;
}

describe('make dev', () => {
  it('waits for a first build however long it takes, and ends with a banner whose link signs in', async () => {
    // A first build: the stamp that lets scripts/build.sh skip is gone, and the crate is
    // newer than the last build, so wrangler dev compiles the worker before it answers.
    await fs.rm(path.join(ROOT, 'build/.built'), { force: true });
    const now = new Date();
    await fs.utimes(path.join(ROOT, 'src/lib.rs'), now, now);
    const dev = await startDev({ PORT: String(await freePort()), STAND_IN_PORT: String(await freePort()) }, { timeoutMs: 900_000 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    const banner = dev.output.slice(dev.output.lastIndexOf('kling-edge is running at'));
    assert.ok(banner.trimEnd().endsWith('Press Ctrl+C to stop.'), `the banner is the last thing on screen:\n${dev.output.slice(-2000)}`);
    assert.ok(!dev.output.includes('no development token'), dev.output.slice(-3000));
    const link = banner.match(/(http:\/\/localhost:\d+)\/#token=([^&\s]+)/);
    assert.ok(link, `the link signs in:\n${banner}`);
    const listed = await fetch(`${link[1]}/v1/audio/video-to-audio`, { headers: { authorization: `Bearer ${link[2]}` } });
    assert.equal(listed.status, 200, 'the link\'s token is a working browser token');
  });

  it('moves to free ports when its ports are taken, says why, and prints the real ones', async () => {
    const [port, standInPort] = [await freePort(), await freePort()];
    const squatter = http.createServer((req, res) => res.end('not kling-edge'));
    await new Promise((resolve) => squatter.listen(port, resolve));
    try {
      const dev = await startDev({ PORT: String(port), STAND_IN_PORT: String(standInPort), ALLOWED_ORIGINS: 'http://localhost:5173' });
      assert.match(dev.output, new RegExp(`Port ${port} \\(the worker\\) is in use by another program; using (\\d+) instead`));
      const moved = Number(dev.output.match(/using (\d+) instead/)[1]);
      assert.notEqual(moved, port);
      assert.match(dev.output, new RegExp(`kling-edge is running at http://localhost:${moved}`));
      assert.equal((await fetch(`http://localhost:${moved}/health`)).status, 200);
      assert.match(dev.output, /CORS: http:\/\/localhost:5173/);
      const preflight = await fetch(`http://localhost:${moved}/v1/audio/video-to-audio`, {
        method: 'OPTIONS', headers: { origin: 'http://localhost:5173', 'access-control-request-method': 'POST' },
      });
      assert.equal(preflight.headers.get('access-control-allow-origin'), 'http://localhost:5173', 'ALLOWED_ORIGINS is honoured');
      assert.match(dev.output, /target\/dev\/local\.env/);

      // A second `make dev` on the same ports names the first one instead of dying.
      const second = await startDev({ PORT: String(moved), STAND_IN_PORT: String(standInPort) });
      assert.match(second.output, new RegExp(`Port ${moved} \\(the worker\\) is in use by another kling-edge \\(a second \`make dev\`\\?\\); using \\d+ instead`));
      assert.match(second.output, new RegExp(`Port ${standInPort} \\(the Kling stand-in\\) is in use`));
      assert.ok(!/Address already in use/.test(second.output), second.output);
    } finally {
      squatter.close();
    }
  });
});

describe('HTTPS=1 make dev', () => {
  it('serves the worker over https with a certificate Node trusts by NODE_EXTRA_CA_CERTS, for the npm SDK as the README shows', async () => {
    const dev = await startDev({ HTTPS: '1', PORT: String(await freePort()), STAND_IN_PORT: String(await freePort()) });
    const banner = dev.output.slice(dev.output.lastIndexOf('kling-edge is running at'));
    const base = banner.match(/kling-edge is running at (https:\/\/localhost:\d+)/)?.[1];
    assert.ok(base, banner);
    assert.match(banner, /NODE_EXTRA_CA_CERTS=target\/dev\/cert\.pem node your-app\.mjs/);
    assert.match(banner, /#token=/, 'the page link signs in over https too');
    const clientKey = banner.match(/Client key \(from [^)]+\): (\S+)/)[1];
    const accessKey = banner.match(/npm kling-api: accessKey '([^']+)'/)[1];
    // The README's SDK example, in its own Node process, verifying the certificate.
    const script = `
      import { KlingAPI } from ${JSON.stringify(path.join(ROOT, 'node_modules/kling-api/dist/api.js'))};
      const kling = new KlingAPI({ accessKey: ${JSON.stringify(accessKey)}, secretKey: ${JSON.stringify(clientKey)}, baseUrl: ${JSON.stringify(base)} });
      const task = await kling.textToVideo({ model_name: 'kling-v2-6', prompt: 'Ocean waves', mode: 'pro', sound: 'on' });
      let done;
      for (let i = 0; i < 60 && done?.data?.task_status !== 'succeed'; i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        done = await kling.queryTextToVideoTask(task.data.task_id);
      }
      console.log(JSON.stringify(done));
    `;
    const output = await new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        cwd: ROOT, env: { ...process.env, NODE_EXTRA_CA_CERTS: path.join(ROOT, 'target/dev/cert.pem') },
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (chunk) => { out += chunk; });
      child.stderr.on('data', (chunk) => { err += chunk; });
      child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${code}: ${err}`))));
    });
    const done = JSON.parse(output);
    assert.equal(done.data.task_status, 'succeed', output);
    assert.ok(done.data.task_result.videos[0].url, 'with its video');
  });
});

describe('the Kling stand-in', () => {
  it('never hands out a task id twice, across restarts too', async () => {
    const ids = [];
    for (let run = 0; run < 2; run += 1) {
      const standIn = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
      for (let i = 0; i < 3; i += 1) {
        const response = await fetch(`${standIn.url}/v1/audio/video-to-audio`, {
          method: 'POST',
          headers: { authorization: `Bearer ${signKlingJwt(ACCESS_KEY, SECRET_KEY)}`, 'content-type': 'application/json' },
          body: JSON.stringify({ video_url: 'https://cdn.example.com/a.mp4' }),
        });
        ids.push((await response.json()).data.task_id);
      }
      await standIn.close();
    }
    assert.equal(new Set(ids).size, ids.length, `${ids}`);
    assert.ok(ids.every((id) => /^\d{18}$/.test(id)), `Kling-like ids: ${ids}`);
  });
});
