/** Helpers shared by the per-family key maps: spec checks with one message per problem, config.json fields. */
import { UserError } from '../../util/errors.js';
import { safeText } from '../../util/text.js';
import type { HostTensor, StateDict } from '../host.js';

/** Expected names and shapes, in canonical order. */
export type KeySpec = Map<string, readonly number[]>;

export const fmtShape = (s: readonly number[]): string => `[${s.join(', ')}]`;

function listSome(names: readonly string[], n = 8): string {
  // Key names come from the file: escaped and cut, so a message stays one short line.
  const shown = names
    .slice(0, n)
    .map((name) => safeText(name, 100))
    .join(', ');
  return names.length > n ? `${shown} and ${names.length - n} more` : shown;
}

export interface KeyCheckOptions {
  /** Keys that may be present or not: buffers, a tied head, another model's keys in a shared state dict. */
  ignore?: (name: string) => boolean;
  /** Also require f32 data (the models upload weights as they are). */
  requireF32?: boolean;
}

/**
 * What is wrong with `weights` against `spec`: one clause per kind of problem (missing, wrongly shaped,
 * not f32 when asked, unexpected keys), each naming the keys; empty when they match. The one check behind
 * both the key maps (checkKeys) and the models' constructors, so the two cannot drift apart.
 */
export function keyProblems(weights: StateDict, spec: KeySpec, opts: KeyCheckOptions = {}): string[] {
  const missing: string[] = [];
  const badShape: string[] = [];
  const badType: string[] = [];
  for (const [name, shape] of spec) {
    const t = weights.get(name);
    if (!t) missing.push(name);
    else if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      badShape.push(`${name} is ${fmtShape(t.shape)}, expected ${fmtShape(shape)}`);
    } else if (opts.requireF32 && !(t.data instanceof Float32Array)) badType.push(`${name} (${t.dtype})`);
  }
  const ignore = opts.ignore ?? (() => false);
  const unexpected = [...weights.keys()].filter((k) => !spec.has(k) && !ignore(k));
  const problems: string[] = [];
  if (missing.length) problems.push(`missing ${listSome(missing)}`);
  if (badShape.length) problems.push(`wrong shape: ${listSome(badShape, 4)}`);
  if (badType.length) problems.push(`not floating point: ${listSome(badType)}`);
  if (unexpected.length) problems.push(`unexpected ${listSome(unexpected)}`);
  return problems;
}

/**
 * Check that `weights` holds exactly the keys of `spec` with their shapes; one UserError names every missing,
 * unexpected and wrongly shaped key. Returns the weights in spec order.
 */
export function checkKeys(weights: StateDict, spec: KeySpec, what: string, hint: string): StateDict {
  const problems = keyProblems(weights, spec);
  if (problems.length) throw new UserError(`${what}: ${problems.join('; ')}; ${hint}`);
  const out: StateDict = new Map();
  for (const name of spec.keys()) out.set(name, weights.get(name) as HostTensor);
  return out;
}

/** Shape of `name`, or a UserError naming it. */
export function shapeOf(sd: StateDict, name: string, what: string, rank?: number): readonly number[] {
  const t = sd.get(name);
  if (!t) throw new UserError(`${what}: missing ${name}`);
  if (rank !== undefined && t.shape.length !== rank) {
    throw new UserError(`${what}: ${name} is ${fmtShape(t.shape)}, expected a rank-${rank} tensor`);
  }
  return t.shape;
}

/** Count N in `${prefix}N.` keys, requiring 0..N-1 without gaps. */
export function countLayers(keys: Iterable<string>, prefix: string, what: string): number {
  const ids = new Set<number>();
  for (const k of keys) {
    if (!k.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(k.slice(prefix.length));
    if (m) ids.add(Number(m[1]));
  }
  for (let i = 0; i < ids.size; i++) {
    if (!ids.has(i))
      throw new UserError(`${what}: layer ${prefix}${i}.* is missing (layers must be numbered 0..N-1)`);
  }
  return ids.size;
}

/** A config source: a parsed config.json or a partial typed config (the same field names). */
export type ConfigSource = Readonly<Record<string, unknown>>;

/** A positive integer field of a config, or undefined when absent. */
export function intField(c: ConfigSource | undefined, key: string, what: string): number | undefined {
  const v = c?.[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new UserError(
      `${what}: config field "${key}" must be a non-negative integer, got ${safeText(JSON.stringify(v) ?? String(v), 60)}`,
    );
  }
  return v;
}

export function numField(c: ConfigSource | undefined, key: string, what: string): number | undefined {
  const v = c?.[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new UserError(
      `${what}: config field "${key}" must be a number, got ${safeText(JSON.stringify(v) ?? String(v), 60)}`,
    );
  }
  return v;
}

/** The value the weights imply, after checking that the config (if it says anything) agrees. */
export function agree(fromConfig: number | undefined, fromShapes: number, key: string, what: string): number {
  if (fromConfig !== undefined && fromConfig !== fromShapes) {
    throw new UserError(
      `${what}: config says ${key} = ${fromConfig} but the weights have ${fromShapes}; the config and the weights do not belong together`,
    );
  }
  return fromShapes;
}

/** Exact equality of two tensors (shape and every element). */
export function sameTensor(a: HostTensor, b: HostTensor): boolean {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) return false;
  if (a.data === b.data) return true;
  if (a.data.length !== b.data.length || a.data.constructor !== b.data.constructor) return false;
  const x = Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  const y = Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength);
  return x.equals(y);
}
