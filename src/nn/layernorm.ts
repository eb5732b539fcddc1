/** LayerNorm over the last axis with an explicit backward (PyTorch semantics: biased variance, eps inside). */
import { persist } from '../engine/memory.js';
import type { Tensor } from '../engine/tensor.js';
import type { Parameter } from './parameter.js';

export class LayerNorm {
  private saved: { x: Tensor; mean: Tensor; rstd: Tensor } | null = null;
  /** Throwaway gradient buffers for frozen parameters (the backend kernel always accumulates them). */
  private scratch: { w: Tensor; b: Tensor } | null = null;

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
    let dw: Tensor;
    let db: Tensor;
    if (this.weight.requiresGrad || this.bias.requiresGrad) {
      dw = this.weight.requiresGrad ? this.weight.gradTensor() : this.scratchBuffers().w;
      db = this.bias.requiresGrad ? this.bias.gradTensor() : this.scratchBuffers().b;
    } else {
      ({ w: dw, b: db } = this.scratchBuffers());
    }
    const dx = b.layerNormBackward(dy, s.x, this.weight.value, s.mean, s.rstd, dw, db);
    b.free(s.mean);
    b.free(s.rstd);
    this.saved = null;
    return dx;
  }

  private scratchBuffers(): { w: Tensor; b: Tensor } {
    const b = this.weight.value.backend;
    this.scratch ??= { w: persist(b.zeros(this.weight.shape)), b: persist(b.zeros(this.bias.shape)) };
    return this.scratch;
  }
}
