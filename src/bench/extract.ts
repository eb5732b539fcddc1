/**
 * `clipcap bench extract`: images per second of `clipcap extract DIR --out FILE.safetensors` end to end, through
 * the command's own code path (pipeline/inputs.ts's expandInputs, then pipeline/extract-file.ts's extractToFile:
 * JPEG decode + Pillow-exact preprocessing, the next batch decoded while CLIP runs on the current one, CLIP
 * ViT-B/32's image tower + projection, the rows appended to FILE.partial with an fsync per batch, then the
 * safetensors file written atomically). CLIP is loaded once, before the timed runs (loading weights is not what
 * is timed): synthetic full-size ViT-B/32 weights by the fixture rule, as bench clip builds them (--clip: real
 * ones; --model rn50x4: the ResNet tower; --smoke: the tiny CLIP).
 *
 * The photos are deterministic JPEGs written with sharp at the start (4 distinct ones per size, copied to fill
 * the folder), into a temporary folder that also receives each run's output; it is removed at the end.
 *
 * Cases, metric images_per_s (images of the folder / median seconds of a run), each with the peak RSS of its
 * timed runs:
 * - jpeg_640x480: 32 photos of COCO's typical size, in 2 batches of 16 (extract's default batch size);
 * - jpeg_2048x1536: 32 3-megapixel camera-sized photos, where decoding and resizing weigh more.
 * --smoke: 8 photos per case in batches of 4 (still 2 batches, so the overlap of decoding and CLIP runs).
 */
import { copyFile, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expandInputs } from '../pipeline/inputs.js';
import { extractToFile } from '../pipeline/extract-file.js';
import type { ImageEncoder } from '../pipeline/parts.js';
import { UsageError } from '../util/errors.js';
import { buildEncoder, imagesPerSecond, writeSyntheticPhotos } from './clip.js';
import { benchEngine, runsOf, timeAsync } from './common.js';
import { machineInfo } from './report.js';
import type { BenchReport, BenchResult, BenchRunOptions } from './report.js';

const DEFAULT_RUNS = 5;
/** Distinct photos per size (the rest of a folder are copies of them). */
const DISTINCT = 4;

/** The photo sizes timed, by case id. */
export const EXTRACT_CASES: readonly { id: string; width: number; height: number }[] = [
  { id: 'jpeg_640x480', width: 640, height: 480 },
  { id: 'jpeg_2048x1536', width: 2048, height: 1536 },
];

/** The prefix of the bench's temporary folder (under os.tmpdir()). */
export const TEMP_PREFIX = 'clipcap-bench-extract-';

/** A folder of `count` JPEGs `img_NNN.jpg` of one size: DISTINCT generated ones, copied round-robin. */
async function writePhotoFolder(dir: string, count: number, w: number, h: number): Promise<void> {
  await mkdir(dir);
  const distinct = await writeSyntheticPhotos(dir, Math.min(DISTINCT, count), w, h);
  for (let i = 0; i < count; i++)
    await copyFile(distinct[i % distinct.length], path.join(dir, `img_${String(i).padStart(3, '0')}.jpg`));
  await Promise.all(distinct.map((f) => rm(f)));
}

export async function runExtractBench(opts: BenchRunOptions): Promise<BenchReport> {
  const smoke = opts.extra.smoke === true;
  const runs = runsOf(opts, DEFAULT_RUNS);
  const warmup = smoke ? 0 : 1;
  const images = smoke ? 8 : 32;
  const batchSize = smoke ? 4 : 16;
  const wanted = typeof opts.extra.cases === 'string' ? opts.extra.cases.split(',') : null;
  for (const id of wanted ?? []) {
    if (!EXTRACT_CASES.some((c) => c.id === id))
      throw new UsageError(
        `bench extract --cases: unknown case ${id}; use ${EXTRACT_CASES.map((c) => c.id).join(', ')}`,
      );
  }
  const cases = EXTRACT_CASES.filter((c) => !wanted || wanted.includes(c.id));

  const eng = benchEngine(opts);
  const { enc, what } = await buildEncoder(opts, eng.backend);
  // extractToFile disposes the encoder it loads after each run: it gets a view whose dispose is a no-op, so
  // the weights are built once, outside the timed runs.
  const shared: ImageEncoder = {
    projectionDim: enc.projectionDim,
    imageSize: enc.imageSize,
    encodeImages: (px) => enc.encodeImages(px),
    dispose: () => undefined,
  };
  const temp = await mkdtemp(path.join(os.tmpdir(), TEMP_PREFIX));
  const results: BenchResult[] = [];
  try {
    for (const c of cases) {
      const dir = path.join(temp, c.id);
      opts.log(`${c.id}: writing ${images} ${c.width}x${c.height} JPEGs...`);
      await writePhotoFolder(dir, images, c.width, c.height);
      let run = 0;
      /** One `clipcap extract DIR --out FILE` (a fresh FILE each run: a complete one would not be redone). */
      const extract = async (): Promise<void> => {
        const out = path.join(temp, `${c.id}-${run++}.safetensors`);
        const inputs = (await expandInputs([dir])).map((e) => e.path);
        const r = await extractToFile(inputs, {
          out,
          model: what,
          loadEncoder: () => Promise.resolve(shared),
          batchSize,
        });
        // Guards the timing: every image became a row (nothing skipped as complete, nothing failed).
        if (r.complete || r.rows.length !== images || r.failed.length > 0)
          throw new Error(`bench extract ${c.id}: ${r.rows.length} of ${images} rows written`);
        await rm(out);
      };
      const t = await timeAsync(extract, runs, warmup);
      results.push(imagesPerSecond(c.id, eng.name, images, t, runs, opts.log));
    }
    // extract must leave nothing but its output (removed after each run): no FILE.partial*, no atomic temp files
    const left = (await readdir(temp)).filter((n) => !cases.some((c) => c.id === n));
    if (left.length > 0) throw new Error(`bench extract: files left behind by extract: ${left.join(', ')}`);
  } finally {
    enc.dispose();
    await rm(temp, { recursive: true, force: true });
  }

  const extra: Record<string, string | number | boolean> = {
    ...eng.extra,
    model: what,
    images: `${images} synthetic JPEGs per case (${DISTINCT} distinct)`,
    batch_size: batchSize,
    total_memory_mb: Math.round(os.totalmem() / 2 ** 20),
  };
  if (smoke) extra.smoke = true;
  return { bench: 'extract', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
