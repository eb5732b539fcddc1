import { readFileSync, readdirSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import { preprocessImage, normalizeClip } from '../../src/image/index.js';
import { byteDiff, fixture, fixtureTensor } from './helpers.js';

const SIZE = 224;
const CROP = SIZE * SIZE * 3;

describe('CLIP preprocessing vs the reference (torchvision Resize(224, BICUBIC) + CenterCrop on PIL)', () => {
  // goldens.json `images` lists the photos in the order of the fixture tensors: sorted file names.
  const photos = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;

  it('the fixture photo list is the sorted images/ folder', () => {
    expect(photos).toEqual(readdirSync(fixture('images')).sort());
    expect(photos).toHaveLength(12);
  });

  it('12 photos: uint8 crops equal clip.preprocessed_uint8', async () => {
    const ref = await fixtureTensor(fixture('goldens.safetensors'), 'clip.preprocessed_uint8', Uint8Array);
    expect(ref.shape).toEqual([12, SIZE, SIZE, 3]);
    let worst = { count: 0, max: 0 };
    for (const [i, name] of photos.entries()) {
      const out = await preprocessImage(fixture(`images/${name}`));
      const d = byteDiff(out.uint8, ref.data.subarray(i * CROP, (i + 1) * CROP));
      console.log(`${name} (${out.width}x${out.height}): ${d.count} bytes differ, max ${d.max}`);
      // Allowed: 1 level on 0.1% of the values (decoder differences); measured: 0 on every photo.
      expect(d.max, name).toBeLessThanOrEqual(1);
      expect(d.count, name).toBeLessThanOrEqual(CROP * 0.001);
      if (d.count > worst.count) worst = d;
    }
    console.log(`photos: worst ${worst.count} differing bytes, max ${worst.max}`);
  });

  it('13 format files (formats/order.json): uint8 crops equal formats/expected.safetensors', async () => {
    const order = JSON.parse(readFileSync(fixture('formats/order.json'), 'utf8')) as string[];
    const ref = await fixtureTensor(
      fixture('formats/expected.safetensors'),
      'preprocessed_uint8',
      Uint8Array,
    );
    expect(ref.shape).toEqual([order.length, SIZE, SIZE, 3]);
    for (const [i, name] of order.entries()) {
      const out = await preprocessImage(fixture(`formats/${name}`));
      const d = byteDiff(out.uint8, ref.data.subarray(i * CROP, (i + 1) * CROP));
      console.log(`formats/${name} (${out.width}x${out.height}): ${d.count} bytes differ, max ${d.max}`);
      expect(d.max, name).toBeLessThanOrEqual(1);
      expect(d.count, name).toBeLessThanOrEqual(CROP * 0.001);
    }
  });

  it('decoding through the temporary file (wholeDecodeBytes 0: every image streamed) gives the same bytes, every photo and format, at 224 and 288', async () => {
    const order = JSON.parse(readFileSync(fixture('formats/order.json'), 'utf8')) as string[];
    const files = [...photos.map((n) => `images/${n}`), ...order.map((n) => `formats/${n}`)];
    for (const size of [224, 288]) {
      for (const f of files) {
        const whole = await preprocessImage(fixture(f), { size, wholeDecodeBytes: Number.MAX_SAFE_INTEGER });
        const streamed = await preprocessImage(fixture(f), { size, wholeDecodeBytes: 0 });
        expect(streamed.width, f).toBe(whole.width);
        expect(streamed.height, f).toBe(whole.height);
        expect(byteDiff(streamed.uint8, whole.uint8).count, `${f} at ${size}`).toBe(0);
      }
    }
  });

  it('normalized pixel values equal clip.pixel_values_0 (first two photos) within 1e-6', async () => {
    const ref = await fixtureTensor(fixture('goldens.safetensors'), 'clip.pixel_values_0', Float32Array);
    expect(ref.shape).toEqual([2, 3, SIZE, SIZE]);
    const n = 3 * SIZE * SIZE;
    let worst = 0;
    for (let i = 0; i < 2; i++) {
      const { pixelValues } = await preprocessImage(fixture(`images/${photos[i]}`));
      expect(pixelValues.length).toBe(n);
      for (let j = 0; j < n; j++) worst = Math.max(worst, Math.abs(pixelValues[j] - ref.data[i * n + j]));
    }
    console.log(`pixel_values: worst abs difference ${worst}`);
    expect(worst).toBeLessThanOrEqual(1e-6);
  });

  it('normalizeClip maps HWC uint8 to CHW float32 ((x / 255 - mean) / std)', () => {
    const uint8 = new Uint8Array(2 * 2 * 3).map((_, i) => i * 20);
    const out = normalizeClip(uint8, 2);
    // Channel 1 (green) of pixel (row 1, col 0) is byte index (1 * 2 + 0) * 3 + 1 = 7.
    expect(out[1 * 4 + 2]).toBeCloseTo((140 / 255 - 0.4578275) / 0.26130258, 6);
    expect(() => normalizeClip(uint8, 3)).toThrow(/expected 3x3x3/);
  });
});
