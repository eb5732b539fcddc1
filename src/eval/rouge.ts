/**
 * ROUGE-L exactly as pycocoevalcap computes it (rouge/rouge.py).
 *
 * Quirks kept on purpose: tokens come from `split(" ")` (single spaces only, so "" is one empty token and
 * double spaces make empty tokens); precision and recall are each maximised over the references
 * independently (not the F of the best reference); beta = 1.2; the corpus score is the NumPy mean.
 */
import { npMean, pySplitSpace } from './pyutil.js';

export const ROUGE_BETA = 1.2;

/** Length of the longest common subsequence (the toolkit's my_lcs; symmetric, so argument order is free). */
export function lcsLength(a: readonly string[], b: readonly string[]): number {
  // One DP row over the shorter sequence: row[j] = LCS(a[0..i), b[0..j)).
  const [long, short] = a.length >= b.length ? [a, b] : [b, a];
  const row = new Int32Array(short.length + 1);
  for (let i = 1; i <= long.length; i++) {
    let diag = 0; // LCS(long[0..i-1), short[0..j-1))
    for (let j = 1; j <= short.length; j++) {
      const up = row[j];
      row[j] = long[i - 1] === short[j - 1] ? diag + 1 : Math.max(up, row[j - 1]);
      diag = up;
    }
  }
  return row[short.length];
}

/** ROUGE-L of one candidate against its references. */
export function rougeL(candidate: string, references: readonly string[]): number {
  if (references.length === 0) throw new Error('rougeL: no references');
  const tc = pySplitSpace(candidate);
  let precMax = -Infinity;
  let recMax = -Infinity;
  for (const ref of references) {
    const tr = pySplitSpace(ref);
    const lcs = lcsLength(tr, tc);
    precMax = Math.max(precMax, lcs / tc.length);
    recMax = Math.max(recMax, lcs / tr.length);
  }
  if (precMax !== 0 && recMax !== 0) {
    const b2 = ROUGE_BETA ** 2;
    return ((1 + b2) * precMax * recMax) / (recMax + b2 * precMax);
  }
  return 0.0;
}

export interface RougeResult {
  score: number;
  perImage: number[];
}

export function computeRouge(
  candidates: readonly string[],
  references: ReadonlyArray<readonly string[]>,
): RougeResult {
  if (candidates.length !== references.length) {
    throw new Error(`computeRouge: ${candidates.length} candidates but ${references.length} reference lists`);
  }
  const perImage = candidates.map((c, i) => rougeL(c, references[i]));
  return { score: npMean(perImage), perImage };
}
