// Multi-head scaled dot-product attention, forward and backward, for the small per-head sizes of CLIP and
// GPT-2 (head dim 64, up to a few hundred keys): direct loops over one (batch, head) at a time, threads
// over (batch, head, query block) forward and (batch, head) backward (dk/dv of a head are written by one
// task only, so no atomics are needed). Train-mode dropout on the probabilities hashes each probability's
// flat index (mulberry32_at, as the dropout op does), so its mask does not depend on the thread split.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace clipcap {

namespace {
constexpr int64_t kQueryBlock = 16;

// Dot product with eight independent partial sums (vectorizable without reassociating a single chain).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy_row(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Keys [0, last) are in range for query i (causal: past + i + 1 with past = kv_len - Tq).
inline int64_t key_limit(const AttentionArgs& a, int64_t i) {
  return a.causal ? std::min(a.kv_len, a.kv_len - a.Tq + i + 1) : a.kv_len;
}

inline bool key_allowed(const AttentionArgs& a, int64_t b, int64_t j, int64_t last) {
  return j < last && (a.key_mask == nullptr || a.key_mask[b * a.Tk + j] != 0.0f);
}

// 1 / (1 - p) in float, as the dropout op's mask holds it.
inline float dropout_keep_scale(const AttentionArgs& a) {
  return static_cast<float>(1.0 / (1.0 - a.dropout_p));
}

// The dropout factor of probability `index` (flat in (B, n_head, Tq, Tk)): 1 without dropout, else 0 or
// keep_scale.
inline float dropout_factor(const AttentionArgs& a, float keep_scale, int64_t index) {
  if (a.dropout_p == 0.0) return 1.0f;
  return mulberry32_at(a.dropout_seed, index) >= a.dropout_p ? keep_scale : 0.0f;
}

thread_local std::vector<float> t_scores;
thread_local std::vector<float> t_row;
}  // namespace

void attention_forward(const AttentionArgs& a, float* out, float* probs) {
  const int64_t hd = a.C / a.n_head;
  const int64_t qblocks = (a.Tq + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = a.B * a.n_head * qblocks;
  const double cost = 4.0 * static_cast<double>(std::min(a.Tq, kQueryBlock)) * a.kv_len * hd;
  const float keep_scale = dropout_keep_scale(a);
  parallel_for(tasks, cost, [&](int64_t t0, int64_t t1, int64_t) {
    std::vector<float>& p = t_scores;
    std::vector<float>& acc = t_row;
    p.resize(static_cast<size_t>(std::max<int64_t>(a.kv_len, 1)));
    acc.resize(static_cast<size_t>(std::max<int64_t>(hd, 1)));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t % qblocks;
      const int64_t h = (t / qblocks) % a.n_head;
      const int64_t b = t / (qblocks * a.n_head);
      const int64_t i1 = std::min(a.Tq, (qb + 1) * kQueryBlock);
      for (int64_t i = qb * kQueryBlock; i < i1; ++i) {
        const float* qi = a.q + (b * a.Tq + i) * a.C + h * hd;
        const int64_t last = key_limit(a, i);
        // Scores; -inf marks a disallowed key.
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < a.kv_len; ++j) {
          if (!key_allowed(a, b, j, last)) {
            p[j] = -std::numeric_limits<float>::infinity();
            continue;
          }
          p[j] = dot(qi, a.k + (b * a.Tk + j) * a.C + h * hd, hd) * a.scale;
          if (p[j] > mx) mx = p[j];
        }
        // Softmax; a query with every key disallowed gets zero probabilities (and a zero output).
        double sum = 0;
        for (int64_t j = 0; j < a.kv_len; ++j) {
          p[j] = mx == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(p[j] - mx);
          sum += p[j];
        }
        const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
        // out = Σ_j p_j · dropout_j · v_j; p itself stays undropped (what a recorded forward saves).
        const int64_t pbase = ((b * a.n_head + h) * a.Tq + i) * a.Tk;
        std::fill(acc.begin(), acc.begin() + hd, 0.0f);
        for (int64_t j = 0; j < a.kv_len; ++j) {
          p[j] *= inv;
          const float pj = p[j] == 0.0f ? 0.0f : p[j] * dropout_factor(a, keep_scale, pbase + j);
          if (pj != 0.0f) axpy_row(acc.data(), pj, a.v + (b * a.Tk + j) * a.C + h * hd, hd);
        }
        std::memcpy(out + (b * a.Tq + i) * a.C + h * hd, acc.data(), sizeof(float) * static_cast<size_t>(hd));
        if (probs != nullptr) {
          float* pr = probs + pbase;
          std::memcpy(pr, p.data(), sizeof(float) * static_cast<size_t>(a.kv_len));
          std::fill(pr + a.kv_len, pr + a.Tk, 0.0f);
        }
      }
    }
  });
}

void attention_backward(const AttentionArgs& a, const float* dout, const float* probs, float* dq, float* dk,
                        float* dv) {
  // From P (masking is already in it: disallowed keys have p = 0):
  // dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP - rowsum(P ⊙ dP)); dQ = scale·dS·K; dK = scale·dSᵀ·Q.
  // With dropout mask M (regenerated from the seed): dV = (P ⊙ M)ᵀ·dO and dP = (dO·Vᵀ) ⊙ M.
  const int64_t hd = a.C / a.n_head;
  const double cost = 8.0 * static_cast<double>(a.Tq) * a.kv_len * hd;
  const float keep_scale = dropout_keep_scale(a);
  parallel_for(a.B * a.n_head, cost, [&](int64_t t0, int64_t t1, int64_t) {
    std::vector<float>& dp = t_scores;
    std::vector<float>& acc = t_row;
    dp.resize(static_cast<size_t>(std::max<int64_t>(a.kv_len, 1)));
    acc.resize(static_cast<size_t>(std::max<int64_t>(hd, 1)));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t % a.n_head;
      const int64_t b = t / a.n_head;
      for (int64_t j = 0; j < a.Tk; ++j) {
        std::fill_n(dk + (b * a.Tk + j) * a.C + h * hd, hd, 0.0f);
        std::fill_n(dv + (b * a.Tk + j) * a.C + h * hd, hd, 0.0f);
      }
      for (int64_t i = 0; i < a.Tq; ++i) {
        const int64_t qoff = (b * a.Tq + i) * a.C + h * hd;
        const float* doi = dout + qoff;
        const float* qi = a.q + qoff;
        const int64_t pbase = ((b * a.n_head + h) * a.Tq + i) * a.Tk;
        const float* pi = probs + pbase;
        double row_dot = 0;  // Σ_j p_ij dP_ij
        for (int64_t j = 0; j < a.kv_len; ++j) {
          if (pi[j] == 0.0f) continue;  // a disallowed (or underflowed) key contributes nothing
          const int64_t koff = (b * a.Tk + j) * a.C + h * hd;
          const float m = dropout_factor(a, keep_scale, pbase + j);
          if (m == 0.0f) {
            dp[j] = 0.0f;  // dropped: no path from p_ij to the output, but it stays in the softmax backward
            continue;
          }
          dp[j] = dot(doi, a.v + koff, hd) * m;
          axpy_row(dv + koff, pi[j] * m, doi, hd);
          row_dot += static_cast<double>(pi[j]) * dp[j];
        }
        std::fill(acc.begin(), acc.begin() + hd, 0.0f);
        for (int64_t j = 0; j < a.kv_len; ++j) {
          if (pi[j] == 0.0f) continue;
          const int64_t koff = (b * a.Tk + j) * a.C + h * hd;
          const float ds = static_cast<float>(pi[j] * (dp[j] - row_dot) * a.scale);
          axpy_row(acc.data(), ds, a.k + koff, hd);
          axpy_row(dk + koff, ds, qi, hd);
        }
        std::memcpy(dq + qoff, acc.data(), sizeof(float) * static_cast<size_t>(hd));
      }
    }
  });
}

}  // namespace clipcap
