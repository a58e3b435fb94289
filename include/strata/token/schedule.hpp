#pragma once
// Per-layer token-reduction rates chosen by strata's budget allocator: DiffRate's idea (a different rate per
// layer) with each layer's sensitivity measured on calibration passages instead of learned.
//
//   Sensitivity s = token::measure_sensitivity(encoder, tuning_batches);
//   Schedule c = Schedule::constant(6, 0.5);
//   Schedule a = token::allocate_schedule(s, encoder.config(), token::schedule_cost(s, encoder.config(), c));
//
// The cost model is the token-linear part of an encoder pass (the projections and the MLP, which is what a
// removed token saves; the attention scores' quadratic term is left out), so that the cost of a schedule is a
// sum over layers of a term in that layer's rate alone and the allocator's knapsack applies. encoder_flops()
// in merge.hpp counts every term for the reports.
#include <cstdint>
#include <span>
#include <vector>

#include "strata/budget/allocator.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/tokenizer.hpp"
#include "strata/token/merge.hpp"

namespace strata::token {

struct SensitivityOptions {
  Method method = Method::merge;
  Metric metric = Metric::keys;
  std::vector<double> fractions = {0.05, 0.1, 0.15, 0.2, 0.3, 0.4};  // rates tried at each layer
  bool proportional_attention = true;
};

// loss[l][i]: 1 - mean cosine between the embeddings with fractions[i] of the tokens removed at layer l alone
// and the dense embeddings, over every sequence of the batches. Rate 0 has loss 0.
struct Sensitivity {
  Method method = Method::merge;
  std::vector<double> fractions;
  std::vector<std::vector<double>> loss;
  double mean_length = 0;  // tokens per sequence, for the cost model
};

// Throws strata::Error naming the option "fractions" for an empty list or a rate outside (0, 0.5], and
// "batches" when there are none.
Sensitivity measure_sensitivity(const nn::BertEncoder& encoder, std::span<const nn::TokenBatch> batches,
                                const SensitivityOptions& options = {});

// The budget table: per layer one option per rate (0 and the measured ones), cost.flops the token-linear
// FLOPs that rate leaves for a sequence of mean_length tokens (offset so that every cost is >= 0; the same
// offset for every schedule), error the measured loss.
budget::Table sensitivity_table(const Sensitivity& s, const nn::BertConfig& config);
// The cost of `schedule` under the table's cost model (comparable with the table's budgets).
double schedule_cost(const Sensitivity& s, const nn::BertConfig& config, const Schedule& schedule);
// The schedule of least summed loss whose cost is <= budget (exact multiple-choice knapsack) and whose
// rates add up to at most max_total. Single-layer sensitivity is measured on full-length sequences and so
// underrates a late layer's cut once earlier layers have removed tokens; max_total (the constant schedule's
// total, for a comparison at equal token count) keeps the plan from piling removals there. The total is
// held by a Lagrangian penalty on each layer's rate, the least one (bisection) that brings it within
// max_total. Throws strata::Error naming "budget" or "max_total" when no plan meets them.
Schedule allocate_schedule(const Sensitivity& s, const nn::BertConfig& config, double budget,
                           double max_total = 0.99);

// Encoder FLOPs (encoder_flops' count) of `reducer`'s schedule on sequences of these lengths, from the
// removals alone (no forward pass); merge_attention and merge_mlp are not counted. Throws what
// Reducer::removals throws.
double schedule_flops(const nn::BertConfig& config, const ReducerOptions& reducer, std::span<const int64_t> lengths);

// A schedule searched on measured whole-schedule loss (1 - mean cosine to the dense embeddings on the
// calibration batches), where the allocator above adds up single-layer losses: from the constant schedule
// of `total` (blended with the decreasing one, the least that brings the FLOPs within max_flops), steepest
// descent over moves of `step` of the total (to a neighbouring layer, or a pair in opposite directions that
// leaves the FLOPs about equal) that keep the FLOPs (schedule_flops over the batches' lengths, relative to
// dense) within max_flops, until no move lowers the loss or max_rounds moves were made.
struct SearchOptions {
  ReducerOptions reducer;  // method, metric, matching, ...; its schedule is what the search sets
  double total = 0.5;      // fraction of the tokens removed by the last layer
  double max_flops = 0.7;  // encoder FLOPs relative to dense, at most
  double step = 0.025;     // fraction of the original length moved per move
  int64_t max_rounds = 12;
};
struct SearchResult {
  Schedule schedule;
  double loss = 0, flops = 0;  // measured loss; FLOPs relative to dense
  int64_t evaluations = 0;     // encoder runs over the batches
};
// Throws strata::Error naming "batches" when there are none, "total" outside (0, 1), "step" outside (0, total],
// "max_flops" when even the decreasing schedule's FLOPs exceed it.
SearchResult search_schedule(const nn::BertEncoder& encoder, std::span<const nn::TokenBatch> batches,
                             const SearchOptions& options);

}  // namespace strata::token
