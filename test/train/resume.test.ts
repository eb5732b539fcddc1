/**
 * Resumable training: a run stopped at any step (mid-epoch, at an epoch boundary, twice) and resumed ends with
 * the same model.safetensors bytes as an uninterrupted run, for both variants (MLP + GPT-2 fine-tuned with
 * dropout on; transformer mapper with GPT-2 frozen). Also: --resume from a periodic checkpoint, --keep-last,
 * stale temps, NaN loss, NaN features, over-long captions, schedule warnings, metrics.jsonl and loss.png.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { train, type TrainEvent, type TrainOptions } from '../../src/pipeline/train.js';
import { readTrainingData } from '../../src/train/data.js';
import { readTrainState } from '../../src/train/checkpoint.js';
import { UserError } from '../../src/util/errors.js';
import { loadClipcapDir } from '../../src/weights/families/clipcap.js';
import { saveSafetensors } from '../../src/weights/safetensors.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const PKL = path.join(FIX, 'official_features_tiny.pkl');
const made: string[] = [];
const tmp = (): string => {
  const dir = mkdtempSync(path.join(tmpdir(), 'clipcap-resume-'));
  made.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** The tiny GPT-2 with dropout 0.1 everywhere, so that resuming must reproduce the dropout masks too. */
function gpt2WithDropout(): string {
  const dir = path.join(tmp(), 'gpt2_dropout');
  mkdirSync(dir);
  cpSync(path.join(FIX, 'gpt2_tiny', 'model.safetensors'), path.join(dir, 'model.safetensors'));
  const cfg = JSON.parse(readFileSync(path.join(FIX, 'gpt2_tiny', 'config.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify({ ...cfg, attn_pdrop: 0.1, embd_pdrop: 0.1, resid_pdrop: 0.1 }),
  );
  return dir;
}
const GPT2 = gpt2WithDropout();

const VARIANTS: Record<string, Partial<TrainOptions>> = {
  mlp: { mappingType: 'mlp', onlyPrefix: false },
  transformer: { mappingType: 'transformer', onlyPrefix: true, numLayers: 1, clipLength: 2 },
};

// 5 captions, batch 2: 2 steps per epoch, 3 epochs = 6 steps.
const base = (out: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
  data: PKL,
  out,
  gpt2: GPT2,
  prefixLength: 2,
  batchSize: 2,
  epochs: 3,
  lr: 3e-3,
  warmup: 2,
  seed: 11,
  ...extra,
});

const weights = (dir: string): Buffer => readFileSync(path.join(dir, 'model.safetensors'));

/** Run until step `stopAt` (abort there), returning the interrupt checkpoint. */
async function runUntil(o: TrainOptions, stopAt: number): Promise<string> {
  const ac = new AbortController();
  const r = await train(o, {
    signal: ac.signal,
    onEvent: (e) => {
      if (e.type === 'step' && e.step === stopAt) ac.abort();
    },
  });
  expect(r.interrupted).toBe(true);
  expect(r.steps).toBe(stopAt);
  return r.checkpoint;
}

describe('--resume is bit-identical', () => {
  for (const [name, variant] of Object.entries(VARIANTS)) {
    it(`${name}: stopped mid-epoch, at an epoch boundary, and twice; resumed from the run dir or a checkpoint`, async () => {
      const ref = await train(base(path.join(tmp(), 'ref'), variant));
      expect(ref.interrupted).toBe(false);
      expect(ref.steps).toBe(6);
      const want = weights(ref.checkpoint);
      const wantOpt = readFileSync(path.join(ref.checkpoint, 'optimizer.safetensors'));

      for (const stops of [[1], [2], [3, 5]]) {
        const out = path.join(tmp(), `run-${stops.join('-')}`);
        let ck = await runUntil(base(out, variant), stops[0]);
        expect(path.basename(ck)).toBe(`step-${String(stops[0]).padStart(7, '0')}`);
        for (const next of stops.slice(1)) {
          const ac = new AbortController();
          const r = await train(
            { resume: out },
            {
              signal: ac.signal,
              onEvent: (e) => {
                if (e.type === 'step' && e.step === next) ac.abort();
              },
            },
          );
          expect(r.interrupted).toBe(true);
          ck = r.checkpoint;
        }
        // Resume from the checkpoint itself the first time, from the run directory otherwise.
        const events: TrainEvent[] = [];
        const res = await train(
          { resume: stops.length === 1 ? ck : out },
          { onEvent: (e) => events.push(e) },
        );
        expect(res.interrupted).toBe(false);
        expect(res.steps).toBe(6);
        expect(res.losses).toEqual(ref.losses);
        expect(res.losses_per_epoch).toEqual(ref.losses_per_epoch);
        const start = events.find((e) => e.type === 'start');
        expect(start && start.type === 'start' && start.startStep).toBe(stops[stops.length - 1]);
        expect(weights(res.checkpoint).equals(want), `${name} stops ${stops}`).toBe(true);
        expect(readFileSync(path.join(res.checkpoint, 'optimizer.safetensors')).equals(wantOpt)).toBe(true);
        // metrics.jsonl has each step once, in order, after the resume dropped the lines past the checkpoint.
        const steps = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { step: number; loss?: number })
          .filter((m) => m.loss !== undefined)
          .map((m) => m.step);
        expect(steps).toEqual([1, 2, 3, 4, 5, 6]);
      }
      console.log(`${name}: resumed runs equal the uninterrupted one byte for byte`);
    });
  }

  it('with validation: resuming from a checkpoint taken before its epoch validation logs it once', async () => {
    const out = path.join(tmp(), 'run');
    const ref = await train(base(out, { valFraction: 0.25, saveEverySteps: 2, epochs: 3 }));
    const want = weights(ref.checkpoint);
    // step-0000004 is the last step of epoch 2, saved before epoch 2's validation ran.
    const res = await train({ resume: path.join(out, 'step-0000004') });
    expect(weights(res.checkpoint).equals(want)).toBe(true);
    expect(res.val_losses).toEqual(ref.val_losses);
    const val = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: number; val_loss?: number })
      .filter((m) => m.val_loss !== undefined);
    expect(val.map((v) => v.step)).toEqual(ref.val_losses.map((v) => v.step));
  });

  it('--save-every-steps checkpoints resume exactly; --keep-last prunes; a complete run is not resumed', async () => {
    const out = path.join(tmp(), 'run');
    const ref = await train(base(out, { saveEverySteps: 1, keepLast: 3 }));
    // Periodic checkpoints after steps 1..5 and epochs 1, 2; the newest 3 remain (epoch-002 = step 4).
    const left = readdirSync(out)
      .filter((e) => /^(step|epoch)-/.test(e))
      .sort();
    expect(left).toEqual(['epoch-002', 'step-0000004', 'step-0000005']);
    const again = path.join(tmp(), 'again');
    mkdirSync(again);
    cpSync(path.join(out, 'step-0000004'), path.join(again, 'step-0000004'), { recursive: true });
    const res = await train({ resume: again });
    expect(weights(res.checkpoint).equals(weights(ref.checkpoint))).toBe(true);
    await expect(train({ resume: out })).rejects.toThrow(/complete/);
  });
});

describe('checkpoints, metrics and failures', () => {
  it('every checkpoint loads for captioning and records sources, options and the data digest', async () => {
    const out = path.join(tmp(), 'run');
    const res = await train(base(out, { valFraction: 0.25, epochs: 2 }));
    const cfg = JSON.parse(readFileSync(path.join(res.checkpoint, 'config.json'), 'utf8')) as {
      sources: { gpt2: string };
      training: { epochs: number; valFraction: number };
      data: { digest: string };
    };
    expect(path.resolve(res.checkpoint, cfg.sources.gpt2)).toBe(GPT2);
    expect(cfg.training.epochs).toBe(2);
    expect(cfg.data.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(res.val_losses.map((v) => v.epoch)).toEqual([1, 2]);
    for (const d of ['epoch-001', 'final']) {
      const ck = await loadClipcapDir(path.join(out, d));
      expect(ck.gpt2).toBeDefined();
      expect((await readTrainState(path.join(out, d)))?.complete).toBe(d === 'final');
    }
    const lines = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n');
    const val = lines.map((l) => JSON.parse(l) as Record<string, number>).filter((m) => 'val_loss' in m);
    expect(val).toHaveLength(2);
    for (const m of lines.map((l) => JSON.parse(l) as Record<string, number>).filter((x) => 'loss' in x))
      for (const k of ['step', 'epoch', 'loss', 'lr', 'samples_per_s', 'wall_s'])
        expect(typeof m[k], k).toBe('number');
    const png = await sharp(path.join(out, 'loss.png')).stats();
    // Not blank: the curves put colour on the white background.
    expect(png.channels[2].min).toBeLessThan(200);
  });

  it('a fresh run cleans stale temps of a killed save but refuses a directory with checkpoints', async () => {
    const out = path.join(tmp(), 'run');
    mkdirSync(path.join(out, '.epoch-001.0123456789ab.tmp'), { recursive: true });
    writeFileSync(path.join(out, '.epoch-001.0123456789ab.tmp', 'config.json'), '{');
    const warnings: string[] = [];
    await train(base(out, { epochs: 1 }), {
      onEvent: (e) => void (e.type === 'warning' && warnings.push(e.message)),
    });
    expect(warnings.some((w) => /removed \.epoch-001/.test(w))).toBe(true);
    expect(readdirSync(out).some((e) => e.endsWith('.tmp'))).toBe(false);
    await expect(train(base(out, { epochs: 1 }))).rejects.toThrow(/not empty.*--resume/);
  });

  it('a NaN loss stops the run naming the step and keeps the last good checkpoint', async () => {
    const out = path.join(tmp(), 'run');
    const err = await train(base(out, { lr: 1e38, warmup: 1, saveEverySteps: 1, epochs: 30 })).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UserError);
    const msg = (err as Error).message;
    console.log(msg);
    const m = /at step (\d+) .*last good checkpoint is (\S+)\./.exec(msg);
    expect(m).not.toBeNull();
    const step = Number((m as RegExpExecArray)[1]);
    const good = (m as RegExpExecArray)[2];
    const state = await readTrainState(good);
    expect(state?.step).toBe(step - 1);
    expect(state?.losses.every(Number.isFinite)).toBe(true);
    await loadClipcapDir(good);
    expect(existsSync(path.join(out, 'final'))).toBe(false);
  });

  it('NaN/Inf features are refused naming the row; over-long captions are cut with a warning', async () => {
    const d = tmp();
    const raw = await readTrainingData(PKL);
    const emb = raw.embeddings.slice();
    emb[2 * raw.dim + 5] = Number.NaN;
    const st = path.join(d, 'bad.safetensors');
    await saveSafetensors(
      st,
      new Map([['clip_embedding', { dtype: 'f32', shape: [raw.rows, raw.dim], data: emb }]]),
    );
    const side = raw.captions.map((c) =>
      JSON.stringify({ image_id: c.row, caption: c.caption, embedding: c.row }),
    );
    writeFileSync(path.join(d, 'bad.captions.jsonl'), side.join('\n') + '\n');
    await expect(train(base(path.join(d, 'o1'), { data: st }))).rejects.toThrow(
      /bad\.safetensors: embedding row 2 holds NaN/,
    );

    const long = path.join(d, 'long.safetensors');
    await saveSafetensors(
      long,
      new Map([['clip_embedding', { dtype: 'f32', shape: [raw.rows, raw.dim], data: raw.embeddings }]]),
    );
    const words = Array.from({ length: 200 }, (_, i) => `word${i}`).join(' ');
    writeFileSync(
      path.join(d, 'long.captions.jsonl'),
      [...Array(4).keys()]
        .map((i) => JSON.stringify({ caption: i === 0 ? words : 'a cat', embedding: i }))
        .join('\n'),
    );
    const warnings: string[] = [];
    const res = await train(base(path.join(d, 'o2'), { data: long, epochs: 1, prefixLength: 10 }), {
      onEvent: (e) => void (e.type === 'warning' && warnings.push(e.message)),
    });
    expect(res.maxSeqLen).toBe(128 - 10);
    expect(warnings.join('\n')).toMatch(/do not fit GPT-2's 128 positions.*cutting them to 118 tokens/);
  });

  it('features read from disk per batch (extract files, split in two shards) train exactly as in memory', async () => {
    const d = tmp();
    const raw = await readTrainingData(PKL);
    // Two shards: rows 0..1 and 2..3, captions re-pointed to their shard's rows.
    for (const [i, lo, hi] of [
      [0, 0, 2],
      [1, 2, 4],
    ] as const) {
      const st = path.join(d, `part-${i}.safetensors`);
      await saveSafetensors(
        st,
        new Map([
          [
            'clip_embedding',
            {
              dtype: 'f32',
              shape: [hi - lo, raw.dim],
              data: raw.embeddings.slice(lo * raw.dim, hi * raw.dim),
            },
          ],
        ]),
      );
      const lines = raw.captions
        .filter((c) => c.row >= lo && c.row < hi)
        .map((c) => JSON.stringify({ image_id: c.row, caption: c.caption, embedding: c.row - lo }));
      writeFileSync(path.join(d, `part-${i}.captions.jsonl`), lines.join('\n') + '\n');
    }
    // Same captions in the same order as the pickle (its captions are sorted by row).
    expect(raw.captions.map((c) => c.row)).toEqual([...raw.captions.map((c) => c.row)].sort((a, b) => a - b));
    const mem = await train(base(path.join(d, 'mem'), { epochs: 2 }));
    const disk = await train(
      base(path.join(d, 'disk'), { epochs: 2, data: path.join(d, 'part-*.safetensors') }),
    );
    expect(disk.losses).toEqual(mem.losses);
    // (model.safetensors names its data files in its metadata, so compare the tensors.)
    const a = await loadClipcapDir(disk.checkpoint);
    const b = await loadClipcapDir(mem.checkpoint);
    for (const [k, t] of a.mapperWeights)
      expect([...t.data], k).toEqual([...(b.mapperWeights.get(k)?.data ?? [])]);
    expect(
      readFileSync(path.join(disk.checkpoint, 'optimizer.safetensors')).equals(
        readFileSync(path.join(mem.checkpoint, 'optimizer.safetensors')),
      ),
    ).toBe(true);
  });

  it('--val FILE: a validation loss after every epoch; not together with --val-fraction', async () => {
    const res = await train(base(path.join(tmp(), 'run'), { val: PKL, epochs: 2 }));
    expect(res.val_losses.map((v) => [v.epoch, v.step])).toEqual([
      [1, 2],
      [2, 4],
    ]);
    expect(res.val_losses.every((v) => Number.isFinite(v.loss) && v.loss > 0)).toBe(true);
    await expect(train(base(path.join(tmp(), 'run'), { val: PKL, valFraction: 0.5 }))).rejects.toThrow(
      /--val or --val-fraction, not both/,
    );
  });

  it('warns when the schedule makes no sense', async () => {
    const warnings: string[] = [];
    await train(base(path.join(tmp(), 'run'), { warmup: 5000, maxSteps: 3 }), {
      onEvent: (e) => void (e.type === 'warning' && warnings.push(e.message)),
    });
    expect(warnings.join('\n')).toMatch(/inside the 5000-step warmup/);
  });
});
