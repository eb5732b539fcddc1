// Decoding's skinny products (see gemv.h). AVX2 + FMA only: the portable builds keep skinny_nn_portable /
// skinny_nt_portable, and gemm.cc picks these at run time after checking the CPU.
#include "gemv.h"

#include <cstdint>

#if CLIPCAP_X86_KERNELS
#include <immintrin.h>

namespace clipcap {

namespace {

// Rows of B per pass of gemv_nn_rows: eight sequential streams, which the hardware prefetchers follow, and
// eight multiply-adds per accumulator load and store.
constexpr int kRows = 8;

// out[G0:G0 + GN, j:j + 8·JV] for rows G0.. of the MM rows of A: R rows of B (b, row stride ldb) against At
// rows a (MM values each), accumulated onto out (or onto zero when `first`: the chunk's first rows).
template <int MM, int G0, int GN, int JV, int R>
__attribute__((target("avx2,fma"), always_inline)) inline void nn_group(const float* __restrict a,
                                                                       const float* __restrict b, int64_t ldb,
                                                                       float* __restrict out, int64_t N,
                                                                       bool first) {
  __m256 c[GN][JV];
  for (int m = 0; m < GN; ++m)
    for (int v = 0; v < JV; ++v)
      c[m][v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(out + (G0 + m) * N + 8 * v);
  for (int r = 0; r < R; ++r) {
    __m256 y[JV];
    for (int v = 0; v < JV; ++v) y[v] = _mm256_loadu_ps(b + r * ldb + 8 * v);
    for (int m = 0; m < GN; ++m) {
      const __m256 x = _mm256_broadcast_ss(a + r * MM + G0 + m);
      for (int v = 0; v < JV; ++v) c[m][v] = _mm256_fmadd_ps(x, y[v], c[m][v]);
    }
  }
  for (int m = 0; m < GN; ++m)
    for (int v = 0; v < JV; ++v) _mm256_storeu_ps(out + (G0 + m) * N + 8 * v, c[m][v]);
}

// Every row of A, NG groups from row G0 on (REM rows left): each group a register tile of its own, B's R x 8·JV
// values read from memory by the first group and from L1 by the rest. Splitting the rows keeps two vectors
// of columns per tile at M = 7..14 (one vector of 8 accumulators per row leaves the loads of a and the
// accumulators' loads and stores the bottleneck). Every output is the same chain of multiply-adds.
template <int MM, int G0, int REM, int NG, int JV, int R>
__attribute__((target("avx2,fma"), always_inline)) inline void nn_groups(const float* __restrict a,
                                                                        const float* __restrict b, int64_t ldb,
                                                                        float* __restrict out, int64_t N,
                                                                        bool first) {
  constexpr int GN = (REM + NG - 1) / NG;
  nn_group<MM, G0, GN, JV, R>(a, b, ldb, out, N, first);
  if constexpr (NG > 1) nn_groups<MM, G0 + GN, REM - GN, NG - 1, JV, R>(a, b, ldb, out, N, first);
}

// Row groups per tile: one up to 6 rows (MM·JV accumulators, JV B vectors and a broadcast fit 16 registers),
// then groups of at most 6 rows with two vectors.
template <int MM>
constexpr int nn_groups_of() {
  return MM <= 6 ? 1 : (MM + 5) / 6;
}

// out[:, j:j + 8·JV] for the MM rows of A (see nn_group).
template <int MM, int JV, int R>
__attribute__((target("avx2,fma"), always_inline)) inline void nn_tile(const float* __restrict a,
                                                                      const float* __restrict b, int64_t ldb,
                                                                      float* __restrict out, int64_t N,
                                                                      bool first) {
  nn_groups<MM, 0, MM, (JV > 1 ? nn_groups_of<MM>() : 1), JV, R>(a, b, ldb, out, N, first);
}

// R rows of B into every column of out: tiles of 8·JV columns, then single vectors, then scalars. With
// `prefetch`, each tile first asks for the same columns of the next R rows.
template <int MM, int JV, int R>
__attribute__((target("avx2,fma"))) void nn_rows(const float* __restrict a, const float* __restrict b, int64_t ldb,
                                                 float* __restrict out, int64_t N, bool first, bool prefetch) {
  int64_t j = 0;
  if (prefetch) {
    const float* next = b + R * ldb;
    for (; j + 8 * JV <= N; j += 8 * JV) {
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < JV; v += 2) _mm_prefetch(reinterpret_cast<const char*>(next + r * ldb + j + 8 * v), _MM_HINT_T0);
      nn_tile<MM, JV, R>(a, b + j, ldb, out + j, N, first);
    }
  }
  for (; j + 8 * JV <= N; j += 8 * JV) nn_tile<MM, JV, R>(a, b + j, ldb, out + j, N, first);
  for (; j + 8 <= N; j += 8) nn_tile<MM, 1, R>(a, b + j, ldb, out + j, N, first);
  for (; j < N; ++j)
    for (int m = 0; m < MM; ++m) {
      // skinny_nn_avx2's one-row tail: a vector fma per element, so the same rounding.
      float acc = first ? 0.0f : out[m * N + j];
      for (int r = 0; r < R; ++r) {
        const __m128 x = _mm_set_ss(a[r * MM + m]), y = _mm_set_ss(b[r * ldb + j]);
        acc = _mm_cvtss_f32(_mm_fmadd_ss(x, y, _mm_set_ss(acc)));
      }
      out[m * N + j] = acc;
    }
}

template <int MM, int JV>
__attribute__((target("avx2,fma"))) void nn_chunk(int64_t K, const float* At, const float* B, int64_t ldb, int64_t N,
                                                  float* out) {
  // Rows of at most 1 Ki floats are short streams, which the hardware prefetchers pick up too late when
  // several rows of A slow the walk down (a harness on this machine's EPYC: M = 2..5 at N = 768 twice as fast
  // with the prefetch; M = 1 and longer rows no faster, or slower).
  const bool prefetch = MM > 1 && N <= 1024;
  int64_t p = 0;
  for (; p + kRows <= K; p += kRows)
    nn_rows<MM, JV, kRows>(At + p * MM, B + p * ldb, ldb, out, N, p == 0, prefetch && p + 2 * kRows <= K);
  for (; p < K; ++p) nn_rows<MM, JV, 1>(At + p * MM, B + p * ldb, ldb, out, N, p == 0, false);
}

// Accumulators per tile: MM·JV registers plus JV for the B row and one broadcast, at most 16.
template <int MM>
constexpr int nn_vectors() {
  return MM <= 2 ? 4 : MM == 3 ? 3 : 2;  // M >= 7: two vectors in row groups (nn_groups)
}
static_assert(kGemvMaxM + 2 <= 16, "kGemvMaxM rows of accumulators, a B vector and a broadcast fit 16 registers");

// Rows of B ahead of the one being read that nt_rows prefetches (past the last row: harmless, prefetches do not
// fault).
constexpr int64_t kNtAhead = 8;

// acc[m·W + (j - j0)] for rows j of B, NB at a time: MM·NB accumulators, NB B registers, A from memory.
template <int MM, int NB>
__attribute__((target("avx2,fma"), always_inline)) inline void nt_rows(const SkinnyArgs& s, int64_t j, int64_t j0,
                                                                       int64_t W, float* acc) {
  const int64_t K = s.K, Kv = K & ~int64_t{7};
  const float* b[NB];
  for (int t = 0; t < NB; ++t) b[t] = s.B + (j + t) * s.ldb;
  __m256 c[MM][NB];
  for (int m = 0; m < MM; ++m)
    for (int t = 0; t < NB; ++t) c[m][t] = _mm256_setzero_ps();
  for (int64_t p = 0; p < Kv; p += 8) {
    // The rows kNtAhead further on, a line per line read: the hardware prefetchers alone leave a harness on
    // this machine at ~6 GB/s for M = 5 (LM head 768 x 50257), ~9-14 with this (M = 1: ~10 -> ~12).
    if ((p & 15) == 0)
      for (int t = 0; t < NB; ++t) _mm_prefetch(reinterpret_cast<const char*>(b[t] + kNtAhead * s.ldb + p), _MM_HINT_T0);
    __m256 y[NB];
    for (int t = 0; t < NB; ++t) y[t] = _mm256_loadu_ps(b[t] + p);
    for (int m = 0; m < MM; ++m) {
      const __m256 x = _mm256_loadu_ps(s.A + m * K + p);
      for (int t = 0; t < NB; ++t) c[m][t] = _mm256_fmadd_ps(x, y[t], c[m][t]);
    }
  }
  for (int m = 0; m < MM; ++m) {
    const float* a = s.A + m * K;
    for (int t = 0; t < NB; ++t) {
      // skinny_nt_avx2's reduction: the 8 lanes (hsum's order), then the tail, same expressions.
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(c[m][t]), _mm256_extractf128_ps(c[m][t], 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      float r = _mm_cvtss_f32(h);
      for (int64_t p = Kv; p < K; ++p) r += a[p] * b[t][p];
      acc[m * W + (j - j0) + t] = r;
    }
  }
}

template <int MM>
constexpr int nt_rows_per_pass() {
  return MM == 1 ? 4 : MM == 2 ? 4 : MM <= 4 ? 3 : MM <= 6 ? 2 : 1;
}

template <int MM>
__attribute__((target("avx2,fma"))) void nt_block(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc) {
  constexpr int NB = nt_rows_per_pass<MM>();
  const int64_t W = j1 - j0;
  int64_t j = j0;
  for (; j + NB <= j1; j += NB) nt_rows<MM, NB>(s, j, j0, W, acc);
  for (; j < j1; ++j) nt_rows<MM, 1>(s, j, j0, W, acc);
}


}  // namespace

void gemv_nn_rows_avx2(int64_t M, int64_t K, const float* At, const float* B, int64_t ldb, int64_t N, float* out) {
  switch (M) {
    case 1: return nn_chunk<1, nn_vectors<1>()>(K, At, B, ldb, N, out);
    case 2: return nn_chunk<2, nn_vectors<2>()>(K, At, B, ldb, N, out);
    case 3: return nn_chunk<3, nn_vectors<3>()>(K, At, B, ldb, N, out);
    case 4: return nn_chunk<4, nn_vectors<4>()>(K, At, B, ldb, N, out);
    case 5: return nn_chunk<5, nn_vectors<5>()>(K, At, B, ldb, N, out);
    case 6: return nn_chunk<6, nn_vectors<6>()>(K, At, B, ldb, N, out);
    case 7: return nn_chunk<7, nn_vectors<7>()>(K, At, B, ldb, N, out);
    case 8: return nn_chunk<8, nn_vectors<8>()>(K, At, B, ldb, N, out);
    // 9..kGemvMaxM: GPT-2's prefix step (ClipCap's 10 prefix positions) reads the weight once instead of
    // packing it for the GEMM.
    case 9: return nn_chunk<9, nn_vectors<9>()>(K, At, B, ldb, N, out);
    case 10: return nn_chunk<10, nn_vectors<10>()>(K, At, B, ldb, N, out);
    case 11: return nn_chunk<11, nn_vectors<11>()>(K, At, B, ldb, N, out);
    case 12: return nn_chunk<12, nn_vectors<12>()>(K, At, B, ldb, N, out);
    case 13: return nn_chunk<13, nn_vectors<13>()>(K, At, B, ldb, N, out);
    case 14: return nn_chunk<14, nn_vectors<14>()>(K, At, B, ldb, N, out);
    default: break;  // gemm never passes more than kGemvMaxM rows
  }
}

void gemv_nt_avx2(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc) {
  const int64_t W = j1 - j0;
  switch (s.M) {
    case 1: nt_block<1>(s, j0, j1, acc); break;
    case 2: nt_block<2>(s, j0, j1, acc); break;
    case 3: nt_block<3>(s, j0, j1, acc); break;
    case 4: nt_block<4>(s, j0, j1, acc); break;
    case 5: nt_block<5>(s, j0, j1, acc); break;
    case 6: nt_block<6>(s, j0, j1, acc); break;
    case 7: nt_block<7>(s, j0, j1, acc); break;
    default: nt_block<8>(s, j0, j1, acc); break;
  }
  for (int64_t m = 0; m < s.M; ++m)
    store_row_avx2(acc + m * W, W, s.C + m * s.ldc + j0, s.alpha, s.load_c, s.bias == nullptr ? nullptr : s.bias + j0);
}

}  // namespace clipcap
#endif
