/**
 * quantizeWeight (backend.ts), part of the kernel suite (kernels.test.ts runs it on every backend that loads
 * and on the async test backend): the rounded values against their definitions
 * (bf16: round to nearest even of the f32 bits; int8: per-channel absmax / 127 scales, round half to even), and
 * products with a quantized weight against float64 products of the dequantized values, at decoding row counts
 * (1..8, where the native backend reads the compact int8 / bf16 copy, with both its AVX2 and portable kernels)
 * and above (where it uses the f32 values), for both layouts (x·W and x·Wᵀ) with bias and accumulation.
 */
import { expect, it } from 'vitest';
import { ShapeError } from '../../src/engine/backend.js';
import type { Backend, WeightFormat } from '../../src/engine/backend.js';
import { NativeBackend } from '../../src/engine/native.js';
import * as naive from './naive.js';

/** The nearest bfloat16 of v (ties to even) by its definition on the f32 bit pattern, as a number. */
function bf16Of(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  const x = u[0];
  const lower = x & 0xffff;
  let upper = x >>> 16;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper += 1;
  u[0] = upper << 16;
  return f[0];
}

/** Per-channel int8 of w (rows, cols) by the definition: the dequantized values. */
function int8Of(w: Float32Array, rows: number, cols: number, axis: 0 | 1): Float64Array {
  const channels = axis === 0 ? rows : cols;
  const scale = new Float64Array(channels);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const ch = axis === 0 ? r : c;
      scale[ch] = Math.max(scale[ch], Math.abs(w[r * cols + c]));
    }
  for (let ch = 0; ch < channels; ch++) scale[ch] = Math.fround(scale[ch] / 127);
  const out = new Float64Array(w.length);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const s = scale[axis === 0 ? r : c];
      if (s === 0) continue;
      const x = Math.fround(w[r * cols + c] / s);
      let q = Math.round(x);
      if (q - x === 0.5 && q % 2 !== 0) q -= 1; // half to even
      q = Math.max(-127, Math.min(127, q));
      out[r * cols + c] = Math.fround(q * s);
    }
  return out;
}

const kernelsOf = (be: Backend): Array<'avx2' | 'portable' | null> =>
  be instanceof NativeBackend ? (be.info().avx2 ? ['avx2', 'portable'] : ['portable']) : [null];

const FORMATS: WeightFormat[] = ['int8', 'bf16'];
// (M rows of x, K, N): decoding rows, odd sizes (vector tails), and a GEMM-sized M that uses the f32 values.
const SHAPES: [number, number, number][] = [
  [1, 37, 53],
  [5, 64, 200],
  [8, 70, 131],
  [3, 768, 300],
  [20, 40, 33],
];

/** The quantizeWeight tests on `be` (called inside the kernel suite's describe for that backend). */
export function quantizeTests(be: Backend): void {
  {
    it('bf16 rounds each value to the nearest even bfloat16', async () => {
      const w = naive.randomF32(6 * 50, 11, -3, 3);
      // exact ties and the extremes of rounding
      w.set([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 0, -0, 3.4e38], 0);
      const t = be.upload(w, [6, 50]);
      const q = be.quantizeWeight(t, 'bf16', 1);
      expect(q.shape).toEqual([6, 50]);
      const got = await be.download(q);
      expect(Array.from(got)).toEqual(Array.from(w, bf16Of));
      expect(got[0]).toBe(1);
      expect(got[1]).toBe(1 + 4 * 2 ** -8);
      expect(got[5]).toBe(Infinity); // 3.4e38 rounds past bf16's largest finite value
      be.free(t);
      be.free(q);
    });

    for (const axis of [0, 1] as const) {
      it(`int8 per channel along axis ${axis} is absmax/127 scales and round half to even`, async () => {
        const rows = 9;
        const cols = 40;
        const w = naive.randomF32(rows * cols, 21 + axis, -2, 2);
        for (let c = 0; c < cols; c++) w[3 * cols + c] = 0; // a zero row
        const t = be.upload(w, [rows, cols]);
        const q = be.quantizeWeight(t, 'int8', axis);
        const got = await be.download(q);
        expect(Array.from(got)).toEqual(Array.from(int8Of(w, rows, cols, axis)));
        // at most 255 distinct values per channel, the channel's extreme kept exactly
        const ch0 =
          axis === 0 ? got.subarray(0, cols) : Float32Array.from({ length: rows }, (_, r) => got[r * cols]);
        const src0 =
          axis === 0 ? w.subarray(0, cols) : Float32Array.from({ length: rows }, (_, r) => w[r * cols]);
        const m = Math.max(...Array.from(src0, Math.abs));
        expect(Math.max(...Array.from(ch0, Math.abs))).toBeCloseTo(m, 6);
        be.free(t);
        be.free(q);
      });
    }

    for (const format of FORMATS) {
      for (const [M, K, N] of SHAPES) {
        for (const transB of [false, true]) {
          it(`${format} matmul ${M}x${K}x${N}${transB ? '_tB' : ''} equals the float64 product of the dequantized weight`, async () => {
            const seed = M * 1000 + K + N + (transB ? 7 : 0);
            const x = naive.randomF32(M * K, seed, -1, 1);
            const wShape = transB ? [N, K] : [K, N];
            const w = naive.randomF32(K * N, seed + 1, -0.5, 0.5);
            const bias = naive.randomF32(N, seed + 2, -1, 1);
            const c0 = naive.randomF32(M * N, seed + 3, -1, 1);
            const tw = be.upload(w, wShape);
            // int8's output channels: the columns of op(W), i.e. rows of a (N, K) weight, columns of (K, N)
            const qw = be.quantizeWeight(tw, format, transB ? 0 : 1);
            be.free(tw);
            const deq = await be.download(qw);
            const mm = { batch: 1, m: M, k: K, n: N, transA: false, transB, bBatched: false };
            const expected = naive.matmulNaive(x, deq, mm, bias);
            const expectedAcc = Float64Array.from(expected, (v, i) => v + c0[i]);
            const tx = be.upload(x, [M, K]);
            const tb = be.upload(bias, [N]);
            for (const kern of kernelsOf(be)) {
              if (kern && be instanceof NativeBackend) expect(be.setGemmKernel(kern)).toBe(true);
              const y = be.matmul(tx, qw, { transB, bias: tb });
              expect(naive.maxRelDiff(await be.download(y), expected)).toBeLessThan(2e-6);
              const out = be.upload(c0, [M, N]);
              be.matmul(tx, qw, { transB, bias: tb, out, accumulate: true });
              expect(naive.maxRelDiff(await be.download(out), expectedAcc)).toBeLessThan(2e-6);
              for (const u of [y, out]) be.free(u);
            }
            if (be instanceof NativeBackend) be.setGemmKernel(kernelsOf(be)[0] as 'avx2' | 'portable');
            for (const u of [tx, tb, qw]) be.free(u);
          });
        }
      }
    }

    it('a quantized weight is read-only and bad arguments throw ShapeError', async () => {
      const t = be.upload(naive.randomF32(12, 5), [3, 4]);
      const q = be.quantizeWeight(t, 'int8', 0);
      expect(() => be.fill(q, 0)).toThrow(/read-only/);
      expect(() => be.writeSlice(q, be.upload(new Float32Array(4), [1, 4]), 0, 0)).toThrow(/read-only/);
      expect(() => be.addInPlace(q, t)).toThrow(/read-only/);
      // views share the allocation, so they are read-only too; every op that writes checks it
      expect(() => be.fill(q.view([12]), 0)).toThrow(/read-only/);
      const a = be.upload(naive.randomF32(9, 7), [3, 3]);
      const w34 = be.upload(naive.randomF32(12, 8), [3, 4]);
      expect(() => be.matmul(a, w34, { out: q })).toThrow(/read-only/);
      expect(() =>
        be.adamw(q, t, be.zeros([3, 4]), be.zeros([3, 4]), {
          lr: 1e-3,
          beta1: 0.9,
          beta2: 0.999,
          eps: 1e-8,
          weightDecay: 0,
          step: 1,
        }),
      ).toThrow(/read-only/);
      expect(() => be.embeddingBackward(be.zeros([1, 4]), be.upload(Int32Array.of(1), [1]), q)).toThrow(
        /read-only/,
      );
      expect(() => be.copyRows(q, t, [0, 1, 2], 4)).toThrow(/read-only/);
      expect(() => be.quantizeWeight(be.upload(new Float32Array(4), [4]), 'int8', 0)).toThrow(ShapeError);
      expect(() => be.quantizeWeight(t, 'fp8' as WeightFormat, 0)).toThrow(ShapeError);
      expect(() => be.quantizeWeight(t, 'int8', 2 as 0)).toThrow(ShapeError);
      const bad = be.upload(Float32Array.from([1, NaN, 2, 3]), [2, 2]);
      const before = be.memory();
      expect(() => be.quantizeWeight(bad, 'int8', 0)).toThrow(/non-finite/);
      expect(be.memory()).toEqual(before); // the failed call left nothing allocated
      expect(Number.isNaN((await be.download(be.quantizeWeight(bad, 'bf16', 0)))[1])).toBe(true);
    });
  }
}
