/**
 * Shared helpers of the model parity tests: golden tensors, relative differences, logits summaries
 * (the fixtures store logits as first2048 / logsumexp / argmax to stay small).
 */
import { expect } from 'vitest';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { loadSafetensors } from '../../src/weights/safetensors.js';
import type { HostTensor, StateDict } from '../../src/weights/host.js';
import type { Tensor } from '../../src/engine/tensor.js';
import type { Backend } from '../../src/engine/backend.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const fixture = (...p: string[]): string => path.join(FIXTURES, ...p);

export async function readAll(file: string): Promise<StateDict> {
  const f = await loadSafetensors(file);
  try {
    return await f.readAll();
  } finally {
    await f.close();
  }
}

let goldens: Promise<StateDict> | null = null;
/** goldens.safetensors, read once per test file. */
export function loadGoldens(): Promise<StateDict> {
  goldens ??= readAll(fixture('goldens.safetensors'));
  return goldens;
}

export async function readJson<T>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, 'utf8')) as T;
}

export function get(sd: StateDict, name: string): HostTensor {
  const t = sd.get(name);
  if (!t) throw new Error(`golden tensor ${name} is missing`);
  return t;
}

export function f32(sd: StateDict, name: string): Float32Array {
  const t = get(sd, name);
  if (!(t.data instanceof Float32Array)) throw new Error(`golden ${name} is not f32`);
  return t.data;
}

export function i32(sd: StateDict, name: string): Int32Array {
  const t = get(sd, name);
  if (!(t.data instanceof Int32Array)) throw new Error(`golden ${name} is not i32`);
  return t.data;
}

export function upload(b: Backend, sd: StateDict, name: string): Tensor {
  const t = get(sd, name);
  return b.upload(t.data as Float32Array | Int32Array, t.shape);
}

/** max|a - ref| / max|ref| (the tensor-scale relative difference). */
export function relDiff(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (a.length !== ref.length) throw new Error(`length mismatch: ${a.length} vs ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - ref[i]);
    if (!(d <= num)) num = Number.isNaN(d) ? Infinity : d;
    den = Math.max(den, Math.abs(ref[i]));
  }
  return den === 0 ? num : num / den;
}

/** Compare, log the worst relative difference, and fail above `tol`. Returns the difference. */
export function expectClose(label: string, a: ArrayLike<number>, ref: ArrayLike<number>, tol = 1e-4): number {
  const d = relDiff(a, ref);
  console.log(`${label}: worst relative difference ${d.toExponential(2)}`);
  expect(d, `${label}: relative difference ${d} exceeds ${tol}`).toBeLessThanOrEqual(tol);
  return d;
}

/** Summaries of logits (rows, V) the way the fixtures store them. */
export function logitsSummary(
  logits: Float32Array,
  vocab: number,
): { first2048: Float32Array; logsumexp: Float32Array; argmax: Int32Array } {
  const rows = logits.length / vocab;
  const first2048 = new Float32Array(rows * 2048);
  const logsumexp = new Float32Array(rows);
  const argmax = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const row = logits.subarray(r * vocab, (r + 1) * vocab);
    first2048.set(row.subarray(0, 2048), r * 2048);
    let mx = -Infinity;
    let am = 0;
    for (let j = 0; j < vocab; j++)
      if (row[j] > mx) {
        mx = row[j];
        am = j;
      }
    let s = 0;
    for (let j = 0; j < vocab; j++) s += Math.exp(row[j] - mx);
    logsumexp[r] = mx + Math.log(s);
    argmax[r] = am;
  }
  return { first2048, logsumexp, argmax };
}

/** Compare logits (rows, V) against the golden `<name>.{first2048,logsumexp,argmax}`; returns the worst difference. */
export function expectLogits(
  label: string,
  logits: Float32Array,
  vocab: number,
  sd: StateDict,
  name: string,
  tol = 1e-4,
): number {
  const s = logitsSummary(logits, vocab);
  const d1 = expectClose(`${label} first2048`, s.first2048, f32(sd, `${name}.first2048`), tol);
  const d2 = expectClose(`${label} logsumexp`, s.logsumexp, f32(sd, `${name}.logsumexp`), tol);
  expect([...s.argmax], `${label} argmax`).toEqual([...i32(sd, `${name}.argmax`)]);
  return Math.max(d1, d2);
}
