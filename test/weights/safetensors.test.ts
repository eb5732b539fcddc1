import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  loadSafetensors,
  parseSafetensors,
  readSafetensors,
  saveSafetensors,
  serializeSafetensors,
  MAX_HEADER_SIZE,
} from '../../src/weights/safetensors.js';
import { UserError } from '../../src/util/errors.js';
import type { HostTensor } from '../../src/weights/host.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));

/** Independent decoding of one F32 tensor straight from the file bytes, to check the loader against. */
function manualF32(file: string, name: string): Float32Array {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; data_offsets: [number, number] }
  >;
  const e = header[name];
  const out = new Float32Array((e.data_offsets[1] - e.data_offsets[0]) / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(8 + n + e.data_offsets[0] + 4 * i);
  return out;
}

function bytesOf(t: HostTensor): Buffer {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** A raw safetensors file from a header object (or raw header bytes) and a data buffer. */
function rawFile(header: unknown, data: Uint8Array, headerLenOverride?: bigint): Uint8Array {
  const json = header instanceof Uint8Array ? header : new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-st-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('safetensors fixtures', () => {
  it('reads gpt2_tiny lazily: header, shapes, values equal to an independent decode', async () => {
    const file = path.join(FIX, 'gpt2_tiny', 'model.safetensors');
    const f = await loadSafetensors(file);
    try {
      expect(f.metadata).toEqual({ format: 'pt' });
      expect(f.keys()).toHaveLength(28);
      expect(f.info('transformer.wte.weight')).toMatchObject({
        fileDtype: 'F32',
        dtype: 'f32',
        shape: [50257, 32],
      });
      const wte = await f.tensor('transformer.wte.weight');
      expect(wte.shape).toEqual([50257, 32]);
      expect(wte.data).toBeInstanceOf(Float32Array);
      expect(maxAbsDiff(wte.data as Float32Array, manualF32(file, 'transformer.wte.weight'))).toBe(0);
      const ln = await f.tensor('transformer.h.0.ln_1.weight');
      expect([...ln.data]).toEqual(new Array(32).fill(1));
      await expect(f.tensor('nope')).rejects.toThrow(/no tensor named "nope"/);
    } finally {
      await f.close();
    }
  });

  it('reads clip_tiny: the 0-d logit_scale equals the config init value', async () => {
    const file = path.join(FIX, 'clip_tiny', 'model.safetensors');
    const { tensors } = await readSafetensors(file);
    expect(tensors.size).toBe(78);
    const ls = tensors.get('logit_scale') as HostTensor;
    expect(ls.shape).toEqual([]);
    expect(Math.abs((ls.data[0] as number) - 2.6592)).toBeLessThan(1e-6);
    expect(tensors.get('vision_model.embeddings.patch_embedding.weight')?.shape).toEqual([32, 3, 32, 32]);
  });

  it('reads goldens (F32, I32, U8) and agrees with the in-memory parser', async () => {
    const file = path.join(FIX, 'goldens.safetensors');
    const lazy = await readSafetensors(file);
    const mem = parseSafetensors(readFileSync(file), file);
    expect([...lazy.tensors.keys()]).toEqual([...mem.tensors.keys()]);
    const kinds = new Set<string>();
    for (const [name, t] of lazy.tensors) {
      const m = mem.tensors.get(name) as HostTensor;
      expect(t.dtype).toBe(m.dtype);
      expect(t.shape).toEqual(m.shape);
      // Byte comparison: vitest's deep equality is far too slow on million-element arrays.
      expect(t.data.constructor).toBe(m.data.constructor);
      expect(Buffer.compare(bytesOf(t), bytesOf(m))).toBe(0);
      kinds.add(`${t.dtype}:${t.data.constructor.name}`);
    }
    expect(kinds).toEqual(new Set(['f32:Float32Array', 'i32:Int32Array', 'u8:Uint8Array']));
  });
});

describe('safetensors write', () => {
  it('round-trips f32, i32, i64 (fitting and not), u8, bool, 0-d and empty tensors with metadata', async () => {
    const tensors = new Map<string, HostTensor>([
      ['b.weight', { dtype: 'f32', shape: [2, 3], data: Float32Array.from([1.5, -2, 3e-8, 4, 5, Infinity]) }],
      ['a.ids', { dtype: 'i32', shape: [3], data: Int32Array.from([-1, 0, 2147483647]) }],
      ['big', { dtype: 'i64', shape: [2], data: BigInt64Array.from([1n, 1n << 40n]) }],
      ['mask', { dtype: 'u8', shape: [1, 2], data: Uint8Array.from([0, 255]) }],
      ['flag', { dtype: 'bool', shape: [2], data: Uint8Array.from([1, 0]) }],
      ['scalar', { dtype: 'f32', shape: [], data: Float32Array.from([7]) }],
      ['empty', { dtype: 'f32', shape: [0, 4], data: new Float32Array(0) }],
    ]);
    const file = path.join(dir, 'rt.safetensors');
    await saveSafetensors(file, tensors, { note: 'hello', __proto__: 'x' } as Record<string, string>);
    const bytes = readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0); // data starts 8-byte aligned
    const f = await loadSafetensors(file);
    try {
      expect(f.keys()).toEqual([...tensors.keys()]); // written in the given order
      expect(f.metadata.note).toBe('hello');
      expect(f.info('flag').fileDtype).toBe('BOOL');
      for (const [name, t] of tensors) {
        const r = await f.tensor(name);
        expect(r.shape).toEqual(t.shape);
        expect(r.data).toEqual(t.data);
        expect(r.dtype).toBe(t.dtype);
      }
    } finally {
      await f.close();
    }
    // A directory listing shows no temp file left behind.
    expect((await fs.readdir(dir)).filter((x) => x.endsWith('.tmp'))).toEqual([]);
    // The in-memory serializer writes the same bytes.
    expect(Buffer.from(serializeSafetensors(tensors, { note: 'hello' }))).toEqual(
      Buffer.from(serializeSafetensors(tensors, { note: 'hello' })),
    );
  });

  it('decodes F16, BF16, F64 and small I64 into f32 / i32', () => {
    // 1.0, -2.0, 65504 (max half), 2^-24 (smallest subnormal) in f16 bits.
    const f16 = Uint16Array.from([0x3c00, 0xc000, 0x7bff, 0x0001]);
    // bf16 1.0, -0.5
    const bf16 = Uint16Array.from([0x3f80, 0xbf00]);
    const f64 = Float64Array.from([0.1, -3]);
    const i64 = BigInt64Array.from([-5n, 7n]);
    const data = new Uint8Array(8 + 4 + 16 + 16);
    data.set(new Uint8Array(f16.buffer), 0);
    data.set(new Uint8Array(bf16.buffer), 8);
    data.set(new Uint8Array(f64.buffer), 12);
    data.set(new Uint8Array(i64.buffer), 28);
    const file = rawFile(
      {
        h: { dtype: 'F16', shape: [4], data_offsets: [0, 8] },
        b: { dtype: 'BF16', shape: [2], data_offsets: [8, 12] },
        d: { dtype: 'F64', shape: [2], data_offsets: [12, 28] },
        l: { dtype: 'I64', shape: [2], data_offsets: [28, 44] },
      },
      data,
    );
    const { tensors } = parseSafetensors(file);
    expect([...(tensors.get('h') as HostTensor).data]).toEqual([1, -2, 65504, 2 ** -24]);
    expect([...(tensors.get('b') as HostTensor).data]).toEqual([1, -0.5]);
    expect((tensors.get('d') as HostTensor).data).toEqual(Float32Array.from([0.1, -3]));
    const l = tensors.get('l') as HostTensor;
    expect(l.dtype).toBe('i64');
    expect(l.data).toEqual(Int32Array.from([-5, 7]));
  });
});

describe('safetensors hostile files', () => {
  const good = {
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'U8', shape: [4], data_offsets: [8, 12] },
  };
  const data = new Uint8Array(12);

  async function opening(bytes: Uint8Array, name: string): Promise<string> {
    const file = path.join(dir, name);
    await fs.writeFile(file, bytes);
    try {
      const f = await loadSafetensors(file);
      await f.close();
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      const msg = (e as Error).message;
      expect(msg).toContain(file);
      // The in-memory parser must refuse it too.
      expect(() => parseSafetensors(bytes, name)).toThrow(UserError);
      return msg;
    }
    throw new Error(`${name} was accepted`);
  }

  it('accepts the well-formed base case', async () => {
    const file = path.join(dir, 'good.safetensors');
    await fs.writeFile(file, rawFile(good, data));
    const f = await loadSafetensors(file);
    expect(f.keys()).toEqual(['a', 'b']);
    await f.close();
  });

  it('refuses a truncated file', async () => {
    const full = rawFile(good, data);
    expect(await opening(full.subarray(0, full.length - 3), 'trunc.safetensors')).toMatch(
      /tensor "b".*past the end/,
    );
    expect(await opening(full.subarray(0, 5), 'tiny.safetensors')).toMatch(/shorter than the header/);
    expect(await opening(full.subarray(0, 20), 'cut-header.safetensors')).toMatch(/runs past the end/);
  });

  it('refuses a huge header length without allocating it', async () => {
    const msg = await opening(rawFile(good, data, BigInt(MAX_HEADER_SIZE) + 1n), 'huge.safetensors');
    expect(msg).toMatch(/exceeds the 100000000-byte limit/);
    expect(await opening(rawFile(good, data, 0xffffffffffffffffn), 'huge2.safetensors')).toMatch(/exceeds/);
  });

  it('refuses overlapping, gapped, out-of-bounds and uncovered offsets', async () => {
    const overlap = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'U8', shape: [4], data_offsets: [4, 8] },
    };
    expect(await opening(rawFile(overlap, new Uint8Array(8)), 'overlap.safetensors')).toMatch(
      /tensor "b".*previous tensor ends at 8/,
    );
    const gap = { a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
    expect(await opening(rawFile(gap, new Uint8Array(8)), 'gap.safetensors')).toMatch(/tensor "a"/);
    const oob = { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } };
    expect(await opening(rawFile(oob, new Uint8Array(8)), 'oob.safetensors')).toMatch(
      /tensor "a".*past the end/,
    );
    expect(await opening(rawFile(good, new Uint8Array(20)), 'extra.safetensors')).toMatch(
      /cover 12 bytes but the data is 20/,
    );
    const reversed = { a: { dtype: 'U8', shape: [0], data_offsets: [4, 0] } };
    expect(await opening(rawFile(reversed, new Uint8Array(4)), 'rev.safetensors')).toMatch(/tensor "a"/);
  });

  it('refuses shape/size mismatches and overflowing shapes', async () => {
    const mismatch = { a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } };
    expect(await opening(rawFile(mismatch, new Uint8Array(8)), 'mismatch.safetensors')).toMatch(
      /tensor "a" is F32 \[3\] = 12 bytes but its data_offsets span 8/,
    );
    const overflow = { a: { dtype: 'F32', shape: [2 ** 30, 2 ** 30, 2 ** 30], data_offsets: [0, 8] } };
    expect(await opening(rawFile(overflow, new Uint8Array(8)), 'overflow.safetensors')).toMatch(/overflows/);
    const negative = { a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } };
    expect(await opening(rawFile(negative, new Uint8Array(8)), 'neg.safetensors')).toMatch(/invalid shape/);
    const frac = { a: { dtype: 'F32', shape: [1.5], data_offsets: [0, 8] } };
    expect(await opening(rawFile(frac, new Uint8Array(8)), 'frac.safetensors')).toMatch(/invalid shape/);
  });

  it('refuses bad dtypes, bad entries, invalid UTF-8, non-JSON and non-object JSON', async () => {
    const badDtype = { a: { dtype: 'F33', shape: [2], data_offsets: [0, 8] } };
    expect(await opening(rawFile(badDtype, new Uint8Array(8)), 'dtype.safetensors')).toMatch(
      /tensor "a".*unknown dtype "F33"/,
    );
    const noOffsets = { a: { dtype: 'F32', shape: [2] } };
    expect(await opening(rawFile(noOffsets, new Uint8Array(8)), 'nooff.safetensors')).toMatch(
      /invalid data_offsets/,
    );
    const noShape = { a: { dtype: 'F32', data_offsets: [0, 8] } };
    expect(await opening(rawFile(noShape, new Uint8Array(8)), 'noshape.safetensors')).toMatch(
      /invalid shape/,
    );
    const notEntry = { a: 5 };
    expect(await opening(rawFile(notEntry, new Uint8Array(0)), 'notentry.safetensors')).toMatch(
      /not an object/,
    );
    const badMeta = { __metadata__: { a: 1 } };
    expect(await opening(rawFile(badMeta, new Uint8Array(0)), 'meta.safetensors')).toMatch(/__metadata__/);
    const utf8 = Uint8Array.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]); // {"\xff\xfe":1}
    expect(await opening(rawFile(utf8, new Uint8Array(0)), 'utf8.safetensors')).toMatch(/not valid UTF-8/);
    const notJson = new TextEncoder().encode('{"a": ');
    expect(await opening(rawFile(notJson, new Uint8Array(0)), 'notjson.safetensors')).toMatch(
      /not valid JSON/,
    );
    expect(await opening(rawFile([1, 2], new Uint8Array(0)), 'array.safetensors')).toMatch(
      /does not start with "\{"/,
    );
    const arrayInBraces = new TextEncoder().encode('{"a":[1]}');
    expect(await opening(rawFile(arrayInBraces, new Uint8Array(0)), 'arr2.safetensors')).toMatch(
      /tensor "a" is not an object/,
    );
  });

  it('loads a valid file with an unsupported dtype but refuses to read that tensor', async () => {
    const file = path.join(dir, 'u16.safetensors');
    await fs.writeFile(
      file,
      rawFile({ a: { dtype: 'U16', shape: [2], data_offsets: [0, 4] } }, new Uint8Array(4)),
    );
    const f = await loadSafetensors(file);
    try {
      expect(f.info('a').dtype).toBeUndefined();
      await expect(f.tensor('a')).rejects.toThrow(/tensor "a" has dtype U16/);
    } finally {
      await f.close();
    }
  });

  it('names a missing file', async () => {
    await expect(loadSafetensors(path.join(dir, 'missing.safetensors'))).rejects.toThrow(
      /cannot open .*missing\.safetensors: ENOENT/,
    );
  });
});
