/** Losses with their gradients (the backend computes both; this pairs them). */
import type { Tensor } from '../engine/tensor.js';

export interface CrossEntropyOutput {
  /**
   * Mean cross-entropy over counted rows (targets != ignoreIndex); NaN when none counts. Read
   * asynchronously: a device backend computes it in its queue and the caller awaits it when it needs it.
   */
  loss: Promise<number>;
  /** d(loss)/d(logits) (N, V) when requested: zeros when no row counts (PyTorch gives NaN there). */
  dlogits?: Tensor;
}

/**
 * torch.nn.functional.cross_entropy(logits, targets, ignore_index) with mean reduction.
 * logits (N, V), targets (N) i32.
 */
export function crossEntropyLoss(
  logits: Tensor,
  targets: Tensor,
  ignoreIndex: number,
  withGrad = false,
): CrossEntropyOutput {
  const b = logits.backend;
  const loss = b.crossEntropy(logits, targets, ignoreIndex);
  if (!withGrad) return { loss };
  return { loss, dlogits: b.crossEntropyBackward(logits, targets, ignoreIndex) };
}
