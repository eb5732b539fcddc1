/**
 * The model thread of ClipCapWorker (worker.ts): builds the model named by workerData, then captions one request
 * at a time, answering each with its results or its error. Compute blocks only this thread, so the caller's event
 * loop (an HTTP server's) stays free. Nothing here may end the thread on a bad request: every error is answered.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { selectBackend } from '../engine/registry.js';
import { UserError } from '../util/errors.js';
import { ClipCap } from './caption.js';
import { syntheticClipCap } from './synthetic.js';
import type { FromWorker, ToWorker, WireError, WorkerModelSpec } from './worker-protocol.js';

function wire(e: unknown): WireError {
  if (e instanceof Error)
    return { name: e.name, message: e.message, stack: e.stack, user: e instanceof UserError };
  return { name: 'Error', message: String(e), user: false };
}

async function build(spec: WorkerModelSpec): Promise<ClipCap> {
  const { entry, backend } = selectBackend(spec.backend);
  if (spec.threads !== undefined) entry.setThreads?.(backend, spec.threads);
  if (spec.synthetic) return syntheticClipCap(spec.synthetic, backend);
  return ClipCap.load({ ...spec.load, backend });
}

async function main(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('worker-main.ts runs only as a worker thread (see ClipCapWorker)');
  const post = (m: FromWorker): void => port.postMessage(m);
  let model: ClipCap;
  try {
    model = await build(workerData as WorkerModelSpec);
  } catch (e) {
    post({ type: 'failed', error: wire(e) });
    return;
  }
  post({
    type: 'ready',
    info: {
      description: model.parts.description,
      embeddingSize: model.embeddingSize,
      backend: model.backend.name,
    },
  });
  // Requests run one after another: the backend is not re-entrant (the caller's batcher already sends one).
  let chain = Promise.resolve();
  port.on('message', (m: ToWorker) => {
    chain = chain.then(async () => {
      try {
        const options = m.progress
          ? {
              ...m.options,
              onProgress: (done: number, total: number | undefined) =>
                post({ type: 'progress', id: m.id, done, total }),
            }
          : m.options;
        post({ type: 'result', id: m.id, results: await model.caption(m.inputs, options) });
      } catch (e) {
        post({ type: 'error', id: m.id, error: wire(e) });
      }
    });
  });
}

void main();
