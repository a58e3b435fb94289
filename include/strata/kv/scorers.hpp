#pragma once
// Token scorers for KV-cache eviction: for one layer and KV head, one score per cached token (higher =
// keep). Scorers that need attention get it through observe(), which kv::Session calls with the
// probabilities its attention computes anyway (the rows of ForwardHooks::on_attention, columns in
// kv::Cache order); no scorer computes attention of its own.
//
// Grouped-query attention: several query heads share one KV head, so attention arrives per query
// head and a token's score for its KV head combines the group's heads (GroupReduce: mean, the
// default, or max). The mean of probability rows is again a probability row, which is what makes
// AdaKV's cross-head comparison and its L1 bound (policy.hpp) hold for a group.
//
//   H2O       accumulated attention: every query's row is added (prefill and decode).
//   TOVA      the last query's attention.
//   TOVA-EMA  an exponential moving average of the attention rows, s <- d s + (1 - d) a for each query
//             row a in order (decay d = 0.95 by default, chosen among 0.8-0.98 on a tuning split of
//             long generations): TOVA's recency with memory of the last ~1 / (1 - d) queries. A token
//             not yet in the cache counts as 0 in the rows before it.
//   SnapKV    attention summed over the last w queries (w = 32), then pooled over neighbouring
//             tokens (average, kernel 5, stride 1, zero padding 2; or max).
//   KeyNorm   -||k_j||_2: keys with a small norm draw attention, so they are kept (Devoto et al.
//             2024). RoPE rotates pairs of coordinates, so the norm is that of the unrotated key.
//   ChunkKV   an inner scorer's token scores summed over the KV heads of the layer and averaged per
//             chunk of C positions (C = 20): every token of a chunk gets its chunk's score, so whole
//             chunks are kept. Layers come in groups of `reuse` adjacent layers; the first of a group
//             scores, the others reuse its chunk scores from the same compression pass (and so, at
//             equal budgets, its kept chunks); when the first layer was within its budget and not
//             scored in the pass, they are computed from its current state.
//   Random    a seeded hash of (seed, layer, head, position): the baseline.
// StreamingLLM needs no scorer: it is Policy::streaming_llm() (sinks + recent window).
//
// A scorer holds per-session state (accumulated attention). Give each session its own scorer.
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/kv/cache.hpp"

namespace strata::kv {

// The model a scorer observes.
struct Layout {
  int64_t n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;  // n_heads: query heads
  int64_t group() const { return n_heads / n_kv_heads; }
};

// How the query heads of one KV head's group combine into one score per token.
enum class GroupReduce { mean, max };

class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual std::string name() const = 0;

  // Sizes the per-layer state for `layout` and clears it; kv::Session calls it once.
  virtual void bind(const Layout& layout);
  const Layout& layout() const { return layout_; }
  // Clears accumulated state (a new sequence).
  virtual void reset() {}

  // Whether observe() wants this layer's attention.
  virtual bool wants_attention(int layer) const { return false; }
  // Attention probabilities of query head `q_head`, row-major [q_len, k_len]: row i is the query at
  // absolute position q_pos0 + i, column j is token j of KV head q_head / group in the cache (k_len =
  // that head's length). Called concurrently for different query heads, never twice at once for the
  // same (layer, q_head).
  virtual void observe(int layer, int q_head, const float* probs, int64_t q_len, int64_t k_len, int64_t q_pos0) {}

  // One score per cached token of (layer, head): out.size() == cache.length(layer, head).
  virtual void score(const Cache& cache, int layer, int head, std::span<float> out) = 0;
  // Scores of every KV head of a layer (out[h] resized to its length). Scorers whose scores couple
  // the heads of a layer (ChunkKV) override this; an eviction always scores a layer this way.
  virtual void score_layer(const Cache& cache, int layer, std::vector<std::vector<float>>& out);
  // The cache kept `indices` of (layer, head): state indexed by cached token follows.
  virtual void kept(int layer, int head, std::span<const int64_t> indices) {}
  // Eviction::compress() starts a pass over the layers (ChunkKV: scores of lower layers computed
  // before this are stale).
  virtual void begin_pass() {}
  // An independent copy, observed state included (kv::Session::fork). Scorers that cannot be copied
  // keep this default, which throws strata::Error naming the scorer.
  virtual std::shared_ptr<Scorer> clone() const;

 protected:
  Layout layout_;
};

// The shared machinery of the attention scorers: per query head, either the sum of every observed
// row (window 0) or the last `window` rows, pooled over neighbouring tokens, combined over the group.
struct AttentionOptions {
  int64_t window = 0;        // 0: accumulate every row; w > 0: only the last w query rows
  double decay = 1;          // window 0 only: s <- decay s + (1 - decay) row; 1 is the plain sum
  int64_t pool_kernel = 1;   // odd; 1 = no pooling
  enum class Pool { avg, max } pool = Pool::avg;  // avg divides by the kernel (zero padding)
  GroupReduce reduce = GroupReduce::mean;
};

class AttentionScorer : public Scorer {
 public:
  AttentionScorer(std::string name, const AttentionOptions& options);
  std::string name() const override { return name_; }
  const AttentionOptions& options() const { return options_; }
  void bind(const Layout& layout) override;
  void reset() override;
  bool wants_attention(int) const override { return true; }
  void observe(int layer, int q_head, const float* probs, int64_t q_len, int64_t k_len, int64_t q_pos0) override;
  void score(const Cache& cache, int layer, int head, std::span<float> out) override;
  void kept(int layer, int head, std::span<const int64_t> indices) override;
  // Floats of observed state held (sums and stored rows), for cost reports.
  int64_t state_floats() const;
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<AttentionScorer>(*this); }

 private:
  struct QueryHead {
    std::vector<float> sum;               // window 0
    std::deque<std::vector<float>> rows;  // window > 0: the last rows, oldest first
  };
  QueryHead& state(int layer, int q_head) { return state_[static_cast<size_t>(layer * layout_.n_heads + q_head)]; }
  // This query head's (unpooled) score for the first `length` cached tokens, added into `acc`.
  void raw(int layer, int q_head, int64_t length, std::vector<float>& acc);

  std::string name_;
  AttentionOptions options_;
  std::vector<QueryHead> state_;  // [layer * n_heads + q_head]
};

class H2O : public AttentionScorer {
 public:
  explicit H2O(GroupReduce reduce = GroupReduce::mean)
      : AttentionScorer("h2o", {.window = 0, .pool_kernel = 1, .reduce = reduce}) {}
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<H2O>(*this); }
};

class TOVA : public AttentionScorer {
 public:
  explicit TOVA(GroupReduce reduce = GroupReduce::mean)
      : AttentionScorer("tova", {.window = 1, .pool_kernel = 1, .reduce = reduce}) {}
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<TOVA>(*this); }
};

class TovaEma : public AttentionScorer {
 public:
  explicit TovaEma(double decay = 0.95, GroupReduce reduce = GroupReduce::mean)
      : AttentionScorer("tova-ema", {.window = 0, .decay = decay, .pool_kernel = 1, .reduce = reduce}) {}
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<TovaEma>(*this); }
};

class SnapKV : public AttentionScorer {
 public:
  explicit SnapKV(int64_t window = 32, int64_t kernel = 5, AttentionOptions::Pool pool = AttentionOptions::Pool::avg,
                  GroupReduce reduce = GroupReduce::mean)
      : AttentionScorer("snapkv", {.window = window, .pool_kernel = kernel, .pool = pool, .reduce = reduce}) {}
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<SnapKV>(*this); }
};

class KeyNorm : public Scorer {
 public:
  std::string name() const override { return "keynorm"; }
  void score(const Cache& cache, int layer, int head, std::span<float> out) override;
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<KeyNorm>(*this); }
};

class RandomScorer : public Scorer {
 public:
  explicit RandomScorer(uint64_t seed = 0) : seed_(seed) {}
  std::string name() const override { return "random"; }
  void score(const Cache& cache, int layer, int head, std::span<float> out) override;
  std::shared_ptr<Scorer> clone() const override { return std::make_shared<RandomScorer>(*this); }

 private:
  uint64_t seed_;
};

class ChunkKV : public Scorer {
 public:
  // `inner` scores tokens (default SnapKV); chunks of `chunk` positions; groups of `reuse` layers.
  explicit ChunkKV(std::shared_ptr<Scorer> inner = nullptr, int64_t chunk = 20, int64_t reuse = 1);
  std::string name() const override { return "chunkkv"; }
  int64_t chunk() const { return chunk_; }
  int64_t reuse() const { return reuse_; }
  void bind(const Layout& layout) override;
  void reset() override;
  bool wants_attention(int layer) const override;
  void observe(int layer, int q_head, const float* probs, int64_t q_len, int64_t k_len, int64_t q_pos0) override;
  void score(const Cache& cache, int layer, int head, std::span<float> out) override;
  void score_layer(const Cache& cache, int layer, std::vector<std::vector<float>>& out) override;
  void kept(int layer, int head, std::span<const int64_t> indices) override;
  void begin_pass() override;
  std::shared_ptr<Scorer> clone() const override;  // the inner scorer is copied too

 private:
  bool scores_layer(int layer) const { return layer % reuse_ == 0; }
  void score_chunks(const Cache& cache, int layer);
  std::shared_ptr<Scorer> inner_;
  int64_t chunk_, reuse_;
  // Per scoring layer, (chunk id, chunk score) sorted by chunk id, and whether it is from this pass.
  std::vector<std::vector<std::pair<int64_t, float>>> chunk_scores_;
  std::vector<char> fresh_;
};

// A scorer by name with its default settings: "h2o", "tova", "tova-ema", "snapkv", "keynorm",
// "chunkkv", "random" (seeded with `seed`); "tova-ema:D" sets TOVA-EMA's decay D in (0, 1). Throws
// strata::Error listing the names for anything else.
std::shared_ptr<Scorer> make_scorer(std::string_view name, uint64_t seed = 0);
std::span<const std::string_view> scorer_names();

}  // namespace strata::kv
