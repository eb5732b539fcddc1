/**
 * The server's micro-batcher against a fake model: grouping by options, the batch-size cap, one model call at
 * a time, and a failing call that only fails the request that caused it.
 */
import { describe, expect, it } from 'vitest';
import { Batcher, type CaptionModel } from '../../src/server/batcher.js';
import type { CaptionInput, CaptionResult, EmbeddingInput } from '../../src/pipeline/types.js';
import { UserError } from '../../src/util/errors.js';

/** Captions embedding inputs as their first value; throws on -1; records each call's inputs and overlap. */
function fakeModel(): CaptionModel & { calls: number[][]; overlapped: boolean } {
  let running = false;
  const m = {
    calls: [] as number[][],
    overlapped: false,
    async caption(inputs: readonly CaptionInput[]): Promise<CaptionResult[]> {
      if (running) m.overlapped = true;
      running = true;
      const values = inputs.map((x) => Number((x as EmbeddingInput).embedding[0]));
      m.calls.push(values);
      await new Promise((r) => setTimeout(r, 20));
      running = false;
      if (values.includes(-1)) throw new UserError('no CLIP model was given');
      return values.map((v, index) => ({ index, caption: `c${v}`, tokens: [v] }));
    },
  };
  return m;
}

const emb = (...v: number[]): CaptionInput[] => v.map((x) => ({ embedding: [x] }));

describe('Batcher', () => {
  it('groups same-option requests into one call, splits by key and size, one call at a time', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 30, maxBatch: 4 });
    const [r1, r2, r3, r4] = await Promise.all([
      b.submit(emb(1, 2), {}, 'a'),
      b.submit(emb(3), {}, 'a'),
      b.submit(emb(4), { method: 'greedy' }, 'b'),
      b.submit(emb(5, 6), {}, 'a'), // would make 5 > maxBatch: starts a new batch
    ]);
    expect(r1.map((r) => [r.index, r.tokens])).toEqual([
      [0, [1]],
      [1, [2]],
    ]);
    expect(r2.map((r) => [r.index, r.tokens])).toEqual([[0, [3]]]);
    expect(r3.map((r) => r.tokens)).toEqual([[4]]);
    expect(r4.map((r) => [r.index, r.tokens])).toEqual([
      [0, [5]],
      [1, [6]],
    ]);
    expect(m.calls).toEqual([[1, 2, 3], [4], [5, 6]]);
    expect(m.overlapped).toBe(false);
    expect(b.calls).toBe(3);
  });

  it('a request that fails the whole call fails alone; the others are answered', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 20, maxBatch: 16 });
    const good = b.submit(emb(7), {}, 'k');
    const bad = b.submit(emb(-1), {}, 'k');
    await expect(bad).rejects.toThrow(/no CLIP model/);
    expect((await good)[0].tokens).toEqual([7]);
    expect(m.calls).toEqual([[7, -1], [7], [-1]]);
  });

  it('drain() runs waiting batches at once', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 60_000, maxBatch: 16 });
    const p = b.submit(emb(9), {}, 'k');
    await b.drain();
    expect((await p)[0].tokens).toEqual([9]);
  });
});
