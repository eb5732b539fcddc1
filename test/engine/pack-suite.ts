/**
 * packWeight (backend.ts), part of the kernel suite (kernels.test.ts runs it on every backend that loads and
 * on the async test backend, which declines the op): products with a packed weight against float64 products
 * of the weight's values, on odd shapes (M from 1 to 803 across the native skinny/blocked boundary and several
 * row blocks; K across 256-deep blocks; N not a multiple of the 16-column panels), both layouts, with bias,
 * alpha, out and accumulate, a batched transposed A, and both native micro-kernels; download gives the
 * weight's values back exactly; and every other use of a packed weight throws.
 */
import { expect, it } from 'vitest';
import { ShapeError, UnsupportedOpError } from '../../src/engine/backend.js';
import type { Backend } from '../../src/engine/backend.js';
import { NativeBackend } from '../../src/engine/native.js';
import * as naive from './naive.js';

const TOL = 1e-5;

const kernelsOf = (be: Backend): Array<'avx2' | 'portable' | null> =>
  be instanceof NativeBackend ? (be.info().avx2 ? ['avx2', 'portable'] : ['portable']) : [null];

// (M rows of x, K, N)
const SHAPES: [number, number, number][] = [
  [1, 37, 53],
  [5, 300, 17],
  [8, 513, 33],
  [9, 256, 16],
  [50, 260, 131],
  [50, 768, 200],
  [803, 300, 45],
];

/** The packWeight tests on `be` (called inside the kernel suite's describe for that backend). */
export function packTests(be: Backend): void {
  if (!be.supports('packWeight')) {
    it('a backend without packWeight says so and throws UnsupportedOpError', () => {
      const w = be.upload(new Float32Array(6), [2, 3]);
      expect(() => be.packWeight(w, { transB: true })).toThrow(UnsupportedOpError);
      be.free(w);
    });
    return;
  }

  for (const [M, K, N] of SHAPES) {
    for (const transB of [false, true]) {
      it(`matmul ${M}x${K}x${N}${transB ? '_tB' : ''} with a packed weight equals the float64 product`, async () => {
        const seed = M * 1000 + K + N + (transB ? 7 : 0);
        const x = naive.randomF32(M * K, seed, -1, 1);
        const w = naive.randomF32(K * N, seed + 1, -0.5, 0.5);
        const bias = naive.randomF32(N, seed + 2, -1, 1);
        const c0 = naive.randomF32(M * N, seed + 3, -1, 1);
        const tw = be.upload(w, transB ? [N, K] : [K, N]);
        const pw = be.packWeight(tw, { transB });
        be.free(tw); // the packed weight stands alone
        expect(pw.shape).toEqual(transB ? [N, K] : [K, N]);
        expect(Array.from(await be.download(pw))).toEqual(Array.from(w));
        const mm = { batch: 1, m: M, k: K, n: N, transA: false, transB, bBatched: false };
        const plain = naive.matmulNaive(x, w, mm);
        const expected = naive.matmulNaive(x, w, mm, bias, -0.75);
        const expectedAcc = Float64Array.from(expected, (v, i) => v + c0[i]);
        const tx = be.upload(x, [M, K]);
        const tb = be.upload(bias, [N]);
        for (const kern of kernelsOf(be)) {
          if (kern && be instanceof NativeBackend) expect(be.setGemmKernel(kern)).toBe(true);
          const y0 = be.matmul(tx, pw, { transB });
          expect(naive.maxRelDiff(await be.download(y0), plain)).toBeLessThan(TOL);
          const y = be.matmul(tx, pw, { transB, bias: tb, alpha: -0.75 });
          expect(naive.maxRelDiff(await be.download(y), expected)).toBeLessThan(TOL);
          const out = be.upload(c0, [M, N]);
          be.matmul(tx, pw, { transB, bias: tb, alpha: -0.75, out, accumulate: true });
          expect(naive.maxRelDiff(await be.download(out), expectedAcc)).toBeLessThan(TOL);
          for (const u of [y0, y, out]) be.free(u);
        }
        if (be instanceof NativeBackend) be.setGemmKernel(kernelsOf(be)[0] as 'avx2' | 'portable');
        for (const u of [tx, tb, pw]) be.free(u);
      });
    }
  }

  it('a batched A, stored transposed, times one packed weight', async () => {
    const [bt, M, K, N] = [3, 13, 70, 37];
    const a = naive.randomF32(bt * K * M, 5, -1, 1); // (3, K, M): op(A) = Aᵀ per batch
    const w = naive.randomF32(N * K, 6, -1, 1); // (N, K), used with transB
    const pw = be.packWeight(be.upload(w, [N, K]), { transB: true });
    const ta = be.upload(a, [bt, K, M]);
    const mm = { batch: bt, m: M, k: K, n: N, transA: true, transB: true, bBatched: false };
    for (const kern of kernelsOf(be)) {
      if (kern && be instanceof NativeBackend) expect(be.setGemmKernel(kern)).toBe(true);
      const y = be.matmul(ta, pw, { transA: true, transB: true });
      expect(y.shape).toEqual([bt, M, N]);
      expect(naive.maxRelDiff(await be.download(y), naive.matmulNaive(a, w, mm))).toBeLessThan(TOL);
      be.free(y);
    }
    if (be instanceof NativeBackend) be.setGemmKernel(kernelsOf(be)[0] as 'avx2' | 'portable');
  });

  it('counts its memory and frees it', () => {
    const before = be.memory();
    const w = be.upload(new Float32Array(40 * 24), [40, 24]);
    const p = be.packWeight(w, { transB: true });
    be.free(w);
    expect(be.memory().tensors).toBe(before.tensors + 1);
    expect(be.memory().bytes).toBeGreaterThanOrEqual(before.bytes + 40 * 24 * 4);
    be.free(p);
    expect(be.memory()).toEqual(before);
    expect(() => be.matmul(be.zeros([2, 24]), p, { transB: true })).toThrow(/after free/);
  });

  it('is read only by matmul as b with the transB it was packed for, and by download', async () => {
    const w = be.upload(naive.randomF32(12, 3), [4, 3]);
    const p = be.packWeight(w, { transB: true }); // op(B) (3, 4)
    const x = be.upload(naive.randomF32(6, 4), [2, 3]);
    const sq = be.packWeight(be.upload(naive.randomF32(9, 5), [3, 3]), { transB: false });
    const throws = (f: () => unknown, re: RegExp): void => {
      expect(f).toThrow(ShapeError);
      expect(f).toThrow(re);
    };
    throws(() => be.matmul(x, sq, { transB: true }), /packed for transB false/);
    throws(() => be.matmul(p, x.view([3, 2])), /packed weight/); // as A
    throws(() => be.matmul(x.view([3, 2]), p, { transA: true }), /packed for transB true/);
    throws(() => be.matmul(be.zeros([2, 2]), p.view([2, 6]), { transB: true }), /view of a packed weight/);
    const asOut = be.packWeight(be.zeros([2, 3]), { transB: false });
    throws(() => be.matmul(x, sq, { out: asOut }), /packed weight/); // as out
    throws(() => be.binary('add', p, p), /packed weight/);
    throws(() => be.activation('relu', p), /packed weight/);
    throws(() => be.slice(p, 0, 0, 1), /packed weight/);
    throws(() => be.concat([p, p], 0), /packed weight/);
    throws(() => be.fill(p, 0), /packed weight/);
    throws(() => be.addInPlace(p, w), /packed weight/);
    throws(() => be.embedding(be.upload(Int32Array.from([0]), [1]), p), /packed weight/);
    throws(() => be.quantizeWeight(p, 'bf16', 0), /packed weight/);
    throws(() => be.packWeight(p, { transB: true }), /packed weight/);
    throws(() => be.packWeight(be.zeros([5]), { transB: true }), /2-D|rank/);
    throws(() => be.packWeight(w, {} as { transB: boolean }), /transB must be a boolean/);
    // a view of it in another shape still downloads the same values
    const values = await be.download(w);
    expect(Array.from(await be.download(p.view([2, 6])))).toEqual(Array.from(values));
    // and the product with its values is still right
    const y = await be.download(be.matmul(x, p, { transB: true }));
    const mm = { batch: 1, m: 2, k: 3, n: 4, transA: false, transB: true, bBatched: false };
    expect(naive.maxRelDiff(y, naive.matmulNaive(await be.download(x), values, mm))).toBeLessThan(TOL);
  });
}
