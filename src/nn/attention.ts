/**
 * Multi-head self-attention layers. The softmax(q·kᵀ/√d)·v core is one backend kernel (heads interleaved in
 * the channel axis, as GPT-2, CLIP and the ClipCap mapper all store them); this file only differs in how
 * q, k and v are projected, which is where the three model families disagree:
 * - gpt2:   one Conv1D c_attn (C -> 3C, bias), split [q | k | v]; output c_proj (Conv1D).
 * - clip:   separate q_proj, k_proj, v_proj (nn.Linear with bias); output out_proj.
 * - mapper: to_queries (no bias) and to_keys_values (C -> 2C, no bias) whose output the official code views
 *           as (b, m, 2, h, d): index 0 along the "2" axis (channels 0..C-1) are the keys, index 1 the values,
 *           each with heads interleaved as usual; output `project` (with bias).
 * GPT-2's attn_pdrop (dropout on the softmax probabilities, train mode only) is the kernel's `dropout`
 * option: each forward draws one seed, and the backward regenerates the same mask from it.
 */
import type { Tensor } from '../engine/tensor.js';
import type { AttentionOptions, AttentionSaved } from '../engine/backend.js';
import type { Linear } from './linear.js';
import type { SeedSequence } from '../util/random.js';

export type AttentionProjections =
  | { kind: 'fused_qkv'; qkv: Linear; out: Linear }
  | { kind: 'separate'; q: Linear; k: Linear; v: Linear; out: Linear }
  | { kind: 'q_kv'; q: Linear; kv: Linear; out: Linear };

/** A preallocated key/value buffer of one layer: (B, maxLength, C) each. */
export interface LayerKv {
  k: Tensor;
  v: Tensor;
}

export interface AttentionContext {
  causal: boolean;
  /** Key padding mask (B, Tk) f32, 1 = attend. */
  keyMask?: Tensor;
  /** Incremental decoding: append this call's keys/values at `offset` and attend to all offset + T of them. */
  cache?: { kv: LayerKv; offset: number };
}

export class SelfAttention {
  private saved: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    state: AttentionSaved;
    opts: AttentionOptions;
  } | null = null;

  /**
   * @param probDropout dropout probability on the attention probabilities in train mode (GPT-2
   *   attn_pdrop); 0 (CLIP, the mapper) never drops.
   */
  constructor(
    readonly proj: AttentionProjections,
    readonly nHead: number,
    readonly width: number,
    readonly probDropout = 0,
  ) {
    if (width % nHead !== 0) throw new Error(`attention width ${width} is not divisible by ${nHead} heads`);
    if (!(probDropout >= 0 && probDropout < 1))
      throw new Error(`attention dropout probability must be in [0, 1), got ${probDropout}`);
  }

  /**
   * x: (B, T, C) -> (B, T, C). With `seeds` (train mode) and probDropout > 0, the probabilities are
   * dropped with the next seed (none is drawn otherwise, so p = 0 leaves the seed sequence as it was).
   */
  forward(x: Tensor, ctx: AttentionContext, record = false, seeds: SeedSequence | null = null): Tensor {
    const b = x.backend;
    const opts: AttentionOptions = { nHead: this.nHead, causal: ctx.causal, keyMask: ctx.keyMask };
    const p = this.proj;
    if (p.kind === 'fused_qkv' && !record && !ctx.cache && b.supports('attentionQkv')) {
      // Inference over one fused projection: attention reads q, k and v in place from its (B, T, 3C)
      // output instead of three sliced copies.
      if (seeds && this.probDropout > 0) opts.dropout = { p: this.probDropout, seed: seeds.next() };
      const qkv = p.qkv.forward(x); // (B, T, 3C)
      const att = b.attentionQkv(qkv, opts);
      b.free(qkv);
      const y = p.out.forward(att);
      b.free(att);
      return y;
    }
    const [q, k, v] = this.project(x, record);
    if (seeds && this.probDropout > 0) opts.dropout = { p: this.probDropout, seed: seeds.next() };
    let att: Tensor;
    if (ctx.cache) {
      if (record) throw new Error('attention: a KV-cache step cannot record for backward');
      const { kv, offset } = ctx.cache;
      b.writeSlice(kv.k, k, 1, offset);
      b.writeSlice(kv.v, v, 1, offset);
      b.free(k);
      b.free(v);
      att = b.attention(q, kv.k, kv.v, { ...opts, kvLength: offset + x.shape[1] }).out;
      b.free(q);
    } else {
      const r = b.attention(q, k, v, { ...opts, record });
      att = r.out;
      if (record) {
        if (!r.saved) throw new Error(`${b.name} backend: attention did not return its saved state`);
        this.saved = { q, k, v, state: r.saved, opts };
      } else {
        for (const t of [q, k, v]) b.free(t);
      }
    }
    const y = this.proj.out.forward(att, record);
    if (!record) b.free(att);
    return y;
  }

  /** dy: (B, T, C) -> dx (B, T, C); accumulates the projections' gradients. */
  backward(dy: Tensor): Tensor {
    const s = this.saved;
    if (!s) throw new Error('attention: backward without a recorded forward');
    this.saved = null;
    const b = dy.backend;
    const datt = this.proj.out.backward(dy) as Tensor;
    const { dq, dk, dv } = b.attentionBackward(datt, s.q, s.k, s.v, s.state, s.opts);
    s.state.free();
    for (const t of [datt, s.q, s.k, s.v]) b.free(t);
    const p = this.proj;
    let dx: Tensor;
    switch (p.kind) {
      case 'fused_qkv': {
        const dqkv = b.concat([dq, dk, dv], 2);
        dx = p.qkv.backward(dqkv) as Tensor;
        b.free(dqkv);
        break;
      }
      case 'separate': {
        dx = p.q.backward(dq) as Tensor;
        for (const [lin, d] of [
          [p.k, dk],
          [p.v, dv],
        ] as const) {
          const part = lin.backward(d) as Tensor;
          b.addInPlace(dx, part);
          b.free(part);
        }
        break;
      }
      case 'q_kv': {
        dx = p.q.backward(dq) as Tensor;
        const dkv = b.concat([dk, dv], 2);
        const part = p.kv.backward(dkv) as Tensor;
        b.addInPlace(dx, part);
        b.free(part);
        b.free(dkv);
        break;
      }
    }
    for (const t of [dq, dk, dv]) b.free(t);
    return dx;
  }

  /** q, k, v: (B, T, C) each. */
  private project(x: Tensor, record: boolean): [Tensor, Tensor, Tensor] {
    const b = x.backend;
    const c = this.width;
    const p = this.proj;
    switch (p.kind) {
      case 'fused_qkv': {
        const qkv = p.qkv.forward(x, record); // (B, T, 3C)
        const out: [Tensor, Tensor, Tensor] = [
          b.slice(qkv, 2, 0, c),
          b.slice(qkv, 2, c, 2 * c),
          b.slice(qkv, 2, 2 * c, 3 * c),
        ];
        b.free(qkv);
        return out;
      }
      case 'separate':
        return [p.q.forward(x, record), p.k.forward(x, record), p.v.forward(x, record)];
      case 'q_kv': {
        const kv = p.kv.forward(x, record); // (B, T, 2C): (b, m, 2, h, d) in the official code
        const out: [Tensor, Tensor, Tensor] = [
          p.q.forward(x, record),
          b.slice(kv, 2, 0, c),
          b.slice(kv, 2, c, 2 * c),
        ];
        b.free(kv);
        return out;
      }
    }
  }
}
