/**
 * What `npm pack` ships and what `npm ci` prints: the license, no source maps without their sources, an
 * allowScripts entry for every dependency with an install script (npm >= 11.16 warns about the others), and
 * `clipcap --version` agreeing with package.json. Needs the build that `npm test` runs first.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { run } from '../process.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  license: string;
  bin: { clipcap: string };
  allowScripts?: Record<string, boolean>;
};

describe('the npm package', () => {
  it('ships LICENSE (MIT, as package.json says), the bin, and no .map without its source', async () => {
    expect(pkg.license).toBe('MIT');
    expect(readFileSync(path.join(ROOT, 'LICENSE'), 'utf8')).toMatch(/^MIT License\n/);
    // --ignore-scripts: list what would be packed without running the prepare build again.
    const r = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT });
    expect(r.status, r.stderr).toBe(0);
    const files = (JSON.parse(r.stdout) as Array<{ files: Array<{ path: string }> }>)[0].files.map(
      (f) => f.path,
    );
    expect(files).toContain('LICENSE');
    expect(files).toContain(pkg.bin.clipcap);
    expect(files).toContain('dist/src/index.d.ts');
    // A map is only useful next to the TypeScript source it points at; the package ships neither.
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
  });

  it('allowScripts names exactly the dependencies that have install scripts (a quiet npm ci)', () => {
    const lock = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { hasInstallScript?: boolean }>;
    };
    const withScripts = Object.entries(lock.packages)
      .filter(([p, v]) => p !== '' && v.hasInstallScript === true)
      .map(([p]) => p.slice(p.lastIndexOf('node_modules/') + 'node_modules/'.length))
      .sort();
    expect(withScripts.length).toBeGreaterThan(0);
    expect(Object.keys(pkg.allowScripts ?? {}).sort()).toEqual(withScripts);
  });

  it('clipcap --version prints the package version', async () => {
    const r = await run(process.execPath, [path.join(ROOT, pkg.bin.clipcap), '--version']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });
});
