/**
 * Building a captioner from files: which checkpoint, which CLIP, which GPT-2, resolved from local paths or
 * Hugging Face repos through the hub cache (DESIGN.md "Contracts").
 *
 * - `model: 'coco' | 'conceptual'`: the published ClipCap MLP checkpoints, with CLIP
 *   openai/clip-vit-base-patch32 and GPT-2's config from openai-community/gpt2 (the checkpoints hold GPT-2's
 *   weights, so only the config is needed; a standard width picks it without any download).
 * - `model: DIR`: a clipcap checkpoint directory; `clipcap: FILE`: an official .pt (or such a directory).
 * - A checkpoint with GPT-2 weights uses them (`gpt2` supplies the config only); one with only clip_project.*
 *   takes GPT-2's weights from `gpt2` (default openai-community/gpt2).
 * - CLIP is loaded lazily, on the first image.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Backend } from '../engine/backend.js';
import { getBackend, type BackendName } from '../engine/index.js';
import { ClipVisionModel } from '../models/clip.js';
import { ClipCapModel } from '../models/clipcap.js';
import type { ClipVisionConfig, Gpt2Config, MapperConfig } from '../models/config.js';
import { Gpt2Tokenizer } from '../text/gpt2-tokenizer.js';
import { UserError } from '../util/errors.js';
import type { StateDict } from '../weights/host.js';
import { loadSafetensors } from '../weights/safetensors.js';
import { loadTorchCheckpoint } from '../weights/torch.js';
import type { CaptionerParts, ImageEncoder } from './caption.js';
import { hubFile } from './hub-shim.js';

export const DEFAULT_CLIP = 'openai/clip-vit-base-patch32';
export const DEFAULT_GPT2 = 'openai-community/gpt2';

/** The published ClipCap checkpoints. */
export const PRETRAINED = {
  coco: { repo: 'akhaliq/CLIP-prefix-captioning-COCO-weights', file: 'coco_weights.pt' },
  conceptual: { repo: 'akhaliq/CLIP-prefix-captioning-conceptual-weights', file: 'conceptual_weights.pt' },
} as const;

export type PretrainedName = keyof typeof PRETRAINED;

export interface ClipCapLoadOptions {
  /** 'coco' (default when nothing else is given), 'conceptual', or a clipcap checkpoint directory. */
  model?: string;
  /** A ClipCap checkpoint: an official .pt file or a clipcap directory. Overrides `model`. */
  clipcap?: string;
  /** CLIP: a directory (config.json + model.safetensors) or a hub repo id. Default openai/clip-vit-base-patch32. */
  clip?: string;
  /** GPT-2: a directory or hub repo id (config, and weights when the checkpoint has none). */
  gpt2?: string;
  /** 'native' | 'reference' or a Backend; default: native when it loads. */
  backend?: BackendName | Backend;
  /** Use only files already in the Hugging Face cache (also HF_HUB_OFFLINE=1). */
  offline?: boolean;
  /** Hub revision (branch, tag or commit) for hub repos. Default main. */
  revision?: string;
  /** L2-normalize CLIP embeddings before the mapper (checkpoints trained with --normalize_prefix). */
  normalizePrefix?: boolean;
}

interface SourceOptions {
  offline?: boolean;
  revision?: string;
}

async function isDirectory(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => null))?.isDirectory() ?? false;
}

async function exists(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => null)) !== null;
}

/** "owner/name" as the hub spells repo ids. */
export function looksLikeRepoId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/.test(s) && !s.includes('..');
}

/** A file of a model given as a local directory or a hub repo id -> a local path. */
export async function modelFile(spec: string, file: string, o: SourceOptions, what: string): Promise<string> {
  if (await isDirectory(spec)) {
    const p = path.join(spec, file);
    if (!(await exists(p)))
      throw new UserError(
        `${what}: ${spec} has no ${file}; give a directory with config.json and model.safetensors`,
      );
    return p;
  }
  if (!looksLikeRepoId(spec) || (await exists(spec)))
    throw new UserError(`${what}: ${spec} is neither a directory nor a Hugging Face repo id (owner/name)`);
  return hubFile({ repo: spec, file, revision: o.revision, offline: o.offline });
}

async function readJson(file: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new UserError(`${what}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch {
    throw new UserError(`${what}: ${file} is not a JSON object; re-download it`);
  }
}

async function readSafetensorsFile(file: string): Promise<StateDict> {
  const f = await loadSafetensors(file);
  try {
    return await f.readAll();
  } finally {
    await f.close();
  }
}

// ---- GPT-2 ----

const STANDARD_GPT2: Record<number, { n_layer: number; n_head: number; name: string }> = {
  768: { n_layer: 12, n_head: 12, name: 'gpt2' },
  1024: { n_layer: 24, n_head: 16, name: 'gpt2-medium' },
  1280: { n_layer: 36, n_head: 20, name: 'gpt2-large' },
  1600: { n_layer: 48, n_head: 25, name: 'gpt2-xl' },
};

function num(o: Record<string, unknown>, k: string, dflt: number | undefined, what: string): number {
  const v = o[k];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw new UserError(`${what}: config.json has no "${k}"`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new UserError(`${what}: config.json "${k}" is not a number`);
  return v;
}

/** GPT-2 config.json (Hugging Face field names) -> Gpt2Config. */
export function gpt2ConfigFromJson(j: Record<string, unknown>, what = 'GPT-2'): Gpt2Config {
  const type = j.model_type;
  if (typeof type === 'string' && type !== 'gpt2')
    throw new UserError(
      `${what}: config.json describes a "${type}" model, not GPT-2; give a GPT-2 directory or repo (e.g. ${DEFAULT_GPT2})`,
    );
  return {
    vocab_size: num(j, 'vocab_size', 50257, what),
    n_positions: num(j, 'n_positions', 1024, what),
    n_embd: num(j, 'n_embd', 768, what),
    n_layer: num(j, 'n_layer', 12, what),
    n_head: num(j, 'n_head', 12, what),
    layer_norm_epsilon: num(j, 'layer_norm_epsilon', 1e-5, what),
    resid_pdrop: num(j, 'resid_pdrop', 0.1, what),
    embd_pdrop: num(j, 'embd_pdrop', 0.1, what),
    attn_pdrop: num(j, 'attn_pdrop', 0.1, what),
    n_inner: typeof j.n_inner === 'number' ? j.n_inner : null,
    activation_function: typeof j.activation_function === 'string' ? j.activation_function : 'gelu_new',
  };
}

/** GPT-2 config of a standard width (768/1024/1280/1600), or null. */
export function standardGpt2Config(width: number, layers?: number): Gpt2Config | null {
  const s = STANDARD_GPT2[width];
  if (!s) return null;
  return {
    vocab_size: 50257,
    n_positions: 1024,
    n_embd: width,
    n_layer: layers ?? s.n_layer,
    n_head: s.n_head,
    layer_norm_epsilon: 1e-5,
    resid_pdrop: 0.1,
    embd_pdrop: 0.1,
    attn_pdrop: 0.1,
    n_inner: null,
    activation_function: 'gelu_new',
  };
}

/** GPT-2 weights with canonical names (no `transformer.` prefix, tied lm_head dropped). */
function canonicalGpt2(sd: StateDict, prefix: string): StateDict {
  const out: StateDict = new Map();
  for (const [k, v] of sd) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v);
  return out;
}

// ---- ClipCap checkpoints ----

interface ClipCapCheckpoint {
  mapper: MapperConfig;
  mapperWeights: StateDict;
  /** Canonical GPT-2 weights when the checkpoint has them. */
  gpt2Weights: StateDict | null;
  /** GPT-2's width E (from the weights or the mapper's output). */
  width: number | null;
  layers: number | null;
}

function shapeOf(sd: StateDict, k: string): readonly number[] | undefined {
  return sd.get(k)?.shape;
}

/** Mapper type and sizes from an official state dict's keys and shapes. */
function clipcapFromStateDict(sd: StateDict, file: string): ClipCapCheckpoint {
  const mapperWeights: StateDict = new Map();
  for (const [k, v] of sd) if (k.startsWith('clip_project.')) mapperWeights.set(k, v);
  const gptKeys = [...sd.keys()].filter((k) => k.startsWith('gpt.transformer.'));
  const gpt2Weights = gptKeys.length > 0 ? canonicalGpt2(sd, 'gpt.transformer.') : null;
  const wte = shapeOf(sd, 'gpt.transformer.wte.weight');
  let width = wte ? wte[1] : null;
  const layerIds = new Set(gptKeys.map((k) => /^gpt\.transformer\.h\.(\d+)\./.exec(k)?.[1]).filter(Boolean));
  const layers = layerIds.size > 0 ? layerIds.size : null;
  if (mapperWeights.size === 0)
    throw new UserError(
      `${file}: no clip_project.* weights, so this is not a ClipCap checkpoint; give the .pt that ClipCap's train.py saves`,
    );
  if (mapperWeights.has('clip_project.model.0.weight')) {
    const sizes: number[] = [];
    for (let i = 0; ; i += 2) {
      const s = shapeOf(mapperWeights, `clip_project.model.${i}.weight`);
      if (!s) break;
      if (s.length !== 2) throw new UserError(`${file}: clip_project.model.${i}.weight is not a matrix`);
      if (i === 0) sizes.push(s[1]);
      sizes.push(s[0]);
    }
    const out = sizes[sizes.length - 1];
    // K = 10 in every published checkpoint; E comes from GPT-2's weights when present.
    const E = width ?? (out % 768 === 0 ? 768 : null);
    if (E === null || out % E !== 0)
      throw new UserError(
        `${file}: cannot tell GPT-2's width from the checkpoint; give --gpt2 with its config`,
      );
    width = E;
    return {
      mapper: { kind: 'mlp', prefix_size: sizes[0], prefix_length: out / E, sizes },
      mapperWeights,
      gpt2Weights,
      width,
      layers,
    };
  }
  const lin = shapeOf(mapperWeights, 'clip_project.linear.weight');
  const pc = shapeOf(mapperWeights, 'clip_project.prefix_const');
  if (!lin || !pc || lin.length !== 2 || pc.length !== 2)
    throw new UserError(
      `${file}: clip_project.* is neither the MLP (model.0.weight) nor the Transformer mapper (linear, prefix_const)`,
    );
  const E = pc[1];
  let numLayers = 0;
  while (mapperWeights.has(`clip_project.transformer.layers.${numLayers}.norm1.weight`)) numLayers++;
  return {
    mapper: {
      kind: 'transformer',
      prefix_size: lin[1],
      prefix_length: pc[0],
      clip_length: lin[0] / E,
      num_layers: numLayers,
      num_heads: 8,
    },
    mapperWeights,
    gpt2Weights,
    width: width ?? E,
    layers,
  };
}

async function readClipcapCheckpoint(file: string): Promise<ClipCapCheckpoint> {
  if (await isDirectory(file))
    throw new UserError(
      `${file}: clipcap checkpoint directories are not supported by this build yet; give the official .pt file`,
    );
  if (!(await exists(file))) throw new UserError(`ClipCap checkpoint ${file}: no such file; check the path`);
  return clipcapFromStateDict(await loadTorchCheckpoint(file), file);
}

// ---- CLIP ----

/** CLIP config.json (full CLIPModel or CLIPVisionModel) -> the vision tower's config. */
export function clipVisionConfigFromJson(j: Record<string, unknown>, what = 'CLIP'): ClipVisionConfig {
  const type = j.model_type;
  if (typeof type === 'string' && type !== 'clip' && type !== 'clip_vision_model')
    throw new UserError(
      `${what}: config.json describes a "${type}" model, not CLIP; give a CLIP directory or repo (e.g. ${DEFAULT_CLIP})`,
    );
  const v = (typeof j.vision_config === 'object' && j.vision_config !== null ? j.vision_config : j) as Record<
    string,
    unknown
  >;
  const act = v.hidden_act ?? 'quick_gelu';
  if (act !== 'quick_gelu' && act !== 'gelu')
    throw new UserError(`${what}: unsupported hidden_act "${String(act)}"`);
  return {
    hidden_size: num(v, 'hidden_size', 768, what),
    intermediate_size: num(v, 'intermediate_size', 3072, what),
    num_hidden_layers: num(v, 'num_hidden_layers', 12, what),
    num_attention_heads: num(v, 'num_attention_heads', 12, what),
    image_size: num(v, 'image_size', 224, what),
    patch_size: num(v, 'patch_size', 32, what),
    num_channels: num(v, 'num_channels', 3, what),
    layer_norm_eps: num(v, 'layer_norm_eps', 1e-5, what),
    hidden_act: act,
    // The top-level projection_dim is the one visual_projection has (vision_config's may be a stale default).
    projection_dim: num(j, 'projection_dim', num(v, 'projection_dim', 512, what), what),
  };
}

/** The CLIP image encoder from a directory or hub repo (config.json + model.safetensors). */
export async function loadImageEncoder(
  spec: string,
  o: SourceOptions & { backend?: BackendName | Backend } = {},
): Promise<ImageEncoder> {
  const what = `CLIP ${spec}`;
  const config = clipVisionConfigFromJson(
    await readJson(await modelFile(spec, 'config.json', o, what), what),
    what,
  );
  const weightsFile = await modelFile(spec, 'model.safetensors', o, what);
  const sd = await readSafetensorsFile(weightsFile);
  const vision: StateDict = new Map();
  for (const [k, v] of sd)
    if (k.startsWith('vision_model.') || k === 'visual_projection.weight') vision.set(k, v);
  const model = ClipVisionModel.fromWeights(resolveBackend(o.backend), config, vision, weightsFile);
  return {
    projectionDim: model.embedDim,
    imageSize: config.image_size,
    encodeImages: (pixels) => model.encodeImages(pixels),
    dispose: () => model.dispose(),
  };
}

function resolveBackend(b: BackendName | Backend | undefined): Backend {
  return typeof b === 'object' ? b : getBackend(b);
}

// ---- everything together ----

/** Resolve options to a checkpoint path (downloading a preset when needed). */
async function checkpointPath(o: ClipCapLoadOptions): Promise<string> {
  if (o.clipcap !== undefined) return o.clipcap;
  const model = o.model ?? 'coco';
  if (model in PRETRAINED) {
    const p = PRETRAINED[model as PretrainedName];
    return hubFile({ repo: p.repo, file: p.file, offline: o.offline });
  }
  if (await isDirectory(model)) return model;
  throw new UserError(`--model ${model}: use coco, conceptual or a clipcap checkpoint directory`);
}

/** Load every part of a captioner (CLIP lazily). */
export async function loadCaptionerParts(o: ClipCapLoadOptions = {}): Promise<CaptionerParts> {
  const backend = resolveBackend(o.backend);
  const src: SourceOptions = { offline: o.offline, revision: o.revision };
  const file = await checkpointPath(o);
  const ckpt = await readClipcapCheckpoint(file);

  // GPT-2: with weights in the checkpoint, --gpt2 supplies only the config (else a standard width picks it);
  // without, config and weights both come from --gpt2 (default openai-community/gpt2).
  let config: Gpt2Config;
  let weights = ckpt.gpt2Weights;
  if (o.gpt2 === undefined && weights) {
    const std = ckpt.width !== null ? standardGpt2Config(ckpt.width, ckpt.layers ?? undefined) : null;
    if (!std)
      throw new UserError(
        `${file}: its GPT-2 is ${ckpt.width} wide, not a standard size (768/1024/1280/1600); ` +
          `give --gpt2 DIR|HUB_ID with its config.json`,
      );
    config = std;
  } else {
    const spec = o.gpt2 ?? DEFAULT_GPT2;
    const what = `GPT-2 ${spec}`;
    config = gpt2ConfigFromJson(await readJson(await modelFile(spec, 'config.json', src, what), what), what);
    if (!weights) {
      const wfile = await modelFile(spec, 'model.safetensors', src, what);
      const sd = await readSafetensorsFile(wfile);
      weights = canonicalGpt2(
        sd,
        [...sd.keys()].some((k) => k.startsWith('transformer.')) ? 'transformer.' : '',
      );
    }
  }
  if (!weights) throw new Error('unreachable: GPT-2 weights resolved above');
  const model = ClipCapModel.create(
    backend,
    {
      mapper: ckpt.mapper,
      mapperWeights: ckpt.mapperWeights,
      gpt2: { config, weights },
      normalizePrefix: o.normalizePrefix,
    },
    file,
  );
  const tokenizer = await Gpt2Tokenizer.load();
  const clipSpec = o.clip ?? DEFAULT_CLIP;
  return {
    backend,
    lm: model.gpt2,
    mapper: model,
    tokenizer,
    loadClip: () => loadImageEncoder(clipSpec, { ...src, backend }),
    description: path.basename(file),
    dispose: () => model.dispose(),
  };
}
