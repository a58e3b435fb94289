#include "strata/nn/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "strata/kernels/softmax.hpp"

namespace strata::nn {

void causal_softmax_rows(float* scores, int64_t n, int64_t len, int64_t visible0) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t visible = visible0 + t + 1;
    float* row = scores + t * len;
    const float mx = kernels::row_max(row, visible);
    const double sum = kernels::exp_shift(row, visible, mx);
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
    for (int64_t j = visible; j < len; ++j) row[j] = 0.0f;
  }
}

}  // namespace strata::nn
