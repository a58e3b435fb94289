#include "strata/kv/session.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

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

}  // namespace

Session::Session(const nn::LlamaModel& model, int64_t max_tokens, std::optional<Eviction> eviction,
                 Schedule schedule)
    : model_(model),
      cache_(model.config().n_layers, model.config().n_kv_heads, model.config().head_dim),
      eviction_(std::move(eviction)),
      schedule_(schedule),
      session_(model, max_tokens, this) {
  require(schedule.every >= 1, "kv::Session: decode compression every ", schedule.every, " steps; must be >= 1");
  if (eviction_) {
    // Fails early on a budget the policy cannot meet (a layer too small for its protected tokens).
    eviction_->layer_budgets(model.config().n_layers);
    require(eviction_->policy.streaming || eviction_->scorer != nullptr, "kv::Session: eviction '",
            describe(*eviction_), "' has no scorer");
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
  out->schedule_ = schedule;
  out->cache_ = cache_;
  if (schedule.decode) out->cache_.set_headroom(schedule.every);
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
  session_.forward(tokens, logits, which, hooks);
  if (!eviction_ || n == 0) return;
  if (n > 1) {
    if (schedule_.prefill) compress();
    return;
  }
  if (schedule_.decode && ++steps_since_compress_ >= schedule_.every) compress();
}

void Session::attend(int layer, const float* q, const float* k, const float* v, int64_t n, int64_t pos0, float* out,
                     nn::ForwardHooks* hooks) {
  cache_.append(layer, k, v, n, pos0);
  const nn::LlamaConfig& c = model_.config();
  const int64_t hd = c.head_dim, n_heads = c.n_heads, group = c.n_heads / c.n_kv_heads, q_dim = n_heads * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Scorer* scorer = eviction_ ? eviction_->scorer.get() : nullptr;
  const bool scorer_probs = scorer && scorer->wants_attention(layer);
  const bool hook_probs = hooks && hooks->wants_attention(layer);
  int64_t longest = 0;
  for (int h = 0; h < c.n_kv_heads; ++h) longest = std::max(longest, cache_.length(layer, h));
  // The same threshold as the dense session: waking threads costs more than small attention.
  const bool parallel_heads = n * longest * hd * n_heads >= (int64_t{1} << 20);
  parallel_for(n_heads, parallel_heads ? 1 : n_heads, [&](int64_t h0, int64_t h1) {
    RowMatrix<float> scores;
    for (int64_t h = h0; h < h1; ++h) {
      const int kvh = static_cast<int>(h / group);
      const int64_t len = cache_.length(layer, kvh);
      // The n new tokens are the head's last n, so query t sees the first len - n + t + 1 tokens.
      const int64_t before = len - n;
      using Strided = Eigen::Map<const RowMatrix<float>, 0, Eigen::OuterStride<>>;
      Strided qh(q + h * hd, n, hd, Eigen::OuterStride<>(q_dim));
      Eigen::Map<const RowMatrix<float>> kh(cache_.keys(layer, kvh), len, hd);
      Eigen::Map<const RowMatrix<float>> vh(cache_.values(layer, kvh), len, hd);
      scores.resize(n, len);
      scores.noalias() = (qh * kh.transpose()) * scale;
      nn::causal_softmax_rows(scores.data(), n, len, before);
      if (scorer_probs) scorer->observe(layer, static_cast<int>(h), scores.data(), n, len, pos0);
      if (hook_probs) hooks->on_attention(layer, static_cast<int>(h), scores.data(), n, len, pos0);
      Eigen::Map<RowMatrix<float>, 0, Eigen::OuterStride<>> o(out + h * hd, n, hd, Eigen::OuterStride<>(q_dim));
      o.noalias() = scores * vh;
    }
  });
}

}  // namespace strata::kv
