/**
 * `clipcap caption` end to end with the tiny fixture models served by a local hub under the published repo
 * names: model resolution through the hub cache, every input kind and output format, offline mode, and the
 * one-line errors. Captions from the photos must equal the official decoders' outputs (goldens.json).
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveSafetensors } from '../../src/weights/safetensors.js';
import { loadSafetensors } from '../../src/weights/safetensors.js';
import { Gpt2Tokenizer } from '../../src/text/gpt2-tokenizer.js';
import { cli, fixture, withHub } from './harness.js';

interface Golden {
  model: 'mlp' | 'transformer';
  image_index: number;
  beam5_entry20: string[];
  'nucleus_top_p0.8_entry20': string;
}
interface Entry {
  image?: string;
  index?: number;
  caption?: string;
  tokens?: number[];
  candidates?: { caption: string; tokens: number[]; score?: number }[];
  error?: string;
}

const goldens = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { generation: Golden[] })
  .generation;
const NAMES = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;
const golden = (model: 'mlp' | 'transformer', i: number): Golden =>
  goldens.find((g) => g.model === model && g.image_index === i) as Golden;
const photo = (i: number): string => fixture('images', NAMES[i]);
// The golden decoders ran 20 tokens; the tiny GPT-2 needs its config (width 32 is not a standard size).
const TINY = ['--gpt2', 'openai-community/gpt2', '--max-tokens', '20'];

let env: Awaited<ReturnType<typeof withHub>>;
beforeAll(async () => {
  env = await withHub();
});
afterAll(async () => {
  await env.restore();
});

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

const oneLine = (s: string): void => {
  expect(s.trim().split('\n').length, s).toBe(1);
};

describe('clipcap caption', () => {
  it('--model coco, JSON: beam captions and candidates equal the official generate_beam from the photos', async () => {
    const r = await cli([
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--format',
      'json',
      photo(0),
      photo(1),
      photo(2),
    ]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const entries = JSON.parse(r.out) as Entry[];
    const tok = await Gpt2Tokenizer.load();
    entries.forEach((e, i) => {
      expect(Object.keys(e)).toEqual(['image', 'caption', 'tokens', 'candidates']);
      expect(e.image).toBe(photo(i));
      expect(e.caption).toBe(golden('mlp', i).beam5_entry20[0]);
      expect(e.candidates?.map((c) => c.caption)).toEqual(golden('mlp', i).beam5_entry20);
      expect(tok.decode(e.tokens as number[])).toBe(e.caption);
      const scores = e.candidates?.map((c) => c.score as number) ?? [];
      expect([...scores].sort((a, b) => b - a)).toEqual(scores);
    });
    // The checkpoint, CLIP and GPT-2's config came through the hub.
    expect(env.hub.requests.some((q) => q.includes('/coco_weights.pt'))).toBe(true);
    expect(
      env.hub.requests.some((q) => q.includes('openai/clip-vit-base-patch32/resolve/main/model.safetensors')),
    ).toBe(true);
  });

  it('--model conceptual (transformer mapper), a directory walked recursively, greedy, JSON Lines', async () => {
    const dir = path.join(env.tmp, 'photos');
    mkdirSync(path.join(dir, 'a'), { recursive: true });
    mkdirSync(path.join(dir, 'b', 'c'), { recursive: true });
    copyFileSync(photo(0), path.join(dir, 'a', NAMES[0]));
    copyFileSync(photo(1), path.join(dir, NAMES[1]));
    copyFileSync(photo(2), path.join(dir, 'b', 'c', NAMES[2]));
    writeFileSync(path.join(dir, 'notes.txt'), 'not an image');
    const r = await cli([
      'caption',
      '--model',
      'conceptual',
      ...TINY,
      '--decode',
      'greedy',
      '--format',
      'jsonl',
      dir,
    ]);
    expect(r.code).toBe(0);
    const lines = r.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Entry);
    // Sorted by name at each level: "COCO..." < "a" < "b".
    expect(lines.map((e) => path.relative(dir, e.image as string))).toEqual([
      NAMES[1],
      path.join('a', NAMES[0]),
      path.join('b', 'c', NAMES[2]),
    ]);
    for (const e of lines) {
      const i = NAMES.indexOf(path.basename(e.image as string));
      expect(e.caption).toBe(golden('transformer', i)['nucleus_top_p0.8_entry20']);
      expect(e.candidates).toBeUndefined(); // greedy: no candidates
    }
  });

  it('text output: one "path<TAB>caption" line per image, globs expanded', async () => {
    const pattern = path.join(path.dirname(photo(0)), 'COCO_val2014_00000006*.jpg');
    const r = await cli(['caption', '--model', 'coco', ...TINY, pattern]);
    expect(r.code).toBe(0);
    expect(r.out).toBe(`${photo(0)}\t${golden('mlp', 0).beam5_entry20[0].replace(/[\t\n]/g, ' ')}\n`);
  });

  it('--embeddings: captions precomputed CLIP embeddings without loading CLIP', async () => {
    const gs = await loadSafetensors(fixture('goldens.safetensors'));
    const embeds = (await gs.tensor('clip.image_embeds')).data as Float32Array;
    await gs.close();
    const file = path.join(env.tmp, 'emb.safetensors');
    await saveSafetensors(file, { clip_embedding: { shape: [3, 24], data: embeds.slice(0, 72) } });
    const before = env.hub.requests.length;
    // A fresh cache: only what is fetched now is needed.
    process.env.HF_HUB_CACHE = path.join(env.tmp, 'cache-embeddings');
    try {
      const r = await cli(['caption', '--embeddings', file, '--model', 'coco', ...TINY, '--format', 'json']);
      expect(r.code).toBe(0);
      const entries = JSON.parse(r.out) as Entry[];
      expect(entries.map((e) => e.index)).toEqual([0, 1, 2]);
      entries.forEach((e, i) => expect(e.caption).toBe(golden('mlp', i).beam5_entry20[0]));
      const fetched = env.hub.requests.slice(before);
      expect(fetched.some((q) => q.includes('clip-vit'))).toBe(false);
    } finally {
      process.env.HF_HUB_CACHE = env.cache;
    }
  });

  it('nucleus sampling: n captions per image, reproducible from --seed', async () => {
    const args = [
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--decode',
      'nucleus',
      '--num-captions',
      '3',
      '--format',
      'json',
    ];
    const a = await cli([...args, '--seed', '7', photo(0)]);
    const b = await cli([...args, '--seed', '7', photo(0)]);
    const c = await cli([...args, '--seed', '8', photo(0)]);
    expect(a.code).toBe(0);
    expect(a.out).toBe(b.out);
    expect(c.out).not.toBe(a.out);
    const [e] = JSON.parse(a.out) as Entry[];
    expect(e.candidates?.length).toBe(3);
    expect(e.caption).toBe(e.candidates?.[0].caption);
  });

  it('--stop none runs to --max-tokens; --backend reference gives the same tokens', async () => {
    const args = ['caption', '--model', 'coco', '--gpt2', 'openai-community/gpt2', '--stop', 'none'];
    const a = await cli([...args, '--max-tokens', '7', '--decode', 'greedy', '--format', 'json', photo(1)]);
    const b = await cli([
      ...args,
      '--max-tokens',
      '7',
      '--decode',
      'greedy',
      '--format',
      'json',
      '--backend',
      'reference',
      photo(1),
    ]);
    const [ea] = JSON.parse(a.out) as Entry[];
    expect(ea.tokens?.length).toBe(7);
    expect(b.out).toBe(a.out);
  });

  it('bad images get an error in their entry, the rest are captioned, exit code 1', async () => {
    const notImage = path.join(env.tmp, 'not-an-image.jpg');
    writeFileSync(notImage, 'plain text');
    const truncated = path.join(env.tmp, 'truncated.jpg');
    const bytes = readFileSync(photo(0));
    writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 3)));
    const empty = path.join(env.tmp, 'empty.jpg');
    writeFileSync(empty, '');
    const missing = path.join(env.tmp, 'missing.jpg');
    const r = await cli([
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--format',
      'json',
      notImage,
      photo(0),
      truncated,
      empty,
      missing,
      photo(1),
    ]);
    expect(r.code).toBe(1);
    const entries = JSON.parse(r.out) as Entry[];
    expect(entries.map((e) => (e.error ? 'error' : 'ok'))).toEqual([
      'error',
      'ok',
      'error',
      'error',
      'error',
      'ok',
    ]);
    expect(entries[1].caption).toBe(golden('mlp', 0).beam5_entry20[0]);
    expect(entries[5].caption).toBe(golden('mlp', 1).beam5_entry20[0]);
    for (const [i, f] of [
      [0, 'not-an-image.jpg'],
      [2, 'truncated.jpg'],
      [3, 'empty.jpg'],
      [4, 'missing.jpg'],
    ] as const) {
      expect(entries[i].error).toContain(f);
      oneLine(entries[i].error as string);
      expect(Object.keys(entries[i])).toEqual(['image', 'error']);
    }
    console.log(
      entries
        .filter((e) => e.error)
        .map((e) => e.error)
        .join('\n'),
    );
    expect(r.err).toBe('clipcap: 4 of 6 inputs failed (see their entries)\n');

    // Over the pixel limit (decompression-bomb guard), in text mode: the failure is listed in its entry on
    // stdout, as `path<TAB>error: ...`, and the message names the flag that raises the limit.
    const big = await cli(['caption', '--model', 'coco', ...TINY, '--max-pixels', '10', photo(0), photo(1)]);
    expect(big.code).toBe(1);
    const lines = big.out.trimEnd().split('\n');
    expect(lines.length).toBe(2);
    lines.forEach((l, i) => {
      expect(l.startsWith(`${photo(i)}\terror: `), l).toBe(true);
      expect(l).toMatch(/over the limit of 10; raise it with --max-pixels /);
    });
    expect(big.err).toBe('clipcap: 2 of 2 inputs failed (see their entries)\n');
  });
});

describe('clipcap caption: weights and network errors are one line, exit 1', () => {
  it('--offline with an empty cache names the repo, the file and the cache path; works once cached', async () => {
    process.env.HF_HUB_CACHE = path.join(env.tmp, 'cache-offline');
    try {
      const r = await cli(['caption', '--model', 'coco', ...TINY, '--offline', photo(0)]);
      expect(r.code).toBe(1);
      oneLine(r.err);
      expect(r.err).toMatch(/akhaliq\/CLIP-prefix-captioning-COCO-weights/);
      expect(r.err).toContain('coco_weights.pt');
      expect(r.err).toContain(path.join(env.tmp, 'cache-offline'));
      console.log(r.err);
      const online = await cli(['caption', '--model', 'coco', ...TINY, photo(0)]);
      expect(online.code).toBe(0);
      const before = env.hub.requests.length;
      const offline = await cli(['caption', '--model', 'coco', ...TINY, '--offline', photo(0)]);
      expect(offline.code).toBe(0);
      expect(offline.out).toBe(online.out);
      expect(env.hub.requests.length).toBe(before); // nothing asked of the network
      process.env.HF_HUB_OFFLINE = '1';
      const envOffline = await cli(['caption', '--model', 'coco', ...TINY, photo(0)]);
      expect(envOffline.out).toBe(online.out);
    } finally {
      delete process.env.HF_HUB_OFFLINE;
      process.env.HF_HUB_CACHE = env.cache;
    }
  });

  it('no network', async () => {
    const saved = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = `http://127.0.0.1:${await closedPort()}`; // connection refused
    process.env.HF_HUB_CACHE = path.join(env.tmp, 'cache-nonet');
    try {
      const r = await cli(['caption', '--model', 'conceptual', ...TINY, photo(0)]);
      expect(r.code).toBe(1);
      oneLine(r.err);
      expect(r.err).toContain('conceptual_weights.pt');
      console.log(r.err);
    } finally {
      process.env.HF_ENDPOINT = saved;
      process.env.HF_HUB_CACHE = env.cache;
    }
  });

  it('missing and wrong weights', async () => {
    const cases: [string[], RegExp][] = [
      [['--clip', 'someone/no-such-clip'], /someone\/no-such-clip.*config\.json/],
      [['--clipcap', path.join(env.tmp, 'nope.pt')], /nope\.pt/],
      [
        ['--clipcap', fixture('legacy_format.pt')],
        /legacy_format\.pt: unexpected half.*expected only clip_project/,
      ],
      [['--clipcap', photo(1)], new RegExp(NAMES[1])],
      [['--clipcap', fixture('hostile_reduce.pt')], /hostile_reduce\.pt/],
      [['--clip', fixture('gpt2_tiny')], /gpt2_tiny.*describes a "gpt2" model, not CLIP/],
      [['--gpt2', fixture('clip_tiny')], /clip_tiny.*describes a "clip" model, not GPT-2/],
      [['--clip', path.join(env.tmp, 'no-dir')], /no-dir/],
    ];
    for (const [extra, re] of cases) {
      const r = await cli(['caption', '--model', 'coco', ...TINY, ...extra, photo(0)]);
      expect(r.code, r.err).toBe(1);
      oneLine(r.err);
      expect(r.err).toMatch(re);
      console.log(r.err.trim());
    }
    // Embeddings of another CLIP width.
    const wrongD = path.join(env.tmp, 'wrong-d.safetensors');
    await saveSafetensors(wrongD, { clip_embedding: { shape: [2, 5], data: new Float32Array(10) } });
    const wd = await cli(['caption', '--model', 'coco', ...TINY, '--embeddings', wrongD]);
    expect(wd.code).toBe(1);
    oneLine(wd.err);
    expect(wd.err).toMatch(/wrong-d\.safetensors: the embeddings are 5-d but coco_weights\.pt expects 24-d/);
    const noTensor = path.join(env.tmp, 'no-tensor.safetensors');
    await saveSafetensors(noTensor, { other: { shape: [1], data: new Float32Array(1) } });
    const nt = await cli(['caption', '--model', 'coco', ...TINY, '--embeddings', noTensor]);
    expect(nt.code).toBe(1);
    expect(nt.err).toMatch(/no-tensor\.safetensors: no tensor "clip_embedding"/);
    // A checkpoint whose GPT-2 width is not a standard size needs --gpt2 for its config.
    const r = await cli(['caption', '--model', 'coco', photo(0)]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/coco_weights.pt: GPT-2 width 32 is not a standard size.*--gpt2/);
  });

  it('bad usage exits 2', async () => {
    for (const args of [
      ['caption'],
      ['caption', '--embeddings', 'x.safetensors', photo(0)],
      ['caption', '--beam-size', '0', photo(0)],
      ['caption', '--decode', 'sample', photo(0)],
      ['caption', '--num-captions', '2', photo(0)],
      ['caption', '--top-p', '1.5', photo(0)],
    ]) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(2);
    }
  });
});

describe('clipcap caption --model DIR (clipcap checkpoint directories)', () => {
  it('a directory with GPT-2 inside needs no --gpt2; one with only the mapper takes GPT-2 from --gpt2 (hub)', async () => {
    const { loadTorchCheckpoint } = await import('../../src/weights/torch.js');
    const { clipcapCheckpoint, saveClipcapDir } = await import('../../src/weights/keymaps.js');
    const gpt2Config = JSON.parse(readFileSync(fixture('gpt2_tiny', 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    const save = async (kind: 'mlp' | 'transformer', withGpt2: boolean): Promise<string> => {
      const ck = clipcapCheckpoint(await loadTorchCheckpoint(fixture(`clipcap_${kind}_tiny.pt`)), {
        gpt2Config,
      });
      const dir = path.join(env.tmp, `${kind}-${withGpt2 ? 'full' : 'mapper'}`);
      await saveClipcapDir(dir, {
        config: { mapper: ck.mapper, gpt2: ck.gpt2Config!, normalize_prefix: false },
        mapperWeights: ck.mapperWeights,
        gpt2: withGpt2 ? ck.gpt2 : undefined,
      });
      return dir;
    };
    const full = await cli([
      'caption',
      '--model',
      await save('mlp', true),
      '--max-tokens',
      '20',
      '--format',
      'json',
      photo(0),
    ]);
    expect(full.code, full.err).toBe(0);
    expect((JSON.parse(full.out) as Entry[])[0].caption).toBe(golden('mlp', 0).beam5_entry20[0]);

    // The frozen-GPT-2 model: the directory holds the mapper only; GPT-2 comes from openai-community/gpt2.
    const before = env.hub.requests.length;
    const dir = await save('transformer', false);
    const r = await cli([
      'caption',
      '--model',
      dir,
      '--max-tokens',
      '20',
      '--format',
      'json',
      photo(1),
      photo(2),
    ]);
    expect(r.code, r.err).toBe(0);
    const entries = JSON.parse(r.out) as Entry[];
    entries.forEach((e, i) => expect(e.caption).toBe(golden('transformer', i + 1).beam5_entry20[0]));
    expect(
      env.hub.requests
        .slice(before)
        .some((q) => q.includes('openai-community/gpt2/resolve/main/model.safetensors')),
    ).toBe(true);

    const notDir = await cli(['caption', '--model', fixture('images'), photo(0)]);
    expect(notDir.code).toBe(1);
    expect(notDir.err).toMatch(
      /is not a clipcap checkpoint directory \(no config.json\); make one with clipcap convert/,
    );
  });
});
