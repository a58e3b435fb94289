// SparseGPT (Frantar & Alistarh 2023, IST-DASLab/sparsegpt): prune column by column and push each
// column's error onto the columns not yet visited, the optimal brain surgeon update with the
// Cholesky factor of the inverse Hessian, in lazy blocks so that most of the work is one GEMM.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "strata/compress/prune/prune.hpp"
#include "strata/linalg/decompositions.hpp"

namespace strata::compress::prune {

SparseGptFactor sparsegpt_factor(const Matrix<double>& h, const SparseGptOptions& options, std::string_view name) {
  const int64_t n = h.rows();
  require(n > 0 && h.cols() == n, "layer '", name, "': Hessian must be square and non-empty, got [", h.rows(), ", ",
          h.cols(), "]");
  require(h.allFinite(), "layer '", name, "': Hessian has a non-finite entry");
  require(std::isfinite(options.damp) && options.damp >= 0, "layer '", name, "': SparseGPT damping must be >= 0, got ",
          options.damp);
  SparseGptFactor f;
  f.dead.assign(static_cast<size_t>(n), 0);
  Matrix<double> hd = h;
  for (int64_t j = 0; j < n; ++j) {
    require(hd(j, j) >= 0, "layer '", name, "': Hessian has a negative diagonal entry ", hd(j, j), " at ", j);
    if (hd(j, j) == 0) {
      // A channel that was always zero: its weights cannot matter, and a unit diagonal keeps the
      // factorisation defined without coupling it to the other channels.
      f.dead[static_cast<size_t>(j)] = 1;
      hd.row(j).setZero();
      hd.col(j).setZero();
      hd(j, j) = 1;
    }
  }
  f.damp = options.damp * hd.diagonal().mean();
  hd.diagonal().array() += f.damp;
  // The upper factor U of H^-1 (H^-1 = U^T U) is the inverse of V in H = V V^T, V upper triangular;
  // V is the Cholesky factor of H with rows and columns reversed. One factorisation and one
  // triangular inverse instead of inverting H and factoring again.
  linalg::CholeskyResult<double> chol;
  try {
    chol = linalg::cholesky<double>(hd.reverse());
  } catch (const Error& e) {
    fail("layer '", name, "': SparseGPT: ", e.what());
  }
  const Matrix<double> v = chol.L.reverse();
  f.u = linalg::triangular_inverse<double>(v, linalg::Triangle::upper);
  return f;
}

Pruned sparsegpt(const RowMatrix<float>& w, const SparseGptFactor& factor, const Pattern& pattern,
                 const SparseGptOptions& options, std::string_view name) {
  detail::check_weight(w, name);
  const int64_t rows = w.rows(), n = w.cols();
  require(factor.u.rows() == n && factor.u.cols() == n && factor.dead.size() == static_cast<size_t>(n), "layer '",
          name, "': weight has ", n, " inputs, the Hessian factor is [", factor.u.rows(), ", ", factor.u.cols(), "]");
  require(options.block >= 1, "layer '", name, "': SparseGPT block must be >= 1, got ", options.block);
  const int64_t drop = pattern.pruned_per_row(n);
  // N:M groups must not straddle two blocks.
  const int64_t m = pattern.m;
  const int64_t block = pattern.semi_structured() ? std::max<int64_t>(m, options.block / m * m) : options.block;
  const int64_t n_blocks = (n + block - 1) / block;

  const RowMatrix<double>& u = factor.u;
  const Vector<double> d = u.diagonal();
  RowMatrix<double> wd = w.cast<double>();
  for (int64_t j = 0; j < n; ++j)
    if (factor.dead[static_cast<size_t>(j)]) wd.col(j).setZero();

  const bool per_row = !pattern.semi_structured() && options.mask == SparseGptMask::row;
  const bool per_block = !pattern.semi_structured() && options.mask == SparseGptMask::block;
  // The per-row rule: how many weights each row loses in each block, from ranking the whole row by
  // w^2 / U_jj^2 once, so that every row loses exactly `drop`; which weights of a block go is still
  // decided when the block is reached, on the weights as earlier updates left them.
  Eigen::Matrix<int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> quota;
  if (per_row) {
    quota.resize(rows, n_blocks);
    std::vector<double> s(static_cast<size_t>(n));
    std::vector<uint8_t> keep(static_cast<size_t>(n));
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < n; ++j) s[static_cast<size_t>(j)] = wd(r, j) * wd(r, j) / (d[j] * d[j]);
      detail::prune_lowest(s.data(), n, drop, keep.data(), order.data());
      for (int64_t b = 0; b < n_blocks; ++b) {
        int64_t q = 0;
        for (int64_t j = b * block; j < std::min(n, (b + 1) * block); ++j) q += keep[static_cast<size_t>(j)] == 0;
        quota(r, b) = q;
      }
    }
  }

  // The paper's rule: block b loses its share of the layer's total in proportion to its width, chosen
  // across all rows at once. Running floors make the shares add up to exactly rows * drop.
  const int64_t total = rows * drop;
  std::vector<double> block_scores;
  std::vector<uint8_t> block_keep;
  std::vector<int64_t> block_order;
  if (per_block) {
    block_scores.resize(static_cast<size_t>(rows * block));
    block_keep.resize(block_scores.size());
    block_order.resize(block_scores.size());
  }

  Mask mask = Mask::Ones(rows, n);
  RowMatrix<double> err(rows, block);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t i1 = b * block, i2 = std::min(n, i1 + block), count = i2 - i1;
    if (per_block) {
      // Scores row-major over the block, so that ties prune the lower row, then the lower column.
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < count; ++j) {
          const double x = wd(r, i1 + j);
          block_scores[static_cast<size_t>(r * count + j)] = x * x / (d[i1 + j] * d[i1 + j]);
        }
      const int64_t lose = total * i2 / n - total * i1 / n;
      detail::prune_lowest(block_scores.data(), rows * count, lose, block_keep.data(), block_order.data());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < count; ++j) mask(r, i1 + j) = block_keep[static_cast<size_t>(r * count + j)];
    }
    // Rows are independent inside a block: each row picks its own mask and updates its own weights.
    // This part is O(rows * block^2), a small fraction of the GEMM below, so it stays on one thread
    // rather than alternating OpenMP and BLAS thread pools every block.
    std::vector<double> s(static_cast<size_t>(count));
    std::vector<int64_t> order(static_cast<size_t>(count));
    for (int64_t r = 0; r < rows; ++r) {
      double* wr = wd.data() + r * n + i1;
      uint8_t* mr = mask.data() + r * n + i1;
      double* er = err.data() + r * block;
      if (per_row) {
        for (int64_t j = 0; j < count; ++j) s[static_cast<size_t>(j)] = wr[j] * wr[j] / (d[i1 + j] * d[i1 + j]);
        detail::prune_lowest(s.data(), count, quota(r, b), mr, order.data());
      }
      for (int64_t i = 0; i < count; ++i) {
        if (pattern.semi_structured() && i % m == 0) {
          for (int64_t j = 0; j < m; ++j) s[static_cast<size_t>(j)] = wr[i + j] * wr[i + j] / (d[i1 + i + j] * d[i1 + i + j]);
          detail::prune_lowest(s.data(), m, pattern.n, mr + i, order.data());
        }
        const double wi = wr[i];
        const double q = mr[i] ? wi : 0.0;
        const double e = (wi - q) / d[i1 + i];
        wr[i] = q;
        er[i] = e;
        if (e == 0.0) continue;
        const double* ur = u.data() + (i1 + i) * n + i1;
        for (int64_t j = i + 1; j < count; ++j) wr[j] -= e * ur[j];
      }
    }
    if (i2 < n) {
      // W[:, i2:] -= Err U[i1:i2, i2:]: the deferred update of every later column, one GEMM.
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), static_cast<int>(n - i2),
                  static_cast<int>(count), -1.0, err.data(), static_cast<int>(block), u.data() + i1 * n + i2,
                  static_cast<int>(n), 1.0, wd.data() + i2, static_cast<int>(n));
    }
  }
  Pruned out{wd.cast<float>(), std::move(mask)};
  for (int64_t i = 0; i < out.weight.size(); ++i)
    if (!out.mask.data()[i]) out.weight.data()[i] = 0.0f;
  require(out.weight.allFinite(), "layer '", name, "': SparseGPT produced non-finite weights (ill-conditioned Hessian?)");
  return out;
}

Pruned sparsegpt(const RowMatrix<float>& w, const Matrix<double>& h, const Pattern& pattern,
                 const SparseGptOptions& options, std::string_view name) {
  require(h.rows() == w.cols() && h.cols() == w.cols(), "layer '", name, "': Hessian is [", h.rows(), ", ", h.cols(),
          "] for a weight with ", w.cols(), " inputs");
  detail::check_weight(w, name);
  return sparsegpt(w, sparsegpt_factor(h, options, name), pattern, options, name);
}

}  // namespace strata::compress::prune
