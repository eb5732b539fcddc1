#!/usr/bin/env node
/**
 * Builds the native backend (build/Release/clipcap_native.node) with node-gyp. Runs at `npm ci` / `npm install`
 * (package.json "install"). A failed build is not an install failure: clipcap then runs on its reference
 * backend, so this prints one line saying so and how to fix it, and exits 0.
 *
 * CLIPCAP_SKIP_NATIVE=1 skips the build (the reference backend is used).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FIX =
  'clipcap: native backend not built, the slower reference backend will be used ' +
  '(to fix: install g++, make and python3, then run `npm rebuild clipcap`)';

function main() {
  if (process.env.CLIPCAP_SKIP_NATIVE === '1') {
    console.log(
      'clipcap: CLIPCAP_SKIP_NATIVE=1, native backend not built; the reference backend will be used',
    );
    return;
  }
  let gyp;
  try {
    gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    console.log(`${FIX} [node-gyp is not installed]`);
    return;
  }
  const args = [gyp, 'rebuild', '--release'];
  // Use the headers of the running Node when they are installed next to it (offline machines), unless npm
  // already passes a nodedir.
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) {
    args.push(`--nodedir=${prefix}`);
  }
  const r = spawnSync(process.execPath, args, {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
  });
  if (r.status === 0) {
    console.log('clipcap: native backend built (build/Release/clipcap_native.node)');
    return;
  }
  // Keep the compiler's last lines for whoever debugs the build, then the one actionable line.
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n');
  if (process.env.CLIPCAP_VERBOSE_BUILD === '1' && log) console.error(log);
  const reason = r.error ? r.error.message : `node-gyp exited with ${r.status}`;
  console.log(`${FIX} [${reason}; set CLIPCAP_VERBOSE_BUILD=1 to see the compiler output]`);
}

main();
