/**
 * PyTorch files without Python: `torch.save` zip archives (PyTorch >= 1.6), the legacy format (magic number,
 * protocol version and sys_info pickles, the object pickle, the storage keys pickle, then the raw storages),
 * and plain pickles holding tensors (the official `parse_coco.py` feature files, whose storages are embedded
 * as legacy `torch.save` blobs through `torch.storage._load_from_bytes`).
 *
 * Everything goes through the restricted unpickler (pickle.ts) with an allowlist of the names torch uses for
 * tensors, storages and plain containers. Tensors come out contiguous and row-major whatever their storage
 * offset and strides (views, transposes). Storage bytes are read lazily and one storage at a time: a zip
 * member is read only when a tensor needs it, so a 600 MB checkpoint is read once, not buffered whole.
 */
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import yauzl from 'yauzl';
import type { Entry, ZipFile } from 'yauzl';
import { errorMessage, UserError } from '../util/errors.js';
import { quoted, safeText, shapeText } from '../util/text.js';
import type { FileDType, HostTensor, StateDict } from './host.js';
import { checkedNumel, decodeElements, DTYPE_BYTES } from './dtype.js';
import { FileSource, KeyHasher, MemorySource, PyDict, PyGlobal, PySet, unpickle } from './pickle.js';
import type { ByteSource, UnpicklePolicy } from './pickle.js';

/** A value from a pickle: Python dicts with only string keys become plain objects, other dicts Maps. */
export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | HostTensor
  | PickleValue[]
  | PickleObject
  | Map<PickleValue, PickleValue>
  | Set<PickleValue>;
export interface PickleObject {
  [key: string]: PickleValue;
}

/** True for tensors produced by these loaders (a shape, a typed array of matching length, a known dtype). */
export function isHostTensor(v: unknown): v is HostTensor {
  if (typeof v !== 'object' || v === null) return false;
  const t = v as Partial<HostTensor>;
  return (
    typeof t.dtype === 'string' &&
    Object.prototype.hasOwnProperty.call(DTYPE_BYTES, t.dtype) &&
    Array.isArray(t.shape) &&
    ArrayBuffer.isView(t.data) &&
    !(t.data instanceof DataView) &&
    checkedNumel(t.shape) === t.data.length
  );
}

/** torch storage class names (pickled as `torch.<Name>`) -> element type. */
const STORAGE_DTYPES: Readonly<Record<string, FileDType>> = {
  FloatStorage: 'f32',
  HalfStorage: 'f16',
  BFloat16Storage: 'bf16',
  DoubleStorage: 'f64',
  LongStorage: 'i64',
  IntStorage: 'i32',
  ShortStorage: 'i16',
  CharStorage: 'i8',
  ByteStorage: 'u8',
  BoolStorage: 'bool',
  UntypedStorage: 'u8',
};

class StorageType extends PyGlobal {
  constructor(
    name: string,
    readonly dtype: FileDType,
  ) {
    super('torch', name);
  }
}

/** A storage: `numel` elements of `dtype`, its bytes either already here or to be read from `source`. */
class Storage {
  bytes: Uint8Array | undefined;
  source: { kind: 'zip'; entry: string } | { kind: 'file'; offset: number } | undefined;
  /** Tensors viewing it, so its bytes can be dropped once they are built. */
  readonly refs: TensorRef[] = [];

  constructor(
    readonly key: string,
    readonly dtype: FileDType,
    readonly numel: number,
  ) {}
}

/** Legacy-format storage views (view_metadata): a window of a root storage. */
class StorageView {
  constructor(
    readonly root: Storage,
    readonly offset: number,
    readonly numel: number,
  ) {}
}

/** A tensor waiting for its storage's bytes (`result` once materialized). */
export class TensorRef {
  result: HostTensor | undefined;
  constructor(
    readonly storage: Storage,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** What one load shares between the unpickler handlers and materialization. */
interface LoadContext {
  readonly file: string;
  readonly refs: TensorRef[];
  /** Storages by key, so shared storages (tied weights) are one object. */
  readonly storages: Map<string, Storage>;
  /** How persistent ids of this container resolve. */
  readonly persistent: 'zip' | 'legacy' | 'none';
  /** Dict and set key equality, shared by every pickle of the load (pickle.ts). */
  readonly hasher: KeyHasher;
  /** True inside a `_load_from_bytes` blob (which may not embed another). */
  readonly embedded?: boolean;
}

/** More dimensions than any tensor has (PyTorch's CUDA kernels stop at 25). */
const MAX_RANK = 64;

/**
 * Views may overlap (stride 0 from `expand`, sliding windows): they then hold more elements than their storage.
 * All the tensors of a file may hold at most twice the elements its storages hold (tied weights: two tensors,
 * one storage) plus this many (16 M, 64 MiB as f32), so a 480-byte file cannot ask for 16 GiB.
 */
const VIEW_SLACK_ELEMENTS = 1 << 24;

function newContext(file: string, persistent: LoadContext['persistent']): LoadContext {
  return { file, refs: [], storages: new Map(), persistent, hasher: new KeyHasher() };
}

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function intTuple(v: unknown, what: string, file: string): number[] {
  if (!Array.isArray(v) || !v.every(isInt)) throw new UserError(`${file}: a tensor has an invalid ${what}`);
  if (v.length > MAX_RANK) {
    throw new UserError(
      `${file}: a tensor has ${v.length} dimensions (more than ${MAX_RANK}); the file is damaged`,
    );
  }
  return v as number[];
}

/** `torch._utils._rebuild_tensor(_v2)(storage, storage_offset, size, stride, ...)`. */
function rebuildTensor(ctx: LoadContext, args: unknown[]): TensorRef {
  const [st, offset, sizeRaw, strideRaw] = args;
  const size = intTuple(sizeRaw, 'size', ctx.file);
  const stride = intTuple(strideRaw, 'stride', ctx.file);
  if (!isInt(offset) || size.length !== stride.length) {
    throw new UserError(`${ctx.file}: a tensor has an invalid storage offset or stride`);
  }
  let storage: Storage;
  let base = offset;
  let limit: number;
  if (st instanceof Storage) {
    storage = st;
    limit = st.numel;
  } else if (st instanceof StorageView) {
    storage = st.root;
    base += st.offset;
    limit = st.offset + st.numel;
  } else {
    throw new UserError(`${ctx.file}: a tensor is rebuilt from something that is not a storage`);
  }
  const numel = checkedNumel(size);
  if (numel === undefined) throw new UserError(`${ctx.file}: a tensor's size ${shapeText(size)} overflows`);
  if (numel > 0) {
    let extent = base + 1;
    for (let i = 0; i < size.length; i++) extent += (size[i] - 1) * stride[i];
    if (!Number.isSafeInteger(extent) || extent > limit) {
      throw new UserError(
        `${ctx.file}: a tensor of size ${shapeText(size)} at offset ${offset} reads past the end of storage ${quoted(storage.key, 40)} (${storage.numel} elements)`,
      );
    }
  }
  const ref = new TensorRef(storage, base, size, stride);
  storage.refs.push(ref);
  ctx.refs.push(ref);
  return ref;
}

/**
 * Names and BUILD targets a zip mode adds to the allowlist (torchscript.ts: TorchScript archives). The base
 * names come first and cannot be overridden.
 */
export interface PolicyExtension {
  resolveGlobal(module: string, name: string): PyGlobal | undefined;
  build(obj: unknown, state: unknown): boolean;
}

/** The names a torch pickle may use. Everything else is refused by the unpickler. */
function torchPolicy(ctx: LoadContext, extension?: PolicyExtension): UnpicklePolicy {
  const rebuildV2 = new PyGlobal('torch._utils', '_rebuild_tensor_v2', (a) => rebuildTensor(ctx, a));
  const table = new Map<string, PyGlobal>();
  const add = (g: PyGlobal): void => void table.set(g.qualname, g);
  add(rebuildV2);
  add(new PyGlobal('torch._utils', '_rebuild_tensor', (a) => rebuildTensor(ctx, a)));
  // Parameters are tensors plus requires_grad / hooks (and a state in newer versions): keep the tensor.
  const parameter = (a: unknown[]): unknown => {
    if (!(a[0] instanceof TensorRef)) throw new UserError(`${ctx.file}: a parameter without a tensor`);
    return a[0];
  };
  add(new PyGlobal('torch._utils', '_rebuild_parameter', parameter));
  add(new PyGlobal('torch._utils', '_rebuild_parameter_with_state', parameter));
  // Tensor subclasses: _rebuild_from_type_v2(func, type, args, state) with the plain Tensor / Parameter types.
  const tensorType = new PyGlobal('torch', 'Tensor');
  const parameterType = new PyGlobal('torch.nn.parameter', 'Parameter');
  add(tensorType);
  add(parameterType);
  add(
    new PyGlobal('torch._tensor', '_rebuild_from_type_v2', (a) => {
      const [fn, type, args] = a;
      if (fn !== rebuildV2 || (type !== tensorType && type !== parameterType) || !Array.isArray(args)) {
        throw new UserError(`${ctx.file}: unsupported tensor subclass`);
      }
      return rebuildTensor(ctx, args);
    }),
  );
  for (const [name, dtype] of Object.entries(STORAGE_DTYPES)) add(new StorageType(name, dtype));
  add(new PyGlobal('torch.storage', '_load_from_bytes', (a) => loadFromBytes(ctx, a[0])));
  add(new PyGlobal('collections', 'OrderedDict', (a) => makeDict(a, ctx)));
  const makeSet = (a: unknown[]): PySet => {
    const s = new PySet(ctx.hasher);
    if (a.length > 0) {
      if (!Array.isArray(a[0])) throw new UserError(`${ctx.file}: set() of a non-list`);
      for (const v of a[0]) s.add(v);
    }
    return s;
  };
  // Protocol-2 pickles spell builtins the Python 2 way.
  for (const mod of ['builtins', '__builtin__']) {
    add(new PyGlobal(mod, 'set', makeSet));
    add(new PyGlobal(mod, 'frozenset', makeSet));
  }
  // Protocol 2 pickles bytes as _codecs.encode(str, 'latin1').
  add(
    new PyGlobal('_codecs', 'encode', (a) => {
      const [s, enc] = a;
      if (typeof s !== 'string' || (enc !== 'latin1' && enc !== 'latin-1')) {
        throw new UserError(`${ctx.file}: unsupported _codecs.encode call`);
      }
      return Uint8Array.from(Buffer.from(s, 'latin1'));
    }),
  );

  return {
    resolveGlobal: (module, name) => table.get(`${module}.${name}`) ?? extension?.resolveGlobal(module, name),
    build: extension ? (obj, state) => extension.build(obj, state) : undefined,
    persistentLoad: ctx.persistent === 'none' ? undefined : (pid) => persistentLoad(ctx, pid),
    hasher: ctx.hasher,
  };
}

function makeDict(args: unknown[], ctx: LoadContext): PyDict {
  const file = ctx.file;
  const d = new PyDict(ctx.hasher);
  if (args.length > 0) {
    const items = args[0];
    if (!Array.isArray(items)) throw new UserError(`${file}: OrderedDict() of a non-list`);
    for (const kv of items) {
      if (!Array.isArray(kv) || kv.length !== 2)
        throw new UserError(`${file}: OrderedDict() item is not a pair`);
      d.set(kv[0], kv[1]);
    }
  }
  return d;
}

/**
 * Persistent ids name storages: zip `('storage', type, key, location, numel)`, legacy
 * `('storage', type, root_key, location, numel, view_metadata)`.
 */
function persistentLoad(ctx: LoadContext, pid: unknown): Storage | StorageView {
  if (!Array.isArray(pid) || pid[0] !== 'storage') {
    if (Array.isArray(pid) && pid[0] === 'module') {
      throw new UserError(
        `refusing to load ${ctx.file}: it pickles a whole nn.Module (with its source code); save its state_dict() instead`,
      );
    }
    throw new UserError(`${ctx.file}: unsupported persistent id in the pickle`);
  }
  const [, type, keyRaw, , numel, view] = pid;
  if (!(type instanceof StorageType) || (typeof keyRaw !== 'string' && !isInt(keyRaw)) || !isInt(numel)) {
    throw new UserError(`${ctx.file}: malformed storage reference in the pickle`);
  }
  const key = String(keyRaw);
  let storage = ctx.storages.get(key);
  if (!storage) {
    storage = new Storage(key, type.dtype, numel);
    if (!Number.isSafeInteger(numel * DTYPE_BYTES[type.dtype])) {
      throw new UserError(`${ctx.file}: storage ${quoted(key, 40)} is too large`);
    }
    ctx.storages.set(key, storage);
  } else if (storage.dtype !== type.dtype || storage.numel !== numel) {
    throw new UserError(
      `${ctx.file}: storage ${quoted(key, 40)} is referenced with two different types or sizes`,
    );
  }
  if (ctx.persistent === 'legacy' && view !== null && view !== undefined) {
    if (!Array.isArray(view) || !isInt(view[1]) || !isInt(view[2]) || view[1] + view[2] > numel) {
      throw new UserError(`${ctx.file}: malformed storage view of ${quoted(key, 40)}`);
    }
    return new StorageView(storage, view[1], view[2]);
  }
  return storage;
}

/** The legacy format's first pickle. */
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

/** Pickles of plain values only (the legacy headers). */
function plainPolicy(): UnpicklePolicy {
  return { resolveGlobal: () => undefined };
}

/** True when the bytes start like a legacy torch.save file (PROTO 2, LONG1 10 bytes = the magic number). */
function looksLegacy(head: Uint8Array): boolean {
  return head[0] === 0x80 && head[2] === 0x8a && head[3] === 0x0a;
}

/**
 * Parse the pickles of a legacy file from `src` and place each storage: they follow the keys pickle in the
 * keys' order, each as an int64 element count and the raw bytes. Returns the object and where the data ends.
 */
function parseLegacy(src: ByteSource, ctx: LoadContext, fileSize: number): { root: unknown; end: number } {
  const magic = unpickle(src, plainPolicy(), ctx.file);
  if (magic !== LEGACY_MAGIC) throw new UserError(`${ctx.file}: not a PyTorch file (bad magic number)`);
  const proto = unpickle(src, plainPolicy(), ctx.file);
  if (proto !== LEGACY_PROTOCOL)
    throw new UserError(`${ctx.file}: unsupported legacy PyTorch protocol ${safeText(String(proto), 40)}`);
  const sysInfo = unpickle(src, plainPolicy(), ctx.file);
  if (!(sysInfo instanceof PyDict) || sysInfo.get('little_endian') !== true) {
    throw new UserError(`${ctx.file}: saved on a big-endian machine, which clipcap cannot read`);
  }
  const root = unpickle(src, torchPolicy(ctx), ctx.file);
  const keys = unpickle(src, plainPolicy(), ctx.file);
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) {
    throw new UserError(`${ctx.file}: malformed storage key list`);
  }
  let pos = src.pos;
  for (const key of keys as string[]) {
    const s = ctx.storages.get(key);
    if (!s) throw new UserError(`${ctx.file}: storage ${quoted(key, 40)} is stored but never referenced`);
    s.source = { kind: 'file', offset: pos + 8 };
    pos += 8 + s.numel * DTYPE_BYTES[s.dtype];
  }
  for (const s of ctx.storages.values()) {
    if (!s.source) throw new UserError(`${ctx.file}: storage ${quoted(s.key, 40)} is referenced but missing`);
  }
  if (pos > fileSize)
    throw new UserError(`${ctx.file}: truncated (the storages need ${pos} bytes, the file has ${fileSize})`);
  return { root, end: pos };
}

/** The element count a legacy storage record starts with. */
function legacyCount(header: Uint8Array): bigint {
  return new DataView(header.buffer, header.byteOffset, 8).getBigInt64(0, true);
}

/** `torch.storage._load_from_bytes(b)`: a legacy torch.save blob, parsed with the same restrictions. */
function loadFromBytes(outer: LoadContext, blob: unknown): unknown {
  if (!(blob instanceof Uint8Array))
    throw new UserError(`${outer.file}: _load_from_bytes of a non-bytes value`);
  // torch pickles each storage as one legacy blob; a blob inside a blob is never written.
  if (outer.embedded) throw new UserError(`${outer.file}: a storage embedded in an embedded storage`);
  const ctx: LoadContext = {
    file: `${outer.file} (embedded storage)`,
    refs: outer.refs,
    storages: new Map(),
    persistent: 'legacy',
    hasher: outer.hasher,
    embedded: true,
  };
  if (!looksLegacy(blob)) throw new UserError(`${ctx.file}: not a legacy torch.save blob`);
  const src = new MemorySource(blob);
  const { root } = parseLegacy(src, ctx, blob.length);
  for (const s of ctx.storages.values()) {
    const at = (s.source as { offset: number }).offset;
    if (legacyCount(blob.subarray(at - 8, at)) !== BigInt(s.numel)) {
      throw new UserError(`${ctx.file}: storage ${quoted(s.key, 40)} has a wrong element count`);
    }
    s.bytes = blob.subarray(at, at + s.numel * DTYPE_BYTES[s.dtype]);
  }
  return root;
}

function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) return false;
    expect *= shape[i];
  }
  return true;
}

/**
 * Build a contiguous row-major tensor from `ref`'s view of its storage bytes. `decoded` gives the whole storage
 * decoded (once per storage, however many strided views read it: decoding the covered range per view would
 * cost views x storage size).
 */
function tensorFromStorage(
  ref: TensorRef,
  bytes: Uint8Array,
  shareable: boolean,
  decoded: () => HostTensor['data'],
): HostTensor {
  const { dtype } = ref.storage;
  const es = DTYPE_BYTES[dtype];
  const numel = checkedNumel(ref.shape) as number;
  const shape = [...ref.shape];
  if (numel === 0) return { dtype, shape, data: decodeElements(new Uint8Array(0), dtype, 0) };
  if (isContiguous(ref.shape, ref.stride)) {
    const whole = shareable && ref.offset === 0 && numel * es === bytes.byteLength;
    const span = whole ? bytes : bytes.subarray(ref.offset * es, (ref.offset + numel) * es);
    return { dtype, shape, data: decodeElements(span, dtype, numel) };
  }
  // Strided: gather from the decoded storage in row-major order with an odometer over the dims.
  const src = decoded();
  const out = new (src.constructor as new (n: number) => HostTensor['data'])(numel);
  // Element access through one typed-array type: the loop only copies values between arrays of one kind.
  const from = src as unknown as Float32Array;
  const to = out as unknown as Float32Array;
  const rank = shape.length;
  const idx = new Array<number>(rank).fill(0);
  let at = ref.offset;
  for (let i = 0; i < numel; i++) {
    to[i] = from[at];
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) {
        at += ref.stride[d];
        break;
      }
      at -= (shape[d] - 1) * ref.stride[d];
      idx[d] = 0;
    }
  }
  if (out instanceof BigInt64Array) {
    // The storage had an i64 beyond 32 bits; this view may not (decodeElements' rule, per tensor).
    const small = Int32Array.from(out, Number);
    if (small.every((v, i) => BigInt(v) === out[i])) return { dtype, shape, data: small };
  }
  return { dtype, shape, data: out };
}

/**
 * Refuse views that hold far more elements than the storages they view (see VIEW_SLACK_ELEMENTS), before
 * anything is allocated; names the largest overlapping view.
 */
function checkViewBudget(ctx: LoadContext, refs: readonly TensorRef[], storages: ReadonlySet<Storage>): void {
  let stored = 0;
  for (const s of storages) stored += s.numel;
  let viewed = 0;
  let worst: TensorRef | undefined;
  let worstNumel = 0;
  for (const r of refs) {
    const n = checkedNumel(r.shape) as number;
    viewed += n;
    if (n > r.storage.numel && n > worstNumel) {
      worst = r;
      worstNumel = n;
    }
  }
  if (viewed <= 2 * stored + VIEW_SLACK_ELEMENTS) return;
  const which = worst
    ? `a tensor of size ${shapeText(worst.shape)} and stride ${shapeText(worst.stride)} repeats the ${worst.storage.numel} elements of storage ${quoted(worst.storage.key, 40)}`
    : 'many tensors view the same storages';
  throw new UserError(
    `${ctx.file}: its tensors hold ${viewed} elements but its storages only ${stored} (${which}); refusing to allocate that much for a damaged or hostile file`,
  );
}

/**
 * Read every referenced storage once (one at a time) and build its tensors. `keep`: only these tensors (the
 * others keep `result` undefined and storages only they use are never read). `check` throws when a storage's
 * bytes are missing from the file; it runs for all of them before anything is read or allocated.
 */
async function materialize(
  ctx: LoadContext,
  read: (s: Storage) => Promise<Uint8Array>,
  keep?: ReadonlySet<TensorRef>,
  check?: (s: Storage) => void,
): Promise<void> {
  const refs = ctx.refs.filter((r) => !keep || keep.has(r));
  const storages = new Set(refs.map((r) => r.storage));
  if (check) for (const s of storages) if (s.bytes === undefined) check(s);
  checkViewBudget(ctx, refs, storages);
  for (const s of storages) {
    const bytes = s.bytes ?? (await read(s));
    const expected = s.numel * DTYPE_BYTES[s.dtype];
    if (bytes.byteLength !== expected) {
      throw new UserError(
        `${ctx.file}: storage ${quoted(s.key, 40)} has ${bytes.byteLength} bytes, expected ${expected}`,
      );
    }
    // A buffer read for a single tensor may become that tensor's memory; shared storages are copied.
    const shareable = s.bytes === undefined && s.refs.length === 1;
    let whole: HostTensor['data'] | undefined;
    const decoded = (): HostTensor['data'] => (whole ??= decodeElements(bytes, s.dtype, s.numel));
    for (const ref of s.refs)
      if (!keep || keep.has(ref)) ref.result = tensorFromStorage(ref, bytes, shareable, decoded);
    s.bytes = undefined;
  }
}

/** Internal pickle values -> PickleValue, resolving tensors; shared and cyclic structure is preserved. */
function toValue(v: unknown, file: string, seen = new Map<object, PickleValue>(), depth = 0): PickleValue {
  if (v === null || typeof v !== 'object') {
    if (v === undefined || typeof v === 'function' || typeof v === 'symbol') {
      throw new Error(`unexpected ${typeof v} in a pickle`);
    }
    return v as PickleValue;
  }
  if (depth > 1000) throw new UserError(`${file}: nested too deeply`);
  if (v instanceof TensorRef) return v.result as HostTensor;
  if (v instanceof Uint8Array) return v;
  const done = seen.get(v);
  if (done !== undefined) return done;
  if (v instanceof Storage || v instanceof StorageView) {
    throw new UserError(`${file}: holds a bare storage, not a tensor; clipcap reads tensors only`);
  }
  if (v instanceof PyGlobal) return v.qualname;
  if (Array.isArray(v)) {
    const out: PickleValue[] = [];
    seen.set(v, out);
    for (const x of v) out.push(toValue(x, file, seen, depth + 1));
    return out;
  }
  if (v instanceof PySet) {
    const out = new Set<PickleValue>();
    seen.set(v, out);
    for (const x of v.items.values()) out.add(toValue(x, file, seen, depth + 1));
    return out;
  }
  if (v instanceof PyDict) {
    const entries = [...v.entries()];
    if (entries.every(([k]) => typeof k === 'string')) {
      const out: PickleObject = {};
      seen.set(v, out);
      for (const [k, x] of entries) {
        // defineProperty: a key such as "__proto__" becomes an ordinary own property.
        Object.defineProperty(out, k as string, {
          value: toValue(x, file, seen, depth + 1),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return out;
    }
    const out = new Map<PickleValue, PickleValue>();
    seen.set(v, out);
    for (const [k, x] of entries)
      out.set(toValue(k, file, seen, depth + 1), toValue(x, file, seen, depth + 1));
    return out;
  }
  throw new Error(`unexpected object in a pickle: ${Object.prototype.toString.call(v)}`);
}

async function openFile(path: string): Promise<{ fh: FileHandle; size: number }> {
  try {
    const fh = await fs.open(path, 'r');
    return { fh, size: (await fh.stat()).size };
  } catch (e) {
    throw new UserError(`cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      cause: e,
    });
  }
}

async function readAt(fh: FileHandle, pos: number, len: number, file: string): Promise<Uint8Array> {
  const out = new Uint8Array(len);
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(out, done, Math.min(len - done, 1 << 30), pos + done);
    if (bytesRead === 0) throw new UserError(`${file}: unexpected end of file (truncated?)`);
    done += bytesRead;
  }
  return out;
}

/**
 * Trust no header: sizes are checked before anything is allocated. A stored entry cannot be larger than
 * the archive; deflate expands at most ~1032:1.
 */
function checkEntrySize(entry: Entry, file: string, expected?: number): void {
  if (expected !== undefined && entry.uncompressedSize !== expected) {
    throw new UserError(
      `${file}: ${safeText(entry.fileName, 80)} has ${entry.uncompressedSize} bytes, expected ${expected}`,
    );
  }
  const limit = entry.compressionMethod === 0 ? entry.compressedSize : entry.compressedSize * 1032;
  if (entry.uncompressedSize > limit) {
    throw new UserError(
      `${file}: ${safeText(entry.fileName, 80)} declares an impossible size; the archive is damaged`,
    );
  }
}

async function readEntry(zip: ZipFile, entry: Entry, file: string, expected?: number): Promise<Uint8Array> {
  checkEntrySize(entry, file, expected);
  const out = new Uint8Array(entry.uncompressedSize);
  let at = 0;
  try {
    const stream = await zip.openReadStreamPromise(entry);
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (at + chunk.length > out.length) throw new Error('entry larger than its declared size');
      out.set(chunk, at);
      at += chunk.length;
    }
  } catch (e) {
    throw new UserError(
      `${file}: cannot read ${safeText(entry.fileName, 80)} (${safeText(errorMessage(e), 200)}); the file may be damaged`,
      { cause: e },
    );
  }
  if (at !== out.length) throw new UserError(`${file}: ${safeText(entry.fileName, 80)} is truncated`);
  return out;
}

/**
 * How loadZip reads an archive other than a torch.save checkpoint (torchscript.ts: TorchScript archives):
 * extra allowed names, and which tensors of the unpickled root to read.
 */
export interface ZipMode {
  extension: PolicyExtension;
  /** The tensors to read, given the unpickled root (internal values); the others stay unread. */
  select(root: unknown): ReadonlySet<TensorRef>;
}

/** A torch zip archive's data.pkl with its tensors read. Without `mode`, TorchScript archives are refused. */
export async function loadZip(path: string, mode?: ZipMode): Promise<unknown> {
  let zip: ZipFile;
  try {
    zip = await yauzl.openPromise(path, { lazyEntries: true, autoClose: false, validateEntrySizes: true });
  } catch (e) {
    throw new UserError(`${path}: not a valid zip archive (${safeText(errorMessage(e), 200)})`, { cause: e });
  }
  try {
    const entries = new Map<string, Entry>();
    await new Promise<void>((resolve, reject) => {
      zip.on('entry', (e: Entry) => {
        entries.set(e.fileName, e);
        zip.readEntry();
      });
      zip.on('end', () => resolve());
      zip.on('error', reject);
      zip.readEntry();
    }).catch((e: unknown) => {
      throw new UserError(`${path}: damaged zip archive (${safeText(errorMessage(e), 200)})`, { cause: e });
    });
    // torch.save writes <archive>/data.pkl, <archive>/data/<key>, <archive>/version (+ byteorder in 2.x).
    const pkl = [...entries.keys()].find((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (!pkl) throw new UserError(`${path}: a zip file but not a PyTorch checkpoint (no <name>/data.pkl)`);
    const prefix = pkl.slice(0, -'data.pkl'.length);
    if (
      !mode &&
      (entries.has(`${prefix}constants.pkl`) ||
        [...entries.keys()].some((n) => n.startsWith(`${prefix}code/`)))
    ) {
      throw new UserError(
        `${path} is a TorchScript archive (torch.jit.save), which clipcap reads only as OpenAI's CLIP (--clip FILE.pt); load it in Python and save model.state_dict() with torch.save, or use the Hugging Face safetensors weights`,
      );
    }
    const byteorder = entries.get(`${prefix}byteorder`);
    if (byteorder && Buffer.from(await readEntry(zip, byteorder, path)).toString() !== 'little') {
      throw new UserError(`${path}: saved big-endian, which clipcap cannot read`);
    }
    const ctx = newContext(path, 'zip');
    const root = unpickle(
      new MemorySource(await readEntry(zip, entries.get(pkl) as Entry, path)),
      torchPolicy(ctx, mode?.extension),
      path,
    );
    const storageEntry = (s: Storage): Entry => {
      const entry = entries.get(`${prefix}data/${s.key}`);
      if (!entry)
        throw new UserError(`${path}: storage data/${safeText(s.key, 40)} is missing from the archive`);
      checkEntrySize(entry, path, s.numel * DTYPE_BYTES[s.dtype]);
      return entry;
    };
    await materialize(
      ctx,
      (s) => readEntry(zip, storageEntry(s), path, s.numel * DTYPE_BYTES[s.dtype]),
      mode?.select(root),
      storageEntry,
    );
    return root;
  } finally {
    zip.close();
  }
}

async function loadLegacy(path: string, fh: FileHandle, size: number): Promise<unknown> {
  const ctx = newContext(path, 'legacy');
  const { root } = parseLegacy(new FileSource(fh.fd, size), ctx, size);
  await materialize(ctx, async (s) => {
    const at = (s.source as { offset: number }).offset;
    const header = await readAt(fh, at - 8, 8, path);
    if (legacyCount(header) !== BigInt(s.numel)) {
      throw new UserError(`${path}: storage ${quoted(s.key, 40)} has a wrong element count (damaged file?)`);
    }
    return readAt(fh, at, s.numel * DTYPE_BYTES[s.dtype], path);
  });
  return root;
}

/**
 * Load any PyTorch-ish file: a torch.save zip, a legacy torch.save file or a plain pickle (which may embed
 * storages with torch.storage._load_from_bytes). Tensors become HostTensors; see PickleValue for the rest.
 */
export async function loadPickle(path: string): Promise<PickleValue> {
  const { fh, size } = await openFile(path);
  try {
    const head = await readAt(fh, 0, Math.min(size, 512), path);
    let root: unknown;
    if (head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) {
      root = await loadZip(path);
    } else if (looksLegacy(head)) {
      root = await loadLegacy(path, fh, size);
    } else if (size >= 262 && Buffer.from(head.subarray(257, 262)).toString('latin1') === 'ustar') {
      throw new UserError(
        `${path}: a tar-format PyTorch file (PyTorch < 0.4), which clipcap does not read; re-save it with a recent torch.save`,
      );
    } else if (head[0] === 0x80 || PROTOCOL0_STARTS.includes(head[0])) {
      const ctx = newContext(path, 'none');
      root = unpickle(new FileSource(fh.fd, size), torchPolicy(ctx), path);
      await materialize(ctx, () => {
        throw new Error('unreachable: plain pickles embed their storages');
      });
    } else {
      throw new UserError(`${path}: not a PyTorch checkpoint or pickle (unrecognized header)`);
    }
    try {
      return toValue(root, path);
    } catch (e) {
      if (e instanceof RangeError) throw new UserError(`${path}: nested too deeply`);
      throw e;
    }
  } finally {
    await fh.close();
  }
}

/** First opcodes of protocol 0/1 pickles (which have no PROTO opcode): MARK, containers, GLOBAL, scalars. */
const PROTOCOL0_STARTS = [...Buffer.from('(}])cNIJKLFSTUVXdlt', 'latin1')];

const STATE_DICT_KEYS = ['state_dict', 'model_state_dict', 'model', 'module'];

/**
 * The tensors of a loaded checkpoint by name. Accepts a state dict, or a dict holding one under
 * `state_dict` / `model_state_dict` / `model` / `module` (training checkpoints). Non-tensor entries (step
 * counters, optimizer states) are ignored.
 */
export function stateDictFrom(value: PickleValue, file: string): StateDict {
  const tensorsOf = (v: PickleValue): StateDict | undefined => {
    if (typeof v !== 'object' || v === null || v instanceof Map || v instanceof Set || Array.isArray(v))
      return undefined;
    if (v instanceof Uint8Array || isHostTensor(v)) return undefined;
    const out: StateDict = new Map();
    for (const [k, x] of Object.entries(v)) if (isHostTensor(x)) out.set(k, x);
    return out.size ? out : undefined;
  };
  const direct = tensorsOf(value);
  if (direct) return direct;
  if (typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Map)) {
    for (const k of STATE_DICT_KEYS) {
      const inner = (value as PickleObject)[k];
      const found = inner === undefined ? undefined : tensorsOf(inner);
      if (Object.prototype.hasOwnProperty.call(value, k) && found) return found;
    }
  }
  throw new UserError(`${file} holds no tensors by name (expected a state_dict saved with torch.save)`);
}

/** Load a torch.save checkpoint (zip or legacy; plain pickles work too) as a state dict, in file order. */
export async function loadTorchCheckpoint(path: string): Promise<StateDict> {
  return stateDictFrom(await loadPickle(path), path);
}
