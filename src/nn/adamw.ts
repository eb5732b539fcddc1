/**
 * AdamW over a list of Parameters, PyTorch's torch.optim.AdamW semantics (decoupled weight decay, bias
 * correction, eps added to the bias-corrected sqrt(v)), with an optional learning-rate schedule.
 * The official ClipCap run: lr 2e-5, betas (0.9, 0.999), eps 1e-6, weight decay 0, linear warmup.
 */
import { constantSchedule, type LrSchedule } from './schedule.js';
import type { Parameter } from './parameter.js';

export interface AdamWConfig {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/** The official ClipCap optimizer settings. */
export const CLIPCAP_ADAMW: AdamWConfig = { lr: 2e-5, beta1: 0.9, beta2: 0.999, eps: 1e-6, weightDecay: 0 };

export class AdamW {
  /** Optimizer steps taken so far (the next step's 0-based index). */
  stepCount = 0;
  readonly params: readonly Parameter[];
  /** Per-parameter step counts for bias correction (PyTorch counts only the steps a parameter took part in). */
  private readonly steps = new Map<Parameter, number>();

  constructor(
    params: Iterable<Parameter>,
    readonly config: AdamWConfig,
    readonly schedule: LrSchedule = constantSchedule,
  ) {
    this.params = [...params];
  }

  /** The learning rate the next step will use. */
  get currentLr(): number {
    return this.config.lr * this.schedule(this.stepCount);
  }

  /**
   * Update every parameter from its accumulated gradient (a parameter without one counts as a zero
   * gradient, as PyTorch skips it: we skip it too). Returns the learning rate used.
   */
  step(): number {
    const lr = this.currentLr;
    this.stepCount++;
    for (const p of this.params) {
      if (!p.grad) continue;
      const b = p.value.backend;
      p.m ??= b.zeros(p.shape);
      p.v ??= b.zeros(p.shape);
      const t = (this.steps.get(p) ?? 0) + 1;
      this.steps.set(p, t);
      b.adamw(p.value, p.grad, p.m, p.v, {
        lr,
        beta1: this.config.beta1,
        beta2: this.config.beta2,
        eps: this.config.eps,
        weightDecay: this.config.weightDecay,
        step: t,
      });
    }
    return lr;
  }

  zeroGrad(): void {
    for (const p of this.params) p.zeroGrad();
  }

  /** Bias-correction steps `p` has taken (0 before its first update): part of a resumable checkpoint. */
  paramSteps(p: Parameter): number {
    return this.steps.get(p) ?? 0;
  }

  /**
   * Continue from a checkpoint: `stepCount` steps taken, each parameter's own count, and its moments (m, v as
   * host arrays of its shape; a parameter with count 0 has none yet).
   */
  restore(
    stepCount: number,
    perParam: Map<Parameter, { steps: number; m: Float32Array; v: Float32Array }>,
  ): void {
    this.stepCount = stepCount;
    for (const p of this.params) {
      const s = perParam.get(p);
      if (!s || s.steps === 0) continue;
      const b = p.value.backend;
      if (p.m) b.free(p.m);
      if (p.v) b.free(p.v);
      p.m = b.upload(s.m, p.shape);
      p.v = b.upload(s.v, p.shape);
      this.steps.set(p, s.steps);
    }
  }
}
