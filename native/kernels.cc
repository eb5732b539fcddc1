// Row-wise and elementwise kernels. Sums that the reference accumulates in float64 are accumulated in
// double here too (they are memory-bound, so this costs little); per-element math is float unless matching
// the reference needs double (scale/axpy factors given as JS doubles, AdamW).
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "threadpool.h"
#include "vecmath.h"

namespace clipcap {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoef = 0.044715f;
constexpr float kQuickGeluCoef = 1.702f;

// Σ x[i] in double with four independent accumulators (one serial chain would cost 4 cycles per add).
inline double sum_double(const float* x, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += x[i];
    a1 += x[i + 1];
    a2 += x[i + 2];
    a3 += x[i + 3];
  }
  for (; i < n; ++i) a0 += x[i];
  return (a0 + a1) + (a2 + a3);
}

inline float row_max(const float* x, int64_t n) {
  // `>` as the reference does, so NaNs are skipped the same way.
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i)
    if (x[i] > m) m = x[i];
  return m;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

// Σ exp(x[i] - shift) in double, storing the exps in out when given.
inline double exp_sum(const float* x, int64_t n, float shift, float* out) {
#if CLIPCAP_X86_KERNELS
  if (simd_avx2()) return exp_sum_avx2(x, n, shift, out);
#endif
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp(x[i] - shift);
    if (out != nullptr) out[i] = e;
    sum += e;
  }
  return sum;
}
}  // namespace

// ---------------------------------------------------------------- elementwise

void binary_bcast(BinaryOp op, const float* a, int64_t n, const float* b, int64_t nb, float* out) {
  if (nb <= 0) return;
  parallel_for(n, 1.0, [&](int64_t begin, int64_t end, int64_t) {
    // Walk b cyclically from begin % nb instead of taking a modulo per element.
    int64_t j = begin % nb;
    int64_t i = begin;
    while (i < end) {
      const int64_t run = std::min(end - i, nb - j);
      const float* ai = a + i;
      const float* bj = b + j;
      float* oi = out + i;
      if (op == BinaryOp::kAdd) {
        for (int64_t t = 0; t < run; ++t) oi[t] = ai[t] + bj[t];
      } else {
        for (int64_t t = 0; t < run; ++t) oi[t] = ai[t] * bj[t];
      }
      i += run;
      j = 0;
    }
  });
}

// The factors arrive as JS doubles; the products are rounded once, as the reference rounds them.
void scale(const float* a, int64_t n, double s, float* out) {
  parallel_for(n, 1.0, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<float>(a[i] * s);
  });
}

void axpy(float* a, const float* b, int64_t n, double alpha) {
  parallel_for(n, 1.0, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t i = begin; i < end; ++i) a[i] = static_cast<float>(a[i] + alpha * b[i]);
  });
}

void sum_rows(const float* x, int64_t rows, int64_t cols, float* out, bool accumulate) {
  // Threads take column stripes (each sums its stripe over every row), so no reduction across threads.
  constexpr int64_t kStripe = 64;
  const int64_t stripes = (cols + kStripe - 1) / kStripe;
  parallel_for(stripes, static_cast<double>(rows) * kStripe, [&](int64_t s0, int64_t s1, int64_t) {
    double acc[kStripe];
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t c0 = s * kStripe;
      const int64_t w = std::min(kStripe, cols - c0);
      for (int64_t c = 0; c < w; ++c) acc[c] = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * cols + c0;
        for (int64_t c = 0; c < w; ++c) acc[c] += row[c];
      }
      for (int64_t c = 0; c < w; ++c) out[c0 + c] = static_cast<float>(accumulate ? out[c0 + c] + acc[c] : acc[c]);
    }
  });
}

// ---------------------------------------------------------------- activations

void activation_serial(Activation act, const float* x, int64_t n, float* y) {
  const bool simd = CLIPCAP_X86_KERNELS && simd_avx2();
  (void)simd;
  const int64_t begin = 0, end = n;
#if CLIPCAP_X86_KERNELS
  if (simd && act != Activation::kRelu) {
    const int64_t len = end - begin;
    if (act == Activation::kGelu) gelu_avx2(x + begin, len, y + begin);
    if (act == Activation::kQuickGelu) quick_gelu_avx2(x + begin, len, y + begin);
    if (act == Activation::kTanh) tanh_avx2(x + begin, len, y + begin);
    return;
  }
#endif
  switch (act) {
    case Activation::kGelu:
      // GPT-2 gelu_new: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))
      for (int64_t i = begin; i < end; ++i) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * (v + kGeluCoef * v * v * v)));
      }
      break;
    case Activation::kQuickGelu:
      for (int64_t i = begin; i < end; ++i) y[i] = x[i] * sigmoid(kQuickGeluCoef * x[i]);
      break;
    case Activation::kRelu:
      for (int64_t i = begin; i < end; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      break;
    case Activation::kTanh:
      for (int64_t i = begin; i < end; ++i) y[i] = std::tanh(x[i]);
      break;
  }
}

void activation_forward(Activation act, const float* x, int64_t n, float* y) {
  const bool simd = CLIPCAP_X86_KERNELS && simd_avx2();
  parallel_for(n, act == Activation::kRelu ? 1.0 : simd ? 4.0 : 20.0, [&](int64_t begin, int64_t end, int64_t) {
    activation_serial(act, x + begin, end - begin, y + begin);
  });
}

void activation_backward(Activation act, const float* dy, const float* saved, int64_t n, float* dx) {
  const bool simd = CLIPCAP_X86_KERNELS && simd_avx2();
  const bool cheap = act == Activation::kRelu || act == Activation::kTanh;
  parallel_for(n, cheap ? 1.0 : simd ? 4.0 : 20.0, [&](int64_t begin, int64_t end, int64_t) {
#if CLIPCAP_X86_KERNELS
    if (simd && !cheap) {
      const int64_t len = end - begin;
      if (act == Activation::kGelu) gelu_backward_avx2(dy + begin, saved + begin, len, dx + begin);
      if (act == Activation::kQuickGelu) quick_gelu_backward_avx2(dy + begin, saved + begin, len, dx + begin);
      return;
    }
#endif
    switch (act) {
      case Activation::kGelu:
        for (int64_t i = begin; i < end; ++i) {
          const float v = saved[i];
          const float t = std::tanh(kSqrt2OverPi * (v + kGeluCoef * v * v * v));
          const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoef * v * v);
          dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
        }
        break;
      case Activation::kQuickGelu:
        for (int64_t i = begin; i < end; ++i) {
          const float v = saved[i];
          const float s = sigmoid(kQuickGeluCoef * v);
          dx[i] = dy[i] * (s + v * kQuickGeluCoef * s * (1.0f - s));
        }
        break;
      case Activation::kRelu:
        // dy·(x > 0 ? 1 : 0), as the reference (0·dy keeps its sign and NaN); branch-free so it vectorizes.
        for (int64_t i = begin; i < end; ++i) dx[i] = dy[i] * (saved[i] > 0.0f ? 1.0f : 0.0f);
        break;
      case Activation::kTanh:
        // 1 - y² in double: near |y| = 1 the float product would lose the difference.
        for (int64_t i = begin; i < end; ++i)
          dx[i] = static_cast<float>(dy[i] * (1.0 - static_cast<double>(saved[i]) * saved[i]));
        break;
    }
  });
}

// ---------------------------------------------------------------- softmax

void softmax_rows(const float* x, int64_t rows, int64_t cols, float* y, bool log) {
  parallel_for(rows, 20.0 * static_cast<double>(cols), [&](int64_t r0, int64_t r1, int64_t) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* src = x + r * cols;
      float* dst = y + r * cols;
      const float mx = row_max(src, cols);
      double sum = 0;
      if (log) {
        sum = exp_sum(src, cols, mx, nullptr);
        // x - (max + log Σ exp(x - max)); an all -inf row gives NaN, as in the reference.
        const double lse = (mx == -std::numeric_limits<float>::infinity() || mx == std::numeric_limits<float>::infinity())
                               ? static_cast<double>(mx)
                               : mx + std::log(sum);
        for (int64_t c = 0; c < cols; ++c) dst[c] = static_cast<float>(src[c] - lse);
      } else {
        sum = exp_sum(src, cols, mx, dst);
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t c = 0; c < cols; ++c) dst[c] *= inv;
      }
    }
  });
}

// ---------------------------------------------------------------- layer norm

void layernorm_forward(const float* x, const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                       float* y, float* mean, float* rstd) {
  const bool simd = CLIPCAP_X86_KERNELS && simd_avx2();
  parallel_for(rows, 8.0 * static_cast<double>(C), [&](int64_t r0, int64_t r1, int64_t) {
#if CLIPCAP_X86_KERNELS
    if (simd) {
      for (int64_t r = r0; r < r1; ++r)
        layernorm_row_avx2(x + r * C, weight, bias, C, eps, y + r * C, mean + r, rstd + r);
      return;
    }
#endif
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      const double m = sum_double(xr, C) / static_cast<double>(C);
      // Two passes (mean, then squared deviations) as the reference: no cancellation for large means.
      double v0 = 0, v1 = 0;
      int64_t c = 0;
      for (; c + 2 <= C; c += 2) {
        const double d0 = xr[c] - m, d1 = xr[c + 1] - m;
        v0 += d0 * d0;
        v1 += d1 * d1;
      }
      for (; c < C; ++c) v0 += (xr[c] - m) * (xr[c] - m);
      const double var = (v0 + v1) / static_cast<double>(C);
      const double s = 1.0 / std::sqrt(var + static_cast<double>(eps));
      const float mf = static_cast<float>(m);
      const float sf = static_cast<float>(s);
      for (c = 0; c < C; ++c) yr[c] = (xr[c] - mf) * sf * weight[c] + bias[c];
      mean[r] = mf;
      rstd[r] = sf;
    }
  });
}

void layernorm_backward(const float* dy, const float* x, const float* weight, const float* mean, const float* rstd,
                        int64_t rows, int64_t C, float* dx, float* dweight, float* dbias) {
  // dweight/dbias: one double partial per chunk of rows, reduced in chunk order below.
  const Split split = plan_split(rows, 10.0 * static_cast<double>(C));
  std::vector<double> partial(static_cast<size_t>(split.chunks * 2 * C), 0.0);
  const bool simd = CLIPCAP_X86_KERNELS && simd_avx2();
  parallel_chunks(rows, split, [&](int64_t r0, int64_t r1, int64_t chunk) {
    double* dw = partial.data() + chunk * 2 * C;
    double* db = dw + C;
#if CLIPCAP_X86_KERNELS
    if (simd) {
      for (int64_t r = r0; r < r1; ++r)
        layernorm_backward_row_avx2(dy + r * C, x + r * C, weight, mean[r], rstd[r], C, dx + r * C, dw, db);
      return;
    }
#endif
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      const float* dyr = dy + r * C;
      float* dxr = dx + r * C;
      const float m = mean[r];
      const float s = rstd[r];
      // With x̂ = (x - mean)·rstd and g = dy·w: dx = rstd·(g - mean(g) - x̂·mean(g·x̂)).
      double sum_g = 0, sum_gx = 0;
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (xr[c] - m) * s;
        const float g = dyr[c] * weight[c];
        sum_g += g;
        sum_gx += static_cast<double>(g) * xhat;
        dw[c] += static_cast<double>(dyr[c]) * xhat;
        db[c] += dyr[c];
      }
      const float mean_g = static_cast<float>(sum_g / static_cast<double>(C));
      const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(C));
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (xr[c] - m) * s;
        dxr[c] = s * (dyr[c] * weight[c] - mean_g - xhat * mean_gx);
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double w = 0, b = 0;
    for (int64_t k = 0; k < split.chunks; ++k) {
      w += partial[k * 2 * C + c];
      b += partial[k * 2 * C + C + c];
    }
    dweight[c] = static_cast<float>(dweight[c] + w);
    dbias[c] = static_cast<float>(dbias[c] + b);
  }
}

// ---------------------------------------------------------------- embeddings

int64_t find_bad_id(const int32_t* ids, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V) return i;
  return -1;
}

void embedding_forward(const int32_t* ids, int64_t n, const float* table, int64_t /*V*/, int64_t C, float* out) {
  parallel_for(n, static_cast<double>(C), [&](int64_t i0, int64_t i1, int64_t) {
    for (int64_t i = i0; i < i1; ++i)
      std::memcpy(out + i * C, table + static_cast<int64_t>(ids[i]) * C, sizeof(float) * static_cast<size_t>(C));
  });
}

void embedding_backward(const float* dy, const int32_t* ids, int64_t n, float* dtable, int64_t /*V*/, int64_t C) {
  // Repeated ids make a scatter-add over tokens racy; threads take column stripes instead and each adds
  // every token in order (so the float sums match a sequential loop bit for bit).
  constexpr int64_t kStripe = 64;
  const int64_t stripes = (C + kStripe - 1) / kStripe;
  parallel_for(stripes, static_cast<double>(n) * kStripe, [&](int64_t s0, int64_t s1, int64_t) {
    const int64_t c0 = s0 * kStripe;
    const int64_t c1 = std::min(C, s1 * kStripe);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = dtable + static_cast<int64_t>(ids[i]) * C;
      const float* src = dy + i * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

// ---------------------------------------------------------------- cross-entropy

namespace {
// log Σ exp(row), max-subtracted, summed in double.
double log_sum_exp(const float* row, int64_t V) {
  const float mx = row_max(row, V);
  if (std::isinf(mx)) return mx;
  return mx + std::log(exp_sum(row, V, mx, nullptr));
}
}  // namespace

CrossEntropySum cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N, int64_t V,
                                      int32_t ignore_index) {
  std::vector<double> per_row(static_cast<size_t>(N), 0.0);
  parallel_for(N, 20.0 * static_cast<double>(V), [&](int64_t r0, int64_t r1, int64_t) {
    for (int64_t r = r0; r < r1; ++r) {
      if (targets[r] == ignore_index) continue;
      const float* row = logits + r * V;
      per_row[r] = log_sum_exp(row, V) - row[targets[r]];
    }
  });
  CrossEntropySum out;
  for (int64_t r = 0; r < N; ++r) {
    if (targets[r] == ignore_index) continue;
    out.loss_sum += per_row[r];
    ++out.count;
  }
  return out;
}

void cross_entropy_backward(const float* logits, const int32_t* targets, int64_t N, int64_t V,
                            int32_t ignore_index, double factor, float* dlogits) {
  parallel_for(N, 20.0 * static_cast<double>(V), [&](int64_t r0, int64_t r1, int64_t) {
    for (int64_t r = r0; r < r1; ++r) {
      float* d = dlogits + r * V;
      if (targets[r] == ignore_index) {
        std::fill(d, d + V, 0.0f);
        continue;
      }
      const float* row = logits + r * V;
      const double lse = log_sum_exp(row, V);
      const float f = static_cast<float>(factor);
#if CLIPCAP_X86_KERNELS
      if (simd_avx2()) {
        exp_scale_avx2(row, V, static_cast<float>(lse), f, d);
      } else
#endif
      {
        for (int64_t c = 0; c < V; ++c) d[c] = std::exp(static_cast<float>(row[c] - lse)) * f;
      }
      d[targets[r]] = static_cast<float>((std::exp(row[targets[r]] - lse) - 1.0) * factor);
    }
  });
}

// ---------------------------------------------------------------- AdamW

void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& a) {
  const double decay = 1.0 - a.lr * a.weight_decay;
  parallel_for(n, 8.0, [&](int64_t i0, int64_t i1, int64_t) {
    for (int64_t i = i0; i < i1; ++i) {
      const double g = grad[i];
      m[i] = static_cast<float>(a.beta1 * m[i] + (1.0 - a.beta1) * g);
      v[i] = static_cast<float>(a.beta2 * v[i] + (1.0 - a.beta2) * g * g);
      // decoupled weight decay, then the Adam step from the stored (float32) moments, as PyTorch does
      const double decayed = param[i] * decay;
      param[i] = static_cast<float>(decayed - (a.step_size * m[i]) / (std::sqrt(static_cast<double>(v[i])) / a.bc2_sqrt + a.eps));
    }
  });
}

// ---------------------------------------------------------------- dropout

void dropout(const float* x, int64_t n, double p, uint32_t seed, float* y, float* mask) {
  const float keep = p < 1.0 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
  parallel_for(n, 4.0, [&](int64_t i0, int64_t i1, int64_t) {
    for (int64_t i = i0; i < i1; ++i) {
      const float m = (p == 0.0 || mulberry32_at(seed, i) >= p) ? keep : 0.0f;
      if (mask != nullptr) mask[i] = m;
      y[i] = x[i] * m;
    }
  });
}

}  // namespace clipcap
