/** The two-layer feed-forward block of every transformer here: fc1 -> activation -> fc2. */
import type { Tensor } from '../engine/tensor.js';
import { Activation, type ActivationKind } from './activation.js';
import type { Linear } from './linear.js';

export class FeedForward {
  readonly act: Activation;

  /**
   * @param fuseActivation inference runs the activation inside fc1's product (matmul's `activation`
   *   option) where the backend supports 'matmulActivation': the same values, one pass over the hidden
   *   activations fewer.
   */
  constructor(
    readonly fc1: Linear,
    readonly fc2: Linear,
    activation: ActivationKind,
    readonly fuseActivation = false,
  ) {
    this.act = new Activation(activation);
  }

  /** x: (..., C) -> (..., C) */
  forward(x: Tensor, record = false): Tensor {
    const b = x.backend;
    if (this.fuseActivation && !record && b.supports('matmulActivation')) {
      const a = this.fc1.forward(x, false, this.act.kernel); // (..., hidden) after the activation
      const y = this.fc2.forward(a);
      b.free(a);
      return y;
    }
    const h = this.fc1.forward(x, record);
    const a = this.act.forward(h, record);
    const y = this.fc2.forward(a, record);
    if (!record) {
      b.free(h);
      if (a !== h) b.free(a);
    }
    return y;
  }

  backward(dy: Tensor): Tensor {
    const b = dy.backend;
    const da = this.fc2.backward(dy) as Tensor;
    const dh = this.act.backward(da);
    b.free(da);
    const dx = this.fc1.backward(dh) as Tensor;
    b.free(dh);
    return dx;
  }
}
