/**
 * `clipcap eval`: score captions with the COCO caption metrics exactly as pycocoevalcap does.
 *
 *   clipcap eval --references dataset_coco.json --split test --predictions results.json [--format json]
 *
 * The command only parses, reads the files and reports; the scoring is evaluateCaptions (src/eval).
 * `runEval` takes the predictions either from --predictions or from a pluggable PredictionSource (for
 * captioning the split end to end), so that a later `--model/--images` path can reuse it unchanged.
 */
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
import { UsageError } from '../../util/errors.js';

/** Produces the predictions for the reference images (e.g. by captioning them). */
export type PredictionSource = (references: ReferenceSet) => Promise<PredictionSet>;

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
  if (opts.predictions === undefined && opts.predictionSource === undefined) {
    throw new UsageError('clipcap eval needs --predictions FILE (a COCO results JSON or JSONL file)');
  }
  const progress = (msg: string): void => {
    if (io.progress === true) io.stderr(`clipcap eval: ${msg}\n`);
  };

  const references = await readReferences(opts.references, { split: opts.split, tokenize });
  const predictions =
    opts.predictions !== undefined
      ? await readPredictions(opts.predictions)
      : await (opts.predictionSource as PredictionSource)(references);
  const result = await evaluateCaptions(references, predictions, {
    tokenize,
    meteorJar: opts.meteorJar,
    spiceJar: opts.spiceJar,
    spiceCache: opts.spiceCache,
    onlyPredicted: opts.onlyPredicted,
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

interface RawOptions {
  references: string;
  predictions?: string;
  split?: string;
  tokenize: Tokenization;
  meteorJar?: string;
  spiceJar?: string;
  spiceCache?: string;
  onlyPredicted?: boolean;
  format: 'text' | 'json';
}

export function register(program: Command): void {
  program
    .command('eval')
    .description(
      'score captions with the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) exactly as pycocoevalcap',
    )
    .requiredOption(
      '--references <file>',
      'reference captions: COCO annotations JSON, Karpathy dataset_coco.json (see --split), or JSONL {image_id, caption}',
    )
    .option('--predictions <file>', 'predicted captions: COCO results JSON [{image_id, caption}] or JSONL')
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
    .addHelpText(
      'after',
      '\nJava for --meteor-jar / --spice-jar: `java` on PATH, or the executable named by $CLIPCAP_JAVA.\n' +
        'Without the jars, METEOR and SPICE are reported as not computed.',
    )
    .action(async (o: RawOptions) => {
      await runEval(o);
    });
}
