#include "strata/io/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"

namespace strata::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; the readers copy it as is");

namespace {

// The reference implementation's Dtype enum, in its order (BOOL < F4 < ... < U64): its writer lays out
// data by this order, descending, so it must be reproduced exactly for byte-identical writes. Types
// added in later versions slot between older ones without changing the older ones' relative order.
constexpr SafetensorsDType kDTypes[] = {
    {"BOOL", 8, 0},    {"F4", 4, 1},       {"F6_E2M3", 6, 2},  {"F6_E3M2", 6, 3}, {"U8", 8, 4},
    {"I8", 8, 5},      {"F8_E5M2", 8, 6},  {"F8_E4M3", 8, 7},  {"F8_E8M0", 8, 8}, {"I16", 16, 9},
    {"U16", 16, 10},   {"F16", 16, 11},    {"BF16", 16, 12},   {"I32", 32, 13},   {"U32", 32, 14},
    {"F32", 32, 15},   {"C64", 64, 16},    {"F64", 64, 17},    {"I64", 64, 18},   {"U64", 64, 19},
};

// Real headers nest three deep (root, tensor entry, shape array). A cap far above that keeps a
// hostile header of a million '[' from costing anything in the JSON parser.
constexpr int kMaxJsonDepth = 16;

void check_json_depth(std::string_view text, std::string_view what) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      require(++depth <= kMaxJsonDepth, what, ": header: JSON nested deeper than ", kMaxJsonDepth,
              " levels at byte ", 8 + i);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

// Parses JSON keeping key order and refusing duplicate keys at any level, which nlohmann would
// otherwise merge silently (a forged header could then hide a tensor).
nlohmann::ordered_json parse_json_strict(std::string_view text, std::string_view what, std::string_view part) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto callback = [&](int, nlohmann::ordered_json::parse_event_t event, nlohmann::ordered_json& parsed) {
    using E = nlohmann::ordered_json::parse_event_t;
    if (event == E::object_start) {
      keys.emplace_back();
    } else if (event == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == E::key && !keys.empty() && duplicate.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) duplicate = k;
    }
    return true;
  };
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": ", part, ": invalid JSON: ", e.what());
  }
  require(duplicate.empty(), what, ": ", part, ": key '", duplicate, "' appears twice");
  return j;
}

uint64_t checked_mul(uint64_t a, uint64_t b, std::string_view what, std::string_view tensor) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a)
    fail(what, ": tensor '", tensor, "': shape: element count overflows");
  return a * b;
}

uint64_t get_unsigned(const nlohmann::ordered_json& v, std::string_view what, std::string_view tensor,
                      std::string_view field) {
  require(v.is_number_unsigned(), what, ": tensor '", tensor, "': ", field,
          ": expected a non-negative integer, got ", v.dump());
  return v.get<uint64_t>();
}

struct ParsedTensor {
  TensorInfo info;
  uint64_t begin = 0, end = 0;  // relative to the data section
};

ParsedTensor parse_tensor_entry(const std::string& name, const nlohmann::ordered_json& entry, std::string_view what) {
  require(entry.is_object(), what, ": tensor '", name, "': expected an object with dtype, shape and data_offsets, got ",
          entry.type_name());
  auto field = [&](const char* key) -> const nlohmann::ordered_json& {
    auto it = entry.find(key);
    require(it != entry.end(), what, ": tensor '", name, "': missing field '", key, "'");
    return *it;
  };
  ParsedTensor p;
  p.info.name = name;

  const auto& dtype = field("dtype");
  require(dtype.is_string(), what, ": tensor '", name, "': dtype: expected a string, got ", dtype.dump());
  const auto dt = safetensors_dtype(dtype.get_ref<const std::string&>());
  require(dt.has_value(), what, ": tensor '", name, "': dtype: unknown type '",
          dtype.get_ref<const std::string&>(), "'");
  p.info.type = std::string(dt->name);

  const auto& shape = field("shape");
  require(shape.is_array(), what, ": tensor '", name, "': shape: expected an array, got ", shape.dump());
  require(shape.size() <= static_cast<std::size_t>(kMaxRank), what, ": tensor '", name, "': shape: rank ",
          shape.size(), " exceeds the maximum of ", kMaxRank);
  std::vector<int64_t> dims;
  uint64_t numel = 1;
  for (const auto& d : shape) {
    const uint64_t v = get_unsigned(d, what, name, "shape");
    require(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), what, ": tensor '", name,
            "': shape: dimension ", v, " is too large");
    numel = checked_mul(numel, v, what, name);
    dims.push_back(static_cast<int64_t>(v));
  }
  require(numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), what, ": tensor '", name,
          "': shape: element count overflows");
  p.info.shape = Shape(std::span<const int64_t>(dims));

  const auto& offsets = field("data_offsets");
  require(offsets.is_array() && offsets.size() == 2, what, ": tensor '", name,
          "': data_offsets: expected [begin, end], got ", offsets.dump());
  p.begin = get_unsigned(offsets[0], what, name, "data_offsets");
  p.end = get_unsigned(offsets[1], what, name, "data_offsets");
  require(p.begin <= p.end, what, ": tensor '", name, "': data_offsets: begin ", p.begin, " is after end ", p.end);
  const uint64_t bits = checked_mul(numel, static_cast<uint64_t>(dt->bits), what, name);
  require(bits % 8 == 0, what, ": tensor '", name, "': shape ", p.info.shape.str(), " of ", dt->name,
          " does not fill a whole number of bytes");
  const uint64_t expected = bits / 8;
  require(p.end - p.begin == expected, what, ": tensor '", name, "': data_offsets: [", p.begin, ", ", p.end,
          ") holds ", p.end - p.begin, " bytes but shape ", p.info.shape.str(), " of ", dt->name, " needs ",
          expected);
  p.info.nbytes = expected;
  return p;
}

template <class T>
void convert_ints(const std::byte* src, float* dst, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}

// F8_E4M3 as the reference means it (the "fn" variant): bias 7, no infinities, S.1111.111 is NaN.
float f8_e4m3_to_f32(uint8_t b) {
  const float sign = (b & 0x80) ? -1.0f : 1.0f;
  const int exp = (b >> 3) & 0xF;
  const int mant = b & 0x7;
  if (exp == 0xF && mant == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -9);  // mant/8 * 2^-6
  return sign * std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, exp - 7);
}

// Half-precision arrays go through the SIMD converters, which take typed pointers: copy unaligned data
// into an aligned buffer first, in pieces, so that no misaligned access happens.
template <class H>
void convert_half(const std::byte* src, float* dst, uint64_t n, void (*convert)(const H*, float*, uint64_t)) {
  if (reinterpret_cast<std::uintptr_t>(src) % alignof(H) == 0) {
    convert(reinterpret_cast<const H*>(src), dst, n);
    return;
  }
  constexpr uint64_t kChunk = 4096;
  std::vector<H> tmp(kChunk);
  for (uint64_t i = 0; i < n; i += kChunk) {
    const uint64_t m = std::min(kChunk, n - i);
    std::memcpy(tmp.data(), src + i * sizeof(H), m * sizeof(H));
    convert(tmp.data(), dst + i, m);
  }
}

std::string json_string(std::string_view s, std::string_view context) {
  try {
    return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception&) {
    fail(context, ": not valid UTF-8, which a safetensors header requires");
  }
}

bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

std::string read_small_file(const std::filesystem::path& path, uint64_t cap) {
  MappedFile f(path);
  require(f.size() <= cap, path.string(), ": ", f.size(), " bytes is too large for a JSON file (limit ", cap, ")");
  return std::string(reinterpret_cast<const char*>(f.bytes().data()), f.size());
}

}  // namespace

std::span<const SafetensorsDType> safetensors_dtypes() { return kDTypes; }

std::optional<SafetensorsDType> safetensors_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d;
  return std::nullopt;
}

SafetensorsHeader parse_safetensors(std::span<const std::byte> bytes, std::string_view what) {
  ByteReader in(bytes, std::string(what));
  const uint64_t n = in.read<uint64_t>("header length");
  require(n <= kSafetensorsMaxHeader, what, ": header length ", n, " exceeds the limit of ", kSafetensorsMaxHeader,
          " bytes (not a safetensors file, or a corrupt one)");
  require(n <= in.remaining(), what, ": header length ", n, " runs past the end of the file (", bytes.size(),
          " bytes)");
  const std::string_view text = in.take_string(n, "header");
  require(!text.empty() && text.front() == '{', what, ": header: does not start with '{'");
  check_json_depth(text, what);
  const auto j = parse_json_strict(text, what, "header");
  require(j.is_object(), what, ": header: expected a JSON object, got ", j.type_name());

  SafetensorsHeader h;
  h.header_size = n;
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = bytes.size() - data_start;

  std::vector<ParsedTensor> parsed;
  parsed.reserve(j.size());
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      require(value.is_object(), what, ": __metadata__: expected an object of strings, got ", value.type_name());
      h.has_metadata = true;
      for (const auto& [mk, mv] : value.items()) {
        require(mv.is_string(), what, ": __metadata__: key '", mk, "': expected a string value, got ", mv.dump());
        h.metadata.emplace_back(mk, mv.get<std::string>());
      }
      continue;
    }
    parsed.push_back(parse_tensor_entry(key, value, what));
  }

  // Data order, not header order: what makes the no-overlap and full-coverage checks one pass.
  std::stable_sort(parsed.begin(), parsed.end(), [](const ParsedTensor& a, const ParsedTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (auto& p : parsed) {
    require(p.end <= data_size, what, ": tensor '", p.info.name, "': data_offsets: end ", p.end,
            " lies past the end of the data (", data_size, " bytes after the header; file truncated?)");
    if (p.begin < cursor)
      fail(what, ": tensor '", p.info.name, "': data_offsets [", p.begin, ", ", p.end, ") overlap tensor '",
           h.tensors.back().name, "' which ends at ", cursor);
    require(p.begin == cursor, what, ": tensor '", p.info.name, "': data_offsets: begins at ", p.begin,
            " leaving bytes [", cursor, ", ", p.begin, ") of the data unused");
    cursor = p.end;
    p.info.offset = data_start + p.begin;
    h.tensors.push_back(std::move(p.info));
  }
  require(cursor == data_size, what, ": ", data_size - cursor,
          " bytes after the last tensor's data (the tensors end at ",
          data_start + cursor, ", the file at ", bytes.size(), ")");
  return h;
}

void safetensors_convert_to_f32(std::string_view dtype, const std::byte* src, float* dst, uint64_t n,
                                std::string_view what) {
  if (n == 0) return;
  if (dtype == "F32") {
    std::memcpy(dst, src, n * sizeof(float));
  } else if (dtype == "F64") {
    convert_ints<double>(src, dst, n);
  } else if (dtype == "F16") {
    convert_half<f16>(src, dst, n, convert_f16_to_f32);
  } else if (dtype == "BF16") {
    convert_half<bf16>(src, dst, n, convert_bf16_to_f32);
  } else if (dtype == "I64") {
    convert_ints<int64_t>(src, dst, n);
  } else if (dtype == "U64") {
    convert_ints<uint64_t>(src, dst, n);
  } else if (dtype == "I32") {
    convert_ints<int32_t>(src, dst, n);
  } else if (dtype == "U32") {
    convert_ints<uint32_t>(src, dst, n);
  } else if (dtype == "I16") {
    convert_ints<int16_t>(src, dst, n);
  } else if (dtype == "U16") {
    convert_ints<uint16_t>(src, dst, n);
  } else if (dtype == "I8") {
    convert_ints<int8_t>(src, dst, n);
  } else if (dtype == "U8") {
    convert_ints<uint8_t>(src, dst, n);
  } else if (dtype == "BOOL") {
    for (uint64_t i = 0; i < n; ++i) dst[i] = src[i] != std::byte{0} ? 1.0f : 0.0f;
  } else if (dtype == "F8_E5M2") {
    // E5M2 is the top byte of a binary16, so the f16 decoder is exact for it.
    for (uint64_t i = 0; i < n; ++i)
      dst[i] = f16_to_f32(f16{static_cast<uint16_t>(std::to_integer<uint16_t>(src[i]) << 8)});
  } else if (dtype == "F8_E4M3") {
    for (uint64_t i = 0; i < n; ++i) dst[i] = f8_e4m3_to_f32(std::to_integer<uint8_t>(src[i]));
  } else if (dtype == "F8_E8M0") {
    // A bare power-of-two exponent (the OCP MX scale type): 2^(e - 127), with 0xFF as NaN.
    for (uint64_t i = 0; i < n; ++i) {
      const uint32_t e = std::to_integer<uint32_t>(src[i]);
      dst[i] = e == 0xFF ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, static_cast<int>(e) - 127);
    }
  } else {
    // F4 and F6 pack elements across bytes in framework-specific ways, and C64 is complex.
    fail(what, ": cannot convert type '", dtype, "' to float32");
  }
}

// ---- SafetensorsModel ----------------------------------------------------------------------------

ModelConfig config_from_hf_json(const nlohmann::json& c, std::string_view what) {
  ModelConfig cfg;
  require(c.is_object(), what, ": expected a JSON object, got ", c.type_name());
  auto find = [&](std::initializer_list<const char*> keys) -> const nlohmann::json* {
    for (const char* k : keys)
      if (auto it = c.find(k); it != c.end() && !it->is_null()) return &*it;
    return nullptr;
  };
  auto get_int = [&](std::initializer_list<const char*> keys) -> int64_t {
    const auto* v = find(keys);
    if (!v) return 0;
    require(v->is_number_integer() && v->get<int64_t>() >= 0, what, ": '", *keys.begin(),
            "': expected a non-negative integer, got ", v->dump());
    return v->get<int64_t>();
  };
  auto get_double = [&](std::initializer_list<const char*> keys) -> double {
    const auto* v = find(keys);
    if (!v) return 0;
    require(v->is_number(), what, ": '", *keys.begin(), "': expected a number, got ", v->dump());
    return v->get<double>();
  };
  if (const auto* v = find({"model_type"})) {
    require(v->is_string(), what, ": 'model_type': expected a string, got ", v->dump());
    cfg.architecture = v->get<std::string>();
  } else if (const auto* a = find({"architectures"}); a && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    cfg.architecture = (*a)[0].get<std::string>();
  }
  if (const auto* v = find({"_name_or_path", "name_or_path"}); v && v->is_string()) cfg.name = v->get<std::string>();
  cfg.n_layers = get_int({"num_hidden_layers", "n_layer", "num_layers"});
  cfg.dim = get_int({"hidden_size", "n_embd", "d_model"});
  cfg.hidden_dim = get_int({"intermediate_size", "n_inner", "ffn_dim"});
  cfg.n_heads = get_int({"num_attention_heads", "n_head"});
  cfg.n_kv_heads = get_int({"num_key_value_heads"});
  // Without a separate key-value head count the architecture is plain multi-head attention.
  if (cfg.n_kv_heads == 0) cfg.n_kv_heads = cfg.n_heads;
  cfg.head_dim = get_int({"head_dim"});
  if (cfg.head_dim == 0 && cfg.n_heads > 0 && cfg.dim % cfg.n_heads == 0) cfg.head_dim = cfg.dim / cfg.n_heads;
  cfg.vocab_size = get_int({"vocab_size"});
  cfg.context_length = get_int({"max_position_embeddings", "n_positions", "n_ctx"});
  cfg.rope_theta = get_double({"rope_theta"});
  cfg.norm_eps = get_double({"layer_norm_eps", "rms_norm_eps", "layer_norm_epsilon"});
  if (const auto* v = find({"tie_word_embeddings"})) {
    require(v->is_boolean(), what, ": 'tie_word_embeddings': expected true or false, got ", v->dump());
    cfg.tied_embeddings = v->get<bool>();
  }
  return cfg;
}

nlohmann::json config_to_json(const ModelConfig& c) {
  return {{"architecture", c.architecture}, {"name", c.name},
          {"n_layers", c.n_layers},         {"dim", c.dim},
          {"hidden_dim", c.hidden_dim},     {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},     {"head_dim", c.head_dim},
          {"vocab_size", c.vocab_size},     {"context_length", c.context_length},
          {"rope_theta", c.rope_theta},     {"norm_eps", c.norm_eps},
          {"tied_embeddings", c.tied_embeddings}};
}

ModelConfig config_from_json(const nlohmann::json& j, std::string_view what) {
  require(j.is_object(), what, ": expected a JSON object, got ", j.type_name());
  auto field = [&](const char* key) -> const nlohmann::json& {
    auto it = j.find(key);
    require(it != j.end(), what, ": missing '", key, "'");
    return *it;
  };
  auto get_string = [&](const char* key) {
    const auto& v = field(key);
    require(v.is_string(), what, ": '", key, "': expected a string, got ", v.dump());
    return v.get<std::string>();
  };
  auto get_int = [&](const char* key) {
    const auto& v = field(key);
    require(v.is_number_integer() && v.get<int64_t>() >= 0, what, ": '", key,
            "': expected a non-negative integer, got ", v.dump());
    return v.get<int64_t>();
  };
  auto get_double = [&](const char* key) {
    const auto& v = field(key);
    require(v.is_number(), what, ": '", key, "': expected a number, got ", v.dump());
    return v.get<double>();
  };
  ModelConfig c;
  c.architecture = get_string("architecture");
  c.name = get_string("name");
  c.n_layers = get_int("n_layers");
  c.dim = get_int("dim");
  c.hidden_dim = get_int("hidden_dim");
  c.n_heads = get_int("n_heads");
  c.n_kv_heads = get_int("n_kv_heads");
  c.head_dim = get_int("head_dim");
  c.vocab_size = get_int("vocab_size");
  c.context_length = get_int("context_length");
  c.rope_theta = get_double("rope_theta");
  c.norm_eps = get_double("norm_eps");
  const auto& tied = field("tied_embeddings");
  require(tied.is_boolean(), what, ": 'tied_embeddings': expected true or false, got ", tied.dump());
  c.tied_embeddings = tied.get<bool>();
  return c;
}

namespace {

// The source metadata and config a strata compressed-model file carries (see kStrataFormatKey).
void expose_strata_source(const StringPairs& file_metadata, const std::string& what, nlohmann::json& metadata,
                          ModelConfig& config) {
  auto value = [&](std::string_view key) -> const std::string* {
    for (const auto& [k, v] : file_metadata)
      if (k == key) return &v;
    return nullptr;
  };
  if (!value(kStrataFormatKey)) return;
  auto parse = [&](std::string_view key, const std::string& text) {
    const std::string part = detail::concat("__metadata__ '", key, "'");
    check_json_depth(text, detail::concat(what, ": ", part));
    return nlohmann::json::parse(parse_json_strict(text, what, part).dump());
  };
  if (const std::string* text = value(kStrataSourceMetadataKey)) {
    auto source = parse(kStrataSourceMetadataKey, *text);
    require(source.is_object(), what, ": __metadata__ '", kStrataSourceMetadataKey, "': expected a JSON object, got ",
            source.type_name());
    for (auto& [k, v] : source.items())
      if (k != "__metadata__") metadata[k] = std::move(v);
  }
  if (const std::string* text = value(kStrataConfigKey))
    config = config_from_json(parse(kStrataConfigKey, *text),
                              detail::concat(what, ": __metadata__ '", kStrataConfigKey, "'"));
}

}  // namespace

SafetensorsModel::SafetensorsModel(const std::filesystem::path& path) {
  path_ = path;
  const std::string fname = path.filename().string();
  const bool is_index = fname.ends_with(".json");
  if (!is_index) {
    add_shard(path, 0);
  } else {
    const auto index = parse_json_strict(read_small_file(path, kSafetensorsMaxHeader), path.string(), "index");
    require(index.is_object(), path.string(), ": expected a JSON object, got ", index.type_name());
    auto wm = index.find("weight_map");
    require(wm != index.end() && wm->is_object(), path.string(), ": not a safetensors index: no 'weight_map' object");
    std::map<std::string, std::string> weight_map;  // tensor -> shard file name
    std::set<std::string> shard_names;
    for (const auto& [tensor, file] : wm->items()) {
      require(file.is_string(), path.string(), ": weight_map: tensor '", tensor, "': expected a file name, got ",
              file.dump());
      const auto& f = file.get_ref<const std::string&>();
      // Shards live beside the index; a path would let a downloaded index point anywhere on disk.
      require(is_plain_file_name(f), path.string(), ": weight_map: tensor '", tensor, "': '", f,
              "' is not a plain file name in the index's folder");
      weight_map.emplace(tensor, f);
      shard_names.insert(f);
    }
    require(!shard_names.empty(), path.string(), ": weight_map names no shard");
    int shard = 0;
    for (const auto& s : shard_names) add_shard(path.parent_path() / s, shard++);
    const std::vector<std::string> names(shard_names.begin(), shard_names.end());
    for (const auto& t : tensors_) {
      auto it = weight_map.find(t.name);
      const std::string& holder = names[static_cast<std::size_t>(t.shard)];
      require(it != weight_map.end(), path.string(), ": tensor '", t.name, "' is in shard ", holder,
              " but not in the weight_map");
      require(it->second == holder, path.string(), ": tensor '", t.name, "': weight_map says ", it->second,
              " but it is in ", holder);
      weight_map.erase(it);
    }
    if (!weight_map.empty())
      fail(path.string(), ": tensor '", weight_map.begin()->first, "' is in the weight_map but not in ",
           weight_map.begin()->second);
    if (auto m = index.find("metadata"); m != index.end()) metadata_["index"] = nlohmann::json::parse(m->dump());
  }

  {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : file_metadata_) meta[k] = v;
    if (has_file_metadata_) metadata_["__metadata__"] = std::move(meta);
  }
  expose_strata_source(file_metadata_, path.string(), metadata_, config_);
  const auto config_path = path.parent_path() / "config.json";
  if (std::filesystem::is_regular_file(config_path)) {
    const auto c = parse_json_strict(read_small_file(config_path, 16u << 20), config_path.string(), "config");
    auto plain = nlohmann::json::parse(c.dump());
    config_ = config_from_hf_json(plain, config_path.string());
    metadata_["config"] = std::move(plain);
  }
}

void SafetensorsModel::add_shard(const std::filesystem::path& file, int shard) {
  auto mapped = std::make_unique<MappedFile>(file);
  auto header = parse_safetensors(mapped->bytes(), file.string());
  if (shard == 0) {
    file_metadata_ = header.metadata;
    has_file_metadata_ = header.has_metadata;
  }
  std::set<std::string_view> seen;
  for (const auto& t : tensors_) seen.insert(t.name);
  for (auto& t : header.tensors) {
    require(!seen.contains(t.name), file.string(), ": tensor '", t.name, "' is also in another shard");
    t.shard = shard;
    tensors_.push_back(std::move(t));
  }
  files_.push_back(std::move(mapped));
}

std::vector<std::filesystem::path> SafetensorsModel::shard_paths() const {
  std::vector<std::filesystem::path> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

std::span<const std::byte> SafetensorsModel::raw(const TensorInfo& t) const {
  require(t.shard >= 0 && static_cast<std::size_t>(t.shard) < files_.size(), path_.string(), ": tensor '", t.name,
          "': shard ", t.shard, " does not exist");
  const auto& f = *files_[static_cast<std::size_t>(t.shard)];
  require(t.offset <= f.size() && t.nbytes <= f.size() - t.offset, f.path().string(), ": tensor '", t.name,
          "': bytes [", t.offset, ", ", t.offset + t.nbytes, ") lie outside the file");
  return f.bytes().subspan(t.offset, t.nbytes);
}

Tensor SafetensorsModel::to_f32(const TensorInfo& t) const {
  const auto bytes = raw(t);
  Tensor out(DType::f32, t.shape);
  const auto& file = files_[static_cast<std::size_t>(t.shard)]->path();
  const auto context = detail::concat(file.string(), ": tensor '", t.name, "'");
  safetensors_convert_to_f32(t.type, bytes.data(), out.view<float>().data(), static_cast<uint64_t>(t.numel()), context);
  return out;
}

std::unique_ptr<Model> open_safetensors(const std::filesystem::path& path) {
  return std::make_unique<SafetensorsModel>(path);
}

// ---- writing -------------------------------------------------------------------------------------

namespace {

struct Prepared {
  std::string header;                             // with the 8-byte length in front
  std::vector<const SafetensorsEntry*> ordered;   // tensors in the order of their data
};

Prepared prepare(std::span<const SafetensorsEntry> tensors, const StringPairs* metadata, TensorOrder order) {
  Prepared p;
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    require(t.name != "__metadata__", "safetensors writer: '__metadata__' is reserved and cannot name a tensor");
    require(names.insert(t.name).second, "safetensors writer: tensor '", t.name, "' appears twice");
    const auto dt = safetensors_dtype(t.dtype);
    require(dt.has_value(), "safetensors writer: tensor '", t.name, "': type '", t.dtype,
            "' is not a safetensors dtype");
    const uint64_t bits = static_cast<uint64_t>(t.shape.numel()) * static_cast<uint64_t>(dt->bits);
    require(bits % 8 == 0, "safetensors writer: tensor '", t.name, "': shape ", t.shape.str(), " of ", t.dtype,
            " does not fill a whole number of bytes");
    const uint64_t need = bits / 8;
    require(t.data.size() == need, "safetensors writer: tensor '", t.name, "': ", t.data.size(),
            " bytes of data, but shape ", t.shape.str(), " of ", t.dtype, " needs ", need);
    p.ordered.push_back(&t);
  }
  if (order == TensorOrder::reference)
    std::stable_sort(p.ordered.begin(), p.ordered.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
      const int ra = safetensors_dtype(a->dtype)->rank, rb = safetensors_dtype(b->dtype)->rank;
      return ra != rb ? ra > rb : a->name < b->name;
    });

  std::string json = "{";
  bool first = true;
  if (metadata) {
    json += "\"__metadata__\":{";
    std::set<std::string_view> keys;
    for (std::size_t i = 0; i < metadata->size(); ++i) {
      const auto& [k, v] = (*metadata)[i];
      require(keys.insert(k).second, "safetensors writer: __metadata__ key '", k, "' appears twice");
      if (i) json += ',';
      json += json_string(k, "safetensors writer: __metadata__ key");
      json += ':';
      json += json_string(v, detail::concat("safetensors writer: __metadata__ '", k, "'"));
    }
    json += '}';
    first = false;
  }
  uint64_t offset = 0;
  for (const auto* t : p.ordered) {
    if (!first) json += ',';
    first = false;
    json += json_string(t->name, detail::concat("safetensors writer: tensor name '", t->name, "'"));
    json += ":{\"dtype\":\"" + t->dtype + "\",\"shape\":[";
    for (int d = 0; d < t->shape.rank(); ++d) {
      if (d) json += ',';
      json += std::to_string(t->shape[d]);
    }
    json += "],\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + t->data.size()) + "]}";
    offset += t->data.size();
  }
  json += '}';
  // Spaces are JSON whitespace, so the padding needs no special handling by readers, and data then
  // starts on an 8-byte boundary of the file.
  json.append((8 - json.size() % 8) % 8, ' ');
  require(json.size() <= kSafetensorsMaxHeader, "safetensors writer: header of ", json.size(),
          " bytes exceeds the limit of ", kSafetensorsMaxHeader);

  p.header.assign(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(p.header.data(), &n, 8);
  p.header += json;
  return p;
}

}  // namespace

std::string safetensors_header_bytes(std::span<const SafetensorsEntry> tensors, const StringPairs* metadata,
                                     TensorOrder order) {
  return prepare(tensors, metadata, order).header;
}

void write_safetensors(const std::filesystem::path& path, std::span<const SafetensorsEntry> tensors,
                       const StringPairs* metadata, TensorOrder order) {
  Prepared p;
  try {
    p = prepare(tensors, metadata, order);
  } catch (const Error& e) {
    fail(path.string(), ": ", e.what());
  }
  AtomicFileWriter out(path);
  out.write(p.header.data(), p.header.size());
  for (const auto* t : p.ordered) out.write(t->data);
  out.commit();
}

void write_safetensors(const std::filesystem::path& path, const Model& model) {
  std::vector<SafetensorsEntry> entries;
  entries.reserve(model.tensors().size());
  for (const auto& t : model.tensors()) {
    require(safetensors_dtype(t.type).has_value(), path.string(), ": tensor '", t.name, "' of ", model.path().string(),
            " has type ", t.type, ", which safetensors cannot store (convert it to float first)");
    entries.push_back({t.name, t.type, t.shape, model.raw(t)});
  }
  const auto* st = dynamic_cast<const SafetensorsModel*>(&model);
  const StringPairs* metadata = (st && st->has_file_metadata()) ? &st->file_metadata() : nullptr;
  write_safetensors(path, entries, metadata, TensorOrder::as_given);
}

}  // namespace strata::io
