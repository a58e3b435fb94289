// Activation-aware scaling in the style of AWQ (Lin et al. 2023): inputs with large activations
// matter more to the output, so their weights are scaled up before rounding (a finer grid for
// them relative to the group's range) and the scale is undone after dequantization.
#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "strata/compress/quant/quant.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::quant {

namespace {

// tr(D H D^T) for D [rows, cols] row-major and symmetric H [cols, cols], through sgemm. Single
// precision is ample for ranking candidates; the error the adapter reports is recomputed in double.
double weighted_trace(const RowMatrix<float>& d, const Matrix<float>& h) {
  RowMatrix<float> dh(d.rows(), d.cols());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(d.rows()), static_cast<int>(d.cols()),
              static_cast<int>(d.cols()), 1.0f, d.data(), static_cast<int>(d.cols()), h.data(),
              static_cast<int>(h.rows()), 0.0f, dh.data(), static_cast<int>(dh.cols()));
  return (dh.cast<double>().array() * d.cast<double>().array()).sum();
}

double diagonal_weighted(const RowMatrix<float>& d, const Vector<double>& weight) {
  return (d.cast<double>().array().square().colwise().sum().transpose() * weight.array()).sum();
}

}  // namespace

AwqResult awq(const RowMatrix<float>& w, const Vector<double>& mean_abs, const Matrix<double>* h,
              const Vector<double>* mean_sq, const QuantSpec& spec, const AwqOptions& options, std::string_view name) {
  const std::string what = "layer '" + std::string(name) + "'";
  check_spec(spec, what);
  check_weight(w, name);
  const int64_t cols = w.cols();
  require(mean_abs.size() == cols, what, ": mean_abs has ", mean_abs.size(), " entries for ", cols, " inputs");
  require(mean_abs.allFinite() && (mean_abs.array() >= 0).all(), what, ": mean_abs must be finite and >= 0");
  require(options.grid >= 1, what, ": AWQ grid must be >= 1, got ", options.grid);
  Matrix<float> hf;
  Vector<double> diag;
  if (h != nullptr) {
    require(h->rows() == cols && h->cols() == cols, what, ": Hessian is [", h->rows(), ", ", h->cols(),
            "] for a weight with ", cols, " inputs");
    require(h->allFinite(), what, ": Hessian has a non-finite value");
    hf = h->cast<float>();
  } else if (mean_sq != nullptr) {
    require(mean_sq->size() == cols, what, ": mean_sq has ", mean_sq->size(), " entries for ", cols, " inputs");
    require(mean_sq->allFinite() && (mean_sq->array() >= 0).all(), what, ": mean_sq must be finite and >= 0");
    diag = *mean_sq;
  } else {
    diag = mean_abs.array().square();
  }
  // Unnormalised objective of a set of weight rows (or of their error).
  auto objective = [&](const RowMatrix<float>& d) { return h ? weighted_trace(d, hf) : diagonal_weighted(d, diag); };

  const int64_t n_rows = w.rows();
  const int64_t n_search = options.search_rows > 0 ? std::min(options.search_rows, n_rows) : n_rows;
  RowMatrix<float> w_search(n_search, cols);
  for (int64_t i = 0; i < n_search; ++i) w_search.row(i) = w.row(i * n_rows / n_search);
  const double search_denom = objective(w_search);

  // A dead channel would get scale 0; a floor keeps every scale positive and, with the
  // normalisation below, inside f16's range (max/min <= 1e6^alpha).
  const double top = mean_abs.maxCoeff();
  const double floor = top > 0 ? top * 1e-6 : 1.0;
  auto channel_scales = [&](double alpha) {
    Vector<double> sd(cols);
    for (int64_t j = 0; j < cols; ++j) sd[j] = std::pow(std::max(mean_abs[j], floor), alpha);
    sd /= std::sqrt(sd.maxCoeff() * sd.minCoeff());
    std::vector<f16> s16(static_cast<size_t>(cols));
    for (int64_t j = 0; j < cols; ++j) s16[static_cast<size_t>(j)] = f32_to_f16(static_cast<float>(sd[j]));
    return s16;
  };
  // RTN of W diag(s), dequantized and unscaled exactly as reconstruction does it.
  auto quantize = [&](const RowMatrix<float>& m, const std::vector<f16>& s16) {
    Vector<float> s(cols);
    for (int64_t j = 0; j < cols; ++j) s[j] = f16_to_f32(s16[static_cast<size_t>(j)]);
    const RowMatrix<float> scaled = m * s.asDiagonal();
    QuantizedMatrix q = rtn(scaled, spec, name);
    q.channel_scales = s16;
    return q;
  };
  auto relative = [](double num, double denom) { return denom > 0 ? std::max(num, 0.0) / denom : 0.0; };

  double best_alpha = 0, best_search = 0;
  for (int i = 0; i < options.grid; ++i) {
    const double alpha = static_cast<double>(i) / options.grid;
    const QuantizedMatrix q = quantize(w_search, channel_scales(alpha));
    const double e = relative(objective(w_search - dequantize(q)), search_denom);
    if (i == 0 || e < best_search) {
      best_search = e;
      best_alpha = alpha;
    }
  }
  const double denom = n_search == n_rows ? search_denom : objective(w);
  AwqResult best;
  best.alpha = best_alpha;
  best.q = quantize(w, channel_scales(best_alpha));
  best.error = relative(objective(w - dequantize(best.q)), denom);
  if (best_alpha != 0 && n_search < n_rows) {
    QuantizedMatrix plain = quantize(w, channel_scales(0));
    const double e = relative(objective(w - dequantize(plain)), denom);
    if (e <= best.error) {
      best.q = std::move(plain);
      best.alpha = 0;
      best.error = e;
    }
  }
  return best;
}

}  // namespace strata::compress::quant
