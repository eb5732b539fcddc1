import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { demoGpt2Files, DEMO_GPT2 } from '../../src/cli/demo/gpt2-assets.js';
import {
  allCaptions,
  COLOURS,
  POSITIONS,
  SHAPES,
  SIZES,
  writeWorld,
  type WorldImage,
} from '../../src/cli/demo/world.js';
import { extractEmbeddings } from '../../src/pipeline/extract.js';
import { loadGpt2, loadGpt2Tokenizer, loadImageEncoder } from '../../src/pipeline/load.js';
import { pretokenize } from '../../src/text/gpt2-tokenizer.js';
import { bundledGpt2Dir } from '../../src/weights/bundled.js';

describe('bundled:demo-gpt2', () => {
  it('the shipped files are what the generator writes (vocabulary learned from the world captions)', async () => {
    const dir = bundledGpt2Dir('bundled:demo-gpt2');
    const f = await demoGpt2Files();
    expect(readFileSync(path.join(dir, 'config.json'), 'utf8')).toBe(f.config);
    expect(readFileSync(path.join(dir, 'vocab.json'), 'utf8')).toBe(f.vocab);
    expect(readFileSync(path.join(dir, 'merges.txt'), 'utf8')).toBe(f.merges);
    const shipped = await loadGpt2('bundled:demo-gpt2');
    expect(shipped.config.n_embd).toBe(DEMO_GPT2.n_embd);
    for (const [name, t] of f.weights) expect(shipped.weights.get(name)?.data, name).toEqual(t.data);
  });

  it('its tokenizer: GPT-2 ids for bytes ("!" 0, "." 13), every world word one token, exact round trips', async () => {
    const tok = await loadGpt2Tokenizer('bundled:demo-gpt2');
    expect(tok.vocabSize).toBeLessThan(500);
    expect(tok.encode('!.')).toEqual([0, 13]);
    expect(tok.decode([tok.eosTokenId])).toBe('<|endoftext|>');
    for (const c of allCaptions()) {
      const ids = tok.encode(c);
      expect(ids.length).toBe(pretokenize(c).length);
      expect(tok.decode(ids)).toBe(c);
    }
    // Text outside the world still encodes (as bytes) and decodes exactly.
    expect(tok.decode(tok.encode('Zebra über 42 ✓'))).toBe('Zebra über 42 ✓');
  });
});

describe('bundled:demo-clip', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-democlip-'));
  let images: WorldImage[];
  let feats: Float32Array[];
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  beforeAll(async () => {
    const w = await writeWorld(dir, { n: 240, seed: 21 });
    images = w.images;
    const enc = await loadImageEncoder('bundled:demo-clip');
    feats = [];
    for await (const r of extractEmbeddings(
      enc,
      images.map((i) => path.join(dir, 'images', i.file_name)),
    ))
      feats[r.index] = r.embedding as Float32Array;
    enc.dispose();
  }, 120_000);

  it('colour and position are the argmax of their counts', () => {
    let colour = 0;
    let position = 0;
    images.forEach((im, i) => {
      const f = feats[i];
      const argmax = (a: number, n: number): number => {
        let best = 0;
        for (let j = 1; j < n; j++) if (f[a + j] > f[a + best]) best = j;
        return best;
      };
      if (COLOURS[argmax(0, 6)] === im.scene.colour) colour++;
      if (POSITIONS[argmax(15, 3)] === im.scene.position) position++;
    });
    expect(colour / images.length).toBeGreaterThan(0.97);
    expect(position / images.length).toBeGreaterThan(0.97);
  });

  it('shape and size are linear read-outs: a least-squares probe fit on half is right on the other half', () => {
    const half = images.length / 2;
    const dim = feats[0].length + 1; // + bias
    const row = (i: number): number[] => [...feats[i], 1];
    for (const [attr, values] of [
      ['shape', SHAPES],
      ['size', SIZES],
    ] as const) {
      const k = values.length;
      // Ridge regression onto one-hot targets: (A'A + 0.01 I) W = A'Y, by Gauss-Jordan elimination.
      const m = Array.from({ length: dim }, (_, r) =>
        new Float64Array(dim + k).fill(0).map((_, c) => (c === r ? 0.01 : 0)),
      );
      for (let i = 0; i < half; i++) {
        const a = row(i);
        const y = (values as readonly string[]).indexOf(images[i].scene[attr]);
        for (let r = 0; r < dim; r++) {
          for (let c = 0; c < dim; c++) m[r][c] += a[r] * a[c];
          m[r][dim + y] += a[r];
        }
      }
      for (let c = 0; c < dim; c++) {
        let p = c;
        for (let r = c + 1; r < dim; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r;
        [m[c], m[p]] = [m[p], m[c]];
        for (let r = 0; r < dim; r++) {
          if (r === c) continue;
          const f = m[r][c] / m[c][c];
          for (let j = c; j < dim + k; j++) m[r][j] -= f * m[c][j];
        }
      }
      let right = 0;
      for (let i = half; i < images.length; i++) {
        const a = row(i);
        const scores = Array.from({ length: k }, (_, y) =>
          a.reduce((s, v, r) => s + (v * m[r][dim + y]) / m[r][r], 0),
        );
        if (values[scores.indexOf(Math.max(...scores))] === images[i].scene[attr]) right++;
      }
      expect(right / half, attr).toBeGreaterThan(attr === 'shape' ? 0.85 : 0.95);
    }
  });
});
