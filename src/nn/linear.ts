/**
 * Fully connected layer y = x·W (+ b) with an explicit backward.
 *
 * Two weight layouts occur in the checkpoints we load, and each layer says which one it holds:
 * - 'out_in': PyTorch nn.Linear, W is (out, in): y = x·Wᵀ (matmul with transB). CLIP, the mappers.
 * - 'in_out': GPT-2's Conv1D, W is (in, out): y = x·W (plain matmul). GPT-2 c_attn, c_proj, c_fc.
 * Keeping the file layout (instead of transposing at load time) lets checkpoints round-trip unchanged.
 */
import type { Tensor } from '../engine/tensor.js';
import { ShapeError } from '../engine/backend.js';
import type { ActivationKind as BackendActivation } from '../engine/backend.js';
import type { Parameter } from './parameter.js';

export type LinearLayout = 'out_in' | 'in_out';

export class Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** The input of the last recorded forward, kept for the weight gradient. */
  private savedX: Tensor | null = null;

  constructor(
    readonly weight: Parameter,
    readonly bias: Parameter | null,
    readonly layout: LinearLayout,
  ) {
    const [r, c] = weight.shape;
    if (weight.shape.length !== 2) throw new ShapeError(`${weight.name}: expected a 2-D weight`);
    [this.inFeatures, this.outFeatures] = layout === 'out_in' ? [c, r] : [r, c];
    if (bias && (bias.shape.length !== 1 || bias.shape[0] !== this.outFeatures))
      throw new ShapeError(
        `${bias.name}: expected shape [${this.outFeatures}], got [${bias.shape.join(', ')}]`,
      );
  }

  /**
   * Inference only: replaces the weight by its packed form (Backend.packWeight), which products read
   * without repacking it on every call, and frees the f32 copy (memory does not double). The weight no
   * longer requires gradients, and backward or any use of the weight other than forward's product throws.
   * A backend without packWeight keeps the weight as it is.
   */
  pack(): void {
    const w = this.weight;
    const b = w.value.backend;
    if (!b.supports('packWeight') || w.value.allocation.packed) return;
    const packed = b.packWeight(w.value, { transB: this.layout === 'out_in' });
    b.free(w.value);
    w.value = packed;
    w.requiresGrad = false;
  }

  /**
   * x: (..., in) -> (..., out). With `record`, keeps x for backward. With `activation` (inference only: the
   * backend must support 'matmulActivation'), returns f(x·W + b) from one fused product.
   */
  forward(x: Tensor, record = false, activation?: BackendActivation): Tensor {
    if (activation !== undefined && record)
      throw new Error(`${this.weight.name}: a fused activation cannot record for backward`);
    if (x.cols !== this.inFeatures)
      throw new ShapeError(`${this.weight.name}: input has ${x.cols} features, expected ${this.inFeatures}`);
    const b = x.backend;
    const x2 = x.view([x.rows, this.inFeatures]);
    const y = b.matmul(x2, this.weight.value, {
      transB: this.layout === 'out_in',
      bias: this.bias?.value,
      ...(activation !== undefined ? { activation } : {}),
    });
    if (record) this.savedX = x2;
    return y.reshape([...x.shape.slice(0, -1), this.outFeatures]);
  }

  /**
   * dy: (..., out). Accumulates dW (and db) when the parameters require gradients; returns dx (..., in),
   * or null when `needDx` is false (the first layer of a network whose input is data).
   */
  backward(dy: Tensor, needDx = true): Tensor | null {
    const x = this.savedX;
    if (!x) throw new Error(`${this.weight.name}: backward without a recorded forward`);
    const b = dy.backend;
    const dy2 = dy.view([dy.rows, this.outFeatures]);
    if (this.weight.requiresGrad) {
      // 'out_in': dW (out, in) += dyᵀ·x ; 'in_out': dW (in, out) += xᵀ·dy
      const [a, c] = this.layout === 'out_in' ? [dy2, x] : [x, dy2];
      b.matmul(a, c, { transA: true, out: this.weight.gradTensor(), accumulate: true });
    }
    if (this.bias?.requiresGrad) b.sumRows(dy2, this.bias.gradTensor(), true);
    this.savedX = null;
    if (!needDx) return null;
    // 'out_in': dx = dy·W ; 'in_out': dx = dy·Wᵀ
    const dx = b.matmul(dy2, this.weight.value, { transB: this.layout === 'in_out' });
    return dx.reshape([...dy.shape.slice(0, -1), this.inFeatures]);
  }
}
