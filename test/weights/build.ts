/**
 * Writers for hand-made (often hostile) pickles and PyTorch files: a tiny pickle assembler, a stored-zip writer
 * and the torch.save zip / legacy / TorchScript layouts, so tests can make the malformed files they need
 * without Python.
 */
import { crc32 } from 'node:zlib';

/** A pickle program, op by op. Methods return `this` so programs read top to bottom. */
export class PickleWriter {
  private readonly parts: Buffer[] = [];

  raw(...bytes: Array<number | Uint8Array | string>): this {
    for (const b of bytes) {
      if (typeof b === 'number') this.parts.push(Buffer.from([b]));
      else if (typeof b === 'string') this.parts.push(Buffer.from(b, 'latin1'));
      else this.parts.push(Buffer.from(b));
    }
    return this;
  }

  proto(n = 2): this {
    return this.raw(0x80, n);
  }
  mark(): this {
    return this.raw(0x28);
  }
  stop(): this {
    return this.raw(0x2e);
  }
  none(): this {
    return this.raw(0x4e);
  }
  bool(v: boolean): this {
    return this.raw(v ? 0x88 : 0x89);
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    if (n >= -(2 ** 31) && n < 2 ** 31) {
      const b = Buffer.alloc(4);
      b.writeInt32LE(n);
      return this.raw(0x4a, b);
    }
    return this.long(BigInt(n));
  }
  /** LONG1 (or LONG4 when `four`) of the two's-complement little-endian bytes of v. */
  long(v: bigint, four = false): this {
    const bytes: number[] = [];
    let x = v;
    for (;;) {
      bytes.push(Number(x & 0xffn));
      x >>= 8n;
      const signOk = (bytes[bytes.length - 1] & 0x80) === (x < 0n ? 0x80 : 0);
      if ((x === 0n || x === -1n) && signOk) break;
    }
    return this.longBytes(Uint8Array.from(bytes), four);
  }
  longBytes(bytes: Uint8Array, four = false): this {
    if (!four) return this.raw(0x8a, bytes.length, bytes);
    const n = Buffer.alloc(4);
    n.writeUInt32LE(bytes.length);
    return this.raw(0x8b, n, bytes);
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length < 256) return this.raw(0x8c, b.length, b);
    const n = Buffer.alloc(4);
    n.writeUInt32LE(b.length);
    return this.raw(0x58, n, b);
  }
  bytes(b: Uint8Array): this {
    const n = Buffer.alloc(4);
    n.writeUInt32LE(b.length);
    return this.raw(0x42, n, b);
  }
  /** GLOBAL "module\nname\n" (names may hold any byte but a newline). */
  global(module: string, name: string): this {
    return this.raw(0x63, `${module}\n${name}\n`);
  }
  emptyDict(): this {
    return this.raw(0x7d);
  }
  emptyList(): this {
    return this.raw(0x5d);
  }
  emptyTuple(): this {
    return this.raw(0x29);
  }
  emptySet(): this {
    return this.raw(0x8f);
  }
  tuple(): this {
    return this.raw(0x74);
  }
  tuple1(): this {
    return this.raw(0x85);
  }
  tuple2(): this {
    return this.raw(0x86);
  }
  list(): this {
    return this.raw(0x6c);
  }
  appends(): this {
    return this.raw(0x65);
  }
  setitem(): this {
    return this.raw(0x73);
  }
  setitems(): this {
    return this.raw(0x75);
  }
  additems(): this {
    return this.raw(0x90);
  }
  frozenset(): this {
    return this.raw(0x91);
  }
  reduce(): this {
    return this.raw(0x52);
  }
  newobj(): this {
    return this.raw(0x81);
  }
  build(): this {
    return this.raw(0x62);
  }
  binpersid(): this {
    return this.raw(0x51);
  }
  put(i: number): this {
    const n = Buffer.alloc(4);
    n.writeUInt32LE(i);
    return this.raw(0x72, n);
  }
  get(i: number): this {
    const n = Buffer.alloc(4);
    n.writeUInt32LE(i);
    return this.raw(0x6a, n);
  }
  dup(): this {
    return this.raw(0x32);
  }
  pop(): this {
    return this.raw(0x30);
  }

  /** A tuple of small ints: `(a, b, ...)`. */
  intTuple(values: readonly number[]): this {
    this.mark();
    for (const v of values) this.int(v);
    return this.tuple();
  }

  /**
   * `torch._utils._rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())`, with
   * the storage as a zip (5 fields) or legacy (6 fields, no view) persistent id.
   */
  tensor(t: TensorSpec, legacy = false): this {
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark()
      .str('storage')
      .global('torch', t.storageType ?? 'FloatStorage')
      .str(t.key)
      .str('cpu');
    this.int(t.numel);
    if (legacy) this.none();
    this.tuple().binpersid();
    this.int(t.offset ?? 0)
      .intTuple(t.size)
      .intTuple(t.stride);
    this.bool(false).global('collections', 'OrderedDict').emptyTuple().reduce();
    return this.tuple().reduce();
  }

  /** `{name: tensor, ...}` then STOP. */
  stateDict(tensors: Readonly<Record<string, TensorSpec>>, legacy = false): this {
    this.proto(2).emptyDict();
    for (const [name, t] of Object.entries(tensors)) this.str(name).tensor(t, legacy).setitem();
    return this.stop();
  }

  /** `n` copies of what `fragment` writes, built once (large hostile files stay quick to make). */
  repeat(n: number, fragment: (w: PickleWriter) => unknown): this {
    const w = new PickleWriter();
    fragment(w);
    const b = w.toBuffer();
    const out = Buffer.alloc(b.length * n);
    for (let i = 0; i < n; i++) b.copy(out, i * b.length);
    this.parts.push(out);
    return this;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export interface TensorSpec {
  /** Storage key (zip: data/<key>). */
  key: string;
  /** Elements in the storage. */
  numel: number;
  size: number[];
  stride: number[];
  offset?: number;
  storageType?: string;
}

/** A zip archive of stored (uncompressed) entries, as torch.save writes them. */
export function zipStored(entries: ReadonlyArray<[string, Uint8Array]>): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of entries) {
    const nameBytes = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    locals.push(local, nameBytes, Buffer.from(data));
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(data.length, 20);
    cd.writeUInt32LE(data.length, 24);
    cd.writeUInt16LE(nameBytes.length, 28);
    cd.writeUInt32LE(offset, 42);
    central.push(cd, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const cdBytes = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cdBytes.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cdBytes, end]);
}

/** A torch.save zip: archive/data.pkl, archive/data/<key> for each storage, archive/version. */
export function torchZip(
  pkl: Uint8Array,
  storages: Readonly<Record<string, Uint8Array>>,
  extra: ReadonlyArray<[string, Uint8Array]> = [],
): Buffer {
  return zipStored([
    ['archive/data.pkl', pkl],
    ...Object.entries(storages).map(([k, v]): [string, Uint8Array] => [`archive/data/${k}`, v]),
    ['archive/version', Buffer.from('3\n')],
    ...extra,
  ]);
}

/** Zero bytes for `numel` f32 elements (or filled with `value`). */
export function f32Storage(numel: number, value = 0): Uint8Array {
  return new Uint8Array(new Float32Array(numel).fill(value).buffer);
}

/** The legacy torch.save layout: magic, protocol, sys_info, the object pickle, the keys, the storages. */
export function torchLegacy(
  objectPickle: Uint8Array,
  storages: ReadonlyArray<[string, Uint8Array, number]>,
): Buffer {
  const magic = new PickleWriter().proto(2).long(0x1950a86a20f9469cfc6cn).stop().toBuffer();
  const protocol = new PickleWriter().proto(2).int(1001).stop().toBuffer();
  const sysInfo = new PickleWriter()
    .proto(2)
    .emptyDict()
    .str('little_endian')
    .bool(true)
    .setitem()
    .stop()
    .toBuffer();
  const keys = new PickleWriter().proto(2).mark();
  for (const [k] of storages) keys.str(k);
  const parts: Buffer[] = [
    magic,
    protocol,
    sysInfo,
    Buffer.from(objectPickle),
    keys.list().stop().toBuffer(),
  ];
  for (const [, bytes, numel] of storages) {
    const count = Buffer.alloc(8);
    count.writeBigInt64LE(BigInt(numel));
    parts.push(count, Buffer.from(bytes));
  }
  return Buffer.concat(parts);
}

/** A TorchScript archive whose root module (class `__torch__.M`) holds `tensors` as attributes. */
export function torchScriptZip(
  tensors: Readonly<Record<string, TensorSpec>>,
  storages: Readonly<Record<string, Uint8Array>>,
): Buffer {
  const p = new PickleWriter().proto(2).global('__torch__', 'M').emptyTuple().newobj().emptyDict();
  for (const [name, t] of Object.entries(tensors)) p.str(name).tensor(t).setitem();
  p.build().stop();
  return torchZip(p.toBuffer(), storages, [
    ['archive/constants.pkl', new PickleWriter().proto(2).emptyTuple().stop().toBuffer()],
    ['archive/code/__torch__.py', Buffer.from('')],
  ]);
}

/** The entries of a zip whose members are stored (as torch.save and torch.jit.save write them), in order. */
export function readStoredZip(zip: Uint8Array): Array<[string, Uint8Array]> {
  const b = Buffer.from(zip.buffer, zip.byteOffset, zip.length);
  let end = b.length - 22;
  while (end >= 0 && b.readUInt32LE(end) !== 0x06054b50) end--;
  if (end < 0) throw new Error('no end of central directory');
  const count = b.readUInt16LE(end + 10);
  let at = b.readUInt32LE(end + 16);
  const out: Array<[string, Uint8Array]> = [];
  for (let i = 0; i < count; i++) {
    if (b.readUInt32LE(at) !== 0x02014b50) throw new Error('bad central directory');
    if (b.readUInt16LE(at + 10) !== 0) throw new Error('a compressed entry');
    const size = b.readUInt32LE(at + 24);
    const nameLen = b.readUInt16LE(at + 28);
    const extraLen = b.readUInt16LE(at + 30);
    const commentLen = b.readUInt16LE(at + 32);
    const local = b.readUInt32LE(at + 42);
    const name = b.subarray(at + 46, at + 46 + nameLen).toString('utf8');
    const data = local + 30 + b.readUInt16LE(local + 26) + b.readUInt16LE(local + 28);
    out.push([name, Uint8Array.from(b.subarray(data, data + size))]);
    at += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}
