/**
 * What a ClipCap captioner is assembled from: the contracts between the pipeline and the models (kept apart from
 * caption.ts so that load.ts, which builds these parts, and caption.ts, which uses them, do not import each other).
 */
import type { Backend } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import type { CausalLM } from '../generate/lm.js';

/** CLIP's image side as the pipeline needs it. */
export interface ImageEncoder {
  /** Width D of the projected embedding. */
  readonly projectionDim: number;
  /** Side of the square input (224 for ViT-B/32). */
  readonly imageSize: number;
  /** pixelValues (N, 3, S, S) as host data -> projected, unnormalized embeddings (N, D) on the backend. */
  encodeImages(pixelValues: Float32Array): Tensor;
  dispose(): void;
}

/** The mapping network side: CLIP embeddings -> GPT-2 prefix. */
export interface PrefixModel {
  /** Width D of the CLIP embedding it expects. */
  readonly prefixSize: number;
  /** clipEmbeds (N, D) -> prefix embeddings (N, K, E) (normalize_prefix applied when configured). */
  prefixEmbeddings(clipEmbeds: Tensor): Tensor;
}

/** Text side: ids -> caption text. */
export interface TokenDecoder {
  decode(ids: readonly number[]): string;
}

/** What a ClipCap instance is assembled from (see ClipCap.load for building one from files). */
export interface CaptionerParts {
  backend: Backend;
  lm: CausalLM;
  mapper: PrefixModel;
  tokenizer: TokenDecoder;
  /** Loads CLIP on first use (null when the model can only caption embeddings). */
  loadClip: (() => Promise<ImageEncoder>) | null;
  /** Where the weights came from, for messages (e.g. "coco_weights.pt"). */
  description: string;
  /** Release the LM's and mapper's weights. */
  dispose(): void;
}
