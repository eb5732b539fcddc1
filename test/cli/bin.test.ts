/**
 * The installed command: package.json's bin points at the built entry point, which must be executable with a
 * node shebang (npx and npm's bin links run it directly). Needs the build that `npm test` runs first.
 */
import { accessSync, constants, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { run } from '../process.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

describe('clipcap bin', () => {
  it('is the built entry point, executable, and answers --help', async () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
      bin: { clipcap: string };
    };
    const bin = path.join(ROOT, pkg.bin.clipcap);
    expect(readFileSync(bin, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
    expect(() => accessSync(bin, constants.X_OK)).not.toThrow();
    const r = await run(bin, ['--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/Usage: clipcap/);
  });
});
