// A strict stand-in for Kling's API, on loopback.
//
// Kling itself cannot be reached from CI, so this plays it, as strictly as Kling does:
// - every call must carry `Authorization: Bearer <token>`; the token is either the API key
//   or an HS256 JWT that is verified like Kling verifies it (signature with the secret key,
//   `alg`, `iss`, `nbf`, `exp`), answering 401 with Kling's codes 1001-1004 otherwise;
// - it answers in Kling's envelope, keeps tasks in memory, rejects a create body with
//   fields Kling does not define, and pages the list like Kling;
// - it records every request (and the token it carried) for tests to inspect;
// - tests can make the next calls fail, drop the connection, or hang;
// - it POSTs callbacks to a task's callback_url, optionally signed the Standard Webhooks
//   way, and with `autoProgress` moves each task submitted -> processing -> succeed by
//   itself (the local development stand-in; an input containing "fail" ends `failed`, one
//   containing "hold" stays `processing`), on every endpoint the worker speaks (video to
//   audio, text and image to video, text to audio),
//   serving a playable sample video and audio from samples/.

import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

import { SAMPLES_DIR, sendFile } from './media-server.mjs';

const VIDEO_FIELDS = [
  'model_name', 'prompt', 'negative_prompt', 'cfg_scale', 'mode', 'duration', 'camera_control', 'sound',
  'multi_shot', 'shot_type', 'multi_prompt', 'watermark_info', 'callback_url', 'external_task_id',
];
const SOUND_MODELS = ['kling-v2-6', 'kling-v3'];

/**
 * Kling's endpoints as this stand-in plays them: the fields each create accepts (anything
 * else is refused, as Kling refuses it), a check of the body, and the files a finished task
 * yields.
 */
const ENDPOINTS = {
  '/v1/audio/video-to-audio': {
    fields: ['video_id', 'video_url', 'sound_effect_prompt', 'bgm_prompt', 'asmr_mode', 'callback_url', 'external_task_id'],
    check: (body) => {
      if (!body.video_id === !body.video_url) return 'video_id or video_url';
      for (const field of ['sound_effect_prompt', 'bgm_prompt']) {
        if (body[field] !== undefined && [...body[field]].length > 200) return `${field} too long`;
      }
      return null;
    },
    results: ['videos', 'audios'],
  },
  '/v1/videos/text2video': {
    fields: [...VIDEO_FIELDS, 'aspect_ratio'],
    check: (body) => {
      if (body.sound === 'on' && !SOUND_MODELS.includes(body.model_name ?? 'kling-v1')) return 'sound is not supported by this model';
      if (body.prompt !== undefined && [...body.prompt].length > 2500) return 'prompt too long';
      return null;
    },
    results: ['videos'],
  },
  '/v1/videos/image2video': {
    fields: [...VIDEO_FIELDS, 'image', 'image_tail', 'static_mask', 'dynamic_masks', 'voice_list', 'element_list'],
    check: (body) => (!body.image && !body.image_tail ? 'image or image_tail' : null),
    results: ['videos'],
  },
  '/v1/audio/text-to-audio': {
    fields: ['prompt', 'duration', 'callback_url', 'external_task_id'],
    check: (body) => {
      if (typeof body.prompt !== 'string' || [...body.prompt].length > 200) return 'prompt';
      if (typeof body.duration !== 'number' || body.duration < 3 || body.duration > 10) return 'duration';
      return null;
    },
    results: ['audios'],
  },
};
const BASE_PATH = '/v1/audio/video-to-audio';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** Verifies a bearer token as Kling does. Returns null when valid, else [code, message]. */
export function verifyKlingToken(token, { accessKey, secretKey, apiKey }, nowSeconds) {
  if (apiKey && token === apiKey) return null;
  if (!accessKey || !secretKey) return [1002, 'token invalid'];
  const parts = token.split('.');
  if (parts.length !== 3) return [1002, 'token invalid: not a JWT'];
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return [1002, 'token invalid: undecodable'];
  }
  if (header.alg !== 'HS256') return [1002, `token invalid: alg ${header.alg}`];
  if (header.typ !== undefined && header.typ !== 'JWT') return [1002, 'token invalid: typ'];
  const expected = crypto.createHmac('sha256', secretKey).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return [1002, 'token invalid: signature'];
  }
  if (claims.iss !== accessKey) return [1002, 'token invalid: iss'];
  if (typeof claims.nbf !== 'number') return [1002, 'token invalid: no nbf'];
  if (typeof claims.exp !== 'number') return [1002, 'token invalid: no exp'];
  if (nowSeconds < claims.nbf) return [1003, 'token not yet valid'];
  if (nowSeconds >= claims.exp) return [1004, 'token expired'];
  return null;
}

/** A Kling JWT as Kling's own clients sign it: HS256, `iss`, `exp` in 30 min, `nbf` 5 s ago. */
export function signKlingJwt(accessKey, secretKey, nowSeconds = Math.floor(Date.now() / 1000)) {
  const encode = (value) => b64url(JSON.stringify(value));
  const input = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ iss: accessKey, exp: nowSeconds + 1800, nbf: nowSeconds - 5 })}`;
  return `${input}.${crypto.createHmac('sha256', secretKey).update(input).digest('base64url')}`;
}

/** Signs a body the Standard Webhooks way (as Kling's signed callbacks are). */
export function signWebhook(secret, id, timestamp, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const mac = crypto.createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64');
  return `v1,${mac}`;
}

function envelope(code, message, data) {
  const body = { code, message, request_id: crypto.randomUUID() };
  if (data !== undefined) body.data = data;
  return body;
}

export class FakeKling {
  constructor({ accessKey, secretKey, apiKey, autoProgress = false, webhookSecret, stepMs = 1500, resolveExternalFirst = false, resultBase, maxConcurrency = Infinity, accounts } = {}) {
    // Kling's accounts: each has its own credentials, tasks and concurrency. A token is
    // Kling's for the account whose credentials verify it, and that account sees only its
    // own tasks. `accounts` lists several ({ name, accessKey, secretKey, apiKey,
    // maxConcurrency }); by default there is one, named `default`, from the options above.
    this.accounts = accounts ?? [{ name: 'default', accessKey, secretKey, apiKey, maxConcurrency }];
    // Kling's account concurrency: a task holds a slot from `submitted` until it ends, and
    // a create past the limit is refused with HTTP 429, code 1303. `otherRunning` plays
    // another app's tasks on the first account; `peakRunning` is the most ever running on
    // one account (`peakRunningOf` by account).
    this.otherRunning = 0;
    this.peakRunning = 0;
    this.peakRunningOf = {};
    this.refusedOverConcurrency = 0;
    // Where the result links point: the stand-in's own /samples, or another file server
    // (`resultBase` + `/sample-audio.mp3`...), as Kling's CDN is another host.
    this.resultBase = resultBase;
    // Kling documents that a task id or an external task id may stand in a query's path, not
    // which wins when one task's external id is another's task id: this mode plays the
    // worst case, external ids first.
    this.resolveExternalFirst = resolveExternalFirst;
    this.autoProgress = autoProgress;
    this.webhookSecret = webhookSecret;
    this.stepMs = stepMs;
    this.requests = [];
    this.callbacks = [];
    // Kling fetches a task's video when it starts it: the stand-in does for a worker's own
    // upload links (`/v1/assets/...`), recording what it got (status, bytes, sha256).
    this.videoFetches = [];
    this.tasks = new Map();
    this.faults = [];
    this.sockets = new Set();
    this.timers = new Set();
    this.nextId = 1;
    this.server = http.createServer((req, res) => this.#serve(req, res));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  /** The first account's concurrency (tests change it while running). */
  get maxConcurrency() {
    return this.accounts[0].maxConcurrency ?? Infinity;
  }

  set maxConcurrency(value) {
    this.accounts[0].maxConcurrency = value;
  }

  async listen(port = 0, host = '127.0.0.1') {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.url = `http://${host}:${this.server.address().port}`;
    return this;
  }

  async close() {
    for (const timer of this.timers) clearTimeout(timer);
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** The calls that reached the API (not sample downloads), by default video to audio's. */
  apiRequests(method, pathPrefix = BASE_PATH) {
    return this.requests.filter(
      (r) => (!method || r.method === method) && r.path.startsWith(pathPrefix),
    );
  }

  /** How many tasks have not ended (each holds a slot of its account), of `account` or all. */
  running(account) {
    return [...this.tasks.values()]
      .filter((t) => account === undefined || t.account === account)
      .filter((t) => !['succeed', 'failed'].includes(t.data.task_status)).length;
  }

  /** Makes the next `count` matching calls fail: kind is 'drop', 'hang' or a status. */
  injectFault({ method, kind, status = 500, body, count = 1 }) {
    this.faults.push({ method, kind, status, body, count });
  }

  /**
   * Moves a task to a new state, as Kling does, and POSTs the callback if it has a URL.
   * `audiosInCallback: false` sends the callback without the audios that queries return
   * (Kling does not promise them in callbacks). Other options go to sendCallback.
   */
  async advance(taskId, status, { withAudios = true, audiosInCallback = true, updatedAt, callback = true, ...send } = {}) {
    const task = this.tasks.get(taskId);
    if (!task) throw new Error(`no task ${taskId}`);
    task.data.task_status = status;
    task.data.updated_at = updatedAt ?? Math.max(Date.now(), task.data.updated_at + 1);
    if (status === 'processing') task.data.task_status_msg = '';
    if (status === 'failed') task.data.task_status_msg = 'The video could not be processed';
    if (status === 'succeed') {
      task.data.task_result = this.#result(task, withAudios);
      task.data.final_unit_deduction = '1';
    }
    if (!callback || !task.callbackUrl) return null;
    const data = structuredClone(task.data);
    if (!audiosInCallback) delete data.task_result?.audios;
    return this.sendCallback(taskId, { data, ...send });
  }

  /**
   * POSTs a task's data (or `data`, or the raw string `rawBody`) to its callback URL (or
   * `url`) and returns the receiver's answer. When a webhook secret is set, the callback is
   * signed unless `sign` is false; `signWith` signs with another secret, `timestamp`
   * overrides the signed time, `extraSignatures` are listed before the real one.
   */
  async sendCallback(taskId, { data, rawBody, url, sign = true, signWith, timestamp, extraSignatures = [], headers = {} } = {}) {
    const task = this.tasks.get(taskId);
    const body = rawBody ?? JSON.stringify(data ?? task.data);
    const target = url ?? task.callbackUrl;
    const sent = { 'content-type': 'application/json', ...headers };
    const secret = signWith ?? this.webhookSecret;
    if (secret && sign) {
      const id = `msg_${crypto.randomUUID()}`;
      const at = timestamp ?? Math.floor(Date.now() / 1000);
      sent['webhook-id'] = id;
      sent['webhook-timestamp'] = String(at);
      sent['webhook-signature'] = [...extraSignatures, signWebhook(secret, id, at, body)].join(' ');
    }
    const response = await this.#post(target, sent, body);
    const record = { taskId, url: target, status: response.status, body: response.text };
    this.callbacks.push(record);
    return record;
  }

  /** POSTs a callback; over https, trusting `this.callbackCa` (a test's own certificate). */
  async #post(target, headers, body) {
    if (!target.startsWith('https:') || !this.callbackCa) {
      const response = await fetch(target, { method: 'POST', headers, body });
      return { status: response.status, text: await response.text() };
    }
    return new Promise((resolve, reject) => {
      const request = https.request(target, { method: 'POST', headers, ca: this.callbackCa }, (response) => {
        let text = '';
        response.on('data', (chunk) => { text += chunk; });
        response.on('end', () => resolve({ status: response.statusCode, text }));
      });
      request.on('error', reject);
      request.end(body);
    });
  }

  #result(task, withAudios) {
    const base = this.resultBase ?? `${this.url}/samples`;
    const yields = ENDPOINTS[task.path].results;
    const result = {};
    if (yields.includes('videos')) {
      // A video made with sound has it in the file, as Kling's do.
      const file = task.body.sound === 'on' ? 'sample-video-sound.mp4' : 'sample-video.mp4';
      result.videos = [{ id: `${task.data.task_id}-v`, url: `${base}/${file}`, duration: '5.0' }];
    }
    if (withAudios && yields.includes('audios')) {
      result.audios = [{
        id: `${task.data.task_id}-a`,
        url_mp3: `${base}/sample-audio.mp3`,
        url_wav: `${base}/sample-audio.wav`,
        duration_mp3: '5.0',
        duration_wav: '5.0',
      }];
    }
    return result;
  }

  #takeFault(method) {
    const index = this.faults.findIndex((f) => !f.method || f.method === method);
    if (index < 0) return null;
    const fault = this.faults[index];
    fault.count -= 1;
    if (fault.count <= 0) this.faults.splice(index, 1);
    return fault;
  }

  async #serve(req, res) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url, 'http://fake-kling');
    const record = { method: req.method, path: url.pathname + url.search, headers: req.headers, raw };
    if (url.pathname.startsWith('/samples/')) return this.#sample(req, url, res);
    this.requests.push(record);

    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(body));
    };

    const auth = req.headers.authorization ?? '';
    if (!auth) return send(401, envelope(1001, 'Authorization header is empty'));
    if (!auth.startsWith('Bearer ')) return send(401, envelope(1002, 'token invalid'));
    record.token = auth.slice('Bearer '.length);
    const now = Math.floor(Date.now() / 1000);
    const account = this.accounts.find((a) => !verifyKlingToken(record.token, a, now));
    if (!account) {
      const rejected = verifyKlingToken(record.token, this.accounts[0], now);
      return send(401, envelope(rejected[0], rejected[1]));
    }
    record.account = account.name;

    const fault = this.#takeFault(req.method);
    if (fault) {
      record.fault = fault.kind;
      if (fault.kind === 'drop') return req.socket.destroy();
      if (fault.kind === 'hang') return; // never answers; close() destroys the socket
      return send(fault.status, fault.body ?? envelope(5000, 'internal error'));
    }

    if (url.pathname === '/account/costs' && req.method === 'GET') return this.#costs(url, send);
    const endpoint = Object.keys(ENDPOINTS).find((p) => url.pathname === p || url.pathname.startsWith(`${p}/`));
    if (!endpoint) return send(404, envelope(1202, 'invalid method'));
    if (url.pathname === endpoint && req.method === 'POST') return this.#create(endpoint, raw, record, send, account);
    if (url.pathname === endpoint && req.method === 'GET') return this.#list(endpoint, url, send, account);
    if (url.pathname.startsWith(`${endpoint}/`) && req.method === 'GET') {
      const id = decodeURIComponent(url.pathname.slice(endpoint.length + 1));
      const mine = [...this.tasks.values()].filter((t) => t.path === endpoint && t.account === account.name);
      const byExternal = () => mine.find((t) => t.data.task_info.external_task_id === id);
      const byId = () => mine.find((t) => t.data.task_id === id);
      const task = this.resolveExternalFirst ? byExternal() ?? byId() : byId() ?? byExternal();
      if (!task) return send(404, envelope(1203, 'task not found'));
      return send(200, envelope(0, 'SUCCEED', task.data));
    }
    return send(404, envelope(1202, 'invalid method'));
  }

  async #create(endpoint, raw, record, send, account) {
    let body;
    try {
      body = JSON.parse(raw);
    } catch {
      return send(400, envelope(1200, 'invalid request body'));
    }
    record.body = body;
    const { fields, check } = ENDPOINTS[endpoint];
    const unknown = Object.keys(body).filter((k) => !fields.includes(k));
    if (unknown.length) return send(400, envelope(1201, `unknown parameter ${unknown[0]}`));
    const problem = check(body);
    if (problem) return send(400, envelope(1201, problem));
    const externalId = body.external_task_id;
    const ofAccount = [...this.tasks.values()].filter((t) => t.account === account.name);
    if (externalId && ofAccount.some((t) => t.data.task_info.external_task_id === externalId)) {
      return send(400, envelope(1201, 'external_task_id already exists'));
    }
    const others = account === this.accounts[0] ? this.otherRunning : 0;
    const limit = account.maxConcurrency ?? Infinity;
    if (this.running(account.name) + others >= limit) {
      this.refusedOverConcurrency += 1;
      return send(429, envelope(1303, 'parallel task over resource pack limit'));
    }
    const now = Date.now();
    const taskId = this.#newTaskId();
    const data = {
      task_id: taskId,
      task_status: 'submitted',
      task_status_msg: '',
      task_info: { external_task_id: externalId ?? '' },
      created_at: now,
      updated_at: now,
    };
    if (endpoint === BASE_PATH) {
      data.task_info.parent_video = body.video_url ? { id: '', url: body.video_url, duration: '5.0' } : { id: body.video_id, url: '', duration: '5.0' };
    }
    const task = { data, callbackUrl: body.callback_url, body, path: endpoint, account: account.name };
    this.tasks.set(taskId, task);
    this.peakRunningOf[account.name] = Math.max(this.peakRunningOf[account.name] ?? 0, this.running(account.name));
    this.peakRunning = Math.max(this.peakRunning, this.peakRunningOf[account.name]);
    if (this.callbackBeforeAnswering && task.callbackUrl) {
      // Kling may call back before its create answer arrives: play that race, once.
      const status = this.callbackBeforeAnswering;
      this.callbackBeforeAnswering = null;
      await this.advance(taskId, status, { updatedAt: now + 1 });
    }
    if (this.beforeAnswering) {
      // A test's own step between Kling taking the task and its answer (once).
      const step = this.beforeAnswering;
      this.beforeAnswering = null;
      await step(task);
    }
    send(200, envelope(0, 'SUCCEED', {
      task_id: taskId,
      task_status: 'submitted',
      task_info: { external_task_id: data.task_info.external_task_id },
      created_at: now,
      updated_at: now,
    }));
    if (typeof body.video_url === 'string' && body.video_url.includes('/v1/assets/')) {
      task.videoFetch = this.#fetchVideo(body.video_url);
    }
    if (this.autoProgress) this.#progress(taskId);
  }

  /** GETs a task's video with no credential, as Kling does. */
  async #fetchVideo(url) {
    const fetched = { url, at: Date.now() };
    try {
      const response = await fetch(url, { headers: { 'User-Agent': 'kling-fetcher' } });
      const bytes = Buffer.from(await response.arrayBuffer());
      Object.assign(fetched, {
        status: response.status,
        contentType: response.headers.get('content-type'),
        bytes: bytes.length,
        sha256: crypto.createHash('sha256').update(bytes).digest('hex'),
      });
    } catch (error) {
      fetched.error = String(error);
    }
    this.videoFetches.push(fetched);
    return fetched;
  }

  /**
   * An 18-digit id like Kling's that never repeats, across runs too (a restarted stand-in
   * must not hand out an id the worker's local state already holds): the clock in ms and a
   * counter. `reuseIdsFrom` plays an upstream that does repeat ids, from a given start.
   */
  #newTaskId() {
    if (this.reuseIdsFrom !== undefined) return `${BigInt(this.reuseIdsFrom) + BigInt(this.nextId++)}`;
    const millis = BigInt(Math.max(Date.now(), this.lastMillis ?? 0));
    if (millis !== BigInt(this.lastMillis ?? 0)) this.nextId = 0;
    this.lastMillis = Number(millis);
    return `${millis * 100000n + BigInt(this.nextId++)}`;
  }

  #progress(taskId) {
    const later = (ms, fn) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        fn().catch((error) => console.error(`[fake-kling] callback for ${taskId} failed: ${error.message}`));
      }, ms);
      this.timers.add(timer);
    };
    // An input (a video URL, a prompt) with "fail" in it plays a task Kling could not
    // process; one with "hold" stays processing until a test advances it.
    const { callback_url: _ours, ...inputs } = this.tasks.get(taskId).body;
    const said = JSON.stringify(inputs);
    later(this.stepMs, () => this.advance(taskId, 'processing'));
    if (/hold/i.test(said)) return;
    later(this.stepMs * 3, () => this.advance(taskId, /fail/i.test(said) ? 'failed' : 'succeed'));
  }

  #list(endpoint, url, send, account) {
    const pageNum = Number(url.searchParams.get('pageNum') ?? 1);
    const pageSize = Number(url.searchParams.get('pageSize') ?? 30);
    if (!Number.isInteger(pageNum) || pageNum < 1 || pageNum > 1000) return send(400, envelope(1201, 'pageNum'));
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 500) return send(400, envelope(1201, 'pageSize'));
    const all = [...this.tasks.values()].filter((t) => t.path === endpoint && t.account === account.name).map((t) => t.data)
      .sort((a, b) => b.created_at - a.created_at);
    send(200, envelope(0, 'SUCCEED', all.slice((pageNum - 1) * pageSize, pageNum * pageSize)));
  }

  /** A sample file (Range requests honoured); `?delay=MS` answers that much later (a slow server). */
  /** Kling's resource packs: start_time and end_time (epoch ms) are required, as Kling's are. */
  #costs(url, send) {
    const [start, end] = ['start_time', 'end_time'].map((name) => url.searchParams.get(name));
    if (!/^\d+$/.test(start ?? '') || !/^\d+$/.test(end ?? '') || Number(start) > Number(end)) {
      return send(400, envelope(1201, 'start_time and end_time are required (epoch ms, start before end)'));
    }
    return send(200, envelope(0, 'SUCCEED', {
      code: 0,
      msg: 'SUCCEED',
      resource_pack_subscribe_infos: [{
        resource_pack_name: 'Video Generation - 10 Credits', resource_pack_id: 'pack-1', resource_pack_type: 'decreasing_total',
        total_quantity: 200, remaining_quantity: 118, purchase_time: 1, effective_time: 1, invalid_time: 4102444800000, status: 'online',
      }],
    }));
  }

  async #sample(req, url, res) {
    const delay = Number(url.searchParams.get('delay') ?? 0);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, Math.min(delay, 10_000)));
    sendFile(req, res, path.join(SAMPLES_DIR, path.basename(url.pathname)), { 'access-control-allow-origin': '*' });
  }
}

export async function startFakeKling(options) {
  return new FakeKling(options).listen(options?.port ?? 0);
}
