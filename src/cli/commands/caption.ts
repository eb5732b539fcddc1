/**
 * `clipcap caption IMAGES... [options]`: caption image files, directories, globs or precomputed CLIP
 * embeddings. The contract (options, JSON shape) is in DESIGN.md; the work happens in pipeline/.
 */
import { Option, type Command } from 'commander';
import cliProgress from 'cli-progress';
import { ClipCap } from '../../pipeline/caption.js';
import { expandInputs, type ExpandedInput } from '../../pipeline/inputs.js';
import { readCaptionEmbeddings } from '../../data/embeddings.js';
import { checkOfflineFiles } from '../../pipeline/load.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from '../../pipeline/types.js';
import { imageIdForPath, readReferences, sample, type ReferenceSet } from '../../eval/readers.js';
import { UsageError, UserError } from '../../util/errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import {
  addDecodeOptions,
  addModelOptions,
  batchSizeOption,
  checkDecodeFlags,
  decodeOptionsFromCli,
  intArg,
  loadOptionsFromCli,
  maxPixelsOption,
  type DecodeCliOptions,
  type ModelCliOptions,
} from '../options.js';

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

// The option builders moved to ../options.ts; re-exported for the commands that import them from here.
export {
  intArg,
  floatArg,
  addModelOptions,
  loadOptionsFromCli,
  addDecodeOptions,
  decodeOptionsFromCli,
  type ModelCliOptions,
  type DecodeCliOptions,
} from '../options.js';

export type CaptionFormat = 'text' | 'json' | 'jsonl' | 'coco';

export interface CaptionCliOptions extends ModelCliOptions, DecodeCliOptions {
  embeddings?: string;
  numCaptions: number;
  batchSize: number;
  format: CaptionFormat;
  maxPixels?: number;
  applyExif?: boolean;
  /** Write the output to this file (atomically) instead of stdout. */
  out?: string;
  /** COCO annotations (or a Karpathy file) whose file names map image paths to ids (--format coco). */
  references?: string;
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

/** A COCO image id as the results format writes it: a number when it is one. */
function cocoId(id: string | number): string | number {
  return typeof id === 'string' && /^\d+$/.test(id) ? Number(id) : id;
}

/**
 * Writes results in the chosen format as they arrive: text lines `label<TAB>caption` (with several nucleus
 * samples `label<TAB>k<TAB>caption`, k from 1; a failure `label<TAB>error: message`), JSON Lines, one JSON
 * array, or a COCO results array `[{image_id, caption}]` (failures only on stderr: COCO results cannot hold
 * them). `emit` receives the output (stdout, or a buffer for --out).
 */
export class ResultWriter {
  private readonly all: Record<string, unknown>[] = [];
  failed = 0;
  count = 0;

  constructor(
    private readonly emit: (s: string) => void,
    private readonly stderr: (s: string) => void,
    private readonly format: CaptionFormat,
  ) {}

  private json(r: CaptionResult, id: string | number | undefined): Record<string, unknown> {
    const j = resultJson(r, false);
    return id === undefined || r.image !== undefined ? j : { index: r.index, image_id: cocoId(id), ...j };
  }

  /** `id`: the input's COCO image id (needed for --format coco; added to JSON entries that name no image). */
  write(r: CaptionResult, id?: string | number): void {
    this.count++;
    if (r.error !== undefined) this.failed++;
    const label = r.image ?? (id !== undefined ? String(id) : String(r.index));
    switch (this.format) {
      case 'json':
        this.all.push(this.json(r, id));
        break;
      case 'jsonl':
        this.emit(JSON.stringify(this.json(r, id)) + '\n');
        break;
      case 'coco':
        if (r.error !== undefined) this.stderr(`clipcap: ${oneLine(r.error)}\n`);
        else this.all.push({ image_id: cocoId(id as string | number), caption: r.caption });
        break;
      case 'text':
        if (r.error !== undefined) {
          // Most messages start with the input's name, which the label already gives.
          const msg = r.error.startsWith(`${label}: `) ? r.error.slice(label.length + 2) : r.error;
          this.emit(`${label}\terror: ${oneLine(msg)}\n`);
        } else if (
          r.candidates &&
          r.candidates.length > 1 &&
          r.candidates.every((c) => c.score === undefined)
        )
          // several nucleus samples: numbered, one line each
          r.candidates.forEach((c, k) => this.emit(`${label}\t${k + 1}\t${oneLine(c.caption)}\n`));
        else this.emit(`${label}\t${oneLine(r.caption)}\n`);
    }
  }

  finish(): void {
    if (this.format === 'json' || this.format === 'coco') this.emit(JSON.stringify(this.all, null, 2) + '\n');
    if (this.failed > 0)
      this.stderr(
        `clipcap: ${this.failed} of ${this.count} inputs failed` +
          (this.format === 'coco' ? ' (left out of the COCO results)\n' : ' (see their entries)\n'),
      );
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

/** What was asked to be captioned, in order, with what names each input. */
interface Inputs {
  /** Expanded image arguments (failed expansions included, in place); empty with --embeddings. */
  expanded: ExpandedInput[];
  inputs: CaptionInput[];
  /** COCO image ids known from the input file itself (parse_coco.py pickles), by input position. */
  knownIds?: Array<number | string | undefined>;
}

async function readInputs(images: readonly string[], o: CaptionCliOptions): Promise<Inputs> {
  if (o.embeddings === undefined) {
    const expanded = await expandInputs(images);
    return { expanded, inputs: expanded.filter((e) => e.error === undefined).map((e) => e.path) };
  }
  const e = await readCaptionEmbeddings(o.embeddings);
  return {
    expanded: [],
    // Rows are named by the image paths the file records (clipcap extract), so results say which image.
    inputs: e.rows.map((embedding, i) => ({ embedding, name: e.images?.[i] })),
    knownIds: e.imageIds,
  };
}

/**
 * --format coco: the image id of every input, decided before any weights load: ids the input file holds,
 * else the image path through the references' file names, else the number in a COCO file name.
 */
async function cocoIds(
  images: readonly string[],
  inp: Inputs,
  o: CaptionCliOptions,
): Promise<Array<string | number>> {
  const refs: ReferenceSet | undefined =
    o.references !== undefined ? await readReferences(o.references) : undefined;
  const ids: Array<string | number> = [];
  const missing: string[] = [];
  inp.inputs.forEach((input, i) => {
    const known = inp.knownIds?.[i];
    const name = typeof input === 'string' ? input : (input as { name?: string }).name;
    const id = known ?? (name !== undefined ? imageIdForPath(name, refs) : undefined);
    if (id === undefined) missing.push(name ?? `row ${i}`);
    else ids.push(id);
  });
  if (missing.length > 0) {
    const where = o.embeddings ?? (images.length === 1 ? images[0] : 'the inputs');
    throw new UserError(
      `--format coco: no COCO image id for ${missing.length} of ${inp.inputs.length} inputs of ${where} (${sample(missing, 3)}); ` +
        (refs !== undefined
          ? `${refs.source} lists no such file_name and they are not COCO file names (COCO_val2014_000000391895.jpg)`
          : 'pass --references ANNOTATIONS.json whose images[].file_name lists them, or name the files as COCO does ' +
            '(COCO_val2014_000000391895.jpg)'),
    );
  }
  return ids;
}

/**
 * Caption `images` (paths, directories, globs) or `--embeddings`; returns the number of failed inputs.
 * Fatal problems (bad options, weights that cannot load) throw a UserError. `cmd` (when given) lets the
 * decoding options the chosen decoder ignores be refused.
 */
export async function runCaption(
  images: readonly string[],
  o: CaptionCliOptions,
  io: CliIO,
  cmd?: Command,
): Promise<number> {
  if (o.embeddings !== undefined && images.length > 0)
    throw new UsageError('give image paths or --embeddings, not both');
  if (o.embeddings === undefined && images.length === 0)
    throw new UsageError('give image files, directories or globs to caption (or --embeddings FILE)');
  if (cmd !== undefined) {
    checkDecodeFlags(cmd, o.decode);
    // Image options do nothing when embeddings are captioned (no image is read, no CLIP loads).
    const imageOnly = ['maxPixels', 'applyExif', 'clip'].filter(
      (k) => o.embeddings !== undefined && cmd.getOptionValueSource(k) === 'cli',
    );
    if (imageOnly.length > 0)
      throw new UsageError(
        `${imageOnly.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(' and ')} ` +
          `${imageOnly.length === 1 ? 'does' : 'do'} nothing with --embeddings (no image is read and no CLIP loads)`,
      );
  }
  if (o.decode !== 'nucleus' && o.numCaptions !== 1)
    throw new UsageError(
      '--num-captions needs --decode nucleus (beam search returns every beam as candidates)',
    );
  if (o.references !== undefined && o.format !== 'coco')
    throw new UsageError('--references maps image paths to COCO ids for --format coco; add --format coco');
  if (o.format === 'coco' && o.numCaptions !== 1)
    throw new UsageError('--format coco holds one caption per image: drop --num-captions');

  // Inputs first, so a mistyped --embeddings file or an unmappable image fails before any weights load.
  const inp = await readInputs(images, o);
  const ids = o.format === 'coco' ? await cocoIds(images, inp, o) : undefined;
  const loadOptions = loadOptionsFromCli(o);
  await checkOfflineFiles(loadOptions, { clip: o.embeddings === undefined });
  const model = await ClipCap.load(loadOptions);
  const { expanded, inputs } = inp;
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
  // --out: everything goes to one buffer, written atomically at the end (no partial file on failure).
  let buffered = '';
  const emit = o.out !== undefined ? (s: string): void => void (buffered += s) : io.stdout;
  const writer = new ResultWriter(emit, io.stderr, o.format);
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
      // r.index counts the captioned inputs (ids are by it); an image result is numbered among the arguments.
      const id = ids?.[r.index] ?? inp.knownIds?.[r.index];
      writer.write(o.embeddings !== undefined ? r : { ...r, index: pos }, id);
      pos++;
      flushFailed();
      bar.update(writer.count);
    }
  } finally {
    bar.stop();
    model.dispose();
  }
  writer.finish();
  if (o.out !== undefined) {
    await writeFileAtomic(o.out, buffered);
    io.stderr(`clipcap: wrote ${writer.count - writer.failed} captions to ${o.out}\n`);
  }
  return writer.failed;
}

export function register(program: Command, ctx: CliContext = processContext): void {
  const cmd = program
    .command('caption')
    .description('caption images (files, directories, globs) or precomputed CLIP embeddings')
    .argument('[images...]', 'image files, directories (searched recursively) or glob patterns')
    .option(
      '--embeddings <FILE>',
      'caption CLIP embeddings: a clipcap extract .safetensors (clip_embedding [N, D]; results name the ' +
        "images it records) or parse_coco.py's .pkl (results name the COCO image ids)",
    );
  addDecodeOptions(addModelOptions(cmd))
    .option('--num-captions <n>', 'captions per image (nucleus)', intArg('--num-captions', 1, 1000), 1)
    .addOption(batchSizeOption('images per model batch', 8))
    .addOption(
      new Option(
        '--format <format>',
        'output: text (path<TAB>caption lines), json (one array), jsonl, or coco (COCO results [{image_id, caption}] for clipcap eval)',
      )
        .choices(['text', 'json', 'jsonl', 'coco'])
        .default('text'),
    )
    .option(
      '--references <FILE>',
      'with --format coco: COCO annotations (or Karpathy dataset_coco.json) whose file names give the image ids ' +
        '(default: the number in COCO file names, COCO_val2014_000000391895.jpg)',
    )
    .option('--out <FILE>', 'write the output to FILE (atomically) instead of stdout')
    .addOption(maxPixelsOption())
    .option('--apply-exif', 'rotate images as their EXIF orientation says (the reference ignores it)')
    .action(async (images: string[], o: CaptionCliOptions, command: Command) => {
      const failed = await runCaption(images, o, ctx.io(), command);
      if (failed > 0) ctx.exit(1);
    });
}
