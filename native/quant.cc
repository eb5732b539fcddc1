// Weight-only int8 / bf16 skinny products (see quant.h). Two layouts, as the f32 skinny kernels:
// - nn (W stored (K, N), GPT-2's Conv1D): tasks take blocks of output columns; each walks K a row at a time,
//   widening a run of the block's columns to f32 and adding a[m]·w into M accumulator rows;
//   the scale multiplies each column's sum at the end. The AVX2 kernel (as gemv.cc's f32 one) keeps an MM x JV
//   tile of accumulators in registers over 8 rows of W, so each widened vector of W serves every row of A and
//   the accumulators are loaded and stored once per 8 rows; each column's sum stays one chain of fused
//   multiply-adds over p in order, so the values are those of the earlier kernel, bit for bit (the kernel
//   suite checks it: quantize-suite.ts), and the README's int8 / bf16 accuracy figures hold.
// - nt (W stored (N, K), the tied LM head): tasks take blocks of output rows of W; each is a dot product of
//   one contiguous compact row with every row of A, times the row's scale. The AVX2 kernel reads NB rows of W
//   against all M rows of A in one pass (8 lanes by p mod 8, then hsum8 and the tail, as before), prefetching
//   the rows kNtAhead further on.
// AVX2 versions when the CPU has them (the same switch as the GEMM: simd_avx2()), portable loops otherwise.
#include "quant.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "threadpool.h"

#if CLIPCAP_X86_KERNELS
#include <immintrin.h>
#endif

namespace clipcap {

namespace {

inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
inline float widen(T q) {
  if constexpr (std::is_same_v<T, int8_t>) return static_cast<float>(q);
  else return bf16_to_f32(q);
}

// c[j] = alpha·acc[j]·scale[j] (+ c[j]) (+ bias[j]); scale null = 1.
void store(const float* acc, int64_t w, float* c, const float* scale, float alpha, bool load_c, const float* bias) {
  for (int64_t j = 0; j < w; ++j) {
    float v = acc[j];
    if (scale != nullptr) v *= scale[j];
    v *= alpha;
    if (load_c) v += c[j];
    if (bias != nullptr) v += bias[j];
    c[j] = v;
  }
}

template <typename T>
void nn_portable(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  const int64_t M = g.M, W = j1 - j0;
  const T* w = static_cast<const T*>(g.W);
  std::fill(acc, acc + M * W, 0.0f);
  for (int64_t p = 0; p < g.K; ++p) {
    const T* row = w + p * g.N + j0;
    for (int64_t m = 0; m < M; ++m) {
      const float a = g.A[m * g.K + p];
      float* cm = acc + m * W;
      for (int64_t j = 0; j < W; ++j) cm[j] += a * widen(row[j]);
    }
  }
}

template <typename T>
void nt_portable(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  const int64_t M = g.M, K = g.K, W = j1 - j0;
  const T* w = static_cast<const T*>(g.W);
  for (int64_t j = j0; j < j1; ++j) {
    const T* row = w + j * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* a = g.A + m * K;
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t p = 0;
      for (; p + 8 <= K; p += 8)
        for (int l = 0; l < 8; ++l) part[l] += a[p + l] * widen(row[p + l]);
      float sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      for (; p < K; ++p) sum += a[p] * widen(row[p]);
      acc[m * W + (j - j0)] = sum;
    }
  }
}

#if CLIPCAP_X86_KERNELS
// x·y + z rounded once. The old AVX2 kernels' scalar tails (`v += a * w` in target("avx2,fma") code) were
// contracted into fused multiply-adds by GCC; spelled out here so the tails keep that rounding whatever the
// compiler decides.
__attribute__((target("avx2,fma"), always_inline)) inline float fma1(float x, float y, float z) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(x), _mm_set_ss(y), _mm_set_ss(z)));
}

template <typename T>
__attribute__((target("avx2,fma"), always_inline)) inline __m256 load8(const T* p) {
  if constexpr (std::is_same_v<T, int8_t>) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  } else {
    const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  }
}

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows of W per pass of nn_rows: the accumulators of a tile are loaded and stored once per kRows rows, and the
// pass reads kRows sequential streams.
constexpr int kRows = 8;
// Rows of W ahead of the pass that nn_rows prefetches: a block's run of a row is short (a few lines), which
// the hardware prefetchers pick up late.
constexpr int64_t kNnAhead = 16;

// acc[m·W + j..j + 8·JV) for the MM rows of A += R rows of W (w: row p, column j; row stride N) times
// a[m·K + r] (a: column p of A): each column's sum is one chain of fused multiply-adds over p, in order (the
// old kernel's and the test's definition); `first` starts the chains from zero instead of acc.
template <typename T, int MM, int JV, int R>
__attribute__((target("avx2,fma"), always_inline)) inline void nn_tile(const float* __restrict a, int64_t K,
                                                                      const T* __restrict w, int64_t N,
                                                                      float* __restrict acc, int64_t W, bool first) {
  __m256 c[MM][JV];
  for (int m = 0; m < MM; ++m)
    for (int v = 0; v < JV; ++v) c[m][v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + m * W + 8 * v);
  for (int r = 0; r < R; ++r) {
    __m256 y[JV];
    for (int v = 0; v < JV; ++v) y[v] = load8(w + r * N + 8 * v);
    for (int m = 0; m < MM; ++m) {
      const __m256 x = _mm256_broadcast_ss(a + m * K + r);
      for (int v = 0; v < JV; ++v) c[m][v] = _mm256_fmadd_ps(x, y[v], c[m][v]);
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int v = 0; v < JV; ++v) _mm256_storeu_ps(acc + m * W + 8 * v, c[m][v]);
}

// R rows of W (from row p) into the block's W columns: tiles of 8·JV columns, then single vectors, then
// scalars (the old kernel's tail: a separate multiply and add per row). `ahead`: the rows whose block run
// to prefetch (null: none).
template <typename T, int MM, int JV, int R>
__attribute__((target("avx2,fma"))) void nn_rows(const float* __restrict a, int64_t K, const T* __restrict w, int64_t N,
                                                 float* __restrict acc, int64_t W, bool first, const T* ahead) {
  if (ahead != nullptr) {
    const int64_t runBytes = W * static_cast<int64_t>(sizeof(T));
    for (int r = 0; r < R; ++r) {
      const char* row = reinterpret_cast<const char*>(ahead + r * N);
      for (int64_t off = 0; off < runBytes; off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
    }
  }
  int64_t j = 0;
  for (; j + 8 * JV <= W; j += 8 * JV) nn_tile<T, MM, JV, R>(a, K, w + j, N, acc + j, W, first);
  for (; j + 8 <= W; j += 8) nn_tile<T, MM, 1, R>(a, K, w + j, N, acc + j, W, first);
  for (; j < W; ++j)
    for (int m = 0; m < MM; ++m) {
      float v = first ? 0.0f : acc[m * W + j];
      for (int r = 0; r < R; ++r) v = fma1(a[m * K + r], widen(w[r * N + j]), v);
      acc[m * W + j] = v;
    }
}

// Accumulators per tile: MM·JV registers plus JV widened rows of W and one broadcast, at most 16.
template <int MM>
constexpr int nn_vectors() {
  return MM <= 2 ? 4 : MM == 3 ? 3 : MM <= 6 ? 2 : 1;
}

template <typename T, int MM>
__attribute__((target("avx2,fma"))) void nn_block(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  constexpr int JV = nn_vectors<MM>();
  const int64_t K = g.K, N = g.N, W = j1 - j0;
  const T* w = static_cast<const T*>(g.W) + j0;
  // Only short runs (the thread pool's column blocks): a harness on this machine's EPYC, one thread, cold
  // weights: runs of 768 int8 columns ~5-10% faster with it, of 1024 ~10% slower.
  const bool prefetch = W * static_cast<int64_t>(sizeof(T)) <= 1024 - 64;
  int64_t p = 0;
  for (; p + kRows <= K; p += kRows) {
    const T* ahead = prefetch && p + kNnAhead + kRows <= K ? w + (p + kNnAhead) * N : nullptr;
    nn_rows<T, MM, JV, kRows>(g.A + p, K, w + p * N, N, acc, W, p == 0, ahead);
  }
  for (; p < K; ++p) nn_rows<T, MM, JV, 1>(g.A + p, K, w + p * N, N, acc, W, p == 0, nullptr);
}

template <typename T>
__attribute__((target("avx2,fma"))) void nn_avx2(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  switch (g.M) {
    case 1: return nn_block<T, 1>(g, j0, j1, acc);
    case 2: return nn_block<T, 2>(g, j0, j1, acc);
    case 3: return nn_block<T, 3>(g, j0, j1, acc);
    case 4: return nn_block<T, 4>(g, j0, j1, acc);
    case 5: return nn_block<T, 5>(g, j0, j1, acc);
    case 6: return nn_block<T, 6>(g, j0, j1, acc);
    case 7: return nn_block<T, 7>(g, j0, j1, acc);
    default: return nn_block<T, 8>(g, j0, j1, acc);  // M <= kSkinnyM (native.ts)
  }
}

// Rows of W ahead of the ones being read that nt_rows prefetches (past the last row: harmless, prefetches do
// not fault).
constexpr int64_t kNtAhead = 8;

// acc[m·W + (j - j0) + t] for NB rows j + t of W (N, K) against every row of A: MM·NB accumulators of 8 lanes
// (lane l sums p ≡ l mod 8 in order), NB widened rows, A from memory; then hsum8 and the tail, as before.
template <typename T, int MM, int NB>
__attribute__((target("avx2,fma"), always_inline)) inline void nt_rows(const QuantGemmArgs& g, int64_t j, int64_t j0,
                                                                       int64_t W, float* acc) {
  const int64_t K = g.K, Kv = K & ~int64_t{7};
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));  // elements of W per cache line
  const T* b[NB];
  for (int t = 0; t < NB; ++t) b[t] = static_cast<const T*>(g.W) + (j + t) * K;
  __m256 c[MM][NB];
  for (int m = 0; m < MM; ++m)
    for (int t = 0; t < NB; ++t) c[m][t] = _mm256_setzero_ps();
  for (int64_t p = 0; p < Kv; p += 8) {
    if ((p & (kLine - 1)) == 0)
      for (int t = 0; t < NB; ++t) _mm_prefetch(reinterpret_cast<const char*>(b[t] + kNtAhead * K + p), _MM_HINT_T0);
    __m256 y[NB];
    for (int t = 0; t < NB; ++t) y[t] = load8(b[t] + p);
    for (int m = 0; m < MM; ++m) {
      const __m256 x = _mm256_loadu_ps(g.A + m * K + p);
      for (int t = 0; t < NB; ++t) c[m][t] = _mm256_fmadd_ps(x, y[t], c[m][t]);
    }
  }
  for (int m = 0; m < MM; ++m) {
    const float* a = g.A + m * K;
    for (int t = 0; t < NB; ++t) {
      float s = hsum8(c[m][t]);
      for (int64_t p = Kv; p < K; ++p) s = fma1(a[p], widen(b[t][p]), s);
      acc[m * W + (j - j0) + t] = s;
    }
  }
}

template <int MM>
constexpr int nt_rows_per_pass() {
  return MM <= 2 ? 4 : MM <= 4 ? 3 : MM <= 6 ? 2 : 1;
}

template <typename T, int MM>
__attribute__((target("avx2,fma"))) void nt_block(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  constexpr int NB = nt_rows_per_pass<MM>();
  const int64_t W = j1 - j0;
  int64_t j = j0;
  for (; j + NB <= j1; j += NB) nt_rows<T, MM, NB>(g, j, j0, W, acc);
  for (; j < j1; ++j) nt_rows<T, MM, 1>(g, j, j0, W, acc);
}

template <typename T>
__attribute__((target("avx2,fma"))) void nt_avx2(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  switch (g.M) {
    case 1: return nt_block<T, 1>(g, j0, j1, acc);
    case 2: return nt_block<T, 2>(g, j0, j1, acc);
    case 3: return nt_block<T, 3>(g, j0, j1, acc);
    case 4: return nt_block<T, 4>(g, j0, j1, acc);
    case 5: return nt_block<T, 5>(g, j0, j1, acc);
    case 6: return nt_block<T, 6>(g, j0, j1, acc);
    case 7: return nt_block<T, 7>(g, j0, j1, acc);
    default: return nt_block<T, 8>(g, j0, j1, acc);
  }
}
#endif

template <typename T>
void run(const QuantGemmArgs& g) {
  const int64_t M = g.M, N = g.N;
  using Kernel = void (*)(const QuantGemmArgs&, int64_t, int64_t, float*);
#if CLIPCAP_X86_KERNELS
  const bool avx2 = simd_avx2();
  const Kernel kernel = g.transB ? (avx2 ? nt_avx2<T> : nt_portable<T>) : (avx2 ? nn_avx2<T> : nn_portable<T>);
#else
  const Kernel kernel = g.transB ? nt_portable<T> : nn_portable<T>;
#endif
  const int threads = num_threads();
  const bool parallel = 2.0 * M * N * g.K >= 1e6 && threads > 1 && !in_parallel_region();
  // Output-column blocks: a few per thread for balance, whole multiples of 64.
  int64_t W = parallel ? (N + 4 * threads - 1) / (4 * threads) : N;
  W = std::max<int64_t>(64, std::min<int64_t>(g.transB ? 2048 : 1024, (W + 63) / 64 * 64));
  const int64_t blocks = (N + W - 1) / W;
  const float* scales = g.format == QuantFormat::kInt8 ? g.scales : nullptr;
  auto task = [&](int64_t t) {
    thread_local std::vector<float> acc;
    const int64_t j0 = t * W, j1 = std::min(N, j0 + W);
    acc.resize(static_cast<size_t>(M * (j1 - j0)));
    kernel(g, j0, j1, acc.data());
    for (int64_t m = 0; m < M; ++m)
      store(acc.data() + m * (j1 - j0), j1 - j0, g.C + m * N + j0, scales == nullptr ? nullptr : scales + j0, g.alpha,
            g.accumulate, g.bias == nullptr ? nullptr : g.bias + j0);
  };
  if (parallel) {
    pool().run(blocks, task);
  } else {
    for (int64_t t = 0; t < blocks; ++t) task(t);
  }
}

}  // namespace

void gemm_quant(const QuantGemmArgs& g) {
  if (g.M <= 0 || g.N <= 0) return;
  // The AVX2 kernels are instantiated for 1..kSkinnyM rows (the binding allows no more); more rows would go
  // in groups, each row's outputs being independent of the others.
  for (int64_t m0 = 0; m0 < g.M; m0 += kSkinnyM) {
    QuantGemmArgs part = g;
    part.M = std::min(kSkinnyM, g.M - m0);
    part.A = g.A + m0 * g.K;
    part.C = g.C + m0 * g.N;
    if (g.format == QuantFormat::kInt8) run<int8_t>(part);
    else run<uint16_t>(part);
  }
}

}  // namespace clipcap
