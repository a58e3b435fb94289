#pragma once
// Token reduction inside an encoder: between a layer's attention and its MLP, a reducer may merge or drop
// tokens of each sequence, so that the layers after it run on fewer rows. The encoder only calls this
// interface; the algorithms (token merging, attention-score pruning) live in strata/token/. A reducer is
// handed to the encoder as its ForwardHooks (token_reducer() returns it).
//
// The contract, per run of the encoder's layers:
//   begin(lengths)             the sequences' real token counts, rows packed in order
//   per layer l:
//     key_bias()               added to every query's logit for each key (log size for proportional
//                              attention), packed like the rows, or null
//     group(l, attention, x)   rows the attention runs on merged (merge, compute, unmerge), or null
//     key_bias()               added to every query's logit for each key (log size for proportional
//                              attention), packed like the rows (or the attention's groups), or null
//     wants_first_attention(l) whether reduce() needs the first token's attention
//     reduce(in, x, lengths)   after attention, its residual and LayerNorm; may shrink x
//     group(l, mlp, x)         rows the MLP runs on merged, or null
//   restore(x, full)           one row per original token again (the source map)
//
// reduce() shrinks the residual stream for the rest of the encoder (ToMe). A grouping is for one sublayer
// only (ToMe for Stable Diffusion's merge and unmerge): the sublayer runs on one row per group, the members'
// weighted mean, and each member adds its group's output to its own residual, so no row is lost.
#include <cstdint>
#include <span>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/nn/hooks.hpp"

namespace strata::nn {

// What the encoder hands a reducer after a layer's attention.
struct ReductionInput {
  int layer = 0;
  int64_t n_heads = 0;
  // This layer's keys [total, dim], head h in columns [h * head_dim, (h + 1) * head_dim).
  const RowMatrix<float>* keys = nullptr;
  // [total]: per token, the attention its sequence's first token pays it, averaged over heads. Null unless
  // wants_first_attention(layer).
  const float* first_attention = nullptr;
};

// The part of a layer a grouping is for.
enum class Sublayer { attention, mlp };

// Rows of the current packed states merged for one sublayer: row i goes to packed group dest[i] with weight
// weight[i] (the weights of a group's rows add up to 1); groups of a sequence are contiguous and in order.
struct TokenGroups {
  std::vector<int64_t> dest;
  std::vector<float> weight;
  std::vector<int64_t> lengths;  // groups per sequence
  int64_t total = 0;             // groups in all
};

class TokenReducer : public ForwardHooks {
 public:
  TokenReducer* token_reducer() override { return this; }

  // A new run over sequences with these token counts (rows packed in order).
  virtual void begin(std::span<const int64_t> lengths) = 0;
  // The groups the sublayer `part` of `layer` runs on, for the current states x (rows packed by `lengths`), or
  // null to run it on every row. Called once per sublayer and layer, attention first.
  virtual const TokenGroups* group(int layer, Sublayer part, const RowMatrix<float>& x,
                                   std::span<const int64_t> lengths) {
    return nullptr;
  }
  // Additive bias on the attention logits, one per packed row (the key) or per group when the attention is
  // grouped, or null for none.
  virtual const float* key_bias() const = 0;
  virtual bool wants_first_attention(int layer) const { return false; }
  // Replaces the hidden states x [total, dim] by the reduced ones and `lengths` by the new token counts;
  // lengths enters holding the current counts.
  virtual void reduce(const ReductionInput& in, RowMatrix<float>& x, std::vector<int64_t>& lengths) = 0;
  // Final states [current total, dim] -> [original total, dim]: each original token gets the row of the token
  // it was merged into.
  virtual void restore(const RowMatrix<float>& x, RowMatrix<float>& full) const = 0;
};

}  // namespace strata::nn
