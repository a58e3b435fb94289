#pragma once
// A Llama-family session whose keys and values live in a kv::Cache: every KV head attends over its
// own kept tokens, and a kv::Eviction evicts after the prompt and/or while generating.
//
// A forward of more than kSplitTokens tokens (a prompt) attends query head by query head, as the
// dense session does. A decode step (up to kSplitTokens tokens) runs nn::SplitAttention: the query
// heads that share a KV head read its rows together, once, and the work is split over (KV head x
// chunk of 256 tokens) so that both threads get equal shares, the chunks' softmax partials combined
// exactly afterwards; the exact probabilities still reach scorers and hooks. Float32 rows are read in
// place (kernels/cpu/attention_decode.hpp); a quantized or rotated format (CacheFormat) is read
// through Cache::attend_scores and attend_values over each chunk. With nothing evicted the logits
// match nn::LlamaSession's to 1e-5 relative (tests/unit/kv/kv_session_test.cc): the same tokens and
// the same softmax, summed in another order.
//
// When it compresses (Schedule):
//   prefill   after every forward of more than one token (a prompt, or a chunk of one).
//   decode    after single-token forwards, every `every` of them. every = 1: each step brings every
//             head back to its budget, so the cache never holds more than budget + 1 tokens per head
//             (TOVA's "evict one per step"). every = k: a head holds between its budget and budget +
//             k - 1 tokens after a forward (budget + k during one), and the cache keeps k rows of
//             headroom per head (Cache::set_headroom) so that it does not reallocate in between; k
//             trades eviction work (scoring and moving rows, once per k steps) for k - 1 extra tokens.
// A session without an eviction never evicts. The scorer observes attention on every forward,
// whether or not that forward compresses (H2O accumulates over all of them).
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "strata/kv/cache.hpp"
#include "strata/kv/policy.hpp"
#include "strata/kv/scorers.hpp"
#include "strata/nn/attention.hpp"
#include "strata/nn/hooks.hpp"
#include "strata/nn/llama.hpp"

namespace strata::kv {

struct Schedule {
  bool prefill = true;   // compress after each multi-token forward
  bool decode = false;   // compress during generation
  int64_t every = 1;     // decode: compress after every `every`-th single-token forward
};

class Session : private nn::LlamaSession::KvStore {
 public:
  // Forwards of up to this many tokens attend through nn::SplitAttention.
  static constexpr int64_t kSplitTokens = nn::SplitAttention::kMaxTokens;

  // max_tokens bounds the positions (the model's context), not the memory, which the budget bounds.
  // The eviction's scorer is bound to the model's layout here and belongs to this session.
  // `format` says how the cache stores keys and values (CacheFormat: float32 by default). It is
  // validated against the model here, and against the eviction's budget: a budget below the KIVI
  // float32 window (CacheFormat::min_budget) is refused, naming kivi_residual.
  Session(const nn::LlamaModel& model, int64_t max_tokens, std::optional<Eviction> eviction = std::nullopt,
          Schedule schedule = {}, CacheFormat format = {});
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // A session that continues from this one: a copy of the cache at the same position, and a
  // an eviction of `policy` and `budget` whose scorer is a copy of this session's, observed state
  // included (none for a streaming policy). Nothing is evicted until compress() or the next forward
  // the schedule compresses after. A prompt read once with Schedule::prefill off can so be forked
  // and compressed under many policies and budgets: a fork that calls compress() keeps the tokens, and
  // then computes the logits, of a session that read the prompt with that eviction and
  // Schedule::prefill on, bit for bit.
  std::unique_ptr<Session> fork(const Policy& policy, int64_t budget, Schedule schedule) const;

  // A session that continues from this one with its cache re-stored in `format`
  // (Cache::converted): same position, same tokens, no eviction. Reading a prompt in float32 and
  // then going on with a quantized cache is how KIVI runs (the prompt attends in full precision).
  std::unique_ptr<Session> with_format(CacheFormat format) const;

  // As nn::LlamaSession::forward, then compresses as the schedule says. `hooks` sees attention rows
  // over each KV head's kept tokens (k_len = that head's length, columns in cache order).
  // With an nn::PrefillPruner as `hooks` a prompt is pruned while it runs (nn/prefill_pruning.hpp):
  // blocks from a step's layer on hold only the kept prompt tokens, at their original positions; with
  // PrefillPruning::evict_early_layers the blocks before the last step keep only those tokens too.
  void forward(std::span<const int32_t> tokens, float* logits, nn::Logits which, nn::ForwardHooks* hooks = nullptr);
  // Compresses now (whatever the schedule); returns the number of tokens evicted.
  int64_t compress();

  const nn::LlamaModel& model() const { return model_; }
  int64_t position() const { return session_.position(); }
  int64_t capacity() const { return session_.capacity(); }
  const Cache& cache() const { return cache_; }
  const std::optional<Eviction>& eviction() const { return eviction_; }
  const Schedule& schedule() const { return schedule_; }
  uint64_t cache_bytes() const { return cache_.bytes(); }
  int64_t evicted() const { return evicted_; }  // tokens evicted since construction or reset()
  void reset();                                 // empty cache, position 0, scorer state cleared

 private:
  void attend(int layer, const float* q, const float* k, const float* v, int64_t tokens, int64_t pos0, float* out,
              nn::ForwardHooks* hooks) override;
  void attend_at(int layer, const float* q, const float* k, const float* v, int64_t tokens, const int64_t* positions,
                 float* out, nn::ForwardHooks* hooks) override;
  // Attention of the `tokens` newest rows of every head of `layer` (just appended).
  void attend_new(int layer, const float* q, int64_t tokens, int64_t pos0, float* out, nn::ForwardHooks* hooks);
  // attend_new for a few tokens: nn::SplitAttention over the cache (in place when `plain`: float32
  // without rotation); observe(query head, probs, rows, len) gets each query head's probabilities.
  template <class Observe>
  void attend_split(int layer, const float* q, int64_t tokens, bool plain, bool parallel, bool probs, float* out,
                    Observe& observe);
  // Blocks before the pruner's last step keep, of the positions from pos0 on, only its kept ones.
  void keep_pruned(const nn::PrefillPruner& pruner, int64_t pos0);
  uint64_t bytes() const override { return cache_.bytes(); }

  const nn::LlamaModel& model_;
  Cache cache_;
  std::optional<Eviction> eviction_;
  Schedule schedule_;
  nn::LlamaSession session_;
  int64_t steps_since_compress_ = 0;
  int64_t evicted_ = 0;
  // attend_split's workspace, kept between steps.
  nn::SplitAttention split_;
  std::vector<int64_t> lens_;
  std::vector<std::vector<float>> prefill_probs_;  // per lane of heads, during a prompt's forward
};

}  // namespace strata::kv
