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
 *
 * ResNet CLIPs (RN50, RN101, RN50x4, RN50x16, RN50x64: `visual.layer1.*`, `visual.attnpool.*`) keep OpenAI's
 * names (`visual.conv1.weight`, `visual.layer2.0.downsample.1.running_var`, ...): clip-resnet.ts reads them
 * directly. Their architecture comes from the keys as clip.model.build_model infers it: blocks per stage = the
 * distinct block indexes under visual.layerN, width = rows of layer1.0.conv1.weight, resolution = 32·√(positions
 * - 1) of attnpool.positional_embedding, heads = width·32 / 64, output width = rows of attnpool.c_proj.weight.
 * Conv and linear weights are fp16 in OpenAI's files, BatchNorm fp32; all become f32, and each BatchNorm's
 * num_batches_tracked counter (unused in eval mode) is dropped.
 *
 * Besides TorchScript archives, plain `torch.save(model.state_dict())` files of the same model (open_clip's
 * OpenAI weights, `clip.load(name, jit=False)` re-saved) are read: same names, no module classes, so a ViT is
 * taken to use OpenAI's QuickGELU.
 */
import { UserError } from '../../util/errors.js';
import { promises as fs } from 'node:fs';
import yauzl from 'yauzl';
import type { ClipResNetConfig, ClipVisionConfig } from '../../config/models.js';
import type { HostTensor, StateDict } from '../host.js';
import { loadTorchCheckpoint } from '../torch.js';
import { loadTorchScript, type TorchScriptModule } from '../torchscript.js';
import { clipWeights } from './clip.js';
import { checkKeys, fmtShape, type KeySpec } from './common.js';

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
  // A plain state dict has no module classes: OpenAI's architecture, QuickGELU.
  if (m.classes.size === 0) return 'quick_gelu';
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
  if (isResNetClip(visual)) {
    throw new UserError(`${what}: a ResNet CLIP (RN50, RN101, RN50x4, ...); read it with openaiClipResNet`);
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

// ---------------------------------------------------------------- ResNet CLIPs (ModifiedResNet)

/** Whether `visual.*` names are a ModifiedResNet's (build_model's test is the absence of visual.proj). */
export function isResNetClip(names: Iterable<string>): boolean {
  for (const k of names) if (k.startsWith('visual.attnpool.') || k.startsWith('visual.layer1.')) return true;
  return false;
}

const BN_PARAMS = ['weight', 'bias', 'running_mean', 'running_var'] as const;

/**
 * Every `visual.*` key of a ModifiedResNet and its shape (PyTorch layouts: convs (out, in, kh, kw)), in
 * module order. Stage s has planes = width·2^s; its first block strides by 2 (except stage 0) and has a
 * downsample branch whenever it strides or changes the channel count.
 */
export function clipResNetKeySpec(c: ClipResNetConfig): KeySpec {
  const spec: KeySpec = new Map();
  const conv = (name: string, out: number, inp: number, k: number) =>
    spec.set(`visual.${name}.weight`, [out, inp, k, k]);
  const bn = (name: string, ch: number) => {
    for (const p of BN_PARAMS) spec.set(`visual.${name}.${p}`, [ch]);
  };
  const w = c.width;
  conv('conv1', w / 2, 3, 3);
  bn('bn1', w / 2);
  conv('conv2', w / 2, w / 2, 3);
  bn('bn2', w / 2);
  conv('conv3', w, w / 2, 3);
  bn('bn3', w);
  let inplanes = w;
  c.layers.forEach((blocks, s) => {
    const planes = w * 2 ** s;
    for (let i = 0; i < blocks; i++) {
      const p = `layer${s + 1}.${i}`;
      const stride = s > 0 && i === 0 ? 2 : 1;
      conv(`${p}.conv1`, planes, inplanes, 1);
      bn(`${p}.bn1`, planes);
      conv(`${p}.conv2`, planes, planes, 3);
      bn(`${p}.bn2`, planes);
      conv(`${p}.conv3`, planes * 4, planes, 1);
      bn(`${p}.bn3`, planes * 4);
      if (stride > 1 || inplanes !== planes * 4) {
        conv(`${p}.downsample.0`, planes * 4, inplanes, 1);
        bn(`${p}.downsample.1`, planes * 4);
      }
      inplanes = planes * 4;
    }
  });
  const embed = w * 32;
  const grid = c.image_size / 32;
  spec.set('visual.attnpool.positional_embedding', [grid * grid + 1, embed]);
  for (const n of ['k_proj', 'q_proj', 'v_proj']) {
    spec.set(`visual.attnpool.${n}.weight`, [embed, embed]);
    spec.set(`visual.attnpool.${n}.bias`, [embed]);
  }
  spec.set('visual.attnpool.c_proj.weight', [c.output_dim, embed]);
  spec.set('visual.attnpool.c_proj.bias', [c.output_dim]);
  return spec;
}

/**
 * The architecture from the key names and shapes, as clip.model.build_model infers it (see the file comment).
 * Only shapes are read, so this also checks layouts without their data.
 */
export function inferClipResNetConfig(
  shapes: ReadonlyMap<string, readonly number[]>,
  what: string,
): ClipResNetConfig {
  const need = (name: string, rank: number): readonly number[] => {
    const s = shapes.get(name);
    if (!s) throw new UserError(`${what}: missing ${name}; expected OpenAI's ResNet CLIP layout`);
    if (s.length !== rank) throw new UserError(`${what}: ${name} is ${fmtShape(s)}, expected ${rank}-D`);
    return s;
  };
  const layers = [1, 2, 3, 4].map((b) => {
    const blocks = new Set<string>();
    for (const k of shapes.keys()) {
      const m = new RegExp(`^visual\\.layer${b}\\.(\\d+)\\.`).exec(k);
      if (m) blocks.add(m[1]);
    }
    if (blocks.size === 0)
      throw new UserError(`${what}: no visual.layer${b}.* weights; expected OpenAI's ResNet CLIP layout`);
    return blocks.size;
  }) as unknown as [number, number, number, number];
  const width = need('visual.layer1.0.conv1.weight', 4)[0];
  const positions = need('visual.attnpool.positional_embedding', 2)[0];
  const grid = Math.round(Math.sqrt(positions - 1));
  if (grid * grid + 1 !== positions) {
    throw new UserError(
      `${what}: visual.attnpool.positional_embedding has ${positions} rows, not a square grid plus one`,
    );
  }
  if (width % 2 !== 0 || (width * 32) % 64 !== 0) {
    throw new UserError(`${what}: width ${width} (rows of visual.layer1.0.conv1.weight) must be even`);
  }
  return {
    layers,
    width,
    image_size: grid * 32,
    heads: (width * 32) / 64,
    output_dim: need('visual.attnpool.c_proj.weight', 2)[0],
    bn_eps: 1e-5,
  };
}

/**
 * A ResNet CLIP's `visual.*` tensors (from either file format) -> its config and f32 weights under OpenAI's
 * names, every key and shape checked against the inferred architecture.
 */
export function openaiClipResNet(
  sd: StateDict,
  what: string,
): { config: ClipResNetConfig; weights: StateDict } {
  const visual: StateDict = new Map();
  for (const [k, t] of sd) {
    if (!k.startsWith('visual.') || k.endsWith('.num_batches_tracked')) continue;
    visual.set(k, f32(t, k, what));
  }
  const config = inferClipResNetConfig(new Map([...visual].map(([k, t]) => [k, t.shape])), what);
  const weights = checkKeys(
    visual,
    clipResNetKeySpec(config),
    what,
    "expected OpenAI's ResNet CLIP (RN50, RN101, RN50x4, RN50x16, RN50x64)",
  );
  return { config, weights };
}

/** An OpenAI CLIP file's image tower, either architecture. */
export type OpenAIClipVision =
  | { kind: 'vit'; config: ClipVisionConfig; weights: StateDict }
  | { kind: 'resnet'; config: ClipResNetConfig; weights: StateDict };

/** Whether a zip file is a TorchScript archive (it has code/ or constants.pkl beside data.pkl). */
async function isTorchScriptZip(file: string): Promise<boolean> {
  let zip: yauzl.ZipFile;
  try {
    zip = await yauzl.openPromise(file, { lazyEntries: true, autoClose: false });
  } catch {
    return false; // not a zip: loadTorchCheckpoint reads legacy files and says what is wrong with others
  }
  try {
    return await new Promise<boolean>((resolve, reject) => {
      zip.on('entry', (e: yauzl.Entry) => {
        if (/^[^/]+\/(code\/|constants\.pkl$)/.test(e.fileName)) resolve(true);
        else zip.readEntry();
      });
      zip.on('end', () => resolve(false));
      zip.on('error', reject);
      zip.readEntry();
    });
  } catch {
    return false;
  } finally {
    zip.close();
  }
}

/**
 * Load an OpenAI CLIP file's image tower: a TorchScript archive as clip.load caches it (~/.cache/clip/RN50x4.pt)
 * or a plain torch.save state dict of the same model, ViT or ResNet. Of an archive only `visual.*` (and
 * `input_resolution`) is read; a plain state dict is read whole (its format has no index to skip by).
 */
export async function loadOpenAIClip(file: string): Promise<OpenAIClipVision> {
  let m: TorchScriptModule;
  const stat = await fs.stat(file).catch((e: NodeJS.ErrnoException) => e);
  if (stat instanceof Error || !stat.isFile()) {
    const code = stat instanceof Error ? stat.code : 'a directory';
    throw new UserError(`cannot open ${file}: ${code === 'ENOENT' ? 'no such file; check the path' : code}`);
  }
  if (await isTorchScriptZip(file)) {
    m = await loadTorchScript(file, {
      select: (name) => name.startsWith('visual.') || name === 'input_resolution',
    });
  } else {
    const sd = await loadTorchCheckpoint(file);
    const tensors: StateDict = new Map([...sd].filter(([k]) => k.startsWith('visual.')));
    m = { className: '', tensors, classes: new Map(), attributes: new Map() };
  }
  if (isResNetClip(m.tensors.keys())) return { kind: 'resnet', ...openaiClipResNet(m.tensors, file) };
  return { kind: 'vit', ...openaiClipVision(m, file) };
}
