/**
 * Command-line image arguments -> image paths: files as given, directories walked recursively (image
 * extensions only, sorted), and glob patterns (`*`, `?`, `**`, `[abc]`) expanded here, since Node 20 has no
 * fs.glob and shells on other platforms do not expand them. An argument that yields nothing stays as one
 * entry with an error, so it is reported in input order like any other failed image.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** Extensions taken from directories and globs (sharp decodes all of them). */
export const IMAGE_EXTENSIONS: readonly string[] = [
  '.jpg',
  '.jpeg',
  '.jpe',
  '.png',
  '.webp',
  '.gif',
  '.tif',
  '.tiff',
  '.avif',
];

export interface ExpandedInput {
  /** The path to read (or the argument itself when it produced nothing). */
  path: string;
  /** Set when the argument produced no image; the entry is reported as failed. */
  error?: string;
}

export function isImagePath(p: string): boolean {
  return IMAGE_EXTENSIONS.includes(path.extname(p).toLowerCase());
}

export function hasGlobMagic(s: string): boolean {
  return /[*?[]/.test(s);
}

/** Byte order of UTF-16 code units: stable across locales (unlike localeCompare). */
function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Every image file under `dir`, recursively, sorted by path; hidden entries (".name") are skipped. */
export async function listImages(dir: string): Promise<string[]> {
  return listFiles(dir, isImagePath);
}

/** Every file under `dir` that `accept` takes, recursively, sorted by path; hidden entries are skipped. */
export async function listFiles(dir: string, accept: (p: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    const entries = await fs.readdir(d, { withFileTypes: true });
    entries.sort((a, b) => compareStrings(a.name, b.name));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if ((e.isFile() || e.isSymbolicLink()) && accept(p)) out.push(p);
    }
  };
  await walk(dir);
  return out;
}

/** One path segment pattern -> RegExp (`*` and `?` never match "/"; `[...]` is a character class). */
export function segmentRegExp(seg: string): RegExp {
  let re = '';
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i];
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = seg.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        let body = seg.slice(i + 1, end);
        if (body.startsWith('!')) body = '^' + body.slice(1);
        re += '[' + body.replace(/\\/g, '\\\\') + ']';
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/**
 * Files matching a glob pattern, sorted. `**` matches any number of directories (including none); a
 * segment starting with "." matches hidden names only when the pattern says so, as in shells.
 */
export async function expandGlob(
  pattern: string,
  accept: (p: string) => boolean = isImagePath,
): Promise<string[]> {
  const normalized = pattern.split(path.sep).join('/');
  const segments = normalized.split('/');
  // The longest leading run of literal segments is where the walk starts.
  let baseEnd = 0;
  while (baseEnd < segments.length - 1 && !hasGlobMagic(segments[baseEnd])) baseEnd++;
  const baseParts = segments.slice(0, baseEnd);
  const base = baseParts.length === 0 ? '.' : baseParts.join('/') || '/';
  const rest = segments.slice(baseEnd);
  const results = new Set<string>();

  const join = (dir: string, name: string): string =>
    dir === '.' && baseParts.length === 0 ? name : path.join(dir, name);

  const match = async (dir: string, i: number): Promise<void> => {
    const seg = rest[i];
    const last = i === rest.length - 1;
    if (seg === '**') {
      // Zero directories ...
      if (last) {
        for (const f of await listFiles(dir, accept)) results.add(f);
        return;
      }
      await match(dir, i + 1);
      // ... or one more level, keeping `**` in place.
      for (const e of await readDirSafe(dir)) {
        if (e.isDirectory() && !e.name.startsWith('.')) await match(join(dir, e.name), i);
      }
      return;
    }
    if (!hasGlobMagic(seg)) {
      const p = join(dir, seg);
      const st = await fs.stat(p).catch(() => null);
      if (!st) return;
      if (last) {
        if (st.isFile()) results.add(p);
      } else if (st.isDirectory()) await match(p, i + 1);
      return;
    }
    const re = segmentRegExp(seg);
    for (const e of await readDirSafe(dir)) {
      if (e.name.startsWith('.') && !seg.startsWith('.')) continue;
      if (!re.test(e.name)) continue;
      const p = join(dir, e.name);
      if (last) {
        if ((e.isFile() || e.isSymbolicLink()) && accept(p)) results.add(p);
      } else if (e.isDirectory()) await match(p, i + 1);
    }
  };
  await match(base, 0);
  return [...results].sort(compareStrings);
}

async function readDirSafe(dir: string): Promise<import('node:fs').Dirent[]> {
  try {
    const entries = await fs.readdir(dir, { withFileTypes: true });
    return entries.sort((a, b) => compareStrings(a.name, b.name));
  } catch {
    return [];
  }
}

/**
 * Expand command-line arguments in order: a directory becomes its images (sorted), a glob its matches
 * (sorted; only image extensions), anything else is kept as a path (a missing or unreadable file then fails
 * when it is read, in its place). An argument that yields nothing becomes one failed entry.
 */
export async function expandInputs(args: readonly string[]): Promise<ExpandedInput[]> {
  const out: ExpandedInput[] = [];
  for (const arg of args) {
    const st = await fs.stat(arg).catch(() => null);
    if (st?.isDirectory()) {
      const files = await listImages(arg);
      if (files.length === 0)
        out.push({
          path: arg,
          error: `${arg}: no images found in this directory (looked for ${IMAGE_EXTENSIONS.join(' ')})`,
        });
      for (const f of files) out.push({ path: f });
    } else if (!st && hasGlobMagic(arg)) {
      const files = await expandGlob(arg);
      if (files.length === 0) out.push({ path: arg, error: `${arg}: no image files match this pattern` });
      for (const f of files) out.push({ path: f });
    } else out.push({ path: arg });
  }
  return out;
}
