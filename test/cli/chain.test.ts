/**
 * One command's output is the next one's input, and what a new user trips over is said plainly:
 * `caption --format coco` and `caption --format json` feed `eval`; `caption --embeddings` names its rows by the
 * image paths (clipcap extract) or COCO ids (parse_coco.py pickles); `--out` is atomic; text output numbers
 * nucleus samples; decoder-ignored flags, a missing --model directory, an existing convert output and an offline
 * cache without the files are one clear line each. Runs against the tiny fixture models on a local hub.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runConvert } from '../../src/cli/commands/convert.js';
import { UserError } from '../../src/util/errors.js';
import { cli, fixture, withHub } from './harness.js';

const NAMES = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;
const photo = (i: number): string => fixture('images', NAMES[i]);
const TINY = ['--gpt2', 'openai-community/gpt2', '--max-tokens', '20'];
/** The COCO id in a fixture photo's name (COCO_val2014_000000060623.jpg -> 60623). */
const idOf = (name: string): number => Number(/(\d{12})\.jpg$/.exec(name)?.[1]);

interface Entry {
  image?: string;
  index?: number;
  image_id?: number;
  caption?: string;
  candidates?: { caption: string }[];
  error?: string;
}

let env: Awaited<ReturnType<typeof withHub>>;
beforeAll(async () => {
  env = await withHub();
});
afterAll(async () => {
  await env.restore();
});

/** COCO annotations for the first `n` photos (file names as COCO's), two reference captions each. */
function annotations(
  n: number,
  fileName = (i: number): string => NAMES[i],
  id = (i: number) => idOf(NAMES[i]),
) {
  const images = Array.from({ length: n }, (_, i) => ({ id: id(i), file_name: fileName(i) }));
  const anns = images.flatMap((im, i) => [
    { image_id: im.id, id: 2 * i, caption: 'a photo of something' },
    { image_id: im.id, id: 2 * i + 1, caption: 'an image with things in it' },
  ]);
  return { images, annotations: anns };
}

describe('caption output feeds eval', () => {
  it('--format coco (ids from COCO file names) and --format json (paths mapped through file_name) score alike', async () => {
    const refs = path.join(env.tmp, 'captions_val.json');
    writeFileSync(refs, JSON.stringify(annotations(2)));
    const coco = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'coco', photo(0), photo(1)]);
    expect(coco.code, coco.err).toBe(0);
    const results = JSON.parse(coco.out) as Array<{ image_id: number; caption: string }>;
    expect(results.map((r) => r.image_id)).toEqual([idOf(NAMES[0]), idOf(NAMES[1])]);
    expect(Object.keys(results[0])).toEqual(['image_id', 'caption']);
    const text = await cli(['caption', '--model', 'coco', ...TINY, photo(0), photo(1)]);
    expect(results.map((r) => r.caption)).toEqual(
      text.out
        .trimEnd()
        .split('\n')
        .map((l) => l.split('\t')[1]),
    );

    const cocoFile = path.join(env.tmp, 'results.json');
    writeFileSync(cocoFile, coco.out);
    const fromCoco = await cli(['eval', '--references', refs, '--predictions', cocoFile, '--format', 'json']);
    expect(fromCoco.code, fromCoco.err).toBe(0);

    const json = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'json', photo(0), photo(1)]);
    const jsonFile = path.join(env.tmp, 'captions.json');
    writeFileSync(jsonFile, json.out);
    const fromJson = await cli(['eval', '--references', refs, '--predictions', jsonFile, '--format', 'json']);
    expect(fromJson.code, fromJson.err).toBe(0);
    expect(JSON.parse(fromJson.out)).toEqual(JSON.parse(fromCoco.out));
    expect((JSON.parse(fromCoco.out) as { CIDEr: number }).CIDEr).toBeGreaterThanOrEqual(0);
  });

  it('--references maps any file name to its id; an unmappable name fails before any weights load', async () => {
    const dir = path.join(env.tmp, 'pics');
    mkdirSync(dir, { recursive: true });
    copyFileSync(photo(0), path.join(dir, 'beach.jpg'));
    copyFileSync(photo(1), path.join(dir, 'dog.jpg'));
    const refs = path.join(env.tmp, 'mine.json');
    writeFileSync(
      refs,
      JSON.stringify(
        annotations(
          2,
          (i) => ['beach.jpg', 'dog.jpg'][i],
          (i) => [7, 8][i],
        ),
      ),
    );
    const r = await cli([
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--format',
      'coco',
      '--references',
      refs,
      dir,
    ]);
    expect(r.code, r.err).toBe(0);
    expect((JSON.parse(r.out) as Array<{ image_id: number }>).map((x) => x.image_id)).toEqual([7, 8]);

    // A caption --format json of those files scores through the same references.
    const json = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'json', dir]);
    writeFileSync(path.join(env.tmp, 'mine.captions.json'), json.out);
    const scored = await cli([
      'eval',
      '--references',
      refs,
      '--predictions',
      path.join(env.tmp, 'mine.captions.json'),
    ]);
    expect(scored.code, scored.err).toBe(0);
    expect(scored.out).toMatch(/^2 images/);

    const before = env.hub.requests.length;
    const bad = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'coco', dir]);
    expect(bad.code).toBe(1);
    expect(bad.out).toBe('');
    expect(bad.err).toMatch(
      /^clipcap: --format coco: no COCO image id for 2 of 2 inputs .*beach\.jpg.*pass --references ANNOTATIONS\.json/,
    );
    expect(bad.err.trim().split('\n').length).toBe(1);
    expect(env.hub.requests.length).toBe(before);
    // Without a references file an eval of path-named entries says what to do.
    const noMap = await cli([
      'eval',
      '--references',
      path.join(env.tmp, 'captions_val.json'),
      '--predictions',
      path.join(env.tmp, 'mine.captions.json'),
    ]);
    expect(noMap.code).toBe(1);
    expect(noMap.err).toMatch(/item 0: no image id for ".*beach\.jpg"/);
    const refsOnly = await cli(['caption', '--references', refs, photo(0)]);
    expect(refsOnly.code).toBe(2);
    expect(refsOnly.err).toMatch(/--references .* --format coco/);
  });

  it('failed entries of a caption --format json file are left out of the scores, with a note', async () => {
    const refs = path.join(env.tmp, 'captions_val.json');
    const missing = path.join(env.tmp, 'COCO_val2014_000000000001.jpg');
    const r = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'json', photo(0), missing]);
    expect(r.code).toBe(1);
    const file = path.join(env.tmp, 'with-failure.json');
    writeFileSync(file, r.out);
    const scored = await cli(['eval', '--references', refs, '--predictions', file, '--only-predicted']);
    expect(scored.code, scored.err).toBe(0);
    expect(scored.out).toMatch(/^1 images/);
    expect(scored.err).toMatch(/1 entries of .* are failures .* left out/);
  });
});

describe('caption --embeddings names its rows', () => {
  it('by the image paths a clipcap extract file records', async () => {
    const feats = path.join(env.tmp, 'feats.safetensors');
    const ex = await cli(['extract', '--out', feats, photo(0), photo(1)]);
    expect(ex.code, ex.err).toBe(0);
    const text = await cli(['caption', '--model', 'coco', ...TINY, '--embeddings', feats]);
    expect(text.code, text.err).toBe(0);
    const fromImages = await cli(['caption', '--model', 'coco', ...TINY, photo(0), photo(1)]);
    expect(text.out).toBe(fromImages.out);
    const coco = await cli([
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--embeddings',
      feats,
      '--format',
      'coco',
    ]);
    expect((JSON.parse(coco.out) as Array<{ image_id: number }>).map((x) => x.image_id)).toEqual([
      idOf(NAMES[0]),
      idOf(NAMES[1]),
    ]);
  });

  it('reads the official parse_coco.py pickle, rows named by their COCO image ids', async () => {
    const pkl = fixture('official_features_tiny.pkl');
    const json = await cli(['caption', '--model', 'coco', ...TINY, '--embeddings', pkl, '--format', 'json']);
    expect(json.code, json.err).toBe(0);
    const entries = JSON.parse(json.out) as Entry[];
    expect(entries.map((e) => [e.index, e.image_id])).toEqual([
      [0, 9],
      [1, 17],
      [2, 23],
      [3, 42],
    ]);
    const coco = await cli(['caption', '--model', 'coco', ...TINY, '--embeddings', pkl, '--format', 'coco']);
    expect(JSON.parse(coco.out)).toEqual(entries.map((e) => ({ image_id: e.image_id, caption: e.caption })));
    const text = await cli(['caption', '--model', 'coco', ...TINY, '--embeddings', pkl]);
    expect(
      text.out
        .trimEnd()
        .split('\n')
        .map((l) => l.split('\t')[0]),
    ).toEqual(['9', '17', '23', '42']);
    // The fp16 pickle (GPU extraction) reads too.
    const fp16 = await cli([
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--embeddings',
      fixture('official_features_tiny_fp16.pkl'),
    ]);
    expect(fp16.code, fp16.err).toBe(0);
    expect(fp16.out.trimEnd().split('\n').length).toBe(4);
  });
});

describe('caption output details', () => {
  it('--num-captions 3 numbers the samples in text output, as the JSON candidates', async () => {
    const args = ['caption', '--model', 'coco', ...TINY, '--decode', 'nucleus', '--num-captions', '3'];
    const text = await cli([...args, photo(0), photo(1)]);
    expect(text.code, text.err).toBe(0);
    const json = JSON.parse((await cli([...args, '--format', 'json', photo(0), photo(1)])).out) as Entry[];
    const want = json.flatMap((e) =>
      (e.candidates ?? []).map((c, k) => `${e.image}\t${k + 1}\t${c.caption.replace(/[\t\r\n]/g, ' ')}`),
    );
    expect(want.length).toBe(6);
    expect(text.out.trimEnd().split('\n')).toEqual(want);
  });

  it('--out FILE: the output written atomically, nothing on stdout; no file when the run fails', async () => {
    const out = path.join(env.tmp, 'out', 'caps.json');
    mkdirSync(path.dirname(out), { recursive: true });
    const direct = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'json', photo(0)]);
    const r = await cli(['caption', '--model', 'coco', ...TINY, '--format', 'json', '--out', out, photo(0)]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe('');
    expect(readFileSync(out, 'utf8')).toBe(direct.out);
    expect(r.err).toBe(`clipcap: wrote 1 captions to ${out}\n`);
    const failed = path.join(env.tmp, 'out', 'never.json');
    const bad = await cli(['caption', '--model', './no-such-dir', '--out', failed, photo(0)]);
    expect(bad.code).toBe(1);
    expect(bad.err).toBe(
      'clipcap: --model ./no-such-dir: no such directory; --model takes coco, conceptual or a clipcap checkpoint directory\n',
    );
    expect(existsSync(failed)).toBe(false);
    expect(readdirSync(path.dirname(out))).toEqual(['caps.json']); // no temp files left
  });

  it('decoding flags the chosen decoder ignores are refused (exit 2), in caption and eval', async () => {
    const r = await cli(['caption', '--decode', 'greedy', '--beam-size', '3', '--top-p', '0.5', photo(0)]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /^clipcap: --beam-size and --top-p do nothing with --decode greedy \(--beam-size: beam; --top-p: nucleus\)/,
    );
    const seed = await cli(['caption', '--seed', '3', photo(0)]);
    expect(seed.code).toBe(2);
    expect(seed.err).toMatch(/--seed does nothing with --decode beam/);
    // Defaults do not count, and a flag the decoder uses is fine.
    const ok = await cli([
      'caption',
      '--model',
      'coco',
      ...TINY,
      '--decode',
      'nucleus',
      '--top-p',
      '0.5',
      photo(0),
    ]);
    expect(ok.code, ok.err).toBe(0);
    const ev = await cli([
      'eval',
      '--references',
      'r.json',
      '--model',
      'coco',
      '--images',
      env.tmp,
      '--decode',
      'greedy',
      '--temperature',
      '0.5',
    ]);
    expect(ev.code).toBe(2);
    expect(ev.err).toMatch(/--temperature does nothing with --decode greedy/);
    // Image options with --embeddings (no image read, no CLIP loaded).
    const emb = await cli([
      'caption',
      '--embeddings',
      fixture('official_features_tiny.pkl'),
      '--max-pixels',
      '5',
      '--clip',
      'openai/clip-vit-base-patch32',
    ]);
    expect(emb.code).toBe(2);
    expect(emb.err).toBe(
      'clipcap: --max-pixels and --clip do nothing with --embeddings (no image is read and no CLIP loads)\n',
    );
  });
});

describe('messages that name the right thing', () => {
  it('offline with an empty cache: one line listing every missing file at its exact path', async () => {
    const cache = path.join(env.tmp, 'cache-empty');
    process.env.HF_HUB_CACHE = cache;
    try {
      const r = await cli(['caption', '--model', 'coco', ...TINY, '--offline', photo(0)]);
      expect(r.code).toBe(1);
      expect(r.err.trim().split('\n').length).toBe(1);
      const at = (repo: string, file: string): string =>
        path.join(cache, `models--${repo.replace('/', '--')}`, 'snapshots', '<commit>', file);
      const files = [
        ['akhaliq/CLIP-prefix-captioning-COCO-weights', 'coco_weights.pt'],
        ['openai/clip-vit-base-patch32', 'config.json'],
        ['openai/clip-vit-base-patch32', 'model.safetensors'],
        ['openai-community/gpt2', 'config.json'],
      ];
      expect(r.err).toMatch(/^clipcap: offline mode is on and 4 files are not in the Hugging Face cache/);
      files.forEach(([repo, file], i) =>
        expect(r.err).toContain(`(${i + 1}) ${repo}/${file} at ${at(repo, file)}`),
      );
      // The placeholder is explained once, at the end.
      expect(r.err).toMatch(
        /\(<commit>: the repo's 40-hex commit hash \(from its page on the hub\), also written alone into refs\/main beside snapshots\/\)\n$/,
      );
      expect(r.err.split('<commit>:').length).toBe(2);
      // Captioning embeddings needs no CLIP: it is not asked for.
      const emb = await cli([
        'caption',
        '--model',
        'coco',
        ...TINY,
        '--offline',
        '--embeddings',
        fixture('official_features_tiny.pkl'),
      ]);
      expect(emb.err).toMatch(/2 files are not/);
      expect(emb.err).not.toContain('clip-vit');
      // extract lists both CLIP files at once too.
      const ex = await cli(['extract', '--offline', '--out', path.join(env.tmp, 'x.safetensors'), photo(0)]);
      expect(ex.code).toBe(1);
      expect(ex.err).toMatch(
        /^clipcap: offline mode is on and 2 files are not .*\(1\) openai\/clip-vit-base-patch32\/config\.json at .*\(2\) openai\/clip-vit-base-patch32\/model\.safetensors at /,
      );
    } finally {
      process.env.HF_HUB_CACHE = env.cache;
    }
  });

  it('--model naming a file; convert into an existing directory names --overwrite', async () => {
    const file = await cli(['caption', '--model', fixture('clipcap_mlp_tiny.pt'), photo(0)]);
    expect(file.code).toBe(1);
    expect(file.err).toMatch(
      /a file, not a clipcap checkpoint directory; give an official \.pt checkpoint as --clipcap FILE/,
    );
    const dir = path.join(env.tmp, 'converted');
    mkdirSync(dir, { recursive: true });
    const io = { stdout: (): void => undefined, stderr: (): void => undefined };
    const err = await runConvert(fixture('clipcap_mlp_tiny.pt'), dir, {}, io).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toBe(
      `${dir} already exists; pass --overwrite to replace it, or choose a new output directory`,
    );
  });
});
