/**
 * Shape checks shared by every backend (checked.ts, the storage-agnostic layer under all of them).
 * Each throws `ShapeError` naming the op and the shapes involved, before any work is done (backend.ts: "bad
 * shapes throw ShapeError before any work").
 */
import { ShapeError } from './backend.js';
import type { Tensor } from './tensor.js';

/** `[2, 3, 4]`, for error messages. */
export function fmt(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** True when `suffix` equals the last `suffix.length` axes of `shape` (suffix broadcasting). */
export function isSuffix(suffix: readonly number[], shape: readonly number[]): boolean {
  if (suffix.length > shape.length) return false;
  const off = shape.length - suffix.length;
  return suffix.every((d, i) => d === shape[off + i]);
}

export function requireShape(op: string, what: string, t: Tensor, shape: readonly number[]): void {
  if (!sameShape(t.shape, shape)) {
    throw new ShapeError(`${op}: ${what} must have shape ${fmt(shape)}, got ${fmt(t.shape)}`);
  }
}

export function requireSameShape(op: string, whatA: string, a: Tensor, whatB: string, b: Tensor): void {
  if (!sameShape(a.shape, b.shape)) {
    throw new ShapeError(
      `${op}: ${whatA} ${fmt(a.shape)} and ${whatB} ${fmt(b.shape)} must have the same shape`,
    );
  }
}

export function requireRank(op: string, what: string, t: Tensor, rank: number): void {
  if (t.rank !== rank) {
    throw new ShapeError(`${op}: ${what} must be ${rank}-D, got ${fmt(t.shape)}`);
  }
}

/** Python-style axis: -1 is the last axis. Returns the axis in [0, rank). */
export function normalizeAxis(op: string, axis: number, shape: readonly number[]): number {
  const rank = shape.length;
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw new ShapeError(`${op}: axis ${axis} is out of range for shape ${fmt(shape)}`);
  }
  return axis < 0 ? axis + rank : axis;
}

/**
 * Splits a shape around `axis` for the layout ops: a row-major tensor is `outer` blocks of
 * `shape[axis] * inner` contiguous elements.
 */
export function splitAtAxis(
  shape: readonly number[],
  axis: number,
): { outer: number; dim: number; inner: number } {
  let outer = 1;
  for (let i = 0; i < axis; i++) outer *= shape[i];
  let inner = 1;
  for (let i = axis + 1; i < shape.length; i++) inner *= shape[i];
  return { outer, dim: shape[axis], inner };
}

export function requireInteger(op: string, what: string, value: number, min: number, max = Infinity): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    const range = max === Infinity ? `an integer >= ${min}` : `an integer in [${min}, ${max}]`;
    throw new ShapeError(`${op}: ${what} must be ${range}, got ${value}`);
  }
}
