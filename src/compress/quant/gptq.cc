// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022): quantize one column at a time and push its
// rounding error onto the columns not yet quantized, weighted by the inverse Hessian, so that the
// layer's output on the calibration inputs moves as little as possible.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "compress/gptq_feedback.hpp"
#include "strata/compress/quant/quant.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::quant {

QuantizedMatrix gptq(const RowMatrix<float>& w, const Matrix<double>& h, const QuantSpec& spec,
                     const GptqOptions& options, std::string_view name) {
  const std::string what = "layer '" + std::string(name) + "'";
  check_spec(spec, what);
  check_weight(w, name);
  const int64_t rows = w.rows(), cols = w.cols();
  require(h.rows() == cols && h.cols() == cols, what, ": Hessian is [", h.rows(), ", ", h.cols(),
          "] for a weight with ", cols, " inputs");
  require(h.allFinite(), what, ": Hessian has a non-finite value");
  require(options.damp >= 0 && std::isfinite(options.damp), what, ": damp must be finite and >= 0, got ",
          options.damp);
  require(options.block >= 1, what, ": block must be >= 1, got ", options.block);

  Matrix<double> hess = h;
  Matrix<float> w0 = w;  // column-major: the loop walks columns
  for (int64_t j = 0; j < cols; ++j) {
    require(hess(j, j) >= 0, what, ": Hessian diagonal ", j, " is negative (", hess(j, j), ")");
    // An input that is always zero on the calibration data: its weights never reach the output.
    if (hess(j, j) == 0) {
      hess(j, j) = 1;
      w0.col(j).setZero();
    }
  }

  const int64_t g = spec.group_size(cols), ng = spec.groups(cols);
  const bool static_groups = options.act_order || g == cols;
  const int max_code = spec.max_code();
  std::vector<GroupParams> params(static_cast<size_t>(rows * ng));
  // The diagonal of H in the original column order, for a weighted clipping search.
  std::vector<float> importance;
  if (options.clip.enabled() && options.clip_weighted) {
    importance.resize(static_cast<size_t>(cols));
    for (int64_t j = 0; j < cols; ++j) importance[static_cast<size_t>(j)] = static_cast<float>(hess(j, j));
  }
  auto fit = [&](int64_t r, int64_t k, const float* first, int64_t n, int64_t stride) {
    try {
      params[static_cast<size_t>(r * ng + k)] =
          fit_group(first, n, stride, spec, options.clip, importance.empty() ? nullptr : importance.data() + k * g);
    } catch (const Error& e) {
      fail(what, ": row ", r, ", group ", k, ": ", e.what());
    }
  };
  if (static_groups) {
    // Rows in parallel: with a clipping search (80 candidate ranges a group) the fits are a sizeable
    // part of the work.
    const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
    parallel_for(rows, chunk, [&](int64_t r0, int64_t r1) {
      for (int64_t k = 0; k < ng; ++k) {
        const int64_t c0 = k * g, n = std::min(cols, c0 + g) - c0;
        for (int64_t r = r0; r < r1; ++r) fit(r, k, &w0(r, c0), n, rows);
      }
    });
  }

  // Column order: act-order takes the inputs with the largest mean square first, while most columns
  // are still free to absorb their error.
  std::vector<int64_t> perm(static_cast<size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  Matrix<double> hp;
  if (options.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return hess(a, a) > hess(b, b); });
    hp.resize(cols, cols);
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) hp(j, i) = hess(perm[static_cast<size_t>(j)], perm[static_cast<size_t>(i)]);
  } else {
    hp = std::move(hess);
  }
  hp.diagonal().array() += options.damp * hp.diagonal().mean();
  Matrix<float> u;
  try {
    u = detail::inverse_upper_factor(hp).cast<float>();
  } catch (const Error& e) {
    fail(what, ": GPTQ: ", e.what());
  }

  // Dynamic groups never straddle two blocks: their scale is fitted on columns that already hold
  // every update from earlier columns.
  const int64_t block = static_groups ? options.block : g * std::max<int64_t>(1, options.block / g);
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.spec = spec;
  q.codes.resize(static_cast<size_t>(rows * cols));
  // Rows never interact in GPTQ, so each chunk of rows runs the whole column loop on its own, lazy
  // updates included: one thread team for the layer instead of one per block alternating with
  // BLAS's own threads (which spin against each other on a busy machine and cost more than the
  // work). The per-chunk update is Eigen's single-threaded product; its size does not depend on the
  // thread count, so results do not either.
  constexpr int64_t kRowChunk = 32;
  parallel_for(rows, kRowChunk, [&](int64_t r0, int64_t r1) {
    const int64_t rc = r1 - r0;
    Matrix<float> wc(rc, cols);
    for (int64_t i = 0; i < cols; ++i) wc.col(i) = w0.col(perm[static_cast<size_t>(i)]).segment(r0, rc);
    Matrix<float> err(rc, block);
    for (int64_t i1 = 0; i1 < cols; i1 += block) {
      const int64_t nb = std::min(block, cols - i1);
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t col = i1 + i, orig = perm[static_cast<size_t>(col)], k = orig / g;
        if (!static_groups && orig % g == 0) {
          const int64_t n = std::min(cols, orig + g) - orig;
          for (int64_t r = 0; r < rc; ++r) fit(r0 + r, k, &wc(r, col), n, rc);
        }
        const float d = u(col, col);
        float* wcol = &wc(0, col);
        float* ecol = &err(0, i);
        for (int64_t r = 0; r < rc; ++r) {
          const GroupParams& p = params[static_cast<size_t>((r0 + r) * ng + k)];
          const int code = quantize_value(wcol[r], p, max_code);
          q.codes[static_cast<size_t>((r0 + r) * cols + orig)] = static_cast<uint8_t>(code);
          ecol[r] = (wcol[r] - dequantize_value(code, p)) / d;
        }
        detail::feedback_in_batch(wc, err, u, i1, i, nb);
      }
      detail::feedback_after_batch(wc, err, u, i1, nb);
    }
  });

  q.scales.resize(params.size());
  if (!spec.symmetric) q.zeros.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    q.scales[i] = f32_to_f16(params[i].scale);
    if (!spec.symmetric) q.zeros[i] = static_cast<uint8_t>(params[i].zero);
  }
  return q;
}

}  // namespace strata::compress::quant
