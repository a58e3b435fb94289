// "quant.ggml", "quant.ggml_noimatrix" and "quant.ggml_gptq": llama.cpp's block formats as weight
// compressors. The stored form is exactly the bytes a GGUF tensor of that type holds, so the
// allocator's byte count is what the file will hold and the writer copies the blocks unchanged.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/gptq.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/compress/registry.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/nn/ggml_linear.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::compress {

namespace {

using kernels::GgmlType;
using ggml::GgmlGptqOptions;
using ggml::GgmlGptqResult;

constexpr std::string_view kWithImatrix = "quant.ggml";
constexpr std::string_view kNoImatrix = "quant.ggml_noimatrix";
constexpr std::string_view kGptq = "quant.ggml_gptq";
constexpr std::string_view kImatrixSuffix = "+imatrix";

struct GgmlKnob {
  GgmlType type;
  bool require_imatrix = false;  // "+imatrix": fail rather than quietly quantize without one
};

GgmlKnob parse_ggml_knob(std::string_view knob, std::string_view layer) {
  GgmlKnob k{};
  std::string_view name = knob;
  if (name.size() > kImatrixSuffix.size() && name.substr(name.size() - kImatrixSuffix.size()) == kImatrixSuffix) {
    k.require_imatrix = true;
    name.remove_suffix(kImatrixSuffix.size());
  }
  try {
    k.type = ggml::quantizable_type(name);
  } catch (const Error& e) {
    fail("layer '", layer, "': knob '", knob, "': ", e.what());
  }
  return k;
}

// Bytes of one row, after checking that the layer's rows are whole blocks of the type.
uint64_t row_bytes_for(const Layer& layer, GgmlType t) {
  const int64_t bs = kernels::ggml_block_size(t);
  require(layer.cols() > 0 && layer.cols() % bs == 0, "layer '", layer.name, "': ", layer.cols(),
          " columns are not a whole number of ", ggml::lower_name(t), " blocks (", bs, " elements)");
  return kernels::ggml_row_size(t, layer.cols());
}

void check_layer(const Layer& layer) {
  require(layer.weight != nullptr, "layer '", layer.name, "': no weight matrix");
}

// For paths whose arithmetic would spread a NaN or infinity before any quantizer sees it (GPTQ).
void check_finite_weights(const Layer& layer) {
  const RowMatrix<float>& w = *layer.weight;
  if (w.allFinite()) return;
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t c = 0; c < w.cols(); ++c)
      require(std::isfinite(w(r, c)), "layer '", layer.name, "': weight [", r, ", ", c, "] is ", w(r, c));
}

// The importance vector to quantize with (empty for none), from LayerCalibration::mean_sq.
std::vector<float> importance_for(const Layer& layer, const LayerCalibration& calib, bool use, bool required,
                                  std::string_view knob) {
  if (required)
    require(use && calib.mean_sq != nullptr, "layer '", layer.name, "': knob '", knob, "' needs mean_sq (the imatrix)",
            use ? " in the calibration" : ", which quant.ggml_noimatrix never uses");
  if (!use || calib.mean_sq == nullptr) return {};
  const Vector<double>& ms = *calib.mean_sq;
  require(ms.size() == layer.cols(), "layer '", layer.name, "': mean_sq has ", ms.size(), " values for ", layer.cols(),
          " input columns");
  std::vector<float> out(static_cast<std::size_t>(ms.size()));
  for (int64_t j = 0; j < ms.size(); ++j) {
    require(std::isfinite(ms[j]) && ms[j] >= 0, "layer '", layer.name, "': mean_sq[", j, "] is ", ms[j],
            " (must be finite and non-negative)");
    out[static_cast<std::size_t>(j)] = static_cast<float>(ms[j]);
  }
  return out;
}

// The type and blocks of a Compressed made here, checked against its shape.
std::pair<GgmlType, const Tensor*> stored_blocks(const Compressed& c) {
  require(c.method == kWithImatrix || c.method == kNoImatrix || c.method == kGptq,
          "ggml: compressed layer was made by '", c.method, "', not by ", kWithImatrix, ", ", kNoImatrix, " or ", kGptq);
  require(c.meta.contains("ggml_type") && c.meta["ggml_type"].is_string(), c.method, ": meta has no ggml_type");
  const GgmlType t = ggml::quantizable_type(c.meta["ggml_type"].get<std::string>());
  auto it = c.tensors.find("blocks");
  require(it != c.tensors.end(), c.method, ": no 'blocks' tensor");
  require(c.rows >= 0 && c.cols > 0 && c.cols % kernels::ggml_block_size(t) == 0, c.method, ": shape [", c.rows, ", ",
          c.cols, "] does not fit ", ggml::lower_name(t), " blocks");
  const uint64_t want = static_cast<uint64_t>(c.rows) * kernels::ggml_row_size(t, c.cols);
  require(it->second.nbytes() == want, c.method, ": 'blocks' holds ", it->second.nbytes(), " bytes, [", c.rows, ", ",
          c.cols, "] of ", ggml::lower_name(t), " needs ", want);
  return {t, &it->second};
}

class GgmlCompressor : public WeightCompressor {
 public:
  explicit GgmlCompressor(bool use_imatrix) : use_imatrix_(use_imatrix) {}

  std::string_view name() const override { return use_imatrix_ ? kWithImatrix : kNoImatrix; }
  bool reads_hessian() const override { return false; }  // the imatrix (mean x^2) is all it weighs by
  std::string_view description() const override {
    return use_imatrix_ ? "llama.cpp block formats (q2_k ... q8_0, iq4_nl), byte-exact with ggml, weighted by the "
                          "imatrix (mean x^2 per input column) when calibration provides it"
                        : "llama.cpp block formats (q2_k ... q8_0, iq4_nl), byte-exact with ggml, without an imatrix";
  }

  // One ladder where more bytes never means more error: the k-quants from 2.6 to 6.6 bits and
  // q8_0 when rows are whole 256-element super-blocks, else the 32-element formats.
  std::vector<std::string> knobs(const Layer& layer) const override {
    if (layer.cols() > 0 && layer.cols() % kernels::kQK_K == 0) return {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0"};
    if (layer.cols() > 0 && layer.cols() % kernels::kQK == 0) return {"q4_0", "q5_0", "q8_0"};
    return {};
  }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    const GgmlKnob k = parse_ggml_knob(knob, layer.name);
    const double bytes = static_cast<double>(row_bytes_for(layer, k.type)) * static_cast<double>(layer.rows());
    const double params = static_cast<double>(layer.rows()) * static_cast<double>(layer.cols());
    return {bytes, params, 2.0 * params};
  }

  Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const override {
    const GgmlKnob k = parse_ggml_knob(knob, layer.name);
    require(use_imatrix_ || !k.require_imatrix, "layer '", layer.name, "': knob '", knob, "': ", kNoImatrix,
            " never uses an imatrix; use ", kWithImatrix);
    check_layer(layer);
    const uint64_t row_bytes = row_bytes_for(layer, k.type);
    const std::vector<float> imp = importance_for(layer, calib, use_imatrix_, k.require_imatrix, knob);
    // Non-finite weights are refused by the quantizer itself, which checks each row from the cache
    // after quantizing it (a separate pass would read every weight once more per knob).
    std::vector<std::byte> blocks;
    try {
      blocks = ggml::quantize(k.type, layer.weight->data(), layer.rows(), layer.cols(), imp);
    } catch (const Error& e) {
      throw Error("layer '" + layer.name + "': " + e.what());
    }

    Compressed c;
    c.method = std::string(name());
    c.knob = std::string(knob);
    c.rows = layer.rows();
    c.cols = layer.cols();
    Tensor t(DType::i8, Shape{layer.rows(), static_cast<int64_t>(row_bytes)});
    if (!blocks.empty()) std::memcpy(t.raw(), blocks.data(), blocks.size());
    c.tensors.emplace("blocks", std::move(t));
    c.meta["ggml_type"] = ggml::lower_name(k.type);
    c.meta["imatrix"] = !imp.empty();
    return c;
  }

  RowMatrix<float> reconstruct(const Compressed& c) const override {
    const auto [stored_type, blocks] = stored_blocks(c);
    // A named copy: clang before 16 cannot capture a structured binding in a lambda (the fuzz build).
    const auto t = stored_type;
    RowMatrix<float> w(c.rows, c.cols);
    // stored_blocks() has checked the byte count against the shape: the unchecked row function is safe.
    const kernels::GgmlCodec& codec = kernels::ggml_codec(t);
    const uint64_t row_bytes = codec.row_bytes(c.cols);
    const std::byte* src = blocks->raw();
    parallel_for(c.rows, std::max<int64_t>(1, 65536 / c.cols), [&](int64_t r0, int64_t r1) {
      codec.dequantize_row(src + static_cast<uint64_t>(r0) * row_bytes, (r1 - r0) * c.cols, w.data() + r0 * c.cols);
    });
    return w;
  }

  // The blocks themselves run: a copy of the stored bytes (the Compressed may go away), never a
  // float32 expansion.
  std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const override { return ggml_linear(c); }
  std::shared_ptr<const nn::Embedding> to_embedding(const Compressed& c) const override {
    return std::make_shared<nn::GgmlEmbedding>(ggml_linear(c));
  }
  // Shared forms are run from their own blocks, borrowed: nothing is copied.
  std::pair<std::shared_ptr<const nn::Linear>, uint64_t> linear_sharing(
      std::shared_ptr<const Compressed> c) const override {
    return {borrowing_linear(std::move(c)), 0};
  }
  std::pair<std::shared_ptr<const nn::Embedding>, uint64_t> embedding_sharing(
      std::shared_ptr<const Compressed> c) const override {
    return {std::make_shared<nn::GgmlEmbedding>(borrowing_linear(std::move(c))), 0};
  }

 private:
  static std::shared_ptr<const nn::GgmlLinear> borrowing_linear(std::shared_ptr<const Compressed> c) {
    const auto [t, blocks] = stored_blocks(*c);
    const std::span<const std::byte> bytes(static_cast<const std::byte*>(blocks->raw()), blocks->nbytes());
    return std::make_shared<nn::GgmlLinear>(t, c->rows, c->cols, bytes, std::move(c));
  }

  static std::shared_ptr<const nn::GgmlLinear> ggml_linear(const Compressed& c) {
    const auto [t, blocks] = stored_blocks(c);
    const auto* p = static_cast<const std::byte*>(blocks->raw());
    return std::make_shared<nn::GgmlLinear>(t, c.rows, c.cols, std::vector<std::byte>(p, p + blocks->nbytes()));
  }

  bool use_imatrix_;
};

// "q4_k" or "q4_k,damp=0.02,block=128,order=act,refit=1,shrink=0.3,ls_scales=1": the type, then
// GPTQ's settings (the type's defaults, ggml::gptq_defaults, for those not named); act_order=0|1
// means order=natural|act.
struct GptqKnob {
  GgmlType type;
  GgmlGptqOptions options;
};

GptqKnob parse_gptq_knob(std::string_view knob, std::string_view layer) {
  const std::size_t comma = knob.find(',');
  const GgmlType type = parse_ggml_knob(knob.substr(0, comma), layer).type;
  GptqKnob k{type, ggml::gptq_defaults(type)};
  require(knob.substr(0, comma).find('+') == std::string_view::npos, "layer '", layer, "': knob '", knob, "': ", kGptq,
          " uses the imatrix whenever calibration has one; no suffix");
  if (comma == std::string_view::npos) return k;
  const std::string_view rest = knob.substr(comma + 1);
  std::map<std::string, std::string> kv;
  try {
    kv = parse_knob(rest);
    for (const auto& [key, value] : kv) {
      if (key == "damp")
        k.options.damp = knob_double(kv, key, knob);
      else if (key == "block")
        k.options.block = knob_int(kv, key, knob);
      else if (key == "act_order")
        k.options.order = knob_int(kv, key, knob) != 0 ? ggml::GptqOrder::act_order : ggml::GptqOrder::natural;
      else if (key == "order")
        k.options.order = ggml::parse_order(value);
      else if (key == "refit")
        k.options.refit = static_cast<int>(knob_int(kv, key, knob));
      else if (key == "shrink")
        k.options.shrink = knob_double(kv, key, knob);
      else if (key == "ls_scales") {
        const int64_t v = knob_int(kv, key, knob);
        require(v == 0 || v == 1, "ls_scales must be 0 or 1, got ", value);
        k.options.ls_scales = v == 1;
      } else
        fail("unknown setting '", key, "' (damp, block, order, act_order, refit, shrink, ls_scales)");
    }
  } catch (const Error& e) {
    fail("layer '", layer, "': knob '", knob, "': ", e.what());
  }
  return k;
}

// GPTQ with ggml's rounding step (ggml::gptq): the same ladder, bytes and engine-facing forms as
// quant.ggml, a lower output error for the same bytes.
class GgmlGptqCompressor final : public GgmlCompressor {
 public:
  GgmlGptqCompressor() : GgmlCompressor(true) {}

  std::string_view name() const override { return kGptq; }
  std::string_view description() const override {
    return "llama.cpp block formats (q2_k ... q8_0, iq4_nl) written by GPTQ's error feedback, each block's scales "
           "chosen by ggml's imatrix-weighted search; knob "
           "TYPE[,damp=X,block=N,order=natural|act|act_block,refit=N,shrink=A,ls_scales=0|1]";
  }
  bool needs_hessian() const override { return true; }
  bool reads_hessian() const override { return true; }

  Cost cost(const Layer& layer, std::string_view knob) const override {
    return GgmlCompressor::cost(layer, lower_name(parse_gptq_knob(knob, layer.name).type));
  }

  Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const override {
    const GptqKnob k = parse_gptq_knob(knob, layer.name);
    check_layer(layer);
    check_finite_weights(layer);
    const uint64_t row_bytes = row_bytes_for(layer, k.type);
    require(calib.hessian != nullptr, "layer '", layer.name, "': ", kGptq, " needs the input Hessian (X^T X)");
    const std::vector<float> imp = importance_for(layer, calib, true, false, knob);
    GgmlGptqResult r = ggml::gptq(k.type, *layer.weight, *calib.hessian, imp, k.options, layer.name);

    Compressed c;
    c.method = std::string(kGptq);
    c.knob = std::string(knob);
    c.rows = layer.rows();
    c.cols = layer.cols();
    Tensor t(DType::i8, Shape{layer.rows(), static_cast<int64_t>(row_bytes)});
    if (!r.blocks.empty()) std::memcpy(t.raw(), r.blocks.data(), r.blocks.size());
    c.tensors.emplace("blocks", std::move(t));
    c.meta["ggml_type"] = ggml::lower_name(k.type);
    c.meta["imatrix"] = !imp.empty();
    c.meta["damp"] = k.options.damp;
    c.meta["order"] = std::string(ggml::order_name(k.options.order));
    c.meta["refit"] = k.options.refit;
    return c;
  }
};

}  // namespace

namespace ggml {

GgufTensorView gguf_tensor_view(const Compressed& c) {
  const auto [t, blocks] = stored_blocks(c);
  return {t, std::span<const std::byte>(static_cast<const std::byte*>(blocks->raw()), blocks->nbytes())};
}

GgufTensorData gguf_tensor_data(const Compressed& c) {
  const auto [t, blocks] = stored_blocks(c);
  GgufTensorData out{t, std::vector<std::byte>(blocks->nbytes())};
  if (!out.bytes.empty()) std::memcpy(out.bytes.data(), blocks->raw(), out.bytes.size());
  return out;
}

}  // namespace ggml

void add_ggml_compressors(Registry& registry) {
  registry.push_back(std::make_unique<GgmlCompressor>(true));
  registry.push_back(std::make_unique<GgmlCompressor>(false));
  registry.push_back(std::make_unique<GgmlGptqCompressor>());
}

}  // namespace strata::compress
