/**
 * CLIP embedding files as `clipcap extract` writes them: safetensors with `clip_embedding` [N, D] (f32, or
 * f16/bf16 converted on load), rows in input order, the image paths in the `inputs` metadata. The official
 * parse_coco.py pickle ({"clip_embedding": [N, D], "captions": [{image_id, caption, clip_embedding: row}]})
 * is read too, its rows named by the COCO image ids of their captions.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { loadSafetensors } from '../weights/safetensors.js';
import { isHostTensor, loadPickle, type PickleValue } from '../weights/torch.js';
import { UserError } from '../util/errors.js';

export const EMBEDDING_TENSOR = 'clip_embedding';

/** The captions sidecar of an embeddings file: FILE.safetensors -> FILE.captions.jsonl. */
export function captionsSidecarPath(out: string): string {
  return out.replace(/\.safetensors$/i, '') + '.captions.jsonl';
}

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

/** Embeddings to caption, with what names each row: an image path (clipcap extract) or a COCO image id (pickle). */
export interface CaptionEmbeddings {
  /** One (D) vector per row (views into one buffer). */
  rows: Float32Array[];
  dim: number;
  /** The image path of each row, from the file's `inputs` metadata (clipcap extract files). */
  images?: string[];
  /** The COCO image id of each row, from the captions that point at it (parse_coco.py pickles). */
  imageIds?: Array<number | string | undefined>;
}

/** The `inputs` metadata of a clipcap extract file when it names every row, else undefined. */
function inputsOf(metadata: Readonly<Record<string, string>>, rows: number): string[] | undefined {
  const raw = metadata.inputs;
  if (raw === undefined) return undefined;
  try {
    const v: unknown = JSON.parse(raw);
    if (Array.isArray(v) && v.length === rows && v.every((x) => typeof x === 'string')) return v as string[];
  } catch {
    // unreadable metadata: rows stay unnamed
  }
  return undefined;
}

const isDict = (v: PickleValue | undefined): v is { [k: string]: PickleValue } =>
  typeof v === 'object' &&
  v !== null &&
  !Array.isArray(v) &&
  !(v instanceof Map) &&
  !(v instanceof Set) &&
  !(v instanceof Uint8Array) &&
  !isHostTensor(v);

/**
 * By content, not extension: a safetensors file has an 8-byte header length and then "{"; a pickle starts with
 * the PROTO opcode (0x80), a torch.save zip with "PK". Anything else goes to the safetensors reader, which
 * names the problem.
 */
async function looksLikePickle(path: string): Promise<boolean> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'r');
    const head = Buffer.alloc(9);
    const { bytesRead } = await fh.read(head, 0, 9, 0);
    if (bytesRead === 9 && head[8] === 0x7b) return false;
    return bytesRead >= 2 && (head[0] === 0x80 || (head[0] === 0x50 && head[1] === 0x4b));
  } catch {
    return false; // the safetensors reader reports a missing or unreadable file
  } finally {
    await fh?.close();
  }
}

/** The official parse_coco.py pickle: `clip_embedding` [N, D] and the image id of each row. */
async function readPickleEmbeddings(path: string): Promise<CaptionEmbeddings> {
  const hint = 'expected parse_coco.py output {"clip_embedding": [N, D], "captions": [...]}';
  const v = await loadPickle(path);
  if (!isDict(v)) throw new UserError(`${path}: not a dict; ${hint}`);
  const t = v[EMBEDDING_TENSOR];
  if (!isHostTensor(t) || t.shape.length !== 2 || !(t.data instanceof Float32Array))
    throw new UserError(`${path}: no float "${EMBEDDING_TENSOR}" [N, D] tensor; ${hint}`);
  const [n, dim] = t.shape;
  const data = t.data;
  const imageIds: Array<number | string | undefined> = new Array<undefined>(n).fill(undefined);
  if (Array.isArray(v.captions))
    for (const c of v.captions) {
      if (!isDict(c)) continue;
      const row = typeof c.clip_embedding === 'bigint' ? Number(c.clip_embedding) : c.clip_embedding;
      const id = typeof c.image_id === 'bigint' ? Number(c.image_id) : c.image_id;
      if (
        typeof row === 'number' &&
        Number.isInteger(row) &&
        row >= 0 &&
        row < n &&
        imageIds[row] === undefined
      )
        if (typeof id === 'number' || (typeof id === 'string' && id !== '')) imageIds[row] = id;
    }
  return {
    rows: Array.from({ length: n }, (_, i) => data.subarray(i * dim, (i + 1) * dim)),
    dim,
    imageIds: imageIds.some((x) => x !== undefined) ? imageIds : undefined,
  };
}

/**
 * Embeddings to caption from a clipcap extract safetensors file (rows named by their image paths) or an official
 * parse_coco.py pickle (`.pkl`, rows named by COCO image id).
 */
export async function readCaptionEmbeddings(path: string): Promise<CaptionEmbeddings> {
  if (await looksLikePickle(path)) return readPickleEmbeddings(path);
  const e = await readEmbeddings(path);
  return {
    rows: Array.from({ length: e.rows }, (_, i) => e.data.subarray(i * e.dim, (i + 1) * e.dim)),
    dim: e.dim,
    images: inputsOf(e.metadata, e.rows),
  };
}
