#pragma once
// The fast Walsh-Hadamard transform and the randomized Hadamard rotation built on it.
//
// H_n is Sylvester's Hadamard matrix of order n (a power of two): H[i][j] = (-1)^popcount(i & j).
// H_n / sqrt(n) is symmetric and orthogonal, so it is its own inverse. The transform runs in
// n log2(n) additions per row (butterflies a, b -> a + b, a - b, strides 1, 2, 4, ..), SIMD through
// Highway's dynamic dispatch; fwht_reference() is the scalar oracle, and the SIMD version performs
// the same additions in the same order, so the two agree bit for bit.
//
// HadamardRotation is R = H_n D / sqrt(n) with D a diagonal of random signs drawn from a seed
// (QuaRot / QuIP#'s randomized Hadamard): orthogonal, so q.k = (Rq).(Rk), and a few large
// coordinates of x are spread over all n coordinates of Rx, which flattens outlier channels before
// quantization. The same transform serves the KV cache (per head) and weight quantizers (per row
// or per group of columns).
//
//   kernels::HadamardRotation r(64, /*seed=*/1);
//   r.rotate(keys, tokens, 64);      // every row x <- R x
//   r.unrotate(out, tokens, 64);     // every row y <- R^T y (the inverse)
#include <cstdint>
#include <span>
#include <vector>

namespace strata::kernels {

// True when n is a power of two (1, 2, 4, ..).
bool is_power_of_two(int64_t n);

// In place on `rows` rows of n floats, row r at x + r * stride: x <- scale * H_n x. n a power of
// two, stride >= n. Throws strata::Error naming the argument otherwise.
void fwht(float* x, int64_t rows, int64_t n, int64_t stride, float scale = 1.0f);
void fwht_reference(float* x, int64_t rows, int64_t n, int64_t stride, float scale = 1.0f);

class HadamardRotation {
 public:
  // n a power of two; the signs are a function of `seed` alone (splitmix64), on every platform.
  HadamardRotation(int64_t n, uint64_t seed);

  int64_t size() const { return n_; }
  uint64_t seed() const { return seed_; }
  std::span<const float> signs() const { return signs_; }  // the diagonal of D, each +1 or -1

  // x <- R x = H (D x) / sqrt(n) on every row (rows `stride` floats apart).
  void rotate(float* x, int64_t rows, int64_t stride) const;
  // x <- R^T x = D (H x) / sqrt(n): undoes rotate().
  void unrotate(float* x, int64_t rows, int64_t stride) const;

 private:
  int64_t n_;
  uint64_t seed_;
  std::vector<float> signs_;
};

}  // namespace strata::kernels
