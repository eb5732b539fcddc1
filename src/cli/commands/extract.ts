/**
 * `clipcap extract IMAGES_OR_DIR... --out FILE.safetensors [--captions FILE] [--strict] [--clip ...]
 * [--batch-size N] [--shard i/N]`: CLIP embeddings of images into one file (see DESIGN.md and
 * pipeline/extract.ts). Captions are paired with images strictly by file name (data/captions.ts), before CLIP
 * loads, and the counts of unpaired captions and images are reported. Extraction is resumable: rows are
 * appended to FILE.partial as batches finish, so a killed run (or a re-run Slurm / Kubernetes shard) continues
 * where it stopped, and a run whose output is already complete for the same inputs and model does nothing.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { pairCaptions, readCaptionsFile, type CaptionsFile } from '../../data/captions.js';
import { expandInputs } from '../../pipeline/inputs.js';
import {
  extractEmbeddings,
  parseShard,
  shardRange,
  writeCaptionsSidecar,
  writeEmbeddings,
} from '../../pipeline/extract.js';
import { loadImageEncoder, DEFAULT_CLIP } from '../../pipeline/load.js';
import { UsageError, UserError } from '../../util/errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { loadSafetensors } from '../../weights/safetensors.js';
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

interface Partial {
  key: string;
  dim: number;
  /** Inputs processed (rows written + failures). */
  done: number;
  rows: string[];
  failed: string[];
}

const verb = (n: number, one: string, many: string): string => (n === 1 ? one : many);
const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

/** The CLIP model as extract records it: hub ids as given, local paths absolute (training resolves them). */
async function recordedModel(spec: string): Promise<string> {
  if (spec.startsWith('bundled:')) return spec;
  return (await fs.stat(spec).catch(() => null)) ? path.resolve(spec) : spec;
}

async function readPartial(file: string, key: string): Promise<Partial | undefined> {
  try {
    const p = JSON.parse(await fs.readFile(file, 'utf8')) as Partial;
    return p.key === key && Array.isArray(p.rows) && Number.isInteger(p.done) ? p : undefined;
  } catch {
    return undefined;
  }
}

/** Metadata of an existing output, when it is complete for exactly these inputs and model. */
async function completeOutput(out: string, key: string): Promise<string[] | undefined> {
  try {
    const f = await loadSafetensors(out);
    try {
      if (f.metadata.inputs_digest !== key) return undefined;
      return JSON.parse(f.metadata.inputs) as string[];
    } finally {
      await f.close();
    }
  } catch {
    return undefined;
  }
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
  const key = `sha256:${createHash('sha256')
    .update(JSON.stringify({ model, inputs: mine.map((p) => path.resolve(p)) }))
    .digest('hex')}`;
  const partialData = `${o.out}.partial`;
  const partialState = `${o.out}.partial.json`;

  let rowImages = await completeOutput(o.out, key);
  if (rowImages) {
    io.stderr(
      `clipcap: ${o.out} is already complete for these ${mine.length} inputs and ${model}; not extracting again\n`,
    );
  } else {
    const encoder = await loadImageEncoder(clipSpec, { backend: o.backend, offline: o.offline });
    const D = encoder.projectionDim;
    let state = await readPartial(partialState, key);
    if (state && state.dim !== D) state = undefined;
    if (state) io.stderr(`clipcap: resuming ${o.out}: ${state.done} of ${mine.length} inputs were done\n`);
    const st: Partial = state ?? { key, dim: D, done: 0, rows: [], failed: [] };
    await fs.mkdir(path.dirname(path.resolve(o.out)), { recursive: true });
    const fh = await fs.open(partialData, state ? 'r+' : 'w');
    try {
      // Rows past the recorded count belong to a batch that was being written when the run died.
      await fh.truncate(st.rows.length * D * 4);
      let pos = st.rows.length * D * 4;
      const bar = progressBar(io, mine.length, 'extracting');
      bar.update(st.done);
      let pending: Float32Array[] = [];
      const flush = async (done: number): Promise<void> => {
        for (const r of pending) {
          await fh.write(new Uint8Array(r.buffer, r.byteOffset, r.byteLength), 0, r.byteLength, pos);
          pos += r.byteLength;
        }
        pending = [];
        await fh.sync();
        st.done = done;
        await writeFileAtomic(partialState, JSON.stringify(st));
      };
      try {
        for await (const r of extractEmbeddings(encoder, mine.slice(st.done), {
          batchSize: o.batchSize,
          limitInputPixels: o.maxPixels,
          applyExif: o.applyExif,
          onProgress: (d) => bar.update(st.done + d),
        })) {
          if (r.embedding) {
            pending.push(r.embedding);
            st.rows.push(r.image);
          } else {
            io.stderr(`clipcap: ${r.error}\n`);
            st.failed.push(r.image);
          }
          if ((st.rows.length + st.failed.length) % o.batchSize === 0)
            await flush(st.rows.length + st.failed.length);
        }
        await flush(st.rows.length + st.failed.length);
      } finally {
        bar.stop();
        encoder.dispose();
      }
    } finally {
      await fh.close();
    }
    const buf = await fs.readFile(partialData);
    const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
    await writeEmbeddings(
      o.out,
      data,
      D,
      { model, inputs: st.rows, shard, rowOffset: shard ? start : undefined, inputsDigest: key },
      encoder.imageSize,
    );
    await fs.rm(partialData, { force: true });
    await fs.rm(partialState, { force: true });
    failed += st.failed.length;
    rowImages = st.rows;
    io.stderr(`clipcap: wrote ${st.rows.length} embeddings (${D}-d) to ${o.out}\n`);
  }
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
