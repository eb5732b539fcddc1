// Convolution as implicit-ish GEMM on the packed GEMM (gemm.cc), in NHWC so the GEMM's column bias is the
// conv bias and a pixel's C channels are contiguous:
//   output pixels (M = B·Ho·Wo rows) x output channels (N = O) = im2col rows (K = kh·kw·C) · wᵀ, with w
//   (O, kh, kw, C) read as an (N, K) matrix (transB: no weight copy).
// - A 1x1, stride-1, unpadded convolution is exactly x (M, C) · wᵀ: no im2col at all (most of a ResNet).
// - A 3x3 stride-1 convolution over enough 2x2 output tiles runs as Winograd F(2x2, 3x3): 16 products of
//   depth C on the same GEMM, 2.25x fewer multiply-adds (see conv3x3_winograd).
// - Otherwise im2col is built a block of output rows at a time (32 MiB of scratch at most, so big images and
//   batches never allocate a 9x copy of the input; a batch-1 RN50x4 conv fits one block: fewer, larger GEMMs
//   pack the weight fewer times), in parallel, then multiplied; the GEMM itself is
//   multi-threaded. A row of the im2col matrix is the (ky, kx, c) taps of one output pixel: each (ky, kx)
//   tap is a contiguous run of C channels, copied with memcpy, or zeros where the window leaves the image.
// - A residual (the ResNet block's identity branch) is copied into each block of y first and the GEMM
//   accumulates onto it; ReLU is applied to each block right after its GEMM, while the block is in cache.
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

// ---- Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks") ----
// A 3x3 stride-1 convolution computes each 2x2 block of outputs ("tile") from the 4x4 input window around
// it as Y = Aᵀ [ Σ_c (G g_oc Gᵀ) ⊙ (Bᵀ d_c B) ] A: per tile and output channel, 16 products summed over
// the input channels instead of 36. In NHWC every transform runs along the contiguous channel axis:
//   U (O, 16, C) = G g Gᵀ per (o, c) (the weights, transformed per call),
//   V (T, 16, C) = Bᵀ d B per (tile, c) (the input, T tiles),
//   Mt (T, 16, O) = V[:, ξ] · U[:, ξ]ᵀ for each of the 16 positions ξ: one batched GEMM of 16 (T, C) x (C, O)
//   products on the shared packed GEMM (K = C, not 9·C), then y = Aᵀ Mt A + bias (+ residual), ReLU.
// 2.25x fewer multiply-adds; the transforms only add, subtract and halve (exact scalings), so the result
// differs from the direct sum by float32 rounding of a few more additions. Tiles are processed in blocks of
// at most kWinoFloats floats of V + Mt (sized from the shapes alone, so results do not depend on the thread
// count); a partial tile at an odd output edge computes its missing outputs and drops them.
//   Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1], Aᵀ = [1 1 1 0; 0 1 -1 -1]

constexpr int64_t kWinoFloats = int64_t{1} << 21;  // V + Mt per block of tiles: 8 MiB
// Below this many tiles the weight transform (16·O·C floats written, then packed by the GEMM) costs more
// than the multiply-adds it saves (RN50x4's 9x9 stage at batch 1 has 25).
constexpr int64_t kWinoMinTiles = 64;

thread_local std::vector<float> t_wino_u;
thread_local std::vector<float> t_wino_vm;
thread_local std::vector<float> t_zeros;

bool winograd_applies(const ConvArgs& a) {
  if (a.kh != 3 || a.kw != 3 || a.stride_h != 1 || a.stride_w != 1 || a.C < 16 || a.O < 16) return false;
  const int64_t tiles = a.B * ((a.Ho + 1) / 2) * ((a.Wo + 1) / 2);
  return tiles >= kWinoMinTiles;
}

// The transforms run on L lanes of channels at a time (fixed-size local arrays: the compiler vectorizes the
// lanes; L = 1 for a channel tail).

// U[o] (16, C) from w[o] (3, 3, C), lanes [c, c + L).
template <int L>
inline void winograd_weight_lanes(const float* g, int64_t C, int64_t c, float* u) {
  float t[4][3][L];
  for (int j = 0; j < 3; ++j)
    for (int l = 0; l < L; ++l) {
      const float g0 = g[j * C + c + l], g1 = g[(3 + j) * C + c + l], g2 = g[(6 + j) * C + c + l];
      t[0][j][l] = g0;
      t[1][j][l] = 0.5f * (g0 + g1 + g2);
      t[2][j][l] = 0.5f * (g0 - g1 + g2);
      t[3][j][l] = g2;
    }
  for (int i = 0; i < 4; ++i)
    for (int l = 0; l < L; ++l) {
      u[(i * 4 + 0) * C + c + l] = t[i][0][l];
      u[(i * 4 + 1) * C + c + l] = 0.5f * (t[i][0][l] + t[i][1][l] + t[i][2][l]);
      u[(i * 4 + 2) * C + c + l] = 0.5f * (t[i][0][l] - t[i][1][l] + t[i][2][l]);
      u[(i * 4 + 3) * C + c + l] = t[i][2][l];
    }
}

// U (O, 16, C) from w (O, 3, 3, C): for position ξ, U[:, ξ, :] is an (O, C) matrix with row stride 16·C.
void winograd_weights(const ConvArgs& a, const float* w, float* U) {
  const int64_t C = a.C, O = a.O;
  parallel_for(O, static_cast<double>(C) * 64, [&](int64_t o0, int64_t o1, int64_t) {
    for (int64_t o = o0; o < o1; ++o) {
      const float* g = w + o * 9 * C;
      float* u = U + o * 16 * C;
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) winograd_weight_lanes<8>(g, C, c, u);
      for (; c < C; ++c) winograd_weight_lanes<1>(g, C, c, u);
    }
  });
}

// V[t] (16, C) = Bᵀ d B from the 4x4 window p (pointers to C channels each), lanes [c, c + L).
template <int L>
inline void winograd_input_lanes(const float* const (&p)[4][4], int64_t C, int64_t c, float* v) {
  float s[4][4][L];  // Bᵀ d: rows
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < L; ++l) {
      const float d0 = p[0][j][c + l], d1 = p[1][j][c + l], d2 = p[2][j][c + l], d3 = p[3][j][c + l];
      s[0][j][l] = d0 - d2;
      s[1][j][l] = d1 + d2;
      s[2][j][l] = d2 - d1;
      s[3][j][l] = d1 - d3;
    }
  for (int i = 0; i < 4; ++i)  // (Bᵀ d) B: columns
    for (int l = 0; l < L; ++l) {
      v[(i * 4 + 0) * C + c + l] = s[i][0][l] - s[i][2][l];
      v[(i * 4 + 1) * C + c + l] = s[i][1][l] + s[i][2][l];
      v[(i * 4 + 2) * C + c + l] = s[i][2][l] - s[i][1][l];
      v[(i * 4 + 3) * C + c + l] = s[i][1][l] - s[i][3][l];
    }
}

// V (tb, 16, C) for tiles [t0, t0 + tb); tile t = (b, ty, tx) reads input rows 2·ty - pad_h + [0, 4) and
// columns 2·tx - pad_w + [0, 4) (zeros outside the image).
void winograd_input(const ConvArgs& a, const float* x, int64_t t0, int64_t tb, const float* zeros, float* V) {
  const int64_t C = a.C, th = (a.Ho + 1) / 2, tw = (a.Wo + 1) / 2;
  parallel_for(tb, static_cast<double>(C) * 48, [&](int64_t r0, int64_t r1, int64_t) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = t0 + r;
      const int64_t tx = t % tw, ty = (t / tw) % th, b = t / (tw * th);
      const float* p[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t iy = 2 * ty - a.pad_h + i, ix = 2 * tx - a.pad_w + j;
          p[i][j] = iy >= 0 && iy < a.H && ix >= 0 && ix < a.W ? x + ((b * a.H + iy) * a.W + ix) * C : zeros;
        }
      float* v = V + r * 16 * C;
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) winograd_input_lanes<8>(p, C, c, v);
      for (; c < C; ++c) winograd_input_lanes<1>(p, C, c, v);
    }
  });
}

// The 2x2 outputs of one tile from m (16, O), lanes [o, o + L): Aᵀ m A + bias (+ residual), ReLU.
template <int L>
inline void winograd_output_lanes(const float* m, int64_t O, int64_t o, const float* bias,
                                  const float* const (&res)[2][2], bool relu, float* const (&dst)[2][2]) {
  float s[2][4][L];  // Aᵀ m: rows
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < L; ++l) {
      const float m0 = m[j * O + o + l], m1 = m[(4 + j) * O + o + l], m2 = m[(8 + j) * O + o + l],
                  m3 = m[(12 + j) * O + o + l];
      s[0][j][l] = m0 + m1 + m2;
      s[1][j][l] = m1 - m2 - m3;
    }
  for (int i = 0; i < 2; ++i) {
    float v[2][L];
    for (int l = 0; l < L; ++l) {
      const float bo = bias != nullptr ? bias[o + l] : 0.0f;
      v[0][l] = s[i][0][l] + s[i][1][l] + s[i][2][l] + bo;
      v[1][l] = s[i][1][l] - s[i][2][l] - s[i][3][l] + bo;
    }
    for (int j = 0; j < 2; ++j) {
      if (res[i][j] != nullptr)
        for (int l = 0; l < L; ++l) v[j][l] += res[i][j][o + l];
      if (relu)
        for (int l = 0; l < L; ++l) v[j][l] = v[j][l] > 0.0f ? v[j][l] : 0.0f;
      for (int l = 0; l < L; ++l) dst[i][j][o + l] = v[j][l];
    }
  }
}

// y's tiles [t0, t0 + tb) from Mt (tb, 16, O).
void winograd_output(const ConvArgs& a, const float* Mt, int64_t t0, int64_t tb, const float* bias,
                     const float* residual, bool relu, float* y) {
  const int64_t O = a.O, th = (a.Ho + 1) / 2, tw = (a.Wo + 1) / 2;
  parallel_for(tb, static_cast<double>(O) * 48, [&](int64_t r0, int64_t r1, int64_t) {
    std::vector<float> sink(static_cast<size_t>(O));  // stores of a partial tile's missing outputs
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = t0 + r;
      const int64_t tx = t % tw, ty = (t / tw) % th, b = t / (tw * th);
      float* dst[2][2];
      const float* res[2][2];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
          const int64_t oy = 2 * ty + i, ox = 2 * tx + j;
          const bool in = oy < a.Ho && ox < a.Wo;
          const int64_t off = ((b * a.Ho + oy) * a.Wo + ox) * O;
          dst[i][j] = in ? y + off : sink.data();
          res[i][j] = residual != nullptr && in ? residual + off : nullptr;
        }
      const float* m = Mt + r * 16 * O;
      int64_t o = 0;
      for (; o + 8 <= O; o += 8) winograd_output_lanes<8>(m, O, o, bias, res, relu, dst);
      for (; o < O; ++o) winograd_output_lanes<1>(m, O, o, bias, res, relu, dst);
    }
  });
}

void conv3x3_winograd(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                      float* y, bool relu) {
  const int64_t C = a.C, O = a.O;
  const int64_t T = a.B * ((a.Ho + 1) / 2) * ((a.Wo + 1) / 2);
  const int64_t tb = std::min(T, std::max<int64_t>(kWinoFloats / (16 * (C + O)), 8 * kMR));
  if (static_cast<int64_t>(t_wino_u.size()) < 16 * O * C) t_wino_u.resize(static_cast<size_t>(16 * O * C));
  if (static_cast<int64_t>(t_wino_vm.size()) < 16 * tb * (C + O))
    t_wino_vm.resize(static_cast<size_t>(16 * tb * (C + O)));
  if (static_cast<int64_t>(t_zeros.size()) < C) t_zeros.resize(static_cast<size_t>(C));
  float* U = t_wino_u.data();
  float* V = t_wino_vm.data();
  float* Mt = V + 16 * tb * C;
  winograd_weights(a, w, U);
  for (int64_t t0 = 0; t0 < T; t0 += tb) {
    const int64_t n = std::min(tb, T - t0);
    winograd_input(a, x, t0, n, t_zeros.data(), V);
    GemmArgs g;
    g.M = n;
    g.N = O;
    g.K = C;
    // position ξ: A = V[:, ξ, :] (n, C), B = U[:, ξ, :] (O, C), C = Mt[:, ξ, :] (n, O)
    g.A = V;
    g.lda = 16 * C;
    g.B = U;
    g.ldb = 16 * C;
    g.transB = true;
    g.C = Mt;
    g.ldc = 16 * O;
    g.batch = 16;
    g.strideA = C;
    g.strideB = C;
    g.strideC = O;
    gemm(g);
    winograd_output(a, Mt, t0, n, bias, residual, relu, y);
  }
}

// The portable / AVX2 path: Winograd for 3x3 stride-1 convolutions over enough tiles; otherwise im2col
// blocks (or x itself) on the shared packed GEMM. With a residual or ReLU the output is produced a block of
// rows at a time and each block is finished (residual copied in first, ReLU after) while it is still in
// cache, instead of whole-tensor passes through memory (RN50x4's 72x72x80 -> 320 block ends write 100 MiB
// per pass at batch 16).
void conv2d_gemm(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                 float* y, bool relu) {
  const int64_t M = a.B * a.Ho * a.Wo;
  const int64_t K = a.kh * a.kw * a.C;
  const int64_t N = a.O;
  if (M == 0 || N == 0) return;
  if (winograd_applies(a)) {
    conv3x3_winograd(a, x, w, bias, residual, y, relu);
    return;
  }
  GemmArgs g;
  g.N = N;
  g.K = K;
  g.B = w;
  g.ldb = K;
  g.transB = true;
  g.ldc = N;
  g.bias = bias;
  g.accumulate = residual != nullptr;
  const bool pointwise =
      a.kh == 1 && a.kw == 1 && a.stride_h == 1 && a.stride_w == 1 && a.pad_h == 0 && a.pad_w == 0;
  // Rows per block: output blocks of about kOutFloats (L2/L3), at least kMinRows rows (each block repacks
  // the weights: K·N copies per 2·rows·K·N flops); im2col blocks at most kIm2colFloats. Whole multiples of the
  // GEMM's 6-row panels. Shapes alone decide the blocks, so results do not depend on the thread count.
  constexpr int64_t kOutFloats = int64_t{1} << 20;
  constexpr int64_t kMinRows = 512;
  int64_t rows = M;
  if (residual != nullptr || relu) rows = std::max(kOutFloats / N, kMinRows);
  if (!pointwise) rows = std::min(rows, std::max<int64_t>(kIm2colFloats / std::max<int64_t>(K, 1), 48));
  rows = std::min(M, (rows + kMR - 1) / kMR * kMR);
  float* cols = nullptr;
  if (!pointwise) {
    if (static_cast<int64_t>(t_cols.size()) < rows * K) t_cols.resize(static_cast<size_t>(rows * K));
    cols = t_cols.data();
  }
  for (int64_t m0 = 0; m0 < M; m0 += rows) {
    const int64_t mb = std::min(rows, M - m0);
    float* yb = y + m0 * N;
    if (residual != nullptr) {
      const float* rb = residual + m0 * N;
      parallel_for(mb, static_cast<double>(N), [&](int64_t r0, int64_t r1, int64_t) {
        std::memcpy(yb + r0 * N, rb + r0 * N, static_cast<size_t>((r1 - r0) * N) * sizeof(float));
      });
    }
    if (pointwise) {
      // x (B, H, W, C) is already the (M, K) matrix.
      g.A = x + m0 * K;
    } else {
      parallel_for(mb, static_cast<double>(K), [&](int64_t r0, int64_t r1, int64_t) {
        for (int64_t r = r0; r < r1; ++r) im2col_row(a, x, m0 + r, cols + r * K);
      });
      g.A = cols;
    }
    g.M = mb;
    g.lda = K;
    g.C = yb;
    gemm(g);
    if (relu) relu_rows(yb, mb, N);
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
