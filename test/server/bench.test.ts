/**
 * `clipcap bench serve --smoke`: tiny models, short levels. Checks the report's shape (cases, metrics, finite
 * positive values, RSS) and that every timed request was answered; the numbers themselves mean nothing here.
 */
import { describe, expect, it } from 'vitest';
import { runServeBench } from '../../src/bench/serve.js';
import { UsageError } from '../../src/util/errors.js';

describe('bench serve --smoke', () => {
  it('reports requests/s, p50 and p99 per client count, with peak RSS', async () => {
    const lines: string[] = [];
    const r = await runServeBench({
      log: (l) => lines.push(l),
      extra: { smoke: true, seconds: '0.3', clients: '1,4' },
    });
    expect(r.bench).toBe('serve');
    expect(r.machine.smoke).toBe(true);
    expect(r.results.map((x) => `${x.case}:${x.metric}`)).toEqual([
      'clients1:requests_per_s',
      'clients1_p50:ms',
      'clients1_p99:ms',
      'clients4:requests_per_s',
      'clients4_p50:ms',
      'clients4_p99:ms',
    ]);
    for (const x of r.results) {
      expect(Number.isFinite(x.value) && x.value > 0, `${x.case} ${x.value}`).toBe(true);
      expect(x.runs).toBeGreaterThan(0);
    }
    const p50 = r.results.find((x) => x.case === 'clients4_p50')!.value;
    const p99 = r.results.find((x) => x.case === 'clients4_p99')!.value;
    expect(p99).toBeGreaterThanOrEqual(p50);
    expect(r.results[0].peak_rss_mb).toBeGreaterThan(10);
    expect(r.machine.clients1_errors).toBeUndefined();
    expect(lines.join('\n')).toMatch(/clients 4: .* \(0 errors\)/);
  }, 120_000);

  it('bounds the load generator', async () => {
    await expect(
      runServeBench({ log: () => undefined, extra: { smoke: true, clients: '1000' } }),
    ).rejects.toThrow(UsageError);
    await expect(
      runServeBench({ log: () => undefined, extra: { smoke: true, seconds: '1e6' } }),
    ).rejects.toThrow(/--seconds/);
  });
});
