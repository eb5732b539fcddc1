/**
 * CIDEr-D exactly as pycocoevalcap computes it (cider/cider_scorer.py; reported as "CIDEr").
 *
 * - Document frequencies come only from the references of the evaluated images: df(g) = number of images
 *   whose reference set contains the n-gram g. Candidates never count.
 * - idf uses log(number of images) (not the number of references), so a one-image corpus scores 0.
 * - A sentence's vector for each n (1..4): w(g) = tf(g) * (log N - log max(1, df(g))).
 * - Similarity per n: sum over candidate n-grams of min(w_c, w_r) * w_r (clipping on the weights), divided
 *   by both norms when neither is 0, times the Gaussian length penalty exp(-delta^2 / (2 sigma^2)), where
 *   the "length" is the number of bigrams (the toolkit's `if n == 1`; it equals the word-length difference
 *   whenever both sides are non-empty).
 * - Per image: mean over n of the summed similarities, / number of references, x 10. Corpus: NumPy mean.
 * Sums run in Python's dict insertion order so results agree to ~1e-15.
 */
import { npMean, pySplit } from './pyutil.js';

export const CIDER_N = 4;
export const CIDER_SIGMA = 6.0;

/** 1..n-gram counts in first-occurrence order; keys join tokens with U+0000. order[i] = n-gram length - 1. */
interface Counts {
  keys: string[];
  tf: number[];
  order: number[];
}

function precook(s: string, n: number): Counts {
  const words = pySplit(s);
  const index = new Map<string, number>();
  const c: Counts = { keys: [], tf: [], order: [] };
  for (let k = 1; k <= n; k++) {
    for (let i = 0; i + k <= words.length; i++) {
      const g = words.slice(i, i + k).join('\u0000');
      const at = index.get(g);
      if (at === undefined) {
        index.set(g, c.keys.length);
        c.keys.push(g);
        c.tf.push(1);
        c.order.push(k - 1);
      } else {
        c.tf[at]++;
      }
    }
  }
  return c;
}

interface Vec {
  /** One weight map per n, in insertion order. */
  w: Array<Map<string, number>>;
  norm: number[];
  /** Number of bigrams (see the module comment). */
  length: number;
}

export interface CiderResult {
  score: number;
  perImage: number[];
}

export function computeCider(
  candidates: readonly string[],
  references: ReadonlyArray<readonly string[]>,
  n = CIDER_N,
  sigma = CIDER_SIGMA,
): CiderResult {
  if (candidates.length !== references.length) {
    throw new Error(`computeCider: ${candidates.length} candidates but ${references.length} reference lists`);
  }
  const crefs = references.map((refs) => refs.map((r) => precook(r, n)));
  const ctest = candidates.map((c) => precook(c, n));

  // compute_doc_freq: each image counts once per n-gram in the union of its references.
  const df = new Map<string, number>();
  for (const refs of crefs) {
    const seen = new Set<string>();
    for (const r of refs) for (const g of r.keys) seen.add(g);
    for (const g of seen) df.set(g, (df.get(g) ?? 0) + 1);
  }
  // pycocoevalcap asserts len(ctest) >= max(df) here, which cannot fail for a consistent input and raises
  // on an empty df (every reference empty); we simply score such a corpus 0.
  const refLen = Math.log(crefs.length);

  const toVec = (c: Counts): Vec => {
    const w = Array.from({ length: n }, () => new Map<string, number>());
    const norm = new Array<number>(n).fill(0);
    let length = 0;
    for (let i = 0; i < c.keys.length; i++) {
      const g = c.keys[i];
      const k = c.order[i];
      const dfg = Math.log(Math.max(1.0, df.get(g) ?? 0));
      const v = c.tf[i] * (refLen - dfg);
      w[k].set(g, v);
      norm[k] += v ** 2;
      if (k === 1) length += c.tf[i];
    }
    return { w, norm: norm.map((x) => Math.sqrt(x)), length };
  };

  const sim = (hyp: Vec, ref: Vec): number[] => {
    const delta = hyp.length - ref.length;
    const val = new Array<number>(n).fill(0);
    for (let k = 0; k < n; k++) {
      const wr = ref.w[k];
      for (const [g, vh] of hyp.w[k]) {
        const vr = wr.get(g) ?? 0.0;
        val[k] += Math.min(vh, vr) * vr;
      }
      if (hyp.norm[k] !== 0 && ref.norm[k] !== 0) val[k] /= hyp.norm[k] * ref.norm[k];
      val[k] *= Math.E ** (-(delta ** 2) / (2 * sigma ** 2));
    }
    return val;
  };

  const perImage: number[] = [];
  for (let i = 0; i < ctest.length; i++) {
    const refs = crefs[i];
    if (refs.length === 0) throw new Error(`computeCider: image ${i} has no references`);
    const vec = toVec(ctest[i]);
    const score = new Array<number>(n).fill(0);
    for (const r of refs) {
      const s = sim(vec, toVec(r));
      for (let k = 0; k < n; k++) score[k] += s[k];
    }
    let avg = npMean(score);
    avg /= refs.length;
    avg *= 10.0;
    perImage.push(avg);
  }
  return { score: npMean(perImage), perImage };
}
