// Dynamic dispatch of the fast Walsh-Hadamard transform to the best SIMD target of the running
// CPU, its scalar reference, and the randomized Hadamard rotation.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/hadamard.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/hadamard-inl.h"

#if HWY_ONCE
#include <cmath>

#include "strata/core/error.hpp"
#include "strata/kernels/hadamard.hpp"

namespace strata::kernels {

HWY_EXPORT(FwhtRows);

namespace {

void check(const char* what, const float* x, int64_t rows, int64_t n, int64_t stride) {
  require(is_power_of_two(n), what, ": length n = ", n, " is not a power of two");
  require(rows >= 0, what, ": negative row count ", rows);
  require(rows <= 1 || stride >= n, what, ": row stride ", stride, " is shorter than the length ", n);
  require(rows == 0 || x != nullptr, what, ": null rows");
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

bool is_power_of_two(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

void fwht(float* x, int64_t rows, int64_t n, int64_t stride, float scale) {
  check("kernels::fwht", x, rows, n, stride);
  HWY_DYNAMIC_DISPATCH(FwhtRows)(x, rows, n, stride, nullptr, nullptr, scale);
}

void fwht_reference(float* x, int64_t rows, int64_t n, int64_t stride, float scale) {
  check("kernels::fwht_reference", x, rows, n, stride);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * stride;
    // Stage h pairs every j whose bit h is clear with j + h.
    for (int64_t h = 1; h < n; h *= 2)
      for (int64_t j = 0; j < n; ++j) {
        if (j & h) continue;
        const float a = row[j], b = row[j + h];
        row[j] = a + b;
        row[j + h] = a - b;
      }
    for (int64_t i = 0; i < n; ++i) row[i] *= scale;
  }
}

HadamardRotation::HadamardRotation(int64_t n, uint64_t seed) : n_(n), seed_(seed) {
  require(is_power_of_two(n), "kernels::HadamardRotation: length n = ", n, " is not a power of two");
  signs_.resize(static_cast<size_t>(n));
  uint64_t state = seed;
  uint64_t bits = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i % 64 == 0) bits = splitmix64(state);
    signs_[static_cast<size_t>(i)] = (bits >> (i % 64)) & 1 ? -1.0f : 1.0f;
  }
}

void HadamardRotation::rotate(float* x, int64_t rows, int64_t stride) const {
  check("kernels::HadamardRotation::rotate", x, rows, n_, stride);
  HWY_DYNAMIC_DISPATCH(FwhtRows)(x, rows, n_, stride, signs_.data(), nullptr,
                                 static_cast<float>(1.0 / std::sqrt(static_cast<double>(n_))));
}

void HadamardRotation::unrotate(float* x, int64_t rows, int64_t stride) const {
  check("kernels::HadamardRotation::unrotate", x, rows, n_, stride);
  HWY_DYNAMIC_DISPATCH(FwhtRows)(x, rows, n_, stride, nullptr, signs_.data(),
                                 static_cast<float>(1.0 / std::sqrt(static_cast<double>(n_))));
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
