/**
 * The suite's setup (test/setup/yield.ts) gives the event loop a turn between tests, so a file of synchronous
 * tests cannot hold the worker's loop (and its 60 s RPC timeout) for their total time.
 */
import { describe, expect, it } from 'vitest';
import { yieldEvery } from '../yield.js';

describe('event loop turns in the test workers', () => {
  let turned = false;
  it('a synchronous test schedules a macrotask', () => {
    setImmediate(() => {
      turned = true;
    });
  });
  it('which has run before the next synchronous test starts', () => {
    expect(turned).toBe(true);
  });
  it('yieldEvery yields only once its interval has passed', async () => {
    const slice = yieldEvery(50);
    let ran = false;
    setImmediate(() => {
      ran = true;
    });
    await slice();
    expect(ran).toBe(false);
    const t0 = performance.now();
    while (performance.now() - t0 < 60);
    await slice();
    expect(ran).toBe(true);
  });
});
