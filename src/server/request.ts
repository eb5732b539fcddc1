/**
 * What a POST /caption asks for: its decoding options (query string, JSON members or form fields, by their
 * API names) checked against the server's limits, and its inputs (raw image bytes, multipart `image` files or
 * JSON embeddings) checked against the per-request limits. Every problem is an HttpError with a one-line
 * message naming the API field, never a CLI flag.
 */
import { resolveDecodeOptions, type DecodeOptions } from '../generate/options.js';
import type { CaptionInput, CaptionOptions } from '../pipeline/types.js';
import { UserError } from '../util/errors.js';
import { multipartBoundary, parseMultipart } from './multipart.js';
import type { ServerLimits } from './options.js';

/** An error answered with its status and one-line message (and, for 503s, a Retry-After). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfterS?: number,
  ) {
    super(message);
  }
}

/** The request options we accept, by their wire name. */
export const OPTION_NAMES: readonly string[] = [
  'decode',
  'beam_size',
  'max_tokens',
  'top_p',
  'temperature',
  'stop',
  'seed',
  'num_captions',
];

/** A client-given string, shortened and quoted so it cannot break a log line or a message. */
export function quote(v: unknown): string {
  const s = typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v));
  return JSON.stringify(s.length > 60 ? s.slice(0, 60) + '...' : s);
}

function num(name: string, v: unknown, integer: boolean, lo: number, hi: number, loOpen = false): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  const range = loOpen ? `over ${lo} and at most ${hi}` : `from ${lo} to ${hi}`;
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || (loOpen ? n <= lo : n < lo) || n > hi)
    throw new HttpError(
      400,
      `${name} must be ${integer ? 'an integer' : 'a number'} ${range}, got ${quote(v)}`,
    );
  return n;
}

export interface RequestDecode {
  options: CaptionOptions;
  /** Equal exactly when two requests decode alike (they may share a model call). */
  key: string;
  /** Decoding rows one input needs (beam size, captions per input, or 1). */
  rowsPerInput: number;
}

/** Request options over the server's defaults, checked against its limits. */
export function requestOptions(
  raw: ReadonlyMap<string, unknown>,
  defaults: DecodeOptions,
  limits: ServerLimits,
  maxPixels: number | undefined,
): RequestDecode {
  const o: DecodeOptions = { ...defaults };
  for (const [k, v] of raw) {
    switch (k) {
      case 'decode':
        if (v !== 'beam' && v !== 'greedy' && v !== 'nucleus')
          throw new HttpError(400, `decode must be beam, greedy or nucleus, got ${quote(v)}`);
        o.method = v;
        break;
      case 'stop':
        if (v !== '.' && v !== 'eos' && v !== 'none')
          throw new HttpError(400, `stop must be ".", "eos" or "none", got ${quote(v)}`);
        o.stop = v;
        break;
      case 'beam_size':
        o.beamSize = num(k, v, true, 1, limits.beamSize);
        break;
      case 'max_tokens':
        o.maxTokens = num(k, v, true, 1, limits.maxTokens);
        break;
      case 'top_p':
        o.topP = num(k, v, false, 0, 1, true);
        break;
      case 'temperature':
        o.temperature = num(k, v, false, 0, 100, true);
        break;
      case 'seed':
        o.seed = num(k, v, true, 0, 2 ** 32 - 1);
        break;
      case 'num_captions':
        o.numCaptions = num(k, v, true, 1, limits.numCaptions);
        break;
      default:
        throw new HttpError(400, `unknown option ${quote(k)}: use ${OPTION_NAMES.join(', ')}`);
    }
  }
  let r;
  try {
    r = resolveDecodeOptions(o);
  } catch (e) {
    // The defaults were checked at startup and every request value above: this is the defaults' problem.
    if (e instanceof UserError) throw new HttpError(400, e.message);
    throw e;
  }
  if (r.method !== 'nucleus' && r.numCaptions !== 1)
    throw new HttpError(
      400,
      'num_captions needs decode=nucleus (beam search returns every beam as candidates)',
    );
  const options: CaptionOptions = {
    method: r.method,
    beamSize: r.beamSize,
    maxTokens: r.maxTokens,
    stop: r.stopTokenId ?? 'none',
    topP: r.topP,
    temperature: r.temperature,
    seed: r.seed,
    numCaptions: r.numCaptions,
    limitInputPixels: maxPixels,
  };
  const rowsPerInput = r.method === 'beam' ? r.beamSize : r.method === 'nucleus' ? r.numCaptions : 1;
  return { options, key: JSON.stringify(r), rowsPerInput };
}

/** Where the options and inputs of one request came from. */
export interface ParsedRequest {
  inputs: CaptionInput[];
  raw: Map<string, unknown>;
}

export type BodyKind = 'image' | 'multipart' | 'json';

/** The kind of body a Content-Type announces, or a 415. */
export function bodyKind(contentType: string | undefined): { kind: BodyKind; boundary: string } {
  const mime = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (mime.startsWith('image/') || mime === 'application/octet-stream')
    return { kind: 'image', boundary: '' };
  if (mime === 'application/json') return { kind: 'json', boundary: '' };
  if (mime === 'multipart/form-data') {
    try {
      return { kind: 'multipart', boundary: multipartBoundary(contentType ?? '') };
    } catch (e) {
      throw new HttpError(400, e instanceof Error ? e.message : String(e));
    }
  }
  throw new HttpError(
    415,
    `unsupported Content-Type ${quote(mime)}: send image/*, application/octet-stream, multipart/form-data or application/json`,
  );
}

/** The query string's options; a name given twice is a 400. */
export function queryOptions(query: string): Map<string, unknown> {
  const raw = new Map<string, unknown>();
  for (const [k, v] of new URLSearchParams(query)) {
    if (raw.has(k)) throw new HttpError(400, `option ${quote(k)} is given twice`);
    raw.set(k, v);
  }
  return raw;
}

function setOnce(raw: Map<string, unknown>, k: string, v: unknown): void {
  if (raw.has(k)) throw new HttpError(400, `option ${quote(k)} is given twice`);
  raw.set(k, v);
}

/** The inputs (and body options) of a request body of `kind`, within `limits`. */
export function parseBody(
  body: Buffer,
  kind: BodyKind,
  boundary: string,
  raw: Map<string, unknown>,
  limits: ServerLimits,
  embeddingSize: number | undefined,
): CaptionInput[] {
  if (kind === 'image') {
    if (body.length === 0) throw new HttpError(400, 'the request body is empty: send the image bytes');
    return [new Uint8Array(body)];
  }
  if (kind === 'multipart') {
    let parts;
    try {
      parts = parseMultipart(body, boundary, {
        maxParts: limits.imagesPerRequest + OPTION_NAMES.length,
        maxHeaderBytes: 8192,
      });
    } catch (e) {
      if (e instanceof UserError) throw new HttpError(400, e.message);
      throw e;
    }
    const inputs: CaptionInput[] = [];
    for (const p of parts) {
      if (p.name === 'image') {
        if (p.data.length === 0) throw new HttpError(400, `image ${inputs.length} is empty`);
        if (inputs.length >= limits.imagesPerRequest)
          throw new HttpError(
            400,
            `more than ${limits.imagesPerRequest} images in one request on this server`,
          );
        inputs.push(p.data);
      } else if (OPTION_NAMES.includes(p.name) && p.filename === undefined) {
        setOnce(raw, p.name, Buffer.from(p.data).toString('utf8'));
      } else
        throw new HttpError(
          400,
          `unexpected form field ${quote(p.name)}: send images as "image" files and options as ${OPTION_NAMES.join(', ')}`,
        );
    }
    if (inputs.length === 0) throw new HttpError(400, 'the form holds no "image" file');
    return inputs;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch (e) {
    // Deep nesting may overflow the parser's stack: still the client's JSON.
    throw new HttpError(400, `the body is not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
    throw new HttpError(400, 'the JSON body must be an object with "embedding" or "embeddings"');
  const inputs: CaptionInput[] = [];
  const addEmbedding = (v: unknown, what: string): void => {
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'number'))
      throw new HttpError(400, `${what} must be an array of numbers`);
    if (embeddingSize !== undefined && v.length !== embeddingSize)
      throw new HttpError(400, `${what} has ${v.length} values but the model expects ${embeddingSize}`);
    inputs.push({ embedding: v as number[] });
  };
  for (const [k, v] of Object.entries(doc)) {
    if (k === 'embedding') addEmbedding(v, '"embedding"');
    else if (k === 'embeddings') {
      if (!Array.isArray(v)) throw new HttpError(400, '"embeddings" must be an array of arrays of numbers');
      if (v.length > limits.embeddingsPerRequest)
        throw new HttpError(
          400,
          `"embeddings" holds ${v.length} embeddings; this server takes at most ${limits.embeddingsPerRequest} per request`,
        );
      v.forEach((e, i) => addEmbedding(e, `embeddings[${i}]`));
    } else setOnce(raw, k, v);
  }
  if (inputs.length === 0) throw new HttpError(400, 'the JSON body holds no "embedding" or "embeddings"');
  if (inputs.length > limits.embeddingsPerRequest)
    throw new HttpError(
      400,
      `more than ${limits.embeddingsPerRequest} embeddings in one request on this server`,
    );
  return inputs;
}
