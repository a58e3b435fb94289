#include "strata/kv/session.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/attention_decode.hpp"
#include "strata/nn/attention.hpp"
#include "strata/core/eigen.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::kv {

namespace {

Layout layout_of(const nn::LlamaModel& model) {
  const nn::LlamaConfig& c = model.config();
  return {c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim};
}

// A layer budget below the KIVI float32 window would evict tokens the window is meant to hold.
void check_budget_holds_window(const Eviction& eviction, const CacheFormat& format, int64_t n_layers) {
  if (format.min_budget() == 0) return;
  const auto budgets = eviction.layer_budgets(n_layers);
  for (size_t l = 0; l < budgets.size(); ++l)
    require(budgets[l] >= format.min_budget(), "kv::Session: kivi_residual = ", format.kivi_residual,
            " float32 tokens per head do not fit the eviction budget of layer ", l, " (", budgets[l],
            " tokens per KV head, '", describe(eviction), "'): lower kivi_residual or raise the budget");
}

}  // namespace

Session::Session(const nn::LlamaModel& model, int64_t max_tokens, std::optional<Eviction> eviction,
                 Schedule schedule, CacheFormat format)
    : model_(model),
      cache_(model.config().n_layers, model.config().n_kv_heads, model.config().head_dim, 0, std::move(format)),
      eviction_(std::move(eviction)),
      schedule_(schedule),
      session_(model, max_tokens, this) {
  require(schedule.every >= 1, "kv::Session: decode compression every ", schedule.every, " steps; must be >= 1");
  if (eviction_) {
    // Fails early on a budget the policy cannot meet (a layer too small for its protected tokens).
    eviction_->layer_budgets(model.config().n_layers);
    require(eviction_->policy.streaming || eviction_->scorer != nullptr, "kv::Session: eviction '",
            describe(*eviction_), "' has no scorer");
    check_budget_holds_window(*eviction_, cache_.format(), model.config().n_layers);
    if (eviction_->scorer) eviction_->scorer->bind(layout_of(model));
    if (schedule.decode) cache_.set_headroom(schedule.every);
  }
}

std::unique_ptr<Session> Session::fork(const Policy& policy, int64_t budget, Schedule schedule) const {
  std::shared_ptr<Scorer> scorer;
  if (!policy.streaming) {
    require(eviction_ && eviction_->scorer, "kv::Session::fork: policy '", describe(policy),
            "' needs a scorer and this session has none");
    scorer = eviction_->scorer->clone();
  }
  require(schedule.every >= 1, "kv::Session::fork: decode compression every ", schedule.every,
          " steps; must be >= 1");
  // The constructor would bind the scorer and clear its state: the copy goes in afterwards.
  auto out = std::make_unique<Session>(model_, session_.capacity());
  out->eviction_ = Eviction{std::move(scorer), policy, budget};
  out->eviction_->layer_budgets(model_.config().n_layers);  // a budget the policy cannot meet fails here
  check_budget_holds_window(*out->eviction_, cache_.format(), model_.config().n_layers);
  out->schedule_ = schedule;
  out->cache_ = cache_;
  if (schedule.decode) out->cache_.set_headroom(schedule.every);
  out->session_.resume_at(session_.position());
  return out;
}

std::unique_ptr<Session> Session::with_format(CacheFormat format) const {
  auto out = std::make_unique<Session>(model_, session_.capacity(), std::nullopt, schedule_, format);
  out->cache_ = cache_.converted(std::move(format));
  out->session_.resume_at(session_.position());
  return out;
}

void Session::reset() {
  session_.reset();
  cache_.clear();
  if (eviction_ && eviction_->scorer) eviction_->scorer->reset();
  steps_since_compress_ = 0;
  evicted_ = 0;
}

int64_t Session::compress() {
  steps_since_compress_ = 0;
  if (!eviction_) return 0;
  const int64_t e = eviction_->compress(cache_);
  evicted_ += e;
  return e;
}

void Session::forward(std::span<const int32_t> tokens, float* logits, nn::Logits which, nn::ForwardHooks* hooks) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t pos0 = session_.position();
  session_.forward(tokens, logits, which, hooks);
  prefill_probs_.clear();  // a prompt's probabilities are not worth holding while decoding
  const nn::PrefillPruner* pruner = hooks ? hooks->prefill_pruner() : nullptr;
  if (pruner && n > 1 && pruner->options().evict_early_layers && !pruner->options().steps.empty())
    keep_pruned(*pruner, pos0);
  if (!eviction_ || n == 0) return;
  if (n > 1) {
    if (schedule_.prefill) compress();
    return;
  }
  if (schedule_.decode && ++steps_since_compress_ >= schedule_.every) compress();
}

void Session::keep_pruned(const nn::PrefillPruner& pruner, int64_t pos0) {
  const auto kept = pruner.kept_positions();
  Scorer* scorer = eviction_ ? eviction_->scorer.get() : nullptr;
  std::vector<int64_t> indices;
  for (int l = 0; l < pruner.options().steps.back().layer; ++l)
    for (int h = 0; h < cache_.n_kv_heads(); ++h) {
      const auto pos = cache_.positions(l, h);
      indices.clear();
      for (size_t i = 0; i < pos.size(); ++i)
        if (pos[i] < pos0 || std::binary_search(kept.begin(), kept.end(), pos[i]))
          indices.push_back(static_cast<int64_t>(i));
      if (indices.size() == pos.size()) continue;
      cache_.keep(l, h, indices);
      if (scorer) scorer->kept(l, h, indices);
    }
}

void Session::attend(int layer, const float* q, const float* k, const float* v, int64_t n, int64_t pos0, float* out,
                     nn::ForwardHooks* hooks) {
  cache_.append(layer, k, v, n, pos0);
  attend_new(layer, q, n, pos0, out, hooks);
}

void Session::attend_at(int layer, const float* q, const float* k, const float* v, int64_t n, const int64_t* positions,
                        float* out, nn::ForwardHooks* hooks) {
  cache_.append(layer, k, v, std::span<const int64_t>(positions, static_cast<size_t>(n)));
  attend_new(layer, q, n, positions[0], out, hooks);
}

void Session::attend_new(int layer, const float* q, int64_t n, int64_t pos0, float* out, nn::ForwardHooks* hooks) {
  const nn::LlamaConfig& c = model_.config();
  const int64_t hd = c.head_dim, n_heads = c.n_heads, group = c.n_heads / c.n_kv_heads, q_dim = n_heads * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Scorer* scorer = eviction_ ? eviction_->scorer.get() : nullptr;
  const bool scorer_probs = scorer && scorer->wants_attention(layer);
  const bool hook_probs = hooks && hooks->wants_attention(layer);
  auto observe = [&](int64_t h, const float* probs, int64_t rows, int64_t len) {
    if (scorer_probs) scorer->observe(layer, static_cast<int>(h), probs, rows, len, pos0);
    if (hook_probs) hooks->on_attention(layer, static_cast<int>(h), probs, rows, len, pos0);
  };
  int64_t longest = 0;
  for (int h = 0; h < c.n_kv_heads; ++h) longest = std::max(longest, cache_.length(layer, h));
  // The same threshold as the dense session: waking threads costs more than small attention.
  const bool parallel_heads = n * longest * hd * n_heads >= (int64_t{1} << 20);
  // Float32 rows without rotation are read in place; anything else through the cache's stored form.
  const CacheFormat& format = cache_.format();
  const bool plain =
      !format.rotate && format.key_format(layer) == KvFormat::f32 && format.value_format(layer) == KvFormat::f32;

  if (n <= kSplitTokens) {
    attend_split(layer, q, n, plain, parallel_heads, scorer_probs || hook_probs, out, observe);
    return;
  }

  if (!plain) {
    // The stored form, one query head at a time.
    parallel_for(n_heads, parallel_heads ? 1 : n_heads, [&](int64_t h0, int64_t h1) {
      std::vector<float> scores;
      for (int64_t h = h0; h < h1; ++h) {
        const int kvh = static_cast<int>(h / group);
        const int64_t len = cache_.length(layer, kvh);
        // The n new tokens are the head's last n, so query i sees the first len - n + i + 1 tokens.
        scores.resize(static_cast<size_t>(n * len));
        cache_.attend_scores(layer, kvh, q + h * hd, n, q_dim, scale, scores.data());
        nn::causal_softmax_rows(scores.data(), n, len, len - n);
        observe(h, scores.data(), n, len);
        cache_.attend_values(layer, kvh, scores.data(), n, out + h * hd, q_dim);
      }
    });
    return;
  }

  // One query head at a time, in lanes of heads (one per thread); asked for probabilities, each lane
  // keeps one [n, len] buffer for the whole forward instead of a fresh one per head and layer.
  const bool want_probs = scorer_probs || hook_probs;
  const int64_t lanes = parallel_heads ? std::min<int64_t>(num_threads(), n_heads) : 1;
  if (want_probs && static_cast<int64_t>(prefill_probs_.size()) < lanes) prefill_probs_.resize(static_cast<size_t>(lanes));
  parallel_for(lanes, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t lane = l0; lane < l1; ++lane)
      for (int64_t h = lane; h < n_heads; h += lanes) {
        const int kvh = static_cast<int>(h / group);
        const int64_t len = cache_.length(layer, kvh);
        float* probs = nullptr;
        if (want_probs) {
          std::vector<float>& buffer = prefill_probs_[static_cast<size_t>(lane)];
          buffer.resize(static_cast<size_t>(n * len));
          probs = buffer.data();
        }
        // The n new tokens are the head's last n.
        nn::causal_attention(q + h * hd, q_dim, cache_.keys(layer, kvh), cache_.values(layer, kvh), hd, n, len, hd,
                             scale, out + h * hd, q_dim, probs);
        if (want_probs) observe(h, probs, n, len);
      }
  });
}

template <class Observe>
void Session::attend_split(int layer, const float* q, int64_t n, bool plain, bool parallel, bool probs, float* out,
                           Observe& observe) {
  const nn::LlamaConfig& c = model_.config();
  const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads, q_dim = c.n_heads * hd, m = group * n;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  lens_.resize(static_cast<size_t>(c.n_kv_heads));
  for (int h = 0; h < c.n_kv_heads; ++h) lens_[static_cast<size_t>(h)] = cache_.length(layer, h);
  nn::SplitAttention::ScoresFn scores;
  nn::SplitAttention::ValuesFn values;
  if (plain) {
    scores = [&](int h, int64_t begin, int64_t end, float* s, int64_t stride) {
      kernels::attention_scores(split_.queries(h), m, hd, cache_.keys(layer, h) + begin * hd, end - begin, hd, hd,
                                scale, s, stride);
    };
    values = [&](int h, int64_t begin, int64_t end, const float* p, int64_t stride, float* acc) {
      std::fill(acc, acc + m * hd, 0.0f);
      kernels::attention_values(p, m, stride, cache_.values(layer, h) + begin * hd, end - begin, hd, hd, acc, hd);
    };
  } else {
    scores = [&](int h, int64_t begin, int64_t end, float* s, int64_t stride) {
      cache_.attend_scores(layer, h, split_.queries(h), m, hd, scale, begin, end, s, stride);
    };
    values = [&](int h, int64_t begin, int64_t end, const float* p, int64_t stride, float* acc) {
      cache_.attend_values(layer, h, p, stride, m, begin, end, acc, hd);
    };
  }
  split_.run_heads(q, q_dim, lens_, group, n, hd, parallel, probs, scores, values, out, q_dim);
  if (probs)
    for (int64_t h = 0; h < c.n_heads; ++h)
      observe(h, split_.head_probs(h), n, lens_[static_cast<size_t>(h / group)]);
}

}  // namespace strata::kv
