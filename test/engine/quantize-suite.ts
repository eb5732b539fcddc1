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
import { quantizeHost } from '../../src/engine/quantize.js';
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

/** Bit views of one double, for fusedMulAdd32's round-to-odd step. */
const f64 = new Float64Array(1);
const i64 = new BigInt64Array(f64.buffer);

/**
 * fl32(x·y + z) rounded once (a float32 fused multiply-add), for float32 x, z and a y with at most 24
 * significant bits: x·y is exact in a double, the double sum is rounded to odd (its error decides the last
 * bit), and a round-to-odd double of more than 2·24 + 1 bits rounds to the float32 that the exact sum does.
 */
function fusedMulAdd32(x: number, y: number, z: number): number {
  const p = x * y;
  const s = p + z;
  const t = s - p;
  const err = p - (s - t) + (z - t); // exact: s + err = p + z (TwoSum)
  if (err === 0 || !Number.isFinite(s)) return Math.fround(s);
  f64[0] = s;
  if ((i64[0] & 1n) === 0n) i64[0] += err > 0 === s > 0 ? 1n : -1n; // one ulp towards the exact sum
  return Math.fround(f64[0]);
}

/**
 * The native decoding product's values by its summation order (native/quant.cc), bit for bit: C (M, N) =
 * alpha·A·(q·scale) (+ C) (+ bias) for A (M, K) and the compact weight (q (K, N), or (N, K) with transB).
 * `fused`: the AVX2 kernels' fused multiply-adds; else the portable loops' separate float32 multiply and add.
 * nn: one chain over p per output; nt: 8 lanes (p mod 8) reduced as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7))
 * (AVX2) or ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) (portable), then the tail p >= K - K mod 8 in order.
 * Then per output: ·scale (int8), ·alpha, + C, + bias, each rounded to float32.
 */
function quantProductBits(
  A: Float32Array,
  q: Int8Array | Uint16Array,
  scales: Float32Array | null,
  M: number,
  K: number,
  N: number,
  o: { transB: boolean; fused: boolean; alpha: number; c0: Float32Array | null; bias: Float32Array | null },
): Float32Array {
  const f = Math.fround;
  const wv = new Float32Array(q.length);
  if (q instanceof Int8Array) wv.set(q);
  else new Uint32Array(wv.buffer).set(Array.from(q, (h) => h << 16));
  const madd = o.fused ? fusedMulAdd32 : (x: number, y: number, z: number) => f(z + f(x * y));
  const out = new Float32Array(M * N);
  const Kv = K - (K % 8);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < N; j++) {
      const w = (p: number) => wv[o.transB ? j * K + p : p * N + j];
      const a = (p: number) => A[m * K + p];
      let v = 0;
      if (!o.transB) {
        for (let p = 0; p < K; p++) v = madd(a(p), w(p), v);
      } else {
        const l = [0, 0, 0, 0, 0, 0, 0, 0];
        for (let p = 0; p < Kv; p++) l[p % 8] = madd(a(p), w(p), l[p % 8]);
        v = o.fused
          ? f(f(f(l[0] + l[4]) + f(l[2] + l[6])) + f(f(l[1] + l[5]) + f(l[3] + l[7])))
          : f(f(f(l[0] + l[1]) + f(l[2] + l[3])) + f(f(l[4] + l[5]) + f(l[6] + l[7])));
        for (let p = Kv; p < K; p++) v = madd(a(p), w(p), v);
      }
      if (scales) v = f(v * scales[j]);
      v = f(v * o.alpha);
      if (o.c0) v = f(v + o.c0[m * N + j]);
      if (o.bias) v = f(v + o.bias[j]);
      out[m * N + j] = v;
    }
  return out;
}

/** Indices where a and b differ as bit patterns (so -0 != 0 and NaNs compare by payload). */
function bitDiffs(a: Float32Array, b: Float32Array): number[] {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const out: number[] = [];
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) out.push(i);
  return out;
}

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

    // The native decoding kernels' exact values: the README's int8 / bf16 accuracy figures were measured with
    // this summation order, so a faster kernel must keep it bit for bit (native/quant.cc).
    if (be instanceof NativeBackend) {
      // (K, N): vector tails in K (nt) and N (nn), several 8-row passes, and one shape large enough for the
      // thread pool's column blocks (2·M·N·K >= 1e6).
      const exactShapes: [number, number][] = [
        [37, 53],
        [19, 8],
        [203, 150],
        [300, 1703],
      ];
      for (const format of FORMATS)
        for (const transB of [false, true])
          it(`${format}${transB ? ' _tB' : ''} decoding products (M = 1..8) equal the kernel's summation order bit for bit`, async () => {
            for (const [K, N] of exactShapes) {
              const seed = K * 7 + N + (transB ? 3 : 0) + (format === 'bf16' ? 11 : 0);
              const [rows, cols, axis] = transB ? [N, K, 0 as const] : [K, N, 1 as const];
              const w = naive.randomF32(K * N, seed, -0.5, 0.5);
              const c = quantizeHost('test', w, rows, cols, format, axis, new Float32Array(K * N));
              const tw = be.upload(w, [rows, cols]);
              const qw = be.quantizeWeight(tw, format, axis);
              be.free(tw);
              const bias = naive.randomF32(N, seed + 1, -1, 1);
              const tb = be.upload(bias, [N]);
              for (let M = 1; M <= 8; M++) {
                if (K * N > 1e5 && M !== 1 && M !== 5 && M !== 8) continue; // the big shape: a few row counts
                const x = naive.randomF32(M * K, seed + 2 + M, -1, 1);
                const c0 = naive.randomF32(M * N, seed + 20 + M, -1, 1);
                const tx = be.upload(x, [M, K]);
                for (const kern of be.info().avx2
                  ? (['avx2', 'portable'] as const)
                  : (['portable'] as const)) {
                  // The portable loops' separate multiply and add: x86-64 without FMA (elsewhere the compiler
                  // may fuse them, so only the AVX2 order is pinned down there).
                  if (kern === 'portable' && process.arch !== 'x64') continue;
                  expect(be.setGemmKernel(kern)).toBe(true);
                  const fused = kern === 'avx2';
                  for (const [withBias, accumulate, alpha] of [
                    [false, false, 1],
                    [true, true, -0.75],
                    [true, false, 1],
                    [false, true, 1],
                  ] as const) {
                    const out = be.upload(c0, [M, N]);
                    be.matmul(tx, qw, { transB, alpha, bias: withBias ? tb : undefined, out, accumulate });
                    const want = quantProductBits(x, c.data, c.scales, M, K, N, {
                      transB,
                      fused,
                      alpha,
                      c0: accumulate ? c0 : null,
                      bias: withBias ? bias : null,
                    });
                    const got = await be.download(out);
                    if (!(got instanceof Float32Array))
                      throw new Error('a float32 product downloads as float32');
                    const diffs = bitDiffs(got, want);
                    expect(
                      diffs.slice(0, 5),
                      `${kern} M=${M} K=${K} N=${N} bias=${withBias} acc=${accumulate}`,
                    ).toEqual([]);
                    be.free(out);
                  }
                }
                be.free(tx);
              }
              be.setGemmKernel(be.info().avx2 ? 'avx2' : 'portable');
              for (const u of [tb, qw]) be.free(u);
            }
          });
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
