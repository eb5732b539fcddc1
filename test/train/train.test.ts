import { afterAll, describe, it, expect } from 'vitest';
import { Command, CommanderError } from 'commander';
import { mkdtempSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { register, runTrain } from '../../src/cli/commands/train.js';
import type { CliContext, CliIO } from '../../src/cli/commands/caption.js';
import { ClipCap } from '../../src/pipeline/caption.js';
import { trainClipcap, trainMapperConfig, type TrainOptions } from '../../src/pipeline/train.js';
import { Gpt2Tokenizer } from '../../src/text/gpt2-tokenizer.js';
import { makeBatch, officialMaxSeqLen, readTrainingData, tokenize } from '../../src/train/data.js';
import { initMapperWeights } from '../../src/train/init.js';
import { UsageError, UserError } from '../../src/util/errors.js';
import { loadClipcapDir } from '../../src/weights/families/clipcap.js';
import { loadSafetensors, saveSafetensors } from '../../src/weights/safetensors.js';
import type { StateDict } from '../../src/weights/host.js';
import { gpt2Weights } from '../../src/weights/families/gpt2.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const PKL = path.join(FIX, 'official_features_tiny.pkl');
const GPT2 = path.join(FIX, 'gpt2_tiny');
const made: string[] = [];
const tmp = (): string => {
  const dir = mkdtempSync(path.join(tmpdir(), 'clipcap-train-'));
  made.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

async function gpt2Fixture(): Promise<StateDict> {
  const f = await loadSafetensors(path.join(GPT2, 'model.safetensors'));
  try {
    const config = JSON.parse(readFileSync(path.join(GPT2, 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    return gpt2Weights(await f.readAll(), config).weights; // canonical names, as the model and checkpoints use
  } finally {
    await f.close();
  }
}

function relDiff(x: unknown, y: unknown): number {
  const a = x as ArrayLike<number>;
  const b = y as ArrayLike<number>;
  expect(a.length).toBe(b.length);
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / (m || 1);
}

/** Run `clipcap train ...` in-process, mapping errors as src/cli/main.ts does. */
async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const run = { code: 0, out: '', err: '' };
  const io: CliIO = {
    stdout: (s) => void (run.out += s),
    stderr: (s) => void (run.err += s),
    progress: false,
  };
  const ctx: CliContext = { io: () => io, exit: (c) => void (run.code = c) };
  const program = new Command()
    .exitOverride()
    .configureOutput({ writeErr: (s) => void (run.err += s), writeOut: (s) => void (run.out += s) });
  register(program, ctx);
  try {
    await program.parseAsync(['train', ...args], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) run.code = 2;
    else if (e instanceof UsageError) [run.code, run.err] = [2, run.err + `clipcap: ${e.message}\n`];
    else if (e instanceof UserError) [run.code, run.err] = [1, run.err + `clipcap: ${e.message}\n`];
    else throw e;
  }
  return run;
}

/** sample std via Σx² (a different formula from the implementation's two-pass one), Bessel-corrected. */
function maxSeqLenOracle(l: number[]): number {
  const n = l.length;
  const s = l.reduce((a, x) => a + x, 0);
  const s2 = l.reduce((a, x) => a + x * x, 0);
  const std = Math.sqrt((s2 - (s * s) / n) / (n - 1));
  return Math.min(Math.floor(s / n + 10 * std), Math.max(...l));
}

describe('training data as the official ClipCocoDataset', () => {
  it('max_seq_len = min(int(mean + 10·std), max), torch unbiased std', () => {
    // Python: min(int(statistics.mean(L) + 10 * statistics.stdev(L)), max(L)) = 71 for the first list.
    const cases = [
      [...Array<number>(200).fill(1), 100],
      [6, 4, 3, 4, 9],
      [5, 5, 5, 5],
      [2, 3, 50],
      [1, 1, 1, 2, 40],
    ];
    for (const l of cases) expect(officialMaxSeqLen(l), l.join(',')).toBe(maxSeqLenOracle(l));
    expect(officialMaxSeqLen(cases[0])).toBeLessThan(100); // the long caption is truncated
  });

  it('parse_coco.py pickle: GPT-2 BPE, padding with 0, mask ones(K) ++ real, "!" kept in the mask', async () => {
    const tok = await Gpt2Tokenizer.load();
    const raw = await readTrainingData(PKL);
    expect([raw.rows, raw.dim, raw.captions.length]).toEqual([4, 24, 5]);
    const set = tokenize(raw, tok, PKL);
    const ids = raw.captions.map((c) => tok.encode(c.caption));
    expect(set.maxSeqLen).toBe(maxSeqLenOracle(ids.map((t) => t.length)));
    const k = 3;
    const b = makeBatch(set, [3, 0, 2], k);
    const t = set.maxSeqLen;
    [3, 0, 2].forEach((c, r) => {
      const want = Array.from({ length: t }, (_, i) => (i < ids[c].length ? ids[c][i] : 0));
      expect([...b.tokens.subarray(r * t, (r + 1) * t)]).toEqual(want);
      const wantMask = [1, 1, 1, ...want.map((_, i) => (i < ids[c].length ? 1 : 0))];
      expect([...b.mask.subarray(r * (k + t), (r + 1) * (k + t))]).toEqual(wantMask);
      const row = raw.captions[c].row;
      expect([...b.prefix.subarray(r * 24, (r + 1) * 24)]).toEqual([
        ...raw.embeddings.subarray(row * 24, row * 24 + 24),
      ]);
    });
    // "A red bus!" ends in "!" = id 0: a real token (mask 1), which the official loss ignores.
    expect(ids[3][ids[3].length - 1]).toBe(0);
    expect(b.mask[k + ids[3].length - 1]).toBe(1);
    // Truncation: a shorter max_seq_len cuts captions and masks every position.
    const short = makeBatch({ ...set, maxSeqLen: 2 }, [0], k);
    expect([...short.tokens]).toEqual(ids[0].slice(0, 2));
    expect([...short.mask]).toEqual([1, 1, 1, 1, 1]);
  });
});

const base = (out: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
  data: PKL,
  out,
  gpt2: GPT2,
  prefixLength: 2,
  batchSize: 4,
  epochs: 30,
  lr: 1e-3,
  warmup: 1,
  seed: 7,
  ...extra,
});

describe('clipcap train', () => {
  it('MLP + GPT-2: the first step runs at lr 0 and changes nothing', async () => {
    const out = path.join(tmp(), 'run');
    const lrs: number[] = [];
    const res = await trainClipcap(base(out, { maxSteps: 1, warmup: 5 }), { onStep: (p) => lrs.push(p.lr) });
    expect(lrs).toEqual([0]);
    const dir = await loadClipcapDir(res.checkpoint);
    const init = initMapperWeights(trainMapperConfig(base(out), 24, 32), 32, 7);
    let worst = 0;
    for (const [k, v] of init) worst = Math.max(worst, relDiff(dir.mapperWeights.get(k)!.data, v.data));
    const g = await gpt2Fixture();
    expect(dir.gpt2).toBeDefined();
    for (const [k, v] of dir.gpt2!) worst = Math.max(worst, relDiff(v.data, g.get(k)!.data));
    console.log(`after one lr-0 step: worst relative change ${worst}`);
    expect(worst).toBe(0);
  });

  it('MLP + GPT-2 overfits 4 captions; the checkpoint loads and captions embeddings', async () => {
    const out = path.join(tmp(), 'run');
    const r = await cli([
      '--data',
      PKL,
      '--out',
      out,
      '--gpt2',
      GPT2,
      '--prefix-length',
      '2',
      '--batch-size',
      '4',
      '--epochs',
      '30',
      '--lr',
      '3e-3',
      '--warmup',
      '1',
      '--seed',
      '3',
      '--save-every',
      '10',
      '--format',
      'json',
    ]);
    expect(r.code, r.err).toBe(0);
    const s = JSON.parse(r.out) as {
      steps: number;
      epochs: number;
      final_loss: number;
      losses_per_epoch: number[];
      checkpoint: string;
    };
    expect([s.steps, s.epochs, s.losses_per_epoch.length]).toEqual([30, 30, 30]);
    const first = s.losses_per_epoch[0];
    console.log(`overfit: loss ${first.toFixed(3)} -> ${s.final_loss.toFixed(3)}`);
    expect(s.final_loss).toBeLessThan(0.5 * first);
    expect(readdirSync(out).sort()).toEqual(['epoch-010', 'epoch-020', 'final', 'loss.png', 'metrics.jsonl']);
    expect(r.err).toMatch(/epoch 30: mean loss/);
    const dir = await loadClipcapDir(s.checkpoint);
    expect(dir.gpt2).toBeDefined();
    const model = await ClipCap.load({ clipcap: s.checkpoint, gpt2: GPT2 });
    try {
      const raw = await readTrainingData(PKL);
      const res = await model.caption([{ embedding: raw.embeddings.slice(0, 24) }], { method: 'greedy' });
      expect(res[0].error).toBeUndefined();
      expect(typeof res[0].caption).toBe('string');
    } finally {
      model.dispose();
    }
  });

  it('transformer + --only-prefix from clipcap extract output: GPT-2 untouched, only the mapper saved', async () => {
    const d = tmp();
    const raw = await readTrainingData(PKL);
    const st = path.join(d, 'feats.safetensors');
    await saveSafetensors(
      st,
      new Map([['clip_embedding', { dtype: 'f32', shape: [raw.rows, raw.dim], data: raw.embeddings }]]),
    );
    writeFileSync(
      path.join(d, 'feats.captions.jsonl'),
      raw.captions
        .map((c, i) => JSON.stringify({ image_id: i, caption: c.caption, embedding: c.row }))
        .join('\n') + '\n',
    );
    const out = path.join(d, 'run');
    const g = await gpt2Fixture();
    let worst = -1;
    let mapperMoved = 0;
    const res = await trainClipcap(
      base(out, {
        data: st,
        mappingType: 'transformer',
        onlyPrefix: true,
        numLayers: 1,
        clipLength: 2,
        epochs: 3,
      }),
      {
        onFinish: async (m) => {
          worst = 0;
          for (const p of m.gpt2.parameters())
            worst = Math.max(worst, relDiff(await p.value.read(), g.get(p.name)!.data));
          const init = initMapperWeights(m.mapper.config, 32, 7);
          for (const p of m.mapper.parameters())
            mapperMoved = Math.max(mapperMoved, relDiff(await p.value.read(), init.get(p.name)!.data));
        },
      },
    );
    console.log(`frozen GPT-2 change ${worst}, mapper change ${mapperMoved}`);
    expect(worst).toBe(0);
    expect(mapperMoved).toBeGreaterThan(0);
    const dir = await loadClipcapDir(res.checkpoint);
    expect(dir.gpt2).toBeUndefined();
    expect(dir.config.mapper.kind).toBe('transformer');
    const model = await ClipCap.load({ clipcap: res.checkpoint, gpt2: GPT2 });
    try {
      const r = await model.caption([{ embedding: raw.embeddings.slice(24, 48) }], { method: 'greedy' });
      expect(typeof r[0].caption).toBe('string');
    } finally {
      model.dispose();
    }
  });

  it('off a terminal: progress lines with loss, lr, samples/s and ETA; --resume usage', async () => {
    const out = path.join(tmp(), 'run');
    const r = await cli([
      '--data',
      PKL,
      '--out',
      out,
      '--gpt2',
      GPT2,
      '--prefix-length',
      '2',
      '--batch-size',
      '2',
      '--epochs',
      '2',
      '--warmup',
      '10',
      '--log-every',
      '0',
    ]);
    expect(r.code, r.err).toBe(0);
    const lines = r.err.split('\n').filter((l) => l.startsWith('clipcap: step '));
    expect(lines).toHaveLength(4);
    expect(lines[3]).toMatch(
      /^clipcap: step 4\/4 epoch 2 \(2\/2\) loss \d+\.\d{4} lr \d\.\d{2}e-\d+ [\d.]+ samples\/s elapsed \d+s ETA \d+s$/,
    );
    expect(r.err).toMatch(/warning: the run stops after 4 steps, inside the 10-step warmup/);
    const both = await cli(['--resume', out, '--data', PKL, '--epochs', '3']);
    expect(both.code).toBe(2);
    expect(both.err).toMatch(/--resume continues the run with its recorded options; drop --data, --epochs/);
    const none = await cli(['--gpt2', GPT2]);
    expect(none.code).toBe(2);
    expect(none.err).toMatch(/give --data FILE\.\.\. and --out DIR, or --resume DIR/);
    const done = await cli(['--resume', out]);
    expect(done.code).toBe(1);
    expect(done.err).toMatch(/this run is complete/);
  });

  it('bad data gives a one-line error and leaves no output directory', async () => {
    const d = tmp();
    const bad = path.join(d, 'bad.pkl');
    writeFileSync(bad, 'not a pickle');
    const st = path.join(d, 'nocap.safetensors');
    await saveSafetensors(
      st,
      new Map([['clip_embedding', { dtype: 'f32', shape: [2, 3], data: new Float32Array(6) }]]),
    );
    const cases: [string[], RegExp, number?][] = [
      [['--data', bad], /bad\.pkl/],
      [['--data', path.join(d, 'missing.pkl')], /no such file/],
      [['--data', st], /captions/],
      [['--data', PKL, '--batch-size', '9'], /no full batch/],
      [['--data', PKL, '--lr', '-1'], /--lr/, 2], // a usage error
      [['--data', PKL, '--gpt2', path.join(d, 'nogpt2')], /GPT-2/],
    ];
    for (const [args, re, code] of cases) {
      const out = path.join(d, 'out');
      const r = await cli(['--out', out, '--gpt2', GPT2, '--batch-size', '4', ...args]);
      expect(r.code, r.err).toBe(code ?? 1);
      expect(r.err.trim().split('\n')).toHaveLength(1);
      expect(r.err).toMatch(re);
      expect(existsSync(out)).toBe(false);
    }
    expect(runTrain).toBeTypeOf('function');
  });
});
