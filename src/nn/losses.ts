/** Losses with their gradients (the backend computes both; this pairs them and handles empty targets). */
import type { Tensor } from '../engine/tensor.js';

export interface CrossEntropyOutput {
  /** Mean cross-entropy over counted rows (targets != ignoreIndex); NaN when none counts. */
  loss: number;
  count: number;
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
  const { loss, count } = b.crossEntropy(logits, targets, ignoreIndex);
  if (!withGrad) return { loss, count };
  const dlogits = count > 0 ? b.crossEntropyBackward(logits, targets, ignoreIndex) : b.zeros(logits.shape);
  return { loss, count, dlogits };
}
