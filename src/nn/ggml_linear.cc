#include "strata/nn/ggml_linear.hpp"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "nn/dense_blocks.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/kernels/ggml_matmul.hpp"

namespace strata::nn {

namespace {

void check_blocks(kernels::GgmlType type, int64_t rows, int64_t cols, size_t bytes) {
  const std::string_view name = kernels::ggml_type_name(type);
  require(rows > 0 && cols > 0, "GgmlLinear (", name, "): empty shape [", rows, ", ", cols, "]");
  const kernels::GgmlCodec& codec = kernels::ggml_codec(type);
  require(codec.can_dequantize(), "GgmlLinear: strata cannot read ", name);
  require(cols % codec.block_size == 0, "GgmlLinear (", name, "): ", cols, " columns are not a whole number of ",
          codec.block_size, "-element blocks");
  const uint64_t need = codec.row_bytes(cols) * static_cast<uint64_t>(rows);
  require(bytes == need, "GgmlLinear (", name, ", [", rows, ", ", cols, "]): ", bytes, " bytes given, ", need,
          " expected");
}

}  // namespace

GgmlLinear::GgmlLinear(kernels::GgmlType type, int64_t rows, int64_t cols, std::vector<std::byte> blocks)
    : type_(type), rows_(rows), cols_(cols), owned_(std::move(blocks)) {
  check_blocks(type, rows, cols, owned_.size());
  row_bytes_ = kernels::ggml_row_size(type, cols);
  blocks_ = owned_;
  direct_ = kernels::ggml_matmul_supported(type);
}

GgmlLinear::GgmlLinear(kernels::GgmlType type, int64_t rows, int64_t cols, std::span<const std::byte> blocks,
                       std::shared_ptr<const void> keep_alive)
    : type_(type), rows_(rows), cols_(cols), keep_alive_(std::move(keep_alive)), blocks_(blocks) {
  check_blocks(type, rows, cols, blocks.size());
  row_bytes_ = kernels::ggml_row_size(type, cols);
  direct_ = kernels::ggml_matmul_supported(type);
}

void GgmlLinear::dequantize_row(int64_t r, float* out) const {
  kernels::ggml_codec(type_).dequantize_row(blocks_.data() + static_cast<uint64_t>(r) * row_bytes_, cols_, out);
}

void GgmlLinear::forward(const float* x, int64_t tokens, float* y) const {
  if (tokens <= 0) return;
  if (!direct_ || tokens > kDirectTokens) {
    forward_tiled(x, tokens, y);
    return;
  }
  const int64_t chunk = detail::kernel_row_chunk(cols_);
  parallel_for(rows_, chunk, [&](int64_t b, int64_t e) {
    kernels::ggml_matmul(type_, blocks_.data() + static_cast<uint64_t>(b) * row_bytes_, e - b, cols_, x, tokens,
                         y + b, rows_);
  });
}

void GgmlLinear::forward_tiled(const float* x, int64_t tokens, float* y) const {
  const kernels::GgmlCodec& codec = kernels::ggml_codec(type_);
  detail::dense_block_matmul(rows_, cols_, x, tokens, y, [&](int64_t r0, int64_t r1, float* out) {
    codec.dequantize_row(blocks_.data() + static_cast<uint64_t>(r0) * row_bytes_, (r1 - r0) * cols_, out);
  });
}

RowMatrix<float> GgmlLinear::dense_weight() const {
  RowMatrix<float> w(rows_, cols_);
  kernels::dequantize(type_, blocks_, w.data(), rows_ * cols_);
  return w;
}

std::string GgmlLinear::describe() const {
  std::ostringstream out;
  out << "ggml " << kernels::ggml_type_name(type_) << " [" << rows_ << ", " << cols_ << "]"
      << (direct_ ? "" : " (tiled dequantization: no block kernel)");
  return out.str();
}

// ---- embeddings ----

DenseEmbedding::DenseEmbedding(std::shared_ptr<const RowMatrix<float>> table) : owned_(std::move(table)) {
  require(owned_ != nullptr && owned_->size() > 0, "DenseEmbedding: empty table");
  data_ = owned_->data();
  rows_ = owned_->rows();
  cols_ = owned_->cols();
}

DenseEmbedding::DenseEmbedding(const float* table, int64_t rows, int64_t cols, std::shared_ptr<const void> keep_alive)
    : keep_alive_(std::move(keep_alive)), data_(table), rows_(rows), cols_(cols) {
  require(table != nullptr && rows > 0 && cols > 0, "DenseEmbedding: no table, or an empty shape [", rows, ", ", cols,
          "]");
}

void DenseEmbedding::lookup(int32_t token, float* out) const {
  std::memcpy(out, data_ + static_cast<int64_t>(token) * cols_, static_cast<size_t>(cols_) * sizeof(float));
}

RowMatrix<float> DenseEmbedding::dense() const { return Eigen::Map<const RowMatrix<float>>(data_, rows_, cols_); }

std::string DenseEmbedding::describe() const {
  std::ostringstream out;
  out << (owned_ ? "f32" : "mapped f32") << " [" << rows_ << ", " << cols_ << "]";
  return out.str();
}

std::shared_ptr<const Linear> DenseEmbedding::as_linear() const {
  return std::make_shared<MappedLinear>(data_, rows_, cols_,
                                        owned_ ? std::shared_ptr<const void>(owned_) : keep_alive_);
}

bool DenseEmbedding::shares_bytes_with(const Linear& layer) const {
  const auto* mapped = dynamic_cast<const MappedLinear*>(&layer);
  return mapped != nullptr && mapped->data() == data_;
}

GgmlEmbedding::GgmlEmbedding(std::shared_ptr<const GgmlLinear> table) : table_(std::move(table)) {
  require(table_ != nullptr, "GgmlEmbedding: null table");
}

std::string GgmlEmbedding::describe() const { return table_->describe(); }

// ---- layers in a file's stored form ----

namespace {

struct StoredTensor {
  const io::TensorInfo* info;
  std::span<const std::byte> bytes;
  std::optional<kernels::GgmlType> type;
};

StoredTensor stored_tensor(const io::Model& file, std::string_view name) {
  const io::TensorInfo& t = file.tensor(name);
  require(t.shape.rank() == 2, file.path().string(), ": tensor '", name, "' has shape ", t.shape.str(),
          ", expected a matrix");
  StoredTensor s{&t, file.raw(t), kernels::ggml_type_from_name(t.type)};
  return s;
}

bool is_block_type(kernels::GgmlType t) { return kernels::ggml_block_size(t) > 1; }

}  // namespace

std::shared_ptr<const Linear> stored_linear(const std::shared_ptr<const io::Model>& file, std::string_view tensor) {
  require(file != nullptr, "stored_linear: no model file");
  const StoredTensor s = stored_tensor(*file, tensor);
  const int64_t rows = s.info->shape[0], cols = s.info->shape[1];
  if (s.type && is_block_type(*s.type) && kernels::ggml_can_dequantize(*s.type))
    return std::make_shared<GgmlLinear>(*s.type, rows, cols, s.bytes, file);
  if (s.info->type == "F32" && reinterpret_cast<uintptr_t>(s.bytes.data()) % alignof(float) == 0) {
    require(s.bytes.size() == static_cast<size_t>(rows * cols) * sizeof(float), file->path().string(), ": tensor '",
            tensor, "' holds ", s.bytes.size(), " bytes for ", rows * cols, " floats");
    return std::make_shared<MappedLinear>(reinterpret_cast<const float*>(s.bytes.data()), rows, cols, file);
  }
  const Tensor t = file->to_f32(*s.info);
  RowMatrix<float> w(rows, cols);
  std::memcpy(w.data(), t.raw(), static_cast<size_t>(rows * cols) * sizeof(float));
  return std::make_shared<DenseLinear>(std::move(w));
}

std::shared_ptr<const Embedding> stored_embedding(const std::shared_ptr<const io::Model>& file,
                                                  std::string_view tensor) {
  const std::shared_ptr<const Linear> layer = stored_linear(file, tensor);
  if (auto g = std::dynamic_pointer_cast<const GgmlLinear>(layer)) return std::make_shared<GgmlEmbedding>(g);
  if (auto d = std::dynamic_pointer_cast<const DenseLinear>(layer))
    return std::make_shared<DenseEmbedding>(std::shared_ptr<const RowMatrix<float>>(d, &d->weight()));
  const StoredTensor s = stored_tensor(*file, tensor);
  return std::make_shared<DenseEmbedding>(reinterpret_cast<const float*>(s.bytes.data()), s.info->shape[0],
                                          s.info->shape[1], file);
}

}  // namespace strata::nn
