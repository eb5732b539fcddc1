/**
 * The built command as a user runs it in a shell: `clipcap caption ... | head -1` must stop quietly when the
 * reader closes the pipe (it died with an unhandled EPIPE stack), and hostile images in a batch fail alone.
 * Spawns dist/src/cli/main.js (built by `npm test`'s pretest) on the tiny local fixtures: no network.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grayPng } from '../image/helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = path.join(ROOT, 'dist/src/cli/main.js');
const FIX = path.join(ROOT, 'test/fixtures');
const MODEL = [
  '--clipcap',
  path.join(FIX, 'clipcap_mlp_tiny.pt'),
  '--clip',
  path.join(FIX, 'clip_tiny'),
  '--gpt2',
  path.join(FIX, 'gpt2_tiny'),
  '--max-tokens',
  '5',
  '--offline',
];

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'clipcap-pipe-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

/** Run clipcap; with `firstLineOnly`, close our end of its stdout after the first line, as `head -1` does. */
function run(args: string[], firstLineOnly = false): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      if (firstLineOnly && out.includes('\n')) child.stdout.destroy();
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, out, err }));
  });
}

describe('clipcap caption in a pipe', () => {
  it('| head -1: exits 0 without a word on stderr once the reader is gone', async () => {
    const images = path.join(FIX, 'images');
    // 36 images in batches of 2: most lines are written after the pipe closed.
    const r = await run(['caption', ...MODEL, '--batch-size', '2', images, images, images], true);
    expect(r.out.split('\n')[0]).toMatch(/^.*COCO_val2014_000000060623\.jpg\t.+$/);
    expect(r.err).toBe('');
    expect(r.signal).toBe(null);
    expect(r.code).toBe(0);
  });

  it('hostile images fail alone: the others are captioned, one escaped line each', async () => {
    const strip = path.join(tmp, 'strip.png');
    writeFileSync(strip, grayPng(1, 1_000_000));
    const tiff = await sharp(readFileSync(path.join(FIX, 'formats/rgb.png')))
      .tiff()
      .toBuffer();
    const cut = path.join(tmp, 'cut\x1b[31m.tif');
    writeFileSync(cut, tiff.subarray(0, tiff.length >> 1));
    const photo = path.join(FIX, 'images/COCO_val2014_000000060623.jpg');
    const r = await run(['caption', ...MODEL, '--format', 'jsonl', photo, strip, cut, photo]);
    expect(r.code).toBe(1);
    const lines = r.out.trim().split('\n');
    const entries = lines.map((l) => JSON.parse(l) as { caption?: string; error?: string });
    expect(entries.map((e) => (e.error ? 'error' : 'ok'))).toEqual(['ok', 'error', 'error', 'ok']);
    expect(entries[1].error).toMatch(/strip\.png: a 1x1000000 image is too elongated/);
    expect(entries[2].error).toContain('cut\\x1b[31m.tif: a TIFF file that is truncated or damaged');
    expect(entries[0].caption).toBe(entries[3].caption);
    expect(r.err).toMatch(/^clipcap: 2 of 4 inputs failed\b.*\n$/);
  });
});
