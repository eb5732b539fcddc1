/**
 * The benchmarks `clipcap bench WHAT` can run. To add one: write src/bench/WHAT.ts exporting a runner
 * `(opts: BenchRunOptions) => Promise<BenchReport>` and add an entry here (its module is imported only when
 * that bench runs, so heavy model code does not slow down the CLI). Options declared in `options` are added
 * to the `bench` command and reach the runner in `opts.extra` under their camelCase name.
 */
import type { BenchReport, BenchRunOptions } from './report.js';

export interface BenchOptionSpec {
  /** commander flags, e.g. '--pytorch' or '--cases <LIST>' */
  flags: string;
  description: string;
}

export interface BenchEntry {
  description: string;
  options?: readonly BenchOptionSpec[];
  run: (opts: BenchRunOptions) => Promise<BenchReport>;
}

export const BENCHES: Record<string, BenchEntry> = {
  gemm: {
    description: 'GEMM GFLOP/s on GPT-2/CLIP shapes (forward and the transposed backward products)',
    options: [
      { flags: '--pytorch', description: 'gemm: also time PyTorch (python3 with torch) on the same cases' },
      {
        flags: '--reference',
        description: 'gemm: time the slow reference backend on every case (default: small ones)',
      },
      {
        flags: '--cases <LIST>',
        description: 'gemm: comma-separated MxKxN[_tA][_tB] cases instead of the default set',
      },
    ],
    run: async (opts) => (await import('./gemm.js')).runGemmBench(opts),
  },
};
