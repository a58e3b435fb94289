#pragma once
// safetensors (Hugging Face): an 8-byte little-endian header length N, N bytes of JSON naming every
// tensor's dtype, shape and [begin, end) byte range relative to the end of the header, then the data.
// The reader parses a byte span, so the same code serves mmapped files and the fuzzer; it checks
// every number against the span before anything is used. The writer follows the reference
// implementation's layout rules, so that reading a file it wrote and writing it back gives the same
// bytes (see docs/formats.md).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "strata/io/mapped_file.hpp"
#include "strata/io/model.hpp"

namespace strata::io {

// The reference implementation refuses headers above 100 MB; so do we, before allocating anything.
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

// Element types of the format, by their names in the header ("F32", "BF16", "I64", "BOOL", ...).
struct SafetensorsDType {
  std::string_view name;
  int bits;   // per element: 4 for F4 and 6 for F6_*, so a tensor's size is numel * bits / 8
  int rank;   // position in the reference implementation's enum: the writer sorts by it, descending
};
// The dtype called `name`, or nullopt when the format has no such type.
std::optional<SafetensorsDType> safetensors_dtype(std::string_view name);
// Every dtype the reader accepts, in the reference implementation's enum order.
std::span<const SafetensorsDType> safetensors_dtypes();

using StringPairs = std::vector<std::pair<std::string, std::string>>;

// A parsed, validated header. TensorInfo::offset is absolute (from the start of the file), and the
// tensors are listed in the order of their data in the file.
struct SafetensorsHeader {
  uint64_t header_size = 0;   // N: bytes of JSON (with its padding) after the 8-byte length
  StringPairs metadata;       // __metadata__, in the order of the header
  bool has_metadata = false;  // the header had a __metadata__ entry (possibly empty)
  std::vector<TensorInfo> tensors;
};

// Parses and validates a whole safetensors file held in `bytes`; `what` (the file name) starts every
// error message. Throws strata::Error for a header length past the file or above the cap, JSON that
// is not an object or too deeply nested, duplicate keys, an unknown dtype, a negative, non-integer or
// overflowing dimension, a byte range out of order, overlapping another or not matching
// numel * dtype size, and data that does not end exactly at the end of the file.
SafetensorsHeader parse_safetensors(std::span<const std::byte> bytes, std::string_view what);

// Converts `count` elements of safetensors dtype `dtype` stored little-endian at `src` (any
// alignment) to float32. Throws strata::Error naming `what` for a dtype strata does not decode
// (F4, F6_E2M3, F6_E3M2, C64).
void safetensors_convert_to_f32(std::string_view dtype, const std::byte* src, float* dst, uint64_t count,
                                std::string_view what);

// A safetensors file (or a sharded checkpoint opened through its model.safetensors.index.json) as a
// Model. Tensor data stays in the mapped files.
class SafetensorsModel final : public Model {
 public:
  // `path` is a .safetensors file or a *.safetensors.index.json. A config.json in the same folder, if
  // present, fills config() and metadata()["config"].
  explicit SafetensorsModel(const std::filesystem::path& path);

  FileFormat format() const override { return FileFormat::safetensors; }
  std::span<const std::byte> raw(const TensorInfo& t) const override;
  Tensor to_f32(const TensorInfo& t) const override;
  using Model::to_f32;

  // The files holding the data: one, or the shards named by the index in the order of their names.
  std::vector<std::filesystem::path> shard_paths() const;
  // __metadata__ of the first shard, in header order (metadata()["__metadata__"] has it sorted).
  const StringPairs& file_metadata() const { return file_metadata_; }
  bool has_file_metadata() const { return has_file_metadata_; }

 private:
  void add_shard(const std::filesystem::path& file, int shard);
  std::vector<std::unique_ptr<MappedFile>> files_;
  StringPairs file_metadata_;
  bool has_file_metadata_ = false;
};

std::unique_ptr<Model> open_safetensors(const std::filesystem::path& path);

// Fills a ModelConfig from a Hugging Face config.json (BERT, Llama-family and GPT-2 key names).
// Throws strata::Error naming `what` and the key when a known key has the wrong JSON type.
ModelConfig config_from_hf_json(const nlohmann::json& config, std::string_view what);

// ---- compressed models written by strata (strata/compress/model_io.hpp) ------------------------
// Such a file marks itself with "strata.format" in __metadata__ and keeps its source's metadata and
// config there as JSON text. SafetensorsModel exposes them: every key of the source metadata at the
// top level of metadata() (beside "__metadata__", which stays this file's own) and the config as
// config(); a config.json in the same folder still takes precedence. Malformed JSON in either key
// throws strata::Error naming the file and the key.
inline constexpr std::string_view kStrataFormatKey = "strata.format";
inline constexpr std::string_view kStrataSourceMetadataKey = "strata.source_metadata";
inline constexpr std::string_view kStrataConfigKey = "strata.config";

// ModelConfig as a JSON object with one key per field (its member name), and back. config_from_json
// requires every key with the field's JSON type and throws strata::Error naming `what` and the key.
nlohmann::json config_to_json(const ModelConfig& config);
ModelConfig config_from_json(const nlohmann::json& json, std::string_view what);

// ---- writing ----------------------------------------------------------------------------------

struct SafetensorsEntry {
  std::string name;
  std::string dtype;                 // a safetensors dtype name
  Shape shape;
  std::span<const std::byte> data;   // numel * dtype size bytes, little-endian
};

enum class TensorOrder {
  reference,  // as the reference implementation lays data out: by dtype rank descending, then name
  as_given,   // exactly the order of the entries
};

// The header bytes (the 8-byte length included) that write_safetensors would write, with offsets
// assigned in `order`. Throws strata::Error naming the tensor for an unknown dtype, a data size that
// does not match its shape, a duplicate or reserved name.
std::string safetensors_header_bytes(std::span<const SafetensorsEntry> tensors, const StringPairs* metadata,
                                     TensorOrder order = TensorOrder::reference);

// Writes a safetensors file through AtomicFileWriter: compact JSON with "__metadata__" first (when
// `metadata` is non-null, even if empty), tensors in `order`, padded with spaces so that data starts on
// an 8-byte boundary.
void write_safetensors(const std::filesystem::path& path, std::span<const SafetensorsEntry> tensors,
                       const StringPairs* metadata, TensorOrder order = TensorOrder::reference);

// Writes every tensor of `model` (any format whose tensor types are safetensors dtypes, such as
// llama2.c's F32) in the data order of the model, keeping a safetensors model's __metadata__. For an
// unmodified single-file safetensors model written by the reference implementation the result is
// byte-identical to the input.
void write_safetensors(const std::filesystem::path& path, const Model& model);

}  // namespace strata::io
