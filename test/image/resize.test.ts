import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import {
  centerCrop,
  centerCropOffsets,
  resizeAndCenterCrop,
  resizeBicubicPil,
  resizeBicubicPilRegion,
  resizedSize,
} from '../../src/image/index.js';
import { byteDiff, local } from './helpers.js';

interface ResizeManifest {
  input: { width: number; height: number };
  cases: Array<{ width: number; height: number }>;
}

/** Deterministic pseudo-random bytes (xorshift32). */
function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 255;
  }
  return out;
}

describe('resizeBicubicPil vs Pillow Image.resize(BICUBIC) (test/image/fixtures/resize, made by make_fixtures.py)', () => {
  const manifest = JSON.parse(readFileSync(local('resize/manifest.json'), 'utf8')) as ResizeManifest;
  const { width: w, height: h } = manifest.input;
  const input = new Uint8Array(readFileSync(local('resize/input.rgb')));

  for (const { width, height } of manifest.cases) {
    it(`${w}x${h} -> ${width}x${height} is bit-exact`, () => {
      const ref = new Uint8Array(readFileSync(local(`resize/${width}x${height}.rgb`)));
      const d = byteDiff(resizeBicubicPil(input, w, h, width, height), ref);
      expect(d).toEqual({ count: 0, max: 0 });
    });
  }
});

describe('resize geometry', () => {
  it('a region of the resize equals the same crop of the full resize', () => {
    const cases: Array<[number, number, number, number]> = [
      [37, 53, 20, 90],
      [300, 17, 224, 224],
      [640, 480, 298, 224],
      [5, 5, 5, 9],
    ];
    for (const [w, h, ow, oh] of cases) {
      const src = noise(w * h * 3, w * 1000 + h);
      const full = resizeBicubicPil(src, w, h, ow, oh);
      const region = {
        x: Math.floor(ow / 3),
        y: Math.floor(oh / 4),
        width: Math.ceil(ow / 2),
        height: Math.ceil(oh / 2),
      };
      const part = resizeBicubicPilRegion(src, w, h, ow, oh, region);
      const expected = new Uint8Array(region.width * region.height * 3);
      for (let r = 0; r < region.height; r++) {
        const start = ((region.y + r) * ow + region.x) * 3;
        expected.set(full.subarray(start, start + region.width * 3), r * region.width * 3);
      }
      expect(byteDiff(part, expected)).toEqual({ count: 0, max: 0 });
    }
  });

  it('resizeAndCenterCrop = centerCrop(resizeBicubicPil(torchvision size))', () => {
    for (const [w, h] of [
      [640, 427],
      [301, 517],
      [225, 900],
      [3, 50],
    ]) {
      const src = noise(w * h * 3, w + h);
      const s = resizedSize(w, h, 224);
      const expected = centerCrop(resizeBicubicPil(src, w, h, s.width, s.height), s.width, s.height, 224);
      expect(byteDiff(resizeAndCenterCrop(src, w, h, 224), expected)).toEqual({ count: 0, max: 0 });
    }
  });

  it('sizes follow torchvision: short side 224, long side int(224 * long / short)', () => {
    expect(resizedSize(640, 480, 224)).toEqual({ width: Math.trunc((224 * 640) / 480), height: 224 });
    expect(resizedSize(3, 500, 224)).toEqual({ width: 224, height: Math.trunc((224 * 500) / 3) });
    expect(resizedSize(224, 224, 224)).toEqual({ width: 224, height: 224 });
  });

  it('center-crop offsets round halves to even like Python round()', () => {
    expect(centerCropOffsets(225, 224, 224, 224)).toEqual({ x: 0, y: 0 }); // round(0.5) = 0
    expect(centerCropOffsets(227, 229, 224, 224)).toEqual({ x: 2, y: 2 }); // round(1.5) = 2, round(2.5) = 2
    expect(centerCropOffsets(298, 224, 224, 224)).toEqual({ x: 37, y: 0 });
    expect(() => centerCropOffsets(100, 300, 224, 224)).toThrow(/larger than the image/);
  });

  it('rejects inconsistent sizes', () => {
    expect(() => resizeBicubicPil(new Uint8Array(10), 2, 2, 4, 4)).toThrow(/expected 2x2x3/);
    expect(() => resizeBicubicPil(new Uint8Array(12), 2, 2, 0, 4)).toThrow(/positive integers/);
  });
});
