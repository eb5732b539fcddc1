// The GEMM driver: packing and blocking around the micro-kernel.
//
// Loop structure (per batch item; see Goto & van de Geijn, "Anatomy of high-performance matrix
// multiplication"):
//   1. op(A) is packed once, whole, into MR-row panels per KC-deep block (in parallel over panels).
//   2. The output is split into tasks = (row chunk) x (NT-column tile), handed to the thread pool. A task
//      walks K in KC blocks: it packs its KC x NT slice of op(B) into a thread-local buffer (L2), then for
//      each MC-row block of its chunk (L2-resident packed A) runs the micro-kernel over 16-column panels
//      (L1-resident) and 6-row panels.
// Packing B per task costs KC·NT copies per (chunk rows)·KC·NT multiply-adds and lets every task run
// without synchronisation. A prepacked B (pack_b, for constant weights) skips that step: tasks read their
// tile of it in place. Products with at most kSkinnyM rows (decoding, the LM head) skip packing and
// stream B instead (gemm_skinny).
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#ifdef _WIN32
#include <malloc.h>
#endif
#include <cstring>
#include <memory>
#include <new>
#include <thread>

#include "gemv.h"
#include "threadpool.h"

namespace clipcap {

namespace {

constexpr int64_t kKC = 256;  // depth of a packed block: KC x NR of B is 16 KiB (half of L1)
constexpr int64_t kMC = 120;  // rows of A per L2 block: MC x KC is 120 KiB
constexpr int64_t kNT = 192;  // columns per task: KC x NT of packed B is 192 KiB (L2)
static_assert(kMC % kMR == 0 && kNT % kNR == 0, "blocks must hold whole panels");

struct FreeDeleter {
  void operator()(float* p) const {
#ifdef _WIN32
    _aligned_free(p);
#else
    std::free(p);
#endif
  }
};

// A grow-only 64-byte aligned scratch buffer. thread_local instances never shrink, so steady-state calls
// allocate nothing.
class Scratch {
 public:
  float* get(size_t floats) {
    if (floats > capacity_) {
      const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
#ifdef _WIN32
      void* p = _aligned_malloc(bytes, 64);
      if (p == nullptr) throw std::bad_alloc();
#else
      void* p = nullptr;
      if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
#endif
      data_.reset(static_cast<float*>(p));
      capacity_ = floats;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<float, FreeDeleter> data_;
  size_t capacity_ = 0;
};

thread_local Scratch t_packed_a;
thread_local Scratch t_packed_b;

GemmKernel detect_kernel() {
  const char* portable = std::getenv("CLIPCAP_GEMM_PORTABLE");
  if (portable != nullptr && std::strcmp(portable, "1") == 0) return GemmKernel::kPortable;
  return cpu_has_avx2_fma() ? GemmKernel::kAvx2 : GemmKernel::kPortable;
}

// Set from the JS thread between kernel calls; read by pool threads during them.
std::atomic<GemmKernel> g_kernel{detect_kernel()};

MicroKernel kernel_fn() {
#if CLIPCAP_X86_KERNELS
  if (gemm_kernel() == GemmKernel::kAvx2) return micro_kernel_avx2;
#endif
  return micro_kernel_portable;
}

// Packs rows [i0, i0 + MR) x depth [p0, p0 + kc) of op(A) as kc columns of MR values (zero past M).
void pack_a_panel(const GemmArgs& g, const float* A, int64_t i0, int64_t p0, int64_t kc, float* dst) {
  const int64_t rows = std::min<int64_t>(kMR, g.M - i0);
  if (!g.transA) {
    // A is (M, K): each panel row is contiguous along k.
    for (int64_t r = 0; r < kMR; ++r) {
      if (r < rows) {
        const float* src = A + (i0 + r) * g.lda + p0;
        for (int64_t p = 0; p < kc; ++p) dst[p * kMR + r] = src[p];
      } else {
        for (int64_t p = 0; p < kc; ++p) dst[p * kMR + r] = 0.0f;
      }
    }
  } else {
    // A is (K, M): the MR values of one k are contiguous.
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = A + (p0 + p) * g.lda + i0;
      float* d = dst + p * kMR;
      int64_t r = 0;
      for (; r < rows; ++r) d[r] = src[r];
      for (; r < kMR; ++r) d[r] = 0.0f;
    }
  }
}

// Packs depth [p0, p0 + kc) x columns [j0, j0 + nt) of op(B) as NR-column panels, each kc rows of NR
// values (zero past N).
void pack_b_tile(const GemmArgs& g, const float* B, int64_t p0, int64_t kc, int64_t j0, int64_t nt, float* dst) {
  if (!g.transB) {
    // B is (K, N): walk it row by row (contiguous runs of nt values, which the hardware prefetches well),
    // scattering NR-value pieces to the panels.
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = B + (p0 + p) * g.ldb + j0;
      for (int64_t jp = 0; jp < nt; jp += kNR) {
        float* d = dst + jp * kc + p * kNR;
        const int64_t cols = std::min<int64_t>(kNR, nt - jp);
        if (cols == kNR) {
          std::memcpy(d, src + jp, sizeof(float) * kNR);
        } else {
          int64_t j = 0;
          for (; j < cols; ++j) d[j] = src[jp + j];
          for (; j < kNR; ++j) d[j] = 0.0f;
        }
      }
    }
    return;
  }
  // B is (N, K): each column of op(B) is a contiguous row of B.
  for (int64_t jp = 0; jp < nt; jp += kNR) {
    const int64_t cols = std::min<int64_t>(kNR, nt - jp);
    float* panel = dst + jp * kc;
#if CLIPCAP_X86_KERNELS
    if (cols == kNR && gemm_kernel() == GemmKernel::kAvx2) {
      pack_b_trans_avx2(B + (j0 + jp) * g.ldb + p0, g.ldb, kc, panel);
      continue;
    }
#endif
    for (int64_t j = 0; j < kNR; ++j) {
      if (j < cols) {
        const float* src = B + (j0 + jp + j) * g.ldb + p0;
        for (int64_t p = 0; p < kc; ++p) panel[p * kNR + j] = src[p];
      } else {
        for (int64_t p = 0; p < kc; ++p) panel[p * kNR + j] = 0.0f;
      }
    }
  }
}

// C = (accumulate ? C : 0) + bias for an empty product (K = 0); alpha scales nothing.
void gemm_k0(const GemmArgs& g) {
  for (int64_t b = 0; b < g.batch; ++b) {
    float* C = g.C + b * g.strideC;
    for (int64_t i = 0; i < g.M; ++i) {
      float* row = C + i * g.ldc;
      for (int64_t j = 0; j < g.N; ++j) {
        const float base = g.accumulate ? row[j] : 0.0f;
        row[j] = base + (g.bias != nullptr ? g.bias[j] : 0.0f);
      }
    }
  }
}

}  // namespace

bool cpu_has_avx2_fma() {
#if CLIPCAP_X86_KERNELS
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

GemmKernel gemm_kernel() { return g_kernel.load(std::memory_order_relaxed); }

bool set_gemm_kernel(GemmKernel kernel) {
  if (kernel == GemmKernel::kAvx2 && !cpu_has_avx2_fma()) return false;
  g_kernel.store(kernel, std::memory_order_relaxed);
  return true;
}

void micro_kernel_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                           bool load_c, const float* bias, int mr, int nr) {
  // Plain loops the compiler vectorizes for the baseline ISA (SSE2 on x86-64, NEON on arm64).
  float acc[kMR][kNR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const float* bp = b + p * kNR;
    const float* ap = a + p * kMR;
    for (int r = 0; r < kMR; ++r) {
      const float av = ap[r];
      for (int j = 0; j < kNR; ++j) acc[r][j] += av * bp[j];
    }
  }
  for (int r = 0; r < mr; ++r) {
    float* row = c + r * ldc;
    for (int j = 0; j < nr; ++j) {
      float v = alpha * acc[r][j];
      if (load_c) v += row[j];
      if (bias != nullptr) v += bias[j];
      row[j] = v;
    }
  }
}

namespace {
void store_row_portable(const float* acc, int64_t w, float* c, float alpha, bool load_c, const float* bias) {
  for (int64_t j = 0; j < w; ++j) {
    float v = alpha * acc[j];
    if (load_c) v += c[j];
    if (bias != nullptr) v += bias[j];
    c[j] = v;
  }
}
}  // namespace

void skinny_nn_portable(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc) {
  const int64_t M = s.M, W = j1 - j0;
  for (int64_t i = 0; i < M * W; ++i) acc[i] = 0.0f;
  for (int64_t p = 0; p < s.K; ++p) {
    const float* brow = s.B + p * s.ldb + j0;
    for (int64_t m = 0; m < M; ++m) {
      const float av = s.A[p * M + m];
      float* cm = acc + m * W;
      for (int64_t j = 0; j < W; ++j) cm[j] += av * brow[j];
    }
  }
  for (int64_t m = 0; m < M; ++m)
    store_row_portable(acc + m * W, W, s.C + m * s.ldc + j0, s.alpha, s.load_c, s.bias == nullptr ? nullptr : s.bias + j0);
}

void skinny_nt_portable(const SkinnyArgs& s, int64_t j0, int64_t j1, float* acc) {
  const int64_t M = s.M, K = s.K, W = j1 - j0;
  for (int64_t j = j0; j < j1; ++j) {
    const float* brow = s.B + j * s.ldb;
    for (int64_t m = 0; m < M; ++m) {
      const float* arow = s.A + m * K;
      // Eight partial sums: vectorizable without reassociating one chain.
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t p = 0;
      for (; p + 8 <= K; p += 8)
        for (int l = 0; l < 8; ++l) part[l] += arow[p + l] * brow[p + l];
      float sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      for (; p < K; ++p) sum += arow[p] * brow[p];
      acc[m * W + (j - j0)] = sum;
    }
  }
  for (int64_t m = 0; m < M; ++m)
    store_row_portable(acc + m * W, W, s.C + m * s.ldc + j0, s.alpha, s.load_c, s.bias == nullptr ? nullptr : s.bias + j0);
}

namespace {
// Skinny A·B with B stored (K, N) (GPT-2's Conv1D weights during decoding): splitting the columns among
// threads makes each thread read short runs of every row of B, which streams from memory at half the
// bandwidth of long runs. Instead each task takes kSplitK whole rows of B (one contiguous block of memory)
// and writes a partial product (M, N); the partials are then summed in chunk order. The chunking does not
// depend on the thread count, so results are identical for any CLIPCAP_THREADS.
constexpr int64_t kSplitK = 128;
constexpr int64_t kSplitMaxN = 16384;
thread_local Scratch t_partial;

void gemm_skinny_nn_split_k(const GemmArgs& g, const float* At, SkinnyKernel kernel, bool parallel) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t chunks = (K + kSplitK - 1) / kSplitK;
  // partial: (chunks, M, N)
  float* partial = t_partial.get(static_cast<size_t>(chunks * M * N));
  auto chunkTask = [&](int64_t c) {
    const int64_t k0 = c * kSplitK;
    SkinnyArgs s;
    s.M = M;
    s.K = std::min(K, k0 + kSplitK) - k0;
    s.A = At + k0 * M;  // At is (K, M)
    s.B = g.B + k0 * g.ldb;
    s.ldb = g.ldb;
    s.C = partial + c * M * N;
    s.ldc = N;
    s.alpha = 1.0f;
    s.load_c = false;
    s.bias = nullptr;
#if CLIPCAP_X86_KERNELS
    // Same values as skinny_nn_avx2 (alpha 1, no bias: the partial is the accumulator), B read once.
    if (kernel == skinny_nn_avx2) {
      gemv_nn_rows_avx2(M, s.K, s.A, s.B, s.ldb, N, s.C);
      return;
    }
#endif
    kernel(s, 0, N, t_packed_b.get(static_cast<size_t>(M * N)));
  };
  // Epilogue over column blocks: C = alpha·Σ partials (+ C) (+ bias), same order as store_row.
  constexpr int64_t kCols = 256;
  const int64_t colBlocks = (N + kCols - 1) / kCols;
  auto reduceTask = [&](int64_t t) {
    const int64_t j0 = t * kCols, j1 = std::min(N, j0 + kCols);
    for (int64_t m = 0; m < M; ++m) {
      float* crow = g.C + m * g.ldc;
      for (int64_t j = j0; j < j1; ++j) {
        float sum = partial[m * N + j];
        for (int64_t c = 1; c < chunks; ++c) sum += partial[(c * M + m) * N + j];
        float v = g.alpha * sum;
        if (g.accumulate) v += crow[j];
        if (g.bias != nullptr) v += g.bias[j];
        crow[j] = v;
      }
    }
  };
  if (parallel) {
    // One job: tasks [0, chunks) make the partials, the rest reduce column blocks once every partial is done.
    // The pool hands tasks out in index order, so a reduce task waits only for chunks that running threads have
    // claimed (never for one that needs a thread it holds): one fork-join per product instead of two (48
    // fewer per token of GPT-2 small).
    std::atomic<int64_t> made{0};
    pool().run(chunks + colBlocks, [&](int64_t t) {
      if (t < chunks) {
        // Counted even if the task throws (a scratch allocation), so the reduce tasks never wait forever; the
        // pool rethrows the error after the job.
        struct Count {
          std::atomic<int64_t>& n;
          ~Count() { n.fetch_add(1, std::memory_order_release); }
        } count{made};
        chunkTask(t);
        return;
      }
      for (int spins = 0; made.load(std::memory_order_acquire) < chunks; ++spins) {
        if (spins < 4096) cpu_pause();
        else std::this_thread::yield();  // the other thread lost its core: let it have ours
      }
      reduceTask(t - chunks);
    });
  } else {
    for (int64_t c = 0; c < chunks; ++c) chunkTask(c);
    for (int64_t t = 0; t < colBlocks; ++t) reduceTask(t);
  }
}

// A·B with B stored (K, N) that gemm_skinny_nn_split_k computes (B long enough to split, N short enough for the
// partials).
bool split_k(const GemmArgs& g) {
  return !g.transB && g.batch == 1 && g.K >= 2 * kSplitK && g.N >= 64 && g.N <= kSplitMaxN;
}

// kSkinnyM < M <= kGemvMaxM rows (GPT-2's prefix step) go to gemv_nn_rows_avx2 too: at M = 10 it reads each
// weight once, where the GEMM reads it, packs it and reads the packed copy (about 2.5x the time per product).
bool gemv_rows(const GemmArgs& g) {
#if CLIPCAP_X86_KERNELS
  return g.M <= kGemvMaxM && !g.packedB && split_k(g) && gemm_kernel() == GemmKernel::kAvx2;
#else
  (void)g;
  return false;
#endif
}

// M <= kSkinnyM (or gemv_rows): tasks are (batch item, block of output columns), computed from unpacked B.
void gemm_skinny(const GemmArgs& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  // nn wants op(A) as (K, M), nt as (M, K); copy A only when it is stored the other way round (M·K floats).
  const bool nt = g.transB;
  const bool copyA = nt == g.transA;
  float* At = copyA ? t_packed_a.get(static_cast<size_t>(g.batch * M * K)) : nullptr;
  if (copyA) {
    for (int64_t b = 0; b < g.batch; ++b) {
      const float* A = g.A + b * g.strideA;
      float* dst = At + b * M * K;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t p = 0; p < K; ++p) {
          // transposes (M, K) -> (K, M) for nn, or (K, M) -> (M, K) for nt
          if (nt) dst[m * K + p] = A[p * g.lda + m];
          else dst[p * M + m] = A[m * g.lda + p];
        }
    }
  }
  const int threads = num_threads();
  const bool parallel = 2.0 * M * N * K * g.batch >= 1e6 && threads > 1 && !in_parallel_region();
#if CLIPCAP_X86_KERNELS
  const bool avx2k = gemm_kernel() == GemmKernel::kAvx2;
  const SkinnyKernel nnKernel = avx2k ? skinny_nn_avx2 : skinny_nn_portable;
#else
  const SkinnyKernel nnKernel = skinny_nn_portable;
#endif
  if (split_k(g)) {
    gemm_skinny_nn_split_k(g, copyA ? At : g.A, nnKernel, parallel);
    return;
  }
  // Column blocks: long enough for B's rows to stream (nn), a few per thread for balance.
  int64_t W = parallel ? (N + 4 * threads - 1) / (4 * threads) : N;
  W = std::max<int64_t>(64, std::min<int64_t>(512, (W + 15) / 16 * 16));
  const int64_t blocks = (N + W - 1) / W;
#if CLIPCAP_X86_KERNELS
  const bool avx2 = gemm_kernel() == GemmKernel::kAvx2;
  const SkinnyKernel kernel = nt ? (avx2 ? gemv_nt_avx2 : skinny_nt_portable) : (avx2 ? skinny_nn_avx2 : skinny_nn_portable);
#else
  const SkinnyKernel kernel = nt ? skinny_nt_portable : skinny_nn_portable;
#endif
  auto task = [&](int64_t t) {
    const int64_t b = t / blocks;
    const int64_t j0 = (t % blocks) * W;
    const int64_t j1 = std::min(N, j0 + W);
    SkinnyArgs s;
    s.M = M;
    s.K = K;
    s.A = copyA ? At + b * M * K : g.A + b * g.strideA;
    s.B = g.B + b * g.strideB;
    s.ldb = g.ldb;
    s.C = g.C + b * g.strideC;
    s.ldc = g.ldc;
    s.alpha = g.alpha;
    s.load_c = g.accumulate;
    s.bias = g.bias;
    kernel(s, j0, j1, t_packed_b.get(static_cast<size_t>(M * W)));
  };
  if (parallel) {
    pool().run(g.batch * blocks, task);
  } else {
    for (int64_t t = 0; t < g.batch * blocks; ++t) task(t);
  }
}
}  // namespace

void gemm(const GemmArgs& g) {
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  const bool skinny = (g.M <= kSkinnyM && !g.packedB) || gemv_rows(g);
  if (g.post != nullptr && (g.K <= 0 || skinny)) {
    // The skinny and empty products run unchanged; the epilogue then goes over C once (small: M <= 14 rows).
    GemmArgs plain = g;
    plain.post = nullptr;
    gemm(plain);
    for (int64_t b = 0; b < g.batch; ++b)
      for (int64_t i = 0; i < g.M; ++i) g.post(g.post_ctx, g.C + b * g.strideC + i * g.ldc, g.N);
    return;
  }
  if (g.K <= 0) {
    gemm_k0(g);
    return;
  }
  if (skinny) {
    gemm_skinny(g);
    return;
  }
  const MicroKernel kernel = kernel_fn();
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t panelsM = (M + kMR - 1) / kMR;
  const int64_t Mpad = panelsM * kMR;
  const int64_t blocksK = (K + kKC - 1) / kKC;
  const int64_t Npad = (N + kNR - 1) / kNR * kNR;  // columns of a prepacked B
  const double flops = 2.0 * static_cast<double>(M) * N * K * g.batch;
  // Below ~1 MFLOP the pool's wake-up costs more than it saves.
  const bool parallel = flops >= 1e6 && num_threads() > 1 && !in_parallel_region();

  // 1. Pack op(A) for every batch item: item b, block kb (depth p0), panel ip lives at
  //    b·Mpad·K + Mpad·p0 + ip·MR·kc.
  const int64_t packedPerItem = Mpad * K;
  float* packedA = t_packed_a.get(static_cast<size_t>(packedPerItem * g.batch));
  const int64_t aTasks = g.batch * blocksK * panelsM;
  auto packA = [&](int64_t t) {
    const int64_t ip = t % panelsM;
    const int64_t kb = (t / panelsM) % blocksK;
    const int64_t b = t / (panelsM * blocksK);
    const int64_t p0 = kb * kKC;
    const int64_t kc = std::min(kKC, K - p0);
    pack_a_panel(g, g.A + b * g.strideA, ip * kMR, p0, kc, packedA + b * packedPerItem + Mpad * p0 + ip * kMR * kc);
  };
  // 2. Output tasks: (batch item, row chunk, column tile). Row chunks are whole MC blocks, split further
  //    only when there are too few column tiles to keep every thread busy.
  // Too few tasks for the threads (small N): narrower column tiles first (packing B costs the same in
  // total), then row chunks (which repack B once per chunk).
  const int64_t blocksM = (M + kMC - 1) / kMC;
  const int64_t want = parallel ? 4 * static_cast<int64_t>(num_threads()) : 1;
  int64_t nt = kNT;
  while (nt > 4 * kNR && g.batch * blocksM * ((N + nt - 1) / nt) < want) nt -= kNR;
  const int64_t tilesN = (N + nt - 1) / nt;
  int64_t chunksM = 1;
  if (parallel) {
    const int64_t have = g.batch * tilesN;
    if (have < want) chunksM = std::min(blocksM, (want + have - 1) / have);
  }
  const int64_t blocksPerChunk = (blocksM + chunksM - 1) / chunksM;
  chunksM = (blocksM + blocksPerChunk - 1) / blocksPerChunk;
  const int64_t cTasks = g.batch * chunksM * tilesN;
  auto compute = [&](int64_t t) {
    const int64_t tile = t % tilesN;
    const int64_t chunk = (t / tilesN) % chunksM;
    const int64_t b = t / (tilesN * chunksM);
    const int64_t j0 = tile * nt;
    const int64_t ntile = std::min(nt, N - j0);
    const int64_t m0 = chunk * blocksPerChunk * kMC;
    const int64_t m1 = std::min(M, m0 + blocksPerChunk * kMC);
    const float* B = g.B + b * g.strideB;
    float* C = g.C + b * g.strideC;
    const float* itemA = packedA + b * packedPerItem;
    float* scratchB = g.packedB ? nullptr : t_packed_b.get(static_cast<size_t>(kKC * nt));
    for (int64_t p0 = 0; p0 < K; p0 += kKC) {
      const int64_t kc = std::min(kKC, K - p0);
      const float* packedB = scratchB;
      if (g.packedB) {
        packedB = packed_b_start(g.B) + p0 * Npad + j0 * kc;  // this tile of the prepacked B (see gemm.h)
      } else {
        pack_b_tile(g, B, p0, kc, j0, ntile, scratchB);
      }
      // The first depth block writes (or adds to the caller's C) and adds the bias; later ones add.
      const bool first = p0 == 0;
      const bool loadC = !first || g.accumulate;
      for (int64_t i0 = m0; i0 < m1; i0 += kMC) {
        const int64_t i1 = std::min(m1, i0 + kMC);
        for (int64_t jp = 0; jp < ntile; jp += kNR) {
          const int nr = static_cast<int>(std::min<int64_t>(kNR, ntile - jp));
          const float* bp = packedB + jp * kc;
          const float* bias = first && g.bias != nullptr ? g.bias + j0 + jp : nullptr;
          // A prepacked B is a model's weight, streamed from memory, not cache: while this panel is in use,
          // fetch the next one (this tile's next panel, else its first panel in the next depth block) into
          // L2, a slice before each row panel, instead of leaving the first row panel to stall on demand
          // misses. next: kcNext rows of NR floats = kcNext 64-byte lines.
          const float* next = nullptr;
          int64_t kcNext = kc;
          if (g.packedB) {
            if (jp + kNR < ntile) {
              next = bp + kNR * kc;
            } else if (p0 + kc < K) {
              kcNext = std::min(kKC, K - p0 - kc);
              next = packed_b_start(g.B) + (p0 + kc) * Npad + j0 * kcNext;
            }
          }
          const int64_t rowPanels = (i1 - i0 + kMR - 1) / kMR;
          int64_t fetched = 0;
          for (int64_t i = i0; i < i1; i += kMR) {
            if (next != nullptr) {
              const int64_t upto = kcNext * ((i - i0) / kMR + 1) / rowPanels;
              for (; fetched < upto; ++fetched) __builtin_prefetch(next + fetched * kNR, 0, 2);
            }
            const int mr = static_cast<int>(std::min<int64_t>(kMR, M - i));
            const float* ap = itemA + Mpad * p0 + (i / kMR) * kMR * kc;
            kernel(kc, ap, bp, C + i * g.ldc + j0 + jp, g.ldc, g.alpha, loadC, bias, mr, nr);
          }
        }
        // After the last depth block this MC x NT block of C is final and still in L2: the fused epilogue.
        if (g.post != nullptr && p0 + kc >= K)
          for (int64_t i = i0; i < i1; ++i) g.post(g.post_ctx, C + i * g.ldc + j0, ntile);
      }
    }
  };
  if (parallel) {
    pool().run(aTasks, packA);
    pool().run(cTasks, compute);
  } else {
    for (int64_t t = 0; t < aTasks; ++t) packA(t);
    for (int64_t t = 0; t < cTasks; ++t) compute(t);
  }
}

int64_t packed_b_size(int64_t K, int64_t N) { return K * ((N + kNR - 1) / kNR * kNR); }

void pack_b(const float* B, int64_t ldb, bool transB, int64_t K, int64_t N, float* buffer) {
  if (K <= 0 || N <= 0) return;
  float* dst = const_cast<float*>(packed_b_start(buffer));
  GemmArgs g;
  g.B = B;
  g.ldb = ldb;
  g.transB = transB;
  g.K = K;
  g.N = N;
  const int64_t Npad = (N + kNR - 1) / kNR * kNR;
  const int64_t blocksK = (K + kKC - 1) / kKC;
  const int64_t tilesN = (N + kNT - 1) / kNT;
  // Task (depth block, NT-column tile): pack_b_tile's output for that tile, at its place in the layout.
  auto task = [&](int64_t t) {
    const int64_t p0 = (t / tilesN) * kKC, j0 = (t % tilesN) * kNT;
    const int64_t kc = std::min(kKC, K - p0);
    pack_b_tile(g, B, p0, kc, j0, std::min(kNT, N - j0), dst + p0 * Npad + j0 * kc);
  };
  if (num_threads() > 1 && !in_parallel_region() && K * N >= (1 << 16)) {
    pool().run(blocksK * tilesN, task);
  } else {
    for (int64_t t = 0; t < blocksK * tilesN; ++t) task(t);
  }
}

void unpack_b(const float* buffer, bool transB, int64_t K, int64_t N, float* out) {
  const float* packed = packed_b_start(buffer);
  const int64_t Npad = (N + kNR - 1) / kNR * kNR;
  for (int64_t p0 = 0; p0 < K; p0 += kKC) {
    const int64_t kc = std::min(kKC, K - p0);
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t j = 0; j < N; ++j) {
        const float v = packed[p0 * Npad + (j / kNR) * kNR * kc + p * kNR + j % kNR];
        if (transB) out[j * K + p0 + p] = v;  // stored (N, K)
        else out[(p0 + p) * N + j] = v;       // stored (K, N)
      }
  }
}

}  // namespace clipcap
