#include "strata/nn/eval.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

#include "strata/core/parallel.hpp"
#include "strata/kernels/softmax.hpp"

namespace strata::nn {

void log_softmax(const float* logits, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  const float mx = kernels::row_max(logits, n);
  const double lse = static_cast<double>(mx) + std::log(kernels::sum_exp(logits, n, mx));
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
  summarize_kl(kls, r);
  if (r.tokens == 0) return r;
  const double cnt = static_cast<double>(r.tokens);
  r.top1_agreement = static_cast<double>(agree) / cnt;
  r.reference = {nll_ref / cnt, std::exp(nll_ref / cnt), r.tokens};
  r.model = {nll / cnt, std::exp(nll / cnt), r.tokens};
  return r;
}

double quantile(std::span<const double> sorted, double q) {
  require(!sorted.empty(), "quantile of no values");
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

void summarize_kl(std::span<const double> kl_per_position, KlResult& out) {
  out.tokens = static_cast<int64_t>(kl_per_position.size());
  if (out.tokens == 0) return;
  double sum = 0;
  for (double k : kl_per_position) sum += k;
  out.mean_kl = sum / static_cast<double>(out.tokens);
  std::vector<double> sorted(kl_per_position.begin(), kl_per_position.end());
  std::sort(sorted.begin(), sorted.end());
  out.median_kl = quantile(sorted, 0.5);
  out.p99_kl = quantile(sorted, 0.99);
  out.max_kl = sorted.back();
}

namespace {

// Records the hidden state entering every block.
class BlockInputs final : public ForwardHooks {
 public:
  explicit BlockInputs(std::vector<RowMatrix<float>>& out) : out_(out) {}
  void on_block(int layer, const float* in, const float*, int64_t tokens, int64_t dim) override {
    if (out_.size() <= static_cast<size_t>(layer)) out_.resize(static_cast<size_t>(layer) + 1);
    out_[static_cast<size_t>(layer)] = Eigen::Map<const RowMatrix<float>>(in, tokens, dim);
  }

 private:
  std::vector<RowMatrix<float>>& out_;
};

// log-softmax of `rows` rows in place (sums in double).
void log_softmax_rows(float* logits, int64_t rows, int64_t vocab) {
  parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) kernels::log_softmax_inplace(logits + r * vocab, vocab);
  });
}

}  // namespace

KlEvaluator::KlEvaluator(const LlamaModel& reference, std::vector<std::vector<int32_t>> windows, bool keep_hidden,
                         ForwardHooks* hooks)
    : windows_(std::move(windows)), vocab_(reference.config().vocab_size), n_layers_(reference.config().n_layers) {
  require(!windows_.empty(), "KL evaluation: no token windows");
  require(!keep_hidden || hooks == nullptr, "KL evaluation: hooks on the reference pass and keep_hidden together");
  double nll = 0;
  for (const auto& w : windows_) {
    const auto n = static_cast<int64_t>(w.size());
    require(n >= 2, "KL evaluation: a window of ", n, " tokens; need at least 2");
    std::vector<float> logits(static_cast<size_t>(n * vocab_));
    LlamaSession session(reference, n);
    std::vector<RowMatrix<float>> hidden;
    BlockInputs record(hidden);
    session.forward(w, logits.data(), Logits::all, keep_hidden ? &record : hooks);
    logits.resize(static_cast<size_t>((n - 1) * vocab_));
    log_softmax_rows(logits.data(), n - 1, vocab_);
    for (int64_t r = 0; r + 1 < n; ++r) {
      const float* row = logits.data() + r * vocab_;
      reference_top1_.push_back(static_cast<int32_t>(std::max_element(row, row + vocab_) - row));
      nll -= row[w[static_cast<size_t>(r + 1)]];
    }
    reference_logp_.push_back(std::move(logits));
    if (keep_hidden) hidden_.push_back(std::move(hidden));
    tokens_ += n - 1;
  }
  reference_.tokens = tokens_;
  reference_.mean_nll = nll / static_cast<double>(tokens_);
  reference_.perplexity = std::exp(reference_.mean_nll);
}

void KlEvaluator::check_judgeable(const LlamaModel& model, int first_block) const {
  require(model.config().vocab_size == vocab_, "KL evaluation: vocabularies differ (", vocab_, " vs ",
          model.config().vocab_size, ")");
  require(first_block == 0 || !hidden_.empty(), "KL evaluation from block ", first_block,
          ": the evaluator keeps no hidden states (keep_hidden)");
  require(first_block >= 0 && first_block < std::max<int64_t>(n_layers_, 1), "KL evaluation: block ", first_block,
          " outside [0, ", n_layers_, ")");
}

KlResult KlEvaluator::operator()(const LlamaModel& model, int first_block) const {
  check_judgeable(model, first_block);
  std::vector<double> kl(static_cast<size_t>(tokens_));
  std::vector<char> agree(static_cast<size_t>(tokens_));
  double nll = 0;
  int64_t base = 0;
  std::vector<float> logits;
  for (size_t q = 0; q < windows_.size(); ++q) {
    const auto& w = windows_[q];
    const auto n = static_cast<int64_t>(w.size());
    logits.resize(static_cast<size_t>(n * vocab_));
    LlamaSession session(model, n);
    if (first_block == 0)
      session.forward(w, logits.data(), Logits::all);
    else
      session.forward_hidden(first_block, hidden_[q][static_cast<size_t>(first_block)].data(), n, logits.data(),
                             Logits::all);
    log_softmax_rows(logits.data(), n - 1, vocab_);
    const float* p = reference_logp_[q].data();
    const float* m = logits.data();
    parallel_for(n - 1, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* pr = p + r * vocab_;
        const float* mr = m + r * vocab_;
        kl[static_cast<size_t>(base + r)] = std::max(0.0, kernels::kl_from_log_probs(pr, mr, vocab_));
        const auto top = static_cast<int32_t>(std::max_element(mr, mr + vocab_) - mr);
        agree[static_cast<size_t>(base + r)] = top == reference_top1_[static_cast<size_t>(base + r)];
      }
    });
    for (int64_t r = 0; r + 1 < n; ++r) nll -= m[r * vocab_ + w[static_cast<size_t>(r + 1)]];
    base += n - 1;
  }
  KlResult out;
  summarize_kl(kl, out);
  double agreed = 0;
  for (char a : agree) agreed += a;
  out.top1_agreement = agreed / static_cast<double>(tokens_);
  out.reference = reference_;
  out.model.tokens = tokens_;
  out.model.mean_nll = nll / static_cast<double>(tokens_);
  out.model.perplexity = std::exp(out.model.mean_nll);
  return out;
}

std::vector<double> KlEvaluator::mean_kl(std::span<const LlamaModel* const> models, int first_block,
                                         int64_t max_rows) const {
  for (const LlamaModel* m : models) check_judgeable(*m, first_block);
  std::vector<double> out(models.size());
  const auto length = static_cast<int64_t>(windows_.front().size());
  const bool one_length = std::all_of(windows_.begin(), windows_.end(),
                                      [&](const auto& w) { return static_cast<int64_t>(w.size()) == length; });
  if (!one_length) {
    for (size_t v = 0; v < models.size(); ++v) out[v] = mean_kl(*models[v], first_block);
    return out;
  }
  // The shared input: every window's tokens, or the hidden states entering first_block, stacked.
  const auto sequences = static_cast<int64_t>(windows_.size());
  const int64_t per = sequences * length;
  std::vector<int32_t> tokens;
  RowMatrix<float> hidden;
  if (first_block == 0) {
    for (const auto& w : windows_) tokens.insert(tokens.end(), w.begin(), w.end());
  } else {
    hidden.resize(per, hidden_[0][static_cast<size_t>(first_block)].cols());
    for (int64_t q = 0; q < sequences; ++q)
      hidden.middleRows(q * length, length) = hidden_[static_cast<size_t>(q)][static_cast<size_t>(first_block)];
  }
  const int64_t group = std::max<int64_t>(1, max_rows / per);
  std::vector<float> logits;
  for (size_t v0 = 0; v0 < models.size(); v0 += static_cast<size_t>(group)) {
    const size_t v1 = std::min(models.size(), v0 + static_cast<size_t>(group));
    const auto count = static_cast<int64_t>(v1 - v0);
    logits.resize(static_cast<size_t>(count * per * vocab_));
    forward_variants(models.subspan(v0, v1 - v0), sequences, length, first_block, tokens,
                     first_block == 0 ? nullptr : hidden.data(), logits.data());
    // Each window's last row predicts nothing scored; the others are judged against the reference.
    const int64_t scored = length - 1;
    std::vector<double> kl(static_cast<size_t>(count * sequences * scored));
    parallel_for(count * sequences * scored, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t vq = i / scored, r = i % scored, q = vq % sequences;
        float* row = logits.data() + (vq * length + r) * vocab_;
        kernels::log_softmax_inplace(row, vocab_);
        const float* ref = reference_logp_[static_cast<size_t>(q)].data() + r * vocab_;
        kl[static_cast<size_t>(i)] = std::max(0.0, kernels::kl_from_log_probs(ref, row, vocab_));
      }
    });
    for (int64_t v = 0; v < count; ++v) {
      double sum = 0;
      for (int64_t i = v * sequences * scored; i < (v + 1) * sequences * scored; ++i) sum += kl[static_cast<size_t>(i)];
      out[v0 + static_cast<size_t>(v)] = sum / static_cast<double>(tokens_);
    }
  }
  return out;
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
