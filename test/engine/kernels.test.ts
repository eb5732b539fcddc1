/**
 * One kernel suite for every backend that loads here (reference always; native when its addon builds):
 * each kernel is compared with the naive float64 definition in naive.ts on odd shapes (1, 7, 33, 769: not
 * multiples of 8, so vector tails are exercised) and on real GPT-2 / CLIP (ViT and ResNet) shapes, and every backward kernel
 * also with central finite differences of the naive forward.
 *
 * Tolerances, as max|actual - expected| / max|expected| (relative to the tensor's scale):
 * - FWD_TOL 1e-5 for forward and analytic-backward comparisons: inputs are float32, the naive side is
 *   float64, so a correct float32 kernel differs by rounding (~1e-7) plus float32 accumulation over up to
 *   a few thousand terms (~1e-6); a wrong formula differs by far more.
 * - FD_TOL: see the finite-difference section.
 * The worst difference of every comparison is in its assertion message and in a table printed at the end.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { availableBackends } from '../../src/engine/index.js';
import type { Backend } from '../../src/engine/backend.js';
import { AttentionSaved, ShapeError, UnsupportedOpError } from '../../src/engine/backend.js';
import { Tensor } from '../../src/engine/tensor.js';
import * as naive from './naive.js';
import { AsyncTestBackend } from './async-backend.js';
import { quantizeTests } from './quantize-suite.js';
import { packTests } from './pack-suite.js';
import { keep, scope } from '../../src/engine/memory.js';

const FWD_TOL = 1e-5;

// Every backend that loads here, plus a test-only one written against the Device interface alone that
// resolves reads on a later tick and keeps its storage opaque (async-backend.ts).
for (const be of [...availableBackends(), new AsyncTestBackend()]) {
  describe(`${be.name} backend kernels`, () => {
    // kernel name (a comparison label's first word) -> its worst difference over every comparison
    const worst = new Map<string, { worst: number; tolerance: number; comparisons: number; at: string }>();
    afterAll(() => {
      console.log(`${be.name} backend: worst relative difference per kernel`);
      const rows = [...worst].map(([k, w]) => [k, { ...w, worst: w.worst.toExponential(2) }]);
      console.table(Object.fromEntries(rows));
    });

    /** Compares and records; the assertion message carries the worst difference. */
    async function check(
      label: string,
      actual: Tensor | ArrayLike<number>,
      expected: ArrayLike<number>,
      tol = FWD_TOL,
    ) {
      const a = actual instanceof Tensor ? await be.download(actual) : actual;
      const d = naive.maxRelDiff(a, expected);
      const kernel = label
        .split(' ')
        .slice(0, label.startsWith('FD ') ? 2 : 1)
        .join(' ');
      const w = worst.get(kernel) ?? { worst: 0, tolerance: tol, comparisons: 0, at: label };
      w.comparisons++;
      if (!(d <= w.worst)) Object.assign(w, { worst: d, tolerance: tol, at: label });
      worst.set(kernel, w);
      expect(d, `${label}: worst relative difference ${d.toExponential(2)} > ${tol}`).toBeLessThanOrEqual(
        tol,
      );
    }

    const up = (data: Float32Array | Int32Array, shape: readonly number[]) => be.upload(data, shape);
    const rand = (shape: readonly number[], seed: number, lo = -1, hi = 1) =>
      up(naive.randomF32(size(shape), seed, lo, hi), shape);

    describe('memory', () => memoryTests(be));
    describe('matmul', () => matmulTests(be, check, rand));
    describe('elementwise', () => elementwiseTests(be, check, rand));
    describe('activations', () => activationTests(be, check, rand));
    describe('layerNorm', () => layerNormTests(be, check, rand));
    describe('attention', () => attentionTests(be, check, rand));
    describe('embedding', () => embeddingTests(be, check, rand));
    describe('cross-entropy', () => crossEntropyTests(be, check, rand));
    describe('adamw', () => adamwTests(be, check));
    describe('dropout', () => dropoutTests(be, rand));
    describe('layout', () => layoutTests(be, check, rand));
    describe('conv2d and avgPool2d', () => convTests(be, check, rand));
    describe('quantizeWeight', () => quantizeTests(be));
    describe('packWeight', () => packTests(be));
    describe('backward kernels vs finite differences', () => finiteDifferenceTests(be, check, rand));
  });
}

type Check = (
  label: string,
  actual: Tensor | ArrayLike<number>,
  expected: ArrayLike<number>,
  tol?: number,
) => Promise<void>;
type Rand = (shape: readonly number[], seed: number, lo?: number, hi?: number) => Tensor;

function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// ==================================================================================== memory

function memoryTests(be: Backend): void {
  it('memory() counts live tensors and bytes; views and double frees do not change it', () => {
    const before = be.memory();
    const a = be.zeros([3, 5]);
    const ids = be.upload(new Int32Array(7), [7]);
    expect(be.memory()).toEqual({ tensors: before.tensors + 2, bytes: before.bytes + 15 * 4 + 7 * 4 });
    const v = a.view([15]);
    be.free(v);
    expect(be.memory().tensors).toBe(before.tensors + 2);
    const r = a.reshape([5, 3]); // moves ownership: a is now the view
    be.free(a);
    expect(be.memory().tensors).toBe(before.tensors + 2);
    be.free(r);
    be.free(r);
    be.free(ids);
    expect(be.memory()).toEqual(before);
  });

  it('scope frees what it allocated except its result and what was kept', async () => {
    const before = be.memory();
    const x = be.upload(new Float32Array([1, -2, 3, -4]), [2, 2]);
    let kept: Tensor | undefined;
    const { y, pair } = scope(() => {
      const t1 = be.activation('relu', x); // a temporary
      const t2 = be.binary('add', t1, t1);
      kept = keep(be.binary('mul', t2, t2));
      return { y: be.binary('add', t2, x).view([4]), pair: [t1] };
    });
    // x (outside), y's base, pair[0] and kept survive; t2 was freed
    expect(Array.from(await be.download(y))).toEqual([3, -2, 9, -4]);
    expect(Array.from(await be.download(pair[0]))).toEqual([1, 0, 3, 0]);
    expect(Array.from(await be.download(kept as Tensor))).toEqual([4, 0, 36, 0]);
    expect(be.memory().tensors).toBe(before.tensors + 4);
    for (const t of [x, pair[0], kept as Tensor]) be.free(t);
    be.free(y); // a view: frees nothing
    expect(be.memory().tensors).toBe(before.tensors + 1);
    // an exception frees everything the scope made
    expect(() =>
      scope(() => {
        be.zeros([100]);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(be.memory().tensors).toBe(before.tensors + 1);
  });

  it('a released large buffer comes back zero-filled, and live memory counts only live tensors', async () => {
    const before = be.memory();
    const n = 70_001; // above the host devices' pooling threshold (64 Ki elements)
    const x = be.upload(new Float32Array(n).fill(3), [n]);
    for (let round = 0; round < 3; round++) {
      const dirty = be.activation('relu', x); // an alloc'd buffer full of 3s
      expect((await dirty.read())[n - 1]).toBe(3);
      be.free(dirty);
      const z = be.zeros([n]); // may reuse dirty's buffer: must read as zeros
      const host = await z.read();
      expect(host.every((v) => v === 0)).toBe(true);
      expect(be.memory().tensors).toBe(before.tensors + 2);
      be.free(z);
    }
    be.free(x);
    expect(be.memory()).toEqual(before);
  });

  it('`using` frees a tensor when its block ends, also when the block throws', async () => {
    const before = be.memory();
    const x = be.upload(new Float32Array([1, -2, 3, -4]), [2, 2]);
    {
      using t = be.activation('relu', x);
      expect(Array.from(await be.download(t))).toEqual([1, 0, 3, 0]);
      expect(be.memory().tensors).toBe(before.tensors + 2);
    }
    expect(be.memory().tensors).toBe(before.tensors + 1);
    expect(() => {
      using t = be.zeros([100]);
      throw new Error(`boom ${t.size}`);
    }).toThrow('boom 100');
    expect(be.memory().tensors).toBe(before.tensors + 1);
    be.free(x);
    expect(be.memory()).toEqual(before);
  });

  it('upload and download copy, zeros/fill/clone keep dtypes', async () => {
    const src = new Float32Array([1, 2, 3, 4, 5, 6]);
    const t = be.upload(src, [2, 3]);
    src[0] = 99; // the tensor must not alias the host array
    const host = await be.download(t);
    expect(Array.from(host)).toEqual([1, 2, 3, 4, 5, 6]);
    host[1] = 99; // nor the downloaded copy
    expect((await be.download(t))[1]).toBe(2);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('f32');

    const ids = be.upload(new Int32Array([7, -3, 2147483647]), [3]);
    expect(ids.dtype).toBe('i32');
    expect(await be.download(ids)).toBeInstanceOf(Int32Array);
    expect(Array.from(await be.download(ids))).toEqual([7, -3, 2147483647]);

    const z = be.zeros([2, 0, 3]);
    expect(z.size).toBe(0);
    const zi = be.zeros([4], 'i32');
    expect(zi.dtype).toBe('i32');
    be.fill(zi, 5);
    expect(Array.from(await be.download(zi))).toEqual([5, 5, 5, 5]);

    const c = be.slice(t, 0, 0, t.shape[0]); // a copy
    be.fill(c, -1.5);
    expect(Array.from(await be.download(c))).toEqual([-1.5, -1.5, -1.5, -1.5, -1.5, -1.5]);
    expect((await be.download(t))[0]).toBe(1);
    // a view reads the same storage; freeing it frees nothing
    const view = t.view([3, 2]);
    expect(view.isView).toBe(true);
    expect(Array.from(await be.download(view))).toEqual([1, 2, 3, 4, 5, 6]);
    be.free(view);
    expect(Array.from(await be.download(t))).toEqual([1, 2, 3, 4, 5, 6]);
    // freeing the base frees the storage: the view is then unusable too
    const base = be.upload(new Float32Array([1, 2]), [2]);
    const alias = base.view([1, 2]);
    be.free(base);
    expect(() => be.download(alias)).toThrow(/used after free/);

    be.free(c);
    be.free(c); // freeing twice is safe
    be.free(base); // so is freeing a freed base
    expect(() => be.upload(new Float32Array(5), [2, 3])).toThrow(ShapeError);
  });
}

// ==================================================================================== matmul

interface GemmCase {
  lead: number[]; // A's leading (batch) axes
  m: number;
  k: number;
  n: number;
  bBatched: boolean;
}

function matmulTests(be: Backend, check: Check, rand: Rand): void {
  const cases: GemmCase[] = [
    { lead: [], m: 1, k: 1, n: 1, bBatched: false },
    { lead: [], m: 7, k: 33, n: 5, bBatched: false },
    { lead: [], m: 33, k: 769, n: 7, bBatched: false },
    { lead: [], m: 65, k: 17, n: 130, bBatched: false },
    { lead: [3], m: 7, k: 9, n: 5, bBatched: true },
    { lead: [3], m: 7, k: 9, n: 5, bBatched: false }, // one B shared by every batch
    { lead: [2, 3], m: 5, k: 7, n: 3, bBatched: false }, // leading axes of A flattened against a 2-D B
    { lead: [2, 3], m: 5, k: 7, n: 3, bBatched: true },
    // Decoding's skinny products (native/gemv.cc), M = 1..8: K >= 256 splits B (K, N) into 128-row chunks
    // (8-row passes, then single rows: K % 8 != 0), N past whole register tiles and vectors (N % 8 != 0);
    // transposed B takes rows of B in passes of 1 to 4 (N not a multiple) with K % 8 != 0. M = 9..14 (GPT-2's
    // prefix step) takes the split-K GEMV too when B is (K, N); M = 15 is the first past it (the GEMM).
    ...Array.from({ length: 15 }, (_, i) => i + 1).map((m) => ({
      lead: [],
      m,
      k: 257 + 2 * m,
      n: 61 + 6 * m,
      bBatched: false,
    })),
  ];
  let seed = 100;
  for (const c of cases) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const id = `[${[...c.lead, c.m, c.k].join(',')}]${transA ? 'ᵀ' : ''}·[${c.bBatched ? [...c.lead, ''].join(',') : ''}${c.k},${c.n}]${transB ? 'ᵀ' : ''}`;
        it(`${id} matches the naive product`, async () => {
          const aShape = [...c.lead, ...(transA ? [c.k, c.m] : [c.m, c.k])];
          const bShape = [...(c.bBatched ? c.lead : []), ...(transB ? [c.n, c.k] : [c.k, c.n])];
          const a = rand(aShape, seed++);
          const b = rand(bShape, seed++);
          const y = be.matmul(a, b, { transA, transB });
          expect(y.shape).toEqual([...c.lead, c.m, c.n]);
          const mc = { batch: size(c.lead), m: c.m, k: c.k, n: c.n, transA, transB, bBatched: c.bBatched };
          await check(`matmul ${id}`, y, naive.matmulNaive(await be.download(a), await be.download(b), mc));
        });
      }
    }
  }

  it('bias and alpha: alpha·A·B + bias', async () => {
    const a = rand([7, 33], 1);
    const b = rand([5, 33], 2);
    const bias = rand([5], 3);
    const y = be.matmul(a, b, { transB: true, bias, alpha: 0.37 });
    const mc = { batch: 1, m: 7, k: 33, n: 5, transB: true };
    await check(
      'matmul bias+alpha',
      y,
      naive.matmulNaive(await be.download(a), await be.download(b), mc, await be.download(bias), 0.37),
    );
  });

  it('out overwrites, out + accumulate adds (with bias and alpha)', async () => {
    const a = rand([2, 9, 7], 4); // batched (2, 7, 9) stored transposed
    const b = rand([2, 9, 13], 5);
    const bias = rand([13], 6);
    const mc = { batch: 2, m: 7, k: 9, n: 13, transA: true, bBatched: true };
    const product = naive.matmulNaive(
      await be.download(a),
      await be.download(b),
      mc,
      await be.download(bias),
      -2,
    );

    const out = rand([2, 7, 13], 7);
    const before = await be.download(out);
    const returned = be.matmul(a, b, { transA: true, bias, alpha: -2, out, accumulate: true });
    expect(returned).toBe(out);
    await check(
      'matmul out+accumulate',
      out,
      product.map((v, i) => v + before[i]),
    );

    be.matmul(a, b, { transA: true, bias, alpha: -2, out });
    await check('matmul out (overwrite)', out, product);
  });

  it('GPT-2 MLP shape (50,768)·(768,3072) + bias, and its weight gradient xᵀ·dy', async () => {
    const x = rand([50, 768], 8);
    const w = rand([768, 3072], 9, -0.05, 0.05); // Conv1D layout (in, out)
    const bias = rand([3072], 10);
    const y = be.matmul(x, w, { bias });
    await check(
      'matmul (50,768)·(768,3072)+b',
      y,
      naive.matmulNaive(
        await be.download(x),
        await be.download(w),
        { batch: 1, m: 50, k: 768, n: 3072 },
        await be.download(bias),
      ),
    );
    // dW (768, 3072) = xᵀ (768, 50) · dy (50, 3072): K = 50
    const dy = rand([50, 3072], 11);
    const dw = be.matmul(x, dy, { transA: true });
    await check(
      'matmul xᵀ(768,50)·dy(50,3072)',
      dw,
      naive.matmulNaive(await be.download(x), await be.download(dy), {
        batch: 1,
        m: 768,
        k: 50,
        n: 3072,
        transA: true,
      }),
    );
  });

  it('CLIP attention-projection shape (2·50,768)·(768,768)ᵀ batched over (2,50)', async () => {
    const x = rand([2, 50, 768], 12);
    const w = rand([768, 768], 13, -0.05, 0.05); // nn.Linear layout (out, in)
    const bias = rand([768], 14);
    const y = be.matmul(x, w, { transB: true, bias });
    expect(y.shape).toEqual([2, 50, 768]);
    const mc = { batch: 1, m: 100, k: 768, n: 768, transB: true };
    await check(
      'matmul (2,50,768)·(768,768)ᵀ+b',
      y,
      naive.matmulNaive(await be.download(x), await be.download(w), mc, await be.download(bias)),
    );
  });

  // matmul with a fused activation (MatmulOptions.activation): f(A·B + bias), the blocked path (several
  // depth blocks, edge tiles, a prepacked B), the skinny ones (M <= 8, and the split-K GEMV up to 14 rows) and a
  // batched B.
  type FusedCase = [string, naive.MatmulCase, boolean];
  const fusedCases: FusedCase[] = [
    ['(7,33)·(33,19)+b', { batch: 1, m: 7, k: 33, n: 19 }, false],
    ['(3,64)·(100,64)ᵀ+b (skinny)', { batch: 1, m: 3, k: 64, n: 100, transB: true }, false],
    // GPT-2's c_fc in decoding and in its 10-row prefix step: the split-K GEMV (native/gemv.cc)
    ['(1,300)·(300,70)+b (split-K GEMV)', { batch: 1, m: 1, k: 300, n: 70 }, false],
    ['(10,300)·(300,70)+b (split-K GEMV, 9-14 rows)', { batch: 1, m: 10, k: 300, n: 70 }, false],
    ['(2,9,20)·(2,20,13)+b (batched B)', { batch: 2, m: 9, k: 20, n: 13, bBatched: true }, false],
    ['(100,768)·(1000,768)ᵀ+b, B packed', { batch: 1, m: 100, k: 768, n: 1000, transB: true }, true],
  ];
  const acts = ['quickGelu', 'gelu', 'relu', 'tanh'] as const;
  fusedCases.forEach(([name, mc, packed], ci) => {
    it(`matmul with a fused activation: ${name}`, async () => {
      const aShape = mc.batch > 1 ? [mc.batch, mc.m, mc.k] : [mc.m, mc.k];
      const bShape = mc.batch > 1 ? [mc.batch, mc.k, mc.n] : mc.transB ? [mc.n, mc.k] : [mc.k, mc.n];
      const x = rand(aShape, 600 + ci, -2, 2);
      const w = rand(bShape, 610 + ci, -0.1, 0.1);
      const bias = rand([mc.n], 620 + ci);
      const B = packed && be.supports('packWeight') ? be.packWeight(w, { transB: true }) : w;
      const opts = { transB: mc.transB, bias };
      if (!be.supports('matmulActivation')) {
        expect(() => be.matmul(x, B, { ...opts, activation: 'quickGelu' })).toThrow(UnsupportedOpError);
        return;
      }
      const prod = naive.matmulNaive(await be.download(x), await be.download(w), mc, await be.download(bias));
      for (const act of packed ? (['quickGelu'] as const) : acts) {
        const y = be.matmul(x, B, { ...opts, activation: act });
        expect(y.shape).toEqual([...aShape.slice(0, -1), mc.n]);
        await check(`matmul+${act} ${name}`, y, naive.mapNaive(prod, naive.activations[act].f));
        // the same numbers as the two ops
        const two = be.activation(act, be.matmul(x, B, opts));
        expect(Array.from(await be.download(y)), `matmul+${act} ${name} vs activation(matmul)`).toEqual(
          Array.from(await be.download(two)),
        );
      }
    });
  });

  // Outputs a device writes in full may come unzeroed (Device.allocOutput: the host devices reuse released
  // buffers as they were): a NaN-filled buffer of the output's size is released first, so a kernel that
  // skipped an element, or read C before writing it, shows NaN.
  for (const [m, k, n] of [
    [64, 40, 256],
    [8, 33, 2048],
    [1, 0, 16384],
  ]) {
    it(`matmul writes all of an output it did not zero: (${m},${k})·(${k},${n})`, async () => {
      const junk = be.zeros([m, n]);
      be.fill(junk, NaN);
      be.free(junk);
      const x = rand([m, k], 640);
      const w = rand([k, n], 641);
      const bias = rand([n], 642);
      const mc = { batch: 1, m, k, n };
      const want = naive.matmulNaive(await be.download(x), await be.download(w), mc, await be.download(bias));
      await check(`matmul into a reused buffer (${m},${k})·(${k},${n})`, be.matmul(x, w, { bias }), want);
    });
  }

  it('a fused activation is refused while accumulating, and an unknown one', () => {
    if (!be.supports('matmulActivation')) return;
    const out = rand([3, 5], 3);
    expect(() =>
      be.matmul(rand([3, 4], 1), rand([4, 5], 2), { out, accumulate: true, activation: 'relu' }),
    ).toThrow(ShapeError);
    expect(() =>
      be.matmul(rand([3, 4], 1), rand([4, 5], 2), { activation: 'swish' as unknown as 'relu' }),
    ).toThrow(ShapeError);
  });

  it('rejects mismatched shapes with ShapeError', async () => {
    expect(() => be.matmul(rand([3, 4], 1), rand([5, 6], 2))).toThrow(ShapeError);
    expect(() => be.matmul(rand([3, 4], 1), rand([6, 4], 2))).toThrow(ShapeError); // needs transB
    expect(() => be.matmul(rand([2, 3, 4], 1), rand([3, 4, 5], 2))).toThrow(ShapeError); // batch 2 vs 3
    expect(() => be.matmul(rand([3, 4], 1), rand([4, 5], 2), { bias: rand([4], 3) })).toThrow(ShapeError);
    expect(() => be.matmul(rand([3, 4], 1), rand([4, 5], 2), { out: rand([5, 3], 3) })).toThrow(ShapeError);
    expect(() => be.matmul(rand([4], 1), rand([4, 5], 2))).toThrow(ShapeError);
  });
}

// ==================================================================================== elementwise

function elementwiseTests(be: Backend, check: Check, rand: Rand): void {
  const pairs: [number[], number[]][] = [
    [
      [7, 33],
      [7, 33],
    ],
    [[7, 33], [33]],
    [
      [2, 3, 769],
      [3, 769],
    ],
    [[1], [1]],
    [[5, 4], []],
  ];
  for (const [sa, sb] of pairs) {
    it(`add / mul broadcast [${sb}] over [${sa}]`, async () => {
      const a = rand(sa, 20);
      const b = rand(sb, 21);
      const A = await be.download(a);
      const B = await be.download(b);
      await check(
        `add [${sa}]+[${sb}]`,
        be.binary('add', a, b),
        Array.from(A, (v, i) => v + B[i % B.length]),
      );
      await check(
        `mul [${sa}]*[${sb}]`,
        be.binary('mul', a, b),
        Array.from(A, (v, i) => v * B[i % B.length]),
      );
    });
  }

  it('add rejects shapes that are not a suffix', async () => {
    expect(() => be.binary('add', rand([7, 33], 1), rand([7], 2))).toThrow(ShapeError);
    expect(() => be.binary('mul', rand([33], 1), rand([7, 33], 2))).toThrow(ShapeError);
  });

  it('addInPlace with alpha', async () => {
    const a = rand([7, 33], 22);
    const b = rand([7, 33], 23);
    const A = await be.download(a);
    const B = await be.download(b);
    be.addInPlace(a, b, -0.75);
    await check(
      'addInPlace alpha',
      a,
      Array.from(A, (v, i) => v - 0.75 * B[i]),
    );
    be.addInPlace(a, b);
    await check(
      'addInPlace',
      a,
      Array.from(A, (v, i) => v + 0.25 * B[i]),
    );
    expect(() => be.addInPlace(a, rand([33, 7], 1))).toThrow(ShapeError);
  });

  it('sumRows into a new tensor, into out, and accumulating', async () => {
    const x = rand([2, 17, 769], 24);
    const X = await be.download(x);
    const expected = new Float64Array(769);
    for (let r = 0; r < 34; r++) for (let c = 0; c < 769; c++) expected[c] += X[r * 769 + c];
    const s = be.sumRows(x);
    expect(s.shape).toEqual([769]);
    await check('sumRows', s, expected);
    const out = rand([769], 25);
    const before = await be.download(out);
    be.sumRows(x, out, true);
    await check(
      'sumRows accumulate',
      out,
      expected.map((v, i) => v + before[i]),
    );
    be.sumRows(x, out);
    await check('sumRows out', out, expected);
    expect(() => be.sumRows(x, rand([768], 1))).toThrow(ShapeError);
  });
}

// ==================================================================================== activations

function activationTests(be: Backend, check: Check, rand: Rand): void {
  type Act = 'gelu' | 'quickGelu' | 'relu' | 'tanh';
  const forward: Record<Act, (x: Tensor) => Tensor> = {
    gelu: (x) => be.activation('gelu', x),
    quickGelu: (x) => be.activation('quickGelu', x),
    relu: (x) => be.activation('relu', x),
    tanh: (x) => be.activation('tanh', x),
  };
  // backward from the forward's input (tanh: from its output)
  const backward: Record<Act, (dy: Tensor, x: Tensor) => Tensor> = {
    gelu: (dy, x) => be.activationBackward('gelu', dy, x),
    quickGelu: (dy, x) => be.activationBackward('quickGelu', dy, x),
    relu: (dy, x) => be.activationBackward('relu', dy, x),
    tanh: (dy, x) => be.activationBackward('tanh', dy, be.activation('tanh', x)),
  };
  const shapes = [[1], [7, 33], [3, 769], [50, 3072]];
  for (const act of Object.keys(forward) as Act[]) {
    for (const shape of shapes) {
      it(`${act} [${shape}] forward and backward`, async () => {
        const x = rand(shape, 30, -8, 8); // covers saturation of tanh / sigmoid
        const dy = rand(shape, 31);
        const X = await be.download(x);
        const DY = await be.download(dy);
        const { f, df } = naive.activations[act];
        await check(`${act} [${shape}]`, forward[act](x), naive.mapNaive(X, f));
        // tanh's backward is defined from the float32 output y: dy·(1 - y²). Where tanh saturates, 1 - y²
        // is small and y's rounding dominates, so the reference for it is computed from float32 y too.
        const slope = act === 'tanh' ? (v: number) => 1 - Math.fround(Math.tanh(v)) ** 2 : df;
        await check(
          `${act}Backward [${shape}]`,
          backward[act](dy, x),
          Array.from(X, (v, i) => DY[i] * slope(v)),
        );
      });
    }
  }

  it('reluBackward is 0 at x = 0 (as PyTorch)', async () => {
    const x = be.upload(new Float32Array([0, -0, 1e-30, -1e-30]), [4]);
    const dy = be.upload(new Float32Array([1, 1, 1, 1]), [4]);
    expect(Array.from(await be.download(be.activationBackward('relu', dy, x)))).toEqual([0, 0, 1, 0]);
  });
}

// ==================================================================================== layer norm

function layerNormTests(be: Backend, check: Check, rand: Rand): void {
  const cases: [number[], number, number][] = [
    // shape, eps, offset added to x (a large mean tests the two-pass variance)
    [[1, 1], 1e-5, 0],
    [[7, 33], 1e-5, 0],
    [[2, 5, 769], 1e-5, 30],
    [[50, 768], 1e-5, 0], // GPT-2 / CLIP width
    [[3, 32], 1e-12, 0],
  ];
  for (const [shape, eps, offset] of cases) {
    it(`[${shape}] eps ${eps}: y, mean, rstd and the backward`, async () => {
      const C = shape[shape.length - 1];
      const x = rand(shape, 40, offset - 2, offset + 2);
      const w = rand([C], 41, 0.5, 1.5);
      const b = rand([C], 42);
      const X = await be.download(x);
      const W = await be.download(w);
      const ref = naive.layerNormNaive(X, W, await be.download(b), C, eps);
      const { y, mean, rstd } = be.layerNorm(x, w, b, eps);
      expect(y.shape).toEqual(shape);
      expect(mean.shape).toEqual([size(shape) / C]);
      expect(rstd.shape).toEqual([size(shape) / C]);
      await check(`layerNorm y [${shape}]`, y, ref.y);
      await check(`layerNorm mean [${shape}]`, mean, ref.mean);
      await check(`layerNorm rstd [${shape}]`, rstd, ref.rstd);

      // backward accumulates into dweight / dbias
      const dy = rand(shape, 43);
      const dw = rand([C], 44);
      const db = rand([C], 45);
      const dw0 = await be.download(dw);
      const db0 = await be.download(db);
      const g = naive.layerNormBackwardNaive(await be.download(dy), X, W, C, eps);
      const dx = be.layerNormBackward(dy, x, w, mean, rstd, dw, db);
      await check(`layerNormBackward dx [${shape}]`, dx, g.dx);
      await check(
        `layerNormBackward dweight [${shape}]`,
        dw,
        g.dw.map((v, i) => v + dw0[i]),
      );
      await check(
        `layerNormBackward dbias [${shape}]`,
        db,
        g.db.map((v, i) => v + db0[i]),
      );
    });
  }

  it('rejects a weight of the wrong width', async () => {
    expect(() => be.layerNorm(rand([3, 8], 1), rand([7], 2), rand([8], 3), 1e-5)).toThrow(ShapeError);
  });
}

// ==================================================================================== attention

interface AttnSetup {
  c: naive.AttentionCase;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  mask?: Tensor;
}

function attnSetup(be: Backend, rand: Rand, c: naive.AttentionCase, seed: number, spread = 2): AttnSetup {
  const q = rand([c.batch, c.tq, c.channels], seed, -spread, spread);
  const k = rand([c.batch, c.tk, c.channels], seed + 1, -spread, spread);
  const v = rand([c.batch, c.tk, c.channels], seed + 2);
  const mask = c.keyMask ? be.upload(Float32Array.from(c.keyMask), [c.batch, c.tk]) : undefined;
  return { c, q, k, v, mask };
}

function attnOpts(s: AttnSetup) {
  return {
    nHead: s.c.nHead,
    causal: s.c.causal,
    keyMask: s.mask,
    kvLength: s.c.kvLength,
    scale: s.c.scale,
    dropout: s.c.dropout,
  };
}

/** (batch, tk) mask: 1 except where `masked(b, j)`. */
function keyMask(batch: number, tk: number, masked: (b: number, j: number) => boolean): number[] {
  return Array.from({ length: batch * tk }, (_, i) => (masked(Math.floor(i / tk), i % tk) ? 0 : 1));
}

function attentionTests(be: Backend, check: Check, rand: Rand): void {
  const cases: [string, naive.AttentionCase][] = [
    ['1 query, 1 key, 1 head', { batch: 1, tq: 1, tk: 1, channels: 1, nHead: 1 }],
    ['self-attention', { batch: 2, tq: 7, tk: 7, channels: 12, nHead: 3 }],
    ['causal', { batch: 2, tq: 7, tk: 7, channels: 12, nHead: 3, causal: true }],
    [
      'cross-attention with a key mask',
      { batch: 3, tq: 5, tk: 9, channels: 10, nHead: 2, keyMask: keyMask(3, 9, (b, j) => j >= 9 - 2 * b) },
    ],
    [
      'causal + key mask + kvLength (KV cache with unused rows)',
      {
        batch: 2,
        tq: 3,
        tk: 11,
        channels: 8,
        nHead: 2,
        causal: true,
        kvLength: 8,
        keyMask: keyMask(2, 11, (b, j) => b === 1 && j < 2),
      },
    ],
    [
      'a batch row with every key masked gives zeros',
      { batch: 2, tq: 4, tk: 6, channels: 6, nHead: 3, keyMask: keyMask(2, 6, (b) => b === 1) },
    ],
    ['custom scale, head dim 33', { batch: 1, tq: 5, tk: 7, channels: 66, nHead: 2, scale: 0.3 }],
    ['ClipCap mapper: 8 heads of 4', { batch: 3, tq: 20, tk: 20, channels: 32, nHead: 8 }],
    [
      'GPT-2: B=2, T=50, C=768, 12 heads, causal + padding',
      {
        batch: 2,
        tq: 50,
        tk: 50,
        channels: 768,
        nHead: 12,
        causal: true,
        keyMask: keyMask(2, 50, (b, j) => b === 1 && j >= 41),
      },
    ],
    ['CLIP ViT-B/32: B=2, T=50, C=768, 12 heads', { batch: 2, tq: 50, tk: 50, channels: 768, nHead: 12 }],
    [
      'dropout p=0.5 on self-attention',
      { batch: 2, tq: 7, tk: 7, channels: 12, nHead: 3, dropout: { p: 0.5, seed: 11 } },
    ],
    [
      'dropout p=0.3 with causal + key mask + kvLength (mask indexed by the stored 11 key rows)',
      {
        batch: 2,
        tq: 3,
        tk: 11,
        channels: 8,
        nHead: 2,
        causal: true,
        kvLength: 8,
        keyMask: keyMask(2, 11, (b, j) => b === 1 && j < 2),
        dropout: { p: 0.3, seed: -5 },
      },
    ],
    [
      'dropout p=0.1 on GPT-2: B=2, T=50, C=768, 12 heads, causal + padding',
      {
        batch: 2,
        tq: 50,
        tk: 50,
        channels: 768,
        nHead: 12,
        causal: true,
        keyMask: keyMask(2, 50, (b, j) => b === 1 && j >= 41),
        dropout: { p: 0.1, seed: 2 ** 40 + 3 },
      },
    ],
  ];
  let seed = 300;
  for (const [name, c] of cases) {
    const s0 = (seed += 10);
    it(`${name}: out, probs and the backward`, async () => {
      const s = attnSetup(be, rand, c, s0);
      const Q = await be.download(s.q);
      const K = await be.download(s.k);
      const V = await be.download(s.v);
      const ref = naive.attentionNaive(Q, K, V, c);
      const { out, saved } = be.attention(s.q, s.k, s.v, { ...attnOpts(s), record: true });
      expect(out.shape).toEqual([c.batch, c.tq, c.channels]);
      await check(`attention out: ${name}`, out, ref.out);
      // The saved state is the backend's own; the host backends keep the probabilities (checked here).
      const probs = hostProbs(saved, c);
      if (probs) await check(`attention probs: ${name}`, probs, ref.probs);
      // without record: the same output
      await check(`attention out (no probs): ${name}`, be.attention(s.q, s.k, s.v, attnOpts(s)).out, ref.out);

      const dout = rand([c.batch, c.tq, c.channels], s0 + 5);
      const g = naive.attentionBackwardNaive(await be.download(dout), Q, K, V, c);
      const grads = be.attentionBackward(dout, s.q, s.k, s.v, saved as AttentionSaved, attnOpts(s));
      expect(grads.dk.shape).toEqual(s.k.shape);
      expect(grads.dv.shape).toEqual(s.v.shape);
      await check(`attentionBackward dq: ${name}`, grads.dq, g.dq);
      await check(`attentionBackward dk: ${name}`, grads.dk, g.dk);
      await check(`attentionBackward dv: ${name}`, grads.dv, g.dv);
    });
  }

  // attentionQkv: the same self-attention cases with q, k and v as the column blocks of one (B, T, 3C) tensor.
  const selfCases = cases.filter(([, c]) => c.tq === c.tk && c.kvLength === undefined);
  for (const [name, c] of selfCases) {
    const s0 = (seed += 10);
    it(`attentionQkv (fused [q | k | v] input), ${name}`, async () => {
      const s = attnSetup(be, rand, c, s0);
      const qkv = be.concat([s.q, s.k, s.v], 2); // (B, T, 3C)
      const opts = { ...attnOpts(s), kvLength: undefined };
      if (!be.supports('attentionQkv')) {
        expect(() => be.attentionQkv(qkv, opts)).toThrow(UnsupportedOpError);
        return;
      }
      const ref = naive.attentionNaive(
        await be.download(s.q),
        await be.download(s.k),
        await be.download(s.v),
        c,
      );
      const out = be.attentionQkv(qkv, opts);
      expect(out.shape).toEqual([c.batch, c.tq, c.channels]);
      await check(`attentionQkv out: ${name}`, out, ref.out);
      // the same numbers as attention over the three separate tensors
      expect(Array.from(await be.download(out))).toEqual(
        Array.from(await be.download(be.attention(s.q, s.k, s.v, opts).out)),
      );
    });
  }

  it('attentionQkv writes all of an output it did not zero', async () => {
    const c = { batch: 2, tq: 64, tk: 64, channels: 128, nHead: 4 }; // out: 16 Ki elements, pooled
    const s = attnSetup(be, rand, c, 395);
    const qkv = be.concat([s.q, s.k, s.v], 2);
    if (!be.supports('attentionQkv')) return;
    const junk = be.zeros([2, 64, 128]);
    be.fill(junk, NaN);
    be.free(junk);
    const ref = naive.attentionNaive(
      await be.download(s.q),
      await be.download(s.k),
      await be.download(s.v),
      c,
    );
    await check('attentionQkv out into a reused buffer', be.attentionQkv(qkv, { nHead: 4 }), ref.out);
  });

  it('attentionQkv rejects bad shapes and kvLength', () => {
    if (!be.supports('attentionQkv')) return;
    expect(() => be.attentionQkv(rand([2, 3, 8], 1), { nHead: 2 })).toThrow(ShapeError); // 8 is not 3·C
    expect(() => be.attentionQkv(rand([6, 8], 1), { nHead: 2 })).toThrow(ShapeError); // rank 2
    expect(() => be.attentionQkv(rand([2, 3, 12], 1), { nHead: 3 })).toThrow(ShapeError); // C 4, 3 heads
    expect(() => be.attentionQkv(rand([2, 3, 12], 1), { nHead: 2, kvLength: 3 })).toThrow(ShapeError);
    expect(() => be.attentionQkv(rand([2, 3, 12], 1), { nHead: 2, keyMask: rand([2, 4], 2) })).toThrow(
      ShapeError,
    );
  });

  it('dropout p = 0 is bit-identical to no dropout (forward, saved state and backward)', async () => {
    const c = { batch: 2, tq: 5, tk: 5, channels: 12, nHead: 3, causal: true };
    const s = attnSetup(be, rand, c, 370);
    const dout = rand([2, 5, 12], 375);
    const run = (dropout?: { p: number; seed: number }) => {
      const { out, saved } = be.attention(s.q, s.k, s.v, { ...attnOpts(s), dropout, record: true });
      const st = saved as AttentionSaved;
      const g = be.attentionBackward(dout, s.q, s.k, s.v, st, { ...attnOpts(s), dropout });
      return Promise.all(
        [out, ...st.tensors, g.dq, g.dk, g.dv].map(async (t) => Array.from(await be.download(t))),
      );
    };
    const plain = await run();
    const p0 = await run({ p: 0, seed: 123 });
    plain.forEach((x, i) => expect(p0[i], `tensor ${i} (out, saved..., dq, dk, dv)`).toEqual(x));
  });

  it('dropout mask: about 1-p kept, scaled by 1/(1-p), laid out as (B, nHead, Tq, Tk), seeded', async () => {
    // q = 0 gives uniform probabilities 1/kvLength, and v_j = e_j (one-hot in each head's channels), so
    // out[b, i, h·hd + j] = M_bhij / kvLength exposes the mask. Stored rows tk = 64 > kvLength = 48 check
    // that the mask index strides by the stored rows.
    const [B, H, T, TK, KV] = [2, 4, 32, 64, 48];
    const hd = TK;
    const C = H * hd;
    const vData = new Float32Array(B * TK * C);
    for (let b = 0; b < B; b++)
      for (let j = 0; j < TK; j++) for (let h = 0; h < H; h++) vData[(b * TK + j) * C + h * hd + j] = 1;
    const q = be.zeros([B, T, C]);
    const kv = be.upload(vData, [B, TK, C]);
    const c = { batch: B, tq: T, tk: TK, channels: C, nHead: H, kvLength: KV };
    const maskOf = async (p: number, seed: number): Promise<Float64Array> => {
      const O = await be.download(
        be.attention(q, kv, kv, { nHead: H, kvLength: KV, dropout: { p, seed } }).out,
      );
      const m = new Float64Array(B * H * T * KV);
      let n = 0;
      for (let b = 0; b < B; b++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < T; i++)
            for (let j = 0; j < KV; j++) m[n++] = O[(b * T + i) * C + h * hd + j] * KV;
      return m;
    };
    for (const [p, seed] of [
      [0.1, 42],
      [0.5, 7],
    ]) {
      const m = await maskOf(p, seed);
      const expected = naive.attentionDropoutNaive({ ...c, dropout: { p, seed } });
      let kept = 0;
      let worstScale = 0;
      let disagree = 0;
      let n = 0;
      for (let b = 0; b < B; b++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < T; i++)
            for (let j = 0; j < KV; j++) {
              const e = expected[((b * H + h) * T + i) * TK + j];
              const got = m[n++];
              if (got !== 0) {
                kept++;
                worstScale = Math.max(worstScale, Math.abs(got * (1 - p) - 1));
              }
              if ((got !== 0) !== (e !== 0)) disagree++;
            }
      const sd = Math.sqrt((p * (1 - p)) / n);
      console.log(
        `${be.name} attention dropout p=${p}: kept ${(kept / n).toFixed(4)} of ${n} (sd ${sd.toExponential(1)}), ` +
          `worst |kept·(1-p) - 1| ${worstScale.toExponential(1)}, ${disagree} disagreements with the naive mask`,
      );
      expect(disagree).toBe(0);
      expect(worstScale).toBeLessThan(1e-5);
      expect(Math.abs(kept / n - (1 - p))).toBeLessThan(6 * sd);
      // same seed, same mask; another seed, a mask that agrees only by chance (p² + (1-p)² of the time)
      expect(Array.from(await maskOf(p, seed))).toEqual(Array.from(m));
      const other = await maskOf(p, seed + 1);
      const same = m.filter((x, idx) => (x !== 0) === (other[idx] !== 0)).length;
      expect(same / n).toBeLessThan(1 - p * (1 - p));
    }
  });

  it('fully masked rows are exactly zero', async () => {
    const c = { batch: 2, tq: 3, tk: 4, channels: 4, nHead: 2, keyMask: keyMask(2, 4, (b) => b === 0) };
    const s = attnSetup(be, rand, c, 390);
    const { out, saved } = be.attention(s.q, s.k, s.v, { ...attnOpts(s), record: true });
    const O = await be.download(out);
    expect(Array.from(O.subarray(0, 12)).every((x) => x === 0)).toBe(true);
    const probs = hostProbs(saved, c);
    if (probs)
      expect(Array.from((await be.download(probs)).subarray(0, 24)).every((x) => x === 0)).toBe(true);
  });

  it('incremental decoding against a growing KV cache equals the full causal forward', async () => {
    // batch row 1 is left-padded (keys 0, 1 masked); the cache has spare capacity past T
    const B = 2;
    const T = 9;
    const C = 12;
    const H = 3;
    const cap = 16;
    const mask = keyMask(B, T, (b, j) => b === 1 && j < 2);
    const s = attnSetup(
      be,
      rand,
      { batch: B, tq: T, tk: T, channels: C, nHead: H, causal: true, keyMask: mask },
      400,
    );
    const full = be.attention(s.q, s.k, s.v, attnOpts(s)).out;
    await check(
      'attention full causal + mask',
      full,
      naive.attentionNaive(await be.download(s.q), await be.download(s.k), await be.download(s.v), s.c).out,
    );

    const capMask = be.upload(Float32Array.from(keyMask(B, cap, (b, j) => b === 1 && j < 2)), [B, cap]);
    const kCache = be.zeros([B, cap, C]);
    const vCache = be.zeros([B, cap, C]);
    const pieces: Tensor[] = [];
    // a 4-token prompt at once, then one token at a time
    const chunks = [[0, 4], ...Array.from({ length: T - 4 }, (_, i) => [4 + i, 5 + i])];
    for (const [start, end] of chunks) {
      be.writeSlice(kCache, be.slice(s.k, 1, start, end), 1, start);
      be.writeSlice(vCache, be.slice(s.v, 1, start, end), 1, start);
      const q = be.slice(s.q, 1, start, end);
      pieces.push(
        be.attention(q, kCache, vCache, { nHead: H, causal: true, keyMask: capMask, kvLength: end }).out,
      );
    }
    await check('attention incremental vs full', be.concat(pieces, 1), await be.download(full));
  });

  it('rejects bad shapes', async () => {
    const q = rand([2, 3, 8], 1);
    const k = rand([2, 5, 8], 2);
    expect(() => be.attention(q, k, k, { nHead: 3 })).toThrow(ShapeError); // 8 channels, 3 heads
    expect(() => be.attention(q, k, rand([2, 4, 8], 3), { nHead: 2 })).toThrow(ShapeError); // v != k
    expect(() => be.attention(q, k, k, { nHead: 2, kvLength: 6 })).toThrow(ShapeError); // past capacity
    expect(() => be.attention(q, k, k, { nHead: 2, causal: true, kvLength: 2 })).toThrow(ShapeError); // < Tq
    expect(() => be.attention(q, k, k, { nHead: 2, keyMask: rand([2, 4], 4) })).toThrow(ShapeError);
    for (const dropout of [
      { p: 1, seed: 1 },
      { p: -0.1, seed: 1 },
      { p: NaN, seed: 1 },
      { p: 0.1, seed: 1.5 },
    ]) {
      expect(() => be.attention(q, k, k, { nHead: 2, dropout })).toThrow(ShapeError);
      const saved = be.attention(q, k, k, { nHead: 2, record: true }).saved as AttentionSaved;
      expect(() => be.attentionBackward(q, q, k, k, saved, { nHead: 2, dropout })).toThrow(ShapeError);
    }
  });
}

// ==================================================================================== embedding

function embeddingTests(be: Backend, check: Check, rand: Rand): void {
  const cases: [string, number, number, number[], number][] = [
    // name, vocab, C, ids shape, seed
    ['tiny', 11, 7, [2, 3], 500],
    ['single id', 1, 1, [1], 501],
    ['GPT-2 wpe (1024, 768)', 1024, 768, [2, 50], 502],
    ['GPT-2 vocabulary (50257, 33)', 50257, 33, [3, 41], 503],
  ];
  for (const [name, vocab, C, idShape, seed] of cases) {
    it(`${name}: gather and scatter-add backward`, async () => {
      const table = rand([vocab, C], seed);
      const idData = naive.randomInts(size(idShape), seed + 1, vocab);
      idData[0] = vocab - 1; // the last row
      if (idData.length > 2) idData[2] = idData[1]; // a repeated id accumulates twice
      const ids = be.upload(idData, idShape);
      const y = be.embedding(ids, table);
      expect(y.shape).toEqual([...idShape, C]);
      await check(`embedding ${name}`, y, naive.embeddingNaive(idData, await be.download(table), C));

      const dy = rand([...idShape, C], seed + 2);
      const dtable = rand([vocab, C], seed + 3);
      const before = await be.download(dtable);
      be.embeddingBackward(dy, ids, dtable);
      const expected = naive
        .embeddingBackwardNaive(await be.download(dy), idData, vocab, C)
        .map((v, i) => v + before[i]);
      await check(`embeddingBackward ${name}`, dtable, expected);
    });
  }

  it('out-of-range ids throw an Error naming the id', async () => {
    const table = rand([11, 4], 1);
    expect(() => be.embedding(be.upload(new Int32Array([0, 11]), [2]), table)).toThrow(/11/);
    expect(() => be.embedding(be.upload(new Int32Array([-1]), [1]), table)).toThrow(/-1/);
    expect(() => be.embeddingBackward(rand([1, 4], 2), be.upload(new Int32Array([12]), [1]), table)).toThrow(
      /12/,
    );
    expect(() => be.embedding(rand([2], 3), table)).toThrow(ShapeError); // f32 ids
  });
}

// ==================================================================================== cross-entropy

function crossEntropyTests(be: Backend, check: Check, rand: Rand): void {
  const cases: [string, number, number, number, number][] = [
    // name, N, V, ignoreIndex, logit range
    ['tiny, ignore 0', 7, 33, 0, 3],
    ['ignore -100 (PyTorch default)', 5, 769, -100, 10],
    ['one row, one class', 1, 1, -100, 1],
    ['GPT-2 vocabulary, ignore 0 (ClipCap padding)', 20, 50257, 0, 8],
  ];
  let seed = 600;
  for (const [name, N, V, ignore, range] of cases) {
    const s = (seed += 10);
    it(`${name}: loss and the backward`, async () => {
      const logits = rand([N, V], s, -range, range);
      const t = naive.randomInts(N, s + 1, V);
      if (N > 3) {
        t[1] = ignore; // ignored rows
        t[3] = ignore;
        t[2] = V - 1;
      }
      const targets = be.upload(t, [N]);
      const L = await be.download(logits);
      const ref = naive.crossEntropyNaive(L, t, V, ignore);
      const loss = await be.crossEntropy(logits, targets, ignore);
      await check(`crossEntropy loss: ${name}`, [loss], [ref.loss]);
      for (const lossScale of [1, 0.25]) {
        await check(
          `crossEntropyBackward ×${lossScale}: ${name}`,
          be.crossEntropyBackward(logits, targets, ignore, lossScale),
          naive.crossEntropyBackwardNaive(L, t, V, ignore, lossScale),
        );
      }
    });
  }

  it('every row ignored: loss NaN, zero gradient', async () => {
    const logits = rand([3, 5], 1);
    const targets = be.upload(new Int32Array([0, 0, 0]), [3]);
    expect(await be.crossEntropy(logits, targets, 0)).toBeNaN();
    const d = await be.download(be.crossEntropyBackward(logits, targets, 0));
    expect(Array.from(d).every((x) => x === 0)).toBe(true);
  });

  it('a target outside the vocabulary throws', async () => {
    const logits = rand([2, 5], 1);
    expect(() => be.crossEntropy(logits, be.upload(new Int32Array([1, 5]), [2]), -100)).toThrow(/5/);
    expect(() => be.crossEntropy(logits, be.upload(new Int32Array([1, 2, 3]), [3]), -100)).toThrow(
      ShapeError,
    );
  });
}

// ==================================================================================== adamw

function adamwTests(be: Backend, check: Check): void {
  const configs = [
    {
      name: 'ClipCap (lr 2e-5, eps 1e-6, wd 0)',
      lr: 2e-5,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-6,
      weightDecay: 0,
    },
    {
      name: 'PyTorch defaults (lr 1e-3, eps 1e-8, wd 0.01)',
      lr: 1e-3,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.01,
    },
    {
      name: 'large lr and decay, beta2 0.95',
      lr: 0.05,
      beta1: 0.8,
      beta2: 0.95,
      eps: 1e-6,
      weightDecay: 0.1,
    },
  ];
  for (const { name, ...o } of configs) {
    it(`6 steps match torch.optim.AdamW: ${name}`, async () => {
      const n = 777;
      // parameters of scale 1e-3, so that float32 rounding of p (~6e-11) is far below an update (~lr)
      const p0 = naive.randomF32(n, 700, -1e-3, 1e-3);
      const param = be.upload(p0, [7, 111]);
      const m = be.zeros([7, 111]);
      const v = be.zeros([7, 111]);
      const state = { p: naive.f64(p0), m: new Float64Array(n), v: new Float64Array(n) };
      for (let step = 1; step <= 6; step++) {
        // gradients of growing scale, with exact zeros; step 1 has lr 0 as ClipCap's warmup does
        const g = naive.randomF32(n, 700 + step, -(10 ** (step - 4)), 10 ** (step - 4));
        for (let i = 0; i < n; i += 13) g[i] = 0;
        const lr = step === 1 ? 0 : o.lr;
        // this step alone, from the backend's own state: its update must match to FWD_TOL of its scale
        const before = await Promise.all([param, m, v].map(async (t) => naive.f64(await be.download(t))));
        const one = { p: before[0], m: before[1], v: before[2] };
        naive.adamwNaive(one, g, { ...o, lr, step });
        be.adamw(param, be.upload(g, [7, 111]), m, v, { ...o, lr, step });
        const P = naive.f64(await be.download(param));
        await check(
          `adamw update step ${step}: ${name}`,
          P.map((x, i) => x - before[0][i]),
          one.p.map((x, i) => x - before[0][i]),
        );
        // and the run as a whole
        naive.adamwNaive(state, g, { ...o, lr, step });
        await check(`adamw p step ${step}: ${name}`, P, state.p);
        await check(`adamw m step ${step}: ${name}`, m, state.m);
        await check(`adamw v step ${step}: ${name}`, v, state.v);
      }
    });
  }
}

// ==================================================================================== dropout

function dropoutTests(be: Backend, rand: Rand): void {
  it('keeps about 1-p of the elements, scales them by 1/(1-p), and is seeded', async () => {
    const n = 100_003;
    const x = rand([n], 800, 0.5, 1.5);
    const X = await be.download(x);
    // The mask is never returned: dropping a tensor of ones exposes it (and the backward is the same op).
    const ones = be.upload(new Float32Array(n).fill(1), [n]);
    const maskOf = async (p: number, seed: number) => await be.download(be.dropout(ones, p, seed));
    for (const p of [0.1, 0.5]) {
      const M = await maskOf(p, 1234);
      const Y = await be.download(be.dropout(x, p, 1234));
      const scaleKept = Math.fround(1 / (1 - p));
      let kept = 0;
      for (let i = 0; i < n; i++) {
        if (M[i] !== 0 && M[i] !== scaleKept) throw new Error(`mask[${i}] = ${M[i]}`);
        if (M[i] !== 0) kept++;
        if (Y[i] !== Math.fround(X[i] * M[i])) throw new Error(`y[${i}] = ${Y[i]} != x·mask`);
      }
      // 6 standard deviations of a binomial(n, 1-p) fraction
      const sd = Math.sqrt((p * (1 - p)) / n);
      console.log(
        `dropout p=${p}: kept fraction ${(kept / n).toFixed(5)} (expected ${1 - p}, sd ${sd.toExponential(1)})`,
      );
      expect(Math.abs(kept / n - (1 - p))).toBeLessThan(6 * sd);
      // the dropped positions are not clustered: consecutive pairs are independent
      let bothKept = 0;
      for (let i = 1; i < n; i++) if (M[i] !== 0 && M[i - 1] !== 0) bothKept++;
      expect(Math.abs(bothKept / (n - 1) - (1 - p) ** 2)).toBeLessThan(0.01);

      // the contract: element i is kept iff draw i+1 of mulberry32(seed) >= p
      const agree = (a: ArrayLike<number>, b: ArrayLike<number>) => {
        let same = 0;
        for (let i = 0; i < n; i++) if (a[i] === b[i]) same++;
        return same;
      };
      expect(agree(M, naive.dropoutMaskNaive(n, p, 1234).map(Math.fround))).toBe(n);
      // same seed, same mask; another seed, another mask
      expect(agree(M, await maskOf(p, 1234))).toBe(n);
      const other = await maskOf(p, 1235);
      expect(agree(M, other) / n).toBeLessThan(1 - p * (1 - p)); // independent masks agree on p²+(1-p)²
    }
  });

  it('p = 0 is the identity, p = 1 drops everything', async () => {
    const x = rand([7, 33], 801);
    const id = be.dropout(x, 0, 5);
    expect(Array.from(await be.download(id))).toEqual(Array.from(await be.download(x)));
    const all = be.dropout(x, 1, 5);
    expect(Array.from(await be.download(all)).every((v) => v === 0)).toBe(true);
    expect(() => be.dropout(x, 1.5, 5)).toThrow(ShapeError);
  });
}

// ==================================================================================== layout

function layoutTests(be: Backend, check: Check, rand: Rand): void {
  for (const axis of [0, 1, 2, -1]) {
    it(`concat, slice and writeSlice on axis ${axis}`, async () => {
      const ax = axis < 0 ? axis + 3 : axis;
      const base = [2, 3, 5];
      const shapes = [1, 4, 7].map((len) => base.map((d, i) => (i === ax ? len : d)));
      const xs = shapes.map((sh, i) => rand(sh, 900 + i));
      const cat = be.concat(xs, axis);
      const catShape = base.map((d, i) => (i === ax ? 12 : d));
      expect(cat.shape).toEqual(catShape);
      const expectedCat = naive.concatNaive(await Promise.all(xs.map((x) => be.download(x))), shapes, ax);
      await check(`concat axis ${axis}`, cat, expectedCat);

      const sl = be.slice(cat, axis, 3, 10);
      expect(sl.shape).toEqual(base.map((d, i) => (i === ax ? 7 : d)));
      await check(`slice axis ${axis}`, sl, naive.sliceNaive(expectedCat, catShape, ax, 3, 10));
      expect(be.slice(cat, axis, 4, 4).size).toBe(0);

      const src = rand(shapes[1], 910);
      be.writeSlice(cat, src, axis, 8);
      await check(
        `writeSlice axis ${axis}`,
        cat,
        naive.writeSliceNaive(expectedCat, catShape, await be.download(src), shapes[1], ax, 8),
      );
      expect(() => be.writeSlice(cat, src, axis, 9)).toThrow(ShapeError); // 9 + 4 > 12
      expect(() => be.slice(cat, axis, 5, 13)).toThrow(ShapeError);
    });
  }

  it('i32 tensors: concat, slice, writeSlice, indexSelect', async () => {
    const a = be.upload(new Int32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
    const b = be.upload(new Int32Array([7, 8]), [2, 1]);
    const cat = be.concat([a, b], 1);
    expect(cat.dtype).toBe('i32');
    expect(Array.from(await be.download(cat))).toEqual([1, 2, 3, 7, 4, 5, 6, 8]);
    expect(Array.from(await be.download(be.slice(cat, 1, 2, 4)))).toEqual([3, 7, 6, 8]);
    be.writeSlice(cat, be.upload(new Int32Array([-1, -2]), [2, 1]), 1, 2);
    expect(Array.from(await be.download(cat))).toEqual([1, 2, -1, 7, 4, 5, -2, 8]);
    expect(Array.from(await be.download(be.indexSelect(cat, [1, 0, 1])))).toEqual([
      4, 5, -2, 8, 1, 2, -1, 7, 4, 5, -2, 8,
    ]);
    expect(() => be.concat([a, rand([2, 1], 1)], 1)).toThrow(ShapeError); // mixed dtypes
  });

  it('indexSelect reorders rows (beam search) with repeats, and rejects bad indices', async () => {
    const x = rand([5, 2, 7], 920);
    const X = await be.download(x);
    const idx = [4, 0, 0, 2];
    const y = be.indexSelect(x, idx);
    expect(y.shape).toEqual([4, 2, 7]);
    await check(
      'indexSelect',
      y,
      idx.flatMap((r) => Array.from(X.subarray(r * 14, (r + 1) * 14))),
    );
    expect(be.indexSelect(x, []).shape).toEqual([0, 2, 7]);
    expect(() => be.indexSelect(x, [5])).toThrow(ShapeError);
    expect(() => be.indexSelect(x, [-1])).toThrow(ShapeError);
  });

  it('concat rejects mismatched shapes', async () => {
    expect(() => be.concat([rand([2, 3], 1), rand([3, 3], 2)], 1)).toThrow(ShapeError);
    expect(() => be.concat([rand([2, 3], 1)], 2)).toThrow(ShapeError);
  });
}

// ==================================================================================== finite differences

/**
 * Each backward kernel against central differences of the naive float64 forward, on small shapes, for the
 * scalar L = Σ r ⊙ forward(inputs) with a fixed random r (so dL/doutput = r is the upstream gradient).
 * FD_TOL 1e-5: with h = 1e-3 on O(1) inputs, the central difference's truncation error h²·f'''/6 is
 * ~1e-7 and its float64 rounding ~1e-12; the backend's gradient carries float32 rounding (~1e-7 relative
 * to its scale) and float32 accumulation over at most a few dozen terms here. A wrong or missing term
 * (e.g. layer norm's mean-of-g correction) gives differences of 1e-2 or more.
 */
const FD_TOL = 1e-5;
const H = 1e-3;

function finiteDifferenceTests(be: Backend, check: Check, rand: Rand): void {
  const fd = async (label: string, actual: Tensor, f: (x: Float64Array) => number, at: ArrayLike<number>) =>
    await check(`FD ${label}`, actual, naive.numericGrad(f, at, H), FD_TOL);

  it('gelu, quickGelu, relu, tanh', async () => {
    const shape = [7, 5];
    // |x| >= 0.05 keeps relu's kink away from x ± h
    const xData = naive.randomAwayFromZero(35, 1000, 0.05).map((v) => 2.5 * v);
    const x = be.upload(xData, shape);
    const r = rand(shape, 1001);
    const R = await be.download(r);
    for (const act of ['gelu', 'quickGelu', 'relu', 'tanh'] as const) {
      const { f } = naive.activations[act];
      const loss = (xs: Float64Array) => naive.dot(R, naive.mapNaive(xs, f));
      // backward from the forward's input (tanh: from its output)
      const grad = be.activationBackward(act, r, act === 'tanh' ? be.activation('tanh', x) : x);
      await fd(`${act}Backward`, grad, loss, xData);
    }
  });

  it('layerNormBackward: dx, dweight, dbias', async () => {
    const C = 7;
    const x = rand([3, C], 1010, -2, 2);
    const w = rand([C], 1011, 0.5, 1.5);
    const b = rand([C], 1012);
    const r = rand([3, C], 1013);
    const [X, W, Bv, R] = await Promise.all([x, w, b, r].map(async (t) => naive.f64(await be.download(t))));
    const eps = 1e-5;
    const { mean, rstd } = be.layerNorm(x, w, b, eps);
    const dw = be.zeros([C]);
    const db = be.zeros([C]);
    const dx = be.layerNormBackward(r, x, w, mean, rstd, dw, db);
    await fd('layerNorm dx', dx, (xs) => naive.dot(R, naive.layerNormNaive(xs, W, Bv, C, eps).y), X);
    await fd('layerNorm dweight', dw, (ws) => naive.dot(R, naive.layerNormNaive(X, ws, Bv, C, eps).y), W);
    await fd('layerNorm dbias', db, (bs) => naive.dot(R, naive.layerNormNaive(X, W, bs, C, eps).y), Bv);
  });

  it('attentionBackward with causal + key mask + kvLength: dq, dk, dv', async () => {
    const c: naive.AttentionCase = {
      batch: 2,
      tq: 3,
      tk: 7,
      channels: 6,
      nHead: 2,
      causal: true,
      kvLength: 5,
      keyMask: keyMask(2, 7, (b, j) => b === 1 && j === 0),
    };
    const s = attnSetup(be, rand, c, 1020);
    const r = rand([2, 3, 6], 1024);
    const [Q, K, V, R] = await Promise.all(
      [s.q, s.k, s.v, r].map(async (t) => naive.f64(await be.download(t))),
    );
    const { saved } = be.attention(s.q, s.k, s.v, { ...attnOpts(s), record: true });
    const g = be.attentionBackward(r, s.q, s.k, s.v, saved as AttentionSaved, attnOpts(s));
    await fd('attention dq', g.dq, (qs) => naive.dot(R, naive.attentionNaive(qs, K, V, c).out), Q);
    await fd('attention dk', g.dk, (ks) => naive.dot(R, naive.attentionNaive(Q, ks, V, c).out), K);
    await fd('attention dv', g.dv, (vs) => naive.dot(R, naive.attentionNaive(Q, K, vs, c).out), V);
  });

  it('attentionBackward with dropout p=0.4 (the fixed mask of seed 77) + causal + key mask: dq, dk, dv', async () => {
    const c: naive.AttentionCase = {
      batch: 2,
      tq: 4,
      tk: 6,
      channels: 6,
      nHead: 2,
      causal: true,
      keyMask: keyMask(2, 6, (b, j) => b === 1 && j === 0),
      dropout: { p: 0.4, seed: 77 },
    };
    const s = attnSetup(be, rand, c, 1025);
    const r = rand([2, 4, 6], 1029);
    const [Q, K, V, R] = await Promise.all(
      [s.q, s.k, s.v, r].map(async (t) => naive.f64(await be.download(t))),
    );
    const { saved } = be.attention(s.q, s.k, s.v, { ...attnOpts(s), record: true });
    const g = be.attentionBackward(r, s.q, s.k, s.v, saved as AttentionSaved, attnOpts(s));
    await fd('attention+dropout dq', g.dq, (qs) => naive.dot(R, naive.attentionNaive(qs, K, V, c).out), Q);
    await fd('attention+dropout dk', g.dk, (ks) => naive.dot(R, naive.attentionNaive(Q, ks, V, c).out), K);
    await fd('attention+dropout dv', g.dv, (vs) => naive.dot(R, naive.attentionNaive(Q, K, vs, c).out), V);
  });

  it('embeddingBackward', async () => {
    const ids = new Int32Array([3, 0, 3, 4, 1]);
    const table = rand([6, 4], 1030);
    const r = rand([5, 4], 1031);
    const R = await be.download(r);
    const dtable = be.zeros([6, 4]);
    be.embeddingBackward(r, be.upload(ids, [5]), dtable);
    await fd(
      'embedding dtable',
      dtable,
      (ts) => naive.dot(R, naive.embeddingNaive(ids, ts, 4)),
      await be.download(table),
    );
  });

  it('crossEntropyBackward with ignored rows and a loss scale', async () => {
    const N = 6;
    const V = 9;
    const logits = rand([N, V], 1040, -3, 3);
    const t = new Int32Array([2, -100, 8, 0, -100, 5]);
    const dl = be.crossEntropyBackward(logits, be.upload(t, [N]), -100, 0.5);
    const loss = (ls: Float64Array) => 0.5 * naive.crossEntropyNaive(ls, t, V, -100).loss;
    await fd('crossEntropy dlogits', dl, loss, await be.download(logits));
  });

  it('linear layer gradients from matmul transposes and sumRows', async () => {
    // y (M, N) = x (M, K) · Wᵀ + b with W (N, K): dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy
    const [M, K, N] = [5, 7, 3];
    const x = rand([M, K], 1050);
    const w = rand([N, K], 1051);
    const b = rand([N], 1052);
    const r = rand([M, N], 1053);
    const [X, W, Bv, R] = await Promise.all([x, w, b, r].map(async (t) => naive.f64(await be.download(t))));
    const lin = (xs: ArrayLike<number>, ws: ArrayLike<number>, bs: ArrayLike<number>) =>
      naive.dot(R, naive.matmulNaive(xs, ws, { batch: 1, m: M, k: K, n: N, transB: true }, bs));
    await fd('linear dx', be.matmul(r, w), (xs) => lin(xs, W, Bv), X);
    await fd('linear dW', be.matmul(r, x, { transA: true }), (ws) => lin(X, ws, Bv), W);
    await fd('linear db', be.sumRows(r), (bs) => lin(X, W, bs), Bv);
  });
}

// ==================================================================================== conv2d and avgPool2d

function convTests(be: Backend, check: Check, rand: Rand): void {
  const cases: (naive.ConvCase & { id: string; bias: boolean; relu: boolean; residual?: boolean })[] = [
    // 1x1 stride 1: the direct-GEMM path; odd channel counts
    {
      id: '1x1',
      batch: 2,
      H: 5,
      W: 7,
      C: 33,
      O: 17,
      kh: 1,
      kw: 1,
      stride: [1, 1],
      padding: [0, 0],
      bias: true,
      relu: false,
    },
    // a ResNet block's last 1x1 conv: + bias + residual, then ReLU
    {
      id: '1x1 residual',
      batch: 2,
      H: 4,
      W: 5,
      C: 19,
      O: 33,
      kh: 1,
      kw: 1,
      stride: [1, 1],
      padding: [0, 0],
      bias: true,
      relu: true,
      residual: true,
    },
    // ResNet's 3x3 pad 1, and the CLIP stem's stride-2 first conv (3 input channels)
    {
      id: '3x3 pad1',
      batch: 2,
      H: 9,
      W: 8,
      C: 7,
      O: 13,
      kh: 3,
      kw: 3,
      stride: [1, 1],
      padding: [1, 1],
      bias: true,
      relu: true,
    },
    {
      id: 'stem 3x3 s2',
      batch: 1,
      H: 17,
      W: 17,
      C: 3,
      O: 8,
      kh: 3,
      kw: 3,
      stride: [2, 2],
      padding: [1, 1],
      bias: false,
      relu: false,
    },
    // uneven kernel, strides and padding; 1x1 strided (im2col path)
    {
      id: '2x3 s(2,1) p(0,2)',
      batch: 3,
      H: 6,
      W: 5,
      C: 4,
      O: 5,
      kh: 2,
      kw: 3,
      stride: [2, 1],
      padding: [0, 2],
      bias: true,
      relu: true,
    },
    {
      id: '1x1 s2',
      batch: 1,
      H: 7,
      W: 7,
      C: 9,
      O: 6,
      kh: 1,
      kw: 1,
      stride: [2, 2],
      padding: [0, 0],
      bias: false,
      relu: true,
    },
    // more output rows than one native im2col block (2^23 floats: K = 9·1000 -> 936 rows per block)
    {
      id: '3x3 multi-block',
      batch: 1,
      H: 32,
      W: 33,
      C: 1000,
      O: 12,
      kh: 3,
      kw: 3,
      stride: [1, 1],
      padding: [1, 1],
      bias: true,
      relu: false,
    },
    // multi-block with a residual and ReLU (the residual is copied in and accumulated onto, block by block)
    {
      id: '3x3 multi-block residual',
      batch: 1,
      H: 34,
      W: 31,
      C: 1000,
      O: 8,
      kh: 3,
      kw: 3,
      stride: [1, 1],
      padding: [1, 1],
      bias: false,
      relu: true,
      residual: true,
    },
    // Winograd F(2x2, 3x3) on the native GEMM path (3x3 stride 1, C and O >= 16, >= 64 2x2 output tiles):
    // odd output sides (partial edge tiles), channel counts off the 8-lane transform vectors, residual + ReLU
    {
      id: '3x3 winograd',
      batch: 2,
      H: 11,
      W: 13,
      C: 19,
      O: 21,
      kh: 3,
      kw: 3,
      stride: [1, 1],
      padding: [1, 1],
      bias: true,
      relu: true,
      residual: true,
    },
    // uneven padding (tiles reading 0 and 2 columns of padding)
    {
      id: '3x3 winograd p(0,2)',
      batch: 2,
      H: 13,
      W: 10,
      C: 16,
      O: 17,
      kh: 3,
      kw: 3,
      stride: [1, 1],
      padding: [0, 2],
      bias: false,
      relu: false,
    },
    // several native tile blocks (2^21 floats of transformed input + output: 48 tiles a block for C + O = 2736)
    {
      id: '3x3 winograd multi-block',
      batch: 1,
      H: 16,
      W: 16,
      C: 16,
      O: 2720,
      kh: 3,
      kw: 3,
      stride: [1, 1],
      padding: [1, 1],
      bias: true,
      relu: false, // (the suite's ReLU check spreads all 700k outputs into Math.min's arguments)
      residual: true,
    },
  ];
  let seed = 7000;
  for (const c of cases) {
    it(`conv2d ${c.id}: x [${c.batch},${c.H},${c.W},${c.C}] · w [${c.O},${c.kh},${c.kw},${c.C}]`, async () => {
      const x = rand([c.batch, c.H, c.W, c.C], seed++);
      const w = rand([c.O, c.kh, c.kw, c.C], seed++);
      const bias = c.bias ? rand([c.O], seed++) : undefined;
      const Ho = naive.convOut(c.H, c.kh, c.stride[0], c.padding[0]);
      const Wo = naive.convOut(c.W, c.kw, c.stride[1], c.padding[1]);
      const residual = c.residual ? rand([c.batch, Ho, Wo, c.O], seed++) : undefined;
      const y = be.conv2d(x, w, { stride: c.stride, padding: c.padding, bias, residual, relu: c.relu });
      expect(y.shape).toEqual([c.batch, Ho, Wo, c.O]);
      const expected = naive.conv2dNaive(
        await be.download(x),
        await be.download(w),
        bias ? await be.download(bias) : null,
        c,
        c.relu,
        residual ? await be.download(residual) : null,
      );
      await check(`conv2d ${c.id}`, y, expected);
      if (c.relu) expect(Math.min(...(await be.download(y)))).toBe(0);
    });
  }

  it('conv2d: a scalar stride/padding equals the pair, and the defaults are stride 1, padding 0', async () => {
    const x = rand([1, 6, 6, 3], 7100);
    const w = rand([4, 3, 3, 3], 7101);
    const a = await be.download(be.conv2d(x, w, { stride: 2, padding: 1 }));
    const b = await be.download(be.conv2d(x, w, { stride: [2, 2], padding: [1, 1] }));
    expect(a).toEqual(b);
    expect(be.conv2d(x, w).shape).toEqual([1, 4, 4, 4]);
  });

  const pools: (Omit<naive.ConvCase, 'O'> & { id: string })[] = [
    // ModifiedResNet: AvgPool2d(2) after the stem and in every strided block, on even and odd sides
    { id: '2x2', batch: 2, H: 8, W: 6, C: 5, kh: 2, kw: 2, stride: [2, 2], padding: [0, 0] },
    { id: '2x2 odd', batch: 1, H: 7, W: 9, C: 33, kh: 2, kw: 2, stride: [2, 2], padding: [0, 0] },
    { id: '3x3 s1 p1', batch: 2, H: 5, W: 4, C: 3, kh: 3, kw: 3, stride: [1, 1], padding: [1, 1] },
    { id: '3x2 s(2,1)', batch: 1, H: 7, W: 5, C: 4, kh: 3, kw: 2, stride: [2, 1], padding: [0, 0] },
  ];
  for (const c of pools) {
    it(`avgPool2d ${c.id}: x [${c.batch},${c.H},${c.W},${c.C}]`, async () => {
      const x = rand([c.batch, c.H, c.W, c.C], seed++);
      const y = be.avgPool2d(x, { kernel: [c.kh, c.kw], stride: c.stride, padding: c.padding });
      expect(y.shape).toEqual([
        c.batch,
        naive.convOut(c.H, c.kh, c.stride[0], c.padding[0]),
        naive.convOut(c.W, c.kw, c.stride[1], c.padding[1]),
        c.C,
      ]);
      await check(`avgPool2d ${c.id}`, y, naive.avgPool2dNaive(await be.download(x), c));
    });
  }

  it('avgPool2d: the stride defaults to the kernel (nn.AvgPool2d)', async () => {
    const x = rand([1, 4, 4, 2], 7200);
    expect(await be.download(be.avgPool2d(x, { kernel: 2 }))).toEqual(
      await be.download(be.avgPool2d(x, { kernel: 2, stride: 2 })),
    );
  });

  it('rejects bad shapes and options with ShapeError', async () => {
    const x = rand([1, 5, 5, 3], 7300);
    expect(() => be.conv2d(x, rand([4, 3, 3, 2], 1))).toThrow(ShapeError); // channel mismatch
    expect(() => be.conv2d(x.reshape([5, 5, 3]), rand([4, 3, 3, 3], 1))).toThrow(ShapeError); // not 4-D
    expect(() => be.conv2d(x, rand([4, 7, 7, 3], 1))).toThrow(ShapeError); // window larger than the image
    expect(() => be.conv2d(x, rand([4, 3, 3, 3], 1), { stride: 0 })).toThrow(ShapeError);
    expect(() => be.conv2d(x, rand([4, 3, 3, 3], 1), { padding: -1 })).toThrow(ShapeError);
    expect(() => be.conv2d(x, rand([4, 3, 3, 3], 1), { bias: rand([3], 1) })).toThrow(ShapeError);
    expect(() => be.conv2d(x, rand([4, 3, 3, 3], 1), { residual: rand([1, 5, 5, 4], 1) })).toThrow(
      ShapeError,
    );
    expect(() => be.avgPool2d(x, { kernel: 0 })).toThrow(ShapeError);
    expect(() => be.avgPool2d(x, { kernel: 2, padding: 2 })).toThrow(ShapeError); // more than half the kernel
  });
}

/**
 * The attention probabilities when the backend's saved state is them (the host backends keep (B, nHead, Tq,
 * Tk) probabilities; a fused kernel keeping other state has its probabilities checked through the output).
 */
function hostProbs(saved: AttentionSaved | undefined, c: naive.AttentionCase): Tensor | null {
  const t = saved?.tensors[0];
  const shape = [c.batch, c.nHead, c.tq, c.tk];
  return saved?.tensors.length === 1 && t && t.shape.join() === shape.join() ? t : null;
}
