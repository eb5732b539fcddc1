// The AVX2/FMA micro-kernel. Only these functions are compiled for AVX2 (target attribute), so the addon
// still loads on CPUs without it; gemm.cc picks this kernel at run time after checking the CPU.
#include "gemm.h"

#if defined(__x86_64__) || defined(__i386__)
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
}  // namespace

// 6 rows x 16 columns: 12 ymm accumulators, 2 for the B row, 1 for the A broadcast (15 of 16 registers).
__attribute__((target("avx2,fma"))) void micro_kernel_avx2(int64_t kc, const float* a, const float* b, float* c,
                                                           int64_t ldc, float alpha, bool load_c,
                                                           const float* bias, int mr, int nr) {
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
  // Edge tile: spill to a buffer and write only the valid corner.
  alignas(32) float tile[kMR][kNR];
  for (int r = 0; r < kMR; ++r) {
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

}  // namespace clipcap
#endif
