/**
 * `clipcap bench gemm` (src/bench): the case-id parser, the JSON report contract of DESIGN.md
 * ({ bench, machine, results: [{ case, backend, metric, value, runs }] }) on tiny cases, and the text table.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_GEMM_CASES, parseGemmCase, runGemmBench } from '../../src/bench/gemm.js';
import { formatTable, median } from '../../src/bench/report.js';
import { BENCHES } from '../../src/bench/registry.js';
import { UsageError } from '../../src/util/errors.js';

describe('bench gemm', () => {
  it('parses case ids, with the transpose suffixes, and rejects bad ones', () => {
    expect(parseGemmCase('1200x768x3072')).toEqual({
      id: '1200x768x3072',
      m: 1200,
      k: 768,
      n: 3072,
      transA: false,
      transB: false,
      packedB: false,
      cold: false,
    });
    expect(parseGemmCase('50x3072x768_tB_pB_cold')).toMatchObject({
      transB: true,
      packedB: true,
      cold: true,
    });
    expect(parseGemmCase('768x1200x3072_tA')).toMatchObject({
      m: 768,
      k: 1200,
      n: 3072,
      transA: true,
      transB: false,
    });
    expect(parseGemmCase('1200x3072x768_tB')).toMatchObject({ transA: false, transB: true });
    expect(parseGemmCase('2x3x4_tA_tB')).toMatchObject({ transA: true, transB: true });
    for (const bad of ['12x3', '0x1x1', '1x2x3_tC', 'axbxc'])
      expect(() => parseGemmCase(bad)).toThrow(UsageError);
    // the default set holds the cases and their backward variants
    for (const id of [
      '1200x768x3072',
      '1200x3072x768',
      '1200x768x2304',
      '50x768x768',
      '5x768x50257',
      '1200x768x50257',
    ]) {
      expect(DEFAULT_GEMM_CASES).toContain(id);
    }
    expect(DEFAULT_GEMM_CASES).toContain('768x1200x3072_tA');
    expect(DEFAULT_GEMM_CASES).toContain('1200x3072x768_tB');
    expect(Object.keys(BENCHES)).toContain('gemm');
  });

  it('reports native and reference GFLOP/s in the DESIGN.md JSON shape, and as a table', async () => {
    const logs: string[] = [];
    const report = await runGemmBench({
      runs: 3,
      extra: { cases: '7x9x5,3x4x5_tB,20x10x30_tA' },
      log: (l) => logs.push(l),
    });
    expect(report.bench).toBe('gemm');
    expect(Object.keys(report.machine)).toEqual(
      expect.arrayContaining(['cpu', 'cores', 'threads', 'node', 'avx2']),
    );
    expect(report.machine.node).toBe(process.version);
    expect(report.results).toHaveLength(6);
    for (const r of report.results) {
      expect(Object.keys(r).sort()).toEqual(['backend', 'case', 'metric', 'runs', 'value']);
      expect(['native', 'reference']).toContain(r.backend);
      expect(r.metric).toBe('gflops');
      expect(r.runs).toBe(3);
      expect(r.value).toBeGreaterThan(0);
    }
    expect(report.results.map((r) => r.case)).toEqual([
      '7x9x5',
      '7x9x5',
      '3x4x5_tB',
      '3x4x5_tB',
      '20x10x30_tA',
      '20x10x30_tA',
    ]);
    expect(logs.length).toBe(6);
    const table = formatTable(report).split('\n');
    expect(table[1]).toMatch(/^case\s+native \(gflops\)\s+reference \(gflops\)\s+native\/reference$/);
    // every row is as wide as the header: the columns line up
    for (const row of table.slice(2, 6)) expect(row.length).toBe(table[1].length);
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
});
