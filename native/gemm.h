// Single-precision GEMM: C = alpha·op(A)·op(B) (+ bias) (+ C when accumulating), optionally over a strided
// batch. Packed and cache-blocked (BLIS/GotoBLAS structure) with a 6x16 register-blocked micro-kernel: AVX2 +
// FMA when the CPU has them (checked at run time), otherwise a portable C++ kernel.
#pragma once

#include <cstdint>

// The AVX2 kernels need GCC/Clang's target attribute and __builtin_cpu_supports (x86 only); elsewhere
// the portable kernels are the only ones.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define CLIPCAP_X86_KERNELS 1
#else
#define CLIPCAP_X86_KERNELS 0
#endif

namespace clipcap {

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  // op(A) is (M, K): A is stored (M, K) with row stride lda, or (K, M) when transA.
  const float* A = nullptr;
  int64_t lda = 0;
  bool transA = false;
  // op(B) is (K, N): B is stored (K, N) with row stride ldb, or (N, K) when transB.
  const float* B = nullptr;
  int64_t ldb = 0;
  bool transB = false;
  // C is (M, N) with row stride ldc; it must not overlap A or B.
  float* C = nullptr;
  int64_t ldc = 0;
  // Optional (N) bias, added once (not scaled by alpha).
  const float* bias = nullptr;
  float alpha = 1.0f;
  // C += result instead of C = result.
  bool accumulate = false;
  // Batch: `batch` products, operands advanced by these element strides (0 = shared by every batch).
  int64_t batch = 1;
  int64_t strideA = 0, strideB = 0, strideC = 0;
  // B is a buffer pack_b filled with op(B) (ldb, transB and strideB are then unused: one B for every batch).
  bool packedB = false;
  // Optional epilogue applied in place to every finished output row segment, post(post_ctx, row, n), after
  // alpha, bias and accumulation: an elementwise function (an activation) fused into the product, run on
  // each tile of C while it is still in cache. It must give each element the value it would give it alone.
  void (*post)(const void* post_ctx, float* row, int64_t n) = nullptr;
  const void* post_ctx = nullptr;
};

void gemm(const GemmArgs& args);

// Prepacked constant weights (Backend.packWeight): op(B) (K, N) laid out once as the blocked GEMM reads it,
// so products skip packing B and stream it instead. Layout: depth block p0 = kb·KC (kc = min(KC, K - p0)
// rows) starts at p0·Npad (Npad = N rounded up to NR); inside it, the NR-column panel of column j0 holds kc
// rows of NR values at j0·kc (zero past N). Any column tile of a block is therefore one contiguous run.
// The micro-kernel loads B panels with aligned loads, and the buffer comes from JS (a Float32Array, only
// 4-byte aligned in general): the layout starts at the first 64-byte boundary of the buffer, which therefore
// holds packed_b_size + 15 floats. Off-heap ArrayBuffers never move, so the offset stays the same.
int64_t packed_b_size(int64_t K, int64_t N);
inline int64_t packed_b_buffer_size(int64_t K, int64_t N) { return packed_b_size(K, N) + 15; }
inline const float* packed_b_start(const float* buffer) {
  const auto at = reinterpret_cast<uintptr_t>(buffer);
  return reinterpret_cast<const float*>((at + 63) & ~uintptr_t{63});
}
// Packs op(B) into buffer (packed_b_buffer_size floats): B stored (K, N), or (N, K) when transB, row stride ldb.
void pack_b(const float* B, int64_t ldb, bool transB, int64_t K, int64_t N, float* buffer);
// The inverse: writes op(B)'s values back in the stored layout, (K, N) or (N, K) when transB, contiguous.
void unpack_b(const float* buffer, bool transB, int64_t K, int64_t N, float* out);

enum class GemmKernel { kPortable, kAvx2 };
// The kernel in use: AVX2 when the CPU supports AVX2 and FMA unless CLIPCAP_GEMM_PORTABLE=1.
GemmKernel gemm_kernel();
// Forces a kernel (tests cover both); returns false when the CPU cannot run it.
bool set_gemm_kernel(GemmKernel kernel);
bool cpu_has_avx2_fma();
// Whether the AVX2 kernels are in use: the same switch selects the GEMM micro-kernel and the vectorized
// math of vecmath.h, so forcing "portable" exercises every portable path.
inline bool simd_avx2() { return gemm_kernel() == GemmKernel::kAvx2; }

// The micro-kernel contract, shared by the portable and the AVX2 versions. a: kc x MR packed (column of
// MR values per k), b: kc x NR packed (row of NR values per k). Writes the top-left mr x nr corner of the
// MR x NR tile at c: c = alpha·(a·b) + (load_c ? c : 0) + (bias ? bias[j] : 0).
constexpr int kMR = 6;
constexpr int kNR = 16;
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                             bool load_c, const float* bias, int mr, int nr);

// Skinny products (M <= kSkinnyM rows: decoding, the LM head), computed for output columns [j0, j1)
// straight from unpacked B, which each output row reads once anyway:
// - skinny_nn: B stored (K, N) (row stride ldb); At is op(A) transposed, (K, M) contiguous. Walks B a few
//   rows at a time, each a contiguous run of columns, so the hardware streams it from memory.
// - skinny_nt: B stored (N, K) (row stride ldb); A is op(A), (M, K) contiguous: dot products of rows.
// `acc` is scratch of M * (j1 - j0) floats. Same epilogue as the micro-kernel.
constexpr int64_t kSkinnyM = 8;
struct SkinnyArgs {
  int64_t M, K;
  const float* A;  // At (K, M) for nn, A (M, K) for nt
  const float* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
  float alpha;
  bool load_c;
  const float* bias;
};
using SkinnyKernel = void (*)(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc);
void skinny_nn_portable(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc);
void skinny_nt_portable(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc);
#if CLIPCAP_X86_KERNELS
void skinny_nn_avx2(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc);
void skinny_nt_avx2(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc);
#endif

// Packs one NR-column panel of op(B) when B is stored (N, K): src points at B[j, p0] for the panel's first
// column j, rows ldb apart; writes kc rows of NR values. AVX2 8x8 transposes (the scalar loop is strided).
void pack_b_trans_avx2(const float* src, int64_t ldb, int64_t kc, float* panel);

void micro_kernel_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                           bool load_c, const float* bias, int mr, int nr);
#if CLIPCAP_X86_KERNELS
// c[j] = alpha·acc[j] (+ c[j]) (+ bias[j]) for j < w: the epilogue of the skinny and GEMV products, so every
// AVX2 path finishes a row with the same float operations.
void store_row_avx2(const float* acc, int64_t w, float* c, float alpha, bool load_c, const float* bias);
void micro_kernel_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                       bool load_c, const float* bias, int mr, int nr);
#endif

}  // namespace clipcap
