/**
 * `clipcap bench gemm`: GFLOP/s of the GEMMs that dominate ClipCap (GPT-2 small / CLIP ViT-B/32, width 768),
 * on the native backend, the reference backend (small cases, or all with --reference) and, with --pytorch,
 * PyTorch's CPU GEMM (bench/pytorch_gemm.py run by a python3 that has torch) at the same thread count,
 * alternating single native and PyTorch runs so that both see the same machine load.
 *
 * Case ids are MxKxN: op(A) (M, K) · op(B) (K, N). `_tA`: A is stored (K, M); `_tB`: B is stored (N, K).
 * `_pB` (native): B is a constant weight prepacked with Backend.packWeight, as inference models use theirs.
 * `_cold`: the products cycle through copies of B filling 128 MiB, so each reads its B from memory, not
 * cache, as a model's layers do (a lone product repeated on one B measures it cache-warm). PyTorch runs
 * a case without these two suffixes.
 * Each value is the median of `runs` timed runs after a warm-up; a run times one product into a
 * preallocated output, or for products shorter than 50 ms enough back-to-back products to fill 50 ms
 * (steady state, as a model issues them; after one untimed product), divided by their number.
 * The default cases are GPT-2 training / decoding products with 1200 token rows (e.g. 40 captions of 30):
 * forward x·W for the MLP (768->3072, 3072->768), the fused qkv (768->2304), a CLIP projection (50 tokens),
 * the LM head (decoding 5 beams, and training), and the backward products: dX = dY·Wᵀ (_tB) and
 * dW = Xᵀ·dY (_tA).
 */
import type { Backend } from '../engine/backend.js';
import { oracleBackend } from '../engine/registry.js';
import type { Tensor } from '../engine/tensor.js';
import { UsageError } from '../util/errors.js';
import { benchEngine, loadPeers } from './common.js';
import { machineInfo, median, timeRuns } from './report.js';
import type { BenchReport, BenchResult, BenchRunOptions } from './report.js';

export const DEFAULT_GEMM_CASES: readonly string[] = [
  // forward
  '1200x768x3072', // MLP up-projection
  '1200x3072x768', // MLP down-projection
  '1200x768x2304', // fused q, k, v
  '50x768x768', // CLIP ViT-B/32 attention projection, one image
  '5x768x50257', // LM head while decoding 5 beams (B stored (K, N))
  '5x768x50257_tB', // ... as GPT-2 stores it: logits = h·wteᵀ
  '1200x768x50257', // LM head while training
  // backward: dX = dY·Wᵀ, dW = Xᵀ·dY
  '1200x3072x768_tB',
  '768x1200x3072_tA',
  '1200x768x3072_tB',
  '3072x1200x768_tA',
  '1200x2304x768_tB',
  '768x1200x2304_tA',
];

const DEFAULT_RUNS = 5;
/** Above this many flops a case is too slow for the reference backend unless --reference is given. */
const REFERENCE_MAX_FLOPS = 2e8;

export interface GemmCase {
  id: string;
  m: number;
  k: number;
  n: number;
  transA: boolean;
  transB: boolean;
  /** B prepacked (packWeight). */
  packedB: boolean;
  /** B read from memory: products cycle through copies filling COLD_BYTES. */
  cold: boolean;
}

/** Parses "MxKxN[_tA][_tB][_pB][_cold]". */
export function parseGemmCase(id: string): GemmCase {
  const m = /^(\d+)x(\d+)x(\d+)((?:_tA|_tB|_pB|_cold)*)$/.exec(id.trim());
  if (!m)
    throw new UsageError(`bad gemm case "${id}": use MxKxN with optional _tA / _tB, e.g. 1200x768x3072_tB`);
  const [M, K, N] = [m[1], m[2], m[3]].map(Number);
  if (![M, K, N].every((d) => d >= 1 && d <= 1e6)) {
    throw new UsageError(`bad gemm case "${id}": each dimension must be from 1 to 1000000`);
  }
  const has = (suffix: string) => m[4].includes(suffix);
  return {
    id: id.trim(),
    m: M,
    k: K,
    n: N,
    transA: has('_tA'),
    transB: has('_tB'),
    packedB: has('_pB'),
    cold: has('_cold'),
  };
}

const flops = (c: GemmCase) => 2 * c.m * c.k * c.n;

/** `_cold` cases cycle through copies of B filling this much memory (well past the last-level cache). */
const COLD_BYTES = 128 * 2 ** 20;

/** Short products are timed this many seconds at a time (back to back, as a model issues them). */
const MIN_RUN_SECONDS = 0.05;

/**
 * One case's operands on a backend and a timer: `run(reps)` times `reps` back-to-back products into a
 * preallocated output and returns the seconds per product; `reps` is how many make a run of at least
 * MIN_RUN_SECONDS (1 for all but the small cases), from the warm-up.
 */
function prepareCase(
  be: Backend,
  c: GemmCase,
): { run: (reps: number) => number; reps: number; dispose: () => void } {
  // Deterministic values in [-0.5, 0.5); the timing does not depend on them.
  const fill = (n: number, seed: number) => {
    const a = new Float32Array(n);
    let s = seed;
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) | 0;
      a[i] = (s >>> 8) / 16777216 - 0.5;
    }
    return a;
  };
  const a = be.upload(fill(c.m * c.k, 1), c.transA ? [c.k, c.m] : [c.m, c.k]);
  const copies = c.cold ? Math.max(2, Math.ceil(COLD_BYTES / (4 * c.k * c.n))) : 1;
  const bs = Array.from({ length: copies }, (_, i) => {
    const b = be.upload(fill(c.k * c.n, 2 + i), c.transB ? [c.n, c.k] : [c.k, c.n]);
    if (!c.packedB) return b;
    const packed = be.packWeight(b, { transB: c.transB });
    be.free(b);
    return packed;
  });
  const out: Tensor = be.zeros([c.m, c.n]);
  let next = 0;
  const product = () => {
    const b = bs[next];
    next = (next + 1) % copies;
    be.matmul(a, b, { transA: c.transA, transB: c.transB, out });
  };
  const run = (reps: number) => {
    // Short products: one untimed product first wakes the threads (after a pause they sleep, and the
    // first call would measure the wake-up, not the GEMM). The PyTorch side does the same.
    const t = timeRuns(
      () => {
        for (let i = 0; i < reps; i++) product();
      },
      1,
      reps > 1 ? 1 : 0,
    )[0];
    return t / reps;
  };
  product(); // warm-up: scratch buffers, page faults, thread wake-up
  const estimate = run(1);
  return {
    run,
    reps: Math.max(1, Math.min(1000, Math.ceil(MIN_RUN_SECONDS / Math.max(estimate, 1e-6)))),
    dispose: () => [a, ...bs, out].forEach((t) => be.free(t)),
  };
}

/** Median GFLOP/s of `runs` timed runs. */
function timeBackend(be: Backend, c: GemmCase, runs: number): number {
  const p = prepareCase(be, c);
  const times = Array.from({ length: runs }, () => p.run(p.reps));
  p.dispose();
  return flops(c) / median(times) / 1e9;
}

/**
 * A pause between a native and a PyTorch run, so that neither runs while the other's threads still spin
 * (OpenBLAS threads spin-wait ~0.1 s after a call; ours ~50 µs).
 */
const settle = () => new Promise((resolve) => setTimeout(resolve, 150));

export async function runGemmBench(opts: BenchRunOptions): Promise<BenchReport> {
  const runs = opts.runs ?? DEFAULT_RUNS;
  const casesOpt = opts.extra.cases;
  const cases = (typeof casesOpt === 'string' ? casesOpt.split(',') : DEFAULT_GEMM_CASES).map(parseGemmCase);
  const allReference = opts.extra.reference === true;

  const eng = benchEngine(opts, 'timing reference only');
  // The preferred backend (native) against the oracle (reference); when only the oracle loads, it alone.
  const native = eng.capabilities.oracle ? null : eng.backend;
  const reference = oracleBackend();

  const torch =
    opts.extra.pytorch === true ? await (await loadPeers()).TorchGemmRunner.start(eng.threads) : null;
  const results: BenchResult[] = [];
  const record = (c: GemmCase, backend: BenchResult['backend'], times: number[]) => {
    const value = flops(c) / median(times) / 1e9;
    opts.log(`${c.id}: ${backend} ${value.toFixed(value < 10 ? 2 : 1)} GFLOP/s`);
    results.push({ case: c.id, backend, metric: 'gflops', value, runs: times.length });
  };
  try {
    for (const c of cases) {
      if (c.packedB && !native) throw new UsageError(`gemm case ${c.id}: _pB needs the native backend`);
      if (native && torch) {
        // Alternate single runs, pausing at each switch.
        const p = prepareCase(native, c);
        const nativeTimes: number[] = [];
        const torchTimes: number[] = [];
        const plain = { id: c.id.replace(/_pB|_cold/g, '') }; // PyTorch: one B, as it is stored
        await torch.runOnce(plain); // operands and warm-up on PyTorch's side
        for (let r = 0; r < runs; r++) {
          await settle();
          nativeTimes.push(p.run(p.reps));
          await settle();
          torchTimes.push(await torch.runOnce(plain, p.reps));
        }
        p.dispose();
        record(c, eng.name, nativeTimes);
        record(c, 'pytorch', torchTimes);
      } else if (native) {
        const value = timeBackend(native, c, runs);
        opts.log(`${c.id}: ${eng.name} ${value.toFixed(1)} GFLOP/s`);
        results.push({ case: c.id, backend: eng.name, metric: 'gflops', value, runs });
      } else if (torch) {
        const plain = { id: c.id.replace(/_pB|_cold/g, '') };
        const reps = Math.max(1, Math.min(1000, Math.ceil(MIN_RUN_SECONDS / (await torch.runOnce(plain)))));
        const torchTimes: number[] = [];
        for (let r = 0; r < runs; r++) torchTimes.push(await torch.runOnce(plain, reps));
        record(c, 'pytorch', torchTimes);
      }
      if (!c.packedB && (allReference || flops(c) <= REFERENCE_MAX_FLOPS)) {
        const value = timeBackend(reference, c, runs);
        opts.log(`${c.id}: ${reference.name} ${value.toFixed(2)} GFLOP/s`);
        results.push({ case: c.id, backend: reference.name, metric: 'gflops', value, runs });
      }
    }
  } finally {
    torch?.close();
  }
  const extra: Record<string, string> = { ...eng.extra };
  if (torch) extra.torch = torch.version;
  return { bench: 'gemm', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
