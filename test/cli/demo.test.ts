import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runLearningDemo, runRandomDemo } from '../../src/cli/commands/demo.js';
import type { CliIO } from '../../src/cli/commands/caption.js';
import type { DemoResult } from '../../src/cli/demo/run.js';
import { cli } from './harness.js';

export function bufferIO(): CliIO & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    progress: false,
    stdout: (s: string) => void (io.out += s),
    stderr: (s: string) => void (io.err += s),
  };
  return io;
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'clipcap-demo-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('clipcap demo (reduced: a smaller world and fewer steps)', () => {
  const out = path.join(tmp, 'demo');
  let r: DemoResult;
  let io: ReturnType<typeof bufferIO>;

  beforeAll(async () => {
    io = bufferIO();
    // 400 scenes x 5 captions, 2 epochs of batch 40: 100 optimizer steps.
    r = await runLearningDemo({ out, format: 'json' }, io, {
      trainImages: 400,
      heldoutImages: 60,
      epochs: 2,
      warmup: 30,
    });
  }, 240_000);

  it('the trained model beats the constant caption clearly on held-out scenes', () => {
    const m = r.scores.model;
    const b = r.scores.baseline;
    console.log(
      `reduced demo: CIDEr-D ${m.CIDEr.toFixed(3)} vs ${b.CIDEr.toFixed(3)}, BLEU-4 ${m.Bleu_4.toFixed(3)} vs ` +
        `${b.Bleu_4.toFixed(3)}, all attributes ${r.all_attributes.model.toFixed(2)}; ${r.seconds.total.toFixed(1)} s`,
    );
    // A model that stopped learning writes one caption for every scene: at best the baseline.
    expect(m.CIDEr).toBeGreaterThan(2 * b.CIDEr);
    expect(m.CIDEr).toBeGreaterThan(b.CIDEr + 0.8);
    expect(m.Bleu_4).toBeGreaterThan(b.Bleu_4 + 0.2);
    // Colour, size and position are learned within 100 steps; together with shape, on some scenes at least.
    expect(r.all_attributes.model).toBeGreaterThan(0.2);
    expect(new Set(r.samples.map((s) => s.caption)).size).toBeGreaterThan(1);
  });

  it('prints one JSON document with the documented members', () => {
    const doc = JSON.parse(io.out) as Record<string, unknown>;
    expect(Object.keys(doc)).toEqual(
      expect.arrayContaining(['out', 'samples', 'scores', 'exact_match', 'seconds']),
    );
    expect(doc.out).toBe(out);
    const samples = doc.samples as Array<{ image: string; caption: string; references: string[] }>;
    expect(samples).toHaveLength(6);
    for (const s of samples) {
      expect(existsSync(s.image)).toBe(true);
      expect(s.references.length).toBeGreaterThanOrEqual(5);
    }
    const scores = doc.scores as Record<string, Record<string, number>>;
    for (const who of ['model', 'baseline'])
      for (const k of ['Bleu_4', 'ROUGE_L', 'CIDEr']) expect(typeof scores[who][k]).toBe('number');
    const em = doc.exact_match as Record<string, number>;
    expect(em.baseline).toBeGreaterThanOrEqual(0);
    expect(em.model).toBeLessThanOrEqual(1);
    const secs = doc.seconds as Record<string, number>;
    for (const k of ['world', 'extract', 'train', 'caption', 'score', 'total'])
      expect(secs[k]).toBeGreaterThanOrEqual(0);
    // Progress and stage lines go to stderr.
    expect(io.err).toMatch(/\[3\/5\] training/);
    expect(io.err).toMatch(/training: step 100\/100/);
  });

  it('writes the world, features, a checkpoint that records its sources, predictions and scores', () => {
    for (const split of ['train', 'heldout']) {
      const ann = JSON.parse(readFileSync(path.join(out, 'world', split, 'annotations.json'), 'utf8')) as {
        images: Array<{ id: number; file_name: string }>;
        annotations: Array<{ image_id: number; caption: string }>;
      };
      expect(ann.images.length).toBe(split === 'train' ? 400 : 60);
      expect(ann.annotations.length).toBe(5 * ann.images.length);
      for (const im of ann.images)
        expect(existsSync(path.join(out, 'world', split, 'images', im.file_name))).toBe(true);
    }
    expect(existsSync(path.join(out, 'features', 'train.safetensors'))).toBe(true);
    expect(existsSync(path.join(out, 'features', 'train.captions.jsonl'))).toBe(true);
    const cfg = JSON.parse(readFileSync(path.join(out, 'model', 'config.json'), 'utf8')) as {
      sources: Record<string, string>;
    };
    expect(cfg.sources).toEqual({ clip: 'bundled:demo-clip', gpt2: 'bundled:demo-gpt2' });
    const preds = JSON.parse(readFileSync(path.join(out, 'predictions.json'), 'utf8')) as Array<{
      image_id: number;
      caption: string;
    }>;
    expect(preds).toHaveLength(60);
    expect(preds[0].image_id).toBe(1);
    const scores = JSON.parse(readFileSync(path.join(out, 'scores.json'), 'utf8')) as {
      scores: { model: { CIDEr: number } };
    };
    expect(scores.scores.model.CIDEr).toBe(r.scores.model.CIDEr);
  });

  it('clipcap caption --model DIR/model captions an image with no other flag', async () => {
    const image = path.join(out, 'world', 'heldout', 'images', '000001.png');
    const run = await cli(['caption', '--model', path.join(out, 'model'), image, '--format', 'json']);
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    const [res] = JSON.parse(run.out) as Array<{ caption: string }>;
    // The same checkpoint and decoder as the demo's own captioning of this scene.
    expect(res.caption).toBe(r.samples[0].caption);
  });
});

describe('clipcap demo world', () => {
  it('writes a fresh split: images and COCO caption annotations; the seed decides the scenes', async () => {
    const a = path.join(tmp, 'world-a');
    const run = await cli(['demo', 'world', '--out', a, '--n', '12', '--seed', '5']);
    expect(run.code).toBe(0);
    expect(readdirSync(path.join(a, 'images')).sort()).toHaveLength(12);
    const ann = JSON.parse(readFileSync(path.join(a, 'annotations.json'), 'utf8')) as {
      images: Array<{ id: number; file_name: string }>;
      annotations: Array<{ image_id: number; caption: string }>;
    };
    expect(ann.images.map((i) => i.file_name)).toEqual(readdirSync(path.join(a, 'images')).sort());
    expect(ann.annotations.filter((x) => x.image_id === 1)).toHaveLength(5);
    const b = path.join(tmp, 'world-b');
    await cli(['demo', 'world', '--out', b, '--n', '12', '--seed', '5']);
    expect(readFileSync(path.join(b, 'annotations.json'), 'utf8')).toBe(
      readFileSync(path.join(a, 'annotations.json'), 'utf8'),
    );
    expect(readFileSync(path.join(b, 'images', '000003.png'))).toEqual(
      readFileSync(path.join(a, 'images', '000003.png')),
    );
    const c = path.join(tmp, 'world-c');
    await cli(['demo', 'world', '--out', c, '--n', '12', '--seed', '6']);
    expect(readFileSync(path.join(c, 'annotations.json'), 'utf8')).not.toBe(
      readFileSync(path.join(a, 'annotations.json'), 'utf8'),
    );
  });

  it('bad usage exits 2 with one line; a non-empty --out is refused', async () => {
    expect((await cli(['demo', 'world'])).code).toBe(2);
    expect((await cli(['demo', 'planet', '--out', tmp])).code).toBe(2);
    expect((await cli(['demo', '--n', '5'])).code).toBe(2);
    const full = await cli(['demo', 'world', '--out', path.join(tmp, 'world-a')]);
    expect(full.code).toBe(1);
    expect(full.err).toMatch(/not empty/);
  });
});

describe('clipcap demo --random-weights', () => {
  it('captions the bundled photos offline with the bundled tiny models and says the weights are random', async () => {
    const io = bufferIO();
    const failed = await runRandomDemo({ decode: 'beam', format: 'text' }, io);
    expect(failed).toBe(0);
    const lines = io.out.trim().split('\n');
    expect(lines[0]).toMatch(/TINY RANDOM weights/);
    expect(lines.length).toBe(4);
    for (const l of lines.slice(1)) expect(l).toMatch(/assets\/demo\/images\/\S+\.jpg\t.+/);
  });
});
