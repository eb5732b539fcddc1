// Decoding kernels: beam search's per-step work on the logits, so only a few values per row reach JS.
#pragma once

#include <cstdint>

namespace clipcap {

// Per row of x (rows, V): s = t == 1 ? x : float(x / t); lse = max + log(Σ exp(s - max)) in double, summed in
// index order; the k largest float(s - lse), best first (ties: lower index first), into values / indices
// (rows, k). Rows with fewer than k comparable (non-NaN) values are filled with -inf at index 0.
// src/engine/reference-decoding.ts is the reference.
void log_softmax_topk(const float* x, int64_t rows, int64_t V, int64_t k, double t, float* values, int32_t* indices);

}  // namespace clipcap
