/**
 * What the benches that time real work share (gemm, clip, caption): the backend they time and its threads,
 * the way to the dev-only peers (bench/peers.ts, only in the source repository), memory (peak RSS) and async
 * timing. The report contract and the table are in report.ts, which the
 * CLI imports on every `clipcap bench`; this module loads the backends, so only a running bench imports it.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Backend } from '../engine/backend.js';
import { backendEntries, type BackendCapabilities, type BackendName } from '../engine/registry.js';
import { UserError } from '../util/errors.js';
import { cpuHasAvx2 } from './report.js';
import type { BenchRunOptions } from './report.js';

// ---- the backend ----

export interface BenchEngine {
  backend: Backend;
  /** The report's backend name (a registry name). */
  name: BackendName;
  /** What the registry says it can do (the oracle is the slow reference). */
  capabilities: BackendCapabilities;
  /** Kernel threads (what PyTorch gets too). */
  threads: number;
  avx2: boolean;
  /** machine.* entries describing the kernels. */
  extra: Record<string, string>;
}

/**
 * The preferred backend of the registry that loads (native), with opts.threads; when the preferred one cannot
 * load, says why, then `fallback` (what is timed instead), and uses the next that loads (the slow reference).
 */
export function benchEngine(
  opts: BenchRunOptions,
  fallback = 'timing the slow reference backend',
): BenchEngine {
  for (const entry of backendEntries()) {
    const loaded = entry.load();
    if ('error' in loaded) {
      opts.log(`${entry.name} backend unavailable (${loaded.error}); ${fallback}`);
      continue;
    }
    const backend = loaded.backend;
    if (opts.threads !== undefined) entry.setThreads?.(backend, opts.threads);
    const details = entry.details?.(backend) ?? {
      threads: opts.threads ?? 1,
      avx2: cpuHasAvx2(),
      extra: {},
    };
    return { backend, name: entry.name, capabilities: entry.capabilities, ...details };
  }
  throw new UserError('no backend loads here');
}

/** --runs, or the bench's default (1 with --smoke). */
export function runsOf(opts: BenchRunOptions, dflt: number): number {
  return opts.runs ?? (opts.extra.smoke === true ? 1 : dflt);
}

// ---- peers (dev-only) ----

/** The dev-only comparison module of the source repository (bench/peers.ts): PyTorch and other peers. */
export type Peers = typeof import('../../bench/peers.js');

/**
 * Loads bench/peers.ts (built to dist/bench/peers.js), which only the source repository has: the comparison
 * with PyTorch is a development tool, not part of the npm package (it would need bench/*.py and a torch).
 */
export async function loadPeers(flag = '--pytorch'): Promise<Peers> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/src/bench -> dist/bench/peers.js; src/bench (vitest) -> bench/peers.ts
  for (const file of [
    path.resolve(here, '../../bench/peers.js'),
    path.resolve(here, '../../bench/peers.ts'),
  ]) {
    if (existsSync(file)) return (await import(pathToFileURL(file).href)) as Peers;
  }
  throw new UserError(
    `${flag} is a development comparison: it needs the clipcap source repository (bench/peers.ts built by ` +
      '`npm run build`, and bench/*.py), which the npm package does not include',
  );
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
