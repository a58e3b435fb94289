// Dynamic dispatch of the exponential-sum kernels to the best SIMD target of the running CPU, and
// their scalar references.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/softmax.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/softmax-inl.h"

#if HWY_ONCE
#include <cmath>

#include "strata/core/error.hpp"
#include "strata/kernels/softmax.hpp"

namespace strata::kernels {

HWY_EXPORT(RowMax);
HWY_EXPORT(SumExp);
HWY_EXPORT(SubtractAll);
HWY_EXPORT(KlFromLogProbs);
HWY_EXPORT(SiluMul);

float row_max(const float* x, int64_t n) {
  require(n >= 1 && x != nullptr, "kernels::row_max: need at least one value, got ", n);
  return HWY_DYNAMIC_DISPATCH(RowMax)(x, n);
}

double sum_exp(const float* x, int64_t n, float shift) {
  require(n >= 0, "kernels::sum_exp: negative length ", n);
  return n == 0 ? 0.0 : HWY_DYNAMIC_DISPATCH(SumExp)(x, n, shift, nullptr);
}

double sum_exp_reference(const float* x, int64_t n, float shift) {
  require(n >= 0, "kernels::sum_exp_reference: negative length ", n);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - static_cast<double>(shift));
  return s;
}

double exp_shift(float* x, int64_t n, float shift) {
  require(n >= 0, "kernels::exp_shift: negative length ", n);
  return n == 0 ? 0.0 : HWY_DYNAMIC_DISPATCH(SumExp)(x, n, shift, x);
}

void log_softmax_inplace(float* x, int64_t n) {
  require(n >= 1 && x != nullptr, "kernels::log_softmax_inplace: need at least one value, got ", n);
  const float mx = row_max(x, n);
  const double lse = static_cast<double>(mx) + std::log(HWY_DYNAMIC_DISPATCH(SumExp)(x, n, mx, nullptr));
  HWY_DYNAMIC_DISPATCH(SubtractAll)(x, n, static_cast<float>(lse));
}

void silu_mul(float* gate, const float* up, int64_t n) {
  require(n >= 0, "kernels::silu_mul: negative length ", n);
  if (n > 0) HWY_DYNAMIC_DISPATCH(SiluMul)(gate, up, n);
}

void silu_mul_reference(float* gate, const float* up, int64_t n) {
  require(n >= 0, "kernels::silu_mul_reference: negative length ", n);
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * static_cast<double>(up[i]));
  }
}

double kl_from_log_probs(const float* lp, const float* lq, int64_t n) {
  require(n >= 0, "kernels::kl_from_log_probs: negative length ", n);
  return n == 0 ? 0.0 : HWY_DYNAMIC_DISPATCH(KlFromLogProbs)(lp, lq, n);
}

double kl_from_log_probs_reference(const float* lp, const float* lq, int64_t n) {
  require(n >= 0, "kernels::kl_from_log_probs_reference: negative length ", n);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = lp[i];
    const double e = std::exp(p);
    if (e != 0) s += e * (p - static_cast<double>(lq[i]));
  }
  return s;
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
