// Dynamic dispatch of the group-quantized products to the best SIMD target of the running CPU, and
// their scalar reference.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/group_matmul.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/group_matmul-inl.h"

#if HWY_ONCE
namespace strata::kernels {

HWY_EXPORT(GroupMatmul);

void group_matmul(const GroupQuant& w, const float* xp, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(GroupMatmul)(w, xp, tokens, y, r0, r1);
}

void group_matmul_reference(const GroupQuant& w, const float* xp, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  const int64_t xs = w.padded_cols();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      const float* pr = w.params + r * w.groups * 2;
      float s = 0;
      for (int64_t k = 0; k < w.groups; ++k) {
        float g = 0;
        for (int64_t p = k * w.padded_group; p < (k + 1) * w.padded_group; ++p)
          g += (static_cast<float>(group_code(w, r, p)) - pr[2 * k + 1]) * xp[t * xs + p];
        s += pr[2 * k] * g;
      }
      y[t * w.rows + r] = s;
    }
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
