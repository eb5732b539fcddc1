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
import { EMBEDDING_TENSOR, captionsSidecarPath, readEmbeddings } from '../data/embeddings.js';
import { UserError } from '../util/errors.js';
import { loadSafetensors } from '../weights/safetensors.js';
import {
  checkFiniteFile,
  checkFiniteRows,
  concatFeatures,
  fileFeatures,
  memoryFeatures,
  type FeatureStore,
} from './features.js';
import { deriveSeed, mulberry32, shuffled } from '../util/random.js';
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

/**
 * Tokenized captions, compact: one Int32Array of every caption's ids and their offsets (no JS object per
 * caption, so millions of captions cost a few bytes each beyond their tokens).
 */
export interface TrainingSet {
  /** The CLIP embedding rows (on disk or in memory). */
  features: FeatureStore;
  rows: number;
  dim: number;
  /** Number of captions. */
  count: number;
  /** Every caption's full token ids (before padding / truncation), concatenated. */
  tokenIds: Int32Array;
  /** Caption c's ids are tokenIds[tokenOffsets[c] .. tokenOffsets[c + 1]). */
  tokenOffsets: Int32Array;
  /** Each caption's embedding row. */
  captionRow: Int32Array;
  /** Padded length T of every caption. */
  maxSeqLen: number;
}

/** A minimal tokenizer (Gpt2Tokenizer fits). */
export interface Tokenizer {
  encode(text: string): number[];
}

/** Caption c's token ids (a view). */
export function captionIds(set: TrainingSet, c: number): Int32Array {
  return set.tokenIds.subarray(set.tokenOffsets[c], set.tokenOffsets[c + 1]);
}

/**
 * The official max_seq_len: min(int(mean + 10·std), max) over the token lengths, std with Bessel's
 * correction as torch.Tensor.std() computes it (NaN for a single caption: int(nan) fails in Python, so we
 * use the max, as any length works for one caption).
 */
export function officialMaxSeqLen(lengths: ArrayLike<number>): number {
  const n = lengths.length;
  if (n === 0) throw new Error('no captions');
  let max = 0;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    max = Math.max(max, lengths[i]);
    sum += lengths[i];
  }
  if (n < 2) return max;
  // train.py does this on a float32 tensor: the mean is a float32 (the integer sum is exact below 2^24),
  // the variance is accumulated in double (torch CPU's Welford) and rounded to float32 with its sqrt, and
  // mean + std * 10 is rounded to float32 at each step before int() truncates it.
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) sq += (lengths[i] - mean) ** 2;
  const variance = sq / (n - 1);
  const f = Math.fround;
  const bound = f(f(mean) + f(f(Math.sqrt(variance)) * 10));
  return Math.min(Math.trunc(bound), max);
}

/**
 * ClipCocoDataset.pad_tokens: ids (T) padded with 0 / truncated to `maxSeqLen`, and the mask
 * ones(K) ++ (position holds a real token). Writes into `tokens` / `mask` at row `r`.
 */
export function padInto(
  ids: ArrayLike<number>,
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
export function makeBatch(set: TrainingSet, indices: ArrayLike<number>, prefixLength: number): TrainBatch {
  const b = indices.length;
  const t = set.maxSeqLen;
  const d = set.dim;
  const prefix = new Float32Array(b * d);
  const tokens = new Int32Array(b * t);
  const mask = new Float32Array(b * (prefixLength + t));
  for (let r = 0; r < b; r++) {
    const c = indices[r];
    const row = set.captionRow[c];
    set.features.readRow(row, prefix, r * d);
    padInto(captionIds(set, c), t, prefixLength, tokens, mask, r);
  }
  return { prefix, tokens, length: t, mask };
}

/** A growable Int32Array (captions are appended one by one while a file streams in). */
class IntBuffer {
  data = new Int32Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.data.length) {
      const next = new Int32Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = v;
  }
  pushAll(vs: readonly number[]): void {
    for (const v of vs) this.push(v);
  }
  done(): Int32Array {
    return this.data.slice(0, this.length);
  }
}

/**
 * Builds a TrainingSet caption by caption: each caption is tokenized as it arrives and only its ids are
 * kept, so a store of millions of captions is never held as strings or objects.
 */
export class TrainingSetBuilder {
  private ids = new IntBuffer();
  private offsets = new IntBuffer();
  private rowsOf = new IntBuffer();
  private parts: FeatureStore[] = [];
  private rowCount = 0;
  private dimension = -1;

  constructor(private readonly tok: Tokenizer) {
    this.offsets.push(0);
  }

  get rows(): number {
    return this.rowCount;
  }

  /** Add a file's embeddings (rows, D) held in memory; returns the row offset of its captions' rows. */
  addEmbeddings(data: Float32Array, rows: number, dim: number, file: string): number {
    checkFiniteRows(data, dim, file);
    return this.addFeatures(memoryFeatures(data, rows, dim), file);
  }

  /** Add a file's feature rows (already checked); returns the row offset of its captions' rows. */
  addFeatures(store: FeatureStore, file: string): number {
    if (this.dimension >= 0 && store.dim !== this.dimension) {
      store.close();
      throw new UserError(
        `${file}: its embeddings are ${store.dim}-d but the data before it are ${this.dimension}-d; give files from one CLIP model`,
      );
    }
    this.dimension = store.dim;
    this.parts.push(store);
    const offset = this.rowCount;
    this.rowCount += store.rows;
    return offset;
  }

  /** Close the stores added so far (when building fails). */
  close(): void {
    for (const p of this.parts) p.close();
    this.parts = [];
  }

  /** Add caption `text` of embedding row `row` (absolute, after addEmbeddings' offset). */
  addCaption(text: string, row: number, where: string): void {
    const ids = this.tok.encode(text);
    if (ids.length === 0) throw new UserError(`${where}: the caption is empty; remove it from the data`);
    this.ids.pushAll(ids);
    this.offsets.push(this.ids.length);
    this.rowsOf.push(row);
  }

  get count(): number {
    return this.rowsOf.length;
  }

  /** The set; `maxSeqLen` defaults to the official rule over these captions. */
  build(what: string, maxSeqLen?: number): TrainingSet {
    const count = this.rowsOf.length;
    if (count === 0) {
      this.close();
      throw new UserError(`${what}: holds no captions; nothing to train on`);
    }
    const tokenOffsets = this.offsets.done();
    const lengths = new Int32Array(count);
    for (let c = 0; c < count; c++) lengths[c] = tokenOffsets[c + 1] - tokenOffsets[c];
    const features = concatFeatures(this.parts);
    this.parts = [];
    return {
      features,
      rows: this.rowCount,
      dim: this.dimension,
      count,
      tokenIds: this.ids.done(),
      tokenOffsets,
      captionRow: this.rowsOf.done(),
      maxSeqLen: maxSeqLen ?? officialMaxSeqLen(lengths),
    };
  }
}

/** Tokenize raw data (one file read by readTrainingData) into a set. */
export function tokenize(raw: RawTrainingData, tok: Tokenizer, file: string): TrainingSet {
  const b = new TrainingSetBuilder(tok);
  b.addEmbeddings(raw.embeddings, raw.rows, raw.dim, file);
  raw.captions.forEach((c, i) => b.addCaption(c.caption, c.row, `${file}: caption ${i}`));
  return b.build(file);
}

/**
 * Read training files into a builder, streaming captions sidecars line by line. Returns the CLIP models the
 * files name in their metadata (extract writes it; parse_coco.py pickles name none).
 */
export async function readTrainingFiles(
  files: readonly string[],
  builder: TrainingSetBuilder,
): Promise<{ clipModels: string[] }> {
  const clipModels: string[] = [];
  for (const file of files) {
    await checkDataFile(file);
    if (/\.safetensors$/i.test(file)) {
      const loc = await f32Location(file);
      if (loc.model !== undefined && !clipModels.includes(loc.model)) clipModels.push(loc.model);
      let offset: number;
      if (loc.offset !== undefined) {
        // f32 rows stay on disk: checked in chunks now, read per batch while training.
        checkFiniteFile(file, loc.offset, loc.rows, loc.dim);
        offset = builder.addFeatures(fileFeatures(file, loc.offset, loc.rows, loc.dim), file);
      } else {
        const e = await readEmbeddings(file);
        offset = builder.addEmbeddings(e.data, e.rows, e.dim, file);
      }
      await streamSidecar(file, loc.rows, (caption, row, where) =>
        builder.addCaption(caption, offset + row, where),
      );
    } else {
      const raw = await readOfficialPickle(file);
      const offset = builder.addEmbeddings(raw.embeddings, raw.rows, raw.dim, file);
      raw.captions.forEach((c, i) =>
        builder.addCaption(c.caption, offset + c.row, `${file}: captions[${i}]`),
      );
    }
  }
  return { clipModels };
}

/**
 * Where a `clipcap extract` file keeps `clip_embedding`: rows, D, the CLIP model of its metadata and, for f32
 * data, the absolute byte offset of row 0 (undefined for f16/bf16, which are converted in memory).
 */
async function f32Location(
  file: string,
): Promise<{ rows: number; dim: number; model?: string; offset?: number }> {
  const f = await loadSafetensors(file);
  try {
    if (!f.has(EMBEDDING_TENSOR))
      throw new UserError(
        `${file}: no tensor "${EMBEDDING_TENSOR}" (found: ${f.keys().slice(0, 5).join(', ') || 'none'}); write one with clipcap extract`,
      );
    const info = f.info(EMBEDDING_TENSOR);
    if (info.shape.length !== 2 || !['F32', 'F16', 'BF16'].includes(info.fileDtype))
      throw new UserError(
        `${file}: "${EMBEDDING_TENSOR}" must be a float [N, D] matrix, got ${info.fileDtype} [${info.shape.join(', ')}]`,
      );
    const [rows, dim] = info.shape;
    let offset: number | undefined;
    if (info.fileDtype === 'F32') {
      const fh = await fs.open(file, 'r');
      try {
        const head = Buffer.alloc(8);
        await fh.read(head, 0, 8, 0);
        offset = 8 + Number(head.readBigUInt64LE(0)) + info.dataOffsets[0];
      } finally {
        await fh.close();
      }
    }
    return { rows, dim, model: f.metadata.model, offset };
  } finally {
    await f.close();
  }
}

async function streamSidecar(
  file: string,
  rows: number,
  add: (caption: string, row: number, where: string) => void,
): Promise<void> {
  const side = captionsSidecarPath(file);
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(side, 'r');
  } catch {
    throw new UserError(
      `${file}: no captions sidecar ${side}; run clipcap extract with --captions to write it`,
    );
  }
  try {
    let n = 0;
    for await (const line of fh.readLines({ encoding: 'utf8' })) {
      n++;
      const l = line.trim();
      if (l === '') continue;
      const { caption, row } = parseSidecarLine(l, n, side, rows);
      add(caption, row, `${side}: line ${n}`);
    }
  } finally {
    await fh.close();
  }
}

function parseSidecarLine(
  l: string,
  n: number,
  side: string,
  rows: number,
): { caption: string; row: number } {
  let o: unknown;
  try {
    o = JSON.parse(l);
  } catch {
    throw new UserError(`${side}: line ${n} is not JSON`);
  }
  if (!isObject(o) || typeof o.caption !== 'string')
    throw new UserError(`${side}: line ${n} has no "caption" string`);
  return { caption: o.caption, row: rowIndex(o.embedding, rows, side, `line ${n} "embedding"`) };
}

async function checkDataFile(file: string): Promise<void> {
  const st = await fs.stat(file).catch(() => null);
  if (!st?.isFile())
    throw new UserError(
      `${file}: no such file; give a .pkl from parse_coco.py or a .safetensors from clipcap extract`,
    );
  if (!/\.(safetensors|pkl|pickle)$/i.test(file))
    throw new UserError(
      `${file}: unknown data format; give a .pkl from parse_coco.py or a .safetensors from clipcap extract`,
    );
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
  const captions: { caption: string; row: number }[] = [];
  text.split('\n').forEach((line, i) => {
    const l = line.trim();
    if (l !== '') captions.push(parseSidecarLine(l, i + 1, side, e.rows));
  });
  return { embeddings: e.data, rows: e.rows, dim: e.dim, captions };
}

/** Read one training file by extension: .pkl (parse_coco.py) or .safetensors (+ sidecar). */
export async function readTrainingData(file: string): Promise<RawTrainingData> {
  await checkDataFile(file);
  return /\.safetensors$/i.test(file) ? readExtracted(file) : readOfficialPickle(file);
}

/** Split a set by embedding row: a seeded `fraction` of the images (with all their captions) is held out. */
export function splitByImage(
  set: TrainingSet,
  fraction: number,
  seed: number,
): { train: TrainingSet; val: TrainingSet } {
  const nVal = Math.round(set.rows * fraction);
  if (nVal < 1 || nVal >= set.rows)
    throw new UserError(
      `--val-fraction ${fraction} of ${set.rows} images holds out ${nVal}; give a fraction that leaves images on both sides`,
    );
  const order = shuffled(set.rows, mulberry32(deriveSeed(seed, 0x5641)));
  const isVal = new Uint8Array(set.rows);
  for (let i = 0; i < nVal; i++) isVal[order[i]] = 1;
  const pick = (want: number): TrainingSet => {
    const idx: number[] = [];
    for (let c = 0; c < set.count; c++) if (isVal[set.captionRow[c]] === want) idx.push(c);
    const offsets = new Int32Array(idx.length + 1);
    let total = 0;
    idx.forEach((c, i) => {
      total += set.tokenOffsets[c + 1] - set.tokenOffsets[c];
      offsets[i + 1] = total;
    });
    const ids = new Int32Array(total);
    idx.forEach((c, i) =>
      ids.set(set.tokenIds.subarray(set.tokenOffsets[c], set.tokenOffsets[c + 1]), offsets[i]),
    );
    return {
      ...set,
      count: idx.length,
      tokenIds: ids,
      tokenOffsets: offsets,
      captionRow: Int32Array.from(idx, (c) => set.captionRow[c]),
    };
  };
  return { train: pick(0), val: pick(1) };
}
