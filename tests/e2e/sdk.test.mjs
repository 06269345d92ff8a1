// A real Kling SDK, unchanged but for its base URL and credentials: npm `kling-api` (which
// insists on https) creates and queries a text-to-video task with sound through the worker,
// signing Kling's JWT itself with the client's name as access key and its key as secret
// key. The worker is served over https with a certificate made for the test, which the SDK's
// process trusts (NODE_EXTRA_CA_CERTS): nothing skips TLS verification.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { ROOT, startWorker } from '../support/worker.mjs';

let fake;
let worker;
let dir;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kling-edge-sdk-'));
  const keyPath = path.join(dir, 'key.pem');
  const certPath = path.join(dir, 'cert.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-keyout', keyPath, '-out', certPath, '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake), { https: { keyPath, certPath, ca: fs.readFileSync(certPath) } });
  worker.certPath = certPath;
  fake.callbackCa = fs.readFileSync(certPath);
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Runs `code` (an ES module using the SDK) in its own Node process; resolves with its JSON output. */
function runWithSdk(code) {
  const script = path.join(dir, `sdk-${Date.now()}.mjs`);
  fs.writeFileSync(script, code);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], {
      cwd: ROOT,
      env: { ...process.env, NODE_EXTRA_CA_CERTS: worker.certPath, NO_PROXY: '127.0.0.1,localhost', NODE_PATH: path.join(ROOT, 'node_modules') },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => { out += chunk; });
    child.stderr.on('data', (chunk) => { err += chunk; });
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`the SDK script failed (${code}):\n${err}\n${out}`));
      try { resolve(JSON.parse(out)); } catch { reject(new Error(`not JSON:\n${out}\n${err}`)); }
    });
  });
}

const sdk = (body) => `
import { KlingAPI } from ${JSON.stringify(path.join(ROOT, 'node_modules/kling-api/dist/api.js'))};
const api = new KlingAPI({ accessKey: 'web', secretKey: ${JSON.stringify(WEB_KEY)}, baseUrl: ${JSON.stringify(worker.url)} });
const out = {};
${body}
console.log(JSON.stringify(out));
`;

describe('the npm kling-api SDK, unchanged', () => {
  it('creates a text-to-video task with sound and queries it through the worker', async () => {
    const created = await runWithSdk(sdk(`
      const task = await api.textToVideo({ model_name: 'kling-v2-6', prompt: 'Ocean waves crashing on shore', mode: 'pro', sound: 'on' });
      out.created = task;
      out.queried = await api.queryTextToVideoTask(task.data.task_id);
    `));
    assert.equal(created.created.code, 0, JSON.stringify(created));
    const taskId = created.created.data.task_id;
    assert.equal(created.queried.data.task_id, taskId);
    const sent = fake.apiRequests('POST', '/v1/videos/text2video').at(-1);
    assert.equal(sent.body.sound, 'on');
    assert.equal(sent.body.model_name, 'kling-v2-6');
    assert.notEqual(sent.token.split('.')[1], undefined, "Kling got the worker's own JWT, not the SDK's");
    assert.ok(!JSON.stringify(sent.headers).includes(WEB_KEY));

    await fake.advance(taskId, 'succeed');
    const finished = await runWithSdk(sdk(`
      out.queried = await api.queryTextToVideoTask(${JSON.stringify(taskId)});
      out.list = (await api.client.get('/v1/videos/text2video', { params: { pageNum: 1, pageSize: 10 } })).data;
    `));
    assert.equal(finished.queried.data.task_status, 'succeed');
    assert.equal(finished.queried.data.task_result.videos.length, 1);
    assert.ok(finished.list.data.some((t) => t.task_id === taskId));
  });

  it('is refused, as Kling would refuse it, with a wrong secret key', async () => {
    const refused = await runWithSdk(`
import { KlingAPI } from ${JSON.stringify(path.join(ROOT, 'node_modules/kling-api/dist/api.js'))};
const api = new KlingAPI({ accessKey: 'web', secretKey: 'not-the-key', baseUrl: ${JSON.stringify(worker.url)} });
try {
  await api.textToVideo({ model_name: 'kling-v1', prompt: 'x' });
  console.log(JSON.stringify({ ok: true }));
} catch (error) {
  console.log(JSON.stringify({ code: error.code, status: error.httpStatus, message: error.message }));
}
`);
    assert.equal(refused.status, 401, JSON.stringify(refused));
    assert.equal(refused.code, 1002);
  });
});
