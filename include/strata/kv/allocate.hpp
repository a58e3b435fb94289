#pragma once
// Layer budgets for KV eviction from strata's budget allocator: how much each layer's attention
// output suffers when that layer alone keeps B tokens per KV head is measured on calibration text,
// the measurements become a budget::Table (one layer per row, cost = tokens per KV head, error =
// measured), and budget::solve picks each layer's B under the global token budget. The result is
// a Policy::layerwise.
//
// The measurement needs one forward of the prompt and one of a few probe tokens, whatever the
// number of layers and budgets: the probe queries' attention rows over the full cache are recorded,
// and the output over a kept set S is the same rows renormalised over S,
//     o = sum_j A_j v_j,   o_S = sum_{j in S} A_j v_j / sum_{j in S} A_j,
// which is exactly the attention over the evicted cache (softmax restricted to S). Upstream layers
// stay dense, so layer l's error is the error it makes when only layer l is compressed.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "strata/budget/allocator.hpp"
#include "strata/kv/policy.hpp"
#include "strata/kv/scorers.hpp"
#include "strata/nn/llama.hpp"

namespace strata::kv {

// Attention of probe queries over a prompt's full cache, with a scorer's scores of the prompt.
class AttentionProbe {
 public:
  // Reads `prompt` into a kv::Session that evicts nothing, with `scorer` observing (null: no scores,
  // for StreamingLLM), takes the scorer's scores of every layer and KV head, then reads `probe` (the
  // tokens that follow the prompt) and records every query head's attention rows and the values.
  AttentionProbe(const nn::LlamaModel& model, std::span<const int32_t> prompt, std::span<const int32_t> probe,
                 std::shared_ptr<Scorer> scorer);

  int64_t n_layers() const { return layout_.n_layers; }
  int64_t prompt_tokens() const { return prompt_; }
  int64_t probe_tokens() const { return probe_; }
  const Layout& layout() const { return layout_; }
  // The scorer's scores after the prompt: one vector per KV head of `layer`, one score per prompt
  // token (empty vectors without a scorer).
  const std::vector<std::vector<float>>& scores(int layer) const;

  // ||O - O_S||_F / ||O||_F over every probe query and query head of `layer`, where KV head h keeps
  // the prompt tokens kept[h] (indices into the prompt) and every probe token.
  double error(int layer, std::span<const std::vector<int64_t>> kept) const;
  // error() of every layer for what `policy` keeps at `budget` (kv::select on the recorded scores).
  std::vector<double> errors(const Policy& policy, int64_t budget) const;

 private:
  Layout layout_;
  int64_t prompt_ = 0, probe_ = 0;
  std::vector<std::vector<std::vector<float>>> scores_;  // [layer][kv head][prompt token]
  std::vector<std::vector<float>> attention_;            // [layer * n_heads + q head][probe x (prompt + probe)]
  std::vector<std::vector<float>> values_;               // [layer * n_kv_heads + head][(prompt + probe) x head_dim]
};

// One row per layer ("blk.L.attn_kv"), one option per budget in `budgets` that is below the prompt
// length, plus the whole prompt (error 0): method "kv.evict", knob "tokens=B", cost.bytes = B tokens
// per KV head, error = error()^2 when only that layer keeps B tokens per head as `within_layer`
// selects them (its per-head or head-wise rule; its layer schedule is ignored). Budgets must hold
// the policy's protected tokens.
budget::Table sensitivity_table(const AttentionProbe& probe, const Policy& within_layer,
                                std::span<const int64_t> budgets);

// Tokens per KV head of each layer, summing to at most n_layers x budget, with the least summed
// table error (budget::solve, metric bytes = tokens). Throws strata::Error when the table's
// cheapest options already exceed the budget.
std::vector<int64_t> allocate_layer_budgets(const budget::Table& table, int64_t budget,
                                            budget::Solver solver = budget::Solver::dp);

// Policy::layerwise over allocate_layer_budgets, with `within_layer`'s protected tokens and its
// head-wise setting.
Policy allocated_policy(const budget::Table& table, int64_t budget, const Policy& within_layer,
                        budget::Solver solver = budget::Solver::dp);

}  // namespace strata::kv
