#pragma once
// BERT encoder (post-LayerNorm, GELU, absolute positions) for Hugging Face BertModel checkpoints,
// and the sentence-embedding recipe of all-MiniLM-L6-v2 on top: WordPiece, encoder, mean pooling
// over the attention mask, L2 normalisation.
//
// Sequences of a batch are packed: the encoder works on the [tokens, dim] matrix of all real tokens
// (no padding rows), and only attention looks at one sequence at a time. That is exactly what the
// masked, padded computation yields (a masked key gets zero weight, padded rows are never pooled),
// without spending work on padding, and it makes a sentence's embedding independent of its batch
// up to the rounding of the matrix products.
//
// Every linear layer is an nn::Linear reachable by its tensor name, so a compressed layer (or a
// dense one with modified weights) can replace it, as in LlamaModel.
#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/core/tensor.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/hooks.hpp"
#include "strata/nn/linear.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::nn {

struct BertConfig {
  int64_t vocab_size = 0, dim = 0, n_layers = 0, n_heads = 0, hidden_dim = 0;
  int64_t max_positions = 0, type_vocab_size = 0;
  float norm_eps = 1e-12f;
  int64_t head_dim() const { return n_heads > 0 ? dim / n_heads : 0; }
};

class BertEncoder {
 public:
  // Loads every weight as float32. Tensor names are those of BertModel (embeddings.word_embeddings.weight,
  // encoder.layer.N.attention.self.query.weight, ...), with or without a common prefix such as "bert.".
  // The head count and LayerNorm epsilon come from the config.json beside a safetensors file
  // (metadata()["config"]); shapes are checked against each other. Throws strata::Error naming the file
  // and the tensor or field at fault.
  static BertEncoder load(const io::Model& file);

  const BertConfig& config() const { return config_; }

  // Final hidden states of the real tokens of every sequence, packed in order: rows
  // [0, tokens(0)) belong to sequence 0, the next tokens(1) rows to sequence 1, ... -> [total, dim].
  // The attention mask must be right padding (ones, then zeros). Token type ids are all 0.
  // When hooks->token_reducer() is set, it merges or drops tokens after each layer's attention
  // (nn/token_reduction.hpp) and the final rows are restored to one per original token.
  Tensor forward(const TokenBatch& batch, ForwardHooks* hooks = nullptr) const;
  // Mean of each sequence's final hidden states over its real tokens, L2-normalised -> [size, dim].
  Tensor embed(const TokenBatch& batch, ForwardHooks* hooks = nullptr) const;

  // The forward pass in pieces, for an early exit or a compressed hand-off between layers.
  // input_states: layer 0's input (the embeddings after their LayerNorm), packed [total, dim].
  // run_layers: layers [begin, end) applied to packed states of the same batch. forward(batch) is
  // run_layers(batch, input_states(batch), 0, n_layers); splitting it at any layer gives the same result.
  Tensor input_states(const TokenBatch& batch) const;
  Tensor run_layers(const TokenBatch& batch, const Tensor& states, int64_t begin, int64_t end,
                    ForwardHooks* hooks = nullptr) const;
  // embed's pooling alone: each sequence's mean over its packed rows, L2-normalised -> [size, dim].
  Tensor pool(const TokenBatch& batch, const Tensor& states) const;

  // The linear layers by tensor name (without the file's prefix), in forward order: per layer
  // attention.self.{query,key,value}, attention.output.dense, intermediate.dense, output.dense.
  const std::vector<std::string>& linear_names() const { return linear_names_; }
  const Linear& linear(std::string_view name) const;
  // Replaces one linear layer (same shape); the bias stays. Throws strata::Error for an unknown name
  // or a shape mismatch.
  void set_linear(std::string_view name, std::shared_ptr<const Linear> layer);
  // Replaces a linear layer's weight [out, in] with a dense matrix (e.g. quantized and dequantized).
  void set_weight(std::string_view name, RowMatrix<float> weight);
  // A copy sharing the (immutable) layers, so a compressed variant costs only what it replaces.
  BertEncoder clone() const { return *this; }
  // Bytes of the linear layers' weights (as they report them) plus every other parameter in float32.
  uint64_t weight_bytes() const;

  // Slots of the six linear layers of a block, in forward order.
  enum Slot { kQuery = 0, kKey, kValue, kAttnOut, kUp, kDown };
  static constexpr int kSlots = 6;

 private:
  struct Block {
    std::array<Vector<float>, kSlots> bias;
    Vector<float> attn_norm_w, attn_norm_b, out_norm_w, out_norm_b;
  };
  const Linear& layer(int64_t block, int slot) const {
    return *linears_[static_cast<std::size_t>(block * kSlots + slot)];
  }
  std::size_t linear_slot(std::string_view name) const;
  // Real tokens of each sequence, after checking that the batch is well formed and right-padded.
  std::vector<int64_t> packed_lengths(const TokenBatch& batch) const;

  BertConfig config_;
  std::shared_ptr<const RowMatrix<float>> word_embd_;
  RowMatrix<float> pos_embd_, type_embd_;
  Vector<float> embd_norm_w_, embd_norm_b_;
  std::vector<Block> blocks_;
  std::vector<std::shared_ptr<const Linear>> linears_;  // n_layers * kSlots
  std::vector<std::string> linear_names_;
  std::map<std::string, std::size_t, std::less<>> linear_index_;
};

// all-MiniLM-L6-v2 style sentence embeddings: WordPiece -> BertEncoder -> mean pooling -> L2 norm.
class SentenceEncoder {
 public:
  // Sentences longer than max_length tokens ([CLS] and [SEP] included) are truncated;
  // sentence-transformers uses 256 for all-MiniLM-L6-v2.
  SentenceEncoder(WordPieceTokenizer tokenizer, BertEncoder encoder);
  // A Hugging Face model folder: model.safetensors (or its index), config.json and vocab.txt.
  static SentenceEncoder open(const std::filesystem::path& dir, int64_t max_length = 256);

  // Embeddings [sentences.size(), dim], unit length. Sentences are run in batches of batch_size,
  // grouped by length so that a batch holds sentences of similar size; the result is in input order.
  Tensor encode(std::span<const std::string> sentences, int64_t batch_size = 32, ForwardHooks* hooks = nullptr) const;

  const WordPieceTokenizer& tokenizer() const { return tokenizer_; }
  const BertEncoder& encoder() const { return encoder_; }
  BertEncoder& encoder() { return encoder_; }

 private:
  WordPieceTokenizer tokenizer_;
  BertEncoder encoder_;
};

// Cosine similarity of two rows of equal length.
float cosine(std::span<const float> a, std::span<const float> b);

}  // namespace strata::nn
