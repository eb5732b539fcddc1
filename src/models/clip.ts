/**
 * CLIP towers (Hugging Face CLIPModel semantics), inference only.
 *
 * Vision (ViT): pixel_values (N, 3, S, S) -> patch embedding (a stride-p convolution without bias, done as
 * im2col on the host + one matmul, since the pixels are input data) -> [class token, patches] + positions ->
 * pre_layrnorm -> pre-LN encoder layers (quick_gelu MLP) = last_hidden_state -> post_layernorm of the class
 * token = pooler_output -> visual_projection (no bias) = image_embeds, the projected and *unnormalized*
 * embedding that ClipCap takes as its prefix.
 *
 * Text: token + position embeddings -> pre-LN encoder layers with a causal mask and the padding mask ->
 * final_layer_norm = last_hidden_state -> the hidden state at the EOS position = pooler_output ->
 * text_projection (no bias). EOS position as HF: the first position of eos_token_id, or, for old configs
 * with eos_token_id == 2, the position of the largest id (the EOT token is the largest id in CLIP's BPE).
 *
 * Weight names are HF's: vision_model.*, visual_projection.weight, text_model.*, text_projection.weight.
 */
import type { Backend } from '../engine/backend.js';
import { ShapeError } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import { activationKind } from '../nn/activation.js';
import { SelfAttention } from '../nn/attention.js';
import { PreLnBlock } from '../nn/block.js';
import { LayerNorm } from '../nn/layernorm.js';
import { Linear } from '../nn/linear.js';
import { FeedForward } from '../nn/mlp.js';
import { Parameter } from '../nn/parameter.js';
import { clipTextKeySpec, clipVisionKeySpec } from '../weights/families/clip.js';
import type { KeySpec } from '../weights/families/common.js';
import type { StateDict } from '../weights/host.js';
import type { ClipTextConfig, ClipVisionConfig } from '../config/models.js';
import { checkWeights, uploadParam } from './weights.js';

/**
 * q_proj, k_proj and v_proj of one layer as one Linear `${p}self_attn.qkv_proj`: weights (3C, C) and biases
 * (3C) concatenated [q | k | v] at load time, so the layer runs one (B·T, C)·(C, 3C) GEMM (faster than three
 * (C, C) ones: A is packed once, and the wider N keeps both threads busy) whose output attention splits
 * back ('fused_qkv'). The three loaded tensors are freed (the model does not hold the weights twice);
 * stateDict() splits the fused ones back under the checkpoint's keys.
 */
function fuseQkv(get: (name: string) => Parameter, p: string): Linear {
  const parts = QKV.map((n) => [get(`${p}self_attn.${n}.weight`), get(`${p}self_attn.${n}.bias`)] as const);
  const b = parts[0][0].value.backend;
  const weight = new Parameter(
    `${p}self_attn.${QKV_FUSED}.weight`,
    b.concat(
      parts.map(([w]) => w.value),
      0,
    ),
  );
  const bias = new Parameter(
    `${p}self_attn.${QKV_FUSED}.bias`,
    b.concat(
      parts.map(([, bi]) => bi.value),
      0,
    ),
  );
  for (const [w, bi] of parts) {
    w.dispose();
    bi.dispose();
  }
  return new Linear(weight, bias, 'out_in');
}

const QKV = ['q_proj', 'k_proj', 'v_proj'] as const;
const QKV_FUSED = 'qkv_proj';
/** The checkpoint keys fuseQkv replaces. */
const SEPARATE_QKV = /\.self_attn\.[qkv]_proj\.(weight|bias)$/;

function buildEncoder(
  get: (name: string) => Parameter,
  prefix: string,
  layers: number,
  width: number,
  heads: number,
  eps: number,
  act: string,
): PreLnBlock[] {
  const kind = activationKind(act);
  const blocks: PreLnBlock[] = [];
  for (let i = 0; i < layers; i++) {
    const p = `${prefix}${i}.`;
    const ln = (n: string): LayerNorm => new LayerNorm(get(`${p}${n}.weight`), get(`${p}${n}.bias`), eps);
    const lin = (n: string): Linear => new Linear(get(`${p}${n}.weight`), get(`${p}${n}.bias`), 'out_in');
    const attn = new SelfAttention(
      { kind: 'fused_qkv', qkv: fuseQkv(get, p), out: lin('self_attn.out_proj') },
      heads,
      width,
    );
    // quick_gelu runs in fc1's GEMM epilogue at inference (where the backend supports it)
    const mlp = new FeedForward(lin('mlp.fc1'), lin('mlp.fc2'), kind, true);
    blocks.push(new PreLnBlock(ln('layer_norm1'), attn, ln('layer_norm2'), mlp));
  }
  return blocks;
}

/** The parameters an encoder holds: the checkpoint's, with each layer's q/k/v replaced by the fused qkv_proj. */
function heldParams(blocks: PreLnBlock[], others: Parameter[]): Parameter[] {
  const fused = new Set<Parameter>();
  for (const block of blocks) {
    const proj = block.attn.proj;
    if (proj.kind !== 'fused_qkv') continue;
    fused.add(proj.qkv.weight);
    if (proj.qkv.bias) fused.add(proj.qkv.bias);
  }
  return [...others, ...fused];
}

/**
 * The model's weights under the checkpoint's keys (HF CLIPModel names): each fused qkv_proj split back into
 * q_proj, k_proj and v_proj (rows [0, C), [C, 2C), [2C, 3C) of the weight, the same ranges of the bias).
 */
async function encoderStateDict(params: Parameter[]): Promise<StateDict> {
  const out: StateDict = new Map();
  for (const p of params) {
    const data = (await p.value.read()) as Float32Array;
    const shape = [...p.value.shape];
    const m = /^(.*self_attn\.)qkv_proj\.(weight|bias)$/.exec(p.name);
    if (!m) {
      out.set(p.name, { dtype: 'f32', shape, data });
      continue;
    }
    const rows = shape[0] / 3;
    const per = data.length / 3;
    QKV.forEach((n, j) => {
      out.set(`${m[1]}${n}.${m[2]}`, {
        dtype: 'f32',
        shape: [rows, ...shape.slice(1)],
        data: data.slice(j * per, (j + 1) * per),
      });
    });
  }
  return out;
}

/** Run encoder blocks in eval mode, freeing intermediates; x is consumed. */
function runEncoder(blocks: PreLnBlock[], x: Tensor, causal: boolean, keyMask?: Tensor): Tensor {
  const b = x.backend;
  for (const block of blocks) {
    const y = block.forward(x, { causal, keyMask });
    b.free(x);
    x = y;
  }
  return x;
}

function loadParams(
  backend: Backend,
  weights: StateDict,
  spec: KeySpec,
  reshape: Map<string, number[]>,
): (name: string) => Parameter {
  const byName = new Map<string, Parameter>();
  for (const name of spec.keys()) {
    const p = uploadParam(backend, weights, name);
    const shape = reshape.get(name);
    byName.set(name, shape ? new Parameter(name, p.value.reshape(shape)) : p);
  }
  return (n) => byName.get(n) as Parameter;
}

export interface ClipVisionOutput {
  /** (N, 1 + grid², C) encoder output before post_layernorm. */
  lastHidden: Tensor;
  /** (N, C) post_layernorm of the class token. */
  pooled: Tensor;
  /** (N, projection_dim) visual_projection(pooled), unnormalized. */
  embeds: Tensor;
}

export class ClipVisionModel {
  private readonly classEmbedding: Parameter;
  private readonly positions: Parameter;
  private readonly patch: Linear;
  private readonly preLn: LayerNorm;
  private readonly postLn: LayerNorm;
  private readonly blocks: PreLnBlock[];
  private readonly projection: Linear;
  private readonly params: Parameter[];
  readonly grid: number;

  private constructor(
    readonly backend: Backend,
    readonly config: ClipVisionConfig,
    get: (name: string) => Parameter,
    names: Iterable<string>,
  ) {
    const c = config;
    const eps = c.layer_norm_eps;
    this.grid = c.image_size / c.patch_size;
    this.classEmbedding = get('vision_model.embeddings.class_embedding');
    this.positions = get('vision_model.embeddings.position_embedding.weight');
    // The conv weight (C, ch, p, p) viewed as (C, ch·p·p) is an nn.Linear weight over im2col rows.
    this.patch = new Linear(get('vision_model.embeddings.patch_embedding.weight'), null, 'out_in');
    const ln = (n: string): LayerNorm => new LayerNorm(get(`${n}.weight`), get(`${n}.bias`), eps);
    this.preLn = ln('vision_model.pre_layrnorm');
    this.blocks = buildEncoder(
      get,
      'vision_model.encoder.layers.',
      c.num_hidden_layers,
      c.hidden_size,
      c.num_attention_heads,
      eps,
      c.hidden_act,
    );
    this.postLn = ln('vision_model.post_layernorm');
    this.projection = new Linear(get('visual_projection.weight'), null, 'out_in');
    this.params = heldParams(this.blocks, [...names].filter((n) => !SEPARATE_QKV.test(n)).map(get));
    // Inference only: every Linear weight prepacked for the GEMM (Linear.pack, Backend.packWeight).
    for (const lin of [this.patch, ...this.blocks.flatMap((bl) => bl.linears()), this.projection]) lin.pack();
  }

  /** From HF weights (vision_model.* and visual_projection.weight); every key and shape is checked. */
  static fromWeights(
    backend: Backend,
    config: ClipVisionConfig,
    weights: StateDict,
    source = 'CLIP vision',
  ): ClipVisionModel {
    const c = config;
    if (c.image_size % c.patch_size !== 0)
      throw new ShapeError(
        `CLIP config: image_size ${c.image_size} is not a multiple of patch_size ${c.patch_size}`,
      );
    if (c.hidden_size % c.num_attention_heads !== 0)
      throw new ShapeError(`CLIP config: hidden_size ${c.hidden_size} is not divisible by the heads`);
    const spec = clipVisionKeySpec(c);
    checkWeights(
      weights,
      spec,
      source,
      (n) => !n.startsWith('vision_model.') && n !== 'visual_projection.weight',
    );
    const conv = 'vision_model.embeddings.patch_embedding.weight';
    const get = loadParams(
      backend,
      weights,
      spec,
      new Map([[conv, [c.hidden_size, c.num_channels * c.patch_size * c.patch_size]]]),
    );
    return new ClipVisionModel(backend, c, get, spec.keys());
  }

  /** Width of the projected embedding (ClipCap's prefix_size). */
  get embedDim(): number {
    return this.config.projection_dim;
  }

  /** The tensors the model holds: the checkpoint's, with each layer's q/k/v as one fused qkv_proj. */
  parameters(): Parameter[] {
    return [...this.params];
  }

  /** The weights under the checkpoint's (HF) keys, q_proj/k_proj/v_proj included: what fromWeights loads. */
  async stateDict(): Promise<StateDict> {
    const sd = await encoderStateDict(this.params);
    // The patch convolution's weight is held as (C, ch·p·p); the checkpoint has it as (C, ch, p, p).
    const conv = 'vision_model.embeddings.patch_embedding.weight';
    const w = sd.get(conv);
    const c = this.config;
    if (w) sd.set(conv, { ...w, shape: [c.hidden_size, c.num_channels, c.patch_size, c.patch_size] });
    return sd;
  }

  /** Values per image in pixel_values: channels · size · size. */
  get pixelsPerImage(): number {
    const c = this.config;
    return c.num_channels * c.image_size * c.image_size;
  }

  /**
   * im2col of normalized pixel_values (N, ch, S, S): rows (N·grid², ch·p·p), each row one patch in the conv
   * weight's (ch, ky, kx) order, patches row-major over the grid (as the conv output is flattened).
   */
  patchify(pixels: Float32Array, n: number): Float32Array {
    const { num_channels: ch, image_size: s, patch_size: p } = this.config;
    const g = this.grid;
    const out = new Float32Array(n * g * g * ch * p * p);
    let o = 0;
    for (let i = 0; i < n; i++)
      for (let gy = 0; gy < g; gy++)
        for (let gx = 0; gx < g; gx++)
          for (let c = 0; c < ch; c++)
            for (let ky = 0; ky < p; ky++) {
              const src = ((i * ch + c) * s + gy * p + ky) * s + gx * p;
              out.set(pixels.subarray(src, src + p), o);
              o += p;
            }
    return out;
  }

  /** Full forward from pixel_values (N, ch, S, S) given as host data. */
  forward(pixelValues: Float32Array): ClipVisionOutput {
    const b = this.backend;
    const c = this.config;
    const per = this.pixelsPerImage;
    if (pixelValues.length === 0 || pixelValues.length % per !== 0)
      throw new ShapeError(
        `CLIP vision: pixel_values must hold N·${c.num_channels}·${c.image_size}·${c.image_size} values, got ${pixelValues.length}`,
      );
    const n = pixelValues.length / per;
    const w = c.hidden_size;
    const g2 = this.grid * this.grid;
    const cols = b.upload(this.patchify(pixelValues, n), [n, g2, per / g2]);
    const patches = this.patch.forward(cols); // (N, grid², C)
    b.free(cols);
    const zero = b.zeros([n, 1, w]);
    const cls = b.binary('add', zero, this.classEmbedding.value); // (N, 1, C)
    b.free(zero);
    const tokens = b.concat([cls, patches], 1); // (N, 1 + grid², C)
    b.free(cls);
    b.free(patches);
    const emb = b.binary('add', tokens, this.positions.value);
    b.free(tokens);
    const x0 = this.preLn.forward(emb);
    b.free(emb);
    const lastHidden = runEncoder(this.blocks, x0, false);
    const first = b.slice(lastHidden, 1, 0, 1).reshape([n, w]);
    const pooled = this.postLn.forward(first);
    b.free(first);
    const embeds = this.projection.forward(pooled);
    return { lastHidden, pooled, embeds };
  }

  /** Projected, unnormalized image embeddings (N, projection_dim) from pixel_values (N, ch, S, S). */
  encodeImages(pixelValues: Float32Array): Tensor {
    const r = this.forward(pixelValues);
    this.backend.free(r.lastHidden);
    this.backend.free(r.pooled);
    return r.embeds;
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
  }
}

export interface ClipTextOutput {
  /** (B, T, C) after final_layer_norm. */
  lastHidden: Tensor;
  /** (B, C) the hidden state at each row's EOS position. */
  pooled: Tensor;
  /** (B, projection_dim) text_projection(pooled), unnormalized. */
  embeds: Tensor;
}

export class ClipTextModel {
  private readonly tokens: Parameter;
  private readonly positions: Parameter;
  private readonly blocks: PreLnBlock[];
  private readonly finalLn: LayerNorm;
  private readonly projection: Linear;
  private readonly params: Parameter[];

  private constructor(
    readonly backend: Backend,
    readonly config: ClipTextConfig,
    get: (name: string) => Parameter,
    names: Iterable<string>,
  ) {
    const c = config;
    this.tokens = get('text_model.embeddings.token_embedding.weight');
    this.positions = get('text_model.embeddings.position_embedding.weight');
    this.blocks = buildEncoder(
      get,
      'text_model.encoder.layers.',
      c.num_hidden_layers,
      c.hidden_size,
      c.num_attention_heads,
      c.layer_norm_eps,
      c.hidden_act,
    );
    this.finalLn = new LayerNorm(
      get('text_model.final_layer_norm.weight'),
      get('text_model.final_layer_norm.bias'),
      c.layer_norm_eps,
    );
    this.projection = new Linear(get('text_projection.weight'), null, 'out_in');
    this.params = heldParams(this.blocks, [...names].filter((n) => !SEPARATE_QKV.test(n)).map(get));
  }

  /** From HF weights (text_model.* and text_projection.weight); every key and shape is checked. */
  static fromWeights(
    backend: Backend,
    config: ClipTextConfig,
    weights: StateDict,
    source = 'CLIP text',
  ): ClipTextModel {
    if (config.hidden_size % config.num_attention_heads !== 0)
      throw new ShapeError(
        `CLIP text config: hidden_size ${config.hidden_size} is not divisible by the heads`,
      );
    const spec = clipTextKeySpec(config);
    checkWeights(
      weights,
      spec,
      source,
      (n) => !n.startsWith('text_model.') && n !== 'text_projection.weight',
    );
    const get = loadParams(backend, weights, spec, new Map());
    return new ClipTextModel(backend, config, get, spec.keys());
  }

  get embedDim(): number {
    return this.config.projection_dim;
  }

  /** The tensors the model holds: the checkpoint's, with each layer's q/k/v as one fused qkv_proj. */
  parameters(): Parameter[] {
    return [...this.params];
  }

  /** The weights under the checkpoint's (HF) keys, q_proj/k_proj/v_proj included: what fromWeights loads. */
  stateDict(): Promise<StateDict> {
    return encoderStateDict(this.params);
  }

  /** The pooled position of each row, as HF picks it (see the file comment). */
  eosPositions(ids: Int32Array, batch: number, time: number): number[] {
    const eos = this.config.eos_token_id;
    const out: number[] = [];
    for (let r = 0; r < batch; r++) {
      const row = ids.subarray(r * time, (r + 1) * time);
      let pos = 0;
      if (eos === 2) {
        for (let t = 1; t < time; t++) if (row[t] > row[pos]) pos = t;
      } else {
        const i = row.indexOf(eos);
        pos = i < 0 ? 0 : i;
      }
      out.push(pos);
    }
    return out;
  }

  /**
   * ids (B, T) host int32 with `shape` [B, T]; attentionMask (B, T) (1 = real token) or none.
   * T may not exceed max_position_embeddings (77).
   */
  forward(
    ids: Int32Array,
    shape: readonly [number, number],
    attentionMask?: ArrayLike<number>,
  ): ClipTextOutput {
    const b = this.backend;
    const c = this.config;
    const [bsz, time] = shape;
    if (ids.length !== bsz * time)
      throw new ShapeError(`CLIP text: ids hold ${ids.length} values, not ${bsz}·${time}`);
    if (time > c.max_position_embeddings)
      throw new RangeError(
        `CLIP text: ${time} tokens exceed max_position_embeddings ${c.max_position_embeddings}`,
      );
    if (attentionMask && attentionMask.length !== bsz * time)
      throw new ShapeError(`CLIP text: the attention mask must be (${bsz}, ${time})`);
    for (const id of ids)
      if (id < 0 || id >= c.vocab_size)
        throw new RangeError(`CLIP text: token id ${id} is outside 0..${c.vocab_size - 1}`);
    const idT = b.upload(ids, [bsz, time]);
    const tok = b.embedding(idT, this.tokens.value);
    b.free(idT);
    const pos = b.slice(this.positions.value, 0, 0, time);
    const x0 = b.binary('add', tok, pos);
    b.free(tok);
    b.free(pos);
    const keyMask = attentionMask ? b.upload(Float32Array.from(attentionMask), [bsz, time]) : undefined;
    const enc = runEncoder(this.blocks, x0, true, keyMask);
    if (keyMask) b.free(keyMask);
    const lastHidden = this.finalLn.forward(enc);
    b.free(enc);
    const rows = this.eosPositions(ids, bsz, time).map((t, r) => r * time + t);
    const pooled = b.indexSelect(lastHidden.view([bsz * time, c.hidden_size]), rows);
    const embeds = this.projection.forward(pooled);
    return { lastHidden, pooled, embeds };
  }

  /** Projected, unnormalized text embeddings (B, projection_dim). */
  encodeText(ids: Int32Array, shape: readonly [number, number], attentionMask?: ArrayLike<number>): Tensor {
    const r = this.forward(ids, shape, attentionMask);
    this.backend.free(r.lastHidden);
    this.backend.free(r.pooled);
    return r.embeds;
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
  }
}
