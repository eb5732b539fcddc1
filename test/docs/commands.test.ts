/**
 * Docs that run: every command in the README's ```sh blocks is either run here, as written, in order, in one
 * working directory (through the built `clipcap`, against a local hub serving the tiny fixture models under the
 * published names, with fixture files under the names the README uses), or listed in NOT_RUN with the reason it
 * cannot run offline in a test. A new README command must be put in one of the two.
 *
 * The one change the tiny fixtures force: their GPT-2 is 32 wide, not a standard GPT-2 width, so its config must
 * be named (`--gpt2 openai-community/gpt2`) where a captioning model loads; the `clipcap` on PATH adds that flag
 * to `caption` and to `eval --model`, and to nothing else.
 */
import { execFile, execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture, withHub } from '../cli/harness.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** The README's shell commands, comments stripped, in order. */
function readmeCommands(): string[] {
  const out: string[] = [];
  for (const m of README.matchAll(/```sh\n([\s\S]*?)```/g))
    // Continuation lines joined; comment lines (and #! / #SBATCH) are not commands.
    for (const line of m[1].replace(/\s*\\\n\s*/g, ' ').split('\n')) {
      const cmd = line.replace(/\s+#.*$/, '').trim();
      if (cmd !== '' && !cmd.startsWith('#')) out.push(cmd);
    }
  return out;
}

/** Commands that cannot run offline in a test, and why (each is covered elsewhere or by CI). */
const NOT_RUN: Record<string, string> = {
  'npm ci': 'the install itself: .ci/run does it on a fresh clone',
  'npm test': 'this very suite',
  'clipcap train --data feats.safetensors --out run --mapping-type transformer --prefix-length 40 --clip-length 40':
    'the official notebook configuration needs a real data set (batch 40); test/train runs the transformer variant on fixtures',
  'clipcap extract photos/ --clip RN50x4 --captions annotations.json --out feats.safetensors':
    "downloads OpenAI's RN50x4 file (no network here); test/models extracts through the tiny RN tower",
  'clipcap caption --clipcap coco_prefix_transformer.pt photo.jpg':
    'needs the published Transformer checkpoint and RN50x4 (not downloadable here); test/models runs the RN tower with the tiny Transformer checkpoint',
  'npm run demo':
    'the full demo takes minutes; test/cli/demo.test.ts runs a reduced one, test/docs/setup.test.ts the script',
  'npm link':
    'changes the global npm prefix; test/docs/setup.test.ts checks what it links (package.json bin)',
  'clipcap demo --out demo-run': 'the full demo takes minutes; test/cli/demo.test.ts runs a reduced one',
  'clipcap caption --model demo-run/model fresh/images --format coco --references fresh/annotations.json --out fresh.json':
    "needs the demo's checkpoint; test/cli/demo.test.ts captions with a reduced demo's model and no other flag",
  'clipcap eval --references fresh/annotations.json --predictions fresh.json': 'needs the captions above',
  'clipcap serve --model demo-run/model': 'a long-running server; test/server runs createServer',
  'clipcap train --data feats.safetensors --out runs/coco':
    'full training (10 epochs of batch 40) needs a real data set; test/train runs clipcap train on fixtures',
  'clipcap train --data feats.safetensors --out runs/tr --mapping-type transformer':
    'full training needs a real data set; test/train runs clipcap train on fixtures',
  'clipcap caption --model runs/coco/final photo.jpg': 'needs the checkpoint of the training above',
  'clipcap extract /data/coco/train2014 --captions /data/coco/annotations/captions_train2014.json --shard "$SLURM_ARRAY_TASK_ID/16" --out "feats/part-$(printf %02d "$SLURM_ARRAY_TASK_ID").safetensors"':
    'a Slurm array job over /data; test/cli runs extract --shard on fixtures',
  'clipcap serve --port 8080': 'a long-running server on a fixed port; test/server runs createServer',
  "curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8080/caption?decode=greedy'":
    'needs the server above; test/server sends these requests',
  'curl -F image=@a.jpg -F image=@b.jpg http://127.0.0.1:8080/caption':
    'needs the server above; test/server sends these requests',
};

/** COCO annotations for photos named as `files`, ids from their COCO names. */
function cocoAnnotations(files: string[]): unknown {
  const id = (f: string): number => Number(/(\d{12})\.jpg$/.exec(f)?.[1] ?? files.indexOf(f) + 1);
  return {
    images: files.map((f) => ({ id: id(f), file_name: f })),
    annotations: files.flatMap((f, i) => [
      { id: 2 * i, image_id: id(f), caption: 'a photo of something' },
      { id: 2 * i + 1, image_id: id(f), caption: 'an image with things in it' },
    ]),
  };
}

let env: Awaited<ReturnType<typeof withHub>>;
let work: string;
let binDir: string;

beforeAll(async () => {
  env = await withHub();
  work = path.join(env.tmp, 'work');
  binDir = path.join(env.tmp, 'bin');
  mkdirSync(work);
  mkdirSync(binDir);
  const main = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
  expect(existsSync(main), 'dist/ is missing: run npm run build (npm test does)').toBe(true);
  const wrapper = path.join(binDir, 'clipcap');
  // A shell script, not a second node process: each command already starts one.
  writeFileSync(
    wrapper,
    [
      '#!/bin/sh',
      'extra=""',
      'case "$1" in',
      '  caption) extra="--gpt2 openai-community/gpt2" ;;',
      '  eval) for a in "$@"; do [ "$a" = --model ] && extra="--gpt2 openai-community/gpt2"; done ;;',
      'esac',
      `exec ${JSON.stringify(process.execPath)} ${JSON.stringify(main)} "$@" $extra`,
      '',
    ].join('\n'),
  );
  chmodSync(wrapper, 0o755);

  const photos = JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] };
  const coco = photos.images.filter((n) => n.startsWith('COCO_'));
  const put = (from: string, to: string): void => {
    mkdirSync(path.dirname(path.join(work, to)), { recursive: true });
    copyFileSync(from, path.join(work, to));
  };
  put(fixture('images', coco[0]), 'photo.jpg');
  put(fixture('images', coco[1]), 'a.jpg');
  put(fixture('images', coco[2]), 'b.jpg');
  put(fixture('images', 'CONCEPTUAL_01.jpg'), 'photos/beach.jpg');
  put(fixture('images', 'CONCEPTUAL_02.jpg'), 'photos/more/dog.jpg');
  writeFileSync(
    path.join(work, 'annotations.json'),
    JSON.stringify(cocoAnnotations(['beach.jpg', 'dog.jpg'])),
  );
  for (const n of coco.slice(0, 3)) {
    put(fixture('images', n), path.join('val2014', n));
    put(fixture('images', n), path.join('COCO_DIR', 'val2014', n));
  }
  writeFileSync(path.join(work, 'captions_val2014.json'), JSON.stringify(cocoAnnotations(coco.slice(0, 3))));
  const karpathy = cocoAnnotations(coco.slice(0, 3)) as {
    images: Array<{ id: number; file_name: string }>;
  };
  writeFileSync(
    path.join(work, 'dataset_coco.json'),
    JSON.stringify({
      images: karpathy.images.map((im) => ({
        split: 'test',
        cocoid: im.id,
        filepath: 'val2014',
        filename: im.file_name,
        sentences: [{ raw: 'a photo of something' }, { raw: 'an image with things in it' }],
      })),
    }),
  );
  const train = ['COCO_train2014_000000000009.jpg', 'COCO_train2014_000000000025.jpg'];
  put(fixture('images', 'CONCEPTUAL_03.jpg'), path.join('train2014', train[0]));
  put(fixture('images', 'CONCEPTUAL_04.jpg'), path.join('train2014', train[1]));
  writeFileSync(path.join(work, 'captions_train2014.json'), JSON.stringify(cocoAnnotations(train)));
  put(fixture('official_features_tiny.pkl'), 'coco_val_features.pkl');
});

afterAll(async () => {
  await env.restore();
});

/** Run one README line with bash in the working directory; the hub answers meanwhile (asynchronous). */
function sh(cmd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      ['-c', cmd],
      { cwd: work, env: { ...process.env, PATH: `${binDir}:${process.env.PATH ?? ''}` }, maxBuffer: 1 << 26 },
      (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('README commands', () => {
  it('every command is run below or listed with a reason; nothing listed is gone from the README', () => {
    const cmds = readmeCommands();
    expect(cmds.length).toBeGreaterThan(15);
    for (const c of Object.keys(NOT_RUN))
      expect(cmds, `NOT_RUN lists a command the README lacks`).toContain(c);
  });

  it('the ones that can run offline run, as written, in order', async () => {
    const ran: string[] = [];
    for (const cmd of readmeCommands()) {
      if (cmd in NOT_RUN) continue;
      expect(cmd.startsWith('clipcap '), `README command not classified: ${cmd}`).toBe(true);
      const r = await sh(cmd);
      expect(r.code, `${cmd}\n${r.stderr}`).toBe(0);
      ran.push(cmd);
    }
    expect(ran.length).toBeGreaterThanOrEqual(12);
    // What they wrote is what the README says they write.
    const captions = JSON.parse(readFileSync(path.join(work, 'captions.json'), 'utf8')) as Array<{
      image: string;
      caption: string;
    }>;
    expect(captions.map((c) => c.image)).toEqual([
      path.join('photos', 'beach.jpg'),
      path.join('photos', 'more', 'dog.jpg'),
    ]);
    expect(existsSync(path.join(work, 'feats.safetensors'))).toBe(true);
    const results = JSON.parse(readFileSync(path.join(work, 'results.json'), 'utf8')) as Array<{
      image_id: number;
    }>;
    expect(results.length).toBeGreaterThan(0);
    expect(existsSync(path.join(work, 'results_test.json'))).toBe(true);
  });
});

describe('README layout', () => {
  it('lists every folder of src/ and every tracked top-level folder', () => {
    const block = /\n## Layout\n+```\n([\s\S]*?)```/.exec(README)?.[1] ?? '';
    expect(block).not.toBe('');
    const srcDirs = readdirSync(path.join(ROOT, 'src'), { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => `src/${e.name}`);
    // Tracked folders only (node_modules/, dist/, build/ are made by the install); a checkout without git
    // falls back to what is on disk.
    let top: string[];
    try {
      top = execFileSync('git', ['ls-files'], { cwd: ROOT, encoding: 'utf8' })
        .split('\n')
        .filter((f) => f.includes('/'))
        .map((f) => f.slice(0, f.indexOf('/')));
    } catch {
      top = readdirSync(ROOT, { withFileTypes: true })
        .filter((e) => e.isDirectory() && !['node_modules', 'dist', 'build', '.git'].includes(e.name))
        .map((e) => e.name);
    }
    const topDirs = [...new Set(top)].filter((d) => d !== 'src').map((d) => `${d}/`);
    expect(srcDirs.length).toBeGreaterThan(10);
    for (const d of [...srcDirs, ...topDirs])
      expect(block, `README layout does not list ${d}`).toMatch(
        new RegExp(`(^|\\s)${d.replace(/[.]/g, '\\.')}(\\s|$)`, 'm'),
      );
  });
});
