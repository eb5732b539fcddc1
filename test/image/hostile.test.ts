/**
 * Hostile images (#13): hugely elongated strips (a 4 KB PNG of 1x1,000,000 pixels asked the resize for
 * gigabytes of weights), files that announce a format and are cut short, formats we do not read. Each is a
 * clean per-image UserError or a correct result, in memory that follows the crop.
 */
import { describe, expect, it } from 'vitest';
import { run } from '../process.js';
import sharp from 'sharp';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  MAX_ASPECT_RATIO,
  precomputeCoeffs,
  preprocessImage,
  resizeAndCenterCrop,
  resizeBicubicPil,
  resizeBicubicPilRegion,
  resizedSize,
} from '../../src/image/index.js';
import { UserError } from '../../src/util/errors.js';
import { decodeToRgb } from '../../src/image/index.js';
import { byteDiff, fixture, grayPng, pngChunks } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A w x h RGB image whose rows (or columns, when wide) vary: value of index i is (i * 37) mod 256, per channel. */
function strip(w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let p = 0; p < w * h; p++) {
    const i = w >= h ? p % w : Math.floor(p / w);
    out[p * 3] = (i * 37) & 255;
    out[p * 3 + 1] = (i * 11 + 5) & 255;
    out[p * 3 + 2] = 255 - ((i * 37) & 255);
  }
  return out;
}

async function userError(run: () => Promise<unknown>): Promise<string> {
  try {
    await run();
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    expect(e.message).not.toContain('\n');
    return e.message;
  }
  throw new Error('accepted');
}

describe('coefficients for a window of the resized axis', () => {
  it.each([
    [640, 224, 37, 150],
    [17, 3808, 1792, 224],
    [5, 9, 0, 9],
    [1000, 1, 0, 1],
  ])(
    'precomputeCoeffs(%i -> %i) over [%i, +%i) is that slice of the whole axis',
    (inSize, outSize, first, count) => {
      const all = precomputeCoeffs(inSize, outSize);
      const part = precomputeCoeffs(inSize, outSize, first, count);
      expect(part.first).toBe(first);
      expect(part.ksize).toBe(all.ksize);
      expect([...part.bounds]).toEqual([...all.bounds.subarray(first * 2, (first + count) * 2)]);
      expect([...part.weights]).toEqual([
        ...all.weights.subarray(first * all.ksize, (first + count) * all.ksize),
      ]);
    },
  );

  it('a 1 x 1,000,000 strip: weights for the 224 cropped rows only; the crop equals that of a short sub-strip', () => {
    const h = 1_000_000;
    const out = resizedSize(1, h, 224);
    expect(out).toEqual({ width: 224, height: 224_000_000 });
    // Before: 224,000,000 x 5 weights (4.5 GB). Now: 224 x 5.
    const y = 111_999_888; // torchvision's center crop offset: round((224e6 - 224) / 2)
    expect(precomputeCoeffs(h, out.height, y, 224).weights.length).toBe(224 * 5);

    const rgb = strip(1, h);
    const crop = resizeAndCenterCrop(rgb, 1, h, 224);
    expect(crop.length).toBe(224 * 224 * 3);
    // The scale is exactly 1/224, so rows [499980, 500020) resized to 224 x 8960 use the same weights for the
    // crop's rows (they read input rows 499997..500003, far from the sub-strip's edges).
    const first = 499_980;
    const sub = rgb.subarray(first * 3, (first + 40) * 3);
    const expected = resizeBicubicPilRegion(sub, 1, 40, 224, 40 * 224, {
      x: 0,
      y: y - first * 224,
      width: 224,
      height: 224,
    });
    expect(byteDiff(crop, expected)).toEqual({ count: 0, max: 0 });
  });

  it('a thin strip cropped mid-axis equals the crop of the full resize', () => {
    const [w, h] = [3, 120];
    const rgb = strip(w, h);
    const s = resizedSize(w, h, 224);
    const full = resizeBicubicPil(rgb, w, h, s.width, s.height);
    const y = Math.round((s.height - 224) / 2);
    const expected = full.subarray(y * 224 * 3, (y + 224) * 224 * 3);
    expect(byteDiff(resizeAndCenterCrop(rgb, w, h, 224), expected)).toEqual({ count: 0, max: 0 });
  });

  it('1 x 20,000,000 resizes without a RangeError (the resized axis is 4.48e9 long)', () => {
    const crop = resizeAndCenterCrop(strip(1, 20_000_000), 1, 20_000_000, 224);
    expect(crop.length).toBe(224 * 224 * 3);
  });
});

describe('preprocessImage refuses absurd aspect ratios per image', () => {
  it('a PNG of a few KB holding 1 x 1,000,000 pixels', async () => {
    const png = grayPng(1, 1_000_000);
    expect(png.length).toBeLessThan(8 * 1024);
    // A valid file: it decodes when the limit allows it.
    expect((await decodeToRgb(png, { maxAspectRatio: 1e6 })).height).toBe(1_000_000);
    expect(await userError(() => preprocessImage(png, { name: 'strip.png' }))).toBe(
      `strip.png: a 1x1000000 image is too elongated (the long side is more than ${MAX_ASPECT_RATIO} times the short side); crop it first`,
    );
  });

  it('refused from the header, before decoding (a 1 x 20,000,000 PNG took libvips 20 s to decode)', async () => {
    // Only a header: decoding it would fail on the missing data, so the message shows nothing was decoded.
    const header = pngChunks(1, 20_000_000, new Uint8Array(0));
    expect(await userError(() => preprocessImage(header, { name: 'tall.png' }))).toMatch(
      /^tall\.png: a 1x20000000 image is too elongated/,
    );
  });

  it('RGB pixels of 20,000,000 x 1 and 1 x 20,000,000', async () => {
    for (const [w, h] of [
      [20_000_000, 1],
      [1, 20_000_000],
    ]) {
      const msg = await userError(() =>
        preprocessImage({ data: new Uint8Array(w * h * 3), width: w, height: h }),
      );
      expect(msg).toMatch(/too elongated/);
    }
  });

  it('up to the limit still works: 2 x 20,000 (1:10,000)', async () => {
    const p = await preprocessImage({ data: strip(2, 20_000), width: 2, height: 20_000 });
    expect(p.pixelValues.length).toBe(3 * 224 * 224);
  });
});

describe('decode errors say what was wrong', () => {
  it('a truncated TIFF names the format and the truncation', async () => {
    const tiff = await sharp(readFileSync(fixture('formats/rgb.png')))
      .tiff({ compression: 'deflate' })
      .toBuffer();
    const msg = await userError(() =>
      preprocessImage(tiff.subarray(0, Math.floor(tiff.length * 0.6)), { name: 't.tif' }),
    );
    expect(msg).toMatch(
      /^t\.tif: (a TIFF file that is truncated or damaged|the TIFF image data is corrupt or truncated)/,
    );
  });

  it('a truncated PNG and JPEG', async () => {
    for (const f of ['formats/rgb.png', 'formats/progressive.jpg']) {
      const bytes = readFileSync(fixture(f));
      const msg = await userError(() => preprocessImage(bytes.subarray(0, bytes.length >> 1), { name: 'x' }));
      expect(msg).toMatch(
        /^x: the (PNG|JPEG) image data is corrupt or truncated \(.+\); re-download or re-export it$/,
      );
    }
  });

  it.each([
    ['BMP', Buffer.concat([Buffer.from('BM'), Buffer.alloc(60)])],
    ['PDF', Buffer.from('%PDF-1.4\n%\xe2\xe3\n')],
    ['Photoshop', Buffer.concat([Buffer.from('8BPS'), Buffer.alloc(40)])],
  ])('%s files are named as unsupported', async (format, bytes) => {
    expect(await userError(() => preprocessImage(bytes, { name: 'f' }))).toBe(
      `f: ${format} images are not supported; convert it to JPEG or PNG`,
    );
  });

  it('libvips messages that quote the file are escaped', async () => {
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"><a\x1b[31m');
    const msg = await userError(() => preprocessImage(svg, { name: 's.svg' }));
    // eslint-disable-next-line no-control-regex
    expect(msg).not.toMatch(/[\u0000-\u001f]/);
  });
});

describe('decoding memory follows the crop, not the input (#13)', () => {
  it('a wide image through the temporary file (only the columns under the crop are read) equals the in-memory decode', async () => {
    // 3000 x 200: the crop at 224 reads about 210 of the 3000 input columns, row by row
    const w = 3000;
    const h = 200;
    const px = new Uint8Array(w * h * 3);
    for (let i = 0; i < px.length; i++) px[i] = (i * 2654435761) >>> 24;
    const png = await sharp(px, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toBuffer();
    const whole = await preprocessImage(png, { wholeDecodeBytes: Number.MAX_SAFE_INTEGER });
    const streamed = await preprocessImage(png, { wholeDecodeBytes: 0 });
    expect(byteDiff(streamed.uint8, whole.uint8).count).toBe(0);
    expect(whole.uint8).toEqual(resizeAndCenterCrop(px, w, h, 224));
  });

  it('a 300 KB PNG of 10,000 x 10,000 pixels (286 MiB as RGB) preprocesses with a peak RSS far below its pixels', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-bomb-'));
    try {
      const file = path.join(dir, 'bomb.png');
      await sharp({
        create: { width: 10_000, height: 10_000, channels: 3, background: { r: 40, g: 90, b: 200 } },
        limitInputPixels: false,
      })
        .png({ compressionLevel: 9 })
        .toFile(file);
      expect(statSync(file).size).toBeLessThan(1 << 20);
      // A fresh process on the built library (npm test builds dist/ first), so the peak (VmHWM) is this
      // image's alone.
      const lib = pathToFileURL(path.join(ROOT, 'dist/src/image/index.js')).href;
      const script = path.join(dir, 'run.mjs');
      writeFileSync(
        script,
        `import { preprocessImage } from ${JSON.stringify(lib)};
        import { readFileSync } from 'node:fs';
        const r = await preprocessImage(${JSON.stringify(file)}, { size: 288 });
        const hwm = Number(/VmHWM:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
        console.log(JSON.stringify({ w: r.width, h: r.height, first: Array.from(r.uint8.subarray(0, 3)), hwm }));`,
      );
      // Not execFileSync: the child takes seconds, and the test worker's loop must keep turning (test/yield.ts).
      const child = await run(process.execPath, [script]);
      expect(child.status, child.stderr).toBe(0);
      const out = child.stdout;
      const r = JSON.parse(out.trim().split('\n').pop() as string) as {
        w: number;
        h: number;
        first: number[];
        hwm: number;
      };
      console.log(`10000x10000 PNG at 288: peak RSS ${r.hwm.toFixed(0)} MiB`);
      expect([r.w, r.h]).toEqual([10_000, 10_000]);
      expect(r.first).toEqual([40, 90, 200]);
      // Decoding it whole holds 286 MiB of RGB samples (364 MiB peak measured); streamed: ~90 MiB, most of
      // it Node and libvips themselves.
      expect(r.hwm).toBeLessThan(200);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
