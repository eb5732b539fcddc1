import { describe, it, expect } from 'vitest';
import { linearWarmupSchedule } from '../../src/nn/schedule.js';

describe('linear warmup schedule (transformers get_linear_schedule_with_warmup)', () => {
  it('starts at 0, rises for the warmup steps, then decays linearly to 0 at the total', () => {
    const f = linearWarmupSchedule(2, 5);
    expect([0, 1, 2, 3, 4, 5, 6].map(f)).toEqual([0, 0.5, 1, 2 / 3, 1 / 3, 0, 0]);
    const official = linearWarmupSchedule(5000, 10 * 1000);
    expect([0, 2500, 5000, 7500, 10000].map(official)).toEqual([0, 0.5, 1, 0.5, 0]);
  });

  it('without warmup the first step runs at the full rate', () => {
    expect(linearWarmupSchedule(0, 4)(0)).toBe(1);
  });

  it('refuses negative or fractional step counts', () => {
    expect(() => linearWarmupSchedule(-1, 5)).toThrow(/warmup/);
    expect(() => linearWarmupSchedule(1, 2.5)).toThrow(/total/);
  });
});
