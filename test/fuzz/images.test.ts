/**
 * Fuzz target for images through the decode + preprocess path (sharp decode, Pillow-style conversion, bicubic
 * resize, crop, normalize), on small seeds of every format we read. The pixel limit is lowered to 4 M so that
 * a mutated header announcing a huge image stays quick to refuse or decode; see fuzz.ts for what is checked.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import sharp from 'sharp';
import { preprocessImage } from '../../src/image/index.js';
import { fuzz, summary } from './fuzz.js';
import { fixture } from '../image/helpers.js';

const seeds: Array<[string, Uint8Array]> = [];

beforeAll(async () => {
  const w = 40;
  const h = 28;
  const px = Buffer.alloc(w * h * 4);
  for (let i = 0; i < w * h; i++)
    px.set([(i * 7) & 255, (i * 13) & 255, (i * 29) & 255, (i * 3) & 255], i * 4);
  const rgba = (): sharp.Sharp => sharp(px, { raw: { width: w, height: h, channels: 4 } });
  const rgb = (): sharp.Sharp => rgba().removeAlpha();
  const made: Array<[string, Promise<Buffer>]> = [
    ['rgb.png', rgb().png().toBuffer()],
    ['rgba.png', rgba().png().toBuffer()],
    ['palette.png', rgb().png({ palette: true, colours: 16 }).toBuffer()],
    ['gray16.png', rgb().grayscale().toColourspace('grey16').png().toBuffer()],
    ['rgb.jpg', rgb().jpeg({ quality: 80 }).toBuffer()],
    ['progressive.jpg', rgb().jpeg({ progressive: true }).toBuffer()],
    ['cmyk.jpg', rgb().toColourspace('cmyk').jpeg().toBuffer()],
    ['lossy.webp', rgb().webp().toBuffer()],
    ['alpha.webp', rgba().webp({ lossless: true }).toBuffer()],
    ['anim.gif', rgb().gif().toBuffer()],
    ['lzw.tif', rgb().tiff({ compression: 'lzw' }).toBuffer()],
    ['img.avif', rgb().avif({ quality: 50 }).toBuffer()],
  ];
  for (const [name, p] of made) seeds.push([name, new Uint8Array(await p)]);
  for (const f of ['tiny_1x1.png', 'thin_3x500.png', 'wide_900x40.jpg']) {
    seeds.push([f, new Uint8Array(readFileSync(fixture(`formats/${f}`)))]);
  }
});

describe('fuzz: images (seeded mutations; only clean UserErrors, bounded time and memory)', () => {
  it('decode + preprocess', async () => {
    const r = await fuzz({
      name: 'images',
      seeds,
      cases: 450,
      seed: 7,
      run: (input) => preprocessImage(input, { name: 'fuzz image', limitInputPixels: 4_000_000 }),
    });
    console.log(summary('images', r));
    expect(r.ok + r.refused).toBe(r.cases);
  });
});
