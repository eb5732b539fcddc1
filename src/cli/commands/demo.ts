/**
 * `clipcap demo`: the whole system learning, offline, in about two minutes (src/cli/demo/run.ts): a synthetic
 * captioned world, features from the bundled CLIP tower, a ClipCap trained with the real training code, the
 * held-out scenes captioned with beam search and scored against the best constant caption.
 *
 * `clipcap demo world --out DIR [--n N] [--seed S]` writes one fresh split (to check a trained model on scenes
 * it never saw). `clipcap demo --random-weights` is the old pipeline smoke test: it captions the photos in
 * assets/demo with tiny random-weight models in the official .pt format (nonsense captions, and it says so).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promises as fs } from 'node:fs';
import cliProgress from 'cli-progress';
import { Option, type Command } from 'commander';
import { UsageError, UserError } from '../../util/errors.js';
import { processContext, runCaption, type CliContext, type CliIO } from './caption.js';
import { backendOption, intArg } from '../options.js';
import type { BackendName } from '../../engine/registry.js';
import { runDemo, type DemoResult, type DemoSizes } from '../demo/run.js';
import { writeWorld } from '../demo/world.js';
import type { TrainEvent } from '../../pipeline/train.js';

/** assets/demo, found by walking up from this file (src/cli/commands or dist/src/cli/commands). */
export function demoAssetsDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'assets', 'demo');
    if (existsSync(path.join(candidate, 'clipcap_mlp_tiny.pt'))) return candidate;
    dir = path.dirname(dir);
  }
  throw new UserError('the demo assets (assets/demo) are missing from this installation; reinstall clipcap');
}

interface RandomDemoOptions {
  decode: 'beam' | 'greedy' | 'nucleus';
  format: 'text' | 'json' | 'jsonl';
  backend?: BackendName;
}

/** The random-weight pipeline smoke test (`--random-weights`). */
export async function runRandomDemo(o: RandomDemoOptions, io: CliIO): Promise<number> {
  const assets = demoAssetsDir();
  const note =
    'clipcap demo: captioning the photos in assets/demo/images with TINY RANDOM weights (test fixtures), ' +
    'offline. The captions are meaningless; the run proves the pipeline works end to end. ' +
    'For real captions: clipcap caption --model coco photo.jpg';
  if (o.format === 'text') io.stdout(`# ${note}\n`);
  else io.stderr(`${note}\n`);
  // Relative to the working directory when the package is below it (a clone), absolute otherwise.
  const rel = path.relative(process.cwd(), path.join(assets, 'images'));
  const images = rel.startsWith('..') || path.isAbsolute(rel) ? path.join(assets, 'images') : rel;
  return runCaption(
    [images],
    {
      model: 'coco',
      clipcap: path.join(assets, 'clipcap_mlp_tiny.pt'),
      clip: path.join(assets, 'clip_tiny'),
      gpt2: path.join(assets, 'gpt2_tiny'),
      backend: o.backend,
      offline: true,
      decode: o.decode,
      beamSize: 5,
      maxTokens: 20,
      stop: '.',
      topP: 0.8,
      temperature: 1,
      seed: 0,
      numCaptions: 1,
      batchSize: 8,
      format: o.format,
    },
    io,
  );
}

export interface DemoCliOptions {
  out?: string;
  format: 'text' | 'json' | 'jsonl';
  backend?: BackendName;
  randomWeights?: boolean;
  decode?: 'beam' | 'greedy' | 'nucleus';
}

const fmt = (x: number): string => x.toFixed(3);
const secs = (x: number): string => (x >= 10 ? `${x.toFixed(0)} s` : `${x.toFixed(1)} s`);

/** Training progress: a bar on a terminal, a line every 10 s elsewhere. */
function trainProgress(io: CliIO): { event(e: TrainEvent): void; stop(): void } {
  let bar: cliProgress.SingleBar | undefined;
  let ema = 0;
  let n = 0;
  let last = 0;
  return {
    event(e: TrainEvent): void {
      if (e.type === 'start') {
        if (io.progress) {
          bar = new cliProgress.SingleBar(
            {
              stream: process.stderr,
              format:
                '  training [{bar}] {value}/{total} steps | loss {loss} | {sps} samples/s | {eta_formatted} left',
              hideCursor: true,
              etaBuffer: 30,
            },
            cliProgress.Presets.shades_classic,
          );
          bar.start(e.lastStep, 0, { loss: '-', sps: '-' });
        }
      } else if (e.type === 'step') {
        ema = 0.95 * ema + 0.05 * e.loss;
        n++;
        const loss = (ema / (1 - 0.95 ** n)).toFixed(3);
        if (bar) bar.update(e.step, { loss, sps: e.samplesPerS.toFixed(0) });
        else if (Date.now() - last >= 10_000 || e.step === e.lastStep) {
          last = Date.now();
          io.stderr(
            `  training: step ${e.step}/${e.lastStep} loss ${loss} ${e.samplesPerS.toFixed(0)} samples/s\n`,
          );
        }
      } else if (e.type === 'warning') io.stderr(`clipcap: warning: ${e.message}\n`);
    },
    stop(): void {
      bar?.stop();
      bar = undefined;
    },
  };
}

/** Relative to the working directory when below it (shorter to read and to paste). */
function shown(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel.startsWith('..') || path.isAbsolute(rel) ? p : rel;
}

export async function runLearningDemo(
  o: DemoCliOptions,
  io: CliIO,
  sizes: Partial<DemoSizes> = {},
): Promise<DemoResult> {
  const stages = ['world', 'extract', 'train', 'caption', 'score'];
  const progress = trainProgress(io);
  io.stderr('clipcap demo: training a ClipCap from scratch on a synthetic world, offline\n');
  let r: DemoResult;
  try {
    r = await runDemo({
      ...sizes,
      ...(o.out !== undefined ? { out: o.out } : {}),
      ...(o.backend ? { backend: o.backend } : {}),
      onStage: (stage, detail) => io.stderr(`[${stages.indexOf(stage) + 1}/5] ${detail}\n`),
      onTrainEvent: (e) => progress.event(e),
    });
  } finally {
    progress.stop();
  }
  if (o.format === 'text') io.stdout(demoReport(r));
  else
    io.stdout(
      `${JSON.stringify(
        {
          out: r.out,
          samples: r.samples,
          scores: r.scores,
          exact_match: r.exact_match,
          all_attributes: r.all_attributes,
          baseline_caption: r.baseline_caption,
          seconds: r.seconds,
          written: r.written,
        },
        null,
        2,
      )}\n`,
    );
  return r;
}

/** The text report: samples, the score table, stage times, where things are. */
export function demoReport(r: DemoResult): string {
  const lines: string[] = [];
  lines.push('', `Held-out scenes (never seen in training), the model's caption and one reference:`);
  for (const s of r.samples) {
    lines.push(`  ${shown(s.image)}`, `    model:     ${s.caption}`, `    reference: ${s.references[0]}`);
  }
  const m = r.scores.model;
  const b = r.scores.baseline;
  const row = (name: string, x: number, y: number): string =>
    `  ${name.padEnd(22)}${fmt(x).padStart(8)}${fmt(y).padStart(10)}`;
  lines.push(
    '',
    `Scores on the held-out scenes (baseline: the most frequent training caption, "${r.baseline_caption}"):`,
    `  ${'metric'.padEnd(22)}${'model'.padStart(8)}${'baseline'.padStart(10)}`,
    row('BLEU-4', m.Bleu_4, b.Bleu_4),
    row('ROUGE-L', m.ROUGE_L, b.ROUGE_L),
    row('CIDEr-D', m.CIDEr, b.CIDEr),
    row('exact match', r.exact_match.model, r.exact_match.baseline),
    row('all attributes right', r.all_attributes.model, r.all_attributes.baseline),
    '',
    `Time: ${(['world', 'extract', 'train', 'caption', 'score'] as const)
      .map((k) => `${k} ${secs(r.seconds[k])}`)
      .join(', ')}; total ${secs(r.seconds.total)}`,
    '',
    `Written under ${shown(r.out)}:`,
    `  world/train, world/heldout   images/*.png + annotations.json (COCO captions)`,
    `  features/train.safetensors   CLIP features (bundled:demo-clip) + train.captions.jsonl`,
    `  run/                         training log (metrics.jsonl, loss.png)`,
    `  model/                       the trained checkpoint (records bundled:demo-clip and bundled:demo-gpt2)`,
    `  predictions.json, scores.json`,
    '',
    'Try it on scenes it never saw:',
    `  clipcap demo world --out ${shown(path.join(r.out, 'fresh'))} --n 100 --seed 7`,
    `  clipcap caption --model ${shown(r.written.model)} ${shown(path.join(r.out, 'fresh', 'images'))}`,
    '',
  );
  return lines.join('\n');
}

export interface WorldCliOptions {
  out: string;
  n: number;
  seed: number;
}

export async function runWorld(o: WorldCliOptions, io: CliIO): Promise<void> {
  const entries = await fs.readdir(o.out).catch(() => [] as string[]);
  if (entries.length > 0) throw new UserError(`--out ${o.out} is not empty; give a new or empty directory`);
  const w = await writeWorld(o.out, { n: o.n, seed: o.seed });
  io.stderr(
    `clipcap: wrote ${w.images.length} scenes to ${path.join(o.out, 'images')} and ${w.annotations}\n`,
  );
}

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('demo')
    .description(
      'train a ClipCap from scratch on a synthetic captioned world, offline, and score it on held-out scenes; ' +
        '`demo world --out DIR` writes a fresh world split',
    )
    .argument('[what]', '"world": only write a fresh world split (DIR/images/*.png, DIR/annotations.json)')
    .option(
      '--out <DIR>',
      'output directory, new or empty (default: a new folder in the OS temp dir; required by demo world)',
    )
    .addOption(
      new Option('--format <format>', 'output format').choices(['text', 'json', 'jsonl']).default('text'),
    )
    .addOption(backendOption())
    .addOption(
      new Option('--n <N>', 'demo world: number of scenes (default: 100)').argParser(
        intArg('--n', 1, 100_000),
      ),
    )
    .addOption(
      new Option(
        '--seed <S>',
        'demo world: seed (default: 7; the demo trains on 2 and holds out 3)',
      ).argParser(intArg('--seed', 0)),
    )
    .option(
      '--random-weights',
      'instead: caption the bundled photos with tiny random-weight models (a pipeline smoke test)',
    )
    .addOption(
      new Option('--decode <method>', 'decoder (with --random-weights)').choices([
        'beam',
        'greedy',
        'nucleus',
      ]),
    )
    .action(async (what: string | undefined, o: DemoCliOptions & { n?: number; seed?: number }) => {
      const io = ctx.io();
      if (what !== undefined && what !== 'world')
        throw new UsageError(
          `clipcap demo ${what}: unknown; use clipcap demo, or clipcap demo world --out DIR`,
        );
      if (what === 'world') {
        if (o.out === undefined) throw new UsageError('clipcap demo world needs --out DIR');
        if (o.randomWeights || o.decode !== undefined || o.format !== 'text')
          throw new UsageError('clipcap demo world takes --out, --n and --seed only');
        await runWorld({ out: o.out, n: o.n ?? 100, seed: o.seed ?? 7 }, io);
        return;
      }
      if (o.n !== undefined || o.seed !== undefined)
        throw new UsageError('--n and --seed are for clipcap demo world');
      if (o.randomWeights) {
        if (o.out !== undefined) throw new UsageError('--out is not used with --random-weights');
        const failed = await runRandomDemo(
          { decode: o.decode ?? 'beam', format: o.format, ...(o.backend ? { backend: o.backend } : {}) },
          io,
        );
        if (failed > 0) ctx.exit(1);
        return;
      }
      if (o.decode !== undefined)
        throw new UsageError('--decode is only for --random-weights (the demo uses beam search)');
      if (o.format === 'jsonl') throw new UsageError('--format jsonl is only for --random-weights; use json');
      await runLearningDemo(o, io);
    });
}
