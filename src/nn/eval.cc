#include "strata/nn/eval.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

namespace strata::nn {

void log_softmax(const float* logits, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  const float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  const double lse = static_cast<double>(mx) + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<double>(logits[i]) - lse;
}

namespace {

struct Window {
  int64_t begin, end, first_scored;  // score positions [first_scored, end), predicted from [begin, pos)
};

std::vector<Window> plan_windows(int64_t n, const WindowOptions& o) {
  require(o.context >= 2, "evaluation: context must be at least 2 tokens, got ", o.context);
  require(o.stride >= 1 && o.stride <= o.context, "evaluation: stride ", o.stride, " must be in [1, context = ",
          o.context, "]");
  std::vector<Window> windows;
  int64_t scored_until = 1;  // position 0 has no prefix to predict it from
  int64_t budget = o.max_tokens > 0 ? o.max_tokens : n;
  for (int64_t b = 0; scored_until < n && budget > 0; b += o.stride) {
    const int64_t e = std::min(b + o.context, n);
    if (e <= scored_until) continue;
    const int64_t first = std::max(scored_until, b + 1);
    const int64_t last = std::min(e, first + budget);
    windows.push_back({b, last, first});
    budget -= last - first;
    scored_until = last;
    if (e == n) break;
  }
  return windows;
}

}  // namespace

void for_each_scored_position(const LlamaModel& model, std::span<const int32_t> tokens, const WindowOptions& options,
                              const std::function<void(const float*, int32_t, int64_t)>& visit) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  require(n >= 2, "evaluation: need at least 2 tokens, got ", n);
  const int64_t vocab = model.config().vocab_size;
  LlamaSession session(model, options.context);
  std::vector<float> logits;
  for (const Window& w : plan_windows(n, options)) {
    session.reset();
    const int64_t len = w.end - w.begin;
    logits.resize(static_cast<size_t>(len * vocab));
    session.forward(tokens.subspan(static_cast<size_t>(w.begin), static_cast<size_t>(len)), logits.data(), Logits::all);
    for (int64_t p = w.first_scored; p < w.end; ++p)
      visit(logits.data() + (p - 1 - w.begin) * vocab, tokens[static_cast<size_t>(p)], p);
  }
}

PerplexityResult perplexity(const LlamaModel& model, std::span<const int32_t> tokens, const WindowOptions& options) {
  const int64_t vocab = model.config().vocab_size;
  std::vector<double> lp;
  double nll = 0;
  int64_t count = 0;
  for_each_scored_position(model, tokens, options, [&](const float* logits, int32_t target, int64_t) {
    log_softmax(logits, vocab, lp);
    nll -= lp[static_cast<size_t>(target)];
    ++count;
  });
  PerplexityResult r;
  r.tokens = count;
  r.mean_nll = count ? nll / static_cast<double>(count) : 0;
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

KlResult kl_divergence(const LlamaModel& reference, const LlamaModel& model, std::span<const int32_t> tokens,
                       const WindowOptions& options) {
  require(reference.config().vocab_size == model.config().vocab_size, "kl_divergence: vocabularies differ (",
          reference.config().vocab_size, " vs ", model.config().vocab_size, ")");
  const int64_t vocab = model.config().vocab_size;
  // The reference pass is stored per position as log-probabilities would be too large (positions x
  // vocab); instead both models run window by window in lockstep.
  const int64_t n = static_cast<int64_t>(tokens.size());
  require(n >= 2, "kl_divergence: need at least 2 tokens, got ", n);
  LlamaSession ref_session(reference, options.context), session(model, options.context);
  std::vector<float> ref_logits, logits;
  std::vector<double> lp_ref, lp;
  std::vector<double> kls;
  double nll_ref = 0, nll = 0;
  int64_t agree = 0;
  for (const Window& w : plan_windows(n, options)) {
    const int64_t len = w.end - w.begin;
    const auto span = tokens.subspan(static_cast<size_t>(w.begin), static_cast<size_t>(len));
    ref_logits.resize(static_cast<size_t>(len * vocab));
    logits.resize(static_cast<size_t>(len * vocab));
    ref_session.reset();
    session.reset();
    ref_session.forward(span, ref_logits.data(), Logits::all);
    session.forward(span, logits.data(), Logits::all);
    for (int64_t p = w.first_scored; p < w.end; ++p) {
      const int64_t row = (p - 1 - w.begin) * vocab;
      log_softmax(ref_logits.data() + row, vocab, lp_ref);
      log_softmax(logits.data() + row, vocab, lp);
      double kl = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        const double a = lp_ref[static_cast<size_t>(v)];
        kl += std::exp(a) * (a - lp[static_cast<size_t>(v)]);
      }
      kls.push_back(std::max(kl, 0.0));
      const int32_t target = tokens[static_cast<size_t>(p)];
      nll_ref -= lp_ref[static_cast<size_t>(target)];
      nll -= lp[static_cast<size_t>(target)];
      const auto argmax = [&](const float* r) { return std::max_element(r, r + vocab) - r; };
      agree += argmax(ref_logits.data() + row) == argmax(logits.data() + row);
    }
  }
  KlResult r;
  r.tokens = static_cast<int64_t>(kls.size());
  if (r.tokens == 0) return r;
  const double cnt = static_cast<double>(r.tokens);
  double sum = 0;
  for (double k : kls) sum += k;
  r.mean_kl = sum / cnt;
  std::vector<double> sorted = kls;
  std::sort(sorted.begin(), sorted.end());
  const auto quantile = [&](double q) {
    const double pos = q * (cnt - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, sorted.size() - 1);
    return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
  };
  r.median_kl = quantile(0.5);
  r.p99_kl = quantile(0.99);
  r.max_kl = sorted.back();
  r.top1_agreement = static_cast<double>(agree) / cnt;
  r.reference = {nll_ref / cnt, std::exp(nll_ref / cnt), r.tokens};
  r.model = {nll / cnt, std::exp(nll / cnt), r.tokens};
  return r;
}

std::vector<std::vector<int32_t>> sample_sequences(const LlamaModel& model, int64_t count, int64_t length, int32_t bos,
                                                   uint64_t seed) {
  require(count >= 0 && length >= 2, "sample_sequences: need count >= 0 and length >= 2");
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < count; ++i) {
    const int32_t prompt[1] = {bos};
    std::vector<int32_t> seq = {bos};
    const auto gen = generate(model, prompt, length - 1, 1.0f, seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull);
    seq.insert(seq.end(), gen.begin(), gen.end());
    out.push_back(std::move(seq));
  }
  return out;
}

}  // namespace strata::nn
