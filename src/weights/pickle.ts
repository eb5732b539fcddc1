/**
 * A restricted Python unpickler (protocols 0-5). It is the security boundary for `.pt` / `.pkl` files:
 * a pickle is a program for a stack machine whose GLOBAL + REDUCE opcodes can call any Python function
 * (`os.system`, ...). Here GLOBAL only resolves names the caller's policy lists; anything else fails at once
 * with "refusing to load <module>.<name> from <file>", before any later opcode runs. The listed names map to
 * TypeScript handlers, so no code from the file is ever executed. Out-of-band buffers (protocol 5),
 * the copyreg extension registry and BUILD on arbitrary objects are refused too.
 *
 * Values on the stack: null, boolean, number (Python ints that fit in a double's safe range), bigint (larger
 * ints), string, Uint8Array (bytes), arrays (lists and tuples), PyDict, PySet, PyGlobal (a resolved name),
 * and opaque objects made by the policy's handlers (torch storages and tensors).
 */
import { readSync } from 'node:fs';
import { UserError } from '../util/errors.js';
import { quoted, safeText } from '../util/text.js';

/** A name the policy allowed. `call` runs for REDUCE / NEWOBJ / INST / OBJ; absent: the name is not callable. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly call?: (args: unknown[]) => unknown,
  ) {}

  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/**
 * Python's hash equality for dict keys and set elements (1 == 1.0 == True; tuples, bytes and strings by value),
 * in time linear in the pickle. A pickle can share one tuple many times inside another (`t1 = (t0, t0)`,
 * `t2 = (t1, t1)`, ...: 2^n leaves from n memoized tuples), so keys are never spelled out: each tuple gets a
 * token once, from the ids of its elements, and a tuple met again is looked up by identity. Lists, dicts and
 * sets are unhashable, as in Python; tuples cannot change once built (APPEND only takes lists), so a token
 * never goes stale.
 */
export class KeyHasher {
  /** Tuple / bytes / global -> its token. */
  private readonly tokens = new WeakMap<object, object>();
  /** A tuple's, bytes' or global's content signature -> the one token for it. */
  private readonly interned = new Map<string, object>();
  /** Key -> small id, to spell a tuple's signature from its elements. */
  private readonly ids = new Map<unknown, number>();
  /**
   * Arrays that are lists (unhashable, appendable) carry this symbol; every other array is a tuple. (A property,
   * not a WeakSet: a WeakSet entry per list cost 4x the time and memory of the list.)
   */
  markList<T extends unknown[]>(l: T): T {
    (l as unknown as Record<symbol, boolean>)[IS_LIST] = true;
    return l;
  }

  isList(v: unknown): v is unknown[] {
    return Array.isArray(v) && (v as unknown as Record<symbol, boolean>)[IS_LIST] === true;
  }

  /** A value usable as a JS Map key that is equal for equal Python keys. */
  key(k: unknown): unknown {
    if (k === null) return null;
    switch (typeof k) {
      case 'string':
        return k;
      case 'boolean':
        return k ? 1 : 0;
      case 'number':
        return Number.isInteger(k) && !Number.isSafeInteger(k) ? BigInt(k) : k;
      case 'bigint':
        return smallInt(k);
    }
    if (typeof k !== 'object') throw new PickleError('unhashable dict key');
    const known = this.tokens.get(k);
    if (known) return known;
    let signature: string;
    if (k instanceof Uint8Array)
      signature = `b${Buffer.from(k.buffer, k.byteOffset, k.length).toString('latin1')}`;
    else if (k instanceof PyGlobal) signature = `g${k.qualname}`;
    else if (Array.isArray(k) && !this.isList(k)) {
      const parts = new Array<number>(k.length);
      for (let i = 0; i < k.length; i++) parts[i] = this.id(this.key(k[i]));
      signature = `t${parts.join(',')}`;
    } else throw new PickleError(`unhashable dict key (${Array.isArray(k) ? 'a list' : 'a dict or set'})`);
    let token = this.interned.get(signature);
    if (!token) {
      token = Object.freeze({});
      this.interned.set(signature, token);
    }
    this.tokens.set(k, token);
    return token;
  }

  private id(key: unknown): number {
    let n = this.ids.get(key);
    if (n === undefined) {
      n = this.ids.size;
      this.ids.set(key, n);
    }
    return n;
  }
}

const IS_LIST = Symbol('list');
const EMPTY: ReadonlyMap<unknown, [unknown, unknown]> = new Map();

/** A Python dict (or OrderedDict), insertion ordered, with Python key equality for hashable keys. */
export class PyDict {
  /** Made on the first item: a pickle can hold millions of empty dicts, one byte of file each. */
  private items: Map<unknown, [unknown, unknown]> | undefined;
  /** Attributes set by BUILD (e.g. a state dict's `_metadata`); kept, never interpreted. */
  attrs: unknown = undefined;

  constructor(private readonly hasher: KeyHasher = new KeyHasher()) {}

  set(key: unknown, value: unknown): void {
    const k = this.hasher.key(key);
    this.items ??= new Map();
    const item = this.items.get(k);
    // As in Python, an equal key replaces the value but the first key object stays.
    if (item) item[1] = value;
    else this.items.set(k, [key, value]);
  }

  get(key: unknown): unknown {
    return this.items?.get(this.hasher.key(key))?.[1];
  }

  has(key: unknown): boolean {
    return this.items?.has(this.hasher.key(key)) ?? false;
  }

  get size(): number {
    return this.items?.size ?? 0;
  }

  entries(): IterableIterator<[unknown, unknown]> {
    return (this.items ?? EMPTY).values();
  }
}

export class PySet {
  readonly items = new Map<unknown, unknown>();
  constructor(private readonly hasher: KeyHasher = new KeyHasher()) {}
  add(v: unknown): void {
    this.items.set(this.hasher.key(v), v);
  }
}

/** One strict decoder for every string (a decoder per string costs more than the string). */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** A malformed pickle (not a refusal): becomes a UserError naming the file and position. */
class PickleError extends Error {}

/** Bytes to unpickle: in memory, or a file read synchronously in chunks from a position. */
export interface ByteSource {
  /** Absolute position of the next byte. */
  readonly pos: number;
  byte(): number;
  take(n: number): Uint8Array;
  /** Bytes up to (not including) the next '\n', which is consumed. */
  line(): string;
}

export class MemorySource implements ByteSource {
  pos: number;
  constructor(
    private readonly buf: Uint8Array,
    start = 0,
  ) {
    this.pos = start;
  }

  byte(): number {
    if (this.pos >= this.buf.length) throw new PickleError('unexpected end of data');
    return this.buf[this.pos++];
  }

  take(n: number): Uint8Array {
    if (n < 0 || this.pos + n > this.buf.length) throw new PickleError('unexpected end of data');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  line(): string {
    const end = this.buf.indexOf(0x0a, this.pos);
    if (end < 0) throw new PickleError('unexpected end of data');
    const s = Buffer.from(this.buf.subarray(this.pos, end)).toString('latin1');
    this.pos = end + 1;
    return s;
  }
}

/** Reads a file descriptor synchronously through a 64 KiB window: pickles are parsed without loading the file. */
export class FileSource implements ByteSource {
  private window = new Uint8Array(0);
  private windowStart = 0;

  constructor(
    private readonly fd: number,
    private readonly size: number,
    public pos = 0,
  ) {}

  private fill(n: number): void {
    const rel = this.pos - this.windowStart;
    if (rel >= 0 && rel + n <= this.window.length) return;
    if (this.pos + n > this.size) throw new PickleError('unexpected end of data');
    const len = Math.min(Math.max(n, 1 << 16), this.size - this.pos);
    const buf = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const r = readSync(this.fd, buf, done, len - done, this.pos + done);
      if (r === 0) throw new PickleError('unexpected end of data');
      done += r;
    }
    this.window = buf;
    this.windowStart = this.pos;
  }

  byte(): number {
    this.fill(1);
    return this.window[this.pos++ - this.windowStart];
  }

  take(n: number): Uint8Array {
    if (n < 0) throw new PickleError('negative length');
    const inWindow = this.pos >= this.windowStart && this.pos + n <= this.windowStart + this.window.length;
    if (!inWindow && n >= 1 << 16) {
      // Large payloads (embedded storages) are read straight into their own buffer.
      if (this.pos + n > this.size) throw new PickleError('unexpected end of data');
      const out = new Uint8Array(n);
      let done = 0;
      while (done < n) {
        const r = readSync(this.fd, out, done, Math.min(n - done, 1 << 30), this.pos + done);
        if (r === 0) throw new PickleError('unexpected end of data');
        done += r;
      }
      this.pos += n;
      return out;
    }
    this.fill(n);
    const rel = this.pos - this.windowStart;
    this.pos += n;
    // A copy, so a tensor's bytes never pin the read window.
    return this.window.slice(rel, rel + n);
  }

  line(): string {
    let s = '';
    for (;;) {
      const b = this.byte();
      if (b === 0x0a) return s;
      s += String.fromCharCode(b);
      if (s.length > 1 << 20) throw new PickleError('line too long');
    }
  }
}

export interface UnpicklePolicy {
  /** The value a GLOBAL name stands for, or undefined to refuse it. */
  resolveGlobal(module: string, name: string): PyGlobal | undefined;
  /** Persistent ids (torch storages); absent: persistent ids are refused. */
  persistentLoad?(pid: unknown): unknown;
  /** BUILD on an object the policy made; absent or false: refused. PyDict state is always accepted. */
  build?(obj: unknown, state: unknown): boolean;
  /** Key equality for the dicts and sets of this load (shared with the policy's handlers); default a fresh one. */
  hasher?: KeyHasher;
}

/**
 * Run one pickle from `src` (which is left just past its STOP) and return the top of the stack.
 * `file` names the file in errors.
 */
export function unpickle(src: ByteSource, policy: UnpicklePolicy, file: string): unknown {
  const start = src.pos;
  let op = 0;
  let opPos = start;
  try {
    return run(src, policy, file, (o, p) => {
      op = o;
      opPos = p;
    });
  } catch (e) {
    if (e instanceof PickleError) {
      throw new UserError(
        `${file}: malformed pickle (${e.message} at byte ${opPos}, opcode 0x${op.toString(16).padStart(2, '0')}); the file is damaged or not a PyTorch/pickle file`,
      );
    }
    if (e instanceof RangeError) {
      throw new UserError(`${file}: pickle too large or deeply nested (${e.message} at byte ${opPos})`);
    }
    throw e;
  }
}

function run(
  src: ByteSource,
  policy: UnpicklePolicy,
  file: string,
  at: (op: number, pos: number) => void,
): unknown {
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const hasher = policy.hasher ?? new KeyHasher();

  const u32 = (): number => {
    const b = src.take(4);
    return (b[0] | (b[1] << 8) | (b[2] << 16)) + b[3] * 0x1000000;
  };
  const u64 = (): number => {
    const lo = u32();
    const hi = u32();
    const n = hi * 0x100000000 + lo;
    if (!Number.isSafeInteger(n)) throw new PickleError('length too large');
    return n;
  };
  const pop = (): unknown => {
    if (stack.length === 0) throw new PickleError('stack underflow');
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) throw new PickleError('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const prev = metastack.pop();
    if (!prev) throw new PickleError('MARK missing');
    stack = prev;
    return items;
  };
  const utf8 = (b: Uint8Array): string => {
    try {
      return UTF8.decode(b);
    } catch {
      throw new PickleError('invalid UTF-8 in a string');
    }
  };
  const memoGet = (i: number): unknown => {
    if (!memo.has(i)) throw new PickleError(`memo key ${i} missing`);
    return memo.get(i);
  };
  const global = (module: string, name: string): PyGlobal => {
    const g = policy.resolveGlobal(module, name);
    if (!g) {
      throw new UserError(
        `refusing to load ${safeText(`${module}.${name}`, 100)} from ${file}: only tensors, storages and plain containers are allowed (loading a checkpoint never runs code from it)`,
      );
    }
    return g;
  };
  const call = (fn: unknown, args: unknown): unknown => {
    if (!(fn instanceof PyGlobal)) throw new PickleError('call of a non-callable object');
    if (!Array.isArray(args)) throw new PickleError('call arguments are not a tuple');
    if (!fn.call) {
      throw new UserError(
        `refusing to call ${safeText(fn.qualname, 100)} from ${file}: it is allowed as a type only`,
      );
    }
    return fn.call(args);
  };
  const setItems = (d: unknown, kv: unknown[]): void => {
    if (!(d instanceof PyDict)) throw new PickleError('SETITEM on a non-dict');
    if (kv.length % 2) throw new PickleError('odd number of items for a dict');
    for (let i = 0; i < kv.length; i += 2) d.set(kv[i], kv[i + 1]);
  };
  const appendItems = (l: unknown, items: unknown[]): void => {
    // A loop, not push(...items): a spread of a million arguments overflows the stack.
    if (hasher.isList(l)) for (const v of items) l.push(v);
    else if (l instanceof PySet) for (const v of items) l.add(v);
    else throw new PickleError('APPEND on a non-list');
  };
  const intFromText = (s: string): number | bigint | boolean => {
    const t = s.trim().replace(/L$/, '');
    if (t === '01') return true;
    if (t === '00') return false;
    if (!/^[-+]?\d+$/.test(t)) throw new PickleError(`bad integer ${quoted(s, 40)}`);
    // Decimal BigInt parsing is superlinear; no checkpoint holds an integer of thousands of digits.
    if (t.length > MAX_INT_DIGITS) throw new PickleError(`integer of ${t.length} digits is too long`);
    const v = BigInt(t);
    return smallInt(v);
  };

  for (;;) {
    const opPos = src.pos;
    const op = src.byte();
    at(op, opPos);
    switch (op) {
      case 0x80: // PROTO
        if (src.byte() > 5) throw new PickleError('unsupported pickle protocol');
        break;
      case 0x95: // FRAME: a length hint only
        u64();
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;

      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x49: // INT (text)
        stack.push(intFromText(src.line()));
        break;
      case 0x4c: // LONG (text)
        stack.push(intFromText(src.line()));
        break;
      case 0x4a: {
        // BININT: signed 32-bit
        const b = src.take(4);
        stack.push(b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24));
        break;
      }
      case 0x4b: // BININT1
        stack.push(src.byte());
        break;
      case 0x4d: {
        // BININT2
        const b = src.take(2);
        stack.push(b[0] | (b[1] << 8));
        break;
      }
      case 0x8a: // LONG1
        stack.push(longLE(src.take(src.byte())));
        break;
      case 0x8b: {
        // LONG4: Python writes it only for integers of 256 bytes and more, which no checkpoint holds.
        const n = u32();
        if (n > MAX_LONG_BYTES) throw new PickleError(`integer of ${n} bytes is too long`);
        stack.push(longLE(src.take(n)));
        break;
      }
      case 0x46: {
        // FLOAT (text)
        // Python's repr: also inf, -inf, nan.
        const t = src.line().trim();
        // A Map, not an object: "toString" must not find Object.prototype's.
        const v = SPECIAL_FLOATS.get(t) ?? (FLOAT_TEXT.test(t) ? Number(t) : NaN);
        if (Number.isNaN(v) && t !== 'nan') throw new PickleError(`bad float ${quoted(t, 40)}`);
        stack.push(v);
        break;
      }
      case 0x47: {
        // BINFLOAT: big-endian double
        const b = src.take(8);
        stack.push(new DataView(b.buffer, b.byteOffset, 8).getFloat64(0, false));
        break;
      }

      case 0x53: // STRING (protocol 0, a quoted Python 2 str)
        stack.push(pyStringLiteral(src.line()));
        break;
      case 0x54: // BINSTRING
        stack.push(utf8(src.take(u32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(utf8(src.take(src.byte())));
        break;
      case 0x56: // UNICODE (raw-unicode-escape)
        stack.push(rawUnicodeEscape(src.line()));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8(src.take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(src.take(src.byte())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(src.take(u64())));
        break;
      case 0x42: // BINBYTES
        stack.push(src.take(u32()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(src.take(src.byte()));
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(src.take(u64()));
        break;

      case 0x5d: // EMPTY_LIST
        stack.push(hasher.markList([]));
        break;
      case 0x6c: {
        // LIST (popMark first: it replaces `stack`)
        const items = popMark();
        stack.push(hasher.markList(items));
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x74: {
        // TUPLE
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict(hasher));
        break;
      case 0x64: {
        // DICT
        const d = new PyDict(hasher);
        setItems(d, popMark());
        stack.push(d);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new PySet(hasher));
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof PySet)) throw new PickleError('ADDITEMS on a non-set');
        for (const v of items) s.add(v);
        break;
      }
      case 0x91: {
        // FROZENSET
        const s = new PySet(hasher);
        for (const v of popMark()) s.add(v);
        stack.push(s);
        break;
      }

      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = src.line();
        const name = src.line();
        stack.push(global(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string')
          throw new PickleError('STACK_GLOBAL of non-strings');
        stack.push(global(module, name));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(call(fn, args));
        break;
      }
      case 0x81: {
        // NEWOBJ: cls.__new__(cls, *args)
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX: kwargs must be empty
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        if (!(kwargs instanceof PyDict) || kwargs.size)
          throw new PickleError('NEWOBJ_EX with keyword arguments');
        stack.push(call(cls, args));
        break;
      }
      case 0x69: {
        // INST "module\nname\n": class instantiation, protocol 0
        const module = src.line();
        const name = src.line();
        const args = popMark();
        stack.push(call(global(module, name), args));
        break;
      }
      case 0x6f: {
        // OBJ
        const items = popMark();
        if (!items.length) throw new PickleError('OBJ without a class');
        stack.push(call(items[0], items.slice(1)));
        break;
      }
      case 0x62: {
        // BUILD: obj.__setstate__(state)
        const state = pop();
        const obj = top();
        if (obj instanceof PyDict) obj.attrs = state;
        else if (!policy.build?.(obj, state)) {
          throw new UserError(
            `refusing to restore the state of an object from ${file} (BUILD on an unsupported type)`,
          );
        }
        break;
      }
      case 0x50: // PERSID (text)
      case 0x51: {
        // BINPERSID
        const pid = op === 0x50 ? src.line() : pop();
        if (!policy.persistentLoad)
          throw new UserError(`${file}: unexpected persistent id in a plain pickle`);
        stack.push(policy.persistentLoad(pid));
        break;
      }

      case 0x70: // PUT (text)
        memo.set(Number(src.line()), top());
        break;
      case 0x71: // BINPUT
        memo.set(src.byte(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x67: // GET (text)
        stack.push(memoGet(Number(src.line())));
        break;
      case 0x68: // BINGET
        stack.push(memoGet(src.byte()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32()));
        break;

      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
        throw new UserError(`refusing to load ${file}: it uses the copyreg extension registry`);
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        throw new UserError(`refusing to load ${file}: it needs out-of-band buffers (pickle protocol 5)`);
      default:
        throw new PickleError('unknown opcode');
    }
  }
}

/** A Python int as a number when safe, else a bigint. */
function smallInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** The longest LONG1 / LONG4 payload accepted (Python pickles ints below 2^2047 with LONG1). */
const MAX_LONG_BYTES = 1024;
/** The longest text INT / LONG accepted: as many digits as MAX_LONG_BYTES bytes hold. */
const MAX_INT_DIGITS = 2500;

/** Two's-complement little-endian integer (LONG1 / LONG4), decoded in linear time through hex. */
function longLE(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  const hex = Buffer.from(b).reverse().toString('hex');
  let v = BigInt(`0x${hex}`);
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return smallInt(v);
}

/** A float as Python's repr writes it (Number() alone would also take "", "0x10" and "Infinity"). */
const FLOAT_TEXT = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

const SPECIAL_FLOATS: ReadonlyMap<string, number> = new Map([
  ['inf', Infinity],
  ['-inf', -Infinity],
  ['nan', NaN],
]);

/** A protocol-0 STRING argument: a Python 2 str repr, 'abc' or "abc", with backslash escapes. */
function pyStringLiteral(s: string): string {
  const q = s[0];
  if (s.length < 2 || (q !== "'" && q !== '"') || s[s.length - 1] !== q)
    throw new PickleError('bad STRING literal');
  const body = s.slice(1, -1);
  const simple: Record<string, string> = {
    n: '\n',
    r: '\r',
    t: '\t',
    '\\': '\\',
    "'": "'",
    '"': '"',
    '0': '\0',
  };
  return body.replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, e: string) =>
    e[0] === 'x' && e.length === 3 ? String.fromCharCode(parseInt(e.slice(1), 16)) : (simple[e] ?? `\\${e}`),
  );
}

/** Python's raw-unicode-escape: only \uXXXX and \UXXXXXXXX are escapes; other bytes are latin-1. */
function rawUnicodeEscape(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_, u4: string, u8: string) => {
    const code = parseInt(u4 ?? u8, 16);
    if (code > 0x10ffff) throw new PickleError('bad \\U escape in a UNICODE string');
    return String.fromCodePoint(code);
  });
}
