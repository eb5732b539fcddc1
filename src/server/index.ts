/**
 * `clipcap serve`'s HTTP API over node:http (contract in DESIGN.md):
 *   GET  /health   -> { status: "ok", model: {...} }
 *   POST /caption  raw image bytes (image/*, application/octet-stream), multipart/form-data with `image` files,
 *                  or JSON { embedding: [D] } / { embeddings: [[D]...] }; decoding options in the query string
 *                  (or JSON members / form fields) -> { results: [{ index, caption, tokens, candidates?, error? }] }
 * Requests are micro-batched (see batcher.ts). Errors are JSON { error: one line }; a 500 never carries a stack.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { resultJson } from '../cli/commands/caption.js';
import { resolveDecodeOptions, type DecodeOptions } from '../generate/options.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from '../pipeline/types.js';
import { UserError, errorMessage } from '../util/errors.js';
import { Batcher, type CaptionModel } from './batcher.js';
import { DEFAULT_MULTIPART_LIMITS, multipartBoundary, parseMultipart } from './multipart.js';

export type { CaptionModel } from './batcher.js';

export interface ServerOptions {
  /** Decoding used when a request names no option (CLI: the caption command's decode flags). */
  decodeDefaults?: DecodeOptions;
  /** Largest request body in bytes (default 20 MiB); larger requests get 413 and are not read further. */
  maxBodyBytes?: number;
  /** Refuse images with more pixels (decompression bombs); default the pipeline's 100 million. */
  maxPixels?: number;
  /** How long a request waits for others to share its model call (ms, default 10). */
  batchWindowMs?: number;
  /** Most images per model call (default 16). */
  maxBatch?: number;
  /** Most images (or embeddings) in one request (default 256). */
  maxInputsPerRequest?: number;
  /** What GET /health reports under "model". */
  modelInfo?: Record<string, unknown>;
  /** One line per request (default: stderr). */
  log?: (line: string) => void;
}

export interface CaptionServer {
  readonly server: http.Server;
  /** The batcher's count of model.caption calls (for logs and tests). */
  readonly modelCalls: number;
  /** Start listening; resolves with the bound address (port 0 picks a free port). */
  listen(port?: number, host?: string): Promise<AddressInfo>;
  /** Stop accepting connections, answer what is in flight, then resolve. The model is not disposed. */
  close(): Promise<void>;
}

/** An error answered with its status and one-line message. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const MIB = 1024 * 1024;

/** The request options we accept, by their wire name. */
const OPTION_NAMES = new Set([
  'decode',
  'beam_size',
  'max_tokens',
  'top_p',
  'temperature',
  'stop',
  'seed',
  'num_captions',
]);

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

function num(name: string, v: unknown, integer: boolean): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)))
    throw new HttpError(
      400,
      `${name} must be ${integer ? 'an integer' : 'a number'}, got ${JSON.stringify(v)}`,
    );
  return n;
}

/**
 * Request options (query string, JSON members, form fields) over the server's defaults, validated.
 * Returns the caption options and a key that is equal exactly when two requests decode alike.
 */
export function requestOptions(
  raw: ReadonlyMap<string, unknown>,
  defaults: DecodeOptions,
  maxPixels: number | undefined,
): { options: CaptionOptions; key: string } {
  const o: DecodeOptions = { ...defaults };
  for (const [k, v] of raw) {
    if (!OPTION_NAMES.has(k))
      throw new HttpError(400, `unknown option "${k}": use ${[...OPTION_NAMES].join(', ')}`);
    switch (k) {
      case 'decode':
        if (v !== 'beam' && v !== 'greedy' && v !== 'nucleus')
          throw new HttpError(400, `decode must be beam, greedy or nucleus, got ${JSON.stringify(v)}`);
        o.method = v;
        break;
      case 'stop':
        if (v !== '.' && v !== 'eos' && v !== 'none')
          throw new HttpError(400, `stop must be ".", "eos" or "none", got ${JSON.stringify(v)}`);
        o.stop = v;
        break;
      case 'beam_size':
        o.beamSize = num(k, v, true);
        break;
      case 'max_tokens':
        o.maxTokens = num(k, v, true);
        break;
      case 'top_p':
        o.topP = num(k, v, false);
        break;
      case 'temperature':
        o.temperature = num(k, v, false);
        if (!(o.temperature > 0)) throw new HttpError(400, 'temperature must be a positive number');
        break;
      case 'seed':
        o.seed = num(k, v, true);
        if (o.seed < 0 || o.seed > 2 ** 32 - 1) throw new HttpError(400, 'seed must be from 0 to 4294967295');
        break;
      case 'num_captions':
        o.numCaptions = num(k, v, true);
        break;
    }
  }
  let r;
  try {
    r = resolveDecodeOptions(o);
  } catch (e) {
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
  return { options, key: JSON.stringify(r) };
}

/** Read the body up to `limit` bytes; past it, a 413 (the caller answers and stops reading). */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit)
    return Promise.reject(new HttpError(413, `the body is over the ${limit}-byte limit`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > limit) {
        done = true;
        req.pause();
        reject(new HttpError(413, `the body is over the ${limit}-byte limit`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (!done) resolve(Buffer.concat(chunks));
    });
    req.on('error', (e) => {
      if (!done) reject(new HttpError(400, `reading the request failed: ${errorMessage(e)}`));
      done = true;
    });
  });
}

function isNumberArray(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((v) => typeof v === 'number');
}

/** The inputs and options of a POST /caption. */
async function parseCaptionRequest(
  req: http.IncomingMessage,
  url: URL,
  maxBody: number,
  maxInputs: number,
): Promise<{ inputs: CaptionInput[]; raw: Map<string, unknown> }> {
  const raw = new Map<string, unknown>();
  for (const [k, v] of url.searchParams) raw.set(k, v);
  const contentType = (req.headers['content-type'] ?? '').toLowerCase();
  const mime = contentType.split(';')[0].trim();
  const isImage = mime.startsWith('image/') || mime === 'application/octet-stream';
  if (!isImage && mime !== 'multipart/form-data' && mime !== 'application/json')
    throw new HttpError(
      415,
      `unsupported Content-Type "${mime}": send image/*, application/octet-stream, multipart/form-data or application/json`,
    );
  const boundary =
    mime === 'multipart/form-data' ? multipartBoundaryOr400(req.headers['content-type'] ?? '') : '';
  const body = await readBody(req, maxBody);
  if (isImage) {
    if (body.length === 0) throw new HttpError(400, 'the request body is empty: send the image bytes');
    return { inputs: [new Uint8Array(body)], raw };
  }
  if (mime === 'multipart/form-data') {
    let parts;
    try {
      parts = parseMultipart(body, boundary, { ...DEFAULT_MULTIPART_LIMITS, maxParts: maxInputs + 16 });
    } catch (e) {
      if (e instanceof UserError) throw new HttpError(400, e.message);
      throw e;
    }
    const inputs: CaptionInput[] = [];
    for (const p of parts) {
      if (p.name === 'image') {
        if (p.data.length === 0) throw new HttpError(400, `image ${inputs.length} is empty`);
        inputs.push(p.data);
      } else if (OPTION_NAMES.has(p.name) && p.filename === undefined) {
        raw.set(p.name, Buffer.from(p.data).toString('utf8'));
      } else throw new HttpError(400, `unexpected form field "${p.name}": send images as "image" files`);
    }
    if (inputs.length === 0) throw new HttpError(400, 'the form holds no "image" file');
    if (inputs.length > maxInputs) throw new HttpError(400, `more than ${maxInputs} images in one request`);
    return { inputs, raw };
  }
  // application/json
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw new HttpError(400, `the body is not valid JSON: ${errorMessage(e)}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
    throw new HttpError(400, 'the JSON body must be an object with "embedding" or "embeddings"');
  const inputs: CaptionInput[] = [];
  for (const [k, v] of Object.entries(doc)) {
    if (k === 'embedding') {
      if (!isNumberArray(v)) throw new HttpError(400, '"embedding" must be an array of numbers');
      inputs.push({ embedding: v });
    } else if (k === 'embeddings') {
      if (!Array.isArray(v) || !v.every(isNumberArray))
        throw new HttpError(400, '"embeddings" must be an array of arrays of numbers');
      for (const e of v) inputs.push({ embedding: e });
    } else raw.set(k, v);
  }
  if (inputs.length === 0) throw new HttpError(400, 'the JSON body holds no "embedding" or "embeddings"');
  if (inputs.length > maxInputs) throw new HttpError(400, `more than ${maxInputs} embeddings in one request`);
  return { inputs, raw };
}

function multipartBoundaryOr400(contentType: string): string {
  try {
    return multipartBoundary(contentType);
  } catch (e) {
    throw new HttpError(400, errorMessage(e));
  }
}

/**
 * An HTTP captioning server over `model` (not yet listening). The caller owns the model: close() the server,
 * then dispose the model.
 *
 * @example
 * ```ts
 * const model = await ClipCap.fromPretrained('coco');
 * const srv = createServer(model, { decodeDefaults: { method: 'greedy' } });
 * const { port } = await srv.listen(8080, '127.0.0.1');
 * ```
 */
export function createServer(model: CaptionModel, options: ServerOptions = {}): CaptionServer {
  const maxBody = options.maxBodyBytes ?? 20 * MIB;
  const maxInputs = options.maxInputsPerRequest ?? 256;
  const defaults = options.decodeDefaults ?? {};
  const log = options.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const batcher = new Batcher(model, {
    windowMs: options.batchWindowMs ?? 10,
    maxBatch: options.maxBatch ?? 16,
  });
  let closing = false;

  async function handle(
    req: http.IncomingMessage,
    url: URL,
  ): Promise<{ status: number; body: unknown; n?: number }> {
    if (url.pathname === '/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, 'use GET /health');
      return { status: 200, body: { status: 'ok', model: options.modelInfo ?? {} } };
    }
    if (url.pathname !== '/caption')
      throw new HttpError(404, `no such endpoint ${url.pathname}: use POST /caption or GET /health`);
    if (req.method !== 'POST') throw new HttpError(405, 'use POST /caption');
    if (closing) throw new HttpError(503, 'the server is shutting down');
    const { inputs, raw } = await parseCaptionRequest(req, url, maxBody, maxInputs);
    const { options: co, key } = requestOptions(raw, defaults, options.maxPixels);
    let results: CaptionResult[];
    try {
      results = await batcher.submit(inputs, co, key);
    } catch (e) {
      // A whole-batch failure (e.g. CLIP could not load): the user's configuration, not this request.
      if (e instanceof UserError) throw new HttpError(500, e.message);
      throw e;
    }
    const failed = results.filter((r) => r.error !== undefined);
    // Nothing captioned: the request itself is bad (a single unreadable image, wrong embedding width).
    if (failed.length === results.length) throw new HttpError(400, oneLine(failed[0].error ?? 'bad input'));
    return { status: 200, body: { results: results.map((r) => resultJson(r, true)) }, n: inputs.length };
  }

  const server = http.createServer((req, res) => {
    const t0 = performance.now();
    const url = new URL(req.url ?? '/', 'http://localhost');
    const finish = (status: number, body: unknown, n?: number, stopReading = false): void => {
      const text = JSON.stringify(body);
      const headers: http.OutgoingHttpHeaders = {
        'content-type': 'application/json; charset=utf-8',
        'content-length': Buffer.byteLength(text),
      };
      if (status === 405) headers.allow = url.pathname === '/health' ? 'GET, HEAD' : 'POST';
      // The rest of an oversize body is never read: close the connection once the answer is out.
      if (stopReading) headers.connection = 'close';
      res.writeHead(status, headers);
      res.end(req.method === 'HEAD' ? undefined : text);
      if (stopReading) res.on('finish', () => req.socket.destroySoon());
      const ms = (performance.now() - t0).toFixed(1);
      const what = n !== undefined ? ` ${n} input${n === 1 ? '' : 's'}` : '';
      const err =
        status >= 400 && typeof body === 'object' && body !== null && 'error' in body
          ? ` (${String(body.error)})`
          : '';
      log(`${req.method ?? '?'} ${url.pathname} ${status} ${ms} ms${what}${err}`);
    };
    handle(req, url).then(
      (r) => finish(r.status, r.body, r.n),
      (e: unknown) => {
        if (e instanceof HttpError)
          finish(e.status, { error: oneLine(e.message) }, undefined, e.status === 413);
        else {
          // Bugs keep their stack in the server's log, never in the response.
          log(`clipcap serve: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
          finish(500, { error: 'internal server error' });
        }
        // An unread body (errors found from the headers alone) would stall keep-alive: drain or drop it.
        if (!req.complete && !(e instanceof HttpError && e.status === 413)) req.resume();
      },
    );
  });

  return {
    server,
    get modelCalls() {
      return batcher.calls;
    },
    listen(port = 8080, host = '127.0.0.1') {
      return new Promise<AddressInfo>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    async close() {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await batcher.drain();
      // Requests still being read or answered finish on their own; then keep-alive sockets go idle.
      const idle = setInterval(() => server.closeIdleConnections(), 50);
      try {
        await closed;
      } finally {
        clearInterval(idle);
      }
    },
  };
}
