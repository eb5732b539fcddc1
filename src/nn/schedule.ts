/**
 * Learning-rate schedules, as multipliers of the base rate indexed by the 0-based optimizer step.
 *
 * The official ClipCap training uses transformers' get_linear_schedule_with_warmup with PyTorch's LambdaLR:
 * optimizer step s (0-based) runs at lr · f(s), so the very first step has lr 0 (it still updates the AdamW
 * moments), then the rate rises linearly for `warmupSteps` steps and falls linearly to 0 at `totalSteps`.
 */
export type LrSchedule = (step: number) => number;

/** transformers.get_linear_schedule_with_warmup's lr_lambda. */
export function linearWarmupSchedule(warmupSteps: number, totalSteps: number): LrSchedule {
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0)
    throw new Error(`warmup steps must be a non-negative integer, got ${warmupSteps}`);
  if (!Number.isInteger(totalSteps) || totalSteps < 0)
    throw new Error(`total steps must be a non-negative integer, got ${totalSteps}`);
  return (step: number): number => {
    if (step < warmupSteps) return step / Math.max(1, warmupSteps);
    return Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
  };
}

/** A constant rate (multiplier 1). */
export const constantSchedule: LrSchedule = () => 1;
