/**
 * `clipcap eval --model ... --images DIR` end to end with the tiny fixture models: the reference images are
 * captioned (batched, resumable), written as a COCO results file, and scored. The results file must hold
 * exactly what ClipCap.caption gives for those images, and the scores must be evaluateCaptions on that file.
 */
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatEvalTable, register } from '../../src/cli/commands/eval.js';
import {
  evaluateCaptions,
  readPredictions,
  readReferences,
  toCocoJson,
  type EvalResult,
} from '../../src/eval/index.js';
import { ClipCap } from '../../src/pipeline/caption.js';
import { UsageError, UserError } from '../../src/util/errors.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const fixture = (...p: string[]): string => path.join(FIX, ...p);
const NAMES = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;
const cocoId = (name: string): number => Number(/(\d+)\.jpg$/.exec(name)?.[1]);

// The tiny ClipCap (MLP + its GPT-2) with the tiny CLIP; 20 tokens keep the beam search short.
const MODEL = [
  '--clipcap',
  fixture('clipcap_mlp_tiny.pt'),
  '--clip',
  fixture('clip_tiny'),
  '--gpt2',
  fixture('gpt2_tiny'),
  '--backend',
  'reference',
  '--max-tokens',
  '20',
];

interface Run {
  code: number;
  out: string;
  err: string;
}

/** Run `clipcap eval ARGS` in-process, mapping errors to exit codes as src/cli/main.ts does. */
async function evalCli(args: string[]): Promise<Run> {
  const run: Run = { code: 0, out: '', err: '' };
  const program = new Command()
    .name('clipcap')
    .exitOverride()
    .configureOutput({ writeErr: (s) => void (run.err += s), writeOut: (s) => void (run.out += s) });
  register(program, {
    io: () => ({ stdout: (s) => void (run.out += s), stderr: (s) => void (run.err += s), progress: false }),
    exit: (c) => void (run.code = c),
  });
  try {
    await program.parseAsync(['eval', ...args], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) run.code = e.exitCode === 0 ? 0 : 2;
    else if (e instanceof UsageError) [run.err, run.code] = [run.err + `clipcap: ${e.message}\n`, 2];
    else if (e instanceof UserError) [run.err, run.code] = [run.err + `clipcap: ${e.message}\n`, 1];
    else throw e;
  }
  return run;
}

// Images 0..2 are the Karpathy test split (0 and 1 under val2014/, 2 directly in the images folder, which
// the lookup also tries); image 3 is in the train split and has no file, so it must not be needed.
const TEST = [0, 1, 2];
let tmp: string;
let imagesDir: string;
let karpathy: string;
let coco: string;
/** What ClipCap.caption gives for the test images, by COCO id. */
const expected = new Map<number, string>();

const refsFor = (i: number): string[] => [
  // The model's own caption among the references makes the scores far from zero, so that a wrong
  // caption in the results file would change them.
  expected.get(cocoId(NAMES[i])) ?? 'a photo',
  'A man riding a wave on top of a surfboard.',
  'Two dogs play with a frisbee in the park.',
];

function writeKarpathy(file: string, items: Array<{ i: number; split: string; name?: string }>): void {
  writeFileSync(
    file,
    JSON.stringify({
      dataset: 'coco',
      images: items.map(({ i, split, name }) => ({
        filepath: 'val2014',
        filename: name ?? NAMES[i],
        imgid: i,
        split,
        cocoid: name !== undefined ? cocoId(name) : cocoId(NAMES[i]),
        sentences: refsFor(i).map((raw, k) => ({ raw, tokens: raw.toLowerCase().split(' '), sentid: k })),
      })),
    }),
  );
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'clipcap-eval-e2e-'));
  imagesDir = path.join(tmp, 'coco');
  mkdirSync(path.join(imagesDir, 'val2014'), { recursive: true });
  copyFileSync(fixture('images', NAMES[0]), path.join(imagesDir, 'val2014', NAMES[0]));
  copyFileSync(fixture('images', NAMES[1]), path.join(imagesDir, 'val2014', NAMES[1]));
  copyFileSync(fixture('images', NAMES[2]), path.join(imagesDir, NAMES[2]));

  const model = await ClipCap.load({
    clipcap: fixture('clipcap_mlp_tiny.pt'),
    clip: fixture('clip_tiny'),
    gpt2: fixture('gpt2_tiny'),
    backend: 'reference',
  });
  try {
    const results = await model.caption(
      TEST.map((i) => fixture('images', NAMES[i])),
      { method: 'beam', maxTokens: 20 },
    );
    results.forEach((r, k) => {
      if (r.error !== undefined) throw new Error(r.error);
      expected.set(cocoId(NAMES[TEST[k]]), r.caption);
    });
  } finally {
    model.dispose();
  }

  karpathy = path.join(tmp, 'dataset_coco.json');
  writeKarpathy(karpathy, [
    { i: 0, split: 'test' },
    { i: 3, split: 'train' },
    { i: 1, split: 'test' },
    { i: 2, split: 'test' },
  ]);
  coco = path.join(tmp, 'captions_val.json');
  writeFileSync(
    coco,
    JSON.stringify({
      images: TEST.map((i) => ({ id: cocoId(NAMES[i]), file_name: NAMES[i] })),
      annotations: TEST.flatMap((i) =>
        refsFor(i).map((caption, k) => ({ id: i * 10 + k, image_id: cocoId(NAMES[i]), caption })),
      ),
    }),
  );
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A fresh, empty output folder. */
let outCount = 0;
function outDir(): string {
  const d = path.join(tmp, `out${outCount++}`);
  mkdirSync(d);
  return d;
}

const readJson = <T>(f: string): T => JSON.parse(readFileSync(f, 'utf8')) as T;
type Record_ = { image_id: number | string; caption: string };

/** Worst |a - b| over the corpus and per-image scores of two JSON documents; they must have the same keys. */
function worstDiff(a: Record<string, unknown>, b: Record<string, unknown>): number {
  expect(Object.keys(a)).toEqual(Object.keys(b));
  let worst = 0;
  for (const [k, v] of Object.entries(a)) {
    const w = b[k];
    if (typeof v === 'number') worst = Math.max(worst, Math.abs(v - (w as number)));
    else worst = Math.max(worst, worstDiff(v as Record<string, unknown>, w as Record<string, unknown>));
  }
  return worst;
}

describe('clipcap eval --model --images (captions, then scores)', () => {
  it('Karpathy split: results file = ClipCap.caption, scores = evaluateCaptions on it, no files left over', async () => {
    const dir = outDir();
    const out = path.join(dir, 'results.json');
    const r = await evalCli([
      '--references',
      karpathy,
      '--split',
      'test',
      '--images',
      imagesDir,
      '--out',
      out,
      '--batch-size',
      '2',
      '--format',
      'json',
      ...MODEL,
    ]);
    expect(r.code, r.err).toBe(0);
    // Results in the references' order, ids as numbers, exactly the library's captions.
    const results = readJson<Record_[]>(out);
    expect(results).toEqual(
      TEST.map((i) => ({ image_id: cocoId(NAMES[i]), caption: expected.get(cocoId(NAMES[i])) })),
    );
    expect(readdirSync(dir)).toEqual(['results.json']);

    const want = toCocoJson(
      await evaluateCaptions(await readReferences(karpathy, { split: 'test' }), await readPredictions(out)),
    );
    const got = JSON.parse(r.out) as Record<string, unknown>;
    const worst = worstDiff(got, want);
    console.log(`Karpathy split: worst |diff| of scores vs evaluateCaptions(results file) = ${worst}`);
    expect(worst).toBe(0);
    expect(got.Bleu_1 as number).toBeGreaterThan(0.5); // the captions are among the references
    expect(r.err).toMatch(/clipcap eval: captioned 3 of 3 images in [\d.]+ s; results in /);
    expect(r.err).not.toMatch(/warning/);
  });

  it('COCO annotations: the table equals evaluateCaptions on the results file', async () => {
    const dir = outDir();
    const out = path.join(dir, 'coco_results.json');
    // COCO file names are looked up under the images folder and, for COCO_<folder>_<id>.jpg, in <folder>/.
    const r = await evalCli(['--references', coco, '--images', imagesDir, '--out', out, ...MODEL]);
    expect(r.code, r.err).toBe(0);
    expect(readJson<Record_[]>(out)).toEqual(
      TEST.map((i) => ({ image_id: cocoId(NAMES[i]), caption: expected.get(cocoId(NAMES[i])) })),
    );
    const want: EvalResult = await evaluateCaptions(await readReferences(coco), await readPredictions(out));
    expect(r.out).toBe(formatEvalTable(want));
    expect(readdirSync(dir)).toEqual(['coco_results.json']);
  });

  it('resumes from the progress file: its captions are kept, not recomputed', async () => {
    const dir = outDir();
    const out = path.join(dir, 'results.json');
    const sentinel = 'SENTINEL caption that no model would write';
    // A hand-made progress file (no header line) holding image 1.
    writeFileSync(
      `${out}.partial.jsonl`,
      JSON.stringify({ image_id: cocoId(NAMES[1]), caption: sentinel }) + '\n',
    );
    const r = await evalCli([
      '--references',
      karpathy,
      '--split',
      'test',
      '--images',
      imagesDir,
      '--out',
      out,
      '--format',
      'json',
      ...MODEL,
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toContain(`resuming: 1 of 3 images already captioned in ${out}.partial.jsonl`);
    expect(r.err).toMatch(/captioned 2 of 3 images in [\d.]+ s \(1 resumed\)/);
    const results = readJson<Record_[]>(out);
    expect(results).toEqual(
      TEST.map((i) => ({
        image_id: cocoId(NAMES[i]),
        caption: i === 1 ? sentinel : expected.get(cocoId(NAMES[i])),
      })),
    );
    const want = toCocoJson(
      await evaluateCaptions(await readReferences(karpathy, { split: 'test' }), await readPredictions(out)),
    );
    expect(worstDiff(JSON.parse(r.out) as Record<string, unknown>, want)).toBe(0);
    expect(readdirSync(dir)).toEqual(['results.json']);
  });

  it('refuses to resume captions made with other settings', async () => {
    const dir = outDir();
    const out = path.join(dir, 'results.json');
    const partial = `${out}.partial.jsonl`;
    const text =
      JSON.stringify({ format: 'clipcap-eval-progress/1', settings: { model: 'conceptual' } }) +
      '\n' +
      JSON.stringify({ image_id: cocoId(NAMES[1]), caption: 'x' }) +
      '\n';
    writeFileSync(partial, text);
    const r = await evalCli([
      '--references',
      karpathy,
      '--split',
      'test',
      '--images',
      imagesDir,
      '--out',
      out,
      ...MODEL,
    ]);
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain(`clipcap: ${partial}: these captions were made with other settings`);
    expect(readFileSync(partial, 'utf8')).toBe(text); // left for the user to decide
  });

  it('missing image files: one error naming a few and the count, nothing written', async () => {
    const dir = outDir();
    const out = path.join(dir, 'results.json');
    const refs = path.join(dir, 'refs.json');
    const ghost = 'COCO_val2014_000000000042.jpg';
    writeKarpathy(refs, [
      { i: 0, split: 'test' },
      { i: 4, split: 'test', name: ghost },
      { i: 1, split: 'test' },
    ]);
    const r = await evalCli([
      '--references',
      refs,
      '--split',
      'test',
      '--images',
      imagesDir,
      '--out',
      out,
      ...MODEL,
    ]);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      `clipcap: 1 of 3 images of ${refs} are not under ${imagesDir} (${path.join(imagesDir, 'val2014', ghost)}); ` +
        'point --images at the folder that holds them, or pass --skip-missing to score the others\n',
    );
    expect(readdirSync(dir)).toEqual(['refs.json']);

    // --skip-missing: the others are captioned and scored as --only-predicted.
    const s = await evalCli([
      '--references',
      refs,
      '--split',
      'test',
      '--images',
      imagesDir,
      '--out',
      out,
      '--skip-missing',
      '--format',
      'json',
      ...MODEL,
    ]);
    expect(s.code, s.err).toBe(0);
    expect(s.err).toContain('warning: skipping 1 of 3 images whose file is missing');
    expect(s.err).toContain('warning: scoring 2 of 3 images');
    expect(readJson<Record_[]>(out).map((x) => x.image_id)).toEqual([cocoId(NAMES[0]), cocoId(NAMES[1])]);
    const want = toCocoJson(
      await evaluateCaptions(await readReferences(refs, { split: 'test' }), await readPredictions(out), {
        onlyPredicted: true,
      }),
    );
    expect(worstDiff(JSON.parse(s.out) as Record<string, unknown>, want)).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['refs.json', 'results.json']);
  });

  it('an image that cannot be decoded is reported, left out of the scores, and the exit code is 1', async () => {
    const dir = outDir();
    const out = path.join(dir, 'results.json');
    const refs = path.join(dir, 'refs.json');
    const broken = 'COCO_val2014_000000000007.jpg';
    const images = path.join(dir, 'images');
    mkdirSync(images);
    copyFileSync(fixture('images', NAMES[0]), path.join(images, NAMES[0]));
    writeFileSync(path.join(images, broken), 'not a JPEG');
    writeKarpathy(refs, [
      { i: 0, split: 'test' },
      { i: 5, split: 'test', name: broken },
    ]);
    const r = await evalCli([
      '--references',
      refs,
      '--images',
      images,
      '--out',
      out,
      '--format',
      'json',
      ...MODEL,
    ]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(path.join(images, broken));
    expect(r.err).toMatch(/captioned 1 of 2 images in [\d.]+ s \(1 failed\)/);
    expect(r.err).toContain('warning: scoring 1 of 2 images');
    expect(readJson<Record_[]>(out)).toEqual([
      { image_id: cocoId(NAMES[0]), caption: expected.get(cocoId(NAMES[0])) },
    ]);
    const want = toCocoJson(
      await evaluateCaptions(await readReferences(refs), await readPredictions(out), { onlyPredicted: true }),
    );
    expect(worstDiff(JSON.parse(r.out) as Record<string, unknown>, want)).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['images', 'refs.json', 'results.json']);
  });

  it('without --out writes results_<split>.json in the working directory', async () => {
    const dir = outDir();
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const r = await evalCli(['--references', karpathy, '--split', 'test', '--images', imagesDir, ...MODEL]);
      expect(r.code, r.err).toBe(0);
      expect(r.err).toContain('; results in results_test.json');
    } finally {
      process.chdir(cwd);
    }
    expect(readdirSync(dir)).toEqual(['results_test.json']);
    expect(readJson<Record_[]>(path.join(dir, 'results_test.json'))).toHaveLength(3);
  });

  it('needs --predictions or --model with --images, not both (usage errors, exit 2)', async () => {
    const refs = ['--references', karpathy, '--split', 'test'];
    const cases: Array<[string[], string]> = [
      [refs, 'clipcap eval needs --predictions FILE'],
      [[...refs, '--model', 'coco'], '--model captions the reference images: give --images DIR'],
      [[...refs, '--clipcap', 'x.pt'], '--model captions the reference images: give --images DIR'],
      [[...refs, '--images', imagesDir], '--images needs a model to caption with'],
      [
        [...refs, '--predictions', 'p.json', '--images', imagesDir],
        '--predictions scores an existing results file; --images',
      ],
      [
        [...refs, '--predictions', 'p.json', '--beam-size', '3'],
        '--predictions scores an existing results file; --beam-size',
      ],
    ];
    for (const [args, msg] of cases) {
      const r = await evalCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err.startsWith(`clipcap: ${msg}`), r.err).toBe(true);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});
