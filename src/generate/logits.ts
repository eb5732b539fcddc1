/**
 * Host-side logits processing for the decoders: one row of the last-position logits (V floats) at a time.
 * The model's forward pass stays on the backend; only the (rows, V) logits of the newest position come back.
 */

/** Official: `logits[:, -1, :] / (temperature if temperature > 0 else 1.0)`. */
export function effectiveTemperature(temperature: number): number {
  return temperature > 0 ? temperature : 1;
}

/**
 * Index of the largest value; the first one on ties (torch.argmax's documented rule).
 * Reads row [offset, offset + n).
 */
export function argmax(x: Float32Array, offset = 0, n = x.length - offset): number {
  let best = 0;
  let bestV = x[offset];
  for (let i = 1; i < n; i++) {
    const v = x[offset + i];
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/**
 * log(softmax(x / temperature)) of one row, rounded to float32, into `out` (the official beam decoder's
 * `logits.softmax(-1).log()`). Computed in float64 and rounded once, so it is the correctly rounded value
 * that a float32 implementation approximates to a few ulp.
 */
export function logSoftmaxRow(
  x: Float32Array,
  offset: number,
  n: number,
  temperature: number,
  out: Float32Array,
): void {
  const t = effectiveTemperature(temperature);
  // The scaled logits are float32 tensors in the official code: round the division the same way.
  const scaled = t === 1 ? x.subarray(offset, offset + n) : new Float32Array(n);
  if (t !== 1) for (let i = 0; i < n; i++) scaled[i] = x[offset + i] / t;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (scaled[i] > max) max = scaled[i];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(scaled[i] - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < n; i++) out[i] = scaled[i] - lse;
}

/** Buckets per halving of probability in `nucleus` (finer buckets = smaller boundary sorts). */
const BUCKETS_PER_OCTAVE = 64;
const BUCKETS = 64 * BUCKETS_PER_OCTAVE; // probabilities below max·2^-64 share the last bucket

/**
 * logsumexp of one row of logits / temperature (the division rounded to float32 as torch does), in float64:
 * log(softmax(x / T))[v] = fround(fround(x[v] / T) - lse), the value logSoftmaxRow writes.
 */
export function logSumExpRow(x: Float32Array, offset: number, n: number, temperature: number): number {
  const t = effectiveTemperature(temperature);
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = t === 1 ? x[offset + i] : Math.fround(x[offset + i] / t);
    if (v > max) max = v;
  }
  if (max === -Infinity) return -Infinity;
  let sum = 0;
  for (let i = 0; i < n; i++)
    sum += Math.exp((t === 1 ? x[offset + i] : Math.fround(x[offset + i] / t)) - max);
  return max + Math.log(sum);
}

/**
 * The nucleus of one row: the fewest most-likely tokens whose probabilities sum past `topP` (the official
 * filter: remove sorted token j when the cumulative probability before it already exceeds top_p; the most
 * likely token always stays). Returns the kept ids and their renormalized probabilities.
 *
 * Instead of sorting all V probabilities every step (slow when the distribution is flat and the nucleus
 * holds most of the vocabulary), tokens go into buckets by log-probability; whole buckets are kept until the
 * one where the mass passes top_p, and only that bucket is sorted (by probability, then id). The kept set is
 * the one a full sort gives. Ids come grouped from most to least likely buckets, in id order within a bucket.
 */
export function nucleus(
  x: Float32Array,
  offset: number,
  n: number,
  temperature: number,
  topP: number,
): { ids: Int32Array; probs: Float64Array } {
  const t = effectiveTemperature(temperature);
  const scaled = new Float32Array(n);
  for (let i = 0; i < n; i++) scaled[i] = x[offset + i] / t;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (scaled[i] > max) max = scaled[i];
  const p = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(scaled[i] - max);
    p[i] = e;
    sum += e;
  }
  const bucketOf = new Uint16Array(n);
  const mass = new Float64Array(BUCKETS);
  const count = new Uint32Array(BUCKETS);
  for (let i = 0; i < n; i++) {
    p[i] /= sum;
    // p[i] / pmax = exp(scaled - max): its log2 is (scaled - max) / ln 2 <= 0.
    const b = Math.min(BUCKETS - 1, Math.floor(((max - scaled[i]) / Math.LN2) * BUCKETS_PER_OCTAVE));
    bucketOf[i] = b;
    mass[b] += p[i];
    count[b]++;
  }
  // Whole buckets before the boundary bucket are kept; the boundary bucket is sorted and cut.
  let cum = 0;
  let boundary = BUCKETS;
  for (let b = 0; b < BUCKETS; b++) {
    if (count[b] === 0) continue;
    if (cum + mass[b] > topP) {
      boundary = b;
      break;
    }
    cum += mass[b];
  }
  const kept: number[] = [];
  const edge: number[] = [];
  for (let i = 0; i < n; i++) {
    if (bucketOf[i] < boundary) kept.push(i);
    else if (bucketOf[i] === boundary) edge.push(i);
  }
  edge.sort((a, b) => p[b] - p[a] || a - b);
  // Kept in sorted order until the cumulative probability passes top_p (that token included).
  for (const i of edge) {
    kept.push(i);
    cum += p[i];
    if (cum > topP) break;
  }
  // Every token in the buckets before `boundary` outranks every token of the boundary bucket, so `kept` is
  // exactly the sorted prefix; the most likely token is always in it.
  const ids = Int32Array.from(kept);
  const probs = new Float64Array(ids.length);
  let keptSum = 0;
  for (let j = 0; j < ids.length; j++) keptSum += p[ids[j]];
  for (let j = 0; j < ids.length; j++) probs[j] = p[ids[j]] / keptSum;
  return { ids, probs };
}
