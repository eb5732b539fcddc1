import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, expect, afterAll } from 'vitest';
import { decodeToRgb, preprocessImage, type ImageInput, type DecodeOptions } from '../../src/image/index.js';
import { UserError } from '../../src/util/errors.js';
import { byteDiff, fixture, local } from './helpers.js';

interface ConvertCase {
  file: string;
  width: number;
  height: number;
  mode: string;
}

describe('decodeToRgb vs Pillow Image.open(f).convert("RGB") (test/image/fixtures/convert)', () => {
  const cases = JSON.parse(readFileSync(local('convert/manifest.json'), 'utf8')) as ConvertCase[];
  for (const c of cases) {
    it(`${c.file} (Pillow mode ${c.mode}) is bit-exact`, async () => {
      const ref = new Uint8Array(readFileSync(local(`convert/${c.file}.rgb`)));
      const out = await decodeToRgb(local(`convert/${c.file}`));
      expect([out.width, out.height]).toEqual([c.width, c.height]);
      expect(byteDiff(out.data, ref)).toEqual({ count: 0, max: 0 });
    });
  }
});

describe('decodeToRgb inputs and options', () => {
  const photo = fixture('images/COCO_val2014_000000165547.jpg');

  it('a path, its bytes and its decoded pixels give the same result', async () => {
    const fromPath = await decodeToRgb(photo);
    const fromBytes = await decodeToRgb(readFileSync(photo));
    expect(byteDiff(fromBytes.data, fromPath.data)).toEqual({ count: 0, max: 0 });
    const a = await preprocessImage(photo);
    const b = await preprocessImage(fromPath);
    expect(byteDiff(b.uint8, a.uint8)).toEqual({ count: 0, max: 0 });
    expect([b.width, b.height]).toEqual([fromPath.width, fromPath.height]);
  });

  it('ignores EXIF orientation by default and applies it with applyExif (orientation 6: 90 degrees clockwise)', async () => {
    const file = fixture('formats/exif_rot6.jpg');
    const stored = await decodeToRgb(file);
    const oriented = await decodeToRgb(file, { applyExif: true });
    const { width: w, height: h } = stored;
    expect([oriented.width, oriented.height]).toEqual([h, w]);
    // Displayed pixel (row r, col c) is stored pixel (row h - 1 - c, col r).
    const expected = new Uint8Array(w * h * 3);
    for (let r = 0; r < w; r++) {
      for (let c = 0; c < h; c++) {
        const src = ((h - 1 - c) * w + r) * 3;
        expected.set(stored.data.subarray(src, src + 3), (r * h + c) * 3);
      }
    }
    expect(byteDiff(oriented.data, expected)).toEqual({ count: 0, max: 0 });
  });
});

describe('decodeToRgb errors: one-line UserError naming the input', () => {
  const dir = mkdtempSync(join(tmpdir(), 'clipcap-image-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const photoBytes = readFileSync(fixture('images/CONCEPTUAL_01.jpg'));
  const write = (name: string, bytes: Uint8Array): string => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };

  async function expectUserError(input: ImageInput, pattern: RegExp, name: string, opts?: DecodeOptions) {
    const err = await decodeToRgb(input, opts).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UserError);
    const msg = (err as UserError).message;
    console.log(`error: ${msg}`);
    expect(msg).not.toContain('\n');
    expect(msg.startsWith(`${name}: `)).toBe(true);
    expect(msg).toMatch(pattern);
  }

  it('garbage bytes', async () => {
    const p = write('garbage.jpg', new TextEncoder().encode('this is not an image at all, just text'));
    await expectUserError(p, /not an image in a supported format/, p);
  });

  it('truncated JPEG', async () => {
    const p = write('truncated.jpg', photoBytes.subarray(0, 5000));
    await expectUserError(p, /corrupt or truncated/, p);
  });

  it('SVG (a vector format Pillow cannot open)', async () => {
    const svg =
      '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>';
    const p = write('drawing.svg', new TextEncoder().encode(svg));
    await expectUserError(p, /svg images are not supported; convert it to JPEG or PNG/, p);
  });

  it('empty file', async () => {
    const p = write('empty.png', new Uint8Array(0));
    await expectUserError(p, /file is empty/, p);
  });

  it('image over the pixel limit', async () => {
    const p = write('big.jpg', photoBytes);
    await expectUserError(p, /1300x1276 = 1658800 pixels is over the limit of 1000000/, p, {
      limitInputPixels: 1_000_000,
    });
    // The same image passes with the default limit.
    expect((await decodeToRgb(p)).width).toBe(1300);
  });

  it('missing path and directory', async () => {
    const missing = join(dir, 'nope.jpg');
    await expectUserError(missing, /no such file/, missing);
    await expectUserError(dir, /is a directory/, dir);
  });

  it('bytes and raw pixels are named by the name option', async () => {
    await expectUserError(new Uint8Array([1, 2, 3, 4]), /not an image/, 'upload #3', { name: 'upload #3' });
    await expectUserError(
      { data: new Uint8Array(11), width: 2, height: 2 },
      /needs 12 bytes, got 11/,
      'raw',
      {
        name: 'raw',
      },
    );
    await expectUserError({ data: new Uint8Array(12), width: 2, height: 2 }, /over the limit of 3/, 'raw', {
      name: 'raw',
      limitInputPixels: 3,
    });
  });
});
