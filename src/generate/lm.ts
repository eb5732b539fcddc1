/**
 * What the decoders need from a language model: the contract between models/ (GPT-2) and generate/.
 * Decoders stay apart from the model (logits processing on the host, the forward pass on the backend).
 */
import type { Backend } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';

/** Keys and values of every layer for a batch of sequences, preallocated to a maximum length. */
export interface KvCache {
  /** Number of sequences (rows) the cache holds. */
  readonly batch: number;
  /** Positions filled so far (the same for every row). */
  readonly length: number;
  /** Capacity in positions. */
  readonly maxLength: number;
  /**
   * Keep only the given rows, in this order (rows may repeat): beam search reorders and expands beams with it.
   * Returns a cache for indices.length rows; the old cache must not be used afterwards.
   */
  select(indices: readonly number[]): KvCache;
  /** Release its tensors. */
  dispose(): void;
}

export interface CausalLM {
  readonly backend: Backend;
  readonly vocabSize: number;
  /** Embedding width E. */
  readonly width: number;
  /** Most positions one sequence may hold (GPT-2: n_positions). */
  readonly maxPositions: number;
  /** Token embeddings: ids (B, T) i32 -> (B, T, E). */
  embed(ids: Tensor): Tensor;
  /** A new empty cache for `batch` sequences of up to `maxLength` positions. */
  createCache(batch: number, maxLength: number): KvCache;
  /**
   * Run `embeds` (B, T, E) as the next T positions of every sequence, appending to `cache` (its length grows
   * by T). Returns the logits of the LAST new position only: (B, V). Positions continue from cache.length.
   */
  step(embeds: Tensor, cache: KvCache): Tensor;
}
