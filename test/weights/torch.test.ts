import { describe, it, expect } from 'vitest';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { isHostTensor, loadPickle, loadTorchCheckpoint } from '../../src/weights/torch.js';
import type { PickleObject, PickleValue } from '../../src/weights/torch.js';
import { readSafetensors } from '../../src/weights/safetensors.js';
import { UserError } from '../../src/util/errors.js';
import type { HostTensor } from '../../src/weights/host.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const DATA = fileURLToPath(new URL('./data/', import.meta.url));

interface ExpectedTensor {
  dtype: string;
  shape: number[];
  values: number[];
}
const expected = JSON.parse(readFileSync(path.join(FIX, 'pickle_cases.expected.json'), 'utf8')) as Record<
  string,
  ExpectedTensor
> & {
  __features__: {
    clip_embedding: number[];
    clip_embedding_fp16_as_f32: number[];
    shape: number[];
    captions: Array<Record<string, unknown>>;
  };
};

const TORCH_DTYPES: Record<string, string> = {
  float32: 'f32',
  float16: 'f16',
  bfloat16: 'bf16',
  int64: 'i64',
  uint8: 'u8',
};

/** Worst |a - b| (the values must match exactly: every dtype here converts to f32/i32/u8 without rounding). */
function worst(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe.each(['legacy_format.pt', 'zip_format_misc.pt'])('%s', (file) => {
  it('loads every tensor with the expected dtype, shape and exact values (views and transposes contiguous)', async () => {
    const sd = await loadTorchCheckpoint(path.join(FIX, file));
    const names = Object.keys(expected).filter((k) => k !== '__features__');
    expect([...sd.keys()]).toEqual(names);
    let w = 0;
    for (const name of names) {
      const e = expected[name];
      const t = sd.get(name) as HostTensor;
      expect(t.dtype, name).toBe(TORCH_DTYPES[e.dtype]);
      expect(t.shape, name).toEqual(e.shape);
      const host = {
        f32: Float32Array,
        f16: Float32Array,
        bf16: Float32Array,
        i64: Int32Array,
        u8: Uint8Array,
      };
      expect(t.data, name).toBeInstanceOf(host[t.dtype as keyof typeof host]);
      w = Math.max(w, worst(t.data as Float32Array, e.values));
    }
    console.log(`${file}: worst difference ${w} over ${names.length} tensors`);
    expect(w).toBe(0);
  });
});

describe('official parse_coco.py feature pickles', () => {
  it.each([
    ['official_features_tiny.pkl', 'f32', 'clip_embedding'],
    ['official_features_tiny_fp16.pkl', 'f16', 'clip_embedding_fp16_as_f32'],
  ] as const)('%s: clip_embedding and captions', async (file, dtype, ref) => {
    const v = (await loadPickle(path.join(FIX, file))) as PickleObject;
    const emb = v.clip_embedding as HostTensor;
    expect(isHostTensor(emb)).toBe(true);
    expect(emb.dtype).toBe(dtype);
    expect(emb.shape).toEqual(expected.__features__.shape);
    const w = worst(emb.data as Float32Array, expected.__features__[ref]);
    console.log(`${file}: worst difference ${w}`);
    expect(w).toBe(0);
    expect(v.captions).toEqual(expected.__features__.captions);
  });
});

describe('hand-made zip archive', () => {
  it('zip_ok.pt: a minimal torch.save zip', async () => {
    const sd = await loadTorchCheckpoint(path.join(DATA, 'zip_ok.pt'));
    expect([...sd.keys()]).toEqual(['w']);
    expect([...(sd.get('w') as HostTensor).data]).toEqual([0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
  });
});

describe('ClipCap checkpoints', () => {
  it('clipcap_mlp_tiny.pt: all 33 tensors; the gpt.* weights equal gpt2_tiny read from safetensors', async () => {
    const sd = await loadTorchCheckpoint(path.join(FIX, 'clipcap_mlp_tiny.pt'));
    expect(sd.size).toBe(33);
    expect(sd.get('clip_project.model.0.weight')?.shape).toEqual([160, 24]);
    expect(sd.get('clip_project.model.2.weight')?.shape).toEqual([320, 160]);
    const { tensors: gpt2 } = await readSafetensors(path.join(FIX, 'gpt2_tiny', 'model.safetensors'));
    let w = 0;
    for (const [name, t] of gpt2) {
      const mine = sd.get(`gpt.${name}`) as HostTensor;
      expect(mine.shape, name).toEqual(t.shape);
      w = Math.max(w, worst(mine.data as Float32Array, t.data as Float32Array));
    }
    // lm_head is tied to wte: one storage in the file, two equal (unshared) arrays here.
    const lm = sd.get('gpt.lm_head.weight') as HostTensor;
    const wte = sd.get('gpt.transformer.wte.weight') as HostTensor;
    w = Math.max(w, worst(lm.data as Float32Array, wte.data as Float32Array));
    expect(lm.data === wte.data).toBe(false); // (not .not.toBe: it diffs 1.6M elements)
    console.log(`clipcap_mlp_tiny gpt.* vs gpt2_tiny: worst difference ${w}`);
    expect(w).toBe(0);
  });

  it('clipcap_transformer_tiny.pt: mapper keys and shapes', async () => {
    const sd = await loadTorchCheckpoint(path.join(FIX, 'clipcap_transformer_tiny.pt'));
    expect(sd.size).toBe(56);
    expect(sd.get('clip_project.prefix_const')?.shape).toEqual([10, 32]);
    expect(sd.get('clip_project.linear.weight')?.shape).toEqual([320, 24]);
    expect(sd.get('clip_project.transformer.layers.1.attn.to_keys_values.weight')?.shape).toEqual([64, 32]);
  });
});

describe('restricted unpickler: values', () => {
  const base = {
    ints: [0, 1, -1, 255, 256, 65535, 65536, -(2 ** 31), 2 ** 31 - 1, 2 ** 53 - 1, 2n ** 70n, -(2n ** 70n)],
    floats: [0.5, -2.25, 1e-300, Infinity],
    strs: ['', 'ascii', 'Ünïcödé ✓', 'line\nbreak'],
    consts: [null, true, false],
    tuple: [1, 'a', [2, 3]],
    set: new Set([1, 2, 3]),
    frozenset: new Set(['x']),
    int_keys: new Map([
      [1, 'one'],
      [2, 'two'],
    ]),
    tuple_keys: new Map([[[1, 2], 'pair']]),
    nested: { a: { b: [['shared'], ['shared']] } },
  };

  it.each(['values_p0.pkl', 'values_p2.pkl', 'values_p5.pkl'])('%s', async (file) => {
    const v = (await loadPickle(path.join(DATA, file))) as PickleObject;
    for (const [k, x] of Object.entries(base)) expect(v[k], k).toEqual(x);
    // A key named __proto__ is an ordinary property; the prototype is untouched.
    expect(Object.getOwnPropertyDescriptor(v, '__proto__')?.value).toBe('just a key');
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    // Memoized objects stay shared, cycles stay cycles.
    const b = (v.nested as PickleObject).a as PickleObject;
    expect((b.b as PickleValue[])[0]).toBe((b.b as PickleValue[])[1]);
    const cyclic = v.cyclic as PickleValue[];
    expect(cyclic[0]).toBe(1);
    expect(cyclic[1]).toBe(cyclic);
    if (file !== 'values_p0.pkl') expect(v.bytes).toEqual(Uint8Array.from([0, 1, 255])); // p2: via _codecs.encode
  });

  it('strided views, shared storage, 0-d and empty tensors from embedded legacy blobs', async () => {
    const v = (await loadPickle(path.join(DATA, 'strided_features.pkl'))) as Record<string, HostTensor>;
    // view[i][j] = storage[1 + i + 4j], storage[k] = k
    const want: number[] = [];
    for (let i = 0; i < 3; i++) for (let j = 0; j < 2; j++) want.push(1 + i + 4 * j);
    expect(v.view.shape).toEqual([3, 2]);
    expect([...v.view.data]).toEqual(want);
    expect([...v.whole.data]).toEqual(Array.from({ length: 12 }, (_, k) => k));
    expect(v.whole.data).not.toBe(v.view.data);
    expect(v.scalar.shape).toEqual([]);
    expect([...v.scalar.data]).toEqual([5]);
    expect(v.empty.shape).toEqual([0, 3]);
    expect(v.empty.data).toHaveLength(0);
  });
});

describe('restricted unpickler: refusals', () => {
  const marker = '/tmp/clipcap_pwned';

  async function refusal(file: string): Promise<string> {
    try {
      await loadPickle(file);
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      return (e as Error).message;
    }
    throw new Error(`${file} was accepted`);
  }

  it.each(['hostile_reduce.pkl', 'hostile_reduce.pt'])(
    '%s: os.system is refused and nothing runs',
    async (name) => {
      const file = path.join(FIX, name);
      const msg = await refusal(file);
      expect(msg).toBe(
        `refusing to load posix.system from ${file}: only tensors, storages and plain containers are allowed (loading a checkpoint never runs code from it)`,
      );
      expect(existsSync(marker)).toBe(false);
      await expect(loadTorchCheckpoint(file)).rejects.toThrow(/^refusing to load posix\.system from /);
    },
  );

  it('refuses a global that is only referenced, never called', async () => {
    expect(await refusal(path.join(DATA, 'eval_global.pkl'))).toMatch(
      /^refusing to load builtins\.eval from .*eval_global\.pkl/,
    );
  });

  it.each([
    ['call_storage_type.pkl', /refusing to call torch\.FloatStorage .*: it is allowed as a type only/],
    ['build_on_tensor.pkl', /refusing to restore the state of an object from .*build_on_tensor\.pkl/],
    ['persistent_id.pkl', /persistent_id\.pkl: unexpected persistent id in a plain pickle/],
    ['ext1.pkl', /refusing to load .*ext1\.pkl: it uses the copyreg extension registry/],
    ['next_buffer.pkl', /next_buffer\.pkl: it needs out-of-band buffers/],
    ['truncated.pkl', /truncated\.pkl: malformed pickle \(unexpected end of data at byte \d+/],
    ['unknown_opcode.pkl', /unknown_opcode\.pkl: malformed pickle \(unknown opcode at byte 2, opcode 0xff\)/],
    [
      'out_of_bounds_view.pkl',
      /a tensor of size \[3\] at offset 0 reads past the end of storage "140000" \(4 elements\)/,
    ],
    ['bad_storage_count.pkl', /storage "140000" has a wrong element count/],
  ])('%s', async (name, pattern) => {
    expect(await refusal(path.join(DATA, name))).toMatch(pattern);
  });

  it.each([
    ['zip_wrong_storage_size.pt', /archive\/data\/0 has 24 bytes, expected 400/],
    ['zip_missing_storage.pt', /storage data\/0 is missing from the archive/],
    ['zip_big_endian.pt', /saved big-endian/],
    ['zip_torchscript.pt', /is a TorchScript archive \(torch\.jit\.save\)/],
    ['zip_no_pkl.pt', /a zip file but not a PyTorch checkpoint/],
  ])('%s', async (name, pattern) => {
    expect(await refusal(path.join(DATA, name))).toMatch(pattern);
  });

  it('refuses pathological nesting and lengths without crashing or allocating', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-pickle-'));
    try {
      // 100000 lists, each appended into the previous one.
      const n = 100_000;
      const deep = Buffer.concat([
        Buffer.from([0x80, 2]),
        Buffer.from(']'.repeat(n + 1) + 'a'.repeat(n) + '.', 'latin1'),
      ]);
      await fs.writeFile(path.join(dir, 'deep.pkl'), deep);
      expect(await refusal(path.join(dir, 'deep.pkl'))).toMatch(/deep\.pkl: nested too deeply/);
      // BINBYTES8 claiming 2^50 bytes.
      const huge = Buffer.from([0x80, 4, 0x8e, 0, 0, 0, 0, 0, 0, 4, 0, 0x2e]);
      await fs.writeFile(path.join(dir, 'huge.pkl'), huge);
      expect(await refusal(path.join(dir, 'huge.pkl'))).toMatch(
        /huge\.pkl: malformed pickle \(unexpected end of data/,
      );
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('names files that are not checkpoints', async () => {
    expect(await refusal(path.join(FIX, 'gpt2_tiny', 'config.json'))).toMatch(
      /config\.json: not a PyTorch checkpoint or pickle/,
    );
    expect(await refusal(path.join(DATA, 'nope.pt'))).toMatch(/cannot open .*nope\.pt: ENOENT/);
    await expect(loadTorchCheckpoint(path.join(DATA, 'values_p2.pkl'))).rejects.toThrow(
      /holds no tensors by name/,
    );
  });
});
