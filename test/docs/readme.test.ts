/**
 * Docs that run: the README's library example is executed as written (through the built package entry
 * point, in a child process), against a local hub serving the tiny fixture models under the published names.
 * Only what the tiny fixtures force is changed, and each change is asserted to apply.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipCap } from '../../src/index.js';
import { fixture, withHub } from '../cli/harness.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** The first ```ts block after a heading. */
function codeBlockAfter(heading: string): string {
  const at = README.indexOf(`\n${heading}\n`);
  expect(at, `README has no "${heading}" section`).toBeGreaterThanOrEqual(0);
  const m = /```ts\n([\s\S]*?)```/.exec(README.slice(at));
  expect(m, `no ts example under "${heading}"`).not.toBeNull();
  return m![1];
}

function replaceOnce(code: string, from: string, to: string): string {
  expect(code.includes(from), `the README example no longer contains ${from}`).toBe(true);
  return code.replace(from, to);
}

let env: Awaited<ReturnType<typeof withHub>>;
beforeAll(async () => {
  env = await withHub();
});
afterAll(async () => {
  await env.restore();
});

describe('README', () => {
  it('the captioning library example runs as written', async () => {
    const entry = path.join(ROOT, 'dist', 'src', 'index.js');
    expect(existsSync(entry), 'dist/ is missing: run npm run build (npm test does)').toBe(true);
    let code = codeBlockAfter('## Captioning');
    code = replaceOnce(code, "from 'clipcap'", `from '${pathToFileURL(entry).href}'`);
    // The tiny fixture GPT-2 is 32 wide, not a standard GPT-2 width, so its config must be named; the published
    // checkpoints are 768 wide and need nothing.
    code = replaceOnce(
      code,
      "fromPretrained('coco')",
      "fromPretrained('coco', { gpt2: 'openai-community/gpt2' })",
    );
    const dir = env.tmp;
    copyFileSync(fixture('images', 'COCO_val2014_000000060623.jpg'), path.join(dir, 'photo.jpg'));
    copyFileSync(fixture('formats', 'rgb.png'), path.join(dir, 'b.png'));
    // manyPaths is the reader's own list of files.
    writeFileSync(path.join(dir, 'example.mjs'), `const manyPaths = ['photo.jpg', 'b.png'];\n${code}`);

    // Asynchronous: the hub server runs in this process and must keep answering while the example runs.
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, ['example.mjs'], { cwd: dir, env: process.env }, (err, stdout, stderr) =>
        resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
      );
    });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    // caption(): 'photo.jpg' then the Buffer (index 1); captionStream(): both paths.
    // console.log(label, caption) joins with a space.
    expect(lines.map((l) => l.slice(0, l.indexOf(' ')))).toEqual(['photo.jpg', '1', 'photo.jpg', 'b.png']);

    // The same captions as the library gives in-process for those inputs.
    const model = await ClipCap.fromPretrained('coco', { gpt2: 'openai-community/gpt2' });
    try {
      const want = await model.caption([path.join(dir, 'photo.jpg'), path.join(dir, 'b.png')], {
        method: 'beam',
        beamSize: 5,
      });
      const caption = (i: number): string => want[i].caption ?? `error: ${want[i].error}`;
      expect(caption(0).length).toBeGreaterThan(0);
      expect(lines).toEqual([
        `photo.jpg ${caption(0)}`,
        `1 ${caption(1)}`,
        `photo.jpg ${caption(0)}`,
        `b.png ${caption(1)}`,
      ]);
    } finally {
      model.dispose();
    }
  });
});
