/**
 * Pairing captions with images strictly by file name (COCO annotations, Karpathy's dataset_coco.json, the
 * official train_caption.json, JSON Lines, CSV), unmatched counts and --strict, resumable extraction, and the
 * sharded extract -> merge / multi-file train path.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pairCaptions, readCaptionsFile } from '../../src/data/captions.js';
import { train } from '../../src/pipeline/train.js';
import { loadSafetensors } from '../../src/weights/safetensors.js';
import { cli, fixture, withHub } from './harness.js';

const NAMES = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;
const idOf = (n: string): number => Number(/(\d+)\.jpg$/.exec(n)?.[1]);

let env: Awaited<ReturnType<typeof withHub>>;
beforeAll(async () => {
  env = await withHub();
});
afterAll(async () => {
  await env.restore();
});

async function rowsOf(file: string): Promise<{ data: Float32Array; meta: Record<string, string> }> {
  const f = await loadSafetensors(file);
  try {
    return { data: (await f.tensor('clip_embedding')).data as Float32Array, meta: { ...f.metadata } };
  } finally {
    await f.close();
  }
}

const sidecar = (out: string): Array<{ image_id: unknown; caption: string; embedding: number }> =>
  readFileSync(out.replace(/\.safetensors$/, '.captions.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { image_id: unknown; caption: string; embedding: number });

describe('pairing captions by file name', () => {
  it('never pairs by a number in the name: annotations whose file_name is absent stay unmatched', () => {
    // The reported bug: the folder holds renamed copies; the annotations' file_names are not there.
    const images = ['photos/img_060623.jpg', 'photos/img_165547.jpg'];
    const entries = [
      { names: ['COCO_val2014_000000060623.jpg'], image_id: 60623, caption: 'a' },
      { names: ['COCO_val2014_000000165547.jpg'], image_id: 165547, caption: 'b' },
    ];
    const p = pairCaptions(entries, images);
    expect(p.records).toEqual([]);
    expect(p.unmatchedCaptions).toBe(2);
    expect(p.uncaptioned).toEqual([0, 1]);
  });

  it('matches path tails at directory boundaries; a shared name is ambiguous, not guessed', () => {
    const images = ['/data/coco/train2014/a.jpg', '/data/coco/val2014/a.jpg', '/data/coco/val2014/b.jpg'];
    const p = pairCaptions(
      [
        { names: ['train2014/a.jpg'], image_id: 1, caption: 'x' },
        { names: ['a.jpg'], image_id: 2, caption: 'y' },
        { names: ['b.jpg'], image_id: 3, caption: 'z' },
        { names: ['14/a.jpg'], image_id: 4, caption: 'w' },
      ],
      images,
    );
    expect(p.records.map((r) => r.embedding)).toEqual([0, 2]);
    expect(p.ambiguous).toBe(1);
    expect(p.unmatchedCaptions).toBe(1);
    expect(p.uncaptioned).toEqual([1]);
  });

  it('reads Karpathy, official, JSON Lines and CSV files with their rules', async () => {
    const d = env.tmp;
    const k = path.join(d, 'dataset_coco.json');
    writeFileSync(
      k,
      JSON.stringify({
        dataset: 'coco',
        images: [
          {
            filepath: 'val2014',
            filename: 'x.jpg',
            cocoid: 7,
            split: 'train',
            sentences: [{ raw: 'A dog. ' }, { raw: 'Dog' }],
          },
          {
            filepath: 'val2014',
            filename: 'y.jpg',
            cocoid: 8,
            split: 'test',
            sentences: [{ raw: 'A cat.' }],
          },
        ],
      }),
    );
    const kar = await readCaptionsFile(k, { splits: ['train', 'restval'] });
    expect(kar.format).toBe('karpathy');
    expect(kar.entries).toEqual([
      { names: ['val2014/x.jpg'], image_id: 7, caption: 'A dog.' },
      { names: ['val2014/x.jpg'], image_id: 7, caption: 'Dog' },
    ]);
    const off = path.join(d, 'train_caption.json');
    writeFileSync(off, JSON.stringify([{ image_id: '60623', caption: 'c', id: 1 }]));
    expect((await readCaptionsFile(off)).entries[0].names).toEqual([
      'COCO_train2014_000000060623.jpg',
      'COCO_val2014_000000060623.jpg',
    ]);
    const csv = path.join(d, 'caps.csv');
    writeFileSync(csv, 'image,caption\r\nsub/a.jpg,"a, quoted ""cap"""\nb.jpg,plain\n');
    expect((await readCaptionsFile(csv)).entries.map((e) => [e.names[0], e.caption])).toEqual([
      ['sub/a.jpg', 'a, quoted "cap"'],
      ['b.jpg', 'plain'],
    ]);
    const jl = path.join(d, 'caps.jsonl');
    writeFileSync(jl, '{"image": "./a.jpg", "caption": "x"}\n{"image_id": 3, "caption": "y"}\n');
    await expect(readCaptionsFile(jl)).rejects.toThrow(/caps\.jsonl: line 2 has no "image".*file name only/);
  });
});

describe('clipcap extract --captions', () => {
  it('reports unmatched captions and images; --strict fails before extracting', async () => {
    const dir = path.join(env.tmp, 'renamed');
    mkdirSync(dir, { recursive: true });
    // Renamed copies: the numbers survive, the file names do not.
    NAMES.slice(0, 3).forEach((n, i) =>
      copyFileSync(fixture('images', n), path.join(dir, `img_${idOf(n)}_${i}.jpg`)),
    );
    copyFileSync(fixture('images', NAMES[3]), path.join(dir, NAMES[3]));
    const ann = path.join(env.tmp, 'ann.json');
    writeFileSync(
      ann,
      JSON.stringify({
        images: NAMES.slice(0, 4).map((n) => ({ id: idOf(n), file_name: n })),
        annotations: NAMES.slice(0, 4).map((n) => ({ image_id: idOf(n), caption: `about ${n}` })),
      }),
    );
    const out = path.join(env.tmp, 'renamed.safetensors');
    const strict = await cli(['extract', dir, '--out', out, '--captions', ann, '--strict']);
    expect(strict.code).toBe(1);
    expect(strict.err).toMatch(
      /--strict: .*3 captions name no input image .*3 input images have no caption; nothing was extracted/,
    );
    expect(existsSync(out)).toBe(false);
    const r = await cli(['extract', dir, '--out', out, '--captions', ann]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/coco captions: 1 of 4 paired by file name; 3 captions name no input image/);
    // Only the image still under its real name got a caption.
    const rows = sidecar(out);
    expect(rows).toHaveLength(1);
    const inputs = JSON.parse((await rowsOf(out)).meta.inputs) as string[];
    expect(path.basename(inputs[rows[0].embedding])).toBe(NAMES[3]);
  });

  it('an interrupted extract resumes from FILE.partial; a complete one is not redone', async () => {
    const dir = fixture('images');
    const ref = path.join(env.tmp, 'ref.safetensors');
    expect((await cli(['extract', dir, '--out', ref, '--batch-size', '4'])).code).toBe(0);
    const whole = (await rowsOf(ref)).data;
    const out = path.join(env.tmp, 'resumed.safetensors');
    // What a killed run leaves: 5 inputs recorded as done (rows marked with 7s to prove they are reused), and
    // a torn half row past them.
    const key = (await rowsOf(ref)).meta.inputs_digest;
    expect(key).toMatch(/^sha256:/);
    const done = new Float32Array(5 * 24).fill(7);
    writeFileSync(`${out}.partial`, Buffer.concat([Buffer.from(done.buffer), Buffer.alloc(40, 1)]));
    const inputs = JSON.parse((await rowsOf(ref)).meta.inputs) as string[];
    writeFileSync(
      `${out}.partial.json`,
      JSON.stringify({ key, dim: 24, done: 5, rows: inputs.slice(0, 5), failed: [] }),
    );
    const r = await cli(['extract', dir, '--out', out, '--batch-size', '4']);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/resuming .*: 5 of 12 inputs were done/);
    const got = (await rowsOf(out)).data;
    expect(got.length).toBe(whole.length);
    expect([...got.subarray(0, 5 * 24)].every((v) => v === 7)).toBe(true);
    expect([...got.subarray(5 * 24)]).toEqual([...whole.subarray(5 * 24)]);
    expect(existsSync(`${out}.partial`) || existsSync(`${out}.partial.json`)).toBe(false);
    const again = await cli(['extract', dir, '--out', out, '--batch-size', '4']);
    expect(again.code).toBe(0);
    expect(again.err).toMatch(/already complete/);
  });

  it('sharded extract -> train on the shards (glob) and -> merge give the same data', async () => {
    const dir = path.join(env.tmp, 'shardimgs');
    mkdirSync(dir, { recursive: true });
    for (const n of NAMES) copyFileSync(fixture('images', n), path.join(dir, n));
    const caps = path.join(env.tmp, 'shard-caps.jsonl');
    writeFileSync(
      caps,
      NAMES.flatMap((n, i) => [
        JSON.stringify({ image: n, caption: `photo number ${i}` }),
        JSON.stringify({ image: n, caption: `another view of photo ${i}` }),
      ]).join('\n'),
    );
    for (let i = 0; i < 3; i++) {
      const r = await cli([
        'extract',
        dir,
        '--out',
        path.join(env.tmp, 'shards', `part-${i}.safetensors`),
        '--captions',
        caps,
        '--shard',
        `${i}/3`,
      ]);
      expect(r.code, r.err).toBe(0);
    }
    const merged = path.join(env.tmp, 'merged.safetensors');
    const m = await cli(['merge', path.join(env.tmp, 'shards', 'part-*.safetensors'), '--out', merged]);
    expect(m.code, m.err).toBe(0);
    const whole = await rowsOf(merged);
    expect(whole.data.length).toBe(12 * 24);
    const side = sidecar(merged);
    expect(side).toHaveLength(24);
    side.forEach((s) => expect(s.caption).toMatch(new RegExp(`photo( number)? ${s.embedding}$`)));
    const base = {
      gpt2: fixture('gpt2_tiny'),
      prefixLength: 2,
      batchSize: 4,
      epochs: 1,
      lr: 1e-3,
      warmup: 1,
      seed: 1,
    };
    const a = await train({
      ...base,
      data: path.join(env.tmp, 'shards', 'part-*.safetensors'),
      out: path.join(env.tmp, 'ta'),
    });
    const b = await train({ ...base, data: merged, out: path.join(env.tmp, 'tb') });
    expect(a.losses).toEqual(b.losses);
    const cfg = JSON.parse(readFileSync(path.join(a.checkpoint, 'config.json'), 'utf8')) as {
      sources: { clip: string };
    };
    expect(cfg.sources.clip).toBe('openai/clip-vit-base-patch32');
  });
});
