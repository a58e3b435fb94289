#pragma once
// Layers that run in the form a model file or a compressor stores: ggml block formats (Q4_0 ...
// Q6_K) read as blocks, token embeddings looked up a row at a time. A GGUF model loaded through
// load_stored_form() keeps its file's bytes (memory-mapped) instead of a float32 copy, so it runs in
// about the memory of the file, and a decoded token reads 4-8 bits per weight instead of 32.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/kernels/ggml_blocks.hpp"
#include "strata/nn/linear.hpp"

namespace strata::io {
class Model;
}

namespace strata::nn {

// A weight [rows, cols] in a ggml type, rows of ggml_row_size(type, cols) bytes. Products with up to
// kDirectTokens activation rows run on the blocks (kernels::ggml_matmul, rows split across threads);
// larger batches (prefill) dequantize a cache-sized tile of rows at a time and multiply it with the
// BLAS GEMM, so prefill keeps BLAS throughput without a float32 copy of the layer. Types without a
// block kernel take the tiled path for every batch.
class GgmlLinear final : public Linear {
 public:
  static constexpr int64_t kDirectTokens = 16;

  // Owns a copy of `blocks`.
  GgmlLinear(kernels::GgmlType type, int64_t rows, int64_t cols, std::vector<std::byte> blocks);
  // Borrows `blocks` (a memory-mapped file's tensor); `keep_alive` owns them and is held as long as
  // the layer lives.
  GgmlLinear(kernels::GgmlType type, int64_t rows, int64_t cols, std::span<const std::byte> blocks,
             std::shared_ptr<const void> keep_alive);

  int64_t in_features() const override { return cols_; }
  int64_t out_features() const override { return rows_; }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override;
  uint64_t weight_bytes() const override { return blocks_.size(); }
  std::string describe() const override;

  kernels::GgmlType type() const { return type_; }
  uint64_t row_bytes() const { return row_bytes_; }
  std::span<const std::byte> blocks() const { return blocks_; }
  // Row r dequantized into out[cols].
  void dequantize_row(int64_t r, float* out) const;

 private:
  void forward_tiled(const float* x, int64_t tokens, float* y) const;

  kernels::GgmlType type_;
  int64_t rows_, cols_;
  uint64_t row_bytes_;
  std::vector<std::byte> owned_;
  std::shared_ptr<const void> keep_alive_;
  std::span<const std::byte> blocks_;
  bool direct_;  // a block kernel exists for the type
};

// The token embedding table [vocab, dim], looked up a row at a time.
class Embedding {
 public:
  virtual ~Embedding() = default;
  virtual int64_t rows() const = 0;
  virtual int64_t cols() const = 0;
  // Row `token` (0 <= token < rows(), unchecked) into out[cols()].
  virtual void lookup(int32_t token, float* out) const = 0;
  virtual RowMatrix<float> dense() const = 0;  // the whole table as float32 (a copy)
  virtual uint64_t bytes() const = 0;          // bytes the table holds
  virtual std::string describe() const = 0;
  // The table as the layer of a tied output head (logits = h E^T), sharing the table's bytes.
  virtual std::shared_ptr<const Linear> as_linear() const = 0;
  // Whether `layer` computes from this table's own bytes (an as_linear() of it), so that the bytes
  // are counted once.
  virtual bool shares_bytes_with(const Linear& layer) const = 0;
};

// A float32 table, owned (shared) or borrowed from a mapped file.
class DenseEmbedding final : public Embedding {
 public:
  explicit DenseEmbedding(std::shared_ptr<const RowMatrix<float>> table);
  DenseEmbedding(const float* table, int64_t rows, int64_t cols, std::shared_ptr<const void> keep_alive);
  int64_t rows() const override { return rows_; }
  int64_t cols() const override { return cols_; }
  void lookup(int32_t token, float* out) const override;
  RowMatrix<float> dense() const override;
  uint64_t bytes() const override { return static_cast<uint64_t>(rows_ * cols_) * sizeof(float); }
  std::string describe() const override;
  std::shared_ptr<const Linear> as_linear() const override;
  bool shares_bytes_with(const Linear& layer) const override;

 private:
  std::shared_ptr<const RowMatrix<float>> owned_;
  std::shared_ptr<const void> keep_alive_;
  const float* data_;
  int64_t rows_, cols_;
};

// A table in a ggml type, sharing its blocks with a GgmlLinear (a tied output head reads the same
// bytes as the lookup).
class GgmlEmbedding final : public Embedding {
 public:
  explicit GgmlEmbedding(std::shared_ptr<const GgmlLinear> table);
  int64_t rows() const override { return table_->out_features(); }
  int64_t cols() const override { return table_->in_features(); }
  void lookup(int32_t token, float* out) const override { table_->dequantize_row(token, out); }
  RowMatrix<float> dense() const override { return table_->dense_weight(); }
  uint64_t bytes() const override { return table_->weight_bytes(); }
  std::string describe() const override;
  std::shared_ptr<const Linear> as_linear() const override { return table_; }
  bool shares_bytes_with(const Linear& layer) const override { return &layer == table_.get(); }
  const std::shared_ptr<const GgmlLinear>& table() const { return table_; }

 private:
  std::shared_ptr<const GgmlLinear> table_;
};

// A file tensor as a layer in its stored form: a ggml quantized type as a GgmlLinear over the mapped
// bytes, F32 as a MappedLinear, anything else (F16, BF16, types strata reads but has no layer for)
// dequantized into a DenseLinear. `file` is kept alive by the layers that borrow from it.
std::shared_ptr<const Linear> stored_linear(const std::shared_ptr<const io::Model>& file, std::string_view tensor);
// The same for an embedding table: GgmlEmbedding, a borrowed DenseEmbedding, or a dequantized copy.
std::shared_ptr<const Embedding> stored_embedding(const std::shared_ptr<const io::Model>& file,
                                                  std::string_view tensor);

}  // namespace strata::nn
