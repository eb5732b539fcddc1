// Weight-only reduced-precision products for decoding: C = alpha·A·dequant(W) (+ bias) (+ C) for a few rows of
// A (M <= kSkinnyM), reading W in its compact storage (int8 with one f32 scale per output channel, or bf16),
// so that a decoding step streams 1/4 (int8) or 1/2 (bf16) of the f32 weight bytes. Activations and
// accumulation are f32; dequant(q) = q · scale (int8) or the f32 whose upper 16 bits are q (bf16), so the
// result is the f32 product with the dequantized weight up to the order of the f32 sums (the scale is applied
// once per output after the sum: Σ a·q · s instead of Σ a·(q·s)).
#pragma once

#include <cstdint>

namespace clipcap {

enum class QuantFormat { kInt8 = 0, kBf16 = 1 };

struct QuantGemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;  // (M, K) contiguous
  // W stored (K, N) (transB false: output channel = column) or (N, K) (transB true: output channel = row).
  const void* W = nullptr;  // int8_t or uint16_t elements
  QuantFormat format = QuantFormat::kInt8;
  bool transB = false;
  const float* scales = nullptr;  // (N) for int8, unused for bf16
  float* C = nullptr;             // (M, N) contiguous
  const float* bias = nullptr;    // (N) or null
  float alpha = 1.0f;
  bool accumulate = false;
};

void gemm_quant(const QuantGemmArgs& g);

}  // namespace clipcap
