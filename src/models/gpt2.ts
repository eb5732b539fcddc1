/**
 * GPT-2 (Hugging Face GPT2LMHeadModel semantics) with an explicit backward and a KV cache.
 *
 * Weights use the canonical names of the hub's openai-community/gpt2 files (no `transformer.` prefix):
 * wte.weight (V, C), wpe.weight (P, C), h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj},
 * ln_f. The c_attn / c_proj / c_fc weights are Conv1D, stored (in, out): we keep that layout and multiply
 * without transposing (nanoGPT transposes them at load time instead). The LM head is tied to wte: logits =
 * h · wteᵀ, and its gradient accumulates into wte's together with the embedding's.
 *
 * Semantics matched to Hugging Face:
 * - hidden = inputs_embeds (or wte[ids]) + wpe[0..T-1]: positions count from 0 whatever the attention
 *   mask says (HF's default when position_ids are not given).
 * - attention_mask (B, T): masked keys are excluded for every query, on top of the causal mask.
 * - train mode: dropout embd_pdrop after the embeddings, attn_pdrop on the attention probabilities
 *   (before they multiply V) and resid_pdrop on each residual branch, from one seeded generator
 *   (setDropoutSeed): each dropout with p > 0 takes the next seed in forward order (embeddings, then per
 *   layer: attention probabilities, attention branch, MLP branch). Eval mode drops nothing.
 */
import type { Backend, WeightFormat } from '../engine/backend.js';
import { ShapeError } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import type { CausalLM, KvCache } from '../generate/lm.js';
import { activationKind } from '../nn/activation.js';
import { SelfAttention, type LayerKv } from '../nn/attention.js';
import { PreLnBlock } from '../nn/block.js';
import { Dropout } from '../nn/dropout.js';
import { Embedding } from '../nn/embedding.js';
import { LayerNorm } from '../nn/layernorm.js';
import { Linear } from '../nn/linear.js';
import { FeedForward } from '../nn/mlp.js';
import type { Parameter } from '../nn/parameter.js';
import { SeedSequence } from '../util/random.js';
import { gpt2KeySpec, isGpt2Buffer } from '../weights/families/gpt2.js';
import type { StateDict } from '../weights/host.js';
import type { Gpt2Config } from '../config/models.js';
import { checkWeights, uploadParam } from './weights.js';

/** Keys a GPT-2 state dict may carry that are not parameters: causal-mask buffers and the tied head. */
export function isGpt2IgnoredKey(name: string): boolean {
  return isGpt2Buffer(name) || name === 'lm_head.weight';
}

export interface Gpt2ForwardOptions {
  /** Token ids (B, T) i32. Exactly one of ids / embeds. */
  ids?: Tensor;
  /** inputs_embeds (B, T, C). */
  embeds?: Tensor;
  /** (B, T) f32, 1 = real token, 0 = padding (excluded as a key). */
  attentionMask?: Tensor;
  /** Which logits to compute: every position (B, T, V), the last one (B, V), or none. Default 'all'. */
  logits?: 'all' | 'last' | 'none';
  /** Keep what backward() needs. */
  record?: boolean;
  /** Train mode: dropout on (seeded by setDropoutSeed). */
  train?: boolean;
}

export interface Gpt2Output {
  /** Final hidden states after ln_f, (B, T, C). With logits 'last' and no recording: (B, 1, C). */
  hidden: Tensor;
  logits?: Tensor;
}

/**
 * Preallocated keys/values of every layer: (B, maxLength, C) per layer and per k/v. Beam search reorders
 * rows every step (select): the rows go into a second set of buffers of the same shape, kept for the next
 * reorder, copying only the filled positions, so a step allocates nothing.
 */
export class Gpt2KvCache implements KvCache {
  private disposed = false;

  constructor(
    readonly backend: Backend,
    readonly layers: LayerKv[],
    readonly batch: number,
    readonly maxLength: number,
    public length: number,
    /** Buffers shaped like `layers` that select() writes into (null until the first select). */
    private spare: LayerKv[] | null = null,
  ) {}

  select(indices: readonly number[]): Gpt2KvCache {
    this.check();
    for (const i of indices)
      if (!Number.isInteger(i) || i < 0 || i >= this.batch)
        throw new RangeError(`KvCache.select: row ${i} is outside 0..${this.batch - 1}`);
    const b = this.backend;
    const n = indices.length;
    const sameRows = n === this.batch;
    const alloc = (like: Tensor): Tensor => b.zeros([n, ...like.shape.slice(1)]);
    // Same row count: the spare set (made once); otherwise new buffers, and the spare set goes.
    const target = sameRows
      ? (this.spare ?? this.layers.map((l) => ({ k: alloc(l.k), v: alloc(l.v) })))
      : this.layers.map((l) => ({ k: alloc(l.k), v: alloc(l.v) }));
    this.layers.forEach((l, i) => {
      b.copyRows(target[i].k, l.k, indices, this.length);
      b.copyRows(target[i].v, l.v, indices, this.length);
    });
    const next = new Gpt2KvCache(b, target, n, this.maxLength, this.length, sameRows ? this.layers : null);
    if (sameRows) {
      this.spare = null;
      this.disposed = true; // its buffers now belong to `next`
    } else this.dispose();
    return next;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const l of [...this.layers, ...(this.spare ?? [])]) {
      this.backend.free(l.k);
      this.backend.free(l.v);
    }
    this.spare = null;
  }

  /** @internal */
  check(): void {
    if (this.disposed) throw new Error('KvCache used after dispose() or select()');
  }
}

export class Gpt2Model implements CausalLM {
  readonly wte: Embedding;
  readonly wpe: Embedding;
  readonly blocks: PreLnBlock[];
  readonly lnF: LayerNorm;
  readonly embdDrop: Dropout;
  private seeds: SeedSequence;
  /** What backward needs from the last recorded forward. */
  private saved: { ids: Tensor | null; positions: Tensor } | null = null;

  private constructor(
    readonly backend: Backend,
    readonly config: Gpt2Config,
    private readonly params: Parameter[],
    get: (name: string) => Parameter,
  ) {
    const c = config;
    const act = activationKind(c.activation_function ?? 'gelu_new');
    this.wte = new Embedding(get('wte.weight'));
    this.wpe = new Embedding(get('wpe.weight'));
    this.blocks = [];
    for (let i = 0; i < c.n_layer; i++) {
      const p = (n: string): Parameter => get(`h.${i}.${n}`);
      const ln = (n: string): LayerNorm =>
        new LayerNorm(p(`${n}.weight`), p(`${n}.bias`), c.layer_norm_epsilon);
      const conv = (n: string): Linear => new Linear(p(`${n}.weight`), p(`${n}.bias`), 'in_out');
      const attn = new SelfAttention(
        { kind: 'fused_qkv', qkv: conv('attn.c_attn'), out: conv('attn.c_proj') },
        c.n_head,
        c.n_embd,
        c.attn_pdrop,
      );
      // Inference runs gelu inside c_fc's product (the same values): one op and one (B, T, 3072) tensor fewer
      // per layer and decoding step.
      const mlp = new FeedForward(conv('mlp.c_fc'), conv('mlp.c_proj'), act, true);
      this.blocks.push(new PreLnBlock(ln('ln_1'), attn, ln('ln_2'), mlp, c.resid_pdrop));
    }
    this.lnF = new LayerNorm(get('ln_f.weight'), get('ln_f.bias'), c.layer_norm_epsilon);
    this.embdDrop = new Dropout(c.embd_pdrop);
    this.seeds = new SeedSequence(0);
  }

  /**
   * Build from canonical weights (see the file comment). Every key and shape is checked; attn.bias /
   * masked_bias buffers and a tied lm_head.weight are skipped. `source` names the file in errors.
   */
  static fromWeights(backend: Backend, config: Gpt2Config, weights: StateDict, source = 'GPT-2'): Gpt2Model {
    if (config.n_embd % config.n_head !== 0)
      throw new ShapeError(
        `GPT-2 config: n_embd ${config.n_embd} is not divisible by n_head ${config.n_head}`,
      );
    const spec = gpt2KeySpec(config);
    checkWeights(weights, spec, source, isGpt2IgnoredKey);
    const params = [...spec.keys()].map((n) => uploadParam(backend, weights, n));
    const byName = new Map(params.map((p) => [p.name, p]));
    return new Gpt2Model(backend, config, params, (n) => byName.get(n) as Parameter);
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  get width(): number {
    return this.config.n_embd;
  }

  get maxPositions(): number {
    return this.config.n_positions;
  }

  /** Every parameter, canonical names, in checkpoint order. */
  parameters(): Parameter[] {
    return [...this.params];
  }

  /**
   * Weight-only reduced precision for inference (Backend.quantizeWeight): every block's projection weights
   * (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, each with its output columns as int8 channels) and the tied
   * wte (rows = vocabulary entries as channels: the LM head's outputs; the embedding lookup reads the same
   * rounded values). Biases, LayerNorms and wpe stay f32. The model is then inference-only: its weights are
   * read-only and no longer require gradients.
   */
  quantizeWeights(format: WeightFormat): void {
    const b = this.backend;
    const swap = (p: Parameter, axis: 0 | 1): void => {
      const q = b.quantizeWeight(p.value, format, axis);
      b.free(p.value);
      p.value = q;
      p.requiresGrad = false;
    };
    for (const block of this.blocks) {
      const proj = block.attn.proj;
      if (proj.kind !== 'fused_qkv') throw new Error('GPT-2 attention must use a fused c_attn');
      for (const lin of [proj.qkv, proj.out, block.mlp.fc1, block.mlp.fc2]) swap(lin.weight, 1);
    }
    swap(this.wte.table, 0);
  }

  /** Freeze (false) or unfreeze every parameter. */
  setRequiresGrad(on: boolean): void {
    for (const p of this.params) p.requiresGrad = on;
  }

  /** Restart the dropout generator (train mode). */
  setDropoutSeed(seed: number): void {
    this.seeds = new SeedSequence(seed);
  }

  /** Token embeddings: ids (B, T) i32 -> (B, T, C). */
  embed(ids: Tensor): Tensor {
    return this.wte.forward(ids);
  }

  /** Positions 0..T-1 for every row, (B, T) i32 (host-built input for the wpe lookup and its backward). */
  private positionIds(batch: number, time: number, offset = 0): Tensor {
    const ids = new Int32Array(batch * time);
    for (let i = 0; i < ids.length; i++) ids[i] = offset + (i % time);
    return this.backend.upload(ids, [batch, time]);
  }

  /** x0 = embeds + wpe[offset..offset+T-1]: (B, T, C). */
  private addPositions(embeds: Tensor, offset: number): { x: Tensor; positions: Tensor } {
    const [bsz, time] = embeds.shape;
    if (offset + time > this.config.n_positions)
      throw new RangeError(
        `GPT-2: ${offset + time} positions exceed n_positions ${this.config.n_positions}; use shorter inputs`,
      );
    const positions = this.positionIds(bsz, time, offset);
    const pos = this.wpe.forward(positions);
    const x = this.backend.binary('add', embeds, pos);
    this.backend.free(pos);
    return { x, positions };
  }

  /** Full forward pass (no cache). See Gpt2ForwardOptions. */
  forward(opts: Gpt2ForwardOptions): Gpt2Output {
    const b = this.backend;
    const record = opts.record ?? false;
    const seeds = opts.train ? this.seeds : null;
    const which = opts.logits ?? 'all';
    if ((opts.ids === undefined) === (opts.embeds === undefined))
      throw new Error('GPT-2 forward: give exactly one of ids or embeds');
    let embeds: Tensor;
    if (opts.ids) {
      if (opts.ids.rank !== 2 || opts.ids.dtype !== 'i32')
        throw new ShapeError(`GPT-2 forward: ids must be (B, T) i32, got ${opts.ids}`);
      embeds = this.wte.forward(opts.ids);
    } else {
      embeds = opts.embeds as Tensor;
      if (embeds.rank !== 3 || embeds.shape[2] !== this.width)
        throw new ShapeError(`GPT-2 forward: embeds must be (B, T, ${this.width}), got ${embeds}`);
    }
    const [bsz, time] = embeds.shape;
    if (
      opts.attentionMask &&
      (opts.attentionMask.rank !== 2 ||
        opts.attentionMask.shape[0] !== bsz ||
        opts.attentionMask.shape[1] !== time)
    )
      throw new ShapeError(
        `GPT-2 forward: attention mask must be (${bsz}, ${time}), got ${opts.attentionMask}`,
      );
    const { x: x0, positions } = this.addPositions(embeds, 0);
    if (opts.ids) b.free(embeds);
    let x = this.embdDrop.forward(x0, seeds, record);
    if (x !== x0 && !record) b.free(x0);
    const ctx = { causal: true, keyMask: opts.attentionMask };
    for (const block of this.blocks) {
      const y = block.forward(x, ctx, { record, seeds });
      if (!record) b.free(x);
      x = y;
    }
    if (which === 'last' && !record) {
      // Only the last position matters: normalize and project one row per sequence.
      const last = b.slice(x, 1, time - 1, time);
      b.free(x);
      x = last;
    }
    const hidden = this.lnF.forward(x, record);
    if (!record) b.free(x);
    if (record) this.saved = { ids: opts.ids ?? null, positions };
    else b.free(positions);
    let logits: Tensor | undefined;
    if (which === 'all') logits = this.lmHead(hidden);
    else if (which === 'last') {
      const last = hidden.shape[1] === 1 ? hidden : b.slice(hidden, 1, time - 1, time);
      logits = this.lmHead(last).reshape([bsz, this.vocabSize]);
      if (last !== hidden) b.free(last);
    }
    return { hidden, logits };
  }

  /** The tied LM head: h (..., C) -> logits (..., V) = h · wteᵀ. */
  lmHead(h: Tensor): Tensor {
    const h2 = h.view([h.rows, this.width]);
    const y = this.backend.matmul(h2, this.wte.table.value, { transB: true });
    return y.reshape([...h.shape.slice(0, -1), this.vocabSize]);
  }

  /**
   * Backward of lmHead: dlogits (..., V), h the hidden states it was given (..., C). Accumulates into wte's
   * gradient (unless frozen) and returns dh (..., C).
   */
  lmHeadBackward(dlogits: Tensor, h: Tensor): Tensor {
    const b = this.backend;
    const v = this.vocabSize;
    const d2 = dlogits.view([dlogits.rows, v]);
    const h2 = h.view([h.rows, this.width]);
    const wte = this.wte.table;
    // dwte (V, C) += dlogitsᵀ · h
    if (wte.requiresGrad) b.matmul(d2, h2, { transA: true, out: wte.gradTensor(), accumulate: true });
    const dh = b.matmul(d2, wte.value); // (N, C)
    return dh.reshape([...h.shape.slice(0, -1), this.width]);
  }

  /**
   * Backward from the gradient of the final hidden states (B, T, C) of the last recorded forward (use
   * lmHeadBackward first to get it from logit gradients). Accumulates every parameter gradient and returns
   * the gradient of the input embeddings (B, T, C) (with ids, it is also scattered into wte's gradient).
   */
  backward(dHidden: Tensor): Tensor {
    const s = this.saved;
    if (!s) throw new Error('GPT-2 backward: no recorded forward (call forward with record: true)');
    this.saved = null;
    const b = this.backend;
    let dx = this.lnF.backward(dHidden);
    for (let i = this.blocks.length - 1; i >= 0; i--) {
      const prev = dx;
      dx = this.blocks[i].backward(dx);
      if (prev !== dHidden) b.free(prev);
    }
    const d0 = this.embdDrop.backward(dx);
    if (d0 !== dx) b.free(dx);
    this.wpe.backward(d0, s.positions);
    b.free(s.positions);
    if (s.ids) this.wte.backward(d0, s.ids);
    return d0;
  }

  /** A new empty KV cache for `batch` sequences of up to `maxLength` positions. */
  createCache(batch: number, maxLength: number): Gpt2KvCache {
    if (!Number.isInteger(batch) || batch < 1)
      throw new RangeError(`KV cache batch must be >= 1, got ${batch}`);
    if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > this.maxPositions)
      throw new RangeError(`KV cache length must be 1..${this.maxPositions} (n_positions), got ${maxLength}`);
    const shape = [batch, maxLength, this.width];
    const layers = this.blocks.map(() => ({ k: this.backend.zeros(shape), v: this.backend.zeros(shape) }));
    return new Gpt2KvCache(this.backend, layers, batch, maxLength, 0);
  }

  /**
   * Incremental forward (eval mode): embeds (B, T, C) become positions cache.length.. of each sequence;
   * returns the last new position's logits (B, V).
   */
  step(embeds: Tensor, kvCache: KvCache): Tensor {
    if (!(kvCache instanceof Gpt2KvCache))
      throw new Error('GPT-2 step: the cache was not made by this model');
    const cache = kvCache;
    cache.check();
    const b = this.backend;
    if (embeds.rank !== 3 || embeds.shape[0] !== cache.batch || embeds.shape[2] !== this.width)
      throw new ShapeError(`GPT-2 step: embeds must be (${cache.batch}, T, ${this.width}), got ${embeds}`);
    const [bsz, time] = embeds.shape;
    const offset = cache.length;
    if (offset + time > cache.maxLength)
      throw new RangeError(`GPT-2 step: ${offset + time} positions exceed the cache's ${cache.maxLength}`);
    const { x: x0, positions } = this.addPositions(embeds, offset);
    b.free(positions);
    let x = x0;
    for (let i = 0; i < this.blocks.length; i++) {
      const y = this.blocks[i].forward(x, { causal: true, cache: { kv: cache.layers[i], offset } });
      b.free(x);
      x = y;
    }
    cache.length = offset + time;
    const last = time === 1 ? x : b.slice(x, 1, time - 1, time);
    if (last !== x) b.free(x);
    const h = this.lnF.forward(last);
    b.free(last);
    const logits = this.lmHead(h).reshape([bsz, this.vocabSize]);
    b.free(h);
    return logits;
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
  }
}
