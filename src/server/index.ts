/**
 * `clipcap serve`'s HTTP API over node:http (contract in DESIGN.md):
 *   GET  /         a web page: pick or drop photos, see captions, beam candidates with scores and the time taken
 *   GET  /health   -> { status: "ok", model: {...}, limits: {...}, defaults: {...} }
 *   POST /caption  raw image bytes (image/*, application/octet-stream), multipart/form-data with `image` files,
 *                  or JSON { embedding: [D] } / { embeddings: [[D]...] }; decoding options in the query string
 *                  (or JSON members / form fields) -> { results: [{ index, caption, tokens, candidates?, error? }] }
 *
 * No request can take the server down: every path of the handler answers (400 for what the client sent, 500
 * for our bugs, without a stack), and what a client can make the server hold is bounded (ServerOptions):
 * body size and the total of bodies held, queued requests, connections, header/body/idle/compute time, and
 * the knobs that multiply a request's work. When full the server answers 503 with Retry-After.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { resolveDecodeOptions } from '../generate/options.js';
import type { CaptionResult } from '../pipeline/types.js';
import { UserError, errorMessage } from '../util/errors.js';
import { Batcher, TimeoutError, type CaptionModel } from './batcher.js';
import { resolveServerOptions, type ResolvedServerOptions, type ServerOptions } from './options.js';
import { PAGE_CSP, pageHtml } from './page.js';
import { HttpError, bodyKind, parseBody, queryOptions, quote, requestOptions } from './request.js';

export type { CaptionModel } from './batcher.js';
export type { ServerLimits, ServerOptions, ServerTimeouts } from './options.js';
export { DEFAULT_LIMITS, DEFAULT_TIMEOUTS } from './options.js';

export interface CaptionServer {
  readonly server: http.Server;
  /** The batcher's count of model.caption calls (for logs and tests). */
  readonly modelCalls: number;
  /** What the server holds now: requests queued or in model calls, request-body bytes, open connections. */
  stats(): { queuedRequests: number; bodyBytes: number; connections: number };
  /** The options in force, defaults filled in. */
  readonly options: Readonly<ResolvedServerOptions>;
  /** Start listening; resolves with the bound address (port 0 picks a free port). */
  listen(port?: number, host?: string): Promise<AddressInfo>;
  /** Stop accepting connections, answer what is in flight, then resolve. The model is not disposed. */
  close(): Promise<void>;
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

/** What a model says about itself (a ClipCap: its description, embedding size and backend). */
function describeModel(model: CaptionModel): Record<string, unknown> {
  const info: Record<string, unknown> = {};
  const m = model as unknown as Record<string, unknown>;
  try {
    if (model.describe) return { ...model.describe() };
    const parts = m.parts as Record<string, unknown> | undefined;
    if (parts && typeof parts.description === 'string') info.description = parts.description;
    if (typeof m.embeddingSize === 'number') info.embeddingSize = m.embeddingSize;
    const backend = m.backend as Record<string, unknown> | undefined;
    if (backend && typeof backend.name === 'string') info.backend = backend.name;
  } catch {
    // A model whose getters throw (disposed) simply says less.
  }
  return info;
}

function resultJson(r: CaptionResult): Record<string, unknown> {
  if (r.error !== undefined) return { index: r.index, error: oneLine(r.error) };
  const out: Record<string, unknown> = { index: r.index, caption: r.caption, tokens: r.tokens };
  if (r.candidates) out.candidates = r.candidates;
  return out;
}

/** A request path for the log: printable, bounded. */
function logPath(p: string): string {
  const s = p.length > 120 ? p.slice(0, 120) + '...' : p;
  return /^[\x21-\x7e]*$/.test(s) ? s : JSON.stringify(s);
}

/** Answers to requests Node rejects before our handler (bad syntax, huge headers, timeouts). */
function clientErrorAnswer(err: Error & { code?: string }): [number, string] {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return [431, 'the request headers are too large'];
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return [408, 'the request took too long to arrive'];
    default:
      return [400, 'malformed HTTP request'];
  }
}

/**
 * An HTTP captioning server over `model` (not yet listening). The caller owns the model: close() the server,
 * then dispose the model. Throws a UserError for unknown or out-of-range options.
 *
 * @example
 * ```ts
 * const model = await ClipCap.fromPretrained('coco');
 * const srv = createServer(model, { decodeDefaults: { method: 'greedy' }, limits: { beamSize: 8 } });
 * const { port } = await srv.listen(8080, '127.0.0.1');
 * ```
 */
export function createServer(model: CaptionModel, options: ServerOptions = {}): CaptionServer {
  const o = resolveServerOptions(options);
  const { limits, timeouts } = o;
  try {
    resolveDecodeOptions(o.decodeDefaults);
  } catch (e) {
    if (e instanceof UserError) throw new UserError(`createServer options.decodeDefaults: ${e.message}`);
    throw e;
  }
  const modelInfo = { ...describeModel(model), ...o.modelInfo };
  const embeddingSize = typeof modelInfo.embeddingSize === 'number' ? modelInfo.embeddingSize : undefined;
  const batcher = new Batcher(model, {
    windowMs: o.batchWindowMs,
    maxBatch: o.batchSize,
    maxRows: limits.batchRows,
  });
  const resolvedDefaults = resolveDecodeOptions(o.decodeDefaults);
  const health = JSON.stringify({
    status: 'ok',
    model: modelInfo,
    limits: { ...limits, maxBodyBytes: o.maxBodyBytes },
    defaults: {
      decode: resolvedDefaults.method,
      beam_size: resolvedDefaults.beamSize,
      max_tokens: resolvedDefaults.maxTokens,
      top_p: resolvedDefaults.topP,
      temperature: resolvedDefaults.temperature,
      seed: resolvedDefaults.seed,
      num_captions: resolvedDefaults.numCaptions,
    },
  });
  const page = pageHtml();
  let closing = false;
  /** Requests waiting for or in model calls. */
  let queued = 0;
  /** Request-body bytes held now, over all requests. */
  let bodyBytes = 0;

  /** Seconds a refused client should wait: roughly the time to work through what is queued. */
  const retryAfter = (): number => {
    const calls = Math.ceil(batcher.queuedInputs / o.batchSize) + 1;
    return Math.min(60, Math.max(1, Math.ceil((calls * batcher.avgCallMs) / 1000)));
  };
  const busy = (what: string): HttpError =>
    new HttpError(503, `the server is busy (${what}): retry later`, retryAfter());

  /** Read the body within the size limit and the server's body budget; `held` tracks this request's bytes. */
  function readBody(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    held: { bytes: number },
  ): Promise<Buffer> {
    const limit = o.maxBodyBytes;
    const tooBig = (): HttpError => new HttpError(413, `the body is over the ${limit}-byte limit`);
    const reserve = (n: number): void => {
      if (bodyBytes + n > o.maxBodyBudgetBytes) throw busy('too many request bodies in memory');
      bodyBytes += n;
      held.bytes += n;
    };
    const declaredText = req.headers['content-length'];
    const declared = declaredText === undefined ? NaN : Number(declaredText);
    if (Number.isFinite(declared)) {
      if (declared > limit) return Promise.reject(tooBig());
      reserve(declared); // the whole body up front: a client cannot promise small and hold large
    }
    // "Expect: 100-continue": the client waits for this before sending the body, so it is sent only now,
    // when every check the headers allow has passed.
    if (/^100-continue$/i.test(req.headers.expect ?? '')) res.writeContinue();
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      // The body deadline is ours, not Node's requestTimeout: while a model call blocks the event loop, the
      // rest of a body can wait unread in the socket, and after the call timers run before sockets are read.
      // So when the deadline fires, let one poll phase read what has arrived before deciding.
      const timer = setTimeout(
        () =>
          setImmediate(() => {
            if (!done)
              stop(
                new HttpError(
                  408,
                  `the request body took longer than ${(timeouts.bodyMs / 1000).toFixed(1)} s to arrive`,
                ),
              );
          }),
        timeouts.bodyMs,
      );
      const stop = (e: HttpError): void => {
        done = true;
        clearTimeout(timer);
        req.pause();
        reject(e);
      };
      req.on('data', (c: Buffer) => {
        if (done) return;
        size += c.length;
        if (size > limit) return stop(tooBig());
        if (!Number.isFinite(declared)) {
          try {
            reserve(c.length);
          } catch (e) {
            return stop(e as HttpError);
          }
        }
        chunks.push(c);
      });
      req.on('end', () => {
        if (!done) resolve(Buffer.concat(chunks));
        done = true;
        clearTimeout(timer);
      });
      req.on('aborted', () => {
        if (!done) reject(new HttpError(400, 'the client closed the connection mid-request'));
        done = true;
        clearTimeout(timer);
      });
      req.on('error', (e) => {
        if (!done) reject(new HttpError(400, `reading the request failed: ${errorMessage(e)}`));
        done = true;
        clearTimeout(timer);
      });
    });
  }

  async function caption(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    query: string,
    held: { bytes: number },
  ): Promise<{ body: unknown; n: number }> {
    if (closing) throw new HttpError(503, 'the server is shutting down', 5);
    if (queued >= o.maxQueuedRequests) throw busy(`${queued} requests queued`);
    // Everything the headers alone can refuse is refused before a byte of the body is read.
    const raw = queryOptions(query);
    const { kind, boundary } = bodyKind(req.headers['content-type']);
    const body = await readBody(req, res, held);
    const inputs = parseBody(body, kind, boundary, raw, limits, embeddingSize);
    const { options: co, key, rowsPerInput } = requestOptions(raw, o.decodeDefaults, limits, o.maxPixels);
    if (closing) throw new HttpError(503, 'the server is shutting down', 5);
    if (queued >= o.maxQueuedRequests) throw busy(`${queued} requests queued`);
    queued++;
    let results: CaptionResult[];
    try {
      results = await batcher.submit(inputs, co, key, { rowsPerInput, deadlineMs: timeouts.computeMs });
    } catch (e) {
      if (e instanceof TimeoutError) throw new HttpError(503, `${e.message}: retry later`, retryAfter());
      // A whole-batch failure (e.g. CLIP could not load): the server's configuration, not this request.
      if (e instanceof UserError) throw new HttpError(500, e.message);
      throw e;
    } finally {
      queued--;
    }
    const failed = results.filter((r) => r.error !== undefined);
    // Nothing captioned: the request itself is bad (a single unreadable image, wrong embedding width).
    if (failed.length === results.length) throw new HttpError(400, oneLine(failed[0].error ?? 'bad input'));
    return { body: { results: results.map(resultJson) }, n: inputs.length };
  }

  function onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const t0 = performance.now();
    const held = { bytes: 0 };
    const socket = req.socket;
    requestsOn.set(socket, (requestsOn.get(socket) ?? 0) + 1);
    // A kept-alive connection gets a fresh headers deadline for its next request.
    res.on('finish', () => {
      if (!socket.destroyed) armHeadersDeadline(socket);
    });
    // Errors on either stream (a client that vanished) end up here, not as uncaught 'error' events.
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    // The body budget is given back however the exchange ends (answered, reset, timed out).
    res.on('close', () => {
      bodyBytes -= held.bytes;
      held.bytes = 0;
    });
    let pathname = '/';
    let query = '';
    const method = req.method ?? 'GET';
    const send = (
      status: number,
      body: string,
      type: string,
      extra: http.OutgoingHttpHeaders = {},
      logNote = '',
    ): void => {
      if (res.headersSent || res.destroyed) return;
      const headers: http.OutgoingHttpHeaders = {
        'content-type': type,
        'content-length': Buffer.byteLength(body),
        'x-content-type-options': 'nosniff',
        ...extra,
      };
      // A body we did not read to its end would be parsed as the next request: close after answering. (A
      // request without a body is not yet `complete` while its handler runs: it has nothing unread.)
      const hasBody =
        req.headers['transfer-encoding'] !== undefined ||
        (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
      const unread = hasBody && !req.complete;
      if (unread || closing) headers.connection = 'close';
      res.writeHead(status, headers);
      res.end(method === 'HEAD' ? undefined : body);
      if (unread) res.on('finish', () => req.socket.destroySoon());
      o.log?.(
        `${method.slice(0, 16)} ${logPath(pathname)} ${status} ${(performance.now() - t0).toFixed(1)} ms${logNote}`,
      );
    };
    const sendJson = (status: number, body: unknown, extra: http.OutgoingHttpHeaders = {}, note = ''): void =>
      send(status, JSON.stringify(body), 'application/json; charset=utf-8', extra, note);
    const fail = (e: unknown): void => {
      if (e instanceof HttpError) {
        const extra: http.OutgoingHttpHeaders = {};
        if (e.retryAfterS !== undefined) extra['retry-after'] = String(e.retryAfterS);
        if (e.status === 405) extra.allow = pathname === '/caption' ? 'POST' : 'GET, HEAD';
        const msg = oneLine(e.message);
        sendJson(e.status, { error: msg }, extra, ` (${msg})`);
        return;
      }
      // Bugs keep their stack in the server's log, never in the response.
      const line = `clipcap serve: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
      if (o.log) o.log(line);
      else process.stderr.write(line + '\n');
      sendJson(500, { error: 'internal server error' });
    };
    try {
      const url = req.url ?? '/';
      // Origin-form ("/caption?x") or absolute-form ("http://host/caption?x"); anything else is a 400.
      let target = url;
      if (!url.startsWith('/')) {
        const m = /^https?:\/\/[^/?#]*(.*)$/i.exec(url);
        if (!m) throw new HttpError(400, `bad request target ${quote(url)}`);
        target = m[1] === '' || m[1].startsWith('?') ? '/' + m[1] : m[1];
      }
      const q = target.indexOf('?');
      pathname = q < 0 ? target : target.slice(0, q);
      query = q < 0 ? '' : target.slice(q + 1);
      switch (pathname) {
        case '/':
        case '/index.html':
          if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, `use GET ${pathname}`);
          send(200, page, 'text/html; charset=utf-8', {
            'content-security-policy': PAGE_CSP,
            'cache-control': 'no-store',
          });
          return;
        case '/health':
          if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, 'use GET /health');
          send(200, health, 'application/json; charset=utf-8', { 'cache-control': 'no-store' });
          return;
        case '/caption':
          if (method !== 'POST') throw new HttpError(405, 'use POST /caption');
          caption(req, res, query, held).then(
            (r) => sendJson(200, r.body, {}, ` ${r.n} input${r.n === 1 ? '' : 's'}`),
            (e: unknown) => {
              try {
                fail(e);
              } catch (e2) {
                res.destroy();
                void e2;
              }
            },
          );
          return;
        default:
          throw new HttpError(
            404,
            `no such endpoint ${quote(pathname)}: use POST /caption, GET /health or GET /`,
          );
      }
    } catch (e) {
      try {
        fail(e);
      } catch {
        // Answering failed too (the socket is gone): nothing is left to tell the client.
        res.destroy();
      }
    }
  }

  /** Requests whose headers have arrived, per socket (the headers deadline's progress mark). */
  const requestsOn = new WeakMap<Socket, number>();
  /** The pending headers deadline of each connection. */
  const headersTimers = new WeakMap<Socket, NodeJS.Timeout>();

  /**
   * The headers deadline of a connection, from its start and again after each answer: no complete request
   * headers within timeouts.headersMs (after one more poll phase, see createServer's http options) means a
   * 408 and the connection closed. Idle keep-alive connections are closed sooner by Node's keepAliveTimeout.
   */
  function armHeadersDeadline(socket: Socket): void {
    const mark = requestsOn.get(socket) ?? 0;
    // One deadline per connection: a kept-alive connection re-arms it after every answer, so the previous
    // timer goes and the close listener is added once (one per request would pile up on a busy connection).
    const previous = headersTimers.get(socket);
    if (previous) clearTimeout(previous);
    else socket.once('close', () => clearTimeout(headersTimers.get(socket)));
    const timer = setTimeout(
      () =>
        setImmediate(() => {
          if (socket.destroyed || (requestsOn.get(socket) ?? 0) !== mark) return;
          const body = JSON.stringify({ error: 'the request headers took too long to arrive' });
          o.log?.(`- - 408 (the request headers took too long to arrive)`);
          if (socket.writable)
            socket.end(
              `HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n` +
                `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
            );
          socket.destroySoon();
        }),
      timeouts.headersMs,
    );
    timer.unref();
    headersTimers.set(socket, timer);
  }

  const server = http.createServer(
    {
      // Node's header and request timers are off: while a model call blocks the event loop, requests arrive
      // unread in their sockets, and after the call Node's periodic check runs before they are read and
      // answers them 408. The server keeps its own deadlines (onConnection, readBody), which look once more
      // after a poll phase has read what arrived.
      headersTimeout: 0,
      requestTimeout: 0,
      keepAliveTimeout: timeouts.idleMs,
      maxHeaderSize: 16 * 1024,
    },
    onRequest,
  );
  server.maxConnections = o.maxConnections;
  // Without this listener Node would answer "100 Continue" before any check; readBody sends it when due.
  server.on('checkContinue', onRequest);
  // Requests Node refuses before our handler: answer in one line if the socket can take it, then close.
  server.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
    // A response already under way on this socket cannot be followed by another: just close.
    const current = (socket as unknown as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || current?.headersSent === true) {
      socket.destroy();
      return;
    }
    const [status, msg] = clientErrorAnswer(err);
    const body = JSON.stringify({ error: msg });
    o.log?.(`- - ${status} (${msg})`);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
    socket.destroySoon();
  });
  // A socket error after the exchange (client reset) must never become an uncaught exception.
  // The keep-alive idle timeout is a socket timer: after a blocking model call it can fire before the poll
  // phase reads a request that arrived meanwhile. With this listener Node leaves the socket to us: close it
  // only if nothing arrived by the end of the next poll phase.
  server.on('timeout', (socket: Socket) => {
    const seen = socket.bytesRead;
    setImmediate(() => {
      if (socket.bytesRead === seen && !socket.destroyed) socket.destroy();
    });
  });
  let connections = 0;
  server.on('connection', (socket: Socket) => {
    connections++;
    socket.on('close', () => connections--);
    socket.on('error', () => undefined);
    armHeadersDeadline(socket);
  });

  return {
    server,
    options: o,
    get modelCalls() {
      return batcher.calls;
    },
    stats() {
      return { queuedRequests: queued, bodyBytes, connections };
    },
    listen(port = 8080, host = '127.0.0.1') {
      return new Promise<AddressInfo>((resolve, reject) => {
        const onError = (e: Error & { code?: string }): void => {
          if (e.code === 'EADDRINUSE')
            reject(new UserError(`cannot listen on ${host}:${port}: the port is in use`));
          else if (e.code === 'EACCES')
            reject(
              new UserError(
                `cannot listen on ${host}:${port}: permission denied (ports below 1024 need privileges)`,
              ),
            );
          else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN')
            reject(new UserError(`cannot listen on ${host}:${port}: no such local address`));
          else reject(e);
        };
        server.once('error', onError);
        server.listen(port, host, () => {
          server.off('error', onError);
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
