/**
 * CLIP key map (Hugging Face names, kept as they are):
 *   vision_model.embeddings.class_embedding (W), .patch_embedding.weight (W, C, P, P) (a bias-free conv),
 *   .position_embedding.weight (1 + (S/P)^2, W), vision_model.pre_layrnorm.* (sic: HF's spelling),
 *   vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}.*,
 *   vision_model.post_layernorm.*, visual_projection.weight (D, W) (no bias);
 *   text_model.embeddings.{token,position}_embedding.weight, text_model.encoder.layers.N.*,
 *   text_model.final_layer_norm.*, text_projection.weight (D, W).
 * Linear weights are (out, in) as torch stores them. Dropped: position_ids buffers and logit_scale.
 *
 * Sizes come from the shapes; heads from config.json or, without one, OpenAI's rule heads = width / 64
 * (every released CLIP tower follows it).
 */
import { UserError } from '../../util/errors.js';
import type { ClipTextConfig, ClipVisionConfig } from '../../config/models.js';
import type { StateDict } from '../host.js';
import { agree, checkKeys, countLayers, intField, numField, shapeOf } from './common.js';
import type { ConfigSource, KeySpec } from './common.js';

export interface ClipWeights {
  /** Present when the checkpoint has vision_model.* (with visual_projection.weight). */
  vision?: { config: ClipVisionConfig; weights: StateDict };
  /** Present when it has text_model.* (with text_projection.weight). */
  text?: { config: ClipTextConfig; weights: StateDict };
}

function encoderSpec(spec: KeySpec, prefix: string, layers: number, w: number, inner: number): void {
  for (let i = 0; i < layers; i++) {
    const p = `${prefix}${i}.`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      spec.set(`${p}self_attn.${proj}.weight`, [w, w]);
      spec.set(`${p}self_attn.${proj}.bias`, [w]);
    }
    spec.set(`${p}layer_norm1.weight`, [w]);
    spec.set(`${p}layer_norm1.bias`, [w]);
    spec.set(`${p}mlp.fc1.weight`, [inner, w]);
    spec.set(`${p}mlp.fc1.bias`, [inner]);
    spec.set(`${p}mlp.fc2.weight`, [w, inner]);
    spec.set(`${p}mlp.fc2.bias`, [w]);
    spec.set(`${p}layer_norm2.weight`, [w]);
    spec.set(`${p}layer_norm2.bias`, [w]);
  }
}

export function clipVisionKeySpec(c: ClipVisionConfig): KeySpec {
  const w = c.hidden_size;
  const grid = c.image_size / c.patch_size;
  const spec: KeySpec = new Map();
  spec.set('vision_model.embeddings.class_embedding', [w]);
  spec.set('vision_model.embeddings.patch_embedding.weight', [w, c.num_channels, c.patch_size, c.patch_size]);
  spec.set('vision_model.embeddings.position_embedding.weight', [grid * grid + 1, w]);
  spec.set('vision_model.pre_layrnorm.weight', [w]);
  spec.set('vision_model.pre_layrnorm.bias', [w]);
  encoderSpec(spec, 'vision_model.encoder.layers.', c.num_hidden_layers, w, c.intermediate_size);
  spec.set('vision_model.post_layernorm.weight', [w]);
  spec.set('vision_model.post_layernorm.bias', [w]);
  spec.set('visual_projection.weight', [c.projection_dim, w]);
  return spec;
}

export function clipTextKeySpec(c: ClipTextConfig): KeySpec {
  const w = c.hidden_size;
  const spec: KeySpec = new Map();
  spec.set('text_model.embeddings.token_embedding.weight', [c.vocab_size, w]);
  spec.set('text_model.embeddings.position_embedding.weight', [c.max_position_embeddings, w]);
  encoderSpec(spec, 'text_model.encoder.layers.', c.num_hidden_layers, w, c.intermediate_size);
  spec.set('text_model.final_layer_norm.weight', [w]);
  spec.set('text_model.final_layer_norm.bias', [w]);
  spec.set('text_projection.weight', [c.projection_dim, w]);
  return spec;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The tower's section of a config.json: `vision_config` / `text_config` of a CLIPModel, or the file itself. */
function section(
  config: ConfigSource | undefined,
  key: 'vision_config' | 'text_config',
): ConfigSource | undefined {
  if (!config) return undefined;
  const sub = config[key];
  if (isObject(sub)) return sub;
  const type = config.model_type;
  const own = key === 'vision_config' ? 'clip_vision_model' : 'clip_text_model';
  return type === own ? config : undefined;
}

function heads(cfg: ConfigSource | undefined, width: number, what: string): number {
  const n = intField(cfg, 'num_attention_heads', what);
  if (n !== undefined) {
    if (n === 0 || width % n !== 0)
      throw new UserError(`${what}: width ${width} is not divisible by ${n} heads`);
    return n;
  }
  if (width % 64 !== 0) {
    throw new UserError(
      `${what}: cannot infer the number of heads of width ${width}; give the model's config.json`,
    );
  }
  return width / 64;
}

function activation(cfg: ConfigSource | undefined, what: string): 'quick_gelu' | 'gelu' {
  const act = cfg?.hidden_act ?? 'quick_gelu';
  if (act !== 'quick_gelu' && act !== 'gelu') {
    throw new UserError(
      `${what}: unsupported hidden_act ${JSON.stringify(act)} (clipcap supports quick_gelu and gelu)`,
    );
  }
  return act;
}

function visionConfigFor(sd: StateDict, root: ConfigSource | undefined, what: string): ClipVisionConfig {
  const cfg = section(root, 'vision_config');
  const patch = shapeOf(sd, 'vision_model.embeddings.patch_embedding.weight', what, 4);
  const pos = shapeOf(sd, 'vision_model.embeddings.position_embedding.weight', what, 2);
  const proj = shapeOf(sd, 'visual_projection.weight', what, 2);
  const w = agree(intField(cfg, 'hidden_size', what), patch[0], 'vision hidden_size', what);
  const p = agree(intField(cfg, 'patch_size', what), patch[2], 'patch_size', what);
  const grid = Math.round(Math.sqrt(pos[0] - 1));
  if (grid * grid + 1 !== pos[0]) {
    throw new UserError(`${what}: ${pos[0]} vision positions are not 1 + a square number of patches`);
  }
  const layers = countLayers(sd.keys(), 'vision_model.encoder.layers.', what);
  const fc1 = layers > 0 ? shapeOf(sd, 'vision_model.encoder.layers.0.mlp.fc1.weight', what, 2) : [4 * w, w];
  // The top-level projection_dim is what visual_projection has (vision_config's may be a stale default).
  const projection = intField(root, 'projection_dim', what);
  return {
    hidden_size: w,
    intermediate_size: agree(
      intField(cfg, 'intermediate_size', what),
      fc1[0],
      'vision intermediate_size',
      what,
    ),
    num_hidden_layers: agree(
      intField(cfg, 'num_hidden_layers', what),
      layers,
      'vision num_hidden_layers',
      what,
    ),
    num_attention_heads: heads(cfg, w, what),
    image_size: agree(intField(cfg, 'image_size', what), grid * p, 'image_size', what),
    patch_size: p,
    num_channels: agree(intField(cfg, 'num_channels', what), patch[1], 'num_channels', what),
    layer_norm_eps: numField(cfg, 'layer_norm_eps', what) ?? 1e-5,
    hidden_act: activation(cfg, what),
    projection_dim: agree(projection, proj[0], 'projection_dim', what),
  };
}

function textConfigFor(sd: StateDict, root: ConfigSource | undefined, what: string): ClipTextConfig {
  const cfg = section(root, 'text_config');
  const tok = shapeOf(sd, 'text_model.embeddings.token_embedding.weight', what, 2);
  const pos = shapeOf(sd, 'text_model.embeddings.position_embedding.weight', what, 2);
  const proj = shapeOf(sd, 'text_projection.weight', what, 2);
  const w = agree(intField(cfg, 'hidden_size', what), tok[1], 'text hidden_size', what);
  const layers = countLayers(sd.keys(), 'text_model.encoder.layers.', what);
  const fc1 = layers > 0 ? shapeOf(sd, 'text_model.encoder.layers.0.mlp.fc1.weight', what, 2) : [4 * w, w];
  return {
    vocab_size: agree(intField(cfg, 'vocab_size', what), tok[0], 'text vocab_size', what),
    hidden_size: w,
    intermediate_size: agree(
      intField(cfg, 'intermediate_size', what),
      fc1[0],
      'text intermediate_size',
      what,
    ),
    num_hidden_layers: agree(
      intField(cfg, 'num_hidden_layers', what),
      layers,
      'text num_hidden_layers',
      what,
    ),
    num_attention_heads: heads(cfg, w, what),
    max_position_embeddings: agree(
      intField(cfg, 'max_position_embeddings', what),
      pos[0],
      'max_position_embeddings',
      what,
    ),
    layer_norm_eps: numField(cfg, 'layer_norm_eps', what) ?? 1e-5,
    hidden_act: activation(cfg, what),
    eos_token_id: intField(cfg, 'eos_token_id', what) ?? 49407,
    projection_dim: agree(intField(root, 'projection_dim', what), proj[0], 'projection_dim', what),
  };
}

const DROPPED = /(^|\.)position_ids$|^logit_scale$/;

/**
 * A CLIPModel, CLIPVisionModelWithProjection or CLIPTextModelWithProjection state dict -> each tower's
 * config and weights, every key and shape checked. `config`: the model's parsed config.json (optional).
 */
export function clipWeights(sd: StateDict, config?: ConfigSource, what = 'CLIP weights'): ClipWeights {
  const vision: StateDict = new Map();
  const text: StateDict = new Map();
  const other: string[] = [];
  for (const [k, t] of sd) {
    if (DROPPED.test(k)) continue;
    if (k.startsWith('vision_model.') || k === 'visual_projection.weight') vision.set(k, t);
    else if (k.startsWith('text_model.') || k === 'text_projection.weight') text.set(k, t);
    else other.push(k);
  }
  if (other.length) {
    throw new UserError(
      `${what}: unexpected ${other.slice(0, 8).join(', ')}${other.length > 8 ? ` and ${other.length - 8} more` : ''}; expected a Hugging Face CLIP checkpoint (vision_model.*, text_model.*)`,
    );
  }
  if (vision.size === 0 && text.size === 0)
    throw new UserError(`${what}: no CLIP weights (vision_model.* or text_model.*)`);
  const out: ClipWeights = {};
  if (vision.size) {
    if (!vision.has('visual_projection.weight')) {
      throw new UserError(
        `${what}: no visual_projection.weight (a CLIPVisionModel without projection); use the full CLIPModel or CLIPVisionModelWithProjection weights`,
      );
    }
    const c = visionConfigFor(vision, config, what);
    out.vision = {
      config: c,
      weights: checkKeys(
        vision,
        clipVisionKeySpec(c),
        what,
        `expected a CLIP vision tower of width ${c.hidden_size}`,
      ),
    };
  }
  if (text.size) {
    if (!text.has('text_projection.weight')) {
      throw new UserError(`${what}: no text_projection.weight; use the full CLIPModel weights`);
    }
    const c = textConfigFor(text, config, what);
    out.text = {
      config: c,
      weights: checkKeys(
        text,
        clipTextKeySpec(c),
        what,
        `expected a CLIP text tower of width ${c.hidden_size}`,
      ),
    };
  }
  return out;
}
