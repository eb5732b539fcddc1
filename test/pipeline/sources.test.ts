/**
 * A checkpoint from `clipcap train` records the CLIP its features came from and the GPT-2 it was trained on
 * (config.json "sources"), and `clipcap caption --model RUN/final` resolves them with no other flag: also a
 * mapper-only checkpoint (GPT-2 frozen, its weights not in the checkpoint) whose GPT-2 is a local directory
 * with its own tokenizer (vocab.json + merges.txt).
 */
import { cpSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runExtract } from '../../src/cli/commands/extract.js';
import { writeWorld } from '../../src/cli/demo/world.js';
import { loadGpt2Tokenizer, resolveRecordedSource } from '../../src/pipeline/load.js';
import { train } from '../../src/pipeline/train.js';
import { bundledGpt2Dir } from '../../src/weights/bundled.js';
import { cli } from '../cli/harness.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'clipcap-sources-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const quiet = { stdout: () => undefined, stderr: () => undefined, progress: false };

describe('checkpoint sources', () => {
  const base = path.join(root, 'project');
  const image = path.join(base, 'world', 'images', '000001.png');
  beforeAll(async () => {
    const w = await writeWorld(path.join(base, 'world'), { n: 40, seed: 3 });
    await runExtract(
      [path.join(base, 'world', 'images')],
      {
        out: path.join(base, 'feats.safetensors'),
        captions: w.annotations,
        clip: 'bundled:demo-clip',
        batchSize: 16,
      },
      quiet,
    );
    // A local GPT-2 directory that carries its own tokenizer.
    cpSync(bundledGpt2Dir('bundled:demo-gpt2'), path.join(base, 'my-gpt2'), { recursive: true });
    await train({
      data: path.join(base, 'feats.safetensors'),
      out: path.join(base, 'run'),
      gpt2: path.join(base, 'my-gpt2'),
      mappingType: 'transformer',
      onlyPrefix: true,
      numLayers: 1,
      prefixLength: 2,
      clipLength: 2,
      epochs: 1,
      batchSize: 20,
      maxSteps: 2,
      warmup: 0,
      lr: 1e-3,
      saveEvery: 0,
    });
  }, 120_000);

  it('a mapper-only checkpoint records its CLIP and its GPT-2 (a local path, relative to the checkpoint)', () => {
    const cfg = JSON.parse(readFileSync(path.join(base, 'run', 'final', 'config.json'), 'utf8')) as {
      sources: Record<string, string>;
      gpt2_weights: boolean;
    };
    expect(cfg.gpt2_weights).toBe(false);
    expect(cfg.sources).toEqual({ clip: 'bundled:demo-clip', gpt2: path.join('..', '..', 'my-gpt2') });
  });

  it('clipcap caption --model RUN/final needs no other flag, and moves with its run', async () => {
    const first = await cli([
      'caption',
      '--model',
      path.join(base, 'run', 'final'),
      image,
      '--format',
      'json',
    ]);
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    const [r] = JSON.parse(first.out) as Array<{ caption: string; tokens: number[] }>;
    // Decoded with the GPT-2 directory's own vocabulary (383 tokens), not GPT-2's.
    const tok = await loadGpt2Tokenizer(path.join(base, 'my-gpt2'));
    expect(r.tokens.every((t) => t < tok.vocabSize)).toBe(true);
    expect(r.caption).toBe(tok.decode(r.tokens));
    // The relative path still holds when the project directory moves as a whole.
    const moved = path.join(root, 'moved');
    renameSync(base, moved);
    try {
      const again = await cli([
        'caption',
        '--model',
        path.join(moved, 'run', 'final'),
        path.join(moved, 'world', 'images', '000001.png'),
        '--format',
        'json',
      ]);
      expect(again.code).toBe(0);
      expect((JSON.parse(again.out) as Array<{ caption: string }>)[0].caption).toBe(r.caption);
    } finally {
      renameSync(moved, base);
    }
  });

  it('an MLP checkpoint with GPT-2 fine-tuned (its weights inside) also needs no flag: CLIP and tokenizer come from its sources', async () => {
    const out = path.join(base, 'run-mlp');
    await train({
      data: path.join(base, 'feats.safetensors'),
      out,
      gpt2: path.join(base, 'my-gpt2'),
      mappingType: 'mlp',
      prefixLength: 2,
      epochs: 1,
      batchSize: 20,
      maxSteps: 2,
      warmup: 0,
      lr: 1e-3,
      saveEvery: 0,
    });
    const cfg = JSON.parse(readFileSync(path.join(out, 'final', 'config.json'), 'utf8')) as {
      sources: Record<string, string>;
      gpt2_weights: boolean;
    };
    expect(cfg.gpt2_weights).toBe(true);
    expect(cfg.sources).toEqual({ clip: 'bundled:demo-clip', gpt2: path.join('..', '..', 'my-gpt2') });
    const run = await cli(['caption', '--model', path.join(out, 'final'), image, '--format', 'json']);
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    const [r] = JSON.parse(run.out) as Array<{ caption: string; tokens: number[] }>;
    // The GPT-2 weights are the checkpoint's, but the text is decoded with the recorded directory's vocabulary.
    const tok = await loadGpt2Tokenizer(path.join(base, 'my-gpt2'));
    expect(r.tokens.length).toBeGreaterThan(0);
    expect(r.tokens.every((t) => t < tok.vocabSize)).toBe(true);
    expect(r.caption).toBe(tok.decode(r.tokens));
    // The same caption as with the sources given by hand.
    const given = await cli([
      'caption',
      '--model',
      path.join(out, 'final'),
      image,
      '--format',
      'json',
      '--clip',
      'bundled:demo-clip',
      '--gpt2',
      path.join(base, 'my-gpt2'),
    ]);
    expect(given.code).toBe(0);
    expect((JSON.parse(given.out) as Array<{ caption: string }>)[0].caption).toBe(r.caption);
  }, 120_000);

  it('a recorded GPT-2 that is gone: one line naming it and what to do', async () => {
    renameSync(path.join(base, 'my-gpt2'), path.join(base, 'gone'));
    try {
      const run = await cli(['caption', '--model', path.join(base, 'run', 'final'), image]);
      expect(run.code).toBe(1);
      expect(run.err).toMatch(
        /trained with \.\.\/\.\.\/my-gpt2, which is not at .*my-gpt2; give the model with --clip \/ --gpt2/,
      );
      // --gpt2 still overrides.
      const given = await cli([
        'caption',
        '--model',
        path.join(base, 'run', 'final'),
        image,
        '--gpt2',
        path.join(base, 'gone'),
      ]);
      expect(given.code).toBe(0);
    } finally {
      renameSync(path.join(base, 'gone'), path.join(base, 'my-gpt2'));
    }
  });

  it('a GPT-2 with its own vocabulary but no tokenizer files is refused, for training and captioning', async () => {
    const bare = path.join(base, 'no-tokenizer');
    cpSync(path.join(base, 'my-gpt2'), bare, { recursive: true });
    rmSync(path.join(bare, 'vocab.json'));
    rmSync(path.join(bare, 'merges.txt'));
    await expect(
      train({
        data: path.join(base, 'feats.safetensors'),
        out: path.join(base, 'run-bare'),
        gpt2: bare,
        batchSize: 20,
      }),
    ).rejects.toThrow(
      /383-token vocabulary but its tokenizer 50257 tokens; give a GPT-2 directory with its own vocab\.json/,
    );
    const run = await cli(['caption', '--model', path.join(base, 'run', 'final'), image, '--gpt2', bare]);
    expect(run.code).toBe(1);
    expect(run.err).toMatch(/383-token vocabulary but its tokenizer 50257 tokens/);
  });

  it('resolves recorded names: bundled names and hub ids as they are, paths against the checkpoint', async () => {
    const ck = path.join(base, 'run', 'final');
    expect(await resolveRecordedSource('bundled:demo-gpt2', ck)).toBe('bundled:demo-gpt2');
    expect(await resolveRecordedSource('openai-community/gpt2', ck)).toBe('openai-community/gpt2');
    expect(await resolveRecordedSource(path.join('..', '..', 'my-gpt2'), ck)).toBe(
      path.join(base, 'my-gpt2'),
    );
    await expect(resolveRecordedSource('/nowhere/gpt2', ck)).rejects.toThrow(/not at \/nowhere\/gpt2/);
  });
});
