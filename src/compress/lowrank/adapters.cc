// The registry's face of the low-rank family: knobs, exact costs, float32 factor storage, the error
// curve from one SVD, and a LowRankLinear for the engine.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "strata/compress/lowrank/lowrank.hpp"
#include "strata/compress/registry.hpp"
#include "strata/core/error.hpp"

namespace strata::compress {

namespace lowrank {
namespace {

constexpr double kKeepLadder[] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};

struct Setting {
  int64_t rank = 0;
  bool randomized = false;
  double alpha = 0.5;
};

Tensor to_tensor(const RowMatrix<float>& m) {
  Tensor t(DType::f32, Shape{m.rows(), m.cols()});
  std::memcpy(t.raw(), m.data(), static_cast<size_t>(m.size()) * sizeof(float));
  return t;
}

RowMatrix<float> from_tensor(const Tensor& t) {
  RowMatrix<float> m(t.dim(0), t.dim(1));
  std::memcpy(m.data(), t.raw(), static_cast<size_t>(m.size()) * sizeof(float));
  return m;
}

class LowRankCompressor final : public WeightCompressor {
 public:
  LowRankCompressor(Method method, CompressorOptions options) : method_(method), options_(options) {
    require(std::isfinite(options_.alpha) && options_.alpha >= 0, "lowrank: alpha must be finite and >= 0, got ",
            options_.alpha);
  }

  std::string_view name() const override {
    switch (method_) {
      case Method::svd: return "lowrank.svd";
      case Method::asvd: return "lowrank.asvd";
      case Method::svd_llm: return "lowrank.svdllm";
    }
    return "lowrank";
  }

  std::string_view description() const override {
    switch (method_) {
      case Method::svd:
        return "truncated SVD W ~ A B (float32 factors); optimal weight error, ignores the inputs";
      case Method::asvd:
        return "ASVD: SVD of W diag(E|x|)^alpha (alpha 0.5), activation-aware; needs mean |x| per input channel";
      case Method::svd_llm:
        return "SVD-LLM: SVD of W L with H = L L^T (Cholesky of X^T X / N); optimal output error, exact error "
               "curve from one SVD; needs the Hessian";
    }
    return "";
  }

  bool needs_hessian() const override { return method_ == Method::svd_llm; }

  std::vector<std::string> knobs(const Layer& layer) const override {
    check_shape(layer);
    std::vector<std::string> out;
    for (double keep : kKeepLadder) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "keep=%.1f%s", keep,
                    options_.solver.solver == Solver::randomized ? ",rsvd" : "");
      out.emplace_back(buf);
    }
    return out;
  }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    check_shape(layer);
    const Setting s = parse(layer, knob);
    const double params = static_cast<double>(s.rank) * static_cast<double>(layer.rows() + layer.cols());
    return {params * sizeof(float), params, 2 * params};
  }

  Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const override {
    check_layer(layer);
    const Setting s = parse(layer, knob);
    const Decomposition d = decompose(layer, calib, s);
    Factors f = in_layer(layer, [&] { return d.factors(s.rank); });
    Compressed c;
    c.method = std::string(name());
    c.knob = std::string(knob);
    c.rows = layer.rows();
    c.cols = layer.cols();
    c.tensors["a"] = to_tensor(f.a);
    c.tensors["b"] = to_tensor(f.b);
    c.meta["rank"] = s.rank;
    c.meta["solver"] = s.randomized ? "randomized" : "full";
    if (method_ == Method::asvd) c.meta["alpha"] = s.alpha;
    if (method_ == Method::svd_llm) c.meta["jitter"] = d.jitter;
    return c;
  }

  RowMatrix<float> reconstruct(const Compressed& c) const override {
    const Factors f = factors_of(c);
    return f.product();
  }

  std::vector<Option> options_for(const Layer& layer, const LayerCalibration& calib,
                                  const std::vector<std::string>& ks) const override {
    check_layer(layer);
    std::vector<Setting> settings;
    bool randomized = false;
    for (const auto& k : ks) {
      settings.push_back(parse(layer, k));
      randomized = randomized || settings.back().randomized;
    }
    const Vector<double> diag = activation_weights(calib);
    // A randomized SVD holds only the leading components of its own rank: no curve to read.
    if (randomized) {
      if (diag.size() == 0) return WeightCompressor::options_for(layer, calib, ks);
      std::vector<Option> out;
      for (const auto& k : ks) {
        const RowMatrix<float> back = reconstruct(apply(layer, calib, k));
        const RowMatrix<double> dw = (*layer.weight - back).cast<double>();
        const double num = (dw.array().square().colwise().sum().transpose() * diag.array()).sum();
        const double den =
            (layer.weight->cast<double>().array().square().colwise().sum().transpose() * diag.array()).sum();
        out.push_back({k, cost(layer, k), den > 0 ? num / den : 0.0});
      }
      return out;
    }
    Setting full;
    full.alpha = options_.alpha;
    const Decomposition d = decompose(layer, calib, full);
    const auto curve = in_layer(layer, [&] {
      return diag.size() > 0 ? error_curve_diagonal(d, *layer.weight, diag) : error_curve(d, *layer.weight, calib.hessian);
    });
    std::vector<Option> out;
    for (size_t i = 0; i < ks.size(); ++i)
      out.push_back({ks[i], cost(layer, ks[i]), curve[static_cast<size_t>(settings[i].rank)]});
    return out;
  }

  std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const override {
    Factors f = factors_of(c);
    return std::make_shared<LowRankLinear>(std::move(f.a), std::move(f.b));
  }

 private:
  // Runs f, prefixing any strata::Error with the compressor and the layer.
  template <class F>
  auto in_layer(const Layer& layer, F&& f) const -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      fail(name(), ": layer '", layer.name, "': ", e.what());
    }
  }

  // ASVD without a Hessian: the output error's diagonal proxy, weighted by E[x_j^2] (or E|x_j|^2), so
  // that its curve ranks truncations by what the activations see, as ASVD's search needs. Empty
  // otherwise (the exact output error with H, the weight error for the other methods without).
  Vector<double> activation_weights(const LayerCalibration& calib) const {
    if (method_ != Method::asvd || calib.hessian != nullptr) return {};
    if (calib.mean_sq != nullptr) return *calib.mean_sq;
    if (calib.mean_abs != nullptr) return calib.mean_abs->array().square();
    return {};
  }

  void check_layer(const Layer& layer) const {
    require(layer.weight != nullptr, name(), ": layer '", layer.name, "': no weight matrix");
    require(layer.rows() > 0 && layer.cols() > 0, name(), ": layer '", layer.name, "': weight is empty (",
            layer.rows(), " x ", layer.cols(), ")");
  }

  Setting parse(const Layer& layer, std::string_view knob) const {
    return in_layer(layer, [&] {
      const auto kv = parse_knob(knob);
      Setting s;
      s.alpha = options_.alpha;
      for (const auto& [key, value] : kv) {
        const bool known =
            key == "keep" || key == "rank" || key == "rsvd" || (key == "alpha" && method_ == Method::asvd);
        require(known, "knob '", knob, "': unknown setting '", key, "'; expected keep=F or rank=R, optionally rsvd",
                method_ == Method::asvd ? " and alpha=A" : "");
      }
      require(kv.count("keep") + kv.count("rank") == 1, "knob '", knob, "': give exactly one of keep=F or rank=R");
      if (kv.count("rsvd")) {
        require(kv.at("rsvd").empty(), "knob '", knob, "': rsvd takes no value");
        s.randomized = true;
      }
      if (kv.count("alpha")) {
        s.alpha = knob_double(kv, "alpha", knob);
        require(std::isfinite(s.alpha) && s.alpha >= 0, "knob '", knob, "': alpha must be finite and >= 0");
      }
      const int64_t k = std::min(layer.rows(), layer.cols());
      if (kv.count("keep")) {
        s.rank = rank_for_keep(layer.rows(), layer.cols(), knob_double(kv, "keep", knob));
      } else {
        s.rank = knob_int(kv, "rank", knob);
        require(s.rank >= 1 && s.rank <= k, "knob '", knob, "': rank must be in 1..", k, " for a [", layer.rows(),
                ", ", layer.cols(), "] layer");
      }
      return s;
    });
  }

  Decomposition decompose(const Layer& layer, const LayerCalibration& calib, const Setting& s) const {
    SolverOptions so = options_.solver;
    so.solver = s.randomized ? Solver::randomized : Solver::full;
    const RowMatrix<float>& w = *layer.weight;
    switch (method_) {
      case Method::svd:
        return in_layer(layer, [&] { return svd(w, so, s.rank); });
      case Method::asvd:
        require(calib.mean_abs != nullptr, name(), ": layer '", layer.name,
                "': needs mean |x| per input channel (LayerCalibration::mean_abs) from calibration");
        return in_layer(layer, [&] { return asvd(w, *calib.mean_abs, s.alpha, so, s.rank); });
      case Method::svd_llm:
        require(calib.hessian != nullptr, name(), ": layer '", layer.name,
                "': needs the Hessian H = X^T X / N of the layer's input (LayerCalibration::hessian); calibrate "
                "with Gram matrices");
        return in_layer(layer, [&] { return svd_llm(w, *calib.hessian, so, s.rank); });
    }
    fail(name(), ": unknown method");
  }

  Factors factors_of(const Compressed& c) const {
    require(c.method == name(), name(), ": cannot read a '", c.method, "' compressed layer");
    const auto a = c.tensors.find("a"), b = c.tensors.find("b");
    require(a != c.tensors.end() && b != c.tensors.end(), name(), ": compressed layer (knob '", c.knob,
            "') lacks tensor 'a' or 'b'");
    for (const auto* t : {&a->second, &b->second})
      require(t->dtype() == DType::f32 && t->rank() == 2, name(), ": factors must be float32 matrices, got ",
              dtype_name(t->dtype()), " ", t->shape().str());
    require(a->second.dim(0) == c.rows && b->second.dim(1) == c.cols && a->second.dim(1) == b->second.dim(0) &&
                a->second.dim(1) >= 1,
            name(), ": factors ", a->second.shape().str(), " x ", b->second.shape().str(), " do not make a [", c.rows,
            ", ", c.cols, "] matrix");
    return {from_tensor(a->second), from_tensor(b->second)};
  }

  Method method_;
  CompressorOptions options_;
};

}  // namespace

std::unique_ptr<WeightCompressor> make_compressor(Method method, const CompressorOptions& options) {
  return std::make_unique<LowRankCompressor>(method, options);
}

}  // namespace lowrank

void add_lowrank_compressors(Registry& registry) {
  registry.push_back(lowrank::make_compressor(lowrank::Method::svd));
  registry.push_back(lowrank::make_compressor(lowrank::Method::asvd));
  registry.push_back(lowrank::make_compressor(lowrank::Method::svd_llm));
}

}  // namespace strata::compress
