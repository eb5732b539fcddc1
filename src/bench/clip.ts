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
 */
import { readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Backend } from '../engine/backend.js';
import { preprocessImage } from '../image/index.js';
import { ClipVisionModel } from '../models/clip.js';
import { CLIP_VIT_B32_VISION, type ClipVisionConfig } from '../models/config.js';
import { syntheticClipVision } from '../models/synthetic.js';
import type { ImageEncoder } from '../pipeline/caption.js';
import { loadImageEncoder } from '../pipeline/load.js';
import { UsageError, UserError } from '../util/errors.js';
import { benchEngine, repoPath, runsOf, runTorchBench, timeAsync } from './common.js';
import { machineInfo, median } from './report.js';
import type { BenchReport, BenchResult, BenchRunOptions } from './report.js';

const DEFAULT_RUNS = 5;
const BATCH = 16;

/** The tiny CLIP of the --smoke runs: ViT-B/32 at clip_tiny's widths (weights by the same rule). */
export const SMOKE_CLIP: ClipVisionConfig = {
  ...CLIP_VIT_B32_VISION,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  projection_dim: 24,
};

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
    const torch = runTorchBench(
      'pytorch_clip.py',
      { threads: eng.threads, runs, smoke },
      ['--images', path.dirname(files[0]), '--batch', String(BATCH)],
      results,
      extra,
    );
    if (typeof torch.embeds_max_rel_diff === 'number')
      extra.torch_embeds_max_rel_diff = torch.embeds_max_rel_diff;
  }
  return { bench: 'clip', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
