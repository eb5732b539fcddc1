import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { expandGlob, expandInputs, segmentRegExp } from '../../src/pipeline/inputs.js';

const root = mkdtempSync(path.join(tmpdir(), 'clipcap-inputs-'));
const files = [
  'b.jpg',
  'a.PNG',
  'notes.txt',
  'sub/c.webp',
  'sub/deep/d.jpeg',
  'sub/e.gif',
  '.hidden/x.jpg',
  'z/.y.jpg',
];
for (const f of files) {
  mkdirSync(path.join(root, path.dirname(f)), { recursive: true });
  writeFileSync(path.join(root, f), 'x');
}
mkdirSync(path.join(root, 'empty'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const rel = (ps: string[]): string[] => ps.map((p) => path.relative(root, p).split(path.sep).join('/'));

describe('expandInputs', () => {
  it('walks directories recursively in sorted order, images only, hidden entries skipped', async () => {
    const r = await expandInputs([root]);
    expect(rel(r.map((e) => e.path))).toEqual([
      'a.PNG',
      'b.jpg',
      'sub/c.webp',
      'sub/deep/d.jpeg',
      'sub/e.gif',
    ]);
    expect(r.every((e) => e.error === undefined)).toBe(true);
  });

  it('keeps files as given and in argument order, and reports arguments that yield nothing', async () => {
    const r = await expandInputs([
      path.join(root, 'notes.txt'),
      path.join(root, 'missing.jpg'),
      path.join(root, 'empty'),
      path.join(root, 'nope', '*.jpg'),
      path.join(root, 'b.jpg'),
    ]);
    expect(rel(r.map((e) => e.path))).toEqual(['notes.txt', 'missing.jpg', 'empty', 'nope/*.jpg', 'b.jpg']);
    expect(r[0].error).toBeUndefined(); // read later: fails as "not an image" in its place
    expect(r[1].error).toBeUndefined();
    expect(r[2].error).toMatch(/no images found in this directory/);
    expect(r[3].error).toMatch(/no image files match this pattern/);
  });
});

describe('expandGlob', () => {
  it('matches *, ?, ** and character classes', async () => {
    expect(rel(await expandGlob(path.join(root, '*.jpg')))).toEqual(['b.jpg']);
    expect(rel(await expandGlob(path.join(root, '?.*')))).toEqual(['a.PNG', 'b.jpg']);
    expect(rel(await expandGlob(path.join(root, '**', '*.jp*g')))).toEqual(['b.jpg', 'sub/deep/d.jpeg']);
    expect(rel(await expandGlob(path.join(root, 'sub', '**')))).toEqual([
      'sub/c.webp',
      'sub/deep/d.jpeg',
      'sub/e.gif',
    ]);
    expect(rel(await expandGlob(path.join(root, 's*', '[ce].*')))).toEqual(['sub/c.webp', 'sub/e.gif']);
    expect(rel(await expandGlob(path.join(root, 'z', '.*')))).toEqual(['z/.y.jpg']);
  });

  it('translates segments to anchored expressions that never cross "/"', () => {
    expect(segmentRegExp('a*.jpg').test('abc.jpg')).toBe(true);
    expect(segmentRegExp('a*.jpg').test('abcxjpg')).toBe(false);
    expect(segmentRegExp('[!a]?').test('bc')).toBe(true);
    expect(segmentRegExp('[!a]?').test('ac')).toBe(false);
    expect(segmentRegExp('(x)+').test('(x)+')).toBe(true);
  });
});
