/**
 * safetensors reading and writing (https://github.com/huggingface/safetensors).
 *
 * Layout: u64 little-endian header length N, N bytes of UTF-8 JSON
 * `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}`
 * (padded with spaces), then the byte buffer the offsets index into.
 *
 * The reader is lazy: `loadSafetensors` reads and validates only the header and keeps the file open;
 * `tensor(name)` reads exactly that tensor's byte range. Validation follows the reference `validate()`
 * (Rust `tensor.rs`): header size cap, a JSON object, offsets contiguous from 0 without gaps or overlaps and
 * covering the whole buffer, each size equal to dtype bytes x prod(shape) with overflow checks.
 *
 * Host representation (see host.ts): F32/F16/BF16/F64 -> Float32Array; I32/I16/I8 -> Int32Array; I64 ->
 * Int32Array when every value fits in 32 bits, else BigInt64Array; U8/BOOL -> Uint8Array. Files may also
 * hold the reference's other dtypes (U16, U32, U64, F8_*): they validate, but reading one is a UserError.
 */
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { UserError } from '../util/errors.js';
import { quoted, safeText, shapeText } from '../util/text.js';
import { withAtomicPath } from '../util/atomic.js';
import type { FileDType, HostTensor, StateDict } from './host.js';
import { checkedNumel, dataBytes, decodeElements, DTYPE_BYTES } from './dtype.js';

/** The reference's MAX_HEADER_SIZE. */
export const MAX_HEADER_SIZE = 100_000_000;

/** safetensors dtype names -> bits per element (the reference's `Dtype::bitsize`). */
const ST_DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  F64: 64,
  I64: 64,
  U64: 64,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
};

/** The safetensors dtypes we can turn into host arrays. */
const ST_TO_FILE: Readonly<Record<string, FileDType>> = {
  F64: 'f64',
  F32: 'f32',
  F16: 'f16',
  BF16: 'bf16',
  I64: 'i64',
  I32: 'i32',
  I16: 'i16',
  I8: 'i8',
  U8: 'u8',
  BOOL: 'bool',
};

/** What the header says about one tensor. */
export interface SafetensorsInfo {
  /** The dtype as written in the file (F32, BF16, ...). */
  readonly fileDtype: string;
  /** The host dtype it loads as, or undefined when this loader cannot read it. */
  readonly dtype: FileDType | undefined;
  readonly shape: readonly number[];
  /** Byte range relative to the start of the data buffer. */
  readonly dataOffsets: readonly [number, number];
}

export interface SafetensorsFile {
  readonly path: string;
  /** `__metadata__` (string -> string), empty when absent. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor names in file (data offset) order. */
  keys(): string[];
  has(name: string): boolean;
  /** Header entry of a tensor; UserError when absent. */
  info(name: string): SafetensorsInfo;
  /** Read one tensor (only its byte range). */
  tensor(name: string): Promise<HostTensor>;
  /** Read every tensor, in file order. */
  readAll(): Promise<StateDict>;
  close(): Promise<void>;
}

interface ParsedHeader {
  metadata: Record<string, string>;
  /** In data offset order. */
  entries: Array<[string, SafetensorsInfo]>;
}

/** Own properties only: a dtype named "toString" or "__proto__" is unknown, not Object.prototype's. */
const hasOwn = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

/** A JSON value from the header, for a message: short and without control characters. */
function jsonText(v: unknown): string {
  if (Array.isArray(v)) return shapeText(v);
  if (typeof v === 'string') return quoted(v, 40);
  return safeText(JSON.stringify(v) ?? String(v), 40);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parse and validate a header. `headerBytes` is the JSON, `bufferLen` the size of the data that follows it.
 * Every error names `file` (and the tensor when one is at fault).
 */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  bufferLen: number,
  file: string,
): ParsedHeader {
  const bad = (what: string): UserError =>
    new UserError(
      `${file}: not a valid safetensors file: ${what} (re-export it, e.g. with safetensors.torch.save_file)`,
    );
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw bad('the header is not valid UTF-8');
  }
  // The reference requires the JSON to start with '{' (no leading whitespace).
  if (!text.startsWith('{')) throw bad('the header does not start with "{"');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw bad(`the header is not valid JSON (${safeText((e as Error).message, 100)})`);
  }
  if (!isObject(json)) throw bad('the header is not a JSON object');

  const metadata: Record<string, string> = {};
  const entries: Array<[string, SafetensorsInfo]> = [];
  for (const [name, raw] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isObject(raw)) throw bad('__metadata__ is not an object of strings');
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw bad(`__metadata__[${quoted(k, 60)}] is not a string`);
        Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: false });
      }
      continue;
    }
    const where = `tensor ${quoted(name, 80)}`;
    if (!isObject(raw)) throw bad(`${where} is not an object`);
    const dtype = hasOwn(raw, 'dtype') ? raw.dtype : undefined;
    const shape = hasOwn(raw, 'shape') ? raw.shape : undefined;
    const offsets = hasOwn(raw, 'data_offsets') ? raw.data_offsets : undefined;
    if (typeof dtype !== 'string' || !hasOwn(ST_DTYPE_BITS, dtype)) {
      throw bad(`${where} has an unknown dtype ${jsonText(dtype)}`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw bad(`${where} has an invalid shape ${jsonText(shape)}`);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
    ) {
      throw bad(`${where} has invalid data_offsets ${jsonText(offsets)}`);
    }
    entries.push([
      name,
      {
        fileDtype: dtype,
        dtype: hasOwn(ST_TO_FILE, dtype) ? ST_TO_FILE[dtype] : undefined,
        shape: shape as number[],
        dataOffsets: [offsets[0] as number, offsets[1] as number],
      },
    ]);
  }

  // The reference sorts by offsets and then demands each tensor start where the previous ended: this rules
  // out gaps, overlaps and (with the final check) out-of-bounds ranges in one pass.
  entries.sort(
    (a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0] || a[1].dataOffsets[1] - b[1].dataOffsets[1],
  );
  let start = 0;
  for (const [name, info] of entries) {
    const [s, e] = info.dataOffsets;
    const where = `tensor ${quoted(name, 80)}`;
    if (s !== start || e < s) {
      throw bad(
        `${where} has data_offsets [${s}, ${e}] but the previous tensor ends at ${start} (tensors must be contiguous and not overlap)`,
      );
    }
    if (e > bufferLen) {
      throw bad(
        `${where} has data_offsets [${s}, ${e}] past the end of the data (${bufferLen} bytes; truncated file?)`,
      );
    }
    const numel = checkedNumel(info.shape);
    const bits = numel === undefined ? undefined : numel * ST_DTYPE_BITS[info.fileDtype];
    if (bits === undefined || !Number.isSafeInteger(bits)) {
      throw bad(`${where} has a shape ${shapeText(info.shape)} whose size overflows`);
    }
    if (bits % 8 !== 0)
      throw bad(`${where}: ${info.fileDtype} x ${numel} elements is not a whole number of bytes`);
    if (e - s !== bits / 8) {
      throw bad(
        `${where} is ${info.fileDtype} ${shapeText(info.shape)} = ${bits / 8} bytes but its data_offsets span ${e - s}`,
      );
    }
    start = e;
  }
  if (start !== bufferLen) {
    throw bad(
      `the tensors cover ${start} bytes but the data is ${bufferLen} bytes (truncated or padded file)`,
    );
  }
  return { metadata, entries };
}

async function readExact(
  fh: FileHandle,
  length: number,
  position: number,
  file: string,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    // One read call is capped at 2 GiB; read in 1 GiB pieces.
    const want = Math.min(length - done, 1 << 30);
    const { bytesRead } = await fh.read(out, done, want, position + done);
    if (bytesRead === 0) throw new UserError(`${file}: unexpected end of file (truncated download?)`);
    done += bytesRead;
  }
  return out;
}

class SafetensorsReader implements SafetensorsFile {
  private readonly byName: Map<string, SafetensorsInfo>;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly dataStart: number,
    header: ParsedHeader,
  ) {
    this.metadata = header.metadata;
    this.byName = new Map(header.entries);
  }

  readonly metadata: Readonly<Record<string, string>>;

  keys(): string[] {
    return [...this.byName.keys()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): SafetensorsInfo {
    const info = this.byName.get(name);
    if (!info) throw new UserError(`${this.path}: no tensor named ${quoted(name, 80)}`);
    return info;
  }

  async tensor(name: string): Promise<HostTensor> {
    if (this.closed) throw new Error(`${this.path}: read after close()`);
    const info = this.info(name);
    if (info.dtype === undefined) {
      throw new UserError(
        `${this.path}: tensor ${quoted(name, 80)} has dtype ${info.fileDtype}, which clipcap cannot load (convert it to F32)`,
      );
    }
    const [s, e] = info.dataOffsets;
    const bytes = await readExact(this.fh, e - s, this.dataStart + s, this.path);
    const numel = (e - s) / DTYPE_BYTES[info.dtype];
    return { dtype: info.dtype, shape: [...info.shape], data: decodeElements(bytes, info.dtype, numel) };
  }

  async readAll(): Promise<StateDict> {
    const out: StateDict = new Map();
    for (const name of this.byName.keys()) out.set(name, await this.tensor(name));
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}

/** Open a safetensors file: reads and validates the header only; tensors are read on demand. */
export async function loadSafetensors(path: string): Promise<SafetensorsFile> {
  let fh: FileHandle;
  try {
    fh = await fs.open(path, 'r');
  } catch (e) {
    throw new UserError(`cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      cause: e,
    });
  }
  try {
    const { size } = await fh.stat();
    if (size < 8)
      throw new UserError(`${path}: not a valid safetensors file: ${size} bytes, shorter than the header`);
    const lenBytes = await readExact(fh, 8, 0, path);
    const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (n > BigInt(MAX_HEADER_SIZE)) {
      throw new UserError(
        `${path}: not a valid safetensors file: header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit`,
      );
    }
    const headerLen = Number(n);
    if (8 + headerLen > size) {
      throw new UserError(
        `${path}: not a valid safetensors file: header length ${headerLen} runs past the end of the ${size}-byte file (truncated?)`,
      );
    }
    const header = parseSafetensorsHeader(
      await readExact(fh, headerLen, 8, path),
      size - 8 - headerLen,
      path,
    );
    return new SafetensorsReader(path, fh, 8 + headerLen, header);
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** Open, read every tensor, close. */
export async function readSafetensors(
  path: string,
): Promise<{ tensors: StateDict; metadata: Record<string, string> }> {
  const f = await loadSafetensors(path);
  try {
    return { tensors: await f.readAll(), metadata: { ...f.metadata } };
  } finally {
    await f.close();
  }
}

/** Parse a whole safetensors file already in memory (e.g. from fetch); validates like loadSafetensors. */
export function parseSafetensors(
  bytes: Uint8Array,
  name = '<buffer>',
): { tensors: StateDict; metadata: Record<string, string> } {
  if (bytes.byteLength < 8)
    throw new UserError(`${name}: not a valid safetensors file: shorter than the header`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_SIZE) || 8 + Number(n) > bytes.byteLength) {
    throw new UserError(`${name}: not a valid safetensors file: header length ${n} is too large`);
  }
  const headerLen = Number(n);
  const dataStart = 8 + headerLen;
  const header = parseSafetensorsHeader(bytes.subarray(8, dataStart), bytes.byteLength - dataStart, name);
  const tensors: StateDict = new Map();
  for (const [tname, info] of header.entries) {
    if (info.dtype === undefined) {
      throw new UserError(
        `${name}: tensor ${quoted(tname, 80)} has dtype ${info.fileDtype}, which clipcap cannot load`,
      );
    }
    const [s, e] = info.dataOffsets;
    // A fresh, aligned copy that does not keep the whole file alive (Buffer#slice would be a view).
    const data = decodeElements(
      new Uint8Array(bytes.subarray(dataStart + s, dataStart + e)),
      info.dtype,
      (e - s) / DTYPE_BYTES[info.dtype],
    );
    tensors.set(tname, { dtype: info.dtype, shape: [...info.shape], data });
  }
  return { tensors, metadata: header.metadata };
}

/** What saveSafetensors accepts per tensor: a HostTensor, or just shape + data (dtype from the array type). */
export interface TensorToSave {
  readonly shape: readonly number[];
  readonly data: HostTensor['data'];
  /** Only consulted to write a Uint8Array as BOOL instead of U8. */
  readonly dtype?: FileDType;
}

export type TensorsToSave =
  StateDict | ReadonlyMap<string, TensorToSave> | Readonly<Record<string, TensorToSave>>;

/** The safetensors dtype a host array is written as (the data as held, not the dtype it was loaded from). */
function fileDtypeOf(t: TensorToSave): string {
  const d = t.data;
  if (d instanceof Float32Array) return 'F32';
  if (d instanceof Int32Array) return 'I32';
  if (d instanceof BigInt64Array) return 'I64';
  return t.dtype === 'bool' ? 'BOOL' : 'U8';
}

function entriesOf(tensors: TensorsToSave): Array<[string, TensorToSave]> {
  return tensors instanceof Map
    ? [...tensors.entries()]
    : Object.entries(tensors as Record<string, TensorToSave>);
}

/**
 * The header bytes (length prefix + JSON padded with spaces to a multiple of 8, as the reference does so the
 * data starts 8-byte aligned) and the tensors in write order.
 */
export function safetensorsHeader(
  tensors: TensorsToSave,
  metadata?: Readonly<Record<string, string>>,
  file = '<output>',
): { header: Uint8Array; order: Array<[string, TensorToSave]> } {
  const json: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new UserError(`${file}: metadata "${k}" must be a string`);
    }
    json.__metadata__ = { ...metadata };
  }
  const order = entriesOf(tensors);
  let offset = 0;
  for (const [name, t] of order) {
    if (name === '__metadata__' || name === '') throw new UserError(`${file}: invalid tensor name "${name}"`);
    const numel = checkedNumel(t.shape);
    if (numel === undefined || numel !== t.data.length) {
      throw new Error(
        `${file}: tensor "${name}" has shape [${t.shape.join(', ')}] but ${t.data.length} elements`,
      );
    }
    const end = offset + t.data.byteLength;
    Object.defineProperty(json, name, {
      value: { dtype: fileDtypeOf(t), shape: [...t.shape], data_offsets: [offset, end] },
      enumerable: true,
    });
    offset = end;
  }
  const text = new TextEncoder().encode(JSON.stringify(json));
  const padded = Math.ceil(text.byteLength / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + text.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(text, 8);
  return { header, order };
}

/** Serialize to one buffer (small files, tests). */
export function serializeSafetensors(
  tensors: TensorsToSave,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const { header, order } = safetensorsHeader(tensors, metadata);
  const total = order.reduce((n, [, t]) => n + t.data.byteLength, header.byteLength);
  const out = new Uint8Array(total);
  out.set(header, 0);
  let at = header.byteLength;
  for (const [, t] of order) {
    out.set(dataBytes(t.data), at);
    at += t.data.byteLength;
  }
  return out;
}

/**
 * Write tensors to `path` atomically (temp file + fsync + rename: readers never see a partial file),
 * streaming one tensor at a time. Float32Array -> F32, Int32Array -> I32, BigInt64Array -> I64,
 * Uint8Array -> U8 (BOOL when dtype is 'bool'). Tensors keep the given order.
 */
export async function saveSafetensors(
  path: string,
  tensors: TensorsToSave,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const { header, order } = safetensorsHeader(tensors, metadata, path);
  await withAtomicPath(path, async (tmp) => {
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.write(header);
      for (const [, t] of order) {
        const bytes = dataBytes(t.data);
        let done = 0;
        while (done < bytes.byteLength) {
          const { bytesWritten } = await fh.write(bytes, done, Math.min(bytes.byteLength - done, 1 << 30));
          done += bytesWritten;
        }
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
}
