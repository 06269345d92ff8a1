// A real Python Kling client, unchanged but for its base URL and credentials: PyPI's
// `klingai-api` (installed into .venv by the test command) opens a session (which checks
// its credentials with GET /account/costs), creates a text-to-video and an image-to-video
// task with its own defaults (it sends aspect_ratio in both), queries one and lists the
// other, signing Kling's JWT itself with the client's name as access key and its key as
// secret key.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY } from '../support/settings.mjs';
import { ROOT, startWorker } from '../support/worker.mjs';

const PYTHON = path.join(ROOT, '.venv/bin/python');
let fake;
let worker;
let dir;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kling-edge-python-'));
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Runs `body` with `kling` an open session of the client; resolves with what it put in `out`. */
function withClient(body, { secretKey = WEB_KEY } = {}) {
  const script = path.join(dir, `client-${Date.now()}.py`);
  fs.writeFileSync(script, `
import json
from api import KlingAiAPI
from exceptions import BadCredentials

out = {}
client = KlingAiAPI(access_token="web", secret_token=${JSON.stringify(secretKey)})
client.base = ${JSON.stringify(worker.url)}
try:
    with client as kling:
${body.split('\n').map((line) => `        ${line}`).join('\n')}
except BadCredentials as error:
    out["bad_credentials"] = str(error)
print(json.dumps(out))
`);
  return new Promise((resolve, reject) => {
    const env = { ...process.env, NO_PROXY: '127.0.0.1,localhost' };
    delete env.ACCESS_TOKEN;
    delete env.SECRET_TOKEN;
    const child = spawn(PYTHON, [script], { cwd: dir, env });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => { out += chunk; });
    child.stderr.on('data', (chunk) => { err += chunk; });
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`the client failed (${code}):\n${err}\n${out}`));
      try { resolve(JSON.parse(out)); } catch { reject(new Error(`not JSON:\n${out}\n${err}`)); }
    });
  });
}

describe('the PyPI klingai-api client, unchanged', () => {
  it('opens its session, creates with its defaults, queries and lists through the worker', async () => {
    const result = await withClient(`
t2v = kling.text2video("Ocean waves crashing on shore at dusk")
out["t2v"] = t2v
out["t2v_query"] = kling.get_text2video(t2v["data"]["task_id"])
i2v = kling.image2video("https://cdn.example.com/frames/first.png", prompt="The waves roll in")
out["i2v"] = i2v
out["i2v_list"] = kling.list_image2video(page_num=1, page_size=10)
`);
    assert.equal(result.bad_credentials, undefined, JSON.stringify(result));
    assert.equal(result.t2v.code, 0, JSON.stringify(result.t2v));
    assert.equal(result.t2v_query.data.task_id, result.t2v.data.task_id);
    assert.equal(result.i2v.code, 0, JSON.stringify(result.i2v));
    assert.ok(result.i2v_list.data.some((task) => task.task_id === result.i2v.data.task_id), JSON.stringify(result.i2v_list));

    const costs = fake.apiRequests('GET', '/account/costs');
    assert.ok(costs.length >= 1, 'the session checked its credentials with Kling, through the worker');
    const t2v = fake.apiRequests('POST', '/v1/videos/text2video').at(-1);
    assert.equal(t2v.body.aspect_ratio, '16:9', "text to video takes the client's aspect_ratio");
    const i2v = fake.apiRequests('POST', '/v1/videos/image2video').at(-1);
    assert.equal(i2v.body.image, 'https://cdn.example.com/frames/first.png');
    assert.equal(i2v.body.aspect_ratio, undefined, 'image to video does not take it: the worker dropped it');
  });

  it('is told its credentials are bad when its session opens', async () => {
    const result = await withClient('out["opened"] = True', { secretKey: 'not-the-key' });
    assert.match(result.bad_credentials ?? '', /Invalid ACCESS_TOKEN or SECRET_TOKEN/, JSON.stringify(result));
    assert.equal(result.opened, undefined);
  });
});
