/**
 * OpenAI CLIP's ResNet image tower (ModifiedResNet in openai/CLIP clip/model.py), inference only, as
 * `encode_image` computes it:
 *
 *   stem:       conv1 3x3 stride 2 (3 -> w/2) -> BN -> ReLU -> conv2 3x3 (w/2 -> w/2) -> BN -> ReLU
 *               -> conv3 3x3 (w/2 -> w) -> BN -> ReLU -> AvgPool2d(2)
 *   4 stages:   Bottleneck blocks, planes = w·2^s, 4·planes out; the first block of stages 2..4 strides by 2:
 *                 out = ReLU(BN(conv1 1x1 (x))) -> ReLU(BN(conv2 3x3 pad 1)) -> AvgPool2d(stride) ->
 *                       BN(conv3 1x1)
 *                 identity = x, or BN(conv 1x1 (AvgPool2d(stride)(x))) (the downsample branch)
 *                 y = ReLU(out + identity)
 *               ("anti-aliased" striding: every stride is an average pool before a stride-1 conv)
 *   attnpool:   tokens (HW, C) -> [mean of the tokens; tokens] + positional_embedding (1 + HW, C) ->
 *               multi-head attention of the first (mean) token over all 1 + HW tokens (q/k/v projections
 *               with bias, heads = w·32/64, scale 1/√head_dim) -> c_proj = the projected image embedding
 *               (output_dim: 1024 RN50, 640 RN50x4), the unnormalized vector ClipCap takes as its prefix.
 *               Computed with the projections moved to the one query's side (see attentionPool).
 *
 * Activations are NHWC (the engine's conv2d layout); pixel_values arrive NCHW as everywhere else and are
 * transposed once on the host. Conv weights are permuted from PyTorch's (O, C, kh, kw) to (O, kh, kw, C) at load.
 *
 * BatchNorm (eval mode: y = (x - mean)/√(var + eps)·γ + β) is folded into the preceding convolution at load
 * time: w' = w·γ/√(var + eps) per output channel, b' = β - mean·γ/√(var + eps), computed in float64 and
 * rounded to float32 once. `foldBatchNorm: false` keeps the convolutions and applies BatchNorm as its own ops
 * in PyTorch's order: the reference path that the folded one is tested against.
 */
import type { Backend } from '../engine/backend.js';
import { ShapeError } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import { Linear } from '../nn/linear.js';
import { Parameter } from '../nn/parameter.js';
import { clipResNetKeySpec } from '../weights/families/openai-clip.js';
import type { HostTensor, StateDict } from '../weights/host.js';
import type { ClipResNetConfig } from '../config/models.js';
import { checkWeights } from './weights.js';

/** A convolution and the BatchNorm after it: folded into (weight, bias), or kept apart. */
interface ConvBn {
  /** (O, kh, kw, C) */
  weight: Tensor;
  /** Folded: the BatchNorm as a bias (O). */
  bias: Tensor | null;
  /** Unfolded: BatchNorm as y = (x + negMean)·invStd·gamma + beta, each (O). */
  bn: { negMean: Tensor; invStd: Tensor; gamma: Tensor; beta: Tensor } | null;
  padding: number;
  stride: number;
}

interface Bottleneck {
  conv1: ConvBn;
  conv2: ConvBn;
  conv3: ConvBn;
  downsample: ConvBn | null;
  stride: number;
}

export interface ClipResNetOptions {
  /** Fold BatchNorm into the convolutions (default true); false: the unfolded reference path. */
  foldBatchNorm?: boolean;
}

/** Intermediate activations (NHWC), for checking against a reference layer by layer. */
export interface ClipResNetTaps {
  /** After the stem's average pool: (N, S/4, S/4, w). */
  stem: Tensor;
  /** After each stage: (N, S/4 / 2^s, ..., 4·w·2^s). */
  layers: Tensor[];
}

export class ClipResNetVisionModel {
  private readonly stem: ConvBn[];
  private readonly stages: Bottleneck[][];
  private readonly positions: Tensor;
  private readonly q: Linear;
  /** k_proj and v_proj weights per head: (heads, head_dim, C); k_proj's bias cancels (see attentionPool). */
  private readonly kW: Tensor;
  private readonly vW: Tensor;
  /** v_proj's bias (C). */
  private readonly vBias: Tensor;
  private readonly cProj: Linear;
  private readonly tensors: Tensor[] = [];
  /** (image_size / 32)² tokens, as a (tokens, 1) column of ones for the mean token. */
  private readonly ones: Tensor;
  readonly folded: boolean;

  private constructor(
    readonly backend: Backend,
    readonly config: ClipResNetConfig,
    weights: StateDict,
    opts: ClipResNetOptions,
  ) {
    this.folded = opts.foldBatchNorm ?? true;
    const c = config;
    const up = (data: Float32Array, shape: readonly number[]): Tensor => {
      const t = backend.upload(data, shape);
      this.tensors.push(t);
      return t;
    };
    const get = (name: string): HostTensor => weights.get(`visual.${name}`) as HostTensor;
    const convBn = (conv: string, bn: string, padding: number, stride = 1): ConvBn => ({
      ...this.convBn(up, get(`${conv}.weight`), bn, get, c.bn_eps),
      padding,
      stride,
    });

    this.stem = [convBn('conv1', 'bn1', 1, 2), convBn('conv2', 'bn2', 1), convBn('conv3', 'bn3', 1)];
    this.stages = c.layers.map((blocks, s) => {
      const out: Bottleneck[] = [];
      for (let i = 0; i < blocks; i++) {
        const p = `layer${s + 1}.${i}`;
        out.push({
          conv1: convBn(`${p}.conv1`, `${p}.bn1`, 0),
          conv2: convBn(`${p}.conv2`, `${p}.bn2`, 1),
          conv3: convBn(`${p}.conv3`, `${p}.bn3`, 0),
          downsample: weights.has(`visual.${p}.downsample.0.weight`)
            ? convBn(`${p}.downsample.0`, `${p}.downsample.1`, 0)
            : null,
          stride: s > 0 && i === 0 ? 2 : 1,
        });
      }
      return out;
    });
    const param = (name: string): Parameter => {
      const t = get(name);
      return new Parameter(`visual.${name}`, up(t.data as Float32Array, t.shape));
    };
    const linear = (name: string): Linear =>
      new Linear(param(`attnpool.${name}.weight`), param(`attnpool.${name}.bias`), 'out_in');
    this.positions = param('attnpool.positional_embedding').value;
    this.q = linear('q_proj');
    const width = c.width * 32;
    const perHead = (name: string): Tensor =>
      up(get(`attnpool.${name}.weight`).data as Float32Array, [c.heads, width / c.heads, width]);
    this.kW = perHead('k_proj');
    this.vW = perHead('v_proj');
    this.vBias = up(get('attnpool.v_proj.bias').data as Float32Array, [width]);
    this.cProj = linear('c_proj');
    const tokens = (c.image_size / 32) ** 2;
    this.ones = up(new Float32Array(tokens).fill(1), [tokens, 1]);
  }

  /** From `visual.*` weights under OpenAI's names (f32); every key and shape is checked first. */
  static fromWeights(
    backend: Backend,
    config: ClipResNetConfig,
    weights: StateDict,
    source = 'CLIP ResNet',
    opts: ClipResNetOptions = {},
  ): ClipResNetVisionModel {
    const c = config;
    if (c.image_size % 32 !== 0 || c.width % 2 !== 0 || (c.width * 32) % c.heads !== 0) {
      throw new ShapeError(
        `CLIP ResNet config: image_size ${c.image_size} must be a multiple of 32, width ${c.width} even and divisible into ${c.heads} heads`,
      );
    }
    checkWeights(
      weights,
      clipResNetKeySpec(c),
      source,
      (n) => !n.startsWith('visual.') || n.endsWith('.num_batches_tracked'),
    );
    return new ClipResNetVisionModel(backend, c, weights, opts);
  }

  /** Width of the projected embedding (ClipCap's prefix_size). */
  get embedDim(): number {
    return this.config.output_dim;
  }

  get imageSize(): number {
    return this.config.image_size;
  }

  /** Values per image in pixel_values: 3 · size · size. */
  get pixelsPerImage(): number {
    return 3 * this.config.image_size * this.config.image_size;
  }

  /**
   * One convolution with its BatchNorm, uploaded. Weight (O, C, kh, kw) -> (O, kh, kw, C); folded:
   * w'[o] = w[o]·γ[o]/√(var[o] + eps), b'[o] = β[o] - mean[o]·γ[o]/√(var[o] + eps), in float64.
   */
  private convBn(
    up: (data: Float32Array, shape: readonly number[]) => Tensor,
    w: HostTensor,
    bn: string,
    get: (name: string) => HostTensor,
    eps: number,
  ): Omit<ConvBn, 'padding' | 'stride'> {
    const [O, C, kh, kw] = w.shape;
    const src = w.data as Float32Array;
    const gamma = get(`${bn}.weight`).data as Float32Array;
    const beta = get(`${bn}.bias`).data as Float32Array;
    const mean = get(`${bn}.running_mean`).data as Float32Array;
    const variance = get(`${bn}.running_var`).data as Float32Array;
    const invStd = Float64Array.from(variance, (v) => 1 / Math.sqrt(v + eps));
    const ohwi = new Float32Array(src.length);
    for (let o = 0; o < O; o++) {
      const f = this.folded ? gamma[o] * invStd[o] : 1;
      for (let ci = 0; ci < C; ci++)
        for (let y = 0; y < kh; y++)
          for (let x = 0; x < kw; x++)
            ohwi[((o * kh + y) * kw + x) * C + ci] = src[((o * C + ci) * kh + y) * kw + x] * f;
    }
    const weight = up(ohwi, [O, kh, kw, C]);
    if (this.folded) {
      const bias = Float32Array.from(beta, (b, o) => b - mean[o] * gamma[o] * invStd[o]);
      return { weight, bias: up(bias, [O]), bn: null };
    }
    return {
      weight,
      bias: null,
      bn: {
        negMean: up(
          Float32Array.from(mean, (m) => -m),
          [O],
        ),
        invStd: up(Float32Array.from(invStd), [O]),
        gamma: up(Float32Array.from(gamma), [O]),
        beta: up(Float32Array.from(beta), [O]),
      },
    };
  }

  /** conv -> BatchNorm (folded or not) (+ residual) -> ReLU when asked. x and residual are not consumed. */
  private applyConvBn(x: Tensor, cb: ConvBn, relu: boolean, residual?: Tensor): Tensor {
    const b = this.backend;
    const geometry = { padding: cb.padding, stride: cb.stride };
    if (!cb.bn) return b.conv2d(x, cb.weight, { ...geometry, bias: cb.bias ?? undefined, residual, relu });
    // x: (N, H, W, C); the per-channel vectors broadcast over the last axis
    let y = b.conv2d(x, cb.weight, geometry);
    for (const [op, v] of [
      ['add', cb.bn.negMean],
      ['mul', cb.bn.invStd],
      ['mul', cb.bn.gamma],
      ['add', cb.bn.beta],
    ] as const) {
      const next = b.binary(op, y, v);
      b.free(y);
      y = next;
    }
    if (residual) {
      // PyTorch's order: out = bn3(conv3(...)); out += identity; relu
      const sum = b.binary('add', y, residual);
      b.free(y);
      y = sum;
    }
    if (!relu) return y;
    const r = b.activation('relu', y);
    b.free(y);
    return r;
  }

  private bottleneck(x: Tensor, blk: Bottleneck): Tensor {
    const b = this.backend;
    const h1 = this.applyConvBn(x, blk.conv1, true);
    let h2 = this.applyConvBn(h1, blk.conv2, true);
    b.free(h1);
    if (blk.stride > 1) {
      const pooled = b.avgPool2d(h2, { kernel: blk.stride });
      b.free(h2);
      h2 = pooled;
    }
    let identity = x;
    if (blk.downsample) {
      const pooled = blk.stride > 1 ? b.avgPool2d(x, { kernel: blk.stride }) : x;
      identity = this.applyConvBn(pooled, blk.downsample, false);
      if (pooled !== x) b.free(pooled);
    }
    // y = ReLU(BN(conv3(h2)) + identity): one fused conv when BatchNorm is folded
    const y = this.applyConvBn(h2, blk.conv3, true, identity);
    b.free(h2);
    if (identity !== x) b.free(identity);
    return y;
  }

  /** t (a, b, d) -> (b, a, d), a copy; t is not consumed. */
  private swap01(t: Tensor): Tensor {
    const [a, b, d] = t.shape;
    const rows: number[] = [];
    for (let j = 0; j < b; j++) for (let i = 0; i < a; i++) rows.push(i * b + j);
    return this.backend.indexSelect(t.view([a * b, d]), rows).reshape([b, a, d]);
  }

  /**
   * x (N, h, w, C) -> (N, output_dim): the attention pool. x is not consumed.
   *
   * Only the mean token queries, so k_proj and v_proj are moved to the query's side instead of projecting
   * all 1 + HW tokens (2·(1 + HW)·C² multiply-adds per image: 5% of RN50x4): per head h with query q_h and
   * k_proj / v_proj rows Wk_h, Wv_h (head_dim, C) and tokens x_j,
   *   score_j = q_h · (Wk_h x_j + bk_h) / √head_dim = (Wk_hᵀ q_h) · x_j / √head_dim + (q_h · bk_h) / √head_dim,
   * and the last term, the same for every token, cancels in the softmax; with p_j the softmax weights
   * (summing to 1), out_h = Σ_j p_j (Wv_h x_j + bv_h) = Wv_h (Σ_j p_j x_j) + bv_h.
   * So: q'_h = Wk_hᵀ q_h (C values per head), attention of the `heads` queries q' over the raw tokens (one
   * head of width C, scale 1/√head_dim), then Wv_h per head and bv. The same values up to float32 rounding.
   */
  private attentionPool(x: Tensor): Tensor {
    const b = this.backend;
    const [n, h, w, C] = x.shape;
    const hw = h * w;
    const heads = this.config.heads;
    const hd = C / heads;
    const tokens = x.view([n, hw, C]);
    // mean token: per image, tokensᵀ (C, hw) · ones (hw, 1) / hw -> (C, 1)
    const mean = b.matmul(tokens, this.ones, { transA: true, alpha: 1 / hw }).reshape([n, 1, C]);
    const cat = b.concat([mean, tokens], 1); // (N, 1 + hw, C)
    b.free(mean);
    const seq = b.binary('add', cat, this.positions);
    b.free(cat);
    const first = b.slice(seq, 1, 0, 1); // (N, 1, C): only the mean token queries
    const q = this.q.forward(first);
    b.free(first);
    // q (N, 1, C) -> (heads, N, hd) -> q' = Wk_hᵀ q_h: (heads, N, hd) · (heads, hd, C) -> (heads, N, C)
    const qHeads = this.swap01(q.view([n, heads, hd]));
    b.free(q);
    const qkHeads = b.matmul(qHeads, this.kW);
    b.free(qHeads);
    const qk = this.swap01(qkHeads); // (N, heads, C)
    b.free(qkHeads);
    // per head: Σ_j p_j x_j over all 1 + hw tokens -> (N, heads, C)
    const { out: mixed } = b.attention(qk, seq, seq, { nHead: 1, scale: 1 / Math.sqrt(hd) });
    b.free(qk);
    b.free(seq);
    // Wv_h (Σ_j p_j x_j): (heads, N, C) · (heads, hd, C)ᵀ -> (heads, N, hd) -> (N, heads, hd) + bv
    const mixedHeads = this.swap01(mixed);
    b.free(mixed);
    const vHeads = b.matmul(mixedHeads, this.vW, { transB: true });
    b.free(mixedHeads);
    const vNoBias = this.swap01(vHeads);
    b.free(vHeads);
    const out = b.binary('add', vNoBias.view([n, 1, C]), this.vBias);
    b.free(vNoBias);
    const y = this.cProj.forward(out); // (N, 1, output_dim)
    b.free(out);
    return y.reshape([n, this.config.output_dim]);
  }

  /** pixel_values (N, 3, S, S) NCHW host data -> (N, S, S, 3) uploaded. */
  private uploadNhwc(pixels: Float32Array): Tensor {
    const S = this.config.image_size;
    const per = this.pixelsPerImage;
    if (pixels.length === 0 || pixels.length % per !== 0) {
      throw new ShapeError(`CLIP ResNet: pixel_values must hold N·3·${S}·${S} values, got ${pixels.length}`);
    }
    const n = pixels.length / per;
    const plane = S * S;
    const out = new Float32Array(pixels.length);
    for (let i = 0; i < n; i++)
      for (let c = 0; c < 3; c++) {
        const src = i * per + c * plane;
        for (let p = 0; p < plane; p++) out[i * per + p * 3 + c] = pixels[src + p];
      }
    return this.backend.upload(out, [n, S, S, 3]);
  }

  /** Projected, unnormalized image embeddings (N, output_dim) from pixel_values (N, 3, S, S). */
  encodeImages(pixelValues: Float32Array): Tensor {
    return this.run(pixelValues, null);
  }

  /** encodeImages, also keeping the stem and stage outputs (NHWC; the caller frees them). */
  forwardWithTaps(pixelValues: Float32Array): { embeds: Tensor } & ClipResNetTaps {
    const layers: Tensor[] = [];
    let stem: Tensor | undefined;
    const embeds = this.run(pixelValues, (t) => {
      // a copy: the tower frees t as it goes
      const copy = this.backend.slice(t, 0, 0, t.shape[0]);
      if (stem) layers.push(copy);
      else stem = copy;
    });
    return { embeds, stem: stem as Tensor, layers };
  }

  /** The tower; `tap` sees the stem's output and each stage's (not consumed: tap clones what it keeps). */
  private run(pixelValues: Float32Array, tap: ((t: Tensor) => void) | null): Tensor {
    const b = this.backend;
    let x = this.uploadNhwc(pixelValues);
    for (const cb of this.stem) {
      const y = this.applyConvBn(x, cb, true);
      b.free(x);
      x = y;
    }
    const pooled = b.avgPool2d(x, { kernel: 2 });
    b.free(x);
    x = pooled;
    tap?.(x);
    for (const stage of this.stages) {
      for (const blk of stage) {
        const y = this.bottleneck(x, blk);
        b.free(x);
        x = y;
      }
      tap?.(x);
    }
    const embeds = this.attentionPool(x);
    b.free(x);
    return embeds;
  }

  dispose(): void {
    for (const t of this.tensors) this.backend.free(t);
  }
}
