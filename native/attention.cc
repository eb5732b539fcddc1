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

#include "gemm.h"
#include "kernels.h"
#include "threadpool.h"
#include "vecmath.h"

#if CLIPCAP_X86_KERNELS
#include <immintrin.h>
#endif

namespace clipcap {

namespace {
constexpr int64_t kQueryBlock = 16;

// ---- the inner loops, portable and AVX2 (selected per call by simd_avx2(), as the GEMM is) ----

// s[j] = (q · k_j) · scale for keys j in [0, n); key j starts at k + j·ldk. Eight independent partial
// sums per dot product (vectorizable without reassociating a single chain).
void scores_portable(const float* q, const float* k, int64_t ldk, int64_t n, int64_t hd, float scale, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = k + j * ldk;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8)
      for (int l = 0; l < 8; ++l) acc[l] += q[d + l] * kj[d + l];
    float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < hd; ++d) sum += q[d] * kj[d];
    s[j] = sum * scale;
  }
}

// acc[0, hd) = Σ_j w[j] · v_j over j in [0, n) with w[j] != 0 (a zero weight skips its row, so a masked
// key's values, whatever they hold, never reach the output).
void weighted_sum_portable(const float* w, const float* v, int64_t ldv, int64_t n, int64_t hd, float* acc) {
  std::fill(acc, acc + hd, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    if (w[j] == 0.0f) continue;
    const float* vj = v + j * ldv;
    for (int64_t d = 0; d < hd; ++d) acc[d] += w[j] * vj[d];
  }
}

#if CLIPCAP_X86_KERNELS
#define CLIPCAP_AVX2_FN __attribute__((target("avx2,fma")))

// Eight keys at a time: eight accumulators (one per key, FMA over the head dim), reduced together by a
// horizontal-add tree into one vector of eight scores. hd % 8 == 0. Keys past n repeat key n - 1 (their
// scores land past s[n) in the local vector and are not stored).
CLIPCAP_AVX2_FN void scores_avx2(const float* q, const float* k, int64_t ldk, int64_t n, int64_t hd, float scale,
                                 float* s) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    const float* kr[8];
    for (int l = 0; l < 8; ++l) kr[l] = k + std::min(j0 + l, n - 1) * ldk;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(), a6 = _mm256_setzero_ps(), a7 = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[0] + d), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[1] + d), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[2] + d), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[3] + d), a3);
      a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[4] + d), a4);
      a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[5] + d), a5);
      a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[6] + d), a6);
      a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[7] + d), a7);
    }
    // hadd pairs within 128-bit lanes, then fold the two lanes: lane l of the result is key l's sum.
    const __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
    const __m256 h45 = _mm256_hadd_ps(a4, a5), h67 = _mm256_hadd_ps(a6, a7);
    const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
    const __m256 r = _mm256_mul_ps(sum, vscale);
    if (j0 + 8 <= n) {
      _mm256_storeu_ps(s + j0, r);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, r);
      for (int64_t l = 0; l < n - j0; ++l) s[j0 + l] = tmp[l];
    }
  }
}

// The head dim in blocks of up to 64 (eight accumulator registers), rows with a zero weight skipped.
CLIPCAP_AVX2_FN void weighted_sum_avx2(const float* w, const float* v, int64_t ldv, int64_t n, int64_t hd, float* acc) {
  for (int64_t d0 = 0; d0 < hd; d0 += 64) {
    if (d0 + 64 <= hd) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      __m256 a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(), a6 = _mm256_setzero_ps(), a7 = _mm256_setzero_ps();
      for (int64_t j = 0; j < n; ++j) {
        if (w[j] == 0.0f) continue;
        const __m256 wj = _mm256_set1_ps(w[j]);
        const float* vj = v + j * ldv + d0;
        a0 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj), a0);
        a1 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 8), a1);
        a2 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 16), a2);
        a3 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 24), a3);
        a4 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 32), a4);
        a5 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 40), a5);
        a6 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 48), a6);
        a7 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vj + 56), a7);
      }
      float* o = acc + d0;
      _mm256_storeu_ps(o, a0);
      _mm256_storeu_ps(o + 8, a1);
      _mm256_storeu_ps(o + 16, a2);
      _mm256_storeu_ps(o + 24, a3);
      _mm256_storeu_ps(o + 32, a4);
      _mm256_storeu_ps(o + 40, a5);
      _mm256_storeu_ps(o + 48, a6);
      _mm256_storeu_ps(o + 56, a7);
    } else {
      // A last block of fewer than 64 (hd % 8 == 0): one vector at a time, accumulated in acc.
      for (int64_t d = d0; d < hd; d += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; ++j)
          if (w[j] != 0.0f) a = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(v + j * ldv + d), a);
        _mm256_storeu_ps(acc + d, a);
      }
    }
  }
}

// Largest score (NaN skipped, as `>` does), vectorized: max_ps returns its second operand on NaN.
CLIPCAP_AVX2_FN float row_max_avx2(const float* p, int64_t n) {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(_mm256_loadu_ps(p + j), m);
  alignas(32) float l[8];
  _mm256_store_ps(l, m);
  float mx = l[0];
  for (int i = 1; i < 8; ++i)
    if (l[i] > mx) mx = l[i];
  for (; j < n; ++j)
    if (p[j] > mx) mx = p[j];
  return mx;
}

CLIPCAP_AVX2_FN void scale_avx2(float* p, int64_t n, float s) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), vs));
  for (; j < n; ++j) p[j] *= s;
}
#endif

// The kernels of one call, picked once.
struct AttnOps {
  bool simd = false;
  int64_t hd = 0;
  void scores(const float* q, const float* k, int64_t ldk, int64_t n, float scale, float* s) const {
#if CLIPCAP_X86_KERNELS
    if (simd) return scores_avx2(q, k, ldk, n, hd, scale, s);
#endif
    scores_portable(q, k, ldk, n, hd, scale, s);
  }
  void weighted_sum(const float* w, const float* v, int64_t ldv, int64_t n, float* acc) const {
#if CLIPCAP_X86_KERNELS
    if (simd) return weighted_sum_avx2(w, v, ldv, n, hd, acc);
#endif
    weighted_sum_portable(w, v, ldv, n, hd, acc);
  }
  float max(const float* p, int64_t n) const {
#if CLIPCAP_X86_KERNELS
    if (simd) return row_max_avx2(p, n);
#endif
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j)
      if (p[j] > mx) mx = p[j];
    return mx;
  }
  // p[j] = exp(p[j] - shift); returns Σ p[j] in double.
  double exp_sum(float* p, int64_t n, float shift) const {
#if CLIPCAP_X86_KERNELS
    if (simd) return exp_sum_avx2(p, n, shift, p);
#endif
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      p[j] = std::exp(p[j] - shift);
      sum += p[j];
    }
    return sum;
  }
  void scale(float* p, int64_t n, float s) const {
#if CLIPCAP_X86_KERNELS
    if (simd) return scale_avx2(p, n, s);
#endif
    for (int64_t j = 0; j < n; ++j) p[j] *= s;
  }
};

AttnOps attn_ops(const AttentionArgs& a) {
  AttnOps o;
  o.hd = a.C / a.n_head;
  o.simd = simd_avx2() && o.hd % 8 == 0;
  return o;
}

// Keys [0, last) are in range for query i (causal: past + i + 1 with past = kv_len - Tq).
inline int64_t key_limit(const AttentionArgs& a, int64_t i) {
  return a.causal ? std::min(a.kv_len, a.kv_len - a.Tq + i + 1) : a.kv_len;
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

// Per-thread scratch, grown on first use and kept (no allocation per call once warm).
thread_local std::vector<float> t_scores;
thread_local std::vector<float> t_weights;
thread_local std::vector<float> t_row;
}  // namespace

void attention_forward(const AttentionArgs& a, float* out, float* probs) {
  const AttnOps ops = attn_ops(a);
  const int64_t hd = ops.hd;
  const int64_t qblocks = (a.Tq + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = a.B * a.n_head * qblocks;
  const double cost = 4.0 * static_cast<double>(std::min(a.Tq, kQueryBlock)) * a.kv_len * hd;
  const float keep_scale = dropout_keep_scale(a);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t ldq = a.ldq > 0 ? a.ldq : a.C;
  const int64_t ldkv = a.ldkv > 0 ? a.ldkv : a.C;
  parallel_for(tasks, cost, [&](int64_t t0, int64_t t1, int64_t) {
    std::vector<float>& p = t_scores;
    std::vector<float>& w = t_weights;
    std::vector<float>& acc = t_row;
    if (p.size() < static_cast<size_t>(a.kv_len)) p.resize(static_cast<size_t>(a.kv_len));
    if (w.size() < static_cast<size_t>(a.kv_len)) w.resize(static_cast<size_t>(a.kv_len));
    if (acc.size() < static_cast<size_t>(hd)) acc.resize(static_cast<size_t>(hd));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t % qblocks;
      const int64_t h = (t / qblocks) % a.n_head;
      const int64_t b = t / (qblocks * a.n_head);
      const int64_t i1 = std::min(a.Tq, (qb + 1) * kQueryBlock);
      const float* kb = a.k + b * a.Tk * ldkv + h * hd;  // key j of this head at kb + j·ldkv
      const float* vb = a.v + b * a.Tk * ldkv + h * hd;
      const float* mask = a.key_mask == nullptr ? nullptr : a.key_mask + b * a.Tk;
      for (int64_t i = qb * kQueryBlock; i < i1; ++i) {
        const float* qi = a.q + (b * a.Tq + i) * ldq + h * hd;
        const int64_t last = key_limit(a, i);
        // Scores of the keys in range; -inf marks a disallowed key.
        if (last > 0) ops.scores(qi, kb, ldkv, last, a.scale, p.data());
        std::fill(p.begin() + std::max<int64_t>(last, 0), p.begin() + a.kv_len, kNegInf);
        if (mask != nullptr)
          for (int64_t j = 0; j < last; ++j)
            if (mask[j] == 0.0f) p[j] = kNegInf;
        // Softmax; a query with every key disallowed gets zero probabilities (and a zero output).
        const float mx = ops.max(p.data(), a.kv_len);
        double sum = 0;
        if (mx == kNegInf)
          std::fill(p.begin(), p.begin() + a.kv_len, 0.0f);
        else
          sum = ops.exp_sum(p.data(), a.kv_len, mx);
        const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
        ops.scale(p.data(), a.kv_len, inv);
        // out = Σ_j p_j · dropout_j · v_j; p itself stays undropped (what a recorded forward saves).
        const int64_t pbase = ((b * a.n_head + h) * a.Tq + i) * a.Tk;
        const float* wj = p.data();
        if (a.dropout_p != 0.0) {
          for (int64_t j = 0; j < a.kv_len; ++j)
            w[j] = p[j] == 0.0f ? 0.0f : p[j] * dropout_factor(a, keep_scale, pbase + j);
          wj = w.data();
        }
        ops.weighted_sum(wj, vb, ldkv, a.kv_len, acc.data());
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
  // Per (batch, head): the rows of P ⊙ M and dS go to scratch (Tq, kv_len) first, so every output row is one
  // weighted sum of input rows (dq_i over keys, dk_j and dv_j over queries) kept in registers.
  const AttnOps ops = attn_ops(a);
  const int64_t hd = ops.hd;
  const int64_t kv = a.kv_len;
  const double cost = 8.0 * static_cast<double>(a.Tq) * kv * hd;
  const float keep_scale = dropout_keep_scale(a);
  parallel_for(a.B * a.n_head, cost, [&](int64_t t0, int64_t t1, int64_t) {
    std::vector<float>& dp = t_scores;
    std::vector<float>& col = t_weights;
    std::vector<float>& mats = t_row;  // P ⊙ M then dS, each (Tq, kv) row-major
    const size_t mat = static_cast<size_t>(a.Tq * kv);
    if (dp.size() < static_cast<size_t>(kv)) dp.resize(static_cast<size_t>(kv));
    if (col.size() < static_cast<size_t>(a.Tq)) col.resize(static_cast<size_t>(a.Tq));
    if (mats.size() < 2 * mat) mats.resize(2 * mat);
    float* pm = mats.data();
    float* dsm = mats.data() + mat;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t % a.n_head;
      const int64_t b = t / a.n_head;
      const float* kb = a.k + b * a.Tk * a.C + h * hd;
      const float* vb = a.v + b * a.Tk * a.C + h * hd;
      const float* qb = a.q + b * a.Tq * a.C + h * hd;
      const float* dob = dout + b * a.Tq * a.C + h * hd;
      for (int64_t i = 0; i < a.Tq; ++i) {
        const float* doi = dob + i * a.C;
        const int64_t pbase = ((b * a.n_head + h) * a.Tq + i) * a.Tk;
        const float* pi = probs + pbase;
        float* pmi = pm + i * kv;
        float* dsi = dsm + i * kv;
        // Keys past the last nonzero probability contribute nothing (causal rows end early).
        int64_t n = kv;
        while (n > 0 && pi[n - 1] == 0.0f) --n;
        if (n > 0) ops.scores(doi, vb, a.C, n, 1.0f, dp.data());  // dO·Vᵀ
        double row_dot = 0;  // Σ_j p_ij dP_ij
        for (int64_t j = 0; j < n; ++j) {
          pmi[j] = 0.0f;
          if (pi[j] == 0.0f) continue;  // a disallowed (or underflowed) key contributes nothing
          const float m = dropout_factor(a, keep_scale, pbase + j);
          if (m == 0.0f) {
            dp[j] = 0.0f;  // dropped: no path from p_ij to the output, but it stays in the softmax backward
            continue;
          }
          dp[j] *= m;
          pmi[j] = pi[j] * m;
          row_dot += static_cast<double>(pi[j]) * dp[j];
        }
        for (int64_t j = 0; j < n; ++j)
          dsi[j] = pi[j] == 0.0f ? 0.0f : static_cast<float>(pi[j] * (dp[j] - row_dot) * a.scale);
        std::fill(pmi + n, pmi + kv, 0.0f);
        std::fill(dsi + n, dsi + kv, 0.0f);
        ops.weighted_sum(dsi, kb, a.C, n, dq + (b * a.Tq + i) * a.C + h * hd);  // dq_i = Σ_j ds_ij k_j
      }
      // dv_j = Σ_i pm_ij do_i and dk_j = Σ_i ds_ij q_i: the columns of the scratch matrices as weights.
      for (int64_t j = 0; j < a.Tk; ++j) {
        float* dvj = dv + (b * a.Tk + j) * a.C + h * hd;
        float* dkj = dk + (b * a.Tk + j) * a.C + h * hd;
        if (j >= kv) {
          std::fill_n(dvj, hd, 0.0f);
          std::fill_n(dkj, hd, 0.0f);
          continue;
        }
        for (int64_t i = 0; i < a.Tq; ++i) col[i] = pm[i * kv + j];
        ops.weighted_sum(col.data(), dob, a.C, a.Tq, dvj);
        for (int64_t i = 0; i < a.Tq; ++i) col[i] = dsm[i * kv + j];
        ops.weighted_sum(col.data(), qb, a.C, a.Tq, dkj);
      }
    }
  });
}

}  // namespace clipcap
