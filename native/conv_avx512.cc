// The AVX-512 convolution: an implicit GEMM with its own 12x32 micro-kernel, for CPUs with AVX-512F (checked
// at run time; only these functions are compiled for AVX-512, so the addon loads anywhere).
//
// Same product as conv.cc's generic path, y (M = B·Ho·Wo, N = O) = A (M, K = kh·kw·C) · wᵀ, but:
// - The micro-kernel reads A straight from row-major memory (rows `lda` apart, k contiguous), broadcasting
//   one value per row and k, so A is never transposed into panels: a 1x1 stride-1 convolution reads x as it
//   is; other convolutions copy each output pixel's im2col row (contiguous runs of C channels per tap) into a
//   small buffer first, either per 12-row panel on the fly (when one task covers every output channel, so
//   each row is copied once) or into a shared im2col block (when several tasks share the rows).
// - Weights are packed per task into 16-column panels (kc x 16, the transposes of gemm_avx2.cc).
// - Bias, residual and ReLU are applied when the tile leaves the registers: one pass over the output.
// - 16-float zmm vectors: twice the work per instruction of the AVX2 GEMM where the core executes 512-bit
//   FMAs at full width.
// Results do not depend on the thread count: every output value is summed over k in the same order (K
// blocks fixed by K alone, ascending k within a block) whichever task computes it.
#include "conv.h"

#if CLIPCAP_X86_KERNELS
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "gemm.h"
#include "threadpool.h"

namespace clipcap {

namespace {

constexpr int kXR = 12;            // rows per micro-tile
constexpr int kXC = 32;            // columns per micro-tile: two zmm vectors
constexpr int64_t kXKC = 384;      // largest depth block: a 12-row A panel is 18 KiB (L1)
constexpr int64_t kXNT = 256;      // widest column tile per task: KC x NT of packed weights is 384 KiB (L2)
constexpr int64_t kIm2colMax = int64_t{1} << 20;  // floats of shared im2col scratch (4 MiB: L2/L3)

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// Grow-only 64-byte aligned scratch (pack_b_trans_avx2 stores aligned).
class Buffer {
 public:
  float* get(size_t floats) {
    if (floats > cap_) {
      void* p = nullptr;
      const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
      if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
      data_.reset(static_cast<float*>(p));
      cap_ = floats;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<float, AlignedFree> data_;
  size_t cap_ = 0;
};

thread_local Buffer t_wpack;  // a task's packed weight tile
thread_local Buffer t_apanel;  // a task's on-the-fly im2col panel
thread_local Buffer t_im2col;  // the caller's shared im2col block

// What happens to a tile when it leaves the registers: v = acc + (load_c ? c : bias + residual), then ReLU.
struct Epilogue {
  const float* bias;      // at the tile's first column, or null
  const float* residual;  // at the tile's first element (row stride ldc), or null
  bool load_c;            // a later K block: add to what the earlier blocks wrote
  bool relu;
};

// c (mr x nr, row stride ldc) from a (MR rows lda apart, kc deep) · b (kc x 16 per vector, the second
// vector's panel bstride floats after the first). nr = 16·(NV - 1) + the set bits of `tail`.
template <int MR, int NV>
__attribute__((target("avx512f"))) void micro(int64_t kc, const float* a, int64_t lda, const float* b,
                                              int64_t bstride, float* c, int64_t ldc, const Epilogue& e,
                                              __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* b1 = b + bstride;
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0v = _mm512_load_ps(b + p * 16);
    const __m512 b1v = NV > 1 ? _mm512_load_ps(b1 + p * 16) : b0v;
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + p]);
      acc[r][0] = _mm512_fmadd_ps(av, b0v, acc[r][0]);
      if (NV > 1) acc[r][NV - 1] = _mm512_fmadd_ps(av, b1v, acc[r][NV - 1]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF);
      float* dst = c + r * ldc + v * 16;
      __m512 x = acc[r][v];
      if (e.load_c) {
        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, dst));
      } else {
        if (e.bias != nullptr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, e.bias + v * 16));
        if (e.residual != nullptr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, e.residual + r * ldc + v * 16));
      }
      if (e.relu) x = _mm512_mask_max_ps(x, 0xFFFF, x, _mm512_setzero_ps());  // (plain max_ps: a GCC 12 false warning)
      _mm512_mask_storeu_ps(dst, m, x);
    }
  }
}

using Micro = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, const Epilogue&,
                       __mmask16);

// kMicro[mr - 1][nv - 1]
const Micro kMicro[kXR][2] = {
    {micro<1, 1>, micro<1, 2>},   {micro<2, 1>, micro<2, 2>},   {micro<3, 1>, micro<3, 2>},
    {micro<4, 1>, micro<4, 2>},   {micro<5, 1>, micro<5, 2>},   {micro<6, 1>, micro<6, 2>},
    {micro<7, 1>, micro<7, 2>},   {micro<8, 1>, micro<8, 2>},   {micro<9, 1>, micro<9, 2>},
    {micro<10, 1>, micro<10, 2>}, {micro<11, 1>, micro<11, 2>}, {micro<12, 1>, micro<12, 2>},
};

// Weights w (N, K) row-major, columns [j0, j0 + nt) x depth [p0, p0 + kc) -> 16-column panels of kc x 16
// (zeros past N).
void pack_weights(const float* w, int64_t N, int64_t K, int64_t j0, int64_t nt, int64_t p0, int64_t kc,
                  float* dst) {
  for (int64_t jp = 0; jp < nt; jp += 16) {
    float* panel = dst + jp * kc;
    const int64_t cols = std::min<int64_t>(16, N - j0 - jp);
    if (cols == 16) {
      pack_b_trans_avx2(w + (j0 + jp) * K + p0, K, kc, panel);
      continue;
    }
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t j = 0; j < 16; ++j) panel[p * 16 + j] = j < cols ? w[(j0 + jp + j) * K + p0 + p] : 0.0f;
  }
}

// Depth [p0, p0 + n) of im2col row m (output pixel m = (b, oy, ox)) into dst: per tap, a run of channels
// from x, or zeros where the window leaves the image.
void im2col_range(const ConvArgs& a, const float* x, int64_t m, int64_t p0, int64_t n, float* dst) {
  const int64_t ox = m % a.Wo;
  const int64_t oy = (m / a.Wo) % a.Ho;
  const int64_t b = m / (a.Wo * a.Ho);
  int64_t k = p0;
  const int64_t end = p0 + n;
  while (k < end) {
    const int64_t tap = k / a.C, c = k % a.C;
    const int64_t ky = tap / a.kw, kx = tap % a.kw;
    const int64_t run = std::min(a.C - c, end - k);
    const int64_t iy = oy * a.stride_h - a.pad_h + ky;
    const int64_t ix = ox * a.stride_w - a.pad_w + kx;
    if (iy >= 0 && iy < a.H && ix >= 0 && ix < a.W)
      std::memcpy(dst, x + ((b * a.H + iy) * a.W + ix) * a.C + c, static_cast<size_t>(run) * sizeof(float));
    else
      std::memset(dst, 0, static_cast<size_t>(run) * sizeof(float));
    dst += run;
    k += run;
  }
}

// How one GEMM phase over rows [0, rows) is split into tasks of (row chunk) x (column tile).
struct Plan {
  int64_t nt = 0, tiles = 1;        // column tile width (a multiple of 32 unless it is all of N) and count
  int64_t chunk = 0, chunks = 1;    // rows per chunk (a multiple of kXR) and count
};

Plan plan(int64_t rows, int64_t N, int threads) {
  Plan p;
  // Few tasks per thread balance a shared machine (a descheduled worker's tasks go to the others).
  const int64_t want = threads > 1 ? 4 * static_cast<int64_t>(threads) : 1;
  const int64_t panels = (rows + kXR - 1) / kXR;
  p.tiles = (N + kXNT - 1) / kXNT;
  // Row chunks of at least 4 panels (repacking the weight tile per chunk stays cheap), then narrower tiles.
  p.chunks = std::max<int64_t>(1, std::min((want + p.tiles - 1) / p.tiles, panels / 4));
  if (p.chunks * p.tiles < want) p.tiles = std::min((want + p.chunks - 1) / p.chunks, (N + 63) / 64);
  p.tiles = std::max<int64_t>(p.tiles, 1);
  p.nt = (N + p.tiles - 1) / p.tiles;
  if (p.tiles > 1) p.nt = (p.nt + kXC - 1) / kXC * kXC;
  p.tiles = (N + p.nt - 1) / p.nt;
  const int64_t per = (panels + p.chunks - 1) / p.chunks;
  p.chunk = per * kXR;
  p.chunks = (rows + p.chunk - 1) / p.chunk;
  return p;
}

struct Phase {
  const ConvArgs* conv;
  const float* x;        // the convolution's input, for on-the-fly im2col
  const float* A;        // direct A: row r of the phase at A + r·lda; null: im2col on the fly
  int64_t lda;
  int64_t m0;            // the phase's first output row
  int64_t rows;
  const float* w;
  const float* bias;
  const float* residual;
  float* y;
  bool relu;
};

void run_phase(const Phase& ph, int64_t N, int64_t K, const Plan& pl) {
  const int64_t blocksK = (K + kXKC - 1) / kXKC;
  const int64_t kcMax = (K + blocksK - 1) / blocksK;
  auto task = [&](int64_t t) {
    const int64_t tile = t % pl.tiles, chunk = t / pl.tiles;
    const int64_t j0 = tile * pl.nt, nt = std::min(pl.nt, N - j0);
    const int64_t r0 = chunk * pl.chunk, r1 = std::min(ph.rows, r0 + pl.chunk);
    const int64_t ntPad = (nt + 15) / 16 * 16;
    float* wp = t_wpack.get(static_cast<size_t>(kcMax * ntPad));
    float* ap = ph.A == nullptr ? t_apanel.get(static_cast<size_t>(kXR * kcMax)) : nullptr;
    for (int64_t p0 = 0; p0 < K; p0 += kcMax) {
      const int64_t kc = std::min(kcMax, K - p0);
      const bool first = p0 == 0, last = p0 + kc == K;
      pack_weights(ph.w, N, K, j0, nt, p0, kc, wp);
      for (int64_t i = r0; i < r1; i += kXR) {
        const int mr = static_cast<int>(std::min<int64_t>(kXR, r1 - i));
        const float* a;
        int64_t lda;
        if (ph.A != nullptr) {
          a = ph.A + i * ph.lda + p0;
          lda = ph.lda;
        } else {
          for (int r = 0; r < mr; ++r) im2col_range(*ph.conv, ph.x, ph.m0 + i + r, p0, kc, ap + r * kc);
          a = ap;
          lda = kc;
        }
        const int64_t row = (ph.m0 + i) * N;
        for (int64_t jp = 0; jp < nt; jp += kXC) {
          const int64_t cols = std::min<int64_t>(kXC, nt - jp);
          const int nv = cols > 16 ? 2 : 1;
          const int64_t rem = cols - 16 * (nv - 1);
          const __mmask16 tail = static_cast<__mmask16>(rem == 16 ? 0xFFFF : (1u << rem) - 1);
          Epilogue e;
          e.load_c = !first;
          e.bias = first && ph.bias != nullptr ? ph.bias + j0 + jp : nullptr;
          e.residual = first && ph.residual != nullptr ? ph.residual + row + j0 + jp : nullptr;
          e.relu = last && ph.relu;
          kMicro[mr - 1][nv - 1](kc, a, lda, wp + jp * kc, 16 * kc, ph.y + row + j0 + jp, N, e, tail);
        }
      }
    }
  };
  const int64_t tasks = pl.tiles * pl.chunks;
  if (tasks > 1)
    pool().run(tasks, task);
  else
    task(0);
}

}  // namespace

void conv2d_avx512(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                   float* y, bool relu) {
  const int64_t M = a.B * a.Ho * a.Wo;
  const int64_t K = a.kh * a.kw * a.C;
  const int64_t N = a.O;
  if (M == 0 || N == 0) return;
  const int threads = in_parallel_region() ? 1 : num_threads();
  Phase ph{&a, x, nullptr, 0, 0, M, w, bias, residual, y, relu};
  const bool pointwise =
      a.kh == 1 && a.kw == 1 && a.stride_h == 1 && a.stride_w == 1 && a.pad_h == 0 && a.pad_w == 0;
  if (pointwise) {
    // x (B, H, W, C) is already A (M, K).
    ph.A = x;
    ph.lda = K;
    run_phase(ph, N, K, plan(M, N, threads));
    return;
  }
  const Plan whole = plan(M, N, threads);
  if (whole.tiles == 1) {
    // Every task covers all N columns: each im2col row is built once, in the task that uses it.
    run_phase(ph, N, K, whole);
    return;
  }
  // Several column tiles share each row: build im2col blocks once, in parallel, then multiply.
  int64_t rowsPer = std::max<int64_t>(kIm2colMax / K, kXR);
  rowsPer = std::min(M, rowsPer / kXR * kXR);
  float* cols = t_im2col.get(static_cast<size_t>(rowsPer * K));
  for (int64_t m0 = 0; m0 < M; m0 += rowsPer) {
    const int64_t mb = std::min(rowsPer, M - m0);
    parallel_for(mb, static_cast<double>(K), [&](int64_t r0, int64_t r1, int64_t) {
      for (int64_t r = r0; r < r1; ++r) im2col_range(a, x, m0 + r, 0, K, cols + r * K);
    });
    Phase blk = ph;
    blk.A = cols;
    blk.lda = K;
    blk.m0 = m0;
    blk.rows = mb;
    run_phase(blk, N, K, mb == M ? whole : plan(mb, N, threads));
  }
}

}  // namespace clipcap
#endif
