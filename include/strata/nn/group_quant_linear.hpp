#pragma once
// A group-quantized linear layer (strata's integer format: RTN, GPTQ, AWQ) that computes with its
// codes: a product streams the codes and one scale and zero point per group instead of float32
// weights, and widens the codes in registers.
//
// At construction the codes are repacked for the kernel: 2- to 4-bit codes as 4-bit (two a byte),
// 5- to 8-bit codes as 8-bit, every group padded to a multiple of 32 inputs, and each group's scale
// and zero point as floats. Up to 16 tokens go through the SIMD kernel
// (src/kernels/cpu/group_matmul-inl.h); more (a prompt's prefill) through BLAS, a block of rows
// dequantized at a time.
#include <cstdint>
#include <string>
#include <vector>

#include "strata/nn/linear.hpp"

namespace strata::nn {

// What a group-quantized matrix stores, codes unpacked: W[r, j] = scale (code - zero) / channel_scale_j
// with the scale and zero point of the group of j, computed in float exactly so (the scale times the
// integer difference, then divided by the channel scale as a multiplication by its reciprocal).
struct GroupQuantWeights {
  int64_t rows = 0, cols = 0;
  int bits = 4;                        // 2..8
  int64_t group = 128;                 // inputs a group covers; 0 or >= cols: the whole row
  std::vector<uint8_t> codes;          // [rows * cols], row-major, each < 2^bits
  std::vector<float> scales;           // [rows * groups]
  std::vector<uint8_t> zeros;          // [rows * groups]; empty: symmetric, zero point 2^(bits - 1)
  std::vector<float> channel_scales;   // [cols], or empty
};

class GroupQuantLinear final : public Linear {
 public:
  static constexpr int64_t kMaxKernelTokens = 16;

  // Throws strata::Error when the arrays do not match the shape, a code or zero point does not fit
  // `bits`, a scale is not finite or a channel scale not finite and positive.
  explicit GroupQuantLinear(const GroupQuantWeights& weights);

  int64_t in_features() const override { return cols_; }
  int64_t out_features() const override { return rows_; }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override;
  uint64_t weight_bytes() const override;
  std::string describe() const override;

  int bits() const { return bits_; }
  // Bits a code takes in the kernel's layout (4 or 8).
  int kernel_bits() const { return kernel_bits_; }

 private:
  void densify(int64_t r0, int64_t r1, float* out) const;
  // x [tokens, cols] laid out like the codes (groups padded with zeros), divided by the channel scales.
  void pad_input(const float* x, int64_t tokens, float* xp) const;

  int64_t rows_ = 0, cols_ = 0;
  int bits_ = 4, kernel_bits_ = 4;
  int64_t group_ = 0, groups_ = 0, padded_group_ = 0;
  bool symmetric_ = false;
  std::vector<uint8_t> codes_;
  std::vector<float> params_;       // [rows, groups, 2]: scale, zero point
  std::vector<float> inv_channel_;  // 1 / channel scale, or empty
};

}  // namespace strata::nn
