#pragma once
// Calibration statistics collected through ForwardHooks during real forward passes: for the input
// of every linear layer, the Gram matrix X^T X (double accumulation), per-channel mean |x| and mean
// x^2 (llama.cpp's importance matrix) and the token count; per block, the block influence
// 1 - E[cos(h_in, h_out)]. Memory is bounded by the statistics, never by the number of sequences.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/io/imatrix.hpp"
#include "strata/nn/hooks.hpp"

namespace strata::nn {

class LlamaModel;

// Statistics of one input (shared by the linear layers that read it).
struct InputStats {
  explicit InputStats(int64_t features, bool keep_gram);
  int64_t features = 0;
  int64_t tokens = 0;
  bool has_gram = false;
  // What the Gram matrix leaves out (CalibrationOptions); the per-channel sums always see every token.
  int64_t gram_skip_first = 0;
  double gram_clip_quantile = 0;
  int64_t gram_skipped = 0;  // tokens seen but left out of the Gram matrix: hessian() divides by the rest
  Matrix<double> gram;  // sum of x x^T over tokens; lower triangle accumulated, see hessian()
  Vector<double> packed_gram;  // after pack(): the lower triangle, column by column (gram is then empty)
  Vector<double> sum_abs, sum_sq;

  // x: [n_tokens, n_features], one forward pass (a sequence from its first position on, for
  // gram_skip_first and gram_clip_quantile). Throws strata::Error after pack().
  void add(const float* x, int64_t n_tokens, int64_t n_features);
  // Keeps only the Gram matrix's lower triangle, the same numbers in half the memory (403 MB instead
  // of 806 MB for SmolLM2's inputs): for statistics that are complete.
  void pack();
  // H = X^T X / (tokens - gram_skipped), symmetric [in, in].
  Matrix<double> hessian() const;
  Vector<double> mean_abs() const;  // per-channel mean |x|
  Vector<double> mean_sq() const;   // per-channel mean x^2 (llama.cpp imatrix)
  Vector<double> channel_norm() const;  // per-channel ||x_j||_2 over the tokens (Wanda's metric)
  uint64_t bytes() const;
};

struct CalibrationOptions {
  bool gram = true;             // keep X^T X per input (needed by GPTQ, SparseGPT, SVD-LLM)
  bool block_influence = true;  // accumulate 1 - cos(h_in, h_out) per block
  // Variants of the Gram matrix for methods that should not fit a sequence's outlier tokens (the
  // first positions of a small LLM carry "massive activations" whose x x^T dominates X^T X); the
  // per-channel sums (the imatrix) keep every token. gram_skip_first: the first n tokens of every
  // forward pass are left out. gram_clip_quantile q in (0, 1): in every forward pass, a token whose
  // ||x||^2 exceeds the pass's q-quantile c (the value at rank floor(q * (tokens - 1)) of the sorted
  // norms, over the tokens not skipped) enters as x * sqrt(c / ||x||^2); 0 or 1: no clipping.
  int64_t gram_skip_first = 0;
  double gram_clip_quantile = 0;
};

class Calibration final : public ForwardHooks {
 public:
  // Throws strata::Error for a negative gram_skip_first or a gram_clip_quantile outside [0, 1].
  explicit Calibration(CalibrationOptions options = {});

  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t in) override;
  void on_block(int layer, const float* in, const float* out, int64_t tokens, int64_t dim) override;

  bool has(std::string_view tensor) const;
  // Throws strata::Error naming the tensor when nothing was collected for it.
  const InputStats& stats(std::string_view tensor) const;
  std::vector<std::string> tensors() const;
  // Block influence (ShortGPT): 1 - mean cosine similarity between a block's input and output.
  std::vector<double> block_influence() const;

  int64_t sequences = 0;
  int64_t tokens = 0;
  uint64_t bytes() const;  // memory held by the statistics
  // InputStats::pack() for every input: no more inputs can be added afterwards.
  void pack();
  // Replaces the per-channel sums of x^2 of the tensor's input so that mean_sq() gives `mean_sq`
  // (an imported importance matrix), keeping the token count and the Gram matrix. Tensors sharing
  // the input (q/k/v, gate/up) see the change too. Throws naming the tensor when it has no
  // statistics, none were collected yet, or the size differs.
  void set_mean_sq(std::string_view tensor, const Vector<double>& mean_sq);

 private:
  CalibrationOptions options_;
  std::map<std::string, std::shared_ptr<InputStats>, std::less<>> by_tensor_;
  std::vector<std::shared_ptr<InputStats>> inputs_;
  std::vector<double> cos_sum_;
  std::vector<int64_t> cos_count_;
};

struct CalibrationReport {
  int64_t sequences = 0, tokens_per_sequence = 0;
  double seconds = 0;
  uint64_t statistics_bytes = 0;
};

// The statistics as a llama.cpp importance matrix: per tensor, the sums of x^2 and the token count
// (io::Imatrix in its GGUF form), `chunk_size` tokens per chunk, named after `dataset`.
io::Imatrix to_imatrix(const Calibration& calibration, int64_t chunk_size, const std::string& dataset);
// Replaces the importance (mean x^2) of every tensor the imatrix names with the imatrix's values
// (set_mean_sq). Check the imatrix against the model first (io::check_imatrix); an entry for a tensor
// without statistics is refused naming it.
void apply_imatrix(const io::Imatrix& imatrix, Calibration& calibration);

// Runs the model over each sequence (one prefill each, no logits) with `calibration` as the hook.
// `next_sequence` fills its argument and returns false when there are no more: sequences are
// streamed, so only one is held at a time. `progress` (optional) is called after each sequence.
CalibrationReport calibrate(const LlamaModel& model, const std::function<bool(std::vector<int32_t>&)>& next_sequence,
                            Calibration& calibration,
                            const std::function<void(int64_t done)>& progress = nullptr);

}  // namespace strata::nn
