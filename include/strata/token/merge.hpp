#pragma once
// Token merging (ToMe: bipartite soft matching, size-weighted averages, proportional attention) and
// attention-score pruning (EViT: keep the tokens the first token attends to most, fuse the rest into one), as
// an nn::TokenReducer that BertEncoder runs between each layer's attention and its MLP. docs/token-merging.md
// has the math, the API and measured figures.
//
//   token::ReducerOptions o;
//   o.schedule = token::Schedule::constant(6, 0.5);   // 50% fewer tokens after 6 layers
//   token::Reducer merge(o);
//   Tensor e = encoder.embed(batch, &merge);          // one row per sentence, as before
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/token_reduction.hpp"

namespace strata::token {

// A reduction of one sequence of n tokens to `out` tokens: token i goes to row dest[i].
struct Reduction {
  std::vector<int64_t> dest;
  int64_t out = 0;
  bool identity() const { return out == static_cast<int64_t>(dest.size()); }
};

// The most tokens bipartite_soft_matching can merge away from n: the size of set A (the even positions), less
// the first token when it is protected.
int64_t max_merge(int64_t n, bool protect_first);

// ToMe's bipartite soft matching on metric rows [n, d] (row stride ld): tokens at even positions form set A,
// odd positions set B; each A token's most cosine-similar B token is its match (the lower B index on ties);
// the r A tokens with the most similar matches (the lower A index on ties) merge into their match, every
// other token stays. Kept tokens keep their order, so the first token stays first. Throws strata::Error
// naming the option "r" when r < 0 or r > max_merge(n, protect_first).
Reduction bipartite_soft_matching(const float* metric, int64_t n, int64_t d, int64_t ld, int64_t r,
                                  bool protect_first = true);

// Greedy pair matching on metric rows [n, d] (row stride ld), a simplified agglomerative step: of all pairs
// of tokens (the first token left out when protected), the r most cosine-similar disjoint pairs, picked
// greedily by similarity (the lower indices on ties); the later token of each pair merges into the earlier
// one. Unlike the bipartite matching any two tokens may pair, and no token absorbs more than one other.
// Throws strata::Error naming the option "r" when r < 0 or r > max_pairs(n, protect_first).
// `penalty` (empty, or one per token) is subtracted from a pair's similarity once per token of the pair.
Reduction greedy_pair_matching(const float* metric, int64_t n, int64_t d, int64_t ld, int64_t r,
                               bool protect_first = true, std::span<const float> penalty = {});
// The most tokens greedy_pair_matching can merge away from n: half of the unprotected tokens.
int64_t max_pairs(int64_t n, bool protect_first);

// EViT-style pruning: removes `remove` tokens of n by keeping the first token and the n - remove - 2 others
// with the highest score (the lower index on ties), in order, and fusing the remove + 1 others into one token
// placed last. remove = 0 is the identity. Throws strata::Error naming the option "remove" when remove < 0 or
// remove > n - 2 (nothing would be left to keep besides the first token).
Reduction keep_top_fuse_rest(std::span<const float> score, int64_t remove);

// y [r.out, dim] = for each output row, the weighted mean of the rows of x [n, dim] that go to it. Every
// weight must be > 0 (sizes, attention probabilities).
void reduce_rows(const Reduction& r, const float* x, int64_t dim, std::span<const float> weights, float* y);

// Tokens removed at each layer, as fractions of the sequence's original length.
struct Schedule {
  std::vector<double> fraction;  // one per encoder layer (missing layers remove nothing)

  // `total` removed evenly over `layers` layers.
  static Schedule constant(int64_t layers, double total);
  // ToMe's decreasing schedule: layer l removes in proportion to layers - l.
  static Schedule decreasing(int64_t layers, double total);
  double total() const;
  // Throws strata::Error naming the option "schedule" unless every fraction is finite and >= 0 and their sum
  // is < 1.
  void validate() const;
  std::string str() const;  // "0.083,0.083,..."
};

enum class Method { merge, prune };
// "merge", "prune"; strata::Error naming the option "method" otherwise.
Method parse_method(std::string_view name);
std::string_view method_name(Method m);

// What bipartite matching compares: ToMe's keys averaged over heads, or the hidden states entering the MLP.
enum class Metric { keys, hidden };
// "keys", "hidden"; strata::Error naming the option "metric" otherwise.
Metric parse_metric(std::string_view name);
std::string_view metric_name(Metric m);

// How merging pairs tokens: ToMe's bipartite soft matching, or greedy_pair_matching.
enum class Matching { bipartite, greedy };
// "bipartite", "greedy"; strata::Error naming the option "matching" otherwise.
Matching parse_matching(std::string_view name);
std::string_view matching_name(Matching m);

struct ReducerOptions {
  Method method = Method::merge;
  Metric metric = Metric::keys;
  Matching matching = Matching::bipartite;
  // Subtract each sequence's mean metric row before the cosine similarities (the hidden states of an encoder
  // share a large common component that makes every pair look alike).
  bool center = false;
  Schedule schedule;
  bool proportional_attention = true;  // log(size) added to each key's logit
  bool protect_first = true;           // [CLS] never merged away (pruning always keeps it)
  bool protect_last = false;           // merging: the last token ([SEP]) neither merges nor absorbs
  // Greedy pairs: a pair's similarity less size_penalty x log(size) of each of its tokens, so that tokens
  // that already stand for many merge later (MCTF's size criterion in a simple form).
  double size_penalty = 0;
  // Merge, compute, unmerge (ToMe for Stable Diffusion, Bolya and Hoffman 2023): per layer, the fraction of
  // the current rows (each in [0, 0.5]) merged by bipartite matching on the hidden states for that layer's
  // attention (queries, keys and values; proportional attention over the groups) or its MLP alone; every row
  // adds its group's output to its own residual, so the sequence keeps its length. Missing layers merge
  // nothing. Composes with `schedule` (which shrinks the rows for good); not with method prune's attention.
  std::vector<double> merge_attention, merge_mlp;
  // A schedule short sequences cannot meet (see Reducer::removals): refused (false), or reduced as far as
  // the method goes (true; LayerStats show what was removed).
  bool allow_shortfall = false;
};

// Rows each layer computed on over every run since construction (or reset_stats), for FLOP counts.
struct LayerStats {
  int64_t tokens_in = 0,
          tokens_out = 0;      // rows the attention ran on (tokens or groups), rows the MLP ran on
  double attention_pairs = 0;  // sum over sequences of the attention's rows squared
};

class Reducer final : public nn::TokenReducer {
 public:
  explicit Reducer(ReducerOptions options);

  void begin(std::span<const int64_t> lengths) override;
  const nn::TokenGroups* group(int layer, nn::Sublayer part, const RowMatrix<float>& x,
                               std::span<const int64_t> lengths) override;
  const float* key_bias() const override;
  bool wants_first_attention(int layer) const override;
  void reduce(const nn::ReductionInput& in, RowMatrix<float>& x, std::vector<int64_t>& lengths) override;
  void restore(const RowMatrix<float>& x, RowMatrix<float>& full) const override;

  const ReducerOptions& options() const { return options_; }
  // Tokens removed from a sequence of `length` tokens at each layer: the schedule's cumulative targets
  // rounded to whole tokens, a step capped at what the method can remove there and the shortfall carried to
  // the next layer. Throws strata::Error naming the option "schedule" when the last layer is reached short of
  // the target, unless options().allow_shortfall.
  std::vector<int64_t> removals(int64_t length) const;
  // The most tokens one merge step can remove from n (max_merge or max_pairs, by the matching).
  int64_t merge_cap(int64_t n) const;
  // Sizes (original tokens per current token) of sequence s after the last reduce.
  std::span<const float> sizes(int64_t s) const;
  const std::vector<LayerStats>& stats() const { return stats_; }
  void reset_stats() { stats_.clear(); }

 private:
  struct Sequence {
    int64_t length = 0;             // original tokens
    std::vector<int64_t> removals;  // per layer
    std::vector<float> size;        // per current token
    std::vector<int64_t> source;    // per original token: its current token
  };
  // The matching of options_ on n rows of width d (stride ld), centred when asked; `scratch` holds the copy.
  // match leaves the last row out when it is protected; match_all matches every row.
  // `sizes` are the rows' sizes (for size_penalty).
  Reduction match(const float* rows, int64_t n, int64_t d, int64_t ld, int64_t r, std::span<const float> sizes,
                  std::vector<float>& scratch) const;
  Reduction match_all(const float* rows, int64_t n, int64_t d, int64_t ld, int64_t r, std::span<const float> sizes,
                      std::vector<float>& scratch) const;

  ReducerOptions options_;
  std::vector<Sequence> seqs_;
  std::vector<float> bias_;  // log(size), packed
  bool biased_ = false;
  std::vector<Reduction> reductions_;        // per sequence, the current step's
  std::vector<std::vector<float>> weights_;  // per sequence, the rows' weights in that step
  RowMatrix<float> y_;                       // the reduced rows, swapped with the encoder's
  nn::TokenGroups groups_;                   // the current sublayer's
  std::vector<float> group_size_;  // original tokens per group
  std::vector<float> group_bias_;  // log(group size), packed
  bool grouped_attention_ = false;
  std::vector<LayerStats> stats_;
};

// Multiply-adds x 2 of one encoder pass that saw `stats` (projections, attention scores and context, MLP;
// LayerNorms, softmax and GELU left out).
double encoder_flops(const nn::BertConfig& config, const std::vector<LayerStats>& stats);
// The same for the dense encoder on sequences of these lengths.
double dense_encoder_flops(const nn::BertConfig& config, std::span<const int64_t> lengths);

}  // namespace strata::token
