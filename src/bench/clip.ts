/**
 * `clipcap bench clip`: full-size CLIP ViT-B/32 image embeddings per second (vision tower + projection, weights
 * by the fixture rule unless --clip gives real ones), and with --pytorch the same model in plain PyTorch
 * (bench/pytorch_clip.py) at the same thread count, in the same run.
 *
 * Cases (DESIGN.md "Contracts"), metric images_per_s, each with the peak RSS during its timed runs:
 * - bs1, bs16: from preprocessed pixels (the first 1 / 16 photos, sorted, repeated as needed) to the (N, 512)
 *   embeddings on the host;
 * - bs16_decode: from the JPEG files: decode + CLIP preprocessing (ours: concurrent, as ClipCap.caption and
 *   extract do it; PyTorch: one image after the other, as the official parse_coco.py / predict.py) + the forward.
 *
 * Also home of the helpers the model benches share (backend and threads, the PyTorch script runner, peak RSS,
 * async timing), used by caption.ts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Backend } from '../engine/backend.js';
import { loadNativeBackend, NativeBackend } from '../engine/native.js';
import { ReferenceBackend } from '../engine/reference.js';
import { preprocessImage } from '../image/index.js';
import { ClipVisionModel } from '../models/clip.js';
import type { ClipVisionConfig } from '../models/config.js';
import { syntheticClipVision } from '../models/synthetic.js';
import type { ImageEncoder } from '../pipeline/caption.js';
import { loadImageEncoder } from '../pipeline/load.js';
import { UsageError, UserError } from '../util/errors.js';
import { cpuHasAvx2, machineInfo, median } from './report.js';
import type { BenchBackend, BenchReport, BenchResult, BenchRunOptions } from './report.js';

const DEFAULT_RUNS = 5;
const BATCH = 16;

/** The tiny CLIP of the --smoke runs (clip_tiny's shapes; weights by the same rule). */
export const SMOKE_CLIP: ClipVisionConfig = {
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  image_size: 224,
  patch_size: 32,
  num_channels: 3,
  layer_norm_eps: 1e-5,
  hidden_act: 'quick_gelu',
  projection_dim: 24,
};

// ---- shared by the model benches ----

export interface BenchEngine {
  backend: Backend;
  /** The report's backend name. */
  name: BenchBackend;
  /** Kernel threads (what PyTorch gets too). */
  threads: number;
  avx2: boolean;
  /** machine.* entries describing the kernels. */
  extra: Record<string, string>;
}

/** The native backend with opts.threads, or (saying why) the slow reference backend. */
export function benchEngine(opts: BenchRunOptions): BenchEngine {
  const loaded = loadNativeBackend();
  const native = 'backend' in loaded && loaded.backend instanceof NativeBackend ? loaded.backend : null;
  if (native) {
    if (opts.threads !== undefined) native.setThreads(opts.threads);
    const info = native.info();
    return {
      backend: native,
      name: 'native',
      threads: info.threads,
      avx2: info.avx2,
      extra: { gemm_kernel: info.gemmKernel },
    };
  }
  opts.log(
    `native backend unavailable (${'error' in loaded ? loaded.error : 'unknown'}); timing the slow reference backend`,
  );
  return {
    backend: new ReferenceBackend(),
    name: 'reference',
    threads: opts.threads ?? 1,
    avx2: cpuHasAvx2(),
    extra: {},
  };
}

/** A path of the source repository (bench/, test/fixtures/), from src/bench or dist/src/bench; null if absent. */
export function repoPath(rel: string): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const p = path.resolve(here, up, rel);
    if (existsSync(p)) return p;
  }
  return null;
}

/** A python3 that can import torch: $CLIPCAP_PYTHON, python3 on PATH, then /usr/bin/python3. */
export function findTorchPython(): string | null {
  const candidates = [process.env.CLIPCAP_PYTHON, 'python3', '/usr/bin/python3'].filter(
    (p): p is string => typeof p === 'string' && p !== '',
  );
  for (const py of new Set(candidates)) {
    const r = spawnSync(py, ['-c', 'import torch, numpy'], { stdio: 'ignore', timeout: 120_000 });
    if (r.status === 0) return py;
  }
  return null;
}

/** What bench/pytorch_*.py print on stdout. */
export interface TorchOutput {
  torch: string;
  threads: number;
  results: BenchResult[];
  [extra: string]: unknown;
}

/** Run bench/SCRIPT with a torch-capable python3 (its progress goes to our stderr); its JSON document. */
export function runTorchScript(script: string, args: readonly string[]): TorchOutput {
  const file = repoPath(path.join('bench', script));
  if (!file)
    throw new UserError(
      `--pytorch needs bench/${script}, which is in the clipcap source repository (not the npm package)`,
    );
  const py = findTorchPython();
  if (!py)
    throw new UserError(
      '--pytorch needs a python3 that can `import torch, numpy` (e.g. apt-get install python3-torch, or pip install torch numpy); set CLIPCAP_PYTHON to choose one',
    );
  const r = spawnSync(py, [file, ...args], {
    encoding: 'utf8',
    maxBuffer: 16 << 20,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new UserError(`${py} bench/${script} failed (exit ${r.status ?? r.signal})`);
  let parsed: TorchOutput;
  try {
    parsed = JSON.parse(r.stdout) as TorchOutput;
  } catch {
    throw new UserError(`bench/${script} printed no JSON document`);
  }
  if (!Array.isArray(parsed.results)) throw new UserError(`bench/${script} printed no results`);
  return parsed;
}

let gcFn: (() => void) | null | undefined;

/**
 * A full garbage collection, so that host copies of weights already uploaded to the backend (the synthetic
 * state dicts) are freed before memory is measured. Uses global.gc when node runs with --expose-gc, else turns
 * the flag on and takes gc from a fresh context (the documented way to reach it at run time).
 */
export function collectGarbage(): void {
  if (gcFn === undefined) {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === 'function') gcFn = g;
    else {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFn = vm.runInNewContext('gc') as () => void;
      } catch {
        gcFn = null;
      }
    }
  }
  gcFn?.();
}

/**
 * Linux: reset the process's peak RSS (VmHWM) to its current RSS, so that peakRssMb() measures what follows
 * (weights built earlier do not count). False where the kernel does not allow it.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** Peak resident memory in MiB: VmHWM since the last resetPeakRss(), else the lifetime peak. */
export function peakRssMb(): number {
  try {
    const m = /^VmHWM:\s*(\d+)\s*kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) / 1024;
  } catch {
    // not Linux: fall through
  }
  return process.resourceUsage().maxRSS / 1024;
}

/** Seconds of each of `runs` awaited calls after `warmup` untimed ones, and the peak RSS during the timed ones. */
export async function timeAsync(
  fn: () => Promise<void>,
  runs: number,
  warmup = 1,
): Promise<{ seconds: number[]; peakRssMb: number }> {
  for (let i = 0; i < warmup; i++) await fn();
  collectGarbage();
  // ArrayBuffer backing stores are released by V8's sweeper after the collection: give it a moment.
  await new Promise((r) => setTimeout(r, 50));
  resetPeakRss();
  const seconds: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return { seconds, peakRssMb: peakRssMb() };
}

/** Append PyTorch's results to ours, each case's after its own (the report's order). */
export function mergeTorchResults(results: BenchResult[], torch: readonly BenchResult[]): void {
  for (const r of torch) {
    const entry: BenchResult = {
      case: r.case,
      backend: 'pytorch',
      metric: r.metric,
      value: r.value,
      runs: r.runs,
      ...(typeof r.peak_rss_mb === 'number' ? { peak_rss_mb: r.peak_rss_mb } : {}),
    };
    const last = results.map((x) => x.case).lastIndexOf(r.case);
    if (last < 0) results.push(entry);
    else results.splice(last + 1, 0, entry);
  }
}

/** --runs, or the bench's default (1 with --smoke). */
export function runsOf(opts: BenchRunOptions, dflt: number): number {
  return opts.runs ?? (opts.extra.smoke === true ? 1 : dflt);
}

// ---- the clip bench ----

/** The JPEG photos the decode case reads: --images DIR, else test/fixtures/images of the source repository. */
function photoFiles(opts: BenchRunOptions): string[] {
  const given = opts.extra.images;
  const dir = typeof given === 'string' ? given : repoPath('test/fixtures/images');
  if (dir === null)
    throw new UsageError(
      'bench clip needs JPEG photos: give --images DIR (the source repository has test/fixtures/images)',
    );
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => /\.jpe?g$/i.test(n));
  } catch (e) {
    throw new UserError(`--images ${dir}: cannot read the directory (${(e as NodeJS.ErrnoException).code})`);
  }
  if (names.length === 0)
    throw new UserError(`--images ${dir}: no .jpg/.jpeg files there; give a folder of photos`);
  names.sort();
  return Array.from({ length: BATCH }, (_, i) => path.join(dir, names[i % names.length]));
}

async function buildEncoder(
  opts: BenchRunOptions,
  backend: Backend,
): Promise<{ enc: ImageEncoder; what: string }> {
  const spec = opts.extra.clip;
  if (typeof spec === 'string') return { enc: await loadImageEncoder(spec, { backend }), what: spec };
  const smoke = opts.extra.smoke === true;
  const v = syntheticClipVision(smoke ? SMOKE_CLIP : undefined);
  const what = smoke ? 'tiny CLIP (fixture rule, --smoke)' : 'ViT-B/32, synthetic weights (fixture rule)';
  const model = ClipVisionModel.fromWeights(backend, v.config, v.weights, what);
  const enc: ImageEncoder = {
    projectionDim: model.embedDim,
    imageSize: v.config.image_size,
    encodeImages: (px) => model.encodeImages(px),
    dispose: () => model.dispose(),
  };
  return { enc, what };
}

export async function runClipBench(opts: BenchRunOptions): Promise<BenchReport> {
  const smoke = opts.extra.smoke === true;
  const runs = runsOf(opts, DEFAULT_RUNS);
  const warmup = smoke ? 0 : 1;
  const eng = benchEngine(opts);
  const files = photoFiles(opts);
  const { enc, what } = await buildEncoder(opts, eng.backend);
  const size = enc.imageSize;
  const plane = 3 * size * size;

  const preprocess = async (): Promise<Float32Array> => {
    // Concurrently, as the captioning / extract pipelines decode a batch (sharp works off the JS thread).
    const done = await Promise.all(files.map((f) => preprocessImage(f, { size })));
    const px = new Float32Array(files.length * plane); // (16, 3, S, S)
    done.forEach((p, i) => px.set(p.pixelValues, i * plane));
    return px;
  };
  /** Embeddings of n images, downloaded to the host as a caller would use them. */
  const encode = (px: Float32Array): void => {
    const e = enc.encodeImages(px); // (n, D)
    e.toArray();
    eng.backend.free(e);
  };

  const pixels = await preprocess();
  const cases: { id: string; n: number; fn: () => Promise<void> }[] = [
    { id: 'bs1', n: 1, fn: async () => encode(pixels.subarray(0, plane)) },
    { id: `bs${BATCH}`, n: BATCH, fn: async () => encode(pixels) },
    { id: `bs${BATCH}_decode`, n: BATCH, fn: async () => encode(await preprocess()) },
  ];
  const results: BenchResult[] = [];
  try {
    for (const c of cases) {
      const t = await timeAsync(c.fn, runs, warmup);
      const value = c.n / median(t.seconds);
      opts.log(`${c.id}: ${eng.name} ${value.toFixed(2)} images/s, peak RSS ${t.peakRssMb.toFixed(0)} MiB`);
      results.push({
        case: c.id,
        backend: eng.name,
        metric: 'images_per_s',
        value,
        runs,
        peak_rss_mb: t.peakRssMb,
      });
    }
  } finally {
    enc.dispose(); // before PyTorch runs: the two should not share the memory
  }

  const extra: Record<string, string | number | boolean> = {
    ...eng.extra,
    model: what,
    images: path.dirname(files[0]),
    total_memory_mb: Math.round(os.totalmem() / 2 ** 20),
  };
  if (smoke) extra.smoke = true;
  if (opts.extra.pytorch === true) {
    if (typeof opts.extra.clip === 'string')
      opts.log('PyTorch uses the synthetic ViT-B/32 (same shapes, so the same work) whatever --clip says');
    opts.log(`running PyTorch (bench/pytorch_clip.py) with ${eng.threads} thread(s)...`);
    const fixtures = repoPath('test/fixtures');
    const torch = runTorchScript('pytorch_clip.py', [
      '--threads',
      String(eng.threads),
      '--runs',
      String(runs),
      '--images',
      path.dirname(files[0]),
      '--batch',
      String(BATCH),
      ...(fixtures ? ['--fixtures', fixtures] : []),
      ...(smoke ? ['--smoke'] : []),
    ]);
    extra.torch = torch.torch;
    if (typeof torch.rule_check_max_diff === 'number')
      extra.torch_rule_check_max_diff = torch.rule_check_max_diff;
    if (typeof torch.embeds_max_rel_diff === 'number')
      extra.torch_embeds_max_rel_diff = torch.embeds_max_rel_diff;
    mergeTorchResults(results, torch.results);
  }
  return { bench: 'clip', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
