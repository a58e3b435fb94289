#pragma once
// A pruned linear layer that computes with its sparse form: only the kept weights and where they
// sit are stored and streamed, so a product reads fewer bytes than the dense float32 layer.
//
// Three layouts:
//   - 2:4 (every group of four inputs keeps two): the kept values packed, [rows, cols / 2], plus a
//     2-bit position per value; the kernel gathers the input at the kept positions with one lane
//     permutation per vector;
//   - bitmask (unstructured, at least ~30% kept): a bit per weight plus the kept values;
//   - CSR (unstructured, sparser): the kept values with their 16-bit (or 32-bit) column indices.
// Values are float32, or f16 widened in registers when the compressed form stored f16.
//
// Up to 16 tokens go through the SIMD kernels (src/kernels/cpu/sparse_matmul-inl.h); more (a
// prompt's prefill) through BLAS, a block of rows made dense at a time, where BLAS's throughput
// beats what skipping zeros saves.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/nn/linear.hpp"

namespace strata::nn {

class SparseLinear final : public Linear {
 public:
  enum class Layout { automatic, two_four, bitmask, csr };

  // Kept fraction below which `automatic` picks CSR over a bitmask.
  static constexpr double kCsrBelow = 0.3;
  // Token counts above this go through the dense-block GEMM.
  static constexpr int64_t kMaxKernelTokens = 16;

  // The layer for `weight`, whose zeros are the pruned weights (a zero with its sign bit set counts
  // as kept). `half`: store the values as f16; every value must then be an f16 value exactly (it
  // is when it came from an f16 stored form), so that dense_weight() returns `weight` unchanged.
  // `automatic` picks 2:4 when every group of four consecutive inputs holds at most two weights
  // (and cols is a multiple of 4) and more than a quarter are kept, else bitmask or CSR by the kept
  // fraction. Throws strata::Error for an empty weight, a layout that does not fit it, or values not
  // exact in f16.
  SparseLinear(const RowMatrix<float>& weight, bool half, Layout layout = Layout::automatic);

  int64_t in_features() const override { return cols_; }
  int64_t out_features() const override { return rows_; }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override;
  uint64_t weight_bytes() const override;
  std::string describe() const override;

  Layout layout() const { return layout_; }
  bool half_values() const { return half_; }
  int64_t kept() const { return kept_; }

 private:
  // Rows [r0, r1) as dense float32.
  void densify(int64_t r0, int64_t r1, float* out) const;
  void kernel(const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) const;

  int64_t rows_ = 0, cols_ = 0, kept_ = 0;
  Layout layout_ = Layout::bitmask;
  bool half_ = false;
  std::vector<float> values_f32_;
  std::vector<f16> values_f16_;
  std::vector<uint8_t> meta_;        // 2:4 positions or the bitmask, `meta_stride_` bytes a row
  int64_t meta_stride_ = 0;
  std::vector<int64_t> row_start_;   // bitmask and CSR
  std::vector<uint16_t> col16_;      // CSR, cols <= 65536
  std::vector<uint32_t> col32_;      // CSR, wider
};

}  // namespace strata::nn
