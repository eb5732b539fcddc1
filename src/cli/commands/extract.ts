/**
 * `clipcap extract IMAGES_OR_DIR... --out FILE.safetensors [--captions FILE] [--strict] [--clip ...]
 * [--batch-size N] [--shard i/N]`: CLIP embeddings of images into one file (see DESIGN.md and
 * pipeline/extract.ts; the file writing is pipeline/extract-file.ts). Captions are paired with images strictly by file name (data/captions.ts), before CLIP
 * loads, and the counts of unpaired captions and images are reported. Extraction is resumable: rows are
 * appended to FILE.partial as batches finish, so a killed run (or a re-run Slurm / Kubernetes shard) continues
 * where it stopped, and a run whose output is already complete for the same inputs and model does nothing.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { pairCaptions, readCaptionsFile, type CaptionsFile } from '../../data/captions.js';
import { expandInputs } from '../../pipeline/inputs.js';
import { parseShard, shardRange, writeCaptionsSidecar } from '../../pipeline/extract.js';
import { extractToFile, type ExtractToFileResult } from '../../pipeline/extract-file.js';
import { loadImageEncoder, DEFAULT_CLIP } from '../../pipeline/load.js';
import { UsageError, UserError } from '../../util/errors.js';
import { processContext, progressBar, type CliContext, type CliIO } from './caption.js';
import { backendOption, batchSizeOption, clipOption, maxPixelsOption, offlineOption } from '../options.js';
import type { BackendName } from '../../engine/registry.js';

interface ExtractCliOptions {
  out: string;
  captions?: string;
  split?: string;
  strict?: boolean;
  clip?: string;
  batchSize: number;
  shard?: string;
  backend?: BackendName;
  offline?: boolean;
  maxPixels?: number;
  applyExif?: boolean;
}

const verb = (n: number, one: string, many: string): string => (n === 1 ? one : many);
const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

/** The CLIP model as extract records it: hub ids as given, local paths absolute (training resolves them). */
async function recordedModel(spec: string): Promise<string> {
  if (spec.startsWith('bundled:')) return spec;
  return (await fs.stat(spec).catch(() => null)) ? path.resolve(spec) : spec;
}

/** Returns the number of images that failed (their rows are left out; the file lists the rows it holds). */
export async function runExtract(
  images: readonly string[],
  o: ExtractCliOptions,
  io: CliIO,
): Promise<number> {
  if (images.length === 0) throw new UsageError('give image files, directories or globs to extract');
  if (!o.out.toLowerCase().endsWith('.safetensors'))
    throw new UsageError(`--out must name a .safetensors file, got ${o.out}`);
  if (o.strict && o.captions === undefined)
    throw new UsageError('--strict checks --captions; give --captions');
  const shard = o.shard !== undefined ? parseShard(o.shard) : undefined;
  // Captions are read first so that a bad captions file fails before CLIP loads.
  const captions: CaptionsFile | undefined =
    o.captions !== undefined
      ? await readCaptionsFile(o.captions, { splits: o.split?.split(',').map((s) => s.trim()) })
      : undefined;

  const expanded = await expandInputs(images);
  let failed = 0;
  for (const e of expanded)
    if (e.error !== undefined) {
      io.stderr(`clipcap: ${e.error}\n`);
      failed++;
    }
  const all = expanded.filter((e) => e.error === undefined).map((e) => e.path);
  const [start, end] = shard ? shardRange(all.length, shard) : [0, all.length];
  const mine = all.slice(start, end);

  if (captions) {
    // Pair against every input (all shards): a caption of another shard's image is not unmatched.
    const whole = pairCaptions(captions.entries, all);
    const own = whole.uncaptioned.filter((r) => r >= start && r < end).length;
    const problems: string[] = [];
    if (whole.unmatchedCaptions > 0)
      problems.push(
        `${plural(whole.unmatchedCaptions, 'caption')} ${verb(whole.unmatchedCaptions, 'names', 'name')} no input image (e.g. ${whole.unmatchedExamples.join(', ')})`,
      );
    if (whole.ambiguous > 0)
      problems.push(
        `${plural(whole.ambiguous, 'caption')} ${verb(whole.ambiguous, 'names', 'name')} a file that several inputs share (e.g. ${whole.ambiguousExamples.join(', ')}); give unique paths`,
      );
    if (own > 0) problems.push(`${plural(own, 'input image')} ${verb(own, 'has', 'have')} no caption`);
    io.stderr(
      `clipcap: ${captions.format} captions: ${whole.records.length} of ${captions.entries.length} paired by file name` +
        (problems.length > 0 ? `; ${problems.join('; ')}\n` : '\n'),
    );
    if (o.strict && problems.length > 0)
      throw new UserError(`--strict: ${o.captions}: ${problems.join('; ')}; nothing was extracted`);
  }

  const clipSpec = o.clip ?? DEFAULT_CLIP;
  const model = await recordedModel(clipSpec);
  let bar: ReturnType<typeof progressBar> | undefined;
  let result: ExtractToFileResult;
  try {
    result = await extractToFile(mine, {
      out: o.out,
      model,
      loadEncoder: () => loadImageEncoder(clipSpec, { backend: o.backend, offline: o.offline }),
      batchSize: o.batchSize,
      shard,
      rowOffset: shard ? start : undefined,
      limitInputPixels: o.maxPixels,
      applyExif: o.applyExif,
      // The bar appears once CLIP has loaded (the first call).
      onProgress: (done, total) => (bar ??= progressBar(io, total, 'extracting')).update(done),
      log: (line) => io.stderr(`clipcap: ${line}\n`),
    });
  } finally {
    bar?.stop();
  }
  if (result.complete) {
    io.stderr(
      `clipcap: ${o.out} is already complete for these ${mine.length} inputs and ${model}; not extracting again\n`,
    );
  } else {
    failed += result.failed.length;
    io.stderr(`clipcap: wrote ${result.rows.length} embeddings (${result.dim}-d) to ${o.out}\n`);
  }
  const rowImages = result.rows;
  if (captions) {
    const p = pairCaptions(captions.entries, rowImages);
    const side = await writeCaptionsSidecar(o.out, p.records);
    io.stderr(`clipcap: wrote ${plural(p.records.length, 'caption')} to ${side}\n`);
  }
  if (failed > 0) io.stderr(`clipcap: ${failed} inputs failed and are not in ${path.basename(o.out)}\n`);
  return failed;
}

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('extract')
    .description('write CLIP image embeddings (clip_embedding [N, D]) of images to a safetensors file')
    .argument('[images...]', 'image files, directories (searched recursively, sorted) or glob patterns')
    .requiredOption(
      '--out <FILE>',
      'output .safetensors file (written atomically; resumable through FILE.partial)',
    )
    .option(
      '--captions <FILE>',
      "captions paired by file name: COCO annotations, Karpathy's dataset_coco.json, the official train_caption.json, JSON Lines / JSON list / CSV of {image, caption}; writes FILE.captions.jsonl beside --out",
    )
    .option(
      '--split <names>',
      "Karpathy's dataset_coco.json: only these splits (comma-separated, e.g. train,restval)",
    )
    .option('--strict', 'fail (before extracting) when any caption or image is left unpaired')
    .addOption(clipOption())
    .addOption(batchSizeOption('images per CLIP batch', 16))
    .option('--shard <i/N>', 'process only the i-th of N contiguous slices of the inputs (0-based)')
    .addOption(backendOption())
    .addOption(offlineOption())
    .addOption(maxPixelsOption())
    .option('--apply-exif', 'rotate images as their EXIF orientation says')
    .action(async (images: string[], o: ExtractCliOptions) => {
      const failed = await runExtract(images, o, ctx.io());
      if (failed > 0) ctx.exit(1);
    });
}
