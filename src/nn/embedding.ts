/** Token / position embedding lookup with a scatter-add backward. */
import type { Tensor } from '../engine/tensor.js';
import type { Parameter } from './parameter.js';

export class Embedding {
  constructor(readonly table: Parameter) {}

  get count(): number {
    return this.table.shape[0];
  }

  get dim(): number {
    return this.table.shape[1];
  }

  /** ids (...) i32 -> (..., C) */
  forward(ids: Tensor): Tensor {
    return ids.backend.embedding(ids, this.table.value);
  }

  /** table.grad[ids[i]] += dy[i]; nothing when the table is frozen. */
  backward(dy: Tensor, ids: Tensor): void {
    if (!this.table.requiresGrad) return;
    dy.backend.embeddingBackward(dy, ids, this.table.gradTensor());
  }
}
