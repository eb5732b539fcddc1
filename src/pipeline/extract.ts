/**
 * Feature extraction (`clipcap extract`): CLIP image embeddings of many images into one safetensors file,
 * `clip_embedding` [N, D] f32 in input order, with `__metadata__` and an optional captions sidecar in the
 * layout of the official parse_coco.py (`{image_id, caption, embedding: row}`), ready for training.
 */
import { checkOptionKeys, optionKeys } from '../util/options.js';
import { preprocessImage } from '../image/index.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { saveSafetensors } from '../weights/safetensors.js';
import type { ImageEncoder } from './parts.js';
import { EMBEDDING_TENSOR, captionsSidecarPath } from '../data/embeddings.js';
import { pairCaptions, readCaptionsFile, type CaptionEntry } from '../data/captions.js';

export interface ExtractOptions {
  /** Images per CLIP batch. Default 16. */
  batchSize?: number;
  limitInputPixels?: number;
  applyExif?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface ExtractedRow {
  /** Position among the inputs. */
  index: number;
  image: string;
  /** (D) projected, unnormalized CLIP embedding; absent when the image failed. */
  embedding?: Float32Array;
  error?: string;
}

const EXTRACT_KEYS = optionKeys<ExtractOptions>({
  batchSize: true,
  limitInputPixels: true,
  applyExif: true,
  onProgress: true,
});

/**
 * CLIP embeddings of image files, batch by batch, in input order; a bad image yields its error and the
 * rest continue. The next batch is decoded while CLIP runs on the current one.
 */
export async function* extractEmbeddings(
  encoder: ImageEncoder,
  images: readonly string[],
  options: ExtractOptions = {},
): AsyncGenerator<ExtractedRow> {
  checkOptionKeys(options, EXTRACT_KEYS, 'extractEmbeddings options');
  const batchSize = options.batchSize ?? 16;
  if (!Number.isInteger(batchSize) || batchSize < 1)
    throw new UserError(`batch size must be a positive integer, got ${batchSize}`);
  const D = encoder.projectionDim;
  const S = encoder.imageSize;
  type Pending = ExtractedRow & { pixels?: Float32Array };
  const prepare = (start: number): Promise<Pending[]> =>
    Promise.all(
      images.slice(start, start + batchSize).map(async (image, j): Promise<Pending> => {
        const index = start + j;
        try {
          const p = await preprocessImage(image, {
            size: S,
            limitInputPixels: options.limitInputPixels,
            applyExif: options.applyExif,
          });
          return { index, image, pixels: p.pixelValues };
        } catch (e) {
          if (!(e instanceof UserError)) throw e;
          return { index, image, error: e.message };
        }
      }),
    );
  let next = images.length > 0 ? prepare(0) : null;
  for (let start = 0; next; start += batchSize) {
    const batch = await next;
    next = start + batchSize < images.length ? prepare(start + batchSize) : null;
    next?.catch(() => undefined);
    const ok = batch.filter((r) => r.pixels);
    if (ok.length > 0) {
      const pix = new Float32Array(ok.length * 3 * S * S);
      ok.forEach((r, i) => pix.set(r.pixels as Float32Array, i * 3 * S * S));
      const t = encoder.encodeImages(pix); // (n, D)
      const host = t.toArray() as Float32Array;
      t.dispose();
      ok.forEach((r, i) => (r.embedding = host.slice(i * D, (i + 1) * D)));
    }
    for (const r of batch) yield { index: r.index, image: r.image, embedding: r.embedding, error: r.error };
    options.onProgress?.(Math.min(start + batchSize, images.length), images.length);
  }
}

// ---- sharding ----

export interface Shard {
  index: number;
  count: number;
}

/** "i/N" (0-based i) -> a shard; UserError otherwise. */
export function parseShard(s: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(s.trim());
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index >= count)
    throw new UserError(`--shard must be i/N with 0 <= i < N (e.g. 0/4 for the first of four), got "${s}"`);
  return { index, count };
}

/** The contiguous slice [start, end) of `n` inputs that shard i of N takes (shards concatenate in order). */
export function shardRange(n: number, shard: Shard): [number, number] {
  return [Math.floor((shard.index * n) / shard.count), Math.floor(((shard.index + 1) * n) / shard.count)];
}

// ---- captions ----

export interface CaptionRecord {
  image_id: number | string;
  caption: string;
}

/** Read a captions file (any format of data/captions.ts) as entries to pair. */
export async function readCaptions(
  file: string,
  opts: { splits?: readonly string[] } = {},
): Promise<CaptionEntry[]> {
  return (await readCaptionsFile(file, opts)).entries;
}

/**
 * Sidecar records for the extracted rows: each caption whose image file is among `rows` (by file name only,
 * see data/captions.ts) with that row's index, in caption-file order; `unmatched` counts the captions that
 * name no row (or several).
 */
export function matchCaptions(
  captions: readonly CaptionEntry[],
  rows: readonly string[],
): { records: Array<CaptionRecord & { embedding: number }>; unmatched: number } {
  const p = pairCaptions(captions, rows);
  return { records: p.records, unmatched: p.unmatchedCaptions + p.ambiguous };
}

// ---- writing ----

export interface EmbeddingsMetadata {
  /** The CLIP model (hub id or directory). */
  model: string;
  /** Image paths of the rows, in order. */
  inputs: readonly string[];
  shard?: Shard;
  /** Index of this file's first row among all shards' inputs. */
  rowOffset?: number;
  /** Digest of (model, every input of this run) that a re-run compares to know the file is complete. */
  inputsDigest?: string;
}

export const PREPROCESSING_DESCRIPTION =
  'RGB; resize short side to {size} (PIL bicubic, antialiased); center crop {size}; ' +
  'normalize mean (0.48145466, 0.4578275, 0.40821073) std (0.26862954, 0.26130258, 0.27577711); ' +
  'embedding = visual_projection(pooled), unnormalized';

/** Write `clip_embedding` [N, D] with metadata atomically (temp file + rename). */
export async function writeEmbeddings(
  out: string,
  rows: Float32Array,
  dim: number,
  meta: EmbeddingsMetadata,
  imageSize = 224,
): Promise<void> {
  const n = dim === 0 ? 0 : rows.length / dim;
  const metadata: Record<string, string> = {
    format: 'clipcap-embeddings/1',
    model: meta.model,
    preprocessing: PREPROCESSING_DESCRIPTION.replaceAll('{size}', String(imageSize)),
    inputs: JSON.stringify(meta.inputs),
    rows: String(n),
    dim: String(dim),
  };
  if (meta.shard) metadata.shard = `${meta.shard.index}/${meta.shard.count}`;
  if (meta.rowOffset !== undefined) metadata.row_offset = String(meta.rowOffset);
  if (meta.inputsDigest !== undefined) metadata.inputs_digest = meta.inputsDigest;
  await saveSafetensors(out, { [EMBEDDING_TENSOR]: { shape: [n, dim], data: rows } }, metadata);
}

export async function writeCaptionsSidecar(
  out: string,
  records: ReadonlyArray<CaptionRecord & { embedding: number }>,
): Promise<string> {
  const p = captionsSidecarPath(out);
  await writeFileAtomic(p, records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''));
  return p;
}
