#pragma once
// The error-feedback steps GPTQ's column loop shares across its rounding rules (strata's integer
// groups in quant/gptq.cc, ggml's blocks in ggml/gptq.cc). Private to the library.
#include <cstdint>

#include "strata/core/eigen.hpp"
#include "strata/linalg/decompositions.hpp"

namespace strata::compress::detail {

// The upper triangular U with U^T U = A^-1 (A symmetric positive definite). The loop needs the
// rows of the Cholesky factor of the inverse; instead of inverting A and factoring again, factor the
// reversed matrix J A J = L L^T (J the reversal permutation): then A = (J L J)(J L J)^T with J L J
// upper triangular, and U = (J L J)^-1 = J L^-1 J. One Cholesky and one triangular inverse.
inline Matrix<double> inverse_upper_factor(const Matrix<double>& a) {
  const Matrix<double> reversed = a.reverse();
  const auto chol = linalg::cholesky(reversed);
  return linalg::triangular_inverse(chol.L, linalg::Triangle::lower).reverse();
}

// wc: the rows' weights [rc, cols] in loop order; err: [rc, batch], column i the scaled error
// (w - q) / U(col, col) of loop column i1 + i. The batch's later columns take column i's error now.
inline void feedback_in_batch(Matrix<float>& wc, const Matrix<float>& err, const Matrix<float>& u, int64_t i1,
                              int64_t i, int64_t nb) {
  const int64_t rc = wc.rows(), col = i1 + i;
  const float* ecol = &err(0, i);
  for (int64_t j = i + 1; j < nb; ++j) {
    const float uij = u(col, i1 + j);
    float* wj = &wc(0, i1 + j);
    for (int64_t r = 0; r < rc; ++r) wj[r] -= ecol[r] * uij;
  }
}

// After the batch of nb columns at i1: its accumulated error reaches the remaining columns in one
// product.
inline void feedback_after_batch(Matrix<float>& wc, const Matrix<float>& err, const Matrix<float>& u, int64_t i1,
                                 int64_t nb) {
  const int64_t rest = wc.cols() - i1 - nb;
  if (rest > 0) wc.rightCols(rest).noalias() -= err.leftCols(nb) * u.block(i1, i1 + nb, nb, rest);
}

}  // namespace strata::compress::detail
