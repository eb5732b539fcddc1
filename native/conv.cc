// Convolution as implicit-ish GEMM on the packed GEMM (gemm.cc), in NHWC so the GEMM's column bias is the
// conv bias and a pixel's C channels are contiguous:
//   output pixels (M = B·Ho·Wo rows) x output channels (N = O) = im2col rows (K = kh·kw·C) · wᵀ, with w
//   (O, kh, kw, C) read as an (N, K) matrix (transB: no weight copy).
// - A 1x1, stride-1, unpadded convolution is exactly x (M, C) · wᵀ: no im2col at all (most of a ResNet).
// - Otherwise im2col is built a block of output rows at a time (32 MiB of scratch at most, so big images and
//   batches never allocate a 9x copy of the input; a batch-1 RN50x4 conv fits one block: fewer, larger GEMMs
//   pack the weight fewer times), in parallel, then multiplied; the GEMM itself is
//   multi-threaded. A row of the im2col matrix is the (ky, kx, c) taps of one output pixel: each (ky, kx)
//   tap is a contiguous run of C channels, copied with memcpy, or zeros where the window leaves the image.
// - A residual (the ResNet block's identity branch) is copied into y first and the GEMM accumulates onto it;
//   ReLU is applied to each block right after its GEMM, while the block is still in cache.
#include "conv.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "threadpool.h"

namespace clipcap {

namespace {

constexpr int64_t kIm2colFloats = int64_t{1} << 23;  // scratch per block: 32 MiB

// The caller's (JS thread's) im2col scratch; pool threads fill it for one call at a time.
thread_local std::vector<float> t_cols;

void relu_rows(float* y, int64_t rows, int64_t cols) {
  parallel_for(rows, static_cast<double>(cols), [&](int64_t r0, int64_t r1, int64_t) {
    for (int64_t i = r0 * cols; i < r1 * cols; ++i) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
  });
}

// Row m of the im2col matrix (output pixel m = (b, oy, ox)) into dst (K floats).
void im2col_row(const ConvArgs& a, const float* x, int64_t m, float* dst) {
  const int64_t ox = m % a.Wo;
  const int64_t oy = (m / a.Wo) % a.Ho;
  const int64_t b = m / (a.Wo * a.Ho);
  const size_t run = static_cast<size_t>(a.C) * sizeof(float);
  for (int64_t ky = 0; ky < a.kh; ++ky) {
    const int64_t iy = oy * a.stride_h - a.pad_h + ky;
    const bool row_in = iy >= 0 && iy < a.H;
    for (int64_t kx = 0; kx < a.kw; ++kx, dst += a.C) {
      const int64_t ix = ox * a.stride_w - a.pad_w + kx;
      if (row_in && ix >= 0 && ix < a.W)
        std::memcpy(dst, x + ((b * a.H + iy) * a.W + ix) * a.C, run);
      else
        std::memset(dst, 0, run);
    }
  }
}

}  // namespace

namespace {

// The portable / AVX2 path: im2col blocks on the shared packed GEMM.
void conv2d_gemm(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                 float* y, bool relu) {
  const int64_t M = a.B * a.Ho * a.Wo;
  const int64_t K = a.kh * a.kw * a.C;
  const int64_t N = a.O;
  if (M == 0 || N == 0) return;
  GemmArgs g;
  g.N = N;
  g.K = K;
  g.B = w;
  g.ldb = K;
  g.transB = true;
  g.ldc = N;
  g.bias = bias;
  if (residual != nullptr) {
    parallel_for(M, static_cast<double>(N), [&](int64_t r0, int64_t r1, int64_t) {
      std::memcpy(y + r0 * N, residual + r0 * N, static_cast<size_t>((r1 - r0) * N) * sizeof(float));
    });
    g.accumulate = true;
  }
  const bool pointwise =
      a.kh == 1 && a.kw == 1 && a.stride_h == 1 && a.stride_w == 1 && a.pad_h == 0 && a.pad_w == 0;
  if (pointwise) {
    // x (B, H, W, C) is already the (M, K) matrix.
    g.M = M;
    g.A = x;
    g.lda = K;
    g.C = y;
    gemm(g);
    if (relu) relu_rows(y, M, N);
    return;
  }
  // Whole multiples of the GEMM's 6-row panels per block, at least one panel-row per thread.
  int64_t rows = std::max<int64_t>(kIm2colFloats / std::max<int64_t>(K, 1), 48);
  rows = std::min(M, (rows + kMR - 1) / kMR * kMR);
  if (static_cast<int64_t>(t_cols.size()) < rows * K) t_cols.resize(static_cast<size_t>(rows * K));
  float* cols = t_cols.data();
  for (int64_t m0 = 0; m0 < M; m0 += rows) {
    const int64_t mb = std::min(rows, M - m0);
    parallel_for(mb, static_cast<double>(K), [&](int64_t r0, int64_t r1, int64_t) {
      for (int64_t r = r0; r < r1; ++r) im2col_row(a, x, m0 + r, cols + r * K);
    });
    g.M = mb;
    g.A = cols;
    g.lda = K;
    g.C = y + m0 * N;
    gemm(g);
    if (relu) relu_rows(g.C, mb, N);
  }
}

bool conv_avx512_from_env() {
  const char* v = std::getenv("CLIPCAP_CONV_AVX512");
  if (v != nullptr && std::strcmp(v, "0") == 0) return false;
  return cpu_has_avx512();
}

// Set from the JS thread between kernel calls.
std::atomic<bool> g_conv_avx512{conv_avx512_from_env()};

}  // namespace

bool cpu_has_avx512() {
#if CLIPCAP_X86_KERNELS
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && cpu_has_avx2_fma();
#else
  return false;
#endif
}

ConvKernel conv_kernel() {
  return g_conv_avx512.load(std::memory_order_relaxed) && gemm_kernel() == GemmKernel::kAvx2 ? ConvKernel::kAvx512
                                                                                            : ConvKernel::kGemm;
}

bool set_conv_kernel(ConvKernel kernel) {
  if (kernel == ConvKernel::kAvx512 && !cpu_has_avx512()) return false;
  g_conv_avx512.store(kernel == ConvKernel::kAvx512, std::memory_order_relaxed);
  return true;
}

void conv2d_nhwc(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                 float* y, bool relu) {
#if CLIPCAP_X86_KERNELS
  if (conv_kernel() == ConvKernel::kAvx512) {
    conv2d_avx512(a, x, w, bias, residual, y, relu);
    return;
  }
#endif
  conv2d_gemm(a, x, w, bias, residual, y, relu);
}

void avgpool2d_nhwc(const ConvArgs& a, const float* x, float* y) {
  const int64_t C = a.C;
  const float div = static_cast<float>(a.kh * a.kw);  // PyTorch divides the window sum
  // One task per output row (b, oy): Wo·C outputs, each the sum of up to kh·kw contiguous runs of C.
  parallel_for(a.B * a.Ho, static_cast<double>(a.Wo * C * a.kh * a.kw), [&](int64_t r0, int64_t r1, int64_t) {
    std::vector<float> acc(static_cast<size_t>(C));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / a.Ho, oy = r % a.Ho;
      for (int64_t ox = 0; ox < a.Wo; ++ox) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t ky = 0; ky < a.kh; ++ky) {
          const int64_t iy = oy * a.stride_h - a.pad_h + ky;
          if (iy < 0 || iy >= a.H) continue;
          for (int64_t kx = 0; kx < a.kw; ++kx) {
            const int64_t ix = ox * a.stride_w - a.pad_w + kx;
            if (ix < 0 || ix >= a.W) continue;
            const float* src = x + ((b * a.H + iy) * a.W + ix) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += src[c];
          }
        }
        float* dst = y + ((b * a.Ho + oy) * a.Wo + ox) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = acc[c] / div;
      }
    }
  });
}

}  // namespace clipcap
