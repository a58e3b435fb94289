#pragma once
// Pruning: setting weights to zero (unstructured or N:M semi-structured) and removing whole FFN
// neurons or whole blocks.
//
//   magnitude   drop the smallest |W_ij| of every output row.
//   wanda       drop the smallest |W_ij| * ||x_j|| of every output row (Sun et al. 2023).
//   sparsegpt   choose the mask block by block by w^2 / U_jj^2 and update the remaining weights
//               with the optimal brain surgeon correction (Frantar & Alistarh 2023).
//   prune_ffn_neurons   structured: removes the least important SwiGLU neurons of every block.
//   remove_blocks       drops whole transformer blocks ranked by block influence (ShortGPT).
//
// The structured cuts reach the registry per tensor: prune.channels drops a layer's least important
// input channels (on ffn_down, one block's FFN neurons) and prune.remove zeroes a layer (on
// attn_output or ffn_down, one half of a removed block).
//
// Every unstructured mask removes exactly floor(sparsity * cols) weights from every row, except
// SparseGPT's paper rule (SparseGptMask::block), which removes the same total from the layer but
// chooses per block of columns across rows; either way a layer's stored size depends on its shape
// and knob only (see docs/pruning.md for the formats).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/core/eigen.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/linear.hpp"
#include "strata/nn/llama.hpp"

namespace strata::compress::prune {

// 1 where a weight is kept, 0 where it is pruned; [out, in] like the weight.
using Mask = Eigen::Matrix<uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Which weights a row loses: a fraction of the row (unstructured), or n of every m consecutive
// inputs ("2:4": 2 of every 4 are zero).
struct Pattern {
  double sparsity = 0.5;  // unstructured: fraction of each row pruned, in [0, 1)
  int n = 0, m = 0;       // semi-structured when m > 0

  static Pattern unstructured(double sparsity);
  static Pattern n_of_m(int n, int m);
  bool semi_structured() const { return m > 0; }
  // Weights pruned / kept in a row of `cols` inputs. Throws strata::Error when the pattern does not
  // fit (N:M needs cols to be a multiple of M).
  int64_t pruned_per_row(int64_t cols) const;
  int64_t kept_per_row(int64_t cols) const { return cols - pruned_per_row(cols); }
  std::string str() const;  // "sparsity=0.5" or "pattern=2:4"
};

// Keeps the entries with the largest scores of every row under `pattern` (ties go to the lower
// column index, so masks are deterministic).
Mask mask_from_scores(const RowMatrix<double>& scores, const Pattern& pattern);

struct Pruned {
  RowMatrix<float> weight;  // zero wherever mask is 0
  Mask mask;
};

// `name` (the layer's tensor name) starts every error message.
Pruned magnitude(const RowMatrix<float>& w, const Pattern& pattern, std::string_view name = "weight");
// Scores |W_ij| * sqrt(mean_sq_j); the per-row ranking does not depend on the token count, so the
// mean square stands in for the squared channel norm.
Pruned wanda(const RowMatrix<float>& w, const Vector<double>& mean_sq, const Pattern& pattern,
             std::string_view name = "weight");

// How SparseGPT chooses an unstructured mask (an N:M pattern ignores this: every group of M consecutive
// inputs of a row loses its N lowest scores when the group is reached).
enum class SparseGptMask {
  // The paper's rule (Frantar & Alistarh 2023, adaptive mask selection): when a block of `block`
  // columns is reached, the lowest scores w^2 / U_jj^2 over the whole block, all rows together,
  // are pruned, on the weights as the earlier blocks' updates left them. Rows end up with different
  // counts. The block's count is its share of rows * floor(sparsity * cols) in proportion to its
  // width (floor of the running total), so the layer loses exactly as many weights as under `row`
  // and stores the same bytes (for 128-column blocks at sparsity 0.5 that is the paper's
  // rows * 64 per block).
  block,
  // Every row loses exactly floor(sparsity * cols) weights: its count per block comes from ranking
  // the whole row by w^2 / U_jj^2 before the loop; which weights of a block go is still chosen when
  // the block is reached. A variant of the paper's rule for formats that need equal rows.
  row,
};

struct SparseGptOptions {
  int64_t block = 128;  // columns per lazy-update block (the mask of a block is chosen at once)
  double damp = 0.01;   // added to diag(H), relative to its mean
  // The plain function keeps the per-row rule its callers were written for; the registered
  // prune.sparsegpt uses the paper's rule (knob mask=block, the default, or mask=row).
  SparseGptMask mask = SparseGptMask::row;
};

// What SparseGPT needs of the Hessian, computed once per input and shared by the layers that read
// the same input (q/k/v, gate/up).
struct SparseGptFactor {
  RowMatrix<double> u;      // upper Cholesky factor of (H + damp I)^-1 (dead inputs' diagonal set to 1);
                            // row-major because the column updates read its rows
  std::vector<uint8_t> dead;  // 1 where H_jj == 0: the input never carried a signal
  double damp = 0;
};
SparseGptFactor sparsegpt_factor(const Matrix<double>& h, const SparseGptOptions& options = {},
                                 std::string_view name = "weight");
Pruned sparsegpt(const RowMatrix<float>& w, const SparseGptFactor& factor, const Pattern& pattern,
                 const SparseGptOptions& options = {}, std::string_view name = "weight");
Pruned sparsegpt(const RowMatrix<float>& w, const Matrix<double>& h, const Pattern& pattern,
                 const SparseGptOptions& options = {}, std::string_view name = "weight");

// ---- storage -----------------------------------------------------------------------------------

enum class ValueType { f16, f32 };

// A knob parsed: "sparsity=0.5", "pattern=2:4", either with ",values=f32" (default f16) and, for
// prune.sparsegpt only (the other adapters refuse it), ",mask=block|row" (SparseGptMask; the stored
// format does not depend on it).
struct Setting {
  Pattern pattern;
  ValueType values = ValueType::f16;
  SparseGptMask mask = SparseGptMask::block;
  bool mask_given = false;
};
Setting parse_setting(std::string_view knob, std::string_view layer);

// Bytes of the stored form (values + position metadata), from the shape alone.
uint64_t stored_bytes(int64_t rows, int64_t cols, const Setting& setting);
// Packs a pruned layer: "values" [rows, kept] (f16 or f32: the kept entries in row-major order, which
// is row r's kept entries in row r when every row keeps `kept`; a mask whose rows keep different
// counts, SparseGPT's paper rule, keeps the same total) and
// either "mask" (i8 [rows, ceil(cols / 8)], bit j % 8 of byte j / 8 set for a kept column j) or, for
// N:M patterns where it is smaller (2:4), "indices" (i8 [rows, ceil(kept * b / 8)]: the position of
// each kept value inside its group of M as a b = ceil(log2 M)-bit field, little-endian bit order).
Compressed encode(const Pruned& pruned, const Setting& setting, std::string method, std::string knob);
RowMatrix<float> decode(const Compressed& c);

// ---- the registry's adapters -------------------------------------------------------------------

std::unique_ptr<WeightCompressor> make_magnitude_compressor();
std::unique_ptr<WeightCompressor> make_wanda_compressor();
std::unique_ptr<WeightCompressor> make_sparsegpt_compressor();

// ---- structured pruning ------------------------------------------------------------------------

// A layer of shape [out, in] that stores only a sub-matrix of its weight: outputs outside `rows` are
// zero and inputs outside `cols` are ignored. It computes what the zero-padded dense layer computes
// at the cost of the smaller one, and reports the bytes of the smaller one (plus its index lists).
class SubmatrixLinear final : public nn::Linear {
 public:
  // Empty `rows` / `cols` mean all of them. weight is [rows.size(), cols.size()].
  SubmatrixLinear(int64_t out, int64_t in, std::vector<int64_t> rows, std::vector<int64_t> cols,
                  RowMatrix<float> weight);
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override;
  uint64_t weight_bytes() const override;
  std::string describe() const override;
  const RowMatrix<float>& weight() const { return weight_; }

 private:
  int64_t out_, in_;
  std::vector<int64_t> rows_, cols_;
  RowMatrix<float> weight_;
};

// A layer whose output is always zero and which stores nothing: what a removed block's layers become.
class ZeroLinear final : public nn::Linear {
 public:
  ZeroLinear(int64_t out, int64_t in);
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override { return RowMatrix<float>::Zero(out_, in_); }
  uint64_t weight_bytes() const override { return 0; }
  std::string describe() const override;

 private:
  int64_t out_, in_;
};

// Importance of each FFN neuron i: ||down[:, i]|| * sqrt(E[h_i^2]), h being the down projection's
// input on calibration data: the RMS size of what the neuron adds to the residual stream.
Vector<double> ffn_neuron_importance(const RowMatrix<float>& down, const Vector<double>& down_input_mean_sq);

struct NeuronPruningOptions {
  double fraction = 0.25;  // of every block's FFN neurons, removed
  // Refit the kept columns of ffn_down by least squares on the calibration Gram matrix of its input
  // (W_K <- W H[:, K] H[K, K]^-1, damped), so the kept neurons absorb what the removed ones carried.
  // Needs Gram matrices in the calibration; without them the weights are kept as they are.
  bool compensate = true;
  // Ridge term, relative to mean(diag H[K, K]). Chosen by the summed KL to dense at 10% and 25% of
  // SmolLM2's neurons on a tuning slice no reported figure uses (docs/pruning.md): no refit
  // 0.278 + 0.896, damp 0.01 0.279 + 0.754, 0.1 0.263 + 0.727, 0.2 0.260 + 0.728, 0.5 0.258 + 0.741:
  // a weak ridge fits the calibration text too closely, a strong one refits too little.
  double damp = 0.2;
};

struct NeuronPruningReport {
  std::vector<std::vector<int64_t>> kept;  // per block, the kept neuron indices (ascending)
  uint64_t bytes_before = 0, bytes_after = 0;  // FFN weights, float32
  bool compensated = false;
};

// A copy of `model` whose every block keeps the (1 - fraction) most important FFN neurons:
// ffn_gate and ffn_up keep those rows, ffn_down those columns, as SubmatrixLinear layers.
nn::LlamaModel prune_ffn_neurons(const nn::LlamaModel& model, const nn::Calibration& calibration,
                                 const NeuronPruningOptions& options, NeuronPruningReport* report = nullptr);

// Blocks in order of increasing block influence (1 - E[cos(h_in, h_out)]): the first ones change
// the residual stream least and are the ones ShortGPT removes.
std::vector<int> rank_blocks_by_influence(const nn::Calibration& calibration, int64_t n_layers);

// A copy of `model` with the given blocks turned into identities: all seven linear layers of such a
// block become ZeroLinear, so attention and FFN add exactly zero to the residual stream and the
// block's weights are neither stored nor multiplied.
nn::LlamaModel remove_blocks(const nn::LlamaModel& model, std::span<const int> blocks);

// ---- structured pruning, per tensor (the registry's prune.channels and prune.remove) -----------

// Input channels a layer of `cols` inputs keeps at keep fraction F: cols - floor((1 - F) cols), so
// that keep = 1 - NeuronPruningOptions::fraction keeps what prune_ffn_neurons keeps. Throws
// strata::Error unless 0 < F <= 1 and at least one channel is kept.
int64_t kept_channels(int64_t cols, double keep);

struct ChannelPruned {
  std::vector<int64_t> kept;  // kept input channels, ascending
  RowMatrix<float> weight;    // [rows, kept.size()]: the kept columns, refit when a Gram matrix was given
};

// Keeps the `keep` input channels of w with the largest ||W[:, j]|| * sqrt(mean_sq_j) (the column
// norm alone when mean_sq is null; ties keep the lower index). With a Gram matrix h of the input the
// kept columns are refit by damped least squares, W_K + W_P H_PK (H_KK + damp mean(diag H_KK) I)^-1,
// which is the optimum of ||W X - W'_K X_K||^2 when damp = 0. `name` starts every error message.
ChannelPruned prune_input_channels(const RowMatrix<float>& w, int64_t keep, const Vector<double>* mean_sq,
                                   const Matrix<double>* h, double damp, std::string_view name = "weight");

// prune.channels. Knobs "keep=F" (fraction of input channels kept, 0 < F <= 1) with optional
// ",values=f16|f32" (default f16); knobs() lists keep=0.25 .. keep=0.875 in steps of 1/8. Importance
// from the input's mean square (diag H without it, column norms without either); the refit
// (damp 0.2, as prune_ffn_neurons) needs the Hessian and is skipped without one. Stored: "weight"
// [rows, k] in the value type and "channels" i32 [k], i.e. rows k (2 or 4) + 4 k bytes; to_linear()
// is a SubmatrixLinear that multiplies only the kept columns.
std::unique_ptr<WeightCompressor> make_channel_compressor();
// prune.remove. One knob, "remove": the layer's output becomes exactly zero and nothing is stored
// (0 bytes, relative output error 1); to_linear() is a ZeroLinear. On a residual branch's output
// layer (attn_output, ffn_down) that removes the branch, which is what remove_blocks does to both.
std::unique_ptr<WeightCompressor> make_remove_compressor();

// Helpers shared by the prune sources; not part of the API.
namespace detail {
// Throws strata::Error naming the layer for an empty weight or a NaN / Inf entry.
void check_weight(const RowMatrix<float>& w, std::string_view name);
// keep[j] = 0 for the `drop` lowest scores of scores[0, count), 1 elsewhere (ties: lower index
// pruned first); `order` is scratch space of `count` entries.
void prune_lowest(const double* scores, int64_t count, int64_t drop, uint8_t* keep, int64_t* order);
}  // namespace detail

}  // namespace strata::compress::prune
