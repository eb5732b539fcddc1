/**
 * `clipcap demo` as a library call: make a captioned world, extract its CLIP features with the bundled tower
 * (the `clipcap extract` code), train a ClipCap on them (the `clipcap train` code: official loss, AdamW, linear
 * warmup and decay), caption the held-out scenes with beam search (the `clipcap caption` code, from the
 * images), and score them against the best constant caption with the project's metrics (pycocoevalcap's).
 *
 * Layout of `out`: world/train/, world/heldout/ (images/ + annotations.json), features/train.safetensors
 * (+ train.captions.jsonl), run/ (the training run: metrics.jsonl, loss.png), model/ (the trained checkpoint, which
 * records its sources: `bundled:demo-clip` and `bundled:demo-gpt2`), predictions.json, scores.json.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { evaluateCaptions, type Scores } from '../../eval/index.js';
import { ClipCap } from '../../pipeline/caption.js';
import { train, type TrainEvent } from '../../pipeline/train.js';
import type { BackendName } from '../../engine/registry.js';
import { UserError } from '../../util/errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { namesEveryAttribute, writeWorld, type WorldImage } from './world.js';
import type { CliIO } from '../commands/caption.js';
import { runExtract } from '../commands/extract.js';

export const DEMO_CLIP = 'bundled:demo-clip';
export const DEMO_GPT2_NAME = 'bundled:demo-gpt2';

/** Sizes of a demo run; the defaults are the full demo, the CI test passes smaller ones. */
export interface DemoSizes {
  trainImages: number;
  heldoutImages: number;
  epochs: number;
  batchSize: number;
  lr: number;
  warmup: number;
  prefixLength: number;
  seed: number;
}

export const DEMO_DEFAULTS: Readonly<DemoSizes> = Object.freeze({
  trainImages: 1000,
  heldoutImages: 150,
  epochs: 3,
  batchSize: 40,
  lr: 2e-3,
  warmup: 100,
  prefixLength: 4,
  seed: 1,
});

export interface DemoOptions extends Partial<DemoSizes> {
  /** Output directory (new or empty); default a new folder in the OS temp dir. */
  out?: string;
  backend?: BackendName;
  /** Stage notices and progress. */
  onStage?: (stage: DemoStage, detail: string) => void;
  onTrainEvent?: (e: TrainEvent) => void;
  /** Where extract's own messages go (default: dropped). */
  io?: CliIO;
}

export type DemoStage = 'world' | 'extract' | 'train' | 'caption' | 'score';

export interface DemoSample {
  image: string;
  caption: string;
  references: string[];
}

export interface DemoResult {
  out: string;
  samples: DemoSample[];
  scores: { model: Scores; baseline: Scores };
  exact_match: { model: number; baseline: number };
  /** Held-out captions that name every attribute of their scene correctly. */
  all_attributes: { model: number; baseline: number };
  baseline_caption: string;
  seconds: Record<DemoStage | 'total', number>;
  written: Record<string, string>;
}

const SAMPLE_COUNT = 6;

/** Lower case, punctuation dropped, spaces squeezed: how exact matches are compared. */
function normalized(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9 ]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

function exactMatchRate(preds: readonly string[], refs: readonly string[][]): number {
  let hits = 0;
  preds.forEach((p, i) => {
    if (refs[i].some((r) => normalized(r) === normalized(p))) hits++;
  });
  return preds.length === 0 ? 0 : hits / preds.length;
}

/** The most frequent training caption (ties: the first in sorted order): the best constant caption. */
export function mostFrequentCaption(images: readonly WorldImage[]): string {
  const counts = new Map<string, number>();
  for (const w of images) for (const c of w.captions) counts.set(c, (counts.get(c) ?? 0) + 1);
  let best = '';
  let bestN = -1;
  for (const [c, n] of [...counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)))
    if (n > bestN) {
      best = c;
      bestN = n;
    }
  return best;
}

async function prepareOut(out: string | undefined): Promise<string> {
  if (out === undefined) return fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-demo-'));
  const abs = path.resolve(out);
  const entries = await fs.readdir(abs).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    if (e.code === 'ENOTDIR') throw new UserError(`--out ${out} is a file; give a new or empty directory`);
    throw new UserError(`--out ${out}: cannot read it (${e.code ?? String(e)})`);
  });
  if (entries.length > 0)
    throw new UserError(`--out ${out} is not empty; give a new or empty directory for the demo`);
  await fs.mkdir(abs, { recursive: true });
  return abs;
}

const silentIO: CliIO = { stdout: () => undefined, stderr: () => undefined, progress: false };

export async function runDemo(o: DemoOptions = {}): Promise<DemoResult> {
  const s: DemoSizes = { ...DEMO_DEFAULTS, ...o };
  const stage = o.onStage ?? ((): void => undefined);
  const t0 = performance.now();
  const seconds: Record<string, number> = {};
  let mark = t0;
  const lap = (name: DemoStage): void => {
    const now = performance.now();
    seconds[name] = (now - mark) / 1000;
    mark = now;
  };

  const out = await prepareOut(o.out);
  // 1. The world: training and held-out scenes from different seeds (no scene is in both).
  stage('world', `drawing ${s.trainImages} training and ${s.heldoutImages} held-out scenes`);
  const trainDir = path.join(out, 'world', 'train');
  const heldDir = path.join(out, 'world', 'heldout');
  const trainWorld = await writeWorld(trainDir, { n: s.trainImages, seed: s.seed * 2 });
  const held = await writeWorld(heldDir, { n: s.heldoutImages, seed: s.seed * 2 + 1 });
  lap('world');

  // 2. Features: clipcap extract with the bundled tower, captions paired by file name.
  stage('extract', `extracting features with ${DEMO_CLIP}`);
  const features = path.join(out, 'features', 'train.safetensors');
  const failed = await runExtract(
    [path.join(trainDir, 'images')],
    {
      out: features,
      captions: trainWorld.annotations,
      strict: true,
      clip: DEMO_CLIP,
      batchSize: 32,
      ...(o.backend ? { backend: o.backend } : {}),
    },
    o.io ?? silentIO,
  );
  if (failed > 0) throw new Error(`demo: ${failed} images of the demo world failed to extract`);
  lap('extract');

  // 3. Training: clipcap train's code, MLP mapper with the demo GPT-2 fine-tuned (the official variant (a)).
  stage('train', `training a ClipCap (MLP mapper + ${DEMO_GPT2_NAME}, ${s.epochs} epochs)`);
  const runDir = path.join(out, 'run');
  const result = await train(
    {
      data: features,
      out: runDir,
      gpt2: DEMO_GPT2_NAME,
      mappingType: 'mlp',
      prefixLength: s.prefixLength,
      epochs: s.epochs,
      batchSize: s.batchSize,
      lr: s.lr,
      warmup: s.warmup,
      seed: s.seed,
      saveEvery: 0,
      ...(o.backend ? { backend: o.backend } : {}),
    },
    { onEvent: o.onTrainEvent },
  );
  if (result.interrupted) throw new UserError('demo: training was interrupted');
  const model = path.join(out, 'model');
  await fs.rename(path.join(runDir, 'final'), model);
  lap('train');

  // 4. Caption the held-out images from their files, as `clipcap caption --model DIR/model` does.
  stage('caption', `captioning ${held.images.length} held-out scenes (beam search)`);
  const cap = await ClipCap.load({ model, ...(o.backend ? { backend: o.backend } : {}) });
  let captions: string[];
  try {
    const results = await cap.caption(
      held.images.map((w) => path.join(heldDir, 'images', w.file_name)),
      { method: 'beam', beamSize: 5, maxTokens: 30, batchSize: 16 },
    );
    captions = results.map((r) => {
      if (r.error !== undefined) throw new Error(`demo: captioning ${r.image ?? r.index} failed: ${r.error}`);
      return r.caption;
    });
  } finally {
    cap.dispose();
  }
  const predictions = held.images.map((w, i) => ({ image_id: w.id, caption: captions[i] }));
  const predictionsFile = path.join(out, 'predictions.json');
  await writeFileAtomic(predictionsFile, `${JSON.stringify(predictions, null, 1)}\n`);
  lap('caption');

  // 5. Scores: the model vs the most frequent training caption, on the held-out references.
  stage('score', 'scoring against the references');
  const baselineCaption = mostFrequentCaption(trainWorld.images);
  const refs = new Map(held.images.map((w) => [w.id, w.captions]));
  const modelScores = await evaluateCaptions(refs, new Map(predictions.map((p) => [p.image_id, p.caption])));
  const baselineScores = await evaluateCaptions(
    refs,
    new Map(held.images.map((w) => [w.id, baselineCaption])),
  );
  const refLists = held.images.map((w) => w.captions);
  const corpus = (r: Scores): Scores => {
    const { Bleu_1, Bleu_2, Bleu_3, Bleu_4, ROUGE_L, CIDEr } = r;
    return { Bleu_1, Bleu_2, Bleu_3, Bleu_4, ROUGE_L, CIDEr };
  };
  const allAttributes = (preds: readonly string[]): number =>
    preds.filter((p, i) => namesEveryAttribute(p, held.images[i].scene)).length / Math.max(1, preds.length);
  lap('score');
  seconds.total = (performance.now() - t0) / 1000;

  const scoresFile = path.join(out, 'scores.json');
  const doc: DemoResult = {
    out,
    samples: held.images.slice(0, SAMPLE_COUNT).map((w, i) => ({
      image: path.join(heldDir, 'images', w.file_name),
      caption: captions[i],
      references: w.captions,
    })),
    scores: { model: corpus(modelScores), baseline: corpus(baselineScores) },
    exact_match: {
      model: exactMatchRate(captions, refLists),
      baseline: exactMatchRate(
        captions.map(() => baselineCaption),
        refLists,
      ),
    },
    all_attributes: {
      model: allAttributes(captions),
      baseline: allAttributes(captions.map(() => baselineCaption)),
    },
    baseline_caption: baselineCaption,
    seconds: seconds as DemoResult['seconds'],
    written: {
      world: path.join(out, 'world'),
      features,
      run: runDir,
      model,
      predictions: predictionsFile,
      scores: scoresFile,
    },
  };
  await writeFileAtomic(
    scoresFile,
    `${JSON.stringify(
      {
        scores: doc.scores,
        exact_match: doc.exact_match,
        all_attributes: doc.all_attributes,
        baseline_caption: baselineCaption,
        images: held.images.length,
      },
      null,
      2,
    )}\n`,
  );
  return doc;
}
