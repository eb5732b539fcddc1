/** Public types of the captioning API (ClipCap.caption / captionStream). */
import type { RgbImage } from '../image/index.js';
import type { DecodeOptions } from '../generate/options.js';

/** A precomputed CLIP image embedding (D values, e.g. 512 for ViT-B/32), captioned without loading CLIP. */
export interface EmbeddingInput {
  embedding: Float32Array | readonly number[];
  /** Optional name used in results and error messages. */
  name?: string;
}

/**
 * What can be captioned: an image file path, the bytes of an image file, decoded 8-bit RGB pixels
 * (`{ data, width, height }`, data = height x width x 3), or a CLIP embedding.
 */
export type CaptionInput = string | Uint8Array | RgbImage | EmbeddingInput;

export interface CaptionOptions extends DecodeOptions {
  /** Inputs per model batch (images are preprocessed, encoded and decoded together). Default 8. */
  batchSize?: number;
  /** Refuse images with more pixels than this (decompression bombs). Default 100 million. */
  limitInputPixels?: number;
  /** Rotate images as their EXIF orientation says (default false, as the reference). */
  applyExif?: boolean;
  /** Called after each batch with how many inputs are done. */
  onProgress?: (done: number, total: number | undefined) => void;
}

/** One beam (beam search) or one sample (nucleus). */
export interface CaptionCandidate {
  caption: string;
  tokens: number[];
  /** Beam search's score: sum of log-probabilities / length (higher is better). Absent for samples. */
  score?: number;
}

interface ResultBase {
  /** Position of the input in the call (or in the stream). */
  index: number;
  /** The input's path (file inputs) or name (embedding inputs with a name). */
  image?: string;
}

export interface CaptionSuccess extends ResultBase {
  /** The best caption: decode(tokens), as the official decoders return it (the stop token included). */
  caption: string;
  tokens: number[];
  /** Beam search: every beam, best first. Nucleus: every sample, in the order drawn. Absent for greedy. */
  candidates?: CaptionCandidate[];
  error?: undefined;
}

export interface CaptionFailure extends ResultBase {
  /** One line naming the input and what to do. */
  error: string;
  caption?: undefined;
  tokens?: undefined;
  candidates?: undefined;
}

export type CaptionResult = CaptionSuccess | CaptionFailure;
