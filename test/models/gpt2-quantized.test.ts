/**
 * Gpt2Model.quantizeWeights (the --weights bf16|int8 path) on every backend that loads, with the tiny GPT-2
 * fixture: the quantized model must be exactly the f32 model run on the rounded weights (a model built from a
 * state dict holding the dequantized values gives the same logits at f32 accuracy, through the KV-cache steps
 * that decoding uses, where the native backend reads the compact int8 / bf16 copies), its rounded tensors are
 * the ones named in the doc comment, and the rounding moves the logits by a bounded amount.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend, WeightFormat } from '../../src/engine/backend.js';
import { availableBackends } from '../../src/engine/index.js';
import { Gpt2Model } from '../../src/models/gpt2.js';
import { ClipCap } from '../../src/pipeline/caption.js';
import type { Gpt2Config } from '../../src/config/models.js';
import type { StateDict } from '../../src/weights/host.js';
import { relDiff } from './helpers.js';
import { tinyGpt2 } from './loaders.js';

/** Logits (B, V) of a prefix run and two single-token steps, concatenated, on the host. */
async function stepLogits(backend: Backend, model: Gpt2Model, batch: number): Promise<Float32Array> {
  const E = model.width;
  const prefix = backend.upload(
    Float32Array.from({ length: batch * 3 * E }, (_, i) => Math.sin(i * 0.37) * 0.5),
    [batch, 3, E],
  );
  const cache = model.createCache(batch, 8);
  const out: Float32Array[] = [];
  const take = async (t: ReturnType<Gpt2Model['step']>) => {
    out.push((await backend.download(t)) as Float32Array);
    backend.free(t);
  };
  await take(model.step(prefix, cache));
  for (const tok of [5, 17]) {
    const ids = backend.upload(
      Int32Array.from({ length: batch }, (_, i) => tok + i),
      [batch, 1],
    );
    const emb = model.embed(ids);
    await take(model.step(emb, cache));
    backend.free(ids);
    backend.free(emb);
  }
  cache.dispose();
  backend.free(prefix);
  const all = new Float32Array(out.reduce((n, x) => n + x.length, 0));
  out.reduce((off, x) => (all.set(x, off), off + x.length), 0);
  return all;
}

const ROUNDED = /^(wte\.weight|h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight)$/;

let tiny: { config: Gpt2Config; weights: StateDict };
beforeAll(async () => {
  tiny = await tinyGpt2();
});

for (const backend of availableBackends()) {
  describe(`${backend.name} backend: GPT-2 with quantized weights`, () => {
    for (const format of ['int8', 'bf16'] as WeightFormat[]) {
      it(`${format}: the same logits as the f32 model on the rounded weights, and close to f32's`, async () => {
        const q = Gpt2Model.fromWeights(backend, tiny.config, tiny.weights);
        q.quantizeWeights(format);
        // The rounded weights as a state dict: every other tensor as it was.
        const rounded: StateDict = new Map(tiny.weights);
        const changed: string[] = [];
        for (const p of q.parameters()) {
          const values = (await backend.download(p.value)) as Float32Array;
          const orig = tiny.weights.get(p.name);
          if (!orig) continue;
          const same = values.every((v, i) => v === (orig.data as Float32Array)[i]);
          if (!same) changed.push(p.name);
          rounded.set(p.name, { dtype: 'f32', shape: orig.shape, data: values });
        }
        expect(changed.length).toBeGreaterThan(0);
        expect(changed.every((n) => ROUNDED.test(n))).toBe(true);
        expect(q.parameters().every((p) => !ROUNDED.test(p.name) || !p.requiresGrad)).toBe(true);
        const onRounded = Gpt2Model.fromWeights(backend, tiny.config, rounded);
        const exact = Gpt2Model.fromWeights(backend, tiny.config, tiny.weights);
        for (const batch of [1, 5]) {
          const got = await stepLogits(backend, q, batch);
          expect(relDiff(got, await stepLogits(backend, onRounded, batch))).toBeLessThan(1e-5);
          const err = relDiff(got, await stepLogits(backend, exact, batch));
          expect(err).toBeGreaterThan(0);
          expect(err).toBeLessThan(format === 'int8' ? 0.05 : 0.02);
        }
        for (const m of [q, onRounded, exact]) m.dispose();
      });
    }
  });
}

describe('ClipCap.load weights option', () => {
  it('refuses an unknown format with a message naming the choices', async () => {
    await expect(ClipCap.load({ clipcap: 'nonexistent.pt', weights: 'fp8' as 'int8' })).rejects.toThrow(
      /weights must be one of f32, bf16, int8/,
    );
  });
});
