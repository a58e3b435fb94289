// GGUF reader, writer and Model adapter. Layout (ggml docs/gguf.md), all little-endian:
//   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x { string key, u32 value_type, value },
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   zero padding to the alignment, then the data section (offsets are relative to its start).
// A string is a u64 byte length and the bytes; an array is a u32 element type, a u64 count and the
// elements. Version 1 used 32-bit counts and is not read; versions 2 and 3 differ only in that 3
// allows big-endian files, which are recognised and refused.
#include "strata/io/gguf.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <unordered_set>

#include "strata/core/error.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::io {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader copies little-endian numbers straight into host integers");

namespace {

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

constexpr uint32_t kMaxValueType = 12;
// Smallest encodings, used to bound counts by the bytes left before anything is allocated.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;          // empty key, type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims = 0, type, offset

uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::boolean: return 1;
    case GgufValueType::u16: case GgufValueType::i16: return 2;
    case GgufValueType::u32: case GgufValueType::i32: case GgufValueType::f32: return 4;
    case GgufValueType::u64: case GgufValueType::i64: case GgufValueType::f64: return 8;
    case GgufValueType::string: return 8;
    case GgufValueType::array: return 12;
  }
  return 1;
}

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// For error messages about forged offsets, where a plain sum could wrap around.
uint64_t sat_add(uint64_t a, uint64_t b) { return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b; }

// Elements of a tensor with these dims, or an error naming `what` if a dim is negative or the product
// overflows int64.
int64_t checked_numel(std::span<const int64_t> ne, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : ne) require(d >= 0, what, ": negative dimension ", d);
  for (int64_t d : ne) {
    if (d == 0) return 0;
  }
  for (int64_t d : ne) {
    require(n <= std::numeric_limits<int64_t>::max() / d, what, ": dimensions overflow a 64-bit element count");
    n *= d;
  }
  return n;
}

std::string dims_str(std::span<const int64_t> ne) {
  std::string s = "[";
  for (std::size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Replaces every byte that does not start a well-formed UTF-8 sequence (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF) with U+FFFD, so JSON serialisation never throws on odd tokens.
std::string sanitize_utf8(std::string_view s) {
  auto valid_at = [&](std::size_t i) -> std::size_t {
    const auto c = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char b0 = c(i);
    if (b0 < 0x80) return 1;
    std::size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
    else if (b0 == 0xE0) len = 3, lo = 0xA0;
    else if (b0 == 0xED) len = 3, hi = 0x9F;
    else if (b0 >= 0xE1 && b0 <= 0xEF) len = 3;
    else if (b0 == 0xF0) len = 4, lo = 0x90;
    else if (b0 >= 0xF1 && b0 <= 0xF3) len = 4;
    else if (b0 == 0xF4) len = 4, hi = 0x8F;
    else return 0;
    if (i + len > s.size()) return 0;
    if (c(i + 1) < lo || c(i + 1) > hi) return 0;
    for (std::size_t k = 2; k < len; ++k)
      if (c(i + k) < 0x80 || c(i + k) > 0xBF) return 0;
    return len;
  };
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t n = valid_at(i);
    if (n == 0) break;
    i += n;
  }
  if (i == s.size()) return std::string(s);
  std::string out(s.substr(0, i));
  while (i < s.size()) {
    const std::size_t n = valid_at(i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

// ---- parsing ------------------------------------------------------------------------------------

class Parser {
 public:
  Parser(std::span<const std::byte> bytes, const std::string& name) : r_(bytes, name), name_(name) {}

  ByteReader& reader() { return r_; }

  std::string read_string(const std::string& field) {
    const uint64_t n = r_.read<uint64_t>(field + " length");
    require(n <= r_.remaining(), name_, ": ", field, " claims ", n, " bytes at offset ", r_.offset(), " but only ",
            r_.remaining(), " remain");
    return std::string(r_.take_string(n, field));
  }

  GgufValueType read_type(const std::string& field) {
    const uint32_t t = r_.read<uint32_t>(field);
    require(t <= kMaxValueType, name_, ": ", field, " is ", t, ", not a GGUF value type (0..12)");
    return static_cast<GgufValueType>(t);
  }

  GgufValue read_value(GgufValueType t, const std::string& field, int depth) {
    switch (t) {
      case GgufValueType::u8: return r_.read<uint8_t>(field);
      case GgufValueType::i8: return r_.read<int8_t>(field);
      case GgufValueType::u16: return r_.read<uint16_t>(field);
      case GgufValueType::i16: return r_.read<int16_t>(field);
      case GgufValueType::u32: return r_.read<uint32_t>(field);
      case GgufValueType::i32: return r_.read<int32_t>(field);
      case GgufValueType::f32: return r_.read<float>(field);
      case GgufValueType::boolean: return read_bool(field);
      case GgufValueType::string: return read_string(field);
      case GgufValueType::array: return read_array(field, depth + 1);
      case GgufValueType::u64: return r_.read<uint64_t>(field);
      case GgufValueType::i64: return r_.read<int64_t>(field);
      case GgufValueType::f64: return r_.read<double>(field);
    }
    fail(name_, ": ", field, ": unknown value type");
  }

 private:
  bool read_bool(const std::string& field) {
    const uint8_t b = r_.read<uint8_t>(field);
    // Any other byte would not survive a rewrite, so it is refused rather than normalised.
    require(b <= 1, name_, ": ", field, ": boolean byte ", static_cast<int>(b), " at offset ", r_.offset() - 1,
            " is neither 0 nor 1");
    return b == 1;
  }

  template <class T>
  std::vector<T> read_numbers(uint64_t count, const std::string& field) {
    const auto bytes = r_.take(count * sizeof(T), field);
    std::vector<T> v(static_cast<std::size_t>(count));
    if (count) std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  }

  GgufArray read_array(const std::string& field, int depth) {
    require(depth <= kGgufMaxArrayDepth, name_, ": ", field, ": arrays nested deeper than ", kGgufMaxArrayDepth,
            " levels");
    const GgufValueType et = read_type(field + " element type");
    const uint64_t count = r_.read<uint64_t>(field + " element count");
    require(count <= r_.remaining() / min_value_bytes(et), name_, ": ", field, ": ", count, " elements of type ",
            gguf_value_type_name(et), " cannot fit in the ", r_.remaining(), " bytes left at offset ", r_.offset());
    GgufArray a;
    switch (et) {
      case GgufValueType::u8: a.items = read_numbers<uint8_t>(count, field); break;
      case GgufValueType::i8: a.items = read_numbers<int8_t>(count, field); break;
      case GgufValueType::u16: a.items = read_numbers<uint16_t>(count, field); break;
      case GgufValueType::i16: a.items = read_numbers<int16_t>(count, field); break;
      case GgufValueType::u32: a.items = read_numbers<uint32_t>(count, field); break;
      case GgufValueType::i32: a.items = read_numbers<int32_t>(count, field); break;
      case GgufValueType::f32: a.items = read_numbers<float>(count, field); break;
      case GgufValueType::u64: a.items = read_numbers<uint64_t>(count, field); break;
      case GgufValueType::i64: a.items = read_numbers<int64_t>(count, field); break;
      case GgufValueType::f64: a.items = read_numbers<double>(count, field); break;
      case GgufValueType::boolean: {
        std::vector<bool> v(static_cast<std::size_t>(count));
        for (uint64_t i = 0; i < count; ++i) v[i] = read_bool(field);
        a.items = std::move(v);
        break;
      }
      case GgufValueType::string: {
        std::vector<std::string> v;
        v.reserve(static_cast<std::size_t>(count));
        for (uint64_t i = 0; i < count; ++i) v.push_back(read_string(field + "[" + std::to_string(i) + "]"));
        a.items = std::move(v);
        break;
      }
      case GgufValueType::array: {
        std::vector<GgufArray> v;
        v.reserve(static_cast<std::size_t>(count));
        for (uint64_t i = 0; i < count; ++i) v.push_back(read_array(field + "[" + std::to_string(i) + "]", depth + 1));
        a.items = std::move(v);
        break;
      }
    }
    return a;
  }

  ByteReader r_;
  const std::string& name_;
};

// ---- writing ------------------------------------------------------------------------------------

// Collects bytes in memory with the interface of AtomicFileWriter.
class VectorSink {
 public:
  void write(const void* data, uint64_t n) {
    const auto* p = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), p, p + n);
  }
  void pad_to(uint64_t alignment) { out_.resize(static_cast<std::size_t>(align_up(out_.size(), alignment))); }
  uint64_t written() const { return out_.size(); }
  std::vector<std::byte> take() { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
};

template <class Sink, class T>
void put(Sink& s, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  s.write(&v, sizeof v);
}

template <class Sink>
void put_string(Sink& s, std::string_view str) {
  put<Sink, uint64_t>(s, str.size());
  s.write(str.data(), str.size());
}

template <class Sink>
void put_array(Sink& s, const GgufArray& a) {
  put<Sink, uint32_t>(s, static_cast<uint32_t>(a.type()));
  put<Sink, uint64_t>(s, a.size());
  std::visit(Overloaded{
                 [&](const std::vector<bool>& v) {
                   for (bool b : v) put<Sink, uint8_t>(s, b ? 1 : 0);
                 },
                 [&](const std::vector<std::string>& v) {
                   for (const auto& str : v) put_string(s, str);
                 },
                 [&](const std::vector<GgufArray>& v) {
                   for (const auto& inner : v) put_array(s, inner);
                 },
                 [&](const auto& v) { s.write(v.data(), v.size() * sizeof(v[0])); },
             },
             a.items);
}

template <class Sink>
void put_value(Sink& s, const GgufValue& v) {
  std::visit(Overloaded{
                 [&](bool b) { put<Sink, uint8_t>(s, b ? 1 : 0); },
                 [&](const std::string& str) { put_string(s, str); },
                 [&](const GgufArray& a) { put_array(s, a); },
                 [&](auto x) { put(s, x); },
             },
             v);
}

int array_depth(const GgufArray& a) {
  int inner = 0;
  if (const auto* v = std::get_if<std::vector<GgufArray>>(&a.items))
    for (const auto& x : *v) inner = std::max(inner, array_depth(x));
  return 1 + inner;
}

// The alignment a key/value list asks for; `where` names the file for errors.
uint32_t alignment_of(const std::vector<GgufKV>& kvs, const std::string& where) {
  for (const auto& kv : kvs) {
    if (kv.key != "general.alignment") continue;
    const auto* a = std::get_if<uint32_t>(&kv.value);
    require(a != nullptr, where, ": general.alignment must be a u32, got ", gguf_value_type_name(gguf_type_of(kv.value)));
    require(is_power_of_two(*a) && *a <= kGgufMaxAlignment, where, ": general.alignment ", *a,
            " is not a power of two between 1 and ", kGgufMaxAlignment);
    return *a;
  }
  return kGgufDefaultAlignment;
}

// ---- Model adapter --------------------------------------------------------------------------------

class GgufModel final : public Model {
 public:
  // Keeps the mapping and the tensor table; the parsed key/values live on only as the JSON metadata
  // (a tokenizer's vocabulary and merges would otherwise be held twice for the model's lifetime).
  GgufModel(const GgufFile& file, const std::filesystem::path& path)
      : owner_(file.owner()), bytes_(file.bytes()), name_(file.name()), gguf_tensors_(file.tensors()) {
    path_ = path;
    tensors_.reserve(gguf_tensors_.size());
    for (std::size_t i = 0; i < gguf_tensors_.size(); ++i) {
      const GgufTensorInfo& t = gguf_tensors_[i];
      TensorInfo info;
      info.name = t.name;
      info.shape = t.shape();
      info.type = std::string(kernels::ggml_type_name(t.type));
      info.offset = file.data_offset() + t.offset;
      info.nbytes = t.nbytes;
      tensors_.push_back(std::move(info));
      tensor_index_.emplace(t.name, i);
    }
    for (const auto& kv : file.metadata()) metadata_[sanitize_utf8(kv.key)] = gguf_to_json(kv.value);
    fill_config(file);
  }

  using Model::to_f32;
  FileFormat format() const override { return FileFormat::gguf; }

  std::span<const std::byte> raw(const TensorInfo& t) const override {
    return tensor_bytes(index_of(t));
  }

  strata::Tensor to_f32(const TensorInfo& t) const override {
    const std::size_t i = index_of(t);
    const GgufTensorInfo& g = gguf_tensors_[i];
    const kernels::GgmlCodec& codec = kernels::ggml_codec(g.type);
    require(codec.can_dequantize(), name_, ": tensor '", g.name, "': type ", codec.name,
            " cannot be converted to float32");
    strata::Tensor out(DType::f32, g.shape());
    const int64_t n = g.numel();
    // The parser has checked the tensor's byte count against its type and shape.
    if (n > 0) codec.dequantize_row(tensor_bytes(i).data(), n, reinterpret_cast<float*>(out.raw()));
    return out;
  }

 private:
  std::size_t index_of(const TensorInfo& t) const {
    auto it = tensor_index_.find(t.name);
    require(it != tensor_index_.end(), name_, ": no tensor named '", t.name, "'");
    return it->second;
  }

  // The parser has checked every tensor's extent against the mapping; tensors_ and gguf_tensors_
  // share their order.
  std::span<const std::byte> tensor_bytes(std::size_t i) const {
    return bytes_.subspan(tensors_[i].offset, gguf_tensors_[i].nbytes);
  }

  // An integer hyper-parameter; per-layer arrays (some architectures vary heads or widths by layer)
  // are summarised by their largest entry.
  static int64_t int_param(const GgufFile& file, const std::string& key) {
    const GgufValue* v = file.find(key);
    if (!v) return 0;
    if (auto i = gguf_as_int(*v)) return *i;
    if (const auto* a = std::get_if<GgufArray>(v)) {
      int64_t best = 0;
      std::visit(Overloaded{
                     [&](const std::vector<bool>&) {},
                     [&](const std::vector<std::string>&) {},
                     [&](const std::vector<GgufArray>&) {},
                     [&](const auto& xs) {
                       for (auto x : xs) {
                         if constexpr (std::is_integral_v<std::decay_t<decltype(x)>>) {
                           if (static_cast<uint64_t>(x) <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                             best = std::max(best, static_cast<int64_t>(x));
                         }
                       }
                     },
                 },
                 a->items);
      return best;
    }
    return 0;
  }

  static double float_param(const GgufFile& file, const std::string& key) {
    const GgufValue* v = file.find(key);
    if (!v) return 0;
    return gguf_as_float(*v).value_or(0.0);
  }

  void fill_config(const GgufFile& file) {
    auto& c = config_;
    if (const auto* a = file.find("general.architecture"); a && std::holds_alternative<std::string>(*a))
      c.architecture = std::get<std::string>(*a);
    if (const auto* n = file.find("general.name"); n && std::holds_alternative<std::string>(*n))
      c.name = std::get<std::string>(*n);
    const std::string p = c.architecture + ".";
    c.n_layers = int_param(file, p + "block_count");
    c.dim = int_param(file, p + "embedding_length");
    c.hidden_dim = int_param(file, p + "feed_forward_length");
    c.n_heads = int_param(file, p + "attention.head_count");
    // llama.cpp reads a missing head_count_kv as "one KV head per query head".
    c.n_kv_heads = file.find(p + "attention.head_count_kv") ? int_param(file, p + "attention.head_count_kv") : c.n_heads;
    c.head_dim = int_param(file, p + "attention.key_length");
    if (c.head_dim == 0 && c.n_heads > 0) c.head_dim = c.dim / c.n_heads;
    c.context_length = int_param(file, p + "context_length");
    c.rope_theta = float_param(file, p + "rope.freq_base");
    c.norm_eps = float_param(file, p + "attention.layer_norm_rms_epsilon");
    if (c.norm_eps == 0) c.norm_eps = float_param(file, p + "attention.layer_norm_epsilon");

    if (const auto* tok = file.find("tokenizer.ggml.tokens"); tok && std::holds_alternative<GgufArray>(*tok))
      c.vocab_size = static_cast<int64_t>(std::get<GgufArray>(*tok).size());
    if (c.vocab_size == 0) c.vocab_size = int_param(file, p + "vocab_size");
    const GgufTensorInfo* emb = file.find_tensor("token_embd.weight");
    if (c.vocab_size == 0 && emb && emb->ne.size() == 2) c.vocab_size = emb->ne[1];
    c.tied_embeddings = emb != nullptr && file.find_tensor("output.weight") == nullptr;
  }

  std::shared_ptr<const void> owner_;  // keeps the mapping alive
  std::span<const std::byte> bytes_;
  std::string name_;
  std::vector<GgufTensorInfo> gguf_tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;
};

}  // namespace

// ---- values -------------------------------------------------------------------------------------

std::string_view gguf_value_type_name(GgufValueType t) {
  static constexpr std::string_view kNames[] = {"u8",  "i8",  "u16",    "i16",   "u32", "i32", "f32",
                                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i <= kMaxValueType ? kNames[i] : std::string_view("unknown");
}

std::size_t GgufArray::size() const {
  return std::visit([](const auto& v) { return v.size(); }, items);
}

std::optional<int64_t> gguf_as_int(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, bool> || !std::is_integral_v<T>) {
          return std::nullopt;
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
          return static_cast<int64_t>(x);
        } else {
          return static_cast<int64_t>(x);
        }
      },
      v);
}

std::optional<double> gguf_as_float(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> std::optional<double> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) return static_cast<double>(x);
        else return std::nullopt;
      },
      v);
}

namespace {
// A float widened to the double that prints as the float's shortest decimal form (1e-05 rather than
// 9.999999747378752e-06), so that metadata reads the way the model's authors wrote it.
double json_float(float f) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, f).ptr;
  double d = f;
  std::from_chars(buf, end, d);
  return d;
}

nlohmann::json array_to_json(const GgufArray& a) {
  nlohmann::json out = nlohmann::json::array();
  std::visit(Overloaded{
                 [&](const std::vector<std::string>& v) {
                   for (const auto& s : v) out.push_back(sanitize_utf8(s));
                 },
                 [&](const std::vector<GgufArray>& v) {
                   for (const auto& x : v) out.push_back(array_to_json(x));
                 },
                 [&](const std::vector<bool>& v) {
                   for (bool b : v) out.push_back(b);
                 },
                 [&](const std::vector<float>& v) {
                   for (float f : v) out.push_back(json_float(f));
                 },
                 [&](const auto& v) {
                   for (auto x : v) out.push_back(x);
                 },
             },
             a.items);
  return out;
}
}  // namespace

nlohmann::json gguf_to_json(const GgufValue& v) {
  return std::visit(Overloaded{
                        [](const std::string& s) -> nlohmann::json { return sanitize_utf8(s); },
                        [](const GgufArray& a) -> nlohmann::json { return array_to_json(a); },
                        [](float f) -> nlohmann::json { return json_float(f); },
                        [](auto x) -> nlohmann::json { return x; },
                    },
                    v);
}

int64_t GgufTensorInfo::numel() const { return checked_numel(ne, "tensor '" + name + "'"); }

Shape GgufTensorInfo::shape() const {
  std::vector<int64_t> dims(ne.rbegin(), ne.rend());
  return Shape(std::span<const int64_t>(dims));
}

// ---- GgufFile -----------------------------------------------------------------------------------

GgufFile GgufFile::open(const std::filesystem::path& path) {
  auto map = std::make_shared<MappedFile>(path);
  GgufFile f = parse(map->bytes(), path.string());
  f.owner_ = std::move(map);
  return f;
}

GgufFile GgufFile::parse(std::span<const std::byte> bytes, std::string name) {
  GgufFile f;
  f.bytes_ = bytes;
  f.name_ = std::move(name);
  const std::string& nm = f.name_;
  const uint64_t file_size = bytes.size();
  Parser p(bytes, nm);
  ByteReader& r = p.reader();

  require(file_size >= 4, nm, ": ", file_size, " bytes is too short for a GGUF file");
  const uint32_t magic = r.read<uint32_t>("magic");
  require(magic == kGgufMagic, nm, ": not a GGUF file (the first four bytes are not \"GGUF\")");
  const uint32_t version = r.read<uint32_t>("version");
  require(version != 0x02000000u && version != 0x03000000u, nm,
          ": big-endian GGUF is not supported (version field reads as byte-swapped)");
  require(version == 2 || version == 3, nm, ": GGUF version ", version, " is not supported (only 2 and 3)");
  f.version_ = version;

  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("key/value count");
  require(n_kv <= r.remaining() / kMinKvBytes, nm, ": header claims ", n_kv, " key/values but only ", r.remaining(),
          " bytes follow");
  require(n_tensors <= r.remaining() / kMinTensorInfoBytes, nm, ": header claims ", n_tensors,
          " tensors but only ", r.remaining(), " bytes follow");
  require(n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes <= r.remaining(), nm, ": header claims ", n_kv,
          " key/values and ", n_tensors, " tensors but only ", r.remaining(), " bytes follow");

  f.kvs_.reserve(static_cast<std::size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = p.read_string("key #" + std::to_string(i));
    const std::string field = "value of key '" + key + "'";
    const GgufValueType t = p.read_type("type of key '" + key + "'");
    GgufValue value = p.read_value(t, field, 0);
    require(f.kv_index_.emplace(key, f.kvs_.size()).second, nm, ": key '", key, "' appears twice");
    f.kvs_.push_back({std::move(key), std::move(value)});
  }
  f.alignment_ = alignment_of(f.kvs_, nm);

  f.tensors_.reserve(static_cast<std::size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = p.read_string("name of tensor #" + std::to_string(i));
    const std::string what = nm + ": tensor '" + t.name + "'";
    const uint32_t n_dims = r.read<uint32_t>("dimension count of tensor '" + t.name + "'");
    require(n_dims <= static_cast<uint32_t>(kGgufMaxDims), what, ": ", n_dims, " dimensions (at most ", kGgufMaxDims,
            ")");
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t v = r.read<uint64_t>("dimensions of tensor '" + t.name + "'");
      require(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), what, ": dimension ", d, " is ", v,
              ", beyond int64");
      t.ne.push_back(static_cast<int64_t>(v));
    }
    const uint32_t type_id = r.read<uint32_t>("type of tensor '" + t.name + "'");
    const auto* traits = kernels::ggml_type_traits(type_id);
    require(traits != nullptr, what, ": unknown or removed ggml type id ", type_id);
    t.type = traits->type;
    t.offset = r.read<uint64_t>("offset of tensor '" + t.name + "'");

    const int64_t numel = checked_numel(t.ne, what);
    const int64_t row = t.ne.empty() ? 1 : t.ne[0];
    require(row % traits->block_size == 0, what, ": row length ", row, " (dims ", dims_str(t.ne),
            ") is not a multiple of the ", traits->name, " block size ", traits->block_size);
    require(static_cast<uint64_t>(numel) / traits->block_size <=
                std::numeric_limits<uint64_t>::max() / traits->type_size,
            what, ": byte size of dims ", dims_str(t.ne), " overflows");
    t.nbytes = static_cast<uint64_t>(numel) / traits->block_size * traits->type_size;
    require(t.offset % f.alignment_ == 0, what, ": data offset ", t.offset, " is not a multiple of the alignment ",
            f.alignment_);
    require(f.tensor_index_.emplace(t.name, f.tensors_.size()).second, nm, ": tensor '", t.name, "' appears twice");
    f.tensors_.push_back(std::move(t));
  }

  f.data_offset_ = align_up(r.offset(), f.alignment_);
  if (!f.tensors_.empty())
    require(f.data_offset_ <= file_size, nm, ": the data section would start at ", f.data_offset_,
            ", past the end of the file (", file_size, " bytes)");
  const uint64_t data_size = f.tensors_.empty() ? 0 : file_size - f.data_offset_;
  for (const auto& t : f.tensors_) {
    require(t.offset <= data_size && t.nbytes <= data_size - t.offset, nm, ": tensor '", t.name, "': data [",
            sat_add(f.data_offset_, t.offset), ", ", sat_add(sat_add(f.data_offset_, t.offset), t.nbytes),
            ") lies past the end of the file (", file_size, " bytes)");
  }
  // Two tensors sharing bytes would alias on write-back; ggml never produces that.
  std::vector<std::size_t> order(f.tensors_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return f.tensors_[a].offset < f.tensors_[b].offset; });
  const GgufTensorInfo* prev = nullptr;
  for (std::size_t i : order) {
    const auto& t = f.tensors_[i];
    if (t.nbytes == 0) continue;
    if (prev) {
      require(prev->offset + prev->nbytes <= t.offset, nm, ": tensors '", prev->name, "' [", prev->offset, ", ",
              prev->offset + prev->nbytes, ") and '", t.name, "' [", t.offset, ", ", t.offset + t.nbytes,
              ") overlap in the data section");
    }
    prev = &t;
  }
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  require(v != nullptr, name_, ": no metadata key '", key, "'");
  return *v;
}

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue& v = get(key);
  const auto* s = std::get_if<std::string>(&v);
  require(s != nullptr, name_, ": key '", key, "' is a ", gguf_value_type_name(gguf_type_of(v)), ", not a string");
  return *s;
}

int64_t GgufFile::get_int(std::string_view key) const {
  const GgufValue& v = get(key);
  const auto i = gguf_as_int(v);
  require(i.has_value(), name_, ": key '", key, "' is a ", gguf_value_type_name(gguf_type_of(v)),
          ", not an integer that fits int64");
  return *i;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  require(t != nullptr, name_, ": no tensor named '", name, "'");
  return *t;
}

std::span<const std::byte> GgufFile::data(const GgufTensorInfo& t) const {
  // Infos of this file were checked at parse time; this guards against an info from another file.
  require(data_offset_ <= bytes_.size() && t.offset <= bytes_.size() - data_offset_ &&
              t.nbytes <= bytes_.size() - data_offset_ - t.offset,
          name_, ": tensor '", t.name, "': data lies past the end of the file (", bytes_.size(), " bytes)");
  return bytes_.subspan(data_offset_ + t.offset, t.nbytes);
}

// ---- GgufWriter ---------------------------------------------------------------------------------

GgufWriter::GgufWriter(uint32_t version) : version_(version) {
  require(version == 2 || version == 3, "GgufWriter: GGUF version ", version, " is not supported (only 2 and 3)");
}

GgufWriter GgufWriter::from(const GgufFile& file) {
  GgufWriter w(file.version());
  w.kvs_ = file.metadata();
  w.tensors_.reserve(file.tensors().size());
  for (const auto& t : file.tensors())
    w.tensors_.push_back({t.name, t.type, t.ne, file.data(t), file.owner()});
  return w;
}

void GgufWriter::set(std::string key, GgufValue value) {
  for (auto& kv : kvs_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  kvs_.push_back({std::move(key), std::move(value)});
}

bool GgufWriter::erase(std::string_view key) {
  const auto it = std::find_if(kvs_.begin(), kvs_.end(), [&](const GgufKV& kv) { return kv.key == key; });
  if (it == kvs_.end()) return false;
  kvs_.erase(it);
  return true;
}

const GgufValue* GgufWriter::find(std::string_view key) const {
  for (const auto& kv : kvs_)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

GgufWriter::Entry* GgufWriter::find_entry(std::string_view name) {
  for (auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void GgufWriter::add_tensor_view(std::string name, GgmlType type, std::vector<int64_t> ne,
                                 std::span<const std::byte> data) {
  require(find_entry(name) == nullptr, "GgufWriter: tensor '", name, "' added twice");
  tensors_.push_back({std::move(name), type, std::move(ne), data, nullptr});
}

void GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, std::vector<std::byte> data) {
  require(find_entry(name) == nullptr, "GgufWriter: tensor '", name, "' added twice");
  auto owned = std::make_shared<const std::vector<std::byte>>(std::move(data));
  const std::span<const std::byte> view(*owned);
  tensors_.push_back({std::move(name), type, std::move(ne), view, std::move(owned)});
}

void GgufWriter::replace_tensor(std::string_view name, GgmlType type, std::vector<std::byte> data) {
  Entry* e = find_entry(name);
  require(e != nullptr, "GgufWriter: no tensor named '", name, "' to replace");
  auto owned = std::make_shared<const std::vector<std::byte>>(std::move(data));
  e->type = type;
  e->data = std::span<const std::byte>(*owned);
  e->keep = std::move(owned);
}

void GgufWriter::replace_tensor_view(std::string_view name, GgmlType type, std::span<const std::byte> data) {
  Entry* e = find_entry(name);
  require(e != nullptr, "GgufWriter: no tensor named '", name, "' to replace");
  e->type = type;
  e->data = data;
  e->keep.reset();
}

bool GgufWriter::remove_tensor(std::string_view name) {
  const auto it = std::find_if(tensors_.begin(), tensors_.end(), [&](const Entry& t) { return t.name == name; });
  if (it == tensors_.end()) return false;
  tensors_.erase(it);
  return true;
}

uint32_t GgufWriter::alignment() const { return alignment_of(kvs_, "GgufWriter"); }

void GgufWriter::validate() const {
  alignment();
  std::unordered_set<std::string_view> keys, names;
  for (const auto& kv : kvs_) {
    require(keys.insert(kv.key).second, "GgufWriter: key '", kv.key, "' appears twice");
    if (const auto* a = std::get_if<GgufArray>(&kv.value))
      require(array_depth(*a) <= kGgufMaxArrayDepth, "GgufWriter: key '", kv.key, "': arrays nested deeper than ",
              kGgufMaxArrayDepth, " levels");
  }
  for (const auto& t : tensors_) {
    const std::string what = "GgufWriter: tensor '" + t.name + "'";
    require(names.insert(t.name).second, what, " appears twice");
    const auto* traits = kernels::ggml_type_traits(static_cast<uint32_t>(t.type));
    require(traits != nullptr, what, ": unknown ggml type id ", static_cast<uint32_t>(t.type));
    require(t.ne.size() <= static_cast<std::size_t>(kGgufMaxDims), what, ": ", t.ne.size(), " dimensions (at most ",
            kGgufMaxDims, ")");
    const int64_t numel = checked_numel(t.ne, what);
    const int64_t row = t.ne.empty() ? 1 : t.ne[0];
    require(row % traits->block_size == 0, what, ": row length ", row, " is not a multiple of the ", traits->name,
            " block size ", traits->block_size);
    const uint64_t want = kernels::ggml_nbytes(t.type, numel);
    require(t.data.size() == want, what, ": ", traits->name, " dims ", dims_str(t.ne), " need ", want,
            " bytes, got ", t.data.size());
  }
}

template <class Sink>
void GgufWriter::emit(Sink& s) const {
  const uint64_t align = alignment();
  put<Sink, uint32_t>(s, kGgufMagic);
  put<Sink, uint32_t>(s, version_);
  put<Sink, uint64_t>(s, tensors_.size());
  put<Sink, uint64_t>(s, kvs_.size());
  for (const auto& kv : kvs_) {
    put_string(s, kv.key);
    put<Sink, uint32_t>(s, static_cast<uint32_t>(gguf_type_of(kv.value)));
    put_value(s, kv.value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(s, t.name);
    put<Sink, uint32_t>(s, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<Sink, uint64_t>(s, static_cast<uint64_t>(d));
    put<Sink, uint32_t>(s, static_cast<uint32_t>(t.type));
    put<Sink, uint64_t>(s, offset);
    offset += align_up(t.data.size(), align);
  }
  s.pad_to(align);
  for (const auto& t : tensors_) {
    s.write(t.data.data(), t.data.size());
    s.pad_to(align);
  }
}

void GgufWriter::write(const std::filesystem::path& path) const {
  validate();
  AtomicFileWriter out(path);
  emit(out);
  out.commit();
}

std::vector<std::byte> GgufWriter::to_bytes() const {
  validate();
  VectorSink sink;
  emit(sink);
  return sink.take();
}

// ---- Model --------------------------------------------------------------------------------------

std::unique_ptr<Model> open_gguf(const std::filesystem::path& path) {
  return std::make_unique<GgufModel>(GgufFile::open(path), path);
}

}  // namespace strata::io
