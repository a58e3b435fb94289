// Dynamic dispatch of the 32-element block family of kernels::ggml_matmul to the best SIMD target
// of the running CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ggml_matmul_q.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/ggml_matmul_q-inl.h"

#if HWY_ONCE
#include "kernels/cpu/ggml_matmul_internal.hpp"

namespace strata::kernels {

HWY_EXPORT(MatmulQBlocks);

bool detail::matmul_q_blocks_supported(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
      return true;
    default:
      return false;
  }
}

bool detail::matmul_q_blocks(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens,
                             float* y, int64_t y_stride) {
  if (!matmul_q_blocks_supported(t)) return false;
  return HWY_DYNAMIC_DISPATCH(MatmulQBlocks)(t, w, rows, cols, x, tokens, y, y_stride);
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
