// BERT encoder forward pass over packed sequences (see bert.hpp), and sentence embeddings.
#include "strata/nn/bert.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/nn/token_reduction.hpp"

namespace strata::nn {

namespace {

constexpr std::array<std::string_view, BertEncoder::kSlots> kSlotNames = {
    "attention.self.query",   "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense"};

std::string layer_prefix(int64_t layer) { return "encoder.layer." + std::to_string(layer) + "."; }

// Reads tensors by their BertModel names below the file's prefix, checking shapes as it goes.
class Loader {
 public:
  explicit Loader(const io::Model& file) : file_(file) {
    constexpr std::string_view kAnchor = "embeddings.word_embeddings.weight";
    for (const auto& t : file.tensors()) {
      if (!std::string_view(t.name).ends_with(kAnchor)) continue;
      prefix_ = t.name.substr(0, t.name.size() - kAnchor.size());
      require(prefix_.empty() || prefix_.back() == '.', where(), ": tensor '", t.name,
              "' looks like a word embedding but its prefix does not end with '.'");
      found_ = true;
      break;
    }
    require(found_, where(),
            ": no tensor named [prefix.]embeddings.word_embeddings.weight; not a BertModel checkpoint");
  }

  std::string where() const { return file_.path().string(); }
  bool has(const std::string& name) const { return file_.find(prefix_ + name) != nullptr; }

  RowMatrix<float> matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const Tensor t = get(name, {rows, cols});
    return as_eigen(t.view<const float>());
  }
  Vector<float> vector(const std::string& name, int64_t n) const {
    const Tensor t = get(name, {n});
    return as_eigen_vector(t.view<const float>());
  }
  // Shape of a tensor, for the dimensions the others are checked against.
  Shape shape(const std::string& name) const { return file_.tensor(prefix_ + name).shape; }

 private:
  Tensor get(const std::string& name, std::initializer_list<int64_t> dims) const {
    const Shape want(dims);
    const io::TensorInfo& info = file_.tensor(prefix_ + name);
    require(info.shape == want, where(), ": tensor '", info.name, "' has shape ", info.shape.str(), ", expected ",
            want.str());
    return file_.to_f32(info);
  }

  const io::Model& file_;
  std::string prefix_;
  bool found_ = false;
};

// Rows per parallel chunk for the element-wise steps. A sentence or two stays on one thread: a
// parallel region costs more than it saves there, and much more when the cores are shared.
constexpr int64_t kRowsPerChunk = 256;

// Row-wise LayerNorm in place: (x - mean) / sqrt(var + eps) * w + b, population variance.
void layer_norm(RowMatrix<float>& x, const Vector<float>& w, const Vector<float>& b, float eps) {
  const auto cols = static_cast<float>(x.cols());
  parallel_for(x.rows(), kRowsPerChunk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      auto row = x.row(r);
      const float mean = row.sum() / cols;
      row.array() -= mean;
      const float var = row.squaredNorm() / cols;
      const float inv = 1.0f / std::sqrt(var + eps);
      row = (row.array() * inv * w.transpose().array() + b.transpose().array()).matrix();
    }
  });
}

// GELU in its exact form, x * Phi(x), as BERT's "gelu" activation defines it.
void gelu(RowMatrix<float>& x) {
  float* p = x.data();
  parallel_for(x.size(), kRowsPerChunk * x.cols(), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p[i] = 0.5f * p[i] * (1.0f + std::erf(p[i] * 0.70710678118654752f));
  });
}

void linear_forward(const Linear& layer, const Vector<float>& bias, const RowMatrix<float>& x, RowMatrix<float>& y) {
  y.resize(x.rows(), layer.out_features());
  layer.forward(x.data(), x.rows(), y.data());
  y.rowwise() += bias.transpose();
}

// y [groups, dim] = each group's weighted mean of the rows of x that go to it.
void merge_groups(const TokenGroups& g, const RowMatrix<float>& x, RowMatrix<float>& y) {
  y.setZero(g.total, x.cols());
  for (int64_t i = 0; i < x.rows(); ++i)
    y.row(g.dest[static_cast<std::size_t>(i)]) += g.weight[static_cast<std::size_t>(i)] * x.row(i);
}

// y [rows, dim] = x + each row's group's output out [groups, dim].
void unmerge_groups(const TokenGroups& g, const RowMatrix<float>& out, const RowMatrix<float>& x,
                    RowMatrix<float>& y) {
  y.resize(x.rows(), x.cols());
  parallel_for(x.rows(), kRowsPerChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y.row(i) = x.row(i) + out.row(g.dest[static_cast<std::size_t>(i)]);
  });
}

}  // namespace

BertEncoder BertEncoder::load(const io::Model& file) {
  Loader in(file);
  BertEncoder m;
  BertConfig& c = m.config_;

  const Shape we = in.shape("embeddings.word_embeddings.weight");
  require(we.rank() == 2, in.where(), ": embeddings.word_embeddings.weight has shape ", we.str(), ", expected 2-D");
  c.vocab_size = we[0];
  c.dim = we[1];
  const Shape pe = in.shape("embeddings.position_embeddings.weight");
  const Shape te = in.shape("embeddings.token_type_embeddings.weight");
  require(pe.rank() == 2 && te.rank() == 2, in.where(), ": position / token type embeddings must be 2-D, got ",
          pe.str(), " and ", te.str());
  c.max_positions = pe[0];
  c.type_vocab_size = te[0];
  while (in.has(layer_prefix(c.n_layers) + "attention.self.query.weight")) ++c.n_layers;
  require(c.n_layers > 0, in.where(), ": no tensor encoder.layer.0.attention.self.query.weight");
  const Shape up = in.shape(layer_prefix(0) + "intermediate.dense.weight");
  require(up.rank() == 2, in.where(), ": encoder.layer.0.intermediate.dense.weight must be 2-D, got ", up.str());
  c.hidden_dim = up[0];

  // Hyper-parameters that shapes cannot tell: the head count, the epsilon, the activation.
  const nlohmann::json& meta = file.metadata();
  const nlohmann::json* hf = meta.contains("config") && meta["config"].is_object() ? &meta["config"] : nullptr;
  c.n_heads = file.config().n_heads;
  if (hf && hf->contains("num_attention_heads") && (*hf)["num_attention_heads"].is_number_integer())
    c.n_heads = (*hf)["num_attention_heads"].get<int64_t>();
  require(c.n_heads > 0, in.where(), ": the head count is unknown (config.json num_attention_heads)");
  require(c.dim % c.n_heads == 0, in.where(), ": hidden size ", c.dim, " is not a multiple of ", c.n_heads, " heads");
  if (file.config().norm_eps > 0) c.norm_eps = static_cast<float>(file.config().norm_eps);
  if (hf && hf->contains("layer_norm_eps") && (*hf)["layer_norm_eps"].is_number())
    c.norm_eps = (*hf)["layer_norm_eps"].get<float>();
  if (hf && hf->contains("hidden_act")) {
    const auto& act = (*hf)["hidden_act"];
    require(act.is_string() && act.get<std::string>() == "gelu", in.where(), ": config.json hidden_act is ", act.dump(),
            "; only \"gelu\" (the erf form) is supported");
  }
  if (hf && hf->contains("position_embedding_type")) {
    const auto& pos = (*hf)["position_embedding_type"];
    require(pos.is_string() && pos.get<std::string>() == "absolute", in.where(),
            ": config.json position_embedding_type is ", pos.dump(), "; only \"absolute\" is supported");
  }

  m.word_embd_ =
      std::make_shared<const RowMatrix<float>>(in.matrix("embeddings.word_embeddings.weight", c.vocab_size, c.dim));
  m.pos_embd_ = in.matrix("embeddings.position_embeddings.weight", c.max_positions, c.dim);
  m.type_embd_ = in.matrix("embeddings.token_type_embeddings.weight", c.type_vocab_size, c.dim);
  m.embd_norm_w_ = in.vector("embeddings.LayerNorm.weight", c.dim);
  m.embd_norm_b_ = in.vector("embeddings.LayerNorm.bias", c.dim);

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = layer_prefix(l);
    Block b;
    for (int s = 0; s < kSlots; ++s) {
      const int64_t out = s == kUp ? c.hidden_dim : c.dim;
      const int64_t inp = s == kDown ? c.hidden_dim : c.dim;
      const std::string name = p + std::string(kSlotNames[static_cast<std::size_t>(s)]) + ".weight";
      m.linears_.push_back(std::make_shared<const DenseLinear>(in.matrix(name, out, inp)));
      m.linear_index_.emplace(name, m.linear_names_.size());
      m.linear_names_.push_back(name);
      b.bias[static_cast<std::size_t>(s)] =
          in.vector(p + std::string(kSlotNames[static_cast<std::size_t>(s)]) + ".bias", out);
    }
    b.attn_norm_w = in.vector(p + "attention.output.LayerNorm.weight", c.dim);
    b.attn_norm_b = in.vector(p + "attention.output.LayerNorm.bias", c.dim);
    b.out_norm_w = in.vector(p + "output.LayerNorm.weight", c.dim);
    b.out_norm_b = in.vector(p + "output.LayerNorm.bias", c.dim);
    m.blocks_.push_back(std::move(b));
  }
  return m;
}

std::size_t BertEncoder::linear_slot(std::string_view name) const {
  auto it = linear_index_.find(name);
  require(it != linear_index_.end(), "BertEncoder: no linear layer named '", name,
          "' (names look like encoder.layer.0.attention.self.query.weight)");
  return it->second;
}

const Linear& BertEncoder::linear(std::string_view name) const { return *linears_[linear_slot(name)]; }

void BertEncoder::set_linear(std::string_view name, std::shared_ptr<const Linear> layer) {
  require(layer != nullptr, "BertEncoder::set_linear: null layer for '", name, "'");
  const std::size_t i = linear_slot(name);
  const Linear& old = *linears_[i];
  require(layer->in_features() == old.in_features() && layer->out_features() == old.out_features(),
          "BertEncoder::set_linear: '", name, "' is [", old.out_features(), ", ", old.in_features(),
          "], the replacement is [", layer->out_features(), ", ", layer->in_features(), "]");
  linears_[i] = std::move(layer);
}

void BertEncoder::set_weight(std::string_view name, RowMatrix<float> weight) {
  set_linear(name, std::make_shared<const DenseLinear>(std::move(weight)));
}

uint64_t BertEncoder::weight_bytes() const {
  uint64_t bytes = 0;
  for (const auto& l : linears_) bytes += l->weight_bytes();
  int64_t floats =
      word_embd_->size() + pos_embd_.size() + type_embd_.size() + embd_norm_w_.size() + embd_norm_b_.size();
  for (const auto& b : blocks_) {
    for (const auto& bias : b.bias) floats += bias.size();
    floats += b.attn_norm_w.size() + b.attn_norm_b.size() + b.out_norm_w.size() + b.out_norm_b.size();
  }
  return bytes + static_cast<uint64_t>(floats) * sizeof(float);
}

std::vector<int64_t> BertEncoder::packed_lengths(const TokenBatch& batch) const {
  const BertConfig& c = config_;
  const auto cells = static_cast<std::size_t>(batch.size * batch.length);
  require(batch.size >= 0 && batch.length >= 0 && batch.ids.size() == cells && batch.attention_mask.size() == cells,
          "BertEncoder: a batch of ", batch.size, " x ", batch.length, " needs ", cells, " ids and mask entries, got ",
          batch.ids.size(), " and ", batch.attention_mask.size());
  std::vector<int64_t> len(static_cast<std::size_t>(batch.size));
  for (int64_t s = 0; s < batch.size; ++s) {
    const int32_t* mask = batch.attention_mask.data() + s * batch.length;
    int64_t n = 0;
    while (n < batch.length && mask[n] != 0) ++n;
    for (int64_t j = n; j < batch.length; ++j)
      require(mask[j] == 0, "BertEncoder: sequence ", s, " is not right-padded (mask 1 at ", j, " after a 0 at ", n,
              ")");
    require(n > 0, "BertEncoder: sequence ", s, " has no tokens");
    require(n <= c.max_positions, "BertEncoder: sequence ", s, " has ", n, " tokens, the model takes at most ",
            c.max_positions);
    len[static_cast<std::size_t>(s)] = n;
  }
  return len;
}

Tensor BertEncoder::forward(const TokenBatch& batch, ForwardHooks* hooks) const {
  return run_layers(batch, input_states(batch), 0, config_.n_layers, hooks);
}

Tensor BertEncoder::input_states(const TokenBatch& batch) const {
  const BertConfig& c = config_;
  const std::vector<int64_t> len = packed_lengths(batch);
  const int64_t total = std::accumulate(len.begin(), len.end(), int64_t{0});
  RowMatrix<float> x(total, c.dim);
  int64_t row = 0;
  for (int64_t s = 0; s < batch.size; ++s)
    for (int64_t p = 0; p < len[static_cast<std::size_t>(s)]; ++p, ++row) {
      const int32_t id = batch.ids[static_cast<std::size_t>(s * batch.length + p)];
      require(id >= 0 && id < c.vocab_size, "BertEncoder: token id ", id, " (sequence ", s, ", position ", p,
              ") is outside the vocabulary of ", c.vocab_size);
      x.row(row) = word_embd_->row(id) + pos_embd_.row(p) + type_embd_.row(0);
    }
  layer_norm(x, embd_norm_w_, embd_norm_b_, c.norm_eps);
  Tensor out(DType::f32, Shape{total, c.dim});
  std::copy(x.data(), x.data() + x.size(), out.view<float>().data());
  return out;
}

Tensor BertEncoder::run_layers(const TokenBatch& batch, const Tensor& states, int64_t begin, int64_t end,
                               ForwardHooks* hooks) const {
  warn_if_blas_slow();
  const BertConfig& c = config_;
  require(0 <= begin && begin <= end && end <= c.n_layers, "BertEncoder::run_layers: layers [", begin, ", ", end,
          ") are not a range of the encoder's ", c.n_layers, " layers");
  // Packed layout: sequence s owns rows [start[s], start[s] + len[s]).
  std::vector<int64_t> len = packed_lengths(batch);
  std::vector<int64_t> start(len.size());
  int64_t total = 0;
  for (std::size_t s = 0; s < len.size(); ++s) {
    start[s] = total;
    total += len[s];
  }
  const int64_t dim = c.dim;
  require(states.dtype() == DType::f32 && states.shape() == Shape{total, dim}, "BertEncoder::run_layers: states are ",
          states.shape().str(), ", the batch's packed tokens need float32 [", total, ", ", dim, "]");
  RowMatrix<float> x = as_eigen(states.view<const float>());

  const int64_t hd = c.head_dim();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  RowMatrix<float> q, k, v, ctx, tmp, h, block_in, merged, sum;
  // A token reducer (token_reduction.hpp) may merge or drop tokens between attention and MLP, or run a
  // sublayer on merged rows.
  TokenReducer* const reducer = hooks ? hooks->token_reducer() : nullptr;
  if (reducer) reducer->begin(len);
  // Rows the attention runs on: the states, or their groups.
  std::vector<int64_t> alen, astart;
  std::vector<float> first_heads, first_attention;
  // The residual update of a sublayer that ran on `rows` (x or its groups): x = x + out, each row taking
  // its group's output.
  const auto add_update = [&](const TokenGroups* g, RowMatrix<float>& out) {
    if (g) {
      unmerge_groups(*g, out, x, sum);
      x.swap(sum);
    } else {
      out += x;
      x.swap(out);
    }
  };
  for (int64_t l = begin; l < end; ++l) {
    const Block& b = blocks_[static_cast<std::size_t>(l)];
    const auto name = [&](int slot) -> const std::string& {
      return linear_names_[static_cast<std::size_t>(l * kSlots + slot)];
    };
    const int li = static_cast<int>(l);
    // on_block sees a layer's input and output row for row, which a reducer does not keep.
    if (hooks && !reducer) block_in = x;
    const TokenGroups* const ga = reducer ? reducer->group(li, Sublayer::attention, x, len) : nullptr;
    if (ga) merge_groups(*ga, x, merged);
    const RowMatrix<float>& xa = ga ? merged : x;
    alen = ga ? ga->lengths : len;
    astart.resize(alen.size());
    int64_t arows = 0;
    for (std::size_t s = 0; s < alen.size(); ++s) {
      astart[s] = arows;
      arows += alen[s];
    }
    if (hooks) {
      const std::string qkv[] = {name(kQuery), name(kKey), name(kValue)};
      hooks->on_linear_input(li, qkv, xa.data(), arows, dim);
    }
    linear_forward(layer(l, kQuery), b.bias[kQuery], xa, q);
    linear_forward(layer(l, kKey), b.bias[kKey], xa, k);
    linear_forward(layer(l, kValue), b.bias[kValue], xa, v);

    const bool want_probs = hooks && hooks->wants_attention(li);
    const float* const key_bias = reducer ? reducer->key_bias() : nullptr;
    const bool want_first = reducer && reducer->wants_first_attention(li);
    require(!(want_first && ga), "BertEncoder: a token reducer asked for the first token's attention at layer ", li,
            " while grouping its attention rows");
    if (want_first) first_heads.assign(static_cast<std::size_t>(c.n_heads * arows), 0.0f);
    ctx.resize(arows, dim);
    const int64_t jobs = batch.size * c.n_heads;
    parallel_for(jobs, arows < kRowsPerChunk ? jobs : 1, [&](int64_t begin, int64_t end) {
      using Slice = Eigen::Map<const RowMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
      using OutSlice = Eigen::Map<RowMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
      RowMatrix<float> scores;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t s = job / c.n_heads, head = job % c.n_heads;
        const int64_t n = alen[static_cast<std::size_t>(s)];
        const int64_t off = astart[static_cast<std::size_t>(s)] * dim + head * hd;
        const Slice qs(q.data() + off, n, hd, Eigen::OuterStride<>(dim));
        const Slice ks(k.data() + off, n, hd, Eigen::OuterStride<>(dim));
        const Slice vs(v.data() + off, n, hd, Eigen::OuterStride<>(dim));
        scores.noalias() = (qs * ks.transpose()) * scale;
        if (key_bias)
          scores.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(key_bias + astart[static_cast<std::size_t>(s)], n);
        for (int64_t i = 0; i < n; ++i) {
          auto row = scores.row(i).array();
          row = (row - row.maxCoeff()).exp();
          row /= row.sum();
        }
        if (want_first)
          std::copy(scores.data(), scores.data() + n,
                    first_heads.begin() + head * arows + astart[static_cast<std::size_t>(s)]);
        if (want_probs) hooks->on_attention(li, static_cast<int>(head), scores.data(), n, n, 0);
        OutSlice(ctx.data() + off, n, hd, Eigen::OuterStride<>(dim)).noalias() = scores * vs;
      }
    });

    if (hooks) {
      const std::string o[] = {name(kAttnOut)};
      hooks->on_linear_input(li, o, ctx.data(), arows, dim);
    }
    linear_forward(layer(l, kAttnOut), b.bias[kAttnOut], ctx, tmp);
    add_update(ga, tmp);
    layer_norm(x, b.attn_norm_w, b.attn_norm_b, c.norm_eps);
    if (reducer) {
      if (want_first) {
        first_attention.assign(static_cast<std::size_t>(total), 0.0f);
        for (int64_t head = 0; head < c.n_heads; ++head)
          for (int64_t i = 0; i < total; ++i)
            first_attention[static_cast<std::size_t>(i)] +=
                first_heads[static_cast<std::size_t>(head * total + i)] / static_cast<float>(c.n_heads);
      }
      reducer->reduce({li, c.n_heads, ga ? nullptr : &k, want_first ? first_attention.data() : nullptr}, x, len);
      total = 0;
      for (std::size_t s = 0; s < len.size(); ++s) {
        start[s] = total;
        total += len[s];
      }
    }

    const TokenGroups* const gm = reducer ? reducer->group(li, Sublayer::mlp, x, len) : nullptr;
    if (gm) merge_groups(*gm, x, merged);
    const RowMatrix<float>& xm = gm ? merged : x;
    if (hooks) {
      const std::string u[] = {name(kUp)};
      hooks->on_linear_input(li, u, xm.data(), xm.rows(), dim);
    }
    linear_forward(layer(l, kUp), b.bias[kUp], xm, h);
    gelu(h);
    if (hooks) {
      const std::string d[] = {name(kDown)};
      hooks->on_linear_input(li, d, h.data(), h.rows(), c.hidden_dim);
    }
    linear_forward(layer(l, kDown), b.bias[kDown], h, tmp);
    add_update(gm, tmp);
    layer_norm(x, b.out_norm_w, b.out_norm_b, c.norm_eps);
    if (hooks && !reducer) hooks->on_block(li, block_in.data(), x.data(), total, dim);
  }
  if (reducer) {
    reducer->restore(x, tmp);
    x.swap(tmp);
    total = x.rows();
  }

  Tensor out(DType::f32, Shape{total, dim});
  std::copy(x.data(), x.data() + x.size(), out.view<float>().data());
  return out;
}

Tensor BertEncoder::embed(const TokenBatch& batch, ForwardHooks* hooks) const {
  return pool(batch, forward(batch, hooks));
}

Tensor BertEncoder::pool(const TokenBatch& batch, const Tensor& states) const {
  const int64_t dim = config_.dim;
  const std::vector<int64_t> len = packed_lengths(batch);
  const int64_t total = std::accumulate(len.begin(), len.end(), int64_t{0});
  require(states.dtype() == DType::f32 && states.shape() == Shape{total, dim}, "BertEncoder::pool: states are ",
          states.shape().str(), ", the batch's packed tokens need float32 [", total, ", ", dim, "]");
  const float* hs = states.view<const float>().data();
  Tensor out(DType::f32, Shape{batch.size, dim});
  float* o = out.view<float>().data();
  int64_t row = 0;
  for (int64_t s = 0; s < batch.size; ++s) {
    const int64_t n = len[static_cast<std::size_t>(s)];
    Eigen::Map<Vector<float>> e(o + s * dim, dim);
    const Eigen::Map<const RowMatrix<float>> rows(hs + row * dim, n, dim);
    e = rows.colwise().sum().transpose() / static_cast<float>(n);
    // sentence-transformers' Normalize divides by max(norm, 1e-12).
    e /= std::max(e.norm(), 1e-12f);
    row += n;
  }
  return out;
}

SentenceEncoder::SentenceEncoder(WordPieceTokenizer tokenizer, BertEncoder encoder)
    : tokenizer_(std::move(tokenizer)), encoder_(std::move(encoder)) {
  require(tokenizer_.vocab_size() == encoder_.config().vocab_size, "SentenceEncoder: the tokenizer has ",
          tokenizer_.vocab_size(), " tokens, the encoder's embedding table ", encoder_.config().vocab_size);
  require(tokenizer_.options().max_length <= encoder_.config().max_positions, "SentenceEncoder: max_length ",
          tokenizer_.options().max_length, " exceeds the encoder's ", encoder_.config().max_positions, " positions");
}

SentenceEncoder SentenceEncoder::open(const std::filesystem::path& dir, int64_t max_length) {
  WordPieceOptions options;
  options.max_length = max_length;
  auto tokenizer = WordPieceTokenizer::from_file(dir / "vocab.txt", options);
  const auto file = io::open_model(dir);
  return SentenceEncoder(std::move(tokenizer), BertEncoder::load(*file));
}

Tensor SentenceEncoder::encode(std::span<const std::string> sentences, int64_t batch_size, ForwardHooks* hooks) const {
  require(batch_size > 0, "SentenceEncoder::encode: batch_size must be positive, got ", batch_size);
  const auto n = static_cast<int64_t>(sentences.size());
  const int64_t dim = encoder_.config().dim;
  std::vector<std::vector<int32_t>> ids(sentences.size());
  for (std::size_t i = 0; i < sentences.size(); ++i) ids[i] = tokenizer_.encode(sentences[i]);
  // Similar lengths together keep the padded batches (and their attention blocks) balanced.
  std::vector<int64_t> order(sentences.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return ids[static_cast<std::size_t>(a)].size() < ids[static_cast<std::size_t>(b)].size();
  });

  Tensor out(DType::f32, Shape{n, dim});
  float* o = out.view<float>().data();
  for (int64_t first = 0; first < n; first += batch_size) {
    const int64_t count = std::min(batch_size, n - first);
    TokenBatch b;
    b.size = count;
    for (int64_t i = 0; i < count; ++i)
      b.length = std::max<int64_t>(
          b.length,
          static_cast<int64_t>(ids[static_cast<std::size_t>(order[static_cast<std::size_t>(first + i)])].size()));
    b.ids.assign(static_cast<std::size_t>(count * b.length), tokenizer_.pad_id());
    b.attention_mask.assign(static_cast<std::size_t>(count * b.length), 0);
    for (int64_t i = 0; i < count; ++i) {
      const auto& seq = ids[static_cast<std::size_t>(order[static_cast<std::size_t>(first + i)])];
      std::copy(seq.begin(), seq.end(), b.ids.begin() + i * b.length);
      std::fill_n(b.attention_mask.begin() + i * b.length, seq.size(), 1);
    }
    const Tensor e = encoder_.embed(b, hooks);
    const float* src = e.view<const float>().data();
    for (int64_t i = 0; i < count; ++i)
      std::copy(src + i * dim, src + (i + 1) * dim, o + order[static_cast<std::size_t>(first + i)] * dim);
  }
  return out;
}

float cosine(std::span<const float> a, std::span<const float> b) {
  require(a.size() == b.size(), "cosine: lengths differ, ", a.size(), " vs ", b.size());
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return aa > 0 && bb > 0 ? static_cast<float>(ab / std::sqrt(aa * bb)) : 0.0f;
}

}  // namespace strata::nn
