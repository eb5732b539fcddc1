/**
 * Fuzz targets for the weight and feature file parsers: safetensors, plain pickles, torch.save zip archives,
 * legacy torch.save files, TorchScript archives and the official parse_coco.py feature pickles. Zip targets
 * mutate the archive itself half the time and, the other half, the data.pkl inside it (re-zipped), so the
 * mutations reach the unpickler and the tensor rebuild rather than stopping at the zip layer. See fuzz.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPickle, loadTorchCheckpoint } from '../../src/weights/torch.js';
import { loadTorchScript } from '../../src/weights/torchscript.js';
import { loadSafetensors, parseSafetensors, serializeSafetensors } from '../../src/weights/safetensors.js';
import { fuzz, mutate, summary } from './fuzz.js';
import type { FuzzTarget } from './fuzz.js';
import { f32Storage, PickleWriter, readStoredZip, torchScriptZip, zipStored } from '../weights/build.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const DATA = fileURLToPath(new URL('../weights/data/', import.meta.url));
const read = (file: string): [string, Uint8Array] => [
  path.basename(file),
  new Uint8Array(readFileSync(file)),
];

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-fuzz-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The input written to a file (the loaders take paths), one name per target. */
function asFile(name: string, input: Uint8Array): string {
  const file = path.join(dir, name);
  writeFileSync(file, input);
  return file;
}

/** Mutate one member of a stored zip (data.pkl by preference) and re-zip. */
function mutateMember(zip: Uint8Array, next: () => number): Uint8Array | undefined {
  let entries: Array<[string, Uint8Array]>;
  try {
    entries = readStoredZip(zip);
  } catch {
    return undefined;
  }
  const pkl = entries.findIndex(([n]) => n.endsWith('/data.pkl'));
  const i = pkl >= 0 && next() < 0.8 ? pkl : Math.floor(next() * entries.length);
  const [name, data] = entries[i];
  entries[i] = [name, mutate(data, data, next)];
  return zipStored(entries);
}

async function runTarget(t: FuzzTarget): Promise<void> {
  const r = await fuzz(t);
  console.log(summary(t.name, r));
  expect(r.ok + r.refused).toBe(r.cases);
}

describe('fuzz: weight and feature parsers (seeded mutations; only clean UserErrors, bounded time and memory)', () => {
  it('safetensors', async () => {
    const small = serializeSafetensors(
      {
        a: { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
        i: { shape: [4], data: Int32Array.from([1, -2, 3, -4]) },
        b: { shape: [3], data: Uint8Array.from([1, 0, 1]), dtype: 'bool' },
        l: { shape: [2], data: BigInt64Array.from([1n, 2n ** 40n]) },
        e: { shape: [0, 5], data: new Float32Array(0) },
      },
      { format: 'pt', note: 'fuzz seed' },
    );
    await runTarget({
      name: 'safetensors',
      seeds: [['small.safetensors', small], read(path.join(FIX, 'openai_clip_tiny/expected.safetensors'))],
      cases: 400,
      seed: 1,
      async run(input) {
        // In memory for most cases; through a file (header first, then each tensor) for every fourth.
        if (input[0] % 4 !== 0) return parseSafetensors(input, 'fuzz.safetensors');
        const f = await loadSafetensors(asFile('fuzz.safetensors', input));
        try {
          return await f.readAll();
        } finally {
          await f.close();
        }
      },
    });
  });

  it('plain pickles (protocols 0, 2, 5; embedded legacy storages)', async () => {
    await runTarget({
      name: 'pickle',
      seeds: ['values_p0.pkl', 'values_p2.pkl', 'values_p5.pkl', 'strided_features.pkl'].map((f) =>
        read(path.join(DATA, f)),
      ),
      cases: 400,
      seed: 2,
      run: (input) => loadPickle(asFile('fuzz.pkl', input)),
    });
  });

  it('official parse_coco.py feature pickles', async () => {
    await runTarget({
      name: 'features',
      seeds: ['official_features_tiny.pkl', 'official_features_tiny_fp16.pkl'].map((f) =>
        read(path.join(FIX, f)),
      ),
      cases: 300,
      seed: 3,
      run: (input) => loadPickle(asFile('features.pkl', input)),
    });
  });

  it('torch.save zip archives', async () => {
    await runTarget({
      name: 'torch-zip',
      seeds: [read(path.join(FIX, 'zip_format_misc.pt')), read(path.join(DATA, 'zip_ok.pt'))],
      cases: 300,
      seed: 4,
      mutateStructured: mutateMember,
      run: (input) => loadTorchCheckpoint(asFile('fuzz_zip.pt', input)),
    });
  });

  it('legacy torch.save files', async () => {
    await runTarget({
      name: 'torch-legacy',
      seeds: [read(path.join(FIX, 'legacy_format.pt'))],
      cases: 300,
      seed: 5,
      run: (input) => loadTorchCheckpoint(asFile('fuzz_legacy.pt', input)),
    });
  });

  it('TorchScript archives', async () => {
    const made = torchScriptZip(
      {
        weight: { key: '0', numel: 6, size: [2, 3], stride: [3, 1] },
        'sub.bias': { key: '1', numel: 2, size: [2], stride: [1] },
      },
      { '0': f32Storage(6, 1), '1': f32Storage(2, 2) },
    );
    // A scripted module with a submodule and scalar attributes, as torch.jit.save pickles it.
    const p = new PickleWriter().proto(2).global('__torch__', 'Root').emptyTuple().newobj().emptyDict();
    p.str('training')
      .bool(false)
      .setitem()
      .str('eps')
      .raw(0x47, Buffer.from([0x3e, 0xe4, 0xf8, 0xb5, 0x88, 0xe3, 0x68, 0xf1]));
    p.setitem().str('child').global('__torch__.m', 'Child').emptyTuple().newobj().emptyDict();
    p.str('w')
      .tensor({ key: '0', numel: 4, size: [2, 2], stride: [1, 2] })
      .setitem()
      .build()
      .setitem()
      .build()
      .stop();
    const scripted = zipStored([
      ['archive/data.pkl', p.toBuffer()],
      ['archive/data/0', f32Storage(4, 3)],
      ['archive/constants.pkl', new PickleWriter().proto(2).emptyTuple().stop().toBuffer()],
    ]);
    await runTarget({
      name: 'torchscript',
      seeds: [
        ['made.pt', made],
        ['scripted.pt', scripted],
        read(path.join(FIX, 'openai_clip_tiny/hostile_setstate.pt')),
        // A real torch.jit.save archive (a tiny OpenAI CLIP): its module tree, code and 53 storages.
        read(path.join(FIX, 'openai_clip_tiny/ViT-tiny.pt')),
      ],
      cases: 300,
      seed: 6,
      mutateStructured: mutateMember,
      run: (input) => loadTorchScript(asFile('fuzz_ts.pt', input)),
    });
  });
});
