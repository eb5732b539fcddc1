/**
 * The server's options, their defaults and their validation. Every per-request knob a client can turn (beam
 * size, captions per image, tokens, inputs per request) has a ceiling here, and so has everything a client can
 * make the server hold (bodies, queued requests, connections, time), so one request's cost is known before it
 * starts and a flood gets 503s instead of memory. Unknown keys are errors (a JavaScript caller who writes
 * `{ maxTokens: 3 }` instead of `decodeDefaults: { maxTokens: 3 }` hears about it).
 */
import { DEFAULT_DECODE_OPTIONS, type DecodeOptions } from '../generate/options.js';
import { UserError } from '../util/errors.js';

const MIB = 1024 * 1024;

/** Ceilings on what one request may ask for; beyond them the request gets a 400 naming the field. */
export interface ServerLimits {
  /** Largest `beam_size` (default 16). */
  beamSize: number;
  /** Largest `num_captions` (default 16). */
  numCaptions: number;
  /** Largest `max_tokens` (default 128; the prefix plus this must fit GPT-2's positions). */
  maxTokens: number;
  /** Most images in one request (default 16). */
  imagesPerRequest: number;
  /** Most embeddings in one JSON request (default 256). */
  embeddingsPerRequest: number;
  /**
   * Most decoding rows in one model call (default 128): rows = inputs x beam_size (beam), inputs x
   * num_captions (nucleus) or inputs (greedy). The logits of a step are rows x vocabulary floats and the KV
   * cache rows x layers x positions, so this bounds a model call's memory; larger requests are split.
   */
  batchRows: number;
}

export interface ServerTimeouts {
  /** Time to receive a request's headers, from the connection's start (ms, default 10 s). */
  headersMs: number;
  /** Time to receive a whole request, body included (ms, default 30 s); slower: 408. */
  bodyMs: number;
  /** How long a keep-alive connection may sit idle between requests (ms, default 5 s). */
  idleMs: number;
  /** How long a request may wait for and run its model calls (ms, default 60 s); later: 503. */
  computeMs: number;
}

export interface ServerOptions {
  /** Decoding used when a request names no option (CLI: the caption command's decode flags). */
  decodeDefaults?: DecodeOptions;
  /** Largest request body in bytes (default 20 MiB); larger requests get 413 and are not read further. */
  maxBodyBytes?: number;
  /** Refuse images with more pixels (decompression bombs); default the pipeline's 100 million. */
  maxPixels?: number;
  /** How long a request waits for others to share its model call (ms, default 10). */
  batchWindowMs?: number;
  /** Most inputs per model call (default 16). */
  batchSize?: number;
  /** @deprecated The old name of `batchSize`. */
  maxBatch?: number;
  /** Ceilings on per-request knobs and on a model call's rows (see ServerLimits). */
  limits?: Partial<ServerLimits>;
  /** Header, body, idle and compute timeouts (see ServerTimeouts). */
  timeouts?: Partial<ServerTimeouts>;
  /** Most requests waiting for or in model calls (default 64); more: 503 with Retry-After. */
  maxQueuedRequests?: number;
  /**
   * Most request-body bytes held at once, over all requests being read, queued or captioned (default
   * 128 MiB, at least maxBodyBytes); more: 503 with Retry-After.
   */
  maxBodyBudgetBytes?: number;
  /** Most open connections (default 256); more are dropped at accept. */
  maxConnections?: number;
  /** What GET /health reports under "model", over what the model says about itself. */
  modelInfo?: Record<string, unknown>;
  /** One line per request: true for stderr, or a function (default: off). */
  log?: boolean | ((line: string) => void);
}

/** Everything filled in. */
export interface ResolvedServerOptions {
  decodeDefaults: DecodeOptions;
  maxBodyBytes: number;
  maxPixels: number | undefined;
  batchWindowMs: number;
  batchSize: number;
  limits: ServerLimits;
  timeouts: ServerTimeouts;
  maxQueuedRequests: number;
  maxBodyBudgetBytes: number;
  maxConnections: number;
  modelInfo: Record<string, unknown>;
  log: ((line: string) => void) | null;
}

export const DEFAULT_LIMITS: Readonly<ServerLimits> = Object.freeze({
  beamSize: 16,
  numCaptions: 16,
  maxTokens: 128,
  imagesPerRequest: 16,
  embeddingsPerRequest: 256,
  batchRows: 128,
});

export const DEFAULT_TIMEOUTS: Readonly<ServerTimeouts> = Object.freeze({
  headersMs: 10_000,
  bodyMs: 30_000,
  idleMs: 5_000,
  computeMs: 60_000,
});

const OPTION_KEYS = [
  'decodeDefaults',
  'maxBodyBytes',
  'maxPixels',
  'batchWindowMs',
  'batchSize',
  'maxBatch',
  'limits',
  'timeouts',
  'maxQueuedRequests',
  'maxBodyBudgetBytes',
  'maxConnections',
  'modelInfo',
  'log',
] as const satisfies readonly (keyof ServerOptions)[];

const DECODE_KEYS = [
  'method',
  'beamSize',
  'maxTokens',
  'stop',
  'temperature',
  'topP',
  'seed',
  'numCaptions',
] as const satisfies readonly (keyof DecodeOptions)[];

/** Throws naming the first key of `o` not in `known` (own enumerable keys only, so `__proto__` tricks fail too). */
export function checkKeys(what: string, o: unknown, known: readonly string[]): void {
  if (o === undefined) return;
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw new UserError(`${what} must be an object`);
  for (const k of Object.keys(o))
    if (!known.includes(k))
      throw new UserError(`${what}: unknown option "${k}"; known options: ${known.join(', ')}`);
}

function intIn(what: string, v: unknown, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
    throw new UserError(`${what} must be an integer from ${lo} to ${hi}, got ${String(v)}`);
  return v;
}

/** Validate and fill in createServer's options; a UserError names the first bad one. */
export function resolveServerOptions(o: ServerOptions = {}): ResolvedServerOptions {
  checkKeys('createServer options', o, OPTION_KEYS);
  checkKeys('createServer options.decodeDefaults', o.decodeDefaults, DECODE_KEYS);
  checkKeys('createServer options.limits', o.limits, Object.keys(DEFAULT_LIMITS));
  checkKeys('createServer options.timeouts', o.timeouts, Object.keys(DEFAULT_TIMEOUTS));
  if (o.batchSize !== undefined && o.maxBatch !== undefined)
    throw new UserError('createServer options: give batchSize only (maxBatch is its deprecated old name)');
  const limits = { ...DEFAULT_LIMITS };
  for (const [k, v] of Object.entries(o.limits ?? {}) as [keyof ServerLimits, unknown][])
    if (v !== undefined) limits[k] = intIn(`limits.${k}`, v, 1, 1_000_000);
  const timeouts = { ...DEFAULT_TIMEOUTS };
  for (const [k, v] of Object.entries(o.timeouts ?? {}) as [keyof ServerTimeouts, unknown][])
    if (v !== undefined) timeouts[k] = intIn(`timeouts.${k}`, v, 1, 3_600_000);
  if (limits.beamSize > limits.batchRows || limits.numCaptions > limits.batchRows)
    throw new UserError(
      `limits.batchRows (${limits.batchRows}) must be at least limits.beamSize and limits.numCaptions: one image needs that many rows`,
    );
  const maxBodyBytes = intIn('maxBodyBytes', o.maxBodyBytes ?? 20 * MIB, 1, 2 ** 32);
  const maxBodyBudgetBytes = intIn(
    'maxBodyBudgetBytes',
    o.maxBodyBudgetBytes ?? Math.max(128 * MIB, maxBodyBytes),
    1,
    2 ** 40,
  );
  if (maxBodyBudgetBytes < maxBodyBytes)
    throw new UserError(
      `maxBodyBudgetBytes (${maxBodyBudgetBytes}) must be at least maxBodyBytes (${maxBodyBytes})`,
    );
  const log =
    o.log === undefined || o.log === false
      ? null
      : o.log === true
        ? (line: string) => void process.stderr.write(line + '\n')
        : typeof o.log === 'function'
          ? o.log
          : null;
  if (o.log !== undefined && typeof o.log !== 'boolean' && typeof o.log !== 'function')
    throw new UserError('createServer options.log must be true, false or a function of one line');
  if (o.modelInfo !== undefined && (typeof o.modelInfo !== 'object' || o.modelInfo === null))
    throw new UserError('createServer options.modelInfo must be an object');
  const decodeDefaults = { ...(o.decodeDefaults ?? {}) };
  // The server's own defaults must be requests it would accept.
  const d = { ...DEFAULT_DECODE_OPTIONS, ...decodeDefaults };
  if (d.beamSize > limits.beamSize)
    throw new UserError(`the default beam size ${d.beamSize} is over limits.beamSize (${limits.beamSize})`);
  if (d.maxTokens > limits.maxTokens)
    throw new UserError(
      `the default max tokens ${d.maxTokens} is over limits.maxTokens (${limits.maxTokens})`,
    );
  if (d.numCaptions > limits.numCaptions)
    throw new UserError(
      `the default number of captions ${d.numCaptions} is over limits.numCaptions (${limits.numCaptions})`,
    );
  return {
    decodeDefaults,
    maxBodyBytes,
    maxPixels: o.maxPixels === undefined ? undefined : intIn('maxPixels', o.maxPixels, 1, 2 ** 40),
    batchWindowMs: intIn('batchWindowMs', o.batchWindowMs ?? 10, 0, 60_000),
    batchSize: intIn(
      o.maxBatch !== undefined ? 'maxBatch' : 'batchSize',
      o.batchSize ?? o.maxBatch ?? 16,
      1,
      4096,
    ),
    limits,
    timeouts,
    maxQueuedRequests: intIn('maxQueuedRequests', o.maxQueuedRequests ?? 64, 1, 1_000_000),
    maxBodyBudgetBytes,
    maxConnections: intIn('maxConnections', o.maxConnections ?? 256, 1, 1_000_000),
    modelInfo: { ...(o.modelInfo ?? {}) },
    log,
  };
}
