// Decoding's skinny products (a few rows of A against a large weight) that stream the weight once: the
// split-K pieces of A·B with B stored (K, N) (GPT-2's Conv1D weights) and A·Bᵀ with B stored (N, K) (the tied
// LM head). gemm.cc's gemm_skinny drives them; the results are bit-identical to skinny_nn_* / skinny_nt_*
// (every output is the same chain of fused multiply-adds in the same order), only the loop order differs.
#pragma once

#include <cstdint>

#include "gemm.h"

namespace clipcap {

// Rows up to which gemm() computes A·B (B stored (K, N), unpacked, one batch item) with the split-K GEMV below
// rather than packing B for the GEMM (kSkinnyM < M <= kGemvMaxM: the AVX2 path only).
constexpr int64_t kGemvMaxM = 14;

#if CLIPCAP_X86_KERNELS
// out (M, N) = op(A)[:, k0:k0+K] · B[k0:k0+K, :] for 1 <= M <= kGemvMaxM: At is (K, M) contiguous, B has row
// stride ldb, out row stride N. Each out[m, j] = fma(a[K-1], b[K-1], ... fma(a[0], b[0], 0)), in p order, as
// skinny_nn_avx2 computes every column of its whole vectors (its last N % 8 columns sum four products before
// adding them; here they are fused one by one too). Walks B eight rows at a time (eight sequential streams) with all M rows'
// accumulators for a tile of columns in registers, so B is read once from memory and never re-read from cache
// (skinny_nn_avx2 re-reads four rows of B from L1/L2 for every row of A).
void gemv_nn_rows_avx2(int64_t M, int64_t K, const float* At, const float* B, int64_t ldb, int64_t N, float* out);

// skinny_nt_avx2's contract (SkinnyArgs, columns [j0, j1), acc scratch of M·(j1 - j0) floats) and results, with
// every row of A against a few B rows per pass (4 for M <= 2 down to 1 for M >= 7: M·rows accumulators) and
// the B rows eight ahead prefetched. skinny_nt_avx2 takes rows of A two at a time, so at M = 5 it reads each
// B row three times, and at M = 1 it does twice the multiply-adds.
void gemv_nt_avx2(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc);
#endif

}  // namespace clipcap
