// A client's webhook receiver on loopback: verifies the Standard Webhooks signature the
// worker puts on forwarded tasks (as a client following the README would), records every
// delivery, and can be told to fail.

import crypto from 'node:crypto';
import http from 'node:http';

/** Verifies a Standard Webhooks message; returns null when valid, else the reason. */
export function verifyWebhook(secret, headers, body, nowSeconds = Math.floor(Date.now() / 1000)) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return 'missing headers';
  if (Math.abs(nowSeconds - Number(timestamp)) > 300) return 'stale timestamp';
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const expected = crypto.createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest();
  for (const candidate of signatures.split(' ')) {
    const [version, encoded] = candidate.split(',');
    const given = Buffer.from(encoded ?? '', 'base64');
    if (version === 'v1' && given.length === expected.length && crypto.timingSafeEqual(given, expected)) return null;
  }
  return 'bad signature';
}

export class Receiver {
  constructor(secret) {
    this.secret = secret;
    this.deliveries = [];
    this.failures = new Map(); // path -> statuses to answer next, in order
    this.failingUntil = new Map(); // path -> [epoch ms, status]: answer status until then
    this.server = http.createServer(async (req, res) => {
      const chunks = [];
      for await (const chunk of req) chunks.push(chunk);
      const body = Buffer.concat(chunks).toString('utf8');
      const verdict = verifyWebhook(this.secret, req.headers, body);
      const until = this.failingUntil.get(req.url);
      const planned = this.failures.get(req.url)?.shift() ?? (until && Date.now() < until[0] ? until[1] : undefined);
      const status = verdict ? 401 : (planned ?? 200);
      if (this.answerAfterMs) await new Promise((resolve) => setTimeout(resolve, this.answerAfterMs));
      this.deliveries.push({ path: req.url, headers: req.headers, body, json: JSON.parse(body), verdict, status, receivedAt: Date.now() });
      res.writeHead(status);
      res.end();
    });
  }

  async listen(port = 0) {
    await new Promise((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  /** The next answers to deliveries on `path` (then 200). */
  failNext(path, ...statuses) {
    this.failures.set(path, statuses);
  }

  /** Answers every delivery only after `ms` (a slow receiver). */
  answerAfter(ms) {
    this.answerAfterMs = ms;
    return this;
  }

  /** Answers `status` to every delivery on `path` for the next `ms`. */
  failFor(path, ms, status = 503) {
    this.failingUntil.set(path, [Date.now() + ms, status]);
  }

  at(path) {
    return this.deliveries.filter((d) => d.path === path);
  }

  async close() {
    await new Promise((resolve) => this.server.close(resolve));
  }
}
