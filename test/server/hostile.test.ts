/**
 * Hostile and heavy clients against createServer, in-process: request targets and headers Node's parser and
 * ours must survive, bodies that are huge, slow, endless or malformed, knobs that would multiply the work,
 * sockets that never finish, and floods. After every class the server still answers /health, and what it
 * holds (queued requests, body bytes) goes back to zero.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipCap } from '../../src/pipeline/caption.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from '../../src/pipeline/types.js';
import { createServer, type CaptionModel, type CaptionServer } from '../../src/server/index.js';

const FIX = path.resolve(__dirname, '../fixtures');
const NAMES = (JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as { images: string[] })
  .images;
const photo = (i: number): Buffer => readFileSync(path.join(FIX, 'images', NAMES[i]));

interface Raw {
  status: number;
  headers: string;
  body: string;
  /** ms from connect to the socket's close (or to the answer when it stayed open). */
  ms: number;
  closed: boolean;
}

/**
 * Send `chunks` over a fresh socket (a function chunk is awaited: a pause), then read until the server
 * closes the socket or `waitMs` passes. Returns the first response found.
 */
async function raw(
  port: number,
  chunks: (string | Buffer | (() => Promise<void>))[],
  waitMs = 3000,
): Promise<Raw> {
  const t0 = performance.now();
  const sock = net.connect(port, '127.0.0.1');
  sock.on('error', () => undefined);
  let data = Buffer.alloc(0);
  let closed = false;
  let closedAt = 0;
  const done = new Promise<void>((resolve) => {
    sock.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
    sock.on('close', () => {
      closed = true;
      closedAt = performance.now();
      resolve();
    });
  });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  for (const c of chunks) {
    if (closed) break;
    if (typeof c === 'function') await Promise.race([c(), done]);
    else if (!sock.destroyed) sock.write(c);
  }
  await Promise.race([done, new Promise((r) => setTimeout(r, waitMs))]);
  const ms = (closed ? closedAt : performance.now()) - t0;
  sock.destroy();
  const text = data.toString('latin1');
  const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
  const split = text.indexOf('\r\n\r\n');
  return {
    status: m ? Number(m[1]) : 0,
    headers: split < 0 ? text : text.slice(0, split),
    body: split < 0 ? '' : text.slice(split + 4),
    ms,
    closed,
  };
}

const sleep = (ms: number) => () => new Promise<void>((r) => setTimeout(r, ms));

function errorOf(r: Raw): string {
  const j = JSON.parse(r.body.replace(/^[0-9a-f]+\r\n/, '').replace(/\r\n0\r\n\r\n$/, '')) as {
    error: string;
  };
  return j.error;
}

let model: ClipCap;
let srv: CaptionServer;
let port: number;
let base: string;

async function healthy(s: CaptionServer = srv): Promise<void> {
  const p = (s.server.address() as net.AddressInfo).port;
  const res = await fetch(`http://127.0.0.1:${p}/health`);
  expect(res.status).toBe(200);
}

async function settled(s: CaptionServer = srv): Promise<void> {
  // What the server holds goes back to zero once every exchange is over.
  for (let i = 0; i < 100; i++) {
    const st = s.stats();
    if (st.queuedRequests === 0 && st.bodyBytes === 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(s.stats()).toMatchObject({ queuedRequests: 0, bodyBytes: 0 });
}

beforeAll(async () => {
  model = await ClipCap.load({
    clipcap: path.join(FIX, 'clipcap_mlp_tiny.pt'),
    clip: path.join(FIX, 'clip_tiny'),
    gpt2: path.join(FIX, 'gpt2_tiny'),
    offline: true,
  });
  srv = createServer(model, {
    decodeDefaults: { maxTokens: 8 },
    maxBodyBytes: 200_000,
    maxBodyBudgetBytes: 1_000_000,
    limits: {
      beamSize: 8,
      numCaptions: 4,
      maxTokens: 30,
      imagesPerRequest: 3,
      embeddingsPerRequest: 5,
      batchRows: 16,
    },
    timeouts: { headersMs: 600, bodyMs: 900, idleMs: 400, computeMs: 20_000 },
  });
  port = (await srv.listen(0, '127.0.0.1')).port;
  base = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  await srv?.close();
  model?.dispose();
});

async function post(
  q: string,
  body: string | Buffer,
  type: string,
): Promise<{ status: number; error?: string }> {
  const res = await fetch(base + q, { method: 'POST', body, headers: { 'content-type': type } });
  const j = (await res.json()) as { error?: string };
  return { status: res.status, error: j.error };
}

describe('request targets and headers', () => {
  it('odd paths get 4xx (never a crash); the absolute form is understood', async () => {
    const targets: [string, number][] = [
      ['//', 404],
      ['///caption', 404],
      ['/%', 404],
      ['/%zz?x=%', 404],
      ['/caption/../health', 404],
      ['/health?x=1&x=2', 200],
      ['/health#frag', 404],
      ['http://localhost/health', 200],
      ['http:/health', 400],
      ['https://x', 200], // absolute form with an empty path: the page
      ['*', 400],
      ['health', 400],
      ['/' + 'a'.repeat(8000), 404],
      ['/\u00e9\u00ff', 400], // Node's parser refuses raw non-ASCII
    ];
    for (const [t, want] of targets) {
      const method = t === '*' ? 'OPTIONS' : 'GET';
      const r = await raw(port, [`${method} ${t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`]);
      expect(r.status, t).toBe(want);
      if (want >= 400) expect(errorOf(r)).not.toMatch(/\n/);
    }
    // What the old server died of, with other requests in flight.
    const inFlight = Array.from({ length: 6 }, (_, i) =>
      post('/caption?decode=greedy', photo(i % 3), 'image/jpeg'),
    );
    const r = await raw(port, ['GET // HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n']);
    expect(r.status).toBe(404);
    for (const a of await Promise.all(inFlight)) expect(a.status).toBe(200);
    await healthy();
  });

  it('malformed requests get 400 / 431 from the parser, and the server keeps serving', async () => {
    const cases: [string, number][] = [
      ['GARBAGE\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nHost: x\r\nX: ' + 'y'.repeat(20_000) + '\r\n\r\n', 431],
      ['POST /caption HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n', 400],
      ['POST /caption HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello', 400],
      [
        'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n',
        400,
      ],
      ['GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n', 400],
      ['GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n', 400],
    ];
    for (const [req, want] of cases) {
      const r = await raw(port, [req]);
      expect(r.status, JSON.stringify(req.slice(0, 60))).toBe(want);
      expect(r.closed).toBe(true);
    }
    // Protocol switches nobody here speaks: answered as plain HTTP/1.1 or refused, and the connection closed.
    for (const req of [
      'GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
      'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n',
      'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    ]) {
      const r = await raw(port, [req]);
      expect(r.closed, req.slice(0, 20)).toBe(true);
      expect(r.status === 0 || r.status === 200 || r.status >= 400, req.slice(0, 20)).toBe(true);
    }
    // Pipelined requests in one packet are answered in order.
    const piped = await raw(port, [
      'GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    ]);
    expect(piped.headers).toMatch(/^HTTP\/1\.1 200/);
    expect(piped.body).toMatch(/HTTP\/1\.1 404/);
    await healthy();
  });

  it('wrong methods are 405 with Allow; unknown Content-Types 415 before the body is read', async () => {
    const r = await raw(port, ['DELETE /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n']);
    expect(r.status).toBe(405);
    expect(r.headers).toMatch(/allow: GET, HEAD/i);
    // The 415 comes from the headers alone; the announced body never needs to arrive.
    const t = await raw(port, [
      'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n',
    ]);
    expect(t.status).toBe(415);
    expect(t.closed).toBe(true);
    await settled();
  });
});

describe('bodies', () => {
  it('a huge declared body is refused at once (413) without reading it', async () => {
    const r = await raw(port, [
      'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000000000\r\n\r\n',
    ]);
    expect(r.status).toBe(413);
    expect(errorOf(r)).toMatch(/over the 200000-byte limit/);
    expect(r.closed).toBe(true);
    await settled();
  });

  it('Expect: 100-continue gets "100 Continue" only when the body will be read', async () => {
    const big = await raw(port, [
      'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nExpect: 100-continue\r\nContent-Length: 999999999\r\n\r\n',
    ]);
    expect(big.status).toBe(413); // straight away: no "100 Continue" first
    const bytes = photo(0);
    const ok = await raw(port, [
      `POST /caption?decode=greedy HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: ${bytes.length}\r\n\r\n`,
      sleep(200),
      bytes,
    ]);
    expect(ok.headers).toMatch(/^HTTP\/1\.1 100 Continue/);
    expect(ok.body).toMatch(/HTTP\/1\.1 200/);
    await settled();
  });

  it('slow headers, slow bodies, endless chunked bodies and idle sockets are closed within their timeouts', async () => {
    const slowHeaders = raw(
      port,
      [
        'POST /caption HTTP/1.1\r\n',
        sleep(300),
        'Host: x\r\n',
        sleep(300),
        'X-A: 1\r\n',
        sleep(2000),
        '\r\n',
      ],
      4000,
    );
    const slowBody = raw(
      port,
      [
        'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n',
        ...Array.from({ length: 20 }, () => [Buffer.alloc(10, 1), sleep(200)]).flat(),
      ],
      5000,
    );
    const endless = raw(
      port,
      [
        'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n',
        ...Array.from({ length: 40 }, () => ['1\r\nx\r\n', sleep(100)]).flat(),
      ],
      5000,
    );
    const silent = raw(port, [], 4000);
    const idle = raw(port, ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], 4000);
    const [h, b, e, s, i] = await Promise.all([slowHeaders, slowBody, endless, silent, idle]);
    // Node checks these timers about every 300 ms here: allow for that and a busy machine.
    expect(h.closed).toBe(true);
    expect(h.ms).toBeLessThan(2500);
    expect(b.closed).toBe(true);
    expect(b.status).toBe(408);
    expect(b.ms).toBeLessThan(3000);
    expect(e.closed).toBe(true);
    expect(e.ms).toBeLessThan(3000);
    expect(s.closed).toBe(true);
    expect(s.ms).toBeLessThan(2500);
    expect(i.status).toBe(200);
    expect(i.closed).toBe(true);
    expect(i.ms).toBeLessThan(2500);
    await settled();
    await healthy();
  });

  it('a client that vanishes mid-body or mid-compute costs nothing afterwards', async () => {
    await raw(
      port,
      [
        'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n',
        'abc',
      ],
      50,
    );
    const bytes = photo(0);
    await raw(
      port,
      [
        `POST /caption?decode=greedy HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: ${bytes.length}\r\n\r\n`,
        bytes,
      ],
      5,
    );
    await settled();
    await healthy();
  });

  it('malformed multipart bodies are 400 with one line', async () => {
    const B = 'bnd';
    const T = `multipart/form-data; boundary=${B}`;
    const part = (headers: string, data: string | Buffer): Buffer =>
      Buffer.concat([Buffer.from(`--${B}\r\n${headers}\r\n\r\n`), Buffer.from(data), Buffer.from('\r\n')]);
    const img = (d: Buffer | string): Buffer =>
      part('Content-Disposition: form-data; name="image"; filename="a.jpg"', d);
    const end = Buffer.from(`--${B}--\r\n`);
    const cases: [Buffer | string, string, RegExp][] = [
      [Buffer.concat([img(photo(0))]), T, /not closed by the boundary|truncated/],
      ['no boundary here at all', T, /boundary never appears/],
      [Buffer.concat([part('Content-Disposition: form-data', 'x'), end]), T, /no field name/],
      [Buffer.concat([part('Content-Type: image/jpeg', 'x'), end]), T, /Content-Disposition/],
      [Buffer.concat([part('X-' + 'h'.repeat(9000) + ': 1', 'x'), end]), T, /headers over/],
      [Buffer.concat([img(''), end]), T, /image 0 is empty/],
      [Buffer.concat([...Array.from({ length: 4 }, () => img('x')), end]), T, /more than 3 images/],
      [Buffer.concat([...Array.from({ length: 40 }, () => img('x')), end]), T, /more than 11 parts/],
      [
        Buffer.concat([part('Content-Disposition: form-data; name="other"', 'x'), end]),
        T,
        /unexpected form field "other"/,
      ],
      [
        Buffer.concat([
          part('Content-Disposition: form-data; name="seed"', '1'),
          part('Content-Disposition: form-data; name="seed"', '2'),
          img(photo(0)),
          end,
        ]),
        T,
        /"seed" is given twice/,
      ],
      [Buffer.concat([part('Content-Disposition: form-data; name="seed"', '1'), end]), T, /no "image" file/],
      [Buffer.concat([img(photo(0)), end]), 'multipart/form-data; boundary=', /boundary/],
      [Buffer.concat([img(photo(0)), end]), `multipart/form-data; boundary=${'z'.repeat(100)}`, /boundary/],
    ];
    for (const [body, type, re] of cases) {
      const r = await post('/caption', body, type);
      expect(r.status, String(re)).toBe(400);
      expect(r.error).toMatch(re);
      expect(r.error).not.toMatch(/\n/);
    }
    await settled();
    await healthy();
  });

  it('bad JSON bodies are 400 naming the field', async () => {
    const D = model.embeddingSize;
    const e = Array.from({ length: D }, (_, i) => i / D);
    const cases: [string, RegExp][] = [
      ['{"embedding": [1,', /not valid JSON/],
      ['['.repeat(100_000) + ']'.repeat(100_000), /JSON body must be an object/],
      ['{"a":'.repeat(30_000) + '1' + '}'.repeat(30_000), /holds no "embedding"|not valid JSON/],
      ['null', /must be an object/],
      ['"text"', /must be an object/],
      ['{}', /holds no "embedding"/],
      ['{"embedding": "1,2,3"}', /"embedding" must be an array of numbers/],
      ['{"embedding": [1, "2"]}', /"embedding" must be an array of numbers/],
      ['{"embedding": [1, 2, 3]}', new RegExp(`"embedding" has 3 values but the model expects ${D}`)],
      [JSON.stringify({ embeddings: [1, 2] }), /embeddings\[0\] must be an array of numbers/],
      [JSON.stringify({ embeddings: {} }), /"embeddings" must be an array/],
      [JSON.stringify({ embeddings: Array.from({ length: 6 }, () => e) }), /at most 5 per request/],
      [
        JSON.stringify({ embedding: e, __proto__: 1 }).replace('"embedding"', '"__proto__":{},"embedding"'),
        /unknown option "__proto__"/,
      ],
      [JSON.stringify({ embedding: e, max_tokens: [3] }), /max_tokens must be an integer/],
      [JSON.stringify({ embedding: e, max_tokens: true }), /max_tokens must be an integer/],
      [JSON.stringify({ embedding: e }).replace(/0\.5/, '1e400'), /NaN or infinite/],
    ];
    for (const [body, re] of cases) {
      const r = await post('/caption', body, 'application/json');
      expect(r.status, body.slice(0, 40)).toBe(400);
      expect(r.error).toMatch(re);
      expect(r.error!.length).toBeLessThan(300);
    }
    await settled();
    await healthy();
  });
});

describe('knobs', () => {
  it('every per-request knob past its server limit is a 400 naming the API field', async () => {
    const img = photo(0);
    const cases: [string, RegExp][] = [
      ['beam_size=1000', /^beam_size must be an integer from 1 to 8, got "1000"$/],
      ['beam_size=9', /beam_size must be an integer from 1 to 8/],
      ['decode=nucleus&num_captions=1000', /^num_captions must be an integer from 1 to 4/],
      ['max_tokens=500', /^max_tokens must be an integer from 1 to 30/],
      ['max_tokens=1e9', /^max_tokens must be an integer from 1 to 30/],
      ['max_tokens=2.5', /max_tokens must be an integer/],
      ['max_tokens=', /max_tokens must be an integer/],
      ['seed=-1', /seed must be an integer from 0 to 4294967295/],
      ['seed=1e20', /seed must be an integer/],
      ['temperature=0', /temperature must be a number over 0/],
      ['temperature=1e308', /temperature must be a number over 0 and at most 100/],
      ['top_p=NaN', /top_p must be a number/],
      ['decode=', /decode must be beam, greedy or nucleus/],
      ['stop=%0a', /stop must be/],
      ['beam_size=2&beam_size=3', /"beam_size" is given twice/],
      ['%ff=1', /unknown option/],
    ];
    for (const [q, re] of cases) {
      const r = await post(`/caption?${q}`, img, 'image/jpeg');
      expect(r.status, q).toBe(400);
      expect(r.error).toMatch(re);
      expect(r.error).not.toMatch(/--/); // API names, never CLI flags
    }
    // The 7 KB request that once took 6 GB: 16 embeddings at beam 1000 is refused at once.
    const D = model.embeddingSize;
    const big = JSON.stringify({
      embeddings: Array.from({ length: 5 }, () => Array.from({ length: D }, () => 0.1)),
      beam_size: 1000,
      max_tokens: 10,
    });
    const r = await post('/caption', big, 'application/json');
    expect(r.status).toBe(400);
    expect(r.error).toMatch(/beam_size/);
    await healthy();
  });

  it('the largest allowed request runs in calls of at most batchRows rows', async () => {
    const calls: number[] = [];
    const counted: CaptionModel = {
      caption: (inputs: readonly CaptionInput[], o?: CaptionOptions): Promise<CaptionResult[]> => {
        calls.push(inputs.length * (o?.method === 'beam' ? (o.beamSize ?? 5) : 1));
        return model.caption(inputs, o);
      },
    };
    const s = createServer(counted, {
      limits: { beamSize: 8, embeddingsPerRequest: 5, batchRows: 16, maxTokens: 4 },
      decodeDefaults: { maxTokens: 4 },
    });
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      const D = model.embeddingSize;
      const res = await fetch(`http://127.0.0.1:${p}/caption?beam_size=8`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          embeddings: Array.from({ length: 5 }, (_, i) => Array.from({ length: D }, () => i)),
        }),
      });
      expect(res.status).toBe(200);
      const j = (await res.json()) as { results: { index: number; candidates: unknown[] }[] };
      expect(j.results.map((r) => r.index)).toEqual([0, 1, 2, 3, 4]);
      expect(j.results[4].candidates.length).toBe(8);
      expect(calls).toEqual([16, 16, 8]);
    } finally {
      await s.close();
    }
  });
});

/** A model that takes `ms` per call (a timer, so the event loop stays free) and captions embeddings. */
function slowModel(ms: number): CaptionModel & { calls: number } {
  const m = {
    calls: 0,
    async caption(inputs: readonly CaptionInput[]): Promise<CaptionResult[]> {
      m.calls++;
      await new Promise((r) => setTimeout(r, ms));
      return inputs.map((_, index) => ({ index, caption: 'a cat.', tokens: [1] }));
    },
  };
  return m;
}

describe('load', () => {
  it('a flood past the queue gets 503 with Retry-After; the rest are answered; /health stays quick', async () => {
    const s = createServer(slowModel(100), { maxQueuedRequests: 4, batchSize: 1, batchWindowMs: 0 });
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      const url = `http://127.0.0.1:${p}/caption`;
      const reqs = Array.from({ length: 30 }, () =>
        fetch(url, {
          method: 'POST',
          body: '{"embedding":[1]}',
          headers: { 'content-type': 'application/json' },
        }),
      );
      await new Promise((r) => setTimeout(r, 50));
      const t0 = performance.now();
      expect((await fetch(`http://127.0.0.1:${p}/health`)).status).toBe(200);
      const healthMs = performance.now() - t0;
      const res = await Promise.all(reqs);
      const codes = res.map((r) => r.status);
      const busy = res.filter((r) => r.status === 503);
      console.log(
        `flood: ${codes.filter((c) => c === 200).length} answered, ${busy.length} refused, /health ${healthMs.toFixed(0)} ms`,
      );
      expect(codes.filter((c) => c === 200).length).toBeGreaterThanOrEqual(4);
      expect(busy.length).toBeGreaterThan(0);
      expect(codes.every((c) => c === 200 || c === 503)).toBe(true);
      expect(Number(busy[0].headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(((await busy[0].json()) as { error: string }).error).toMatch(/busy/);
      expect(healthMs).toBeLessThan(1000);
      expect(s.stats().queuedRequests).toBe(0);
    } finally {
      await s.close();
    }
  });

  it('bodies past the total body budget get 503; the budget is given back', async () => {
    const s = createServer(slowModel(200), {
      maxBodyBytes: 100_000,
      maxBodyBudgetBytes: 250_000,
      batchWindowMs: 0,
    });
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      const body = Buffer.alloc(90_000, 0x20); // JSON whitespace: parses as "no embedding" only at the end
      const bodyOk = Buffer.concat([Buffer.from('{"embedding":[1]}'), body]);
      const res = await Promise.all(
        Array.from({ length: 6 }, () =>
          fetch(`http://127.0.0.1:${p}/caption`, {
            method: 'POST',
            body: bodyOk,
            headers: { 'content-type': 'application/json' },
          }),
        ),
      );
      const codes = res.map((r) => r.status).sort();
      expect(codes.filter((c) => c === 503).length).toBeGreaterThan(0);
      expect(codes.filter((c) => c === 200).length).toBeGreaterThanOrEqual(2);
      for (const r of res) if (r.status === 503) expect(r.headers.get('retry-after')).toMatch(/^\d+$/);
      await settled(s);
    } finally {
      await s.close();
    }
  });

  it('a long computation is not cut off by the body timeout (that is for receiving the request)', async () => {
    const s = createServer(slowModel(1200), { timeouts: { headersMs: 300, bodyMs: 400 }, batchWindowMs: 0 });
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      const r = await fetch(`http://127.0.0.1:${p}/caption`, {
        method: 'POST',
        body: '{"embedding":[1]}',
        headers: { 'content-type': 'application/json' },
      });
      expect(r.status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it('a request past its compute deadline is a 503 and the server goes on', async () => {
    const s = createServer(slowModel(300), { timeouts: { computeMs: 100 }, batchWindowMs: 0 });
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      const r = await fetch(`http://127.0.0.1:${p}/caption`, {
        method: 'POST',
        body: '{"embedding":[1]}',
        headers: { 'content-type': 'application/json' },
      });
      expect(r.status).toBe(503);
      expect(((await r.json()) as { error: string }).error).toMatch(/longer than 0\.1 s/);
      expect(r.headers.get('retry-after')).toMatch(/^\d+$/);
      await healthy(s);
    } finally {
      await s.close();
    }
  });

  it('many connections at once: the ones past maxConnections are dropped, the server lives', async () => {
    const s = createServer(slowModel(10), { maxConnections: 5 });
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      const socks = Array.from({ length: 20 }, () => {
        const c = net.connect(p, '127.0.0.1');
        c.on('error', () => undefined);
        return c;
      });
      await new Promise((r) => setTimeout(r, 200));
      expect(s.stats().connections).toBeLessThanOrEqual(5);
      for (const c of socks) c.destroy();
      await new Promise((r) => setTimeout(r, 100));
      await healthy(s);
    } finally {
      await s.close();
    }
  });
});

describe('createServer options', () => {
  it('rejects unknown keys and bad values with a message naming them', () => {
    const m = slowModel(1);
    expect(() => createServer(m, { maxTokens: 3 } as never)).toThrow(
      /createServer options: unknown option "maxTokens"; known options: decodeDefaults/,
    );
    expect(() => createServer(m, { decodeDefaults: { beam: 3 } } as never)).toThrow(
      /options.decodeDefaults: unknown option "beam"/,
    );
    expect(() => createServer(m, { limits: { beams: 3 } } as never)).toThrow(
      /options.limits: unknown option "beams"/,
    );
    expect(() => createServer(m, { timeouts: { header: 3 } } as never)).toThrow(/unknown option "header"/);
    expect(() => createServer(m, { batchSize: 0 })).toThrow(/batchSize must be an integer from 1/);
    expect(() => createServer(m, { decodeDefaults: { beamSize: 50 } })).toThrow(
      /over limits.beamSize \(16\)/,
    );
    expect(() => createServer(m, { decodeDefaults: { topP: 3 } })).toThrow(/top-p/);
    expect(() => createServer(m, { limits: { batchRows: 4 } })).toThrow(/batchRows \(4\) must be at least/);
    expect(() => createServer(m, { batchSize: 2, maxBatch: 3 })).toThrow(/batchSize only/);
    expect(createServer(m, { maxBatch: 3 }).options.batchSize).toBe(3);
  });

  it('/health names the model without modelInfo; logging is off unless asked', async () => {
    const lines: string[] = [];
    const s = createServer(model, { log: (l) => lines.push(l) });
    const quiet = createServer(model);
    const p = (await s.listen(0, '127.0.0.1')).port;
    const q = (await quiet.listen(0, '127.0.0.1')).port;
    const write = process.stderr.write.bind(process.stderr);
    let stderr = '';
    process.stderr.write = ((c: string | Uint8Array) => {
      stderr += String(c);
      return true;
    }) as typeof process.stderr.write;
    try {
      const h = (await (await fetch(`http://127.0.0.1:${p}/health`)).json()) as {
        model: { description: string; embeddingSize: number; backend: string };
        limits: { beamSize: number };
      };
      expect(h.model.description).toBe(model.parts.description);
      expect(h.model.embeddingSize).toBe(model.embeddingSize);
      expect(h.model.backend).toBe(model.backend.name);
      expect(h.limits.beamSize).toBe(16);
      await fetch(`http://127.0.0.1:${q}/health`);
      await fetch(`http://127.0.0.1:${q}/nope`);
    } finally {
      process.stderr.write = write;
      await s.close();
      await quiet.close();
    }
    expect(lines.some((l) => /^GET \/health 200 [\d.]+ ms$/.test(l))).toBe(true);
    expect(stderr).not.toMatch(/\/nope/);
  });

  it('a port in use is a one-line UserError', async () => {
    const s = createServer(slowModel(1));
    const p = (await s.listen(0, '127.0.0.1')).port;
    try {
      await expect(createServer(slowModel(1)).listen(p, '127.0.0.1')).rejects.toThrow(
        new RegExp(`^cannot listen on 127.0.0.1:${p}: the port is in use$`),
      );
    } finally {
      await s.close();
    }
  });
});

describe('while a model call blocks the event loop', () => {
  it('a body that finished arriving while a model call blocked the loop is read, not timed out', async () => {
    const blocking: CaptionModel = {
      caption: (inputs: readonly CaptionInput[]): Promise<CaptionResult[]> => {
        const t = Date.now();
        while (Date.now() - t < 1000) {
          // busy
        }
        return Promise.resolve(inputs.map((_, index) => ({ index, caption: 'x', tokens: [1] })));
      },
    };
    const s = createServer(blocking, { timeouts: { headersMs: 300, bodyMs: 300 }, batchWindowMs: 0 });
    const p = (await s.listen(0, '127.0.0.1')).port;
    const code = `
      const net = require('node:net');
      const { parentPort, workerData: port } = require('node:worker_threads');
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      const body = '{"embedding":[1]}';
      const head = 'POST /caption HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nConnection: close\\r\\nContent-Length: ' + body.length + '\\r\\n\\r\\n';
      (async () => {
        const a = net.connect(port, '127.0.0.1');
        let data = '';
        let closed = false;
        a.on('data', (d) => (data += d));
        a.on('close', () => (closed = true));
        a.on('error', () => undefined);
        a.write(head + body.slice(0, 5)); // A's body starts...
        await sleep(50);
        const b = net.connect(port, '127.0.0.1'); // ...B's request blocks the server for 1 s...
        b.on('error', () => undefined);
        b.write(head + body);
        await sleep(350);
        a.write(body.slice(5)); // ...and the rest of A's body arrives during the block, after A's deadline
        for (let i = 0; i < 500 && !closed; i++) await sleep(10);
        b.destroy();
        parentPort.postMessage(data.slice(0, 40));
      })();
    `;
    try {
      const { Worker } = await import('node:worker_threads');
      const answer = await new Promise<string>((resolve, reject) => {
        const w = new Worker(code, { eval: true, workerData: p });
        w.once('message', resolve);
        w.once('error', reject);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 200/);
    } finally {
      await s.close();
    }
  });

  // (Node reads the waiting request before its idle timer drops the connection; this keeps it that way.)
  it('a request sent on an idle keep-alive connection during a long model call is answered, not dropped', async () => {
    // The model blocks the JS thread (as compute on it does today) for longer than the idle timeout.
    const blocking: CaptionModel = {
      caption: (inputs: readonly CaptionInput[]): Promise<CaptionResult[]> => {
        const t = Date.now();
        while (Date.now() - t < 1000) {
          // busy: nothing else runs on this thread
        }
        return Promise.resolve(inputs.map((_, index) => ({ index, caption: 'x', tokens: [1] })));
      },
    };
    const s = createServer(blocking, { timeouts: { idleMs: 200 }, batchWindowMs: 10 });
    const p = (await s.listen(0, '127.0.0.1')).port;
    // The client runs in a worker: its own event loop keeps time while the server's is blocked.
    const code = `
      const net = require('node:net');
      const { parentPort, workerData: port } = require('node:worker_threads');
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      (async () => {
        const a = net.connect(port, '127.0.0.1');
        let data = '';
        let closed = false;
        a.on('data', (d) => (data += d));
        a.on('close', () => (closed = true));
        a.on('error', () => undefined);
        a.write('GET /health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n');
        while (!/\\}$/.test(data)) await sleep(5);
        data = '';
        const b = net.connect(port, '127.0.0.1');
        b.on('error', () => undefined);
        const body = '{"embedding":[1]}';
        b.write('POST /caption HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nContent-Length: ' + body.length + '\\r\\n\\r\\n' + body);
        await sleep(400); // the server is blocked; A's idle timer has expired
        a.write('GET /nope HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');
        for (let i = 0; i < 400 && !closed; i++) await sleep(10);
        b.destroy();
        parentPort.postMessage(data.slice(0, 40));
      })();
    `;
    try {
      const { Worker } = await import('node:worker_threads');
      const answer = await new Promise<string>((resolve, reject) => {
        const w = new Worker(code, { eval: true, workerData: p });
        w.once('message', resolve);
        w.once('error', reject);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 404/);
    } finally {
      await s.close();
    }
  });
});
