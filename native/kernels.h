// The non-GEMM kernels: plain structs and pointers in, no Node-API types (bindings.cc unpacks the JS
// arguments, which TypeScript has already validated). Every kernel is multi-threaded over rows or
// elements when the work is large enough. Semantics follow src/engine/reference.ts, the oracle.
#pragma once

#include <cstdint>

namespace clipcap {

// ---- elementwise ----
enum class BinaryOp { kAdd, kMul };
// out[i] = a[i] op b[i % nb] for i < n (b broadcasts over a's leading axes; n % nb == 0).
void binary_bcast(BinaryOp op, const float* a, int64_t n, const float* b, int64_t nb, float* out);
// out[i] = a[i] * s
void scale(const float* a, int64_t n, double s, float* out);
// a[i] += alpha * b[i]
void axpy(float* a, const float* b, int64_t n, double alpha);
// x (rows, cols) -> out (cols): column sums (accumulated in double), added to out when accumulating.
void sum_rows(const float* x, int64_t rows, int64_t cols, float* out, bool accumulate);

// ---- activations ----
enum class Activation { kGelu, kQuickGelu, kRelu, kTanh };
void activation_forward(Activation act, const float* x, int64_t n, float* y);
// y = f(x) on the calling thread only (the GEMM's fused epilogue, GemmArgs::post): the same value per element
// as activation_forward, which runs this on each of its chunks. x may equal y.
void activation_serial(Activation act, const float* x, int64_t n, float* y);
// dx = dy * f'(saved): saved is the forward's input x, except for tanh where it is the output y.
void activation_backward(Activation act, const float* dy, const float* saved, int64_t n, float* dx);

// ---- softmax over the last axis: x, y (rows, cols) ----
void softmax_rows(const float* x, int64_t rows, int64_t cols, float* y, bool log);

// ---- layer norm: x, y (rows, C); weight, bias (C); mean, rstd (rows) ----
void layernorm_forward(const float* x, const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                       float* y, float* mean, float* rstd);
// Writes dx; adds into dweight and dbias.
void layernorm_backward(const float* dy, const float* x, const float* weight, const float* mean, const float* rstd,
                        int64_t rows, int64_t C, float* dx, float* dweight, float* dbias);

// ---- embeddings: ids (n), table (V, C), rows (n, C) ----
void embedding_forward(const int32_t* ids, int64_t n, const float* table, int64_t V, int64_t C, float* out);
void embedding_backward(const float* dy, const int32_t* ids, int64_t n, float* dtable, int64_t V, int64_t C);
// Index of the first id outside [0, V), or -1.
int64_t find_bad_id(const int32_t* ids, int64_t n, int64_t V);

// ---- cross-entropy: logits (N, V), targets (N) ----
struct CrossEntropySum {
  double loss_sum = 0;  // Σ over counted rows of logsumexp(row) - row[target]
  int64_t count = 0;
};
CrossEntropySum cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N, int64_t V,
                                      int32_t ignore_index);
// dlogits = (softmax - onehot) * factor on counted rows, 0 on ignored rows (factor = lossScale / count).
void cross_entropy_backward(const float* logits, const int32_t* targets, int64_t N, int64_t V,
                            int32_t ignore_index, double factor, float* dlogits);

// ---- AdamW (torch.optim.AdamW single-tensor form) ----
struct AdamWArgs {
  double lr, beta1, beta2, eps, weight_decay;
  double step_size;  // lr / (1 - beta1^t)
  double bc2_sqrt;   // sqrt(1 - beta2^t)
};
void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& a);

// ---- dropout: element i kept when mulberry32At(seed, i) >= p (src/util/random.ts) ----
// mulberry32's (index + 1)-th output as a float in [0, 1): the same bits as mulberry32At in
// src/util/random.ts (uint32 arithmetic wraps exactly as JS's |0, >>> and Math.imul do).
// Shared by the dropout op and attention's probability dropout, so their masks follow one definition.
inline double mulberry32_at(uint32_t seed, int64_t index) {
  uint32_t z = seed + static_cast<uint32_t>(index + 1) * 0x6D2B79F5u;
  z = (z ^ (z >> 15)) * (z | 1u);
  z ^= z + (z ^ (z >> 7)) * (z | 61u);
  return static_cast<double>(z ^ (z >> 14)) / 4294967296.0;
}
// mask may be null (y only).
void dropout(const float* x, int64_t n, double p, uint32_t seed, float* y, float* mask);

// ---- attention (attention.cc) ----
struct AttentionArgs {
  const float* q = nullptr;  // (B, Tq, C)
  const float* k = nullptr;  // (B, Tk, C): rows [kv_len, Tk) are ignored
  const float* v = nullptr;  // (B, Tk, C)
  const float* key_mask = nullptr;  // (B, Tk) or null: 0 = masked
  int64_t B = 0, Tq = 0, Tk = 0, kv_len = 0, C = 0, n_head = 1;
  // Row strides of q and of k/v (forward only; 0 = C, contiguous rows): 3C when q, k and v are the column
  // blocks [q | k | v] of one fused (B, T, 3C) projection, read in place instead of sliced out.
  int64_t ldq = 0, ldkv = 0;
  float scale = 1.0f;
  bool causal = false;
  // Probability dropout (0 = none): probability ((b * n_head + h) * Tq + i) * Tk + j is kept, scaled by
  // 1 / (1 - p), when mulberry32_at(dropout_seed, that index) >= dropout_p.
  double dropout_p = 0.0;
  uint32_t dropout_seed = 0;
};
// out (B, Tq, C); probs (B, n_head, Tq, Tk) or null, zero past kv_len, before dropout.
void attention_forward(const AttentionArgs& a, float* out, float* probs);
// dq (B, Tq, C), dk, dv (B, Tk, C): written (not accumulated); rows past kv_len get zero. probs are the
// forward's (undropped); the dropout mask is regenerated from the same dropout_p / dropout_seed.
void attention_backward(const AttentionArgs& a, const float* dout, const float* probs, float* dq, float* dk,
                        float* dv);

}  // namespace clipcap
