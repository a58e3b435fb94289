// Compressed models on disk: llama.cpp GGUF files for the ggml block formats, safetensors with strata's
// metadata for every form, and loading either back into the reference engine.
#include "strata/compress/model_io.hpp"

#include <cstring>
#include <set>
#include <variant>

#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/io/safetensors.hpp"
#include "strata/kernels/ggml_dequant.hpp"

namespace strata::compress {

namespace {

using kernels::GgmlType;
using Extra = std::vector<std::pair<std::string, std::string>>;

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

constexpr std::string_view kFileTypeKey = "general.file_type";
constexpr std::string_view kQuantVersionKey = "general.quantization_version";
constexpr std::string_view kAlignmentKey = "general.alignment";

// __metadata__ keys of a strata safetensors besides the three io:: exposes.
constexpr std::string_view kSourceFormatKey = "strata.source_format";
constexpr std::string_view kLayersKey = "strata.layers";
constexpr std::string_view kRawTensorsKey = "strata.tensors";

bool is_ggml_method(std::string_view method) {
  return method == "quant.ggml" || method == "quant.ggml_noimatrix" || method == "quant.ggml_gptq";
}

uint64_t align_up(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

// ---- GGUF ---------------------------------------------------------------------------------------

// Serialized size of a GGUF value, as GgufWriter lays it out.
uint64_t gguf_array_bytes(const io::GgufArray& a) {
  uint64_t n = 4 + 8;  // element type, count
  std::visit(Overloaded{
                 [&](const std::vector<bool>& v) { n += v.size(); },
                 [&](const std::vector<std::string>& v) {
                   for (const auto& s : v) n += 8 + s.size();
                 },
                 [&](const std::vector<io::GgufArray>& v) {
                   for (const auto& inner : v) n += gguf_array_bytes(inner);
                 },
                 [&](const auto& v) { n += v.size() * sizeof(v[0]); },
             },
             a.items);
  return n;
}

uint64_t gguf_value_bytes(const io::GgufValue& v) {
  return std::visit(Overloaded{
                        [](bool) -> uint64_t { return 1; },
                        [](const std::string& s) -> uint64_t { return 8 + s.size(); },
                        [](const io::GgufArray& a) -> uint64_t { return gguf_array_bytes(a); },
                        [](auto x) -> uint64_t { return sizeof(x); },
                    },
                    v);
}

// The output file, ready to write: the writer with every replacement and key set, and its sizes.
struct GgufPlan {
  io::GgufWriter writer;
  uint64_t tensor_bytes = 0, overhead_bytes = 0;
  int file_type = 0;
};

GgufPlan plan_gguf(const io::GgufFile& source, const LayerMap& layers, const Extra& extra) {
  const std::string& where = source.name();
  GgufPlan plan{io::GgufWriter::from(source)};

  struct Stored {
    GgmlType type;
    uint64_t nbytes;
  };
  std::map<std::string_view, Stored> replaced;
  for (const auto& [name, c] : layers) {
    const io::GgufTensorInfo* t = source.find_tensor(name);
    require(t != nullptr, where, ": tensor '", name, "': not in the file, so there is nothing to replace");
    require(is_ggml_method(c.method), where, ": tensor '", name, "': compressed by '", c.method,
            "', which is not a ggml block format (quant.ggml, quant.ggml_noimatrix); write it with "
            "write_strata_safetensors");
    require(t->ne.size() == 2 && t->ne[0] == c.cols && t->ne[1] == c.rows, where, ": tensor '", name,
            "': the compressed layer is [", c.rows, ", ", c.cols, "] but the tensor is ", t->shape().str());
    // Borrowed, not copied: `layers` outlives the writer, and a copy would hold the whole output twice.
    const ggml::GgufTensorView data = [&] {
      try {
        return ggml::gguf_tensor_view(c);
      } catch (const Error& e) {
        fail(where, ": tensor '", name, "': ", e.what());
      }
    }();
    replaced[name] = {data.type, data.bytes.size()};
    plan.writer.replace_tensor_view(name, data.type, data.bytes);
  }

  // The type holding the most weights names the file, llama_ftype-style.
  std::map<GgmlType, uint64_t> weights;
  uint64_t most = 0;
  GgmlType mostly = GgmlType::F32;
  uint64_t tensor_info_bytes = 0, padded_data = 0;
  const uint64_t alignment = source.alignment();
  for (const auto& t : source.tensors()) {
    auto it = replaced.find(t.name);
    const GgmlType type = it != replaced.end() ? it->second.type : t.type;
    const uint64_t nbytes = it != replaced.end() ? it->second.nbytes : t.nbytes;
    const uint64_t n = weights[type] += static_cast<uint64_t>(t.numel());
    if (n > most) {
      most = n;
      mostly = type;
    }
    plan.tensor_bytes += nbytes;
    padded_data += align_up(nbytes, alignment);
    tensor_info_bytes += 8 + t.name.size() + 4 + 8 * t.ne.size() + 4 + 8;  // name, n_dims, ne, type, offset
  }
  plan.file_type = llama_file_type(mostly);

  std::set<std::string_view> extra_keys;
  for (const auto& [key, value] : extra) {
    require(!key.empty(), where, ": extra metadata: empty key");
    require(key != kFileTypeKey && key != kQuantVersionKey && key != kAlignmentKey, where, ": extra metadata: '", key,
            "' is set by the writer and cannot be given");
    require(extra_keys.insert(key).second, where, ": extra metadata: key '", key, "' given twice");
  }
  plan.writer.set(std::string(kFileTypeKey), static_cast<uint32_t>(plan.file_type));
  plan.writer.set(std::string(kQuantVersionKey), kGgmlQuantizationVersion);
  for (const auto& [key, value] : extra) plan.writer.set(key, value);

  uint64_t header = 4 + 4 + 8 + 8;  // magic, version, tensor count, key/value count
  for (const auto& kv : plan.writer.metadata()) header += 8 + kv.key.size() + 4 + gguf_value_bytes(kv.value);
  header += tensor_info_bytes;
  plan.overhead_bytes = align_up(header, alignment) + padded_data - plan.tensor_bytes;
  return plan;
}

// ---- safetensors ----------------------------------------------------------------------------------

// How a part of a compressed layer is stored: its own dtype, except packed int4 as raw bytes.
std::string stored_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i8: return "I8";
    case DType::i32: return "I32";
    case DType::i4: return "U8";
  }
  fail("unknown dtype ", static_cast<int>(t));
}

Shape stored_shape(DType dtype, const Shape& shape, uint64_t nbytes) {
  return dtype == DType::i4 ? Shape{static_cast<int64_t>(nbytes)} : shape;
}

nlohmann::json dims_json(const Shape& s) {
  nlohmann::json a = nlohmann::json::array();
  for (int i = 0; i < s.rank(); ++i) a.push_back(s[i]);
  return a;
}

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// ---- reading a strata safetensors -----------------------------------------------------------------

const nlohmann::json* strata_metadata(const io::Model& file) {
  const auto& m = file.metadata();
  auto it = m.find("__metadata__");
  if (it == m.end() || !it->is_object() || !it->contains(std::string(io::kStrataFormatKey))) return nullptr;
  return &*it;
}

nlohmann::json parse_metadata_json(const io::Model& file, const nlohmann::json& meta, std::string_view key) {
  const std::string where = detail::concat(file.path().string(), ": __metadata__ '", key, "'");
  auto it = meta.find(std::string(key));
  require(it != meta.end(), where, ": missing");
  require(it->is_string(), where, ": expected a string");
  try {
    return nlohmann::json::parse(it->get_ref<const std::string&>());
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": invalid JSON: ", e.what());
  }
}

int64_t json_count(const nlohmann::json& j, const std::string& where, std::string_view field) {
  require(j.is_number_integer() && j.get<int64_t>() >= 0, where, ": '", field,
          "': expected a non-negative integer, got ", dump(j));
  return j.get<int64_t>();
}

Shape json_shape(const nlohmann::json& j, const std::string& where) {
  require(j.is_array() && j.size() <= static_cast<std::size_t>(kMaxRank), where,
          ": 'shape': expected an array of at most ", kMaxRank, " dimensions, got ", dump(j));
  std::vector<int64_t> dims;
  for (const auto& d : j) dims.push_back(json_count(d, where, "shape"));
  return Shape(std::span<const int64_t>(dims));
}

const nlohmann::json& json_field(const nlohmann::json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  require(it != obj.end(), where, ": missing '", key, "'");
  return *it;
}

std::string json_text(const nlohmann::json& obj, const char* key, const std::string& where) {
  const auto& v = json_field(obj, key, where);
  require(v.is_string(), where, ": '", key, "': expected a string, got ", dump(v));
  return v.get<std::string>();
}

// The tensors of a strata safetensors under their source names, for LlamaModel::load_stored: plain
// tensors as stored, ggml blocks (stored as U8) with their type and shape back, so they run as blocks
// (and to_f32 dequantizes them). Compressed layers are not listed; they reach the model as overrides.
// The view owns the file it reads, so layers borrowing its bytes can keep both alive.
class StrataView final : public io::Model {
 public:
  StrataView(std::shared_ptr<const io::Model> owned, const nlohmann::json& meta, const std::set<std::string>& parts)
      : owned_(std::move(owned)), file_(*owned_) {
    const io::Model& file = file_;
    path_ = file.path();
    config_ = file.config();
    metadata_ = file.metadata();
    const std::string where = file.path().string();
    const nlohmann::json raw = parse_metadata_json(file, meta, kRawTensorsKey);
    require(raw.is_object(), where, ": __metadata__ '", kRawTensorsKey, "': expected a JSON object, got ",
            raw.type_name());
    for (const auto& [name, entry] : raw.items()) {
      const std::string what = detail::concat(where, ": __metadata__ '", kRawTensorsKey, "': tensor '", name, "'");
      require(entry.is_object(), what, ": expected an object, got ", dump(entry));
      const std::string type_name = json_text(entry, "ggml_type", what);
      const auto type = kernels::ggml_type_from_name(type_name);
      require(type.has_value(), what, ": unknown ggml type '", type_name, "'");
      const Shape shape = json_shape(json_field(entry, "shape", what), what);
      const io::TensorInfo* stored = file.find(name);
      require(stored != nullptr, what, ": no such tensor in the file");
      const int64_t row = shape.rank() > 0 ? shape[shape.rank() - 1] : 1;
      require(row % kernels::ggml_block_size(*type) == 0, what, ": rows of ", row, " elements are not whole ",
              type_name, " blocks");
      const uint64_t want = kernels::ggml_nbytes(*type, shape.numel());
      require(stored->type == "U8" && stored->nbytes == want, what, ": stored as ", stored->type, " of ",
              stored->nbytes, " bytes, but ", shape.str(), " of ", type_name, " is ", want, " bytes of U8");
      ggml_types_[name] = *type;
      shapes_[name] = shape;
    }
    for (const auto& t : file.tensors()) {
      if (parts.count(t.name)) continue;
      io::TensorInfo info = t;
      if (auto it = ggml_types_.find(t.name); it != ggml_types_.end()) {
        info.type = std::string(kernels::ggml_type_name(it->second));
        info.shape = shapes_.at(t.name);
      }
      stored_[t.name] = &t;
      tensors_.push_back(std::move(info));
    }
  }

  io::FileFormat format() const override { return file_.format(); }
  std::span<const std::byte> raw(const io::TensorInfo& t) const override { return file_.raw(stored(t)); }

  Tensor to_f32(const io::TensorInfo& t) const override {
    auto it = ggml_types_.find(t.name);
    if (it == ggml_types_.end()) return file_.to_f32(stored(t));
    const GgmlType type = it->second;
    require(kernels::ggml_can_dequantize(type), path_.string(), ": tensor '", t.name, "': type ",
            kernels::ggml_type_name(type), " cannot be converted to float32");
    Tensor out(DType::f32, t.shape);
    if (t.numel() > 0) kernels::dequantize(type, file_.raw(stored(t)), reinterpret_cast<float*>(out.raw()), t.numel());
    return out;
  }
  using io::Model::to_f32;

 private:
  const io::TensorInfo& stored(const io::TensorInfo& t) const {
    auto it = stored_.find(t.name);
    require(it != stored_.end(), path_.string(), ": no tensor named '", t.name, "'");
    return *it->second;
  }

  std::shared_ptr<const io::Model> owned_;
  const io::Model& file_;
  std::map<std::string, GgmlType, std::less<>> ggml_types_;
  std::map<std::string, Shape, std::less<>> shapes_;
  std::map<std::string, const io::TensorInfo*, std::less<>> stored_;
};

// The compressed layers of a strata safetensors; `parts` receives the names of their stored tensors.
LayerMap decode_layers(const io::Model& file, const nlohmann::json& meta, std::set<std::string>& parts) {
  const std::string where = file.path().string();
  const nlohmann::json layers = parse_metadata_json(file, meta, kLayersKey);
  require(layers.is_object(), where, ": __metadata__ '", kLayersKey, "': expected a JSON object, got ",
          layers.type_name());
  LayerMap out;
  for (const auto& [name, entry] : layers.items()) {
    const std::string what = detail::concat(where, ": layer '", name, "'");
    require(entry.is_object(), what, ": expected an object, got ", dump(entry));
    require(file.find(name) == nullptr, what, ": stored both as a plain tensor and as a compressed layer");
    Compressed c;
    c.method = json_text(entry, "method", what);
    c.knob = json_text(entry, "knob", what);
    c.rows = json_count(json_field(entry, "rows", what), what, "rows");
    c.cols = json_count(json_field(entry, "cols", what), what, "cols");
    c.meta = json_field(entry, "meta", what);
    require(c.meta.is_object(), what, ": 'meta': expected an object, got ", dump(c.meta));
    const auto& part_list = json_field(entry, "parts", what);
    require(part_list.is_object(), what, ": 'parts': expected an object, got ", dump(part_list));
    for (const auto& [part, desc] : part_list.items()) {
      const std::string tensor_name = name + "#" + part;
      const std::string pwhat = detail::concat(what, ": part '", part, "'");
      require(desc.is_object(), pwhat, ": expected an object, got ", dump(desc));
      const std::string dtype_text = json_text(desc, "dtype", pwhat);
      DType dtype;
      try {
        dtype = dtype_from_name(dtype_text);
      } catch (const Error& e) {
        fail(pwhat, ": 'dtype': ", e.what());
      }
      const Shape shape = json_shape(json_field(desc, "shape", pwhat), pwhat);
      const io::TensorInfo* stored = file.find(tensor_name);
      require(stored != nullptr, pwhat, ": tensor '", tensor_name, "' is missing from the file");
      Tensor t(dtype, shape);
      const std::string want_type = stored_dtype(dtype);
      const Shape want_shape = stored_shape(dtype, shape, t.nbytes());
      require(stored->type == want_type && stored->shape == want_shape, pwhat, ": the metadata says ", dtype_text, " ",
              shape.str(), " (stored as ", want_type, " ", want_shape.str(), "), but tensor '", tensor_name, "' is ",
              stored->type, " ", stored->shape.str());
      const auto bytes = file.raw(*stored);
      require(bytes.size() == t.nbytes(), pwhat, ": tensor '", tensor_name, "' holds ", bytes.size(),
              " bytes, expected ", t.nbytes());
      if (!bytes.empty()) std::memcpy(t.raw(), bytes.data(), bytes.size());
      c.tensors.emplace(part, std::move(t));
      parts.insert(tensor_name);
    }
    out.emplace(name, std::move(c));
  }
  for (const auto& t : file.tensors())
    require(t.name.find('#') == std::string::npos || parts.count(t.name), where, ": tensor '", t.name,
            "' is not a part of any layer in __metadata__ '", kLayersKey, "'");
  return out;
}

}  // namespace

int llama_file_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q4_1: return 3;
    case GgmlType::Q8_0: return 7;
    case GgmlType::Q5_0: return 8;
    case GgmlType::Q5_1: return 9;
    case GgmlType::Q2_K: return 10;
    case GgmlType::Q3_K: return 12;  // Q3_K_M
    case GgmlType::Q4_K: return 15;  // Q4_K_M
    case GgmlType::Q5_K: return 17;  // Q5_K_M
    case GgmlType::Q6_K: return 18;
    case GgmlType::IQ2_XXS: return 19;
    case GgmlType::IQ2_XS: return 20;
    case GgmlType::IQ3_XXS: return 23;
    case GgmlType::IQ1_S: return 24;
    case GgmlType::IQ4_NL: return 25;
    case GgmlType::IQ3_S: return 26;
    case GgmlType::IQ2_S: return 28;
    case GgmlType::IQ4_XS: return 30;
    case GgmlType::IQ1_M: return 31;
    case GgmlType::BF16: return 32;
    case GgmlType::TQ1_0: return 36;
    case GgmlType::TQ2_0: return 37;
    default: return 0;
  }
}

GgufWriteInfo write_gguf(const io::GgufFile& source, const LayerMap& layers, const std::filesystem::path& out,
                         const Extra& extra) {
  GgufPlan plan = plan_gguf(source, layers, extra);
  plan.writer.write(out);
  GgufWriteInfo info;
  info.file_bytes = std::filesystem::file_size(out);
  info.tensor_bytes = plan.tensor_bytes;
  info.overhead_bytes = plan.overhead_bytes;
  info.file_type = plan.file_type;
  return info;
}

uint64_t gguf_overhead_bytes(const io::GgufFile& source, const LayerMap& layers, const Extra& extra) {
  return plan_gguf(source, layers, extra).overhead_bytes;
}

void write_strata_safetensors(const io::Model& source, const LayerMap& layers, const std::filesystem::path& out,
                              const nlohmann::json& extra) {
  const std::string where = source.path().string();
  require(extra.is_object(), out.string(), ": extra metadata must be a JSON object, got ", extra.type_name());
  // Its parts and raw blocks would be copied as plain tensors that no longer belong to any layer.
  require(!is_strata_safetensors(source), where,
          ": already a compressed model written by strata; write from the model it was made from");
  for (const auto& [name, c] : layers) {
    const io::TensorInfo* t = source.find(name);
    require(t != nullptr, where, ": tensor '", name, "': not in the file, so there is nothing to replace");
    require(t->shape == Shape{c.rows, c.cols}, where, ": tensor '", name, "': the compressed layer is [", c.rows, ", ",
            c.cols, "] but the tensor is ", t->shape.str());
    require(!c.method.empty(), where, ": tensor '", name, "': the compressed layer names no method");
  }

  std::vector<io::SafetensorsEntry> entries;
  nlohmann::json layer_meta = nlohmann::json::object(), raw_meta = nlohmann::json::object();
  for (const auto& t : source.tensors()) {
    if (auto it = layers.find(t.name); it != layers.end()) {
      const Compressed& c = it->second;
      nlohmann::json parts = nlohmann::json::object();
      for (const auto& [part, tensor] : c.tensors) {
        require(!part.empty(), where, ": tensor '", t.name, "': a part of the compressed layer has no name");
        entries.push_back({t.name + "#" + part, stored_dtype(tensor.dtype()),
                           stored_shape(tensor.dtype(), tensor.shape(), tensor.nbytes()),
                           {tensor.raw(), static_cast<std::size_t>(tensor.nbytes())}});
        parts[part] = {{"dtype", dtype_name(tensor.dtype())}, {"shape", dims_json(tensor.shape())}};
      }
      layer_meta[t.name] = {{"method", c.method}, {"knob", c.knob}, {"rows", c.rows},
                            {"cols", c.cols},     {"meta", c.meta}, {"parts", std::move(parts)}};
    } else if (io::safetensors_dtype(t.type)) {
      entries.push_back({t.name, t.type, t.shape, source.raw(t)});
    } else {
      require(kernels::ggml_type_from_name(t.type).has_value(), where, ": tensor '", t.name, "' has type ", t.type,
              ", which is neither a safetensors dtype nor a ggml type");
      entries.push_back({t.name, "U8", Shape{static_cast<int64_t>(t.nbytes)}, source.raw(t)});
      raw_meta[t.name] = {{"ggml_type", t.type}, {"shape", dims_json(t.shape)}};
    }
  }

  io::StringPairs metadata = {
      {std::string(io::kStrataFormatKey), std::string(kStrataFormatVersion)},
      {std::string(kSourceFormatKey), std::string(io::format_name(source.format()))},
      {std::string(io::kStrataConfigKey), dump(io::config_to_json(source.config()))},
      {std::string(io::kStrataSourceMetadataKey), dump(source.metadata())},
      {std::string(kRawTensorsKey), dump(raw_meta)},
      {std::string(kLayersKey), dump(layer_meta)},
  };
  const std::size_t reserved = metadata.size();
  for (const auto& [key, value] : extra.items()) {
    for (std::size_t i = 0; i < reserved; ++i)
      require(metadata[i].first != key, out.string(), ": extra metadata: '", key,
              "' is written by strata and cannot be given");
    metadata.emplace_back(key, value.is_string() ? value.get<std::string>() : dump(value));
  }
  io::write_safetensors(out, entries, &metadata, io::TensorOrder::as_given);
}

bool is_strata_safetensors(const io::Model& file) {
  return file.format() == io::FileFormat::safetensors && strata_metadata(file) != nullptr;
}

LoadedModel load_llama(const std::filesystem::path& path) {
  LoadedModel out;
  out.file = io::open_model(path);
  const io::Model& file = *out.file;
  if (!is_strata_safetensors(file)) {
    out.model = nn::LlamaModel::load_stored(out.file);
    return out;
  }
  const std::string where = file.path().string();
  const nlohmann::json& meta = *strata_metadata(file);
  const auto& version = meta[std::string(io::kStrataFormatKey)];
  require(version.is_string() && version.get<std::string>() == kStrataFormatVersion, where, ": __metadata__ '",
          io::kStrataFormatKey, "' is ", dump(version), "; this version of strata reads format ", kStrataFormatVersion);

  std::set<std::string> parts;
  out.layers = decode_layers(file, meta, parts);
  const auto view_ptr = std::make_shared<const StrataView>(out.file, meta, parts);
  const StrataView& view = *view_ptr;

  nn::LlamaModel::Overrides overrides;
  const WeightCompressor* embedding_compressor = nullptr;
  for (const auto& [name, c] : out.layers) {
    try {
      const WeightCompressor& compressor = find_compressor(c.method);
      require(c.rows > 0 && c.cols > 0, "shape [", c.rows, ", ", c.cols, "] is empty");
      if (name == "token_embd.weight") {
        auto embedding = compressor.to_embedding(c);
        require(embedding->rows() == c.rows && embedding->cols() == c.cols, "the compressed form holds [",
                embedding->rows(), ", ", embedding->cols(), "], the layer is [", c.rows, ", ", c.cols, "]");
        overrides.token_embedding = std::move(embedding);
        embedding_compressor = &compressor;
      } else {
        auto linear = compressor.to_linear(c);
        require(linear->out_features() == c.rows && linear->in_features() == c.cols, "the compressed form computes [",
                linear->out_features(), ", ", linear->in_features(), "], the layer is [", c.rows, ", ", c.cols, "]");
        overrides.linears[name] = std::move(linear);
      }
    } catch (const Error& e) {
      fail(where, ": layer '", name, "' (", c.method, " ", c.knob, "): ", e.what());
    }
  }
  // A head tied to a compressed embedding computes with the compressed form too.
  if (embedding_compressor && !view.find("output.weight") && !overrides.linears.count("output.weight")) {
    try {
      overrides.linears["output.weight"] = overrides.token_embedding->as_linear();
    } catch (const Error& e) {
      fail(where, ": layer 'token_embd.weight' as the output head: ", e.what());
    }
  }
  out.model = nn::LlamaModel::load_stored(view_ptr, overrides);
  return out;
}

}  // namespace strata::compress
