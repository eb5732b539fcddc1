/**
 * The native backend against the reference backend (the oracle, src/engine/reference.ts) on random inputs:
 * - GEMM on both micro-kernels (AVX2/FMA and portable), every transpose, shapes at and across each blocking
 *   boundary (the 6x16 register tile, KC = 256, MC = 120, NT = 192, the skinny path for M <= 8), odd sizes
 *   (1, 7, 33, 769) and the GPT-2 / CLIP shapes, batched, with bias, alpha and accumulation;
 * - every other kernel, forward and backward, on odd and real shapes;
 * - results that do not depend on the thread count, and the CLIPCAP_THREADS / CLIPCAP_GEMM_PORTABLE switches;
 * - bad arguments throw (ShapeError from the TypeScript checks; RangeError from the addon's own checks when
 *   called directly with wrong lengths), and the process survives.
 *
 * Tolerance: 1e-5 of the tensor's scale (max|native - reference| / max|reference|). The reference sums in
 * float64 and the native kernels in float32 (GEMM: FMA over up to 3072 terms), so a correct kernel differs
 * by ~1e-7..1e-6; any wrong index or formula is far above 1e-5. Each kernel's worst case is printed.
 */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AttentionSaved, ShapeError } from '../../src/engine/backend.js';
import type { Backend, MatmulOptions } from '../../src/engine/backend.js';
import { NativeBackend, loadNativeBackend } from '../../src/engine/native.js';
import { ReferenceBackend } from '../../src/engine/reference.js';
import { Tensor } from '../../src/engine/tensor.js';
import { maxRelDiff, randomF32, randomInts } from './naive.js';

const TOL = 1e-5;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ADDON = path.join(ROOT, 'build/Release/clipcap_native.node');

const check = (kernel: string, where: string, actual: Tensor, expected: Tensor) =>
  checkOne(kernel, where, actual, expected);

const loaded = loadNativeBackend();
if ('error' in loaded) {
  // The addon is built by `npm ci`; without it this whole file fails (it cannot pass without a native backend).
  throw new Error(`native backend unavailable: ${loaded.error}`);
}
const nat = loaded.backend as NativeBackend;
const ref = new ReferenceBackend();
const DEFAULT_THREADS = nat.info().threads;

// kernel -> worst relative difference and where
const worst = new Map<string, { worst: string; at: string; comparisons: number }>();
afterAll(() => {
  nat.setThreads(DEFAULT_THREADS);
  console.log('native vs reference: worst relative difference per kernel');
  console.table(Object.fromEntries(worst));
});

function checkOne(kernel: string, label: string, actual: Tensor, expected: Tensor, tol = TOL): void {
  expect(actual.shape).toEqual(expected.shape);
  const d = maxRelDiff(hostRead(actual), hostRead(expected));
  const w = worst.get(kernel) ?? { worst: '0', at: label, comparisons: 0 };
  w.comparisons++;
  if (!(d <= Number(w.worst))) Object.assign(w, { worst: d.toExponential(2), at: label });
  worst.set(kernel, w);
  expect(
    d,
    `${kernel} ${label}: worst relative difference ${d.toExponential(2)} > ${tol}`,
  ).toBeLessThanOrEqual(tol);
}

/** The same random f32 data on both backends. */
function pair(shape: readonly number[], seed: number, lo = -1, hi = 1): [Tensor, Tensor] {
  const data = randomF32(
    shape.reduce((a, b) => a * b, 1),
    seed,
    lo,
    hi,
  );
  return [nat.upload(data, shape), ref.upload(data, shape)];
}

function pairInts(shape: readonly number[], seed: number, max: number): [Tensor, Tensor] {
  const data = randomInts(
    shape.reduce((a, b) => a * b, 1),
    seed,
    max,
  );
  return [nat.upload(data, shape), ref.upload(data, shape)];
}

/** Elements that differ bit for bit (NaN equals NaN). */
function mismatches(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) n++;
  return n;
}

const label = (shape: readonly number[]) => `[${shape.join(',')}]`;

// ------------------------------------------------------------------ GEMM

interface GemmCase {
  m: number;
  k: number;
  n: number;
  batch?: number;
  bBatched?: boolean;
}

// Each case sits on or across a blocking boundary of native/gemm.cc (MR 6, NR 16, KC 256, MC 120, NT 192,
// skinny M <= 8) or is a model shape.
const GEMM_CASES: GemmCase[] = [
  { m: 1, k: 1, n: 1 },
  { m: 1, k: 769, n: 33 }, // skinny, K not a multiple of 8
  { m: 7, k: 33, n: 769 }, // skinny boundary region
  { m: 8, k: 300, n: 200 }, // largest skinny M
  { m: 9, k: 257, n: 17 }, // smallest packed M, one past KC and NR
  { m: 33, k: 7, n: 1 },
  { m: 6, k: 16, n: 16 }, // exactly one register tile
  { m: 121, k: 513, n: 193 }, // one past MC, 2·KC, NT
  { m: 130, k: 64, n: 400, batch: 3, bBatched: true }, // batched, several column tiles
  { m: 5, k: 40, n: 70, batch: 4 }, // batched skinny with a shared B
  { m: 12, k: 64, n: 50, batch: 24, bBatched: true }, // attention-like: (B·H, T, hd) · (B·H, hd, T)
  { m: 50, k: 768, n: 768 }, // CLIP / GPT-2 projection
  { m: 5, k: 768, n: 2304 }, // GPT-2 decode qkv
];

function gemmOperands(c: GemmCase, transA: boolean, transB: boolean, seed: number) {
  const lead = c.batch ? [c.batch] : [];
  const aShape = [...lead, ...(transA ? [c.k, c.m] : [c.m, c.k])];
  const bShape = [...(c.bBatched ? lead : []), ...(transB ? [c.n, c.k] : [c.k, c.n])];
  return { a: pair(aShape, seed), b: pair(bShape, seed + 1), aShape, bShape };
}

const TRANSPOSES: Array<[boolean, boolean, string]> = [
  [false, false, ''],
  [true, false, '_tA'],
  [false, true, '_tB'],
  [true, true, '_tAtB'],
];

const kernels = (): Array<'avx2' | 'portable'> => (nat.info().avx2 ? ['avx2', 'portable'] : ['portable']);

describe('native GEMM vs reference', () => {
  let seed = 1000;
  for (const c of GEMM_CASES) {
    for (const [transA, transB, suffix] of TRANSPOSES) {
      const id = `${c.batch ? `${c.batch}x` : ''}${c.m}x${c.k}x${c.n}${suffix}${c.bBatched ? ' (batched B)' : ''}`;
      const s = (seed += 10);
      it(`${id} on every micro-kernel`, () => {
        const { a, b, bShape } = gemmOperands(c, transA, transB, s);
        const expected = ref.matmul(a[1], b[1], { transA, transB });
        for (const k of kernels()) {
          expect(nat.setGemmKernel(k)).toBe(true);
          check(`matmul(${k})`, id, nat.matmul(a[0], b[0], { transA, transB }), expected);
        }
        expect(bShape.length).toBeGreaterThanOrEqual(2);
      });
    }
  }

  it('bias, alpha, out and accumulate (packed and skinny paths, both micro-kernels)', () => {
    for (const [m, k, n] of [
      [37, 300, 50],
      [3, 70, 45],
    ]) {
      const a = pair([m, k], 7 + m);
      const b = pair([n, k], 8 + m); // transB: the nn.Linear weight layout
      const bias = pair([n], 9 + m);
      const base = pair([m, n], 10 + m);
      const opts = (i: 0 | 1, out?: Tensor): MatmulOptions => ({
        transB: true,
        bias: bias[i],
        alpha: -0.75,
        ...(out ? { out, accumulate: true } : {}),
      });
      const refOut = copyOf(ref, base[1]);
      ref.matmul(a[1], b[1], opts(1, refOut));
      for (const kern of kernels()) {
        nat.setGemmKernel(kern);
        check(
          `matmul(${kern})`,
          `${m}x${k}x${n} bias+alpha`,
          nat.matmul(a[0], b[0], opts(0)),
          ref.matmul(a[1], b[1], opts(1)),
        );
        const out = copyOf(nat, base[0]);
        nat.matmul(a[0], b[0], opts(0, out));
        check(`matmul(${kern})`, `${m}x${k}x${n} accumulate`, out, refOut);
        // out without accumulate overwrites whatever was there
        const over = copyOf(nat, base[0]);
        nat.matmul(a[0], b[0], { transB: true, out: over });
        check(`matmul(${kern})`, `${m}x${k}x${n} out`, over, ref.matmul(a[1], b[1], { transB: true }));
      }
    }
  });

  it('a fused activation (blocked, packed, skinny and K = 0 paths, both micro-kernels) equals activation(matmul)', () => {
    const acts = ['quickGelu', 'gelu', 'relu', 'tanh'] as const;
    for (const [m, k, n] of [
      [50, 768, 300],
      [37, 300, 50],
      [3, 70, 45],
      [4, 0, 5],
    ]) {
      const a = pair([m, k], 11 + m, -2, 2)[0];
      const w = pair([n, k], 12 + m, -0.1, 0.1)[0]; // transB: the nn.Linear weight layout
      const bias = pair([n], 13 + m)[0];
      const packed = nat.packWeight(w, { transB: true });
      for (const kern of kernels()) {
        nat.setGemmKernel(kern);
        for (const act of acts) {
          for (const [B, how] of [
            [w, 'plain'],
            [packed, 'packed'],
          ] as const) {
            const fused = hostRead(nat.matmul(a, B, { transB: true, bias, activation: act }));
            const two = hostRead(nat.activation(act, nat.matmul(a, B, { transB: true, bias })));
            expect(Array.from(fused), `${m}x${k}x${n} ${how} ${act} (${kern})`).toEqual(Array.from(two));
          }
        }
      }
    }
  });

  it('K = 0 gives bias (or leaves out unchanged plus bias when accumulating)', () => {
    const a = nat.zeros([4, 0]);
    const b = nat.zeros([0, 3]);
    const bias = nat.upload(Float32Array.from([1, 2, 3]), [3]);
    expect(Array.from(hostRead(nat.matmul(a, b, { bias })))).toEqual([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]);
    const out = nat.upload(new Float32Array(12).fill(10), [4, 3]);
    nat.matmul(a, b, { out, accumulate: true });
    expect(Array.from(hostRead(out))).toEqual(new Array(12).fill(10));
  });

  it('GPT-2 / CLIP training shapes: forward, dX = dY·W, dW = Xᵀ·dY', () => {
    // x (T=20, 768), W (768, 3072) as GPT-2 Conv1D stores it
    const x = pair([20, 768], 21);
    const w = pair([768, 3072], 22);
    const dy = pair([20, 3072], 23);
    nat.setGemmKernel(kernels()[0]);
    check('matmul(model)', 'x·W 20x768x3072', nat.matmul(x[0], w[0]), ref.matmul(x[1], w[1]));
    check(
      'matmul(model)',
      'dY·Wᵀ 20x3072x768_tB',
      nat.matmul(dy[0], w[0], { transB: true }),
      ref.matmul(dy[1], w[1], { transB: true }),
    );
    check(
      'matmul(model)',
      'Xᵀ·dY 768x20x3072_tA',
      nat.matmul(x[0], dy[0], { transA: true }),
      ref.matmul(x[1], dy[1], { transA: true }),
    );
  });

  it('results do not depend on the thread count (bit for bit)', () => {
    const a = pair([200, 300], 31);
    const b = pair([300, 500], 32);
    const s = pair([4, 300], 33);
    nat.setThreads(1);
    const one = [nat.matmul(a[0], b[0]), nat.matmul(s[0], b[0])].map((t) => hostRead(t));
    nat.setThreads(3);
    const three = [nat.matmul(a[0], b[0]), nat.matmul(s[0], b[0])].map((t) => hostRead(t));
    nat.setThreads(DEFAULT_THREADS);
    expect(mismatches(three[0], one[0])).toBe(0);
    expect(mismatches(three[1], one[1])).toBe(0);
  });
});

// ------------------------------------------------------------------ other kernels

// Twice: with the AVX2 kernels (vectorized exp/tanh) and with the portable ones (libm).
for (const simd of kernels())
  describe(`native kernels vs reference (${simd})`, () => {
    beforeAll(() => {
      expect(nat.setGemmKernel(simd)).toBe(true);
    });
    const check = (kernel: string, where: string, actual: Tensor, expected: Tensor) =>
      checkOne(`${kernel}(${simd})`, where, actual, expected);
    const SHAPES = [[1], [7], [3, 33], [2, 769], [50, 768], [5, 3072]];

    it('elementwise: add / mul (broadcast), addInPlace, sumRows', () => {
      for (const shape of SHAPES) {
        const a = pair(shape, 40);
        const b = pair(shape.slice(-1), 41);
        const full = pair(shape, 42);
        check('add', label(shape), nat.binary('add', a[0], b[0]), ref.binary('add', a[1], b[1]));
        check(
          'add',
          `${label(shape)} same shape`,
          nat.binary('add', a[0], full[0]),
          ref.binary('add', a[1], full[1]),
        );
        check('mul', label(shape), nat.binary('mul', a[0], b[0]), ref.binary('mul', a[1], b[1]));
        const x = [copyOf(nat, a[0]), copyOf(ref, a[1])] as const;
        nat.addInPlace(x[0], full[0], -1.5);
        ref.addInPlace(x[1], full[1], -1.5);
        check('addInPlace', label(shape), x[0], x[1]);
        check('sumRows', label(shape), nat.sumRows(a[0]), ref.sumRows(a[1]));
        const out = [copyOf(nat, b[0]), copyOf(ref, b[1])] as const;
        nat.sumRows(a[0], out[0], true);
        ref.sumRows(a[1], out[1], true);
        check('sumRows', `${label(shape)} accumulate`, out[0], out[1]);
      }
    });

    it('activations forward and backward', () => {
      for (const shape of SHAPES) {
        const x = pair(shape, 50, -6, 6);
        const dy = pair(shape, 51);
        for (const act of ['gelu', 'quickGelu', 'relu', 'tanh'] as const) {
          const back = `${act}Backward`;
          const yN = nat.activation(act, x[0]);
          const yR = ref.activation(act, x[1]);
          check(act, label(shape), yN, yR);
          // tanh's backward takes the forward's output, the others its input
          const savedN = act === 'tanh' ? yN : x[0];
          const savedR = act === 'tanh' ? yR : x[1];
          check(
            back,
            label(shape),
            nat.activationBackward(act, dy[0], savedN),
            ref.activationBackward(act, dy[1], savedR),
          );
        }
      }
    });

    it('layerNorm forward and backward (dweight/dbias accumulate)', () => {
      for (const shape of [
        [1, 1],
        [7, 33],
        [2, 5, 769],
        [60, 768],
        [3, 1024],
      ]) {
        const C = shape[shape.length - 1];
        const x = pair(shape, 70, -3, 5);
        const w = pair([C], 71);
        const b = pair([C], 72);
        const dy = pair(shape, 73);
        const yN = nat.layerNorm(x[0], w[0], b[0], 1e-5);
        const yR = ref.layerNorm(x[1], w[1], b[1], 1e-5);
        check('layerNorm', `y ${label(shape)}`, yN.y, yR.y);
        check('layerNorm', `mean ${label(shape)}`, yN.mean, yR.mean);
        check('layerNorm', `rstd ${label(shape)}`, yN.rstd, yR.rstd);
        const dw = pair([C], 74);
        const db = pair([C], 75);
        const dxN = nat.layerNormBackward(dy[0], x[0], w[0], yN.mean, yN.rstd, dw[0], db[0]);
        const dxR = ref.layerNormBackward(dy[1], x[1], w[1], yR.mean, yR.rstd, dw[1], db[1]);
        check('layerNormBackward', `dx ${label(shape)}`, dxN, dxR);
        check('layerNormBackward', `dweight ${label(shape)}`, dw[0], dw[1]);
        check('layerNormBackward', `dbias ${label(shape)}`, db[0], db[1]);
      }
    });

    const ATTENTION = [
      { name: 'tiny odd: B=1, T=7, C=33·1, 1 head', b: 1, tq: 7, tk: 7, c: 33, h: 1, causal: false },
      {
        name: 'GPT-2 train: B=2, T=33, C=768, 12 heads, causal + padding',
        b: 2,
        tq: 33,
        tk: 33,
        c: 768,
        h: 12,
        causal: true,
        mask: true,
      },
      {
        name: 'CLIP ViT-B/32: B=2, T=50, C=768, 12 heads',
        b: 2,
        tq: 50,
        tk: 50,
        c: 768,
        h: 12,
        causal: false,
      },
      {
        name: 'decode: B=3, Tq=1 against a 40-row cache of 20, causal + padding',
        b: 3,
        tq: 1,
        tk: 40,
        c: 64,
        h: 4,
        causal: true,
        kv: 20,
        mask: true,
      },
      {
        name: 'prompt: B=2, Tq=5, kvLength 12 of 16, causal',
        b: 2,
        tq: 5,
        tk: 16,
        c: 24,
        h: 3,
        causal: true,
        kv: 12,
      },
      {
        name: 'GPT-2 train with attn dropout p=0.1: B=2, T=33, C=768, 12 heads, causal + padding',
        b: 2,
        tq: 33,
        tk: 33,
        c: 768,
        h: 12,
        causal: true,
        mask: true,
        drop: { p: 0.1, seed: 2 ** 40 + 3 },
      },
      {
        name: 'dropout p=0.5 (seed -7), Tq=5, kvLength 12 of 16, causal',
        b: 2,
        tq: 5,
        tk: 16,
        c: 24,
        h: 3,
        causal: true,
        kv: 12,
        drop: { p: 0.5, seed: -7 },
      },
    ];

    for (const a of ATTENTION) {
      it(`attention forward and backward: ${a.name}`, () => {
        const q = pair([a.b, a.tq, a.c], 80);
        const k = pair([a.b, a.tk, a.c], 81);
        const v = pair([a.b, a.tk, a.c], 82);
        const dout = pair([a.b, a.tq, a.c], 83);
        // batch row b masks its first b keys (left padding); row 0 is unmasked
        const maskData = new Float32Array(a.b * a.tk).map((_, i) =>
          i % a.tk < Math.floor(i / a.tk) ? 0 : 1,
        );
        const opts = (be: Backend) => ({
          nHead: a.h,
          causal: a.causal,
          ...(a.kv !== undefined ? { kvLength: a.kv } : {}),
          ...(a.mask ? { keyMask: be.upload(maskData, [a.b, a.tk]) } : {}),
          ...(a.drop ? { dropout: a.drop } : {}),
        });
        const oN = nat.attention(q[0], k[0], v[0], { ...opts(nat), record: true });
        const oR = ref.attention(q[1], k[1], v[1], { ...opts(ref), record: true });
        const sN = oN.saved as AttentionSaved;
        const sR = oR.saved as AttentionSaved;
        check('attention', `out ${a.name}`, oN.out, oR.out);
        // both host backends save the probabilities
        check('attention', `probs ${a.name}`, sN.tensors[0], sR.tensors[0]);
        const gN = nat.attentionBackward(dout[0], q[0], k[0], v[0], sN, opts(nat));
        const gR = ref.attentionBackward(dout[1], q[1], k[1], v[1], sR, opts(ref));
        check('attentionBackward', `dq ${a.name}`, gN.dq, gR.dq);
        check('attentionBackward', `dk ${a.name}`, gN.dk, gR.dk);
        check('attentionBackward', `dv ${a.name}`, gN.dv, gR.dv);
      });
    }

    it('attention with dropout does not depend on the thread count (bit for bit)', () => {
      const [B, T, C, H] = [2, 40, 96, 3];
      const q = nat.upload(randomF32(B * T * C, 90), [B, T, C]);
      const k = nat.upload(randomF32(B * T * C, 91), [B, T, C]);
      const v = nat.upload(randomF32(B * T * C, 92), [B, T, C]);
      const dout = nat.upload(randomF32(B * T * C, 93), [B, T, C]);
      const opts = { nHead: H, causal: true, dropout: { p: 0.2, seed: 31 } };
      const run = (): Float32Array[] => {
        const o = nat.attention(q, k, v, { ...opts, record: true });
        const g = nat.attentionBackward(dout, q, k, v, o.saved as AttentionSaved, opts);
        return [o.out, g.dq, g.dk, g.dv].map((t) => hostRead(t) as Float32Array);
      };
      nat.setThreads(1);
      const single = run();
      nat.setThreads(DEFAULT_THREADS);
      const multi = run();
      single.forEach((x, i) => expect(mismatches(multi[i], x), `out, dq, dk, dv [${i}]`).toBe(0));
    });

    it('embedding gather and scatter-add (repeated ids), GPT-2 sizes', () => {
      for (const [V, C, n] of [
        [7, 33, 20],
        [50257, 40, 60], // the GPT-2 vocabulary (narrow rows keep the reference side fast)
      ]) {
        const table = pair([V, C], 90);
        const ids = pairInts([n], 91, Math.min(V, 11)); // few distinct ids: many repeats
        const dy = pair([n, C], 92);
        check('embedding', `${V}x${C}`, nat.embedding(ids[0], table[0]), ref.embedding(ids[1], table[1]));
        const dt = [copyOf(nat, table[0]), copyOf(ref, table[1])] as const;
        nat.embeddingBackward(dy[0], ids[0], dt[0]);
        ref.embeddingBackward(dy[1], ids[1], dt[1]);
        check('embeddingBackward', `${V}x${C}`, dt[0], dt[1]);
      }
    });

    it('crossEntropy (+ ignore index) and its gradient', async () => {
      for (const [N, V] of [
        [1, 7],
        [33, 769],
        [6, 50257],
      ]) {
        const logits = pair([N, V], 100, -5, 5);
        const t = randomInts(N, 101, V);
        t[0] = 0; // id 0 is ClipCap's padding and ignored
        const targets = [nat.upload(t, [N]), ref.upload(t, [N])] as const;
        for (const ignore of [0, -100]) {
          const lN = await nat.crossEntropy(logits[0], targets[0], ignore);
          const lR = await ref.crossEntropy(logits[1], targets[1], ignore);
          if (Number.isNaN(lR)) expect(lN).toBeNaN();
          else expect(Math.abs(lN - lR) / Math.abs(lR), `loss ${N}x${V}`).toBeLessThanOrEqual(TOL);
          check(
            'crossEntropyBackward',
            `${N}x${V} ignore ${ignore}`,
            nat.crossEntropyBackward(logits[0], targets[0], ignore, 0.5),
            ref.crossEntropyBackward(logits[1], targets[1], ignore, 0.5),
          );
        }
      }
    });

    it('adamw: 5 steps with weight decay', () => {
      const shape = [3, 769];
      const p = pair(shape, 110);
      const m = [nat.zeros(shape), ref.zeros(shape)] as const;
      const v = [nat.zeros(shape), ref.zeros(shape)] as const;
      for (let step = 1; step <= 5; step++) {
        const g = pair(shape, 110 + step);
        const opts = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step };
        nat.adamw(p[0], g[0], m[0], v[0], opts);
        ref.adamw(p[1], g[1], m[1], v[1], opts);
      }
      check('adamw', 'param after 5 steps', p[0], p[1]);
      check('adamw', 'm after 5 steps', m[0], m[1]);
      check('adamw', 'v after 5 steps', v[0], v[1]);
    });

    it('dropout masks are identical to the reference for the same seed, at any thread count', () => {
      const x = pair([64, 769], 120);
      const ones = [
        nat.upload(new Float32Array(64 * 769).fill(1), [64, 769]),
        ref.upload(new Float32Array(64 * 769).fill(1), [64, 769]),
      ] as const;
      for (const [p, seed] of [
        [0.1, 1],
        [0.5, -7],
        [0.3, 2 ** 40 + 3],
      ]) {
        // the mask is never returned: dropping ones exposes it
        expect(
          mismatches(hostRead(nat.dropout(ones[0], p, seed)), hostRead(ref.dropout(ones[1], p, seed))),
        ).toBe(0);
        check('dropout', `y p=${p} seed ${seed}`, nat.dropout(x[0], p, seed), ref.dropout(x[1], p, seed));
      }
      nat.setThreads(1);
      const single = hostRead(nat.dropout(ones[0], 0.2, 99));
      nat.setThreads(DEFAULT_THREADS);
      expect(mismatches(hostRead(nat.dropout(ones[0], 0.2, 99)), single)).toBe(0);
    });

    it('layout: concat, slice, writeSlice, indexSelect', () => {
      const a = pair([2, 3, 5], 130);
      const b = pair([2, 4, 5], 131);
      check('concat', 'axis 1', nat.concat([a[0], b[0]], 1), ref.concat([a[1], b[1]], 1));
      check('slice', 'axis -1', nat.slice(b[0], -1, 1, 4), ref.slice(b[1], -1, 1, 4));
      const dst = [copyOf(nat, b[0]), copyOf(ref, b[1])] as const;
      nat.writeSlice(dst[0], a[0], 1, 1);
      ref.writeSlice(dst[1], a[1], 1, 1);
      check('writeSlice', 'axis 1', dst[0], dst[1]);
      check('indexSelect', 'repeats', nat.indexSelect(a[0], [1, 0, 1]), ref.indexSelect(a[1], [1, 0, 1]));
    });

    // AVX2 mode runs conv2d on the AVX-512 kernel where the CPU has it, and on im2col + the AVX2 GEMM;
    // portable mode only on im2col + the portable GEMM.
    const convKernels: Array<'avx512' | 'gemm'> =
      simd === 'avx2' && nat.info().avx512 ? ['avx512', 'gemm'] : ['gemm'];
    it(`conv2d (ResNet CLIP shapes and every tiling edge) on ${convKernels.join(' and ')}, any thread count`, () => {
      const cases: [string, number[], number[], { stride?: number; padding?: number; relu?: boolean }][] = [
        ['stem 3x3 s2', [2, 33, 33, 3], [16, 3, 3, 3], { stride: 2, padding: 1, relu: true }],
        // K = 9000: several depth blocks (KC 384 AVX-512, 256 GEMM) and several im2col blocks (GEMM path)
        ['3x3 pad 1, K blocks', [1, 34, 34, 1000], [8, 3, 3, 1000], { padding: 1, relu: true }],
        ['1x1', [2, 9, 9, 320], [80, 1, 1, 320], {}],
        // M = 81 (12-row tiles end in 9), N = 40 and 23 (16- and 32-column tiles end part-way)
        ['3x3 N=40', [1, 9, 9, 64], [40, 3, 3, 64], { padding: 1 }],
        ['1x1 N=23', [1, 9, 9, 50], [23, 1, 1, 50], {}],
        // N > 256: several column tiles share each im2col row (AVX-512: shared im2col in two blocks of rows,
        // 2^20 floats each for K = 2700)
        ['3x3 N=270, 2 shared im2col blocks', [1, 20, 20, 300], [270, 3, 3, 300], { padding: 1 }],
        ['1x1 N=300 s1', [1, 7, 5, 33], [300, 1, 1, 33], {}],
        // GEMM path: Winograd F(2x2, 3x3) (>= 64 tiles of 2x2 outputs), partial edge tiles, 2 tile blocks
        ['3x3 winograd', [2, 11, 13, 24], [20, 3, 3, 24], { padding: 1 }],
        ['3x3 winograd, 2 tile blocks', [1, 16, 16, 16], [2720, 3, 3, 16], { padding: 1 }],
      ];
      for (const kern of convKernels) {
        expect(nat.setConvKernel(kern)).toBe(true);
        expect(nat.info().convKernel).toBe(kern);
        for (const [id, xs, ws, o] of cases) {
          const name = `${id} (${kern})`;
          const x = pair(xs, 140);
          const w = pair(ws, 141);
          const bias = pair([ws[0]], 142);
          const yN = nat.conv2d(x[0], w[0], { ...o, bias: bias[0] });
          check('conv2d', name, yN, ref.conv2d(x[1], w[1], { ...o, bias: bias[1] }));
          const res = pair(yN.shape, 143);
          const opts = { ...o, bias: bias[0], residual: res[0], relu: true };
          const withRes = nat.conv2d(x[0], w[0], opts);
          check(
            'conv2d',
            `${name} + residual`,
            withRes,
            ref.conv2d(x[1], w[1], { ...o, bias: bias[1], residual: res[1], relu: true }),
          );
          nat.setThreads(1);
          const single = hostRead(nat.conv2d(x[0], w[0], opts));
          nat.setThreads(3);
          const three = hostRead(nat.conv2d(x[0], w[0], opts));
          nat.setThreads(DEFAULT_THREADS);
          expect(mismatches(hostRead(withRes), single), `${name}: 1 thread`).toBe(0);
          expect(mismatches(three, single), `${name}: 3 threads`).toBe(0);
        }
      }
      nat.setConvKernel(convKernels[0]);
      const p = pair([2, 9, 7, 33], 144);
      check('avgPool2d', '2x2', nat.avgPool2d(p[0], { kernel: 2 }), ref.avgPool2d(p[1], { kernel: 2 }));
    });
  });

// ------------------------------------------------------------------ switches and bad arguments

describe('native addon switches and errors', () => {
  it('CLIPCAP_THREADS and CLIPCAP_GEMM_PORTABLE are read at load', () => {
    const script = `const a = require(${JSON.stringify(ADDON)}); const i = a.info(); console.log(i.threads + ' ' + i.gemmKernel)`;
    const run = (env: Record<string, string>) =>
      execFileSync(process.execPath, ['-e', script], {
        env: { ...process.env, ...env },
        encoding: 'utf8',
      }).trim();
    expect(run({ CLIPCAP_THREADS: '3', CLIPCAP_GEMM_PORTABLE: '1' })).toBe('3 portable');
    expect(run({ CLIPCAP_THREADS: '1', CLIPCAP_GEMM_PORTABLE: '0' })).toBe(
      `1 ${nat.info().avx2 ? 'avx2' : 'portable'}`,
    );
  });

  it('bad shapes, dtypes and ranges throw ShapeError/Error before the native call', () => {
    const a = nat.zeros([3, 4]);
    const ids = nat.upload(Int32Array.from([0, 5]), [2]);
    expect(() => nat.matmul(a, nat.zeros([5, 2]))).toThrow(ShapeError);
    expect(() => nat.matmul(a, nat.zeros([4, 2]), { out: a })).toThrow(ShapeError);
    expect(() => nat.matmul(a, a, { transB: true, out: a })).toThrow(ShapeError); // out shares A's storage
    expect(() => nat.matmul(a, nat.zeros([4, 2]), { alpha: NaN })).toThrow(ShapeError);
    expect(() => nat.matmul(nat.zeros([2, 3, 4]), nat.zeros([3, 4, 2]))).toThrow(ShapeError);
    expect(() => nat.matmul(nat.zeros([3, 4], 'i32'), nat.zeros([4, 2]))).toThrow(ShapeError);
    expect(() => nat.matmul(ref.zeros([3, 4]), nat.zeros([4, 2]))).toThrow(/reference backend/);
    expect(() => nat.binary('add', a, nat.zeros([3]))).toThrow(ShapeError);
    expect(() => nat.embedding(ids, nat.zeros([5, 2]))).toThrow(/id 5/);
    expect(() => nat.crossEntropy(nat.zeros([2, 5]), ids, -1)).toThrow(/target 5/);
    expect(() =>
      nat.attention(a.reshape([1, 3, 4]), a.reshape([1, 3, 4]), a.reshape([1, 3, 4]), { nHead: 3 }),
    ).toThrow(ShapeError);
    expect(() => nat.dropout(a, 1.5, 1)).toThrow(ShapeError);
    expect(() => nat.setGemmKernel('sse' as 'avx2')).toThrow(ShapeError);
    const freed = nat.zeros([3, 4]);
    nat.free(freed);
    expect(() => nat.activation('relu', freed)).toThrow(/after free/);
  });

  it('the addon itself rejects wrong lengths, types and overlaps with a RangeError (no crash)', () => {
    type Raw = Record<string, (...args: unknown[]) => unknown>;
    const raw = createRequire(import.meta.url)(ADDON) as Raw;
    const f = (n: number) => new Float32Array(n);
    // A is 2x3 but the call claims M = 4
    expect(() =>
      raw.gemm(f(6), f(6), f(8), null, 4, 2, 3, false, false, 1, false, 1, 0, 0, 0, false),
    ).toThrow(RangeError);
    // C overlaps A
    const shared = f(64);
    expect(() =>
      raw.gemm(
        shared.subarray(0, 4),
        f(4),
        shared.subarray(2, 6),
        null,
        2,
        2,
        2,
        false,
        false,
        1,
        false,
        1,
        0,
        0,
        0,
        false,
      ),
    ).toThrow(RangeError);
    expect(() =>
      raw.gemm(new Int32Array(6), f(6), f(4), null, 2, 2, 3, false, false, 1, false, 1, 0, 0, 0, false),
    ).toThrow(RangeError);
    expect(() =>
      raw.gemm(f(6), f(6), f(4), null, -2, 2, 3, false, false, 1, false, 1, 0, 0, 0, false),
    ).toThrow(RangeError);
    expect(() =>
      raw.gemm(f(6), f(6), f(4), null, 2.5, 2, 3, false, false, 1, false, 1, 0, 0, 0, false),
    ).toThrow(RangeError);
    expect(() => raw.gemm(f(6))).toThrow(RangeError);
    // the old argument count (no packedB)
    expect(() => raw.gemm(f(6), f(6), f(4), null, 2, 2, 3, false, false, 1, false, 1, 0, 0, 0)).toThrow(
      /16 arguments/,
    );
    // a packed B (packB) holds K·N rounded up to 16 columns, plus 15 floats of alignment slack
    expect(() => raw.gemm(f(6), f(48), f(4), null, 2, 2, 3, false, true, 1, false, 1, 0, 0, 0, true)).toThrow(
      RangeError,
    );
    expect(() => raw.packB(f(6), 2, 3, true, f(47))).toThrow(RangeError);
    expect(() => raw.unpackB(f(47), 2, 3, true, f(6))).toThrow(RangeError);
    expect(() => raw.unpackB(f(63), 2, 3, true, f(5))).toThrow(RangeError);
    expect(() => raw.layerNorm(f(10), f(5), f(5), 3, 5, 1e-5, f(15), f(3), f(3))).toThrow(RangeError);
    expect(() => raw.embedding(Int32Array.from([0, 9]), f(10), f(4), 5, 2)).toThrow(/outside the table/);
    expect(() => raw.crossEntropy(f(10), Int32Array.from([1, 7]), 2, 5, -1)).toThrow(/outside the classes/);
    // kvLength 3 > Tk 2; then a dropout p of 1; then the old argument count (no dropout arguments)
    expect(() => raw.attention(f(8), f(8), f(8), null, f(8), null, 1, 2, 2, 3, 4, 2, 1, false, 0, 0)).toThrow(
      /kvLength/,
    );
    expect(() => raw.attention(f(8), f(8), f(8), null, f(8), null, 1, 2, 2, 2, 4, 2, 1, false, 1, 0)).toThrow(
      /dropoutP/,
    );
    expect(() => raw.attention(f(8), f(8), f(8), null, f(8), null, 1, 2, 2, 2, 4, 2, 1, false)).toThrow(
      RangeError,
    );
    const detached = f(16);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    expect(() => raw.softmax(detached, 4, 4, f(16), false)).toThrow(RangeError);
    // and the addon still works afterwards
    const c = f(1);
    raw.gemm(
      Float32Array.from([2]),
      Float32Array.from([3]),
      c,
      null,
      1,
      1,
      1,
      false,
      false,
      1,
      false,
      1,
      0,
      0,
      0,
      false,
    );
    expect(c[0]).toBe(6);
  });
});

/** A host backend's tensor contents, synchronously (both backends here keep typed arrays on the host). */
function hostRead(t: Tensor): Float32Array | Int32Array {
  if (!t.allocation.live) throw new Error('hostRead: the tensor was freed');
  return (t.storage as Float32Array | Int32Array).slice();
}

/** A copy of t on its backend. */
function copyOf(be: Backend, t: Tensor): Tensor {
  return be.slice(t, 0, 0, t.shape[0]);
}
