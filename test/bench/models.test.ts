/**
 * `clipcap bench clip` and `clipcap bench caption` in their --smoke form (tiny models by the fixture rule,
 * 1 run, 3 tokens): the report follows the DESIGN.md contract (every case, metric and backend; values positive
 * and finite; peak RSS where promised). With a torch-capable python3 the PyTorch side runs too (its tiny models,
 * its weight rule checked against fullsize_rule_check.json); without one, --pytorch must fail with one clear
 * line. No timing assertions: the machine is shared.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { benchEmbeddings, runCaptionBench } from '../../src/bench/caption.js';
import { runClipBench } from '../../src/bench/clip.js';
import { findTorchPython, mergeTorchResults } from '../../bench/peers.js';
import { BENCHES } from '../../src/bench/registry.js';
import { formatTable, higherIsBetter, speedup } from '../../src/bench/report.js';
import type { BenchReport, BenchResult, BenchRunOptions } from '../../src/bench/report.js';
import { benchCli } from './cli.js';
import { UsageError, UserError } from '../../src/util/errors.js';
import { syntheticValues } from '../../src/models/synthetic.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const hasTorch = findTorchPython() !== null;

function smoke(extra: BenchRunOptions['extra'] = {}): BenchRunOptions {
  return { log: () => undefined, extra: { smoke: true, ...extra } };
}

/** Every expected (case, metric) once per backend, values positive and finite, runs 1. */
function checkReport(
  r: BenchReport,
  bench: string,
  expected: readonly (readonly [string, string, boolean])[],
  backends: readonly string[],
): void {
  expect(r.bench).toBe(bench);
  expect(r.machine.cores).toBeGreaterThan(0);
  expect(r.machine.threads).toBeGreaterThan(0);
  expect(typeof r.machine.cpu).toBe('string');
  expect(typeof r.machine.avx2).toBe('boolean');
  expect(r.machine.smoke).toBe(true);
  // The JSON document is what --format json prints: it must survive a round trip unchanged.
  expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  const peers = ['pytorch', 'pytorch_kv'];
  const ours = r.results.filter((x) => !peers.includes(x.backend));
  expect(new Set(ours.map((x) => x.backend)).size).toBe(1);
  expect(['native', 'reference']).toContain(ours[0].backend);
  expect([...new Set(r.results.map((x) => x.backend))].filter((b) => peers.includes(b)).sort()).toEqual(
    backends.filter((b) => b !== 'ours').sort(),
  );
  for (const backend of backends) {
    const rows = r.results.filter((x) =>
      backend === 'ours' ? !peers.includes(x.backend) : x.backend === backend,
    );
    expect(rows.map((x) => [x.case, x.metric])).toEqual(expected.map(([c, m]) => [c, m]));
    rows.forEach((x, i) => {
      expect(Number.isFinite(x.value) && x.value > 0, `${backend} ${x.case} value ${x.value}`).toBe(true);
      expect(x.runs).toBe(1);
      if (expected[i][2]) {
        expect(Number.isFinite(x.peak_rss_mb) && (x.peak_rss_mb as number) > 0, `${x.case} peak_rss_mb`).toBe(
          true,
        );
      }
    });
  }
  console.log(
    `${bench} smoke: ${r.results.map((x) => `${x.case}/${x.backend}=${x.value.toPrecision(3)}`).join(', ')}`,
  );
}

/** Without a torch-capable python3, --pytorch must fail with one clear line (naming CLIPCAP_PYTHON). */
function itFailsWithoutTorch(run: (o: BenchRunOptions) => Promise<BenchReport>, timeout: number): void {
  it(
    'with --pytorch and no torch-capable python3, fails with one clear line',
    async () => {
      const e = await run(smoke({ pytorch: true })).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(UserError);
      expect((e as Error).message).toMatch(/CLIPCAP_PYTHON/);
    },
    timeout,
  );
}

const CLIP_CASES = [
  ['bs1', 'images_per_s', true],
  ['bs16', 'images_per_s', true],
  ['bs16_decode', 'images_per_s', true],
] as const;

const CAPTION_CASES = [
  ['beam5_20tok', 'ms', true],
  ['beam5_20tok_per_token', 'ms_per_token', false],
  ['greedy_20tok', 'ms', true],
  ['greedy_20tok_per_token', 'ms_per_token', false],
  ['batch32_beam5', 'captions_per_s', true],
] as const;

describe('bench clip --smoke', () => {
  it('reports bs1, bs16 and bs16_decode in images/s with peak RSS, from synthetic JPEGs (no repo files)', async () => {
    const before = new Set(readdirSync(os.tmpdir()).filter((n) => n.startsWith('clipcap-bench-')));
    const r = await runClipBench(smoke());
    checkReport(r, 'clip', CLIP_CASES, ['ours']);
    expect(r.machine.images).toBe('4 synthetic 640x480 JPEGs');
    // the temporary folder of JPEGs is gone
    const after = readdirSync(os.tmpdir()).filter((n) => n.startsWith('clipcap-bench-') && !before.has(n));
    expect(after).toEqual([]);
  }, 120_000);

  it('refuses an --images folder without JPEG files, naming it', async () => {
    await expect(runClipBench(smoke({ images: FIX + 'gpt2_tiny' }))).rejects.toThrow(
      /--images .*gpt2_tiny: no \.jpg\/\.jpeg files/,
    );
  });

  if (hasTorch) {
    it('with --pytorch, merges PyTorch results for every case', async () => {
      const r = await runClipBench(smoke({ pytorch: true }));
      checkReport(r, 'clip', CLIP_CASES, ['ours', 'pytorch']);
      expect(typeof r.machine.torch).toBe('string');
      expect(r.machine.torch_rule_check_max_diff).toBe(0);
      // Each case's PyTorch row follows its own row.
      expect(r.results.map((x) => x.case)).toEqual([
        'bs1',
        'bs1',
        'bs16',
        'bs16',
        'bs16_decode',
        'bs16_decode',
      ]);
    }, 180_000);
  } else itFailsWithoutTorch(runClipBench, 120_000);
});

describe('bench caption --smoke', () => {
  it('reports beam5_20tok, greedy_20tok (ms, ms per token) and batch32_beam5 (captions/s)', async () => {
    const r = await runCaptionBench(smoke());
    checkReport(r, 'caption', CAPTION_CASES, ['ours']);
    expect(r.machine.tokens).toBe(3);
  }, 180_000);

  if (hasTorch) {
    it('with --pytorch, runs the official decoders on PyTorch with a weight rule that matches the fixture', async () => {
      const r = await runCaptionBench(smoke({ pytorch: true }));
      checkReport(r, 'caption', CAPTION_CASES, ['ours', 'pytorch', 'pytorch_kv']);
      expect(r.machine.torch_kv_matches_official).toBe(true);
      expect(r.machine.torch_batch32_calls_timed).toBe(1);
      expect(r.machine.torch_rule_check_max_diff).toBe(0);
    }, 240_000);
  } else itFailsWithoutTorch(runCaptionBench, 180_000);

  it('refuses --gpt2 without --clipcap and a bad --pytorch-batch-calls', async () => {
    await expect(runCaptionBench(smoke({ gpt2: 'openai-community/gpt2' }))).rejects.toThrow(UsageError);
    await expect(runCaptionBench(smoke({ pytorchBatchCalls: '0' }))).rejects.toThrow(
      /--pytorch-batch-calls must be an integer/,
    );
  });
});

describe('bench helpers', () => {
  it('benchEmbeddings: 32 distinct rows from two rule-made bases, by the rule the PyTorch script uses', () => {
    const base = [0, 1].map((i) => syntheticValues(`bench.clip_embedding.${i}`, 512));
    const rows = benchEmbeddings(32, 512);
    expect(rows).toHaveLength(32);
    rows.forEach((row, i) => {
      const s = 1 + 0.05 * Math.floor(i / 2);
      // rounded once from the float64 product (PyTorch's side does the same in numpy float64)
      expect([...row]).toEqual(Array.from(base[i % 2], (v) => Math.fround(v * s)));
    });
    expect(new Set(rows.map((r) => r.join(','))).size).toBe(32);
    expect(benchEmbeddings(2, 640)[0]).toHaveLength(640);
  });

  it('mergeTorchResults puts each PyTorch row after its case and keeps its peak RSS', () => {
    const ours: BenchResult[] = [
      { case: 'a', backend: 'native', metric: 'ms', value: 1, runs: 1 },
      { case: 'b', backend: 'native', metric: 'ms', value: 2, runs: 1 },
    ];
    mergeTorchResults(ours, [
      { case: 'b', backend: 'pytorch', metric: 'ms', value: 20, runs: 1, peak_rss_mb: 5 },
      { case: 'a', backend: 'pytorch', metric: 'ms', value: 10, runs: 1 },
      { case: 'c', backend: 'pytorch', metric: 'ms', value: 30, runs: 1 },
    ]);
    expect(ours.map((r) => `${r.case}/${r.backend}`)).toEqual([
      'a/native',
      'a/pytorch',
      'b/native',
      'b/pytorch',
      'c/pytorch',
    ]);
    expect(ours[3].peak_rss_mb).toBe(5);
    expect('peak_rss_mb' in ours[1]).toBe(false);
  });

  it('higherIsBetter: rates are, times (ms, ms_per_token) are not; speedup inverts times', () => {
    for (const m of ['gflops', 'images_per_s', 'captions_per_s', 'samples_per_s'])
      expect(higherIsBetter(m), m).toBe(true);
    for (const m of ['ms', 'ms_per_token', 's', 'us_per_image']) expect(higherIsBetter(m), m).toBe(false);
    expect(speedup('ms', 10, 40)).toBe(4);
    expect(speedup('captions_per_s', 3, 1)).toBe(3);
  });

  it('formatTable: the ratio column is a speed-up for every metric (times inverted), labelled as one', () => {
    const machine = { cpu: 'cpu', cores: 2, threads: 2, node: 'v20', avx2: true };
    const row = (c: string, backend: BenchResult['backend'], metric: string, value: number): BenchResult => ({
      case: c,
      backend,
      metric,
      value,
      runs: 1,
    });
    const caption = formatTable({
      bench: 'caption',
      machine,
      results: [
        row('beam5_20tok', 'native', 'ms', 10),
        row('beam5_20tok', 'pytorch', 'ms', 40),
        row('batch32_beam5', 'native', 'captions_per_s', 3),
        row('batch32_beam5', 'pytorch', 'captions_per_s', 1),
      ],
    }).split('\n');
    expect(caption[1]).toMatch(/\sspeed-up vs pytorch$/);
    expect(caption[3]).toMatch(/^beam5_20tok\s.*\s4\.00x$/);
    expect(caption[4]).toMatch(/^batch32_beam5\s.*\s3\.00x$/);
    // Rates only: the ratio is the quotient, and the header says so.
    const clip = formatTable({
      bench: 'clip',
      machine,
      results: [row('bs1', 'native', 'images_per_s', 6), row('bs1', 'pytorch', 'images_per_s', 4)],
    }).split('\n');
    expect(clip[1]).toMatch(/\snative\/pytorch$/);
    expect(clip[3]).toMatch(/\s1\.50x$/);
  });

  it('the registry lists clip and caption, and the CLI passes their options through (--format json)', async () => {
    expect(Object.keys(BENCHES)).toEqual(expect.arrayContaining(['clip', 'caption']));
    const out = await benchCli(['clip', '--smoke', '--format', 'json', '--images', FIX + 'images']);
    const r = JSON.parse(out) as BenchReport;
    checkReport(r, 'clip', CLIP_CASES, ['ours']);
    expect(r.machine.images).toBe(FIX + 'images');
  }, 120_000);
});
