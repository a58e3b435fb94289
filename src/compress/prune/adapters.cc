// The registry's pruning compressors: thin adapters from WeightCompressor to the functions in
// prune.hpp. They differ only in how the mask (and, for SparseGPT, the kept weights) are chosen.
#include <cmath>

#include "strata/compress/prune/prune.hpp"
#include "strata/compress/registry.hpp"
#include "strata/nn/sparse_linear.hpp"

namespace strata::compress {

namespace prune {

namespace {

class PruneCompressor : public WeightCompressor {
 public:
  // One ladder, cheapest first: lower sparsity keeps more weights, so it costs more and loses less.
  std::vector<std::string> knobs(const Layer& layer) const override {
    return {"sparsity=0.7", "sparsity=0.6", "sparsity=0.5", "sparsity=0.4", "sparsity=0.3", "sparsity=0.2"};
  }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    check_shape(layer);
    const Setting s = parse(knob, layer.name);
    const int64_t kept = fits(layer, s.pattern);
    Cost c;
    c.bytes = static_cast<double>(stored_bytes(layer.rows(), layer.cols(), s));
    c.params = static_cast<double>(layer.rows() * kept);
    c.flops = 2.0 * c.params;
    return c;
  }

  Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const override {
    check_layer(layer);
    const Setting s = parse(knob, layer.name);
    fits(layer, s.pattern);
    detail::check_weight(*layer.weight, layer.name);
    return encode(prune(layer, calib, s), s, std::string(name()), std::string(knob));
  }

  RowMatrix<float> reconstruct(const Compressed& c) const override {
    require(c.method == name(), name(), ": cannot reconstruct a layer compressed by '", c.method, "'");
    return decode(c);
  }

  // The sparse form itself, not dense float32: a product then streams only the kept weights.
  std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const override {
    const Setting s = parse_setting(c.knob, c.method);
    const bool two_four = s.pattern.semi_structured() && s.pattern.n == 2 && s.pattern.m == 4;
    return std::make_shared<nn::SparseLinear>(reconstruct(c), s.values == ValueType::f16,
                                              two_four ? nn::SparseLinear::Layout::two_four
                                                       : nn::SparseLinear::Layout::automatic);
  }

 protected:
  virtual Pruned prune(const Layer& layer, const LayerCalibration& calib, const Setting& setting) const = 0;
  // Whether the knob may choose SparseGPT's mask rule (mask=block|row).
  virtual bool has_mask_rule() const { return false; }

  Setting parse(std::string_view knob, std::string_view layer) const {
    const Setting s = parse_setting(knob, layer);
    require(!s.mask_given || has_mask_rule(), "layer '", layer, "': knob '", knob, "': ", name(),
            " has no mask rule to choose (mask=block|row is prune.sparsegpt's)");
    return s;
  }

  static void check_layer(const Layer& layer) {
    require(layer.weight != nullptr, "layer '", layer.name, "': no weight");
  }
  // Kept weights per row; throws naming the layer when an N:M pattern does not divide its inputs.
  static int64_t fits(const Layer& layer, const Pattern& pattern) {
    try {
      return pattern.kept_per_row(layer.cols());
    } catch (const Error& e) {
      fail("layer '", layer.name, "': ", e.what());
    }
  }
};

class MagnitudeCompressor final : public PruneCompressor {
 public:
  std::string_view name() const override { return "prune.magnitude"; }
  std::string_view description() const override {
    return "zero the smallest |W_ij| of every output row (unstructured or N:M); values f16 + bitmask / 2-bit indices";
  }

 protected:
  Pruned prune(const Layer& layer, const LayerCalibration&, const Setting& s) const override {
    return magnitude(*layer.weight, s.pattern, layer.name);
  }
};

class WandaCompressor final : public PruneCompressor {
 public:
  std::string_view name() const override { return "prune.wanda"; }
  std::string_view description() const override {
    return "Wanda: zero the smallest |W_ij| * ||x_j|| of every output row (needs the input mean square or H)";
  }

 protected:
  Pruned prune(const Layer& layer, const LayerCalibration& calib, const Setting& s) const override {
    const Pattern& pattern = s.pattern;
    if (calib.mean_sq != nullptr) return wanda(*layer.weight, *calib.mean_sq, pattern, layer.name);
    // E[x_j^2] is the diagonal of H = X^T X / N.
    require(calib.hessian != nullptr, "layer '", layer.name,
            "': prune.wanda needs input statistics (mean_sq or the Hessian), none given");
    require(calib.hessian->rows() == layer.cols() && calib.hessian->cols() == layer.cols(), "layer '", layer.name,
            "': Hessian is [", calib.hessian->rows(), ", ", calib.hessian->cols(), "] for a weight with ",
            layer.cols(), " inputs");
    const Vector<double> ms = calib.hessian->diagonal();
    return wanda(*layer.weight, ms, pattern, layer.name);
  }
};

class SparseGptCompressor final : public PruneCompressor {
 public:
  std::string_view name() const override { return "prune.sparsegpt"; }
  std::string_view description() const override {
    return "SparseGPT: OBS weight update from the input Hessian, mask chosen per 128-column block across all rows "
           "(the paper's rule; mask=row: the same count in every row), 1% damping";
  }
  bool needs_hessian() const override { return true; }

  // Factors the Hessian once for every knob instead of once per knob.
  std::vector<Option> options_for(const Layer& layer, const LayerCalibration& calib,
                                  const std::vector<std::string>& knobs) const override {
    check_layer(layer);
    detail::check_weight(*layer.weight, layer.name);
    const SparseGptFactor f = factor(layer, calib);
    std::vector<Option> out;
    const OutputErrorMeter error(*layer.weight, calib.hessian);
    for (const auto& knob : knobs) {
      const Setting s = parse(knob, layer.name);
      fits(layer, s.pattern);
      const Compressed c =
          encode(sparsegpt(*layer.weight, f, s.pattern, options(s), layer.name), s, std::string(name()), knob);
      out.push_back({knob, cost(layer, knob), error(decode(c))});
    }
    return out;
  }

 protected:
  Pruned prune(const Layer& layer, const LayerCalibration& calib, const Setting& s) const override {
    return sparsegpt(*layer.weight, factor(layer, calib), s.pattern, options(s), layer.name);
  }
  bool has_mask_rule() const override { return true; }

 private:
  // The paper's mask rule unless the knob asks for mask=row.
  static SparseGptOptions options(const Setting& s) {
    SparseGptOptions o;
    o.mask = s.mask;
    return o;
  }

  static SparseGptFactor factor(const Layer& layer, const LayerCalibration& calib) {
    require(calib.hessian != nullptr, "layer '", layer.name,
            "': prune.sparsegpt needs the input Hessian (calibrate with Gram matrices)");
    require(calib.hessian->rows() == layer.cols() && calib.hessian->cols() == layer.cols(), "layer '", layer.name,
            "': Hessian is [", calib.hessian->rows(), ", ", calib.hessian->cols(), "] for a weight with ",
            layer.cols(), " inputs");
    return sparsegpt_factor(*calib.hessian, {}, layer.name);
  }
};

}  // namespace

std::unique_ptr<WeightCompressor> make_magnitude_compressor() { return std::make_unique<MagnitudeCompressor>(); }
std::unique_ptr<WeightCompressor> make_wanda_compressor() { return std::make_unique<WandaCompressor>(); }
std::unique_ptr<WeightCompressor> make_sparsegpt_compressor() { return std::make_unique<SparseGptCompressor>(); }

}  // namespace prune

void add_prune_compressors(Registry& registry) {
  registry.push_back(prune::make_magnitude_compressor());
  registry.push_back(prune::make_wanda_compressor());
  registry.push_back(prune::make_sparsegpt_compressor());
}

}  // namespace strata::compress
