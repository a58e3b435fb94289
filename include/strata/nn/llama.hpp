#pragma once
// Reference float32 forward pass for Llama-family decoders: GGUF models of architecture "llama"
// (SmolLM2: grouped-query attention, RoPE on adjacent pairs as llama.cpp lays out Q and K, RMSNorm,
// SwiGLU, tied embeddings) and llama2.c checkpoints (stories260K). Batched prefill runs through BLAS
// matrix products; decode is one token at a time against a KV cache.
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/ggml_linear.hpp"
#include "strata/nn/hooks.hpp"
#include "strata/nn/linear.hpp"
#include "strata/nn/prefill_pruning.hpp"

namespace strata::nn {

struct LlamaConfig {
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, vocab_size = 0;
  int64_t context_length = 0;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
};

class LlamaModel {
 public:
  // Loads every tensor as float32 (dequantizing as needed). Tensor names follow GGUF's llama
  // convention (token_embd.weight, blk.N.attn_q.weight, ...), which the llama2.c reader also uses.
  static LlamaModel load(const io::Model& file);
  // Layers that come from elsewhere (a compressed model file): the file's tensors of these names are
  // neither read nor required. Linear layers by tensor name; the embedding [vocab, dim]. A tied
  // output head without an "output.weight" entry copies the embedding, as load(file) does.
  struct Overrides {
    std::map<std::string, std::shared_ptr<const Linear>, std::less<>> linears;
    std::shared_ptr<const Embedding> token_embedding;
  };
  // Throws strata::Error naming the file and the tensor when an override is not a linear layer of
  // the model, or its shape differs from the one the config implies.
  static LlamaModel load(const io::Model& file, const Overrides& overrides);
  // Runs the file's tensors in their stored form, borrowing the memory-mapped bytes (no float32
  // copy): ggml quantized types as GgmlLinear / GgmlEmbedding, F32 as mapped layers; other types
  // (F16, BF16) are converted. A tied output head reads the embedding's own bytes. The model holds
  // `file` for as long as any of its layers lives.
  static LlamaModel load_stored(std::shared_ptr<const io::Model> file, const Overrides& overrides = {});

  const LlamaConfig& config() const { return config_; }

  // The linear layers by tensor name, in forward order (blk.0.attn_q.weight, ..., output.weight).
  const std::vector<std::string>& linear_names() const { return linear_names_; }
  const Linear& linear(std::string_view name) const;
  // Replaces one linear layer (same shape), e.g. with a compressed one. Throws strata::Error for an
  // unknown name or a shape mismatch.
  void set_linear(std::string_view name, std::shared_ptr<const Linear> layer);
  // Replaces the token embedding (same shape). A tied output head keeps its own layer: replace it
  // with set_linear("output.weight", ...) too when it should follow.
  void set_token_embedding(std::shared_ptr<const Embedding> embedding);
  void set_token_embedding(std::shared_ptr<const RowMatrix<float>> embedding);
  // A copy that shares the (immutable) layers, so a compressed variant costs only what it replaces.
  LlamaModel clone() const { return *this; }
  // Bytes of all linear weights plus embeddings and norms; a tied head reading the embedding's own
  // bytes counts once.
  uint64_t weight_bytes() const;

  // Internals the session reads.
  struct Block {
    Vector<float> attn_norm, ffn_norm;
  };
  const std::vector<Block>& blocks() const { return blocks_; }
  const Embedding& token_embedding() const { return *token_embd_; }
  const std::shared_ptr<const Embedding>& token_embedding_ptr() const { return token_embd_; }
  const Vector<float>& output_norm() const { return output_norm_; }
  const Linear& layer(int block, int slot) const { return *linears_[static_cast<size_t>(block * 7 + slot)]; }
  const Linear& output() const { return *linears_.back(); }

  // Slots of the seven linear layers of a block, in forward order.
  enum Slot { kQ = 0, kK, kV, kO, kGate, kUp, kDown };

 private:
  static LlamaModel load_impl(const io::Model& file, const Overrides& overrides,
                              const std::shared_ptr<const io::Model>& stored);

  LlamaConfig config_;
  std::shared_ptr<const Embedding> token_embd_;
  std::vector<Block> blocks_;
  Vector<float> output_norm_;
  std::vector<std::shared_ptr<const Linear>> linears_;  // n_layers * 7, then the output head
  std::vector<std::string> linear_names_;
  std::map<std::string, size_t, std::less<>> linear_index_;
};

// Which logits forward() writes.
enum class Logits { none, last, all };

// One sequence's state: the KV cache and the position. Not thread-safe; one session per sequence.
class LlamaSession {
 public:
  // Where keys and values live and how attention reads them. The session's own store is one dense
  // [max_tokens, n_kv_heads * head_dim] cache per layer; kv::Session plugs in a cache whose heads
  // keep their own subsets of tokens.
  class KvStore {
   public:
    virtual ~KvStore() = default;
    // One layer: stores the keys k and values v of `tokens` new tokens at positions pos0, pos0 + 1, ..
    // (rows [tokens, n_kv_heads * head_dim], RoPE applied to k), then writes the causal attention of
    // the queries q [tokens, n_heads * head_dim] (RoPE applied) over what the layer holds into out
    // [tokens, n_heads * head_dim]. Hands attention probabilities to `hooks` (may be null) as the
    // dense cache does, with columns in the store's own token order.
    virtual void attend(int layer, const float* q, const float* k, const float* v, int64_t tokens, int64_t pos0,
                        float* out, ForwardHooks* hooks) = 0;
    // As attend, for new tokens at the increasing absolute `positions` [tokens], not necessarily
    // consecutive (a pruned prefill, nn/prefill_pruning.hpp). The default takes consecutive positions
    // only and throws strata::Error otherwise.
    virtual void attend_at(int layer, const float* q, const float* k, const float* v, int64_t tokens,
                           const int64_t* positions, float* out, ForwardHooks* hooks);
    virtual uint64_t bytes() const = 0;  // bytes the store holds
  };

  LlamaSession(const LlamaModel& model, int64_t max_tokens);
  // A session whose keys and values live in `store` (not owned; it must outlive the session).
  // max_tokens bounds the positions, as for the dense cache; the store decides what it holds.
  LlamaSession(const LlamaModel& model, int64_t max_tokens, KvStore* store);

  // Runs `tokens` at positions position() .. position() + n - 1, appending their keys and values to
  // the cache. Writes logits [n, vocab] (Logits::all) or [vocab] (Logits::last) into `logits`.
  // When hooks->prefill_pruner() is set and n > 1, the prompt is pruned as it says
  // (nn/prefill_pruning.hpp; needs a KvStore, Logits::all refused); then the hooks see only its attention.
  void forward(std::span<const int32_t> tokens, float* logits, Logits which, ForwardHooks* hooks = nullptr);
  // Runs blocks [first_block, n_layers) and the head on `hidden` [n, dim], the hidden states entering
  // block first_block at positions position() .. position() + n - 1 (as ForwardHooks::on_block
  // reports them for a forward() of the same tokens). The earlier blocks' caches are not filled, so
  // a session used this way can only go on with forward_hidden() from the same block or later.
  // Evaluating a model whose first blocks are unchanged this way skips their work.
  void forward_hidden(int first_block, const float* hidden, int64_t n, float* logits, Logits which,
                      ForwardHooks* hooks = nullptr);
  // Runs blocks [first_block, last_block) on `hidden` [n, dim] in place: the states entering
  // first_block become those entering last_block (no head, no logits), with hooks seeing only those
  // blocks. Calibrating block by block on cached hidden states keeps the statistics of one block at
  // a time; the same limits on continuing the session apply as for forward_hidden().
  void forward_blocks(int first_block, int last_block, float* hidden, int64_t n, ForwardHooks* hooks = nullptr);
  int64_t position() const { return pos_; }
  int64_t capacity() const { return max_tokens_; }
  // Back to position 0. A KvStore is its owner's to clear.
  void reset() { pos_ = 0; }
  // For a session over a KvStore that already holds positions [0, position) (a copy of another
  // session's store): the next forward runs at `position`. Throws for a session with its own cache.
  void resume_at(int64_t position);
  // Bytes held by the KV cache.
  uint64_t cache_bytes() const;

 private:
  friend void forward_variants(std::span<const LlamaModel* const> models, int64_t sequences, int64_t length,
                               int first_block, std::span<const int32_t> tokens, const float* hidden, float* logits);
  // Rows [v * rows_per_model, (v + 1) * rows_per_model) run under models[v], in sequences of `length`
  // tokens from position 0 (forward_variants); null for the session's own single sequence.
  struct Variants {
    std::span<const LlamaModel* const> models;
    int64_t rows_per_model = 0, length = 0;
  };
  // The slot's linear layer (kOutput: the head) on rows [0, n) of `in`, per variant where several run.
  void run_linear(int block, int slot, const float* in, int64_t n, float* out) const;
  static constexpr int kOutput = -1;

  void run_blocks(RowMatrix<float>& x, int first_block, int last_block, float* logits, Logits which,
                  ForwardHooks* hooks, PrefillPruner* pruner = nullptr);

  const LlamaModel& model_;
  int64_t max_tokens_;
  int64_t pos_ = 0;
  std::vector<RowMatrix<float>> k_cache_, v_cache_;  // per layer [max_tokens, n_kv_heads * head_dim]
  KvStore* store_ = nullptr;                          // replaces k_cache_ / v_cache_ when set
  const Variants* variants_ = nullptr;
};

// Runs `models` (one configuration; typically compressed variants of one model, sharing most of their
// Linear objects) on the same `sequences` independent sequences of `length` tokens, each from
// position 0, with the logits separate fresh sessions would give. A linear layer that consecutive
// models share runs as one matrix product over all their rows: judging V variants that differ in a
// few layers dequantizes and packs each shared weight once instead of V times, and the products are
// V times taller. The input is the hidden states entering `first_block`, [sequences * length, dim]
// sequence-major (the same for every model), or with first_block 0 and `hidden` null the `tokens`
// [sequences * length]. Writes logits [models.size() * sequences * length, vocab], model-major.
// Throws strata::Error naming the mismatch when the models' configurations differ or sizes disagree.
void forward_variants(std::span<const LlamaModel* const> models, int64_t sequences, int64_t length, int first_block,
                      std::span<const int32_t> tokens, const float* hidden, float* logits);

// RoPE in place on x [tokens, n_heads * head_dim] at absolute positions pos0, pos0 + 1, ..: the
// adjacent pairs (x[2i], x[2i+1]) of every head rotated by (pos0 + t) theta^(-2i / head_dim). This is
// the layout llama.cpp stores Llama's Q and K in (its converter permutes the HF weights) and the one
// llama2.c uses; the engine applies it to queries and keys.
void apply_rope(float* x, int64_t tokens, int64_t n_heads, int64_t head_dim, int64_t pos0, float theta);
// The same with row t at absolute position positions[t].
void apply_rope_at(float* x, int64_t tokens, int64_t n_heads, int64_t head_dim, const int64_t* positions, float theta);

// Samples `n` tokens after `prompt` (temperature 0 = greedy), seeded; returns only the new tokens.
// Stops early after emitting `stop_token` (when >= 0).
std::vector<int32_t> generate(const LlamaModel& model, std::span<const int32_t> prompt, int64_t n,
                              float temperature, uint64_t seed, int32_t stop_token = -1);

}  // namespace strata::nn
