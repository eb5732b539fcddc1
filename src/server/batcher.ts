/**
 * Micro-batching for the HTTP server: requests that arrive within a short window with the same decoding
 * options share one model.caption call (the model's batch matmuls amortize far better than one image at a
 * time), and model calls run one at a time, because the model's backend is not re-entrant and two
 * concurrent batches would only compete for the same cores.
 */
import type { CaptionInput, CaptionOptions, CaptionResult } from '../pipeline/types.js';

/** What the server needs from a model: ClipCap satisfies it; tests may wrap one. */
export interface CaptionModel {
  caption(inputs: readonly CaptionInput[], options?: CaptionOptions): Promise<CaptionResult[]>;
}

interface Job {
  inputs: readonly CaptionInput[];
  resolve: (r: CaptionResult[]) => void;
  reject: (e: unknown) => void;
}

interface OpenBatch {
  key: string;
  options: CaptionOptions;
  jobs: Job[];
  size: number;
  timer: NodeJS.Timeout | null;
}

export interface BatcherOptions {
  /** How long the first request of a batch waits for others (ms). */
  windowMs: number;
  /** Most inputs per model call (a single larger request still runs, alone). */
  maxBatch: number;
}

export class Batcher {
  private readonly open = new Map<string, OpenBatch>();
  /** The tail of the serialized model calls. */
  private chain: Promise<void> = Promise.resolve();
  private pending = 0;
  /** Model calls made so far (for logs and tests). */
  calls = 0;

  constructor(
    private readonly model: CaptionModel,
    private readonly opts: BatcherOptions,
  ) {}

  /**
   * Caption `inputs` with `options` (whose identity is `key`: same key, same decoding); results come back
   * indexed from 0 within this request.
   */
  submit(inputs: readonly CaptionInput[], options: CaptionOptions, key: string): Promise<CaptionResult[]> {
    this.pending++;
    return new Promise<CaptionResult[]>((resolve, reject) => {
      const job: Job = { inputs, resolve, reject };
      let b = this.open.get(key);
      if (b && b.size + inputs.length > this.opts.maxBatch) {
        this.flush(b);
        b = undefined;
      }
      if (!b) {
        b = { key, options, jobs: [], size: 0, timer: null };
        this.open.set(key, b);
        const batch = b;
        b.timer = setTimeout(() => this.flush(batch), this.opts.windowMs);
      }
      b.jobs.push(job);
      b.size += inputs.length;
      if (b.size >= this.opts.maxBatch) this.flush(b);
    }).finally(() => {
      this.pending--;
    });
  }

  /** Requests accepted but not answered yet. */
  get inFlight(): number {
    return this.pending;
  }

  /** Run every waiting batch now (shutdown) and resolve when all model calls are done. */
  async drain(): Promise<void> {
    for (const b of [...this.open.values()]) this.flush(b);
    await this.chain;
  }

  private flush(b: OpenBatch): void {
    if (this.open.get(b.key) !== b) return; // already flushed
    this.open.delete(b.key);
    if (b.timer) clearTimeout(b.timer);
    this.chain = this.chain.then(() => this.run(b));
  }

  private async run(b: OpenBatch): Promise<void> {
    const all = b.jobs.flatMap((j) => j.inputs);
    let results: CaptionResult[];
    try {
      this.calls++;
      results = await this.model.caption(all, { ...b.options, batchSize: this.opts.maxBatch });
    } catch (e) {
      if (b.jobs.length === 1) b.jobs[0].reject(e);
      else
        // A whole-call failure (e.g. images sent to a model without CLIP) must not fail the requests that
        // happened to share the call: retry each alone, so only the request that causes it gets the error.
        for (const j of b.jobs) await this.run({ ...b, jobs: [j], size: j.inputs.length });
      return;
    }
    let at = 0;
    for (const j of b.jobs) {
      const mine = results.slice(at, at + j.inputs.length).map((r, i) => ({ ...r, index: i }));
      at += j.inputs.length;
      j.resolve(mine);
    }
  }
}
