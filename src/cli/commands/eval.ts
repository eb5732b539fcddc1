/**
 * `clipcap eval`: score captions with the COCO caption metrics exactly as pycocoevalcap does.
 *
 *   clipcap eval --references dataset_coco.json --split test --predictions results.json [--format json]
 *   clipcap eval --references dataset_coco.json --split test --model coco --images DIR [--out results.json]
 *
 * The command only parses, reads the files and reports; the scoring is evaluateCaptions (src/eval).
 * `runEval` takes the predictions either from --predictions or from a pluggable PredictionSource; the second
 * form plugs in `captionSplitSource`, which captions the split's images (pipeline/eval-split.ts: batched,
 * resumable from `<out>.partial.jsonl`) and writes the COCO results file before scoring.
 */
import { stat } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import {
  type EvalResult,
  type PredictionSet,
  type ReferenceSet,
  type Tokenization,
  evaluateCaptions,
  readPredictions,
  readReferences,
  toCocoJson,
} from '../../eval/index.js';
import { ClipCap } from '../../pipeline/caption.js';
import { captionEvalSplit, progressPathFor, type CaptionSplitResult } from '../../pipeline/eval-split.js';
import { UsageError } from '../../util/errors.js';
import {
  addDecodeOptions,
  addModelOptions,
  decodeOptionsFromCli,
  loadOptionsFromCli,
  progressBar,
  type DecodeCliOptions,
  type ModelCliOptions,
} from './caption.js';
import { batchSizeOption, checkDecodeFlags } from '../options.js';

/**
 * Produces the predictions for the reference images (e.g. by captioning them). It may ask to score only the
 * images it predicted (some could not be captioned), as --only-predicted does.
 */
export type PredictionSource = (
  references: ReferenceSet,
) => Promise<PredictionSet | { predictions: PredictionSet; onlyPredicted?: boolean }>;

export interface EvalCommandOptions {
  references: string;
  predictions?: string;
  split?: string;
  tokenize?: Tokenization;
  meteorJar?: string;
  spiceJar?: string;
  spiceCache?: string;
  onlyPredicted?: boolean;
  format?: 'text' | 'json';
  /** Used when `predictions` is not given. */
  predictionSource?: PredictionSource;
}

export interface EvalIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Whether to print progress lines on stderr. */
  progress?: boolean;
}

const defaultIO = (): EvalIO => ({
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  progress: process.stderr.isTTY === true,
});

const fmt = (v: number): string => (Number.isNaN(v) ? 'nan' : v.toFixed(6));
const fmt100 = (v: number): string => (Number.isNaN(v) ? 'nan' : (v * 100).toFixed(2));

/** The text report: one row per metric, in pycocoevalcap's order. */
export function formatEvalTable(r: EvalResult): string {
  const rows: Array<[string, string, string]> = [];
  const add = (name: string, v: number | undefined, why?: string): void => {
    rows.push(v === undefined ? [name, 'not computed', why ?? ''] : [name, fmt(v), fmt100(v)]);
  };
  add('Bleu_1', r.Bleu_1);
  add('Bleu_2', r.Bleu_2);
  add('Bleu_3', r.Bleu_3);
  add('Bleu_4', r.Bleu_4);
  add('METEOR', r.METEOR, r.notComputed.METEOR);
  add('ROUGE_L', r.ROUGE_L);
  add('CIDEr', r.CIDEr);
  add('SPICE', r.SPICE, r.notComputed.SPICE);
  const lines = [
    `${r.images} images, tokenization: ${r.tokenize}`,
    `${'metric'.padEnd(8)}  ${'score'.padEnd(12)}  x100`,
  ];
  for (const [name, score, extra] of rows)
    lines.push(`${name.padEnd(8)}  ${score.padEnd(12)}  ${extra}`.trimEnd());
  return lines.join('\n') + '\n';
}

/** Read the inputs, score, and print the table or the JSON document. Returns the result. */
export async function runEval(opts: EvalCommandOptions, io: EvalIO = defaultIO()): Promise<EvalResult> {
  const format = opts.format ?? 'text';
  const tokenize = opts.tokenize ?? 'ptb';
  if (format !== 'text' && format !== 'json')
    throw new UsageError(`--format must be text or json, not "${format}"`);
  if (tokenize !== 'ptb' && tokenize !== 'none')
    throw new UsageError(`--tokenize must be ptb or none, not "${tokenize}"`);
  if (opts.predictions === undefined && opts.predictionSource === undefined)
    throw new UsageError(NEEDS_INPUT);
  const progress = (msg: string): void => {
    if (io.progress === true) io.stderr(`clipcap eval: ${msg}\n`);
  };

  const references = await readReferences(opts.references, { split: opts.split, tokenize });
  let predictions: PredictionSet;
  let onlyPredicted = opts.onlyPredicted === true;
  if (opts.predictions !== undefined) {
    // Results that name images by path (clipcap caption --format json) are mapped through the references.
    predictions = await readPredictions(opts.predictions, { references });
    if (predictions.failed !== undefined)
      io.stderr(
        `clipcap eval: ${predictions.failed} entries of ${opts.predictions} are failures (an "error", no caption); ` +
          'they are left out\n',
      );
  } else {
    const got = await (opts.predictionSource as PredictionSource)(references);
    if ('predictions' in got) {
      predictions = got.predictions;
      onlyPredicted ||= got.onlyPredicted === true;
    } else {
      predictions = got;
    }
  }
  const result = await evaluateCaptions(references, predictions, {
    tokenize,
    meteorJar: opts.meteorJar,
    spiceJar: opts.spiceJar,
    spiceCache: opts.spiceCache,
    onlyPredicted,
    onProgress: progress,
  });

  if (format === 'json') {
    // The JSON document has only the computed metrics; say on stderr what is missing and why.
    for (const [metric, why] of Object.entries(result.notComputed))
      io.stderr(`clipcap eval: ${metric} not computed: ${why}\n`);
    io.stdout(JSON.stringify(toCocoJson(result), null, 2) + '\n');
  } else {
    io.stdout(formatEvalTable(result));
  }
  return result;
}

const NEEDS_INPUT =
  'clipcap eval needs --predictions FILE (a COCO results JSON or JSONL file to score) or --model coco|conceptual|DIR ' +
  '(or --clipcap FILE) with --images DIR (to caption the reference images, then score them)';

/** Options of the captioning form (`--model ... --images DIR`). */
export interface EvalCaptionOptions extends ModelCliOptions, DecodeCliOptions {
  /** Folder holding the reference images. */
  images: string;
  /** COCO results file to write; default `defaultResultsPath(split)`. */
  out?: string;
  skipMissing?: boolean;
  batchSize: number;
  split?: string;
}

/** Where the results go without --out: `results_<split>.json` (`results.json` without --split), in the working directory. */
export function defaultResultsPath(split?: string): string {
  const safe = split?.replace(/[^\w.-]/g, '_');
  return safe !== undefined && safe !== '' ? `results_${safe}.json` : 'results.json';
}

/**
 * What decides the captions, recorded in the progress file so that a rerun with another model or decoder
 * does not resume from these captions. The backend is left out: it does not change the result.
 */
export function captionSettings(o: EvalCaptionOptions): Record<string, unknown> {
  return {
    model: o.clipcap === undefined ? o.model : undefined,
    clipcap: o.clipcap,
    clip: o.clip,
    gpt2: o.gpt2,
    normalizePrefix: o.normalizePrefix === true,
    decode: o.decode,
    beamSize: o.beamSize,
    maxTokens: o.maxTokens,
    stop: o.stop,
    topP: o.topP,
    temperature: o.temperature,
    seed: o.seed,
  };
}

/** Outcome of the captioning, for the exit code. */
export interface CaptionSplitStatus {
  failed: number;
}

/**
 * A PredictionSource that captions the reference images with the model: files checked first, weights loaded
 * only if something is left to caption, progress bar on a terminal (one summary line on stderr either way).
 */
export function captionSplitSource(
  o: EvalCaptionOptions,
  io: EvalIO,
  status: CaptionSplitStatus = { failed: 0 },
): PredictionSource {
  const out = o.out ?? defaultResultsPath(o.split);
  const say = (msg: string): void => io.stderr(`clipcap eval: ${msg}\n`);
  return async (references) => {
    const started = Date.now();
    let bar: { update(done: number): void; stop(): void } | undefined;
    let result: CaptionSplitResult;
    try {
      result = await captionEvalSplit({
        references,
        imagesDir: o.images,
        out,
        skipMissing: o.skipMissing,
        settings: captionSettings(o),
        captionOptions: { ...decodeOptionsFromCli(o), batchSize: o.batchSize },
        loadCaptioner: () => ClipCap.load(loadOptionsFromCli(o)),
        onStart: ({ total, resumed, toCaption, missing }) => {
          if (missing.length > 0)
            say(
              `warning: skipping ${missing.length} of ${total} images whose file is missing (${missing
                .slice(0, 3)
                .map((m) => m.tried)
                .join(', ')}${missing.length > 3 ? ', ...' : ''})`,
            );
          if (resumed > 0)
            say(`resuming: ${resumed} of ${total} images already captioned in ${progressPathFor(out)}`);
          bar = progressBar(
            { stdout: io.stdout, stderr: io.stderr, progress: io.progress === true },
            toCaption,
            'captioning',
          );
        },
        onProgress: (done) => bar?.update(done),
        onFailure: (f) => say(f.error.startsWith(f.file) ? f.error : `${f.file}: ${f.error}`),
      });
    } catch (e) {
      bar?.stop();
      const partial = progressPathFor(out);
      // Only a failure during captioning leaves work worth resuming (not, e.g., a refused progress file).
      if (bar !== undefined && (await exists(partial)))
        say(`captions so far are kept in ${partial}: run the same command again to resume`);
      throw e;
    }
    bar?.stop();
    status.failed = result.failed.length;
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    const notes = [
      result.resumed > 0 ? `${result.resumed} resumed` : '',
      result.failed.length > 0 ? `${result.failed.length} failed` : '',
      result.missing.length > 0 ? `${result.missing.length} missing` : '',
    ].filter((n) => n !== '');
    say(
      `captioned ${result.captioned} of ${result.total} images in ${secs} s` +
        (notes.length > 0 ? ` (${notes.join(', ')})` : '') +
        `; results in ${out}`,
    );
    if (!result.complete)
      say(
        `warning: scoring ${result.records.length} of ${result.total} images; the ${result.total - result.records.length} ` +
          `without a caption are left out (as --only-predicted), so the scores are not comparable to a full split`,
      );
    return { predictions: result.predictions, onlyPredicted: !result.complete };
  };
}

async function exists(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null)) !== null;
}

interface RawOptions extends Omit<EvalCaptionOptions, 'images'> {
  references: string;
  predictions?: string;
  images?: string;
  tokenize: Tokenization;
  meteorJar?: string;
  spiceJar?: string;
  spiceCache?: string;
  onlyPredicted?: boolean;
  format: 'text' | 'json';
}

/** Options that only make sense when captioning (their attribute names). */
const CAPTIONING_OPTIONS = [
  'images',
  'out',
  'skipMissing',
  'batchSize',
  'model',
  'clipcap',
  'clip',
  'gpt2',
  'backend',
  'offline',
  'normalizePrefix',
  'decode',
  'beamSize',
  'maxTokens',
  'stop',
  'topP',
  'temperature',
  'seed',
] as const;

/** The option's flag, e.g. beamSize -> --beam-size. */
const flag = (name: string): string => `--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/**
 * Which form the user asked for: scoring a results file (--predictions) or captioning (--model/--clipcap with
 * --images). Defaults (--model coco, --decode beam, ...) do not count as asking.
 */
function checkForm(o: RawOptions, cmd: Command): 'score' | 'caption' {
  const given = (name: string): boolean => cmd.getOptionValueSource(name) === 'cli';
  if (o.predictions !== undefined) {
    const extra = CAPTIONING_OPTIONS.filter(given);
    if (extra.length > 0)
      throw new UsageError(
        `--predictions scores an existing results file; ${flag(extra[0])} is for captioning the images ` +
          `(--model ... --images DIR): give one or the other`,
      );
    return 'score';
  }
  const model = given('model') || o.clipcap !== undefined;
  if (!model && o.images === undefined) throw new UsageError(NEEDS_INPUT);
  if (!model)
    throw new UsageError(
      '--images needs a model to caption with: --model coco|conceptual|DIR or --clipcap FILE',
    );
  if (o.images === undefined)
    throw new UsageError(
      '--model captions the reference images: give --images DIR (the folder that holds them, e.g. the one with val2014/)',
    );
  return 'caption';
}

/** How the command reaches the outside world; tests pass buffers and record the exit code. */
export interface EvalContext {
  io(): EvalIO;
  exit(code: number): void;
}

const processEvalContext: EvalContext = {
  io: defaultIO,
  exit: (code) => {
    process.exitCode = code;
  },
};

export function register(program: Command, ctx: EvalContext = processEvalContext): void {
  const cmd = program
    .command('eval')
    .description(
      'score captions with the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) exactly as ' +
        'pycocoevalcap; with --model and --images, caption the reference images first',
    )
    .requiredOption(
      '--references <file>',
      'reference captions: COCO annotations JSON, Karpathy dataset_coco.json (see --split), or JSONL {image_id, caption}',
    )
    .option(
      '--predictions <file>',
      'predicted captions: COCO results JSON [{image_id, caption}] or JSONL; entries may name the image by path ' +
        "({image, caption}: clipcap caption --format json), mapped through the references' file names",
    )
    .option('--split <name>', 'Karpathy split to score (train, restval, val, test)')
    .addOption(
      new Option(
        '--tokenize <mode>',
        "ptb: pycocoevalcap's PTB tokenization; none: captions are already tokenized (Karpathy files: their tokens)",
      )
        .choices(['ptb', 'none'])
        .default('ptb'),
    )
    .option('--meteor-jar <jar>', 'meteor-1.5.jar (with data/ beside it) to compute METEOR; needs java')
    .option('--spice-jar <jar>', 'spice-1.0.jar (with lib/ beside it) to compute SPICE; needs java')
    .option('--spice-cache <dir>', 'SPICE parse cache directory')
    .option(
      '--only-predicted',
      'score only the reference images that have a prediction (as pycocoevalcap does)',
    )
    .addOption(new Option('--format <format>', 'output format').choices(['text', 'json']).default('text'))
    .option(
      '--images <DIR>',
      'caption the reference images found here (Karpathy: DIR/filepath/filename or DIR/filename; COCO: DIR/file_name)',
    )
    .option(
      '--out <FILE>',
      'COCO results file the captions are written to (default: results_<split>.json in the working directory); ' +
        'progress is kept in FILE.partial.jsonl so that a rerun resumes',
    )
    .option('--skip-missing', 'leave out reference images whose file is missing (scores cover the others)')
    .addOption(batchSizeOption('images per model batch', 8));
  addDecodeOptions(addModelOptions(cmd));
  // Captioning is asked for by naming the model: no default model here (caption's is coco).
  cmd.options.find((opt) => opt.long === '--model')?.default(undefined);
  cmd
    .addHelpText(
      'after',
      '\nJava for --meteor-jar / --spice-jar: `java` on PATH, or the executable named by $CLIPCAP_JAVA.\n' +
        'Without the jars, METEOR and SPICE are reported as not computed.\n\n' +
        "Caption and score the Karpathy test split (the paper's COCO row):\n" +
        '  clipcap eval --model coco --references dataset_coco.json --split test --images COCO_DIR\n' +
        'COCO_DIR holds val2014/ (and train2014/). An interrupted run resumes from results_test.json.partial.jsonl;\n' +
        'images that cannot be captioned are reported, left out of the scores, and the exit code is 1.',
    )
    .action(async (o: RawOptions, command: Command) => {
      const io = ctx.io();
      if (checkForm(o, command) === 'score') {
        await runEval(o, io);
        return;
      }
      checkDecodeFlags(command, o.decode);
      const status: CaptionSplitStatus = { failed: 0 };
      await runEval(
        {
          ...o,
          predictions: undefined,
          predictionSource: captionSplitSource({ ...o, images: o.images as string }, io, status),
        },
        io,
      );
      if (status.failed > 0) ctx.exit(1);
    });
}
