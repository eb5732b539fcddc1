/**
 * The layering of docs/DESIGN.md is enforced by `npm run lint` (eslint.config.js: no-restricted-imports per folder of
 * src/, Node built-ins refused in the browser-safe engine files, and clipcap/no-import-cycle). These cases lint
 * code that breaks each rule, as if it were saved at the given path, and check that the lint fails naming the rule;
 * the allowed cases check that the rules do not refuse what the design permits.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

let eslint: ESLint;
beforeAll(() => {
  eslint = new ESLint({ cwd: ROOT });
});

async function lint(file: string, code: string): Promise<string[]> {
  const [r] = await eslint.lintText(code, { filePath: path.join(ROOT, file) });
  return r.messages.map((m) => `${m.ruleId ?? 'parse'}: ${m.message}`);
}

const RESTRICTED = '@typescript-eslint/no-restricted-imports';

describe('layering lint', () => {
  it.each([
    [
      'src/nn/linear-x.ts',
      `import { train } from '../train/loop.js';\nexport const a = train;\n`,
      'src/nn/ may not import src/train/',
    ],
    [
      'src/train/x.ts',
      `import { ClipCap } from '../pipeline/caption.js';\nexport const a = ClipCap;\n`,
      'src/train/ may not import src/pipeline/',
    ],
    [
      'src/server/x.ts',
      `import { runServe } from '../cli/commands/serve.js';\nexport const a = runServe;\n`,
      'src/server/ may not import src/cli/',
    ],
    [
      'src/weights/families/x.ts',
      `import type { Gpt2Model } from '../../models/gpt2.js';\nexport type A = Gpt2Model;\n`,
      'src/weights/ may not import src/models/',
    ],
    [
      'src/models/x.ts',
      `import { generate } from '../generate/index.js';\nexport const a = generate;\n`,
      'src/models/ may not import src/generate/',
    ],
    [
      'src/engine/reference.ts',
      `import fs from 'node:fs';\nexport const a = fs;\n`,
      'may not import Node built-ins',
    ],
    [
      'src/engine/tensor.ts',
      `import { Buffer } from 'buffer';\nexport const a = Buffer;\n`,
      'may not import Node built-ins',
    ],
    [
      'src/engine/reference-checks.ts',
      `import { loadNativeBackend } from './native.js';\nexport const a = loadNativeBackend;\n`,
      'may not import the Node side of the engine',
    ],
  ])('%s: refuses %j', async (file, code, message) => {
    const msgs = await lint(file, code);
    expect(
      msgs.some((m) => m.startsWith(RESTRICTED) && m.includes(message)),
      msgs.join('\n'),
    ).toBe(true);
  });

  it('refuses an import cycle (pipeline/load -> pipeline/caption -> pipeline/load)', async () => {
    const load = readFileSync(path.join(ROOT, 'src/pipeline/load.ts'), 'utf8');
    const msgs = await lint(
      'src/pipeline/load.ts',
      `${load}\nimport { ClipCap } from './caption.js';\nexport const cc = ClipCap;\n`,
    );
    expect(msgs).toContain(
      'clipcap/no-import-cycle: import cycle: src/pipeline/load.ts -> src/pipeline/caption.ts -> src/pipeline/load.ts',
    );
    // The file as it is lints clean: the cycle is the added line.
    expect(await lint('src/pipeline/load.ts', load)).toEqual([]);
  });

  it.each([
    ['src/models/x.ts', `import type { CausalLM } from '../generate/lm.js';\nexport type A = CausalLM;\n`],
    ['src/nn/x.ts', `import { Tensor } from '../engine/tensor.js';\nexport const a = Tensor;\n`],
    ['src/engine/native.ts', `import fs from 'node:fs';\nexport const a = fs;\n`],
    ['src/cli/x.ts', `import { createServer } from '../server/index.js';\nexport const a = createServer;\n`],
    // Type-only imports are erased, so they make no cycle.
    ['src/pipeline/load.ts', `import type { ClipCap } from './caption.js';\nexport type A = ClipCap;\n`],
  ])('%s: allows %j', async (file, code) => {
    expect(await lint(file, code)).toEqual([]);
  });

  it('names every folder of src/ in its layer table', async () => {
    const { LAYERS } = (await import(path.join(ROOT, 'eslint.config.js'))) as {
      LAYERS: Record<string, string[]>;
    };
    const dirs = readdirSync(path.join(ROOT, 'src'), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name)
      .sort();
    expect(Object.keys(LAYERS).sort()).toEqual(dirs);
  });
});
