/**
 * The native backend: the Backend interface on top of the C++ addon (native/*.cc, built at install into
 * build/Release/clipcap_native.node by scripts/build-native.mjs).
 *
 * - Storage is the same as the reference backend's: one Float32Array / Int32Array per tensor, owned by the
 *   JS garbage collector and passed zero-copy to C++ (Node-API typed arrays). Kernels run synchronously on
 *   the addon's thread pool (CLIPCAP_THREADS threads, default: all cores).
 * - Every argument (backend, dtype, shape, range) is checked here, with the reference backend's checks and
 *   messages, before the native call: the addon re-checks buffer lengths only as a last line of defence,
 *   and its errors arrive as JS exceptions, never a crash.
 * - Semantics are the reference backend's (src/engine/reference.ts, the oracle): test/engine/native.test.ts
 *   compares every kernel with it.
 * - The layout ops (concat, slice, writeSlice, indexSelect) and fill/clone are TypedArray copies, as fast
 *   in JS as in C++.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ShapeError } from './backend.js';
import type {
  AdamWOptions,
  AttentionGrads,
  AttentionOptions,
  AttentionResult,
  Backend,
  CrossEntropyResult,
  LayerNormResult,
  MatmulOptions,
} from './backend.js';
import { Tensor, shapeSize } from './tensor.js';
import type { DType } from './tensor.js';
import {
  fmt,
  isSuffix,
  normalizeAxis,
  requireInteger,
  requireRank,
  requireSameShape,
  requireShape,
  sameShape,
  splitAtAxis,
} from './reference-checks.js';

type Storage = Float32Array | Int32Array;
type F32 = Float32Array;
type I32 = Int32Array;

/** What the addon reports about itself. */
export interface NativeInfo {
  /** Threads in the kernel pool (the caller included). */
  threads: number;
  /** The GEMM micro-kernel in use. */
  gemmKernel: 'avx2' | 'portable';
  /** Whether this CPU has AVX2 and FMA. */
  avx2: boolean;
}

/** The addon's exports (native/addon.cc). Sizes are element counts; every array is contiguous. */
interface NativeAddon {
  info(): NativeInfo;
  setThreads(threads: number): number;
  setGemmKernel(kernel: 'avx2' | 'portable'): boolean;
  gemm(
    A: F32,
    B: F32,
    C: F32,
    bias: F32 | null,
    M: number,
    N: number,
    K: number,
    transA: boolean,
    transB: boolean,
    alpha: number,
    accumulate: boolean,
    batch: number,
    strideA: number,
    strideB: number,
    strideC: number,
  ): void;
  binary(op: BinaryOp, a: F32, b: F32, out: F32): void;
  scale(a: F32, s: number, out: F32): void;
  axpy(a: F32, b: F32, alpha: number): void;
  sumRows(x: F32, rows: number, cols: number, out: F32, accumulate: boolean): void;
  activation(kind: Activation, x: F32, y: F32): void;
  activationBackward(kind: Activation, dy: F32, saved: F32, dx: F32): void;
  softmax(x: F32, rows: number, cols: number, y: F32, log: boolean): void;
  layerNorm(x: F32, w: F32, b: F32, rows: number, C: number, eps: number, y: F32, mean: F32, rstd: F32): void;
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
  attention(
    q: F32,
    k: F32,
    v: F32,
    keyMask: F32 | null,
    out: F32,
    probs: F32 | null,
    ...geometry: AttentionGeometry
  ): void;
  attentionBackward(
    dout: F32,
    q: F32,
    k: F32,
    v: F32,
    probs: F32,
    dq: F32,
    dk: F32,
    dv: F32,
    ...geometry: AttentionGeometry
  ): void;
  embedding(ids: I32, table: F32, out: F32, V: number, C: number): void;
  embeddingBackward(dy: F32, ids: I32, dtable: F32, V: number, C: number): void;
  crossEntropy(logits: F32, targets: I32, N: number, V: number, ignoreIndex: number): [number, number];
  crossEntropyBackward(
    logits: F32,
    targets: I32,
    N: number,
    V: number,
    ignoreIndex: number,
    factor: number,
    dlogits: F32,
  ): void;
  adamw(
    param: F32,
    grad: F32,
    m: F32,
    v: F32,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    stepSize: number,
    bc2Sqrt: number,
  ): void;
  dropout(x: F32, p: number, seed: number, y: F32, mask: F32): void;
}

/** [B, Tq, Tk, kvLength, C, nHead, scale, causal, dropoutP, dropoutSeedUint32] */
type AttentionGeometry = [number, number, number, number, number, number, number, boolean, number, number];

const enum BinaryOp {
  Add = 0,
  Mul = 1,
}

/** Activation kinds, as native/kernels.h numbers them. */
const enum Activation {
  Gelu = 0,
  QuickGelu = 1,
  Relu = 2,
  Tanh = 3,
}

/** Resolved attention geometry, shared by the forward and backward passes. */
interface AttentionDims {
  batch: number;
  tq: number;
  /** Rows of k/v as stored (the cache capacity). */
  tk: number;
  /** Rows of k/v in use (opts.kvLength, default tk). */
  kvLen: number;
  channels: number;
  nHead: number;
  scale: number;
  /** Probability dropout (opts.dropout): p = 0 means none; the seed reduced to its low 32 bits. */
  dropP: number;
  dropSeed: number;
}

const ADDON_FILE = 'clipcap_native.node';
const HOW_TO_FIX = 'run `npm rebuild clipcap` (needs g++, make and python3)';

let loaded: { backend: NativeBackend } | { error: string } | undefined;

/**
 * Loads the addon once. Returns the backend, or a one-line reason it is unavailable with how to fix it
 * (engine/index.ts then falls back to the reference backend).
 */
export function loadNativeBackend(): { backend: Backend } | { error: string } {
  if (loaded) return loaded;
  const file = findAddon();
  if (!file) {
    loaded = {
      error: `the native addon is not built (build/Release/${ADDON_FILE} is missing): ${HOW_TO_FIX}`,
    };
    return loaded;
  }
  try {
    const addon = createRequire(import.meta.url)(file) as NativeAddon;
    if (typeof addon.gemm !== 'function' || typeof addon.info !== 'function') {
      throw new Error('it does not export the expected functions (stale build?)');
    }
    loaded = { backend: new NativeBackend(addon) };
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    loaded = { error: `the native addon at ${file} failed to load (${why}): ${HOW_TO_FIX}` };
  }
  return loaded;
}

/** build/Release/clipcap_native.node of this package, from src/engine (tsx, vitest) or dist/src/engine. */
function findAddon(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const candidate = path.resolve(here, up, 'build', 'Release', ADDON_FILE);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

function requireFinite(op: string, what: string, value: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new ShapeError(`${op}: ${what} must be a finite number, got ${String(value)}`);
  }
}

/**
 * A generator seed as the addon takes it: mulberry32At adds the seed modulo 2^32 (JS `| 0`), so only its
 * low 32 bits matter; this is that residue in [0, 2^32).
 */
function uint32(seed: number): number {
  const low = seed % 2 ** 32;
  return low < 0 ? low + 2 ** 32 : low;
}

export class NativeBackend implements Backend {
  readonly name = 'native';

  /** Use loadNativeBackend(): the addon is loaded once per process. */
  constructor(private readonly addon: NativeAddon) {}

  // ---------------------------------------------------------------- addon controls (not in Backend)

  info(): NativeInfo {
    return this.addon.info();
  }

  /** Resizes the kernel thread pool (benchmarks compare fixed thread counts). */
  setThreads(threads: number): void {
    requireInteger('setThreads', 'threads', threads, 1, 1024);
    this.addon.setThreads(threads);
  }

  /** Picks the GEMM micro-kernel (tests cover both); false when this CPU cannot run AVX2. */
  setGemmKernel(kernel: 'avx2' | 'portable'): boolean {
    if (kernel !== 'avx2' && kernel !== 'portable') {
      throw new ShapeError(`setGemmKernel: kernel must be 'avx2' or 'portable', got ${String(kernel)}`);
    }
    return this.addon.setGemmKernel(kernel);
  }

  // ---------------------------------------------------------------- storage access

  /** The tensor's storage, after checking it is a live tensor of this backend with the given dtype. */
  private data(op: string, what: string, t: Tensor, dtype: 'f32'): F32;
  private data(op: string, what: string, t: Tensor, dtype: 'i32'): I32;
  private data(op: string, what: string, t: Tensor, dtype?: DType): Storage;
  private data(op: string, what: string, t: Tensor, dtype?: DType): Storage {
    if (!(t instanceof Tensor)) throw new ShapeError(`${op}: ${what} is not a Tensor`);
    if (!(t.backend instanceof NativeBackend)) {
      throw new Error(`${op}: ${what} belongs to the ${t.backend.name} backend, not native`);
    }
    if (dtype !== undefined && t.dtype !== dtype) {
      throw new ShapeError(`${op}: ${what} ${fmt(t.shape)} must be ${dtype}, got ${t.dtype}`);
    }
    const s = t.storage as Storage;
    if (s.length !== t.size) throw new Error(`${op}: ${what} ${fmt(t.shape)} was used after free()`);
    return s;
  }

  private wrap(data: Storage, shape: readonly number[]): Tensor {
    return new Tensor(this, data, shape, data instanceof Int32Array ? 'i32' : 'f32');
  }

  private newF32(shape: readonly number[]): Tensor {
    return this.wrap(new Float32Array(shapeSize(shape)), shape);
  }

  // ---------------------------------------------------------------- memory

  zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const n = shapeSize(shape);
    return this.wrap(dtype === 'i32' ? new Int32Array(n) : new Float32Array(n), shape);
  }

  upload(data: Float32Array | Int32Array, shape: readonly number[]): Tensor {
    if (!(data instanceof Float32Array) && !(data instanceof Int32Array)) {
      throw new ShapeError('upload: data must be a Float32Array or an Int32Array');
    }
    if (data.length !== shapeSize(shape)) {
      throw new ShapeError(`upload: ${data.length} values do not fill shape ${fmt(shape)}`);
    }
    return this.wrap(data.slice(), shape);
  }

  download(t: Tensor): Float32Array | Int32Array {
    return this.data('download', 'tensor', t).slice();
  }

  /**
   * Releases the memory now by detaching the ArrayBuffer (as the reference backend does): later use of the
   * tensor, or of a reshape sharing its storage, throws "used after free()" instead of reading freed memory.
   */
  free(t: Tensor): void {
    if (!(t.backend instanceof NativeBackend)) {
      throw new Error(`free: tensor belongs to the ${t.backend.name} backend, not native`);
    }
    const buffer = (t.storage as Storage).buffer;
    if (buffer.byteLength === 0 || !(buffer instanceof ArrayBuffer)) return;
    structuredClone(buffer, { transfer: [buffer] });
  }

  clone(x: Tensor): Tensor {
    return this.wrap(this.data('clone', 'x', x).slice(), x.shape);
  }

  fill(x: Tensor, value: number): void {
    const s = this.data('fill', 'x', x);
    if (x.dtype === 'i32' && !Number.isInteger(value)) {
      throw new ShapeError(`fill: an i32 tensor cannot hold ${value}`);
    }
    s.fill(value);
  }

  // ---------------------------------------------------------------- GEMM

  /**
   * C = alpha·op(A)·op(B) + bias, or with `out` + `accumulate`: out += alpha·op(A)·op(B) + bias.
   * A (..., M, K) [stored (..., K, M) with transA]; B (K, N) shared by every batch, or (..., K, N) with the
   * same leading axes as A [stored (..., N, K) with transB]; C (..., M, N).
   */
  matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
    const op = 'matmul';
    const A = this.data(op, 'A', a, 'f32');
    const B = this.data(op, 'B', b, 'f32');
    const transA = opts.transA ?? false;
    const transB = opts.transB ?? false;
    const alpha = opts.alpha ?? 1;
    requireFinite(op, 'alpha', alpha);
    const shapes = `A ${fmt(a.shape)}${transA ? 'ᵀ' : ''} · B ${fmt(b.shape)}${transB ? 'ᵀ' : ''}`;
    if (a.rank < 2 || b.rank < 2) throw new ShapeError(`${op}: operands must be at least 2-D: ${shapes}`);

    const [aRows, aCols] = a.shape.slice(-2);
    const [bRows, bCols] = b.shape.slice(-2);
    const M = transA ? aCols : aRows;
    const K = transA ? aRows : aCols;
    const N = transB ? bRows : bCols;
    if ((transB ? bCols : bRows) !== K) throw new ShapeError(`${op}: inner dimensions differ: ${shapes}`);

    const batchShape = a.shape.slice(0, -2);
    const batches = shapeSize(batchShape);
    if (b.rank > 2 && !sameShape(b.shape.slice(0, -2), batchShape)) {
      throw new ShapeError(`${op}: a batched B needs the same leading axes as A: ${shapes}`);
    }
    const outShape = [...batchShape, M, N];

    let bias: F32 | null = null;
    if (opts.bias) {
      requireShape(op, 'bias', opts.bias, [N]);
      bias = this.data(op, 'bias', opts.bias, 'f32');
    }
    if (opts.accumulate && !opts.out) throw new ShapeError(`${op}: accumulate needs an out tensor`);
    let out: Tensor;
    if (opts.out) {
      requireShape(op, 'out', opts.out, outShape);
      out = opts.out;
      const C0 = this.data(op, 'out', out, 'f32');
      if (C0.buffer === A.buffer || C0.buffer === B.buffer) {
        throw new ShapeError(`${op}: out must not share storage with A or B`);
      }
    } else {
      out = this.newF32(outShape);
    }
    const C = this.data(op, 'out', out, 'f32');
    const accumulate = opts.accumulate ?? false;

    if (b.rank === 2 && !transA) {
      // A shared B: A's rows of every batch are one (batches·M, K) matrix, which blocks better.
      this.addon.gemm(A, B, C, bias, batches * M, N, K, false, transB, alpha, accumulate, 1, 0, 0, 0);
    } else {
      const strideB = b.rank > 2 ? K * N : 0;
      this.addon.gemm(
        A,
        B,
        C,
        bias,
        M,
        N,
        K,
        transA,
        transB,
        alpha,
        accumulate,
        batches,
        M * K,
        strideB,
        M * N,
      );
    }
    return out;
  }

  // ---------------------------------------------------------------- elementwise

  /** a + b, b broadcast over a's leading axes (b's shape is a suffix of a's). */
  add(a: Tensor, b: Tensor): Tensor {
    return this.broadcast('add', BinaryOp.Add, a, b);
  }

  mul(a: Tensor, b: Tensor): Tensor {
    return this.broadcast('mul', BinaryOp.Mul, a, b);
  }

  private broadcast(op: string, kind: BinaryOp, a: Tensor, b: Tensor): Tensor {
    const A = this.data(op, 'a', a, 'f32');
    const B = this.data(op, 'b', b, 'f32');
    if (!isSuffix(b.shape, a.shape)) {
      throw new ShapeError(`${op}: b ${fmt(b.shape)} must be a suffix of a ${fmt(a.shape)} to broadcast`);
    }
    const y = this.newF32(a.shape);
    this.addon.binary(kind, A, B, this.data(op, 'y', y, 'f32'));
    return y;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    const A = this.data('addInPlace', 'a', a, 'f32');
    const B = this.data('addInPlace', 'b', b, 'f32');
    requireSameShape('addInPlace', 'a', a, 'b', b);
    requireFinite('addInPlace', 'alpha', alpha);
    this.addon.axpy(A, B, alpha);
  }

  scale(a: Tensor, s: number): Tensor {
    const X = this.data('scale', 'x', a, 'f32');
    if (typeof s !== 'number') throw new ShapeError(`scale: s must be a number, got ${String(s)}`);
    const y = this.newF32(a.shape);
    this.addon.scale(X, s, this.data('scale', 'y', y, 'f32'));
    return y;
  }

  /** x (rows, C) -> (C): column sums (bias gradients). With `out`, writes (or adds, with accumulate) there. */
  sumRows(x: Tensor, out?: Tensor, accumulate = false): Tensor {
    const op = 'sumRows';
    const X = this.data(op, 'x', x, 'f32');
    const C = x.cols;
    if (accumulate && !out) throw new ShapeError(`${op}: accumulate needs an out tensor`);
    if (out) requireShape(op, 'out', out, [C]);
    const y = out ?? this.newF32([C]);
    this.addon.sumRows(X, x.rows, C, this.data(op, 'out', y, 'f32'), accumulate);
    return y;
  }

  private activation(op: string, kind: Activation, x: Tensor): Tensor {
    const X = this.data(op, 'x', x, 'f32');
    const y = this.newF32(x.shape);
    this.addon.activation(kind, X, this.data(op, 'y', y, 'f32'));
    return y;
  }

  /** dy ⊙ f'(x or y): the backward of an elementwise op, from the saved forward input or output. */
  private activationBackward(op: string, kind: Activation, dy: Tensor, saved: Tensor): Tensor {
    const D = this.data(op, 'dy', dy, 'f32');
    const S = this.data(op, 'saved', saved, 'f32');
    requireSameShape(op, 'dy', dy, 'saved forward tensor', saved);
    const dx = this.newF32(dy.shape);
    this.addon.activationBackward(kind, D, S, this.data(op, 'dx', dx, 'f32'));
    return dx;
  }

  // ---------------------------------------------------------------- activations

  /** GPT-2's gelu_new: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))). */
  gelu(x: Tensor): Tensor {
    return this.activation('gelu', Activation.Gelu, x);
  }

  geluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.activationBackward('geluBackward', Activation.Gelu, dy, x);
  }

  /** CLIP's quick_gelu: x·sigmoid(1.702·x). */
  quickGelu(x: Tensor): Tensor {
    return this.activation('quickGelu', Activation.QuickGelu, x);
  }

  quickGeluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.activationBackward('quickGeluBackward', Activation.QuickGelu, dy, x);
  }

  relu(x: Tensor): Tensor {
    return this.activation('relu', Activation.Relu, x);
  }

  /** Gradient 0 at x = 0, as PyTorch's threshold_backward. */
  reluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.activationBackward('reluBackward', Activation.Relu, dy, x);
  }

  tanh(x: Tensor): Tensor {
    return this.activation('tanh', Activation.Tanh, x);
  }

  /** From the forward's output y = tanh(x): dx = dy·(1 - y²). */
  tanhBackward(dy: Tensor, y: Tensor): Tensor {
    return this.activationBackward('tanhBackward', Activation.Tanh, dy, y);
  }

  /** Softmax over the last axis, max-subtracted so large logits do not overflow. */
  softmax(x: Tensor): Tensor {
    return this.rowSoftmax('softmax', x, false);
  }

  /** x - max - log(Σ exp(x - max)) over the last axis. */
  logSoftmax(x: Tensor): Tensor {
    return this.rowSoftmax('logSoftmax', x, true);
  }

  private rowSoftmax(op: string, x: Tensor, log: boolean): Tensor {
    const X = this.data(op, 'x', x, 'f32');
    const y = this.newF32(x.shape);
    this.addon.softmax(X, x.rows, x.cols, this.data(op, 'y', y, 'f32'), log);
    return y;
  }

  // ---------------------------------------------------------------- normalization

  /** LayerNorm over the last axis with the biased variance (PyTorch): y = (x - mean)·rstd·w + b. */
  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): LayerNormResult {
    const op = 'layerNorm';
    const X = this.data(op, 'x', x, 'f32');
    const W = this.data(op, 'weight', weight, 'f32');
    const Bi = this.data(op, 'bias', bias, 'f32');
    if (x.rank < 1) throw new ShapeError(`${op}: x must be at least 1-D, got ${fmt(x.shape)}`);
    requireFinite(op, 'eps', eps);
    const C = x.cols;
    const rows = x.rows;
    requireShape(op, 'weight', weight, [C]);
    requireShape(op, 'bias', bias, [C]);
    // x (rows, C); mean, rstd (rows)
    const y = this.newF32(x.shape);
    const mean = this.newF32([rows]);
    const rstd = this.newF32([rows]);
    this.addon.layerNorm(
      X,
      W,
      Bi,
      rows,
      C,
      eps,
      this.data(op, 'y', y, 'f32'),
      this.data(op, 'mean', mean, 'f32'),
      this.data(op, 'rstd', rstd, 'f32'),
    );
    return { y, mean, rstd };
  }

  /**
   * With x̂ = (x - mean)·rstd and g = dy·w: dx = rstd·(g - mean(g) - x̂·mean(g·x̂)) (the row-wise mean over C);
   * dweight += Σ_rows dy·x̂; dbias += Σ_rows dy.
   */
  layerNormBackward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    mean: Tensor,
    rstd: Tensor,
    dweight: Tensor,
    dbias: Tensor,
  ): Tensor {
    const op = 'layerNormBackward';
    const DY = this.data(op, 'dy', dy, 'f32');
    const X = this.data(op, 'x', x, 'f32');
    const W = this.data(op, 'weight', weight, 'f32');
    const MEAN = this.data(op, 'mean', mean, 'f32');
    const RSTD = this.data(op, 'rstd', rstd, 'f32');
    const DW = this.data(op, 'dweight', dweight, 'f32');
    const DB = this.data(op, 'dbias', dbias, 'f32');
    requireSameShape(op, 'dy', dy, 'x', x);
    const C = x.cols;
    const rows = x.rows;
    requireShape(op, 'weight', weight, [C]);
    requireShape(op, 'dweight', dweight, [C]);
    requireShape(op, 'dbias', dbias, [C]);
    requireShape(op, 'mean', mean, [rows]);
    requireShape(op, 'rstd', rstd, [rows]);
    if (DW.buffer === DB.buffer) throw new ShapeError(`${op}: dweight and dbias share storage`);
    const dx = this.newF32(x.shape);
    this.addon.layerNormBackward(DY, X, W, MEAN, RSTD, rows, C, this.data(op, 'dx', dx, 'f32'), DW, DB);
    return dx;
  }

  // ---------------------------------------------------------------- attention

  private attentionDims(op: string, q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): AttentionDims {
    requireRank(op, 'q', q, 3);
    requireRank(op, 'k', k, 3);
    requireSameShape(op, 'k', k, 'v', v);
    const [batch, tq, channels] = q.shape;
    const tk = k.shape[1];
    if (k.shape[0] !== batch || k.shape[2] !== channels) {
      throw new ShapeError(
        `${op}: q ${fmt(q.shape)} and k/v ${fmt(k.shape)} need the same batch and channels`,
      );
    }
    requireInteger(op, 'nHead', opts.nHead, 1);
    if (channels % opts.nHead !== 0) {
      throw new ShapeError(`${op}: ${channels} channels do not split into ${opts.nHead} heads`);
    }
    const kvLen = opts.kvLength ?? tk;
    requireInteger(op, `kvLength (k/v ${fmt(k.shape)})`, kvLen, 0, tk);
    if (opts.causal && kvLen < tq) {
      throw new ShapeError(`${op}: causal attention needs kvLength (${kvLen}) >= the ${tq} queries`);
    }
    const scale = opts.scale ?? 1 / Math.sqrt(channels / opts.nHead);
    requireFinite(op, 'scale', scale);
    const drop = opts.dropout ?? { p: 0, seed: 0 };
    if (!(drop.p >= 0 && drop.p < 1))
      throw new ShapeError(`${op}: dropout p must be in [0, 1), got ${drop.p}`);
    if (!Number.isSafeInteger(drop.seed)) {
      throw new ShapeError(`${op}: dropout seed must be an integer, got ${drop.seed}`);
    }
    return {
      batch,
      tq,
      tk,
      kvLen,
      channels,
      nHead: opts.nHead,
      scale,
      dropP: drop.p,
      dropSeed: uint32(drop.seed),
    };
  }

  private geometry(d: AttentionDims, causal: boolean | undefined): AttentionGeometry {
    return [d.batch, d.tq, d.tk, d.kvLen, d.channels, d.nHead, d.scale, causal ?? false, d.dropP, d.dropSeed];
  }

  /**
   * Multi-head scaled dot-product attention. Head h uses channels [h·hd, (h+1)·hd) of q, k and v.
   * Query i may attend key j when j < kvLength, keyMask[b, j] != 0, and (causal) j <= past + i with
   * past = kvLength - Tq. A query with no allowed key outputs zeros (and zero probabilities). With
   * opts.dropout the probabilities are dropped before multiplying V (the same mask as the reference's);
   * `probs` keeps them undropped.
   */
  attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    opts: AttentionOptions & { keepProbs?: boolean },
  ): AttentionResult {
    const op = 'attention';
    const Q = this.data(op, 'q', q, 'f32');
    const K = this.data(op, 'k', k, 'f32');
    const V = this.data(op, 'v', v, 'f32');
    const d = this.attentionDims(op, q, k, v, opts);
    let mask: F32 | null = null;
    if (opts.keyMask) {
      requireShape(op, 'keyMask', opts.keyMask, [d.batch, d.tk]);
      mask = this.data(op, 'keyMask', opts.keyMask, 'f32');
    }
    const out = this.newF32([d.batch, d.tq, d.channels]);
    const probs = opts.keepProbs ? this.newF32([d.batch, d.nHead, d.tq, d.tk]) : undefined;
    this.addon.attention(
      Q,
      K,
      V,
      mask,
      this.data(op, 'out', out, 'f32'),
      probs ? this.data(op, 'probs', probs, 'f32') : null,
      ...this.geometry(d, opts.causal),
    );
    return probs ? { out, probs } : { out };
  }

  /**
   * From the forward's probabilities P (masking is already in them: disallowed keys have p = 0):
   * dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP - rowsum(P ⊙ dP)); dQ = scale·dS·K; dK = scale·dSᵀ·Q.
   * With opts.dropout the mask M is regenerated from the seed: dV = (P⊙M)ᵀ·dO, dP = (dO·Vᵀ) ⊙ M.
   * dk/dv have k/v's stored shape; rows at or past kvLength get zero.
   */
  attentionBackward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
    opts: AttentionOptions,
  ): AttentionGrads {
    const op = 'attentionBackward';
    const DO = this.data(op, 'dout', dout, 'f32');
    const Q = this.data(op, 'q', q, 'f32');
    const K = this.data(op, 'k', k, 'f32');
    const V = this.data(op, 'v', v, 'f32');
    const P = this.data(op, 'probs', probs, 'f32');
    const d = this.attentionDims(op, q, k, v, opts);
    requireSameShape(op, 'dout', dout, 'q', q);
    requireShape(op, 'probs', probs, [d.batch, d.nHead, d.tq, d.tk]);
    const dq = this.newF32(q.shape);
    const dk = this.newF32(k.shape);
    const dv = this.newF32(v.shape);
    this.addon.attentionBackward(
      DO,
      Q,
      K,
      V,
      P,
      this.data(op, 'dq', dq, 'f32'),
      this.data(op, 'dk', dk, 'f32'),
      this.data(op, 'dv', dv, 'f32'),
      ...this.geometry(d, opts.causal),
    );
    return { dq, dk, dv };
  }

  // ---------------------------------------------------------------- embeddings

  /** ids (...) i32, table (V, C) -> (..., C): row ids[i] of the table. */
  embedding(ids: Tensor, table: Tensor): Tensor {
    const op = 'embedding';
    const I = this.data(op, 'ids', ids, 'i32');
    const T = this.data(op, 'table', table, 'f32');
    requireRank(op, 'table', table, 2);
    const [vocab, C] = table.shape;
    checkIds(op, I, vocab);
    const y = this.newF32([...ids.shape, C]);
    this.addon.embedding(I, T, this.data(op, 'y', y, 'f32'), vocab, C);
    return y;
  }

  /** dtable[ids[i]] += dy[i]; repeated ids accumulate. */
  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    const op = 'embeddingBackward';
    const DY = this.data(op, 'dy', dy, 'f32');
    const I = this.data(op, 'ids', ids, 'i32');
    const DT = this.data(op, 'dtable', dtable, 'f32');
    requireRank(op, 'dtable', dtable, 2);
    const [vocab, C] = dtable.shape;
    requireShape(op, 'dy', dy, [...ids.shape, C]);
    checkIds(op, I, vocab);
    this.addon.embeddingBackward(DY, I, DT, vocab, C);
  }

  // ---------------------------------------------------------------- loss

  private lossArgs(op: string, logits: Tensor, targets: Tensor, ignoreIndex: number) {
    const L = this.data(op, 'logits', logits, 'f32');
    const T = this.data(op, 'targets', targets, 'i32');
    requireRank(op, 'logits', logits, 2);
    requireInteger(op, 'ignoreIndex', ignoreIndex, -(2 ** 31), 2 ** 31 - 1);
    const [N, V] = logits.shape;
    requireShape(op, 'targets', targets, [N]);
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
    return { L, T, N, V, count };
  }

  /** Mean over rows whose target != ignoreIndex of logsumexp(logits) - logits[target] (NaN when none). */
  crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex: number): CrossEntropyResult {
    const { L, T, N, V, count } = this.lossArgs('crossEntropy', logits, targets, ignoreIndex);
    const [sum] = this.addon.crossEntropy(L, T, N, V, ignoreIndex);
    return { loss: sum / count, count };
  }

  /** (softmax(logits) - onehot(target))·lossScale/count on counted rows; zero rows where ignored. */
  crossEntropyBackward(logits: Tensor, targets: Tensor, ignoreIndex: number, lossScale = 1): Tensor {
    const op = 'crossEntropyBackward';
    const { L, T, N, V, count } = this.lossArgs(op, logits, targets, ignoreIndex);
    if (typeof lossScale !== 'number') throw new ShapeError(`${op}: lossScale must be a number`);
    const dlogits = this.newF32([N, V]);
    this.addon.crossEntropyBackward(
      L,
      T,
      N,
      V,
      ignoreIndex,
      lossScale / count,
      this.data(op, 'dlogits', dlogits, 'f32'),
    );
    return dlogits;
  }

  // ---------------------------------------------------------------- optimizer

  /**
   * torch.optim.AdamW (single-tensor path), in its exact form:
   * p *= 1 - lr·wd; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
   * p -= (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps).
   */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void {
    const op = 'adamw';
    const P = this.data(op, 'param', param, 'f32');
    const G = this.data(op, 'grad', grad, 'f32');
    const M = this.data(op, 'm', m, 'f32');
    const Vv = this.data(op, 'v', v, 'f32');
    requireSameShape(op, 'param', param, 'grad', grad);
    requireSameShape(op, 'param', param, 'm', m);
    requireSameShape(op, 'param', param, 'v', v);
    requireInteger(op, 'step', opts.step, 1);
    const { lr, beta1, beta2, eps, weightDecay } = opts;
    for (const [what, value] of Object.entries({ lr, beta1, beta2, eps, weightDecay })) {
      requireFinite(op, what, value);
    }
    if (new Set([P.buffer, G.buffer, M.buffer, Vv.buffer]).size !== 4) {
      throw new ShapeError(`${op}: param, grad, m and v must not share storage`);
    }
    const stepSize = lr / (1 - beta1 ** opts.step);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** opts.step);
    this.addon.adamw(P, G, M, Vv, lr, beta1, beta2, eps, weightDecay, stepSize, bc2Sqrt);
  }

  // ---------------------------------------------------------------- dropout

  /**
   * Inverted dropout: element i is kept when mulberry32At(seed, i) >= p (reference-random.ts; the addon
   * hashes each index the same way, so masks are identical across backends and thread counts), and the
   * mask holds 0 or 1/(1-p), so y = x·mask and the backward is dy·mask.
   */
  dropout(x: Tensor, p: number, seed: number): { y: Tensor; mask: Tensor } {
    const op = 'dropout';
    const X = this.data(op, 'x', x, 'f32');
    if (!(p >= 0 && p <= 1)) throw new ShapeError(`${op}: p must be in [0, 1], got ${p}`);
    if (!Number.isSafeInteger(seed)) throw new ShapeError(`${op}: seed must be an integer, got ${seed}`);
    const y = this.newF32(x.shape);
    const mask = this.newF32(x.shape);
    this.addon.dropout(X, p, uint32(seed), this.data(op, 'y', y, 'f32'), this.data(op, 'mask', mask, 'f32'));
    return { y, mask };
  }

  // ---------------------------------------------------------------- layout (TypedArray copies)

  /** Concatenate along `axis` (negative counts from the end); all other axes and the dtype must agree. */
  concat(xs: readonly Tensor[], axis: number): Tensor {
    const op = 'concat';
    if (xs.length === 0) throw new ShapeError(`${op}: needs at least one tensor`);
    const first = xs[0];
    const ax = normalizeAxis(op, axis, first.shape);
    const all = xs.map((t) => fmt(t.shape)).join(', ');
    const srcs = xs.map((t, i) => this.data(op, `xs[${i}]`, t, first.dtype));
    for (const t of xs) {
      const ok = t.rank === first.rank && t.shape.every((dim, i) => i === ax || dim === first.shape[i]);
      if (!ok) throw new ShapeError(`${op}: shapes ${all} differ outside axis ${ax}`);
    }
    const outShape = [...first.shape];
    outShape[ax] = xs.reduce((s, t) => s + t.shape[ax], 0);
    const out = this.zeros(outShape, first.dtype);
    const O = this.data(op, 'out', out);
    const { outer, inner } = splitAtAxis(outShape, ax);
    let dst = 0;
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < xs.length; i++) {
        const block = xs[i].shape[ax] * inner; // contiguous elements of xs[i] per outer index
        O.set(srcs[i].subarray(o * block, (o + 1) * block), dst);
        dst += block;
      }
    }
    return out;
  }

  /** x[..., start:end, ...] along `axis` (negative counts from the end), as a new tensor. */
  slice(x: Tensor, axis: number, start: number, end: number): Tensor {
    const op = 'slice';
    const X = this.data(op, 'x', x);
    const ax = normalizeAxis(op, axis, x.shape);
    const { outer, dim, inner } = splitAtAxis(x.shape, ax);
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > dim) {
      throw new ShapeError(`${op}: range [${start}, ${end}) is outside axis ${ax} of ${fmt(x.shape)}`);
    }
    const outShape = [...x.shape];
    outShape[ax] = end - start;
    const out = this.zeros(outShape, x.dtype);
    const O = this.data(op, 'out', out);
    const len = (end - start) * inner;
    for (let o = 0; o < outer; o++) {
      const from = (o * dim + start) * inner;
      O.set(X.subarray(from, from + len), o * len);
    }
    return out;
  }

  /** dst[..., offset:offset+len, ...] = src along `axis`, in place (KV caches). */
  writeSlice(dst: Tensor, src: Tensor, axis: number, offset: number): void {
    const op = 'writeSlice';
    const D = this.data(op, 'dst', dst);
    const S = this.data(op, 'src', src, dst.dtype);
    const ax = normalizeAxis(op, axis, dst.shape);
    const { outer, dim, inner } = splitAtAxis(dst.shape, ax);
    const shapes = `src ${fmt(src.shape)} into dst ${fmt(dst.shape)} at offset ${offset} of axis ${ax}`;
    const fits =
      src.rank === dst.rank &&
      src.shape.every((d, i) => i === ax || d === dst.shape[i]) &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset + src.shape[ax] <= dim;
    if (!fits) throw new ShapeError(`${op}: cannot write ${shapes}`);
    if (S.buffer === D.buffer) throw new ShapeError(`${op}: src and dst share storage`);
    const len = src.shape[ax] * inner;
    for (let o = 0; o < outer; o++) D.set(S.subarray(o * len, (o + 1) * len), (o * dim + offset) * inner);
  }

  /** Rows of x along axis 0 picked by host indices (repeats allowed), e.g. to reorder beams. */
  indexSelect(x: Tensor, indices: readonly number[]): Tensor {
    const op = 'indexSelect';
    const X = this.data(op, 'x', x);
    if (x.rank < 1) throw new ShapeError(`${op}: x must be at least 1-D, got ${fmt(x.shape)}`);
    const rows = x.shape[0];
    const rowSize = rows === 0 ? 0 : x.size / rows;
    for (const i of indices) requireInteger(op, `index (x ${fmt(x.shape)})`, i, 0, rows - 1);
    const out = this.zeros([indices.length, ...x.shape.slice(1)], x.dtype);
    const O = this.data(op, 'out', out);
    indices.forEach((r, i) => O.set(X.subarray(r * rowSize, (r + 1) * rowSize), i * rowSize));
    return out;
  }
}

function checkIds(op: string, ids: Int32Array, vocab: number): void {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw new Error(`${op}: id ${ids[i]} at position ${i} is outside the table's ${vocab} rows`);
    }
  }
}
