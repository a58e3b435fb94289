#pragma once
// GGUF (versions 2 and 3, little-endian): reading, writing and opening as an io::Model.
//
// GgufFile parses a byte span: the header, every metadata key/value (all thirteen value types,
// arrays nested up to kGgufMaxArrayDepth), tensor infos and the data section. Every count, length,
// offset and dimension is checked against the bytes that remain before it is used, so a forged
// header fails with strata::Error instead of allocating or reading out of bounds. Tensor data is
// never copied: data() returns a span into the mapped file.
//
// GgufWriter writes the canonical layout (header, key/values, tensor infos, zero padding to the
// alignment, each tensor's data padded to the alignment) through AtomicFileWriter. A GgufFile in
// that layout, passed through GgufWriter::from and written, comes back byte for byte.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/io/model.hpp"
#include "strata/kernels/ggml_blocks.hpp"

namespace strata::io {

using kernels::GgmlType;

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
inline constexpr uint32_t kGgufDefaultAlignment = 32;
// Larger alignments are legal GGUF but unheard of; the cap keeps a forged file from making the
// writer pad with gigabytes of zeros.
inline constexpr uint32_t kGgufMaxAlignment = 1u << 24;
inline constexpr int kGgufMaxDims = 4;
inline constexpr int kGgufMaxArrayDepth = 8;

// Metadata value types, numbered as in the file.
enum class GgufValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType t);  // "u32", "string", ...

// An array of one element type. Numbers sit in typed vectors (not one variant per element) so that
// a million-entry array costs what the file does. The alternative's index equals the element type.
struct GgufArray {
  std::variant<std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>, std::vector<int16_t>,
               std::vector<uint32_t>, std::vector<int32_t>, std::vector<float>, std::vector<bool>,
               std::vector<std::string>, std::vector<GgufArray>, std::vector<uint64_t>, std::vector<int64_t>,
               std::vector<double>>
      items;

  GgufValueType type() const { return static_cast<GgufValueType>(items.index()); }
  std::size_t size() const;
  friend bool operator==(const GgufArray&, const GgufArray&) = default;
};

// One metadata value; the alternative's index equals its GgufValueType.
using GgufValue = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
                               GgufArray, uint64_t, int64_t, double>;

inline GgufValueType gguf_type_of(const GgufValue& v) { return static_cast<GgufValueType>(v.index()); }
// The value as an integer when it is one of the integer types and fits int64 (bool does not count).
std::optional<int64_t> gguf_as_int(const GgufValue& v);
// The value as a double when it is any integer or floating type.
std::optional<double> gguf_as_float(const GgufValue& v);
// JSON for a value: numbers, booleans, strings (invalid UTF-8 replaced by U+FFFD), arrays.
nlohmann::json gguf_to_json(const GgufValue& v);

struct GgufKV {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the innermost (contiguous) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
  // Row-major shape, outermost first: ne reversed.
  Shape shape() const;
};

class GgufFile {
 public:
  // Maps `path` and parses it. The mapping lives as long as this object (and its copies).
  static GgufFile open(const std::filesystem::path& path);
  // Parses bytes owned by the caller, who keeps them alive while the result (or a GgufWriter made
  // from it) is used. `name` prefixes error messages.
  static GgufFile parse(std::span<const std::byte> bytes, std::string name = "<memory>");

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the data section in the file
  std::span<const std::byte> bytes() const { return bytes_; }

  const std::vector<GgufKV>& metadata() const { return kvs_; }
  const GgufValue* find(std::string_view key) const;
  // Typed lookups; throw strata::Error naming the key when it is absent or of another type.
  const GgufValue& get(std::string_view key) const;
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  const GgufTensorInfo& tensor(std::string_view name) const;
  // The tensor's bytes in the file (no copy).
  std::span<const std::byte> data(const GgufTensorInfo& t) const;
  // Keeps the underlying bytes alive (null for parse()).
  const std::shared_ptr<const void>& owner() const { return owner_; }

 private:
  std::shared_ptr<const void> owner_;
  std::span<const std::byte> bytes_;
  std::string name_;
  uint32_t version_ = 3;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKV> kvs_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> kv_index_, tensor_index_;
};

// Builds a GGUF file in memory (metadata and references to tensor bytes) and writes it atomically.
// The alignment is general.alignment when set (it must be a u32 power of two), 32 otherwise.
class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3);
  // Everything in `file`, in file order: version, key/values, tensors (referring to the file's bytes,
  // which stay alive through the file's owner()).
  static GgufWriter from(const GgufFile& file);

  // Replaces the value of an existing key in place (keeping the order) or appends a new key.
  void set(std::string key, GgufValue value);
  bool erase(std::string_view key);
  const GgufValue* find(std::string_view key) const;
  const std::vector<GgufKV>& metadata() const { return kvs_; }

  // Appends a tensor whose bytes are borrowed: the caller keeps them alive until write() returns.
  void add_tensor_view(std::string name, GgmlType type, std::vector<int64_t> ne, std::span<const std::byte> data);
  // Appends a tensor that owns its bytes.
  void add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, std::vector<std::byte> data);
  // Gives an existing tensor a new type and bytes (the same ne), keeping its place in the order.
  void replace_tensor(std::string_view name, GgmlType type, std::vector<std::byte> data);
  // The same with borrowed bytes: the caller keeps them alive until write() returns.
  void replace_tensor_view(std::string_view name, GgmlType type, std::span<const std::byte> data);
  bool remove_tensor(std::string_view name);
  std::size_t tensor_count() const { return tensors_.size(); }

  uint32_t alignment() const;
  // Throws strata::Error (before creating any file) if a value or a tensor is inconsistent; on a
  // failure while writing, the destination is left as it was.
  void write(const std::filesystem::path& path) const;
  // The same bytes write() would produce, in memory.
  std::vector<std::byte> to_bytes() const;

 private:
  struct Entry {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::span<const std::byte> data;
    std::shared_ptr<const void> keep;  // owner of `data`, when not borrowed
  };
  void validate() const;
  template <class Sink>
  void emit(Sink& sink) const;
  Entry* find_entry(std::string_view name);

  uint32_t version_;
  std::vector<GgufKV> kvs_;
  std::vector<Entry> tensors_;
};

// Opens a GGUF file as a Model: tensor shapes row-major (ne reversed), offsets absolute, config from
// the architecture's keys ("llama.block_count", ...), metadata as JSON of every key/value.
std::unique_ptr<Model> open_gguf(const std::filesystem::path& path);

}  // namespace strata::io
