#pragma once
// Prefill token pruning for Llama-family decoders: the encoder's token reduction (nn/token_reduction.hpp)
// applied to a prompt. While the prompt runs through the blocks, after a chosen block the prompt tokens that
// received the least attention are dropped (or merged into a kept neighbour): the blocks from there on run
// on the kept tokens only and store keys and values only for them. Kept tokens keep their original
// positions (RoPE and the cache's bookkeeping), the first `sinks` tokens and the last `window` tokens are
// always kept, so the last position and its next-token distribution are computed on the real final tokens.
//
// The engine side: a PrefillPruner is a ForwardHooks whose prefill_pruner() returns itself. Handed to
// kv::Session::forward with a prompt, it collects the attention of the block before each step and reduces
// the rows between blocks:
//
//   strata::nn::PrefillPruner pruner(strata::nn::PrefillPruning::at(15, 0.5));  // half the prompt gone
//   strata::kv::Session session(model, 4096);                                    // from block 15 on
//   session.forward(prompt, logits.data(), strata::nn::Logits::last, &pruner);
//   session.forward(next, logits.data(), strata::nn::Logits::last);               // decode as usual
//
// Scores (PruneScore): the attention a prompt token receives in block `layer - 1`, averaged over the query
// heads and summed over the query rows of the prompt (`prompt`, H2O's accumulated attention, which favours
// early tokens since more queries see them) or over the last `window` query rows only (`window`, SnapKV's
// observation window, the default), optionally average-pooled over `pool` neighbouring tokens. Ties keep
// the earlier token. Merging (PruneMode::merge) replaces each kept row by the size-weighted mean of itself
// and the dropped rows since the previous kept one (a token stands for the tokens merged into it); the
// attention carries no size bias (no proportional attention), so it is the simple variant of ToMe's merge
// for a causal decoder.
//
// A pruner applies to forwards of more than one token (a decode step has nothing to prune) and only over a
// KV store that keeps its own positions per head (kv::Session); the dense nn::LlamaSession refuses it.
// Logits::all is refused: dropped tokens have no final state.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/nn/hooks.hpp"

namespace strata::nn {

struct LlamaConfig;

enum class PruneScore { prompt, window };
enum class PruneMode { drop, merge };
// "prompt" / "window", "drop" / "merge"; strata::Error naming `option` otherwise.
PruneScore parse_prune_score(std::string_view name, std::string_view option);
PruneMode parse_prune_mode(std::string_view name, std::string_view option);
std::string_view prune_score_name(PruneScore s);
std::string_view prune_mode_name(PruneMode m);

// Blocks `layer` .. run on what is kept; `drop` is the fraction of the prompt's tokens gone by then
// (cumulative over the steps of a schedule).
struct PruneStep {
  int layer = 0;
  double drop = 0;
};

struct PrefillPruning {
  std::vector<PruneStep> steps;  // layers increasing, drops non-decreasing; empty: nothing pruned
  PruneScore score = PruneScore::window;
  PruneMode mode = PruneMode::drop;
  int64_t sinks = 4;    // first prompt tokens always kept
  int64_t window = 32;  // last prompt tokens always kept; PruneScore::window sums over their queries
  int64_t pool = 1;     // odd width of the average pooling of scores over neighbouring tokens (1: none)
  // kv::Session only: after the prompt, the blocks before the last step's layer keep only the finally
  // kept prompt tokens too (default: they keep every prompt token).
  bool evict_early_layers = false;

  // One step: blocks `layer` .. run on (1 - drop) of the prompt.
  static PrefillPruning at(int layer, double drop);

  // strata::Error naming the field: a drop outside [0, 1), layers not increasing, drops decreasing,
  // sinks < 0, window < 1, pool not odd and positive; with n_layers > 0 also a layer outside
  // [1, n_layers) (block 0 has no attention before it to score by).
  void validate(int64_t n_layers = 0) const;
  // Tokens kept after step `step` of a prompt of `tokens`: tokens - round(drop x tokens).
  int64_t kept_tokens(int64_t tokens, size_t step) const;
  // strata::Error naming the step's drop when a prompt of `tokens` would keep fewer tokens than the
  // protected sinks + window (of those the prompt has).
  void check_prompt(int64_t tokens) const;
  // "drop 50% @15 window" for reports.
  std::string describe() const;
};

// Floating-point operations of a prefill whose blocks run on rows[l] tokens each (a pruner's
// rows_per_layer(), or the prompt length everywhere for the dense prefill), the prompt starting the cache:
// per row the projections and the MLP, per block the attention scores and mixing over the full
// [rows, rows] block of every query head (as kv::Session computes them), and the output head once.
double prefill_flops(const LlamaConfig& config, std::span<const int64_t> rows);

class PrefillPruner : public ForwardHooks {
 public:
  explicit PrefillPruner(PrefillPruning options);  // validated (without the model's layer count)

  const PrefillPruning& options() const { return options_; }

  // ---- ForwardHooks: attention of the block before each step ----
  PrefillPruner* prefill_pruner() override { return this; }
  bool wants_attention(int layer) const override;
  void on_attention(int layer, int head, const float* probs, int64_t q_len, int64_t k_len, int64_t q_pos0) override;

  // ---- the engine's calls ----
  // A prompt of `tokens` new tokens at positions pos0 ..: validates the steps against the model and the
  // prompt (before any work) and starts tracking rows.
  void begin(const LlamaConfig& config, int64_t tokens, int64_t pos0);
  // Before block `layer` runs: when a step starts there, keeps that step's rows of x [rows, dim] and of
  // `positions` (the rows' absolute positions, in order) and returns true.
  bool reduce(int layer, RowMatrix<float>& x, std::vector<int64_t>& positions);

  // ---- after a prompt ----
  int64_t prompt_tokens() const { return tokens_; }
  // Absolute positions kept after step `step` (increasing), of the last prompt that reached it.
  std::span<const int64_t> kept_positions(size_t step) const;
  // After the last step: what the last blocks run on.
  std::span<const int64_t> kept_positions() const;
  // Rows each block ran on in the last prompt ([n_layers]).
  const std::vector<int64_t>& rows_per_layer() const { return rows_per_layer_; }

 private:
  int step_at(int layer) const;  // the step starting at `layer`, or -1

  PrefillPruning options_;
  int64_t n_layers_ = 0, n_heads_ = 0, tokens_ = 0, pos0_ = 0;
  int scoring_layer_ = -1;  // the block whose attention the next step reads
  std::vector<int64_t> index_;      // per current row: its index in the prompt
  std::vector<double> size_;        // per current row: prompt tokens it stands for (merge)
  std::vector<std::vector<double>> head_scores_;  // per query head, per current row
  std::vector<std::vector<int64_t>> kept_;       // per step
  std::vector<int64_t> rows_per_layer_;
};

}  // namespace strata::nn
