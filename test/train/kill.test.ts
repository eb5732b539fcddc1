/**
 * The real `clipcap train` process (the build `npm test` makes first): SIGINT/SIGTERM save a resumable
 * checkpoint, print it and the resume command, and exit 130/143; `kill -9` at random moments never leaves a
 * directory under a checkpoint's name that does not load completely; and after all of that, resuming ends
 * with the same weights as an uninterrupted run.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { train } from '../../src/pipeline/train.js';
import { readOptimizerState, readTrainState } from '../../src/train/checkpoint.js';
import { mulberry32 } from '../../src/util/random.js';
import { loadClipcapDir } from '../../src/weights/families/clipcap.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const FIX = path.join(ROOT, 'test', 'fixtures');
const made: string[] = [];
const tmp = (): string => {
  const dir = mkdtempSync(path.join(tmpdir(), 'clipcap-kill-'));
  made.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

const ARGS = [
  '--data',
  path.join(FIX, 'official_features_tiny.pkl'),
  '--gpt2',
  path.join(FIX, 'gpt2_tiny'),
  '--prefix-length',
  '2',
  '--batch-size',
  '2',
  '--epochs',
  '12',
  '--lr',
  '1e-3',
  '--warmup',
  '2',
  '--seed',
  '5',
  '--save-every-steps',
  '1',
  '--keep-last',
  '2',
  '--log-every',
  '0',
];

interface Child {
  code: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  err: () => string;
  /** Resolves at the first progress line of a training step. */
  stepped: Promise<void>;
  kill: (sig: NodeJS.Signals) => void;
}

function run(args: string[]): Child {
  const p = spawn(process.execPath, [BIN, 'train', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let onStep: () => void = () => undefined;
  const stepped = new Promise<void>((r) => (onStep = r));
  p.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    if (/clipcap: step \d+/.test(err)) onStep();
  });
  p.stdout.resume();
  const code = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    p.on('exit', (c, s) => {
      onStep();
      r({ code: c, signal: s });
    }),
  );
  return { code, err: () => err, stepped, kill: (s) => p.kill(s) };
}

/** Every entry of a run directory under a visible name is complete: it loads, state and optimizer included. */
async function checkRunDir(out: string): Promise<number> {
  let n = 0;
  for (const e of readdirSync(out)) {
    if (e.startsWith('.')) continue; // hidden temps: never loaded, removed by the next run
    const p = path.join(out, e);
    if (!statSync(p).isDirectory()) continue;
    await loadClipcapDir(p);
    const s = await readTrainState(p);
    expect(s, p).toBeDefined();
    await readOptimizerState(p);
    n++;
  }
  return n;
}

describe('clipcap train process', () => {
  it('SIGINT and SIGTERM save a resumable checkpoint, print the resume command, exit 130 / 143', async () => {
    const out = path.join(tmp(), 'run');
    for (const [sig, want] of [
      ['SIGINT', 130],
      ['SIGTERM', 143],
    ] as const) {
      const c = run(sig === 'SIGINT' ? [...ARGS, '--out', out] : ['--resume', out, '--log-every', '0']);
      await c.stepped;
      c.kill(sig);
      const r = await c.code;
      expect(r.code, c.err()).toBe(want);
      const m = /saved a resumable checkpoint (\S+)\n/.exec(c.err());
      expect(m, c.err()).not.toBeNull();
      expect(c.err()).toContain(`clipcap train --resume ${out}`);
      const ck = (m as RegExpExecArray)[1];
      expect((await readTrainState(ck))?.complete).toBe(false);
      await loadClipcapDir(ck);
    }
    const done = run(['--resume', out]);
    expect((await done.code).code, done.err()).toBe(0);
  });

  it('kill -9 at random moments never leaves a half-written checkpoint; the resumed run ends bit-identical', async () => {
    const ref = await train({
      data: path.join(FIX, 'official_features_tiny.pkl'),
      gpt2: path.join(FIX, 'gpt2_tiny'),
      out: path.join(tmp(), 'ref'),
      prefixLength: 2,
      batchSize: 2,
      epochs: 12,
      lr: 1e-3,
      warmup: 2,
      seed: 5,
      saveEvery: 0,
    });
    const out = path.join(tmp(), 'run');
    const rand = mulberry32(2026);
    let checked = 0;
    for (let round = 0; round < 3; round++) {
      const c = run(
        round === 0 || checked === 0 ? [...ARGS, '--out', out] : ['--resume', out, '--log-every', '0'],
      );
      await c.stepped;
      // Somewhere in the next few steps: inside a step, a save, a prune or a metrics append.
      await new Promise((r) => setTimeout(r, Math.floor(rand() * 600)));
      c.kill('SIGKILL');
      const r = await c.code;
      expect(r.signal === 'SIGKILL' || r.code === 0, c.err()).toBe(true);
      checked = await checkRunDir(out);
    }
    expect(checked).toBeGreaterThan(0);
    const done = run(['--resume', out]);
    expect((await done.code).code, done.err()).toBe(0);
    await checkRunDir(out);
    const a = readFileSync(path.join(out, 'final', 'model.safetensors'));
    const b = readFileSync(path.join(ref.checkpoint, 'model.safetensors'));
    expect(a.equals(b)).toBe(true);
    console.log(
      `kill -9 x3: every visible checkpoint loaded; final equals the uninterrupted run (${a.length} bytes)`,
    );
  });
});
