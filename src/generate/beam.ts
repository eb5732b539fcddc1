/**
 * Beam search as the official `generate_beam` (CLIP_prefix_caption predict.py), step for step, with a KV cache
 * and every input's beams batched into one model call.
 *
 * Official algorithm, per input (all arithmetic in float32, as torch does it):
 * - step 0: logp = log(softmax(logits / T)) of the prefix's next token; scores, tokens = topk(logp, beam);
 *   seq_lengths = 1; is_stopped = token == stop.
 * - later steps: logp[is_stopped] = -inf except logp[is_stopped, 0] = 0 (a finished beam can only grow by
 *   id 0, at no cost); scores_sum = scores[:, None] + logp; seq_lengths[~is_stopped] += 1;
 *   avg = scores_sum / seq_lengths[:, None]; topk(avg.view(-1), beam) -> flat index f: source beam = f // V,
 *   token = f % V; seq_lengths = seq_lengths[source]; scores = avg * seq_lengths;
 *   is_stopped = is_stopped[source] | token == stop; stop when every beam is stopped or after maxTokens.
 * - output: beams sorted by scores / seq_lengths, descending; each beam's text is its first
 *   int(seq_length) tokens (the stop token included, the 0 padding of finished beams not).
 * Ties in topk / sort are resolved by the lower index (torch leaves them unspecified).
 */
import type { Tensor } from '../engine/tensor.js';
import type { CausalLM, KvCache } from './lm.js';
import { effectiveTemperature, logSumExpRow } from './logits.js';
import type { ResolvedDecodeOptions } from './options.js';
import { feedTokensTensor, keepRows, runPrefixTensor } from './steps.js';
import type { GenerationResult } from './types.js';

const f32 = Math.fround;

/** The beams of one input. */
interface BeamState {
  tokens: number[][];
  scores: Float32Array;
  lengths: Float32Array;
  stopped: boolean[];
  done: boolean;
}

/**
 * Top `k` of `count` candidates by value, descending; equal values keep the lower index first.
 * Returns the chosen indices. `value(i)` may be -Infinity; NaN never ranks.
 */
class TopK {
  readonly idx: number[] = [];
  readonly val: number[] = [];
  constructor(readonly k: number) {}

  /** Offer candidates in increasing index order (so ties keep the earlier index). */
  offer(value: number, index: number): void {
    const n = this.idx.length;
    if (n === this.k && !(value > this.val[n - 1])) return;
    let pos = n === this.k ? n - 1 : n;
    // Insert after every equal value: earlier indices win ties.
    while (pos > 0 && value > this.val[pos - 1]) pos--;
    if (n === this.k) {
      this.idx.pop();
      this.val.pop();
    }
    this.idx.splice(pos, 0, index);
    this.val.splice(pos, 0, value);
  }

  /** The lowest value kept so far, or -Infinity while fewer than k are kept. */
  get floor(): number {
    return this.idx.length === this.k ? this.val[this.k - 1] : -Infinity;
  }
}

/**
 * Offers every candidate (score + logp[v]) / len of one beam's logits row to `best`, flat index base + v:
 * logp[v] = fround(x[v] / T - lse) as logSoftmaxRow makes it. The exact float32 average is only computed
 * where a float64 estimate can reach the current floor: the three float32 roundings move it by < 4e-7
 * relative, and every value is <= 0, so a margin of 1e-6 of the floor never drops a candidate the exact
 * computation would keep.
 */
function scanRow(
  best: TopK,
  logits: Float32Array,
  off: number,
  V: number,
  base: number,
  score: number,
  len: number,
  temperature: number,
): void {
  const lse = logSumExpRow(logits, off, V, temperature);
  const t = effectiveTemperature(temperature);
  let floor = best.floor;
  let cutoff = floor - Math.abs(floor) * 1e-6 - 1e-30;
  for (let v = 0; v < V; v++) {
    const xv = t === 1 ? logits[off + v] : f32(logits[off + v] / t);
    if (!((score + xv - lse) / len >= cutoff)) continue;
    const avg = f32(f32(score + f32(xv - lse)) / len);
    if (avg > floor || best.idx.length < best.k) {
      best.offer(avg, base + v);
      floor = best.floor;
      cutoff = floor - Math.abs(floor) * 1e-6 - 1e-30;
    }
  }
}

/**
 * Whether a beam row's (beam+1)-th candidate average equals its beam-th after float32 rounding (then a lower
 * id could win the tie and the row is scanned in full). values: the row's kk best log-probabilities at row.
 */
function tiedAtCut(
  score: number,
  len: number,
  values: Float32Array,
  row: number,
  beam: number,
  kk: number,
): boolean {
  if (kk <= beam) return false;
  const avgOf = (j: number) => f32(f32(score + values[row + j]) / len);
  return !(avgOf(beam) < avgOf(beam - 1));
}

/** The k best log-probabilities of each row of logits (rows, V) on the host: (rows, k) values and indices. */
async function topLogProbs(
  lm: CausalLM,
  logits: Tensor,
  k: number,
  temperature: number,
): Promise<{ values: Float32Array; indices: Int32Array }> {
  const top = lm.backend.logSoftmaxTopK(logits, k, temperature);
  try {
    const [values, indices] = await Promise.all([top.values.read(), top.indices.read()]);
    return { values: values as Float32Array, indices: indices as Int32Array };
  } finally {
    top.values.dispose();
    top.indices.dispose();
  }
}

/** prefix: (B, K, E) -> per input, `beamSize` sequences best first, with their scores. */
export async function beamDecode(
  lm: CausalLM,
  prefix: Tensor,
  opts: Pick<ResolvedDecodeOptions, 'beamSize' | 'maxTokens' | 'stopTokenId' | 'temperature'>,
): Promise<GenerationResult[]> {
  const batch = prefix.shape[0];
  const V = lm.vocabSize;
  const beam = opts.beamSize;
  if (beam > V) throw new Error(`beam size ${beam} exceeds the vocabulary (${V})`);
  const stop = opts.stopTokenId;
  // Candidates per beam row that the backend ranks: one more than can be chosen, to detect ties (below).
  const kk = Math.min(V, beam + 1);
  const states: BeamState[] = [];

  const run = runPrefixTensor(lm, prefix, opts.maxTokens);
  let cache: KvCache = run.cache;
  try {
    // Step 0: the top `beam` next tokens of each prefix (log-probabilities, ties to the lower id).
    let first: { values: Float32Array; indices: Int32Array };
    try {
      first = await topLogProbs(lm, run.logits, beam, opts.temperature);
    } finally {
      run.logits.dispose();
    }
    for (let i = 0; i < batch; i++) {
      const ids = Array.from(first.indices.subarray(i * beam, (i + 1) * beam));
      const stopped = ids.map((tok) => tok === stop);
      states.push({
        tokens: ids.map((tok) => [tok]),
        scores: first.values.slice(i * beam, (i + 1) * beam),
        lengths: new Float32Array(beam).fill(1),
        stopped,
        done: stopped.every(Boolean) || opts.maxTokens <= 1,
      });
    }
    // Cache rows: `beam` rows per unfinished input, in input order. Step 0 expands each prefix row `beam` times.
    let active = states.map((_, i) => i).filter((i) => !states[i].done);
    cache = keepRows(
      cache,
      active.flatMap((i) => Array<number>(beam).fill(i)),
    );

    for (let step = 1; active.length > 0; step++) {
      const logits = feedTokensTensor(
        lm,
        cache,
        active.flatMap((i) => states[i].tokens.map((seq) => seq[seq.length - 1])),
      );
      const sourceRows: number[] = [];
      const stillActive: number[] = [];
      try {
        const top = await topLogProbs(lm, logits, kk, opts.temperature);
        // every logit, downloaded only if a row needs the full scan (see tiedAtCut)
        const needsScan = active.some((i, a) =>
          states[i].stopped.some(
            (stopped, b) =>
              !stopped &&
              tiedAtCut(
                states[i].scores[b],
                states[i].lengths[b] + 1,
                top.values,
                (a * beam + b) * kk,
                beam,
                kk,
              ),
          ),
        );
        const host = needsScan ? ((await logits.read()) as Float32Array) : null;
        active.forEach((i, a) => {
          const s = states[i];
          // seq_lengths[~is_stopped] += 1, before the average as in the official code.
          const lengths = s.lengths.map((len, b) => (s.stopped[b] ? len : len + 1));
          const best = new TopK(beam);
          for (let b = 0; b < beam; b++) {
            const score = s.scores[b];
            const len = lengths[b];
            if (s.stopped[b]) {
              // Only token 0 is finite, at log-prob 0: avg = (score + 0) / len.
              best.offer(f32(score / len), b * V);
              continue;
            }
            // avg = (score + logp) / len rounded to float32 at each step, as torch computes it, is
            // non-decreasing in logp, so this row's `beam` best averages are those of its `beam` best
            // log-probabilities, unless rounding makes the next one's average equal the last kept one (then
            // a lower id could win the tie): that row is scanned in full, as the official code does.
            const row = (a * beam + b) * kk;
            const avgOf = (j: number) => f32(f32(score + top.values[row + j]) / len);
            if (tiedAtCut(score, len, top.values, row, beam, kk)) {
              scanRow(best, host as Float32Array, (a * beam + b) * V, V, b * V, score, len, opts.temperature);
              continue;
            }
            // Offer in increasing id order, so that ties across rows and ids keep the lower flat index.
            const order = Array.from({ length: beam }, (_, j) => j).sort(
              (x, y) => top.indices[row + x] - top.indices[row + y],
            );
            for (const j of order) best.offer(avgOf(j), b * V + top.indices[row + j]);
          }
          const sources = best.idx.map((f) => Math.floor(f / V));
          const nextTokens = best.idx.map((f) => f % V);
          const newLengths = Float32Array.from(sources, (src) => lengths[src]);
          s.tokens = sources.map((src, j) => [...s.tokens[src], nextTokens[j]]);
          s.scores = Float32Array.from(best.val, (avg, j) => f32(avg * newLengths[j]));
          s.lengths = newLengths;
          s.stopped = sources.map((src, j) => s.stopped[src] || nextTokens[j] === stop);
          s.done = s.stopped.every(Boolean) || step + 1 >= opts.maxTokens;
          if (!s.done) {
            stillActive.push(i);
            for (const src of sources) sourceRows.push(a * beam + src);
          }
        });
      } finally {
        logits.dispose();
      }
      active = stillActive;
      if (active.length > 0) cache = keepRows(cache, sourceRows);
    }
  } finally {
    cache.dispose();
  }

  return states.map((s) => {
    const final = s.tokens.map((seq, b) => ({
      tokens: seq.slice(0, Math.trunc(s.lengths[b])),
      score: f32(s.scores[b] / s.lengths[b]),
      beam: b,
    }));
    // order = scores.argsort(descending=True); stable so equal scores keep beam order.
    final.sort((x, y) => y.score - x.score || x.beam - y.beam);
    return { sequences: final.map(({ tokens, score }) => ({ tokens, score })) };
  });
}
