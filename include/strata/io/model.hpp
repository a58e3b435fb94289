#pragma once
// A format-independent view of a model file: named tensors (shape, storage type, bytes, mmapped
// data), architecture hyper-parameters, and the grouping of tensors into blocks (layers).
// GGUF, safetensors (single or sharded) and llama2.c checkpoints all open as a Model.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/core/tensor.hpp"

namespace strata::io {

enum class FileFormat { gguf, safetensors, llama2c };
std::string_view format_name(FileFormat f);

struct TensorInfo {
  std::string name;
  Shape shape;            // row-major, outermost first: a weight is [out, in] (GGUF's ne reversed)
  std::string type;       // the file's own type name: GGUF "Q4_K", "F32"; safetensors "BF16"; llama2.c "F32"
  uint64_t offset = 0;    // byte offset of the data from the start of the (shard) file
  uint64_t nbytes = 0;    // bytes of data in the file
  int shard = 0;          // which file of a sharded checkpoint holds it (0 otherwise)
  int64_t numel() const { return shape.numel(); }
};

// Architecture hyper-parameters, as far as the file states them (0 where it does not).
struct ModelConfig {
  std::string architecture;   // "llama", "bert", ...
  std::string name;           // general.name or similar, when present
  int64_t n_layers = 0;
  int64_t dim = 0;            // embedding / hidden size
  int64_t hidden_dim = 0;     // feed-forward size
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t context_length = 0;
  double rope_theta = 0;
  double norm_eps = 0;
  bool tied_embeddings = false;
};

// Tensors that belong to one block (transformer layer), or to none (embeddings, final norm, head).
struct Block {
  int index = -1;                   // -1 for tensors outside any block
  std::vector<std::string> tensors;
};

class Model {
 public:
  virtual ~Model() = default;

  virtual FileFormat format() const = 0;
  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const ModelConfig& config() const { return config_; }
  // File metadata as JSON: GGUF key/values (arrays longer than a few thousand entries are kept),
  // safetensors __metadata__ and config.json, llama2.c header fields.
  const nlohmann::json& metadata() const { return metadata_; }

  const TensorInfo* find(std::string_view name) const;
  // Throws strata::Error naming the file and the tensor if it is absent.
  const TensorInfo& tensor(std::string_view name) const;

  // The tensor's bytes as stored in the file (no copy).
  virtual std::span<const std::byte> raw(const TensorInfo& t) const = 0;
  // The tensor converted to float32 (dequantized where the type is quantized). Throws strata::Error
  // naming the tensor for a type strata cannot decode.
  virtual Tensor to_f32(const TensorInfo& t) const = 0;
  Tensor to_f32(std::string_view name) const { return to_f32(tensor(name)); }

  // Tensors grouped by the block number in their name ("blk.N.", "layers.N.", "layer.N."), in
  // block order, with the tensors outside any block first.
  std::vector<Block> blocks() const;
  uint64_t total_bytes() const;     // tensor data bytes
  int64_t total_params() const;
  double bits_per_weight() const;   // 8 * total_bytes / total_params

 protected:
  std::filesystem::path path_;
  std::vector<TensorInfo> tensors_;
  ModelConfig config_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// Opens a model by content: GGUF by its magic, safetensors by its header (or a
// model.safetensors.index.json), llama2.c by exclusion with a size check. Throws strata::Error
// naming the file when it is none of these or is malformed.
std::unique_ptr<Model> open_model(const std::filesystem::path& path);

// The block number in a tensor name ("blk.12.attn_q.weight" -> 12), or -1.
int block_index(std::string_view tensor_name);

}  // namespace strata::io
