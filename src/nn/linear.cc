#include "strata/nn/linear.hpp"

#include <cblas.h>

#include <cstdint>
#include <sstream>

namespace strata::nn {

void matmul_wt(const float* x, int64_t tokens, const float* w, int64_t out, int64_t in, float* y) {
  // Below this many multiply-adds, waking BLAS worker threads costs more than the product itself
  // (and their spinning competes with the caller's threads), so small products stay on this thread.
  constexpr int64_t kSmallProduct = int64_t{1} << 18;
  if (tokens * out * in < kSmallProduct) {
    using Map = Eigen::Map<const RowMatrix<float>>;
    Eigen::Map<RowMatrix<float>>(y, tokens, out).noalias() = Map(x, tokens, in) * Map(w, out, in).transpose();
    return;
  }
  if (tokens == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f, w,
                static_cast<int>(in), x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(out),
                static_cast<int>(in), 1.0f, x, static_cast<int>(in), w, static_cast<int>(in), 0.0f, y,
                static_cast<int>(out));
  }
}

DenseLinear::DenseLinear(RowMatrix<float> weight) : weight_(std::move(weight)) {
  require(weight_.rows() > 0 && weight_.cols() > 0, "DenseLinear: empty weight matrix");
}

void DenseLinear::forward(const float* x, int64_t tokens, float* y) const {
  matmul_wt(x, tokens, weight_.data(), weight_.rows(), weight_.cols(), y);
}

std::string DenseLinear::describe() const {
  std::ostringstream out;
  out << "dense f32 [" << weight_.rows() << ", " << weight_.cols() << "]";
  return out.str();
}

MappedLinear::MappedLinear(const float* weight, int64_t rows, int64_t cols, std::shared_ptr<const void> keep_alive)
    : weight_(weight), rows_(rows), cols_(cols), keep_alive_(std::move(keep_alive)) {
  require(weight != nullptr && rows > 0 && cols > 0, "MappedLinear: no weights, or an empty shape [", rows, ", ",
          cols, "]");
  require(reinterpret_cast<uintptr_t>(weight) % alignof(float) == 0, "MappedLinear: weights not 4-byte aligned");
}

void MappedLinear::forward(const float* x, int64_t tokens, float* y) const {
  matmul_wt(x, tokens, weight_, rows_, cols_, y);
}

RowMatrix<float> MappedLinear::dense_weight() const { return Eigen::Map<const RowMatrix<float>>(weight_, rows_, cols_); }

std::string MappedLinear::describe() const {
  std::ostringstream out;
  out << "mapped f32 [" << rows_ << ", " << cols_ << "]";
  return out.str();
}

}  // namespace strata::nn
