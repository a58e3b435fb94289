// Dynamic dispatch of the k-quant matrix x vector products to the best SIMD target of the running CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ggml_matmul_k.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/ggml_matmul_k-inl.h"

#if HWY_ONCE
#include "kernels/cpu/ggml_matmul_internal.hpp"

namespace strata::kernels {

namespace kquant {

HWY_EXPORT(MatmulK);

void matmul_k(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
              int64_t y_stride) {
  HWY_DYNAMIC_DISPATCH(MatmulK)(t, w, rows, cols, x, tokens, y, y_stride);
}

}  // namespace kquant

namespace detail {

bool matmul_k_blocks_supported(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

bool matmul_k_blocks(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                     int64_t y_stride) {
  if (!matmul_k_blocks_supported(t)) return false;
  kquant::matmul_k(t, w, rows, cols, x, tokens, y, y_stride);
  return true;
}

}  // namespace detail
}  // namespace strata::kernels
#endif  // HWY_ONCE
