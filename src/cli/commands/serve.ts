/**
 * `clipcap serve`: load the model once and caption images over HTTP (API in server/index.ts and DESIGN.md).
 * The model lives on a worker thread (ClipCapWorker), so the server keeps answering (`GET /health`, new
 * connections) while a batch computes. Runs until SIGINT/SIGTERM, then stops accepting, answers what is in
 * flight and terminates the model thread.
 */
import net from 'node:net';
import { Option, type Command } from 'commander';
import { ClipCapWorker } from '../../pipeline/worker.js';
import { createServer, DEFAULT_LIMITS, DEFAULT_TIMEOUTS } from '../../server/index.js';
import { UsageError, UserError } from '../../util/errors.js';
import {
  addDecodeOptions,
  addModelOptions,
  decodeOptionsFromCli,
  floatArg,
  intArg,
  loadOptionsFromCli,
  type DecodeCliOptions,
  type ModelCliOptions,
} from './caption.js';
import { maxPixelsOption } from '../options.js';

interface ServeCliOptions extends ModelCliOptions, DecodeCliOptions {
  host: string;
  port: number;
  maxBodyMb: number;
  maxPixels?: number;
  batchWindowMs: number;
  batchSize?: number;
  /** Deprecated alias of --batch-size. */
  maxBatch?: number;
  limitBeamSize: number;
  limitNumCaptions: number;
  limitMaxTokens: number;
  limitImages: number;
  limitEmbeddings: number;
  batchRows: number;
  maxQueued: number;
  bodyBudgetMb: number;
  maxConnections: number;
  headersTimeout: number;
  bodyTimeout: number;
  idleTimeout: number;
  computeTimeout: number;
  log: boolean;
}

/** The CLI's decode defaults must fit its own limits: say which flag to raise. */
function checkDefaultsFit(o: ServeCliOptions): void {
  const pairs: [string, number, string, number][] = [
    ['--beam-size', o.beamSize, '--limit-beam-size', o.limitBeamSize],
    ['--max-tokens', o.maxTokens, '--limit-max-tokens', o.limitMaxTokens],
  ];
  for (const [flag, v, limitFlag, limit] of pairs)
    if (v > limit)
      throw new UsageError(`${flag} ${v} is over ${limitFlag} ${limit}: raise ${limitFlag} or lower ${flag}`);
  if (o.limitBeamSize > o.batchRows || o.limitNumCaptions > o.batchRows)
    throw new UsageError('--batch-rows must be at least --limit-beam-size and --limit-num-captions');
  if (o.bodyBudgetMb < o.maxBodyMb) throw new UsageError('--body-budget-mb must be at least --max-body-mb');
  if (o.batchSize !== undefined && o.maxBatch !== undefined)
    throw new UsageError('give --batch-size only (--max-batch is its deprecated old name)');
}

/** Fail before the (slow) model load when the address cannot be bound; listen() still checks for real. */
async function checkCanListen(host: string, port: number): Promise<void> {
  if (port === 0) return;
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', (e: Error & { code?: string }) => {
      if (e.code === 'EADDRINUSE')
        reject(
          new UserError(
            `cannot listen on ${host}:${port}: the port is in use: choose another --port (0 picks a free one) or stop the other server`,
          ),
        );
      else if (e.code === 'EACCES')
        reject(new UserError(`cannot listen on ${host}:${port}: permission denied: use a --port above 1023`));
      else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN')
        reject(new UserError(`cannot listen on ${host}:${port}: no such local address: check --host`));
      else reject(e);
    });
    probe.listen(port, host, () => probe.close(() => resolve()));
  });
}

export async function runServe(o: ServeCliOptions): Promise<void> {
  checkDefaultsFit(o);
  await checkCanListen(o.host, o.port);
  const { backend, ...load } = loadOptionsFromCli(o);
  const model = await ClipCapWorker.start({
    load,
    backend: typeof backend === 'string' ? backend : undefined,
  });
  let srv;
  let addr;
  try {
    srv = createServer(model, {
      decodeDefaults: decodeOptionsFromCli(o),
      maxBodyBytes: Math.floor(o.maxBodyMb * 1024 * 1024),
      maxBodyBudgetBytes: Math.floor(o.bodyBudgetMb * 1024 * 1024),
      maxPixels: o.maxPixels,
      batchWindowMs: o.batchWindowMs,
      batchSize: o.batchSize ?? o.maxBatch ?? 16,
      limits: {
        beamSize: o.limitBeamSize,
        numCaptions: o.limitNumCaptions,
        maxTokens: o.limitMaxTokens,
        imagesPerRequest: o.limitImages,
        embeddingsPerRequest: o.limitEmbeddings,
        batchRows: o.batchRows,
      },
      timeouts: {
        headersMs: Math.round(o.headersTimeout * 1000),
        bodyMs: Math.round(o.bodyTimeout * 1000),
        idleMs: Math.round(o.idleTimeout * 1000),
        computeMs: Math.round(o.computeTimeout * 1000),
      },
      maxQueuedRequests: o.maxQueued,
      maxConnections: o.maxConnections,
      log: o.log,
    });
    addr = await srv.listen(o.port, o.host);
  } catch (e) {
    await model.close();
    if (e instanceof UserError && /port is in use/.test(e.message))
      throw new UserError(
        `${e.message}: choose another --port (0 picks a free one) or stop the other server`,
      );
    throw e;
  }
  const server = srv;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  process.stderr.write(`clipcap serve: ${model.description} listening on http://${host}:${addr.port}\n`);
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      process.stderr.write(`clipcap serve: ${signal}: finishing requests in flight\n`);
      server
        .close()
        .finally(() => model.close())
        .finally(resolve);
    };
    const onInt = (): void => stop('SIGINT');
    const onTerm = (): void => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}

const seconds = (name: string): ((v: string) => number) =>
  floatArg(name, (x) => x >= 0.001 && x <= 3600, 'a number of seconds from 0.001 to 3600');

export function register(program: Command): void {
  const L = DEFAULT_LIMITS;
  const T = DEFAULT_TIMEOUTS;
  const cmd = program
    .command('serve')
    .description('caption images over HTTP: a web page at GET /, POST /caption, GET /health')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', intArg('--port', 0, 65535), 8080);
  addDecodeOptions(addModelOptions(cmd))
    .option(
      '--max-body-mb <mb>',
      'largest request body in MiB (larger: 413)',
      floatArg('--max-body-mb', (x) => x > 0 && x <= 4096, 'a number in (0, 4096]'),
      20,
    )
    .addOption(maxPixelsOption())
    .option(
      '--batch-window-ms <ms>',
      'how long a request waits to share a model call with others',
      intArg('--batch-window-ms', 0, 60000),
      10,
    )
    .option('--batch-size <n>', 'most images per model call (default: 16)', intArg('--batch-size', 1, 4096))
    .addOption(
      new Option('--max-batch <n>', 'deprecated: use --batch-size')
        .argParser(intArg('--max-batch', 1, 4096))
        .hideHelp(),
    )
    .option(
      '--limit-beam-size <n>',
      'largest beam_size a request may ask for',
      intArg('--limit-beam-size', 1, 1000),
      L.beamSize,
    )
    .option(
      '--limit-num-captions <n>',
      'largest num_captions a request may ask for',
      intArg('--limit-num-captions', 1, 1000),
      L.numCaptions,
    )
    .option(
      '--limit-max-tokens <n>',
      'largest max_tokens a request may ask for',
      intArg('--limit-max-tokens', 1, 1000),
      L.maxTokens,
    )
    .option(
      '--limit-images <n>',
      'most images in one request',
      intArg('--limit-images', 1, 4096),
      L.imagesPerRequest,
    )
    .option(
      '--limit-embeddings <n>',
      'most embeddings in one JSON request',
      intArg('--limit-embeddings', 1, 1_000_000),
      L.embeddingsPerRequest,
    )
    .option(
      '--batch-rows <n>',
      "most decoding rows (images x beam_size or x num_captions) in one model call: bounds a call's memory",
      intArg('--batch-rows', 1, 1_000_000),
      L.batchRows,
    )
    .option(
      '--max-queued <n>',
      'most requests waiting for or in model calls (more: 503 with Retry-After)',
      intArg('--max-queued', 1, 1_000_000),
      64,
    )
    .option(
      '--body-budget-mb <mb>',
      'most MiB of request bodies held at once, over all requests (more: 503 with Retry-After)',
      floatArg('--body-budget-mb', (x) => x > 0 && x <= 1_048_576, 'a number in (0, 1048576]'),
      128,
    )
    .option('--max-connections <n>', 'most open connections', intArg('--max-connections', 1, 1_000_000), 256)
    .option(
      '--headers-timeout <s>',
      'seconds to receive request headers',
      seconds('--headers-timeout'),
      T.headersMs / 1000,
    )
    .option(
      '--body-timeout <s>',
      'seconds to receive a whole request (slower: 408)',
      seconds('--body-timeout'),
      T.bodyMs / 1000,
    )
    .option(
      '--idle-timeout <s>',
      'seconds a keep-alive connection may stay idle',
      seconds('--idle-timeout'),
      T.idleMs / 1000,
    )
    .option(
      '--compute-timeout <s>',
      'seconds a request may wait for and run its captioning (later: 503)',
      seconds('--compute-timeout'),
      T.computeMs / 1000,
    )
    .option('--no-log', 'do not log one line per request on stderr')
    .action(async (o: ServeCliOptions) => {
      await runServe(o);
    });
}
