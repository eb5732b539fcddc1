/**
 * `clipcap bench gemm`: GFLOP/s of the GEMMs that dominate ClipCap (GPT-2 small / CLIP ViT-B/32, width 768),
 * on the native backend, the reference backend (small cases, or all with --reference) and, with --pytorch,
 * PyTorch's CPU GEMM (bench/pytorch_gemm.py run by a python3 that has torch) at the same thread count.
 *
 * Case ids are MxKxN: op(A) (M, K) · op(B) (K, N). `_tA`: A is stored (K, M); `_tB`: B is stored (N, K).
 * The default cases are GPT-2 training / decoding products with 1200 token rows (e.g. 40 captions of 30):
 * forward x·W for the MLP (768->3072, 3072->768), the fused qkv (768->2304), a CLIP projection (50 tokens),
 * the LM head (decoding 5 beams, and training), and the backward products: dX = dY·Wᵀ (_tB) and
 * dW = Xᵀ·dY (_tA).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Backend } from '../engine/backend.js';
import { loadNativeBackend, NativeBackend } from '../engine/native.js';
import { ReferenceBackend } from '../engine/reference.js';
import type { Tensor } from '../engine/tensor.js';
import { UsageError, UserError } from '../util/errors.js';
import { cpuHasAvx2, machineInfo, median, timeRuns } from './report.js';
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
}

/** Parses "MxKxN[_tA][_tB]". */
export function parseGemmCase(id: string): GemmCase {
  const m = /^(\d+)x(\d+)x(\d+)((?:_tA|_tB)*)$/.exec(id.trim());
  if (!m)
    throw new UsageError(`bad gemm case "${id}": use MxKxN with optional _tA / _tB, e.g. 1200x768x3072_tB`);
  const [M, K, N] = [m[1], m[2], m[3]].map(Number);
  if (![M, K, N].every((d) => d >= 1 && d <= 1e6)) {
    throw new UsageError(`bad gemm case "${id}": each dimension must be from 1 to 1000000`);
  }
  return { id: id.trim(), m: M, k: K, n: N, transA: m[4].includes('_tA'), transB: m[4].includes('_tB') };
}

const flops = (c: GemmCase) => 2 * c.m * c.k * c.n;

/** Median GFLOP/s of `runs` products into a preallocated output (as PyTorch's side does). */
function timeBackend(be: Backend, c: GemmCase, runs: number): number {
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
  const b = be.upload(fill(c.k * c.n, 2), c.transB ? [c.n, c.k] : [c.k, c.n]);
  const out: Tensor = be.zeros([c.m, c.n]);
  const times = timeRuns(() => be.matmul(a, b, { transA: c.transA, transB: c.transB, out }), runs);
  for (const t of [a, b, out]) be.free(t);
  return flops(c) / median(times) / 1e9;
}

/** The package root (bench/ lives there in the source repository), from src/bench or dist/src/bench. */
function findScript(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const p = path.resolve(here, up, 'bench', 'pytorch_gemm.py');
    if (existsSync(p)) return p;
  }
  return null;
}

/** A python3 that can import torch: $CLIPCAP_PYTHON, python3 on PATH, then /usr/bin/python3. */
function findTorchPython(): string | null {
  const candidates = [process.env.CLIPCAP_PYTHON, 'python3', '/usr/bin/python3'].filter(
    (p): p is string => typeof p === 'string' && p !== '',
  );
  for (const py of new Set(candidates)) {
    const r = spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore', timeout: 120_000 });
    if (r.status === 0) return py;
  }
  return null;
}

interface TorchOutput {
  torch: string;
  results: BenchResult[];
}

function runPytorch(cases: GemmCase[], threads: number, runs: number): TorchOutput {
  const script = findScript();
  if (!script) {
    throw new UserError(
      '--pytorch needs bench/pytorch_gemm.py, which is in the clipcap source repository (not the npm package)',
    );
  }
  const py = findTorchPython();
  if (!py) {
    throw new UserError(
      '--pytorch needs a python3 that can `import torch` (e.g. apt-get install python3-torch, or pip install torch); set CLIPCAP_PYTHON to choose one',
    );
  }
  const args = [
    script,
    '--threads',
    String(threads),
    '--runs',
    String(runs),
    '--cases',
    cases.map((c) => c.id).join(','),
  ];
  const r = spawnSync(py, args, {
    encoding: 'utf8',
    maxBuffer: 16 << 20,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0)
    throw new UserError(`${py} ${path.basename(script)} failed (exit ${r.status ?? r.signal})`);
  const parsed = JSON.parse(r.stdout) as TorchOutput;
  if (!Array.isArray(parsed.results)) throw new UserError(`${path.basename(script)} printed no results`);
  return parsed;
}

export async function runGemmBench(opts: BenchRunOptions): Promise<BenchReport> {
  const runs = opts.runs ?? DEFAULT_RUNS;
  const casesOpt = opts.extra.cases;
  const cases = (typeof casesOpt === 'string' ? casesOpt.split(',') : DEFAULT_GEMM_CASES).map(parseGemmCase);
  const allReference = opts.extra.reference === true;

  const loaded = loadNativeBackend();
  const native = 'backend' in loaded && loaded.backend instanceof NativeBackend ? loaded.backend : null;
  if (!native)
    opts.log(
      `native backend unavailable (${'error' in loaded ? loaded.error : 'unknown'}); timing reference only`,
    );
  if (native && opts.threads !== undefined) native.setThreads(opts.threads);
  const info = native?.info();
  const threads = info?.threads ?? opts.threads ?? 1;
  const reference = new ReferenceBackend();

  const results: BenchResult[] = [];
  for (const c of cases) {
    if (native) {
      const value = timeBackend(native, c, runs);
      opts.log(`${c.id}: native ${value.toFixed(1)} GFLOP/s`);
      results.push({ case: c.id, backend: 'native', metric: 'gflops', value, runs });
    }
    if (allReference || flops(c) <= REFERENCE_MAX_FLOPS) {
      const value = timeBackend(reference, c, runs);
      opts.log(`${c.id}: reference ${value.toFixed(2)} GFLOP/s`);
      results.push({ case: c.id, backend: 'reference', metric: 'gflops', value, runs });
    }
  }
  const extra: Record<string, string> = {};
  if (info) extra.gemm_kernel = info.gemmKernel;
  if (opts.extra.pytorch === true) {
    opts.log(`running PyTorch on ${cases.length} cases with ${threads} thread(s)...`);
    const torch = runPytorch(cases, threads, runs);
    extra.torch = torch.torch;
    // Keep the report's order: each case's pytorch result after its native/reference ones.
    for (const r of torch.results) {
      const last = results.map((x) => x.case).lastIndexOf(r.case);
      const entry: BenchResult = {
        case: r.case,
        backend: 'pytorch',
        metric: 'gflops',
        value: r.value,
        runs: r.runs,
      };
      results.splice(last + 1, 0, entry);
    }
  }
  return { bench: 'gemm', machine: machineInfo(threads, info?.avx2 ?? cpuHasAvx2(), extra), results };
}
