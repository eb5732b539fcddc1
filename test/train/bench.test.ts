import { describe, it, expect } from 'vitest';
import { runTrainBench } from '../../src/bench/train.js';
import { BENCHES } from '../../src/bench/registry.js';

describe('clipcap bench train --smoke', () => {
  it('times both cases in samples/s', async () => {
    expect(BENCHES.train).toBeDefined();
    const lines: string[] = [];
    const r = await runTrainBench({ log: (l) => lines.push(l), extra: { smoke: true } });
    expect(r.bench).toBe('train');
    expect(r.results.map((x) => [x.case, x.metric])).toEqual([
      ['mlp_finetune_b8_t20', 'samples_per_s'],
      ['transformer_frozen_b8_t20', 'samples_per_s'],
    ]);
    for (const x of r.results) expect(x.value).toBeGreaterThan(0);
    console.log(lines.join('\n'));
  });
});
