/**
 * `clipcap bench extract` in its --smoke form (the tiny CLIP by the fixture rule, 8 generated JPEGs per case,
 * 1 run), through the CLI as a user runs it: the --format json document follows the DESIGN.md contract (bench,
 * machine, one images_per_s result per case with a positive finite value and peak RSS), and the temporary
 * folder (photos and each run's safetensors output) is gone afterwards. No timing assertions: the machine is
 * shared.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EXTRACT_CASES, runExtractBench } from '../../src/bench/extract.js';
import { BENCHES } from '../../src/bench/registry.js';
import type { BenchReport } from '../../src/bench/report.js';
import { benchCli as cli } from './cli.js';
import { UsageError } from '../../src/util/errors.js';

// Each test points os.tmpdir() at a fresh empty folder, so "nothing left behind" covers every file the bench
// writes there (not only its own folder's name), whatever other test files do in the real temp folder. (Its name
// does not start with clipcap-bench-: models.test.ts counts those in the real temp folder.)
let tmp: string;
let savedTmpdir: string | undefined;
beforeEach(() => {
  savedTmpdir = process.env.TMPDIR;
  tmp = mkdtempSync(path.join(os.tmpdir(), 'clipcap-extract-bench-test-'));
  process.env.TMPDIR = tmp;
  expect(os.tmpdir()).toBe(tmp);
});
afterEach(() => {
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
  rmSync(tmp, { recursive: true, force: true });
});

describe('bench extract --smoke', () => {
  it('reports images/s with peak RSS for every case in the DESIGN.md JSON shape, and leaves no temp files', async () => {
    const out = await cli(['extract', '--smoke', '--format', 'json', '--threads', '1']);
    const r = JSON.parse(out) as BenchReport;
    expect(Object.keys(r).sort()).toEqual(['bench', 'machine', 'results']);
    expect(r.bench).toBe('extract');
    expect(r.machine.smoke).toBe(true);
    expect(r.machine.threads).toBe(1);
    expect(r.machine.cores).toBeGreaterThan(0);
    expect(typeof r.machine.cpu).toBe('string');
    expect(typeof r.machine.avx2).toBe('boolean');
    expect(r.machine.images).toBe('8 synthetic JPEGs per case (4 distinct)');
    expect(r.results.map((x) => x.case)).toEqual(['jpeg_640x480', 'jpeg_2048x1536']);
    for (const x of r.results) {
      expect(Object.keys(x).sort()).toEqual(['backend', 'case', 'metric', 'peak_rss_mb', 'runs', 'value']);
      expect(['native', 'reference']).toContain(x.backend);
      expect(x.metric).toBe('images_per_s');
      expect(x.runs).toBe(1);
      expect(Number.isFinite(x.value) && x.value > 0, `${x.case} value ${x.value}`).toBe(true);
      expect(Number.isFinite(x.peak_rss_mb) && (x.peak_rss_mb as number) > 0, `${x.case} peak RSS`).toBe(
        true,
      );
    }
    console.log(`extract smoke: ${r.results.map((x) => `${x.case}=${x.value.toPrecision(3)}`).join(', ')}`);
    expect(readdirSync(tmp)).toEqual([]);
  }, 120_000);

  it('--cases selects cases, --runs is honoured, and an unknown case is refused naming the known ones', async () => {
    const r = await runExtractBench({
      runs: 2,
      log: () => undefined,
      extra: { smoke: true, cases: 'jpeg_640x480' },
    });
    expect(r.results.map((x) => [x.case, x.runs])).toEqual([['jpeg_640x480', 2]]);
    expect(r.results[0].value).toBeGreaterThan(0);
    expect(readdirSync(tmp)).toEqual([]);
    const e = await runExtractBench({
      log: () => undefined,
      extra: { smoke: true, cases: 'jpeg_1x1' },
    }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toMatch(/unknown case jpeg_1x1; use jpeg_640x480, jpeg_2048x1536/);
    expect(readdirSync(tmp)).toEqual([]);
  }, 120_000);

  it('the registry has every bench of the DESIGN.md contract, extract among them', () => {
    for (const what of ['gemm', 'clip', 'caption', 'train', 'extract', 'serve'])
      expect(Object.keys(BENCHES), what).toContain(what);
    expect(EXTRACT_CASES.map((c) => c.id)).toEqual(['jpeg_640x480', 'jpeg_2048x1536']);
  });
});
