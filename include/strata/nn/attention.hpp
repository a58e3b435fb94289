#pragma once
// The pieces of attention every KV layout shares: causal softmax over a block of score rows, and
// attention of a few new tokens (a decode step) split over KV heads and chunks of their tokens.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace strata::nn {

// scores: n rows of `len` raw scores (row-major). Row t may see its first `visible0 + t + 1` columns:
// those become the softmax over them (max-subtracted, summed in double), the rest exactly 0.
void causal_softmax_rows(float* scores, int64_t n, int64_t len, int64_t visible0);

// Causal attention of one query head over a prompt: n query rows (q, q_stride apart) against len key
// and value rows (k and v, kv_stride apart), the first len - n of them from before the prompt, so row t
// sees the first len - n + t + 1; out: n rows of d, out_stride apart. Rows go kCausalRowBlock at a time,
// and a block is scored only against the keys its last row sees: about half the products of one [n, len]
// score matrix on a long prompt. Without `probs` one block's scores are all the memory it takes (kept
// per thread and reused: a fresh [n, len] buffer per head and layer makes a 4K-token prompt spend more
// time in page faults than in its attention); with `probs` ([n, len], rows len apart) the scores are
// made there and left as each row's softmax, 0 past its visible keys, for scorers and hooks.
inline constexpr int64_t kCausalRowBlock = 128;
void causal_attention(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride, int64_t n,
                      int64_t len, int64_t d, float scale, float* out, int64_t out_stride, float* probs = nullptr);

// Attention of n new tokens (n small: a decode step has 1) over KV heads whose rows are read through
// callbacks, so that any stored form can be attended. Each KV head serves `group` query heads; its m =
// group * n query rows are row r = g * n + t (query head g of the head's group, new token t), and row
// r sees the head's first len - n + t + 1 tokens (the n new tokens are the head's last n).
//
// The work is cut into (KV head, chunk of kChunk tokens) tasks, so that two threads share three KV
// heads evenly and every key and value row is read once for all m query rows ("flash-decoding"): a
// task scores its chunk, takes the softmax of each row over the chunk with the chunk's own maximum,
// and mixes the chunk's values; the chunks are then combined exactly (each rescaled by exp(its max -
// the row's max), divided by the row's total). The chunks depend on the lengths only, never on the
// thread count, so neither does the result. When `probs` is asked for, every row's exact softmax
// (max-subtracted, summed in double, 0 past the visible tokens) is left in probs(kv_head).
class SplitAttention {
 public:
  static constexpr int64_t kChunk = 256;
  // Forwards of up to this many new tokens are what the split is for (a decode step, a few draft
  // tokens); longer ones (prompts) pay for GEMM-shaped products one query head at a time.
  static constexpr int64_t kMaxTokens = 8;

  // scores(kv_head, begin, end, out, stride): row r of `out` (stride apart), columns 0 .. end - begin,
  // = the scaled scores of the head's query row r against its tokens [begin, end).
  using ScoresFn = std::function<void(int kv_head, int64_t begin, int64_t end, float* out, int64_t stride)>;
  // values(kv_head, begin, end, probs, stride, acc): acc [m, d] (overwritten) = probs[:, 0 .. end -
  // begin) (rows stride apart) times the head's value rows [begin, end).
  using ValuesFn = std::function<void(int kv_head, int64_t begin, int64_t end, const float* probs, int64_t stride,
                                      float* acc)>;

  // lens[h]: KV head h's tokens (>= n). out: [lens.size()][m][d], head after head. `parallel`: run
  // the tasks on strata's threads (otherwise on the caller's: small attention is cheaper so).
  void run(std::span<const int64_t> lens, int64_t group, int64_t n, int64_t d, bool parallel, bool probs,
           const ScoresFn& scores, const ValuesFn& values, float* out);
  // After run(..., probs = true): KV head h's m rows of lens[h] probabilities.
  const float* probs(int kv_head) const { return scores_.data() + offsets_[static_cast<size_t>(kv_head)]; }

  // run() in an engine's layout: q and out are [n, n_heads * d] (query head h at columns h * d, rows
  // q_stride and out_stride apart), query heads h * group .. h * group + group - 1 share KV head h.
  // The callbacks read KV head h's grouped query rows ([m, d], m = group * n) from queries(h).
  void run_heads(const float* q, int64_t q_stride, std::span<const int64_t> lens, int64_t group, int64_t n, int64_t d,
                 bool parallel, bool probs, const ScoresFn& scores, const ValuesFn& values, float* out,
                 int64_t out_stride);
  const float* queries(int kv_head) const { return queries_.data() + kv_head * group_ * n_ * d_; }
  // After run_heads(..., probs = true): query head h's n rows of its KV head's length.
  const float* head_probs(int64_t query_head) const {
    const int kv_head = static_cast<int>(query_head / group_);
    return probs(kv_head) + (query_head % group_) * n_ * lens_[static_cast<size_t>(kv_head)];
  }

 private:
  std::vector<float> queries_, outputs_;  // run_heads: per KV head [m, d]
  std::vector<int64_t> lens_;             // run_heads' lens
  int64_t group_ = 1, n_ = 1, d_ = 1;
  std::vector<float> scores_;     // per head [m, len]: scores, then per-chunk exponentials, then probs
  std::vector<int64_t> offsets_;  // per head, into scores_
  std::vector<float> acc_;        // per task [m, d]
  std::vector<float> max_;        // per task [m]: the chunk's maximum of each row
  std::vector<double> sum_;       // per task [m]: the chunk's sum of exponentials of each row
};

// The double-precision oracle of SplitAttention: for each of the m query rows of one KV head (row r
// = g * n + t, seeing the first len - n + t + 1 tokens), softmax(scale q . k) over the visible
// tokens, and out row r = the probabilities times the values. q [m, d], k and v [len, d]; probs
// (optional) [m, len].
void attention_reference(const float* q, int64_t group, int64_t n, const float* k, const float* v, int64_t len,
                         int64_t d, float scale, float* out, float* probs = nullptr);

}  // namespace strata::nn
