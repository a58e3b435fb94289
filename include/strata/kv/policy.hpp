#pragma once
// How many tokens each layer and KV head keeps, which ones, and the eviction that applies it.
//
// The budget B is tokens per KV head, averaged over layers (and over heads, head-wise): a cache of L
// layers and H KV heads holds at most L x H x B tokens after compression.
//
// Across layers:
//   uniform    every layer B.
//   pyramid    PyramidKV (kvpress's formula): more in lower layers, decreasing linearly, same total.
//              With P = sinks + recent protected tokens and R = B - P: min = R / beta (beta = 20),
//              max = 2R - min, B_l = P + max - l (max - min) / (L - 1), rounded so that the B_l sum
//              to L x B.
//   layerwise  the caller's B_l per layer (e.g. from strata's budget allocator).
// Inside a layer of budget B_l:
//   per head   every head keeps its protected tokens and its own top B_l - P.
//   head-wise  AdaKV: the layer keeps H x B_l tokens. Every head keeps its protected tokens and its
//              own top floor(alpha (B_l - P)) (alpha = 0.2); the rest of the layer's budget goes to
//              the highest scores over all heads of the layer.
//
// AdaKV's bound (Feng et al. 2024, "Ada-KV"): for one query head with attention A over the full
// cache, output o = sum_j A_j v_j, and o_S = sum_{j in S} A_j v_j / sum_{j in S} A_j the output over
// a kept set S,
//     ||o - o_S||_1 <= 2 (1 - sum_{j in S} A_j) max_j ||v_j||_1.
// With scores equal to the attention being bounded (TOVA's last query, averaged over the GQA group),
// the head-wise selection maximises the kept attention mass summed over heads under the per-head
// floors, so the sum of the heads' bounds is never above that of the per-head selection at the same
// layer budget (both keep the same protected tokens, and per head is one of the allocations the
// head-wise selection chooses among). tests/unit/kv/kv_session_test.cc checks both on SmolLM2.
//
// Protected tokens: the first `sinks` tokens of every head (attention sinks) and its newest ones
// (the recent window: `recent` tokens, or `recent_share` of the layer's budget when that is more, as
// H2O splits its budget between heavy hitters and a recent window) are always kept. StreamingLLM is
// the policy that keeps only those: the window takes the whole budget after the sinks, and no scorer
// is needed.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "strata/kv/cache.hpp"
#include "strata/kv/scorers.hpp"

namespace strata::kv {

enum class LayerBudget { uniform, pyramid, layerwise };

struct Policy {
  LayerBudget layers = LayerBudget::uniform;
  bool headwise = false;         // AdaKV allocation inside each layer
  double adakv_floor = 0.2;      // alpha: each head's guaranteed share of its free budget
  double pyramid_beta = 20;      // PyramidKV's max/min ratio control
  std::vector<int64_t> per_layer;  // layerwise: tokens per KV head of each layer
  int64_t sinks = 4;             // first tokens always kept
  int64_t recent = 32;           // newest tokens always kept
  double recent_share = 0;       // ... or this fraction of the layer's budget, when more (H2O: 0.5)
  bool streaming = false;        // StreamingLLM: recent = budget - sinks, scores unused
  // Threshold mode (per head, not head-wise or streaming): a head keeps its protected tokens and every
  // other token whose score is above the threshold, however many; the budget is only a ceiling (past
  // it, the highest scores). Each compression scores every layer, over its budget or not.
  std::optional<double> threshold;

  static Policy uniform(int64_t sinks = 4, int64_t recent = 32);
  static Policy pyramid(double beta = 20, int64_t sinks = 4, int64_t recent = 32);
  static Policy adakv(double floor = 0.2, int64_t sinks = 4, int64_t recent = 32);
  static Policy layerwise(std::vector<int64_t> per_layer, int64_t sinks = 4, int64_t recent = 32);
  static Policy streaming_llm(int64_t sinks = 4);
  static Policy thresholded(double threshold, int64_t sinks = 4, int64_t recent = 32);
};

// "pyramid(beta=20) sinks=4 recent=32", "adakv(floor=0.2) ...", "streaming-llm sinks=4" for reports.
std::string describe(const Policy& policy);

// The newest tokens a head of a layer with `layer_budget` tokens per head always keeps:
// max(recent, floor(recent_share x layer_budget)), at most layer_budget - sinks (and never below
// `recent`); for StreamingLLM the whole budget after the sinks.
int64_t recent_window(const Policy& policy, int64_t layer_budget);

// Tokens per KV head of each of n_layers layers for an average budget `budget`. Throws
// strata::Error when a layer's budget cannot hold its protected tokens.
std::vector<int64_t> layer_budgets(const Policy& policy, int64_t budget, int64_t n_layers);

// The tokens each head of one layer keeps, as sorted indices into the head: lengths[h] tokens per
// head, scores[h] one score per token (may be empty for a streaming policy), layer_budget tokens per
// head (head-wise: H x layer_budget for the layer). A head (per head) or a layer (head-wise) within
// its budget keeps everything. Ties go to the earlier head and token.
std::vector<std::vector<int64_t>> select(const Policy& policy, int64_t layer_budget, std::span<const int64_t> lengths,
                                         std::span<const std::vector<float>> scores);

// A scorer, a policy and a budget: what kv::Session applies at prefill and/or decode.
struct Eviction {
  std::shared_ptr<Scorer> scorer;  // may be null for Policy::streaming_llm()
  Policy policy;
  int64_t budget = 0;  // tokens per KV head, averaged over layers (and heads, head-wise)

  std::vector<int64_t> layer_budgets(int64_t n_layers) const { return kv::layer_budgets(policy, budget, n_layers); }
  // Brings every layer of `cache` within its budget (scoring only layers over it) and tells the
  // scorer what each head kept. Layers are processed in order (ChunkKV reuses lower layers' scores).
  // Returns the number of tokens evicted.
  int64_t compress(Cache& cache) const;
  // One layer to `layer_budget` tokens per head, within the pass the last compress() started.
  int64_t compress_layer(Cache& cache, int layer, int64_t layer_budget) const;
};

// "snapkv + adakv(floor=0.2) sinks=4 recent=32, budget 128".
std::string describe(const Eviction& eviction);

}  // namespace strata::kv
