/**
 * Dev-only peers of `clipcap bench ... --pytorch` (never part of the npm package: `files` ships dist/src only):
 * a torch-capable python3, the scripts in this folder it runs (pytorch_*.py, fullsize_torch.py) and the merge
 * of their results into clipcap's report. src/bench/common.ts loadPeers() imports this module when it exists.
 * The alternating multi-round comparison with every peer is bench/compare.mjs.
 */
import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { BenchResult } from '../src/bench/report.js';
import { UserError } from '../src/util/errors.js';

/** The source repository's root, from bench/ (vitest) or dist/bench/ (built). */
function repoRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.basename(path.dirname(here)) === 'dist'
    ? path.resolve(here, '../..')
    : path.resolve(here, '..');
}

/** A path of the source repository (bench/, test/fixtures/); null if absent. */
export function repoPath(rel: string): string | null {
  const p = path.resolve(repoRoot(), rel);
  return existsSync(p) ? p : null;
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

/**
 * bench/pytorch_gemm.py --stdin in a persistent python3, asked for one timed run at a time so that native
 * and PyTorch runs of a case alternate and see the same machine load.
 */
export class TorchGemmRunner {
  private readonly child: ChildProcessByStdio<Writable, Readable, null>;
  private readonly lines: AsyncIterator<string>;
  version = '';

  private constructor(py: string, script: string, threads: number) {
    this.child = spawn(py, [script, '--stdin', '--threads', String(threads)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.lines = createInterface({ input: this.child.stdout })[Symbol.asyncIterator]();
  }

  static async start(threads: number): Promise<TorchGemmRunner> {
    const { py, file: script } = torchScript('pytorch_gemm.py', ['torch']);
    const runner = new TorchGemmRunner(py, script, threads);
    const hello = (await runner.next()) as { torch?: string; ready?: boolean };
    if (hello.ready !== true) throw new UserError(`${path.basename(script)} did not start`);
    runner.version = String(hello.torch);
    return runner;
  }

  private async next(): Promise<unknown> {
    const r = await this.lines.next();
    if (r.done) throw new UserError('bench/pytorch_gemm.py exited early (see its error above)');
    return JSON.parse(r.value) as unknown;
  }

  /** Seconds per product of one PyTorch run of `reps` products (operands made and warmed up on first use). */
  async runOnce(c: { id: string }, reps = 1): Promise<number> {
    this.child.stdin.write(`${c.id} 1 ${reps}\n`);
    const r = (await this.next()) as { case?: string; seconds?: number[] };
    if (r.case !== c.id || !Array.isArray(r.seconds) || typeof r.seconds[0] !== 'number') {
      throw new UserError(`bench/pytorch_gemm.py answered ${JSON.stringify(r)}`);
    }
    return r.seconds[0];
  }

  close(): void {
    this.child.stdin.end();
  }
}
