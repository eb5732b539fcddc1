/**
 * OpenAI's own CLIP files (github.com/openai/CLIP: `clip.load("ViT-B/32")` caches ~/.cache/clip/ViT-B-32.pt),
 * TorchScript archives of clip.model.CLIP. Only the vision tower (`visual.*`) is read; the text tower's
 * storages are never loaded. Its names map onto the Hugging Face names clip.ts checks and the model uses:
 *
 *   visual.conv1.weight (W, 3, P, P)            -> vision_model.embeddings.patch_embedding.weight
 *   visual.class_embedding (W)                  -> vision_model.embeddings.class_embedding
 *   visual.positional_embedding (1 + G², W)     -> vision_model.embeddings.position_embedding.weight
 *   visual.ln_pre.{weight,bias}                 -> vision_model.pre_layrnorm.*
 *   visual.transformer.resblocks.N.
 *     attn.in_proj_weight (3W, W), in_proj_bias -> encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias}:
 *                                                  split into thirds, rows [0, W) q, [W, 2W) k, [2W, 3W) v
 *                                                  (nn.MultiheadAttention's packing)
 *     attn.out_proj.*                           -> self_attn.out_proj.*
 *     ln_1.*, mlp.c_fc.*, mlp.c_proj.*, ln_2.*  -> layer_norm1.*, mlp.fc1.*, mlp.fc2.*, layer_norm2.*
 *   visual.ln_post.*                            -> vision_model.post_layernorm.*
 *   visual.proj (W, D)                          -> visual_projection.weight (D, W): TRANSPOSED (OpenAI applies
 *                                                  x @ proj; HF's Linear stores (out, in))
 *
 * Weights are fp16 in OpenAI's files except the embeddings and LayerNorms (clip.model.convert_weights); all
 * become f32. Config from the shapes: width W, patch P, image size G·P (checked against the archive's
 * `input_resolution`), projection D, MLP 4W; heads from the archive's `num_heads` when it was scripted, else
 * OpenAI's rule heads = W / 64 (traced archives, OpenAI's, keep no attributes); LayerNorm eps from the archive,
 * else 1e-5; activation QuickGELU (from the class of `mlp.gelu`).
 */
import { UserError } from '../../util/errors.js';
import type { ClipVisionConfig } from '../../models/config.js';
import type { HostTensor, StateDict } from '../host.js';
import { loadTorchScript, type TorchScriptModule } from '../torchscript.js';
import { clipWeights } from './clip.js';
import { fmtShape } from './common.js';

/** OpenAI's per-layer names -> HF's (after `vision_model.encoder.layers.N.`); in_proj is split separately. */
const LAYER_NAMES: Readonly<Record<string, string>> = {
  'attn.out_proj.weight': 'self_attn.out_proj.weight',
  'attn.out_proj.bias': 'self_attn.out_proj.bias',
  'ln_1.weight': 'layer_norm1.weight',
  'ln_1.bias': 'layer_norm1.bias',
  'mlp.c_fc.weight': 'mlp.fc1.weight',
  'mlp.c_fc.bias': 'mlp.fc1.bias',
  'mlp.c_proj.weight': 'mlp.fc2.weight',
  'mlp.c_proj.bias': 'mlp.fc2.bias',
  'ln_2.weight': 'layer_norm2.weight',
  'ln_2.bias': 'layer_norm2.bias',
};

const TOP_NAMES: Readonly<Record<string, string>> = {
  'visual.conv1.weight': 'vision_model.embeddings.patch_embedding.weight',
  'visual.class_embedding': 'vision_model.embeddings.class_embedding',
  'visual.positional_embedding': 'vision_model.embeddings.position_embedding.weight',
  'visual.ln_pre.weight': 'vision_model.pre_layrnorm.weight',
  'visual.ln_pre.bias': 'vision_model.pre_layrnorm.bias',
  'visual.ln_post.weight': 'vision_model.post_layernorm.weight',
  'visual.ln_post.bias': 'vision_model.post_layernorm.bias',
};

const RESBLOCK = /^visual\.transformer\.resblocks\.(\d+)\.(.+)$/;

/** A floating tensor as f32 (fp16/bf16/f64 data already arrives as Float32Array). */
function f32(t: HostTensor, name: string, what: string): HostTensor {
  if (!(t.data instanceof Float32Array))
    throw new UserError(`${what}: ${name} is ${t.dtype}, expected floating point`);
  return { dtype: 'f32', shape: t.shape, data: t.data };
}

/** (rows, cols) -> (cols, rows). */
function transpose(t: HostTensor, name: string, what: string): HostTensor {
  if (t.shape.length !== 2)
    throw new UserError(`${what}: ${name} is ${fmtShape(t.shape)}, expected (width, embed_dim)`);
  const [r, c] = t.shape;
  const src = f32(t, name, what).data as Float32Array;
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = src[i * c + j];
  return { dtype: 'f32', shape: [c, r], data: out };
}

/** in_proj (3W, ...) -> its three (W, ...) row blocks q, k, v. */
function thirds(t: HostTensor, name: string, what: string): HostTensor[] {
  const rows = t.shape[0];
  const cols = t.shape.length === 2 ? t.shape[1] : 1;
  if (
    (t.shape.length !== 1 && t.shape.length !== 2) ||
    rows % 3 !== 0 ||
    (t.shape.length === 2 && rows !== 3 * cols)
  ) {
    throw new UserError(`${what}: ${name} is ${fmtShape(t.shape)}, expected (3·width, width) or (3·width)`);
  }
  const data = f32(t, name, what).data as Float32Array;
  const n = (rows / 3) * cols;
  const shape = t.shape.length === 2 ? [rows / 3, cols] : [rows / 3];
  return [0, 1, 2].map((i) => ({ dtype: 'f32', shape, data: data.slice(i * n, (i + 1) * n) }));
}

/** The int value of a scalar attribute or 0-d integer tensor, if present. */
function scalarInt(m: TorchScriptModule, name: string): number | undefined {
  const a = m.attributes.get(name);
  if (typeof a === 'number') return a;
  const t = m.tensors.get(name);
  if (t && t.data.length === 1 && (t.data instanceof Int32Array || t.data instanceof Float32Array))
    return t.data[0];
  return undefined;
}

function activation(m: TorchScriptModule, layers: number, what: string): 'quick_gelu' | 'gelu' {
  let act: 'quick_gelu' | 'gelu' | undefined;
  for (let i = 0; i < layers; i++) {
    const path = `visual.transformer.resblocks.${i}.mlp.gelu`;
    const cls = m.classes.get(path);
    const short = cls?.slice(cls.lastIndexOf('.') + 1);
    let a: 'quick_gelu' | 'gelu';
    if (short === 'QuickGELU') a = 'quick_gelu';
    else if (short === 'GELU' && m.attributes.get(`${path}.approximate`) !== 'tanh') a = 'gelu';
    else {
      throw new UserError(
        `${what}: unsupported activation ${cls ?? '(none found)'} at ${path}; clipcap reads CLIP ViTs with QuickGELU (OpenAI's) or GELU`,
      );
    }
    if (act !== undefined && a !== act) throw new UserError(`${what}: layers use different activations`);
    act = a;
  }
  return act ?? 'quick_gelu';
}

/**
 * OpenAI CLIP (a loaded TorchScript module) -> the vision tower's config and HF-named f32 weights, every key and
 * shape checked by clip.ts. `what` names the file in errors.
 */
export function openaiClipVision(
  m: TorchScriptModule,
  what: string,
): { config: ClipVisionConfig; weights: StateDict } {
  const visual = [...m.tensors.keys()].filter((k) => k.startsWith('visual.'));
  if (visual.length === 0) {
    throw new UserError(`${what}: no visual.* weights; expected OpenAI's CLIP archive (e.g. ViT-B-32.pt)`);
  }
  if (visual.some((k) => k.startsWith('visual.attnpool.') || k.startsWith('visual.layer1.'))) {
    throw new UserError(
      `${what}: a ResNet CLIP (RN50, RN101, RN50x4, ...), which clipcap does not implement; use a ViT model (ViT-B-32.pt, ViT-B-16.pt, ViT-L-14.pt)`,
    );
  }
  const hf: StateDict = new Map();
  const unexpected: string[] = [];
  for (const name of visual) {
    const t = m.tensors.get(name) as HostTensor;
    const top = TOP_NAMES[name];
    const layer = RESBLOCK.exec(name);
    if (top) hf.set(top, f32(t, name, what));
    else if (name === 'visual.proj') hf.set('visual_projection.weight', transpose(t, name, what));
    else if (layer) {
      const p = `vision_model.encoder.layers.${layer[1]}.`;
      const rest = layer[2];
      if (rest === 'attn.in_proj_weight' || rest === 'attn.in_proj_bias') {
        const kind = rest.endsWith('weight') ? 'weight' : 'bias';
        const [q, k, v] = thirds(t, name, what);
        hf.set(`${p}self_attn.q_proj.${kind}`, q);
        hf.set(`${p}self_attn.k_proj.${kind}`, k);
        hf.set(`${p}self_attn.v_proj.${kind}`, v);
      } else if (LAYER_NAMES[rest]) hf.set(`${p}${LAYER_NAMES[rest]}`, f32(t, name, what));
      else unexpected.push(name);
    } else unexpected.push(name);
  }
  if (unexpected.length) {
    const shown = unexpected.slice(0, 8).join(', ');
    throw new UserError(
      `${what}: unexpected ${shown}${unexpected.length > 8 ? ` and ${unexpected.length - 8} more` : ''}; expected OpenAI's CLIP ViT layout`,
    );
  }

  const width = m.tensors.get('visual.conv1.weight')?.shape[0];
  const layers = new Set(visual.map((k) => RESBLOCK.exec(k)?.[1]).filter((x) => x !== undefined)).size;
  let heads = scalarInt(m, 'visual.transformer.resblocks.0.attn.num_heads');
  if (heads === undefined && width !== undefined) {
    if (width % 64 !== 0) {
      throw new UserError(
        `${what}: cannot infer the attention heads of width ${width} (OpenAI's rule is width / 64, and a traced archive does not store them)`,
      );
    }
    heads = width / 64;
  }
  const eps = m.attributes.get('visual.ln_pre.eps');
  const config = {
    vision_config: {
      num_attention_heads: heads,
      layer_norm_eps: typeof eps === 'number' ? eps : 1e-5,
      hidden_act: activation(m, layers, what),
    },
  };
  const { vision } = clipWeights(hf, config, `${what} (OpenAI CLIP, as Hugging Face names)`);
  if (!vision) throw new UserError(`${what}: no CLIP vision tower`);
  const resolution = scalarInt(m, 'input_resolution');
  if (resolution !== undefined && resolution !== vision.config.image_size) {
    throw new UserError(
      `${what}: input_resolution is ${resolution} but the positional embedding fits ${vision.config.image_size}; the archive is inconsistent`,
    );
  }
  return vision;
}

/** Load OpenAI's CLIP archive's vision tower (only `visual.*` and `input_resolution` are read). */
export async function loadOpenAIClipVision(
  file: string,
): Promise<{ config: ClipVisionConfig; weights: StateDict }> {
  const m = await loadTorchScript(file, {
    select: (name) => name.startsWith('visual.') || name === 'input_resolution',
  });
  return openaiClipVision(m, file);
}
