/**
 * The decoding ops (backend.ts "decoding": logSoftmaxTopK, copyRows) on every backend that loads, compared
 * with naive definitions: log-softmax in float64 (summed in sorted order, not the kernels' index order) and a
 * full sort of the row, on odd shapes and on GPT-2's vocabulary; the native kernel also with the reference
 * one, which it must equal value for value.
 */
import { describe, expect, it } from 'vitest';
import { ShapeError } from '../../src/engine/backend.js';
import type { Backend } from '../../src/engine/backend.js';
import { availableBackends } from '../../src/engine/index.js';
import { ReferenceBackend } from '../../src/engine/reference.js';
import * as naive from './naive.js';

/** Per row: every index sorted by float32(log-softmax) descending, ties by index; and those values. */
function naiveTopK(x: Float32Array, rows: number, V: number, k: number, temperature: number) {
  const t = temperature > 0 ? temperature : 1;
  const values: number[] = [];
  const indices: number[] = [];
  for (let r = 0; r < rows; r++) {
    const s = Array.from(x.subarray(r * V, (r + 1) * V), (v) => Math.fround(v / t));
    const max = Math.max(...s);
    const terms = s.map((v) => Math.exp(v - max)).sort((a, b) => a - b);
    const lse = max + Math.log(terms.reduce((a, b) => a + b, 0));
    const lp = s.map((v) => Math.fround(v - lse));
    const order = lp.map((_, i) => i).sort((a, b) => lp[b] - lp[a] || a - b);
    for (const i of order.slice(0, k)) {
      values.push(lp[i]);
      indices.push(i);
    }
  }
  return { values, indices };
}

async function topk(be: Backend, x: Float32Array, rows: number, V: number, k: number, temperature: number) {
  const t = be.upload(x, [rows, V]);
  const r = be.logSoftmaxTopK(t, k, temperature);
  const out = { values: await be.download(r.values), indices: Array.from(await be.download(r.indices)) };
  expect(r.values.shape).toEqual([rows, k]);
  expect(r.indices.dtype).toBe('i32');
  for (const u of [t, r.values, r.indices]) be.free(u);
  return out;
}

const CASES: { rows: number; V: number; k: number; temperature: number; quantum?: number }[] = [
  { rows: 1, V: 7, k: 1, temperature: 1 },
  { rows: 1, V: 7, k: 7, temperature: 1 },
  { rows: 3, V: 33, k: 5, temperature: 0.7 },
  { rows: 2, V: 769, k: 6, temperature: 0 }, // temperature <= 0 means 1, as in the official decoders
  { rows: 4, V: 200, k: 6, temperature: 1, quantum: 0.25 }, // many exact ties: lower index first
  { rows: 5, V: 50257, k: 6, temperature: 1 }, // a beam-5 step over GPT-2's vocabulary
  { rows: 2, V: 50257, k: 6, temperature: 1.3 },
];

for (const be of availableBackends()) {
  describe(`${be.name} backend: decoding ops`, () => {
    for (const c of CASES) {
      it(`logSoftmaxTopK rows ${c.rows}, V ${c.V}, k ${c.k}, T ${c.temperature}${c.quantum ? ', ties' : ''}`, async () => {
        const x = naive.randomF32(c.rows * c.V, c.V + c.k, -8, 8);
        if (c.quantum) for (let i = 0; i < x.length; i++) x[i] = Math.round(x[i] / c.quantum) * c.quantum;
        const got = await topk(be, x, c.rows, c.V, c.k, c.temperature);
        const want = naiveTopK(x, c.rows, c.V, c.k, c.temperature);
        const d = naive.maxRelDiff(got.values, want.values);
        expect(d, `worst relative difference ${d.toExponential(2)}`).toBeLessThanOrEqual(1e-6);
        expect(got.indices).toEqual(want.indices);
      });
    }

    if (!(be instanceof ReferenceBackend)) {
      it('logSoftmaxTopK equals the reference kernel value for value (GPT-2 vocabulary, beam 5 + 1)', async () => {
        const ref = new ReferenceBackend();
        for (const temperature of [1, 0.8]) {
          const x = naive.randomF32(5 * 50257, 11, -10, 10);
          expect(await topk(be, x, 5, 50257, 6, temperature)).toEqual(
            await topk(ref, x, 5, 50257, 6, temperature),
          );
        }
      });
    }

    it('logSoftmaxTopK: NaN never ranks (a row holding one is all NaN after the softmax, as in torch)', async () => {
      const got = await topk(be, Float32Array.from([NaN, 1, 0, 2, -1, 3]), 2, 3, 2, 1);
      expect(got.values.slice(0, 2)).toEqual(Float32Array.from([-Infinity, -Infinity]));
      expect(got.indices.slice(0, 2)).toEqual([0, 0]);
      expect(got.indices.slice(2)).toEqual([2, 0]); // the second row [2, -1, 3] is unaffected
    });

    it('logSoftmaxTopK rejects bad arguments with ShapeError', () => {
      const t = be.upload(new Float32Array(6), [2, 3]);
      expect(() => be.logSoftmaxTopK(t, 0, 1)).toThrow(ShapeError);
      expect(() => be.logSoftmaxTopK(t, 4, 1)).toThrow(/k/);
      expect(() => be.logSoftmaxTopK(t, 2, NaN)).toThrow(/temperature/);
      expect(() => be.logSoftmaxTopK(t.view([6]), 2, 1)).toThrow(/rows, V/);
      be.free(t);
    });

    it('copyRows copies the first `length` positions of the picked rows and leaves the rest', async () => {
      const src = naive.randomF32(3 * 5 * 4, 3);
      const S = be.upload(src, [3, 5, 4]);
      const D = be.upload(new Float32Array(3 * 5 * 4).fill(7), [3, 5, 4]);
      be.copyRows(D, S, [2, 0, 2], 3);
      const got = await be.download(D);
      const want = new Float32Array(3 * 5 * 4).fill(7);
      [2, 0, 2].forEach((r, i) => want.set(src.subarray(r * 20, r * 20 + 12), i * 20));
      expect(Array.from(got)).toEqual(Array.from(want));
      be.free(D);
      // fewer rows than src, length 0 and the whole axis
      const D2 = be.zeros([1, 5, 4]);
      be.copyRows(D2, S, [1], 0);
      expect(Array.from(await be.download(D2)).every(async (v) => v === 0)).toBe(true);
      be.copyRows(D2, S, [1], 5);
      expect(Array.from(await be.download(D2))).toEqual(Array.from(src.subarray(20, 40)));
      be.free(D2);
      be.free(S);
    });

    it('copyRows rejects bad arguments with ShapeError', () => {
      const S = be.zeros([3, 5, 4]);
      const D = be.zeros([2, 5, 4]);
      expect(() => be.copyRows(D, S, [0], 1)).toThrow(/2 rows/);
      expect(() => be.copyRows(D, S, [0, 3], 1)).toThrow(ShapeError);
      expect(() => be.copyRows(D, S, [0, 1], 6)).toThrow(/length/);
      expect(() => be.copyRows(be.zeros([2, 5, 3]), S, [0, 1], 1)).toThrow(/trailing/);
      expect(() => be.copyRows(S, S, [0, 1, 2], 1)).toThrow(/share storage/);
      be.free(S);
      be.free(D);
    });
  });
}
