// Serving media files the way web servers do, for the worker's video probe to read: with
// Range requests honoured (206 and Content-Range, as CDNs answer), or ignored (200 and the
// whole file, as some servers do), plus the shapes of trouble a video URL can have.
//
// `sendFile` is shared with the Kling stand-in's samples. `startMediaServer` serves the
// committed videos of tests/media/ under `/media/NAME` (or another directory under another
// prefix: the stand-in's samples, as Kling's CDN), shaped by query parameters:
//   ?range=ignore       answer every request 200 with the whole file
//   ?redirects=N        answer with N redirects (302) before the file
//   ?location=URL       answer with one redirect (302) to URL
//   ?claim=BYTES        answer a range with the file's bytes but claim a total of BYTES
//   ?pad=BYTES          the file with its `mdat` box padded by BYTES (still a valid MP4)
//   ?as=html            an HTML page instead, whatever the name says
//   ?delay=MS           answer that much later (a slow server)
// and any other name answers 404. With `omitLength` set, files go out without
// `Content-Length` (chunked); with `padTo` set, every file is padded with zeros to that size. It counts the requests and the body bytes it sent per path and
// query, so tests can see what the worker read; `stop()` and `start()` take it down and up
// on the same port.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const MEDIA_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../media');
/** The stand-in's sample results (samples/). */
export const SAMPLES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../samples');
const TYPES = { '.mp4': 'video/mp4', '.mov': 'video/quicktime', '.mp3': 'audio/mpeg', '.wav': 'audio/wav' };

/** `bytes=a-b`, `bytes=a-` or `bytes=-n` of a file of `size` bytes → [start, end] inclusive. */
export function parseRange(header, size) {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header?.trim() ?? '');
  if (!match || (match[1] === '' && match[2] === '')) return undefined;
  if (match[1] === '') return [Math.max(0, size - Number(match[2])), size - 1];
  const start = Number(match[1]);
  const end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  return start <= end && start < size ? [start, end] : null;
}

/**
 * Answers `req` with `bytes` (a Buffer) the way a file server does: 206 for a satisfiable
 * Range, 416 for an unsatisfiable one, else 200 with the whole body. Returns the body bytes sent.
 */
export function sendBytes(req, res, bytes, { type, ranges = true, claimedSize, headers = {} } = {}) {
  const size = bytes.length;
  const common = { 'content-type': type, 'accept-ranges': ranges ? 'bytes' : 'none', ...headers };
  const range = ranges ? parseRange(req.headers.range, size) : undefined;
  if (range === null) {
    res.writeHead(416, { ...common, 'content-range': `bytes */${size}` });
    res.end();
    return 0;
  }
  const body = range ? bytes.subarray(range[0], range[1] + 1) : bytes;
  if (range) {
    res.writeHead(206, {
      ...common,
      'content-range': `bytes ${range[0]}-${range[1]}/${claimedSize ?? size}`,
      'content-length': body.length,
    });
  } else {
    res.writeHead(200, { ...common, 'content-length': claimedSize ?? size });
  }
  if (req.method === 'HEAD') {
    res.end();
    return 0;
  }
  res.end(body);
  return body.length;
}

/** Answers `req` with a file from disk (see `sendBytes`); 404 when there is none. */
export function sendFile(req, res, file, headers = {}) {
  if (!fs.existsSync(file)) {
    res.writeHead(404);
    res.end();
    return 0;
  }
  const type = TYPES[path.extname(file)] ?? 'application/octet-stream';
  return sendBytes(req, res, fs.readFileSync(file), { type, headers });
}

/** An MP4 with `extra` zero bytes appended inside its `mdat` box: the samples do not move. */
export function padMdat(bytes, extra) {
  let offset = 0;
  while (offset + 8 <= bytes.length) {
    const size = bytes.readUInt32BE(offset);
    const kind = bytes.toString('latin1', offset + 4, offset + 8);
    if (size < 8) break;
    if (kind === 'mdat') {
      const header = Buffer.from(bytes.subarray(offset, offset + 8));
      header.writeUInt32BE(size + extra, 0);
      return Buffer.concat([
        bytes.subarray(0, offset), header, bytes.subarray(offset + 8, offset + size),
        Buffer.alloc(extra), bytes.subarray(offset + size),
      ]);
    }
    offset += size;
  }
  throw new Error('no 32-bit mdat box to pad');
}

export class MediaServer {
  constructor({ dir = MEDIA_DIR, prefix = '/media/' } = {}) {
    this.dir = dir;
    this.prefix = prefix;
    /** Per path and query: { requests, bytes, ranges: [Range header...] }. */
    this.served = new Map();
    this.omitLength = false;
    this.padTo = 0;
  }

  /** What was served for `pathAndQuery` (`/media/NAME?...`). */
  stats(pathAndQuery) {
    return this.served.get(pathAndQuery) ?? { requests: 0, bytes: 0, ranges: [] };
  }

  async listen(port = 0) {
    this.server = http.createServer((req, res) => this.#serve(req, res));
    await new Promise((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async close() {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Takes the server down (connections refused) until `start()`. */
  stop() {
    return this.close();
  }

  start() {
    return this.listen(Number(new URL(this.url).port));
  }

  async #serve(req, res) {
    const url = new URL(req.url, this.url);
    const key = url.pathname + url.search;
    const stats = this.stats(key);
    this.served.set(key, stats);
    stats.requests += 1;
    stats.ranges.push(req.headers.range ?? null);
    const count = (bytes) => { stats.bytes += bytes; };
    const delay = Number(url.searchParams.get('delay') ?? 0);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));

    const redirects = Number(url.searchParams.get('redirects') ?? 0);
    if (redirects > 0) {
      const next = new URL(url);
      next.searchParams.set('redirects', String(redirects - 1));
      res.writeHead(302, { location: next.pathname + next.search });
      return res.end();
    }
    const location = url.searchParams.get('location');
    if (location) {
      res.writeHead(302, { location });
      return res.end();
    }
    if (url.searchParams.get('as') === 'html') {
      const page = Buffer.from(`<!doctype html><title>Not found</title><p>${'Nothing here. '.repeat(40)}</p>`);
      return count(sendBytes(req, res, page, { type: 'text/html; charset=utf-8' }));
    }
    const file = path.join(this.dir, path.basename(url.pathname));
    if (!url.pathname.startsWith(this.prefix) || !fs.existsSync(file)) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('not found');
    }
    let bytes = fs.readFileSync(file);
    if (bytes.length < this.padTo) bytes = Buffer.concat([bytes, Buffer.alloc(this.padTo - bytes.length)]);
    const pad = Number(url.searchParams.get('pad') ?? 0);
    if (pad > 0) bytes = padMdat(bytes, pad);
    const claim = url.searchParams.get('claim');
    const type = TYPES[path.extname(file)];
    if (url.searchParams.get('range') === 'ignore' || this.omitLength) {
      return this.#stream(req, res, bytes, type, count);
    }
    count(sendBytes(req, res, bytes, { type, claimedSize: claim ? Number(claim) : undefined }));
  }

  /** The whole file, 64 KiB at a time as the client takes it, whatever Range asked for. */
  #stream(req, res, bytes, type, count) {
    res.writeHead(200, this.omitLength ? { 'content-type': type } : { 'content-type': type, 'content-length': bytes.length });
    let offset = 0;
    const more = () => {
      while (offset < bytes.length) {
        const chunk = bytes.subarray(offset, offset + 64 * 1024);
        offset += chunk.length;
        count(chunk.length);
        if (!res.write(chunk)) return res.once('drain', more);
      }
      res.end();
    };
    res.on('close', () => { offset = bytes.length; });
    more();
  }
}

export async function startMediaServer(options) {
  return new MediaServer(options).listen();
}
