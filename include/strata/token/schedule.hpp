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

}  // namespace strata::token
