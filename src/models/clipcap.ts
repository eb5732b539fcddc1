/**
 * The ClipCap model: a mapping network turns a CLIP image embedding into K prefix vectors, GPT-2 continues
 * them. Official semantics (rmokady/CLIP_prefix_caption, train.py):
 *
 *   prefix_projections = clip_project(prefix).view(-1, K, E)
 *   embedding_cat = cat(prefix_projections, gpt.transformer.wte(tokens))          (B, K+T, E)
 *   logits = gpt(inputs_embeds=embedding_cat, attention_mask=mask).logits          (B, K+T, V)
 *   loss = cross_entropy(logits[:, K-1:-1].reshape(-1, V), tokens.flatten(), ignore_index=0)
 *
 * ignore_index=0 means real "!" tokens (id 0) are never trained, a quirk kept as the default for parity;
 * `lossMode: 'mask'` counts exactly the tokens the attention mask marks real instead.
 *
 * Modes: 'finetune' (ClipCaptionModel: MLP mapper, GPT-2 trained in train mode with dropout) and 'frozen'
 * (ClipCaptionPrefix: transformer mapper, GPT-2 in eval mode and not trained, though gradients flow through it).
 */
import type { Backend } from '../engine/backend.js';
import { ShapeError } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import { crossEntropyLoss } from '../nn/losses.js';
import type { Parameter } from '../nn/parameter.js';
import type { StateDict } from '../weights/host.js';
import type { ClipcapCheckpoint } from '../weights/keymaps.js';
import { UserError } from '../util/errors.js';
import type { Gpt2Config, MapperConfig } from '../config/models.js';
import { Gpt2Model } from './gpt2.js';
import { createMapper, type Mapper } from './mapper.js';
import { paramsToStateDict } from './weights.js';

export type ClipCapMode = 'finetune' | 'frozen';

/** Which positions the loss counts: the official ignore_index=0 rule, or the attention mask. */
export type ClipCapLossMode = 'official' | 'mask';

export interface ClipCapParts {
  mapper: MapperConfig;
  /** clip_project.* weights. */
  mapperWeights: StateDict;
  gpt2: { config: Gpt2Config; weights: StateDict };
  /** Default: 'finetune' for an MLP mapper, 'frozen' for a transformer mapper (as the paper pairs them). */
  mode?: ClipCapMode;
  /** Divide each CLIP embedding by its L2 norm first (official --normalize_prefix). Default false. */
  normalizePrefix?: boolean;
}

export interface ClipCapBatch {
  /** CLIP embeddings (B, D): a backend tensor or host data. */
  prefix: Tensor | Float32Array;
  /** Caption ids (B, T), right-padded (official padding id 0). */
  tokens: Int32Array;
  /** T */
  length: number;
  /** Attention mask (B, K + T): ones(K) ++ (token is real). Omitted = attend everywhere. */
  mask?: ArrayLike<number>;
}

export interface ClipCapStepOptions {
  /** Train mode: dropout in GPT-2 when fine-tuning (the frozen GPT-2 always runs in eval mode). */
  train?: boolean;
  lossMode?: ClipCapLossMode;
}

export interface ClipCapLoss {
  /** Mean cross-entropy over counted positions (NaN when none counts). */
  loss: number;
  /** Number of counted positions. */
  count: number;
}

/** The PAD / ignore id of the official loss. */
const OFFICIAL_IGNORE = 0;
/** Ignore id used for mask-based targets (no real token has it). */
const MASK_IGNORE = -100;

export class ClipCapModel {
  readonly mode: ClipCapMode;
  readonly normalizePrefix: boolean;

  constructor(
    readonly backend: Backend,
    readonly mapper: Mapper,
    readonly gpt2: Gpt2Model,
    opts: { mode?: ClipCapMode; normalizePrefix?: boolean } = {},
  ) {
    if (mapper.width !== gpt2.width)
      throw new ShapeError(
        `ClipCap: the mapper makes ${mapper.width}-wide prefixes but GPT-2 is ${gpt2.width} wide`,
      );
    this.mode = opts.mode ?? (mapper.config.kind === 'mlp' ? 'finetune' : 'frozen');
    this.normalizePrefix = opts.normalizePrefix ?? false;
    // A frozen GPT-2 gets no gradients (setGpt2Gradients(true) turns them on, e.g. to inspect them).
    gpt2.setRequiresGrad(this.mode === 'finetune');
  }

  /** Build from checked parts (see clipcapCheckpoint in src/weights for reading a ClipCap .pt). */
  static create(backend: Backend, parts: ClipCapParts, source = 'ClipCap checkpoint'): ClipCapModel {
    const gpt2 = Gpt2Model.fromWeights(backend, parts.gpt2.config, parts.gpt2.weights, source);
    const mapper = createMapper(backend, parts.mapper, parts.mapperWeights, gpt2.width, source);
    return new ClipCapModel(backend, mapper, gpt2, {
      mode: parts.mode,
      normalizePrefix: parts.normalizePrefix,
    });
  }

  /**
   * From an official ClipCap state dict read by clipcapCheckpoint (src/weights). GPT-2 comes from the
   * checkpoint when it holds gpt.* weights (ClipCaptionModel), else from `opts.gpt2` (ClipCaptionPrefix
   * checkpoints may omit it; the official ones keep it).
   */
  static fromCheckpoint(
    backend: Backend,
    ckpt: ClipcapCheckpoint,
    opts: {
      gpt2?: { config: Gpt2Config; weights: StateDict };
      mode?: ClipCapMode;
      normalizePrefix?: boolean;
      source?: string;
    } = {},
  ): ClipCapModel {
    const source = opts.source ?? 'ClipCap checkpoint';
    let gpt2 = opts.gpt2;
    if (!gpt2 && ckpt.gpt2) {
      if (!ckpt.gpt2Config)
        throw new UserError(
          `${source}: its GPT-2 is ${ckpt.width} wide, not a standard size, so its config is unknown; give GPT-2's config.json`,
        );
      gpt2 = { config: ckpt.gpt2Config, weights: ckpt.gpt2 };
    }
    if (!gpt2)
      throw new UserError(
        `${source}: holds only the mapper (clip_project.*); give GPT-2 weights (e.g. --gpt2)`,
      );
    return ClipCapModel.create(
      backend,
      {
        mapper: ckpt.mapper,
        mapperWeights: ckpt.mapperWeights,
        gpt2,
        mode: opts.mode,
        normalizePrefix: opts.normalizePrefix,
      },
      source,
    );
  }

  /** K */
  get prefixLength(): number {
    return this.mapper.prefixLength;
  }

  /** D, the CLIP embedding width the mapper takes. */
  get prefixSize(): number {
    return this.mapper.config.prefix_size;
  }

  /** Compute GPT-2's parameter gradients even when it is frozen (they are never stepped in that mode). */
  setGpt2Gradients(on: boolean): void {
    this.gpt2.setRequiresGrad(on);
  }

  /** What the optimizer steps: the mapper, plus GPT-2 when fine-tuning (official model.parameters()). */
  trainableParameters(): Parameter[] {
    return this.mode === 'finetune'
      ? [...this.mapper.parameters(), ...this.gpt2.parameters()]
      : this.mapper.parameters();
  }

  /** Every parameter by its official state_dict name (clip_project.*, gpt.transformer.*). */
  namedParameters(): Map<string, Parameter> {
    const out = new Map<string, Parameter>();
    for (const p of this.mapper.parameters()) out.set(p.name, p);
    for (const p of this.gpt2.parameters()) out.set(`gpt.transformer.${p.name}`, p);
    return out;
  }

  /** The official torch state_dict layout (as torch.save(model.state_dict()) writes it), on the host. */
  stateDict(): StateDict {
    const sd = paramsToStateDict(this.mapper.parameters());
    for (const [k, v] of paramsToStateDict(this.gpt2.parameters(), 'gpt.transformer.')) sd.set(k, v);
    const wte = sd.get('gpt.transformer.wte.weight');
    if (wte) sd.set('gpt.lm_head.weight', wte); // tied
    return sd;
  }

  zeroGrad(): void {
    for (const p of this.namedParameters().values()) p.zeroGrad();
  }

  /** The prefix as a (B, D) tensor, L2-normalized when configured (on the host: it is a model input). */
  private prefixTensor(prefix: Tensor | Float32Array): Tensor {
    const d = this.prefixSize;
    if (prefix instanceof Float32Array) {
      if (prefix.length === 0 || prefix.length % d !== 0)
        throw new ShapeError(`ClipCap: the prefix must be (B, ${d}), got ${prefix.length} values`);
      const host = this.normalizePrefix ? l2Normalize(prefix, d) : prefix;
      return this.backend.upload(host, [prefix.length / d, d]);
    }
    if (prefix.rank !== 2 || prefix.shape[1] !== d)
      throw new ShapeError(`ClipCap: the prefix must be (B, ${d}), got ${prefix}`);
    if (!this.normalizePrefix) return prefix;
    return this.backend.upload(l2Normalize(prefix.toArray() as Float32Array, d), prefix.shape);
  }

  /** Prefix embeddings for decoding: CLIP embeddings (B, D) -> (B, K, E) (eval mode). */
  prefixEmbeddings(clipEmbeds: Tensor | Float32Array): Tensor {
    const p = this.prefixTensor(clipEmbeds);
    const out = this.mapper.forward(p);
    if (p !== clipEmbeds) this.backend.free(p);
    return out;
  }

  private checkBatch(batch: ClipCapBatch, n: number): { tokens: Tensor; mask?: Tensor } {
    const t = batch.length;
    const k = this.prefixLength;
    if (batch.tokens.length !== n * t)
      throw new ShapeError(`ClipCap: tokens hold ${batch.tokens.length} ids, expected ${n}·${t}`);
    if (batch.mask && batch.mask.length !== n * (k + t))
      throw new ShapeError(`ClipCap: the mask must be (${n}, ${k + t}) = prefix ++ tokens`);
    const b = this.backend;
    return {
      tokens: b.upload(batch.tokens, [n, t]),
      mask: batch.mask ? b.upload(Float32Array.from(batch.mask), [n, k + t]) : undefined,
    };
  }

  /**
   * The official forward: logits (B, K+T, V) for the whole sequence (eval mode unless `train`).
   */
  forward(batch: ClipCapBatch, opts: { train?: boolean } = {}): Tensor {
    const b = this.backend;
    const prefix = this.prefixTensor(batch.prefix);
    const n = prefix.shape[0];
    const { tokens, mask } = this.checkBatch(batch, n);
    const pre = this.mapper.forward(prefix);
    const te = this.gpt2.embed(tokens);
    const emb = b.concat([pre, te], 1);
    for (const x of [pre, te, tokens]) b.free(x);
    if (prefix !== batch.prefix) b.free(prefix);
    const out = this.gpt2.forward({ embeds: emb, attentionMask: mask, train: this.gpt2Train(opts.train) });
    b.free(emb);
    b.free(out.hidden);
    if (mask) b.free(mask);
    return out.logits as Tensor;
  }

  private gpt2Train(train: boolean | undefined): boolean {
    return (train ?? false) && this.mode === 'finetune';
  }

  /** Loss targets (B·T) and the ignore index, for the chosen loss mode. */
  private targets(
    batch: ClipCapBatch,
    n: number,
    mode: ClipCapLossMode,
  ): { targets: Int32Array; ignore: number } {
    if (mode === 'official') return { targets: batch.tokens, ignore: OFFICIAL_IGNORE };
    const t = batch.length;
    const k = this.prefixLength;
    const targets = new Int32Array(n * t);
    for (let r = 0; r < n; r++)
      for (let i = 0; i < t; i++) {
        const real = batch.mask ? batch.mask[r * (k + t) + k + i] > 0 : true;
        targets[r * t + i] = real ? batch.tokens[r * t + i] : MASK_IGNORE;
      }
    return { targets, ignore: MASK_IGNORE };
  }

  /** Loss only (no gradients): eval mode unless `train`. */
  loss(batch: ClipCapBatch, opts: ClipCapStepOptions = {}): ClipCapLoss {
    return this.run(batch, opts, false);
  }

  /**
   * Loss and gradients: accumulates into every parameter that requires them (call zeroGrad first).
   * Positions K-1 .. K+T-2 predict tokens 0 .. T-1; only their logits are computed.
   */
  lossAndBackward(batch: ClipCapBatch, opts: ClipCapStepOptions = {}): ClipCapLoss {
    return this.run(batch, opts, true);
  }

  private run(batch: ClipCapBatch, opts: ClipCapStepOptions, grad: boolean): ClipCapLoss {
    const b = this.backend;
    const k = this.prefixLength;
    const t = batch.length;
    const prefix = this.prefixTensor(batch.prefix);
    const n = prefix.shape[0];
    const { tokens, mask } = this.checkBatch(batch, n);
    const gpt = this.gpt2;
    const pre = this.mapper.forward(prefix, grad);
    const te = gpt.embed(tokens);
    const emb = b.concat([pre, te], 1); // (B, K+T, E)
    b.free(pre);
    b.free(te);
    const out = gpt.forward({
      embeds: emb,
      attentionMask: mask,
      logits: 'none',
      record: grad,
      train: this.gpt2Train(opts.train),
    });
    b.free(emb);
    const hs = b.slice(out.hidden, 1, k - 1, k + t - 1); // (B, T, E): the positions that predict tokens
    b.free(out.hidden);
    const logits = gpt.lmHead(hs).reshape([n * t, gpt.vocabSize]);
    const { targets, ignore } = this.targets(batch, n, opts.lossMode ?? 'official');
    const targetT = b.upload(targets, [n * t]);
    const ce = crossEntropyLoss(logits, targetT, ignore, grad);
    if (ce.dlogits) {
      const e = gpt.width;
      const dlogits = ce.dlogits;
      const dhs = gpt.lmHeadBackward(dlogits, hs.reshape([n * t, e])).reshape([n, t, e]);
      b.free(dlogits);
      const dHidden = b.zeros([n, k + t, e]);
      b.writeSlice(dHidden, dhs, 1, k - 1);
      b.free(dhs);
      const dEmb = gpt.backward(dHidden);
      b.free(dHidden);
      const dPre = b.slice(dEmb, 1, 0, k);
      this.mapper.backward(dPre);
      b.free(dPre);
      if (gpt.wte.table.requiresGrad) {
        const dTe = b.slice(dEmb, 1, k, k + t);
        gpt.wte.backward(dTe, tokens);
        b.free(dTe);
      }
      b.free(dEmb);
    }
    for (const x of [hs, logits, targetT, tokens]) b.free(x);
    if (mask) b.free(mask);
    if (prefix !== batch.prefix) b.free(prefix);
    return { loss: ce.loss, count: ce.count };
  }

  dispose(): void {
    this.mapper.dispose();
    this.gpt2.dispose();
  }
}

/** Rows of x (N, D) divided by their L2 norms (torch: x / x.norm(2, -1, keepdim=True)). */
export function l2Normalize(x: Float32Array, d: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < x.length / d; r++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += x[r * d + j] * x[r * d + j];
    const inv = 1 / Math.sqrt(s);
    for (let j = 0; j < d; j++) out[r * d + j] = x[r * d + j] * inv;
  }
  return out;
}
