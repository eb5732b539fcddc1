/**
 * BLEU-1..4 exactly as pycocoevalcap computes it (bleu/bleu_scorer.py, `compute_score(option='closest')`).
 *
 * Per image: clipped n-gram matches against the per-n-gram maximum count over the references, and the
 * reference length closest to the candidate length (ties go to the shorter reference). The corpus score
 * sums those statistics over all images. Both use the toolkit's smoothing constants (tiny = 1e-15 added to
 * the matches, small = 1e-9 to the guesses), so a zero match count gives a tiny positive score, an exact
 * match gives 0.99999999975..., and an empty candidate gives exactly 0 (its brevity penalty underflows).
 */
import { pySplit } from './pyutil.js';

export const BLEU_N = 4;

/** The sufficient statistics of one image, or of the corpus (sums). */
export interface BleuStats {
  testlen: number;
  reflen: number;
  /** guess[k]: number of candidate (k+1)-grams, max(0, testlen - k). */
  guess: number[];
  /** correct[k]: clipped matches of (k+1)-grams. */
  correct: number[];
}

export interface BleuResult {
  /** Corpus Bleu_1..Bleu_4. */
  scores: number[];
  /** perImage[i][k]: Bleu_{k+1} of image i. */
  perImage: number[][];
  /** Corpus statistics (what the toolkit prints with verbose=1), ratio = testlen / reflen smoothed. */
  stats: BleuStats & { ratio: number };
}

/** Counts of the 1..n-grams of a token list, keyed by the tokens joined with U+0000 (never in a token). */
function ngramCounts(words: readonly string[], n: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let k = 1; k <= n; k++) {
    for (let i = 0; i + k <= words.length; i++) {
      const g = words.slice(i, i + k).join('\u0000');
      counts.set(g, (counts.get(g) ?? 0) + 1);
    }
  }
  return counts;
}

/** Number of tokens in an n-gram key. */
function ngramOrder(key: string): number {
  let n = 1;
  for (let i = 0; i < key.length; i++) if (key.charCodeAt(i) === 0) n++;
  return n;
}

/** cook_refs + cook_test: one image's statistics. */
export function bleuImageStats(candidate: string, references: readonly string[], n = BLEU_N): BleuStats {
  const maxCounts = new Map<string, number>();
  const refLens: number[] = [];
  for (const ref of references) {
    const words = pySplit(ref);
    refLens.push(words.length);
    for (const [g, c] of ngramCounts(words, n)) {
      if (c > (maxCounts.get(g) ?? 0)) maxCounts.set(g, c);
    }
  }
  const words = pySplit(candidate);
  const testlen = words.length;
  // 'closest': min over (|len - testlen|, len) as a tuple, so a tie picks the shorter reference.
  let reflen = refLens[0];
  for (const l of refLens) {
    const d = Math.abs(l - testlen);
    const best = Math.abs(reflen - testlen);
    if (d < best || (d === best && l < reflen)) reflen = l;
  }
  const guess: number[] = [];
  for (let k = 0; k < n; k++) guess.push(Math.max(0, testlen - k));
  const correct = new Array<number>(n).fill(0);
  for (const [g, c] of ngramCounts(words, n)) {
    correct[ngramOrder(g) - 1] += Math.min(maxCounts.get(g) ?? 0, c);
  }
  return { testlen, reflen, guess, correct };
}

const SMALL = 1e-9;
const TINY = 1e-15;

/** The toolkit's smoothed cumulative geometric mean with brevity penalty. */
function bleuFromStats(s: BleuStats, n: number): { scores: number[]; ratio: number } {
  const scores: number[] = [];
  let p = 1.0;
  for (let k = 0; k < n; k++) {
    p *= (s.correct[k] + TINY) / (s.guess[k] + SMALL);
    scores.push(p ** (1 / (k + 1)));
  }
  const ratio = (s.testlen + TINY) / (s.reflen + SMALL);
  if (ratio < 1) {
    const bp = Math.exp(1 - 1 / ratio);
    for (let k = 0; k < n; k++) scores[k] *= bp;
  }
  return { scores, ratio };
}

/**
 * Corpus and per-image BLEU. `candidates[i]` is scored against `references[i]` (at least one each);
 * strings are split on whitespace as Python's `str.split()`.
 */
export function computeBleu(
  candidates: readonly string[],
  references: ReadonlyArray<readonly string[]>,
  n = BLEU_N,
): BleuResult {
  if (candidates.length !== references.length) {
    throw new Error(`computeBleu: ${candidates.length} candidates but ${references.length} reference lists`);
  }
  const total: BleuStats = {
    testlen: 0,
    reflen: 0,
    guess: new Array<number>(n).fill(0),
    correct: new Array<number>(n).fill(0),
  };
  const perImage: number[][] = [];
  for (let i = 0; i < candidates.length; i++) {
    if (references[i].length === 0) throw new Error(`computeBleu: image ${i} has no references`);
    const s = bleuImageStats(candidates[i], references[i], n);
    total.testlen += s.testlen;
    total.reflen += s.reflen;
    for (let k = 0; k < n; k++) {
      total.guess[k] += s.guess[k];
      total.correct[k] += s.correct[k];
    }
    perImage.push(bleuFromStats(s, n).scores);
  }
  const { scores, ratio } = bleuFromStats(total, n);
  return { scores, perImage, stats: { ...total, ratio } };
}
