/**
 * ClipCapWorker: a ClipCap whose model lives on a worker thread. `caption()` posts the inputs there and resolves
 * with the results, so the calling thread's event loop never blocks on compute: an HTTP server answers
 * `GET /health` and accepts connections while a batch runs (clipcap serve uses it).
 *
 * Failures stay per call: an error thrown while captioning rejects that call only (a UserError stays a
 * UserError). If the thread itself dies (out of memory, a bug), the calls in flight reject and the next call
 * starts a fresh thread with the same model. `close()` terminates the thread.
 *
 * @example
 * ```ts
 * const model = await ClipCapWorker.start({ load: { model: 'coco' } });
 * const [r] = await model.caption(['photo.jpg'], { method: 'beam' });
 * await model.close();
 * ```
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { UserError } from '../util/errors.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from './types.js';
import type { FromWorker, ToWorker, WireError, WorkerModelInfo, WorkerModelSpec } from './worker-protocol.js';

export type { WorkerModelInfo, WorkerModelSpec } from './worker-protocol.js';

export interface ClipCapWorkerOptions {
  /** Memory limits of the model thread (Node's Worker resourceLimits). */
  resourceLimits?: ResourceLimits;
}

interface Pending {
  resolve: (r: CaptionResult[]) => void;
  reject: (e: unknown) => void;
  onProgress?: CaptionOptions['onProgress'];
}

/** The compiled worker-main.js beside this file; from the TypeScript sources (vitest), the one `npm run build` made. */
function workerEntry(): URL {
  const here = new URL('./worker-main.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const built = new URL('../../dist/src/pipeline/worker-main.js', import.meta.url);
  if (existsSync(fileURLToPath(built))) return built;
  throw new Error(`the model worker's entry ${fileURLToPath(here)} is missing: run npm run build`);
}

function unwire(e: WireError): Error {
  const err = e.user ? new UserError(e.message) : new Error(e.message);
  if (!e.user) {
    err.name = e.name;
    if (e.stack) err.stack = e.stack; // the model thread's stack, for the server's log
  }
  return err;
}

/** A thread with its model loaded (or loading). */
interface Thread {
  worker: Worker;
  ready: Promise<WorkerModelInfo>;
}

export class ClipCapWorker {
  private thread: Thread | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private modelInfo: WorkerModelInfo;
  /** Threads started after the first one died (for logs and tests). */
  restarts = 0;

  private constructor(
    private readonly spec: WorkerModelSpec,
    private readonly options: ClipCapWorkerOptions,
    first: Thread,
    info: WorkerModelInfo,
  ) {
    this.thread = first;
    this.modelInfo = info;
  }

  /**
   * Starts the thread and loads the model there; rejects (a UserError for bad files or options, as ClipCap.load)
   * when it cannot load, leaving no thread behind.
   */
  static async start(spec: WorkerModelSpec, options: ClipCapWorkerOptions = {}): Promise<ClipCapWorker> {
    let self: ClipCapWorker | null = null;
    const thread = ClipCapWorker.spawn(
      spec,
      options,
      (m) => self?.onMessage(m),
      (why) => self?.onExit(thread, why),
    );
    const info = await thread.ready;
    self = new ClipCapWorker(spec, options, thread, info);
    return self;
  }

  private static spawn(
    spec: WorkerModelSpec,
    options: ClipCapWorkerOptions,
    onMessage: (m: FromWorker) => void,
    onExit: (why: string) => void,
  ): Thread {
    const worker = new Worker(workerEntry(), { workerData: spec, resourceLimits: options.resourceLimits });
    let lastError: Error | null = null;
    const ready = new Promise<WorkerModelInfo>((resolve, reject) => {
      const onEarly = (m: FromWorker): void => {
        if (m.type === 'ready') {
          worker.off('message', onEarly);
          worker.on('message', onMessage);
          resolve(m.info);
        } else if (m.type === 'failed') {
          worker.off('message', onEarly);
          void worker.terminate();
          reject(unwire(m.error));
        }
      };
      worker.on('message', onEarly);
      worker.once('exit', (code) =>
        reject(
          new Error(
            `the model thread stopped while loading (exit code ${code}${lastError ? `: ${lastError.message}` : ''})`,
          ),
        ),
      );
    });
    ready.catch(() => undefined); // start() reports it; a restart's failure is reported to its calls
    worker.on('error', (e) => {
      lastError = e; // an uncaught error in the thread; 'exit' follows
    });
    worker.once('exit', (code) =>
      onExit(`exit code ${code}${lastError ? `: ${lastError.name}: ${lastError.message}` : ''}`),
    );
    return { worker, ready };
  }

  private onMessage(m: FromWorker): void {
    if (m.type === 'ready' || m.type === 'failed') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.type === 'progress') {
      p.onProgress?.(m.done, m.total);
      return;
    }
    this.pending.delete(m.id);
    if (m.type === 'result') p.resolve(m.results);
    else p.reject(unwire(m.error));
  }

  private onExit(thread: Thread, why: string): void {
    if (this.thread !== thread) return;
    this.thread = null;
    const err = new Error(`the model thread stopped (${why})`);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /** The model's description, embedding size and backend. */
  describe(): WorkerModelInfo {
    return { ...this.modelInfo };
  }

  get description(): string {
    return this.modelInfo.description;
  }

  /** Width D of the CLIP embeddings the mapper takes. */
  get embeddingSize(): number {
    return this.modelInfo.embeddingSize;
  }

  /** Caption `inputs` on the model thread (ClipCap.caption's contract; onProgress is called on this thread). */
  async caption(inputs: readonly CaptionInput[], options: CaptionOptions = {}): Promise<CaptionResult[]> {
    if (this.closed) throw new UserError('this ClipCapWorker was closed');
    let thread = this.thread;
    if (!thread) {
      // The last thread died: start a new one with the same model.
      this.restarts++;
      const t = ClipCapWorker.spawn(
        this.spec,
        this.options,
        (m) => this.onMessage(m),
        (why) => this.onExit(t, why),
      );
      this.thread = thread = t;
    }
    this.modelInfo = await thread.ready;
    const { onProgress, ...rest } = options;
    const id = this.nextId++;
    return new Promise<CaptionResult[]>((resolve, reject) => {
      if (this.thread !== thread) {
        reject(new Error('the model thread stopped'));
        return;
      }
      this.pending.set(id, { resolve, reject, onProgress });
      const msg: ToWorker = {
        type: 'caption',
        id,
        inputs,
        options: rest,
        progress: onProgress !== undefined,
      };
      try {
        thread.worker.postMessage(msg);
      } catch (e) {
        // Inputs that cannot be cloned (a caller's mistake): this call only.
        this.pending.delete(id);
        reject(
          new UserError(
            `cannot send the inputs to the model thread: ${e instanceof Error ? e.message : String(e)}`,
          ),
        );
      }
    });
  }

  /** Terminates the model thread; calls in flight reject. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const t = this.thread;
    this.thread = null;
    for (const p of this.pending.values()) p.reject(new Error('the ClipCapWorker was closed'));
    this.pending.clear();
    if (t) await t.worker.terminate();
  }

  /** `await using worker = await ClipCapWorker.start(...)` closes the thread when the block ends. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** close() without waiting (ClipCap's dispose()). */
  dispose(): void {
    void this.close();
  }
}
