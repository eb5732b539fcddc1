/**
 * Writing a state dict as `torch.save(state_dict)` does (the zip format, torch >= 1.6), so that a checkpoint
 * goes back to PyTorch code (`model.load_state_dict(torch.load(f))`):
 *
 *   archive/data.pkl     pickle (protocol 2) of an OrderedDict name -> torch._utils._rebuild_tensor_v2(
 *                        persistent storage id ('storage', torch.FloatStorage, key, 'cpu', numel), offset 0,
 *                        size, contiguous stride, False, OrderedDict())
 *   archive/data/<key>   each storage's raw little-endian bytes, 64-byte aligned in the file as torch aligns them
 *   archive/version      "3", archive/byteorder "little"
 *
 * Tensors that share one data array (GPT-2's lm_head tied to wte) share one storage, as in torch.
 * Entries are stored uncompressed; files over 4 GiB (which need ZIP64) are refused.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { HostTensor, StateDict } from './host.js';

const STORAGE_TYPE: Record<string, string> = {
  f32: 'FloatStorage',
  f16: 'HalfStorage',
  bf16: 'BFloat16Storage',
  i64: 'LongStorage',
  i32: 'IntStorage',
  u8: 'ByteStorage',
};

/** A protocol-2 pickle, built opcode by opcode (only what a state dict needs). */
class PickleWriter {
  private parts: Buffer[] = [Buffer.from([0x80, 2])];
  op(...bytes: number[]): void {
    this.parts.push(Buffer.from(bytes));
  }
  global(module: string, name: string): void {
    this.parts.push(Buffer.from(`c${module}\n${name}\n`, 'utf8'));
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x58; // BINUNICODE
    h.writeUInt32LE(b.length, 1);
    this.parts.push(h, b);
  }
  int(n: number): void {
    if (n >= 0 && n < 256)
      this.op(0x4b, n); // BININT1
    else if (n >= -(2 ** 31) && n < 2 ** 31) {
      const b = Buffer.alloc(5);
      b[0] = 0x4a; // BININT
      b.writeInt32LE(n, 1);
      this.parts.push(b);
    } else {
      // LONG1: little-endian two's complement
      let v = BigInt(n);
      const bytes: number[] = [];
      while (v !== 0n && v !== -1n) {
        bytes.push(Number(v & 0xffn));
        v >>= 8n;
      }
      if (bytes.length === 0 || (bytes[bytes.length - 1] & 0x80) !== (n < 0 ? 0x80 : 0))
        bytes.push(n < 0 ? 0xff : 0);
      this.op(0x8a, bytes.length, ...bytes);
    }
  }
  tuple(items: readonly number[]): void {
    this.op(0x28); // MARK
    for (const i of items) this.int(i);
    this.op(0x74); // TUPLE
  }
  emptyOrderedDict(): void {
    this.global('collections', 'OrderedDict');
    this.op(0x29, 0x52); // EMPTY_TUPLE, REDUCE
  }
  done(): Buffer {
    this.op(0x2e); // STOP
    return Buffer.concat(this.parts);
  }
}

let CRC_TABLE: Uint32Array | undefined;
function crc32(data: Uint8Array): number {
  if (!CRC_TABLE) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function bytesOf(t: HostTensor): Uint8Array {
  const d = t.data as ArrayBufferView;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

/** A stored (uncompressed) zip, each entry's data aligned to 64 bytes with an extra field, as torch does. */
function zipStored(entries: ReadonlyArray<{ name: string; data: Uint8Array }>): Buffer[] {
  const out: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const crc = crc32(e.data);
    const headerLen = 30 + name.length;
    const pad = (64 - ((offset + headerLen + 4) % 64)) % 64;
    const extra = Buffer.alloc(4 + pad);
    extra.writeUInt16LE(0x4246, 0); // "FB": torch's padding field
    extra.writeUInt16LE(pad, 2);
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(20, 4); // version needed
    h.writeUInt16LE(0, 6); // flags
    h.writeUInt16LE(0, 8); // stored
    h.writeUInt16LE(0, 10); // time
    h.writeUInt16LE(0x21, 12); // date 1980-01-01
    h.writeUInt32LE(crc, 14);
    h.writeUInt32LE(e.data.length, 18);
    h.writeUInt32LE(e.data.length, 22);
    h.writeUInt16LE(name.length, 26);
    h.writeUInt16LE(extra.length, 28);
    out.push(h, name, extra, Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4); // version made by
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(0, 8);
    c.writeUInt16LE(0, 10);
    c.writeUInt16LE(0, 12);
    c.writeUInt16LE(0x21, 14);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(e.data.length, 20);
    c.writeUInt32LE(e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(0, 30); // extra
    c.writeUInt16LE(0, 32); // comment
    c.writeUInt16LE(0, 34); // disk
    c.writeUInt16LE(0, 36); // internal attrs
    c.writeUInt32LE(0, 38); // external attrs
    c.writeUInt32LE(offset, 42);
    central.push(c, name);
    offset += headerLen + extra.length + e.data.length;
    if (offset > 0xffffffff)
      throw new UserError('the state dict is over 4 GiB; this writer does not do ZIP64');
  }
  const cdSize = central.reduce((n, b) => n + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cdSize, 12);
  end.writeUInt32LE(offset, 16);
  return [...out, ...central, end];
}

/** The torch.save zip of `sd` as bytes (in memory: a few hundred MB for GPT-2 small). */
export function torchStateDictBytes(sd: StateDict, archive = 'archive'): Buffer {
  const p = new PickleWriter();
  p.emptyOrderedDict();
  p.op(0x28); // MARK
  const storages = new Map<ArrayBufferView, string>();
  const data: Array<{ name: string; data: Uint8Array }> = [];
  for (const [name, t] of sd) {
    const type = STORAGE_TYPE[t.dtype];
    if (!type) throw new UserError(`${name}: dtype ${t.dtype} has no torch storage type`);
    const view = t.data as ArrayBufferView;
    let key = storages.get(view);
    if (key === undefined) {
      key = String(storages.size);
      storages.set(view, key);
      data.push({ name: `${archive}/data/${key}`, data: bytesOf(t) });
    }
    const numel = t.shape.reduce((a, d) => a * d, 1);
    const stride = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, d) => a * d, 1));
    p.str(name);
    p.global('torch._utils', '_rebuild_tensor_v2');
    p.op(0x28); // MARK (the args tuple)
    p.op(0x28); // MARK (the persistent id)
    p.str('storage');
    p.global('torch', type);
    p.str(key);
    p.str('cpu');
    p.int(numel);
    p.op(0x74, 0x51); // TUPLE, BINPERSID
    p.int(0);
    p.tuple(t.shape);
    p.tuple(stride);
    p.op(0x89); // NEWFALSE (requires_grad)
    p.emptyOrderedDict(); // backward hooks
    p.op(0x74, 0x52); // TUPLE, REDUCE
  }
  p.op(0x75); // SETITEMS
  const entries = [
    { name: `${archive}/data.pkl`, data: p.done() },
    { name: `${archive}/byteorder`, data: Buffer.from('little') },
    ...data,
    { name: `${archive}/version`, data: Buffer.from('3\n') },
  ];
  return Buffer.concat(zipStored(entries));
}

/** Write `sd` as a torch.save file, atomically. */
export async function saveTorchStateDict(file: string, sd: StateDict): Promise<void> {
  const bytes = torchStateDictBytes(sd);
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await writeFileAtomic(file, bytes);
}
