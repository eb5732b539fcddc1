/**
 * Captions files and how their entries are paired with image files, strictly by file name (never by a
 * number found in a name, never by position):
 * - COCO annotations (`{images: [{id, file_name}], annotations: [{image_id, caption}]}`): an annotation's
 *   image is `images[].file_name` of its image_id;
 * - Karpathy's `dataset_coco.json` (`{images: [{filepath, filename, cocoid, split, sentences: [{raw}]}]}`):
 *   `filepath/filename` (optionally only some splits);
 * - the official ClipCap `train_caption.json` (`[{image_id, caption}]`): parse_coco.py's rule, the file
 *   `COCO_train2014_%012d.jpg`, else `COCO_val2014_%012d.jpg`;
 * - generic JSON Lines / a JSON list of `{image, caption}` or CSV with `image` and `caption` columns: `image`
 *   is the file's path.
 *
 * A name matches an image when it equals the image path's tail at a directory boundary
 * (`train2014/x.jpg` matches `/data/coco/train2014/x.jpg`, not `/data/train2014x.jpg`); a name that matches
 * two images is ambiguous and pairs with neither.
 */
import { promises as fs } from 'node:fs';
import { UserError } from '../util/errors.js';

export type CaptionsFormat = 'coco' | 'karpathy' | 'official' | 'jsonl' | 'json' | 'csv';

export interface CaptionEntry {
  /** File names to try, in order (relative paths, "/" separated). */
  names: string[];
  image_id: number | string;
  caption: string;
}

export interface CaptionsFile {
  format: CaptionsFormat;
  entries: CaptionEntry[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const normalize = (p: string): string =>
  p
    .replace(/\\/g, '/')
    .replace(/^(\.\/)+/, '')
    .replace(/\/{2,}/g, '/');

const officialName = (split: string, id: number): string =>
  `COCO_${split}2014_${String(id).padStart(12, '0')}.jpg`;

function parseCsv(text: string, file: string): Record<string, string>[] {
  // RFC 4180: quoted fields may hold commas, quotes ("") and newlines.
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += c;
    } else if (c === '"' && field === '') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      field = '';
      if (row.some((f) => f !== '')) rows.push(row);
      row = [];
    } else field += c;
  }
  if (quoted) throw new UserError(`${file}: a quoted CSV field is never closed`);
  row.push(field);
  if (row.some((f) => f !== '')) rows.push(row);
  if (rows.length === 0) return [];
  const header = rows[0].map((h) => h.trim().replace(/^\uFEFF/, ''));
  return rows.slice(1).map((r, i) => {
    if (r.length !== header.length)
      throw new UserError(`${file}: CSV row ${i + 2} has ${r.length} fields, the header ${header.length}`);
    return Object.fromEntries(header.map((h, j) => [h, r[j]]));
  });
}

function generic(o: unknown, file: string, where: string): CaptionEntry {
  if (!isObject(o)) throw new UserError(`${file}: ${where} is not an object`);
  if (typeof o.caption !== 'string') throw new UserError(`${file}: ${where} has no "caption" string`);
  const image = o.image ?? o.file_name ?? o.file;
  if (typeof image !== 'string' || image === '')
    throw new UserError(
      `${file}: ${where} has no "image" (the image's file name or relative path); captions are paired by file name only`,
    );
  const id = o.image_id;
  return {
    names: [normalize(image)],
    image_id: typeof id === 'number' || typeof id === 'string' ? id : normalize(image),
    caption: o.caption,
  };
}

/** Read a captions file in any of the formats above; `splits` filters Karpathy's file (e.g. train, restval). */
export async function readCaptionsFile(
  file: string,
  opts: { splits?: readonly string[] } = {},
): Promise<CaptionsFile> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new UserError(
      `cannot read captions file ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
    );
  }
  if (/\.csv$/i.test(file)) {
    const rows = parseCsv(text, file);
    if (rows.length > 0 && (!('image' in rows[0]) || !('caption' in rows[0])))
      throw new UserError(`${file}: the CSV header needs "image" and "caption" columns`);
    return { format: 'csv', entries: rows.map((r, i) => generic(r, file, `CSV row ${i + 2}`)) };
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    const entries: CaptionEntry[] = [];
    text.split('\n').forEach((line, i) => {
      const l = line.trim();
      if (l === '') return;
      let o: unknown;
      try {
        o = JSON.parse(l);
      } catch {
        throw new UserError(
          `${file}: line ${i + 1} is not valid JSON; give COCO annotations, Karpathy's dataset_coco.json, a JSON list, JSON Lines or CSV`,
        );
      }
      entries.push(generic(o, file, `line ${i + 1}`));
    });
    return { format: 'jsonl', entries };
  }
  if (Array.isArray(doc)) {
    // The official train_caption.json: image ids only; else generic {image, caption} entries.
    if (doc.length > 0 && isObject(doc[0]) && doc[0].image === undefined && doc[0].file_name === undefined) {
      return {
        format: 'official',
        entries: doc.map((x, i) => {
          if (!isObject(x) || typeof x.caption !== 'string')
            throw new UserError(`${file}: entry ${i} has no "caption" string`);
          const id =
            typeof x.image_id === 'string' && /^\d+$/.test(x.image_id) ? Number(x.image_id) : x.image_id;
          if (typeof id !== 'number' || !Number.isInteger(id) || id < 0)
            throw new UserError(
              `${file}: entry ${i} needs "image" (a file name) or a numeric COCO "image_id" (train_caption.json)`,
            );
          return {
            names: [officialName('train', id), officialName('val', id)],
            image_id: x.image_id as number | string,
            caption: x.caption,
          };
        }),
      };
    }
    return { format: 'json', entries: doc.map((x, i) => generic(x, file, `entry ${i}`)) };
  }
  if (isObject(doc) && Array.isArray(doc.annotations)) {
    const names = new Map<string, string>();
    if (!Array.isArray(doc.images))
      throw new UserError(
        `${file}: COCO annotations without "images" [{id, file_name}]: cannot pair by file name`,
      );
    for (const im of doc.images)
      if (
        isObject(im) &&
        (typeof im.id === 'number' || typeof im.id === 'string') &&
        typeof im.file_name === 'string'
      )
        names.set(String(im.id), normalize(im.file_name));
    return {
      format: 'coco',
      entries: doc.annotations.map((a, i) => {
        if (!isObject(a) || typeof a.caption !== 'string')
          throw new UserError(`${file}: annotations[${i}] has no "caption" string`);
        const id = a.image_id;
        if (typeof id !== 'number' && typeof id !== 'string')
          throw new UserError(`${file}: annotations[${i}] has no "image_id"`);
        const name = names.get(String(id));
        // An annotation whose image_id is not in images[] pairs with nothing (it is reported as unmatched).
        return { names: name !== undefined ? [name] : [], image_id: id, caption: a.caption };
      }),
    };
  }
  if (
    isObject(doc) &&
    Array.isArray(doc.images) &&
    doc.images.some((im) => isObject(im) && Array.isArray(im.sentences))
  ) {
    const entries: CaptionEntry[] = [];
    doc.images.forEach((im, i) => {
      if (!isObject(im) || typeof im.filename !== 'string' || !Array.isArray(im.sentences))
        throw new UserError(
          `${file}: images[${i}] needs "filename" and "sentences" (Karpathy's dataset_coco.json)`,
        );
      if (opts.splits && !opts.splits.includes(String(im.split))) return;
      const name = normalize(
        typeof im.filepath === 'string' && im.filepath !== '' ? `${im.filepath}/${im.filename}` : im.filename,
      );
      const id = typeof im.cocoid === 'number' ? im.cocoid : typeof im.imgid === 'number' ? im.imgid : name;
      for (const s of im.sentences)
        if (isObject(s) && typeof s.raw === 'string')
          entries.push({ names: [name], image_id: id, caption: s.raw.trim() });
    });
    return { format: 'karpathy', entries };
  }
  throw new UserError(
    `${file}: expected COCO annotations, Karpathy's dataset_coco.json, a JSON list of {image, caption} (or the official [{image_id, caption}]), JSON Lines or CSV`,
  );
}

export interface Pairing {
  /** Sidecar records in captions-file order: the caption and the row of its image. */
  records: Array<{ image_id: number | string; caption: string; embedding: number }>;
  /** Entries whose file name is none of the images, with up to 3 examples. */
  unmatchedCaptions: number;
  unmatchedExamples: string[];
  /** Entries whose name fits several images. */
  ambiguous: number;
  ambiguousExamples: string[];
  /** Images no entry names (row indices). */
  uncaptioned: number[];
}

/** Pair entries with image paths (the rows, in order). */
export function pairCaptions(entries: readonly CaptionEntry[], images: readonly string[]): Pairing {
  // Every tail of every path at a directory boundary -> its row (-1: several rows share that tail).
  const byTail = new Map<string, number>();
  images.forEach((p, row) => {
    const parts = normalize(p).split('/');
    for (let i = parts.length - 1; i >= 0; i--) {
      const tail = parts.slice(i).join('/');
      if (tail === '') continue;
      const seen = byTail.get(tail);
      byTail.set(tail, seen === undefined || seen === row ? row : -1);
    }
  });
  const records: Pairing['records'] = [];
  const captioned = new Uint8Array(images.length);
  const out: Pairing = {
    records,
    unmatchedCaptions: 0,
    unmatchedExamples: [],
    ambiguous: 0,
    ambiguousExamples: [],
    uncaptioned: [],
  };
  for (const e of entries) {
    let row: number | undefined;
    let ambiguousName: string | undefined;
    for (const n of e.names) {
      const r = byTail.get(n);
      if (r === -1) ambiguousName ??= n;
      else if (r !== undefined) {
        row = r;
        break;
      }
    }
    if (row !== undefined) {
      records.push({ image_id: e.image_id, caption: e.caption, embedding: row });
      captioned[row] = 1;
    } else if (ambiguousName !== undefined) {
      out.ambiguous++;
      if (out.ambiguousExamples.length < 3) out.ambiguousExamples.push(ambiguousName);
    } else {
      out.unmatchedCaptions++;
      if (out.unmatchedExamples.length < 3)
        out.unmatchedExamples.push(e.names[0] ?? `image_id ${String(e.image_id)} (not in images[])`);
    }
  }
  captioned.forEach((c, row) => {
    if (!c) out.uncaptioned.push(row);
  });
  return out;
}
