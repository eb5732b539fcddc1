/**
 * --export-torch: the final model as `torch.save(ClipCaptionModel.state_dict())`. Checked against the official
 * key lists (the fixtures were written by PyTorch from the official classes), read back through clipcap's own
 * torch loader value for value (lm_head sharing wte's storage, as torch writes it), and captioned the same as
 * the checkpoint directory.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipCap } from '../../src/pipeline/caption.js';
import { train, type TrainOptions } from '../../src/pipeline/train.js';
import { readTrainingData } from '../../src/train/data.js';
import { loadTorchCheckpoint } from '../../src/weights/torch.js';
import { loadClipcapDir } from '../../src/weights/families/clipcap.js';
import { torchStateDictBytes } from '../../src/weights/torch-write.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const PKL = path.join(FIX, 'official_features_tiny.pkl');
const GPT2 = path.join(FIX, 'gpt2_tiny');
const made: string[] = [];
const tmp = (): string => {
  const dir = mkdtempSync(path.join(tmpdir(), 'clipcap-export-'));
  made.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** Byte-identical typed arrays (toEqual on million-element arrays is slow). */
const same = (a: unknown, b: unknown): boolean => {
  const x = a as Float32Array | undefined;
  const y = b as Float32Array | undefined;
  return (
    !!x &&
    !!y &&
    Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(
      Buffer.from(y.buffer, y.byteOffset, y.byteLength),
    )
  );
};

const CASES: Array<[string, Partial<TrainOptions>, string]> = [
  ['mlp', { mappingType: 'mlp' }, 'clipcap_mlp_tiny.pt'],
  [
    'transformer',
    { mappingType: 'transformer', numLayers: 2, clipLength: 10 },
    'clipcap_transformer_tiny.pt',
  ],
];

describe('--export-torch', () => {
  for (const [name, variant, official] of CASES) {
    it(`${name}: official key list, exact round trip through the torch loader, same captions`, async () => {
      const d = tmp();
      const pt = path.join(d, 'model.pt');
      const res = await train({
        data: PKL,
        out: path.join(d, 'run'),
        gpt2: GPT2,
        prefixLength: 10,
        batchSize: 4,
        epochs: 1,
        lr: 1e-3,
        warmup: 1,
        exportTorch: pt,
        ...variant,
      });
      const sd = await loadTorchCheckpoint(pt);
      const want = await loadTorchCheckpoint(path.join(FIX, official));
      expect([...sd.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [k, t] of want) expect(sd.get(k)?.shape, k).toEqual(t.shape);
      // Values: the mapper from the checkpoint directory, GPT-2 from it or (frozen) from the GPT-2 it started from.
      const dir = await loadClipcapDir(res.checkpoint);
      let n = 0;
      for (const [k, t] of dir.mapperWeights) {
        expect(same(sd.get(k)?.data, t.data), k).toBe(true);
        n++;
      }
      if (dir.gpt2)
        for (const [k, t] of dir.gpt2) {
          expect(same(sd.get(`gpt.transformer.${k}`)?.data, t.data), k).toBe(true);
          n++;
        }
      expect(n).toBeGreaterThan(4);
      const raw = await readTrainingData(PKL);
      const input = [{ embedding: raw.embeddings.slice(24, 48) }];
      const a = await ClipCap.load({ clipcap: pt, gpt2: GPT2 });
      const b = await ClipCap.load({ clipcap: res.checkpoint, gpt2: GPT2 });
      try {
        const ca = await a.caption(input, { method: 'beam', beamSize: 3, maxTokens: 6 });
        const cb = await b.caption(input, { method: 'beam', beamSize: 3, maxTokens: 6 });
        expect(ca.map((c) => c.caption)).toEqual(cb.map((c) => c.caption));
      } finally {
        a.dispose();
        b.dispose();
      }
    });
  }

  it('writes a stored zip whose entries torch expects, data 64-byte aligned, tied tensors sharing a storage', () => {
    const w = new Float32Array([1, 2, 3, 4, 5, 6]);
    const sd = new Map([
      ['a.weight', { dtype: 'f32' as const, shape: [2, 3], data: w }],
      ['b.weight', { dtype: 'f32' as const, shape: [2, 3], data: w }],
      ['c', { dtype: 'f32' as const, shape: [1], data: new Float32Array([7]) }],
    ]);
    const z = torchStateDictBytes(sd);
    const names: string[] = [];
    for (let o = 0; z.readUInt32LE(o) === 0x04034b50;) {
      const nameLen = z.readUInt16LE(o + 26);
      const extraLen = z.readUInt16LE(o + 28);
      const size = z.readUInt32LE(o + 18);
      const name = z.subarray(o + 30, o + 30 + nameLen).toString();
      names.push(name);
      const dataAt = o + 30 + nameLen + extraLen;
      if (name.includes('/data/')) expect(dataAt % 64, name).toBe(0);
      o = dataAt + size;
    }
    expect(names).toEqual([
      'archive/data.pkl',
      'archive/byteorder',
      'archive/data/0',
      'archive/data/1',
      'archive/version',
    ]);
    expect(readFileSync(path.join(FIX, 'clipcap_mlp_tiny.pt')).readUInt32LE(0)).toBe(0x04034b50);
  });
});
