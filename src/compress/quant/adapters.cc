// Registry adapters for the integer quantizers: knob parsing, the stored tensors and their exact
// byte count, and the one reconstruction RTN, GPTQ and AWQ share.
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>
#include <string>

#include "strata/compress/quant/quant.hpp"
#include "strata/compress/registry.hpp"
#include "strata/core/error.hpp"
#include "strata/nn/group_quant_linear.hpp"

namespace strata::compress {

namespace {

using quant::QuantizedMatrix;
using quant::QuantSpec;

enum class Method { rtn, gptq, awq };

struct Setting {
  QuantSpec spec;
  bool act_order = false;
  double damp = 0.01;
  bool clip = false;           // clipping search for each group's range (RTN and GPTQ)
  bool clip_weighted = false;  // its error weighted by E[x_j^2]
};

std::string layer_prefix(std::string_view layer) { return "layer '" + std::string(layer) + "'"; }

// "bits=B[,group=G|row][,sym|asym]", RTN and GPTQ also "[,clip[=0|1|w]]", AWQ "[,clip[=0|1]]" (its
// own clipping search), GPTQ also "[,act_order[=0|1]][,damp=D]"; what is not given
// comes from the compressor's defaults, so that "bits=3" means a point of the ladder it lists.
Setting parse_setting(std::string_view knob, const Setting& defaults, Method method, std::string_view layer) {
  const std::string where = layer_prefix(layer);
  try {
    const auto kv = parse_knob(knob);
    std::set<std::string> known = {"bits", "group", "sym", "asym"};
    known.insert("clip");
    if (method == Method::gptq) known.insert({"act_order", "damp"});
    for (const auto& [key, value] : kv) {
      if (!known.count(key)) {
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        fail("knob '", knob, "': unknown key '", key, "' (known: ", list, ")");
      }
      if (key == "sym" || key == "asym")
        require(value.empty(), "knob '", knob, "': '", key, "' is a flag and takes no value");
      if (key == "act_order")
        require(value.empty() || value == "0" || value == "1", "knob '", knob,
                "': act_order takes no value, 0 or 1, got '", value, "'");
      if (key == "clip" && method == Method::awq)
        require(value.empty() || value == "0" || value == "1", "knob '", knob,
                "': AWQ's clip (its own clipping search) takes no value, 0 or 1, got '", value, "'");
      if (key == "clip")
        require(value.empty() || value == "0" || value == "1" || value == "w", "knob '", knob,
                "': clip takes no value, 0, 1 or w, got '", value, "'");
    }
    Setting s = defaults;
    const int64_t bits = knob_int(kv, "bits", knob);
    require(bits >= quant::kMinBits && bits <= quant::kMaxBits, "knob '", knob, "': bits must be in [",
            quant::kMinBits, ", ", quant::kMaxBits, "], got ", bits);
    s.spec.bits = static_cast<int>(bits);
    if (auto it = kv.find("group"); it != kv.end()) {
      if (it->second == "row") {
        s.spec.group = 0;
      } else {
        s.spec.group = knob_int(kv, "group", knob);
        require(s.spec.group >= 1, "knob '", knob, "': group must be >= 1 or 'row', got ", s.spec.group);
      }
    }
    require(!(kv.count("sym") && kv.count("asym")), "knob '", knob, "': 'sym' and 'asym' both given");
    if (kv.count("sym")) s.spec.symmetric = true;
    if (kv.count("asym")) s.spec.symmetric = false;
    if (auto it = kv.find("act_order"); it != kv.end()) s.act_order = it->second != "0";
    if (auto it = kv.find("clip"); it != kv.end()) {
      s.clip = it->second != "0";
      s.clip_weighted = it->second == "w";
    }
    if (kv.count("damp")) {
      s.damp = knob_double(kv, "damp", knob);
      require(std::isfinite(s.damp) && s.damp > 0, "knob '", knob, "': damp must be finite and > 0, got ", s.damp);
    }
    quant::check_spec(s.spec, "knob '" + std::string(knob) + "'");
    return s;
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
}

Tensor bytes_tensor(const std::vector<uint8_t>& bytes) {
  Tensor t(DType::i8, Shape{static_cast<int64_t>(bytes.size())});
  if (!bytes.empty()) std::memcpy(t.raw(), bytes.data(), bytes.size());
  return t;
}

Tensor f16_tensor(const std::vector<f16>& values, const Shape& shape) {
  Tensor t(DType::f16, shape);
  require(static_cast<uint64_t>(values.size()) * sizeof(f16) == t.nbytes(), "f16_tensor: ", values.size(),
          " values for shape ", shape.str());
  if (!values.empty()) std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

std::vector<uint8_t> tensor_bytes(const Tensor& t) {
  const auto* p = reinterpret_cast<const uint8_t*>(t.raw());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

std::vector<f16> tensor_f16(const Tensor& t) {
  std::vector<f16> out(static_cast<size_t>(t.nbytes() / sizeof(f16)));
  if (!out.empty()) std::memcpy(out.data(), t.raw(), out.size() * sizeof(f16));
  return out;
}

class QuantCompressor final : public WeightCompressor {
 public:
  QuantCompressor(std::string name, std::string description, Method method, Setting defaults)
      : name_(std::move(name)), description_(std::move(description)), method_(method), defaults_(defaults) {}

  std::string_view name() const override { return name_; }
  std::string_view description() const override { return description_; }
  bool needs_hessian() const override { return method_ == Method::gptq; }

  std::vector<std::string> knobs(const Layer& layer) const override {
    std::vector<std::string> out;
    for (int bits : {2, 3, 4, 5, 6, 8}) {
      QuantSpec spec = defaults_.spec;
      spec.bits = bits;
      std::string knob = spec.knob() + (defaults_.act_order ? ",act_order" : "") +
                         (defaults_.clip ? (defaults_.clip_weighted ? ",clip=w" : ",clip") : "");
      if (method_ == Method::gptq) {
        std::ostringstream damp;
        damp << defaults_.damp;
        knob += ",damp=" + damp.str();
      }
      out.push_back(std::move(knob));
    }
    return out;
  }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    check_shape(layer);
    const Setting s = parse_setting(knob, defaults_, method_, layer.name);
    const auto size = quant::storage_size(layer.rows(), layer.cols(), s.spec, method_ == Method::awq);
    const double rows = static_cast<double>(layer.rows()), cols = static_cast<double>(layer.cols());
    const double groups = rows * static_cast<double>(s.spec.groups(layer.cols()));
    Cost c;
    c.bytes = static_cast<double>(size.total());
    c.params = rows * cols + groups * (s.spec.symmetric ? 1 : 2) + (method_ == Method::awq ? cols : 0);
    c.flops = 2 * rows * cols;
    return c;
  }

  Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const override {
    check_layer(layer);
    const Setting s = parse_setting(knob, defaults_, method_, layer.name);
    const std::string where = layer_prefix(layer.name);
    QuantizedMatrix q;
    nlohmann::json extra = nlohmann::json::object();
    switch (method_) {
      case Method::rtn: {
        std::vector<float> importance;
        if (s.clip_weighted) {
          require(calib.mean_sq != nullptr, where,
                  ": clip=w needs the per-channel mean x^2 of the input (calibration)");
          require(calib.mean_sq->size() == layer.cols(), where, ": mean_sq has ", calib.mean_sq->size(),
                  " entries for ", layer.cols(), " inputs");
          importance.assign(calib.mean_sq->data(), calib.mean_sq->data() + calib.mean_sq->size());
        }
        q = quant::rtn(*layer.weight, s.spec, s.clip ? quant::kMseClip : quant::ClipSearch{}, layer.name, importance);
        extra["clip"] = s.clip ? (s.clip_weighted ? "mse, weighted by E[x^2]" : "mse") : "none";
        break;
      }
      case Method::gptq: {
        require(calib.hessian != nullptr, where, ": GPTQ needs the input Hessian (calibration with Gram matrices)");
        quant::GptqOptions opt;
        opt.act_order = s.act_order;
        opt.damp = s.damp;
        if (s.clip) opt.clip = quant::kMseClip;
        opt.clip_weighted = s.clip_weighted;
        q = quant::gptq(*layer.weight, *calib.hessian, s.spec, opt, layer.name);
        extra["act_order"] = s.act_order;
        extra["damp"] = opt.damp;
        extra["clip"] = s.clip ? (s.clip_weighted ? "mse, weighted by H_jj" : "mse") : "none";
        break;
      }
      case Method::awq: {
        require(calib.mean_abs != nullptr, where, ": AWQ needs the per-channel mean |x| of the input (calibration)");
        const quant::AwqClip clip;
        const auto r = quant::awq(*layer.weight, *calib.mean_abs, calib.hessian, calib.mean_sq, s.spec, {},
                                  layer.name, s.clip ? &clip : nullptr);
        q = r.q;
        extra["alpha"] = r.alpha;
        extra["clip"] = s.clip ? "AWQ's search on the group's output error" : "none";
        extra["scales"] = "per tensor, stored (not folded into the preceding operation)";
        extra["search_objective"] = calib.hessian ? "tr(dW H dW^T)" : (calib.mean_sq ? "mean_sq" : "mean_abs^2");
        break;
      }
    }
    Compressed c;
    c.method = name_;
    c.knob = std::string(knob);
    c.rows = q.rows;
    c.cols = q.cols;
    c.tensors["codes"] = bytes_tensor(quant::pack_bits(q.codes, s.spec.bits));
    c.tensors["scales"] = f16_tensor(q.scales, Shape{q.rows, s.spec.groups(q.cols)});
    if (!s.spec.symmetric) c.tensors["zeros"] = bytes_tensor(quant::pack_bits(q.zeros, s.spec.bits));
    if (!q.channel_scales.empty()) c.tensors["channel_scales"] = f16_tensor(q.channel_scales, Shape{q.cols});
    c.meta = {{"bits", s.spec.bits},
              {"group", s.spec.group_size(q.cols)},
              {"symmetric", s.spec.symmetric},
              {"layout",
               "codes and zeros: LSB-first bitstreams over the row-major [rows, cols] / [rows, groups] arrays; "
               "w = scale (code - zero) / channel_scale"}};
    c.meta.update(extra);
    return c;
  }

  RowMatrix<float> reconstruct(const Compressed& c) const override {
    const QuantizedMatrix q = unpack(c, "reconstruct");
    try {
      return quant::dequantize(q);
    } catch (const Error& e) {
      fail("reconstruct ", c.method, " '", c.knob, "': ", e.what());
    }
  }

  // The codes themselves, not dense float32: a product then streams a few bits per weight.
  std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const override {
    QuantizedMatrix q = unpack(c, "to_linear");
    nn::GroupQuantWeights w;
    w.rows = q.rows;
    w.cols = q.cols;
    w.bits = q.spec.bits;
    w.group = q.spec.group_size(q.cols);
    w.codes = std::move(q.codes);
    const auto widen = [](const std::vector<f16>& h) {
      std::vector<float> out(h.size());
      for (size_t i = 0; i < h.size(); ++i) out[i] = f16_to_f32(h[i]);
      return out;
    };
    w.scales = widen(q.scales);
    w.zeros = std::move(q.zeros);
    w.channel_scales = widen(q.channel_scales);
    try {
      return std::make_shared<nn::GroupQuantLinear>(w);
    } catch (const Error& e) {
      fail("to_linear ", c.method, " '", c.knob, "': ", e.what());
    }
  }

 private:
  // The stored tensors checked against the meta and unpacked; `what` starts every error message.
  QuantizedMatrix unpack(const Compressed& c, std::string_view what) const {
    const std::string where = std::string(what) + " " + c.method + " '" + c.knob + "'";
    try {
      require(c.rows > 0 && c.cols > 0, "empty shape (", c.rows, " x ", c.cols, ")");
      for (const char* key : {"bits", "group", "symmetric"})
        require(c.meta.contains(key), "meta has no '", key, "'");
      require(c.meta["bits"].is_number_integer() && c.meta["group"].is_number_integer() &&
                  c.meta["symmetric"].is_boolean(),
              "meta 'bits', 'group' or 'symmetric' has the wrong type");
      QuantizedMatrix q;
      q.rows = c.rows;
      q.cols = c.cols;
      q.spec.bits = c.meta["bits"].get<int>();
      q.spec.group = c.meta["group"].get<int64_t>();
      q.spec.symmetric = c.meta["symmetric"].get<bool>();
      quant::check_spec(q.spec, "meta");
      const bool has_channel = c.tensors.count("channel_scales") > 0;
      const auto size = quant::storage_size(c.rows, c.cols, q.spec, has_channel);
      auto tensor = [&](const std::string& key, DType dtype, uint64_t bytes) -> const Tensor& {
        auto it = c.tensors.find(key);
        require(it != c.tensors.end(), "tensor '", key, "' is missing");
        require(it->second.dtype() == dtype, "tensor '", key, "' is ", dtype_name(it->second.dtype()), ", expected ",
                dtype_name(dtype));
        require(it->second.nbytes() == bytes, "tensor '", key, "' has ", it->second.nbytes(), " bytes, expected ",
                bytes);
        return it->second;
      };
      const auto n = static_cast<uint64_t>(c.rows * c.cols);
      const auto ng = static_cast<uint64_t>(c.rows * q.spec.groups(c.cols));
      q.codes = quant::unpack_bits(tensor_bytes(tensor("codes", DType::i8, size.codes)), n, q.spec.bits);
      q.scales = tensor_f16(tensor("scales", DType::f16, size.scales));
      if (!q.spec.symmetric)
        q.zeros = quant::unpack_bits(tensor_bytes(tensor("zeros", DType::i8, size.zeros)), ng, q.spec.bits);
      if (has_channel) q.channel_scales = tensor_f16(tensor("channel_scales", DType::f16, size.channel_scales));
      return q;
    } catch (const Error& e) {
      fail(where, ": ", e.what());
    }
  }

  void check_layer(const Layer& layer) const {
    require(layer.weight != nullptr, layer_prefix(layer.name), ": no weight");
  }

  std::string name_, description_;
  Method method_;
  Setting defaults_;
};

}  // namespace

void add_quant_compressors(Registry& registry) {
  auto add = [&](std::string name, std::string description, Method method, Setting defaults) {
    registry.push_back(std::make_unique<QuantCompressor>(std::move(name), std::move(description), method, defaults));
  };
  add("quant.rtn",
      "Round to nearest on each group's min/max range, asymmetric, groups of 128 inputs: packed codes + f16 scales "
      "+ packed zero points",
      Method::rtn, {{4, 128, false}, false});
  add("quant.rtn_sym",
      "Round to nearest on each group's max |w|, symmetric, groups of 128 inputs: packed codes + f16 scales",
      Method::rtn, {{4, 128, true}, false});
  // The defaults measured best on SmolLM2 at 3 bits (docs/quantization.md): act-order, each group's
  // range from a clipping search weighted by H_jj, 10% dampening.
  add("quant.gptq",
      "GPTQ: error feedback through the inverse Hessian, act-order with static groups of 128 whose ranges come "
      "from a clipping search weighted by E[x^2], 10% dampening, asymmetric; RTN's storage",
      Method::gptq, {{4, 128, false}, true, 0.1, true, true});
  // Per tensor, unlike the paper (quant::awq_group + fold_scales_into_*): alpha is searched on this
  // layer's own output error and the scales are stored and divided out at reconstruction.
  add("quant.awq",
      "AWQ per tensor: per-input scales mean|x|^alpha with alpha searched on this layer's output error (the paper "
      "searches it per group of layers sharing an input), AWQ's clipping search, RTN (asymmetric, groups of 128); "
      "RTN's storage + the f16 scales per input, divided out at reconstruction (the paper folds them into the "
      "preceding norm or layer)",
      Method::awq, {{4, 128, false}, false, 0.01, true, false});
}

}  // namespace strata::compress
