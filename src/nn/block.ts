/**
 * The pre-LayerNorm transformer block shared by GPT-2, both CLIP towers and the ClipCap transformer mapper:
 *   x1 = x + drop(attn(ln1(x)));  y = x1 + drop(mlp(ln2(x1)))
 * (dropout only in GPT-2's train mode: resid_pdrop after each residual branch, as Hugging Face applies it,
 * and attn_pdrop on the attention probabilities inside attn, see SelfAttention).
 */
import type { Tensor } from '../engine/tensor.js';
import { SelfAttention, type AttentionContext } from './attention.js';
import { Dropout } from './dropout.js';
import type { LayerNorm } from './layernorm.js';
import { Linear } from './linear.js';
import type { FeedForward } from './mlp.js';
import type { SeedSequence } from '../util/random.js';

export interface BlockRun {
  /** Keep what backward needs. */
  record?: boolean;
  /** Train-mode dropout seeds; null/undefined = eval mode. */
  seeds?: SeedSequence | null;
}

export class PreLnBlock {
  readonly dropAttn: Dropout;
  readonly dropMlp: Dropout;

  constructor(
    readonly ln1: LayerNorm,
    readonly attn: SelfAttention,
    readonly ln2: LayerNorm,
    readonly mlp: FeedForward,
    residDropout = 0,
  ) {
    this.dropAttn = new Dropout(residDropout);
    this.dropMlp = new Dropout(residDropout);
  }

  /** Every Linear of the block: the attention projections, then the MLP's (to pack them for inference). */
  linears(): Linear[] {
    const proj = Object.values(this.attn.proj).filter((v): v is Linear => v instanceof Linear);
    return [...proj, this.mlp.fc1, this.mlp.fc2];
  }

  /** x: (B, T, C) -> (B, T, C). x itself is left alive (the caller owns it). */
  forward(x: Tensor, ctx: AttentionContext, run: BlockRun = {}): Tensor {
    const b = x.backend;
    const record = run.record ?? false;
    const seeds = run.seeds ?? null;
    const h = this.ln1.forward(x, record);
    const a = this.attn.forward(h, ctx, record, seeds);
    const ad = this.dropAttn.forward(a, seeds, record);
    const x1 = residual(x, ad, record);
    const h2 = this.ln2.forward(x1, record);
    const m = this.mlp.forward(h2, record);
    const md = this.dropMlp.forward(m, seeds, record);
    const y = residual(x1, md, record);
    if (!record) {
      for (const t of new Set([h, a, ad, x1, h2, m, md])) if (t !== y) b.free(t);
    }
    return y;
  }

  /** dy: (B, T, C) -> dx */
  backward(dy: Tensor): Tensor {
    const b = dy.backend;
    const dm = this.dropMlp.backward(dy);
    const dh2 = this.mlp.backward(dm);
    if (dm !== dy) b.free(dm);
    const dx1 = this.ln2.backward(dh2);
    b.free(dh2);
    b.addInPlace(dx1, dy);
    const da = this.dropAttn.backward(dx1);
    const dh = this.attn.backward(da);
    if (da !== dx1) b.free(da);
    const dx = this.ln1.backward(dh);
    b.free(dh);
    b.addInPlace(dx, dx1);
    b.free(dx1);
    return dx;
  }
}

/**
 * x + f (the residual add). Without recording, f (a temporary this block made: an output projection or its
 * dropout) takes the sum in place, saving a (B, T, C) allocation; addition commutes exactly, so the values
 * are the same as binary('add', x, f). Recording keeps f as the backward may still need it.
 */
function residual(x: Tensor, f: Tensor, record: boolean): Tensor {
  const b = x.backend;
  if (record || f === x || f.isView) return b.binary('add', x, f);
  b.addInPlace(f, x);
  return f;
}
