/**
 * Trainable tensors. A Parameter owns its value and, lazily, its gradient and the AdamW moments, all on the
 * backend of the value. Layers accumulate into `grad` (+=) in their backward passes, as llm.c does, so a
 * training step is: zeroGrad -> forward (recording) -> backward -> optimizer step.
 */
import { persist } from '../engine/memory.js';
import type { Tensor } from '../engine/tensor.js';

export class Parameter {
  /** Gradient, allocated (zero-filled) on first use. */
  grad: Tensor | null = null;
  /** AdamW first and second moments, allocated by the optimizer. */
  m: Tensor | null = null;
  v: Tensor | null = null;
  /**
   * When false, backward passes skip this parameter's gradient (frozen GPT-2) but still propagate
   * gradients through the layer to its input.
   */
  requiresGrad = true;

  constructor(
    /** Canonical name (the checkpoint key this value came from). */
    readonly name: string,
    public value: Tensor,
  ) {}

  get shape(): readonly number[] {
    return this.value.shape;
  }

  /** The gradient tensor, allocated zero-filled when first needed (outlives any scope it is made in). */
  gradTensor(): Tensor {
    this.grad ??= persist(this.value.backend.zeros(this.value.shape));
    return this.grad;
  }

  zeroGrad(): void {
    if (this.grad) this.value.backend.fill(this.grad, 0);
  }

  /** Release the value, gradient and moments. */
  dispose(): void {
    const b = this.value.backend;
    for (const t of [this.value, this.grad, this.m, this.v]) if (t) b.free(t);
    this.grad = this.m = this.v = null;
  }
}

/** Zero the gradients of many parameters. */
export function zeroGrads(params: Iterable<Parameter>): void {
  for (const p of params) p.zeroGrad();
}

/** Parameters by name, refusing duplicates (a model's table of everything it trains). */
export function parameterMap(params: Iterable<Parameter>): Map<string, Parameter> {
  const out = new Map<string, Parameter>();
  for (const p of params) {
    if (out.has(p.name)) throw new Error(`duplicate parameter name ${p.name}`);
    out.set(p.name, p);
  }
  return out;
}
