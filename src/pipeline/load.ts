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
import type { Backend, WeightFormat } from '../engine/backend.js';
import { getBackend, type BackendName } from '../engine/index.js';
import { ClipVisionModel } from '../models/clip.js';
import { ClipCapModel } from '../models/clipcap.js';
import type { ClipVisionConfig, Gpt2Config, MapperConfig } from '../config/models.js';
import { Gpt2Tokenizer } from '../text/gpt2-tokenizer.js';
import { UserError } from '../util/errors.js';
import type { StateDict } from '../weights/host.js';
import { loadSafetensors } from '../weights/safetensors.js';
import { loadTorchCheckpoint } from '../weights/torch.js';
import {
  clipcapCheckpoint,
  clipWeights,
  gpt2ConfigFor,
  gpt2Weights,
  loadClipcapDir,
} from '../weights/keymaps.js';
import { loadOpenAIClip, type OpenAIClipVision } from '../weights/families/openai-clip.js';
import { isOpenAIClipName, openaiClipFile } from '../weights/openai-clip-hub.js';
import { ClipResNetVisionModel } from '../models/clip-resnet.js';
import type { CaptionerParts, ImageEncoder } from './parts.js';
import { hubFile, missingOfflineFiles, offlineMissingError, type HubFileOptions } from '../weights/hub.js';
import { bundledClip, bundledGpt2Dir, isBundled } from '../weights/bundled.js';

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
  /**
   * GPT-2's weights: 'f32' (default, exact) or weight-only 'bf16' / 'int8' (Gpt2Model.quantizeWeights):
   * faster decoding (each step reads 1/2 or 1/4 of the weight bytes), captions that may differ slightly.
   */
  weights?: 'f32' | WeightFormat;
}

/** The --weights / `weights` values. */
export const WEIGHT_CHOICES: readonly ('f32' | WeightFormat)[] = ['f32', 'bf16', 'int8'];

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
  if (isBundled(spec)) spec = bundledGpt2Dir(spec);
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

// ---- config.json checks ----

/** Refuse a config.json that describes another kind of model (a common mix-up between --clip and --gpt2). */
function expectModelType(
  j: Record<string, unknown>,
  allowed: readonly string[],
  what: string,
  example: string,
): void {
  const type = j.model_type;
  if (typeof type === 'string' && !allowed.includes(type))
    throw new UserError(
      `${what}: config.json describes a "${type}" model, not ${allowed[0] === 'gpt2' ? 'GPT-2' : 'CLIP'}; ` +
        `give a ${allowed[0] === 'gpt2' ? 'GPT-2' : 'CLIP'} directory or repo (e.g. ${example})`,
    );
}

async function gpt2ConfigJson(spec: string, o: SourceOptions): Promise<Record<string, unknown>> {
  const what = `GPT-2 ${spec}`;
  const j = await readJson(await modelFile(spec, 'config.json', o, what), what);
  expectModelType(j, ['gpt2'], what, DEFAULT_GPT2);
  return j;
}

/**
 * GPT-2 config + canonical weights from a directory or hub repo (config.json + model.safetensors); the one
 * path captioning and training both load GPT-2 through.
 */
export async function loadGpt2(
  spec: string,
  o: SourceOptions = {},
): Promise<{ config: Gpt2Config; weights: StateDict }> {
  const config = await gpt2ConfigJson(spec, o);
  const file = await modelFile(spec, 'model.safetensors', o, `GPT-2 ${spec}`);
  return gpt2Weights(await readSafetensorsFile(file), config, file);
}

// ---- ClipCap checkpoints ----

interface ResolvedClipcap {
  mapper: MapperConfig;
  mapperWeights: StateDict;
  gpt2: { config: Gpt2Config; weights: StateDict };
  normalizePrefix: boolean;
  /** The GPT-2 its tokenizer comes from (given, recorded by training, or the default). */
  gpt2Source: string;
  /** The CLIP the checkpoint recorded (resolved), when it did. */
  clip?: string;
}

/**
 * A model reference a checkpoint recorded (config.json "sources"), as a spec the loaders take: `bundled:` names
 * and hub ids as they are, local paths relative to the checkpoint directory.
 */
export async function resolveRecordedSource(ref: string, checkpointDir: string): Promise<string> {
  if (isBundled(ref)) return ref;
  const local = path.resolve(checkpointDir, ref);
  if (await exists(local)) return local;
  if (looksLikeRepoId(ref) && !path.isAbsolute(ref)) return ref;
  throw new UserError(
    `${checkpointDir}: it was trained with ${ref}, which is not at ${local}; give the model with --clip / --gpt2`,
  );
}

/**
 * The tokenizer of a GPT-2: its directory's own vocab.json + merges.txt when it has them (e.g. the bundled
 * demo GPT-2), else GPT-2's standard one.
 */
export async function loadGpt2Tokenizer(spec: string): Promise<Gpt2Tokenizer> {
  const dir = isBundled(spec) ? bundledGpt2Dir(spec) : spec;
  if ((await isDirectory(dir)) && (await Gpt2Tokenizer.directoryHasTokenizer(dir))) {
    try {
      return await Gpt2Tokenizer.fromDirectory(dir);
    } catch (e) {
      throw new UserError(`GPT-2 ${spec}: ${(e as Error).message}`);
    }
  }
  return Gpt2Tokenizer.load();
}

/**
 * Every id the model can emit must decode: a GPT-2 with a larger vocabulary than its tokenizer (e.g. a custom
 * vocabulary whose files are missing) is refused, as is a directory's own tokenizer of another size.
 */
function checkTokenizer(tok: Gpt2Tokenizer, config: Gpt2Config, spec: string): void {
  if (config.vocab_size > tok.vocabSize || (tok.vocabSize !== 50257 && tok.vocabSize !== config.vocab_size))
    throw new UserError(
      `GPT-2 ${spec}: the model has a ${config.vocab_size}-token vocabulary but its tokenizer ${tok.vocabSize} tokens; ` +
        'give a GPT-2 directory with its vocab.json and merges.txt',
    );
}

/**
 * The checkpoint (official .pt or clipcap directory) and the GPT-2 it runs on. With GPT-2 weights in the
 * checkpoint, `gpt2Spec` only supplies the config (else a standard width decides it); without, both come
 * from `gpt2Spec` (default openai-community/gpt2).
 */
async function resolveClipcap(
  file: string,
  gpt2Spec: string | undefined,
  o: SourceOptions,
): Promise<ResolvedClipcap> {
  if (await isDirectory(file)) {
    const dir = await loadClipcapDir(file);
    // A checkpoint from clipcap train names the GPT-2 and CLIP it was trained with: no flag needed.
    const recorded = async (ref: string | undefined): Promise<string | undefined> =>
      ref === undefined ? undefined : resolveRecordedSource(ref, file);
    const gpt2Source = gpt2Spec ?? (await recorded(dir.sources?.gpt2)) ?? DEFAULT_GPT2;
    const gpt2 = dir.gpt2 ? { config: dir.config.gpt2, weights: dir.gpt2 } : await loadGpt2(gpt2Source, o);
    if (gpt2.config.n_embd !== dir.config.gpt2.n_embd)
      throw new UserError(
        `${file}: the mapper was made for GPT-2 width ${dir.config.gpt2.n_embd} but ${gpt2Source} is ${gpt2.config.n_embd} wide`,
      );
    const clip = await recorded(dir.sources?.clip);
    return {
      mapper: dir.config.mapper,
      mapperWeights: dir.mapperWeights,
      gpt2,
      normalizePrefix: dir.config.normalize_prefix,
      gpt2Source,
      ...(clip !== undefined ? { clip } : {}),
    };
  }
  if (!(await exists(file))) throw new UserError(`ClipCap checkpoint ${file}: no such file; check the path`);
  const configJson = gpt2Spec !== undefined ? await gpt2ConfigJson(gpt2Spec, o) : undefined;
  const ckpt = clipcapCheckpoint(await loadTorchCheckpoint(file), { gpt2Config: configJson, what: file });
  let gpt2: { config: Gpt2Config; weights: StateDict };
  if (ckpt.gpt2) {
    // A non-standard width without a config: let the key map explain what is missing.
    const config = ckpt.gpt2Config ?? gpt2ConfigFor(ckpt.gpt2, undefined, file);
    gpt2 = { config, weights: ckpt.gpt2 };
  } else {
    gpt2 = await loadGpt2(gpt2Spec ?? DEFAULT_GPT2, o);
    if (gpt2.config.n_embd !== ckpt.width)
      throw new UserError(
        `${file}: its mapper makes ${ckpt.width}-wide prefixes but GPT-2 ${gpt2Spec ?? DEFAULT_GPT2} is ${gpt2.config.n_embd} wide; give the GPT-2 it was trained with (--gpt2)`,
      );
  }
  return {
    mapper: ckpt.mapper,
    mapperWeights: ckpt.mapperWeights,
    gpt2,
    normalizePrefix: false,
    gpt2Source: gpt2Spec ?? DEFAULT_GPT2,
  };
}

// ---- CLIP ----

/**
 * The CLIP image encoder from a directory or hub repo (config.json + model.safetensors), from OpenAI's own file
 * (a `.pt` path: the TorchScript archive clip.load caches, e.g. ~/.cache/clip/RN50x4.pt, or a plain state dict
 * of it; ViT or ResNet), or by OpenAI's model name (`RN50x4`, `ViT-B/32`: clip.available_models()), downloaded
 * into ~/.cache/clip as clip.load does.
 */
export async function loadImageEncoder(
  spec: string,
  o: SourceOptions & { backend?: BackendName | Backend } = {},
): Promise<ImageEncoder> {
  if (isOpenAIClipName(spec) && !(await exists(spec))) {
    const file = await openaiClipFile(spec, { offline: o.offline });
    return openaiImageEncoder(await loadOpenAIClip(file), file, o.backend);
  }
  if (isBundled(spec)) {
    const { config, weights } = bundledClip(spec);
    const { vision } = clipWeights(weights, config, spec);
    if (!vision) throw new Error(`${spec}: the bundled model has no vision tower`);
    return imageEncoder(vision, spec, o.backend);
  }
  await checkOfflineClip(spec, { offline: o.offline, revision: o.revision });
  if (/\.pt$/i.test(spec) || (await fs.stat(spec).catch(() => null))?.isFile()) {
    return openaiImageEncoder(await loadOpenAIClip(spec), spec, o.backend);
  }
  const what = `CLIP ${spec}`;
  const config = await readJson(await modelFile(spec, 'config.json', o, what), what);
  expectModelType(config, ['clip', 'clip_vision_model'], what, DEFAULT_CLIP);
  const file = await modelFile(spec, 'model.safetensors', o, what);
  // Only the vision tower: the text tower is ~40% of a CLIPModel file and captioning never uses it.
  const f = await loadSafetensors(file);
  const sd: StateDict = new Map();
  try {
    for (const k of f.keys())
      if (k.startsWith('vision_model.') || k === 'visual_projection.weight') sd.set(k, await f.tensor(k));
  } finally {
    await f.close();
  }
  const { vision } = clipWeights(sd, config, file);
  if (!vision) throw new UserError(`${file}: no CLIP vision tower (vision_model.*); give a CLIP image model`);
  return imageEncoder(vision, file, o.backend);
}

function imageEncoder(
  vision: { config: ClipVisionConfig; weights: StateDict },
  file: string,
  backend: BackendName | Backend | undefined,
): ImageEncoder {
  const model = ClipVisionModel.fromWeights(resolveBackend(backend), vision.config, vision.weights, file);
  return {
    projectionDim: model.embedDim,
    imageSize: vision.config.image_size,
    encodeImages: (pixels) => model.encodeImages(pixels),
    dispose: () => model.dispose(),
  };
}

/** OpenAI's CLIP file, either architecture, as an image encoder. */
function openaiImageEncoder(
  clip: OpenAIClipVision,
  file: string,
  backend: BackendName | Backend | undefined,
): ImageEncoder {
  if (clip.kind === 'vit') return imageEncoder(clip, file, backend);
  const model = ClipResNetVisionModel.fromWeights(resolveBackend(backend), clip.config, clip.weights, file);
  return {
    projectionDim: model.embedDim,
    imageSize: model.imageSize,
    encodeImages: (pixels) => model.encodeImages(pixels),
    dispose: () => model.dispose(),
  };
}

function resolveBackend(b: BackendName | Backend | undefined): Backend {
  return typeof b === 'object' ? b : getBackend(b);
}

/**
 * The CLIP a checkpoint runs on when none is given: 640-d prefixes are RN50x4's (the official Transformer COCO
 * model; no other published CLIP is 640 wide), anything else the default ViT-B/32.
 */
export function defaultClipFor(prefixSize: number): string {
  return prefixSize === 640 ? 'RN50x4' : DEFAULT_CLIP;
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
  if (await exists(model))
    throw new UserError(
      `--model ${model}: a file, not a clipcap checkpoint directory; give an official .pt checkpoint as --clipcap FILE`,
    );
  throw new UserError(
    `--model ${model}: no such directory; --model takes coco, conceptual or a clipcap checkpoint directory`,
  );
}

/**
 * Offline, every hub file the load will need that the cache lacks, checked before anything loads so that one
 * error lists them all (instead of one per run): a published checkpoint, CLIP's files when CLIP was named or
 * comes with a published checkpoint (`clip`: images will be captioned), a named GPT-2's config.
 */
export async function checkOfflineFiles(o: ClipCapLoadOptions, need: { clip: boolean }): Promise<void> {
  const src = { offline: o.offline, revision: o.revision };
  const files: HubFileOptions[] = [];
  const preset = o.clipcap === undefined && (o.model ?? 'coco') in PRETRAINED;
  if (preset) files.push({ ...PRETRAINED[(o.model ?? 'coco') as PretrainedName], offline: o.offline });
  const clip = o.clip ?? (preset ? DEFAULT_CLIP : undefined);
  if (need.clip && clip !== undefined) files.push(...(await clipHubFiles(clip, src)));
  if (o.gpt2 !== undefined && (await isHubId(o.gpt2)))
    files.push({ repo: o.gpt2, file: 'config.json', ...src });
  const missing = await missingOfflineFiles(files);
  if (missing.length > 0) throw offlineMissingError(missing);
}

/** A model spec that names a hub repo (not a local directory or file). */
async function isHubId(spec: string): Promise<boolean> {
  // OpenAI's own CLIP names (ViT-B/32, RN50x4) look like repo ids but download from OpenAI.
  return looksLikeRepoId(spec) && !isOpenAIClipName(spec) && !/\.pt$/i.test(spec) && !(await exists(spec));
}

/** The hub files a CLIP image encoder loads from (none for a local directory or .pt file). */
async function clipHubFiles(spec: string, src: SourceOptions): Promise<HubFileOptions[]> {
  return (await isHubId(spec))
    ? ['config.json', 'model.safetensors'].map((file) => ({ repo: spec, file, ...src }))
    : [];
}

/** Offline, one error listing every CLIP file the cache lacks (as checkOfflineFiles does for captioning). */
export async function checkOfflineClip(spec: string, src: SourceOptions = {}): Promise<void> {
  const missing = await missingOfflineFiles(await clipHubFiles(spec, src));
  if (missing.length > 0) throw offlineMissingError(missing);
}

/** Load every part of a captioner (CLIP lazily). */
export async function loadCaptionerParts(o: ClipCapLoadOptions = {}): Promise<CaptionerParts> {
  const backend = resolveBackend(o.backend);
  const weights = o.weights ?? 'f32';
  if (!WEIGHT_CHOICES.includes(weights))
    throw new UserError(`weights must be one of ${WEIGHT_CHOICES.join(', ')}, got ${String(weights)}`);
  const src: SourceOptions = { offline: o.offline, revision: o.revision };
  await checkOfflineFiles(o, { clip: false });
  const file = await checkpointPath(o);
  const ck = await resolveClipcap(file, o.gpt2, src);
  const model = ClipCapModel.create(
    backend,
    {
      mapper: ck.mapper,
      mapperWeights: ck.mapperWeights,
      gpt2: ck.gpt2,
      normalizePrefix: o.normalizePrefix ?? ck.normalizePrefix,
    },
    file,
  );
  if (weights !== 'f32') model.gpt2.quantizeWeights(weights);
  const clipSpec = o.clip ?? ck.clip ?? defaultClipFor(ck.mapper.prefix_size);
  const tokenizer = await loadGpt2Tokenizer(ck.gpt2Source);
  checkTokenizer(tokenizer, ck.gpt2.config, ck.gpt2Source);
  return captionerParts(model, {
    description: path.basename(file),
    loadClip: () => loadImageEncoder(clipSpec, { ...src, backend }),
    tokenizer,
  });
}

/**
 * Captioner parts around an already-built ClipCap model (its GPT-2 decodes, it maps prefixes); without
 * `loadClip` it captions embeddings only. Benchmarks and tests build models from synthetic weights this way.
 */
export async function captionerParts(
  model: ClipCapModel,
  o: { description: string; loadClip?: () => Promise<ImageEncoder>; tokenizer?: Gpt2Tokenizer },
): Promise<CaptionerParts> {
  return {
    backend: model.backend,
    lm: model.gpt2,
    mapper: model,
    tokenizer: o.tokenizer ?? (await Gpt2Tokenizer.load()),
    loadClip: o.loadClip ?? null,
    description: o.description,
    dispose: () => model.dispose(),
  };
}
