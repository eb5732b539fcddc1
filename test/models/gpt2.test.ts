import { describe, it, expect, beforeAll } from 'vitest';
import { availableBackends } from '../../src/engine/index.js';
import type { Backend } from '../../src/engine/backend.js';
import type { Tensor } from '../../src/engine/tensor.js';
import { Gpt2Model } from '../../src/models/gpt2.js';
import type { StateDict } from '../../src/weights/host.js';
import { expectClose, expectLogits, f32, get, i32, loadGoldens, relDiff, upload } from './helpers.js';
import { tinyGpt2 } from './loaders.js';

describe.each(availableBackends().map((b) => [b.name, b] as const))(
  'GPT-2 tiny on %s',
  (_name, backend: Backend) => {
    let g: StateDict;
    let model: Gpt2Model;
    beforeAll(async () => {
      g = await loadGoldens();
      const { config, weights } = await tinyGpt2();
      model = Gpt2Model.fromWeights(backend, config, weights, 'gpt2_tiny');
    });

    const V = 50257;

    it('logits from input_ids match gpt2.logits', async () => {
      const ids = upload(backend, g, 'gpt2.input_ids');
      const { logits } = model.forward({ ids });
      expectLogits(
        `${backend.name} gpt2.logits`,
        (await logits!.read()) as Float32Array,
        V,
        g,
        'gpt2.logits',
      );
    });

    it('logits with an attention mask match gpt2.logits_masked', async () => {
      const ids = upload(backend, g, 'gpt2.input_ids');
      const m = get(g, 'gpt2.attention_mask');
      const mask = backend.upload(Float32Array.from(m.data as Int32Array), m.shape);
      const { logits } = model.forward({ ids, attentionMask: mask });
      expectLogits(
        `${backend.name} gpt2.logits_masked`,
        (await logits!.read()) as Float32Array,
        V,
        g,
        'gpt2.logits_masked',
      );
    });

    it('logits from inputs_embeds match gpt2.logits_from_embeds', async () => {
      const embeds = upload(backend, g, 'gpt2.inputs_embeds');
      const { logits } = model.forward({ embeds });
      expectLogits(
        `${backend.name} gpt2.logits_from_embeds`,
        (await logits!.read()) as Float32Array,
        V,
        g,
        'gpt2.logits_from_embeds',
      );
    });

    it('last-position logits and a KV cache (chunked, then one token at a time) equal the full forward', async () => {
      const idsHost = i32(g, 'gpt2.input_ids');
      const [B, T] = get(g, 'gpt2.input_ids').shape;
      const full = (await model
        .forward({ ids: backend.upload(idsHost, [B, T]) })
        .logits!.read()) as Float32Array;
      const rowOf = (t: number): Float32Array => {
        const out = new Float32Array(B * V);
        for (let b = 0; b < B; b++) out.set(full.subarray((b * T + t) * V, (b * T + t + 1) * V), b * V);
        return out;
      };
      const last = model.forward({ ids: backend.upload(idsHost, [B, T]), logits: 'last' }).logits!;
      expect(last.shape).toEqual([B, V]);
      let worst = expectClose(`${backend.name} logits 'last'`, await last.read(), rowOf(T - 1));
      const cache = model.createCache(B, 16);
      const chunk = (t0: number, t1: number): Tensor => {
        const ids = new Int32Array(B * (t1 - t0));
        for (let b = 0; b < B; b++) ids.set(idsHost.subarray(b * T + t0, b * T + t1), b * (t1 - t0));
        return model.embed(backend.upload(ids, [B, t1 - t0]));
      };
      let logits = model.step(chunk(0, 3), cache);
      worst = Math.max(worst, expectClose(`${backend.name} cache step 0..3`, await logits.read(), rowOf(2)));
      for (let t = 3; t < T; t++) {
        logits = model.step(chunk(t, t + 1), cache);
        worst = Math.max(
          worst,
          expectClose(`${backend.name} cache step ${t}`, await logits.read(), rowOf(t)),
        );
      }
      expect(cache.length).toBe(T);
      // select: reversed rows continue as the reversed batch would.
      const sel = cache.select([1, 0]);
      const next = new Int32Array([11, 7]);
      const a = await model.step(model.embed(backend.upload(next, [2, 1])), sel).read();
      const ref = new Int32Array(B * (T + 1));
      for (let b = 0; b < B; b++) {
        ref.set(idsHost.subarray((1 - b) * T, (2 - b) * T), b * (T + 1));
        ref[b * (T + 1) + T] = next[b];
      }
      const r = await model.forward({ ids: backend.upload(ref, [B, T + 1]), logits: 'last' }).logits!.read();
      worst = Math.max(worst, expectClose(`${backend.name} cache select`, a, r));
      console.log(`${backend.name} KV cache worst relative difference ${worst.toExponential(2)}`);
      sel.dispose();
    });

    it('inputs_embeds gradient agrees with a finite difference of the logits', async () => {
      // d/dε of sum(logits · R) along a random direction of the embeddings, by central differences.
      const e0 = f32(g, 'gpt2.inputs_embeds');
      const shape = get(g, 'gpt2.inputs_embeds').shape;
      const rng = (seed: number) => () =>
        (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5;
      const r1 = rng(1);
      const R = new Float32Array(shape[0] * shape[1] * V).map(() => r1());
      const r2 = rng(2);
      const dir = new Float32Array(e0.length).map(() => r2());
      const objective = async (e: Float32Array): Promise<number> => {
        const l = await model.forward({ embeds: backend.upload(e, shape) }).logits!.read();
        let s = 0;
        for (let i = 0; i < l.length; i++) s += l[i] * R[i];
        return s;
      };
      const out = model.forward({ embeds: backend.upload(e0, shape), record: true });
      const dlogits = backend.upload(R, out.logits!.shape);
      const dh = model.lmHeadBackward(dlogits, out.hidden);
      const de = await model.backward(dh).read();
      let analytic = 0;
      for (let i = 0; i < de.length; i++) analytic += de[i] * dir[i];
      const eps = 1e-2;
      const plus = await objective(e0.map((v, i) => v + eps * dir[i]));
      const minus = await objective(e0.map((v, i) => v - eps * dir[i]));
      const numeric = (plus - minus) / (2 * eps);
      const rel = Math.abs(analytic - numeric) / Math.abs(numeric);
      console.log(
        `${backend.name} GPT-2 embeds gradient vs finite difference: ${analytic} vs ${numeric} (rel ${rel.toExponential(2)})`,
      );
      // Central differences in float32 carry ~1e-3 noise here; the exact check is the clipcap gradient parity.
      expect(rel).toBeLessThan(1e-2);
      for (const p of model.parameters()) p.zeroGrad();
    });

    it('train mode with every dropout p = 0 equals eval mode exactly', async () => {
      // The tiny config has embd/resid/attn_pdrop 0: train mode must not draw or apply anything.
      expect([model.config.embd_pdrop, model.config.resid_pdrop, model.config.attn_pdrop]).toEqual([0, 0, 0]);
      const e0 = f32(g, 'gpt2.inputs_embeds');
      const shape = get(g, 'gpt2.inputs_embeds').shape;
      const evalLogits = await model.forward({ embeds: backend.upload(e0, shape) }).logits!.read();
      model.setDropoutSeed(5);
      const trainLogits = await model
        .forward({ embeds: backend.upload(e0, shape), train: true })
        .logits!.read();
      const d = relDiff(trainLogits, evalLogits);
      console.log(`${backend.name} GPT-2 train (p = 0) vs eval: relative difference ${d}`);
      expect(d).toBe(0);
    });

    const dropoutCases: [string, { embd_pdrop: number; resid_pdrop: number; attn_pdrop: number }][] = [
      ['embd, resid and attn dropout 0.1', { embd_pdrop: 0.1, resid_pdrop: 0.1, attn_pdrop: 0.1 }],
      ['attention-probability dropout 0.2 alone', { embd_pdrop: 0, resid_pdrop: 0, attn_pdrop: 0.2 }],
    ];
    for (const [what, pdrop] of dropoutCases) {
      it(`train-mode ${what}: seeded, changes the output, backward matches a finite difference`, async () => {
        const { config, weights } = await tinyGpt2();
        const m = Gpt2Model.fromWeights(backend, { ...config, ...pdrop }, weights, 'gpt2_tiny');
        const e0 = f32(g, 'gpt2.inputs_embeds');
        const shape = get(g, 'gpt2.inputs_embeds').shape;
        const run = async (e: Float32Array, seed: number): Promise<Float32Array> => {
          m.setDropoutSeed(seed);
          return (await m
            .forward({ embeds: backend.upload(e, shape), train: true })
            .logits!.read()) as Float32Array;
        };
        // Eval mode ignores the dropout probabilities: still the golden logits.
        const evalLogits = (await m
          .forward({ embeds: backend.upload(e0, shape) })
          .logits!.read()) as Float32Array;
        expectLogits(`${backend.name} eval mode with ${what}`, evalLogits, V, g, 'gpt2.logits_from_embeds');
        const a = await run(e0, 7);
        expect(relDiff(await run(e0, 7), a), 'same seed, same masks').toBe(0);
        expect(relDiff(a, await run(e0, 8))).toBeGreaterThan(1e-3);
        expect(relDiff(a, evalLogits)).toBeGreaterThan(1e-3);
        // Gradient through fixed masks (the same seed for every evaluation) along a random direction.
        const rng = (seed: number) => () =>
          (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5;
        const r1 = rng(3);
        const R = new Float32Array(a.length).map(() => r1());
        const r2 = rng(4);
        const dir = new Float32Array(e0.length).map(() => r2());
        const objective = async (e: Float32Array): Promise<number> =>
          (await run(e, 7)).reduce((s, x, i) => s + x * R[i], 0);
        m.setDropoutSeed(7);
        const out = m.forward({ embeds: backend.upload(e0, shape), train: true, record: true });
        const de = (await m
          .backward(m.lmHeadBackward(backend.upload(R, out.logits!.shape), out.hidden))
          .read()) as Float32Array;
        const analytic = de.reduce((s, x, i) => s + x * dir[i], 0);
        const eps = 1e-2;
        const numeric =
          ((await objective(e0.map((v, i) => v + eps * dir[i]))) -
            (await objective(e0.map((v, i) => v - eps * dir[i])))) /
          (2 * eps);
        const rel = Math.abs(analytic - numeric) / Math.abs(numeric);
        console.log(
          `${backend.name} GPT-2 with ${what}: gradient vs finite difference ${analytic} vs ${numeric} (rel ${rel.toExponential(2)})`,
        );
        // As the eval-mode check above: float32 central differences carry ~1e-3 noise.
        expect(rel).toBeLessThan(1e-2);
        m.dispose();
      });
    }
  },
);
