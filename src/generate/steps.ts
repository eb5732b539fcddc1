/**
 * The two model calls every decoder makes: run the prefix once into a fresh KV cache, then feed one token per
 * sequence per step. Both return the newest position's logits on the host as (rows, V) row-major floats.
 */
import type { Tensor } from '../engine/tensor.js';
import { UserError } from '../util/errors.js';
import type { CausalLM, KvCache } from './lm.js';

export interface PrefixRun {
  cache: KvCache;
  /** (B, V) logits after the last prefix position. */
  logits: Float32Array;
}

/** runPrefix's result with the logits left on the backend. */
export interface PrefixRunTensor {
  cache: KvCache;
  /** (B, V) logits after the last prefix position; the caller disposes it. */
  logits: Tensor;
}

function checkLogits(lm: CausalLM, t: Tensor, rows: number): Tensor {
  if (t.shape.length !== 2 || t.shape[0] !== rows || t.shape[1] !== lm.vocabSize) {
    t.dispose();
    throw new Error(
      `CausalLM.step returned logits [${t.shape.join(', ')}], expected [${rows}, ${lm.vocabSize}]`,
    );
  }
  if (t.dtype !== 'f32') {
    t.dispose();
    throw new Error('CausalLM.step returned integer logits');
  }
  return t;
}

async function hostLogits(t: Tensor): Promise<Float32Array> {
  try {
    return (await t.read()) as Float32Array;
  } finally {
    t.dispose();
  }
}

/**
 * prefix: (B, K, E) embeddings. Creates a cache with room for the prefix and the `maxTokens - 1` generated
 * tokens that are fed back (the last token is never fed), runs the prefix, returns the cache and logits.
 */
export async function runPrefix(lm: CausalLM, prefix: Tensor, maxTokens: number): Promise<PrefixRun> {
  const run = runPrefixTensor(lm, prefix, maxTokens);
  try {
    return { cache: run.cache, logits: await hostLogits(run.logits) };
  } catch (e) {
    run.cache.dispose();
    throw e;
  }
}

/** runPrefix, leaving the logits on the backend. */
export function runPrefixTensor(lm: CausalLM, prefix: Tensor, maxTokens: number): PrefixRunTensor {
  if (prefix.shape.length !== 3 || prefix.shape[2] !== lm.width)
    throw new Error(`prefix embeddings must be (B, K, ${lm.width}), got [${prefix.shape.join(', ')}]`);
  const [batch, k] = prefix.shape;
  const capacity = k + maxTokens - 1;
  if (capacity > lm.maxPositions)
    throw new UserError(
      `${maxTokens} tokens after a ${k}-vector prefix need ${capacity} positions but the model has ` +
        `${lm.maxPositions}: lower --max-tokens to at most ${lm.maxPositions - k + 1}`,
    );
  const cache = lm.createCache(batch, capacity);
  try {
    return { cache, logits: checkLogits(lm, lm.step(prefix, cache), batch) };
  } catch (e) {
    cache.dispose();
    throw e;
  }
}

/** Feed one token to each cache row (tokens[r] to row r) and return the (rows, V) logits. */
export function feedTokens(lm: CausalLM, cache: KvCache, tokens: readonly number[]): Promise<Float32Array> {
  return hostLogits(feedTokensTensor(lm, cache, tokens));
}

/** feedTokens, leaving the (rows, V) logits on the backend (the caller disposes them). */
export function feedTokensTensor(lm: CausalLM, cache: KvCache, tokens: readonly number[]): Tensor {
  const ids = lm.backend.upload(Int32Array.from(tokens), [tokens.length, 1]);
  let embeds: Tensor | undefined;
  try {
    embeds = lm.embed(ids); // (R, 1, E)
    return checkLogits(lm, lm.step(embeds, cache), tokens.length);
  } finally {
    ids.dispose();
    embeds?.dispose();
  }
}

/** Rows -> a cache holding only `keep` (in order); returns the same cache when nothing changes. */
export function keepRows(cache: KvCache, keep: readonly number[]): KvCache {
  if (keep.length === cache.batch && keep.every((r, i) => r === i)) return cache;
  return cache.select(keep);
}
