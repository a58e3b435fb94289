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
#include "strata/nn/hooks.hpp"
#include "strata/nn/linear.hpp"

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

  const LlamaConfig& config() const { return config_; }

  // The linear layers by tensor name, in forward order (blk.0.attn_q.weight, ..., output.weight).
  const std::vector<std::string>& linear_names() const { return linear_names_; }
  const Linear& linear(std::string_view name) const;
  // Replaces one linear layer (same shape), e.g. with a compressed one. Throws strata::Error for an
  // unknown name or a shape mismatch.
  void set_linear(std::string_view name, std::shared_ptr<const Linear> layer);
  // A copy that shares the (immutable) layers, so a compressed variant costs only what it replaces.
  LlamaModel clone() const { return *this; }
  uint64_t weight_bytes() const;  // bytes of all linear weights plus embeddings and norms

  // Internals the session reads.
  struct Block {
    Vector<float> attn_norm, ffn_norm;
  };
  const std::vector<Block>& blocks() const { return blocks_; }
  const RowMatrix<float>& token_embedding() const { return *token_embd_; }
  const Vector<float>& output_norm() const { return output_norm_; }
  const Linear& layer(int block, int slot) const { return *linears_[static_cast<size_t>(block * 7 + slot)]; }
  const Linear& output() const { return *linears_.back(); }

  // Slots of the seven linear layers of a block, in forward order.
  enum Slot { kQ = 0, kK, kV, kO, kGate, kUp, kDown };

 private:
  LlamaConfig config_;
  std::shared_ptr<const RowMatrix<float>> token_embd_;
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
  LlamaSession(const LlamaModel& model, int64_t max_tokens);

  // Runs `tokens` at positions position() .. position() + n - 1, appending their keys and values to
  // the cache. Writes logits [n, vocab] (Logits::all) or [vocab] (Logits::last) into `logits`.
  void forward(std::span<const int32_t> tokens, float* logits, Logits which, ForwardHooks* hooks = nullptr);
  int64_t position() const { return pos_; }
  int64_t capacity() const { return max_tokens_; }
  void reset() { pos_ = 0; }
  // Bytes held by the KV cache.
  uint64_t cache_bytes() const;

 private:
  const LlamaModel& model_;
  int64_t max_tokens_;
  int64_t pos_ = 0;
  std::vector<RowMatrix<float>> k_cache_, v_cache_;  // per layer [max_tokens, n_kv_heads * head_dim]
};

// Samples `n` tokens after `prompt` (temperature 0 = greedy), seeded; returns only the new tokens.
// Stops early after emitting `stop_token` (when >= 0).
std::vector<int32_t> generate(const LlamaModel& model, std::span<const int32_t> prompt, int64_t n,
                              float temperature, uint64_t seed, int32_t stop_token = -1);

}  // namespace strata::nn
