/**
 * `clipcap serve`'s HTTP API over the tiny fixture model on port 0: raw, multipart and embedding requests
 * give what model.caption gives on the same inputs, concurrent requests share model calls, and bad requests
 * get one-line JSON errors while the server keeps serving.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipCap } from '../../src/pipeline/caption.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from '../../src/pipeline/types.js';
import { createServer, type CaptionServer } from '../../src/server/index.js';
import { parseMultipart } from '../../src/server/multipart.js';
import { multipart } from './multipart-body.js';

const FIX = path.resolve(__dirname, '../fixtures');
const NAMES = (JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as { images: string[] })
  .images;
const photoBytes = (i: number): Buffer => readFileSync(path.join(FIX, 'images', NAMES[i]));
const goldenBeam = (i: number): string =>
  (
    JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as {
      generation: { model: string; image_index: number; beam5_entry20: string[] }[];
    }
  ).generation.find((g) => g.model === 'mlp' && g.image_index === i)!.beam5_entry20[0];

interface Entry {
  index: number;
  caption?: string;
  tokens?: number[];
  candidates?: { caption: string; tokens: number[]; score?: number }[];
  error?: string;
}

let model: ClipCap;
let srv: CaptionServer;
let base: string;
let calls = 0;
const logs: string[] = [];
const MAX_BODY = 1_000_000;

beforeAll(async () => {
  model = await ClipCap.load({
    clipcap: path.join(FIX, 'clipcap_mlp_tiny.pt'),
    clip: path.join(FIX, 'clip_tiny'),
    gpt2: path.join(FIX, 'gpt2_tiny'),
    offline: true,
  });
  // Count model calls through a wrapper, as a library user could.
  const counted = {
    caption: (inputs: readonly CaptionInput[], o?: CaptionOptions): Promise<CaptionResult[]> => {
      calls++;
      return model.caption(inputs, o);
    },
  };
  srv = createServer(counted, {
    decodeDefaults: { maxTokens: 20 },
    maxBodyBytes: MAX_BODY,
    batchWindowMs: 50,
    batchSize: 16,
    // The counting wrapper is not a ClipCap: say what /health should report.
    modelInfo: { description: model.parts.description, embeddingSize: model.embeddingSize },
    log: (l) => logs.push(l),
  });
  const { port } = await srv.listen(0, '127.0.0.1');
  base = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  await srv?.close();
  model?.dispose();
});

async function post(
  pathAndQuery: string,
  body: string | Uint8Array,
  contentType?: string,
): Promise<{ status: number; json: { results?: Entry[]; error?: string } }> {
  const res = await fetch(base + pathAndQuery, {
    method: 'POST',
    body,
    headers: contentType ? { 'content-type': contentType } : {},
  });
  return { status: res.status, json: (await res.json()) as { results?: Entry[]; error?: string } };
}

describe('clipcap serve HTTP API', () => {
  it('GET /health reports the model', async () => {
    const res = await fetch(`${base}/health`);
    expect(res.status).toBe(200);
    const j = (await res.json()) as { status: string; model: { embeddingSize: number } };
    expect(j.status).toBe('ok');
    expect(j.model.embeddingSize).toBe(model.embeddingSize);
  });

  it('a raw photo gives the caption and tokens of model.caption on the same bytes (and the golden)', async () => {
    const bytes = photoBytes(0);
    const { status, json } = await post('/caption', bytes, 'image/jpeg');
    expect(status).toBe(200);
    const [want] = await model.caption([new Uint8Array(bytes)], { maxTokens: 20 });
    expect(json.results).toHaveLength(1);
    const got = json.results![0];
    expect(got.index).toBe(0);
    expect(got.caption).toBe(want.caption);
    expect(got.tokens).toEqual(want.tokens);
    expect(got.candidates?.map((c) => c.tokens)).toEqual(want.candidates?.map((c) => c.tokens));
    expect(got.caption).toBe(goldenBeam(0));
  });

  it('query options reach the decoder (greedy: no candidates; octet-stream accepted)', async () => {
    const bytes = photoBytes(1);
    const { status, json } = await post(
      '/caption?decode=greedy&max_tokens=7',
      bytes,
      'application/octet-stream',
    );
    expect(status).toBe(200);
    const [want] = await model.caption([new Uint8Array(bytes)], { method: 'greedy', maxTokens: 7 });
    expect(json.results![0].tokens).toEqual(want.tokens);
    expect(json.results![0].candidates).toBeUndefined();
  });

  it('multipart with two images returns two results in order', async () => {
    const { body, type } = multipart([photoBytes(1), photoBytes(2)], { decode: 'beam' });
    const { status, json } = await post('/caption', body, type);
    expect(status).toBe(200);
    expect(json.results!.map((r) => r.index)).toEqual([0, 1]);
    expect(json.results!.map((r) => r.caption)).toEqual([goldenBeam(1), goldenBeam(2)]);
  });

  it('embedding JSON is captioned like model.caption on the same embedding', async () => {
    const e1 = Array.from({ length: model.embeddingSize }, (_, i) => Math.sin(i + 1));
    const e2 = Array.from({ length: model.embeddingSize }, (_, i) => Math.cos(3 * i));
    const want = await model.caption([{ embedding: e1 }, { embedding: e2 }], { maxTokens: 20 });
    const one = await post('/caption', JSON.stringify({ embedding: e1 }), 'application/json');
    expect(one.status).toBe(200);
    expect(one.json.results![0].tokens).toEqual(want[0].tokens);
    const two = await post(
      '/caption',
      JSON.stringify({ embeddings: [e1, e2], max_tokens: 20 }),
      'application/json',
    );
    expect(two.status).toBe(200);
    expect(two.json.results!.map((r) => r.tokens)).toEqual(want.map((r) => r.tokens));
    const short = await post('/caption', JSON.stringify({ embedding: [1, 2, 3] }), 'application/json');
    expect(short.status).toBe(400);
    expect(short.json.error).toMatch(/3 values but the model expects/);
  });

  it('concurrent requests share one model call and each gets its own result', async () => {
    const want = await model.caption(
      [0, 1, 2, 0].map((i) => new Uint8Array(photoBytes(i))),
      { maxTokens: 20 },
    );
    const before = calls;
    const answers = await Promise.all([0, 1, 2, 0].map((i) => post('/caption', photoBytes(i), 'image/jpeg')));
    const used = calls - before;
    console.log(`4 concurrent requests -> ${used} model call(s)`);
    expect(used).toBeLessThan(4);
    answers.forEach((a, j) => {
      expect(a.status).toBe(200);
      expect(a.json.results![0].index).toBe(0);
      expect(a.json.results![0].tokens).toEqual(want[j].tokens);
    });
    // Different decoding options never share a call: each gets its own decoder's answer.
    const [g, b] = await Promise.all([
      post('/caption?decode=greedy', photoBytes(0), 'image/jpeg'),
      post('/caption', photoBytes(0), 'image/jpeg'),
    ]);
    expect(g.json.results![0].candidates).toBeUndefined();
    expect(b.json.results![0].candidates).toBeDefined();
  });

  it('a bad image is a 400 with a one-line error, and the server keeps serving', async () => {
    const bad = await post('/caption', Buffer.from('this is not an image'), 'image/png');
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatch(/\S/);
    expect(bad.json.error).not.toMatch(/\n/);
    // In a batch, the bad image fails alone.
    const { body, type } = multipart([Buffer.from('garbage'), photoBytes(0)]);
    const mixed = await post('/caption', body, type);
    expect(mixed.status).toBe(200);
    expect(mixed.json.results![0].error).toMatch(/\S/);
    expect(mixed.json.results![1].caption).toBe(goldenBeam(0));
    const ok = await post('/caption', photoBytes(0), 'image/jpeg');
    expect(ok.status).toBe(200);
  });

  it('bad options, bodies and types get 400 / 415 with one line', async () => {
    const cases: [string, string | Uint8Array, string | undefined, number, RegExp][] = [
      ['/caption?decode=fast', photoBytes(0), 'image/jpeg', 400, /decode must be/],
      [
        '/caption?beam_size=0',
        photoBytes(0),
        'image/jpeg',
        400,
        /^beam_size must be an integer from 1 to 16, got "0"$/,
      ],
      ['/caption?top_p=2', photoBytes(0), 'image/jpeg', 400, /^top_p must be a number over 0 and at most 1/],
      ['/caption?num_captions=2', photoBytes(0), 'image/jpeg', 400, /num_captions needs decode=nucleus/],
      ['/caption?colour=red', photoBytes(0), 'image/jpeg', 400, /unknown option "colour"/],
      ['/caption', 'hello', 'text/plain', 415, /unsupported Content-Type "text\/plain"/],
      ['/caption', '{"embedding": [1,', 'application/json', 400, /not valid JSON/],
      ['/caption', 'x', 'multipart/form-data', 400, /boundary/],
      [
        '/caption',
        '--b\r\nno-colon\r\n\r\nx\r\n--b--\r\n',
        'multipart/form-data; boundary=b',
        400,
        /malformed/,
      ],
      ['/caption', Buffer.alloc(0), 'image/jpeg', 400, /empty/],
    ];
    for (const [p, body, type, status, re] of cases) {
      const r = await post(p, body, type);
      expect(r.status, p).toBe(status);
      expect(r.json.error).toMatch(re);
      expect(r.json.error).not.toMatch(/\n|at .*\.ts:/);
    }
  });

  it('a body over the limit is a 413', async () => {
    const r = await post('/caption', Buffer.alloc(MAX_BODY + 1000, 7), 'image/jpeg');
    expect(r.status).toBe(413);
    expect(r.json.error).toMatch(/over the 1000000-byte limit/);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it('a chunked body (no Content-Length) is cut off with 413 once past the limit', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${base}/caption`, {
        method: 'POST',
        headers: { 'content-type': 'image/jpeg', 'transfer-encoding': 'chunked' },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      // Keep sending past the limit: the server answers without waiting for the end of the body.
      const chunk = Buffer.alloc(64 * 1024, 1);
      let sent = 0;
      const pump = (): void => {
        while (sent <= MAX_BODY + 4 * chunk.length) {
          sent += chunk.length;
          if (!req.write(chunk)) {
            req.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    expect(status).toBe(413);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it('unknown paths are 404 and wrong methods 405', async () => {
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    const g = await fetch(`${base}/caption`);
    expect(g.status).toBe(405);
    expect(g.headers.get('allow')).toBe('POST');
    expect((await fetch(`${base}/health`, { method: 'POST', body: 'x' })).status).toBe(405);
    expect(logs.some((l) => /^GET \/nope 404 /.test(l))).toBe(true);
  });
});

describe('graceful shutdown', () => {
  it('close() answers a request already queued, then refuses connections', async () => {
    const s = createServer(model, {
      decodeDefaults: { maxTokens: 5 },
      batchWindowMs: 300,
      log: () => undefined,
    });
    const { port } = await s.listen(0, '127.0.0.1');
    const url = `http://127.0.0.1:${port}/caption?decode=greedy`;
    const pending = fetch(url, {
      method: 'POST',
      body: photoBytes(0),
      headers: { 'content-type': 'image/jpeg' },
    });
    // Within the batch window: the request is read and waiting for its model call.
    await new Promise((r) => setTimeout(r, 150));
    const closed = s.close();
    const res = await pending;
    expect(res.status).toBe(200);
    const j = (await res.json()) as { results: Entry[] };
    expect(j.results[0].tokens!.length).toBeGreaterThan(0);
    await closed;
    await expect(fetch(url, { method: 'POST', body: 'x' })).rejects.toThrow();
  });
});

describe('multipart parser', () => {
  it('splits parts, keeps binary data exactly, and rejects truncated bodies', () => {
    const data = Buffer.from([0, 13, 10, 45, 45, 255, 13, 10]);
    const body = Buffer.concat([
      Buffer.from(
        'preamble\r\n--xx\r\nContent-Disposition: form-data; name="image"; filename="a b.jpg"\r\n\r\n',
      ),
      data,
      Buffer.from('\r\n--xx\r\nContent-Disposition: form-data; name="seed"\r\n\r\n3\r\n--xx--\r\nepilogue'),
    ]);
    const parts = parseMultipart(body, 'xx');
    expect(parts.map((p) => [p.name, p.filename])).toEqual([
      ['image', 'a b.jpg'],
      ['seed', undefined],
    ]);
    expect(Buffer.from(parts[0].data).equals(data)).toBe(true);
    expect(Buffer.from(parts[1].data).toString()).toBe('3');
    expect(() => parseMultipart(body.subarray(0, 90), 'xx')).toThrow(/not closed by the boundary/);
    expect(() => parseMultipart(body, 'xx', { maxParts: 1, maxHeaderBytes: 8192 })).toThrow(
      /more than 1 parts/,
    );
  });
});
