/**
 * `clipcap caption IMAGES... [options]`: caption image files, directories, globs or precomputed CLIP
 * embeddings. The contract (options, JSON shape) is in DESIGN.md; the work happens in pipeline/.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import cliProgress from 'cli-progress';
import { ClipCap } from '../../pipeline/caption.js';
import { expandInputs, type ExpandedInput } from '../../pipeline/inputs.js';
import { readEmbeddingsFile } from '../../pipeline/embeddings.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from '../../pipeline/types.js';
import type { ClipCapLoadOptions } from '../../pipeline/load.js';
import type { DecodeMethod, DecodeOptions, StopSpec } from '../../generate/options.js';
import { UsageError, UserError } from '../../util/errors.js';

/** Where a command writes: the process streams, or buffers in tests. */
export interface CliIO {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  /** Draw progress bars (stderr is a terminal). */
  progress: boolean;
}

export const processIO = (): CliIO => ({
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  progress: process.stderr.isTTY === true,
});

/** How a command reaches the outside world; tests pass buffers and record the exit code. */
export interface CliContext {
  io(): CliIO;
  /** Set the exit code (1 when some inputs failed). */
  exit(code: number): void;
}

export const processContext: CliContext = {
  io: processIO,
  exit: (code) => {
    process.exitCode = code;
  },
};

// ---- option parsers shared by caption, extract and demo ----

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
    .option(
      '--clip <DIR|HUB_ID|FILE.pt|NAME>',
      "CLIP model: a Hugging Face directory or repo, OpenAI's .pt file (ViT or ResNet), or OpenAI's name (RN50x4, ViT-B/32, ...: downloaded to ~/.cache/clip); default openai/clip-vit-base-patch32 (RN50x4 for 640-d checkpoints)",
    )
    .option(
      '--gpt2 <DIR|HUB_ID>',
      'GPT-2 config (and weights, when the checkpoint has none); default openai-community/gpt2',
    )
    .addOption(
      new Option('--backend <name>', 'compute backend (default: native when it loads)').choices([
        'native',
        'reference',
      ]),
    )
    .option('--offline', 'use only files already in the Hugging Face cache (also HF_HUB_OFFLINE=1)')
    .option(
      '--normalize-prefix',
      'L2-normalize CLIP embeddings first (checkpoints trained with --normalize_prefix)',
    );
}

export interface ModelCliOptions {
  model: string;
  clipcap?: string;
  clip?: string;
  gpt2?: string;
  backend?: 'native' | 'reference';
  offline?: boolean;
  normalizePrefix?: boolean;
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
  };
}

/** The decoding options of every command that writes captions (caption, eval). */
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
      'divide logits by this',
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

export interface CaptionCliOptions extends ModelCliOptions, DecodeCliOptions {
  embeddings?: string;
  numCaptions: number;
  batchSize: number;
  format: 'text' | 'json' | 'jsonl';
  maxPixels?: number;
  applyExif?: boolean;
}

// ---- output ----

/** One result as the JSON contract spells it: image | index, caption, tokens, candidates, error. */
export function resultJson(r: CaptionResult, byIndex: boolean): Record<string, unknown> {
  const out: Record<string, unknown> =
    byIndex || r.image === undefined ? { index: r.index } : { image: r.image };
  if (r.error !== undefined) {
    out.error = r.error;
    return out;
  }
  out.caption = r.caption;
  out.tokens = r.tokens;
  if (r.candidates) out.candidates = r.candidates;
  return out;
}

/** Captions may hold newlines or tabs (GPT-2 can emit them); the text format keeps one line per caption. */
function oneLine(s: string): string {
  return s.replace(/[\t\r\n]/g, ' ');
}

export class ResultWriter {
  private readonly all: Record<string, unknown>[] = [];
  failed = 0;
  count = 0;

  constructor(
    private readonly io: CliIO,
    private readonly format: 'text' | 'json' | 'jsonl',
    private readonly byIndex: boolean,
  ) {}

  write(r: CaptionResult): void {
    this.count++;
    if (r.error !== undefined) this.failed++;
    const label = this.byIndex || r.image === undefined ? String(r.index) : r.image;
    switch (this.format) {
      case 'json':
        this.all.push(resultJson(r, this.byIndex));
        break;
      case 'jsonl':
        this.io.stdout(JSON.stringify(resultJson(r, this.byIndex)) + '\n');
        break;
      case 'text':
        if (r.error !== undefined) this.io.stderr(`clipcap: ${oneLine(r.error)}\n`);
        else if (r.candidates && r.candidates.every((c) => c.score === undefined))
          // nucleus samples: one line each
          for (const c of r.candidates) this.io.stdout(`${label}\t${oneLine(c.caption)}\n`);
        else this.io.stdout(`${label}\t${oneLine(r.caption)}\n`);
    }
  }

  finish(): void {
    if (this.format === 'json') this.io.stdout(JSON.stringify(this.all, null, 2) + '\n');
    if (this.failed > 0) this.io.stderr(`clipcap: ${this.failed} of ${this.count} inputs failed\n`);
  }
}

/** A progress bar on stderr for long runs in a terminal; a no-op otherwise. */
export function progressBar(
  io: CliIO,
  total: number,
  label: string,
): { update(done: number): void; stop(): void } {
  if (!io.progress || total < 16) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {value}/{total} | {eta_formatted} left`,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  return { update: (d) => bar.update(d), stop: () => bar.stop() };
}

// ---- the command ----

/**
 * Caption `images` (paths, directories, globs) or `--embeddings`; returns the number of failed inputs.
 * Fatal problems (bad options, weights that cannot load) throw a UserError.
 */
export async function runCaption(
  images: readonly string[],
  o: CaptionCliOptions,
  io: CliIO,
): Promise<number> {
  if (o.embeddings !== undefined && images.length > 0)
    throw new UsageError('give image paths or --embeddings, not both');
  if (o.embeddings === undefined && images.length === 0)
    throw new UsageError('give image files, directories or globs to caption (or --embeddings FILE)');
  if (o.decode !== 'nucleus' && o.numCaptions !== 1)
    throw new UsageError(
      '--num-captions needs --decode nucleus (beam search returns every beam as candidates)',
    );

  // Inputs first, so a mistyped --embeddings file fails before any weights load.
  let expanded: ExpandedInput[] = [];
  let inputs: CaptionInput[];
  if (o.embeddings !== undefined) {
    const rows = await readEmbeddingsFile(o.embeddings);
    inputs = rows.map((embedding) => ({ embedding }));
  } else {
    expanded = await expandInputs(images);
    inputs = expanded.filter((e) => e.error === undefined).map((e) => e.path);
  }

  const model = await ClipCap.load(loadOptionsFromCli(o));
  if (o.embeddings !== undefined && inputs.length > 0) {
    const d = (inputs[0] as { embedding: Float32Array }).embedding.length;
    if (d !== model.embeddingSize) {
      model.dispose();
      throw new UserError(
        `${o.embeddings}: the embeddings are ${d}-d but ${model.parts.description} expects ${model.embeddingSize}-d; ` +
          `extract them with the CLIP model it was trained with`,
      );
    }
  }
  const writer = new ResultWriter(io, o.format, o.embeddings !== undefined);
  const total = o.embeddings !== undefined ? inputs.length : expanded.length;
  const bar = progressBar(io, total, 'captioning');
  try {
    const options: CaptionOptions = {
      ...decodeOptionsFromCli(o),
      numCaptions: o.numCaptions,
      batchSize: o.batchSize,
      limitInputPixels: o.maxPixels,
      applyExif: o.applyExif,
    };
    // Arguments that matched nothing are reported in their place among the captioned inputs.
    let pos = 0;
    const flushFailed = (): void => {
      while (pos < expanded.length && expanded[pos].error !== undefined) {
        writer.write({ index: pos, image: expanded[pos].path, error: expanded[pos].error as string });
        pos++;
      }
    };
    flushFailed();
    for await (const r of model.captionStream(inputs, options)) {
      writer.write(o.embeddings !== undefined ? r : { ...r, index: pos });
      pos++;
      flushFailed();
      bar.update(writer.count);
    }
  } finally {
    bar.stop();
    model.dispose();
  }
  writer.finish();
  return writer.failed;
}

export function register(program: Command, ctx: CliContext = processContext): void {
  const cmd = program
    .command('caption')
    .description('caption images (files, directories, globs) or precomputed CLIP embeddings')
    .argument('[images...]', 'image files, directories (searched recursively) or glob patterns')
    .option(
      '--embeddings <FILE>',
      'caption CLIP embeddings from a safetensors file (tensor clip_embedding [N, D])',
    );
  addDecodeOptions(addModelOptions(cmd))
    .option('--num-captions <n>', 'captions per image (nucleus)', intArg('--num-captions', 1, 1000), 1)
    .option('--batch-size <n>', 'images per model batch', intArg('--batch-size', 1, 4096), 8)
    .addOption(
      new Option('--format <format>', 'output format').choices(['text', 'json', 'jsonl']).default('text'),
    )
    .option(
      '--max-pixels <n>',
      'refuse images with more pixels (decompression bombs); default 100000000',
      intArg('--max-pixels', 1),
    )
    .option('--apply-exif', 'rotate images as their EXIF orientation says (the reference ignores it)')
    .action(async (images: string[], o: CaptionCliOptions) => {
      const failed = await runCaption(images, o, ctx.io());
      if (failed > 0) ctx.exit(1);
    });
}
