// Dynamic dispatch of the KV-cache scoring loops to the best SIMD target of the running CPU, and
// their scalar references.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/kv_score.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/kv_score-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/kv_score.hpp"

namespace strata::kernels {

HWY_EXPORT(KvRowDots);
HWY_EXPORT(KvRowNorms);
HWY_EXPORT(KvAccumulateRows);
HWY_EXPORT(KvTopK);

void kv_row_dots(const float* q, const float* k, int64_t n, int64_t d, int64_t stride, float* scores) {
  HWY_DYNAMIC_DISPATCH(KvRowDots)(q, k, n, d, stride, scores);
}

void kv_row_norms(const float* k, int64_t n, int64_t d, int64_t stride, float* norms) {
  HWY_DYNAMIC_DISPATCH(KvRowNorms)(k, n, d, stride, norms);
}

void kv_accumulate_rows(const float* rows, int64_t m, int64_t n, int64_t stride, float* acc) {
  HWY_DYNAMIC_DISPATCH(KvAccumulateRows)(rows, m, n, stride, acc);
}

int64_t kv_top_k(const float* scores, int64_t n, int64_t k, int64_t* out) {
  return HWY_DYNAMIC_DISPATCH(KvTopK)(scores, n, k, out);
}

// The references sum in double: they are the exact answer the float sums are held to.
void kv_row_dots_reference(const float* q, const float* k, int64_t n, int64_t d, int64_t stride, float* scores) {
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += static_cast<double>(q[i]) * k[j * stride + i];
    scores[j] = static_cast<float>(s);
  }
}

void kv_row_norms_reference(const float* k, int64_t n, int64_t d, int64_t stride, float* norms) {
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += static_cast<double>(k[j * stride + i]) * k[j * stride + i];
    norms[j] = static_cast<float>(std::sqrt(s));
  }
}

void kv_accumulate_rows_reference(const float* rows, int64_t m, int64_t n, int64_t stride, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t i = 0; i < m; ++i) s += rows[i * stride + j];
    acc[j] = static_cast<float>(acc[j] + s);
  }
}

// A stable sort keeps equal scores in index order, so its first k are the tie rule itself.
int64_t kv_top_k_reference(const float* scores, int64_t n, int64_t k, int64_t* out) {
  k = std::clamp<int64_t>(k, 0, std::max<int64_t>(n, 0));
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [scores](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  std::sort(order.begin(), order.begin() + k);
  std::copy(order.begin(), order.begin() + k, out);
  return k;
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
