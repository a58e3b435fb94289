#pragma once
// GPTQ into ggml's block formats: GPTQ's error feedback (a damped Hessian from calibration, the
// Cholesky factor of its inverse, lazy batch updates, act-order where the format allows it) with
// ggml's own rounding step, so the result is an ordinary tensor of the type that llama.cpp runs.
//
//   GgmlGptqResult r = ggml::gptq(GgmlType::Q4_0, w, hessian, imatrix, {}, "blk.0.ffn_down.weight");
//   // r.blocks: rows * ggml_row_size(Q4_0, cols) bytes; dequantizing them gives r.values exactly.
//
// The rounding step, per ggml block (32 elements; 256 for the k-quants, whose super-block shares d
// and dmin):
// - when the loop reaches the block's first column, the block's current (error-updated) weights go
//   through ggml's quantizer for the type, with the imatrix, which chooses the scales and mins (and
//   sub-block scales) exactly as llama-quantize would for those weights. The legacy types' weighted
//   search uses sigma^2 of the whole row, as ggml does; that is taken from the original row.
// - each column of the block is then rounded on that block's grid: to the code ggml chose when the
//   weight has not moved since the fit, else to the nearest value of the grid, which is read from
//   strata's byte-exact dequantizer (llama.cpp's arithmetic). The written bytes therefore dequantize
//   to exactly the values the loop propagated the error of.
// With act_order the scales cannot wait for a block's first column (the columns are visited by
// decreasing Hessian diagonal, not block by block), so every block is fitted on the original
// weights first ("static groups"); the rounding is the same.
//
// With an identity Hessian no error moves, every weight keeps its fitted value, and the bytes are
// those of ggml's quantizer on the whole row.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::compress::ggml {

// The defaults were chosen by KL on SmolLM2 with Moby-Dick 0.7:0.8 as the tuning text
// (docs/ggml-quantization.md): act-order took q4_0's KL from 0.185 to 0.130 at damp 0.01.
struct GgmlGptqOptions {
  double damp = 0.01;    // added to the Hessian's diagonal, times its mean
  int64_t block = 128;   // columns per lazy batch (rounded up to whole ggml blocks without act_order)
  bool act_order = true;
};

struct GgmlGptqResult {
  std::vector<std::byte> blocks;  // rows * ggml_row_size(type, cols) bytes, ggml's layout
  RowMatrix<float> values;        // [rows, cols]: the values the loop assumed = dequantize(blocks)
};

// w: [rows, cols], cols a whole number of the type's blocks; h: the input Hessian X^T X / N,
// [cols, cols]; importance: empty or cols non-negative values (llama.cpp's imatrix). Throws
// strata::Error naming `name` for a type it cannot write, a row that is not whole blocks, sizes that
// disagree, non-finite values, a negative Hessian diagonal, bad options, or a Hessian that stays
// singular after damping. Rows are independent, so the result does not depend on the thread count.
GgmlGptqResult gptq(kernels::GgmlType type, const RowMatrix<float>& w, const Matrix<double>& h,
                    std::span<const float> importance, const GgmlGptqOptions& options = {},
                    std::string_view name = "weight");

}  // namespace strata::compress::ggml
