/**
 * What every `clipcap bench WHAT` produces (DESIGN.md, "Contracts"), and the light helpers the benches share:
 * timing (median of N runs), the machine description, which way each metric is better, and the text table
 * (the CLI imports this module on every `clipcap bench`; what loads backends is in common.ts).
 *
 * JSON: { "bench": WHAT, "machine": {...}, "results": [ { "case", "backend", "metric", "value", "runs" } ] },
 * each value the median of `runs` timed runs.
 */
import os from 'node:os';
import { readFileSync } from 'node:fs';
import { backendEntries, type BackendName } from '../engine/registry.js';

/** The peers clipcap's backends are compared with (dev-only, bench/peers.ts). */
export type PeerName = 'pytorch' | 'pytorch_kv' | 'onnxruntime';
const PEERS: readonly PeerName[] = ['pytorch', 'pytorch_kv', 'onnxruntime'];

/**
 * Who ran a result: one of clipcap's backends (engine/registry.ts), PyTorch running the official decoders
 * ('pytorch'; other benches: plain PyTorch), PyTorch with a KV cache ('pytorch_kv', bench caption),
 * onnxruntime-node ('onnxruntime').
 */
export type BenchBackend = BackendName | PeerName;

/**
 * Table columns: clipcap's backends in the registry's order of preference, then the peers. The first of
 * clipcap's backends that is not the oracle (native) is the one whose speed-ups over the others are shown.
 */
function tableBackends(results: readonly BenchResult[]): { columns: BenchBackend[]; subject?: BenchBackend } {
  const present = new Set(results.map((r) => r.backend));
  const ours = backendEntries().filter((e) => present.has(e.name));
  const columns: BenchBackend[] = [...ours.map((e) => e.name), ...PEERS.filter((p) => present.has(p))];
  return { columns, subject: ours.find((e) => !e.capabilities.oracle)?.name };
}

export interface BenchResult {
  case: string;
  backend: BenchBackend;
  metric: string;
  value: number;
  runs: number;
  peak_rss_mb?: number;
}

export interface MachineInfo {
  /** CPU model name. */
  cpu: string;
  /** Logical CPUs available to this process. */
  cores: number;
  /** Threads the benchmark's kernels ran with. */
  threads: number;
  node: string;
  /** Whether the CPU has AVX2 + FMA (the native GEMM's fast micro-kernel). */
  avx2: boolean;
  [extra: string]: string | number | boolean;
}

export interface BenchReport {
  bench: string;
  machine: MachineInfo;
  results: BenchResult[];
}

/** Options every bench receives from the CLI (bench-specific ones arrive in `extra`). */
export interface BenchRunOptions {
  /** Timed runs per case (each value is their median); undefined = the bench's default. */
  runs?: number;
  /** Kernel threads; undefined = CLIPCAP_THREADS or every core. */
  threads?: number;
  /** Progress lines, for stderr. */
  log: (line: string) => void;
  /** Bench-specific options by camelCase name, as commander parsed them. */
  extra: Record<string, string | boolean | undefined>;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Seconds taken by each of `runs` calls of fn, after `warmup` untimed calls. */
export function timeRuns(fn: () => void, runs: number, warmup = 1): number[] {
  for (let i = 0; i < warmup; i++) fn();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return times;
}

/** AVX2 + FMA from /proc/cpuinfo (Linux), for machines where the native addon is not loaded. */
export function cpuHasAvx2(): boolean {
  try {
    const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
    const set = new Set(flags.trim().split(/\s+/));
    return set.has('avx2') && set.has('fma');
  } catch {
    return false;
  }
}

export function machineInfo(
  threads: number,
  avx2: boolean,
  extra: Record<string, string | number | boolean> = {},
): MachineInfo {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism(),
    threads,
    node: process.version,
    avx2,
    ...extra,
  };
}

/**
 * Whether a larger value of `metric` is better: rates (gflops, images_per_s, captions_per_s, ...) are; times
 * (`ms`, `ms_per_token`: a unit of time, optionally per something) are not.
 */
export function higherIsBetter(metric: string): boolean {
  return !/^(ns|us|ms|s)(_per_.+)?$/.test(metric);
}

/** How many times faster `value` is than `baseline` in `metric` (> 1: faster), whichever way it is better. */
export function speedup(metric: string, value: number, baseline: number): number {
  return higherIsBetter(metric) ? value / baseline : baseline / value;
}

/**
 * The text format: one row per case, one column per backend (values in the results' metric), plus how many
 * times faster native (the preferred backend) is than each peer and than reference when both were measured (per row, by the row's
 * metric: a rate divided, a time inverted). Where every metric is a rate the ratio is the quotient and the
 * column says so ("native/pytorch"); otherwise it is headed "speed-up vs pytorch". Columns are aligned.
 */
export function formatTable(report: BenchReport): string {
  const { columns: backends, subject } = tableBackends(report.results);
  const cases = [...new Set(report.results.map((r) => r.case))];
  const metrics = [...new Set(report.results.map((r) => r.metric))];
  const result = (c: string, b: BenchBackend) => report.results.find((r) => r.case === c && r.backend === b);
  // Peers first, then the other backends of clipcap (the oracle among them).
  const ratios =
    subject === undefined
      ? []
      : [
          ...backends.filter((b) => PEERS.includes(b as PeerName)),
          ...backends.filter((b) => !PEERS.includes(b as PeerName) && b !== subject),
        ];
  const header = [
    'case',
    ...backends.map((b) => `${b} (${metrics.join('/')})`),
    ...ratios.map((b) => (metrics.every(higherIsBetter) ? `${subject}/${b}` : `speed-up vs ${b}`)),
  ];
  const fmt = (v: number | undefined) =>
    v === undefined ? '-' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  const rows = cases.map((c) => [
    c,
    ...backends.map((b) => fmt(result(c, b)?.value)),
    ...ratios.map((b) => {
      const n = subject === undefined ? undefined : result(c, subject);
      const o = result(c, b);
      return n === undefined || o === undefined ? '-' : `${speedup(n.metric, n.value, o.value).toFixed(2)}x`;
    }),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ');
  const m = report.machine;
  const title = `clipcap bench ${report.bench}: ${m.cpu}, ${m.threads} thread(s) of ${m.cores}, node ${m.node}, avx2 ${m.avx2 ? 'yes' : 'no'}`;
  const runs = [...new Set(report.results.map((r) => r.runs))].join('/');
  return (
    [
      title,
      line(header),
      line(widths.map((w) => '-'.repeat(w))),
      ...rows.map(line),
      `(median of ${runs} runs)`,
    ].join('\n') + '\n'
  );
}
