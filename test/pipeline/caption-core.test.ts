/**
 * The ClipCap pipeline (batching, lazy CLIP, per-input errors, ordering, streaming) with stand-in parts:
 * the fake LM of the decoder tests, a fake CLIP and mapper, and the real GPT-2 tokenizer and image
 * preprocessing. The real models are exercised in caption.test.ts.
 */
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Tensor } from '../../src/engine/tensor.js';
import { generate } from '../../src/generate/index.js';
import { ClipCap, type ImageEncoder, type PrefixModel } from '../../src/pipeline/caption.js';
import type { CaptionInput, CaptionSuccess } from '../../src/pipeline/types.js';
import { Gpt2Tokenizer } from '../../src/text/gpt2-tokenizer.js';
import { FakeLM } from '../generate/fake-lm.js';

const D = 6;
const K = 3;
const IMAGES = path.join(__dirname, '..', 'fixtures', 'images');
const tmp = mkdtempSync(path.join(tmpdir(), 'clipcap-core-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** "CLIP": the mean of each of D strided slices of the pixels. */
class FakeClip implements ImageEncoder {
  readonly projectionDim = D;
  readonly imageSize = 224;
  calls: number[] = [];
  constructor(readonly lm: FakeLM) {}
  encodeImages(x: Float32Array): Tensor {
    const n = x.length / (3 * 224 * 224);
    this.calls.push(n);
    const per = x.length / n;
    const out = new Float32Array(n * D);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < per; j++) out[i * D + (j % D)] += x[i * per + j] / (per / D);
    return this.lm.store.upload(out, [n, D]);
  }
  dispose(): void {}
}

/** Mapper: prefix vector k, channel c = tanh(e[(k + c) % D] + k), in (0, 1) after scaling. */
class FakeMapper implements PrefixModel {
  readonly prefixSize = D;
  constructor(readonly lm: FakeLM) {}
  async prefixEmbeddings(e: Tensor): Promise<Tensor> {
    const [n] = e.shape;
    const x = (await e.read()) as Float32Array;
    const E = this.lm.width;
    const out = new Float32Array(n * K * E);
    for (let i = 0; i < n; i++)
      for (let k = 0; k < K; k++)
        for (let c = 0; c < E; c++)
          out[(i * K + k) * E + c] = 0.5 + 0.4 * Math.tanh(x[i * D + ((k + c) % D)] + k);
    return this.lm.store.upload(out, [n, K, E]);
  }
}

async function makeModel(
  withClip = true,
): Promise<{ model: ClipCap; clip: FakeClip; lm: FakeLM; loads: () => number }> {
  const lm = new FakeLM();
  const clip = new FakeClip(lm);
  let loads = 0;
  const model = new ClipCap({
    backend: lm.backend,
    lm,
    dispose: () => undefined,
    mapper: new FakeMapper(lm),
    tokenizer: await Gpt2Tokenizer.load(),
    loadClip: withClip
      ? async () => {
          loads++;
          return clip;
        }
      : null,
    description: 'fake.pt',
  });
  return { model, clip, lm, loads: () => loads };
}

const photo = (n: string): string => path.join(IMAGES, n);
const embedding = (s: number): Float32Array =>
  Float32Array.from({ length: D }, (_, i) => Math.sin(s * 7 + i));

describe('ClipCap pipeline', () => {
  it('captions embeddings without loading CLIP, same as decoding the mapper output directly', async () => {
    const { model, lm, loads } = await makeModel();
    const inputs = [0, 1, 2].map((s) => ({ embedding: embedding(s), name: `e${s}` }));
    const res = await model.caption(inputs, { method: 'beam', beamSize: 3, maxTokens: 10 });
    expect(loads()).toBe(0);
    const emb = lm.store.upload(Float32Array.from(inputs.flatMap((x) => [...x.embedding])), [3, D]);
    const direct = await generate(lm, await new FakeMapper(lm).prefixEmbeddings(emb), {
      beamSize: 3,
      maxTokens: 10,
    });
    const tok = await Gpt2Tokenizer.load();
    res.forEach((r, i) => {
      expect(r.error).toBeUndefined();
      const ok = r as CaptionSuccess;
      expect(ok.image).toBe(`e${i}`);
      expect(ok.tokens).toEqual(direct[i].sequences[0].tokens);
      expect(ok.caption).toBe(tok.decode(direct[i].sequences[0].tokens));
      expect(ok.candidates?.map((c) => c.score)).toEqual(direct[i].sequences.map((s) => s.score));
    });
  });

  it('mixes paths, bytes, RGB pixels and embeddings; bad inputs fail alone; order kept; batching does not matter', async () => {
    const bad = path.join(tmp, 'not-an-image.jpg');
    writeFileSync(bad, 'hello');
    const empty = path.join(tmp, 'empty.png');
    writeFileSync(empty, '');
    const rgb = { data: new Uint8Array(40 * 30 * 3).map((_, i) => (i * 37) % 256), width: 40, height: 30 };
    const inputs: CaptionInput[] = [
      photo('COCO_val2014_000000060623.jpg'),
      bad,
      readFileSync(photo('CONCEPTUAL_01.jpg')),
      { embedding: embedding(5) },
      path.join(tmp, 'missing.jpg'),
      rgb,
      empty,
      { embedding: new Float32Array(D + 1) },
      photo('COCO_val2014_000000165547.jpg'),
    ];
    const { model, clip, loads } = await makeModel();
    const batched = await model.caption(inputs, { method: 'greedy', batchSize: 4, maxTokens: 8 });
    expect(loads()).toBe(1);
    expect(clip.calls).toEqual([2, 1, 1]); // images of each batch of 4 go through CLIP together
    expect(batched.map((r) => r.index)).toEqual(inputs.map((_, i) => i));
    const failed = batched.filter((r) => r.error !== undefined).map((r) => r.index);
    expect(failed).toEqual([1, 4, 6, 7]);
    for (const i of failed) expect(batched[i].error).not.toMatch(/\n/);
    expect(batched[1].error).toContain('not-an-image.jpg');
    expect(batched[4].error).toContain('missing.jpg');
    expect(batched[6].error).toContain('empty.png');
    expect(batched[7].error).toMatch(/the embedding has 7 values but the model expects 6/);
    expect(batched[0].image).toBe(inputs[0]);
    expect(batched[2].image).toBeUndefined();
    console.log(batched.map((r) => r.error ?? JSON.stringify(r.caption)).join('\n'));

    const { model: one } = await makeModel();
    const single = await one.caption(inputs, { method: 'greedy', batchSize: 1, maxTokens: 8 });
    expect(single).toEqual(batched);
  });

  it('streams from an async iterable in bounded batches with progress', async () => {
    const { model } = await makeModel();
    async function* gen(): AsyncGenerator<CaptionInput> {
      for (let s = 0; s < 5; s++) yield { embedding: embedding(s) };
    }
    const progress: [number, number | undefined][] = [];
    const seen: number[] = [];
    for await (const r of model.captionStream(gen(), {
      method: 'nucleus',
      numCaptions: 2,
      batchSize: 2,
      maxTokens: 6,
      onProgress: (d, t) => progress.push([d, t]),
    })) {
      seen.push(r.index);
      expect((r as CaptionSuccess).candidates?.length).toBe(2);
    }
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    expect(progress).toEqual([
      [2, undefined],
      [4, undefined],
      [5, undefined],
    ]);
  });

  it('fails once, clearly, when CLIP is needed but not available', async () => {
    const { model } = await makeModel(false);
    await expect(model.caption([photo('CONCEPTUAL_02.jpg')])).rejects.toThrow(
      /fake.pt: no CLIP model was given, so only embeddings can be captioned/,
    );
    const lm = new FakeLM();
    const broken = new ClipCap({
      backend: lm.backend,
      lm,
      dispose: () => undefined,
      mapper: new FakeMapper(lm),
      tokenizer: await Gpt2Tokenizer.load(),
      loadClip: async () => ({
        ...new FakeClip(lm),
        projectionDim: 5,
        imageSize: 224,
        encodeImages: () => {
          throw new Error('unreachable');
        },
        dispose: () => undefined,
      }),
      description: 'fake.pt',
    });
    await expect(broken.caption([photo('CONCEPTUAL_02.jpg')])).rejects.toThrow(
      /CLIP makes 5-d embeddings but fake.pt expects 6-d/,
    );
  });
});
