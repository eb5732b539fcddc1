/**
 * `clipcap convert`: an official ClipCap checkpoint (.pt, or .safetensors with the same names) -> clipcap's
 * checkpoint directory (config.json + model.safetensors), written atomically.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import type { ClipCapConfig } from '../config/models.js';
import type { StateDict } from './host.js';
import { readSafetensors } from './safetensors.js';
import { loadTorchCheckpoint } from './torch.js';
import { clipcapCheckpoint, saveClipcapDir } from './families/clipcap.js';
import type { ConfigSource } from './families/common.js';
import { GPT2_STANDARD_HEADS } from './families/gpt2.js';

export interface ConvertOptions {
  /**
   * GPT-2's config: a directory with config.json, a config.json file, or (with `resolveHub`) a hub repo id.
   * Needed when GPT-2's width is not a standard size (768/1024/1280/1600).
   */
  gpt2?: string;
  /** Record that the checkpoint was trained with --normalize_prefix. */
  normalizePrefix?: boolean;
  /** Replace an existing output directory (only once the new one is complete). */
  overwrite?: boolean;
  /** Fetch `gpt2` config.json from the hub when it is a repo id (injected so this module stays offline). */
  resolveHub?: (repo: string, file: string) => Promise<string>;
}

export interface ConvertResult {
  outDir: string;
  config: ClipCapConfig;
  /** Whether the checkpoint carried GPT-2's weights (else GPT-2 must come from elsewhere when loading). */
  gpt2Weights: boolean;
  tensors: number;
}

const STANDARD_LAYERS: Readonly<Record<number, number>> = { 768: 12, 1024: 24, 1280: 36, 1600: 48 };

async function readJsonObject(file: string): Promise<ConfigSource> {
  let v: unknown;
  try {
    v = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    throw new UserError(
      `cannot read ${file} as JSON (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new UserError(`${file} is not a JSON object`);
  return v as ConfigSource;
}

/** A GPT-2 config.json from a directory, a file or a hub repo id. */
export async function readGpt2ConfigSpec(
  spec: string,
  resolveHub?: (repo: string, file: string) => Promise<string>,
): Promise<ConfigSource> {
  const st = await fs.stat(spec).catch(() => null);
  if (st?.isDirectory()) return readJsonObject(path.join(spec, 'config.json'));
  if (st?.isFile()) return readJsonObject(spec);
  if (resolveHub && /^[\w.-]+\/[\w.-]+$/.test(spec) && !spec.includes('..')) {
    return readJsonObject(await resolveHub(spec, 'config.json'));
  }
  throw new UserError(`--gpt2 ${spec}: no such directory or config.json file`);
}

async function readStateDict(file: string): Promise<StateDict> {
  if (file.toLowerCase().endsWith('.safetensors')) return (await readSafetensors(file)).tensors;
  return loadTorchCheckpoint(file);
}

/** Convert `input` into a clipcap checkpoint directory `outDir`. */
export async function convertClipcap(
  input: string,
  outDir: string,
  opts: ConvertOptions = {},
): Promise<ConvertResult> {
  const gpt2Config =
    opts.gpt2 !== undefined ? await readGpt2ConfigSpec(opts.gpt2, opts.resolveHub) : undefined;
  const sd = await readStateDict(input);
  const ck = clipcapCheckpoint(sd, { gpt2Config, what: input });
  let gpt2 = ck.gpt2Config;
  if (!gpt2 && !ck.gpt2 && GPT2_STANDARD_HEADS[ck.width] !== undefined) {
    // Only the mapper: GPT-2 will be the published model of this width (gpt2 for 768).
    const e = ck.width;
    gpt2 = {
      vocab_size: 50257,
      n_positions: 1024,
      n_embd: e,
      n_layer: STANDARD_LAYERS[e],
      n_head: GPT2_STANDARD_HEADS[e],
      layer_norm_epsilon: 1e-5,
      resid_pdrop: 0.1,
      embd_pdrop: 0.1,
      attn_pdrop: 0.1,
      n_inner: null,
      activation_function: 'gelu_new',
    };
  }
  if (!gpt2) {
    throw new UserError(
      `${input}: GPT-2's width ${ck.width} is not a standard size, so its config cannot be inferred; give --gpt2 DIR (a directory with its config.json)`,
    );
  }
  const config: ClipCapConfig = { mapper: ck.mapper, gpt2, normalize_prefix: opts.normalizePrefix === true };
  await saveClipcapDir(
    outDir,
    { config, mapperWeights: ck.mapperWeights, gpt2: ck.gpt2, source: path.basename(input) },
    { overwrite: opts.overwrite },
  );
  return {
    outDir,
    config,
    gpt2Weights: ck.gpt2 !== undefined,
    tensors: ck.mapperWeights.size + (ck.gpt2?.size ?? 0),
  };
}
