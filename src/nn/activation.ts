/** Pointwise activations with their backward passes, named as the model configs name them. */
import type { Tensor } from '../engine/tensor.js';

/** gelu_new (GPT-2, tanh approximation), quick_gelu (CLIP), relu (ClipCap transformer mapper), tanh (MLP mapper). */
export type ActivationKind = 'gelu_new' | 'quick_gelu' | 'relu' | 'tanh';

export class Activation {
  /** The forward's input (gelu, quick_gelu, relu) or output (tanh), whichever its backward kernel takes. */
  private saved: Tensor | null = null;

  constructor(readonly kind: ActivationKind) {}

  forward(x: Tensor, record = false): Tensor {
    const b = x.backend;
    let y: Tensor;
    switch (this.kind) {
      case 'gelu_new':
        y = b.gelu(x);
        break;
      case 'quick_gelu':
        y = b.quickGelu(x);
        break;
      case 'relu':
        y = b.relu(x);
        break;
      case 'tanh':
        y = b.tanh(x);
        break;
    }
    if (record) this.saved = this.kind === 'tanh' ? y : x;
    return y;
  }

  backward(dy: Tensor): Tensor {
    const s = this.saved;
    if (!s) throw new Error(`${this.kind}: backward without a recorded forward`);
    this.saved = null;
    const b = dy.backend;
    switch (this.kind) {
      case 'gelu_new':
        return b.geluBackward(dy, s);
      case 'quick_gelu':
        return b.quickGeluBackward(dy, s);
      case 'relu':
        return b.reluBackward(dy, s);
      case 'tanh':
        return b.tanhBackward(dy, s);
    }
  }
}

/** Map a Hugging Face `activation_function` / `hidden_act` string to ours. */
export function activationKind(name: string): ActivationKind {
  switch (name) {
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
      return 'gelu_new';
    case 'quick_gelu':
      return 'quick_gelu';
    case 'relu':
      return 'relu';
    case 'tanh':
      return 'tanh';
    default:
      throw new Error(`unsupported activation "${name}" (supported: gelu_new, quick_gelu, relu, tanh)`);
  }
}
