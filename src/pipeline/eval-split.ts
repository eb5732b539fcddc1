/**
 * Captioning the images of an evaluation split for `clipcap eval --model ... --images DIR`: find each
 * reference image's file, caption the ones not done yet in bounded batches, keep every finished batch in a
 * progress file so that an interrupted run resumes where it stopped, and end with a COCO results file.
 *
 * Files, for `out` = results_test.json:
 *   - `results_test.json.partial.jsonl`: the progress file. Line 1 is a header
 *     `{"format": "clipcap-eval-progress/1", "settings": {...}}` naming the model and decoding options; then one
 *     `{"image_id", "caption"}` per captioned image, appended and fsynced after every batch. A rerun skips the
 *     ids it holds (a file made with other settings is refused, so captions of two models never mix). A file
 *     without the header line (hand-made) is accepted as is.
 *   - `results_test.json`: `[{"image_id", "caption"}]` in the references' order, written atomically (temp file
 *     + rename) once every image is done; the progress file is then removed.
 * An image that cannot be captioned (unreadable, not an image) is reported and left out; the caller scores
 * the others. Ids are written as the references spell them (COCO's ids are numbers).
 *
 * @example
 * ```ts
 * const refs = await readReferences('dataset_coco.json', { split: 'test' });
 * const r = await captionEvalSplit({
 *   references: refs, imagesDir: 'coco', out: 'results_test.json',
 *   loadCaptioner: () => ClipCap.fromPretrained('coco'), captionOptions: { batchSize: 16 },
 * });
 * const scores = await evaluateCaptions(refs, r.predictions, { onlyPredicted: !r.complete });
 * ```
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { PredictionSet, ReferenceSet } from '../eval/readers.js';
import { writeFileAtomic } from '../util/atomic.js';
import { UserError, errorMessage } from '../util/errors.js';
import type { CaptionOptions, CaptionResult } from './types.js';

/** One reference image: its id and where its file may be. */
export interface EvalImage {
  /** The id as a string (as ReferenceSet ids are). */
  id: string;
  /** The id as the references file spells it (a number for COCO), written to the results file. */
  imageId: number | string;
  /** Paths relative to the images directory, tried in order. Empty when the references name no file. */
  candidates: string[];
}

export interface LocatedImage extends EvalImage {
  /** The file found under the images directory. */
  file: string;
}

export interface MissingImage extends EvalImage {
  /** The first path tried (for messages), or a note that the references name no file. */
  tried: string;
}

/** One line of the progress file and one entry of the COCO results file. */
export interface ResultRecord {
  image_id: number | string;
  caption: string;
}

/** What captions the images (ClipCap satisfies it; tests pass stand-ins). */
export interface Captioner {
  captionStream(inputs: readonly string[], options?: CaptionOptions): AsyncIterable<CaptionResult>;
  dispose?(): void;
}

export interface CaptionFailureInfo {
  id: string;
  file: string;
  error: string;
}

export interface CaptionSplitOptions {
  /** The reference set (readReferences); its `source` file is read again for the image file names. */
  references: ReferenceSet;
  /** Folder holding the images (Karpathy: DIR/filepath/filename or DIR/filename; COCO: DIR/file_name). */
  imagesDir: string;
  /** The COCO results file to write; the progress file is `${out}.partial.jsonl`. */
  out: string;
  /** Loads the model; called only when some image still needs a caption (after the files are checked). */
  loadCaptioner: () => Promise<Captioner>;
  captionOptions?: CaptionOptions;
  /** What makes two runs' captions comparable (model, decoding options); recorded in the progress file. */
  settings?: Record<string, unknown>;
  /** Leave out images whose file is missing instead of failing. */
  skipMissing?: boolean;
  /** Before captioning: how many images need a caption and how many the progress file already holds. */
  onStart?: (info: { total: number; resumed: number; toCaption: number; missing: MissingImage[] }) => void;
  /** After each batch: images captioned (or failed) in this run so far, of `toCaption`. */
  onProgress?: (done: number, toCaption: number) => void;
  /** An image that could not be captioned (reported as it happens). */
  onFailure?: (f: CaptionFailureInfo) => void;
}

export interface CaptionSplitResult {
  /** The captions of the results file, in the references' order, for evaluateCaptions. */
  predictions: PredictionSet;
  /** The results file's entries. */
  records: ResultRecord[];
  out: string;
  /** Images that need a caption (those with reference captions). */
  total: number;
  /** Taken from the progress file. */
  resumed: number;
  /** Captioned in this run. */
  captioned: number;
  failed: CaptionFailureInfo[];
  /** Skipped (skipMissing) because their file is not there. */
  missing: MissingImage[];
  /** Every image has a caption. */
  complete: boolean;
}

export const PROGRESS_FORMAT = 'clipcap-eval-progress/1';

/** The progress file of a results file. */
export function progressPathFor(out: string): string {
  return `${out}.partial.jsonl`;
}

/** A few items for a message: "a, b, c, ... 7 more". */
function sample(items: readonly string[], n = 3): string {
  const shown = items.slice(0, n).join(', ');
  return items.length > n ? `${shown}, ... ${items.length - n} more` : shown;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };
const isObject = (v: Json | undefined): v is JsonObject =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** An id field as readers.ts accepts it: a finite number or a non-empty string. */
function rawId(v: Json | undefined): number | string | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && v !== '') return v;
  return undefined;
}

/** COCO 2014 file names carry their folder: COCO_val2014_000000391895.jpg lives in val2014/. */
function cocoFolder(fileName: string): string | undefined {
  return /^COCO_([a-z]+\d{4})_\d+\.\w+$/.exec(path.basename(fileName))?.[1];
}

/**
 * The images of a reference set that need a caption (those with reference captions), in its order, with the
 * file names its references file gives: Karpathy `filepath` + `filename`, COCO `images[].file_name`.
 */
export async function imageEntries(refs: ReferenceSet): Promise<EvalImage[]> {
  if (refs.format !== 'karpathy' && refs.format !== 'coco') {
    throw new UserError(
      `${refs.source}: JSONL references name no image files; caption from COCO annotations (images[].file_name) ` +
        `or a Karpathy dataset_coco.json, or caption first and pass --predictions`,
    );
  }
  let doc: Json;
  try {
    doc = JSON.parse(await fs.readFile(refs.source, 'utf8')) as Json;
  } catch (e) {
    // readReferences has just parsed it; this only fails if the file changed meanwhile.
    throw new UserError(`${refs.source}: cannot read the image list (${errorMessage(e)})`);
  }
  const images = isObject(doc) && Array.isArray(doc.images) ? doc.images : [];
  const files = new Map<string, { imageId: number | string; candidates: string[] }>();
  for (const im of images) {
    if (!isObject(im)) continue;
    const str = (v: Json | undefined): string | undefined =>
      typeof v === 'string' && v !== '' ? v : undefined;
    let imageId: number | string | undefined;
    let candidates: string[] = [];
    if (refs.format === 'karpathy') {
      // Same id rule as readers.ts: cocoid, else imgid.
      imageId = rawId(im.cocoid ?? im.imgid);
      const name = str(im.filename);
      const dir = str(im.filepath);
      if (name !== undefined) candidates = dir !== undefined ? [path.join(dir, name), name] : [name];
    } else {
      imageId = rawId(im.id);
      const name = str(im.file_name);
      if (name !== undefined) {
        const folder = cocoFolder(name);
        candidates = folder !== undefined ? [name, path.join(folder, name)] : [name];
      }
    }
    if (imageId !== undefined && !files.has(String(imageId)))
      files.set(String(imageId), { imageId, candidates });
  }
  return refs.ids
    .filter((id) => (refs.captions.get(id) ?? []).length > 0)
    .map((id) => {
      const f = files.get(id);
      // COCO annotations may caption an image that `images` does not list: it has no file name.
      return {
        id,
        imageId: f?.imageId ?? (/^\d+$/.test(id) ? Number(id) : id),
        candidates: f?.candidates ?? [],
      };
    });
}

async function isFile(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => null))?.isFile() ?? false;
}

/** Find each image's file under `dir` (the first candidate that exists). */
export async function locateImages(
  entries: readonly EvalImage[],
  dir: string,
): Promise<{ found: LocatedImage[]; missing: MissingImage[] }> {
  const st = await fs.stat(dir).catch(() => null);
  if (st === null) throw new UserError(`${dir}: images directory not found (--images)`);
  if (!st.isDirectory()) throw new UserError(`${dir}: --images must be a directory`);
  const files: Array<string | null> = new Array<string | null>(entries.length).fill(null);
  // Bounded concurrency: thousands of stats at once would only queue in libuv's pool anyway.
  const CONCURRENCY = 32;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < entries.length) {
      const i = next++;
      for (const rel of entries[i].candidates) {
        const p = path.join(dir, rel);
        if (await isFile(p)) {
          files[i] = p;
          break;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, entries.length) }, worker));
  const found: LocatedImage[] = [];
  const missing: MissingImage[] = [];
  entries.forEach((e, i) => {
    const file = files[i];
    if (file !== null) found.push({ ...e, file });
    else
      missing.push({
        ...e,
        tried:
          e.candidates.length > 0
            ? path.join(dir, e.candidates[0])
            : `image ${e.id} (no file name in references)`,
      });
  });
  return { found, missing };
}

/** JSON with object keys sorted, so that settings compare equal whatever order they were written in. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (typeof v === 'object' && v !== null) {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/**
 * Read a progress file: the captions it holds by id (string). A last line cut short by a crash mid-write is
 * dropped and cut from the file, so that appending continues on a clean line. Returns null if there is none.
 */
export async function readProgress(
  file: string,
  settings: Record<string, unknown> = {},
): Promise<Map<string, ResultRecord> | null> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UserError(`${file}: cannot read the progress file (${errorMessage(e)})`);
  }
  const done = new Map<string, ResultRecord>();
  const lines = text.split('\n');
  let offset = 0; // bytes of the complete, valid lines so far
  let cut = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const complete = i < lines.length - 1; // the piece after the last '\n' has no newline yet
    const bytes = Buffer.byteLength(line, 'utf8') + (complete ? 1 : 0);
    if (line.trim() === '') {
      offset += bytes;
      continue;
    }
    let v: Json | undefined;
    try {
      v = JSON.parse(line) as Json;
    } catch {
      v = undefined;
    }
    if (!complete) {
      // Written without its newline: a crash hit mid-write. Drop it even when it parses, since the next
      // append would otherwise join it.
      cut = true;
      break;
    }
    const where = `${file}: line ${i + 1}`;
    const fix = 'delete the file to start over';
    if (!isObject(v)) throw new UserError(`${where} is not a JSON object; ${fix}`);
    if (i === 0 && 'format' in v) {
      if (v.format !== PROGRESS_FORMAT)
        throw new UserError(`${where}: unknown progress format ${JSON.stringify(v.format)}; ${fix}`);
      const was = canonical(v.settings ?? {});
      const now = canonical(settings);
      if (was !== now)
        throw new UserError(
          `${file}: these captions were made with other settings (${was}, now ${now}); ` +
            `rerun with the same options, delete the file, or pick another --out`,
        );
    } else {
      const id = rawId(v.image_id);
      if (id === undefined || typeof v.caption !== 'string')
        throw new UserError(`${where}: expected {"image_id": ..., "caption": "..."}; ${fix}`);
      if (!done.has(String(id))) done.set(String(id), { image_id: id, caption: v.caption });
    }
    offset += bytes;
  }
  if (cut) await fs.truncate(file, offset);
  return done;
}

/** Appends records to the progress file, creating it (with its header) on the first write. */
class ProgressWriter {
  private fh: fs.FileHandle | null = null;
  written = 0;

  constructor(
    private readonly file: string,
    private readonly settings: Record<string, unknown>,
    private readonly exists: boolean,
  ) {}

  async append(records: readonly ResultRecord[]): Promise<void> {
    if (records.length === 0) return;
    let text = '';
    if (this.fh === null) {
      this.fh = await fs.open(this.file, 'a');
      if (!this.exists) text += JSON.stringify({ format: PROGRESS_FORMAT, settings: this.settings }) + '\n';
    }
    for (const r of records) text += JSON.stringify({ image_id: r.image_id, caption: r.caption }) + '\n';
    await this.fh.write(text);
    // Each finished batch survives a crash or a power cut: that is what makes the run resumable.
    await this.fh.datasync();
    this.written += records.length;
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }
}

/** The COCO results file: a JSON list, one entry per line (valid JSON, readable, diffable). */
export function formatResults(records: readonly ResultRecord[]): string {
  if (records.length === 0) return '[]\n';
  return `[\n${records.map((r) => JSON.stringify({ image_id: r.image_id, caption: r.caption })).join(',\n')}\n]\n`;
}

/** Check up front that `out` can be written, so a long run does not fail at its last step. */
async function checkOut(out: string, refs: ReferenceSet): Promise<void> {
  if (path.resolve(out) === path.resolve(refs.source))
    throw new UserError(`${out}: the results file would overwrite the references; pick another --out`);
  const st = await fs.stat(out).catch(() => null);
  if (st?.isDirectory()) throw new UserError(`${out}: is a directory; --out names the results file to write`);
  const dir = path.dirname(path.resolve(out));
  const dst = await fs.stat(dir).catch(() => null);
  if (!dst?.isDirectory())
    throw new UserError(`${out}: the folder ${dir} does not exist; create it or pick another --out`);
}

/**
 * Caption the images of `references` that need a caption, resuming from the progress file, and write the
 * COCO results file. Missing image files are an error (listing a few) unless `skipMissing`.
 */
export async function captionEvalSplit(opts: CaptionSplitOptions): Promise<CaptionSplitResult> {
  const refs = opts.references;
  const settings = opts.settings ?? {};
  await checkOut(opts.out, refs);
  const entries = await imageEntries(refs);
  const { found, missing } = await locateImages(entries, opts.imagesDir);
  if (missing.length > 0 && (opts.skipMissing !== true || found.length === 0)) {
    const what =
      found.length === 0
        ? `none of the ${entries.length} images of ${refs.source} is under ${opts.imagesDir}`
        : `${missing.length} of ${entries.length} images of ${refs.source} are not under ${opts.imagesDir}`;
    throw new UserError(
      `${what} (${sample(missing.map((m) => m.tried))}); point --images at the folder that holds them` +
        (found.length > 0 ? ', or pass --skip-missing to score the others' : ''),
    );
  }

  const progressFile = progressPathFor(opts.out);
  const previous = await readProgress(progressFile, settings);
  const done = new Map<string, ResultRecord>();
  for (const e of found) {
    const r = previous?.get(e.id);
    if (r !== undefined) done.set(e.id, r);
  }
  const resumed = done.size;
  const todo = found.filter((e) => !done.has(e.id));
  opts.onStart?.({ total: entries.length, resumed, toCaption: todo.length, missing });

  const failed: CaptionFailureInfo[] = [];
  let captioned = 0;
  if (todo.length > 0) {
    const writer = new ProgressWriter(progressFile, settings, previous !== null);
    const batchSize = opts.captionOptions?.batchSize ?? 8;
    let pending: ResultRecord[] = [];
    let seen = 0;
    let captioner: Captioner | undefined;
    try {
      captioner = await opts.loadCaptioner();
      const stream = captioner.captionStream(
        todo.map((e) => e.file),
        opts.captionOptions ?? {},
      );
      for await (const r of stream) {
        const e = todo[r.index];
        if (r.error !== undefined) {
          const f = { id: e.id, file: e.file, error: r.error };
          failed.push(f);
          opts.onFailure?.(f);
        } else {
          const rec = { image_id: e.imageId, caption: r.caption };
          done.set(e.id, rec);
          pending.push(rec);
          captioned++;
        }
        // Results arrive a batch at a time: flush at each batch's end (and at the very end).
        if (++seen % batchSize === 0 || seen === todo.length) {
          await writer.append(pending);
          pending = [];
          opts.onProgress?.(seen, todo.length);
        }
      }
    } catch (e) {
      // Keep what is done: the batches before the failure are in the progress file for the rerun.
      await writer.append(pending).catch(() => undefined);
      throw e;
    } finally {
      await writer.close();
      captioner?.dispose?.();
    }
  }

  // References order, whichever run captioned each image.
  const records = found.filter((e) => done.has(e.id)).map((e) => done.get(e.id) as ResultRecord);
  if (records.length === 0) {
    await fs.rm(progressFile, { force: true });
    throw new UserError(
      `none of the ${found.length} images could be captioned (${sample(
        failed.map((f) => f.error),
        1,
      )})`,
    );
  }
  await writeFileAtomic(opts.out, formatResults(records));
  await fs.rm(progressFile, { force: true });
  const ids = found.filter((e) => done.has(e.id)).map((e) => e.id);
  return {
    predictions: {
      ids,
      captions: new Map(ids.map((id) => [id, (done.get(id) as ResultRecord).caption])),
      source: opts.out,
      format: 'coco-results',
    },
    records,
    out: opts.out,
    total: entries.length,
    resumed,
    captioned,
    failed,
    missing: opts.skipMissing === true ? missing : [],
    complete: records.length === entries.length,
  };
}
