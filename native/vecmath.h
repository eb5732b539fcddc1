// AVX2/FMA versions of the transcendental-heavy loops (exp, tanh, sigmoid), 8 floats at a time. The
// portable versions in kernels.cc call libm per element, which costs 10-80 ns each: more than the GEMMs
// around them for the GPT-2 vocabulary softmax/cross-entropy and the MLP's GELU. Selected at run time
// together with the GEMM micro-kernel (gemm.h: simd_avx2()).
//
// Accuracy (checked against float64 over the whole float range they see): exp within 1e-7 relative
// (Cephes polynomial, exact 0 / inf / NaN outside the finite range), tanh within 4e-7 (Eigen's rational
// approximation), so results stay within 1e-6 of the reference backend.
#pragma once

#include <cstdint>

#include "gemm.h"

namespace clipcap {

#if CLIPCAP_X86_KERNELS
// Σ exp(x[i] - shift), summed in double; also stores the exps in out when out is not null.
double exp_sum_avx2(const float* x, int64_t n, float shift, float* out);
// out[i] = exp(x[i] - shift) * scale
void exp_scale_avx2(const float* x, int64_t n, float shift, float scale, float* out);
void gelu_avx2(const float* x, int64_t n, float* y);
void gelu_backward_avx2(const float* dy, const float* x, int64_t n, float* dx);
void quick_gelu_avx2(const float* x, int64_t n, float* y);
void quick_gelu_backward_avx2(const float* dy, const float* x, int64_t n, float* dx);
void tanh_avx2(const float* x, int64_t n, float* y);
// One layer-norm row: x, y (C); weight, bias (C); mean and rstd of the row (kernels.h layernorm_forward).
void layernorm_row_avx2(const float* x, const float* weight, const float* bias, int64_t C, float eps, float* y,
                        float* mean, float* rstd);
// Its backward for one row: writes dx (C); adds the row's dweight/dbias terms into dw, db (C doubles).
void layernorm_backward_row_avx2(const float* dy, const float* x, const float* weight, float mean, float rstd,
                                 int64_t C, float* dx, double* dw, double* db);
#endif

}  // namespace clipcap
