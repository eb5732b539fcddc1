/**
 * Naive definitions of every engine kernel, for tests: plain loops over float64 arrays that state the math
 * as directly as possible (no blocking, no reuse of backend code). Backends are compared with these, and
 * backward kernels also with central finite differences of the forward definitions here.
 *
 * Shared by test/engine/kernels.test.ts (every backend) and the native backend's own tests.
 */

// ------------------------------------------------------------------ data and comparison helpers

/** Sequential mulberry32: the generator the dropout contract is defined by (see src/util/random.ts). */
export function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a += 0x6d2b79f5;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n float32 values uniform in [lo, hi), reproducible from the seed. */
export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const next = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * next();
  return out;
}

/** n float32 values with |x| in [gap, gap + 1): keeps kinks (relu at 0) away from finite differences. */
export function randomAwayFromZero(n: number, seed: number, gap: number): Float32Array {
  const next = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() < 0.5 ? -1 : 1) * (gap + next());
  return out;
}

/** n int32 values uniform in [0, max). */
export function randomInts(n: number, seed: number, max: number): Int32Array {
  const next = mulberry32(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(next() * max);
  return out;
}

export function f64(x: ArrayLike<number>): Float64Array {
  return Float64Array.from(x);
}

/**
 * max|actual - expected| / max|expected|: the error relative to the tensor's scale. NaN or infinity in one
 * array but not at the same place in the other counts as an infinite difference.
 */
export function maxRelDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) return Infinity;
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(a) || Number.isNaN(e)) {
      if (Number.isNaN(a) !== Number.isNaN(e)) return Infinity;
      continue;
    }
    if (!Number.isFinite(a) || !Number.isFinite(e)) {
      if (a !== e) return Infinity;
      continue;
    }
    scale = Math.max(scale, Math.abs(e));
    worst = Math.max(worst, Math.abs(a - e));
  }
  return scale === 0 ? worst : worst / scale;
}

/** Central differences: d f / d x_i ≈ (f(x + h e_i) - f(x - h e_i)) / 2h, all in float64. */
export function numericGrad(f: (x: Float64Array) => number, x: ArrayLike<number>, h: number): Float64Array {
  const xs = f64(x);
  const g = new Float64Array(xs.length);
  for (let i = 0; i < xs.length; i++) {
    const keep = xs[i];
    xs[i] = keep + h;
    const up = f(xs);
    xs[i] = keep - h;
    const down = f(xs);
    xs[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

/** Σ r_i y_i: a random linear functional of an output, so that its gradient with respect to y is r. */
export function dot(r: ArrayLike<number>, y: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += r[i] * y[i];
  return s;
}

// ------------------------------------------------------------------ GEMM

export interface MatmulCase {
  batch: number;
  m: number;
  k: number;
  n: number;
  transA?: boolean;
  transB?: boolean;
  /** B has one matrix per batch; otherwise one B is shared. */
  bBatched?: boolean;
}

/**
 * C[bt, i, j] = alpha·Σ_p op(A)[bt, i, p]·op(B)[bt, p, j] + bias[j], as the dot product of row i of op(A)
 * and column j of op(B). Both are first copied out element by element into float64 arrays (op(B) as its
 * columns), which keeps the dot products contiguous: the big real-shape cases then take a second, not ten.
 */
export function matmulNaive(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  c: MatmulCase,
  bias?: ArrayLike<number>,
  alpha = 1,
): Float64Array {
  const { batch, m, k, n } = c;
  const out = new Float64Array(batch * m * n);
  const rowsA = new Float64Array(m * k); // rowsA[i·k + p] = op(A)[bt, i, p]
  const colsB = new Float64Array(n * k); // colsB[j·k + p] = op(B)[bt, p, j]
  for (let bt = 0; bt < batch; bt++) {
    const bOff = c.bBatched ? bt * k * n : 0;
    for (let i = 0; i < m; i++) {
      for (let p = 0; p < k; p++) rowsA[i * k + p] = a[bt * m * k + (c.transA ? p * m + i : i * k + p)];
    }
    for (let j = 0; j < n; j++) {
      for (let p = 0; p < k; p++) colsB[j * k + p] = b[bOff + (c.transB ? j * k + p : p * n + j)];
    }
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += rowsA[i * k + p] * colsB[j * k + p];
        out[(bt * m + i) * n + j] = alpha * s + (bias ? bias[j] : 0);
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------ elementwise activations

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

export const activations = {
  gelu: {
    f: (x: number) => 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))),
    df: (x: number) => {
      const u = SQRT_2_OVER_PI * (x + 0.044715 * x ** 3);
      const du = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x ** 2);
      return 0.5 * (1 + Math.tanh(u)) + 0.5 * x * du * (1 / Math.cosh(u)) ** 2;
    },
  },
  quickGelu: {
    f: (x: number) => x / (1 + Math.exp(-1.702 * x)),
    df: (x: number) => {
      const s = 1 / (1 + Math.exp(-1.702 * x));
      return s + 1.702 * x * s * (1 - s);
    },
  },
  relu: { f: (x: number) => Math.max(x, 0), df: (x: number) => (x > 0 ? 1 : 0) },
  tanh: { f: Math.tanh, df: (x: number) => 1 / Math.cosh(x) ** 2 },
} as const;

export function mapNaive(x: ArrayLike<number>, f: (v: number) => number): Float64Array {
  return Float64Array.from(x, f);
}

/** softmax over rows of length `cols`: exp(x_i) / Σ exp(x_j), shifted by the row max. */
export function softmaxNaive(x: ArrayLike<number>, cols: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    const row = Array.from({ length: cols }, (_, c) => x[r * cols + c]);
    const max = row.reduce((m, v) => Math.max(m, v), -Infinity);
    const sum = row.reduce((s, v) => s + Math.exp(v - max), 0);
    row.forEach((v, c) => (out[r * cols + c] = Math.exp(v - max) / sum));
  }
  return out;
}

export function logSoftmaxNaive(x: ArrayLike<number>, cols: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    const row = Array.from({ length: cols }, (_, c) => x[r * cols + c]);
    const max = row.reduce((m, v) => Math.max(m, v), -Infinity);
    const lse = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    row.forEach((v, c) => (out[r * cols + c] = v - lse));
  }
  return out;
}

// ------------------------------------------------------------------ layer norm

/** Over rows of length C: y = (x - mean) / sqrt(var + eps)·w + b, with the biased variance. */
export function layerNormNaive(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number>,
  C: number,
  eps: number,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const rows = x.length / C;
  const y = new Float64Array(x.length);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < C; c++) m += x[r * C + c] / C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[r * C + c] - m) ** 2 / C;
    mean[r] = m;
    rstd[r] = 1 / Math.sqrt(v + eps);
    for (let c = 0; c < C; c++) y[r * C + c] = (x[r * C + c] - m) * rstd[r] * w[c] + b[c];
  }
  return { y, mean, rstd };
}

/** Analytic gradients of Σ dy ⊙ layerNorm(x) (mean and variance recomputed in float64). */
export function layerNormBackwardNaive(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  C: number,
  eps: number,
): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const { mean, rstd } = layerNormNaive(x, w, new Float64Array(C), C, eps);
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(C);
  const db = new Float64Array(C);
  for (let r = 0; r < x.length / C; r++) {
    const xhat = (c: number) => (x[r * C + c] - mean[r]) * rstd[r];
    const g = (c: number) => dy[r * C + c] * w[c];
    let sumG = 0;
    let sumGX = 0;
    for (let c = 0; c < C; c++) {
      sumG += g(c);
      sumGX += g(c) * xhat(c);
      dw[c] += dy[r * C + c] * xhat(c);
      db[c] += dy[r * C + c];
    }
    for (let c = 0; c < C; c++) dx[r * C + c] = rstd[r] * (g(c) - sumG / C - (xhat(c) * sumGX) / C);
  }
  return { dx, dw, db };
}

// ------------------------------------------------------------------ attention

export interface AttentionCase {
  batch: number;
  tq: number;
  /** Stored rows of k/v. */
  tk: number;
  channels: number;
  nHead: number;
  causal?: boolean;
  /** (batch, tk): 0 = masked. */
  keyMask?: ArrayLike<number>;
  kvLength?: number;
  scale?: number;
  /** Dropout on the probabilities: see attentionDropoutNaive. */
  dropout?: { p: number; seed: number };
}

/**
 * The attention-dropout contract: probability (b, h, i, j) is multiplied by element
 * ((b·nHead + h)·tq + i)·tk + j of the dropout mask of the same seed (0 or 1/(1-p), dropoutMaskNaive:
 * the sequential generator), tk being the stored key rows. All ones without dropout.
 */
export function attentionDropoutNaive(c: AttentionCase): Float64Array {
  const n = c.batch * c.nHead * c.tq * c.tk;
  return c.dropout ? dropoutMaskNaive(n, c.dropout.p, c.dropout.seed) : new Float64Array(n).fill(1);
}

/** May query i of batch b attend key j? */
function allowed(c: AttentionCase, b: number, i: number, j: number): boolean {
  const kvLen = c.kvLength ?? c.tk;
  if (j >= kvLen) return false;
  if (c.keyMask && c.keyMask[b * c.tk + j] === 0) return false;
  if (c.causal && j > kvLen - c.tq + i) return false;
  return true;
}

/**
 * dropout(softmax(scale·q·kᵀ over allowed keys))·v per head; probs (batch, nHead, tq, tk), zero where not
 * allowed, before dropout.
 */
export function attentionNaive(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  c: AttentionCase,
): { out: Float64Array; probs: Float64Array } {
  const { batch, tq, tk, channels: C, nHead } = c;
  const hd = C / nHead;
  const scale = c.scale ?? 1 / Math.sqrt(hd);
  const out = new Float64Array(batch * tq * C);
  const probs = new Float64Array(batch * nHead * tq * tk);
  const drop = attentionDropoutNaive(c);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < nHead; h++) {
      for (let i = 0; i < tq; i++) {
        const keys = Array.from({ length: tk }, (_, j) => j).filter((j) => allowed(c, b, i, j));
        const scores = keys.map((j) => {
          let s = 0;
          for (let d = 0; d < hd; d++)
            s += q[(b * tq + i) * C + h * hd + d] * k[(b * tk + j) * C + h * hd + d];
          return s * scale;
        });
        const p = keys.length ? softmaxNaive(scores, keys.length) : new Float64Array(0);
        keys.forEach((j, n) => (probs[((b * nHead + h) * tq + i) * tk + j] = p[n]));
        const row = ((b * nHead + h) * tq + i) * tk;
        for (let d = 0; d < hd; d++) {
          let s = 0;
          keys.forEach((j, n) => (s += p[n] * drop[row + j] * v[(b * tk + j) * C + h * hd + d]));
          out[(b * tq + i) * C + h * hd + d] = s;
        }
      }
    }
  }
  return { out, probs };
}

/** Analytic gradients of Σ dout ⊙ attention(q, k, v), through the fixed dropout mask (M below). */
export function attentionBackwardNaive(
  dout: ArrayLike<number>,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  c: AttentionCase,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { batch, tq, tk, channels: C, nHead } = c;
  const hd = C / nHead;
  const scale = c.scale ?? 1 / Math.sqrt(hd);
  const { probs } = attentionNaive(q, k, v, c);
  const drop = attentionDropoutNaive(c);
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const qi = (b: number, i: number, d: number, h: number) => (b * tq + i) * C + h * hd + d;
  const kj = (b: number, j: number, d: number, h: number) => (b * tk + j) * C + h * hd + d;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < nHead; h++) {
      for (let i = 0; i < tq; i++) {
        const p = (j: number) => probs[((b * nHead + h) * tq + i) * tk + j];
        const m = (j: number) => drop[((b * nHead + h) * tq + i) * tk + j];
        // dP_ij = M_ij (dout_i · v_j): the gradient reaches p_ij only through the dropped p_ij M_ij
        const dp = Array.from({ length: tk }, (_, j) => {
          let s = 0;
          for (let d = 0; d < hd; d++) s += dout[qi(b, i, d, h)] * v[kj(b, j, d, h)];
          return s * m(j);
        });
        const pdp = dp.reduce((s, x, j) => s + p(j) * x, 0);
        for (let j = 0; j < tk; j++) {
          const ds = p(j) * (dp[j] - pdp); // softmax backward
          for (let d = 0; d < hd; d++) {
            dv[kj(b, j, d, h)] += p(j) * m(j) * dout[qi(b, i, d, h)];
            dq[qi(b, i, d, h)] += scale * ds * k[kj(b, j, d, h)];
            dk[kj(b, j, d, h)] += scale * ds * q[qi(b, i, d, h)];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}

// ------------------------------------------------------------------ embeddings and loss

export function embeddingNaive(ids: ArrayLike<number>, table: ArrayLike<number>, C: number): Float64Array {
  const out = new Float64Array(ids.length * C);
  for (let i = 0; i < ids.length; i++) for (let c = 0; c < C; c++) out[i * C + c] = table[ids[i] * C + c];
  return out;
}

export function embeddingBackwardNaive(
  dy: ArrayLike<number>,
  ids: ArrayLike<number>,
  vocab: number,
  C: number,
): Float64Array {
  const d = new Float64Array(vocab * C);
  for (let i = 0; i < ids.length; i++) for (let c = 0; c < C; c++) d[ids[i] * C + c] += dy[i * C + c];
  return d;
}

/** torch.nn.functional.cross_entropy(logits, targets, ignore_index): mean of -log softmax[target]. */
export function crossEntropyNaive(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  V: number,
  ignoreIndex: number,
): { loss: number; count: number } {
  const logp = logSoftmaxNaive(logits, V);
  let sum = 0;
  let count = 0;
  for (let n = 0; n < targets.length; n++) {
    if (targets[n] === ignoreIndex) continue;
    sum -= logp[n * V + targets[n]];
    count++;
  }
  return { loss: sum / count, count };
}

export function crossEntropyBackwardNaive(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  V: number,
  ignoreIndex: number,
  lossScale: number,
): Float64Array {
  const p = softmaxNaive(logits, V);
  const count = Array.from(targets).filter((t) => t !== ignoreIndex).length;
  const d = new Float64Array(logits.length);
  for (let n = 0; n < targets.length; n++) {
    if (targets[n] === ignoreIndex) continue;
    for (let c = 0; c < V; c++)
      d[n * V + c] = ((p[n * V + c] - (c === targets[n] ? 1 : 0)) * lossScale) / count;
  }
  return d;
}

// ------------------------------------------------------------------ optimizer and dropout

export interface AdamWState {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
}

/** One AdamW step, textbook form (Loshchilov & Hutter with PyTorch's bias correction), in float64. */
export function adamwNaive(
  s: AdamWState,
  g: ArrayLike<number>,
  o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number },
): void {
  for (let i = 0; i < s.p.length; i++) {
    s.p[i] -= o.lr * o.weightDecay * s.p[i];
    s.m[i] = o.beta1 * s.m[i] + (1 - o.beta1) * g[i];
    s.v[i] = o.beta2 * s.v[i] + (1 - o.beta2) * g[i] * g[i];
    const mhat = s.m[i] / (1 - o.beta1 ** o.step);
    const vhat = s.v[i] / (1 - o.beta2 ** o.step);
    s.p[i] -= (o.lr * mhat) / (Math.sqrt(vhat) + o.eps);
  }
}

/** The dropout contract: element i is kept (scaled by 1/(1-p)) iff the (i+1)-th mulberry32(seed) draw is >= p. */
export function dropoutMaskNaive(n: number, p: number, seed: number): Float64Array {
  const next = mulberry32(seed);
  return Float64Array.from({ length: n }, () => (next() >= p ? 1 / (1 - p) : 0));
}

// ------------------------------------------------------------------ layout

function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

function unravel(flat: number, shape: readonly number[]): number[] {
  return strides(shape).map((st, i) => Math.floor(flat / st) % shape[i]);
}

function ravel(index: readonly number[], shape: readonly number[]): number {
  return strides(shape).reduce((s, st, i) => s + st * index[i], 0);
}

/** Element by element: output index -> which input and where. */
export function concatNaive(xs: ArrayLike<number>[], shapes: number[][], axis: number): Float64Array {
  const outShape = [...shapes[0]];
  outShape[axis] = shapes.reduce((s, sh) => s + sh[axis], 0);
  const out = new Float64Array(outShape.reduce((a, b) => a * b, 1));
  for (let f = 0; f < out.length; f++) {
    const idx = unravel(f, outShape);
    let which = 0;
    while (idx[axis] >= shapes[which][axis]) idx[axis] -= shapes[which++][axis];
    out[f] = xs[which][ravel(idx, shapes[which])];
  }
  return out;
}

export function sliceNaive(
  x: ArrayLike<number>,
  shape: number[],
  axis: number,
  start: number,
  end: number,
): Float64Array {
  const outShape = [...shape];
  outShape[axis] = end - start;
  const out = new Float64Array(outShape.reduce((a, b) => a * b, 1));
  for (let f = 0; f < out.length; f++) {
    const idx = unravel(f, outShape);
    idx[axis] += start;
    out[f] = x[ravel(idx, shape)];
  }
  return out;
}

export function writeSliceNaive(
  dst: ArrayLike<number>,
  dstShape: number[],
  src: ArrayLike<number>,
  srcShape: number[],
  axis: number,
  offset: number,
): Float64Array {
  const out = f64(dst);
  for (let f = 0; f < src.length; f++) {
    const idx = unravel(f, srcShape);
    idx[axis] += offset;
    out[ravel(idx, dstShape)] = src[f];
  }
  return out;
}

// ------------------------------------------------------------------ convolution and pooling (NHWC)

export interface ConvCase {
  batch: number;
  H: number;
  W: number;
  C: number;
  O: number;
  kh: number;
  kw: number;
  stride: [number, number];
  padding: [number, number];
}

/** Output size of a window sliding over a padded axis (PyTorch's floor rule). */
export function convOut(n: number, k: number, stride: number, pad: number): number {
  return Math.floor((n + 2 * pad - k) / stride) + 1;
}

/**
 * PyTorch's Conv2d (NCHW, weight (O, C, kh, kw)) stated on NHWC data with an (O, kh, kw, C) weight:
 * y[b, oy, ox, o] = bias[o] + Σ x[b, oy·s - p + ky, ox·s - p + kx, c]·w[o, ky, kx, c] (+ residual[b, oy, ox, o]),
 * zero outside the image; then max(y, 0) with relu.
 */
export function conv2dNaive(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  c: ConvCase,
  relu = false,
  residual: ArrayLike<number> | null = null,
): Float64Array {
  const Ho = convOut(c.H, c.kh, c.stride[0], c.padding[0]);
  const Wo = convOut(c.W, c.kw, c.stride[1], c.padding[1]);
  const y = new Float64Array(c.batch * Ho * Wo * c.O);
  for (let b = 0; b < c.batch; b++)
    for (let oy = 0; oy < Ho; oy++)
      for (let ox = 0; ox < Wo; ox++)
        for (let o = 0; o < c.O; o++) {
          let s = bias ? bias[o] : 0;
          for (let ky = 0; ky < c.kh; ky++)
            for (let kx = 0; kx < c.kw; kx++) {
              const iy = oy * c.stride[0] - c.padding[0] + ky;
              const ix = ox * c.stride[1] - c.padding[1] + kx;
              if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
              for (let ch = 0; ch < c.C; ch++)
                s += x[((b * c.H + iy) * c.W + ix) * c.C + ch] * w[((o * c.kh + ky) * c.kw + kx) * c.C + ch];
            }
          const at = ((b * Ho + oy) * Wo + ox) * c.O + o;
          if (residual) s += residual[at];
          y[at] = relu ? Math.max(s, 0) : s;
        }
  return y;
}

/** nn.AvgPool2d(kernel, stride, padding) with count_include_pad=True on NHWC data. */
export function avgPool2dNaive(x: ArrayLike<number>, c: Omit<ConvCase, 'O'>): Float64Array {
  const Ho = convOut(c.H, c.kh, c.stride[0], c.padding[0]);
  const Wo = convOut(c.W, c.kw, c.stride[1], c.padding[1]);
  const y = new Float64Array(c.batch * Ho * Wo * c.C);
  for (let b = 0; b < c.batch; b++)
    for (let oy = 0; oy < Ho; oy++)
      for (let ox = 0; ox < Wo; ox++)
        for (let ch = 0; ch < c.C; ch++) {
          let s = 0;
          for (let ky = 0; ky < c.kh; ky++)
            for (let kx = 0; kx < c.kw; kx++) {
              const iy = oy * c.stride[0] - c.padding[0] + ky;
              const ix = ox * c.stride[1] - c.padding[1] + kx;
              if (iy >= 0 && iy < c.H && ix >= 0 && ix < c.W) s += x[((b * c.H + iy) * c.W + ix) * c.C + ch];
            }
          y[((b * Ho + oy) * Wo + ox) * c.C + ch] = s / (c.kh * c.kw);
        }
  return y;
}
