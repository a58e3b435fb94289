#include "strata/compress/compressor.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <sstream>

#include "strata/core/parallel.hpp"

namespace strata::compress {

uint64_t Compressed::stored_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  return total;
}

OutputErrorMeter::OutputErrorMeter(const RowMatrix<float>& w, const Matrix<double>* hessian) : w_(w) {
  if (hessian != nullptr) {
    require(hessian->rows() == w.cols() && hessian->cols() == w.cols(), "output_error: Hessian is [",
            hessian->rows(), ", ", hessian->cols(), "] for a layer with ", w.cols(), " inputs");
    weighted_ = true;
    // H = P L L^T P^T, so tr(d H d^T) = ||(d P) L||^2: a triangular product, half the work of d H,
    // and a sum of squares with no cancellation. The plain factorization when H is positive definite
    // (the usual case); pivoted, with its numerical rank, when it is only semidefinite.
    const auto n = static_cast<lapack_int>(w.cols());
    Matrix<double> a = *hessian;
    lapack_int rank = n;
    order_.resize(static_cast<size_t>(n));
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, a.data(), n) == 0) {
      for (lapack_int k = 0; k < n; ++k) order_[static_cast<size_t>(k)] = k;
    } else {
      a = *hessian;
      std::vector<lapack_int> piv(static_cast<size_t>(n));
      const lapack_int info = LAPACKE_dpstrf(LAPACK_COL_MAJOR, 'L', n, a.data(), n, piv.data(), &rank, -1.0);
      require(info >= 0, "output_error: the Hessian's factorization failed (LAPACK info ", info, ")");
      for (lapack_int k = 0; k < n; ++k) order_[static_cast<size_t>(k)] = piv[static_cast<size_t>(k)] - 1;
    }
    l_ = RowMatrix<float>::Zero(n, n);
    for (lapack_int j = 0; j < rank; ++j)
      for (lapack_int i = j; i < n; ++i) l_(i, j) = static_cast<float>(a(i, j));
  }
  denominator_ = quadratic(w);
}

double OutputErrorMeter::quadratic(const RowMatrix<float>& d) const {
  if (!weighted_) return d.cast<double>().squaredNorm();
  const int64_t rows = d.rows(), cols = d.cols();
  RowMatrix<float> e(rows, cols);
  parallel_for(rows, 64, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i)
      for (int64_t k = 0; k < cols; ++k) e(i, k) = d(i, order_[static_cast<size_t>(k)]);
  });
  cblas_strmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, static_cast<int>(rows),
              static_cast<int>(cols), 1.0f, l_.data(), static_cast<int>(cols), e.data(), static_cast<int>(cols));
  return parallel_reduce(
      rows, 64, 0.0,
      [&](int64_t b, int64_t end) {
        double acc = 0;
        for (int64_t i = b; i < end; ++i)
          for (int64_t j = 0; j < cols; ++j) acc += static_cast<double>(e(i, j)) * static_cast<double>(e(i, j));
        return acc;
      },
      [](double a, double b) { return a + b; });
}

double OutputErrorMeter::operator()(const RowMatrix<float>& w_hat) const {
  require(w_.rows() == w_hat.rows() && w_.cols() == w_hat.cols(), "output_error: shapes differ, [", w_.rows(),
          ", ", w_.cols(), "] vs [", w_hat.rows(), ", ", w_hat.cols(), "]");
  if (denominator_ <= 0) return 0.0;
  const RowMatrix<float> dw = w_ - w_hat;
  return std::max(quadratic(dw), 0.0) / denominator_;
}

double output_error(const RowMatrix<float>& w, const RowMatrix<float>& w_hat, const Matrix<double>* hessian) {
  require(w.rows() == w_hat.rows() && w.cols() == w_hat.cols(), "output_error: shapes differ, [", w.rows(), ", ",
          w.cols(), "] vs [", w_hat.rows(), ", ", w_hat.cols(), "]");
  return OutputErrorMeter(w, hessian)(w_hat);
}

void check_shape(const Layer& layer) {
  require(layer.rows() > 0 && layer.cols() > 0, "layer '", layer.name, "': no weight shape (", layer.rows(), " x ",
          layer.cols(), ")");
}

std::vector<Option> WeightCompressor::options_for(const Layer& layer, const LayerCalibration& calib,
                                                  const std::vector<std::string>& knobs) const {
  std::vector<Option> out;
  const OutputErrorMeter error(*layer.weight, calib.hessian);
  for (const auto& knob : knobs) {
    const Compressed c = apply(layer, calib, knob);
    out.push_back({knob, cost(layer, knob), error(reconstruct(c))});
  }
  return out;
}

std::shared_ptr<const nn::Linear> WeightCompressor::to_linear(const Compressed& c) const {
  return std::make_shared<nn::DenseLinear>(reconstruct(c));
}

std::shared_ptr<const nn::Embedding> WeightCompressor::to_embedding(const Compressed& c) const {
  return std::make_shared<nn::DenseEmbedding>(std::make_shared<const RowMatrix<float>>(reconstruct(c)));
}

std::pair<std::shared_ptr<const nn::Linear>, uint64_t> WeightCompressor::linear_sharing(
    std::shared_ptr<const Compressed> c) const {
  auto layer = to_linear(*c);
  const uint64_t bytes = layer->weight_bytes();
  return {std::move(layer), bytes};
}

std::pair<std::shared_ptr<const nn::Embedding>, uint64_t> WeightCompressor::embedding_sharing(
    std::shared_ptr<const Compressed> c) const {
  auto table = to_embedding(*c);
  const uint64_t bytes = table->bytes();
  return {std::move(table), bytes};
}

std::map<std::string, std::string> parse_knob(std::string_view knob) {
  std::map<std::string, std::string> kv;
  size_t pos = 0;
  while (pos <= knob.size()) {
    const size_t comma = std::min(knob.find(',', pos), knob.size());
    const std::string_view item = knob.substr(pos, comma - pos);
    if (!item.empty()) {
      const size_t eq = item.find('=');
      const std::string key(item.substr(0, eq));
      require(!key.empty(), "knob '", knob, "': empty key");
      require(!kv.count(key), "knob '", knob, "': '", key, "' given twice");
      kv[key] = eq == std::string_view::npos ? std::string() : std::string(item.substr(eq + 1));
    }
    pos = comma + 1;
  }
  return kv;
}

int64_t knob_int(const std::map<std::string, std::string>& kv, const std::string& key, std::string_view knob) {
  auto it = kv.find(key);
  require(it != kv.end(), "knob '", knob, "': missing '", key, "='");
  try {
    size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    require(used == it->second.size(), "");
    return v;
  } catch (const std::exception&) {
    fail("knob '", knob, "': '", key, "' must be an integer, got '", it->second, "'");
  }
}

double knob_double(const std::map<std::string, std::string>& kv, const std::string& key, std::string_view knob) {
  auto it = kv.find(key);
  require(it != kv.end(), "knob '", knob, "': missing '", key, "='");
  try {
    size_t used = 0;
    const double v = std::stod(it->second, &used);
    require(used == it->second.size(), "");
    return v;
  } catch (const std::exception&) {
    fail("knob '", knob, "': '", key, "' must be a number, got '", it->second, "'");
  }
}

}  // namespace strata::compress
