import { describe, expect, it } from 'vitest';
import { Tensor, shapeSize } from '../src/engine/tensor.js';

describe('Tensor', () => {
  it('computes sizes and rejects bad shapes', () => {
    expect(shapeSize([2, 3, 4])).toBe(24);
    expect(() => shapeSize([2, -1])).toThrow(/invalid dimension/);
    expect(Tensor).toBeTypeOf('function');
  });
});
