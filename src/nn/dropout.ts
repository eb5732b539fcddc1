/**
 * Inverted dropout (as torch.nn.Dropout in train mode): y = x · mask, mask = 0 or 1/(1-p), drawn by the
 * backend from a seed. Identity in eval mode or with p = 0, in which case nothing is recorded.
 */
import type { Tensor } from '../engine/tensor.js';
import type { SeedSequence } from './random.js';

export class Dropout {
  private mask: Tensor | null = null;

  constructor(readonly p: number) {
    if (!(p >= 0 && p < 1)) throw new Error(`dropout probability must be in [0, 1), got ${p}`);
  }

  /** With `seeds` (train mode) and p > 0, drops; otherwise returns x itself. */
  forward(x: Tensor, seeds: SeedSequence | null, record = false): Tensor {
    this.mask = null;
    if (!seeds || this.p === 0) return x;
    const r = x.backend.dropout(x, this.p, seeds.next());
    if (record) this.mask = r.mask;
    else x.backend.free(r.mask);
    return r.y;
  }

  backward(dy: Tensor): Tensor {
    const m = this.mask;
    if (!m) return dy; // the forward was the identity
    this.mask = null;
    return dy.backend.mul(dy, m);
  }
}
