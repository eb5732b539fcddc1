/**
 * SPICE through the toolkit's jar, as pycocoevalcap's spice/spice.py runs it:
 *
 *   cd <jar dir> && java -jar -Xmx8G spice-1.0.jar in.json [-cache DIR] -out out.json -subset -silent
 *
 * in.json is `[{"image_id", "test", "refs"}]` in sorted id order; out.json holds, per image, `scores` with
 * an "All" entry (and per-category entries with -subset) whose "f" is the image's SPICE. The corpus score
 * is the NumPy mean of those f values (a null f becomes NaN, so the mean can be NaN, as in the toolkit).
 * pycocoevalcap hands per-image scores to the images in unsorted order (a bug when ids are not already
 * sorted); here each image gets its own score. The jar needs lib/ (Stanford CoreNLP 3.6.0 jars) beside it.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { type JavaCommand, JavaProcess, checkJar, resolveJava } from './java.js';
import { npMean } from './pyutil.js';
import { UserError } from '../util/errors.js';

export interface SpiceOptions {
  /** Path to spice-1.0.jar (with lib/ beside it). */
  jar: string;
  java?: JavaCommand;
  /** Parse cache directory passed as -cache (pycocoevalcap uses spice/cache); none by default. */
  cache?: string;
  memory?: string;
}

/** One category's scores as the jar reports them (None becomes NaN). */
export type SpiceCategory = Record<string, number>;

export interface SpiceResult {
  score: number;
  /** SPICE (All f) per image, in the input order. */
  perImage: number[];
  /** Every category the jar reported, per image, in the input order. */
  details: Array<Record<string, SpiceCategory>>;
}

/** pycocoevalcap writes COCO's integer ids as numbers; keep that for ids that are integers. */
function jsonId(id: string): string | number {
  return /^-?(0|[1-9]\d{0,14})$/.test(id) ? Number(id) : id;
}

function compareIds(a: string | number, b: string | number): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'number') return -1;
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** spice.py float_convert: float(x), or NaN when that fails (None). */
function floatConvert(x: unknown): number {
  if (typeof x === 'number') return x;
  if (typeof x === 'string' && x.trim() !== '' && !Number.isNaN(Number(x))) return Number(x);
  return NaN;
}

interface SpiceItem {
  image_id: string | number;
  scores: Record<string, Record<string, unknown>>;
}

/**
 * SPICE 1.0 of `candidates[i]` against `references[i]` for images `ids[i]`. Throws JavaNotFoundError when
 * Java cannot be started, UserError when the jar fails or writes something unexpected.
 */
export async function computeSpice(
  ids: readonly string[],
  candidates: readonly string[],
  references: ReadonlyArray<readonly string[]>,
  opts: SpiceOptions,
): Promise<SpiceResult> {
  if (candidates.length !== references.length || ids.length !== candidates.length) {
    throw new Error('computeSpice: ids, candidates and references differ in length');
  }
  const { dir, name } = checkJar(opts.jar, 'SPICE', '--spice-jar');
  const input = ids
    .map((id, i) => ({ image_id: jsonId(id), test: candidates[i], refs: [...references[i]] }))
    .sort((a, b) => compareIds(a.image_id, b.image_id));
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'clipcap-spice-'));
  try {
    const inFile = path.join(tmp, 'in.json');
    const outFile = path.join(tmp, 'out.json');
    await writeFile(inFile, JSON.stringify(input, null, 2));
    const args = ['-jar', `-Xmx${opts.memory ?? '8G'}`, name, inFile];
    if (opts.cache !== undefined) args.push('-cache', path.resolve(opts.cache));
    args.push('-out', outFile, '-subset', '-silent');
    const proc = new JavaProcess(`SPICE (${name})`, resolveJava(opts.java), args, { cwd: dir });
    await proc.waitSuccess();

    let items: SpiceItem[];
    try {
      items = JSON.parse(await readFile(outFile, 'utf8')) as SpiceItem[];
      if (!Array.isArray(items)) throw new Error('not a JSON array');
    } catch (e) {
      throw new UserError(
        `SPICE (${name}) wrote no readable result: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    const byId = new Map<string, Record<string, SpiceCategory>>();
    const fs: number[] = [];
    for (const item of items) {
      const all = item?.scores?.All;
      if (all === undefined)
        throw new UserError(`SPICE (${name}) result for image ${item?.image_id} has no "All" score`);
      fs.push(floatConvert(all.f));
      const cats: Record<string, SpiceCategory> = {};
      for (const [cat, tuple] of Object.entries(item.scores)) {
        cats[cat] = Object.fromEntries(Object.entries(tuple).map(([k, v]) => [k, floatConvert(v)]));
      }
      byId.set(String(item.image_id), cats);
    }
    const details = ids.map((id) => {
      const d = byId.get(id);
      if (d === undefined) throw new UserError(`SPICE (${name}) returned no score for image ${id}`);
      return d;
    });
    return { score: npMean(fs), perImage: details.map((d) => d.All.f ?? NaN), details };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
