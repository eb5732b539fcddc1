/**
 * ClipCap's mapping networks: CLIP embedding (B, D) -> K prefix vectors (B, K, E) in GPT-2's embedding space.
 *
 * MLP (official `MLP`, used with a fine-tuned GPT-2): nn.Sequential of Linear layers with Tanh between them,
 * keys clip_project.model.{0,2,...}: normally Linear(D, K·E/2) -> Tanh -> Linear(K·E/2, K·E); predict.py
 * builds a single Linear(D, K·E) when K > 10. The output is viewed as (B, K, E).
 *
 * Transformer (official `TransformerMapper`, used with a frozen GPT-2):
 *   x = linear(prefix).view(B, clip_length, E); x = cat(x, prefix_const broadcast to (B, K, E)) along time;
 *   num_layers pre-LN layers (8 heads, LayerNorm eps 1e-5; attention to_queries and to_keys_values without
 *   bias, project with bias; MLP fc1 E -> 2E, ReLU, fc2); output = the last K positions.
 * Keys: clip_project.linear, clip_project.prefix_const, clip_project.transformer.layers.N.{norm1,
 * attn.to_queries, attn.to_keys_values, attn.project, norm2, mlp.fc1, mlp.fc2}.
 */
import type { Backend } from '../engine/backend.js';
import { ShapeError } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import { Activation } from '../nn/activation.js';
import { SelfAttention } from '../nn/attention.js';
import { PreLnBlock } from '../nn/block.js';
import { LayerNorm } from '../nn/layernorm.js';
import { Linear } from '../nn/linear.js';
import { FeedForward } from '../nn/mlp.js';
import type { Parameter } from '../nn/parameter.js';
import { mapperKeySpec } from '../weights/families/clipcap.js';
import type { KeySpec } from '../weights/families/common.js';
import type { StateDict } from '../weights/host.js';
import type { MapperConfig } from '../config/models.js';
import { checkWeights, uploadParam } from './weights.js';

/** LayerNorm epsilon of the transformer mapper (torch.nn.LayerNorm's default). */
const MAPPER_LN_EPS = 1e-5;

export interface Mapper {
  readonly config: MapperConfig;
  /** K */
  readonly prefixLength: number;
  /** E, GPT-2's width. */
  readonly width: number;
  /** Parameters, named clip_project.* as in the official checkpoints. */
  parameters(): Parameter[];
  /** prefix (B, D) -> (B, K, E). With `record`, keeps what backward needs. */
  forward(prefix: Tensor, record?: boolean): Tensor;
  /** dOut (B, K, E): accumulates every mapper gradient (the CLIP embedding needs none). */
  backward(dOut: Tensor): void;
  dispose(): void;
}

/**
 * Names and shapes of a mapper's weights (the key map's mapperKeySpec), after checking that the config can
 * build a mapper for GPT-2 width `width` (E): a ShapeError names what does not fit.
 */
export function mapperWeightSpec(config: MapperConfig, width: number): KeySpec {
  if (config.kind === 'mlp') {
    const s = config.sizes;
    if (s.length < 2 || s[0] !== config.prefix_size || s[s.length - 1] !== config.prefix_length * width)
      throw new ShapeError(
        `MLP mapper: sizes [${s.join(', ')}] must run from prefix_size ${config.prefix_size} to prefix_length·E = ${config.prefix_length * width}`,
      );
  } else if (width % config.num_heads !== 0)
    throw new ShapeError(`transformer mapper: width ${width} is not divisible by ${config.num_heads} heads`);
  return mapperKeySpec(config, width);
}

/** Build a mapper from clip_project.* weights; every key and shape is checked. */
export function createMapper(
  backend: Backend,
  config: MapperConfig,
  weights: StateDict,
  width: number,
  source = 'mapper',
): Mapper {
  const spec = mapperWeightSpec(config, width);
  checkWeights(weights, spec, source, (n) => !n.startsWith('clip_project.'));
  const params = [...spec.keys()].map((n) => uploadParam(backend, weights, n));
  const byName = new Map(params.map((p) => [p.name, p]));
  const get = (n: string): Parameter => byName.get(n) as Parameter;
  return config.kind === 'mlp'
    ? new MlpMapper(config, width, params, get)
    : new TransformerMapper(config, width, params, get);
}

export class MlpMapper implements Mapper {
  readonly prefixLength: number;
  private readonly layers: Linear[] = [];
  private readonly acts: Activation[] = [];

  constructor(
    readonly config: MapperConfig & { kind: 'mlp' },
    readonly width: number,
    private readonly params: Parameter[],
    get: (name: string) => Parameter,
  ) {
    this.prefixLength = config.prefix_length;
    const n = config.sizes.length - 1;
    for (let i = 0; i < n; i++) {
      this.layers.push(
        new Linear(
          get(`clip_project.model.${2 * i}.weight`),
          get(`clip_project.model.${2 * i}.bias`),
          'out_in',
        ),
      );
      if (i < n - 1) this.acts.push(new Activation('tanh'));
    }
  }

  parameters(): Parameter[] {
    return [...this.params];
  }

  /** prefix (B, D) -> (B, K, E) */
  forward(prefix: Tensor, record = false): Tensor {
    const b = prefix.backend;
    let x = prefix;
    for (let i = 0; i < this.layers.length; i++) {
      const h = this.layers[i].forward(x, record);
      if (x !== prefix && !record) b.free(x);
      x = h;
      if (i < this.acts.length) {
        const a = this.acts[i].forward(x, record);
        if (!record) b.free(x);
        x = a;
      }
    }
    return x.reshape([prefix.shape[0], this.prefixLength, this.width]);
  }

  backward(dOut: Tensor): void {
    const b = dOut.backend;
    let d = dOut.reshape([dOut.shape[0], this.prefixLength * this.width]);
    for (let i = this.layers.length - 1; i >= 0; i--) {
      const dx = this.layers[i].backward(d, i > 0);
      if (d.storage !== dOut.storage) b.free(d);
      if (!dx) break;
      d = this.acts[i - 1].backward(dx);
      b.free(dx);
    }
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
  }
}

export class TransformerMapper implements Mapper {
  readonly prefixLength: number;
  private readonly linear: Linear;
  private readonly prefixConst: Parameter;
  private readonly blocks: PreLnBlock[] = [];
  private batch = 0;

  constructor(
    readonly config: MapperConfig & { kind: 'transformer' },
    readonly width: number,
    private readonly params: Parameter[],
    get: (name: string) => Parameter,
  ) {
    this.prefixLength = config.prefix_length;
    this.linear = new Linear(get('clip_project.linear.weight'), get('clip_project.linear.bias'), 'out_in');
    this.prefixConst = get('clip_project.prefix_const');
    for (let i = 0; i < config.num_layers; i++) {
      const p = `clip_project.transformer.layers.${i}.`;
      const ln = (n: string): LayerNorm =>
        new LayerNorm(get(`${p}${n}.weight`), get(`${p}${n}.bias`), MAPPER_LN_EPS);
      const lin = (n: string, bias: boolean): Linear =>
        new Linear(get(`${p}${n}.weight`), bias ? get(`${p}${n}.bias`) : null, 'out_in');
      const attn = new SelfAttention(
        {
          kind: 'q_kv',
          q: lin('attn.to_queries', false),
          kv: lin('attn.to_keys_values', false),
          out: lin('attn.project', true),
        },
        config.num_heads,
        width,
      );
      const mlp = new FeedForward(lin('mlp.fc1', true), lin('mlp.fc2', true), 'relu');
      this.blocks.push(new PreLnBlock(ln('norm1'), attn, ln('norm2'), mlp));
    }
  }

  parameters(): Parameter[] {
    return [...this.params];
  }

  /** prefix (B, D) -> (B, K, E) */
  forward(prefix: Tensor, record = false): Tensor {
    const b = prefix.backend;
    const { clip_length: l } = this.config;
    const k = this.prefixLength;
    const e = this.width;
    const n = prefix.shape[0];
    const lin = this.linear.forward(prefix, record).reshape([n, l, e]); // (B, L, E)
    const zero = b.zeros([n, k, e]);
    const pc = b.add(zero, this.prefixConst.value); // prefix_const expanded to (B, K, E)
    b.free(zero);
    let x = b.concat([lin, pc], 1); // (B, L + K, E)
    b.free(lin);
    b.free(pc);
    for (const block of this.blocks) {
      const y = block.forward(x, { causal: false }, { record });
      if (!record) b.free(x);
      x = y;
    }
    const out = b.slice(x, 1, l, l + k);
    b.free(x);
    if (record) this.batch = n;
    return out;
  }

  backward(dOut: Tensor): void {
    const b = dOut.backend;
    const { clip_length: l } = this.config;
    const k = this.prefixLength;
    const e = this.width;
    const n = this.batch;
    let dx = b.zeros([n, l + k, e]);
    b.writeSlice(dx, dOut, 1, l);
    for (let i = this.blocks.length - 1; i >= 0; i--) {
      const prev = dx;
      dx = this.blocks[i].backward(dx);
      b.free(prev);
    }
    if (this.prefixConst.requiresGrad) {
      // prefix_const was broadcast over the batch: its gradient sums the batch.
      const dpc = b.slice(dx, 1, l, l + k).reshape([n, k * e]);
      b.sumRows(dpc, this.prefixConst.gradTensor().reshape([k * e]), true);
      b.free(dpc);
    }
    const dlin = b.slice(dx, 1, 0, l).reshape([n, l * e]);
    b.free(dx);
    this.linear.backward(dlin, false);
    b.free(dlin);
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
  }
}
