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

// Token sequences sampled from the model itself (temperature 1, seeded), each starting with `bos`.
// For models without a tokenizer here (stories260K): evaluation text the model finds natural.
std::vector<std::vector<int32_t>> sample_sequences(const LlamaModel& model, int64_t count, int64_t length, int32_t bos,
                                                   uint64_t seed);

// Calls visit(logits_row, target, position) for every scored position of a sliding-window pass:
// the primitive perplexity and KL are built on (exposed for other measurements).
void for_each_scored_position(const LlamaModel& model, std::span<const int32_t> tokens, const WindowOptions& options,
                              const std::function<void(const float* logits, int32_t target, int64_t position)>& visit);

}  // namespace strata::nn
