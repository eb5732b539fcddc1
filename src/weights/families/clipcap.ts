/**
 * ClipCap checkpoints: the official `torch.save(model.state_dict())` files and clipcap's own directory format.
 *
 * Official keys: the mapper `clip_project.*` and GPT-2 `gpt.transformer.*` (+ tied `gpt.lm_head.weight`,
 * maybe attn.bias / masked_bias buffers). The mapper kind follows from the keys:
 * - MLP: clip_project.model.{0,2,...}.{weight,bias}, Linear layers with Tanh between them; (out, in) weights.
 *   Official: Linear(D, K*E/2) -> Tanh -> Linear(K*E/2, K*E); predict.py's single Linear(D, K*E) when K > 10.
 * - Transformer: clip_project.linear (clip_length*E, D), clip_project.prefix_const (K, E) and
 *   clip_project.transformer.layers.N.{norm1, attn.to_queries (no bias), attn.to_keys_values (no bias),
 *   attn.project, norm2, mlp.fc1 (2E, E), mlp.fc2 (E, 2E)}; 8 heads (the official value: shapes cannot tell).
 * E is GPT-2's width, from the checkpoint's wte (or the transformer's prefix_const, or a given GPT-2 config).
 *
 * clipcap's directory format: config.json (ClipCapConfig + format fields) and model.safetensors holding
 * clip_project.* and, when present, GPT-2 as gpt.transformer.* (official names, no buffers, no tied lm_head).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { UserError } from '../../util/errors.js';
import { moveDirIntoPlace } from '../../util/atomic.js';
import type { ClipCapConfig, Gpt2Config, MapperConfig } from '../../config/models.js';
import type { StateDict } from '../host.js';
import { readSafetensors, saveSafetensors } from '../safetensors.js';
import { agree, checkKeys, countLayers, fmtShape, intField, shapeOf } from './common.js';
import type { ConfigSource, KeySpec } from './common.js';
import { canonicalGpt2, gpt2ConfigFor, gpt2KeySpec, GPT2_STANDARD_HEADS } from './gpt2.js';

/** The official TransformerMapper's head count (not recorded in checkpoints). */
export const OFFICIAL_MAPPER_HEADS = 8;

export interface ClipcapCheckpoint {
  mapper: MapperConfig;
  /** clip_project.* weights, checked, in spec order. */
  mapperWeights: StateDict;
  /** GPT-2's canonical weights (no `transformer.` prefix), checked, when the checkpoint has them. */
  gpt2?: StateDict;
  /** GPT-2's config when it can be known: from `gpt2Config`, or a standard width (768/1024/1280/1600). */
  gpt2Config?: Gpt2Config;
  /** GPT-2's width E. */
  width: number;
}

export interface ClipcapCheckpointOptions {
  /** GPT-2 config.json fields (or a partial Gpt2Config), e.g. from --gpt2 DIR. */
  gpt2Config?: Partial<Gpt2Config> | ConfigSource;
  /** Heads of a transformer mapper. Default 8 (official). */
  mapperHeads?: number;
  /** Names the source in errors. */
  what?: string;
}

/** Names and shapes of a mapper's weights for GPT-2 width `e`. */
export function mapperKeySpec(m: MapperConfig, e: number): KeySpec {
  const spec: KeySpec = new Map();
  if (m.kind === 'mlp') {
    for (let i = 0; i + 1 < m.sizes.length; i++) {
      spec.set(`clip_project.model.${2 * i}.weight`, [m.sizes[i + 1], m.sizes[i]]);
      spec.set(`clip_project.model.${2 * i}.bias`, [m.sizes[i + 1]]);
    }
    return spec;
  }
  spec.set('clip_project.linear.weight', [m.clip_length * e, m.prefix_size]);
  spec.set('clip_project.linear.bias', [m.clip_length * e]);
  spec.set('clip_project.prefix_const', [m.prefix_length, e]);
  for (let i = 0; i < m.num_layers; i++) {
    const p = `clip_project.transformer.layers.${i}.`;
    spec.set(`${p}norm1.weight`, [e]);
    spec.set(`${p}norm1.bias`, [e]);
    spec.set(`${p}attn.to_queries.weight`, [e, e]);
    spec.set(`${p}attn.to_keys_values.weight`, [2 * e, e]);
    spec.set(`${p}attn.project.weight`, [e, e]);
    spec.set(`${p}attn.project.bias`, [e]);
    spec.set(`${p}norm2.weight`, [e]);
    spec.set(`${p}norm2.bias`, [e]);
    spec.set(`${p}mlp.fc1.weight`, [2 * e, e]);
    spec.set(`${p}mlp.fc1.bias`, [2 * e]);
    spec.set(`${p}mlp.fc2.weight`, [e, 2 * e]);
    spec.set(`${p}mlp.fc2.bias`, [e]);
  }
  return spec;
}

function inferMapper(
  mapper: StateDict,
  knownWidth: number | undefined,
  heads: number,
  what: string,
): { config: MapperConfig; width: number } {
  if (mapper.has('clip_project.model.0.weight')) {
    const sizes: number[] = [];
    for (let i = 0; mapper.has(`clip_project.model.${i}.weight`); i += 2) {
      const s = shapeOf(mapper, `clip_project.model.${i}.weight`, what, 2);
      if (i === 0) sizes.push(s[1]);
      else if (s[1] !== sizes[sizes.length - 1]) {
        throw new UserError(
          `${what}: clip_project.model.${i}.weight is ${fmtShape(s)} but the previous layer outputs ${sizes[sizes.length - 1]}`,
        );
      }
      sizes.push(s[0]);
    }
    const out = sizes[sizes.length - 1];
    // Without GPT-2 weights or config, the official GPT-2 small width.
    const e = knownWidth ?? 768;
    if (out % e !== 0) {
      throw new UserError(
        `${what}: the MLP mapper outputs ${out} values, not a multiple of GPT-2's width ${e}; give the GPT-2 config (--gpt2)`,
      );
    }
    return { config: { kind: 'mlp', prefix_size: sizes[0], prefix_length: out / e, sizes }, width: e };
  }
  if (mapper.has('clip_project.prefix_const') || mapper.has('clip_project.linear.weight')) {
    const pc = shapeOf(mapper, 'clip_project.prefix_const', what, 2);
    const lin = shapeOf(mapper, 'clip_project.linear.weight', what, 2);
    const e = agree(knownWidth, pc[1], "GPT-2's width (prefix_const)", what);
    if (lin[0] % e !== 0) {
      throw new UserError(
        `${what}: clip_project.linear.weight ${fmtShape(lin)} is not clip_length x ${e} rows`,
      );
    }
    if (e % heads !== 0) throw new UserError(`${what}: mapper width ${e} is not divisible by ${heads} heads`);
    return {
      config: {
        kind: 'transformer',
        prefix_size: lin[1],
        prefix_length: pc[0],
        clip_length: lin[0] / e,
        num_layers: countLayers(mapper.keys(), 'clip_project.transformer.layers.', what),
        num_heads: heads,
      },
      width: e,
    };
  }
  throw new UserError(
    `${what}: clip_project.* is neither the MLP mapper (clip_project.model.0.weight) nor the Transformer mapper (clip_project.linear, clip_project.prefix_const)`,
  );
}

/**
 * An official ClipCap state dict -> mapper config + weights and GPT-2's canonical weights, every key and
 * shape checked. prefix_length, clip_length, num_layers and prefix_size come from the shapes.
 */
export function clipcapCheckpoint(sd: StateDict, opts: ClipcapCheckpointOptions = {}): ClipcapCheckpoint {
  const what = opts.what ?? 'ClipCap checkpoint';
  const cfgSource = opts.gpt2Config as ConfigSource | undefined;
  const mapperSd: StateDict = new Map();
  const gptSd: StateDict = new Map();
  const other: string[] = [];
  for (const [k, t] of sd) {
    if (k.startsWith('clip_project.')) mapperSd.set(k, t);
    else if (k.startsWith('gpt.')) gptSd.set(k, t);
    else other.push(k);
  }
  if (mapperSd.size === 0) {
    throw new UserError(
      `${what}: no clip_project.* weights, so this is not a ClipCap checkpoint (give the .pt that ClipCap's train.py saves)`,
    );
  }
  if (other.length) {
    throw new UserError(
      `${what}: unexpected ${other.slice(0, 8).join(', ')} (expected only clip_project.* and gpt.*)`,
    );
  }

  let gpt2: StateDict | undefined;
  let gpt2Config: Gpt2Config | undefined;
  let width = intField(cfgSource, 'n_embd', what);
  if (gptSd.size) {
    if (!gptSd.has('gpt.transformer.wte.weight')) {
      throw new UserError(`${what}: has gpt.* weights but no gpt.transformer.wte.weight`);
    }
    const canonical = canonicalGpt2(gptSd, what);
    width = agree(width, shapeOf(canonical, 'wte.weight', what, 2)[1], 'n_embd', what);
    try {
      gpt2Config = gpt2ConfigFor(canonical, cfgSource, what);
    } catch (e) {
      // Only the head count can be unknown here (a non-standard width without a config): still usable
      // for converting the mapper, so report it only when a config was given.
      if (cfgSource) throw e;
    }
    // The key check needs sizes only; n_head does not change any shape.
    const shapeConfig = gpt2Config ?? gpt2ConfigFor(canonical, { ...cfgSource, n_head: 1 }, what);
    gpt2 = checkKeys(
      canonical,
      gpt2KeySpec(shapeConfig),
      `${what} (gpt.transformer.*)`,
      `expected a GPT-2 with n_embd ${shapeConfig.n_embd} and ${shapeConfig.n_layer} layers`,
    );
  }
  const { config: mapper, width: e } = inferMapper(
    mapperSd,
    width,
    opts.mapperHeads ?? OFFICIAL_MAPPER_HEADS,
    what,
  );
  const mapperWeights = checkKeys(
    mapperSd,
    mapperKeySpec(mapper, e),
    `${what} (clip_project.*)`,
    `expected a ${mapper.kind} mapper for GPT-2 width ${e}`,
  );
  if (!gpt2 && cfgSource) {
    // No GPT-2 weights: the config stands on its own, and must fit the mapper.
    gpt2Config = completeGpt2Config(cfgSource, what);
    agree(gpt2Config.n_embd, e, 'n_embd', what);
  }
  return { mapper, mapperWeights, gpt2, gpt2Config, width: e };
}

/** A Gpt2Config from config fields alone (no weights to take sizes from): HF defaults for absent fields. */
function completeGpt2Config(c: ConfigSource, what: string): Gpt2Config {
  const get = (k: string, d: number): number => {
    const v = c[k];
    if (v === undefined || v === null) return d;
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new UserError(`${what}: config field "${k}" is not a number`);
    return v;
  };
  const inner = c.n_inner;
  const e = get('n_embd', 768);
  const heads = c.n_head ?? GPT2_STANDARD_HEADS[e];
  if (typeof heads !== 'number') {
    throw new UserError(`${what}: the GPT-2 config has no n_head and width ${e} is not a standard size`);
  }
  return {
    vocab_size: get('vocab_size', 50257),
    n_positions: get('n_positions', 1024),
    n_embd: e,
    n_layer: get('n_layer', 12),
    n_head: get('n_head', heads),
    layer_norm_epsilon: get('layer_norm_epsilon', 1e-5),
    resid_pdrop: get('resid_pdrop', 0.1),
    embd_pdrop: get('embd_pdrop', 0.1),
    attn_pdrop: get('attn_pdrop', 0.1),
    n_inner: typeof inner === 'number' ? inner : null,
    activation_function: typeof c.activation_function === 'string' ? c.activation_function : 'gelu_new',
  };
}

// ---- clipcap's own checkpoint directory ----

export const CLIPCAP_FORMAT = 'clipcap';
export const CLIPCAP_FORMAT_VERSION = 1;
export const CLIPCAP_CONFIG_FILE = 'config.json';
export const CLIPCAP_WEIGHTS_FILE = 'model.safetensors';

/** config.json of a clipcap checkpoint directory. */
export interface ClipcapDirConfig extends ClipCapConfig {
  format: typeof CLIPCAP_FORMAT;
  format_version: number;
  /** Whether model.safetensors holds GPT-2 (gpt.transformer.*); if not, GPT-2 comes from elsewhere. */
  gpt2_weights: boolean;
  /** Where the weights came from (informational). */
  source?: string;
}

export interface ClipcapDir {
  config: ClipCapConfig;
  mapperWeights: StateDict;
  /** Canonical GPT-2 weights, when the directory holds them. */
  gpt2?: StateDict;
  source?: string;
  /**
   * The CLIP and GPT-2 it was trained with, as `clipcap train` records them (config.json "sources"): hub ids,
   * `bundled:` names, or local paths relative to the checkpoint directory.
   */
  sources?: { clip?: string; gpt2?: string };
}

/**
 * Write a checkpoint directory atomically: everything goes into a temp directory beside `dir`, which is
 * renamed into place only when complete, so a failure never leaves a partial `dir`. An existing `dir` is
 * refused unless `overwrite` (then it is replaced only after the new one is complete).
 */
export async function saveClipcapDir(
  dir: string,
  ckpt: ClipcapDir,
  opts: { overwrite?: boolean } = {},
): Promise<void> {
  const exists = await fs.stat(dir).then(
    () => true,
    () => false,
  );
  if (exists && !opts.overwrite) {
    throw new UserError(`${dir} already exists; choose a new output directory or remove it first`);
  }
  const parent = path.dirname(path.resolve(dir));
  await fs.mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(dir)}.${randomBytes(6).toString('hex')}.tmp`);
  await fs.mkdir(tmp);
  try {
    const config: ClipcapDirConfig = {
      format: CLIPCAP_FORMAT,
      format_version: CLIPCAP_FORMAT_VERSION,
      mapper: ckpt.config.mapper,
      gpt2: ckpt.config.gpt2,
      normalize_prefix: ckpt.config.normalize_prefix,
      gpt2_weights: ckpt.gpt2 !== undefined,
      ...(ckpt.source !== undefined ? { source: ckpt.source } : {}),
    };
    const tensors: StateDict = new Map(ckpt.mapperWeights);
    if (ckpt.gpt2) for (const [k, t] of ckpt.gpt2) tensors.set(`gpt.transformer.${k}`, t);
    await saveSafetensors(path.join(tmp, CLIPCAP_WEIGHTS_FILE), tensors, {
      format: CLIPCAP_FORMAT,
      ...(ckpt.source !== undefined ? { source: ckpt.source } : {}),
    });
    await fs.writeFile(path.join(tmp, CLIPCAP_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
    await moveDirIntoPlace(tmp, dir, exists);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Read a clipcap checkpoint directory (config.json + model.safetensors); every key and shape is checked. */
export async function loadClipcapDir(dir: string): Promise<ClipcapDir> {
  const cfgPath = path.join(dir, CLIPCAP_CONFIG_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(cfgPath, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(
      code === 'ENOENT'
        ? `${dir} is not a clipcap checkpoint directory (no ${CLIPCAP_CONFIG_FILE}); make one with clipcap convert`
        : `${cfgPath}: not valid JSON (${(e as Error).message})`,
    );
  }
  if (!isObject(raw) || raw.format !== CLIPCAP_FORMAT || !isObject(raw.mapper) || !isObject(raw.gpt2)) {
    throw new UserError(
      `${cfgPath}: not a clipcap checkpoint config (expected "format": "clipcap", mapper, gpt2)`,
    );
  }
  if (raw.format_version !== CLIPCAP_FORMAT_VERSION) {
    throw new UserError(
      `${cfgPath}: format_version ${String(raw.format_version)} is not supported by this clipcap`,
    );
  }
  const saved = raw.mapper as Record<string, unknown>;
  const { tensors } = await readSafetensors(path.join(dir, CLIPCAP_WEIGHTS_FILE));
  const what = path.join(dir, CLIPCAP_WEIGHTS_FILE);
  const heads = saved.kind === 'transformer' ? intField(saved, 'num_heads', cfgPath) : undefined;
  const ck = clipcapCheckpoint(tensors, { gpt2Config: raw.gpt2 as ConfigSource, mapperHeads: heads, what });
  // The shapes decide; the saved mapper config must agree with them.
  for (const [k, v] of Object.entries(ck.mapper)) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(v)) {
      throw new UserError(
        `${cfgPath}: mapper.${k} is ${JSON.stringify(saved[k])} but the weights say ${JSON.stringify(v)}; the config and weights do not belong together`,
      );
    }
  }
  if (raw.gpt2_weights === true && !ck.gpt2)
    throw new UserError(`${what}: config.json says it holds GPT-2 but it does not`);
  const gpt2 = ck.gpt2Config ?? completeGpt2Config(raw.gpt2 as ConfigSource, cfgPath);
  if (gpt2.n_embd !== ck.width) {
    throw new UserError(
      `${cfgPath}: gpt2.n_embd ${gpt2.n_embd} does not match the mapper's width ${ck.width}`,
    );
  }
  return {
    config: { mapper: ck.mapper, gpt2, normalize_prefix: raw.normalize_prefix === true },
    mapperWeights: ck.mapperWeights,
    gpt2: ck.gpt2,
    source: typeof raw.source === 'string' ? raw.source : undefined,
    sources: recordedSources(raw.sources, cfgPath),
  };
}

function recordedSources(v: unknown, cfgPath: string): ClipcapDir['sources'] {
  if (v === undefined) return undefined;
  if (!isObject(v)) throw new UserError(`${cfgPath}: "sources" must be an object {clip, gpt2}`);
  const out: { clip?: string; gpt2?: string } = {};
  for (const k of ['clip', 'gpt2'] as const) {
    const s = v[k];
    if (s === undefined) continue;
    if (typeof s !== 'string' || s === '')
      throw new UserError(`${cfgPath}: sources.${k} must be a model name or path, got ${JSON.stringify(s)}`);
    out[k] = s;
  }
  return out;
}
