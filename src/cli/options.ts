/**
 * Option builders shared by the commands, so that one notion has one flag, one help text and one way of
 * writing its default (`(default: X)`, commander's own form) everywhere: the model options, the decoding
 * options, --backend (with CLIPCAP_BACKEND / CLIPCAP_THREADS), --offline (HF_HUB_OFFLINE), --threads,
 * --max-pixels, --batch-size. test/cli/help.test.ts checks every command's help against these.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { ClipCapLoadOptions } from '../pipeline/load.js';
import type { DecodeMethod, DecodeOptions, StopSpec } from '../generate/options.js';
import { UsageError } from '../util/errors.js';
import { DEFAULT_PIXEL_LIMIT } from '../image/index.js';
import { backendEntries, backendNames, type BackendName } from '../engine/registry.js';

export function intArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}.`);
    return n;
  };
}

export function floatArg(name: string, ok: (x: number) => boolean, range: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || !ok(n))
      throw new InvalidArgumentError(`${name} must be ${range}.`);
    return n;
  };
}

// ---- one flag, one text ----

/** "a (x), b (y) or c (z)" from the backend registry, in order of preference. */
function backendList(): string {
  const items = backendEntries().map((e) => `${e.name} (${e.summary})`);
  return items.length <= 1
    ? items.join('')
    : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

export const BACKEND_HELP =
  `compute backend: ${backendList()}; also CLIPCAP_BACKEND ` +
  `(default: ${backendNames()[0]} when it loads)`;

/** --backend NAME, one of the registered backends (engine/registry.ts). */
export function backendOption(): Option {
  return new Option('--backend <name>', BACKEND_HELP).choices(backendNames());
}

export const OFFLINE_HELP =
  'use only files already in the Hugging Face cache, no network (also HF_HUB_OFFLINE=1)';

/** --offline. */
export function offlineOption(): Option {
  return new Option('--offline', OFFLINE_HELP);
}

export const THREADS_HELP = 'threads of the native backend (default: CLIPCAP_THREADS, else every core)';

/** --threads N. */
export function threadsOption(): Option {
  return new Option('--threads <n>', THREADS_HELP).argParser(intArg('--threads', 1, 1024));
}

/** --max-pixels N: the decompression-bomb guard. */
export function maxPixelsOption(): Option {
  return new Option('--max-pixels <n>', 'refuse images with more pixels (decompression bombs)')
    .argParser(intArg('--max-pixels', 1))
    .default(DEFAULT_PIXEL_LIMIT);
}

/** --batch-size N: inputs per model call. */
export function batchSizeOption(what: string, dflt: number): Option {
  return new Option('--batch-size <n>', what).argParser(intArg('--batch-size', 1, 4096)).default(dflt);
}

export const DEFAULT_CLIP_SPEC = 'openai/clip-vit-base-patch32';
export const DEFAULT_GPT2_SPEC = 'openai-community/gpt2';

/** --clip DIR|HUB_ID|FILE.pt. */
export function clipOption(): Option {
  return new Option(
    '--clip <DIR|HUB_ID|FILE.pt|NAME>',
    "CLIP model: a Hugging Face directory or repo, OpenAI's .pt file (ViT or ResNet), or OpenAI's name " +
      `(RN50x4, ViT-B/32, ...: downloaded to ~/.cache/clip) (default: ${DEFAULT_CLIP_SPEC}; RN50x4 for 640-d checkpoints)`,
  );
}

// ---- groups ----

/** The model-selection options of every command that loads ClipCap. */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option(
      '--model <coco|conceptual|DIR>',
      'published weights (coco, conceptual) or a clipcap checkpoint directory',
      'coco',
    )
    .option(
      '--clipcap <FILE>',
      'a ClipCap checkpoint (.pt as the official code saves it, or a clipcap directory)',
    )
    .addOption(clipOption())
    .option(
      '--gpt2 <DIR|HUB_ID>',
      `GPT-2 config (and weights, when the checkpoint has none) (default: ${DEFAULT_GPT2_SPEC})`,
    )
    .addOption(backendOption())
    .addOption(offlineOption())
    .option(
      '--normalize-prefix',
      'L2-normalize CLIP embeddings first (checkpoints trained with --normalize_prefix)',
    )
    .addOption(weightsOption());
}

export const WEIGHTS_HELP =
  "GPT-2's weights: f32 (exact), or weight-only bf16 / int8 (per-channel scales; activations and sums " +
  'stay f32): faster decoding, captions that may differ slightly (README "Reduced-precision weights")';

/** --weights f32|bf16|int8. */
export function weightsOption(): Option {
  return new Option('--weights <format>', WEIGHTS_HELP).choices(['f32', 'bf16', 'int8']).default('f32');
}

export interface ModelCliOptions {
  model: string;
  clipcap?: string;
  clip?: string;
  gpt2?: string;
  backend?: BackendName;
  offline?: boolean;
  normalizePrefix?: boolean;
  weights?: 'f32' | 'bf16' | 'int8';
}

/** CLI model options -> ClipCap.load options. */
export function loadOptionsFromCli(o: ModelCliOptions): ClipCapLoadOptions {
  return {
    model: o.model,
    clipcap: o.clipcap,
    clip: o.clip,
    gpt2: o.gpt2,
    backend: o.backend,
    offline: o.offline,
    normalizePrefix: o.normalizePrefix,
    weights: o.weights,
  };
}

/** The decoding options of every command that writes captions (caption, eval, serve). */
export function addDecodeOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--decode <method>', 'decoder').choices(['beam', 'greedy', 'nucleus']).default('beam'),
    )
    .option('--beam-size <n>', 'beams per image (beam)', intArg('--beam-size', 1, 1000), 5)
    .option('--max-tokens <n>', 'most tokens per caption', intArg('--max-tokens', 1), 67)
    .addOption(
      new Option(
        '--stop <token>',
        "stop after '.', after <|endoftext|> (eos), or only at --max-tokens (none)",
      )
        .choices(['.', 'eos', 'none'])
        .default('.'),
    )
    .option(
      '--top-p <p>',
      'nucleus mass (nucleus)',
      floatArg('--top-p', (x) => x > 0 && x <= 1, 'in (0, 1]'),
      0.8,
    )
    .option(
      '--temperature <t>',
      'divide logits by this (beam, nucleus)',
      floatArg('--temperature', (x) => x > 0, 'a positive number'),
      1,
    )
    .option('--seed <n>', 'sampling seed (nucleus)', intArg('--seed', 0, 2 ** 32 - 1), 0);
}

export interface DecodeCliOptions {
  decode: DecodeMethod;
  beamSize: number;
  maxTokens: number;
  stop: StopSpec;
  topP: number;
  temperature: number;
  seed: number;
}

/** CLI decoding options -> the library's DecodeOptions. */
export function decodeOptionsFromCli(o: DecodeCliOptions): DecodeOptions {
  return {
    method: o.decode,
    beamSize: o.beamSize,
    maxTokens: o.maxTokens,
    stop: o.stop,
    topP: o.topP,
    temperature: o.temperature,
    seed: o.seed,
  };
}

/**
 * Which decoding options each decoder reads (option attribute -> flag). The official greedy decoder
 * (generate2) divides by the temperature and filters by top-p before an argmax, which neither changes.
 */
const DECODER_OPTIONS: Record<DecodeMethod, readonly string[]> = {
  beam: ['beamSize', 'temperature'],
  greedy: [],
  nucleus: ['topP', 'temperature', 'seed', 'numCaptions'],
};
const DECODER_SPECIFIC = ['beamSize', 'topP', 'temperature', 'seed', 'numCaptions'] as const;
const flagOf = (name: string): string => `--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
const USED_BY: Record<(typeof DECODER_SPECIFIC)[number], string> = {
  beamSize: 'beam',
  topP: 'nucleus',
  temperature: 'beam and nucleus',
  seed: 'nucleus',
  numCaptions: 'nucleus; beam search returns every beam as candidates',
};

/**
 * Decoding options given on the command line that the chosen decoder ignores are a usage error (exit 2)
 * rather than silently doing nothing, e.g. `--decode greedy --beam-size 3 --top-p 0.5`.
 */
export function checkDecodeFlags(cmd: Command, decode: DecodeMethod): void {
  const ignored = DECODER_SPECIFIC.filter(
    (name) => cmd.getOptionValueSource(name) === 'cli' && !DECODER_OPTIONS[decode].includes(name),
  );
  if (ignored.length === 0) return;
  const flags = ignored.map(flagOf);
  throw new UsageError(
    `${flags.join(' and ')} ${ignored.length === 1 ? 'does' : 'do'} nothing with --decode ${decode} ` +
      `(${ignored.map((n) => `${flagOf(n)}: ${USED_BY[n]}`).join('; ')}); drop ${ignored.length === 1 ? 'it' : 'them'} or pick that decoder`,
  );
}
