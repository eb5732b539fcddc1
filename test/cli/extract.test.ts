/**
 * `clipcap extract`: CLIP embeddings of the fixture photos (own preprocessing + CLIP tower) against the
 * reference `clip.image_embeds`, file layout and metadata, captions sidecar, sharding, atomic output, and
 * captioning the extracted file.
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSafetensors } from '../../src/weights/safetensors.js';
import { cli, fixture, withHub } from './harness.js';

const NAMES = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;

let env: Awaited<ReturnType<typeof withHub>>;
let golden: Float32Array; // (12, 24)
beforeAll(async () => {
  env = await withHub();
  const g = await loadSafetensors(fixture('goldens.safetensors'));
  golden = (await g.tensor('clip.image_embeds')).data as Float32Array;
  await g.close();
});
afterAll(async () => {
  await env.restore();
});

async function readOut(
  file: string,
): Promise<{ data: Float32Array; shape: readonly number[]; meta: Record<string, string> }> {
  const f = await loadSafetensors(file);
  try {
    const t = await f.tensor('clip_embedding');
    expect(t.dtype).toBe('f32');
    return { data: t.data as Float32Array, shape: t.shape, meta: { ...f.metadata } };
  } finally {
    await f.close();
  }
}

/** max|a - b| / max|b| over rows of the golden embeddings. */
function relDiff(a: Float32Array, rows: number[]): number {
  let num = 0;
  let den = 0;
  rows.forEach((g, i) => {
    for (let j = 0; j < 24; j++) {
      num = Math.max(num, Math.abs(a[i * 24 + j] - golden[g * 24 + j]));
      den = Math.max(den, Math.abs(golden[g * 24 + j]));
    }
  });
  return num / den;
}

describe('clipcap extract', () => {
  it('writes clip_embedding [N, D] in sorted input order, equal to the reference CLIP embeddings', async () => {
    const out = path.join(env.tmp, 'all.safetensors');
    const r = await cli(['extract', fixture('images'), '--out', out, '--batch-size', '5']);
    expect(r.code, r.err).toBe(0);
    const { data, shape, meta } = await readOut(out);
    expect(shape).toEqual([12, 24]);
    const worst = relDiff(
      data,
      NAMES.map((_, i) => i),
    );
    console.log(
      `extract: worst relative difference to clip.image_embeds over 12 photos ${worst.toExponential(2)}`,
    );
    expect(worst).toBeLessThan(1e-4);
    expect(JSON.parse(meta.inputs)).toEqual(NAMES.map((n) => fixture('images', n)));
    expect(meta.model).toBe('openai/clip-vit-base-patch32');
    expect(meta.preprocessing).toMatch(/resize short side to 224.*center crop 224/);
    expect(readdirSync(env.tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]); // no temp files left
  });

  it('shards are contiguous slices that concatenate to the whole', async () => {
    const parts: Float32Array[] = [];
    const offsets: number[] = [];
    for (let i = 0; i < 3; i++) {
      const out = path.join(env.tmp, `shard${i}.safetensors`);
      const r = await cli(['extract', fixture('images'), '--out', out, '--shard', `${i}/3`]);
      expect(r.code, r.err).toBe(0);
      const { data, meta } = await readOut(out);
      expect(meta.shard).toBe(`${i}/3`);
      offsets.push(Number(meta.row_offset));
      parts.push(data);
    }
    expect(offsets).toEqual([0, 4, 8]);
    const whole = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) {
      whole.set(p, o);
      o += p.length;
    }
    expect(
      relDiff(
        whole,
        NAMES.map((_, i) => i),
      ),
    ).toBeLessThan(1e-4);
    const bad = await cli([
      'extract',
      fixture('images'),
      '--out',
      path.join(env.tmp, 'x.safetensors'),
      '--shard',
      '3/3',
    ]);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/--shard must be i\/N with 0 <= i < N/);
  });

  it('--captions writes the sidecar with row indices (COCO annotations and the official list)', async () => {
    const dir = path.join(env.tmp, 'coco');
    mkdirSync(dir, { recursive: true });
    for (const n of NAMES.slice(0, 3)) copyFileSync(fixture('images', n), path.join(dir, n));
    const ids = NAMES.slice(0, 3).map((n) => Number(/(\d+)\.jpg$/.exec(n)?.[1]));
    const coco = {
      images: ids.map((id, i) => ({ id, file_name: NAMES[i] })),
      annotations: [
        { image_id: ids[2], caption: 'third image' },
        { image_id: ids[0], caption: 'first image' },
        { image_id: 999, caption: 'no such image' },
        { image_id: ids[0], caption: 'first image again' },
      ],
    };
    const capFile = path.join(env.tmp, 'captions.json');
    writeFileSync(capFile, JSON.stringify(coco));
    const out = path.join(env.tmp, 'coco.safetensors');
    const r = await cli(['extract', dir, '--out', out, '--captions', capFile]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/coco captions: 3 of 4 paired by file name; 1 caption names no input image/);
    expect(r.err).toMatch(/wrote 3 captions to .*coco\.captions\.jsonl/);
    const lines = readFileSync(path.join(env.tmp, 'coco.captions.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { image_id: ids[2], caption: 'third image', embedding: 2 },
      { image_id: ids[0], caption: 'first image', embedding: 0 },
      { image_id: ids[0], caption: 'first image again', embedding: 0 },
    ]);
    // The official train_caption.json layout: parse_coco.py's file name rule (COCO_train2014_, else COCO_val2014_%012d).
    writeFileSync(capFile, JSON.stringify([{ image_id: String(ids[1]), caption: 'second' }]));
    const r2 = await cli(['extract', dir, '--out', out, '--captions', capFile]);
    expect(r2.code).toBe(0);
    expect(readFileSync(path.join(env.tmp, 'coco.captions.jsonl'), 'utf8')).toBe(
      `${JSON.stringify({ image_id: String(ids[1]), caption: 'second', embedding: 1 })}\n`,
    );
  });

  it('bad images are left out and reported (exit 1); the file lists the rows it holds', async () => {
    const dir = path.join(env.tmp, 'mixed');
    mkdirSync(dir, { recursive: true });
    copyFileSync(fixture('images', NAMES[4]), path.join(dir, 'a.jpg'));
    writeFileSync(path.join(dir, 'b.jpg'), 'not a jpeg');
    copyFileSync(fixture('images', NAMES[5]), path.join(dir, 'c.jpg'));
    const out = path.join(env.tmp, 'mixed.safetensors');
    const r = await cli(['extract', dir, '--out', out]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/b\.jpg: not an image/);
    const { data, shape, meta } = await readOut(out);
    expect(shape).toEqual([2, 24]);
    expect(JSON.parse(meta.inputs).map((p: string) => path.basename(p))).toEqual(['a.jpg', 'c.jpg']);
    expect(relDiff(data, [4, 5])).toBeLessThan(1e-4);
  });

  it('the extracted file captions like the images themselves', async () => {
    const dir = path.join(env.tmp, 'three');
    mkdirSync(dir, { recursive: true });
    for (const n of NAMES.slice(0, 3)) copyFileSync(fixture('images', n), path.join(dir, n));
    const out = path.join(env.tmp, 'three.safetensors');
    expect((await cli(['extract', dir, '--out', out])).code).toBe(0);
    const args = [
      '--model',
      'coco',
      '--gpt2',
      'openai-community/gpt2',
      '--max-tokens',
      '20',
      '--format',
      'json',
    ];
    const fromImages = JSON.parse((await cli(['caption', ...args, dir])).out) as { caption: string }[];
    const fromFile = JSON.parse((await cli(['caption', ...args, '--embeddings', out])).out) as {
      caption: string;
    }[];
    expect(fromFile.map((e) => e.caption)).toEqual(fromImages.map((e) => e.caption));
  });

  it('usage: --out must be .safetensors; --out is required; a bad captions file fails before CLIP loads', async () => {
    expect((await cli(['extract', fixture('images'), '--out', path.join(env.tmp, 'x.bin')])).code).toBe(2);
    expect((await cli(['extract', fixture('images')])).code).toBe(2);
    const badCaps = path.join(env.tmp, 'bad.json');
    writeFileSync(badCaps, '{"nothing": 1}');
    const r = await cli([
      'extract',
      fixture('images'),
      '--out',
      path.join(env.tmp, 'y.safetensors'),
      '--captions',
      badCaps,
    ]);
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n').length).toBe(1);
    expect(r.err).toMatch(/bad\.json: expected COCO annotations/);
  });
});
