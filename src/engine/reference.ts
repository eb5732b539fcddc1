/**
 * The reference backend: every `Backend` kernel in plain TypeScript (no Node APIs, so it also runs in a
 * browser). It is the test oracle other backends are compared with, so each kernel is the direct loop
 * that states the op's math, written for clarity rather than speed:
 * - storage is one Float32Array (f32) or Int32Array (i32) per tensor, row-major;
 * - every sum is accumulated in float64 and rounded to float32 once, when stored;
 * - shapes and dtypes are checked before any work, and bad ones throw `ShapeError` naming the op. Those
 *   checks are checked.ts (every backend's), the storage and copies host-backend.ts (shared with the native
 *   backend); this file is the arithmetic, handed each op's checked storage and resolved sizes.
 *
 * Semantics follow PyTorch (see each kernel): GPT-2's tanh GELU, biased-variance LayerNorm, masked keys
 * getting -inf before the softmax, `cross_entropy(ignore_index=...)`, `torch.optim.AdamW`.
 */
import { HostBackend } from './host-backend.js';
import type { ActivationKind, AttentionDims, HostKernels } from './host-backend.js';
import { logSoftmaxTopKRows } from './reference-decoding.js';
import { referenceConvKernels } from './reference-conv.js';
import { mulberry32At } from '../util/random.js';

export class ReferenceBackend extends HostBackend {
  constructor() {
    super('reference', referenceKernels);
  }
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_COEF = 0.044715;

/** Each activation f and its derivative, the latter as a function of the saved forward tensor. */
const ACTIVATIONS: Record<ActivationKind, { f: (x: number) => number; df: (saved: number) => number }> = {
  // GPT-2's gelu_new: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))
  gelu: {
    f: (v) => 0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v))),
    df: (v) => {
      const t = Math.tanh(SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v));
      const dInner = SQRT_2_OVER_PI * (1 + 3 * GELU_COEF * v * v);
      return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * dInner;
    },
  },
  // CLIP's quick_gelu: x·sigmoid(1.702·x)
  quickGelu: {
    f: (v) => v * sigmoid(1.702 * v),
    df: (v) => {
      const s = sigmoid(1.702 * v);
      return s + v * 1.702 * s * (1 - s);
    },
  },
  // gradient 0 at x = 0, as PyTorch's threshold_backward
  relu: { f: (v) => (v > 0 ? v : 0), df: (v) => (v > 0 ? 1 : 0) },
  // the backward gets the forward's output t = tanh(x): dx = dy·(1 - t²)
  tanh: { f: Math.tanh, df: (t) => 1 - t * t },
};

const referenceKernels: HostKernels = {
  /** Any number is accepted: NaN and ±Infinity propagate through the math, as in PyTorch. */
  checkScalar() {},

  /**
   * C = alpha·op(A)·op(B) + bias (added to C with accumulate), per batch. A (M, K) [stored (K, M) with
   * transA]; B (K, N) [stored (N, K) with transB]; C (M, N). A packed B (packWeight) is read the same way:
   * these kernels have no packWeight, so HostDevice packs a weight as a plain copy.
   */
  gemm({ A, B, C, bias, batches, M, N, K, transA, transB, sharedB, alpha, accumulate }) {
    const bStride = sharedB ? 0 : K * N; // a 2-D B is shared by every batch
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
  },

  /** y = a + b or a·b, b repeating over a's leading axes (its shape is a suffix of a's). */
  binary(kind, A, B, Y) {
    for (let i = 0; i < A.length; i++)
      Y[i] = kind === 'add' ? A[i] + B[i % B.length] : A[i] * B[i % B.length];
  },

  axpy(A, B, alpha) {
    for (let i = 0; i < A.length; i++) A[i] += alpha * B[i];
  },

  /** x (rows, C) -> (C): column sums (bias gradients). */
  sumRows(X, rows, C, Y, accumulate) {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let r = 0; r < rows; r++) s += X[r * C + c];
      Y[c] = accumulate ? Y[c] + s : s;
    }
  },

  /** The definition: the product, then the activation over it. */
  gemmActivation(g, kind) {
    this.gemm(g);
    this.activation(kind, g.C, g.C);
  },

  activation(kind, X, Y) {
    const { f } = ACTIVATIONS[kind];
    for (let i = 0; i < X.length; i++) Y[i] = f(X[i]);
  },

  /** dy ⊙ f'(x or y): the backward of an elementwise op, from the saved forward input or output. */
  activationBackward(kind, D, S, DX) {
    const { df } = ACTIVATIONS[kind];
    for (let i = 0; i < D.length; i++) DX[i] = D[i] * df(S[i]);
  },

  /** LayerNorm over the last axis with the biased variance (PyTorch): y = (x - mean)·rstd·w + b. */
  layerNorm(X, W, Bi, rows, C, eps, Y, MEAN, RSTD) {
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
  },

  /**
   * With x̂ = (x - mean)·rstd and g = dy·w: dx = rstd·(g - mean(g) - x̂·mean(g·x̂)) (the row-wise mean over C);
   * dweight += Σ_rows dy·x̂; dbias += Σ_rows dy.
   */
  layerNormBackward(DY, X, W, MEAN, RSTD, rows, C, DX, DW, DB) {
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
  },

  /**
   * Multi-head scaled dot-product attention. Head h uses channels [h·hd, (h+1)·hd) of q, k and v.
   * Query i may attend key j when j < kvLength, keyMask[b, j] != 0, and (causal) j <= past + i with
   * past = kvLength - Tq. Disallowed keys get -inf before the softmax; a query with no allowed key
   * outputs zeros (and zero probabilities). With dropout, out = Σ_j p_ij·keep_ij·v_j (keep: 0 or
   * 1/(1-p), see AttentionOptions.dropout) while P keeps the undropped p_ij.
   */
  attention({ q: Q, k: K, v: V }, mask, O, P, d) {
    const { batch, tq, tk, kvLen, channels: C, nHead, headDim: hd, scale } = d;
    const past = kvLen - tq;
    const p = new Float64Array(kvLen); // one row of probabilities
    const acc = new Float64Array(hd); // one head's output row

    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < nHead; h++) {
        for (let i = 0; i < tq; i++) {
          const qOff = (b * tq + i) * C + h * hd;
          const last = d.causal ? Math.min(kvLen, past + i + 1) : kvLen; // keys [0, last) are in range
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
            const pj = p[j] * attentionKeep(d, pOff + j);
            const vOff = (b * tk + j) * C + h * hd;
            for (let c = 0; c < hd; c++) acc[c] += pj * V[vOff + c];
          }
          for (let c = 0; c < hd; c++) O[qOff + c] = acc[c];
          if (P) for (let j = 0; j < kvLen; j++) P[pOff + j] = p[j];
        }
      }
    }
  },

  /** attention with q, k and v copied out of the column blocks [0, C), [C, 2C), [2C, 3C) of qkv (B, T, 3C). */
  attentionQkv(QKV, mask, O, d) {
    const C = d.channels;
    const rows = d.batch * d.tq;
    const [q, k, v] = [0, 1, 2].map((part) => {
      const x = new Float32Array(rows * C);
      for (let r = 0; r < rows; r++)
        x.set(QKV.subarray(r * 3 * C + part * C, r * 3 * C + (part + 1) * C), r * C);
      return x;
    });
    this.attention({ q, k, v }, mask, O, null, d);
  },

  /**
   * From the forward's probabilities P (masking is already in them: disallowed keys have p = 0):
   * dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP - rowsum(P ⊙ dP)); dQ = scale·dS·K; dK = scale·dSᵀ·Q.
   * With dropout (the forward's), the mask M (0 or 1/(1-p)) is regenerated from the seed:
   * dV = (P⊙M)ᵀ·dO and dP = (dO·Vᵀ) ⊙ M, then the same softmax backward with the undropped P.
   * dk/dv have k/v's stored shape; rows at or past kvLength get zero.
   */
  attentionBackward(DO, { q: Q, k: K, v: V }, P, grads, d) {
    const { batch, tq, tk, kvLen, channels: C, nHead, headDim: hd, scale } = d;
    const dq = new Float64Array(grads.dq.length);
    const dk = new Float64Array(grads.dk.length);
    const dv = new Float64Array(grads.dv.length);
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
            const keep = attentionKeep(d, pOff + j);
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
    grads.dq.set(dq);
    grads.dk.set(dk);
    grads.dv.set(dv);
  },

  /** Row ids[i] of the table (V, C). */
  embedding(I, T, Y, _vocab, C) {
    for (let i = 0; i < I.length; i++) Y.set(T.subarray(I[i] * C, (I[i] + 1) * C), i * C);
  },

  /** dtable[ids[i]] += dy[i]; repeated ids accumulate. */
  embeddingBackward(DY, I, DT, _vocab, C) {
    for (let i = 0; i < I.length; i++) {
      const row = I[i] * C;
      for (let c = 0; c < C; c++) DT[row + c] += DY[i * C + c];
    }
  },

  /** Σ over rows whose target != ignoreIndex of logsumexp(logits) - logits[target]. */
  crossEntropy({ logits: L, targets: T, N, V, ignoreIndex }) {
    let sum = 0;
    for (let n = 0; n < N; n++) {
      if (T[n] === ignoreIndex) continue;
      const row = L.subarray(n * V, (n + 1) * V);
      sum += logSumExp(row) - row[T[n]];
    }
    return sum;
  },

  /** (softmax(logits) - onehot(target))·lossScale/count on counted rows; zero rows where ignored. */
  crossEntropyBackward({ logits: L, targets: T, N, V, ignoreIndex, count }, lossScale, D) {
    const f = lossScale / count;
    for (let n = 0; n < N; n++) {
      if (T[n] === ignoreIndex) continue;
      const row = L.subarray(n * V, (n + 1) * V);
      const lse = logSumExp(row);
      for (let c = 0; c < V; c++) D[n * V + c] = (Math.exp(row[c] - lse) - (c === T[n] ? 1 : 0)) * f;
    }
  },

  /**
   * torch.optim.AdamW (single-tensor path), in its exact form:
   * p *= 1 - lr·wd; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
   * p -= (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps).
   */
  adamw(P, G, M, Vv, { lr, beta1, beta2, eps, weightDecay, stepSize, bc2Sqrt }) {
    for (let i = 0; i < P.length; i++) {
      M[i] = beta1 * M[i] + (1 - beta1) * G[i];
      Vv[i] = beta2 * Vv[i] + (1 - beta2) * G[i] * G[i];
      // decoupled weight decay, then the Adam step from the stored (float32) moments, as PyTorch does
      const decayed = P[i] * (1 - lr * weightDecay);
      P[i] = decayed - (stepSize * M[i]) / (Math.sqrt(Vv[i]) / bc2Sqrt + eps);
    }
  },

  /**
   * Inverted dropout: element i is kept when mulberry32At(seed, i) >= p (util/random.ts) and scaled by
   * 1/(1-p) rounded to float32 (the factor the backward regenerates), so y = x·keep. p = 0 is the identity;
   * p = 1 drops all.
   */
  dropout(X, p, seed, Y) {
    const keepScale = Math.fround(p < 1 ? 1 / (1 - p) : 0);
    for (let i = 0; i < X.length; i++) Y[i] = X[i] * (p === 0 || mulberry32At(seed, i) >= p ? keepScale : 0);
  },

  // decoding ops: reference-decoding.ts
  logSoftmaxTopK: logSoftmaxTopKRows,
  // convolution and pooling: reference-conv.ts
  ...referenceConvKernels,
};

/**
 * The dropout factor of attention probability `index` (flat in (B, nHead, Tq, Tk)): 0 or 1/(1-p) as in
 * the `dropout` op, 1 without dropout.
 */
function attentionKeep(d: AttentionDims, index: number): number {
  if (d.dropP === 0) return 1;
  return mulberry32At(d.dropSeed, index) >= d.dropP ? 1 / (1 - d.dropP) : 0;
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
