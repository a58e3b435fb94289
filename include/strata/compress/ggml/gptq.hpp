#pragma once
// GPTQ into ggml's block formats: GPTQ's error feedback (a damped Hessian from calibration, the
// Cholesky factor of its inverse, lazy batch updates, act-order where the format allows it) with
// ggml's own rounding step, so the result is an ordinary tensor of the type that llama.cpp runs.
//
//   GgmlGptqResult r = ggml::gptq(GgmlType::Q4_0, w, hessian, imatrix, gptq_defaults(GgmlType::Q4_0),
//                                 "blk.0.ffn_down.weight");
//   // r.blocks: rows * ggml_row_size(Q4_0, cols) bytes; dequantizing them gives r.values exactly.
//
// The rounding step, per ggml block (32 elements; 256 for the k-quants, whose super-block shares d
// and dmin):
// - the block's weights go through ggml's quantizer for the type, with the imatrix, which chooses
//   the scales and mins (and sub-block scales) exactly as llama-quantize would for those weights.
//   The legacy types' weighted search uses sigma^2 of the whole row, as ggml does.
// - each column of the block is then rounded on that block's grid: to the code ggml chose when the
//   weight has not moved since the fit, else to the nearest value of the grid, which is read from
//   strata's byte-exact dequantizer (llama.cpp's arithmetic). The written bytes therefore dequantize
//   to exactly the values the loop propagated the error of.
// Which weights a block is fitted on depends on the column order (GptqOrder) and on `refit`:
// - natural / act_order_in_blocks: when the loop reaches the block's first column, on the block's
//   current (error-updated) weights; sigma^2 from the original row.
// - act_order: the columns are visited by decreasing Hessian diagonal, not block by block, so every
//   block is fitted on the original weights first ("static groups").
// - refit = n ("GPTQ with scale refit"): after a pass, every block is fitted again, by the same
//   search, on the weights that pass rounded (each column's error-updated value when the loop reached
//   it; sigma^2 of those rows), and the loop runs again from the original weights with those scales
//   fixed; n such extra passes.
//
// - ls_scales ("least-squares scale refit"): after the loop the codes are fixed and the row's values
//   are linear in the continuous parameters (each block's d, and m where the type has one; for the
//   k-quants each sub-block's d * scale and dmin * min), so the row's GPTQ objective
//   (w - q)^T H (w - q), H the damped Hessian, is a linear least-squares problem in them: solved
//   exactly per row, then written back in the format's precision (binary16; for the k-quants integer
//   sub-scales under a binary16 d and dmin). The new bytes are kept only where that objective drops.
//   With refit = n as well, the passes run as without it and the last pass's scales are refitted.
//
// With an identity Hessian no error moves, every weight keeps its fitted value, and the bytes are
// those of ggml's quantizer on the whole row, whatever the order and refit (ls_scales off; with it
// the codes are ggml's and each block's scale is the least-squares one where that is lower).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::compress::ggml {

// The order the loop visits a row's columns in.
enum class GptqOrder {
  natural,              // column by column
  act_order,            // by decreasing Hessian diagonal over the whole row (static groups)
  act_order_in_blocks,  // blocks in order, the columns inside each by decreasing Hessian diagonal
};
// "natural", "act", "act_block"; parse_order throws strata::Error for another name.
std::string_view order_name(GptqOrder order);
GptqOrder parse_order(std::string_view name);

inline constexpr int kMaxGptqRefit = 4;

struct GgmlGptqOptions {
  double damp = 0.01;    // added to the Hessian's diagonal, times its mean
  int64_t block = 128;   // columns per lazy batch (rounded up to whole ggml blocks unless act_order)
  GptqOrder order = GptqOrder::act_order;
  int refit = 0;         // extra passes with the scales refitted on the previous pass's weights, 0 .. 4
  // Shrinks the Hessian toward its own diagonal before damping, H' = (1 - shrink) H + shrink diag(H),
  // 0 .. 1: keeps each column's weight (what the imatrix holds too) and damps only the
  // cross-correlations the error feedback follows. 1 leaves no feedback: ggml's own rounding. Off in
  // every type's defaults: on the tuning text it lowered q3_k's held-out layer error, not its KL.
  double shrink = 0;
  // After the loop: the block scales (and mins) re-solved by least squares under the damped Hessian
  // with the codes fixed, kept per row where the objective drops (see the top of this file).
  bool ls_scales = false;
};

// The settings quant.ggml_gptq uses for a type when its knob names none: chosen by KL on SmolLM2
// with Moby-Dick 0.7:0.8 as the tuning text (docs/ggml-quantization.md, "Tuning"): act-order
// (act_order_in_blocks for q3_k); damp 0.3 for q2_k, 0.1 for q3_k and iq4_nl, 0.01 for the others;
// ls_scales for iq4_nl, q2_k and q3_k, with one refit pass for q3_k; no refit for the others.
GgmlGptqOptions gptq_defaults(kernels::GgmlType type);

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
                    std::span<const float> importance, const GgmlGptqOptions& options,
                    std::string_view name = "weight");
// With gptq_defaults(type).
GgmlGptqResult gptq(kernels::GgmlType type, const RowMatrix<float>& w, const Matrix<double>& h,
                    std::span<const float> importance);

namespace detail {
// The least-squares scale refit on its own: every row of `blocks` (w's shape at `type`, ggml's
// layout) gets its scales (and mins) re-solved with its codes fixed under `hd` (taken as given: damp
// it first), written back in the format's precision, and keeps them only where the row's objective
// (w - q)^T hd (w - q) drops. Returns how many rows changed.
int64_t refit_scales(kernels::GgmlType type, const RowMatrix<float>& w, const Matrix<double>& hd,
                     std::span<std::byte> blocks);
}  // namespace detail

}  // namespace strata::compress::ggml
