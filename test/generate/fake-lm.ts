/**
 * A tiny deterministic CausalLM for decoder tests: its logits are a hash of each sequence's whole history
 * (prefix vectors and tokens), so any mistake in cache bookkeeping (wrong row after a beam reorder, a token
 * fed twice, a lost position) changes the output. It runs on a minimal host "backend" that only stores
 * arrays: the decoders only upload ids and download logits.
 */
import type { Backend } from '../../src/engine/backend.js';
import { logSoftmaxTopKRows } from '../../src/engine/reference-decoding.js';
import { Allocation, Tensor, shapeSize } from '../../src/engine/tensor.js';
import type { CausalLM, KvCache } from '../../src/generate/lm.js';
import { lowbias32 } from '../../src/models/synthetic.js';

type Storage = Float32Array | Int32Array;

class HostStore {
  readonly name = 'host-test';
  live = 0;
  upload(data: Storage, shape: readonly number[]): Tensor {
    if (data.length !== shapeSize(shape)) throw new Error('upload: size mismatch');
    this.live++;
    return new Tensor(
      this as unknown as Backend,
      new Allocation(data.slice(), data.byteLength),
      shape,
      data instanceof Int32Array ? 'i32' : 'f32',
    );
  }
  download(t: Tensor): Promise<Storage> {
    return Promise.resolve((t.storage as Storage).slice());
  }
  free(): void {
    this.live--;
  }
  /** The decoding op the beam decoder calls, by its reference kernel. */
  logSoftmaxTopK(logits: Tensor, k: number, temperature: number): { values: Tensor; indices: Tensor } {
    const [rows, V] = logits.shape;
    const values = new Float32Array(rows * k);
    const indices = new Int32Array(rows * k);
    const t = temperature > 0 ? temperature : 1;
    logSoftmaxTopKRows(logits.storage as Float32Array, rows, V, k, t, values, indices);
    return { values: this.upload(values, [rows, k]), indices: this.upload(indices, [rows, k]) };
  }
}

const f32bits = new Float32Array(1);
const u32bits = new Uint32Array(f32bits.buffer);

/** Hash of a float32 value's bits. */
function floatKey(v: number): number {
  f32bits[0] = v;
  return u32bits[0];
}

export interface FakeOptions {
  vocabSize?: number;
  width?: number;
  maxPositions?: number;
  /** Added to the stop token's logit per generated token, so sequences end at different lengths. */
  stopToken?: number;
  stopBias?: number;
  /** Spread of the random logits. */
  scale?: number;
  /** Round logits to multiples of this (many exact ties, to test tie-breaking). */
  quantum?: number;
}

export class FakeCache implements KvCache {
  disposed = false;
  constructor(
    readonly rows: number[][],
    public length: number,
    readonly maxLength: number,
  ) {}
  get batch(): number {
    return this.rows.length;
  }
  select(indices: readonly number[]): KvCache {
    if (this.disposed) throw new Error('select on a disposed cache');
    this.disposed = true;
    return new FakeCache(
      indices.map((i) => {
        if (i < 0 || i >= this.rows.length) throw new Error(`select: row ${i} out of range`);
        return [...this.rows[i]];
      }),
      this.length,
      this.maxLength,
    );
  }
  dispose(): void {
    this.disposed = true;
  }
}

export class FakeLM implements CausalLM {
  readonly backend: Backend;
  readonly store = new HostStore();
  readonly vocabSize: number;
  readonly width: number;
  readonly maxPositions: number;
  readonly stopToken: number;
  readonly stopBias: number;
  readonly scale: number;
  readonly quantum: number;
  /** Rows of every step call, in order (to check batching). */
  readonly stepRows: number[] = [];

  constructor(o: FakeOptions = {}) {
    this.backend = this.store as unknown as Backend;
    this.vocabSize = o.vocabSize ?? 64;
    this.width = o.width ?? 3;
    this.maxPositions = o.maxPositions ?? 128;
    this.stopToken = o.stopToken ?? 13;
    this.stopBias = o.stopBias ?? 0.35;
    this.scale = o.scale ?? 6;
    this.quantum = o.quantum ?? 0;
  }

  /** ids (B, T) -> (B, T, E): [id + 0.5, -1, 0...] marks a token (prefix vectors never have -1 there). */
  embed(ids: Tensor): Tensor {
    const src = ids.storage as Int32Array;
    const out = new Float32Array(src.length * this.width);
    src.forEach((id, i) => {
      if (id < 0 || id >= this.vocabSize) throw new Error(`embed: id ${id} out of range`);
      out[i * this.width] = id + 0.5;
      out[i * this.width + 1] = -1;
    });
    return this.store.upload(out, [...ids.shape, this.width]);
  }

  createCache(batch: number, maxLength: number): KvCache {
    return new FakeCache(
      Array.from({ length: batch }, () => []),
      0,
      maxLength,
    );
  }

  /** The history of a sequence -> its next-token logits (the whole "model"). */
  logitsOf(history: readonly number[]): Float32Array {
    let h = 0x811c9dc5;
    let generated = 0;
    for (const k of history) {
      h = lowbias32(h ^ k);
      if (k >= 0x40000000 && k < 0x40000000 + this.vocabSize) generated++;
    }
    const out = new Float32Array(this.vocabSize);
    for (let v = 0; v < this.vocabSize; v++) out[v] = (lowbias32(h + v * 0x9e3779b9) / 2 ** 32) * this.scale;
    out[this.stopToken] += this.stopBias * generated;
    if (this.quantum > 0)
      for (let v = 0; v < out.length; v++) out[v] = Math.round(out[v] / this.quantum) * this.quantum;
    return out;
  }

  /** The history keys of one position's embedding. */
  positionKeys(e: Float32Array, offset: number): number[] {
    if (e[offset + 1] === -1) return [0x40000000 + Math.floor(e[offset])];
    const keys: number[] = [];
    for (let c = 0; c < this.width; c++) keys.push(floatKey(e[offset + c]) & 0x3fffffff);
    return keys;
  }

  step(embeds: Tensor, cache: KvCache): Tensor {
    const c = cache as FakeCache;
    if (c.disposed) throw new Error('step on a disposed cache');
    const [B, T, E] = embeds.shape;
    if (B !== c.batch || E !== this.width)
      throw new Error(`step: embeds [${embeds.shape}] vs cache ${c.batch}`);
    if (c.length + T > c.maxLength) throw new Error(`step: cache overflow ${c.length + T} > ${c.maxLength}`);
    this.stepRows.push(B);
    const e = embeds.storage as Float32Array;
    const V = this.vocabSize;
    const logits = new Float32Array(B * V);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) c.rows[b].push(...this.positionKeys(e, (b * T + t) * E));
      logits.set(this.logitsOf(c.rows[b]), b * V);
    }
    c.length += T;
    return this.store.upload(logits, [B, V]);
  }

  /** History of a prefix (K, E) followed by tokens, as step() would build it. */
  history(prefix: Float32Array, tokens: readonly number[]): number[] {
    const keys: number[] = [];
    for (let off = 0; off < prefix.length; off += this.width) keys.push(...this.positionKeys(prefix, off));
    for (const t of tokens) keys.push(0x40000000 + t);
    return keys;
  }

  /** A (B, K, E) prefix tensor from host values. */
  prefix(data: Float32Array, batch: number, k: number): Tensor {
    return this.store.upload(data, [batch, k, this.width]);
  }
}
