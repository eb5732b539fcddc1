/**
 * The real `clipcap` entry point (src/cli/main.ts, run through vite-node as a separate process): exit codes and
 * one-line errors on stderr exactly as a user sees them.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { run } from '../process.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIX = path.join(ROOT, 'test', 'fixtures');
const tmp = mkdtempSync(path.join(tmpdir(), 'clipcap-bin-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function clipcap(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const r = await run(
    path.join(ROOT, 'node_modules', '.bin', 'vite-node'),
    ['src/cli/main.ts', '--', ...args],
    {
      cwd: ROOT,
      // Never touch the network or the user's cache.
      env: { ...process.env, HF_HUB_OFFLINE: '1', HF_HUB_CACHE: path.join(tmp, 'cache') },
      timeoutMs: 120_000,
    },
  );
  // Without a built native addon the library says so once on stderr; that line is not under test here.
  const err = r.stderr
    .split('\n')
    .filter((l) => !l.startsWith('clipcap: native backend unavailable'))
    .join('\n');
  return { code: r.status, out: r.stdout, err };
}

const TINY = [
  '--clipcap',
  path.join(FIX, 'clipcap_mlp_tiny.pt'),
  '--clip',
  path.join(FIX, 'clip_tiny'),
  '--gpt2',
  path.join(FIX, 'gpt2_tiny'),
];

describe('clipcap binary', () => {
  it('bad usage: exit 2 with one line', async () => {
    const r = await clipcap(['caption']);
    expect(r.code).toBe(2);
    expect(r.err).toBe('clipcap: give image files, directories or globs to caption (or --embeddings FILE)\n');
  });

  it('weights that cannot load: exit 1 with one line naming the file', async () => {
    const r = await clipcap(['caption', '--clipcap', path.join(tmp, 'nope.pt'), path.join(FIX, 'images')]);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      `clipcap: ClipCap checkpoint ${path.join(tmp, 'nope.pt')}: no such file; check the path\n`,
    );
    const offline = await clipcap(['caption', '--model', 'coco', path.join(FIX, 'images')]);
    expect(offline.code).toBe(1);
    expect(offline.err.split('\n').length).toBe(2); // one line + the final newline
    expect(offline.err).toMatch(
      /offline mode is on and .* not in the Hugging Face cache: .*coco_weights\.pt at /,
    );
  });

  it('one bad image among good ones: its entry has the error, the rest are captioned, exit 1', async () => {
    const bad = path.join(tmp, 'bad.png');
    writeFileSync(bad, 'not a png');
    const r = await clipcap([
      'caption',
      ...TINY,
      '--format',
      'jsonl',
      '--decode',
      'greedy',
      '--max-tokens',
      '5',
      bad,
      path.join(FIX, 'images', 'CONCEPTUAL_03.jpg'),
    ]);
    expect(r.code).toBe(1);
    const lines = r.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { image: string; caption?: string; error?: string });
    expect(lines[0].image).toBe(bad);
    expect(lines[0].error).toMatch(/bad\.png: not an image/);
    expect(typeof lines[1].caption).toBe('string');
    expect(r.err).toMatch(/^clipcap: 1 of 2 inputs failed \(see their entries\)\n$/m);
  });
});
