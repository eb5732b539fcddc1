/**
 * Element types and the conversion of raw little-endian tensor bytes into the host representation shared by
 * every loader (safetensors, torch zip/legacy, pickled features): floats become Float32Array, integers
 * Int32Array (i64 only when every value fits, else BigInt64Array), u8/bool Uint8Array.
 */
import os from 'node:os';
import type { FileDType, HostTensor } from './host.js';

/** Bytes per element of each file dtype. */
export const DTYPE_BYTES: Readonly<Record<FileDType, number>> = {
  f64: 8,
  f32: 4,
  f16: 2,
  bf16: 2,
  i64: 8,
  i32: 4,
  i16: 2,
  i8: 1,
  u8: 1,
  bool: 1,
};

// Every typed-array view below reads the file's bytes in host order; the formats are little-endian.
if (os.endianness() !== 'LE') {
  throw new Error('clipcap weights loaders need a little-endian host');
}

/** Product of a shape's dims, or undefined when it is not a safe integer (overflow). */
export function checkedNumel(shape: readonly number[]): number | undefined {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) return undefined;
    n *= d;
    if (!Number.isSafeInteger(n)) return undefined;
  }
  return n;
}

let f16Table: Float32Array | undefined;

/** All 65536 half-precision values as f32, built on first use (256 KB); a lookup beats bit twiddling per element. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = halfToFloat(h);
  f16Table = t;
  return t;
}

/** IEEE 754 binary16 bits -> number (exact: every half is representable in f32). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero and subnormals
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * `bytes` as a whole ArrayBuffer starting at the data: zero-copy when it already is one, else a fresh copy
 * (typed views need offsets that are multiples of their element size, and must not pin a larger buffer).
 */
function aligned(bytes: Uint8Array): ArrayBuffer {
  const buf = bytes.buffer;
  if (buf instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === buf.byteLength) return buf;
  // new Uint8Array(view) copies (Buffer#slice would not).
  return new Uint8Array(bytes).buffer;
}

/**
 * Convert `count` elements of `dtype` stored little-endian in `bytes` into the host representation. When no
 * conversion is needed and `bytes` spans its whole ArrayBuffer, the result shares that memory (callers pass
 * a buffer they own in that case); otherwise the result owns a copy and never pins a larger buffer.
 */
export function decodeElements(bytes: Uint8Array, dtype: FileDType, count: number): HostTensor['data'] {
  const need = count * DTYPE_BYTES[dtype];
  if (bytes.byteLength !== need) {
    throw new Error(`decodeElements: ${bytes.byteLength} bytes for ${count} x ${dtype}`);
  }
  switch (dtype) {
    case 'f32':
      return new Float32Array(aligned(bytes), 0, count);
    case 'f64':
      return Float32Array.from(new Float64Array(aligned(bytes), 0, count));
    case 'f16': {
      const src = new Uint16Array(aligned(bytes), 0, count);
      const table = halfTable();
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = table[src[i]];
      return out;
    }
    case 'bf16': {
      // bfloat16 is the top half of an f32: shift the bits up.
      const src = new Uint16Array(aligned(bytes), 0, count);
      const out = new Float32Array(count);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = src[i] << 16;
      return out;
    }
    case 'i64': {
      const words = new Int32Array(aligned(bytes), 0, count * 2);
      // Fits in i32 iff the high word is the sign extension of the low word.
      let fits = true;
      for (let i = 0; i < count; i++) {
        if (words[2 * i + 1] !== words[2 * i] >> 31) {
          fits = false;
          break;
        }
      }
      if (!fits) return new BigInt64Array(words.buffer, words.byteOffset, count);
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = words[2 * i];
      return out;
    }
    case 'i32':
      return new Int32Array(aligned(bytes), 0, count);
    case 'i16':
      return Int32Array.from(new Int16Array(aligned(bytes), 0, count));
    case 'i8':
      return Int32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, count));
    case 'u8':
    case 'bool':
      return new Uint8Array(aligned(bytes), 0, count);
  }
}

/** The contiguous little-endian bytes of a host array, as they would be written to a file. */
export function dataBytes(data: HostTensor['data']): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
