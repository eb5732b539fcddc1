/**
 * Nucleus (top-p) sampling: each step keeps the most likely tokens of softmax(logits / T) until their mass
 * passes top_p (the official generate2 filter), renormalizes and draws one. `numCaptions` samples per input,
 * each from its own seeded stream (seed, the input's stream id, sample index), so an input's samples do not
 * depend on batching or on what else shares its batch.
 *
 * Batched: numCaptions cache rows per input, made from the prefix row after it runs once; finished samples
 * leave the cache.
 */
import type { Tensor } from '../engine/tensor.js';
import type { CausalLM } from './lm.js';
import { nucleus } from './logits.js';
import type { ResolvedDecodeOptions } from './options.js';
import { Rng, sampleIndex } from '../util/random.js';
import { feedTokens, keepRows, runPrefix } from './steps.js';
import type { GenerationResult } from './types.js';

export interface NucleusContext {
  /**
   * A stream id per prefix row (seeds its samples with the seed), e.g. a hash of the input (see
   * `inputStream`); wins over inputIndices.
   */
  streams?: readonly number[];
  /** The index of each prefix row among all inputs, used as its stream id; default 0..B-1. */
  inputIndices?: readonly number[];
}

/** prefix: (B, K, E) -> per input, `numCaptions` sampled sequences. */
export async function nucleusDecode(
  lm: CausalLM,
  prefix: Tensor,
  opts: Pick<
    ResolvedDecodeOptions,
    'maxTokens' | 'stopTokenId' | 'temperature' | 'topP' | 'seed' | 'numCaptions'
  >,
  context: NucleusContext = {},
): Promise<GenerationResult[]> {
  const batch = prefix.shape[0];
  const n = opts.numCaptions;
  const V = lm.vocabSize;
  const streams = context.streams ?? context.inputIndices ?? Array.from({ length: batch }, (_, i) => i);
  if (streams.length !== batch) throw new Error('nucleusDecode: one stream id per prefix row');
  // Sample s of input i is row i * n + s of these arrays.
  const samples: number[][] = Array.from({ length: batch * n }, () => []);
  const rngs = samples.map((_, j) => new Rng(opts.seed, streams[Math.floor(j / n)], j % n));

  const run = await runPrefix(lm, prefix, opts.maxTokens);
  let cache = run.cache;
  try {
    // Every sample of input i starts from prefix row i's logits.
    let logits = run.logits;
    let rowSample = samples.map((_, j) => j); // cache row -> sample
    let logitsRow = rowSample.map((j) => Math.floor(j / n)); // sample row -> row of `logits`
    let cacheRows = logitsRow; // cache rows the samples continue from
    for (;;) {
      const keep: number[] = [];
      for (let r = 0; r < rowSample.length; r++) {
        const { ids, probs } = nucleus(logits, logitsRow[r] * V, V, opts.temperature, opts.topP);
        const tok = ids[sampleIndex(probs, rngs[rowSample[r]].next())];
        const seq = samples[rowSample[r]];
        seq.push(tok);
        if (tok !== opts.stopTokenId && seq.length < opts.maxTokens) keep.push(r);
      }
      if (keep.length === 0) break;
      cache = keepRows(
        cache,
        keep.map((r) => cacheRows[r]),
      );
      rowSample = keep.map((r) => rowSample[r]);
      logitsRow = rowSample.map((_, r) => r);
      cacheRows = logitsRow;
      logits = await feedTokens(
        lm,
        cache,
        rowSample.map((j) => samples[j][samples[j].length - 1]),
      );
    }
  } finally {
    cache.dispose();
  }
  return Array.from({ length: batch }, (_, i) => ({
    sequences: samples.slice(i * n, (i + 1) * n).map((tokens) => ({ tokens })),
  }));
}
