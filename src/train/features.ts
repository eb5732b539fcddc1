/**
 * CLIP feature rows for training, read where they are: a `clipcap extract` file's f32 `clip_embedding` stays on
 * disk and each batch reads its rows (a few KB per step with positioned reads), so a store of millions of rows
 * costs no memory for its features; pickles (parse_coco.py) and f16/bf16 files are held in memory.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { UserError } from '../util/errors.js';

export interface FeatureStore {
  readonly rows: number;
  readonly dim: number;
  /** Copy row `r` (D floats) into `out` at element offset `at`. */
  readRow(r: number, out: Float32Array, at: number): void;
  /** Release file handles. */
  close(): void;
}

/** Rows held in one (rows, D) array. */
export function memoryFeatures(data: Float32Array, rows: number, dim: number): FeatureStore {
  return {
    rows,
    dim,
    readRow: (r, out, at) => out.set(data.subarray(r * dim, (r + 1) * dim), at),
    close: () => undefined,
  };
}

/** The f32 (rows, D) matrix at byte `offset` of `file`, read row by row on demand. */
export function fileFeatures(file: string, offset: number, rows: number, dim: number): FeatureStore {
  const fd = openSync(file, 'r');
  const buf = new Float32Array(dim);
  const bytes = new Uint8Array(buf.buffer);
  let open = true;
  return {
    rows,
    dim,
    readRow(r, out, at) {
      const n = readSync(fd, bytes, 0, bytes.length, offset + r * dim * 4);
      if (n !== bytes.length) throw new UserError(`${file}: row ${r} is cut short (the file changed?)`);
      out.set(buf, at);
    },
    close() {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/** Several stores one after the other (shards): row numbers continue across them. */
export function concatFeatures(parts: readonly FeatureStore[]): FeatureStore {
  if (parts.length === 1) return parts[0];
  const starts: number[] = [];
  let rows = 0;
  for (const p of parts) {
    starts.push(rows);
    rows += p.rows;
  }
  const dim = parts[0]?.dim ?? 0;
  return {
    rows,
    dim,
    readRow(r, out, at) {
      // Binary search for the part holding row r.
      let lo = 0;
      let hi = parts.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= r) lo = mid;
        else hi = mid - 1;
      }
      parts[lo].readRow(r - starts[lo], out, at);
    },
    close: () => parts.forEach((p) => p.close()),
  };
}

/** NaN or infinite features would train into a NaN checkpoint: refuse them, naming the row. */
export function checkFiniteRows(data: Float32Array, dim: number, file: string, firstRow = 0): void {
  for (let i = 0; i < data.length; i++)
    if (!Number.isFinite(data[i])) {
      const row = Math.floor(i / dim);
      throw new UserError(
        `${file}: embedding row ${firstRow + row} holds ${data[i]} (column ${i - row * dim}); re-extract that image or remove the row`,
      );
    }
}

/** Check every row of an on-disk store, reading it in chunks (bounded memory). */
export function checkFiniteFile(file: string, offset: number, rows: number, dim: number): void {
  const chunkRows = Math.max(1, Math.floor((4 << 20) / (dim * 4)));
  const buf = new Float32Array(chunkRows * dim);
  const bytes = new Uint8Array(buf.buffer);
  const fd = openSync(file, 'r');
  try {
    for (let r = 0; r < rows; r += chunkRows) {
      const n = Math.min(chunkRows, rows - r);
      const len = n * dim * 4;
      if (readSync(fd, bytes, 0, len, offset + r * dim * 4) !== len)
        throw new UserError(`${file}: shorter than its header says; re-extract it`);
      checkFiniteRows(buf.subarray(0, n * dim), dim, file, r);
    }
  } finally {
    closeSync(fd);
  }
}
