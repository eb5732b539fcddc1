// Weight-only int8 / bf16 skinny products (see quant.h). Two layouts, as the f32 skinny kernels:
// - nn (W stored (K, N), GPT-2's Conv1D): tasks take blocks of output columns; each walks K a row at a time,
//   widening a run of the block's columns to f32 and adding a[m]·w into M accumulator rows (L1-resident);
//   the scale multiplies each column's sum at the end.
// - nt (W stored (N, K), the tied LM head): tasks take blocks of output rows of W; each is a dot product of
//   one contiguous compact row with every row of A, times the row's scale.
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

template <typename T>
__attribute__((target("avx2,fma"))) void nn_avx2(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  // Four rows of W per pass over the block: each accumulator is loaded and stored once per four rows, and
  // the widened rows are reused by every row of A.
  const int64_t M = g.M, W = j1 - j0, Wv = W & ~int64_t{7};
  const T* w = static_cast<const T*>(g.W);
  std::fill(acc, acc + M * W, 0.0f);
  constexpr int64_t kAhead = 16;  // rows of W prefetched ahead: each row's run in the block is short
  const int64_t runBytes = W * static_cast<int64_t>(sizeof(T));
  int64_t p = 0;
  for (; p < g.K; p += 4) {
    const int64_t rows = std::min<int64_t>(4, g.K - p);
    const T* r[4];
    for (int64_t t = 0; t < 4; ++t) r[t] = w + (p + (t < rows ? t : 0)) * g.N + j0;
    for (int64_t t = 0; t < 4 && p + kAhead + t < g.K; ++t) {
      const char* ahead = reinterpret_cast<const char*>(w + (p + kAhead + t) * g.N + j0);
      for (int64_t off = 0; off < runBytes; off += 64) _mm_prefetch(ahead + off, _MM_HINT_T0);
    }
    int64_t j = 0;
    for (; j < Wv; j += 8) {
      const __m256 w0 = load8(r[0] + j);
      const __m256 w1 = rows > 1 ? load8(r[1] + j) : _mm256_setzero_ps();
      const __m256 w2 = rows > 2 ? load8(r[2] + j) : _mm256_setzero_ps();
      const __m256 w3 = rows > 3 ? load8(r[3] + j) : _mm256_setzero_ps();
      for (int64_t m = 0; m < M; ++m) {
        const float* a = g.A + m * g.K + p;
        float* cm = acc + m * W + j;
        __m256 c = _mm256_fmadd_ps(_mm256_broadcast_ss(a), w0, _mm256_loadu_ps(cm));
        if (rows > 1) c = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), w1, c);
        if (rows > 2) c = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), w2, c);
        if (rows > 3) c = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), w3, c);
        _mm256_storeu_ps(cm, c);
      }
    }
    for (; j < W; ++j)
      for (int64_t m = 0; m < M; ++m) {
        const float* a = g.A + m * g.K + p;
        float v = acc[m * W + j];
        for (int64_t t = 0; t < rows; ++t) v += a[t] * widen(r[t][j]);
        acc[m * W + j] = v;
      }
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) void nt_avx2(const QuantGemmArgs& g, int64_t j0, int64_t j1, float* acc) {
  // Two rows of W at a time against every row of A (up to kSkinnyM): 2·M accumulators <= 16 registers is
  // too many for M = 8, so rows of A go in groups of 4 (8 accumulators + 2 weights + 1 activation).
  const int64_t M = g.M, K = g.K, W = j1 - j0, Kv = K & ~int64_t{7};
  const T* w = static_cast<const T*>(g.W);
  for (int64_t j = j0; j < j1; j += 2) {
    const bool two = j + 1 < j1;
    const T* b0 = w + j * K;
    const T* b1 = two ? b0 + K : b0;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mn = std::min<int64_t>(4, M - m0);
      __m256 c0[4], c1[4];
      for (int t = 0; t < 4; ++t) c0[t] = c1[t] = _mm256_setzero_ps();
      for (int64_t p = 0; p < Kv; p += 8) {
        const __m256 x0 = load8(b0 + p), x1 = load8(b1 + p);
        for (int t = 0; t < 4; ++t) {
          if (t >= mn) break;
          const __m256 a = _mm256_loadu_ps(g.A + (m0 + t) * K + p);
          c0[t] = _mm256_fmadd_ps(a, x0, c0[t]);
          c1[t] = _mm256_fmadd_ps(a, x1, c1[t]);
        }
      }
      for (int64_t t = 0; t < mn; ++t) {
        float s0 = hsum8(c0[t]), s1 = hsum8(c1[t]);
        const float* a = g.A + (m0 + t) * K;
        for (int64_t p = Kv; p < K; ++p) {
          s0 += a[p] * widen(b0[p]);
          s1 += a[p] * widen(b1[p]);
        }
        acc[(m0 + t) * W + (j - j0)] = s0;
        if (two) acc[(m0 + t) * W + (j - j0) + 1] = s1;
      }
    }
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
  if (g.format == QuantFormat::kInt8) run<int8_t>(g);
  else run<uint16_t>(g);
}

}  // namespace clipcap
