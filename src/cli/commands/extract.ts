/**
 * `clipcap extract IMAGES_OR_DIR... --out FILE.safetensors [--captions FILE] [--clip ...] [--batch-size N]
 * [--shard i/N]`: CLIP embeddings of images into one file (see DESIGN.md and pipeline/extract.ts).
 */
import { Option, type Command } from 'commander';
import path from 'node:path';
import { expandInputs } from '../../pipeline/inputs.js';
import {
  extractEmbeddings,
  matchCaptions,
  parseShard,
  readCaptions,
  shardRange,
  writeCaptionsSidecar,
  writeEmbeddings,
} from '../../pipeline/extract.js';
import { loadImageEncoder, DEFAULT_CLIP } from '../../pipeline/load.js';
import { UsageError } from '../../util/errors.js';
import { intArg, processContext, progressBar, type CliContext, type CliIO } from './caption.js';

interface ExtractCliOptions {
  out: string;
  captions?: string;
  clip?: string;
  batchSize: number;
  shard?: string;
  backend?: 'native' | 'reference';
  offline?: boolean;
  maxPixels?: number;
  applyExif?: boolean;
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
  const shard = o.shard !== undefined ? parseShard(o.shard) : undefined;
  // Captions are read first so that a bad captions file fails before CLIP loads.
  const captions = o.captions !== undefined ? await readCaptions(o.captions) : undefined;

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

  const clipSpec = o.clip ?? DEFAULT_CLIP;
  const encoder = await loadImageEncoder(clipSpec, { backend: o.backend, offline: o.offline });
  const D = encoder.projectionDim;
  const rows: Float32Array[] = [];
  const rowImages: string[] = [];
  const bar = progressBar(io, mine.length, 'extracting');
  try {
    for await (const r of extractEmbeddings(encoder, mine, {
      batchSize: o.batchSize,
      limitInputPixels: o.maxPixels,
      applyExif: o.applyExif,
      onProgress: (d) => bar.update(d),
    })) {
      if (r.embedding) {
        rows.push(r.embedding);
        rowImages.push(r.image);
      } else {
        io.stderr(`clipcap: ${r.error}\n`);
        failed++;
      }
    }
  } finally {
    bar.stop();
    encoder.dispose();
  }
  const data = new Float32Array(rows.length * D);
  rows.forEach((r, i) => data.set(r, i * D));
  await writeEmbeddings(
    o.out,
    data,
    D,
    { model: clipSpec, inputs: rowImages, shard, rowOffset: shard ? start : undefined },
    encoder.imageSize,
  );
  io.stderr(`clipcap: wrote ${rows.length} embeddings (${D}-d) to ${o.out}\n`);
  if (captions) {
    const { records, unmatched } = matchCaptions(captions, rowImages);
    const p = await writeCaptionsSidecar(o.out, records);
    io.stderr(`clipcap: wrote ${records.length} captions to ${p}`);
    io.stderr(unmatched > 0 ? ` (${unmatched} captions matched no extracted image)\n` : '\n');
  }
  if (failed > 0) io.stderr(`clipcap: ${failed} inputs failed and are not in ${path.basename(o.out)}\n`);
  return failed;
}

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('extract')
    .description('write CLIP image embeddings (clip_embedding [N, D]) of images to a safetensors file')
    .argument('[images...]', 'image files, directories (searched recursively, sorted) or glob patterns')
    .requiredOption('--out <FILE>', 'output .safetensors file (written atomically)')
    .option(
      '--captions <FILE>',
      'captions (COCO annotations, [{image_id, caption}] or JSON Lines): writes FILE.captions.jsonl beside --out',
    )
    .option(
      '--clip <DIR|HUB_ID|FILE.pt|NAME>',
      "CLIP model: a Hugging Face directory or repo, OpenAI's .pt file (ViT or ResNet), or OpenAI's name (RN50x4, ViT-B/32, ...: downloaded to ~/.cache/clip); default openai/clip-vit-base-patch32",
    )
    .option('--batch-size <n>', 'images per CLIP batch', intArg('--batch-size', 1, 4096), 16)
    .option('--shard <i/N>', 'process only the i-th of N contiguous slices of the inputs (0-based)')
    .addOption(new Option('--backend <name>', 'compute backend').choices(['native', 'reference']))
    .option('--offline', 'use only files already in the Hugging Face cache')
    .option(
      '--max-pixels <n>',
      'refuse images with more pixels (default 100000000)',
      intArg('--max-pixels', 1),
    )
    .option('--apply-exif', 'rotate images as their EXIF orientation says')
    .action(async (images: string[], o: ExtractCliOptions) => {
      const failed = await runExtract(images, o, ctx.io());
      if (failed > 0) ctx.exit(1);
    });
}
