/**
 * Training data as the official train.py's ClipCocoDataset builds it (DESIGN.md "Training input"):
 * each caption -> GPT-2 BPE ids (no BOS/EOS), right-padded with 0 (or truncated) to
 * max_seq_len = min(int(mean + 10·std), max) of all caption lengths (torch's unbiased std), with the
 * attention mask ones(K) ++ (token is real), and the CLIP embedding row the caption belongs to.
 *
 * Sources: the official parse_coco.py pickle ({clip_embedding [N, D], captions: [{caption, clip_embedding}]})
 * or a `clipcap extract` safetensors file with its FILE.captions.jsonl sidecar ({caption, embedding}).
 */
import { promises as fs } from 'node:fs';
import { captionsSidecarPath } from '../pipeline/extract.js';
import { readEmbeddings } from '../pipeline/embeddings.js';
import { UserError } from '../util/errors.js';
import { isHostTensor, loadPickle, type PickleValue } from '../weights/torch.js';

/** The caption side of a training set before tokenization. */
export interface RawTrainingData {
  /** CLIP embeddings (N, D) row-major. */
  embeddings: Float32Array;
  rows: number;
  dim: number;
  /** One entry per caption: its text and the embedding row it describes. */
  captions: { caption: string; row: number }[];
}

export interface TrainingSet {
  embeddings: Float32Array;
  rows: number;
  dim: number;
  /** Each caption's full token ids (before padding / truncation). */
  tokens: number[][];
  /** Each caption's embedding row. */
  captionRow: Int32Array;
  /** Padded length T of every caption. */
  maxSeqLen: number;
}

/** A minimal tokenizer (Gpt2Tokenizer fits). */
export interface Tokenizer {
  encode(text: string): number[];
}

/**
 * The official max_seq_len: min(int(mean + 10·std), max) over the token lengths, std with Bessel's
 * correction as torch.Tensor.std() computes it (NaN for a single caption: int(nan) fails in Python, so we
 * use the max, as any length works for one caption).
 */
export function officialMaxSeqLen(lengths: readonly number[]): number {
  if (lengths.length === 0) throw new Error('no captions');
  const n = lengths.length;
  const max = Math.max(...lengths);
  if (n < 2) return max;
  // train.py does this on a float32 tensor: the mean is a float32 (the integer sum is exact below 2^24),
  // the variance is accumulated in double (torch CPU's Welford) and rounded to float32 with its sqrt, and
  // mean + std * 10 is rounded to float32 at each step before int() truncates it.
  const mean = lengths.reduce((a, x) => a + x, 0) / n;
  const variance = lengths.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1);
  const f = Math.fround;
  const bound = f(f(mean) + f(f(Math.sqrt(variance)) * 10));
  return Math.min(Math.trunc(bound), max);
}

/**
 * ClipCocoDataset.pad_tokens: ids (T) padded with 0 / truncated to `maxSeqLen`, and the mask
 * ones(K) ++ (position holds a real token). Writes into `tokens` / `mask` at row `r`.
 */
export function padInto(
  ids: readonly number[],
  maxSeqLen: number,
  prefixLength: number,
  tokens: Int32Array,
  mask: Float32Array,
  r: number,
): void {
  const t = maxSeqLen;
  const m = prefixLength + t;
  mask.fill(1, r * m, r * m + prefixLength);
  for (let i = 0; i < t; i++) {
    const real = i < ids.length;
    tokens[r * t + i] = real ? ids[i] : 0;
    mask[r * m + prefixLength + i] = real ? 1 : 0;
  }
}

export interface TrainBatch {
  /** (B, D) */
  prefix: Float32Array;
  /** (B, T) */
  tokens: Int32Array;
  length: number;
  /** (B, K + T) */
  mask: Float32Array;
}

/** The batch of captions `indices` (normalize_prefix is applied by the model, not here). */
export function makeBatch(set: TrainingSet, indices: readonly number[], prefixLength: number): TrainBatch {
  const b = indices.length;
  const t = set.maxSeqLen;
  const d = set.dim;
  const prefix = new Float32Array(b * d);
  const tokens = new Int32Array(b * t);
  const mask = new Float32Array(b * (prefixLength + t));
  indices.forEach((c, r) => {
    const row = set.captionRow[c];
    prefix.set(set.embeddings.subarray(row * d, (row + 1) * d), r * d);
    padInto(set.tokens[c], t, prefixLength, tokens, mask, r);
  });
  return { prefix, tokens, length: t, mask };
}

/** A seeded permutation of 0..n-1 (Fisher-Yates over mulberry32). */
export function shuffled(n: number, next: () => number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** mulberry32: uniform floats in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function tokenize(raw: RawTrainingData, tok: Tokenizer, file: string): TrainingSet {
  if (raw.captions.length === 0) throw new UserError(`${file}: holds no captions; nothing to train on`);
  const tokens = raw.captions.map((c) => tok.encode(c.caption));
  const empty = tokens.findIndex((t) => t.length === 0);
  if (empty >= 0) throw new UserError(`${file}: caption ${empty} is empty; remove it from the data`);
  return {
    embeddings: raw.embeddings,
    rows: raw.rows,
    dim: raw.dim,
    tokens,
    captionRow: Int32Array.from(raw.captions.map((c) => c.row)),
    maxSeqLen: officialMaxSeqLen(tokens.map((t) => t.length)),
  };
}

function isObject(v: unknown): v is Record<string, PickleValue> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v);
}

function rowIndex(v: unknown, rows: number, file: string, where: string): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n >= rows)
    throw new UserError(`${file}: ${where} must be an embedding row in 0..${rows - 1}, got ${String(v)}`);
  return n;
}

/** The official parse_coco.py pickle. */
export async function readOfficialPickle(file: string): Promise<RawTrainingData> {
  let v: PickleValue;
  try {
    v = await loadPickle(file);
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(
      `${file}: not a readable pickle (${(e as Error).message}); give parse_coco.py's output`,
    );
  }
  const hint = 'expected parse_coco.py output {"clip_embedding": [N, D], "captions": [...]}';
  if (!isObject(v)) throw new UserError(`${file}: not a dict; ${hint}`);
  const emb = v.clip_embedding;
  if (!isHostTensor(emb) || emb.shape.length !== 2)
    throw new UserError(`${file}: no "clip_embedding" [N, D] tensor; ${hint}`);
  if (!Array.isArray(v.captions)) throw new UserError(`${file}: no "captions" list; ${hint}`);
  const [rows, dim] = emb.shape;
  // f16 / bf16 tensors arrive converted to float32 (as GPU extraction writes them).
  if (!(emb.data instanceof Float32Array))
    throw new UserError(`${file}: "clip_embedding" is ${emb.dtype}, not a float tensor; ${hint}`);
  const data = emb.data;
  const captions = v.captions.map((c, i) => {
    if (!isObject(c) || typeof c.caption !== 'string')
      throw new UserError(`${file}: captions[${i}] has no "caption" string; ${hint}`);
    return {
      caption: c.caption,
      row: rowIndex(c.clip_embedding, rows, file, `captions[${i}].clip_embedding`),
    };
  });
  return { embeddings: data, rows, dim, captions };
}

/** A `clipcap extract` file and its FILE.captions.jsonl sidecar. */
export async function readExtracted(file: string): Promise<RawTrainingData> {
  const e = await readEmbeddings(file);
  const side = captionsSidecarPath(file);
  let text: string;
  try {
    text = await fs.readFile(side, 'utf8');
  } catch {
    throw new UserError(
      `${file}: no captions sidecar ${side}; run clipcap extract with --captions to write it`,
    );
  }
  const captions = text
    .split('\n')
    .map((l, i) => [l.trim(), i] as const)
    .filter(([l]) => l !== '')
    .map(([l, i]) => {
      let o: unknown;
      try {
        o = JSON.parse(l);
      } catch {
        throw new UserError(`${side}: line ${i + 1} is not JSON`);
      }
      if (!isObject(o) || typeof o.caption !== 'string')
        throw new UserError(`${side}: line ${i + 1} has no "caption" string`);
      return { caption: o.caption, row: rowIndex(o.embedding, e.rows, side, `line ${i + 1} "embedding"`) };
    });
  return { embeddings: e.data, rows: e.rows, dim: e.dim, captions };
}

/** Read training data by extension: .pkl (parse_coco.py) or .safetensors (+ sidecar). */
export async function readTrainingData(file: string): Promise<RawTrainingData> {
  const st = await fs.stat(file).catch(() => null);
  if (!st?.isFile())
    throw new UserError(
      `${file}: no such file; give a .pkl from parse_coco.py or a .safetensors from clipcap extract`,
    );
  if (/\.safetensors$/i.test(file)) return readExtracted(file);
  if (/\.(pkl|pickle)$/i.test(file)) return readOfficialPickle(file);
  throw new UserError(
    `${file}: unknown data format; give a .pkl from parse_coco.py or a .safetensors from clipcap extract`,
  );
}
