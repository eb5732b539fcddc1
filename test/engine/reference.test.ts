/**
 * What only the reference backend promises, beyond the shared kernel suite (kernels.test.ts): misuse is
 * reported clearly instead of silently computing on stale or foreign memory.
 */
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../../src/engine/reference.js';
import { mulberry32At } from '../../src/util/random.js';
import { ShapeError } from '../../src/engine/backend.js';
import type { Backend } from '../../src/engine/backend.js';
import { Allocation, Tensor } from '../../src/engine/tensor.js';
import { mulberry32 } from './naive.js';

describe('reference backend', () => {
  const be = new ReferenceBackend();

  it('free releases the storage: later use of the tensor or a view of it throws', () => {
    const t = be.upload(new Float32Array([1, 2, 3, 4]), [2, 2]);
    const view = t.view([4]);
    be.free(t);
    expect(() => be.download(t)).toThrow(/used after free/);
    expect(() => be.activation('relu', view)).toThrow(/used after free/);
    expect(() => be.free(view)).not.toThrow();
  });

  it('accepts tensors of another ReferenceBackend instance, refuses other backends', async () => {
    const other = new ReferenceBackend();
    const a = other.upload(new Float32Array([1, -1]), [2]);
    expect(Array.from(await be.download(be.activation('relu', a)))).toEqual([1, 0]);
    const foreign = new Tensor({ name: 'native' } as Backend, new Allocation(new Float32Array(2), 8), [2]);
    expect(() => be.activation('relu', foreign)).toThrow(/native backend/);
  });

  it('rejects wrong dtypes and aliasing outputs with ShapeError', () => {
    const ids = be.upload(new Int32Array([1, 2]), [2]);
    expect(() => be.activation('gelu', ids)).toThrow(ShapeError);
    expect(() => be.fill(ids, 0.5)).toThrow(ShapeError);
    const a = be.upload(new Float32Array(4), [2, 2]);
    expect(() => be.matmul(a, a, { out: a })).toThrow(/share storage/);
    expect(() => be.writeSlice(a, a.view([2, 2]), 0, 0)).toThrow(/share storage/);
  });

  it('mulberry32At(seed, i) is draw i+1 of the sequential generator, for any seed', () => {
    for (const seed of [0, 1, 1234, 2 ** 31 - 1, 2 ** 32 - 1, -5]) {
      const next = mulberry32(seed);
      for (let i = 0; i < 1000; i++) expect(mulberry32At(seed, i)).toBe(next());
    }
  });
});
