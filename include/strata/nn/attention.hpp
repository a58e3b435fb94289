#pragma once
// The piece of attention every KV layout shares: causal softmax over a block of score rows.
#include <cstdint>

namespace strata::nn {

// scores: n rows of `len` raw scores (row-major). Row t may see its first `visible0 + t + 1` columns:
// those become the softmax over them (max-subtracted, summed in double), the rest exactly 0.
void causal_softmax_rows(float* scores, int64_t n, int64_t len, int64_t visible0);

}  // namespace strata::nn
