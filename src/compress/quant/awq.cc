// AWQ (Lin et al. 2023, mit-han-lab/llm-awq): inputs with large activations matter more to the
// output, so the weights they multiply are scaled up before rounding (a finer grid for them relative
// to the group's range); the input is divided by the same scales, which folds into whatever produces
// it, so the model computes the same function with no extra operation. The scale exponent is searched
// per group of layers that read one input, on the group's joint output error; a clipping search on
// each group's range follows.
#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "strata/compress/compressor.hpp"
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

Vector<float> to_float(std::span<const f16> s16) {
  Vector<float> s(static_cast<int64_t>(s16.size()));
  for (size_t j = 0; j < s16.size(); ++j) s[static_cast<int64_t>(j)] = f16_to_f32(s16[j]);
  return s;
}

void check_scales(std::span<const f16> scales, int64_t n, std::string_view what, std::string_view name) {
  require(static_cast<int64_t>(scales.size()) == n, "'", name, "': ", scales.size(), " AWQ scales for ", n, " ",
          what);
  for (size_t j = 0; j < scales.size(); ++j) {
    const float s = f16_to_f32(scales[j]);
    require(std::isfinite(s) && s > 0, "'", name, "': AWQ scale ", j, " is ", s, " (must be finite and > 0)");
  }
}

// RTN of W diag(s), dequantized and unscaled exactly as reconstruction does it.
RowMatrix<float> rtn_unscaled(const RowMatrix<float>& w, const Vector<float>& s, const QuantSpec& spec,
                              std::string_view name) {
  const RowMatrix<float> scaled = w * s.asDiagonal();
  return dequantize(rtn(scaled, spec, name)) * s.cwiseInverse().asDiagonal();
}

}  // namespace

std::vector<f16> awq_channel_scales(const Vector<double>& mean_abs, double alpha) {
  const int64_t cols = mean_abs.size();
  require(cols > 0, "AWQ: no channels");
  // A dead channel would get scale 0; the floor keeps every scale positive and, with the
  // normalisation below, inside f16's range (max/min <= 1e6^alpha).
  const double top = mean_abs.maxCoeff();
  const double floor = top > 0 ? top * 1e-6 : 1.0;
  Vector<double> sd(cols);
  for (int64_t j = 0; j < cols; ++j) sd[j] = std::pow(std::max(mean_abs[j], floor), alpha);
  sd /= std::sqrt(sd.maxCoeff() * sd.minCoeff());
  std::vector<f16> s16(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) s16[static_cast<size_t>(j)] = f32_to_f16(static_cast<float>(sd[j]));
  return s16;
}

AwqScales awq_search_scales(std::span<const RowMatrix<float>* const> ws, const Vector<double>& mean_abs,
                            const Matrix<double>* h, const Vector<double>* mean_sq, const QuantSpec& spec,
                            const AwqOptions& options, std::string_view name) {
  const std::string what = "'" + std::string(name) + "'";
  check_spec(spec, what);
  require(!ws.empty(), what, ": AWQ needs at least one weight");
  const int64_t cols = mean_abs.size();
  for (size_t i = 0; i < ws.size(); ++i) {
    require(ws[i] != nullptr, what, ": weight ", i, " is null");
    check_weight(*ws[i], std::string(name) + "[" + std::to_string(i) + "]");
    require(ws[i]->cols() == cols, what, ": weight ", i, " has ", ws[i]->cols(), " inputs, mean_abs ", cols);
  }
  require(mean_abs.allFinite() && (mean_abs.array() >= 0).all(), what, ": mean_abs must be finite and >= 0");
  require(options.grid >= 1, what, ": AWQ grid must be >= 1, got ", options.grid);
  Matrix<float> hf;
  Vector<double> diag;
  if (h != nullptr) {
    require(h->rows() == cols && h->cols() == cols, what, ": Hessian is [", h->rows(), ", ", h->cols(),
            "] for weights with ", cols, " inputs");
    require(h->allFinite(), what, ": Hessian has a non-finite value");
    hf = h->cast<float>();
  } else if (mean_sq != nullptr) {
    require(mean_sq->size() == cols, what, ": mean_sq has ", mean_sq->size(), " entries for ", cols, " inputs");
    require(mean_sq->allFinite() && (mean_sq->array() >= 0).all(), what, ": mean_sq must be finite and >= 0");
    diag = *mean_sq;
  } else {
    diag = mean_abs.array().square();
  }
  auto objective = [&](const RowMatrix<float>& d) { return h ? weighted_trace(d, hf) : diagonal_weighted(d, diag); };
  auto relative = [](double num, double denom) { return denom > 0 ? std::max(num, 0.0) / denom : 0.0; };

  // Every matrix shares the scales, so a sample of each one's rows ranks the candidates almost as the
  // whole matrices do, at a fraction of the R C^2 cost per candidate.
  std::vector<RowMatrix<float>> samples;
  bool sampled = false;
  for (const RowMatrix<float>* w : ws) {
    const int64_t n_rows = w->rows();
    const int64_t n = options.search_rows > 0 ? std::min(options.search_rows, n_rows) : n_rows;
    sampled = sampled || n < n_rows;
    RowMatrix<float> sample(n, cols);
    for (int64_t i = 0; i < n; ++i) sample.row(i) = w->row(i * n_rows / n);
    samples.push_back(std::move(sample));
  }
  auto joint = [&](const std::vector<const RowMatrix<float>*>& mats, const Vector<float>& s) {
    double num = 0, denom = 0;
    for (const RowMatrix<float>* m : mats) {
      num += objective(*m - rtn_unscaled(*m, s, spec, name));
      denom += objective(*m);
    }
    return relative(num, denom);
  };
  std::vector<const RowMatrix<float>*> sample_ptrs, full_ptrs(ws.begin(), ws.end());
  for (const auto& m : samples) sample_ptrs.push_back(&m);

  AwqScales best;
  double best_search = 0;
  for (int i = 0; i < options.grid; ++i) {
    const double alpha = static_cast<double>(i) / options.grid;
    std::vector<f16> s16 = awq_channel_scales(mean_abs, alpha);
    const double e = joint(sample_ptrs, to_float(s16));
    if (i == 0 || e < best_search) {
      best_search = e;
      best.alpha = alpha;
      best.scales = std::move(s16);
    }
  }
  best.error = sampled ? joint(full_ptrs, to_float(best.scales)) : best_search;
  if (best.alpha != 0 && sampled) {
    std::vector<f16> plain = awq_channel_scales(mean_abs, 0);
    const double e = joint(full_ptrs, to_float(plain));
    if (e <= best.error) {
      best.scales = std::move(plain);
      best.alpha = 0;
      best.error = e;
    }
  }
  return best;
}

RowMatrix<float> scale_columns(const RowMatrix<float>& w, std::span<const f16> scales, std::string_view name) {
  check_scales(scales, w.cols(), "inputs", name);
  return w * to_float(scales).asDiagonal();
}

QuantizedMatrix awq_quantize(const RowMatrix<float>& w, std::span<const f16> scales, const Matrix<double>& h,
                             const QuantSpec& spec, const AwqClip* clip, std::string_view name) {
  const std::string what = "layer '" + std::string(name) + "'";
  check_spec(spec, what);
  check_weight(w, name);
  const int64_t rows = w.rows(), cols = w.cols();
  const RowMatrix<float> ws = scale_columns(w, scales, name);
  if (clip == nullptr) return rtn(ws, spec, name);
  require(clip->grid >= 1, what, ": AWQ clip grid must be >= 1, got ", clip->grid);
  require(std::isfinite(clip->max_shrink) && clip->max_shrink > 0 && clip->max_shrink < 1, what,
          ": AWQ clip max_shrink must be in (0, 1), got ", clip->max_shrink);
  require(h.rows() == cols && h.cols() == cols, what, ": Hessian is [", h.rows(), ", ", h.cols(),
          "] for a weight with ", cols, " inputs");
  require(h.allFinite(), what, ": Hessian has a non-finite value");
  const int candidates = std::max(1, static_cast<int>(std::floor(clip->max_shrink * clip->grid + 1e-9)));
  // The scaled layer reads x / s: its second moment is diag(s)^-1 H diag(s)^-1.
  const Vector<double> inv = to_float(scales).cast<double>().cwiseInverse();
  const int64_t g = spec.group_size(cols), ng = spec.groups(cols);
  const int max_code = spec.max_code();

  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.spec = spec;
  q.codes.resize(static_cast<size_t>(rows * cols));
  q.scales.resize(static_cast<size_t>(rows * ng));
  if (!spec.symmetric) q.zeros.resize(static_cast<size_t>(rows * ng));
  for (int64_t k = 0; k < ng; ++k) {
    const int64_t c0 = k * g, n = std::min(cols, c0 + g) - c0;
    const Matrix<double> hg = inv.segment(c0, n).asDiagonal() * h.block(c0, c0, n, n) * inv.segment(c0, n).asDiagonal();
    // Rows in chunks: each candidate's errors d^T H_gg d for a chunk are one product D H_gg.
    constexpr int64_t kChunk = 64;
    parallel_for(rows, kChunk, [&](int64_t r0, int64_t r1) {
      const int64_t nr = r1 - r0;
      RowMatrix<double> d(nr, n);
      std::vector<float> top(static_cast<size_t>(nr), 0.0f), clamped(static_cast<size_t>(n));
      std::vector<double> best_err(static_cast<size_t>(nr), 0.0);
      std::vector<int> best_i(static_cast<size_t>(nr), 0);
      std::vector<GroupParams> params(static_cast<size_t>(nr)), best_p(static_cast<size_t>(nr));
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t j = 0; j < n; ++j) top[static_cast<size_t>(r)] = std::max(top[static_cast<size_t>(r)], std::abs(ws(r0 + r, c0 + j)));
      auto bound = [&](int64_t r, int i) {
        return top[static_cast<size_t>(r)] * static_cast<float>(1.0 - static_cast<double>(i) / clip->grid);
      };
      for (int i = 0; i < candidates; ++i) {
        for (int64_t r = 0; r < nr; ++r) {
          const float* x = &ws(r0 + r, c0);
          const float m = bound(r, i);
          for (int64_t j = 0; j < n; ++j) clamped[static_cast<size_t>(j)] = std::clamp(x[j], -m, m);
          GroupParams& p = params[static_cast<size_t>(r)];
          try {
            p = fit_group(clamped.data(), n, 1, spec);
          } catch (const Error& e) {
            fail(what, ": row ", r0 + r, ", group ", k, ": ", e.what());
          }
          for (int64_t j = 0; j < n; ++j)
            d(r, j) = static_cast<double>(x[j]) -
                      dequantize_value(quantize_value(clamped[static_cast<size_t>(j)], p, max_code), p);
        }
        const Vector<double> err = (d * hg).cwiseProduct(d).rowwise().sum();
        for (int64_t r = 0; r < nr; ++r)
          if (i == 0 || err[r] < best_err[static_cast<size_t>(r)]) {
            best_err[static_cast<size_t>(r)] = err[r];
            best_i[static_cast<size_t>(r)] = i;
            best_p[static_cast<size_t>(r)] = params[static_cast<size_t>(r)];
          }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const float m = bound(r, best_i[static_cast<size_t>(r)]);
        const GroupParams& p = best_p[static_cast<size_t>(r)];
        for (int64_t j = 0; j < n; ++j)
          q.codes[static_cast<size_t>((r0 + r) * cols + c0 + j)] =
              static_cast<uint8_t>(quantize_value(std::clamp(ws(r0 + r, c0 + j), -m, m), p, max_code));
        q.scales[static_cast<size_t>((r0 + r) * ng + k)] = f32_to_f16(p.scale);
        if (!spec.symmetric) q.zeros[static_cast<size_t>((r0 + r) * ng + k)] = static_cast<uint8_t>(p.zero);
      }
    });
  }
  return q;
}

AwqGroupResult awq_group(std::span<const RowMatrix<float>* const> ws, const Vector<double>& mean_abs,
                         const Matrix<double>& h, const QuantSpec& spec, const AwqOptions& options,
                         const AwqClip* clip, std::string_view name) {
  AwqGroupResult out;
  out.scales = awq_search_scales(ws, mean_abs, &h, nullptr, spec, options, name);
  for (size_t i = 0; i < ws.size(); ++i)
    out.q.push_back(awq_quantize(*ws[i], out.scales.scales, h, spec, clip, std::string(name) + "[" + std::to_string(i) + "]"));
  return out;
}

void fold_scales_into_norm(Vector<float>& norm_weight, std::span<const f16> scales, std::string_view name) {
  check_scales(scales, norm_weight.size(), "norm weights", name);
  norm_weight.array() /= to_float(scales).array();
}

void fold_scales_into_rows(RowMatrix<float>& previous, std::span<const f16> scales, std::string_view name) {
  check_scales(scales, previous.rows(), "outputs", name);
  previous = to_float(scales).cwiseInverse().asDiagonal() * previous;
}

AwqResult awq(const RowMatrix<float>& w, const Vector<double>& mean_abs, const Matrix<double>* h,
              const Vector<double>* mean_sq, const QuantSpec& spec, const AwqOptions& options, std::string_view name,
              const AwqClip* clip) {
  const std::string what = "layer '" + std::string(name) + "'";
  check_weight(w, name);
  require(mean_abs.size() == w.cols(), what, ": mean_abs has ", mean_abs.size(), " entries for ", w.cols(), " inputs");
  const RowMatrix<float>* one[] = {&w};
  const AwqScales s = awq_search_scales(one, mean_abs, h, mean_sq, spec, options, name);
  AwqResult out;
  out.alpha = s.alpha;
  if (clip == nullptr) {
    out.q = rtn(scale_columns(w, s.scales, name), spec, name);
    out.error = s.error;
  } else {
    // The clipping search needs the input's second moment; per-channel statistics give its diagonal.
    Matrix<double> diag_h;
    if (h == nullptr) {
      const Vector<double> d = mean_sq != nullptr ? *mean_sq : Vector<double>(mean_abs.array().square());
      diag_h = d.asDiagonal();
    }
    const Matrix<double>& hm = h != nullptr ? *h : diag_h;
    out.q = awq_quantize(w, s.scales, hm, spec, clip, name);
    const RowMatrix<float> back = dequantize(out.q) * to_float(s.scales).cwiseInverse().asDiagonal();
    out.error = output_error(w, back, &hm);
  }
  out.q.channel_scales = s.scales;
  return out;
}

}  // namespace strata::compress::quant
