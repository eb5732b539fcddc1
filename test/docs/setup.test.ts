/**
 * The README's set-up stays true: after `npm ci` the demo runs directly through an npm script (no npx, which
 * re-runs the package's prepare and install scripts), and `npm link` puts the package's bin, the built CLI, on
 * PATH as `clipcap`.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  bin: Record<string, string>;
  scripts: Record<string, string>;
};

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) =>
    execFile(cmd, args, { cwd: ROOT }, (err, stdout, stderr) =>
      resolve({ code: err ? Number(err.code ?? 1) : 0, out: stdout + stderr }),
    ),
  );
}

describe('README set-up', () => {
  const setup = /## Set-up\n\n```sh\n([\s\S]*?)```/.exec(README)?.[1] ?? '';

  it('runs the demo through the npm script, not npx, and says how to get clipcap on PATH', () => {
    const lines = setup.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim());
    expect(lines.slice(0, 3)).toEqual(['npm ci', 'npm run demo', 'npm link']);
    expect(setup).not.toMatch(/npx clipcap/);
  });

  it('the demo script starts the built CLI directly, and npm link links the built CLI as clipcap', () => {
    expect(pkg.scripts.demo).toBe('node dist/src/cli/main.js demo');
    expect(pkg.bin).toEqual({ clipcap: 'dist/src/cli/main.js' });
    const main = path.join(ROOT, pkg.bin.clipcap);
    expect(existsSync(main), 'dist/ is missing: run npm run build (npm test does)').toBe(true);
    expect(readFileSync(main, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  });

  it('npm run demo reaches clipcap demo (its --help, to stay quick)', async () => {
    const r = await run('npm', ['run', '--silent', 'demo', '--', '--help']);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/Usage: clipcap demo/);
    expect(r.out).toMatch(/--random-weights/);
  }, 60_000);
});
