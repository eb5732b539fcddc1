/**
 * What every backend whose tensors live in host memory shares: the reference backend (reference.ts) and the
 * native one (native.ts) both keep one Float32Array / Int32Array per tensor, row-major. This class owns
 * everything about those tensors that is not arithmetic, written once so the backends cannot drift:
 * - storage access, memory ops (zeros, upload, download, free, clone, fill);
 * - every op's argument checks, with the messages backend.ts promises ("bad shapes throw ShapeError before
 *   any work"), and the shape arithmetic that turns tensors into kernel arguments;
 * - the layout ops (concat, slice, writeSlice, indexSelect), which are TypedArray copies.
 * The arithmetic is a `HostKernels` object each backend supplies: plain loops in the reference backend,
 * calls into the C++ addon in the native one. Kernels receive storage that has passed every check.
 *
 * No Node APIs here: the reference backend built on it must still run in a browser.
 */
import { ShapeError } from './backend.js';
import type {
  AdamWOptions,
  AttentionGrads,
  AttentionOptions,
  AttentionResult,
  Backend,
  Conv2dOptions,
  CrossEntropyResult,
  LayerNormResult,
  MatmulOptions,
  TopKResult,
  Pool2dOptions,
  WeightFormat,
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

/** The elementwise activations; their backward takes the forward's input (tanh: its output). */
export type ActivationKind = 'gelu' | 'quickGelu' | 'relu' | 'tanh';

/** matmul resolved: per batch bt, C[bt] (M, N) = alpha·op(A[bt])·op(B or B[bt]) + bias (+ C[bt]). */
export interface GemmArgs {
  /** (batches, M, K), or (batches, K, M) with transA. */
  A: F32;
  /** (K, N), or (N, K) with transB; once per batch unless sharedB. */
  B: F32;
  /** (batches, M, N). */
  C: F32;
  /** (N) or null. */
  bias: F32 | null;
  batches: number;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  /** B is 2-D: every batch multiplies the same B. */
  sharedB: boolean;
  alpha: number;
  /** C += the product instead of C = it. */
  accumulate: boolean;
}

/** The compact form of a quantized weight (Backend.quantizeWeight), rows x cols as the f32 tensor. */
export interface CompactWeight {
  format: WeightFormat;
  rows: number;
  cols: number;
  /** Output channels along rows (0) or columns (1): where `scales` apply (int8). */
  channelAxis: 0 | 1;
  /** int8: Int8Array of q; bf16: Uint16Array of the upper halves of the f32 values. */
  data: Int8Array | Uint16Array;
  /** int8: one scale per channel; bf16: null. */
  scales: F32 | null;
}

/** Resolved attention geometry, shared by the forward and backward passes. */
export interface AttentionDims {
  batch: number;
  tq: number;
  /** Rows of k/v as stored (the cache capacity). */
  tk: number;
  /** Rows of k/v in use (opts.kvLength, default tk). */
  kvLen: number;
  channels: number;
  nHead: number;
  headDim: number;
  scale: number;
  causal: boolean;
  /** Probability dropout (opts.dropout): p = 0 means none. */
  dropP: number;
  /** A safe integer; only its low 32 bits matter (mulberry32At adds it with `| 0`). */
  dropSeed: number;
}

/** q (B, Tq, C), k and v (B, Tk, C) of one attention call. */
export interface AttentionArrays {
  q: F32;
  k: F32;
  v: F32;
}

export interface AttentionGradArrays {
  dq: F32;
  dk: F32;
  dv: F32;
}

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

/** AdamW hyperparameters plus the bias corrections of this step. */
export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** lr / (1 - beta1^step) */
  stepSize: number;
  /** sqrt(1 - beta2^step) */
  bc2Sqrt: number;
}

/** conv2d / avgPool2d resolved: NHWC input (B, H, W, C), output (B, Ho, Wo, O); O = C for pooling. */
export interface Conv2dDims {
  batch: number;
  H: number;
  W: number;
  C: number;
  /** Output channels (conv: the weight's rows; pooling: C). */
  O: number;
  kh: number;
  kw: number;
  strideH: number;
  strideW: number;
  padH: number;
  padW: number;
  Ho: number;
  Wo: number;
}

/**
 * The arithmetic of a host backend. Arrays are the tensors' storage, already checked for dtype, shape,
 * liveness and the aliasing every backend forbids. Outputs are new zero-filled arrays, except the caller's
 * tensors that gemm and sumRows write (or add) into and the arrays a kernel says it adds to or updates.
 * Shapes in comments: rows = all leading axes flattened.
 */
export interface HostKernels {
  /**
   * Checks a scalar argument further where the kernel needs it ('real': the native addon takes finite
   * doubles; 'int32': it takes an int32). Called at the point each op reads the scalar.
   */
  checkScalar(op: string, what: string, value: number, kind: 'real' | 'int32'): void;
  gemm(g: GemmArgs): void;
  /** y[i] = a[i] + b[i mod b.length] (or ·): b broadcasts over a's leading axes. */
  binary(kind: 'add' | 'mul', a: F32, b: F32, y: F32): void;
  /** a += alpha·b, in place. */
  axpy(a: F32, b: F32, alpha: number): void;
  scale(x: F32, s: number, y: F32): void;
  /** x (rows, cols) -> out (cols), adding to out with accumulate. */
  sumRows(x: F32, rows: number, cols: number, out: F32, accumulate: boolean): void;
  activation(kind: ActivationKind, x: F32, y: F32): void;
  /** dx = dy ⊙ f'(saved), saved being the forward's input (tanh: output). */
  activationBackward(kind: ActivationKind, dy: F32, saved: F32, dx: F32): void;
  /** Softmax (or log-softmax) of each row of x (rows, cols). */
  softmax(x: F32, rows: number, cols: number, y: F32, log: boolean): void;
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
  /** out (B, Tq, C); keyMask (B, Tk) or null; probs (B, nHead, Tq, Tk) or null. */
  attention(t: AttentionArrays, keyMask: F32 | null, out: F32, probs: F32 | null, d: AttentionDims): void;
  /** dout (B, Tq, C); writes grads.dq (q's shape), dk and dv (k's shape, zero at rows >= kvLen). */
  attentionBackward(
    dout: F32,
    t: AttentionArrays,
    probs: F32,
    grads: AttentionGradArrays,
    d: AttentionDims,
  ): void;
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
  /** mask = 0 or 1/(1-p) per element (kept when mulberry32At(seed, i) >= p); y = x·mask. */
  dropout(x: F32, p: number, seed: number, y: F32, mask: F32): void;
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
   * (Backend.quantizeWeight), to read them instead where a product streams that weight. Never called for
   * storage that can change (quantized weights are read-only).
   */
  keepCompact?(values: F32, compact: CompactWeight): void;
}

export abstract class HostBackend implements Backend {
  abstract readonly name: string;

  constructor(private readonly kernels: HostKernels) {}

  /** Storage of quantized weights (quantizeWeight): read-only, since a compact copy may stand for them. */
  private readonly readOnly = new WeakSet<Storage>();

  /** Throws when t is a quantized weight, which no op may write to. */
  private writable(op: string, what: string, t: Tensor): void {
    if (this.readOnly.has(t.storage as Storage))
      throw new ShapeError(`${op}: ${what} is a quantized weight (quantizeWeight), which is read-only`);
  }

  // ---------------------------------------------------------------- storage access

  /**
   * The tensor's storage, after checking it is a live tensor of this backend (any instance of the same
   * class: both backends store typed arrays, but each only trusts its own) with the given dtype.
   */
  private data(op: string, what: string, t: Tensor, dtype: 'f32'): F32;
  private data(op: string, what: string, t: Tensor, dtype: 'i32'): I32;
  private data(op: string, what: string, t: Tensor, dtype?: DType): Storage;
  private data(op: string, what: string, t: Tensor, dtype?: DType): Storage {
    if (!(t instanceof Tensor)) throw new ShapeError(`${op}: ${what} is not a Tensor`);
    if (!(t.backend instanceof this.constructor)) {
      throw new Error(`${op}: ${what} belongs to the ${t.backend.name} backend, not ${this.name}`);
    }
    if (dtype !== undefined && t.dtype !== dtype) {
      throw new ShapeError(`${op}: ${what} ${fmt(t.shape)} must be ${dtype}, got ${t.dtype}`);
    }
    const s = t.storage as Storage;
    if (s.length !== t.size) throw new Error(`${op}: ${what} ${fmt(t.shape)} was used after free()`);
    return s;
  }

  /** `data(op, key, tensor, 'f32')` for each entry, in order: the keys name the tensors in errors. */
  private f32s<K extends string>(op: string, tensors: Record<K, Tensor>): Record<K, F32> {
    const out = {} as Record<K, F32>;
    for (const [what, t] of Object.entries(tensors) as [K, Tensor][]) {
      out[what] = this.data(op, what, t, 'f32');
    }
    return out;
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
   * Releases the memory now by detaching the ArrayBuffer (transferring it to a clone that is dropped).
   * The tensor, and any reshape sharing its storage, then has an empty array: later use throws a clear
   * "used after free()" error instead of reading freed memory (a crash on a native backend).
   */
  free(t: Tensor): void {
    if (!(t.backend instanceof this.constructor)) {
      throw new Error(`free: tensor belongs to the ${t.backend.name} backend, not ${this.name}`);
    }
    const buffer = (t.storage as Storage).buffer;
    // already freed (or empty): freeing twice is safe. Our storages are never shared buffers.
    if (buffer.byteLength === 0 || !(buffer instanceof ArrayBuffer)) return;
    structuredClone(buffer, { transfer: [buffer] });
  }

  clone(x: Tensor): Tensor {
    return this.wrap(this.data('clone', 'x', x).slice(), x.shape);
  }

  fill(x: Tensor, value: number): void {
    const s = this.data('fill', 'x', x);
    this.writable('fill', 'x', x);
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
    const { A, B } = this.f32s(op, { A: a, B: b });
    const transA = opts.transA ?? false;
    const transB = opts.transB ?? false;
    const alpha = opts.alpha ?? 1;
    this.kernels.checkScalar(op, 'alpha', alpha, 'real');
    const shapes = `A ${fmt(a.shape)}${transA ? 'ᵀ' : ''} · B ${fmt(b.shape)}${transB ? 'ᵀ' : ''}`;
    if (a.rank < 2 || b.rank < 2) throw new ShapeError(`${op}: operands must be at least 2-D: ${shapes}`);

    const [aRows, aCols] = a.shape.slice(-2);
    const [bRows, bCols] = b.shape.slice(-2);
    const M = transA ? aCols : aRows;
    const K = transA ? aRows : aCols;
    const N = transB ? bRows : bCols;
    if ((transB ? bCols : bRows) !== K) throw new ShapeError(`${op}: inner dimensions differ: ${shapes}`);

    const batchShape = a.shape.slice(0, -2);
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
      this.writable(op, 'out', out);
      if (C0.buffer === A.buffer || C0.buffer === B.buffer) {
        throw new ShapeError(`${op}: out must not share storage with A or B`);
      }
    } else {
      out = this.newF32(outShape);
    }
    this.kernels.gemm({
      A,
      B,
      C: this.data(op, 'out', out, 'f32'),
      bias,
      batches: shapeSize(batchShape),
      M,
      N,
      K,
      transA,
      transB,
      sharedB: b.rank === 2,
      alpha,
      accumulate: opts.accumulate ?? false,
    });
    return out;
  }

  // ---------------------------------------------------------------- elementwise

  /** a + b, b broadcast over a's leading axes (b's shape is a suffix of a's). */
  add(a: Tensor, b: Tensor): Tensor {
    return this.broadcast('add', a, b);
  }

  mul(a: Tensor, b: Tensor): Tensor {
    return this.broadcast('mul', a, b);
  }

  private broadcast(op: 'add' | 'mul', a: Tensor, b: Tensor): Tensor {
    const s = this.f32s(op, { a, b });
    if (!isSuffix(b.shape, a.shape)) {
      throw new ShapeError(`${op}: b ${fmt(b.shape)} must be a suffix of a ${fmt(a.shape)} to broadcast`);
    }
    const y = this.newF32(a.shape);
    this.kernels.binary(op, s.a, s.b, this.data(op, 'y', y, 'f32'));
    return y;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    const op = 'addInPlace';
    const s = this.f32s(op, { a, b });
    requireSameShape(op, 'a', a, 'b', b);
    this.writable(op, 'a', a);
    this.kernels.checkScalar(op, 'alpha', alpha, 'real');
    this.kernels.axpy(s.a, s.b, alpha);
  }

  scale(a: Tensor, s: number): Tensor {
    const X = this.data('scale', 'x', a, 'f32');
    const y = this.newF32(a.shape);
    this.kernels.scale(X, s, this.data('scale', 'y', y, 'f32'));
    return y;
  }

  /** x (rows, C) -> (C): column sums (bias gradients). With `out`, writes (or adds, with accumulate) there. */
  sumRows(x: Tensor, out?: Tensor, accumulate = false): Tensor {
    const op = 'sumRows';
    const X = this.data(op, 'x', x, 'f32');
    const C = x.cols;
    if (accumulate && !out) throw new ShapeError(`${op}: accumulate needs an out tensor`);
    if (out) requireShape(op, 'out', out, [C]);
    if (out) this.writable(op, 'out', out);
    const y = out ?? this.newF32([C]);
    this.kernels.sumRows(X, x.rows, C, this.data(op, 'out', y, 'f32'), accumulate);
    return y;
  }

  // ---------------------------------------------------------------- activations

  /** GPT-2's gelu_new: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))). */
  gelu(x: Tensor): Tensor {
    return this.activation('gelu', x);
  }

  /** CLIP's quick_gelu: x·sigmoid(1.702·x). */
  quickGelu(x: Tensor): Tensor {
    return this.activation('quickGelu', x);
  }

  relu(x: Tensor): Tensor {
    return this.activation('relu', x);
  }

  tanh(x: Tensor): Tensor {
    return this.activation('tanh', x);
  }

  geluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.activationBackward('gelu', dy, x);
  }

  quickGeluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.activationBackward('quickGelu', dy, x);
  }

  /** Gradient 0 at x = 0, as PyTorch's threshold_backward. */
  reluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.activationBackward('relu', dy, x);
  }

  /** From the forward's output y = tanh(x): dx = dy·(1 - y²). */
  tanhBackward(dy: Tensor, y: Tensor): Tensor {
    return this.activationBackward('tanh', dy, y);
  }

  private activation(kind: ActivationKind, x: Tensor): Tensor {
    const X = this.data(kind, 'x', x, 'f32');
    const y = this.newF32(x.shape);
    this.kernels.activation(kind, X, this.data(kind, 'y', y, 'f32'));
    return y;
  }

  /** dy ⊙ f'(x or y): the backward of an elementwise op, from the saved forward input or output. */
  private activationBackward(kind: ActivationKind, dy: Tensor, saved: Tensor): Tensor {
    const op = `${kind}Backward`;
    const s = this.f32s(op, { dy, saved });
    requireSameShape(op, 'dy', dy, 'saved forward tensor', saved);
    const dx = this.newF32(dy.shape);
    this.kernels.activationBackward(kind, s.dy, s.saved, this.data(op, 'dx', dx, 'f32'));
    return dx;
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
    this.kernels.softmax(X, x.rows, x.cols, this.data(op, 'y', y, 'f32'), log);
    return y;
  }

  // ---------------------------------------------------------------- normalization

  /** LayerNorm over the last axis with the biased variance (PyTorch): y = (x - mean)·rstd·w + b. */
  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): LayerNormResult {
    const op = 'layerNorm';
    const s = this.f32s(op, { x, weight, bias });
    if (x.rank < 1) throw new ShapeError(`${op}: x must be at least 1-D, got ${fmt(x.shape)}`);
    this.kernels.checkScalar(op, 'eps', eps, 'real');
    const C = x.cols;
    const rows = x.rows;
    requireShape(op, 'weight', weight, [C]);
    requireShape(op, 'bias', bias, [C]);
    // x (rows, C); mean, rstd (rows)
    const y = this.newF32(x.shape);
    const mean = this.newF32([rows]);
    const rstd = this.newF32([rows]);
    const o = this.f32s(op, { y, mean, rstd });
    this.kernels.layerNorm(s.x, s.weight, s.bias, rows, C, eps, o.y, o.mean, o.rstd);
    return { y, mean, rstd };
  }

  /**
   * With x̂ = (x - mean)·rstd and g = dy·w: dx = rstd·(g - mean(g) - x̂·mean(g·x̂)) (the row-wise mean over C);
   * dweight += Σ_rows dy·x̂; dbias += Σ_rows dy.
   */
  layerNormBackward(...args: Parameters<Backend['layerNormBackward']>): Tensor {
    const [dy, x, weight, mean, rstd, dweight, dbias] = args; // Backend's parameter list, not restated
    const op = 'layerNormBackward';
    const s = this.f32s(op, { dy, x, weight, mean, rstd, dweight, dbias });
    requireSameShape(op, 'dy', dy, 'x', x);
    const C = x.cols;
    const rows = x.rows;
    for (const [what, t] of Object.entries({ weight, dweight, dbias })) requireShape(op, what, t, [C]);
    requireShape(op, 'mean', mean, [rows]);
    requireShape(op, 'rstd', rstd, [rows]);
    const dx = this.newF32(x.shape);
    const DX = this.data(op, 'dx', dx, 'f32');
    this.kernels.layerNormBackward(s.dy, s.x, s.weight, s.mean, s.rstd, rows, C, DX, s.dweight, s.dbias);
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
    const headDim = channels / opts.nHead;
    const kvLen = opts.kvLength ?? tk;
    requireInteger(op, `kvLength (k/v ${fmt(k.shape)})`, kvLen, 0, tk);
    if (opts.causal && kvLen < tq) {
      throw new ShapeError(`${op}: causal attention needs kvLength (${kvLen}) >= the ${tq} queries`);
    }
    const scale = opts.scale ?? 1 / Math.sqrt(headDim);
    this.kernels.checkScalar(op, 'scale', scale, 'real');
    const drop = opts.dropout ?? { p: 0, seed: 0 };
    if (!(drop.p >= 0 && drop.p < 1))
      throw new ShapeError(`${op}: dropout p must be in [0, 1), got ${drop.p}`);
    if (!Number.isSafeInteger(drop.seed)) {
      throw new ShapeError(`${op}: dropout seed must be an integer, got ${drop.seed}`);
    }
    const causal = opts.causal ?? false;
    return {
      batch,
      tq,
      tk,
      kvLen,
      channels,
      nHead: opts.nHead,
      headDim,
      scale,
      causal,
      dropP: drop.p,
      dropSeed: drop.seed,
    };
  }

  /**
   * Multi-head scaled dot-product attention. Head h uses channels [h·hd, (h+1)·hd) of q, k and v.
   * Query i may attend key j when j < kvLength, keyMask[b, j] != 0, and (causal) j <= past + i with
   * past = kvLength - Tq. Disallowed keys get -inf before the softmax; a query with no allowed key
   * outputs zeros (and zero probabilities). With opts.dropout, out = Σ_j p_ij·keep_ij·v_j (keep: 0 or
   * 1/(1-p), see AttentionOptions.dropout) while `probs` keeps the undropped p_ij.
   */
  attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    opts: AttentionOptions & { keepProbs?: boolean },
  ): AttentionResult {
    const op = 'attention';
    const qkv = this.f32s(op, { q, k, v });
    const d = this.attentionDims(op, q, k, v, opts);
    let mask: F32 | null = null;
    if (opts.keyMask) {
      requireShape(op, 'keyMask', opts.keyMask, [d.batch, d.tk]);
      mask = this.data(op, 'keyMask', opts.keyMask, 'f32');
    }
    const out = this.newF32([d.batch, d.tq, d.channels]);
    const probs = opts.keepProbs ? this.newF32([d.batch, d.nHead, d.tq, d.tk]) : undefined;
    const P = probs ? this.data(op, 'probs', probs, 'f32') : null;
    this.kernels.attention(qkv, mask, this.data(op, 'out', out, 'f32'), P, d);
    return probs ? { out, probs } : { out };
  }

  /**
   * From the forward's probabilities P (masking is already in them: disallowed keys have p = 0):
   * dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP - rowsum(P ⊙ dP)); dQ = scale·dS·K; dK = scale·dSᵀ·Q.
   * With opts.dropout (the forward's), the mask M (0 or 1/(1-p)) is regenerated from the seed:
   * dV = (P⊙M)ᵀ·dO and dP = (dO·Vᵀ) ⊙ M, then the same softmax backward with the undropped P.
   * dk/dv have k/v's stored shape; rows at or past kvLength get zero.
   */
  attentionBackward(...args: Parameters<Backend['attentionBackward']>): AttentionGrads {
    const [dout, q, k, v, probs, opts] = args; // Backend's parameter list, not restated
    const op = 'attentionBackward';
    const { dout: DO, probs: P, ...qkv } = this.f32s(op, { dout, q, k, v, probs });
    const d = this.attentionDims(op, q, k, v, opts);
    requireSameShape(op, 'dout', dout, 'q', q);
    requireShape(op, 'probs', probs, [d.batch, d.nHead, d.tq, d.tk]);
    const grads = { dq: this.newF32(q.shape), dk: this.newF32(k.shape), dv: this.newF32(v.shape) };
    this.kernels.attentionBackward(DO, qkv, P, this.f32s(op, grads), d);
    return grads;
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
    this.kernels.embedding(I, T, this.data(op, 'y', y, 'f32'), vocab, C);
    return y;
  }

  /** dtable[ids[i]] += dy[i]; repeated ids accumulate. */
  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    const op = 'embeddingBackward';
    const DY = this.data(op, 'dy', dy, 'f32');
    const I = this.data(op, 'ids', ids, 'i32');
    const DT = this.data(op, 'dtable', dtable, 'f32');
    requireRank(op, 'dtable', dtable, 2);
    this.writable(op, 'dtable', dtable);
    const [vocab, C] = dtable.shape;
    requireShape(op, 'dy', dy, [...ids.shape, C]);
    checkIds(op, I, vocab);
    this.kernels.embeddingBackward(DY, I, DT, vocab, C);
  }

  // ---------------------------------------------------------------- loss

  /** Checks logits (N, V) and targets (N), and counts the rows whose target is not ignoreIndex. */
  private lossRows(op: string, logits: Tensor, targets: Tensor, ignoreIndex: number): LossRows {
    const L = this.data(op, 'logits', logits, 'f32');
    const T = this.data(op, 'targets', targets, 'i32');
    requireRank(op, 'logits', logits, 2);
    this.kernels.checkScalar(op, 'ignoreIndex', ignoreIndex, 'int32');
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
    return { logits: L, targets: T, N, V, ignoreIndex, count };
  }

  /** Mean over rows whose target != ignoreIndex of logsumexp(logits) - logits[target] (NaN when none). */
  crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex: number): CrossEntropyResult {
    const rows = this.lossRows('crossEntropy', logits, targets, ignoreIndex);
    return { loss: this.kernels.crossEntropy(rows) / rows.count, count: rows.count };
  }

  /** (softmax(logits) - onehot(target))·lossScale/count on counted rows; zero rows where ignored. */
  crossEntropyBackward(logits: Tensor, targets: Tensor, ignoreIndex: number, lossScale = 1): Tensor {
    const op = 'crossEntropyBackward';
    const rows = this.lossRows(op, logits, targets, ignoreIndex);
    const dlogits = this.newF32([rows.N, rows.V]);
    this.kernels.crossEntropyBackward(rows, lossScale, this.data(op, 'dlogits', dlogits, 'f32'));
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
    const s = this.f32s(op, { param, grad, m, v });
    for (const [what, t] of [
      ['param', param],
      ['m', m],
      ['v', v],
    ] as const)
      this.writable(op, what, t);
    requireSameShape(op, 'param', param, 'grad', grad);
    requireSameShape(op, 'param', param, 'm', m);
    requireSameShape(op, 'param', param, 'v', v);
    requireInteger(op, 'step', opts.step, 1);
    const { lr, beta1, beta2, eps, weightDecay } = opts;
    for (const [what, value] of Object.entries({ lr, beta1, beta2, eps, weightDecay })) {
      this.kernels.checkScalar(op, what, value, 'real');
    }
    const stepSize = lr / (1 - beta1 ** opts.step);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** opts.step);
    this.kernels.adamw(s.param, s.grad, s.m, s.v, { lr, beta1, beta2, eps, weightDecay, stepSize, bc2Sqrt });
  }

  // ---------------------------------------------------------------- dropout

  /**
   * Inverted dropout: element i is kept when mulberry32At(seed, i) >= p (reference-random.ts), and the
   * mask holds 0 or 1/(1-p), so y = x·mask and the backward is dy·mask. p = 0 is the identity; p = 1 drops all.
   */
  dropout(x: Tensor, p: number, seed: number): { y: Tensor; mask: Tensor } {
    const op = 'dropout';
    const X = this.data(op, 'x', x, 'f32');
    if (!(p >= 0 && p <= 1)) throw new ShapeError(`${op}: p must be in [0, 1], got ${p}`);
    if (!Number.isSafeInteger(seed)) throw new ShapeError(`${op}: seed must be an integer, got ${seed}`);
    const y = this.newF32(x.shape);
    const mask = this.newF32(x.shape);
    const o = this.f32s(op, { y, mask });
    this.kernels.dropout(X, p, seed, o.y, o.mask);
    return { y, mask };
  }

  // ---------------------------------------------------------------- convolution and pooling (NHWC)

  /**
   * 2-D cross-correlation: x (B, H, W, C), weight (O, kh, kw, C) -> (B, Ho, Wo, O), + bias (O), + residual
   * (B, Ho, Wo, O), then ReLU when asked. Ho = floor((H + 2·padH - kh) / strideH) + 1, likewise Wo.
   */
  conv2d(x: Tensor, weight: Tensor, opts: Conv2dOptions = {}): Tensor {
    const op = 'conv2d';
    const s = this.f32s(op, { x, weight });
    requireRank(op, 'x (B, H, W, C)', x, 4);
    requireRank(op, 'weight (O, kh, kw, C)', weight, 4);
    const [O, kh, kw, wc] = weight.shape;
    if (wc !== x.shape[3]) {
      throw new ShapeError(
        `${op}: weight ${fmt(weight.shape)} (O, kh, kw, C) takes ${wc} input channels but x ${fmt(x.shape)} has ${x.shape[3]}`,
      );
    }
    const d = windowDims(op, x.shape, O, [kh, kw], opts.stride ?? 1, opts.padding ?? 0);
    let bias: F32 | null = null;
    if (opts.bias) {
      requireShape(op, 'bias', opts.bias, [O]);
      bias = this.data(op, 'bias', opts.bias, 'f32');
    }
    const outShape = [d.batch, d.Ho, d.Wo, O];
    let residual: F32 | null = null;
    if (opts.residual) {
      requireShape(op, 'residual', opts.residual, outShape);
      residual = this.data(op, 'residual', opts.residual, 'f32');
    }
    const y = this.newF32(outShape);
    this.kernels.conv2d(s.x, s.weight, bias, residual, this.data(op, 'y', y, 'f32'), d, opts.relu ?? false);
    return y;
  }

  /** Window means of x (B, H, W, C) -> (B, Ho, Wo, C) (nn.AvgPool2d, count_include_pad, floor mode). */
  avgPool2d(x: Tensor, opts: Pool2dOptions): Tensor {
    const op = 'avgPool2d';
    const X = this.data(op, 'x', x, 'f32');
    requireRank(op, 'x (B, H, W, C)', x, 4);
    const kernel = pair(op, 'kernel', opts.kernel, 1);
    const d = windowDims(op, x.shape, x.shape[3], kernel, opts.stride ?? kernel, opts.padding ?? 0);
    if (d.padH * 2 > d.kh || d.padW * 2 > d.kw) {
      throw new ShapeError(
        `${op}: padding ${d.padH}x${d.padW} must be at most half the kernel ${d.kh}x${d.kw}`,
      );
    }
    const y = this.newF32([d.batch, d.Ho, d.Wo, d.C]);
    this.kernels.avgPool2d(X, this.data(op, 'y', y, 'f32'), d);
    return y;
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
    this.writable(op, 'dst', dst);
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

  // ---------------------------------------------------------------- decoding (see backend.ts)

  logSoftmaxTopK(logits: Tensor, k: number, temperature: number): TopKResult {
    const op = 'logSoftmaxTopK';
    const X = this.data(op, 'logits', logits, 'f32');
    if (logits.rank !== 2) throw new ShapeError(`${op}: logits must be (rows, V), got ${fmt(logits.shape)}`);
    const [rows, V] = logits.shape;
    requireInteger(op, `k (logits ${fmt(logits.shape)})`, k, 1, Math.max(1, V));
    if (V === 0) throw new ShapeError(`${op}: logits ${fmt(logits.shape)} have no vocabulary`);
    if (typeof temperature !== 'number' || Number.isNaN(temperature) || temperature === Infinity)
      throw new ShapeError(`${op}: temperature must be a finite number, got ${String(temperature)}`);
    // Official: logits / (temperature if temperature > 0 else 1.0).
    const t = temperature > 0 ? temperature : 1;
    const values = this.newF32([rows, k]);
    const indices = this.wrap(new Int32Array(rows * k), [rows, k]);
    this.kernels.logSoftmaxTopK(
      X,
      rows,
      V,
      k,
      t,
      this.data(op, 'values', values, 'f32'),
      this.data(op, 'indices', indices, 'i32'),
    );
    return { values, indices };
  }

  copyRows(dst: Tensor, src: Tensor, indices: readonly number[], length: number): void {
    const op = 'copyRows';
    const D = this.data(op, 'dst', dst);
    this.writable(op, 'dst', dst);
    const S = this.data(op, 'src', src, dst.dtype);
    const shapes = `src ${fmt(src.shape)} into dst ${fmt(dst.shape)}`;
    if (dst.rank < 2 || src.rank !== dst.rank || !src.shape.every((d, i) => i === 0 || d === dst.shape[i]))
      throw new ShapeError(`${op}: cannot copy rows of ${shapes} (rank >= 2, equal trailing axes)`);
    if (indices.length !== dst.shape[0])
      throw new ShapeError(
        `${op}: ${indices.length} indices for the ${dst.shape[0]} rows of dst ${fmt(dst.shape)}`,
      );
    for (const i of indices) requireInteger(op, `index (src ${fmt(src.shape)})`, i, 0, src.shape[0] - 1);
    requireInteger(op, `length (axis 1 of ${fmt(dst.shape)})`, length, 0, dst.shape[1]);
    if (S.buffer === D.buffer) throw new ShapeError(`${op}: src and dst share storage`);
    const rowSize = dst.shape[0] === 0 ? 0 : dst.size / dst.shape[0];
    const n = dst.shape[1] === 0 ? 0 : (rowSize / dst.shape[1]) * length; // the first `length` positions
    indices.forEach((r, i) => D.set(S.subarray(r * rowSize, r * rowSize + n), i * rowSize));
  }
  // ---------------------------------------------------------------- weight-only quantization

  quantizeWeight(w: Tensor, format: WeightFormat, channelAxis: 0 | 1): Tensor {
    const op = 'quantizeWeight';
    const W = this.data(op, 'w', w, 'f32');
    requireRank(op, 'w', w, 2);
    if (format !== 'bf16' && format !== 'int8')
      throw new ShapeError(`${op}: format must be 'bf16' or 'int8', got ${String(format)}`);
    if (channelAxis !== 0 && channelAxis !== 1)
      throw new ShapeError(`${op}: channelAxis must be 0 or 1, got ${String(channelAxis)}`);
    const [rows, cols] = w.shape;
    const out = this.newF32([rows, cols]);
    const Y = this.data(op, 'out', out, 'f32');
    const compact = format === 'bf16' ? quantizeBf16(W, Y) : quantizeInt8(op, W, rows, cols, channelAxis, Y);
    this.readOnly.add(Y);
    this.kernels.keepCompact?.(Y, {
      format,
      rows,
      cols,
      channelAxis,
      data: compact.data,
      scales: compact.scales,
    });
    return out;
  }
}

/** f32 <-> bit views for bf16 rounding. */
const bits32 = new Uint32Array(1);
const float32 = new Float32Array(bits32.buffer);

/** Round-to-nearest-even bfloat16 of each value (NaN stays a quiet NaN): the upper halves, and y = their f32. */
function quantizeBf16(w: F32, y: F32): { data: Uint16Array; scales: null } {
  const data = new Uint16Array(w.length);
  for (let i = 0; i < w.length; i++) {
    float32[0] = w[i];
    const x = bits32[0];
    let h: number;
    if ((x & 0x7fffffff) > 0x7f800000)
      h = (x >>> 16) | 0x40; // NaN: keep it a (quiet) NaN
    else h = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
    data[i] = h;
    bits32[0] = h << 16;
    y[i] = float32[0];
  }
  return { data, scales: null };
}

/** Round half to even (the rounding of torch.round and of C's nearbyint). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Symmetric int8 per output channel (Backend.quantizeWeight); y = the dequantized values. */
function quantizeInt8(
  op: string,
  w: F32,
  rows: number,
  cols: number,
  channelAxis: 0 | 1,
  y: F32,
): { data: Int8Array; scales: F32 } {
  const channels = channelAxis === 0 ? rows : cols;
  // element (r, c) belongs to channel r (axis 0) or c (axis 1)
  const channelOf = (i: number): number => (channelAxis === 0 ? Math.floor(i / cols) : i % cols);
  const absmax = new Float64Array(channels);
  for (let i = 0; i < w.length; i++) {
    const v = w[i];
    if (!Number.isFinite(v))
      throw new ShapeError(`${op}: w has a non-finite value at ${Math.floor(i / cols)},${i % cols}`);
    const c = channelOf(i);
    if (Math.abs(v) > absmax[c]) absmax[c] = Math.abs(v);
  }
  const scales = Float32Array.from(absmax, (m) => Math.fround(m / 127));
  const data = new Int8Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const s = scales[channelOf(i)];
    const q = s === 0 ? 0 : Math.max(-127, Math.min(127, roundHalfEven(Math.fround(w[i] / s))));
    data[i] = q;
    y[i] = Math.fround(q * s);
  }
  return { data, scales };
}

function checkIds(op: string, ids: I32, vocab: number): void {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw new Error(`${op}: id ${ids[i]} at position ${i} is outside the table's ${vocab} rows`);
    }
  }
}

/** A (height, width) pair from a number or a pair; each an integer >= min. */
function pair(
  op: string,
  what: string,
  v: number | readonly [number, number],
  min: number,
): [number, number] {
  if (typeof v !== 'number' && !(Array.isArray(v) && v.length === 2)) {
    throw new ShapeError(`${op}: ${what} must be a number or a (height, width) pair`);
  }
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0], v[1]];
  requireInteger(op, `${what} (height)`, p[0], min);
  requireInteger(op, `${what} (width)`, p[1], min);
  return p;
}

/** The output geometry of a kh x kw window sliding over x (B, H, W, C); throws when it does not fit. */
function windowDims(
  op: string,
  xShape: readonly number[],
  O: number,
  kernel: readonly [number, number],
  stride: number | readonly [number, number],
  padding: number | readonly [number, number],
): Conv2dDims {
  const [batch, H, W, C] = xShape;
  const [kh, kw] = kernel;
  const [strideH, strideW] = pair(op, 'stride', stride, 1);
  const [padH, padW] = pair(op, 'padding', padding, 0);
  if (kh < 1 || kw < 1 || H + 2 * padH < kh || W + 2 * padW < kw) {
    throw new ShapeError(
      `${op}: a ${kh}x${kw} window does not fit x ${fmt(xShape)} padded by ${padH}x${padW}`,
    );
  }
  const Ho = Math.floor((H + 2 * padH - kh) / strideH) + 1;
  const Wo = Math.floor((W + 2 * padW - kw) / strideW) + 1;
  return { batch, H, W, C, O, kh, kw, strideH, strideW, padH, padW, Ho, Wo };
}
