import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { computeBleu } from '../../src/eval/bleu.js';
import { computeRouge } from '../../src/eval/rouge.js';
import { computeCider } from '../../src/eval/cider.js';
import { npMean, pairwiseSum, pySplit } from '../../src/eval/pyutil.js';

/**
 * The shared pycocoevalcap cases (test/fixtures/cocoeval): already-tokenized strings, expected corpus and
 * per-image Bleu_1..4, ROUGE_L and CIDEr from the Python toolkit. Tolerance 1e-9 absolute (all scores are
 * O(1)); the worst difference is printed.
 */
const DIR = new URL('../fixtures/cocoeval/', import.meta.url);
const CASES = ['a_small', 'c_edge', 'd_single_image'] as const;
const METRICS = ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L', 'CIDEr'] as const;
type Metric = (typeof METRICS)[number];

interface Expected {
  scores: Record<Metric, number>;
  per_image: Record<string, Record<Metric, number>>;
  bleu_stats: { testlen: number; reflen: number; guess: number[]; correct: number[]; ratio: number };
}

function readJson<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(name, DIR), 'utf8')) as T;
}

/** gts / res in pycocoevalcap's order: the annotation file's images, refs in annotation order. */
function loadCase(name: string): { ids: string[]; refs: string[][]; cands: string[]; expected: Expected } {
  const ann = readJson<{
    images: { id: string | number }[];
    annotations: { image_id: string | number; caption: string }[];
  }>(`${name}.references.json`);
  const preds = readJson<{ image_id: string | number; caption: string }[]>(`${name}.predictions.json`);
  const ids = ann.images.map((im) => String(im.id));
  const byId = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const a of ann.annotations) byId.get(String(a.image_id))!.push(a.caption);
  const predBy = new Map(preds.map((p) => [String(p.image_id), p.caption]));
  return {
    ids,
    refs: ids.map((id) => byId.get(id)!),
    cands: ids.map((id) => predBy.get(id)!),
    expected: readJson<Expected>(`${name}.expected.json`),
  };
}

describe('pycocoevalcap parity (BLEU, ROUGE-L, CIDEr-D) on the shared cases', () => {
  for (const name of CASES) {
    it(`${name}: corpus and per-image scores within 1e-9`, () => {
      const { ids, refs, cands, expected } = loadCase(name);
      const bleu = computeBleu(cands, refs);
      const rouge = computeRouge(cands, refs);
      const cider = computeCider(cands, refs);
      const got: Record<Metric, number> = {
        Bleu_1: bleu.scores[0],
        Bleu_2: bleu.scores[1],
        Bleu_3: bleu.scores[2],
        Bleu_4: bleu.scores[3],
        ROUGE_L: rouge.score,
        CIDEr: cider.score,
      };
      let worst = 0;
      let worstAt = '';
      const check = (where: string, a: number, b: number): void => {
        const d = Math.abs(a - b);
        if (!(d <= worst)) {
          worst = d;
          worstAt = where;
        }
      };
      for (const m of METRICS) check(`corpus ${m}`, got[m], expected.scores[m]);
      ids.forEach((id, i) => {
        const e = expected.per_image[id];
        for (let k = 0; k < 4; k++)
          check(`${id} Bleu_${k + 1}`, bleu.perImage[i][k], e[`Bleu_${k + 1}` as Metric]);
        check(`${id} ROUGE_L`, rouge.perImage[i], e.ROUGE_L);
        check(`${id} CIDEr`, cider.perImage[i], e.CIDEr);
      });
      console.log(`${name}: worst |diff| = ${worst.toExponential(2)} (${worstAt})`);
      expect(Object.keys(expected.per_image).sort()).toEqual([...ids].sort());
      expect(worst).toBeLessThanOrEqual(1e-9);
      // The corpus BLEU statistics the toolkit prints with verbose=1.
      const s = expected.bleu_stats;
      expect(bleu.stats.testlen).toBe(s.testlen);
      expect(bleu.stats.reflen).toBe(s.reflen);
      expect(bleu.stats.guess).toEqual(s.guess);
      expect(bleu.stats.correct).toEqual(s.correct);
      expect(Math.abs(bleu.stats.ratio - s.ratio)).toBeLessThanOrEqual(1e-15);
    });
  }
});

describe('Python / NumPy helpers', () => {
  it('pySplit splits on Python whitespace (\\x1c-\\x1f, \\x85, \\xa0 yes; \\ufeff no)', () => {
    expect(pySplit('  a\tb\nc\x1cd\x85e\u00a0f\u3000g  ')).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g']);
    expect(pySplit('a\ufeffb')).toEqual(['a\ufeffb']);
    expect(pySplit('')).toEqual([]);
  });

  it('npMean reproduces NumPy pairwise summation bit for bit', () => {
    // Reference values: float(np.mean(np.array(a))) with NumPy 2.4.6 for a[i] = 0.1*(i%7) + 1e-3*i + 1/(i+3).
    // The naive left-to-right mean differs in the last bits for n >= 13, so this test can tell them apart.
    const numpy: Array<[number, number]> = [
      [5, 0.42057142857142854],
      [13, 0.42278684563299956],
      [100, 0.38157082429307265],
      [300, 0.4644643246590462],
      [1001, 0.8059824823921223],
    ];
    for (const [n, ref] of numpy) {
      const a = Array.from({ length: n }, (_, i) => 0.1 * (i % 7) + 1e-3 * i + 1 / (i + 3));
      expect(npMean(a)).toBe(ref);
      expect(pairwiseSum(a) / n).toBe(ref);
    }
  });
});
