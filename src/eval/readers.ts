/**
 * Reading reference captions and predictions from the formats people have:
 *
 * references
 *   - COCO annotations JSON (captions_val2014.json): `{ images?: [{id}], annotations: [{image_id, caption}] }`;
 *     images in the order of `images` (else of first appearance), captions in annotation order, which is
 *     the order pycocoevalcap feeds them. Images listed without captions are kept with an empty list.
 *   - Karpathy split file (dataset_coco.json): `{ images: [{ split, cocoid, filename, sentences: [{raw,
 *     tokens}] }] }`, optionally restricted to one split. The id is `cocoid` (else `imgid`). The caption is
 *     `raw` (PTB-tokenized like any other) or, with tokenization off, the pre-tokenized `tokens` joined.
 *   - JSONL: one `{image_id, caption}` (or `{image_id, captions: [...]}`) per line; several lines per id
 *     give several references. A JSON array of such records is accepted too.
 * predictions
 *   - COCO results JSON: `[{image_id, caption}]`, or the same records as JSONL. One caption per image.
 *
 * Image ids are compared as strings (COCO's 391895 and "391895" are the same image). Every problem is a
 * UserError that names the file (and the line, for JSONL).
 */
import { readFile } from 'node:fs/promises';
import { UserError } from '../util/errors.js';
import { checkOptionKeys, optionKeys } from '../util/options.js';

export type ReferenceFormat = 'coco' | 'karpathy' | 'jsonl' | 'json-records';
export type PredictionFormat = 'coco-results' | 'jsonl';

export interface ReferenceSet {
  /** Image ids in scoring order. */
  ids: string[];
  captions: Map<string, string[]>;
  /** Where they came from (a file name) for error messages. */
  source: string;
  format: ReferenceFormat;
  /**
   * Image file names -> image id, as the file lists them (COCO `images[].file_name`, Karpathy `filename` and
   * `filepath/filename`, every split), so that results naming images by path can be scored.
   */
  files?: Map<string, string>;
}

export interface PredictionSet {
  ids: string[];
  captions: Map<string, string>;
  source: string;
  format: PredictionFormat;
  /** Entries that hold a failure (`{"image", "error"}` as `clipcap caption --format json` writes them). */
  failed?: number;
}

export interface ReadPredictionsOptions {
  /** Map entries that name an image by path (`{"image": path, "caption"}`) to ids through these references. */
  references?: ReferenceSet;
}

export interface ReadReferencesOptions {
  /** Karpathy split to keep (train, restval, val, test). */
  split?: string;
  /** 'none' picks Karpathy's pre-tokenized `tokens` instead of `raw`. */
  tokenize?: 'ptb' | 'none';
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

const isObject = (v: Json | undefined): v is JsonObject =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** "line L, column C" of a character offset. */
function lineCol(text: string, offset: number): string {
  let line = 1;
  let col = 1;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      col = 1;
    } else {
      col++;
    }
  }
  return `line ${line}, column ${col}`;
}

/** JSON.parse with the error position turned into a line and column. */
function parseJson(text: string, name: string): Json {
  try {
    return JSON.parse(text) as Json;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const pos = /position (\d+)/.exec(msg);
    const where = pos !== null ? ` at ${lineCol(text, Number(pos[1]))}` : '';
    throw new UserError(
      `${name}: malformed JSON${where} (${msg.replace(/\s*in JSON at position \d+.*$/, '')})`,
    );
  }
}

/** JSONL: one object per non-blank line. */
function parseJsonl(text: string, name: string): Array<{ value: JsonObject; where: string }> {
  const out: Array<{ value: JsonObject; where: string }> = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let v: Json;
    try {
      v = JSON.parse(line) as Json;
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new UserError(
        `${name}: line ${i + 1}: malformed JSON (${msg.replace(/\s*in JSON at position \d+.*$/, '')})`,
      );
    }
    if (!isObject(v))
      throw new UserError(
        `${name}: line ${i + 1}: expected a JSON object like {"image_id": ..., "caption": ...}`,
      );
    out.push({ value: v, where: `line ${i + 1}` });
  }
  return out;
}

/** Whole-file JSON, or JSONL when the text is several JSON values one per line. */
function parseAny(
  text: string,
  name: string,
): { json: Json } | { records: Array<{ value: JsonObject; where: string }> } {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  if (body.trim() === '') throw new UserError(`${name}: the file is empty`);
  try {
    return { json: JSON.parse(body) as Json };
  } catch {
    // Not one JSON document: JSONL if it starts with an object, else report the JSON error.
  }
  // JSONL when the first non-blank line is a complete JSON object on its own; otherwise it is a (broken)
  // JSON document and the error gets a line and column.
  const firstLine = body.split('\n').find((l) => l.trim() !== '') as string;
  let firstIsObject = false;
  try {
    firstIsObject = isObject(JSON.parse(firstLine) as Json);
  } catch {
    firstIsObject = false;
  }
  if (firstIsObject) return { records: parseJsonl(body, name) };
  return { json: parseJson(body, name) };
}

function imageId(v: Json | undefined, name: string, where: string, field = 'image_id'): string {
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  if (typeof v === 'string' && v !== '') return v;
  throw new UserError(
    `${name}: ${where}: missing or invalid "${field}" (expected a number or a non-empty string)`,
  );
}

function captionText(v: Json | undefined, name: string, where: string, field = 'caption'): string {
  if (typeof v === 'string') return v;
  throw new UserError(`${name}: ${where}: missing or invalid "${field}" (expected a string)`);
}

/** Records {image_id, caption | captions} -> references in order of first appearance. */
function referencesFromRecords(
  records: Array<{ value: JsonObject; where: string }>,
  name: string,
  format: ReferenceFormat,
): ReferenceSet {
  const captions = new Map<string, string[]>();
  for (const { value, where } of records) {
    const id = imageId(value.image_id, name, where);
    let list = captions.get(id);
    if (list === undefined) {
      list = [];
      captions.set(id, list);
    }
    if (Array.isArray(value.captions)) {
      value.captions.forEach((c, k) => list.push(captionText(c, name, `${where}, captions[${k}]`)));
    } else {
      list.push(captionText(value.caption, name, where));
    }
  }
  return { ids: [...captions.keys()], captions, source: name, format };
}

function cocoReferences(doc: JsonObject, name: string): ReferenceSet {
  const anns = doc.annotations;
  if (!Array.isArray(anns)) throw new UserError(`${name}: "annotations" must be a list`);
  const captions = new Map<string, string[]>();
  // The images list fixes the order (pycocotools keeps it); images without captions are left out.
  const files = new Map<string, string>();
  if (Array.isArray(doc.images)) {
    doc.images.forEach((im, i) => {
      if (!isObject(im)) throw new UserError(`${name}: images[${i}] is not an object`);
      const id = imageId(im.id, name, `images[${i}]`, 'id');
      captions.set(id, []);
      if (typeof im.file_name === 'string' && im.file_name !== '') files.set(im.file_name, id);
    });
  }
  anns.forEach((a, i) => {
    if (!isObject(a)) throw new UserError(`${name}: annotations[${i}] is not an object`);
    const id = imageId(a.image_id, name, `annotations[${i}]`);
    const text = captionText(a.caption, name, `annotations[${i}]`);
    let list = captions.get(id);
    if (list === undefined) {
      list = [];
      captions.set(id, list);
    }
    list.push(text);
  });
  // Images listed without any caption stay (with an empty list) so that a prediction for one of them is
  // reported as "no reference captions" rather than as an unknown id.
  return { ids: [...captions.keys()], captions, source: name, format: 'coco', files };
}

function karpathyReferences(doc: JsonObject, name: string, opts: ReadReferencesOptions): ReferenceSet {
  const images = doc.images as Json[];
  const captions = new Map<string, string[]>();
  const splits = new Set<string>();
  const files = new Map<string, string>();
  images.forEach((im, i) => {
    if (!isObject(im)) throw new UserError(`${name}: images[${i}] is not an object`);
    const split = typeof im.split === 'string' ? im.split : '';
    splits.add(split);
    const rawId = im.cocoid ?? im.imgid;
    const idField = im.cocoid === undefined ? 'imgid' : 'cocoid';
    if (typeof im.filename === 'string' && im.filename !== '' && rawId !== undefined) {
      const fid = imageId(rawId, name, `images[${i}]`, idField);
      files.set(im.filename, fid);
      if (typeof im.filepath === 'string' && im.filepath !== '')
        files.set(`${im.filepath}/${im.filename}`, fid);
    }
    if (opts.split !== undefined && split !== opts.split) return;
    const id = imageId(rawId, name, `images[${i}]`, idField);
    if (!Array.isArray(im.sentences)) throw new UserError(`${name}: images[${i}] has no "sentences" list`);
    const list = im.sentences.map((s, k) => {
      const where = `images[${i}].sentences[${k}]`;
      if (!isObject(s)) throw new UserError(`${name}: ${where} is not an object`);
      if (opts.tokenize === 'none' && Array.isArray(s.tokens)) {
        return s.tokens.map((t, j) => captionText(t, name, `${where}.tokens[${j}]`, 'token')).join(' ');
      }
      return captionText(s.raw, name, where, 'raw');
    });
    if (captions.has(id)) throw new UserError(`${name}: image ${id} appears twice (images[${i}])`);
    captions.set(id, list);
  });
  if (opts.split !== undefined && captions.size === 0) {
    const known = [...splits].filter((s) => s !== '').sort();
    throw new UserError(
      `${name}: no images in split "${opts.split}" (splits in this file: ${known.join(', ') || 'none'})`,
    );
  }
  return { ids: [...captions.keys()], captions, source: name, format: 'karpathy', files };
}

/** Parse references from text; `name` is used in error messages. */
export function parseReferences(text: string, name: string, opts: ReadReferencesOptions = {}): ReferenceSet {
  const parsed = parseAny(text, name);
  let refs: ReferenceSet;
  if ('records' in parsed) {
    refs = referencesFromRecords(parsed.records, name, 'jsonl');
  } else {
    const doc = parsed.json;
    const isKarpathy =
      isObject(doc) &&
      Array.isArray(doc.images) &&
      doc.images.some((im) => isObject(im) && 'sentences' in im);
    if (isKarpathy) {
      refs = karpathyReferences(doc, name, opts);
    } else if (isObject(doc) && 'annotations' in doc) {
      refs = cocoReferences(doc, name);
    } else if (Array.isArray(doc)) {
      refs = referencesFromRecords(
        doc.map((v, i) => {
          if (!isObject(v)) throw new UserError(`${name}: item ${i} is not an object`);
          return { value: v, where: `item ${i}` };
        }),
        name,
        'json-records',
      );
    } else if (isObject(doc) && 'image_id' in doc) {
      refs = referencesFromRecords([{ value: doc, where: 'line 1' }], name, 'jsonl');
    } else {
      throw new UserError(
        `${name}: not a references file: expected COCO annotations ({"images", "annotations"}), a Karpathy ` +
          `split file ({"images": [{"sentences": ...}]}) or JSONL ({"image_id", "caption"} per line)`,
      );
    }
  }
  if (opts.split !== undefined && refs.format !== 'karpathy') {
    throw new UserError(
      `${name}: --split applies only to a Karpathy split file (dataset_coco.json); this is ${refs.format}`,
    );
  }
  if (![...refs.captions.values()].some((l) => l.length > 0))
    throw new UserError(`${name}: no reference captions found`);
  return refs;
}

/**
 * The COCO image id in a COCO file name: `COCO_val2014_000000391895.jpg` (2014) or `000000391895.jpg`
 * (2017) -> "391895"; undefined for other names.
 */
export function cocoIdFromFileName(file: string): string | undefined {
  const base = file.slice(Math.max(file.lastIndexOf('/'), file.lastIndexOf('\\')) + 1);
  const m = /^(?:COCO_[A-Za-z]+\d{4}_)?(\d{12})\.[A-Za-z]+$/.exec(base);
  return m === null ? undefined : String(Number(m[1]));
}

/**
 * The image id of an image path: the longest trailing part of the path that the references list as a file
 * name (`val2014/COCO_val2014_...jpg`, then `COCO_val2014_...jpg`), else the number in a COCO file name.
 */
export function imageIdForPath(file: string, references?: ReferenceSet): string | undefined {
  const parts = file.split(/[\\/]+/).filter((p) => p !== '' && p !== '.');
  const files = references?.files;
  if (files !== undefined)
    for (let i = 0; i < parts.length; i++) {
      const id = files.get(parts.slice(i).join('/'));
      if (id !== undefined) return id;
    }
  return cocoIdFromFileName(file);
}

/**
 * Parse predictions from text; `name` is used in error messages. Entries may name their image by `image_id`,
 * or by path (`image`, as `clipcap caption --format json` writes them), mapped through the references' file
 * names or the COCO file-name pattern; failed entries (`error`) are counted and left out.
 */
export function parsePredictions(
  text: string,
  name: string,
  opts: ReadPredictionsOptions = {},
): PredictionSet {
  const parsed = parseAny(text, name);
  let records: Array<{ value: JsonObject; where: string }>;
  let format: PredictionFormat;
  if ('records' in parsed) {
    records = parsed.records;
    format = 'jsonl';
  } else if (Array.isArray(parsed.json)) {
    records = parsed.json.map((v, i) => {
      if (!isObject(v))
        throw new UserError(`${name}: item ${i} is not an object like {"image_id": ..., "caption": ...}`);
      return { value: v, where: `item ${i}` };
    });
    format = 'coco-results';
  } else if (isObject(parsed.json) && 'image_id' in parsed.json) {
    records = [{ value: parsed.json, where: 'line 1' }];
    format = 'jsonl';
  } else {
    throw new UserError(
      `${name}: not a predictions file: expected a COCO results list [{"image_id", "caption"}] or JSONL ({"image_id", "caption"} per line)`,
    );
  }
  const captions = new Map<string, string>();
  const duplicates: string[] = [];
  let failed = 0;
  for (const { value, where } of records) {
    if (value.image_id === undefined && typeof value.error === 'string' && value.caption === undefined) {
      failed++;
      continue;
    }
    let id: string;
    if (value.image_id === undefined && typeof value.image === 'string' && value.image !== '') {
      const found = imageIdForPath(value.image, opts.references);
      if (found === undefined)
        throw new UserError(
          `${name}: ${where}: no image id for "${value.image}": ` +
            (opts.references?.files !== undefined && opts.references.files.size > 0
              ? `${opts.references.source} lists no such file_name, and the name is not a COCO file name`
              : `the references name no image files and it is not a COCO file name (COCO_val2014_000000391895.jpg)`) +
            `; or write "image_id" (clipcap caption --format coco)`,
        );
      id = found;
    } else id = imageId(value.image_id, name, where);
    const text = captionText(value.caption, name, where);
    if (captions.has(id)) duplicates.push(id);
    else captions.set(id, text);
  }
  if (duplicates.length > 0) {
    const uniq = [...new Set(duplicates)];
    throw new UserError(
      `${name}: ${uniq.length} image id(s) have more than one prediction (${sample(uniq)}); give exactly one caption per image`,
    );
  }
  if (captions.size === 0)
    throw new UserError(
      failed > 0
        ? `${name}: all ${failed} entries are failures; nothing to score`
        : `${name}: no predictions found`,
    );
  return { ids: [...captions.keys()], captions, source: name, format, ...(failed > 0 ? { failed } : {}) };
}

/** A few ids for an error message. */
export function sample(ids: readonly string[], n = 5): string {
  const shown = ids.slice(0, n).join(', ');
  return ids.length > n ? `e.g. ${shown}, ... ${ids.length - n} more` : shown;
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UserError(`${file}: ${what} file not found`);
    if (code === 'EISDIR') throw new UserError(`${file}: is a directory, expected a ${what} file`);
    throw new UserError(`${file}: cannot read ${what} file (${e instanceof Error ? e.message : String(e)})`);
  }
}

export async function readReferences(file: string, opts: ReadReferencesOptions = {}): Promise<ReferenceSet> {
  checkOptionKeys(
    opts,
    optionKeys<ReadReferencesOptions>({ split: true, tokenize: true }),
    'readReferences options',
  );
  return parseReferences(await readText(file, 'references'), file, opts);
}

export async function readPredictions(
  file: string,
  opts: ReadPredictionsOptions = {},
): Promise<PredictionSet> {
  checkOptionKeys(opts, optionKeys<ReadPredictionsOptions>({ references: true }), 'readPredictions options');
  return parsePredictions(await readText(file, 'predictions'), file, opts);
}
