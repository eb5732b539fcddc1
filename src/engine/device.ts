/**
 * What a backend implements: a `Device` computes on storage handles of its own type S (a typed array on the
 * host, a GPU buffer elsewhere) with every size already resolved. `DeviceBackend` (checked.ts) turns a
 * Device into the `Backend` that models call: it checks every argument and shape once, for all devices,
 * counts live memory, registers allocations with scopes, and calls the device with checked handles.
 *
 * Contract for every method: handles are live storage of this device with the sizes the arguments say,
 * outputs are fresh zero-filled allocations unless the method says it adds to or updates one, and no output
 * aliases an input (the checked layer rejects aliasing before the call). Data-dependent checks (ids and
 * targets in range) are the device's: only it can read the data (the host devices throw before any work).
 * No Node APIs here.
 */
import type { ActivationKind, BinaryKind, OpName, WeightFormat } from './backend.js';
import type { DType } from './tensor.js';

/**
 * matmul resolved: per batch bt, C[bt] (M, N) = alpha·op(A[bt])·op(B or B[bt]) + bias (+ C[bt]). Without
 * accumulate, C may hold anything (allocOutput): the device writes every element without reading it.
 */
export interface GemmArgs<S> {
  /** (batches, M, K), or (batches, K, M) with transA. */
  A: S;
  /** (K, N), or (N, K) with transB; once per batch unless sharedB. */
  B: S;
  /** (batches, M, N). */
  C: S;
  /** (N) or null. */
  bias: S | null;
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
  /** B is a packWeight storage (packed for this transB; sharedB). */
  packedB: boolean;
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
export interface AttentionArrays<S> {
  q: S;
  k: S;
  v: S;
}

export interface AttentionGradArrays<S> {
  dq: S;
  dk: S;
  dv: S;
}

/** Cross-entropy inputs: logits (N, V), targets (N). */
export interface LossArgs<S> {
  logits: S;
  targets: S;
  N: number;
  V: number;
  ignoreIndex: number;
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

/** A block copy: `rows` runs of `length` elements, from src at srcOffset + r·srcStride to dst likewise. */
export interface CopyArgs<S> {
  dst: S;
  dstOffset: number;
  dstStride: number;
  src: S;
  srcOffset: number;
  srcStride: number;
  rows: number;
  length: number;
}

/** A saved tensor an attention forward asks for (see attentionSaved). */
export interface SavedSpec {
  shape: number[];
  dtype: DType;
}

export interface Device<S> {
  readonly name: string;
  /** Ops beyond the core (conv2d, avgPool2d, logSoftmaxTopK, ...) this device has; default: all. */
  supports?(op: OpName): boolean;

  // ---- memory ----
  /** A zero-filled allocation of `size` elements. */
  alloc(size: number, dtype: DType): S;
  /**
   * Optional: an allocation of `size` elements whose contents are unspecified (a reused buffer is not
   * zeroed), for an output the op writes in full before reading it: gemm's C when not accumulating and
   * attentionQkv's out. Without it those get alloc's zeros.
   */
  allocOutput?(size: number, dtype: DType): S;
  /** A copy of host data. */
  upload(data: Float32Array | Int32Array): S;
  /** A host copy of the first `size` elements (all of them). */
  read(s: S, size: number, dtype: DType): Promise<Float32Array | Int32Array>;
  /** Releases storage (called once per allocation). */
  release(s: S): void;
  /** Whether two handles share memory (outputs may not alias inputs). */
  aliases(a: S, b: S): boolean;
  /** Scalars the device needs in a narrower form ('real': finite; 'int32'): throws ShapeError if not. */
  checkScalar(op: string, what: string, value: number, kind: 'real' | 'int32'): void;
  fill(s: S, size: number, value: number): void;

  // ---- compute ----
  gemm(g: GemmArgs<S>): void;
  /**
   * Optional (a device without it declines 'matmulActivation'): gemm (never accumulating), then C = f(C)
   * elementwise, with the values activation(kind) gives.
   */
  gemmActivation?(g: GemmArgs<S>, kind: ActivationKind): void;
  /** y (n) = a (n) op b (nb), b repeating over a (nb divides n). */
  binary(kind: BinaryKind, a: S, b: S, y: S, n: number, nb: number): void;
  /** a += alpha·b, in place (n elements). */
  axpy(a: S, b: S, alpha: number, n: number): void;
  /** x (rows, cols) -> out (cols), adding to out with accumulate. */
  sumRows(x: S, rows: number, cols: number, out: S, accumulate: boolean): void;
  activation(kind: ActivationKind, x: S, y: S, n: number): void;
  /** dx = dy ⊙ f'(saved), saved being the forward's input (tanh: output). */
  activationBackward(kind: ActivationKind, dy: S, saved: S, dx: S, n: number): void;
  /** x, y (rows, C); w, b (C); writes mean and rstd (rows). */
  layerNorm(x: S, w: S, b: S, rows: number, C: number, eps: number, y: S, mean: S, rstd: S): void;
  /** Writes dx (rows, C); adds into dw and db (C). */
  layerNormBackward(dy: S, x: S, w: S, mean: S, rstd: S, rows: number, C: number, dx: S, dw: S, db: S): void;
  /** What a recorded forward keeps for the backward (allocated by the caller, passed to both passes). */
  attentionSaved(d: AttentionDims): SavedSpec[];
  /** out (B, Tq, C); keyMask (B, Tk) or null; saved: the attentionSaved allocations, or null (not recording). */
  attention(t: AttentionArrays<S>, keyMask: S | null, out: S, saved: S[] | null, d: AttentionDims): void;
  /** dout (B, Tq, C); writes grads.dq (q's shape), dk and dv (k's shape, zero at rows >= kvLen). */
  attentionBackward(
    dout: S,
    t: AttentionArrays<S>,
    saved: S[],
    grads: AttentionGradArrays<S>,
    d: AttentionDims,
  ): void;
  /**
   * Optional (a device without it declines 'attentionQkv'): out (B, T, C) = attention with q, k and v the
   * column blocks [0, C), [C, 2C), [2C, 3C) of qkv (B, T, 3C); d.tq = d.tk = d.kvLen = T. Forward only.
   */
  attentionQkv?(qkv: S, keyMask: S | null, out: S, d: AttentionDims): void;
  /** out (n, C) = rows ids[i] of table (V, C); throws when an id is out of range. */
  embedding(ids: S, n: number, table: S, out: S, V: number, C: number): void;
  /** dtable[ids[i]] += dy[i]; throws when an id is out of range. */
  embeddingBackward(dy: S, ids: S, n: number, dtable: S, V: number, C: number): void;
  /**
   * Mean over rows whose target != ignoreIndex of logsumexp(logits row) - logit of the target (NaN when
   * none counts), in float64; throws when a target is neither ignoreIndex nor a class.
   */
  crossEntropy(r: LossArgs<S>): Promise<number>;
  /** dlogits (N, V) = (softmax - onehot)·lossScale/count on counted rows; ignored rows stay zero. */
  crossEntropyBackward(r: LossArgs<S>, lossScale: number, dlogits: S): void;
  /** One AdamW step on param, m and v in place. */
  adamw(param: S, grad: S, m: S, v: S, n: number, h: AdamWStep): void;
  /** y = x·keep(i), keep(i) = 1/(1-p) when mulberry32At(seed, i) >= p else 0 (p in [0, 1]). */
  dropout(x: S, p: number, seed: number, y: S, n: number): void;
  /** Block copies (every layout op: concat, slice, writeSlice, indexSelect, copyRows). */
  copy(c: CopyArgs<S>): void;
  /**
   * Decoding: per row of x (rows, V), the k largest float32(s - lse) (s = x / t rounded to float32 when
   * t !== 1, lse = float64 logsumexp of s in index order) into values (rows, k), best first, lower index
   * first on ties, their indices into indices (rows, k). 1 <= k <= V; t > 0 and finite.
   */
  logSoftmaxTopK(x: S, rows: number, V: number, k: number, t: number, values: S, indices: S): void;
  /**
   * y (B, Ho, Wo, O) = conv(x (B, H, W, C), w (O, kh, kw, C)) + bias (O or null) + residual (y's shape or
   * null), then ReLU when `relu`.
   */
  conv2d(x: S, w: S, bias: S | null, residual: S | null, y: S, d: Conv2dDims, relu: boolean): void;
  /** y (B, Ho, Wo, C) = window means of x (B, H, W, C), padding counted as zeros. */
  avgPool2d(x: S, y: S, d: Conv2dDims): void;
  /**
   * y (rows, cols) = w rounded to `format` by Backend.quantizeWeight's definition (int8: channels along
   * channelAxis); throws ShapeError when int8 meets a non-finite value. The checked layer never passes y as
   * an output afterwards (it is read-only), so the device may keep a compact copy standing for it and read
   * that in products instead, until it releases y.
   */
  quantizeWeight(w: S, rows: number, cols: number, format: WeightFormat, channelAxis: 0 | 1, y: S): void;
  /**
   * Optional (a device without it declines 'packWeight'): new storage standing for w (rows, cols) as gemm's
   * B with `transB`, laid out as the device likes, and its size in elements. The checked layer then passes
   * it only to gemm (as B, packedB true, with that transB) and to readPacked, and releases it like any other.
   */
  packWeight?(w: S, rows: number, cols: number, transB: boolean): { storage: S; size: number };
  /** The (rows, cols) values of a packWeight storage, row-major. */
  readPacked?(s: S, rows: number, cols: number, transB: boolean): Promise<Float32Array>;
}
