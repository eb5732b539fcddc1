/**
 * Nucleus sampling with a seed gives an input the same captions whatever shares its batch: in the library
 * (its position in the call, the batch size, its neighbours), in `clipcap caption`, and in the server
 * (alone, in a multipart request, or micro-batched with other clients' requests).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipCap } from '../../src/pipeline/caption.js';
import type { CaptionResult } from '../../src/pipeline/types.js';
import { createServer, type CaptionServer } from '../../src/server/index.js';
import { cli } from '../cli/harness.js';

const FIX = path.resolve(__dirname, '../fixtures');
const NAMES = (JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as { images: string[] })
  .images;
const photoPath = (i: number): string => path.join(FIX, 'images', NAMES[i]);
const photo = (i: number): Uint8Array => new Uint8Array(readFileSync(photoPath(i)));
const MODEL = {
  clipcap: path.join(FIX, 'clipcap_mlp_tiny.pt'),
  clip: path.join(FIX, 'clip_tiny'),
  gpt2: path.join(FIX, 'gpt2_tiny'),
};
const NUCLEUS = { method: 'nucleus' as const, seed: 7, numCaptions: 3, maxTokens: 12, topP: 0.95 };

const samples = (r: CaptionResult): number[][] => (r.candidates ?? []).map((c) => c.tokens);

let model: ClipCap;
let srv: CaptionServer;
let base: string;

beforeAll(async () => {
  model = await ClipCap.load({ ...MODEL, offline: true });
  srv = createServer(model, { batchWindowMs: 100 });
  base = `http://127.0.0.1:${(await srv.listen(0, '127.0.0.1')).port}`;
});

afterAll(async () => {
  await srv?.close();
  model?.dispose();
});

describe('per-input sampling streams', () => {
  it('library: an image or embedding samples alike at any position, batch size or company', async () => {
    const [alone] = await model.caption([photo(0)], NUCLEUS);
    const mixed = await model.caption([photo(1), photo(2), photo(0)], { ...NUCLEUS, batchSize: 2 });
    expect(samples(mixed[2])).toEqual(samples(alone));
    // The same image twice in one call samples alike; another image or seed differs.
    const twice = await model.caption([photo(0), photo(0)], NUCLEUS);
    expect(samples(twice[1])).toEqual(samples(alone));
    expect(samples(mixed[0])).not.toEqual(samples(alone));
    const [reseeded] = await model.caption([photo(0)], { ...NUCLEUS, seed: 8 });
    expect(samples(reseeded)).not.toEqual(samples(alone));
    // Embeddings too.
    const e = (k: number) => ({
      embedding: Array.from({ length: model.embeddingSize }, (_, i) => Math.sin(i * k)),
    });
    const [ea] = await model.caption([e(1)], NUCLEUS);
    const eb = await model.caption([e(2), e(3), e(1)], NUCLEUS);
    expect(samples(eb[2])).toEqual(samples(ea));
  });

  it('clipcap caption: the same captions for an image alone or after others', async () => {
    const args = [
      'caption',
      '--clipcap',
      MODEL.clipcap,
      '--clip',
      MODEL.clip,
      '--gpt2',
      MODEL.gpt2,
      '--offline',
    ];
    const opts = [
      '--decode',
      'nucleus',
      '--seed',
      '7',
      '--num-captions',
      '3',
      '--max-tokens',
      '12',
      '--top-p',
      '0.95',
    ];
    const a = await cli([...args, ...opts, '--format', 'json', photoPath(0)]);
    const b = await cli([
      ...args,
      ...opts,
      '--format',
      'json',
      '--batch-size',
      '2',
      photoPath(1),
      photoPath(2),
      photoPath(0),
    ]);
    expect(a.code, a.err).toBe(0);
    expect(b.code, b.err).toBe(0);
    type E = { candidates: { tokens: number[] }[] };
    const ja = JSON.parse(a.out) as E[];
    const jb = JSON.parse(b.out) as E[];
    expect(jb[2].candidates).toEqual(ja[0].candidates);
    expect(ja[0].candidates.length).toBe(3);
  });

  it('serve: alone, in a multipart request, or batched with other clients', async () => {
    const q = '/caption?decode=nucleus&seed=7&num_captions=3&max_tokens=12&top_p=0.95';
    const post = async (body: Uint8Array | Buffer, type: string): Promise<number[][][]> => {
      const res = await fetch(base + q, { method: 'POST', body, headers: { 'content-type': type } });
      expect(res.status).toBe(200);
      const j = (await res.json()) as { results: { candidates: { tokens: number[] }[] }[] };
      return j.results.map((r) => r.candidates.map((c) => c.tokens));
    };
    const [want] = await model.caption([photo(0)], NUCLEUS);
    const [alone] = await post(photo(0), 'image/jpeg');
    expect(alone).toEqual(samples(want));
    const boundary = 'xYz';
    const parts = [1, 0].map((i) =>
      Buffer.concat([
        Buffer.from(
          `--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="${i}.jpg"\r\n\r\n`,
        ),
        photo(i),
        Buffer.from('\r\n'),
      ]),
    );
    const multi = await post(
      Buffer.concat([...parts, Buffer.from(`--${boundary}--\r\n`)]),
      `multipart/form-data; boundary=${boundary}`,
    );
    expect(multi[1]).toEqual(alone);
    // Within one batch window: these share model calls, in whatever order they arrive.
    const before = srv.modelCalls;
    const together = await Promise.all([2, 1, 0, 2].map((i) => post(photo(i), 'image/jpeg')));
    expect(srv.modelCalls - before).toBeLessThan(4);
    expect(together[2][0]).toEqual(alone);
  });
});
