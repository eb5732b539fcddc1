/**
 * Scoped memory: `scope(fn)` frees every allocation made while fn runs, except those reachable from its
 * result (a tensor, or arrays / plain objects holding tensors, AttentionSaved included) and those passed to
 * `keep`. So temporaries and recorded training activations are released deterministically (device memory
 * is not the GC's to reclaim), without one free() per intermediate.
 *
 * Scopes are synchronous (fn may not return a promise): an await inside one would let unrelated work
 * allocate into it. Nested scopes hand kept and returned allocations to the enclosing scope.
 * No Node APIs: the reference backend built on this runs in a browser.
 */
import { AttentionSaved } from './backend.js';
import { Allocation, Tensor } from './tensor.js';

interface Frame {
  allocations: Allocation[];
}

/** Open scopes, innermost last. */
const frames: Frame[] = [];

/** Runs fn and frees what it allocated, except what its result holds and what was kept. */
export function scope<T>(fn: () => T): T {
  const frame: Frame = { allocations: [] };
  frames.push(frame);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    frames.pop();
    releaseAll(frame, new Set());
    throw e;
  }
  frames.pop();
  if (result instanceof Promise) {
    releaseAll(frame, new Set());
    throw new Error('scope: fn returned a promise (scopes are synchronous; await outside the scope)');
  }
  const keep = new Set<Allocation>();
  collect(result, keep, 0);
  releaseAll(frame, keep);
  // kept allocations belong to the enclosing scope now
  const outer = frames[frames.length - 1];
  if (outer) for (const a of keep) if (a.live) outer.allocations.push(a);
  return result;
}

/**
 * Moves t's allocation out of the innermost scope to the enclosing one (or out of scopes altogether):
 * for tensors a scope's function stores elsewhere (a layer's cache) instead of returning.
 */
export function keep<T extends Tensor | AttentionSaved>(t: T): T {
  const f = frames[frames.length - 1];
  if (!f) return t;
  const allocs = t instanceof Tensor ? [t.allocation] : t.tensors.map((x) => x.allocation);
  for (const a of allocs) {
    const i = f.allocations.lastIndexOf(a);
    if (i >= 0) f.allocations.splice(i, 1);
    const outer = frames[frames.length - 2];
    if (outer) outer.allocations.push(a);
  }
  return t;
}

/**
 * Takes t's allocation out of every open scope: for long-lived state a scope's function creates lazily
 * (a parameter's gradient, optimizer moments); the caller frees it explicitly.
 */
export function persist<T extends Tensor>(t: T): T {
  for (const f of frames) {
    const i = f.allocations.lastIndexOf(t.allocation);
    if (i >= 0) f.allocations.splice(i, 1);
  }
  return t;
}

function releaseAll(frame: Frame, keep: Set<Allocation>): void {
  for (const a of frame.allocations) {
    if (!a.live || keep.has(a)) continue;
    releaseOf(a)(a);
  }
}

function releaseOf(a: Allocation): (a: Allocation) => void {
  const r = a.release;
  if (!r) throw new Error('scope: an allocation without a backend');
  return r;
}

/**
 * Registers how an allocation is released (every backend calls this once per allocation). The function is a
 * field of the allocation rather than a WeakMap entry: decoding makes hundreds of small tensors per token,
 * and the WeakMap insert was a tenth of a LayerNorm call's time. @internal
 */
export function registerAllocation(a: Allocation, release: (a: Allocation) => void): void {
  a.release = release;
  const f = frames[frames.length - 1];
  if (f) f.allocations.push(a);
}

function collect(v: unknown, out: Set<Allocation>, depth: number): void {
  if (depth > 4 || v === null || typeof v !== 'object') return;
  if (v instanceof Tensor) {
    out.add(v.allocation);
    return;
  }
  if (v instanceof AttentionSaved) {
    for (const t of v.tensors) out.add(t.allocation);
    return;
  }
  if (Array.isArray(v)) {
    for (const x of v) collect(x, out, depth + 1);
    return;
  }
  const proto: unknown = Object.getPrototypeOf(v);
  if (proto === Object.prototype || proto === null) {
    for (const x of Object.values(v as Record<string, unknown>)) collect(x, out, depth + 1);
  }
}
