/**
 * The server's micro-batcher against a fake model: grouping by options, the batch-size cap, one model call at
 * a time, and a failing call that only fails the request that caused it.
 */
import { describe, expect, it } from 'vitest';
import { Batcher, TimeoutError, type CaptionModel } from '../../src/server/batcher.js';
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
      b.submit(emb(5, 6), {}, 'a'), // 5 > maxBatch: split, its first input fills the first call
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
    // First come, first served: the oldest request picks the next call's options.
    expect(m.calls).toEqual([[1, 2, 3, 5], [4], [6]]);
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

  it('a call never holds more than maxRows decoding rows; a big request is split over calls', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 5, maxBatch: 16, maxRows: 10 });
    // 4 rows per input: at most 2 inputs (8 rows) per call.
    const big = b.submit(emb(1, 2, 3, 4, 5), {}, 'beam4', { rowsPerInput: 4 });
    const r = await big;
    expect(r.map((x) => [x.index, x.tokens![0]])).toEqual([
      [0, 1],
      [1, 2],
      [2, 3],
      [3, 4],
      [4, 5],
    ]);
    expect(m.calls).toEqual([[1, 2], [3, 4], [5]]);
    await expect(b.submit(emb(1), {}, 'beam11', { rowsPerInput: 11 })).rejects.toThrow(/11 rows/);
  });

  it('a request past its deadline fails with a TimeoutError and its inputs are not run', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 0, maxBatch: 1 });
    const first = b.submit(emb(1), {}, 'k'); // holds the model for ~20 ms
    const late = b.submit(emb(2, 3, 4), {}, 'k', { deadlineMs: 30 });
    await expect(late).rejects.toBeInstanceOf(TimeoutError);
    await first;
    await new Promise((r) => setTimeout(r, 60));
    // The late request's first input may have started before the deadline; the rest never ran.
    expect(m.calls.flat().filter((v) => v === 4)).toEqual([]);
  });

  it('drain() resolves when the last waiting request times out', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 60_000, maxBatch: 16 });
    const first = b.submit(emb(1), {}, 'a');
    const late = b.submit(emb(2), {}, 'b', { deadlineMs: 10 });
    late.catch(() => undefined);
    await b.drain();
    await expect(late).rejects.toBeInstanceOf(TimeoutError);
    expect((await first)[0].tokens).toEqual([1]);
  });

  it('drain() runs waiting batches at once', async () => {
    const m = fakeModel();
    const b = new Batcher(m, { windowMs: 60_000, maxBatch: 16 });
    const p = b.submit(emb(9), {}, 'k');
    await b.drain();
    expect((await p)[0].tokens).toEqual([9]);
  });
});
