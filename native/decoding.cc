// Decoding kernels (see decoding.h). The arithmetic follows src/engine/reference-decoding.ts step for step
// (double logsumexp in index order, one rounding to float per value) so the two agree to the last bit
// except where libm's exp/log and V8's differ in the last place of a double, far below float precision.
#include "decoding.h"

#include <cmath>
#include <vector>

#include "threadpool.h"

namespace clipcap {

namespace {

void topk_row(const float* x, int64_t V, int64_t k, double t, float* values, int32_t* indices,
              std::vector<float>& scaled, std::vector<double>& topV, std::vector<int32_t>& topI) {
  const float* s = x;
  if (t != 1.0) {
    scaled.resize(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) scaled[v] = static_cast<float>(static_cast<double>(x[v]) / t);
    s = scaled.data();
  }
  double max = -INFINITY;
  for (int64_t v = 0; v < V; ++v)
    if (s[v] > max) max = s[v];
  double lse = max;
  if (max != -INFINITY && max == max) {
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(s[v]) - max);
    lse = max + std::log(sum);
  }
  topV.assign(static_cast<size_t>(k), 0.0);
  topI.assign(static_cast<size_t>(k), 0);
  int64_t n = 0;
  double floor = -INFINITY;
  for (int64_t v = 0; v < V; ++v) {
    const double lp = static_cast<float>(static_cast<double>(s[v]) - lse);
    if (n == k) {
      if (!(lp > floor)) continue;
    } else if (!(lp >= -INFINITY)) {
      continue;  // NaN
    }
    int64_t pos = n < k ? n++ : k - 1;
    while (pos > 0 && lp > topV[pos - 1]) {
      topV[pos] = topV[pos - 1];
      topI[pos] = topI[pos - 1];
      --pos;
    }
    topV[pos] = lp;
    topI[pos] = static_cast<int32_t>(v);
    if (n == k) floor = topV[k - 1];
  }
  for (int64_t j = 0; j < k; ++j) {
    values[j] = j < n ? static_cast<float>(topV[j]) : -INFINITY;
    indices[j] = j < n ? topI[j] : 0;
  }
}

}  // namespace

void log_softmax_topk(const float* x, int64_t rows, int64_t V, int64_t k, double t, float* values, int32_t* indices) {
  // ~30 operations per logit (the exp dominates).
  parallel_for(rows, 30.0 * static_cast<double>(V), [&](int64_t r0, int64_t r1, int64_t) {
    thread_local std::vector<float> scaled;
    thread_local std::vector<double> topV;
    thread_local std::vector<int32_t> topI;
    for (int64_t r = r0; r < r1; ++r)
      topk_row(x + r * V, V, k, t, values + r * k, indices + r * k, scaled, topV, topI);
  });
}

}  // namespace clipcap
