#pragma once
// Measurements that judge a compressed model against the dense one on real data: perplexity with a
// sliding window, and the KL divergence of next-token distributions (reported as llama.cpp's
// --kl-divergence does: mean, 99th percentile, top-1 agreement).
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "strata/nn/llama.hpp"

namespace strata::nn {

// log-softmax of one row of n logits into `out` (resized), in double for stable KL sums.
void log_softmax(const float* logits, int64_t n, std::vector<double>& out);

struct WindowOptions {
  int64_t context = 512;  // tokens the model sees per window
  int64_t stride = 256;   // step between windows; only tokens not scored before are scored
  int64_t max_tokens = 0; // stop after scoring this many tokens (0 = all)
};

struct PerplexityResult {
  double mean_nll = 0;  // nats per token
  double perplexity = 0;
  int64_t tokens = 0;   // tokens scored
};

PerplexityResult perplexity(const LlamaModel& model, std::span<const int32_t> tokens, const WindowOptions& options);

struct KlResult {
  double mean_kl = 0, median_kl = 0, p99_kl = 0, max_kl = 0;  // KL(reference || model), nats
  double top1_agreement = 0;  // fraction of positions where both argmax agree
  PerplexityResult reference, model;
  int64_t tokens = 0;
};

KlResult kl_divergence(const LlamaModel& reference, const LlamaModel& model, std::span<const int32_t> tokens,
                       const WindowOptions& options);

// Mean, median, 99th percentile and maximum of per-position KL values: the one definition every
// strata report uses. Quantiles interpolate linearly between order statistics (numpy's default):
// q at position q (n - 1) of the sorted values.
void summarize_kl(std::span<const double> kl_per_position, KlResult& out);
double quantile(std::span<const double> sorted, double q);

// The dense model's next-token log-probabilities on fixed token windows, computed once, so that each
// judgement of a compressed model costs one forward pass of that model: the measured fitness of the
// allocator's search and the figures of its report. Each window is scored on its own, the prediction
// of token i + 1 from tokens 0..i. Memory: (tokens scored) x vocab floats.
// With keep_hidden, the hidden states entering every block are kept too (tokens x dim x n_layers
// floats), so that a model differing from the reference only from block b on is judged by running
// blocks b.. alone (first_block = b), with the same result as a whole forward pass.
class KlEvaluator {
 public:
  // `hooks` (may be null; not with keep_hidden) watch the reference's own pass over the windows, so a
  // measurement on the same text costs no forward pass of its own (pipeline::HeldOutErrors).
  KlEvaluator(const LlamaModel& reference, std::vector<std::vector<int32_t>> windows, bool keep_hidden = false,
              ForwardHooks* hooks = nullptr);
  KlResult operator()(const LlamaModel& model, int first_block = 0) const;
  double mean_kl(const LlamaModel& model, int first_block = 0) const { return (*this)(model, first_block).mean_kl; }
  // The mean KL of each of several models (variants of the reference's configuration, typically
  // sharing most layers), judged together: with windows of one length they run as one variant pass
  // (forward_variants) per group of models filling about max_rows rows, so a layer the models share
  // is dequantized and packed once per group. Equal to mean_kl of each model alone up to the order of
  // float sums; windows of several lengths fall back to one model at a time.
  std::vector<double> mean_kl(std::span<const LlamaModel* const> models, int first_block = 0,
                              int64_t max_rows = 1024) const;
  int64_t tokens() const { return tokens_; }
  const PerplexityResult& reference() const { return reference_; }
  const std::vector<std::vector<int32_t>>& windows() const { return windows_; }

 private:
  // Throws naming the mismatch when `model` cannot be judged from `first_block`.
  void check_judgeable(const LlamaModel& model, int first_block) const;
  std::vector<std::vector<int32_t>> windows_;
  std::vector<std::vector<float>> reference_logp_;       // per window [len - 1, vocab]
  std::vector<std::vector<RowMatrix<float>>> hidden_;  // per window, per block: its input [len, dim]
  std::vector<int32_t> reference_top1_;
  PerplexityResult reference_;
  int64_t vocab_ = 0, tokens_ = 0, n_layers_ = 0;
};

// Token sequences sampled from the model itself (temperature 1, seeded), each starting with `bos`.
// For models without a tokenizer here (stories260K): evaluation text the model finds natural.
std::vector<std::vector<int32_t>> sample_sequences(const LlamaModel& model, int64_t count, int64_t length, int32_t bos,
                                                   uint64_t seed);

// Calls visit(logits_row, target, position) for every scored position of a sliding-window pass:
// the primitive perplexity and KL are built on (exposed for other measurements).
void for_each_scored_position(const LlamaModel& model, std::span<const int32_t> tokens, const WindowOptions& options,
                              const std::function<void(const float* logits, int32_t target, int64_t position)>& visit);

}  // namespace strata::nn
