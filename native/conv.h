// 2-D convolution and average pooling over NHWC images (the ResNet CLIP towers), forward only.
#pragma once

#include <cstdint>

#include "gemm.h"

namespace clipcap {

// Geometry of a window sliding over x (B, H, W, C) with output (B, Ho, Wo, O); O = C for pooling.
struct ConvArgs {
  int64_t B = 0, H = 0, W = 0, C = 0, O = 0;
  int64_t kh = 1, kw = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int64_t Ho = 0, Wo = 0;
};

// y (B, Ho, Wo, O) = x ⋆ w (O, kh, kw, C) + bias (O, or null) + residual (y's shape, or null), then max(y, 0)
// when relu. y must not overlap x, w or residual.
void conv2d_nhwc(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                 float* y, bool relu);

// The kernel conv2d_nhwc uses: kAvx512 (conv_avx512.cc) where the CPU has AVX-512F and the GEMM kernel is
// AVX2 (CLIPCAP_GEMM_PORTABLE=1 forces every portable path), unless CLIPCAP_CONV_AVX512=0; otherwise kGemm:
// Winograd F(2x2, 3x3) or im2col on the shared packed GEMM (gemm.cc, AVX2 or portable).
enum class ConvKernel { kGemm, kAvx512 };
ConvKernel conv_kernel();
// Forces a kernel (tests cover both); returns false when the CPU cannot run it.
bool set_conv_kernel(ConvKernel kernel);
bool cpu_has_avx512();

#if CLIPCAP_X86_KERNELS
void conv2d_avx512(const ConvArgs& a, const float* x, const float* w, const float* bias, const float* residual,
                   float* y, bool relu);
#endif

// y (B, Ho, Wo, C) = mean of each kh x kw window of x (padding counted as zeros).
void avgpool2d_nhwc(const ConvArgs& a, const float* x, float* y);

}  // namespace clipcap
