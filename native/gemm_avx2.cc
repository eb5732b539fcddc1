// The AVX2/FMA micro-kernel. Only these functions are compiled for AVX2 (target attribute), so the addon
// still loads on CPUs without it; gemm.cc picks this kernel at run time after checking the CPU.
#include "gemm.h"

#include <cstdint>

#if CLIPCAP_X86_KERNELS
#include <immintrin.h>

namespace clipcap {

namespace {
// Finishes one 8-wide slice of a C row: alpha·acc (+ old c) (+ bias).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 epilogue(__m256 acc, __m256 alpha,
                                                                           const float* c, bool load_c,
                                                                           const float* bias) {
  __m256 r = _mm256_mul_ps(acc, alpha);
  if (load_c) r = _mm256_add_ps(r, _mm256_loadu_ps(c));
  if (bias != nullptr) r = _mm256_add_ps(r, _mm256_loadu_ps(bias));
  return r;
}

// Edge tile of R accumulator rows: spill alpha·acc to a buffer and write only the valid mr x nr corner.
template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void store_edge(const __m256 (*acc)[2], __m256 va, float* c,
                                                                          int64_t ldc, bool load_c, const float* bias,
                                                                          int mr, int nr) {
  alignas(32) float tile[R][kNR];
  for (int r = 0; r < R; ++r) {
    _mm256_store_ps(tile[r], _mm256_mul_ps(acc[r][0], va));
    _mm256_store_ps(tile[r] + 8, _mm256_mul_ps(acc[r][1], va));
  }
  for (int r = 0; r < mr; ++r) {
    float* row = c + r * ldc;
    for (int j = 0; j < nr; ++j) {
      float v = tile[r][j];
      if (load_c) v += row[j];
      if (bias != nullptr) v += bias[j];
      row[j] = v;
    }
  }
}
}  // namespace

namespace {
// The bottom panel of an M that is not a multiple of 6 (M = 50 rows per image: 8 panels and 2 rows): only
// its R <= 6 valid rows are computed, each with the same sum order as in the full kernel, instead of paying
// for 6. a is still packed MR values per k.
template <int R>
__attribute__((target("avx2,fma"))) void micro_kernel_short(int64_t kc, const float* a, const float* b, float* c,
                                                           int64_t ldc, float alpha, bool load_c,
                                                           const float* bias, int mr, int nr) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
    a += kMR;
    b += kNR;
  }
  store_edge<R>(acc, _mm256_set1_ps(alpha), c, ldc, load_c, bias, mr, nr);
}
}  // namespace

// 6 rows x 16 columns: 12 ymm accumulators, 2 for the B row, 1 for the A broadcast (15 of 16 registers).
__attribute__((target("avx2,fma"))) void micro_kernel_avx2(int64_t kc, const float* a, const float* b, float* c,
                                                           int64_t ldc, float alpha, bool load_c,
                                                           const float* bias, int mr, int nr) {
  if (mr <= 2) {
    micro_kernel_short<2>(kc, a, b, c, ldc, alpha, load_c, bias, mr, nr);
    return;
  }
  if (mr <= 4) {
    micro_kernel_short<4>(kc, a, b, c, ldc, alpha, load_c, bias, mr, nr);
    return;
  }
  // Start fetching the C tile now: it is read (or written) only after the k loop, and with K split into
  // KC blocks it is usually out of cache by then; waiting for it at the end costs ~15% of the kernel.
  for (int r = 0; r < mr; ++r) {
    __builtin_prefetch(c + r * ldc, 1, 3);
    __builtin_prefetch(c + r * ldc + kNR - 1, 1, 3);
  }
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
    __m256 av = _mm256_broadcast_ss(a);
    c00 = _mm256_fmadd_ps(av, b0, c00);
    c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(av, b0, c10);
    c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(av, b0, c20);
    c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(av, b0, c30);
    c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(av, b0, c40);
    c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(av, b0, c50);
    c51 = _mm256_fmadd_ps(av, b1, c51);
    a += kMR;
    b += kNR;
  }
  const __m256 acc[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  const __m256 va = _mm256_set1_ps(alpha);
  if (mr == kMR && nr == kNR) {
    for (int r = 0; r < kMR; ++r) {
      float* row = c + r * ldc;
      _mm256_storeu_ps(row, epilogue(acc[r][0], va, row, load_c, bias));
      _mm256_storeu_ps(row + 8, epilogue(acc[r][1], va, row + 8, load_c, bias == nullptr ? nullptr : bias + 8));
    }
    return;
  }
  store_edge<kMR>(acc, va, c, ldc, load_c, bias, mr, nr);
}

namespace {
// In-register transpose of an 8x8 block held as 8 row vectors.
__attribute__((target("avx2,fma"), always_inline)) inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}


__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
}  // namespace

// c[j] = alpha·acc[j] (+ c[j]) (+ bias[j]) for j < w.
__attribute__((target("avx2,fma"))) void store_row_avx2(const float* acc, int64_t w, float* c, float alpha, bool load_c,
                                                        const float* bias) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t j = 0;
  for (; j + 8 <= w; j += 8) {
    __m256 r = _mm256_mul_ps(_mm256_loadu_ps(acc + j), va);
    if (load_c) r = _mm256_add_ps(r, _mm256_loadu_ps(c + j));
    if (bias != nullptr) r = _mm256_add_ps(r, _mm256_loadu_ps(bias + j));
    _mm256_storeu_ps(c + j, r);
  }
  for (; j < w; ++j) {
    float v = alpha * acc[j];
    if (load_c) v += c[j];
    if (bias != nullptr) v += bias[j];
    c[j] = v;
  }
}

__attribute__((target("avx2,fma"))) void pack_b_trans_avx2(const float* src, int64_t ldb, int64_t kc, float* panel) {
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    // Columns 0-7 and 8-15 of the panel: 8 rows of B (8 consecutive k each) become 8 k-rows of 8 values.
    for (int half = 0; half < 2; ++half) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (half * 8 + i) * ldb + p);
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_store_ps(panel + (p + i) * kNR + half * 8, r[i]);
    }
  }
  for (; p < kc; ++p)
    for (int j = 0; j < kNR; ++j) panel[p * kNR + j] = src[j * ldb + p];
}

__attribute__((target("avx2,fma"))) void skinny_nn_avx2(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc) {
  const int64_t M = s.M, K = s.K, W = j1 - j0, Wv = W & ~int64_t{7};
  for (int64_t i = 0; i < M * W; ++i) acc[i] = 0.0f;
  // Rows of B this far ahead are prefetched: each row's run of columns is only W floats, too short for
  // the hardware prefetcher to get ahead of the demand misses on its own.
  constexpr int64_t kAhead = 12;
  int64_t p = 0;
  for (; p + 4 <= K; p += 4) {
    const float* b0 = s.B + p * s.ldb + j0;
    const float* b1 = b0 + s.ldb;
    const float* b2 = b1 + s.ldb;
    const float* b3 = b2 + s.ldb;
    // Long runs (split-K calls pass whole rows) are streamed by the hardware prefetcher on its own.
    if (W <= 1024 && p + kAhead + 4 <= K) {
      for (int64_t r = 0; r < 4; ++r) {
        const char* ahead = reinterpret_cast<const char*>(b0 + (kAhead + r) * s.ldb);
        for (int64_t off = 0; off < W * 4; off += 64) _mm_prefetch(ahead + off, _MM_HINT_T0);
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      const float* a = s.A + p * M + m;  // At[p·M + m] = op(A)[m, p]
      const __m256 a0 = _mm256_broadcast_ss(a), a1 = _mm256_broadcast_ss(a + M);
      const __m256 a2 = _mm256_broadcast_ss(a + 2 * M), a3 = _mm256_broadcast_ss(a + 3 * M);
      float* cm = acc + m * W;
      int64_t j = 0;
      for (; j < Wv; j += 8) {
        __m256 c = _mm256_loadu_ps(cm + j);
        c = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b0 + j), c);
        c = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b1 + j), c);
        c = _mm256_fmadd_ps(a2, _mm256_loadu_ps(b2 + j), c);
        c = _mm256_fmadd_ps(a3, _mm256_loadu_ps(b3 + j), c);
        _mm256_storeu_ps(cm + j, c);
      }
      for (; j < W; ++j) cm[j] += a[0] * b0[j] + a[M] * b1[j] + a[2 * M] * b2[j] + a[3 * M] * b3[j];
    }
  }
  for (; p < K; ++p) {
    const float* b0 = s.B + p * s.ldb + j0;
    for (int64_t m = 0; m < M; ++m) {
      const float av = s.A[p * M + m];
      const __m256 a0 = _mm256_set1_ps(av);
      float* cm = acc + m * W;
      int64_t j = 0;
      for (; j < Wv; j += 8) _mm256_storeu_ps(cm + j, _mm256_fmadd_ps(a0, _mm256_loadu_ps(b0 + j), _mm256_loadu_ps(cm + j)));
      for (; j < W; ++j) cm[j] += av * b0[j];
    }
  }
  for (int64_t m = 0; m < M; ++m)
    store_row_avx2(acc + m * W, W, s.C + m * s.ldc + j0, s.alpha, s.load_c, s.bias == nullptr ? nullptr : s.bias + j0);
}

__attribute__((target("avx2,fma"))) void skinny_nt_avx2(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc) {
  // acc[m·W + (j - j0)] = A[m, :] · B[j, :]: four rows of B at a time against two rows of A (8 accumulators).
  const int64_t M = s.M, K = s.K, W = j1 - j0, Kv = K & ~int64_t{7};
  int64_t j = j0;
  for (; j < j1; j += 4) {
    const int64_t nj = j1 - j < 4 ? j1 - j : 4;
    const float* b[4];
    for (int64_t t = 0; t < 4; ++t) b[t] = s.B + (j + (t < nj ? t : 0)) * s.ldb;
    for (int64_t m = 0; m < M; m += 2) {
      const float* a0 = s.A + m * K;
      const float* a1 = m + 1 < M ? a0 + K : a0;
      __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps(), c03 = _mm256_setzero_ps();
      __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c12 = _mm256_setzero_ps(), c13 = _mm256_setzero_ps();
      for (int64_t p = 0; p < Kv; p += 8) {
        const __m256 x0 = _mm256_loadu_ps(a0 + p), x1 = _mm256_loadu_ps(a1 + p);
        __m256 y = _mm256_loadu_ps(b[0] + p);
        c00 = _mm256_fmadd_ps(x0, y, c00);
        c10 = _mm256_fmadd_ps(x1, y, c10);
        y = _mm256_loadu_ps(b[1] + p);
        c01 = _mm256_fmadd_ps(x0, y, c01);
        c11 = _mm256_fmadd_ps(x1, y, c11);
        y = _mm256_loadu_ps(b[2] + p);
        c02 = _mm256_fmadd_ps(x0, y, c02);
        c12 = _mm256_fmadd_ps(x1, y, c12);
        y = _mm256_loadu_ps(b[3] + p);
        c03 = _mm256_fmadd_ps(x0, y, c03);
        c13 = _mm256_fmadd_ps(x1, y, c13);
      }
      float r[2][4] = {{hsum(c00), hsum(c01), hsum(c02), hsum(c03)}, {hsum(c10), hsum(c11), hsum(c12), hsum(c13)}};
      for (int64_t p = Kv; p < K; ++p)
        for (int64_t t = 0; t < 4; ++t) {
          r[0][t] += a0[p] * b[t][p];
          r[1][t] += a1[p] * b[t][p];
        }
      for (int64_t t = 0; t < nj; ++t) {
        acc[m * W + (j - j0) + t] = r[0][t];
        if (m + 1 < M) acc[(m + 1) * W + (j - j0) + t] = r[1][t];
      }
    }
  }
  for (int64_t m = 0; m < M; ++m)
    store_row_avx2(acc + m * W, W, s.C + m * s.ldc + j0, s.alpha, s.load_c, s.bias == nullptr ? nullptr : s.bias + j0);
}

}  // namespace clipcap
#endif
