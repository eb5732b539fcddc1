#include "vecmath.h"

#if CLIPCAP_X86_KERNELS
#include <immintrin.h>

#include <cmath>

namespace clipcap {

namespace {

#define CLIPCAP_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline

// exp(x) for 8 floats: round(x·log2 e) = n, r = x - n·ln 2 (in two parts), a degree-6 polynomial for e^r,
// times 2^n built in the exponent bits. Below -87.3 (where 2^n would be denormal) the result is 0, above
// 88.7 it is inf, and NaN stays NaN.
CLIPCAP_AVX2 __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3365478515625f), hi = _mm256_set1_ps(88.72283935546875f);
  // min/max return their second operand when either is NaN, so NaN passes through the clamp.
  const __m256 xc = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  n = _mm256_min_ps(n, _mm256_set1_ps(127.0f));  // keep 2^n finite; r absorbs the rest
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);                                  // underflow: 0
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));      // overflow: inf
  return y;
}

// tanh(x) for 8 floats: Eigen's odd rational approximation x·P(x²)/Q(x²) on [-7.9, 7.9] (±1 to float
// precision outside), and x itself below 4e-4.
CLIPCAP_AVX2 __m256 tanh8(__m256 x) {
  const __m256 bound = _mm256_set1_ps(7.90531110763549805f);
  const __m256 xc = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), bound), _mm256_min_ps(bound, x));
  const __m256 x2 = _mm256_mul_ps(xc, xc);
  __m256 p = _mm256_set1_ps(-2.76076847742355e-16f);
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.00018790482477e-13f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-8.60467152213735e-11f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(5.12229709037114e-08f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.48572235717979e-05f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.37261928875436e-04f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(4.89352455891786e-03f));
  p = _mm256_mul_ps(p, xc);
  __m256 q = _mm256_set1_ps(1.19825839466702e-06f);
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(1.18534705686654e-04f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2.26843463243900e-03f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(4.89352518554385e-03f));
  const __m256 t = _mm256_div_ps(p, q);
  const __m256 tiny = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(0.0004f), _CMP_LT_OQ);
  return _mm256_blendv_ps(t, x, tiny);
}

// Loads/stores the first `rem` (< 8) floats: the loop tails go through the same vector code.
CLIPCAP_AVX2 __m256i tail_mask(int64_t rem) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), idx);
}

// Applies f to 8-float blocks of x (and of a second input), tails included.
template <typename F>
CLIPCAP_AVX2 void map1(const float* x, int64_t n, float* y, const F& f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, m, f(_mm256_maskload_ps(x + i, m)));
  }
}

template <typename F>
CLIPCAP_AVX2 void map2(const float* a, const float* b, int64_t n, float* y, const F& f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) {
    const __m256i m = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, m, f(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m)));
  }
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoef = 0.044715f;
constexpr float kQuickGeluCoef = 1.702f;

}  // namespace

__attribute__((target("avx2,fma"))) double exp_sum_avx2(const float* x, int64_t n, float shift, float* out) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i < n; i += 8) {
    // Tail: masked lanes load 0 and are zeroed after the exp.
    const __m256i m = tail_mask(n - i < 8 ? n - i : 8);
    const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), s)), _mm256_castsi256_ps(m));
    if (out != nullptr) _mm256_maskstore_ps(out + i, m, e);
    // double accumulation: a 50257-term float sum would lose ~1e-5
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

namespace {
// The per-block functions of each kernel (functors rather than lambdas so they carry the target attribute).
struct ExpScale {
  __m256 shift, scale;
  CLIPCAP_AVX2 __m256 operator()(__m256 v) const { return _mm256_mul_ps(exp8(_mm256_sub_ps(v, shift)), scale); }
};

// sigmoid(z) = 1/(1 + e^-z) and 1 - sigmoid(z), each without cancellation: 1 - s is computed as e^-z·s
// where s is near 1.
struct Sigmoid {
  __m256 s, one_minus_s;
  CLIPCAP_AVX2 explicit Sigmoid(__m256 z) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), z));
    s = _mm256_div_ps(one, _mm256_add_ps(one, e));
    one_minus_s = _mm256_blendv_ps(_mm256_sub_ps(one, s), _mm256_mul_ps(e, s), _mm256_cmp_ps(s, _mm256_set1_ps(0.5f), _CMP_GT_OQ));
  }
};

// GPT-2 gelu_new, 0.5·x·(1 + tanh(u)) with u = sqrt(2/π)·(x + 0.044715·x³), as x·sigmoid(2u)
// (1 + tanh(u) = 2·sigmoid(2u)): no cancellation where tanh(u) is near -1.
CLIPCAP_AVX2 __m256 gelu_inner(__m256 v, __m256 v2) {
  return _mm256_mul_ps(_mm256_set1_ps(2.0f * kSqrt2OverPi), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(kGeluCoef), v2), v, v));
}

struct Gelu {
  CLIPCAP_AVX2 __m256 operator()(__m256 v) const { return _mm256_mul_ps(v, Sigmoid(gelu_inner(v, _mm256_mul_ps(v, v))).s); }
};

// d/dx x·s(2u) = s + x·2·s·(1 - s)·du/dx, du/dx = sqrt(2/π)·(1 + 3·0.044715·x²); times dy.
struct GeluBackward {
  CLIPCAP_AVX2 __m256 operator()(__m256 d, __m256 v) const {
    const __m256 v2 = _mm256_mul_ps(v, v);
    const Sigmoid sg(gelu_inner(v, v2));
    const __m256 dinner =
        _mm256_mul_ps(_mm256_set1_ps(2.0f * kSqrt2OverPi), _mm256_fmadd_ps(_mm256_set1_ps(3.0f * kGeluCoef), v2, _mm256_set1_ps(1.0f)));
    const __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(v, sg.s), sg.one_minus_s), dinner, sg.s);
    return _mm256_mul_ps(d, g);
  }
};

// x·sigmoid(1.702·x)
struct QuickGelu {
  CLIPCAP_AVX2 __m256 operator()(__m256 v) const {
    return _mm256_mul_ps(v, Sigmoid(_mm256_mul_ps(_mm256_set1_ps(kQuickGeluCoef), v)).s);
  }
};

// dy·(s + x·1.702·s·(1 - s))
struct QuickGeluBackward {
  CLIPCAP_AVX2 __m256 operator()(__m256 d, __m256 v) const {
    const __m256 k = _mm256_set1_ps(kQuickGeluCoef);
    const Sigmoid sg(_mm256_mul_ps(k, v));
    const __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(v, k), sg.s), sg.one_minus_s, sg.s);
    return _mm256_mul_ps(d, g);
  }
};

struct Tanh {
  CLIPCAP_AVX2 __m256 operator()(__m256 v) const { return tanh8(v); }
};
}  // namespace

namespace {
// Σ of 8 floats widened to double, added into two 4-double accumulators.
CLIPCAP_AVX2 void add_pd8(__m256 v, __m256d& a0, __m256d& a1) {
  a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// Σ (x - m)² of 8 floats, each difference and square in double.
CLIPCAP_AVX2 void add_sq_dev_pd8(__m256 v, __m256d m, __m256d& a0, __m256d& a1) {
  const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m);
  const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m);
  a0 = _mm256_fmadd_pd(d0, d0, a0);
  a1 = _mm256_fmadd_pd(d1, d1, a1);
}

// The scalar tails (columns [c0, C)) of the layer-norm rows, compiled for the base target and kept out of
// line: inside an AVX2 function the compiler may contract a·b + c into an FMA, which would round these
// columns differently from the portable kernel (kernels.cc), whose expressions they repeat.
__attribute__((noinline)) void layernorm_tail(const float* x, const float* weight, const float* bias, int64_t c0,
                                              int64_t C, float mf, float sf, float* y) {
  for (int64_t c = c0; c < C; ++c) y[c] = (x[c] - mf) * sf * weight[c] + bias[c];
}

__attribute__((noinline)) void layernorm_backward_tail_sums(const float* dy, const float* x, const float* weight,
                                                            float mean, float rstd, int64_t c0, int64_t C,
                                                            double* sum_g, double* sum_gx, double* dw, double* db) {
  for (int64_t c = c0; c < C; ++c) {
    const float xhat = (x[c] - mean) * rstd;
    const float g = dy[c] * weight[c];
    *sum_g += g;
    *sum_gx += static_cast<double>(g) * xhat;
    dw[c] += static_cast<double>(dy[c]) * xhat;
    db[c] += dy[c];
  }
}

__attribute__((noinline)) void layernorm_backward_tail_dx(const float* dy, const float* x, const float* weight,
                                                          float mean, float rstd, int64_t c0, int64_t C, float mean_g,
                                                          float mean_gx, float* dx) {
  for (int64_t c = c0; c < C; ++c) {
    const float xhat = (x[c] - mean) * rstd;
    dx[c] = rstd * (dy[c] * weight[c] - mean_g - xhat * mean_gx);
  }
}

CLIPCAP_AVX2 double hsum_pd(__m256d a) {
  alignas(32) double l[4];
  _mm256_store_pd(l, a);
  return (l[0] + l[1]) + (l[2] + l[3]);
}
}  // namespace

__attribute__((target("avx2,fma"))) void layernorm_row_avx2(const float* x, const float* weight, const float* bias,
                                                             int64_t C, float eps, float* y, float* mean,
                                                             float* rstd) {
  // Mean and variance in double (two passes, as the reference), four accumulators per pass; the tail's
  // masked lanes load 0 and are left out of the deviations by the mask.
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    add_pd8(_mm256_loadu_ps(x + c), s0, s1);
    add_pd8(_mm256_loadu_ps(x + c + 8), s2, s3);
  }
  for (; c < C; c += 8) add_pd8(_mm256_maskload_ps(x + c, tail_mask(C - c < 8 ? C - c : 8)), s0, s1);
  const double m = hsum_pd(_mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3))) / static_cast<double>(C);
  const __m256d md = _mm256_set1_pd(m);
  __m256d v0 = _mm256_setzero_pd(), v1 = _mm256_setzero_pd(), v2 = _mm256_setzero_pd(), v3 = _mm256_setzero_pd();
  c = 0;
  for (; c + 16 <= C; c += 16) {
    add_sq_dev_pd8(_mm256_loadu_ps(x + c), md, v0, v1);
    add_sq_dev_pd8(_mm256_loadu_ps(x + c + 8), md, v2, v3);
  }
  double var_tail = 0;
  for (; c < C; ++c) var_tail += (x[c] - m) * (x[c] - m);
  const double var = (hsum_pd(_mm256_add_pd(_mm256_add_pd(v0, v1), _mm256_add_pd(v2, v3))) + var_tail) / static_cast<double>(C);
  const double s = 1.0 / std::sqrt(var + static_cast<double>(eps));
  const float mf = static_cast<float>(m);
  const float sf = static_cast<float>(s);
  // y = (x - mean)·rstd·w + b in float, rounded step by step as the portable loop (no FMA contraction).
  const __m256 mv = _mm256_set1_ps(mf), sv = _mm256_set1_ps(sf);
  c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), mv), sv);
    _mm256_storeu_ps(y + c, _mm256_add_ps(_mm256_mul_ps(xh, _mm256_loadu_ps(weight + c)), _mm256_loadu_ps(bias + c)));
  }
  layernorm_tail(x, weight, bias, c, C, mf, sf, y);
  *mean = mf;
  *rstd = sf;
}

__attribute__((target("avx2,fma"))) void layernorm_backward_row_avx2(const float* dy, const float* x, const float* weight,
                                                                      float mean, float rstd, int64_t C, float* dx,
                                                                      double* dw, double* db) {
  // Pass 1: Σ g and Σ g·x̂ (g = dy·w, x̂ = (x - mean)·rstd, both float as the portable loop), in double,
  // and the row's dweight/dbias terms added into the double partials.
  const __m256 mv = _mm256_set1_ps(mean), sv = _mm256_set1_ps(rstd);
  __m256d g0 = _mm256_setzero_pd(), g1 = _mm256_setzero_pd(), gx0 = _mm256_setzero_pd(), gx1 = _mm256_setzero_pd();
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m256 dyv = _mm256_loadu_ps(dy + c);
    const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), mv), sv);
    const __m256 g = _mm256_mul_ps(dyv, _mm256_loadu_ps(weight + c));
    const __m256d glo = _mm256_cvtps_pd(_mm256_castps256_ps128(g)), ghi = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
    const __m256d xlo = _mm256_cvtps_pd(_mm256_castps256_ps128(xh)), xhi = _mm256_cvtps_pd(_mm256_extractf128_ps(xh, 1));
    const __m256d dlo = _mm256_cvtps_pd(_mm256_castps256_ps128(dyv)), dhi = _mm256_cvtps_pd(_mm256_extractf128_ps(dyv, 1));
    g0 = _mm256_add_pd(g0, glo);
    g1 = _mm256_add_pd(g1, ghi);
    gx0 = _mm256_fmadd_pd(glo, xlo, gx0);
    gx1 = _mm256_fmadd_pd(ghi, xhi, gx1);
    _mm256_storeu_pd(dw + c, _mm256_fmadd_pd(dlo, xlo, _mm256_loadu_pd(dw + c)));
    _mm256_storeu_pd(dw + c + 4, _mm256_fmadd_pd(dhi, xhi, _mm256_loadu_pd(dw + c + 4)));
    _mm256_storeu_pd(db + c, _mm256_add_pd(_mm256_loadu_pd(db + c), dlo));
    _mm256_storeu_pd(db + c + 4, _mm256_add_pd(_mm256_loadu_pd(db + c + 4), dhi));
  }
  double sum_g = hsum_pd(_mm256_add_pd(g0, g1)), sum_gx = hsum_pd(_mm256_add_pd(gx0, gx1));
  layernorm_backward_tail_sums(dy, x, weight, mean, rstd, c, C, &sum_g, &sum_gx, dw, db);
  // Pass 2: dx = rstd·(g - mean(g) - x̂·mean(g·x̂)), rounded step by step as the portable loop.
  const float mean_g = static_cast<float>(sum_g / static_cast<double>(C));
  const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(C));
  const __m256 mg = _mm256_set1_ps(mean_g), mgx = _mm256_set1_ps(mean_gx);
  c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), mv), sv);
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + c), _mm256_loadu_ps(weight + c));
    _mm256_storeu_ps(dx + c, _mm256_mul_ps(sv, _mm256_sub_ps(_mm256_sub_ps(g, mg), _mm256_mul_ps(xh, mgx))));
  }
  layernorm_backward_tail_dx(dy, x, weight, mean, rstd, c, C, mean_g, mean_gx, dx);
}

__attribute__((target("avx2,fma"))) void exp_scale_avx2(const float* x, int64_t n, float shift, float scale,
                                                         float* out) {
  map1(x, n, out, ExpScale{_mm256_set1_ps(shift), _mm256_set1_ps(scale)});
}

__attribute__((target("avx2,fma"))) void gelu_avx2(const float* x, int64_t n, float* y) { map1(x, n, y, Gelu{}); }

__attribute__((target("avx2,fma"))) void gelu_backward_avx2(const float* dy, const float* x, int64_t n, float* dx) {
  map2(dy, x, n, dx, GeluBackward{});
}

__attribute__((target("avx2,fma"))) void quick_gelu_avx2(const float* x, int64_t n, float* y) {
  map1(x, n, y, QuickGelu{});
}

__attribute__((target("avx2,fma"))) void quick_gelu_backward_avx2(const float* dy, const float* x, int64_t n,
                                                                   float* dx) {
  map2(dy, x, n, dx, QuickGeluBackward{});
}

__attribute__((target("avx2,fma"))) void tanh_avx2(const float* x, int64_t n, float* y) { map1(x, n, y, Tanh{}); }

}  // namespace clipcap
#endif
