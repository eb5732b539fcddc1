/**
 * Inverted dropout (as torch.nn.Dropout in train mode): y = x · mask, mask = 0 or 1/(1-p), drawn by the
 * backend from a seed. Identity in eval mode or with p = 0, in which case nothing is recorded. The mask is
 * never stored: the backward runs the same op on dy with the same seed (the engine's one dropout rule).
 */
import type { Tensor } from '../engine/tensor.js';
import type { SeedSequence } from '../util/random.js';

export class Dropout {
  /** The seed of the last recorded forward (null: it was the identity). */
  private seed: number | null = null;

  constructor(readonly p: number) {
    if (!(p >= 0 && p < 1)) throw new Error(`dropout probability must be in [0, 1), got ${p}`);
  }

  /** With `seeds` (train mode) and p > 0, drops; otherwise returns x itself. */
  forward(x: Tensor, seeds: SeedSequence | null, record = false): Tensor {
    this.seed = null;
    if (!seeds || this.p === 0) return x;
    const seed = seeds.next();
    if (record) this.seed = seed;
    return x.backend.dropout(x, this.p, seed);
  }

  backward(dy: Tensor): Tensor {
    const seed = this.seed;
    if (seed === null) return dy; // the forward was the identity
    this.seed = null;
    return dy.backend.dropout(dy, this.p, seed);
  }
}
