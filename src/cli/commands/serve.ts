/**
 * `clipcap serve`: load the model once and caption images over HTTP (API in server/index.ts and DESIGN.md).
 * Runs until SIGINT/SIGTERM, then stops accepting, answers what is in flight and disposes the model.
 */
import type { Command } from 'commander';
import { ClipCap } from '../../pipeline/caption.js';
import { createServer } from '../../server/index.js';
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
  maxBatch: number;
}

export async function runServe(o: ServeCliOptions): Promise<void> {
  const model = await ClipCap.load(loadOptionsFromCli(o));
  const srv = createServer(model, {
    decodeDefaults: decodeOptionsFromCli(o),
    maxBodyBytes: Math.floor(o.maxBodyMb * 1024 * 1024),
    maxPixels: o.maxPixels,
    batchWindowMs: o.batchWindowMs,
    maxBatch: o.maxBatch,
    modelInfo: {
      description: model.parts.description,
      embeddingSize: model.embeddingSize,
      backend: model.backend.name,
    },
  });
  let addr;
  try {
    addr = await srv.listen(o.port, o.host);
  } catch (e) {
    model.dispose();
    throw e;
  }
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  process.stderr.write(
    `clipcap serve: ${model.parts.description} listening on http://${host}:${addr.port}\n`,
  );
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      process.stderr.write(`clipcap serve: ${signal}: finishing requests in flight\n`);
      srv.close().finally(() => {
        model.dispose();
        resolve();
      });
    };
    const onInt = (): void => stop('SIGINT');
    const onTerm = (): void => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}

export function register(program: Command): void {
  const cmd = program
    .command('serve')
    .description('caption images over HTTP: POST /caption, GET /health')
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
    .option('--max-batch <n>', 'most images per model call', intArg('--max-batch', 1, 4096), 16)
    .action(async (o: ServeCliOptions) => {
      await runServe(o);
    });
}
