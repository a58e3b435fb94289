#include "strata/nn/llama.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/cpu/attention_decode.hpp"
#include "strata/nn/attention.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/kernels/softmax.hpp"

namespace strata::nn {
namespace {

constexpr const char* kSlotNames[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

RowMatrix<float> load_matrix(const io::Model& file, const std::string& name, int64_t rows, int64_t cols) {
  const io::TensorInfo& info = file.tensor(name);
  require(info.shape == Shape{rows, cols}, file.path().string(), ": tensor '", name, "' has shape ",
          info.shape.str(), ", expected [", rows, ", ", cols, "]");
  const Tensor t = file.to_f32(info);
  RowMatrix<float> m(rows, cols);
  std::memcpy(m.data(), t.raw(), static_cast<size_t>(rows * cols) * sizeof(float));
  return m;
}

Vector<float> load_vector(const io::Model& file, const std::string& name, int64_t n) {
  const io::TensorInfo& info = file.tensor(name);
  require(info.numel() == n, file.path().string(), ": tensor '", name, "' has shape ", info.shape.str(),
          ", expected ", n, " elements");
  const Tensor t = file.to_f32(info);
  Vector<float> v(n);
  std::memcpy(v.data(), t.raw(), static_cast<size_t>(n) * sizeof(float));
  return v;
}

// Row-wise RMSNorm: out = x / sqrt(mean(x^2) + eps) * w.
void rms_norm(const float* x, const Vector<float>& w, float eps, int64_t tokens, int64_t dim, float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xr = x + t * dim;
    float* o = out + t * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) o[i] = xr[i] * scale * w[i];
  }
}

// RoPE of row t at position_of(t).
template <class PositionOf>
void rope_rows(float* x, int64_t tokens, int64_t n_heads, int64_t head_dim, float theta, PositionOf position_of) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] =
        static_cast<float>(std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(head_dim)));
  for (int64_t t = 0; t < tokens; ++t) {
    const double pos = static_cast<double>(position_of(t));
    for (int64_t i = 0; i < half; ++i) {
      const double angle = pos * inv_freq[static_cast<size_t>(i)];
      const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < n_heads; ++h) {
        float* p = x + (t * n_heads + h) * head_dim + 2 * i;
        const float a = p[0], b = p[1];
        p[0] = a * c - b * s;
        p[1] = a * s + b * c;
      }
    }
  }
}

}  // namespace

void apply_rope(float* x, int64_t tokens, int64_t n_heads, int64_t head_dim, int64_t pos0, float theta) {
  rope_rows(x, tokens, n_heads, head_dim, theta, [pos0](int64_t t) { return pos0 + t; });
}

void apply_rope_at(float* x, int64_t tokens, int64_t n_heads, int64_t head_dim, const int64_t* positions,
                   float theta) {
  rope_rows(x, tokens, n_heads, head_dim, theta, [positions](int64_t t) { return positions[t]; });
}

void LlamaSession::KvStore::attend_at(int layer, const float* q, const float* k, const float* v, int64_t tokens,
                                      const int64_t* positions, float* out, ForwardHooks* hooks) {
  for (int64_t t = 1; t < tokens; ++t)
    require(positions[t] == positions[0] + t, "LlamaSession::KvStore: layer ", layer,
            ": this store takes consecutive positions only (prefill pruning needs kv::Session)");
  attend(layer, q, k, v, tokens, positions[0], out, hooks);
}

LlamaModel LlamaModel::load(const io::Model& file) { return load_impl(file, Overrides{}, nullptr); }

LlamaModel LlamaModel::load(const io::Model& file, const Overrides& overrides) {
  return load_impl(file, overrides, nullptr);
}

LlamaModel LlamaModel::load_stored(std::shared_ptr<const io::Model> file, const Overrides& overrides) {
  require(file != nullptr, "LlamaModel::load_stored: no model file");
  return load_impl(*file, overrides, file);
}

LlamaModel LlamaModel::load_impl(const io::Model& file, const Overrides& overrides,
                                 const std::shared_ptr<const io::Model>& stored) {
  warn_if_blas_slow();
  const io::ModelConfig& mc = file.config();
  const std::string where = file.path().string();
  require(mc.architecture == "llama", where, ": architecture '", mc.architecture,
          "' is not a Llama-family decoder");
  LlamaModel m;
  LlamaConfig& c = m.config_;
  c.dim = mc.dim;
  c.hidden_dim = mc.hidden_dim;
  c.n_layers = mc.n_layers;
  c.n_heads = mc.n_heads;
  c.n_kv_heads = mc.n_kv_heads > 0 ? mc.n_kv_heads : mc.n_heads;
  c.head_dim = mc.head_dim > 0 ? mc.head_dim : (mc.n_heads > 0 ? mc.dim / mc.n_heads : 0);
  c.vocab_size = mc.vocab_size;
  c.context_length = mc.context_length;
  if (mc.rope_theta > 0) c.rope_theta = static_cast<float>(mc.rope_theta);
  if (mc.norm_eps > 0) c.norm_eps = static_cast<float>(mc.norm_eps);
  require(c.dim > 0 && c.hidden_dim > 0 && c.n_layers > 0 && c.n_heads > 0, where,
          ": missing hyper-parameters (dim ", c.dim, ", hidden ", c.hidden_dim, ", layers ", c.n_layers, ", heads ",
          c.n_heads, ")");
  require(c.n_heads % c.n_kv_heads == 0, where, ": ", c.n_heads, " query heads are not a multiple of ",
          c.n_kv_heads, " KV heads");
  require(c.head_dim % 2 == 0, where, ": head dimension ", c.head_dim, " is odd; RoPE needs pairs");

  if (overrides.token_embedding) {
    const Embedding& e = *overrides.token_embedding;
    if (c.vocab_size == 0) c.vocab_size = e.rows();
    require(e.rows() == c.vocab_size && e.cols() == c.dim, where, ": token_embd.weight: the replacement is [",
            e.rows(), ", ", e.cols(), "], expected [", c.vocab_size, ", ", c.dim, "]");
    m.token_embd_ = overrides.token_embedding;
  } else {
    const io::TensorInfo& embd = file.tensor("token_embd.weight");
    require(embd.shape.rank() == 2 && embd.shape[1] == c.dim, where, ": token_embd.weight has shape ",
            embd.shape.str(), ", expected [vocab, ", c.dim, "]");
    if (c.vocab_size == 0) c.vocab_size = embd.shape[0];
    require(embd.shape[0] == c.vocab_size, where, ": token_embd.weight has shape ", embd.shape.str(), ", expected [",
            c.vocab_size, ", ", c.dim, "]");
    if (stored)
      m.token_embd_ = stored_embedding(stored, "token_embd.weight");
    else
      m.token_embd_ = std::make_shared<DenseEmbedding>(
          std::make_shared<const RowMatrix<float>>(load_matrix(file, "token_embd.weight", c.vocab_size, c.dim)));
  }
  // Takes a linear layer from `overrides` (checking its shape) or loads it from the file.
  std::size_t used = 0;
  auto linear_layer = [&](const std::string& name, int64_t rows, int64_t cols) -> std::shared_ptr<const Linear> {
    auto it = overrides.linears.find(name);
    if (it == overrides.linears.end()) {
      if (!stored) return std::make_shared<DenseLinear>(load_matrix(file, name, rows, cols));
      const io::TensorInfo& info = file.tensor(name);
      require(info.shape == Shape{rows, cols}, where, ": tensor '", name, "' has shape ", info.shape.str(),
              ", expected [", rows, ", ", cols, "]");
      return stored_linear(stored, name);
    }
    ++used;
    require(it->second != nullptr, where, ": tensor '", name, "': null replacement layer");
    require(it->second->out_features() == rows && it->second->in_features() == cols, where, ": tensor '", name,
            "': the replacement is [", it->second->out_features(), ", ", it->second->in_features(), "], expected [",
            rows, ", ", cols, "]");
    return it->second;
  };

  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  const int64_t shapes[7][2] = {{q_dim, c.dim},  {kv_dim, c.dim},       {kv_dim, c.dim},      {c.dim, q_dim},
                                {c.hidden_dim, c.dim}, {c.hidden_dim, c.dim}, {c.dim, c.hidden_dim}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string prefix = "blk." + std::to_string(l) + ".";
    m.blocks_.push_back({load_vector(file, prefix + "attn_norm.weight", c.dim),
                         load_vector(file, prefix + "ffn_norm.weight", c.dim)});
    for (int s = 0; s < 7; ++s) {
      const std::string name = prefix + kSlotNames[s] + ".weight";
      m.linear_index_[name] = m.linears_.size();
      m.linear_names_.push_back(name);
      m.linears_.push_back(linear_layer(name, shapes[s][0], shapes[s][1]));
    }
  }
  m.output_norm_ = load_vector(file, "output_norm.weight", c.dim);
  m.linear_index_["output.weight"] = m.linears_.size();
  m.linear_names_.push_back("output.weight");
  if (file.find("output.weight") || overrides.linears.count("output.weight")) {
    m.linears_.push_back(linear_layer("output.weight", c.vocab_size, c.dim));
  } else {
    m.linears_.push_back(m.token_embd_->as_linear());  // tied embeddings: the table's own bytes
  }
  if (used != overrides.linears.size()) {
    for (const auto& [name, layer] : overrides.linears)
      require(m.linear_index_.count(name) != 0, where, ": tensor '", name, "' is not a linear layer of the model");
  }
  return m;
}

const Linear& LlamaModel::linear(std::string_view name) const {
  auto it = linear_index_.find(name);
  require(it != linear_index_.end(), "LlamaModel: no linear layer named '", name, "'");
  return *linears_[it->second];
}

void LlamaModel::set_linear(std::string_view name, std::shared_ptr<const Linear> layer) {
  auto it = linear_index_.find(name);
  require(it != linear_index_.end(), "LlamaModel::set_linear: no linear layer named '", name, "'");
  require(layer != nullptr, "LlamaModel::set_linear: null layer for '", name, "'");
  const Linear& old = *linears_[it->second];
  require(layer->in_features() == old.in_features() && layer->out_features() == old.out_features(),
          "LlamaModel::set_linear: '", name, "' is [", old.out_features(), ", ", old.in_features(),
          "], the replacement is [", layer->out_features(), ", ", layer->in_features(), "]");
  linears_[it->second] = std::move(layer);
}

void LlamaModel::set_token_embedding(std::shared_ptr<const RowMatrix<float>> embedding) {
  require(embedding != nullptr, "LlamaModel::set_token_embedding: null embedding");
  set_token_embedding(std::make_shared<const DenseEmbedding>(std::move(embedding)));
}

void LlamaModel::set_token_embedding(std::shared_ptr<const Embedding> embedding) {
  require(embedding != nullptr, "LlamaModel::set_token_embedding: null embedding");
  require(embedding->rows() == token_embd_->rows() && embedding->cols() == token_embd_->cols(),
          "LlamaModel::set_token_embedding: the embedding is [", token_embd_->rows(), ", ", token_embd_->cols(),
          "], the replacement is [", embedding->rows(), ", ", embedding->cols(), "]");
  token_embd_ = std::move(embedding);
}

uint64_t LlamaModel::weight_bytes() const {
  uint64_t total = token_embd_->bytes();
  for (const auto& l : linears_)
    if (!token_embd_->shares_bytes_with(*l)) total += l->weight_bytes();
  total += static_cast<uint64_t>(output_norm_.size() + 2 * config_.dim * config_.n_layers) * sizeof(float);
  return total;
}

LlamaSession::LlamaSession(const LlamaModel& model, int64_t max_tokens) : model_(model), max_tokens_(max_tokens) {
  const LlamaConfig& c = model.config();
  require(max_tokens > 0, "LlamaSession: max_tokens must be positive, got ", max_tokens);
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    k_cache_.emplace_back(max_tokens, kv_dim);
    v_cache_.emplace_back(max_tokens, kv_dim);
  }
}

LlamaSession::LlamaSession(const LlamaModel& model, int64_t max_tokens, KvStore* store)
    : model_(model), max_tokens_(max_tokens), store_(store) {
  require(max_tokens > 0, "LlamaSession: max_tokens must be positive, got ", max_tokens);
  require(store != nullptr, "LlamaSession: null KV store");
}

void LlamaSession::resume_at(int64_t position) {
  require(store_ != nullptr, "LlamaSession::resume_at: only a session over an external KV store can resume");
  require(position >= 0 && position <= max_tokens_, "LlamaSession::resume_at: position ", position, " is outside [0, ",
          max_tokens_, "]");
  pos_ = position;
}

uint64_t LlamaSession::cache_bytes() const {
  if (store_) return store_->bytes();
  uint64_t total = 0;
  for (size_t l = 0; l < k_cache_.size(); ++l)
    total += static_cast<uint64_t>(k_cache_[l].size() + v_cache_[l].size()) * sizeof(float);
  return total;
}

void LlamaSession::forward(std::span<const int32_t> tokens, float* logits, Logits which, ForwardHooks* hooks) {
  const LlamaConfig& c = model_.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return;
  require(pos_ + n <= max_tokens_, "LlamaSession: ", pos_, " cached + ", n, " new tokens exceed the capacity of ",
          max_tokens_);
  require(which == Logits::none || logits != nullptr, "LlamaSession::forward: logits requested into a null buffer");
  for (int32_t t : tokens)
    require(t >= 0 && t < c.vocab_size, "LlamaSession: token id ", t, " outside the vocabulary of ", c.vocab_size);
  // A prefill pruner acts on prompts only: a single token has nothing to prune.
  PrefillPruner* pruner = hooks ? hooks->prefill_pruner() : nullptr;
  if (pruner && n == 1) {
    pruner = nullptr;
    hooks = nullptr;
  }
  if (pruner) {
    require(store_ != nullptr,
            "LlamaSession: prefill pruning needs a KV store whose heads keep their own positions (kv::Session)");
    require(which != Logits::all, "LlamaSession: prefill pruning with Logits::all; dropped prompt tokens have no "
                                  "logits (ask Logits::last)");
    pruner->begin(c, n, pos_);
  }
  RowMatrix<float> x(n, c.dim);
  for (int64_t t = 0; t < n; ++t) model_.token_embedding().lookup(tokens[static_cast<size_t>(t)], x.row(t).data());
  run_blocks(x, 0, static_cast<int>(c.n_layers), logits, which, hooks, pruner);
}

void LlamaSession::forward_hidden(int first_block, const float* hidden, int64_t n, float* logits, Logits which,
                                  ForwardHooks* hooks) {
  const LlamaConfig& c = model_.config();
  if (n == 0) return;
  require(first_block >= 0 && first_block <= c.n_layers, "LlamaSession::forward_hidden: block ", first_block,
          " outside [0, ", c.n_layers, "]");
  require(pos_ + n <= max_tokens_, "LlamaSession: ", pos_, " cached + ", n, " new tokens exceed the capacity of ",
          max_tokens_);
  require(which == Logits::none || logits != nullptr, "LlamaSession::forward_hidden: logits requested into a null buffer");
  RowMatrix<float> x = Eigen::Map<const RowMatrix<float>>(hidden, n, c.dim);
  run_blocks(x, first_block, static_cast<int>(c.n_layers), logits, which, hooks);
}

void LlamaSession::forward_blocks(int first_block, int last_block, float* hidden, int64_t n, ForwardHooks* hooks) {
  const LlamaConfig& c = model_.config();
  if (n == 0) return;
  require(first_block >= 0 && first_block <= last_block && last_block <= c.n_layers,
          "LlamaSession::forward_blocks: blocks [", first_block, ", ", last_block, ") outside [0, ", c.n_layers, "]");
  require(pos_ + n <= max_tokens_, "LlamaSession: ", pos_, " cached + ", n, " new tokens exceed the capacity of ",
          max_tokens_);
  Eigen::Map<RowMatrix<float>> io(hidden, n, c.dim);
  RowMatrix<float> x = io;
  run_blocks(x, first_block, last_block, nullptr, Logits::none, hooks);
  io = x;
}

void LlamaSession::run_blocks(RowMatrix<float>& x, int first_block, int last_block, float* logits, Logits which,
                              ForwardHooks* hooks, PrefillPruner* pruner) {
  const LlamaConfig& c = model_.config();
  int64_t n = x.rows();  // shrinks when a pruner drops prompt tokens
  const int64_t dim = c.dim, hd = c.head_dim, n_heads = c.n_heads, n_kv = c.n_kv_heads;
  const int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, group = n_heads / n_kv;
  const int64_t pos0 = pos_, total = pos0 + n;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // The rows are n_seqs sequences of seq_len tokens: the session's own one at pos0, or a variant
  // run's independent sequences, each from position 0.
  int64_t seq_len = variants_ ? variants_->length : n, n_seqs = n / seq_len;
  const int64_t seq_pos0 = variants_ ? 0 : pos0;
  int64_t seq_total = variants_ ? seq_len : total;
  // RMSNorm of rows [0, rows) with block `block`'s weights (block n_layers: the output norm), each
  // variant's own where several run.
  auto norm_rows = [&](const float* in, int64_t block, bool ffn, int64_t rows, float* out) {
    auto weights = [&](const LlamaModel& m) -> const Vector<float>& {
      if (block == c.n_layers) return m.output_norm();
      const auto& b = m.blocks()[static_cast<size_t>(block)];
      return ffn ? b.ffn_norm : b.attn_norm;
    };
    if (!variants_) return rms_norm(in, weights(model_), c.norm_eps, rows, dim, out);
    const int64_t per = variants_->rows_per_model;
    for (size_t v = 0; v < variants_->models.size(); ++v)
      rms_norm(in + static_cast<int64_t>(v) * per * dim, weights(*variants_->models[v]), c.norm_eps, per, dim,
               out + static_cast<int64_t>(v) * per * dim);
  };
  // With a pruner the hooks are the pruner, which reads attention only; rows keep their positions here.
  ForwardHooks* observer = pruner ? nullptr : hooks;
  std::vector<int64_t> positions;
  if (pruner) {
    positions.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = pos0 + t;
  }

  RowMatrix<float> xn(n, dim), q(n, q_dim), att(n, q_dim), tmp(n, dim);
  RowMatrix<float> gate(n, c.hidden_dim), up(n, c.hidden_dim);
  RowMatrix<float> k_rows, v_rows;  // a KvStore's new keys and values, before it stores them
  SplitAttention split_attention;   // a decode step's attention (buffers reused over the layers)
  if (store_) {
    k_rows.resize(n, kv_dim);
    v_rows.resize(n, kv_dim);
  }
  for (int64_t l = first_block; l < last_block; ++l) {
    const int li = static_cast<int>(l);
    if (pruner && pruner->reduce(li, x, positions)) {
      n = x.rows();
      seq_len = n;  // pruned rows keep their positions; attention goes through the store
      for (RowMatrix<float>* m : {&xn, &tmp}) m->resize(n, dim);
      for (RowMatrix<float>* m : {&q, &att}) m->resize(n, q_dim);
      for (RowMatrix<float>* m : {&gate, &up}) m->resize(n, c.hidden_dim);
      for (RowMatrix<float>* m : {&k_rows, &v_rows}) m->resize(n, kv_dim);
    }
    const std::string prefix = observer ? "blk." + std::to_string(l) + "." : std::string();
    RowMatrix<float> block_in;
    if (observer) block_in = x;

    norm_rows(x.data(), l, /*ffn=*/false, n, xn.data());
    if (observer) {
      const std::string names[3] = {prefix + "attn_q.weight", prefix + "attn_k.weight", prefix + "attn_v.weight"};
      observer->on_linear_input(li, names, xn.data(), n, dim);
    }
    float* k_new = store_ ? k_rows.data() : k_cache_[static_cast<size_t>(l)].data() + pos0 * kv_dim;
    float* v_new = store_ ? v_rows.data() : v_cache_[static_cast<size_t>(l)].data() + pos0 * kv_dim;
    run_linear(li, LlamaModel::kQ, xn.data(), n, q.data());
    run_linear(li, LlamaModel::kK, xn.data(), n, k_new);
    run_linear(li, LlamaModel::kV, xn.data(), n, v_new);
    if (pruner) {
      apply_rope_at(q.data(), n, n_heads, hd, positions.data(), c.rope_theta);
      apply_rope_at(k_new, n, n_kv, hd, positions.data(), c.rope_theta);
    } else {
      for (int64_t s = 0; s < n_seqs; ++s) {
        apply_rope(q.data() + s * seq_len * q_dim, seq_len, n_heads, hd, seq_pos0, c.rope_theta);
        apply_rope(k_new + s * seq_len * kv_dim, seq_len, n_kv, hd, seq_pos0, c.rope_theta);
      }
    }

    // A KvStore stores the new keys and values and attends over what it holds; the dense cache
    // attends below.
    if (store_ && pruner) {
      store_->attend_at(li, q.data(), k_new, v_new, n, positions.data(), att.data(), hooks);
    } else if (store_) {
      store_->attend(li, q.data(), k_new, v_new, n, pos0, att.data(), hooks);
    }
    // Causal attention, one (sequence, query head) per task; each task's work is independent, so
    // the result does not depend on the thread count.
    const float* kc = store_ ? nullptr : k_cache_[static_cast<size_t>(l)].data();
    const float* vc = store_ ? nullptr : v_cache_[static_cast<size_t>(l)].data();
    const bool want_probs = hooks && hooks->wants_attention(li);
    // Small attention (short prompts, decode at short context) is cheaper on one thread than the
    // cost of waking others.
    const bool parallel_heads = n_seqs * seq_len * seq_total * hd * n_heads >= (int64_t{1} << 20);
    const int64_t tasks = n_seqs * n_heads;
    // A decode step (a few new tokens of one sequence) reads each KV head once for all the query
    // heads that share it, split over (KV head, chunk of tokens) so that both threads share three KV
    // heads evenly; kv::Session runs the same split over its own cache.
    const bool split = !store_ && !variants_ && n_seqs == 1 && seq_len <= SplitAttention::kMaxTokens;
    if (split) {
      const int64_t m = group * seq_len;
      const std::vector<int64_t> lens(static_cast<size_t>(n_kv), seq_total);
      auto scores_of = [&](int h, int64_t begin, int64_t end, float* s, int64_t stride) {
        kernels::attention_scores(split_attention.queries(h), m, hd, kc + begin * kv_dim + h * hd, end - begin, kv_dim,
                                  hd, scale, s, stride);
      };
      auto values_of = [&](int h, int64_t begin, int64_t end, const float* p, int64_t stride, float* acc) {
        std::fill(acc, acc + m * hd, 0.0f);
        kernels::attention_values(p, m, stride, vc + begin * kv_dim + h * hd, end - begin, kv_dim, hd, acc, hd);
      };
      split_attention.run_heads(q.data(), q_dim, lens, group, seq_len, hd, parallel_heads, want_probs, scores_of,
                                values_of, att.data(), q_dim);
      if (want_probs)
        for (int64_t h = 0; h < n_heads; ++h)
          hooks->on_attention(li, static_cast<int>(h), split_attention.head_probs(h), seq_len, seq_total, seq_pos0);
    }
    if (!store_ && !split) parallel_for(tasks, parallel_heads ? 1 : tasks, [&](int64_t t0, int64_t t1) {
      std::vector<float> probs(want_probs ? static_cast<size_t>(seq_len * seq_total) : 0);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t s = task / n_heads, h = task % n_heads, kvh = h / group;
        // A sequence of a variant run keeps its keys at rows [s * seq_len, (s + 1) * seq_len).
        const int64_t row0 = s * seq_len, key0 = variants_ ? row0 : 0;
        causal_attention(q.data() + row0 * q_dim + h * hd, q_dim, kc + key0 * kv_dim + kvh * hd,
                         vc + key0 * kv_dim + kvh * hd, kv_dim, seq_len, seq_total, hd, scale,
                         att.data() + row0 * q_dim + h * hd, q_dim, want_probs ? probs.data() : nullptr);
        if (want_probs) hooks->on_attention(li, static_cast<int>(h), probs.data(), seq_len, seq_total, seq_pos0);
      }
    });

    if (observer) {
      const std::string names[1] = {prefix + "attn_output.weight"};
      observer->on_linear_input(li, names, att.data(), n, q_dim);
    }
    run_linear(li, LlamaModel::kO, att.data(), n, tmp.data());
    x += tmp;

    norm_rows(x.data(), l, /*ffn=*/true, n, xn.data());
    if (observer) {
      const std::string names[2] = {prefix + "ffn_gate.weight", prefix + "ffn_up.weight"};
      observer->on_linear_input(li, names, xn.data(), n, dim);
    }
    run_linear(li, LlamaModel::kGate, xn.data(), n, gate.data());
    run_linear(li, LlamaModel::kUp, xn.data(), n, up.data());
    // SwiGLU: silu(gate) * up, written over gate.
    float* g = gate.data();
    const float* u = up.data();
    const int64_t gn = n * c.hidden_dim;
    kernels::silu_mul(g, u, gn);
    if (observer) {
      const std::string names[1] = {prefix + "ffn_down.weight"};
      observer->on_linear_input(li, names, gate.data(), n, c.hidden_dim);
    }
    run_linear(li, LlamaModel::kDown, gate.data(), n, tmp.data());
    x += tmp;
    if (observer) observer->on_block(li, block_in.data(), x.data(), n, dim);
  }
  pos_ = total;

  if (which == Logits::none || last_block < c.n_layers) return;
  if (which == Logits::last) {
    rms_norm(x.data() + (n - 1) * dim, model_.output_norm(), c.norm_eps, 1, dim, xn.data());
    if (observer) {
      const std::string names[1] = {"output.weight"};
      observer->on_linear_input(static_cast<int>(c.n_layers), names, xn.data(), 1, dim);
    }
    model_.output().forward(xn.data(), 1, logits);
  } else {
    norm_rows(x.data(), c.n_layers, false, n, xn.data());
    if (observer) {
      const std::string names[1] = {"output.weight"};
      observer->on_linear_input(static_cast<int>(c.n_layers), names, xn.data(), n, dim);
    }
    run_linear(0, kOutput, xn.data(), n, logits);
  }
}

void LlamaSession::run_linear(int block, int slot, const float* in, int64_t n, float* out) const {
  auto layer_of = [&](const LlamaModel& m) -> const Linear& {
    return slot == kOutput ? m.output() : m.layer(block, slot);
  };
  if (!variants_) return layer_of(model_).forward(in, n, out);
  // Consecutive variants holding the same layer object run as one product over all their rows.
  const auto& models = variants_->models;
  const int64_t per = variants_->rows_per_model;
  const int64_t in_dim = layer_of(model_).in_features(), out_dim = layer_of(model_).out_features();
  for (size_t v0 = 0; v0 < models.size();) {
    const Linear& layer = layer_of(*models[v0]);
    size_t v1 = v0 + 1;
    while (v1 < models.size() && &layer_of(*models[v1]) == &layer) ++v1;
    const auto r0 = static_cast<int64_t>(v0) * per;
    layer.forward(in + r0 * in_dim, static_cast<int64_t>(v1 - v0) * per, out + r0 * out_dim);
    v0 = v1;
  }
}

void forward_variants(std::span<const LlamaModel* const> models, int64_t sequences, int64_t length, int first_block,
                      std::span<const int32_t> tokens, const float* hidden, float* logits) {
  require(!models.empty(), "forward_variants: no models");
  require(sequences > 0 && length > 0, "forward_variants: ", sequences, " sequences of ", length,
          " tokens; both must be positive");
  require(logits != nullptr, "forward_variants: null logits buffer");
  const LlamaModel& first = *models[0];
  const LlamaConfig& c = first.config();
  for (size_t v = 1; v < models.size(); ++v) {
    const LlamaConfig& o = models[v]->config();
    require(o.dim == c.dim && o.hidden_dim == c.hidden_dim && o.n_layers == c.n_layers && o.n_heads == c.n_heads &&
                o.n_kv_heads == c.n_kv_heads && o.head_dim == c.head_dim && o.vocab_size == c.vocab_size &&
                o.rope_theta == c.rope_theta && o.norm_eps == c.norm_eps,
            "forward_variants: model ", v, "'s configuration differs from model 0's");
  }
  require(first_block >= 0 && first_block <= c.n_layers, "forward_variants: block ", first_block, " outside [0, ",
          c.n_layers, "]");
  const int64_t per = sequences * length, rows = per * static_cast<int64_t>(models.size());
  require(hidden != nullptr || first_block == 0, "forward_variants: from block ", first_block,
          " needs the hidden states entering it");
  RowMatrix<float> x(rows, c.dim);
  if (hidden) {
    const Eigen::Map<const RowMatrix<float>> in(hidden, per, c.dim);
    for (size_t v = 0; v < models.size(); ++v) x.middleRows(static_cast<int64_t>(v) * per, per) = in;
  } else {
    require(static_cast<int64_t>(tokens.size()) == per, "forward_variants: ", tokens.size(), " tokens for ",
            sequences, " sequences of ", length);
    for (int32_t t : tokens)
      require(t >= 0 && t < c.vocab_size, "forward_variants: token id ", t, " outside the vocabulary of ",
              c.vocab_size);
    for (size_t v = 0; v < models.size(); ++v)
      for (int64_t t = 0; t < per; ++t)
        models[v]->token_embedding().lookup(tokens[static_cast<size_t>(t)],
                                            x.row(static_cast<int64_t>(v) * per + t).data());
  }
  LlamaSession session(first, rows);
  const LlamaSession::Variants variants{models, per, length};
  session.variants_ = &variants;
  session.run_blocks(x, first_block, static_cast<int>(c.n_layers), logits, Logits::all, nullptr);
}

std::vector<int32_t> generate(const LlamaModel& model, std::span<const int32_t> prompt, int64_t n, float temperature,
                              uint64_t seed, int32_t stop_token) {
  require(!prompt.empty(), "generate: the prompt needs at least one token");
  const int64_t vocab = model.config().vocab_size;
  LlamaSession session(model, static_cast<int64_t>(prompt.size()) + n);
  std::vector<float> logits(static_cast<size_t>(vocab));
  session.forward(prompt, logits.data(), Logits::last);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out;
  std::vector<double> probs(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < n; ++i) {
    int32_t next;
    if (temperature <= 0) {
      next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      const float mx = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        probs[static_cast<size_t>(v)] = std::exp(static_cast<double>(logits[static_cast<size_t>(v)] - mx) / temperature);
        sum += probs[static_cast<size_t>(v)];
      }
      // Inverse-CDF sampling with our own uniform draw: std::discrete_distribution's algorithm is
      // implementation-defined, and samples must be reproducible across standard libraries.
      const double r = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * sum;
      double acc = 0;
      next = static_cast<int32_t>(vocab - 1);
      for (int64_t v = 0; v < vocab; ++v) {
        acc += probs[static_cast<size_t>(v)];
        if (acc > r) {
          next = static_cast<int32_t>(v);
          break;
        }
      }
    }
    out.push_back(next);
    if (next == stop_token || i + 1 == n) break;
    const int32_t tok[1] = {next};
    session.forward(tok, logits.data(), Logits::last);
  }
  return out;
}

}  // namespace strata::nn
