// kernels::ggml_matmul: argument checks, the scalar oracle, and the hand-off to the SIMD family
// that owns the type.
#include "strata/kernels/ggml_matmul.hpp"

#include <vector>

#include "kernels/cpu/ggml_matmul_internal.hpp"
#include "strata/core/error.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::kernels {

namespace {

void check_args(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, const float* y,
                int64_t y_stride) {
  const std::string_view name = ggml_type_name(t);
  require(rows > 0 && cols > 0 && tokens > 0, "ggml_matmul (", name, "): rows ", rows, ", cols ", cols, " and tokens ",
          tokens, " must be positive");
  require(y_stride >= rows, "ggml_matmul (", name, "): y_stride ", y_stride, " is less than rows ", rows);
  require(cols % ggml_block_size(t) == 0, "ggml_matmul (", name, "): cols ", cols,
          " is not a whole number of blocks of ", ggml_block_size(t));
  require(w != nullptr && x != nullptr && y != nullptr, "ggml_matmul (", name, "): null buffer");
}

}  // namespace

bool ggml_matmul_supported(GgmlType t) {
  return detail::matmul_q_blocks_supported(t) || detail::matmul_k_blocks_supported(t);
}

void ggml_matmul(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                 int64_t y_stride) {
  check_args(t, w, rows, cols, x, tokens, y, y_stride);
  if (detail::matmul_q_blocks(t, w, rows, cols, x, tokens, y, y_stride)) return;
  if (detail::matmul_k_blocks(t, w, rows, cols, x, tokens, y, y_stride)) return;
  fail("ggml_matmul: no kernel for ", ggml_type_name(t), "; dequantize it first");
}

void ggml_matmul_reference(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens,
                           float* y, int64_t y_stride) {
  check_args(t, w, rows, cols, x, tokens, y, y_stride);
  const GgmlCodec& codec = ggml_codec(t);
  require(codec.can_dequantize(), "ggml_matmul_reference: strata cannot read ", codec.name);
  const uint64_t row_bytes = codec.row_bytes(cols);
  std::vector<float> row(static_cast<size_t>(cols));
  const auto* base = static_cast<const std::byte*>(w);
  for (int64_t r = 0; r < rows; ++r) {
    codec.dequantize_row(base + static_cast<uint64_t>(r) * row_bytes, cols, row.data());
    for (int64_t t_i = 0; t_i < tokens; ++t_i) {
      const float* xt = x + t_i * cols;
      float acc = 0.0f;
      for (int64_t c = 0; c < cols; ++c) acc += row[static_cast<size_t>(c)] * xt[c];
      y[t_i * y_stride + r] = acc;
    }
  }
}

}  // namespace strata::kernels
