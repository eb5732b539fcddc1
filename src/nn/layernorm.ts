/** LayerNorm over the last axis with an explicit backward (PyTorch semantics: biased variance, eps inside). */
import type { Tensor } from '../engine/tensor.js';
import type { Parameter } from './parameter.js';

export class LayerNorm {
  private saved: { x: Tensor; mean: Tensor; rstd: Tensor } | null = null;

  constructor(
    readonly weight: Parameter,
    readonly bias: Parameter,
    readonly eps: number,
  ) {}

  /** x: (..., C) -> (..., C) */
  forward(x: Tensor, record = false): Tensor {
    const r = x.backend.layerNorm(x, this.weight.value, this.bias.value, this.eps);
    if (record) this.saved = { x, mean: r.mean, rstd: r.rstd };
    else {
      x.backend.free(r.mean);
      x.backend.free(r.rstd);
    }
    return r.y;
  }

  /** dy: (..., C) -> dx; accumulates into the weight and bias gradients. */
  backward(dy: Tensor): Tensor {
    const s = this.saved;
    if (!s) throw new Error(`${this.weight.name}: backward without a recorded forward`);
    const b = dy.backend;
    // A frozen parameter's gradient goes to a throwaway buffer (the kernel always accumulates both).
    const dw = this.weight.requiresGrad ? this.weight.gradTensor() : b.zeros(this.weight.shape);
    const db = this.bias.requiresGrad ? this.bias.gradTensor() : b.zeros(this.bias.shape);
    const dx = b.layerNormBackward(dy, s.x, this.weight.value, s.mean, s.rstd, dw, db);
    if (!this.weight.requiresGrad) b.free(dw);
    if (!this.bias.requiresGrad) b.free(db);
    b.free(s.mean);
    b.free(s.rstd);
    this.saved = null;
    return dx;
  }
}
