// The API document against the running worker: schemathesis (from PyPI, installed by
// `scripts/setup.sh --tests` into .venv) generates valid and invalid requests for every
// operation in /openapi.json and checks that none answers 5xx and every answer (status,
// content type, headers, body) matches the document.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { startFakeKling } from '../support/fake-kling.mjs';
import { ACCESS_KEY, baseSettings, SECRET_KEY, WEB_KEY, webhookSecret } from '../support/settings.mjs';
import { call, ROOT, startWorker } from '../support/worker.mjs';

const SCHEMATHESIS = path.join(ROOT, '.venv/bin/schemathesis');
// CPython before 3.11.8 / 3.12.1 breaks hypothesis in the coverage phase (see setup-tests.sh).
const PYTHON = execFileSync(path.join(ROOT, '.venv/bin/python'), ['-c', 'import sys; print(sys.version_info >= (3, 12))']).toString().trim();
const PHASES = PYTHON === 'True' ? 'examples,coverage,fuzzing' : 'examples,fuzzing';
if (PYTHON !== 'True') console.log('schemathesis runs on Python < 3.12 here: its coverage phase is skipped');
const CHECKS = [
  'not_a_server_error',
  'status_code_conformance',
  'content_type_conformance',
  'response_headers_conformance',
  'response_schema_conformance',
];

let fake;
let worker;

before(async () => {
  fake = await startFakeKling({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY });
  worker = await startWorker(baseSettings(fake, {
    PROXY_TOKEN_SECRET: 'openapi-token-secret-0123456789abcdef0123',
    PROXY_WEBHOOK_SECRET: webhookSecret('openapi-proxy-webhook-secret-32b'),
  }));
});

after(async () => {
  await worker?.stop();
  await fake?.close();
});

function run(command, args) {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1', SCHEMATHESIS_TELEMETRY: 'false', SCHEMATHESIS_HOOKS: path.join(ROOT, 'tests/support/schemathesis_hooks.py') },
    });
    let output = '';
    child.stdout.on('data', (chunk) => { output += chunk; });
    child.stderr.on('data', (chunk) => { output += chunk; });
    child.on('exit', (code) => resolve({ code, output }));
  });
}

describe('GET /openapi.json', () => {
  it('is an OpenAPI 3.1 document of every route', async () => {
    const response = await fetch(`${worker.url}/openapi.json`);
    assert.equal(response.status, 200);
    const doc = await response.json();
    assert.equal(doc.openapi, '3.1.0');
    assert.deepEqual(Object.keys(doc.paths).sort(), [
      '/health', '/v1/account', '/v1/assets', '/v1/assets/{asset_id}', '/v1/assets/{shard}/{asset_id}/{name}',
      '/v1/audio/text-to-audio', '/v1/audio/text-to-audio/{task_id}', '/v1/audio/text-to-audio/{task_id}/cancel', '/v1/audio/video-to-audio',
      '/v1/audio/video-to-audio/{task_id}', '/v1/audio/video-to-audio/{task_id}/cancel', '/v1/callbacks/kling/{token}', '/v1/kling/assets', '/v1/kling/tasks/{task_id}',
      '/v1/kling/videos/add-sound', '/v1/queue', '/v1/results/{shard}/{task_id}/{name}', '/v1/tokens', '/v1/usage', '/v1/videos/image2video', '/v1/videos/image2video/{task_id}',
      '/v1/videos/image2video/{task_id}/cancel', '/v1/videos/text2video', '/v1/videos/text2video/{task_id}', '/v1/videos/text2video/{task_id}/cancel', '/v1/videos/video-to-audio',
      '/v1/videos/video-to-audio/{task_id}', '/v1/videos/video-to-audio/{task_id}/cancel', '/v1/webhook-secret',
    ]);
    for (const create of ['/v1/audio/text-to-audio', '/v1/kling/videos/add-sound']) {
      assert.ok(doc.paths[create].post.parameters.some((p) => p.name === 'Idempotency-Key' && p.in === 'header'), create);
    }
    assert.ok(doc.paths['/v1/kling/tasks/{task_id}'].delete, 'useapi.net\'s cancel');
    assert.ok(doc.components.schemas.Task.properties.queue && doc.components.schemas.Task.properties.kling_task_id);
    const create = doc.components.schemas.VideoToAudioCreate;
    assert.equal(create.additionalProperties, false);
    assert.equal(create.properties.sound_effect_prompt.maxLength, 200);
    assert.equal(create.properties.video_duration.minimum, 0, 'a hint: the worker measures the video itself');
    assert.match(create.properties.video_duration.description, /measures the video itself/);
    assert.match(doc.components.schemas.ErrorEnvelope.description, /1201/);
    assert.deepEqual(doc.components.schemas.Text2videoCreate.properties.sound.enum, ['on', 'off']);
    assert.equal(doc.components.schemas.TextToAudioCreate.properties.duration.maximum, 10);
    assert.deepEqual(doc.components.schemas.AddSoundCreate.required, ['video']);
  });

  it('describes the running worker: no 5xx, every answer as documented', async () => {
    // Give schemathesis tasks to find, and Kling a few to list.
    await call(worker, 'POST', '/v1/audio/video-to-audio', { key: WEB_KEY, body: { video_url: 'https://cdn.example.com/a.mp4', external_task_id: 'openapi-1' } });
    await call(worker, 'POST', '/v1/videos/text2video', { key: WEB_KEY, body: { prompt: 'waves', external_task_id: 'openapi-2' } });
    await call(worker, 'POST', '/v1/audio/text-to-audio', { key: WEB_KEY, body: { prompt: 'rain', duration: 5, external_task_id: 'openapi-3' } });
    const { code, output } = await run(SCHEMATHESIS, [
      'run', `${worker.url}/openapi.json`,
      '--url', worker.url,
      '--header', `Authorization: Bearer ${WEB_KEY}`,
      '--checks', CHECKS.join(','),
      '--phases', PHASES,
      '--max-examples', '40',
      '--seed', '20261122',
      '--workers', '2',
      '--request-timeout', '10',
      '--generation-database', 'none',
      '--no-color',
    ]);
    if (code !== 0) console.log(output);
    assert.equal(code, 0, 'schemathesis found responses that do not match the document');
    assert.match(output, /passed/i);
    console.log(output.split('\n').filter((line) => /operations|test cases|passed|failed|Summary/i.test(line)).join('\n'));
  });
});
