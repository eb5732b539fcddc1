/**
 * The reference backend: every `Backend` kernel in plain TypeScript (no Node APIs, so it also runs in a
 * browser). It is the test oracle other backends are compared with, so each kernel is the direct loop
 * that states the op's math, written for clarity rather than speed:
 * - storage is one Float32Array (f32) or Int32Array (i32) per tensor, row-major;
 * - every sum is accumulated in float64 and rounded to float32 once, when stored;
 * - shapes and dtypes are checked before any work, and bad ones throw `ShapeError` naming the op.
 *
 * Semantics follow PyTorch (see each method): GPT-2's tanh GELU, biased-variance LayerNorm, masked keys
 * getting -inf before the softmax, `cross_entropy(ignore_index=...)`, `torch.optim.AdamW`.
 */
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
import { mulberry32At } from './reference-random.js';

type Storage = Float32Array | Int32Array;

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_COEF = 0.044715;

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
  headDim: number;
  scale: number;
  /** Probability dropout (opts.dropout): p = 0 means none. */
  dropP: number;
  dropSeed: number;
}

export class ReferenceBackend implements Backend {
  readonly name = 'reference';

  // ---------------------------------------------------------------- storage access

  /** The tensor's storage, after checking it is a live tensor of this backend with the given dtype. */
  private data(op: string, what: string, t: Tensor, dtype: 'f32'): Float32Array;
  private data(op: string, what: string, t: Tensor, dtype: 'i32'): Int32Array;
  private data(op: string, what: string, t: Tensor, dtype?: DType): Storage;
  private data(op: string, what: string, t: Tensor, dtype?: DType): Storage {
    if (!(t.backend instanceof ReferenceBackend)) {
      throw new Error(`${op}: ${what} belongs to the ${t.backend.name} backend, not reference`);
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
   * Releases the memory now by detaching the ArrayBuffer (transferring it to a clone that is dropped).
   * The tensor, and any reshape sharing its storage, then has an empty array: later use throws a clear
   * "used after free()" error, as a use-after-free would be a crash on a native backend.
   */
  free(t: Tensor): void {
    if (!(t.backend instanceof ReferenceBackend)) {
      throw new Error(`free: tensor belongs to the ${t.backend.name} backend, not reference`);
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
    const bStride = b.rank > 2 ? K * N : 0; // a 2-D B is shared by every batch
    const outShape = [...batchShape, M, N];

    let bias: Float32Array | null = null;
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

    const aRow = new Float64Array(K); // row i of op(A)
    const row = new Float64Array(N); // row i of the product, accumulated in float64
    for (let bt = 0; bt < batches; bt++) {
      const aOff = bt * M * K;
      const bOff = bt * bStride;
      const cOff = bt * M * N;
      for (let i = 0; i < M; i++) {
        for (let k = 0; k < K; k++) aRow[k] = transA ? A[aOff + k * M + i] : A[aOff + i * K + k];
        if (transB) {
          // B stored (N, K): each output is the dot product of two contiguous rows.
          for (let j = 0; j < N; j++) {
            const bRow = bOff + j * K;
            let s = 0;
            for (let k = 0; k < K; k++) s += aRow[k] * B[bRow + k];
            row[j] = s;
          }
        } else {
          // B stored (K, N): i-k-j order walks B's rows contiguously.
          row.fill(0);
          for (let k = 0; k < K; k++) {
            const aik = aRow[k];
            const bRow = bOff + k * N;
            for (let j = 0; j < N; j++) row[j] += aik * B[bRow + j];
          }
        }
        const cRow = cOff + i * N;
        for (let j = 0; j < N; j++) {
          const v = alpha * row[j] + (bias ? bias[j] : 0);
          C[cRow + j] = accumulate ? C[cRow + j] + v : v;
        }
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- elementwise

  /** a + b, b broadcast over a's leading axes (b's shape is a suffix of a's). */
  add(a: Tensor, b: Tensor): Tensor {
    return this.broadcast('add', a, b, (x, y) => x + y);
  }

  mul(a: Tensor, b: Tensor): Tensor {
    return this.broadcast('mul', a, b, (x, y) => x * y);
  }

  private broadcast(op: string, a: Tensor, b: Tensor, f: (x: number, y: number) => number): Tensor {
    const A = this.data(op, 'a', a, 'f32');
    const B = this.data(op, 'b', b, 'f32');
    if (!isSuffix(b.shape, a.shape)) {
      throw new ShapeError(`${op}: b ${fmt(b.shape)} must be a suffix of a ${fmt(a.shape)} to broadcast`);
    }
    const y = this.newF32(a.shape);
    const Y = this.data(op, 'y', y, 'f32');
    for (let i = 0; i < A.length; i++) Y[i] = f(A[i], B[i % B.length]);
    return y;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    const A = this.data('addInPlace', 'a', a, 'f32');
    const B = this.data('addInPlace', 'b', b, 'f32');
    requireSameShape('addInPlace', 'a', a, 'b', b);
    for (let i = 0; i < A.length; i++) A[i] += alpha * B[i];
  }

  scale(a: Tensor, s: number): Tensor {
    return this.map('scale', a, (x) => x * s);
  }

  /** x (rows, C) -> (C): column sums (bias gradients). With `out`, writes (or adds, with accumulate) there. */
  sumRows(x: Tensor, out?: Tensor, accumulate = false): Tensor {
    const op = 'sumRows';
    const X = this.data(op, 'x', x, 'f32');
    const C = x.cols;
    const rows = x.rows;
    if (accumulate && !out) throw new ShapeError(`${op}: accumulate needs an out tensor`);
    if (out) requireShape(op, 'out', out, [C]);
    const y = out ?? this.newF32([C]);
    const Y = this.data(op, 'out', y, 'f32');
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let r = 0; r < rows; r++) s += X[r * C + c];
      Y[c] = accumulate ? Y[c] + s : s;
    }
    return y;
  }

  private map(op: string, x: Tensor, f: (v: number) => number): Tensor {
    const X = this.data(op, 'x', x, 'f32');
    const y = this.newF32(x.shape);
    const Y = this.data(op, 'y', y, 'f32');
    for (let i = 0; i < X.length; i++) Y[i] = f(X[i]);
    return y;
  }

  /** dy ⊙ f'(x or y): the backward of an elementwise op, from the saved forward input or output. */
  private mapBackward(op: string, dy: Tensor, saved: Tensor, df: (v: number) => number): Tensor {
    const D = this.data(op, 'dy', dy, 'f32');
    const S = this.data(op, 'saved', saved, 'f32');
    requireSameShape(op, 'dy', dy, 'saved forward tensor', saved);
    const dx = this.newF32(dy.shape);
    const DX = this.data(op, 'dx', dx, 'f32');
    for (let i = 0; i < D.length; i++) DX[i] = D[i] * df(S[i]);
    return dx;
  }

  // ---------------------------------------------------------------- activations

  /** GPT-2's gelu_new: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))). */
  gelu(x: Tensor): Tensor {
    return this.map(
      'gelu',
      x,
      (v) => 0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v))),
    );
  }

  geluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.mapBackward('geluBackward', dy, x, (v) => {
      const t = Math.tanh(SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v));
      const dInner = SQRT_2_OVER_PI * (1 + 3 * GELU_COEF * v * v);
      return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * dInner;
    });
  }

  /** CLIP's quick_gelu: x·sigmoid(1.702·x). */
  quickGelu(x: Tensor): Tensor {
    return this.map('quickGelu', x, (v) => v * sigmoid(1.702 * v));
  }

  quickGeluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.mapBackward('quickGeluBackward', dy, x, (v) => {
      const s = sigmoid(1.702 * v);
      return s + v * 1.702 * s * (1 - s);
    });
  }

  relu(x: Tensor): Tensor {
    return this.map('relu', x, (v) => (v > 0 ? v : 0));
  }

  /** Gradient 0 at x = 0, as PyTorch's threshold_backward. */
  reluBackward(dy: Tensor, x: Tensor): Tensor {
    return this.mapBackward('reluBackward', dy, x, (v) => (v > 0 ? 1 : 0));
  }

  tanh(x: Tensor): Tensor {
    return this.map('tanh', x, Math.tanh);
  }

  /** From the forward's output y = tanh(x): dx = dy·(1 - y²). */
  tanhBackward(dy: Tensor, y: Tensor): Tensor {
    return this.mapBackward('tanhBackward', dy, y, (t) => 1 - t * t);
  }

  /** Softmax over the last axis, max-subtracted so large logits do not overflow. */
  softmax(x: Tensor): Tensor {
    return this.rowwise('softmax', x, (src, dst) => {
      const max = rowMax(src);
      let sum = 0;
      for (let i = 0; i < src.length; i++) sum += Math.exp(src[i] - max);
      for (let i = 0; i < src.length; i++) dst[i] = Math.exp(src[i] - max) / sum;
    });
  }

  /** x - max - log(Σ exp(x - max)) over the last axis. */
  logSoftmax(x: Tensor): Tensor {
    return this.rowwise('logSoftmax', x, (src, dst) => {
      const lse = logSumExp(src);
      for (let i = 0; i < src.length; i++) dst[i] = src[i] - lse;
    });
  }

  private rowwise(op: string, x: Tensor, f: (src: Float32Array, dst: Float32Array) => void): Tensor {
    const X = this.data(op, 'x', x, 'f32');
    const y = this.newF32(x.shape);
    const Y = this.data(op, 'y', y, 'f32');
    const C = x.cols;
    for (let r = 0; r < x.rows; r++) f(X.subarray(r * C, (r + 1) * C), Y.subarray(r * C, (r + 1) * C));
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
    const C = x.cols;
    const rows = x.rows;
    requireShape(op, 'weight', weight, [C]);
    requireShape(op, 'bias', bias, [C]);
    // x (rows, C); mean, rstd (rows)
    const y = this.newF32(x.shape);
    const mean = this.newF32([rows]);
    const rstd = this.newF32([rows]);
    const Y = this.data(op, 'y', y, 'f32');
    const MEAN = this.data(op, 'mean', mean, 'f32');
    const RSTD = this.data(op, 'rstd', rstd, 'f32');
    for (let r = 0; r < rows; r++) {
      const off = r * C;
      let m = 0;
      for (let c = 0; c < C; c++) m += X[off + c];
      m /= C;
      let variance = 0;
      for (let c = 0; c < C; c++) variance += (X[off + c] - m) ** 2;
      variance /= C;
      const s = 1 / Math.sqrt(variance + eps);
      for (let c = 0; c < C; c++) Y[off + c] = (X[off + c] - m) * s * W[c] + Bi[c];
      MEAN[r] = m;
      RSTD[r] = s;
    }
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
    for (const [what, t] of [
      ['weight', weight],
      ['dweight', dweight],
      ['dbias', dbias],
    ] as const) {
      requireShape(op, what, t, [C]);
    }
    requireShape(op, 'mean', mean, [rows]);
    requireShape(op, 'rstd', rstd, [rows]);

    const dx = this.newF32(x.shape);
    const DX = this.data(op, 'dx', dx, 'f32');
    const dw = new Float64Array(C);
    const db = new Float64Array(C);
    for (let r = 0; r < rows; r++) {
      const off = r * C;
      const m = MEAN[r];
      const s = RSTD[r];
      let meanG = 0;
      let meanGXhat = 0;
      for (let c = 0; c < C; c++) {
        const xhat = (X[off + c] - m) * s;
        const g = DY[off + c] * W[c];
        meanG += g;
        meanGXhat += g * xhat;
        dw[c] += DY[off + c] * xhat;
        db[c] += DY[off + c];
      }
      meanG /= C;
      meanGXhat /= C;
      for (let c = 0; c < C; c++) {
        const xhat = (X[off + c] - m) * s;
        DX[off + c] = s * (DY[off + c] * W[c] - meanG - xhat * meanGXhat);
      }
    }
    for (let c = 0; c < C; c++) {
      DW[c] += dw[c];
      DB[c] += db[c];
    }
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
      headDim,
      scale: opts.scale ?? 1 / Math.sqrt(headDim),
      dropP: drop.p,
      dropSeed: drop.seed,
    };
  }

  /**
   * The dropout factor of probability `index` (flat in (B, nHead, Tq, Tk)): 0 or 1/(1-p) as in the
   * `dropout` op, 1 without dropout.
   */
  private attentionKeep(d: AttentionDims, index: number): number {
    if (d.dropP === 0) return 1;
    return mulberry32At(d.dropSeed, index) >= d.dropP ? 1 / (1 - d.dropP) : 0;
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
    const Q = this.data(op, 'q', q, 'f32');
    const K = this.data(op, 'k', k, 'f32');
    const V = this.data(op, 'v', v, 'f32');
    const d = this.attentionDims(op, q, k, v, opts);
    let mask: Float32Array | null = null;
    if (opts.keyMask) {
      requireShape(op, 'keyMask', opts.keyMask, [d.batch, d.tk]);
      mask = this.data(op, 'keyMask', opts.keyMask, 'f32');
    }
    const { batch, tq, tk, kvLen, channels: C, nHead, headDim: hd, scale } = d;
    const past = kvLen - tq;

    const out = this.newF32([batch, tq, C]);
    const O = this.data(op, 'out', out, 'f32');
    const probs = opts.keepProbs ? this.newF32([batch, nHead, tq, tk]) : undefined;
    const P = probs ? this.data(op, 'probs', probs, 'f32') : null;
    const p = new Float64Array(kvLen); // one row of probabilities
    const acc = new Float64Array(hd); // one head's output row

    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < nHead; h++) {
        for (let i = 0; i < tq; i++) {
          const qOff = (b * tq + i) * C + h * hd;
          const last = opts.causal ? Math.min(kvLen, past + i + 1) : kvLen; // keys [0, last) are in range
          // scores; -inf marks a disallowed key
          let max = -Infinity;
          for (let j = 0; j < kvLen; j++) {
            if (j >= last || (mask && mask[b * tk + j] === 0)) {
              p[j] = -Infinity;
              continue;
            }
            const kOff = (b * tk + j) * C + h * hd;
            let s = 0;
            for (let c = 0; c < hd; c++) s += Q[qOff + c] * K[kOff + c];
            p[j] = s * scale;
            if (p[j] > max) max = p[j];
          }
          // softmax; a row with every key disallowed stays all zero
          let sum = 0;
          for (let j = 0; j < kvLen; j++) {
            p[j] = max === -Infinity ? 0 : Math.exp(p[j] - max);
            sum += p[j];
          }
          for (let j = 0; j < kvLen; j++) p[j] = sum > 0 ? p[j] / sum : 0;
          // out = Σ_j p_j keep_j v_j (j outer, so each v_j is read contiguously)
          const pOff = ((b * nHead + h) * tq + i) * tk;
          acc.fill(0);
          for (let j = 0; j < kvLen; j++) {
            const pj = p[j] * this.attentionKeep(d, pOff + j);
            const vOff = (b * tk + j) * C + h * hd;
            for (let c = 0; c < hd; c++) acc[c] += pj * V[vOff + c];
          }
          for (let c = 0; c < hd; c++) O[qOff + c] = acc[c];
          if (P) for (let j = 0; j < kvLen; j++) P[pOff + j] = p[j];
        }
      }
    }
    return probs ? { out, probs } : { out };
  }

  /**
   * From the forward's probabilities P (masking is already in them: disallowed keys have p = 0):
   * dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP - rowsum(P ⊙ dP)); dQ = scale·dS·K; dK = scale·dSᵀ·Q.
   * With opts.dropout (the forward's), the mask M (0 or 1/(1-p)) is regenerated from the seed:
   * dV = (P⊙M)ᵀ·dO and dP = (dO·Vᵀ) ⊙ M, then the same softmax backward with the undropped P.
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
    const { batch, tq, tk, kvLen, channels: C, nHead, headDim: hd, scale } = d;
    requireSameShape(op, 'dout', dout, 'q', q);
    requireShape(op, 'probs', probs, [batch, nHead, tq, tk]);

    const dq = new Float64Array(q.size);
    const dk = new Float64Array(k.size);
    const dv = new Float64Array(v.size);
    const dp = new Float64Array(kvLen);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < nHead; h++) {
        for (let i = 0; i < tq; i++) {
          const qOff = (b * tq + i) * C + h * hd;
          const pOff = ((b * nHead + h) * tq + i) * tk;
          // dP_ij = keep_ij (dO_i · v_j), and dV_j += p_ij keep_ij dO_i
          let rowDot = 0; // Σ_j p_ij dP_ij
          for (let j = 0; j < kvLen; j++) {
            const vOff = (b * tk + j) * C + h * hd;
            const pij = P[pOff + j];
            const keep = this.attentionKeep(d, pOff + j);
            let s = 0;
            for (let c = 0; c < hd; c++) {
              s += DO[qOff + c] * V[vOff + c];
              dv[vOff + c] += pij * keep * DO[qOff + c];
            }
            dp[j] = s * keep;
            rowDot += pij * dp[j];
          }
          // dS_ij = p_ij (dP_ij - rowDot); scores were scale·q·k
          for (let j = 0; j < kvLen; j++) {
            const ds = P[pOff + j] * (dp[j] - rowDot) * scale;
            const kOff = (b * tk + j) * C + h * hd;
            for (let c = 0; c < hd; c++) {
              dq[qOff + c] += ds * K[kOff + c];
              dk[kOff + c] += ds * Q[qOff + c];
            }
          }
        }
      }
    }
    return {
      dq: this.wrap(Float32Array.from(dq), q.shape),
      dk: this.wrap(Float32Array.from(dk), k.shape),
      dv: this.wrap(Float32Array.from(dv), v.shape),
    };
  }

  // ---------------------------------------------------------------- embeddings

  /** ids (...) i32, table (V, C) -> (..., C): row ids[i] of the table. */
  embedding(ids: Tensor, table: Tensor): Tensor {
    const op = 'embedding';
    const I = this.data(op, 'ids', ids, 'i32');
    const T = this.data(op, 'table', table, 'f32');
    requireRank(op, 'table', table, 2);
    const [vocab, C] = table.shape;
    this.checkIds(op, I, vocab);
    const y = this.newF32([...ids.shape, C]);
    const Y = this.data(op, 'y', y, 'f32');
    for (let i = 0; i < I.length; i++) Y.set(T.subarray(I[i] * C, (I[i] + 1) * C), i * C);
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
    this.checkIds(op, I, vocab);
    for (let i = 0; i < I.length; i++) {
      const row = I[i] * C;
      for (let c = 0; c < C; c++) DT[row + c] += DY[i * C + c];
    }
  }

  private checkIds(op: string, ids: Int32Array, vocab: number): void {
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0 || ids[i] >= vocab) {
        throw new Error(`${op}: id ${ids[i]} at position ${i} is outside the table's ${vocab} rows`);
      }
    }
  }

  // ---------------------------------------------------------------- loss

  private lossArgs(op: string, logits: Tensor, targets: Tensor, ignoreIndex: number) {
    const L = this.data(op, 'logits', logits, 'f32');
    const T = this.data(op, 'targets', targets, 'i32');
    requireRank(op, 'logits', logits, 2);
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
    let sum = 0;
    for (let n = 0; n < N; n++) {
      if (T[n] === ignoreIndex) continue;
      const row = L.subarray(n * V, (n + 1) * V);
      sum += logSumExp(row) - row[T[n]];
    }
    return { loss: sum / count, count };
  }

  /** (softmax(logits) - onehot(target))·lossScale/count on counted rows; zero rows where ignored. */
  crossEntropyBackward(logits: Tensor, targets: Tensor, ignoreIndex: number, lossScale = 1): Tensor {
    const op = 'crossEntropyBackward';
    const { L, T, N, V, count } = this.lossArgs(op, logits, targets, ignoreIndex);
    const dlogits = this.newF32([N, V]);
    const D = this.data(op, 'dlogits', dlogits, 'f32');
    const f = lossScale / count;
    for (let n = 0; n < N; n++) {
      if (T[n] === ignoreIndex) continue;
      const row = L.subarray(n * V, (n + 1) * V);
      const lse = logSumExp(row);
      for (let c = 0; c < V; c++) D[n * V + c] = (Math.exp(row[c] - lse) - (c === T[n] ? 1 : 0)) * f;
    }
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
    const stepSize = lr / (1 - beta1 ** opts.step);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** opts.step);
    for (let i = 0; i < P.length; i++) {
      M[i] = beta1 * M[i] + (1 - beta1) * G[i];
      Vv[i] = beta2 * Vv[i] + (1 - beta2) * G[i] * G[i];
      // decoupled weight decay, then the Adam step from the stored (float32) moments, as PyTorch does
      const decayed = P[i] * (1 - lr * weightDecay);
      P[i] = decayed - (stepSize * M[i]) / (Math.sqrt(Vv[i]) / bc2Sqrt + eps);
    }
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
    const keepScale = p < 1 ? 1 / (1 - p) : 0;
    const y = this.newF32(x.shape);
    const mask = this.newF32(x.shape);
    const Y = this.data(op, 'y', y, 'f32');
    const MASK = this.data(op, 'mask', mask, 'f32');
    for (let i = 0; i < X.length; i++) {
      MASK[i] = p === 0 || mulberry32At(seed, i) >= p ? keepScale : 0;
      Y[i] = X[i] * MASK[i];
    }
    return { y, mask };
  }

  // ---------------------------------------------------------------- layout

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

function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}

function rowMax(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  return max;
}

/** log Σ exp(row), max-subtracted. */
function logSumExp(row: Float32Array): number {
  const max = rowMax(row);
  if (max === -Infinity || max === Infinity) return max;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return max + Math.log(sum);
}
