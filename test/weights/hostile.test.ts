/**
 * Hand-made hostile files, one or more per class of attack on the loaders (#13): views that ask for far more
 * memory than the file holds, pickles whose cost grows faster than their size, names that would put control
 * characters or megabytes into an error message. Each must fail at once with a short, one-line UserError (or
 * load, where the input is legal) in time and memory that follow the file size.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadPickle, loadTorchCheckpoint } from '../../src/weights/torch.js';
import type { PickleObject } from '../../src/weights/torch.js';
import { loadTorchScript } from '../../src/weights/torchscript.js';
import { parseSafetensors } from '../../src/weights/safetensors.js';
import { UserError } from '../../src/util/errors.js';
import type { HostTensor } from '../../src/weights/host.js';
import { f32Storage, PickleWriter, torchLegacy, torchScriptZip, torchZip } from './build.js';
import type { TensorSpec } from './build.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-hostile-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function write(name: string, bytes: Uint8Array): Promise<string> {
  const file = path.join(dir, name);
  await fs.writeFile(file, bytes);
  return file;
}

/** The message of the UserError `run` fails with; also checks it is one short line without control characters. */
async function userError(run: () => Promise<unknown>): Promise<string> {
  let error: unknown;
  try {
    await run();
  } catch (e) {
    error = e;
  }
  if (error === undefined) throw new Error('accepted');
  if (!(error instanceof UserError)) throw error;
  const msg = error.message;
  // eslint-disable-next-line no-control-regex
  expect(msg).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  expect(msg.length).toBeLessThan(600);
  return msg;
}

/** One f32 element, viewed as `size` with `stride`. */
function expanded(size: number[], stride: number[]): TensorSpec {
  return { key: '0', numel: 1, size, stride };
}

describe('views that ask for more than the storages hold', () => {
  const cases: Array<[string, TensorSpec]> = [
    ['size [2^32], stride [0]', expanded([2 ** 32], [0])],
    ['size [2^33], stride [0]', expanded([2 ** 33], [0])],
    ['size [65536, 65536], strides [0, 0]', expanded([65536, 65536], [0, 0])],
    // Overlapping, not zero: a window sliding by one element over 1000 elements, 2^24 wide.
    ['sliding window', { key: '0', numel: 1000, size: [2 ** 24, 1000 - 2 ** 4], stride: [0, 1] }],
  ];

  it.each(cases)('zip: %s is refused before anything is allocated', async (_, spec) => {
    const pkl = new PickleWriter().stateDict({ w: spec }).toBuffer();
    const file = await write('view.pt', torchZip(pkl, { '0': f32Storage(spec.numel) }));
    expect(await userError(() => loadTorchCheckpoint(file))).toMatch(
      /view\.pt: its tensors hold \d+ elements but its storages only \d+ \(a tensor of size \[.*\] and stride \[.*\] repeats the \d+ elements of storage "0"\); refusing/,
    );
  });

  it.each(cases)('legacy: %s is refused', async (_, spec) => {
    const pkl = new PickleWriter().stateDict({ w: spec }, true).toBuffer();
    const file = await write('view_legacy.pt', torchLegacy(pkl, [['0', f32Storage(spec.numel), spec.numel]]));
    expect(await userError(() => loadTorchCheckpoint(file))).toMatch(
      /its tensors hold \d+ elements but its storages only/,
    );
  });

  it.each(cases)('TorchScript: %s is refused', async (_, spec) => {
    const file = await write('view_ts.pt', torchScriptZip({ w: spec }, { '0': f32Storage(spec.numel) }));
    expect(await userError(() => loadTorchScript(file))).toMatch(
      /its tensors hold \d+ elements but its storages only/,
    );
  });

  it('embedded storages (_load_from_bytes in a plain pickle): refused', async () => {
    const spec = expanded([2 ** 32], [0]);
    const blob = torchLegacy(new PickleWriter().proto(2).tensor(spec, true).stop().toBuffer(), [
      ['0', f32Storage(1), 1],
    ]);
    const pkl = new PickleWriter().proto(2).emptyDict().str('emb');
    pkl.global('torch.storage', '_load_from_bytes').bytes(blob).tuple1().reduce().setitem().stop();
    const file = await write('view.pkl', pkl.toBuffer());
    expect(await userError(() => loadPickle(file))).toMatch(
      /its tensors hold \d+ elements but its storages only/,
    );
  });

  it('tied weights and a small expanded view still load', async () => {
    const pkl = new PickleWriter()
      .stateDict({
        a: { key: '0', numel: 6, size: [2, 3], stride: [3, 1] },
        tied: { key: '0', numel: 6, size: [2, 3], stride: [3, 1] },
        transposed: { key: '0', numel: 6, size: [3, 2], stride: [1, 3] },
        expanded: { key: '1', numel: 1, size: [1000, 4], stride: [0, 0] },
      })
      .toBuffer();
    const data = Float32Array.from([0, 1, 2, 3, 4, 5]);
    const file = await write(
      'ok.pt',
      torchZip(pkl, { '0': new Uint8Array(data.buffer), '1': f32Storage(1, 7) }),
    );
    const sd = await loadTorchCheckpoint(file);
    expect([...(sd.get('tied') as HostTensor).data]).toEqual([0, 1, 2, 3, 4, 5]);
    expect([...(sd.get('transposed') as HostTensor).data]).toEqual([0, 3, 1, 4, 2, 5]);
    const e = sd.get('expanded') as HostTensor;
    expect(e.shape).toEqual([1000, 4]);
    expect(e.data.every((v) => v === 7)).toBe(true);
  });

  it('10,000 strided views of one 1 MB storage decode it once, not once per view', async () => {
    const numel = 262_144;
    // ~120 bytes of pickle per view; before, each view decoded the 1 MB it spans (10 GB of copies in all).
    const q = new PickleWriter().proto(2).emptyDict().str('views').mark();
    q.repeat(10_000, (w) => w.tensor({ key: '0', numel, size: [2], stride: [numel - 1] }));
    q.list().setitem().stop();
    const data = new Float32Array(numel).map((_, i) => i);
    const file = await write('strided.pt', torchZip(q.toBuffer(), { '0': new Uint8Array(data.buffer) }));
    const v = (await loadPickle(file)) as PickleObject;
    const views = v.views as HostTensor[];
    expect(views).toHaveLength(10_000);
    expect([...views[3].data]).toEqual([0, numel - 1]);
  });

  it('a tensor of 100,000 dimensions is refused with a short message', async () => {
    const spec = {
      key: '0',
      numel: 1,
      size: new Array<number>(100_000).fill(1),
      stride: new Array<number>(100_000).fill(1),
    };
    const file = await write(
      'rank.pt',
      torchZip(new PickleWriter().stateDict({ w: spec }).toBuffer(), { '0': f32Storage(1) }),
    );
    expect(await userError(() => loadTorchCheckpoint(file))).toMatch(
      /a tensor has 100000 dimensions \(more than 64\)/,
    );
  });
});

describe('pickles whose cost would grow faster than their size', () => {
  /** t0 = ('x',); t(i+1) = (t(i), t(i)), each memoized: 2^levels leaves in a few hundred bytes. */
  function sharedTuples(p: PickleWriter, levels: number): PickleWriter {
    p.str('x').tuple1().put(0);
    for (let i = 1; i <= levels; i++)
      p.get(i - 1)
        .get(i - 1)
        .tuple2()
        .put(i);
    return p;
  }

  it('shared nested tuples as a dict key, a set element, a frozenset element and an OrderedDict key', async () => {
    const levels = 64;
    const p = sharedTuples(new PickleWriter().proto(2), levels).pop();
    p.emptyDict();
    p.str('dict').emptyDict().get(levels).int(1).setitem().get(levels).int(2).setitem().setitem();
    p.str('set')
      .emptySet()
      .mark()
      .get(levels)
      .get(levels - 1)
      .get(levels)
      .additems()
      .setitem();
    p.str('frozen').mark().get(levels).get(levels).get(0).frozenset().setitem();
    p.str('ordered')
      .global('collections', 'OrderedDict')
      .mark()
      .get(levels)
      .int(3)
      .tuple2()
      .get(levels)
      .int(4)
      .tuple2();
    p.list().tuple1().reduce().setitem();
    const file = await write('tuples.pkl', p.stop().toBuffer());
    expect((await fs.stat(file)).size).toBeLessThan(1500);
    const v = (await loadPickle(file)) as PickleObject;
    // Equal keys collapse as in Python: the second SETITEM replaces the first.
    expect((v.dict as Map<unknown, unknown>).size).toBe(1);
    expect([...(v.dict as Map<unknown, unknown>).values()]).toEqual([2]);
    expect((v.set as Set<unknown>).size).toBe(2);
    expect((v.frozen as Set<unknown>).size).toBe(2);
    expect([...(v.ordered as Map<unknown, unknown>).values()]).toEqual([4]);
  });

  it('tuples equal by value (not shared) are one key; a list key is unhashable', async () => {
    const p = new PickleWriter().proto(2).emptyDict();
    p.mark().int(1).str('a').tuple().int(1).setitem();
    p.mark().bool(true).str('a').tuple().int(2).setitem();
    p.stop();
    const v = (await loadPickle(await write('eq.pkl', p.toBuffer()))) as Map<unknown, unknown>;
    expect([...v.entries()]).toEqual([[[1, 'a'], 2]]);
    const l = new PickleWriter().proto(2).emptyDict().mark().int(1).list().int(1).setitem().stop();
    expect(await userError(async () => loadPickle(await write('list_key.pkl', l.toBuffer())))).toMatch(
      /malformed pickle \(unhashable dict key \(a list\)/,
    );
  });

  it('LONG4 longer than any checkpoint integer is refused; long integers decode exactly', async () => {
    const big = new PickleWriter()
      .proto(2)
      .longBytes(new Uint8Array(256 * 1024).fill(0x5a), true)
      .stop();
    expect(await userError(async () => loadPickle(await write('long4.pkl', big.toBuffer())))).toMatch(
      /integer of 262144 bytes is too long/,
    );
    const values = [2n ** 2040n + 12345n, -(3n ** 1200n), 2n ** 8000n - 1n];
    const p = new PickleWriter().proto(2).mark();
    for (const v of values) p.long(v, true);
    p.long(-(2n ** 100n))
      .list()
      .stop();
    expect(await loadPickle(await write('longs.pkl', p.toBuffer()))).toEqual([...values, -(2n ** 100n)]);
  });

  it('a text INT of a million digits is refused', async () => {
    const p = new PickleWriter().raw('I', '9'.repeat(1_000_000), '\n.');
    expect(await userError(async () => loadPickle(await write('int.pkl', p.toBuffer())))).toMatch(
      /integer of 1000000 digits is too long/,
    );
  });

  it('a million-item APPENDS and a 100 KB string key set 100,000 times load', async () => {
    const p = new PickleWriter().proto(2).emptyDict().str('list').emptyList().mark();
    p.repeat(1_000_000, (w) => w.int(7));
    p.appends().setitem();
    p.str('map').emptyDict().str('k'.repeat(100_000)).put(0).int(0).setitem();
    p.repeat(100_000, (w) => w.get(0).int(9).setitem());
    p.setitem().stop();
    const v = (await loadPickle(await write('big.pkl', p.toBuffer()))) as PickleObject;
    expect((v.list as number[]).length).toBe(1_000_000);
    expect(v.map).toEqual({ ['k'.repeat(100_000)]: 9 });
  });

  it('3,000 nested embedded storages: one short message', async () => {
    let blob = torchLegacy(
      new PickleWriter()
        .proto(2)
        .tensor({ key: '0', numel: 1, size: [1], stride: [1] }, true)
        .stop()
        .toBuffer(),
      [['0', f32Storage(1), 1]],
    );
    for (let i = 0; i < 3000; i++) {
      const inner = new PickleWriter()
        .proto(2)
        .global('torch.storage', '_load_from_bytes')
        .bytes(blob)
        .tuple1()
        .reduce()
        .stop();
      blob = torchLegacy(inner.toBuffer(), []);
    }
    const p = new PickleWriter()
      .proto(2)
      .global('torch.storage', '_load_from_bytes')
      .bytes(blob)
      .tuple1()
      .reduce()
      .stop();
    const msg = await userError(async () => loadPickle(await write('nested.pkl', p.toBuffer())));
    expect(msg).toMatch(/nested\.pkl \(embedded storage\): a storage embedded in an embedded storage$/);
  });
});

describe('names from the file in messages', () => {
  it('an ESC sequence in a GLOBAL name is escaped', async () => {
    const p = new PickleWriter().proto(2).global('os\x1b[2J\x1b]0;pwned\x07', 'system\x9b31m').stop();
    const msg = await userError(async () => loadPickle(await write('esc.pkl', p.toBuffer())));
    expect(msg).toContain('refusing to load os\\x1b[2J\\x1b]0;pwned\\x07.system\\x9b31m from ');
  });

  it('text FLOATs named like Object.prototype members and bad \\U escapes are malformed, not internal errors', async () => {
    for (const t of ['toString', 'constructor', '__proto__', '', '0x10']) {
      const p = new PickleWriter().raw('F', t, '\n.');
      expect(await userError(async () => loadPickle(await write('float.pkl', p.toBuffer())))).toMatch(
        /malformed pickle \(bad float ".*" at byte 0/,
      );
    }
    const ok = new PickleWriter().raw('(F1.5\nF-2e-3\nFinf\nF-inf\nl.');
    expect(await loadPickle(await write('floats.pkl', ok.toBuffer()))).toEqual([
      1.5,
      -2e-3,
      Infinity,
      -Infinity,
    ]);
    const u = new PickleWriter().raw('V\\UFFFFFFFF\n.');
    expect(await userError(async () => loadPickle(await write('u.pkl', u.toBuffer())))).toMatch(
      /malformed pickle \(bad \\U escape in a UNICODE string/,
    );
  });

  it('a megabyte GLOBAL name is cut', async () => {
    const p = new PickleWriter()
      .proto(4)
      .str('m'.repeat(1 << 20))
      .str('n')
      .raw(0x93)
      .stop();
    const msg = await userError(async () => loadPickle(await write('long_name.pkl', p.toBuffer())));
    expect(msg).toMatch(/^refusing to load m{100}\.\.\. \(1048578 characters\) from /);
  });

  it('a storage key with control characters and a huge shape', async () => {
    const key = 'k\x1b[31m\r\nx';
    const spec = {
      key,
      numel: 1,
      size: new Array<number>(30).fill(2),
      stride: new Array<number>(30).fill(1),
    };
    const file = await write('key.pt', torchZip(new PickleWriter().stateDict({ w: spec }).toBuffer(), {}));
    expect(await userError(() => loadTorchCheckpoint(file))).toMatch(
      /reads past the end of storage "k\\x1b\[31m\\x0d\\x0ax" \(1 elements\)$|storage data\/k\\x1b\[31m\\x0d\\x0ax is missing/,
    );
  });

  it('TorchScript class names are escaped', async () => {
    const p = new PickleWriter()
      .proto(2)
      .global('__torch__', 'M\x1b[0m')
      .mark()
      .int(1)
      .tuple()
      .newobj()
      .stop();
    const file = await write('ts_name.pt', torchScriptZipRaw(p.toBuffer()));
    expect(await userError(() => loadTorchScript(file))).toMatch(
      /__torch__\.M\\x1b\[0m is constructed with arguments/,
    );
  });

  it.each(['toString', '__proto__', 'constructor', 'hasOwnProperty', 'valueOf'])(
    'safetensors dtype "%s" is an unknown dtype',
    (dtype) => {
      const file = safetensorsWithHeader({ w: { dtype, shape: [1], data_offsets: [0, 4] } }, 4);
      expect(() => parseSafetensors(file, 'st')).toThrow(
        new RegExp(`^st: not a valid safetensors file: tensor "w" has an unknown dtype "${dtype}"`),
      );
    },
  );

  it('safetensors names and shapes in messages are escaped and cut', () => {
    const file = safetensorsWithHeader(
      { 'a\x1b[31m\u2028b': { dtype: 'F32', shape: new Array(10_000).fill(-1), data_offsets: [0, 0] } },
      0,
    );
    const msg = captured(() => parseSafetensors(file, 'st'));
    // eslint-disable-next-line no-control-regex
    expect(msg).not.toMatch(/[\u0000-\u001f\u2028]/);
    expect(msg).toMatch(
      /tensor "a\\x1b\[31m\\u2028b" has an invalid shape \[-1, -1, -1, -1, -1, -1, -1, -1, \.\.\. \(10000 dims\)\]/,
    );
  });
});

/** A TorchScript-looking zip around a given data.pkl. */
function torchScriptZipRaw(pkl: Uint8Array): Buffer {
  return torchZip(pkl, {}, [
    ['archive/constants.pkl', new PickleWriter().proto(2).emptyTuple().stop().toBuffer()],
  ]);
}

/** A safetensors file with this header (as JSON) and `dataBytes` zero bytes of data. */
function safetensorsWithHeader(header: unknown, dataBytes: number): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(dataBytes)]);
}

function captured(run: () => unknown): string {
  try {
    run();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    return (e as Error).message;
  }
  throw new Error('accepted');
}
