/**
 * `clipcap bench clip`: full-size CLIP ViT-B/32 image embeddings per second (vision tower + projection, weights
 * by the fixture rule unless --clip gives real ones), and with --pytorch the same model in plain PyTorch
 * (bench/pytorch_clip.py) at the same thread count, in the same run. `--model rn50x4`: OpenAI's RN50x4 ResNet
 * tower instead (288 px, 640-d; synthetic weights by clip-resnet.ts's rule; PyTorch: bench/pytorch_clip_resnet.py,
 * whose embedding of the first photo is compared with ours: machine.torch_embeds_max_rel_diff).
 *
 * Cases (DESIGN.md "Contracts"), metric images_per_s, each with the peak RSS during its timed runs:
 * - bs1, bs16: from preprocessed pixels (the first 1 / 16 photos, sorted, repeated as needed) to the (N, 512)
 *   embeddings on the host;
 * - bs16_decode: from JPEG files (--images DIR, else synthetic photo-sized ones written to a temporary folder): decode + CLIP preprocessing (ours: concurrent, as ClipCap.caption and
 *   extract do it; PyTorch: one image after the other, as the official parse_coco.py / predict.py) + the forward.
 */
import { readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import type { Backend } from '../engine/backend.js';
import { preprocessImage } from '../image/index.js';
import { ClipVisionModel } from '../models/clip.js';
import { CLIP_VIT_B32_VISION, type ClipVisionConfig } from '../config/models.js';
import { lowbias32, syntheticClipVision } from '../models/synthetic.js';
import type { ImageEncoder } from '../pipeline/parts.js';
import { loadImageEncoder } from '../pipeline/load.js';
import { UsageError, UserError } from '../util/errors.js';
import { syntheticResNetEncoder } from './clip-resnet.js';
import { benchEngine, loadPeers, runsOf, timeAsync } from './common.js';
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

/** Photo-sized (640x480, COCO's typical size) JPEGs the decode case reads when no --images DIR is given. */
const SYNTHETIC_PHOTOS = 4;

/**
 * Writes `count` deterministic w x h JPEGs `photo_<p>.jpg` into `dir` (smooth gradients with fine hashed texture,
 * so decoding does about the work of a photo): the benches that read JPEGs (clip, extract) need no repository
 * files.
 */
export async function writeSyntheticPhotos(dir: string, count: number, w = 640, h = 480): Promise<string[]> {
  const files: string[] = [];
  for (let p = 0; p < count; p++) {
    const px = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let c = 0; c < 3; c++) {
          const smooth = (x * (c + 1) + y * (3 - c) + p * 60) / 4;
          const grain = lowbias32((((y * w + x) * 3 + c) * 4 + p) >>> 0) & 31;
          px[(y * w + x) * 3 + c] = (smooth + grain) & 255;
        }
    const file = path.join(dir, `photo_${p}.jpg`);
    await sharp(px, { raw: { width: w, height: h, channels: 3 } })
      .jpeg({ quality: 90 })
      .toFile(file);
    files.push(file);
  }
  return files;
}

/** The JPEG photos the decode case reads (BATCH paths, repeating as needed): --images DIR, else synthetic ones. */
async function photoFiles(opts: BenchRunOptions): Promise<{ files: string[]; temp: string | null }> {
  const given = opts.extra.images;
  let temp: string | null = null;
  if (typeof given !== 'string') {
    temp = await mkdtemp(path.join(os.tmpdir(), 'clipcap-bench-'));
    await writeSyntheticPhotos(temp, SYNTHETIC_PHOTOS);
  }
  const dir = temp ?? (given as string);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => /\.jpe?g$/i.test(n));
  } catch (e) {
    throw new UserError(`--images ${dir}: cannot read the directory (${(e as NodeJS.ErrnoException).code})`);
  }
  if (names.length === 0)
    throw new UserError(`--images ${dir}: no .jpg/.jpeg files there; give a folder of photos`);
  names.sort();
  return { files: Array.from({ length: BATCH }, (_, i) => path.join(dir, names[i % names.length])), temp };
}

/**
 * The CLIP image tower a bench times: --clip's real weights, else the synthetic full-size ViT-B/32 (or RN50x4 with
 * --model rn50x4) by the fixture rule, or with --smoke the tiny one.
 */
/** The `images_per_s` result of a case that handled `images` images per run (logged as it is made). */
export function imagesPerSecond(
  id: string,
  backend: string,
  images: number,
  t: { seconds: number[]; peakRssMb: number },
  runs: number,
  log: (line: string) => void,
): BenchResult {
  const value = images / median(t.seconds);
  log(`${id}: ${backend} ${value.toFixed(2)} images/s, peak RSS ${t.peakRssMb.toFixed(0)} MiB`);
  return { case: id, backend, metric: 'images_per_s', value, runs, peak_rss_mb: t.peakRssMb };
}

export async function buildEncoder(
  opts: BenchRunOptions,
  backend: Backend,
): Promise<{ enc: ImageEncoder; what: string }> {
  const spec = opts.extra.clip;
  if (typeof spec === 'string') return { enc: await loadImageEncoder(spec, { backend }), what: spec };
  const smoke = opts.extra.smoke === true;
  if (benchModel(opts) === 'rn50x4') return syntheticResNetEncoder(backend, smoke);
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

/** --model: vit-b32 (default) or rn50x4. */
function benchModel(opts: BenchRunOptions): 'vit-b32' | 'rn50x4' {
  const m = opts.extra.model ?? 'vit-b32';
  if (m !== 'vit-b32' && m !== 'rn50x4')
    throw new UsageError(`bench --model ${String(m)}: use vit-b32 or rn50x4`);
  return m;
}

export async function runClipBench(opts: BenchRunOptions): Promise<BenchReport> {
  const { files, temp } = await photoFiles(opts);
  try {
    return await runWithPhotos(opts, files, temp !== null);
  } finally {
    if (temp !== null) await rm(temp, { recursive: true, force: true });
  }
}

async function runWithPhotos(
  opts: BenchRunOptions,
  files: string[],
  synthetic: boolean,
): Promise<BenchReport> {
  const resnet = benchModel(opts) === 'rn50x4';
  const smoke = opts.extra.smoke === true;
  const runs = runsOf(opts, DEFAULT_RUNS);
  const warmup = smoke ? 0 : 1;
  const eng = benchEngine(opts);
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
  const encode = async (px: Float32Array): Promise<void> => {
    const e = enc.encodeImages(px); // (n, D)
    await e.read();
    eng.backend.free(e);
  };

  const pixels = await preprocess();
  // the first photo's embedding, to compare with PyTorch's (the ResNet script prints it)
  const first = enc.encodeImages(pixels.subarray(0, plane));
  const ours0 = await first.read();
  eng.backend.free(first);
  const cases: { id: string; n: number; fn: () => Promise<void> }[] = [
    { id: 'bs1', n: 1, fn: async () => encode(pixels.subarray(0, plane)) },
    { id: `bs${BATCH}`, n: BATCH, fn: async () => encode(pixels) },
    { id: `bs${BATCH}_decode`, n: BATCH, fn: async () => encode(await preprocess()) },
  ];
  const wanted = typeof opts.extra.cases === 'string' ? opts.extra.cases.split(',') : null;
  for (const id of wanted ?? []) {
    if (!cases.some((c) => c.id === id))
      throw new UsageError(
        `bench clip --cases: unknown case ${id}; use ${cases.map((c) => c.id).join(', ')}`,
      );
  }
  const results: BenchResult[] = [];
  try {
    for (const c of cases.filter((x) => !wanted || wanted.includes(x.id))) {
      const t = await timeAsync(c.fn, runs, warmup);
      results.push(imagesPerSecond(c.id, eng.name, c.n, t, runs, opts.log));
    }
  } finally {
    enc.dispose(); // before PyTorch runs: the two should not share the memory
  }

  const extra: Record<string, string | number | boolean> = {
    ...eng.extra,
    model: what,
    ...(resnet ? { clip_model: 'rn50x4' } : {}),
    images: synthetic ? `${SYNTHETIC_PHOTOS} synthetic 640x480 JPEGs` : path.dirname(files[0]),
    total_memory_mb: Math.round(os.totalmem() / 2 ** 20),
  };
  if (smoke) extra.smoke = true;
  if (opts.extra.pytorch === true) {
    const script = resnet ? 'pytorch_clip_resnet.py' : 'pytorch_clip.py';
    if (typeof opts.extra.clip === 'string')
      opts.log(
        `PyTorch uses the synthetic ${resnet ? 'RN50x4' : 'ViT-B/32'} (same shapes, so the same work) whatever --clip says`,
      );
    opts.log(`running PyTorch (bench/${script}) with ${eng.threads} thread(s)...`);
    const torch = (await loadPeers()).runTorchBench(
      script,
      { threads: eng.threads, runs, smoke },
      [
        '--images',
        path.dirname(files[0]),
        '--batch',
        String(BATCH),
        ...(wanted && resnet ? ['--cases', wanted.join(',')] : []),
      ],
      results,
      extra,
    );
    if (typeof torch.embeds_max_rel_diff === 'number')
      extra.torch_embeds_max_rel_diff = torch.embeds_max_rel_diff;
    if (Array.isArray(torch.embeds_0) && typeof opts.extra.clip !== 'string') {
      // same synthetic model on both sides: their embeddings of photo 0 must agree
      const theirs = torch.embeds_0 as number[];
      let worst = theirs.length === ours0.length ? 0 : Infinity;
      let scale = 0;
      theirs.forEach((v, i) => {
        worst = Math.max(worst, Math.abs(v - ours0[i]));
        scale = Math.max(scale, Math.abs(v));
      });
      extra.torch_embeds_max_rel_diff = worst / scale;
      opts.log(
        `PyTorch vs clipcap embedding of photo 0: worst relative difference ${(worst / scale).toExponential(2)}`,
      );
    }
  }
  return { bench: 'clip', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
