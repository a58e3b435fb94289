// The registry's structured pruning, per tensor: prune.channels keeps a dense sub-matrix of a layer's
// input channels (on ffn_down, FFN neuron pruning), prune.remove zeroes a layer (on attn_output or
// ffn_down, one half of block removal). The allocator then weighs these cuts against every other
// compressor, tensor by tensor.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "strata/compress/prune/prune.hpp"

namespace strata::compress::prune {

namespace {

// Keep fractions in eighths: fine enough for an allocator to trade, coarse enough that every step
// changes the kept count of any real layer.
constexpr double kKeepLadder[] = {0.25, 0.375, 0.5, 0.625, 0.75, 0.875};

// The same ridge as prune_ffn_neurons, so that prune.channels on ffn_down is its FFN pruning.
constexpr double kRefitDamp = NeuronPruningOptions{}.damp;

// knobs() and cost() read the shape only (compress::check_shape); apply() needs the weights.
void check_layer(const Layer& layer) { require(layer.weight != nullptr, "layer '", layer.name, "': no weight"); }

struct ChannelSetting {
  double keep = 1;
  ValueType values = ValueType::f16;
};

ChannelSetting parse_channels(std::string_view knob, std::string_view layer) {
  const auto kv = parse_knob(knob);
  for (const auto& [key, value] : kv)
    require(key == "keep" || key == "values", "layer '", layer, "': prune.channels knob '", knob, "': unknown key '",
            key, "' (expected keep=F, values=f16|f32)");
  ChannelSetting s;
  try {
    s.keep = knob_double(kv, "keep", knob);
  } catch (const Error& e) {
    fail("layer '", layer, "': prune.channels: ", e.what());
  }
  require(std::isfinite(s.keep) && s.keep > 0 && s.keep <= 1, "layer '", layer, "': prune.channels knob '", knob,
          "': keep must be in (0, 1], got ", s.keep);
  if (auto it = kv.find("values"); it != kv.end()) {
    require(it->second == "f16" || it->second == "f32", "layer '", layer, "': prune.channels knob '", knob,
            "': values must be f16 or f32, got '", it->second, "'");
    s.values = it->second == "f16" ? ValueType::f16 : ValueType::f32;
  }
  return s;
}

int64_t value_bytes(ValueType v) { return v == ValueType::f16 ? 2 : 4; }

class ChannelCompressor final : public WeightCompressor {
 public:
  std::string_view name() const override { return "prune.channels"; }
  std::string_view description() const override {
    return "structured: drop the input channels with the smallest ||W[:, j]|| * sqrt(E[x_j^2]) and refit the kept "
           "columns on H (damp 0.2); f16 sub-matrix + i32 channel indices; on ffn_down, FFN neuron pruning";
  }

  // Cheapest first; a fraction that keeps as many channels as the one before it (narrow layers) is
  // left out, since it would be the same option under another name.
  std::vector<std::string> knobs(const Layer& layer) const override {
    check_shape(layer);
    std::vector<std::string> out;
    int64_t prev = 0;
    for (double keep : kKeepLadder) {
      const int64_t k = kept_channels(layer.cols(), keep);
      if (k == prev) continue;
      prev = k;
      char buf[32];
      std::snprintf(buf, sizeof buf, "keep=%g", keep);
      out.emplace_back(buf);
    }
    return out;
  }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    check_shape(layer);
    const ChannelSetting s = parse_channels(knob, layer.name);
    const auto k = static_cast<double>(kept(layer, s));
    const double params = k * static_cast<double>(layer.rows());
    return {params * static_cast<double>(value_bytes(s.values)) + k * sizeof(int32_t), params, 2 * params};
  }

  Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const override {
    check_layer(layer);
    const ChannelSetting s = parse_channels(knob, layer.name);
    const int64_t k = kept(layer, s);
    const Vector<double>* mean_sq = calib.mean_sq;
    Vector<double> diag;
    if (mean_sq == nullptr && calib.hessian != nullptr) {
      require(calib.hessian->rows() == layer.cols() && calib.hessian->cols() == layer.cols(), "layer '", layer.name,
              "': Hessian is [", calib.hessian->rows(), ", ", calib.hessian->cols(), "] for a weight with ",
              layer.cols(), " inputs");
      diag = calib.hessian->diagonal();  // E[x_j^2]
      mean_sq = &diag;
    }
    ChannelPruned p = prune_input_channels(*layer.weight, k, mean_sq, calib.hessian, kRefitDamp, layer.name);

    Compressed c;
    c.method = std::string(name());
    c.knob = std::string(knob);
    c.rows = layer.rows();
    c.cols = layer.cols();
    Tensor weight(s.values == ValueType::f16 ? DType::f16 : DType::f32, Shape{c.rows, k});
    if (s.values == ValueType::f16)
      convert_f32_to_f16(p.weight.data(), reinterpret_cast<f16*>(weight.raw()), static_cast<uint64_t>(p.weight.size()));
    else
      std::memcpy(weight.raw(), p.weight.data(), static_cast<size_t>(p.weight.size()) * sizeof(float));
    Tensor channels(DType::i32, Shape{k});
    auto* idx = reinterpret_cast<int32_t*>(channels.raw());
    for (int64_t i = 0; i < k; ++i) idx[i] = static_cast<int32_t>(p.kept[static_cast<size_t>(i)]);
    c.tensors.emplace("weight", std::move(weight));
    c.tensors.emplace("channels", std::move(channels));
    c.meta = {{"kept_channels", k},
              {"values", s.values == ValueType::f16 ? "f16" : "f32"},
              {"refit", calib.hessian != nullptr}};
    return c;
  }

  RowMatrix<float> reconstruct(const Compressed& c) const override { return submatrix(c)->dense_weight(); }

  std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const override { return submatrix(c); }

 private:
  static int64_t kept(const Layer& layer, const ChannelSetting& s) {
    try {
      return kept_channels(layer.cols(), s.keep);
    } catch (const Error& e) {
      fail("layer '", layer.name, "': prune.channels: ", e.what());
    }
  }

  // The stored form checked against its knob and shape, as the layer the engine runs.
  std::shared_ptr<const SubmatrixLinear> submatrix(const Compressed& c) const {
    require(c.method == name(), name(), ": cannot read a layer compressed by '", c.method, "'");
    require(c.rows > 0 && c.cols > 0, name(), ": compressed layer has shape [", c.rows, ", ", c.cols, "]");
    const ChannelSetting s = parse_channels(c.knob, c.method);
    const int64_t k = kept_channels(c.cols, s.keep);
    const DType vt = s.values == ValueType::f16 ? DType::f16 : DType::f32;
    const auto wit = c.tensors.find("weight"), cit = c.tensors.find("channels");
    require(wit != c.tensors.end() && cit != c.tensors.end() && c.tensors.size() == 2, name(), " (", c.knob,
            "): expected the tensors 'weight' and 'channels'");
    require(wit->second.dtype() == vt && wit->second.shape() == Shape{c.rows, k}, name(), " (", c.knob,
            "): weight is ", dtype_name(wit->second.dtype()), " ", wit->second.shape().str(), ", expected ",
            dtype_name(vt), " [", c.rows, ", ", k, "]");
    require(cit->second.dtype() == DType::i32 && cit->second.shape() == Shape{k}, name(), " (", c.knob,
            "): channels are ", dtype_name(cit->second.dtype()), " ", cit->second.shape().str(), ", expected i32 [", k,
            "]");
    RowMatrix<float> w(c.rows, k);
    if (vt == DType::f16)
      convert_f16_to_f32(reinterpret_cast<const f16*>(wit->second.raw()), w.data(), static_cast<uint64_t>(w.size()));
    else
      std::memcpy(w.data(), wit->second.raw(), static_cast<size_t>(w.size()) * sizeof(float));
    const auto* idx = reinterpret_cast<const int32_t*>(cit->second.raw());
    std::vector<int64_t> cols(idx, idx + k);
    try {
      return std::make_shared<const SubmatrixLinear>(c.rows, c.cols, std::vector<int64_t>{}, std::move(cols),
                                                     std::move(w));
    } catch (const Error& e) {
      fail(name(), " (", c.knob, "): ", e.what());
    }
  }
};

class RemoveCompressor final : public WeightCompressor {
 public:
  std::string_view name() const override { return "prune.remove"; }
  std::string_view description() const override {
    return "structured: the layer's output becomes zero, nothing stored (error 1); on attn_output / ffn_down it "
           "removes that residual branch, half of a block removal";
  }

  std::vector<std::string> knobs(const Layer& layer) const override {
    check_shape(layer);
    return {"remove"};
  }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    check_shape(layer);
    check_knob(knob, layer.name);
    return {};
  }

  Compressed apply(const Layer& layer, const LayerCalibration&, std::string_view knob) const override {
    check_layer(layer);
    check_knob(knob, layer.name);
    // A weight that is not a number is a broken input, even when it is about to be dropped.
    detail::check_weight(*layer.weight, layer.name);
    Compressed c;
    c.method = std::string(name());
    c.knob = std::string(knob);
    c.rows = layer.rows();
    c.cols = layer.cols();
    return c;
  }

  RowMatrix<float> reconstruct(const Compressed& c) const override {
    check(c);
    return RowMatrix<float>::Zero(c.rows, c.cols);
  }

  std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const override {
    check(c);
    return std::make_shared<ZeroLinear>(c.rows, c.cols);
  }

 private:
  static void check_knob(std::string_view knob, std::string_view layer) {
    require(knob == "remove", "layer '", layer, "': prune.remove knob '", knob, "': the only knob is 'remove'");
  }
  void check(const Compressed& c) const {
    require(c.method == name(), name(), ": cannot read a layer compressed by '", c.method, "'");
    check_knob(c.knob, c.method);
    require(c.rows > 0 && c.cols > 0, name(), ": compressed layer has shape [", c.rows, ", ", c.cols, "]");
    require(c.tensors.empty(), name(), ": a removed layer stores no tensors, this one has ", c.tensors.size());
  }
};

}  // namespace

std::unique_ptr<WeightCompressor> make_channel_compressor() { return std::make_unique<ChannelCompressor>(); }
std::unique_ptr<WeightCompressor> make_remove_compressor() { return std::make_unique<RemoveCompressor>(); }

}  // namespace strata::compress::prune
