// The bench's reference: the least a developer would write by hand to put Kling's video to
// audio behind an app. It checks one client key, validates a video-to-audio body (the known
// fields, exactly one video, a .mp4/.mov URL, prompts of at most 200 characters), signs
// Kling's HS256 JWT with Web Crypto once per half hour, and forwards. No tenants, no
// coordinator, no probe, no rate limits, no copies: `make bench` compares kling-edge's CPU
// per request with this one's.

const encoder = new TextEncoder();
const FIELDS = new Set(['video_id', 'video_url', 'sound_effect_prompt', 'bgm_prompt', 'asmr_mode',
  'callback_url', 'external_task_id', 'video_duration']);
let cached = null;

const base64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
const segment = (value) => base64url(encoder.encode(JSON.stringify(value)));

async function klingToken(env) {
  const now = Math.floor(Date.now() / 1000);
  if (cached && cached.expires - 300 > now) return cached.token;
  const signed = `${segment({ alg: 'HS256', typ: 'JWT' })}.${segment({ iss: env.KLING_ACCESS_KEY, exp: now + 1800, nbf: now - 5 })}`;
  const key = await crypto.subtle.importKey('raw', encoder.encode(env.KLING_SECRET_KEY), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const signature = new Uint8Array(await crypto.subtle.sign('HMAC', key, encoder.encode(signed)));
  cached = { token: `${signed}.${base64url(signature)}`, expires: now + 1800 };
  return cached.token;
}

const refuse = (status, message) => new Response(JSON.stringify({ code: 1201, message, request_id: '' }), {
  status, headers: { 'content-type': 'application/json' },
});

function invalid(body) {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'body: must be a JSON object';
  for (const name of Object.keys(body)) if (!FIELDS.has(name)) return `${name}: unknown field`;
  if (!body.video_id === !body.video_url) return 'video_id, video_url: exactly one is required';
  if (body.video_url !== undefined && !/^https?:\/\/[^/]+\/.*\.(mp4|mov)(\?.*)?$/i.test(body.video_url)) return 'video_url: must be an http(s) .mp4 or .mov URL';
  for (const name of ['sound_effect_prompt', 'bgm_prompt']) {
    if (body[name] !== undefined && (typeof body[name] !== 'string' || body[name].length > 200)) return `${name}: at most 200 characters`;
  }
  if (body.asmr_mode !== undefined && typeof body.asmr_mode !== 'boolean') return 'asmr_mode: must be a boolean';
  return null;
}

export default {
  async fetch(request, env) {
    if (request.headers.get('authorization') !== `Bearer ${env.CLIENT_KEY}`) return refuse(401, 'Authorization: unknown API key');
    const url = new URL(request.url);
    let body;
    if (request.method === 'POST') {
      let input;
      try { input = await request.json(); } catch { return refuse(400, 'body: must be valid JSON'); }
      const problem = invalid(input);
      if (problem) return refuse(400, problem);
      delete input.video_duration;
      body = JSON.stringify(input);
    }
    const token = await klingToken(env);
    return fetch(env.UPSTREAM + url.pathname + url.search, {
      method: request.method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body,
    });
  },
};
