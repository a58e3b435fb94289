#pragma once
// Observation points inside a forward pass. Engines call these without copying the model; a hook
// that collects statistics (calibration) or attention scores (KV scorers) implements what it needs.
#include <cstdint>
#include <span>
#include <string>

namespace strata::nn {

class TokenReducer;   // strata/nn/token_reduction.hpp
class PrefillPruner;  // strata/nn/prefill_pruning.hpp

class ForwardHooks {
 public:
  virtual ~ForwardHooks() = default;
  // The input x [tokens, in] (row-major) shared by the linear layers named in `tensors`
  // (e.g. the q, k and v projections of one block see the same normalised hidden state).
  virtual void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                               int64_t in) {}
  // Whether on_attention should be called for this layer (computing probabilities costs nothing
  // extra, but the call hands out a [q_len, k_len] matrix per head).
  virtual bool wants_attention(int layer) const { return false; }
  // Attention probabilities of one query head, row-major [q_len, k_len]; row i belongs to the query
  // at absolute position q_pos0 + i, column j to cached token j. Called from worker threads: an
  // implementation must be safe for concurrent calls with different heads.
  virtual void on_attention(int layer, int head, const float* probs, int64_t q_len, int64_t k_len,
                            int64_t q_pos0) {}
  // Hidden state entering and leaving a block, both [tokens, dim] (for block influence). Not called while a
  // token reducer runs.
  virtual void on_block(int layer, const float* in, const float* out, int64_t tokens, int64_t dim) {}
  // A reducer that merges or drops tokens between attention and MLP (encoders only), or null.
  virtual TokenReducer* token_reducer() { return nullptr; }
  // A pruner that drops prompt tokens between decoder blocks during a prefill, or null.
  virtual PrefillPruner* prefill_pruner() { return nullptr; }
};

}  // namespace strata::nn
