import crypto from 'node:crypto';

// Test credentials (made up for the tests, valid nowhere else) and the fixtures they share.

/** A public video URL: valid input, never fetched (the fake Kling does not download it). */
export const VIDEO = 'https://cdn.example.com/clips/beach.mp4';
/** The official video-to-audio path family, and the simpler one the worker also offers. */
export const OFFICIAL = '/v1/audio/video-to-audio';
export const SIMPLIFIED = '/v1/videos/video-to-audio';

export const ACCESS_KEY = 'ak_test_8c1f2e0d';
export const SECRET_KEY = 'sk_test_5b7e9a3c41d2f6e8a0b9c7d5';
export const KLING_API_KEY = 'kling_api_test_2f4e6a8c0e1d3b5f';
export const WEB_KEY = 'pk_web_test_9d8c7b6a5f4e3d2c';
export const OPS_KEY = 'pk_ops_test_1a2b3c4d5e6f7a8b';

/** The settings of a worker that signs JWTs and talks to `fake`. */
export function baseSettings(fake, extra = {}) {
  return {
    KLING_ACCESS_KEY: ACCESS_KEY,
    KLING_SECRET_KEY: SECRET_KEY,
    KLING_API_BASE: fake.url,
    PROXY_API_KEYS: `web:${WEB_KEY},ops:${OPS_KEY}`,
    KLING_TIMEOUT_MS: '2000',
    // VIDEO above does not exist, so nothing could measure it: the probe has its own tests
    // (probe.test.mjs), with real files on a local server.
    VIDEO_PROBE: 'off',
    // The stand-in runs any number of tasks unless a test gives it Kling's concurrency: the
    // gate admits every create at once here (and still holds and frees a slot for each);
    // queue.test.mjs plays a busy account.
    KLING_MAX_CONCURRENCY: '1000',
    ...extra,
  };
}

/** Every secret value a test worker may hold: none may ever appear in a response or log. */
export const SECRETS = [SECRET_KEY, KLING_API_KEY, WEB_KEY, OPS_KEY];

/** A Standard Webhooks secret (`whsec_` + base64) made from a test phrase. */
export function webhookSecret(phrase) {
  return `whsec_${Buffer.from(phrase).toString('base64')}`;
}

/**
 * The secret that verifies one client's webhooks, computed independently of the worker from
 * the deployment's secret and the client's name (the README's published derivation).
 */
export function clientWebhookSecret(deploymentSecret, client) {
  const key = Buffer.from(deploymentSecret.replace(/^whsec_/, ''), 'base64');
  const derived = crypto.createHmac('sha256', key).update(`kling-edge client webhook v1\0${client}`).digest('base64');
  return `whsec_${derived}`;
}

/** A callback URL the worker gives Kling: its origin, then a 71-character capability. */
export const CALLBACK_URL = (origin) => new RegExp(`^${origin}/v1/callbacks/kling/[A-Za-z0-9_-]{71}$`);

/** A query answered by a task's coordinator asks Kling once nothing was heard for this long. */
export const QUERY_REFRESH_MS = 5_000;

/** The external task id the worker gives a create that has none (src/record/intent.rs). */
export const EDGE_EXTERNAL_ID = /^kling-edge-[0-9a-f]{32}$/;

/**
 * What a create sent to Kling carried of the client's own: its body without the worker's
 * `callback_url` and the worker's own `external_task_id` (each checked for its form).
 */
export function clientFields(body) {
  const { callback_url: callbackUrl, ...rest } = body;
  if (typeof callbackUrl !== 'string' || !/\/v1\/callbacks\/kling\/[A-Za-z0-9_-]{71}$/.test(callbackUrl)) {
    throw new Error(`not the worker's callback URL: ${callbackUrl}`);
  }
  if (EDGE_EXTERNAL_ID.test(rest.external_task_id ?? '')) delete rest.external_task_id;
  return rest;
}
