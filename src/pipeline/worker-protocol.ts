/**
 * Messages between ClipCapWorker (worker.ts, on the caller's thread) and its model thread (worker-main.ts).
 * Everything here crosses postMessage, so it is plain data (structured clone): no functions, no classes.
 */
import type { BackendName } from '../engine/registry.js';
import type { ClipCapLoadOptions } from './load.js';
import type { SyntheticClipCapSpec } from './synthetic.js';
import type { CaptionInput, CaptionOptions, CaptionResult } from './types.js';

/** Which model the thread builds: from files (ClipCap.load) or by the fixture rule (syntheticClipCap). */
export type WorkerModelSpec = (
  | { load: Omit<ClipCapLoadOptions, 'backend'>; synthetic?: undefined }
  | { synthetic: SyntheticClipCapSpec; load?: undefined }
) & {
  /** A backend of the registry (default: CLIPCAP_BACKEND, else the preferred one that loads). */
  backend?: BackendName;
  /** Kernel threads of a backend that has them (default: CLIPCAP_THREADS, else every core). */
  threads?: number;
};

/** What the model says about itself (the server's /health). */
export interface WorkerModelInfo {
  description: string;
  embeddingSize: number;
  backend: string;
}

/** An error as it crosses the thread boundary: UserError (and subclasses) keep their meaning. */
export interface WireError {
  name: string;
  message: string;
  stack?: string;
  user: boolean;
}

export type ToWorker = {
  type: 'caption';
  id: number;
  inputs: readonly CaptionInput[];
  options: Omit<CaptionOptions, 'onProgress'>;
  progress: boolean;
};

export type FromWorker =
  | { type: 'ready'; info: WorkerModelInfo }
  | { type: 'failed'; error: WireError }
  | { type: 'result'; id: number; results: CaptionResult[] }
  | { type: 'error'; id: number; error: WireError }
  | { type: 'progress'; id: number; done: number; total: number | undefined };
