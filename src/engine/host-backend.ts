/**
 * The `Device` every backend whose tensors live in host memory shares: the reference backend (reference.ts)
 * and the native one (native.ts) both keep one Float32Array / Int32Array per tensor, row-major. This file is
 * only storage access: allocation, reads (resolved at once), block copies, and the data-dependent checks
 * (ids and targets in range) that need the values. Argument and shape checks are checked.ts's, shared with
 * every device. The arithmetic is a `HostKernels` object each backend supplies: plain loops in the reference
 * backend, calls into the C++ addon in the native one. Kernels receive storage that has passed every check.
 *
 * No Node APIs here: the reference backend built on it must still run in a browser.
 */
import type { ActivationKind, BinaryKind, WeightFormat } from './backend.js';
import { DeviceBackend } from './checked.js';
import type {
  AdamWStep,
  AttentionArrays,
  AttentionDims,
  AttentionGradArrays,
  Conv2dDims,
  CopyArgs,
  Device,
  GemmArgs,
  LossArgs,
  SavedSpec,
} from './device.js';
import type { DType } from './tensor.js';
import { quantizeHost } from './quantize.js';
import type { CompactWeight } from './quantize.js';

export type { ActivationKind } from './backend.js';
export type { AdamWStep, AttentionDims, Conv2dDims, GemmArgs } from './device.js';
export type { CompactWeight } from './quantize.js';

type Storage = Float32Array | Int32Array;
type F32 = Float32Array;
type I32 = Int32Array;

/** Cross-entropy inputs, checked: every target is ignoreIndex or a class in [0, V). */
export interface LossRows {
  /** (N, V) */
  logits: F32;
  /** (N) */
  targets: I32;
  N: number;
  V: number;
  ignoreIndex: number;
  /** Rows whose target is not ignoreIndex. */
  count: number;
}

/**
 * The arithmetic of a host backend. Arrays are the tensors' storage, already checked for dtype, shape,
 * liveness and the aliasing every backend forbids. Outputs are zero-filled arrays, except the caller's
 * tensors that gemm and sumRows write (or add) into and the arrays a kernel says it adds to or updates.
 * Shapes in comments: rows = all leading axes flattened.
 */
export interface HostKernels {
  /**
   * Checks a scalar argument further where the kernel needs it ('real': the native addon takes finite
   * doubles; 'int32': it takes an int32). Called at the point each op reads the scalar.
   */
  checkScalar(op: string, what: string, value: number, kind: 'real' | 'int32'): void;
  gemm(g: GemmArgs<F32>): void;
  /** gemm (not accumulating), then C = f(C) elementwise as activation computes it. */
  gemmActivation(g: GemmArgs<F32>, kind: ActivationKind): void;
  /** y[i] = a[i] + b[i mod b.length] (or ·): b broadcasts over a's leading axes. */
  binary(kind: BinaryKind, a: F32, b: F32, y: F32): void;
  /** a += alpha·b, in place. */
  axpy(a: F32, b: F32, alpha: number): void;
  /** x (rows, cols) -> out (cols), adding to out with accumulate. */
  sumRows(x: F32, rows: number, cols: number, out: F32, accumulate: boolean): void;
  activation(kind: ActivationKind, x: F32, y: F32): void;
  /** dx = dy ⊙ f'(saved), saved being the forward's input (tanh: output). */
  activationBackward(kind: ActivationKind, dy: F32, saved: F32, dx: F32): void;
  /** x, y (rows, C); w, b (C); writes mean and rstd (rows). */
  layerNorm(x: F32, w: F32, b: F32, rows: number, C: number, eps: number, y: F32, mean: F32, rstd: F32): void;
  /** Writes dx (rows, C); adds into dw and db (C). */
  layerNormBackward(
    dy: F32,
    x: F32,
    w: F32,
    mean: F32,
    rstd: F32,
    rows: number,
    C: number,
    dx: F32,
    dw: F32,
    db: F32,
  ): void;
  /** out (B, Tq, C); keyMask (B, Tk) or null; probs (B, nHead, Tq, Tk) (before dropout) or null. */
  attention(
    t: AttentionArrays<F32>,
    keyMask: F32 | null,
    out: F32,
    probs: F32 | null,
    d: AttentionDims,
  ): void;
  /** dout (B, Tq, C); writes grads.dq (q's shape), dk and dv (k's shape, zero at rows >= kvLen). */
  attentionBackward(
    dout: F32,
    t: AttentionArrays<F32>,
    probs: F32,
    grads: AttentionGradArrays<F32>,
    d: AttentionDims,
  ): void;
  /** out (B, T, C): attention over the column blocks [q | k | v] of qkv (B, T, 3C); tq = tk = kvLen = T. */
  attentionQkv(qkv: F32, keyMask: F32 | null, out: F32, d: AttentionDims): void;
  /** out (ids.length, C) = rows ids[i] of table (V, C); ids are in range. */
  embedding(ids: I32, table: F32, out: F32, V: number, C: number): void;
  /** dtable[ids[i]] += dy[i]; ids are in range. */
  embeddingBackward(dy: F32, ids: I32, dtable: F32, V: number, C: number): void;
  /** Σ over rows whose target != ignoreIndex of logsumexp(logits row) - logit of the target. */
  crossEntropy(rows: LossRows): number;
  /** dlogits (N, V) = (softmax - onehot)·lossScale/count on counted rows; ignored rows stay zero. */
  crossEntropyBackward(rows: LossRows, lossScale: number, dlogits: F32): void;
  /** One AdamW step on param, m and v in place. */
  adamw(param: F32, grad: F32, m: F32, v: F32, h: AdamWStep): void;
  /** y = x·keep(i), keep(i) = 1/(1-p) (as a float32) when mulberry32At(seed, i) >= p, else 0. */
  dropout(x: F32, p: number, seed: number, y: F32): void;
  /**
   * Decoding: per row of x (rows, V), the k largest float32(s - lse) (s = x / t rounded to float32 when
   * t !== 1, lse = float64 logsumexp of s in index order) into values (rows, k), best first, lower index
   * first on ties, their indices into indices (rows, k). 1 <= k <= V; t > 0 and finite.
   */
  logSoftmaxTopK(x: F32, rows: number, V: number, k: number, t: number, values: F32, indices: I32): void;

  // ---- convolution and pooling (NHWC) ----
  /**
   * y (B, Ho, Wo, O) = conv(x (B, H, W, C), w (O, kh, kw, C)) + bias (O or null) + residual (y's shape or
   * null), then ReLU when `relu`.
   */
  conv2d(x: F32, w: F32, bias: F32 | null, residual: F32 | null, y: F32, d: Conv2dDims, relu: boolean): void;
  /** y (B, Ho, Wo, C) = window means of x (B, H, W, C), padding counted as zeros. */
  avgPool2d(x: F32, y: F32, d: Conv2dDims): void;

  /**
   * Optional: remember the compact values of a quantized weight whose f32 values are `values`
   * (Backend.quantizeWeight), to read them instead where a product streams that weight. Only called for
   * storage the checked layer then treats as read-only, so the copy cannot go stale.
   */
  keepCompact?(values: F32, compact: CompactWeight): void;
  /** Optional: forget the compact copy of `values` (their storage is being released). */
  dropCompact?(values: F32): void;
  /**
   * Optional (Backend.packWeight): w (rows, cols) laid out as this backend's gemm reads a packed B with
   * `transB` (gemm then gets packedB). Without it a packed weight is a plain copy, which gemm reads as
   * any B.
   */
  packWeight?(w: F32, rows: number, cols: number, transB: boolean): F32;
  /** With packWeight: writes the (rows, cols) values of a packed weight into out. */
  unpackWeight?(packed: F32, rows: number, cols: number, transB: boolean, out: F32): void;
}

const f32 = (s: Storage): F32 => s as F32;
const i32 = (s: Storage): I32 => s as I32;

/**
 * Released f32 buffers of at least POOL_MIN_ELEMENTS are kept for the next allocation of the same size,
 * up to POOL_MAX_BYTES in all: a model run allocates the same activation shapes over and over, and a fresh
 * large Float32Array costs a page fault per 4 KiB when first written plus an munmap when dropped (with the
 * kernels' threads running, each munmap also interrupts them to flush their TLBs). Zeroing a reused buffer
 * costs a fraction of that. Smaller arrays are V8's business. The floor, 16 Ki elements (64 KiB), takes in a
 * one-image CLIP activation (50, 768), 37.5 Ki elements: outside the pool each of the five a layer makes
 * costs tens of microseconds to allocate, touch and detach (a few percent of a batch-1 forward). GPT-2
 * decoding's (beams, 768 or 3072) rows stay below it.
 */
const POOL_MIN_ELEMENTS = 16 * 1024;
const POOL_MAX_BYTES = 128 * 2 ** 20;

/** The host device: typed-array storage, arithmetic from `kernels`. */
export class HostDevice implements Device<Storage> {
  /** Released buffers by element count, most recently released last. */
  private readonly pool = new Map<number, Float32Array[]>();
  private pooledBytes = 0;
  /** Buffers that alloc made (only those go back to the pool: uploads and packed weights are not reused). */
  private readonly poolable = new WeakSet<Float32Array>();

  constructor(
    readonly name: string,
    private readonly k: HostKernels,
  ) {}

  alloc(size: number, dtype: DType): Storage {
    return this.take(size, dtype, true);
  }

  /** A pooled buffer is handed out as it was released (both host kernel sets write gemm's C in full). */
  allocOutput(size: number, dtype: DType): Storage {
    return this.take(size, dtype, false);
  }

  private take(size: number, dtype: DType, zero: boolean): Storage {
    if (dtype === 'i32') return new Int32Array(size);
    if (size < POOL_MIN_ELEMENTS) return new Float32Array(size);
    const reused = this.pool.get(size)?.pop();
    if (reused) {
      this.pooledBytes -= reused.byteLength;
      return zero ? reused.fill(0) : reused; // alloc promises zeros
    }
    const fresh = new Float32Array(size);
    this.poolable.add(fresh);
    return fresh;
  }

  /** Bytes of released buffers kept for reuse (not counted by Backend.memory(), which counts live tensors). */
  pooledMemory(): number {
    return this.pooledBytes;
  }

  /** Drops every pooled buffer (the GC reclaims them). */
  trimPool(): void {
    this.pool.clear();
    this.pooledBytes = 0;
  }

  upload(data: Float32Array | Int32Array): Storage {
    return data.slice();
  }

  read(s: Storage): Promise<Float32Array | Int32Array> {
    return Promise.resolve(s.slice());
  }

  /**
   * Keeps a large buffer alloc made for reuse (the pool, above) while the pool has room; otherwise
   * releases a large buffer's memory now by detaching the ArrayBuffer (transferring it to a clone that is
   * dropped): a stale typed-array reference then reads as empty instead of keeping the memory alive. (The
   * checked layer refuses a released tensor, so a pooled buffer is reachable only through its next tensor.)
   * Small buffers are left to the GC: the transfer costs ~4 µs, more than the kernel of a decoding step's
   * LayerNorm, and a step releases hundreds of them.
   */
  release(s: Storage): void {
    if (s.length < POOL_MIN_ELEMENTS) {
      if (s instanceof Float32Array) this.k.dropCompact?.(s);
      return;
    }
    if (s instanceof Float32Array) {
      this.k.dropCompact?.(s);
      if (this.poolable.has(s) && this.pooledBytes + s.byteLength <= POOL_MAX_BYTES) {
        let list = this.pool.get(s.length);
        if (!list) this.pool.set(s.length, (list = []));
        list.push(s);
        this.pooledBytes += s.byteLength;
        return;
      }
    }
    const buffer = s.buffer;
    if (buffer.byteLength === 0 || !(buffer instanceof ArrayBuffer)) return;
    structuredClone(buffer, { transfer: [buffer] });
  }

  aliases(a: Storage, b: Storage): boolean {
    return a.buffer === b.buffer;
  }

  checkScalar(op: string, what: string, value: number, kind: 'real' | 'int32'): void {
    this.k.checkScalar(op, what, value, kind);
  }

  fill(s: Storage, _size: number, value: number): void {
    s.fill(value);
  }

  gemm(g: GemmArgs<Storage>): void {
    this.k.gemm(g as GemmArgs<F32>);
  }

  gemmActivation(g: GemmArgs<Storage>, kind: ActivationKind): void {
    this.k.gemmActivation(g as GemmArgs<F32>, kind);
  }

  binary(kind: BinaryKind, a: Storage, b: Storage, y: Storage): void {
    this.k.binary(kind, f32(a), f32(b), f32(y));
  }

  axpy(a: Storage, b: Storage, alpha: number): void {
    this.k.axpy(f32(a), f32(b), alpha);
  }

  sumRows(x: Storage, rows: number, cols: number, out: Storage, accumulate: boolean): void {
    this.k.sumRows(f32(x), rows, cols, f32(out), accumulate);
  }

  activation(kind: ActivationKind, x: Storage, y: Storage): void {
    this.k.activation(kind, f32(x), f32(y));
  }

  activationBackward(kind: ActivationKind, dy: Storage, saved: Storage, dx: Storage): void {
    this.k.activationBackward(kind, f32(dy), f32(saved), f32(dx));
  }

  layerNorm(...a: Parameters<Device<Storage>['layerNorm']>): void {
    const [x, w, b, rows, C, eps, y, mean, rstd] = a;
    this.k.layerNorm(f32(x), f32(w), f32(b), rows, C, eps, f32(y), f32(mean), f32(rstd));
  }

  layerNormBackward(...a: Parameters<Device<Storage>['layerNormBackward']>): void {
    const [dy, x, w, mean, rstd, rows, C, dx, dw, db] = a;
    this.k.layerNormBackward(
      f32(dy),
      f32(x),
      f32(w),
      f32(mean),
      f32(rstd),
      rows,
      C,
      f32(dx),
      f32(dw),
      f32(db),
    );
  }

  /** The host kernels keep the softmax probabilities (B, nHead, Tq, Tk), before dropout. */
  attentionSaved(d: AttentionDims): SavedSpec[] {
    return [{ shape: [d.batch, d.nHead, d.tq, d.tk], dtype: 'f32' }];
  }

  attention(
    t: AttentionArrays<Storage>,
    keyMask: Storage | null,
    out: Storage,
    saved: Storage[] | null,
    d: AttentionDims,
  ): void {
    this.k.attention(
      t as AttentionArrays<F32>,
      keyMask as F32 | null,
      f32(out),
      saved ? f32(saved[0]) : null,
      d,
    );
  }

  attentionBackward(
    dout: Storage,
    t: AttentionArrays<Storage>,
    saved: Storage[],
    grads: AttentionGradArrays<Storage>,
    d: AttentionDims,
  ): void {
    this.k.attentionBackward(
      f32(dout),
      t as AttentionArrays<F32>,
      f32(saved[0]),
      grads as AttentionGradArrays<F32>,
      d,
    );
  }

  attentionQkv(qkv: Storage, keyMask: Storage | null, out: Storage, d: AttentionDims): void {
    this.k.attentionQkv(f32(qkv), keyMask as F32 | null, f32(out), d);
  }

  embedding(ids: Storage, _n: number, table: Storage, out: Storage, V: number, C: number): void {
    checkIds('embedding', i32(ids), V);
    this.k.embedding(i32(ids), f32(table), f32(out), V, C);
  }

  embeddingBackward(dy: Storage, ids: Storage, _n: number, dtable: Storage, V: number, C: number): void {
    checkIds('embeddingBackward', i32(ids), V);
    this.k.embeddingBackward(f32(dy), i32(ids), f32(dtable), V, C);
  }

  /** Checks every target and counts the rows whose target is not ignoreIndex. */
  private lossRows(op: string, r: LossArgs<Storage>): LossRows {
    const T = i32(r.targets);
    const { N, V, ignoreIndex } = r;
    let count = 0;
    for (let n = 0; n < N; n++) {
      if (T[n] === ignoreIndex) continue;
      if (T[n] < 0 || T[n] >= V) {
        throw new Error(
          `${op}: target ${T[n]} at row ${n} is outside the ${V} classes (ignoreIndex ${ignoreIndex})`,
        );
      }
      count++;
    }
    return { logits: f32(r.logits), targets: T, N, V, ignoreIndex, count };
  }

  crossEntropy(r: LossArgs<Storage>): Promise<number> {
    const rows = this.lossRows('crossEntropy', r);
    return Promise.resolve(this.k.crossEntropy(rows) / rows.count);
  }

  crossEntropyBackward(r: LossArgs<Storage>, lossScale: number, dlogits: Storage): void {
    const rows = this.lossRows('crossEntropyBackward', r);
    if (rows.count === 0) return; // every row ignored: the gradient is zero
    this.k.crossEntropyBackward(rows, lossScale, f32(dlogits));
  }

  adamw(param: Storage, grad: Storage, m: Storage, v: Storage, _n: number, h: AdamWStep): void {
    this.k.adamw(f32(param), f32(grad), f32(m), f32(v), h);
  }

  dropout(x: Storage, p: number, seed: number, y: Storage): void {
    this.k.dropout(f32(x), p, seed, f32(y));
  }

  copy(c: CopyArgs<Storage>): void {
    const { dst, src, length } = c;
    for (let r = 0; r < c.rows; r++) {
      const from = c.srcOffset + r * c.srcStride;
      dst.set(src.subarray(from, from + length), c.dstOffset + r * c.dstStride);
    }
  }

  logSoftmaxTopK(...a: Parameters<Device<Storage>['logSoftmaxTopK']>): void {
    const [x, rows, V, k, t, values, indices] = a;
    this.k.logSoftmaxTopK(f32(x), rows, V, k, t, f32(values), i32(indices));
  }

  conv2d(...a: Parameters<Device<Storage>['conv2d']>): void {
    const [x, w, bias, residual, y, d, relu] = a;
    this.k.conv2d(f32(x), f32(w), bias as F32 | null, residual as F32 | null, f32(y), d, relu);
  }

  avgPool2d(x: Storage, y: Storage, d: Conv2dDims): void {
    this.k.avgPool2d(f32(x), f32(y), d);
  }

  packWeight(w: Storage, rows: number, cols: number, transB: boolean): { storage: Storage; size: number } {
    const storage = this.k.packWeight ? this.k.packWeight(f32(w), rows, cols, transB) : w.slice();
    return { storage, size: storage.length };
  }

  readPacked(s: Storage, rows: number, cols: number, transB: boolean): Promise<Float32Array> {
    if (!this.k.unpackWeight) return Promise.resolve(f32(s).slice());
    const out = new Float32Array(rows * cols);
    this.k.unpackWeight(f32(s), rows, cols, transB, out);
    return Promise.resolve(out);
  }

  /** Rounds on the host (quantize.ts), so every host backend has the same values; kernels may keep the compact copy. */
  quantizeWeight(
    w: Storage,
    rows: number,
    cols: number,
    format: WeightFormat,
    channelAxis: 0 | 1,
    y: Storage,
  ): void {
    const compact = quantizeHost('quantizeWeight', f32(w), rows, cols, format, channelAxis, f32(y));
    this.k.keepCompact?.(f32(y), compact);
  }
}

/** A backend over host memory: the checked layer on a HostDevice. */
export class HostBackend extends DeviceBackend<Storage> {
  constructor(name: string, kernels: HostKernels) {
    super(new HostDevice(name, kernels));
  }
}

function checkIds(op: string, ids: I32, vocab: number): void {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw new Error(`${op}: id ${ids[i]} at position ${i} is outside the table's ${vocab} rows`);
    }
  }
}
