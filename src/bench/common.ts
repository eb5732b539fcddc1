/**
 * What the benches that time real work share (gemm, clip, caption): the backend they time and its threads,
 * the source repository's files (bench/*.py, test/fixtures), a torch-capable python3 and the PyTorch scripts
 * it runs, memory (peak RSS) and async timing. The report contract and the table are in report.ts, which the
 * CLI imports on every `clipcap bench`; this module loads the backends, so only a running bench imports it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Backend } from '../engine/backend.js';
import { loadNativeBackend, NativeBackend } from '../engine/native.js';
import { ReferenceBackend } from '../engine/reference.js';
import { UserError } from '../util/errors.js';
import { cpuHasAvx2 } from './report.js';
import type { BenchBackend, BenchResult, BenchRunOptions } from './report.js';

// ---- the backend ----

export interface BenchEngine {
  backend: Backend;
  /** The report's backend name. */
  name: BenchBackend;
  /** Kernel threads (what PyTorch gets too). */
  threads: number;
  avx2: boolean;
  /** machine.* entries describing the kernels. */
  extra: Record<string, string>;
}

/**
 * The native backend with opts.threads, or (saying why, then `fallback`: what is timed instead) the slow
 * reference backend.
 */
export function benchEngine(
  opts: BenchRunOptions,
  fallback = 'timing the slow reference backend',
): BenchEngine {
  const loaded = loadNativeBackend();
  const native = 'backend' in loaded && loaded.backend instanceof NativeBackend ? loaded.backend : null;
  if (native) {
    if (opts.threads !== undefined) native.setThreads(opts.threads);
    const info = native.info();
    return {
      backend: native,
      name: 'native',
      threads: info.threads,
      avx2: info.avx2,
      extra: { gemm_kernel: info.gemmKernel },
    };
  }
  opts.log(`native backend unavailable (${'error' in loaded ? loaded.error : 'unknown'}); ${fallback}`);
  return {
    backend: new ReferenceBackend(),
    name: 'reference',
    threads: opts.threads ?? 1,
    avx2: cpuHasAvx2(),
    extra: {},
  };
}

/** --runs, or the bench's default (1 with --smoke). */
export function runsOf(opts: BenchRunOptions, dflt: number): number {
  return opts.runs ?? (opts.extra.smoke === true ? 1 : dflt);
}

// ---- PyTorch ----

/** A path of the source repository (bench/, test/fixtures/), from src/bench or dist/src/bench; null if absent. */
export function repoPath(rel: string): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const p = path.resolve(here, up, rel);
    if (existsSync(p)) return p;
  }
  return null;
}

/** What the full-size model scripts import (the GEMM one needs torch only). */
const TORCH_MODULES: readonly string[] = ['torch', 'numpy'];

/** A python3 that can import `modules`: $CLIPCAP_PYTHON, python3 on PATH, then /usr/bin/python3. */
export function findTorchPython(modules: readonly string[] = TORCH_MODULES): string | null {
  const candidates = [process.env.CLIPCAP_PYTHON, 'python3', '/usr/bin/python3'].filter(
    (p): p is string => typeof p === 'string' && p !== '',
  );
  for (const py of new Set(candidates)) {
    const r = spawnSync(py, ['-c', `import ${modules.join(', ')}`], { stdio: 'ignore', timeout: 120_000 });
    if (r.status === 0) return py;
  }
  return null;
}

/** bench/SCRIPT and a python3 that can import `modules`, or a UserError saying how to get what is missing. */
export function torchScript(
  script: string,
  modules: readonly string[] = TORCH_MODULES,
): { py: string; file: string } {
  const file = repoPath(path.join('bench', script));
  if (!file)
    throw new UserError(
      `--pytorch needs bench/${script}, which is in the clipcap source repository (not the npm package)`,
    );
  const py = findTorchPython(modules);
  if (!py)
    throw new UserError(
      `--pytorch needs a python3 that can \`import ${modules.join(', ')}\` (e.g. apt-get install python3-torch, or pip install ${modules.join(' ')}); set CLIPCAP_PYTHON to choose one`,
    );
  return { py, file };
}

/** What bench/pytorch_*.py print on stdout. */
export interface TorchOutput {
  torch: string;
  threads: number;
  results: BenchResult[];
  [extra: string]: unknown;
}

/** Run bench/SCRIPT with a torch-capable python3 (its progress goes to our stderr); its JSON document. */
export function runTorchScript(script: string, args: readonly string[]): TorchOutput {
  const { py, file } = torchScript(script);
  const r = spawnSync(py, [file, ...args], {
    encoding: 'utf8',
    maxBuffer: 16 << 20,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new UserError(`${py} bench/${script} failed (exit ${r.status ?? r.signal})`);
  let parsed: TorchOutput;
  try {
    parsed = JSON.parse(r.stdout) as TorchOutput;
  } catch {
    throw new UserError(`bench/${script} printed no JSON document`);
  }
  if (!Array.isArray(parsed.results)) throw new UserError(`bench/${script} printed no results`);
  return parsed;
}

/**
 * The PyTorch side of a full-size model bench: bench/SCRIPT with the options they all take (--threads, --runs,
 * --fixtures when the repository has them, --smoke) followed by `args`. Records its torch version and weight
 * rule check in `extra` (machine.torch, machine.torch_rule_check_max_diff), merges its results into `results`
 * and returns its document for the bench's own fields.
 */
export function runTorchBench(
  script: string,
  run: { threads: number; runs: number; smoke: boolean },
  args: readonly string[],
  results: BenchResult[],
  extra: Record<string, string | number | boolean>,
): TorchOutput {
  const fixtures = repoPath('test/fixtures');
  const torch = runTorchScript(script, [
    '--threads',
    String(run.threads),
    '--runs',
    String(run.runs),
    ...args,
    ...(fixtures ? ['--fixtures', fixtures] : []),
    ...(run.smoke ? ['--smoke'] : []),
  ]);
  extra.torch = torch.torch;
  if (typeof torch.rule_check_max_diff === 'number')
    extra.torch_rule_check_max_diff = torch.rule_check_max_diff;
  mergeTorchResults(results, torch.results);
  return torch;
}

/** Append PyTorch's results to ours, each case's after its own (the report's order). */
export function mergeTorchResults(results: BenchResult[], torch: readonly BenchResult[]): void {
  for (const r of torch) {
    const entry: BenchResult = {
      case: r.case,
      backend: r.backend === 'pytorch_kv' ? 'pytorch_kv' : 'pytorch',
      metric: r.metric,
      value: r.value,
      runs: r.runs,
      ...(typeof r.peak_rss_mb === 'number' ? { peak_rss_mb: r.peak_rss_mb } : {}),
    };
    const last = results.map((x) => x.case).lastIndexOf(r.case); // after native's and earlier peers'
    if (last < 0) results.push(entry);
    else results.splice(last + 1, 0, entry);
  }
}

// ---- memory and timing ----

let gcFn: (() => void) | null | undefined;

/**
 * A full garbage collection, so that host copies of weights already uploaded to the backend (the synthetic
 * state dicts) are freed before memory is measured. Uses global.gc when node runs with --expose-gc, else turns
 * the flag on and takes gc from a fresh context (the documented way to reach it at run time).
 */
export function collectGarbage(): void {
  if (gcFn === undefined) {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === 'function') gcFn = g;
    else {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFn = vm.runInNewContext('gc') as () => void;
      } catch {
        gcFn = null;
      }
    }
  }
  gcFn?.();
}

/**
 * Linux: reset the process's peak RSS (VmHWM) to its current RSS, so that peakRssMb() measures what follows
 * (weights built earlier do not count). False where the kernel does not allow it.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** Peak resident memory in MiB: VmHWM since the last resetPeakRss(), else the lifetime peak. */
export function peakRssMb(): number {
  try {
    const m = /^VmHWM:\s*(\d+)\s*kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) / 1024;
  } catch {
    // not Linux: fall through
  }
  return process.resourceUsage().maxRSS / 1024;
}

/** Seconds of each of `runs` awaited calls after `warmup` untimed ones, and the peak RSS during the timed ones. */
export async function timeAsync(
  fn: () => Promise<void>,
  runs: number,
  warmup = 1,
): Promise<{ seconds: number[]; peakRssMb: number }> {
  for (let i = 0; i < warmup; i++) await fn();
  collectGarbage();
  // ArrayBuffer backing stores are released by V8's sweeper after the collection: give it a moment.
  await new Promise((r) => setTimeout(r, 50));
  resetPeakRss();
  const seconds: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return { seconds, peakRssMb: peakRssMb() };
}
