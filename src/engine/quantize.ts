/**
 * Weight-only reduced precision on the host (Backend.quantizeWeight): the rounding definitions, shared by
 * the host devices (the reference backend's values, and the native backend's compact copies, come from here,
 * so both compute with the same rounded numbers).
 *
 * No Node APIs here: the reference backend built on it must still run in a browser.
 */
import { ShapeError } from './backend.js';
import type { WeightFormat } from './backend.js';

type F32 = Float32Array;

/** The compact form of a quantized weight, rows x cols as the f32 tensor. */
export interface CompactWeight {
  format: WeightFormat;
  rows: number;
  cols: number;
  /** Output channels along rows (0) or columns (1): where `scales` apply (int8). */
  channelAxis: 0 | 1;
  /** int8: Int8Array of q; bf16: Uint16Array of the upper halves of the f32 values. */
  data: Int8Array | Uint16Array;
  /** int8: one scale per channel; bf16: null. */
  scales: F32 | null;
}

/** Rounds w (rows, cols) into y (its f32 values) and returns the compact form. */
export function quantizeHost(
  op: string,
  w: F32,
  rows: number,
  cols: number,
  format: WeightFormat,
  channelAxis: 0 | 1,
  y: F32,
): CompactWeight {
  const c = format === 'bf16' ? quantizeBf16(w, y) : quantizeInt8(op, w, rows, cols, channelAxis, y);
  return { format, rows, cols, channelAxis, data: c.data, scales: c.scales };
}

/** f32 <-> bit views for bf16 rounding. */
const bits32 = new Uint32Array(1);
const float32 = new Float32Array(bits32.buffer);

/** Round-to-nearest-even bfloat16 of each value (NaN stays a quiet NaN): the upper halves, and y = their f32. */
function quantizeBf16(w: F32, y: F32): { data: Uint16Array; scales: null } {
  const data = new Uint16Array(w.length);
  for (let i = 0; i < w.length; i++) {
    float32[0] = w[i];
    const x = bits32[0];
    let h: number;
    if ((x & 0x7fffffff) > 0x7f800000)
      h = (x >>> 16) | 0x40; // NaN: keep it a (quiet) NaN
    else h = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
    data[i] = h;
    bits32[0] = h << 16;
    y[i] = float32[0];
  }
  return { data, scales: null };
}

/** Round half to even (the rounding of torch.round and of C's nearbyint). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Symmetric int8 per output channel (Backend.quantizeWeight); y = the dequantized values. */
function quantizeInt8(
  op: string,
  w: F32,
  rows: number,
  cols: number,
  channelAxis: 0 | 1,
  y: F32,
): { data: Int8Array; scales: F32 } {
  const channels = channelAxis === 0 ? rows : cols;
  // element (r, c) belongs to channel r (axis 0) or c (axis 1)
  const channelOf = (i: number): number => (channelAxis === 0 ? Math.floor(i / cols) : i % cols);
  const absmax = new Float64Array(channels);
  for (let i = 0; i < w.length; i++) {
    const v = w[i];
    if (!Number.isFinite(v))
      throw new ShapeError(`${op}: w has a non-finite value at ${Math.floor(i / cols)},${i % cols}`);
    const c = channelOf(i);
    if (Math.abs(v) > absmax[c]) absmax[c] = Math.abs(v);
  }
  const scales = Float32Array.from(absmax, (m) => Math.fround(m / 127));
  const data = new Int8Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const s = scales[channelOf(i)];
    const q = s === 0 ? 0 : Math.max(-127, Math.min(127, roundHalfEven(Math.fround(w[i] / s))));
    data[i] = q;
    y[i] = Math.fround(q * s);
  }
  return { data, scales };
}
