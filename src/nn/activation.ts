/** Pointwise activations with their backward passes, named as the model configs name them. */
import type { ActivationKind as BackendActivation } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';

/** gelu_new (GPT-2, tanh approximation), quick_gelu (CLIP), relu (ClipCap transformer mapper), tanh (MLP mapper). */
export type ActivationKind = 'gelu_new' | 'quick_gelu' | 'relu' | 'tanh';

export class Activation {
  /** The forward's input (gelu, quick_gelu, relu) or output (tanh), whichever its backward kernel takes. */
  private saved: Tensor | null = null;

  constructor(readonly kind: ActivationKind) {}

  /** The backend's name for this activation (what matmul's fused `activation` option takes). */
  get kernel(): BackendActivation {
    return KERNEL[this.kind];
  }

  forward(x: Tensor, record = false): Tensor {
    const y = x.backend.activation(KERNEL[this.kind], x);
    if (record) this.saved = this.kind === 'tanh' ? y : x;
    return y;
  }

  backward(dy: Tensor): Tensor {
    const s = this.saved;
    if (!s) throw new Error(`${this.kind}: backward without a recorded forward`);
    this.saved = null;
    return dy.backend.activationBackward(KERNEL[this.kind], dy, s);
  }
}

/** Config names -> the backend's activation kinds. */
const KERNEL: Record<ActivationKind, BackendActivation> = {
  gelu_new: 'gelu',
  quick_gelu: 'quickGelu',
  relu: 'relu',
  tanh: 'tanh',
};

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
