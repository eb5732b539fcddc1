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

/**
 * The nucleus of one row: the fewest most-likely tokens whose probabilities sum past `topP` (the official
 * filter: remove sorted token j when the cumulative probability before it already exceeds top_p; the most
 * likely token always stays). Returns the kept ids (most likely first) and their renormalized probabilities.
 *
 * Instead of sorting all V probabilities every step, it sorts only those above a threshold and lowers the
 * threshold until the kept set is complete; the set is the same as a full sort would give, since every token
 * below the threshold is less likely than every token above it.
 */
export function nucleus(
  x: Float32Array,
  offset: number,
  n: number,
  temperature: number,
  topP: number,
): { ids: Int32Array; probs: Float64Array } {
  const t = effectiveTemperature(temperature);
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[offset + i] / t;
    if (v > max) max = v;
  }
  const p = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(x[offset + i] / t - max);
    p[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) p[i] /= sum;
  // The largest probability is exp(0) / sum = 1 / sum.
  let threshold = 1e-3 / sum;
  for (;;) {
    const cand: number[] = [];
    for (let i = 0; i < n; i++) if (p[i] >= threshold) cand.push(i);
    // Most likely first; equal probabilities by id, so the result never depends on the scan.
    cand.sort((a, b) => p[b] - p[a] || a - b);
    let cum = 0;
    let kept = -1;
    for (let j = 0; j < cand.length; j++) {
      cum += p[cand[j]];
      if (cum > topP) {
        kept = j + 1;
        break;
      }
    }
    // Complete when the mass passed top_p inside the candidates, or when every token was a candidate.
    if (kept < 0 && threshold > 0) {
      threshold = threshold > 1e-30 ? threshold * 1e-4 : 0;
      continue;
    }
    if (kept < 0) kept = cand.length;
    const ids = Int32Array.from(cand.slice(0, kept));
    const probs = new Float64Array(kept);
    let keptSum = 0;
    for (let j = 0; j < kept; j++) keptSum += p[ids[j]];
    for (let j = 0; j < kept; j++) probs[j] = p[ids[j]] / keptSum;
    return { ids, probs };
  }
}
