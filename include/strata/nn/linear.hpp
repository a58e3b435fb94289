#pragma once
// One interface for every linear layer the engines call, so that a compressed layer (low-rank
// factors, sparse, quantized) replaces a dense one without the engine knowing.
#include <cstdint>
#include <memory>
#include <string>

#include "strata/core/eigen.hpp"
#include "strata/core/tensor.hpp"

namespace strata::nn {

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // y[t, :] = W x[t, :] for t < tokens; x is [tokens, in], y is [tokens, out], both row-major and
  // contiguous. y is overwritten.
  virtual void forward(const float* x, int64_t tokens, float* y) const = 0;
  // The layer's weight as a dense float32 matrix [out, in] (reconstructed when compressed).
  virtual RowMatrix<float> dense_weight() const = 0;
  // Bytes the layer holds for its weights (what a compressed form saves).
  virtual uint64_t weight_bytes() const = 0;
  virtual std::string describe() const = 0;
};

// Dense float32 weights, [out, in] row-major; products through BLAS.
class DenseLinear final : public Linear {
 public:
  explicit DenseLinear(RowMatrix<float> weight);
  int64_t in_features() const override { return weight_.cols(); }
  int64_t out_features() const override { return weight_.rows(); }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override { return weight_; }
  uint64_t weight_bytes() const override { return static_cast<uint64_t>(weight_.size()) * sizeof(float); }
  std::string describe() const override;
  const RowMatrix<float>& weight() const { return weight_; }

 private:
  RowMatrix<float> weight_;
};

// Dense float32 weights borrowed from memory the layer does not own (a memory-mapped model file):
// nothing is copied, so a model larger than memory runs from the page cache. The bytes must outlive
// the layer.
class MappedLinear final : public Linear {
 public:
  // `weight` points at rows x cols floats, row-major, 4-byte aligned. `keep_alive` (may be null) owns
  // the bytes and is held as long as the layer lives.
  MappedLinear(const float* weight, int64_t rows, int64_t cols, std::shared_ptr<const void> keep_alive = nullptr);
  int64_t in_features() const override { return cols_; }
  int64_t out_features() const override { return rows_; }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override;
  uint64_t weight_bytes() const override { return static_cast<uint64_t>(rows_ * cols_) * sizeof(float); }
  std::string describe() const override;
  const float* data() const { return weight_; }

 private:
  const float* weight_;
  int64_t rows_, cols_;
  std::shared_ptr<const void> keep_alive_;
};

// y = x W^T for row-major x [tokens, in] and W [out, in], through cblas_sgemm / sgemv.
void matmul_wt(const float* x, int64_t tokens, const float* w, int64_t out, int64_t in, float* y);

}  // namespace strata::nn
