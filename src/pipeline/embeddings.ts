/**
 * CLIP embedding files as `clipcap extract` writes them: safetensors with `clip_embedding` [N, D] (f32, or
 * f16/bf16 converted on load), rows in input order.
 */
import { loadSafetensors } from '../weights/safetensors.js';
import { UserError } from '../util/errors.js';

export const EMBEDDING_TENSOR = 'clip_embedding';

export interface EmbeddingsFile {
  /** (N, D) row-major. */
  data: Float32Array;
  rows: number;
  dim: number;
  metadata: Readonly<Record<string, string>>;
}

/** Read `clip_embedding` [N, D] from a safetensors file; UserError naming the file when it is not there. */
export async function readEmbeddings(path: string): Promise<EmbeddingsFile> {
  const f = await loadSafetensors(path);
  try {
    if (!f.has(EMBEDDING_TENSOR))
      throw new UserError(
        `${path}: no tensor "${EMBEDDING_TENSOR}" (found: ${f.keys().slice(0, 5).join(', ') || 'none'}); ` +
          `write one with clipcap extract`,
      );
    const t = await f.tensor(EMBEDDING_TENSOR);
    if (t.shape.length !== 2 || !(t.data instanceof Float32Array))
      throw new UserError(
        `${path}: "${EMBEDDING_TENSOR}" must be a float [N, D] matrix, got ${t.dtype} [${t.shape.join(', ')}]`,
      );
    const [rows, dim] = t.shape;
    return { data: t.data, rows, dim, metadata: f.metadata };
  } finally {
    await f.close();
  }
}

/** The rows of `clip_embedding` as separate vectors (views into one buffer). */
export async function readEmbeddingsFile(path: string): Promise<Float32Array[]> {
  const e = await readEmbeddings(path);
  return Array.from({ length: e.rows }, (_, i) => e.data.subarray(i * e.dim, (i + 1) * e.dim));
}
