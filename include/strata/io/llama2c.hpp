#pragma once
// llama2.c checkpoints (karpathy/llama2.c, the "legacy" export that run.c reads): seven little-endian
// int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) and then float32
// arrays, every matrix row-major [out][in]. A positive vocab_size means the classifier shares the
// token embedding; a negative one means a separate classifier follows the legacy RoPE tables.
//
// Tensors are named as in a GGUF llama file (token_embd.weight, blk.N.attn_q.weight, ...), so that
// code downstream treats every llama-family model alike. RoPE in llama2.c rotates adjacent pairs
// (x[2i], x[2i+1]); metadata()["rope_layout"] says "adjacent" so that nobody applies GGUF's
// conventions blindly.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "strata/io/mapped_file.hpp"
#include "strata/io/model.hpp"

namespace strata::io {

struct Llama2cHeader {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier() const { return vocab_size > 0; }
};

// The size in bytes a checkpoint with this header must have, or an error message (empty size) when
// the header is implausible: a non-positive field, n_heads not dividing dim, n_kv_heads not dividing
// n_heads, an odd head size, or a size that overflows.
struct Llama2cSize {
  uint64_t bytes = 0;
  std::string problem;  // empty when the header is plausible
};
Llama2cSize llama2c_expected_size(const Llama2cHeader& h);

struct Llama2cLayout {
  Llama2cHeader header;
  ModelConfig config;
  std::vector<TensorInfo> tensors;  // in file order, offsets absolute
};

// Parses and validates a checkpoint held in `bytes` (`what` names it in errors). Throws strata::Error
// for an implausible header or a size that differs from what the header implies by even one byte.
Llama2cLayout parse_llama2c(std::span<const std::byte> bytes, std::string_view what);

class Llama2cModel final : public Model {
 public:
  explicit Llama2cModel(const std::filesystem::path& path);
  FileFormat format() const override { return FileFormat::llama2c; }
  std::span<const std::byte> raw(const TensorInfo& t) const override;
  Tensor to_f32(const TensorInfo& t) const override;
  using Model::to_f32;
  const Llama2cHeader& header() const { return header_; }

 private:
  MappedFile file_;
  Llama2cHeader header_;
};

std::unique_ptr<Model> open_llama2c(const std::filesystem::path& path);

}  // namespace strata::io
