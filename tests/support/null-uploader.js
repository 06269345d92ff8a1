// The least a Worker can do to store an upload in R2, the baseline kling-edge's uploads are
// measured against (tests/e2e/upload-cost.test.mjs): a body with a Content-Length is put
// whole; one without is read and stored as a multipart upload of 8 MiB parts, as
// kling-edge stores it. No checks, no measurement, no records.
const PART_BYTES = 8 * 1024 * 1024;

export default {
  async fetch(request, env) {
    const key = `null/${crypto.randomUUID()}`;
    const length = request.headers.get('content-length');
    if (length) {
      await env.RESULTS.put(key, request.body);
      return Response.json({ data: { bytes: Number(length) } });
    }
    const upload = await env.RESULTS.createMultipartUpload(key);
    const reader = request.body.getReader();
    const parts = [];
    let part = new Uint8Array(PART_BYTES);
    let filled = 0;
    let total = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      for (let at = 0; at < value.length;) {
        const taken = Math.min(PART_BYTES - filled, value.length - at);
        part.set(value.subarray(at, at + taken), filled);
        filled += taken;
        at += taken;
        if (filled === PART_BYTES) {
          parts.push(await upload.uploadPart(parts.length + 1, part));
          part = new Uint8Array(PART_BYTES);
          filled = 0;
        }
      }
    }
    if (filled > 0 || parts.length === 0) parts.push(await upload.uploadPart(parts.length + 1, part.subarray(0, filled)));
    await upload.complete(parts);
    return Response.json({ data: { bytes: total } });
  },
};
