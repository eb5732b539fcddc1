/**
 * Micro-batching for the HTTP server: requests that arrive within a short window with the same decoding
 * options share one model.caption call (the model's batch matmuls amortize far better than one image at a
 * time), and model calls run one at a time, because the model's backend is not re-entrant and two
 * concurrent batches would only compete for the same cores.
 *
 * A model call holds at most `batchSize` inputs and `batchRows` decoding rows (inputs x rows per input), so
 * its memory is known before it starts; a request larger than that is split over several calls. Requests
 * are served first come, first served (the oldest waiting request picks the options of the next call). Each
 * request may carry a deadline: past it, its unstarted inputs are dropped and it fails with a TimeoutError.
 */
import type { CaptionInput, CaptionOptions, CaptionResult } from '../pipeline/types.js';

/**
 * What the server needs from a model: ClipCap satisfies it, and ClipCapWorker (the model on its own thread, so
 * the server's event loop stays free while a batch runs); tests may wrap one.
 */
export interface CaptionModel {
  caption(inputs: readonly CaptionInput[], options?: CaptionOptions): Promise<CaptionResult[]>;
  /** What the model says about itself in /health (ClipCapWorker has it; a ClipCap is asked by its fields). */
  describe?(): { description?: string; embeddingSize?: number; backend?: string };
}

/** A request that ran out of time before its model calls finished. */
export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TimeoutError';
  }
}

export interface BatcherOptions {
  /** How long the first request of a batch waits for others (ms). */
  windowMs: number;
  /** Most inputs per model call. */
  maxBatch: number;
  /** Most decoding rows per model call (default: no limit beyond maxBatch). */
  maxRows?: number;
}

export interface SubmitOptions {
  /** Decoding rows one input needs (beam size, captions per input, or 1). Default 1. */
  rowsPerInput?: number;
  /** Milliseconds from now after which the request fails with a TimeoutError. */
  deadlineMs?: number;
}

interface Job {
  inputs: readonly CaptionInput[];
  options: CaptionOptions;
  key: string;
  rows: number;
  /** Inputs handed to model calls so far. */
  next: number;
  /** Inputs with results so far. */
  got: number;
  results: CaptionResult[];
  arrived: number;
  done: boolean;
  timer: NodeJS.Timeout | null;
  resolve: (r: CaptionResult[]) => void;
  reject: (e: unknown) => void;
}

/** A slice of one job in a model call. */
interface Part {
  job: Job;
  from: number;
  to: number;
}

export class Batcher {
  private queue: Job[] = [];
  private running = false;
  private windowTimer: NodeJS.Timeout | null = null;
  private idleWaiters: (() => void)[] = [];
  private readonly maxRows: number;
  /** Model calls made so far (for logs and tests). */
  calls = 0;
  /** Exponential average of a model call's duration (ms), for Retry-After estimates. */
  avgCallMs = 0;

  constructor(
    private readonly model: CaptionModel,
    private readonly opts: BatcherOptions,
  ) {
    this.maxRows = opts.maxRows ?? Number.MAX_SAFE_INTEGER;
  }

  /**
   * Caption `inputs` with `options` (whose identity is `key`: same key, same decoding); results come back
   * indexed from 0 within this request.
   */
  submit(
    inputs: readonly CaptionInput[],
    options: CaptionOptions,
    key: string,
    submit: SubmitOptions = {},
  ): Promise<CaptionResult[]> {
    const rows = submit.rowsPerInput ?? 1;
    if (rows > this.maxRows)
      return Promise.reject(
        new RangeError(`one input needs ${rows} rows, over the ${this.maxRows}-row limit`),
      );
    return new Promise<CaptionResult[]>((resolve, reject) => {
      const job: Job = {
        inputs,
        options,
        key,
        rows,
        next: 0,
        got: 0,
        results: new Array<CaptionResult>(inputs.length),
        arrived: performance.now(),
        done: false,
        timer: null,
        resolve,
        reject,
      };
      if (inputs.length === 0) {
        resolve([]);
        return;
      }
      if (submit.deadlineMs !== undefined) {
        const ms = submit.deadlineMs;
        job.timer = setTimeout(
          () => this.fail(job, new TimeoutError(`captioning took longer than ${(ms / 1000).toFixed(1)} s`)),
          ms,
        );
        job.timer.unref?.();
      }
      this.queue.push(job);
      this.pump();
    });
  }

  /** Requests accepted but not answered yet. */
  get inFlight(): number {
    return this.queue.length + (this.running ? 1 : 0);
  }

  /** Inputs waiting for a model call. */
  get queuedInputs(): number {
    let n = 0;
    for (const j of this.queue) n += j.inputs.length - j.next;
    return n;
  }

  /** Run every waiting request now (no more batch windows) and resolve when all are answered. */
  async drain(): Promise<void> {
    this.draining = true;
    this.pump();
    while (this.queue.length > 0 || this.running)
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private draining = false;

  /** Inputs of one model call for options `key` with rows per input `rows`. */
  private capacity(rows: number): number {
    return Math.max(1, Math.min(this.opts.maxBatch, Math.floor(this.maxRows / rows)));
  }

  private fail(job: Job, e: unknown): void {
    if (job.done) return;
    job.done = true;
    if (job.timer) clearTimeout(job.timer);
    this.queue = this.queue.filter((j) => j !== job);
    job.reject(e);
    this.pump(); // the queue changed: maybe nothing is left to wait for (drain)
  }

  private pump(): void {
    if (this.running) return;
    if (this.queue.length === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
      return;
    }
    const head = this.queue[0];
    const cap = this.capacity(head.rows);
    let available = 0;
    for (const j of this.queue) if (j.key === head.key) available += j.inputs.length - j.next;
    const waited = performance.now() - head.arrived;
    if (available < cap && waited < this.opts.windowMs && !this.draining) {
      // Wait out the head's window for others to join, unless the call is already full.
      if (!this.windowTimer)
        this.windowTimer = setTimeout(
          () => {
            this.windowTimer = null;
            this.pump();
          },
          Math.max(0, this.opts.windowMs - waited),
        );
      return;
    }
    if (this.windowTimer) {
      clearTimeout(this.windowTimer);
      this.windowTimer = null;
    }
    const parts: Part[] = [];
    let n = 0;
    for (const j of this.queue) {
      if (n >= cap) break;
      if (j.key !== head.key) continue;
      const take = Math.min(cap - n, j.inputs.length - j.next);
      parts.push({ job: j, from: j.next, to: j.next + take });
      j.next += take;
      n += take;
    }
    // Fully scheduled jobs leave the queue (they finish when their last call does).
    this.queue = this.queue.filter((j) => j.next < j.inputs.length);
    this.running = true;
    this.runParts(parts, head.options)
      .catch(() => undefined) // runParts routes every error to its jobs
      .finally(() => {
        this.running = false;
        // Let the event loop answer health checks and read new requests between model calls.
        setImmediate(() => this.pump());
      });
  }

  private async runParts(parts: Part[], options: CaptionOptions): Promise<void> {
    const live = parts.filter((p) => !p.job.done);
    if (live.length === 0) return;
    const all = live.flatMap((p) => p.job.inputs.slice(p.from, p.to));
    let results: CaptionResult[];
    const t0 = performance.now();
    try {
      this.calls++;
      results = await this.model.caption(all, { ...options, batchSize: all.length });
    } catch (e) {
      if (live.length === 1) this.fail(live[0].job, e);
      else
        // A whole-call failure (e.g. images sent to a model without CLIP) must not fail the requests that
        // happened to share the call: retry each alone, so only the request that causes it gets the error.
        for (const p of live) await this.runParts([p], options);
      return;
    } finally {
      const ms = performance.now() - t0;
      this.avgCallMs = this.avgCallMs === 0 ? ms : 0.8 * this.avgCallMs + 0.2 * ms;
    }
    let at = 0;
    for (const p of live) {
      const j = p.job;
      for (let i = p.from; i < p.to; i++) j.results[i] = { ...results[at++], index: i };
      j.got += p.to - p.from;
      if (!j.done && j.got === j.inputs.length) {
        j.done = true;
        if (j.timer) clearTimeout(j.timer);
        j.resolve(j.results);
      }
    }
  }
}
