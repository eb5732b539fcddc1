/**
 * What `clipcap extract` does once its inputs are known: CLIP embeddings of the images into one safetensors file,
 * resumably (rows are appended to FILE.partial as batches finish, with FILE.partial.json recording how far the
 * run got, so a killed run continues where it stopped), skipping the work when the output is already complete for
 * the same inputs and model. The CLI (cli/commands/extract.ts) and `clipcap bench extract` both call it, so the
 * bench times the command's own code path.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';
import { loadSafetensors } from '../weights/safetensors.js';
import { extractEmbeddings, writeEmbeddings, type Shard } from './extract.js';
import type { ImageEncoder } from './parts.js';

export interface ExtractToFileOptions {
  /** The output .safetensors file. */
  out: string;
  /** The CLIP model as the file records it (with the inputs, it keys completeness and resumption). */
  model: string;
  /** Loads CLIP; called only when there is work to do. The encoder is disposed once the rows are computed. */
  loadEncoder: () => Promise<ImageEncoder>;
  /** Images per CLIP batch (also the rows per flush of FILE.partial). */
  batchSize: number;
  shard?: Shard;
  /** Index of the first input among all shards' inputs (recorded with --shard). */
  rowOffset?: number;
  limitInputPixels?: number;
  applyExif?: boolean;
  /** Inputs done so far (resumed ones included) of `total`; first called once CLIP has loaded. */
  onProgress?: (done: number, total: number) => void;
  /** A line for the user (resumption, an image that failed). */
  log?: (line: string) => void;
}

export type ExtractToFileResult =
  /** The output was already complete for these inputs and model: nothing was done. */
  | { complete: true; rows: string[] }
  /** Written: the images of the rows in order, the inputs that failed (left out), the embedding width. */
  | { complete: false; rows: string[]; failed: string[]; dim: number };

/** FILE.partial.json: how far a run got. */
interface PartialState {
  key: string;
  dim: number;
  /** Inputs processed (rows written + failures). */
  done: number;
  rows: string[];
  failed: string[];
}

async function readPartial(file: string, key: string): Promise<PartialState | undefined> {
  try {
    const p = JSON.parse(await fs.readFile(file, 'utf8')) as PartialState;
    return p.key === key && Array.isArray(p.rows) && Number.isInteger(p.done) ? p : undefined;
  } catch {
    return undefined;
  }
}

/** Row images of an existing output, when it is complete for exactly these inputs and model. */
async function completeOutput(out: string, key: string): Promise<string[] | undefined> {
  try {
    const f = await loadSafetensors(out);
    try {
      if (f.metadata.inputs_digest !== key) return undefined;
      return JSON.parse(f.metadata.inputs) as string[];
    } finally {
      await f.close();
    }
  } catch {
    return undefined;
  }
}

/** CLIP embeddings of `inputs` (image paths, in row order) into `o.out` (see the module comment). */
export async function extractToFile(
  inputs: readonly string[],
  o: ExtractToFileOptions,
): Promise<ExtractToFileResult> {
  const key = `sha256:${createHash('sha256')
    .update(JSON.stringify({ model: o.model, inputs: inputs.map((p) => path.resolve(p)) }))
    .digest('hex')}`;
  const done = await completeOutput(o.out, key);
  if (done) return { complete: true, rows: done };

  const partialData = `${o.out}.partial`;
  const partialState = `${o.out}.partial.json`;
  const encoder = await o.loadEncoder();
  const D = encoder.projectionDim;
  let state = await readPartial(partialState, key);
  if (state && state.dim !== D) state = undefined;
  if (state) o.log?.(`resuming ${o.out}: ${state.done} of ${inputs.length} inputs were done`);
  const st: PartialState = state ?? { key, dim: D, done: 0, rows: [], failed: [] };
  await fs.mkdir(path.dirname(path.resolve(o.out)), { recursive: true });
  const fh = await fs.open(partialData, state ? 'r+' : 'w');
  try {
    // Rows past the recorded count belong to a batch that was being written when the run died.
    await fh.truncate(st.rows.length * D * 4);
    let pos = st.rows.length * D * 4;
    const resumed = st.done; // flushes advance st.done; progress counts from where this run started
    o.onProgress?.(resumed, inputs.length);
    let pending: Float32Array[] = [];
    const flush = async (processed: number): Promise<void> => {
      for (const r of pending) {
        await fh.write(new Uint8Array(r.buffer, r.byteOffset, r.byteLength), 0, r.byteLength, pos);
        pos += r.byteLength;
      }
      pending = [];
      await fh.sync();
      st.done = processed;
      await writeFileAtomic(partialState, JSON.stringify(st));
    };
    try {
      for await (const r of extractEmbeddings(encoder, inputs.slice(st.done), {
        batchSize: o.batchSize,
        limitInputPixels: o.limitInputPixels,
        applyExif: o.applyExif,
        onProgress: (d) => o.onProgress?.(resumed + d, inputs.length),
      })) {
        if (r.embedding) {
          pending.push(r.embedding);
          st.rows.push(r.image);
        } else {
          o.log?.(r.error ?? `${r.image}: failed`);
          st.failed.push(r.image);
        }
        if ((st.rows.length + st.failed.length) % o.batchSize === 0)
          await flush(st.rows.length + st.failed.length);
      }
      await flush(st.rows.length + st.failed.length);
    } finally {
      encoder.dispose();
    }
  } finally {
    await fh.close();
  }
  const buf = await fs.readFile(partialData);
  const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
  await writeEmbeddings(
    o.out,
    data,
    D,
    { model: o.model, inputs: st.rows, shard: o.shard, rowOffset: o.rowOffset, inputsDigest: key },
    encoder.imageSize,
  );
  await fs.rm(partialData, { force: true });
  await fs.rm(partialState, { force: true });
  return { complete: false, rows: st.rows, failed: st.failed, dim: D };
}
