#include "strata/kv/scorers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>

#include "kernels/cpu/kv_score.hpp"
#include "strata/core/error.hpp"

namespace strata::kv {

namespace {

// Entries of `v` at the sorted `indices` that v still has (state rows may be shorter than the cache
// when they were observed before the newest tokens arrived).
void compact(std::vector<float>& v, std::span<const int64_t> indices) {
  size_t out = 0;
  for (int64_t j : indices) {
    if (j >= static_cast<int64_t>(v.size())) break;
    v[out++] = v[static_cast<size_t>(j)];
  }
  v.resize(out);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::shared_ptr<Scorer> Scorer::clone() const {
  fail("kv scorer '", name(), "' cannot be copied: it does not override Scorer::clone()");
}

void Scorer::bind(const Layout& layout) {
  require(layout.n_layers > 0 && layout.n_heads > 0 && layout.n_kv_heads > 0 && layout.head_dim > 0 &&
              layout.n_heads % layout.n_kv_heads == 0,
          "kv scorer '", name(), "': bad layout (", layout.n_layers, " layers, ", layout.n_heads, " query heads, ",
          layout.n_kv_heads, " KV heads, head_dim ", layout.head_dim, ")");
  layout_ = layout;
}

void Scorer::score_layer(const Cache& cache, int layer, std::vector<std::vector<float>>& out) {
  out.resize(static_cast<size_t>(cache.n_kv_heads()));
  for (int h = 0; h < cache.n_kv_heads(); ++h) {
    out[static_cast<size_t>(h)].assign(static_cast<size_t>(cache.length(layer, h)), 0.0f);
    score(cache, layer, h, out[static_cast<size_t>(h)]);
  }
}

// ---- attention scorers ---------------------------------------------------------------------------

AttentionScorer::AttentionScorer(std::string name, const AttentionOptions& options)
    : name_(std::move(name)), options_(options) {
  require(options.window >= 0, "kv scorer '", name_, "': window must be >= 0, got ", options.window);
  require(options.pool_kernel >= 1 && options.pool_kernel % 2 == 1, "kv scorer '", name_,
          "': pooling kernel must be odd and positive, got ", options.pool_kernel);
  require(options.decay > 0 && options.decay <= 1, "kv scorer '", name_, "': decay must be in (0, 1], got ",
          options.decay);
  require(options.decay == 1 || options.window == 0, "kv scorer '", name_,
          "': a decay below 1 needs window 0 (a moving average over every row), got window ", options.window);
}

void AttentionScorer::bind(const Layout& layout) {
  Scorer::bind(layout);
  state_.assign(static_cast<size_t>(layout.n_layers * layout.n_heads), QueryHead{});
}

void AttentionScorer::reset() {
  for (QueryHead& q : state_) q = QueryHead{};
}

void AttentionScorer::observe(int layer, int q_head, const float* probs, int64_t q_len, int64_t k_len, int64_t) {
  require(!state_.empty(), "kv scorer '", name_, "': observe() before bind()");
  require(layer >= 0 && layer < layout_.n_layers && q_head >= 0 && q_head < layout_.n_heads, "kv scorer '", name_,
          "': (layer ", layer, ", query head ", q_head, ") outside the bound layout");
  QueryHead& s = state(layer, q_head);
  if (options_.window == 0) {
    // Rows of later queries cover more tokens: the sum grows with the cache.
    if (static_cast<int64_t>(s.sum.size()) < k_len) s.sum.resize(static_cast<size_t>(k_len), 0.0f);
    if (options_.decay == 1) {
      kernels::kv_accumulate_rows(probs, q_len, k_len, k_len, s.sum.data());
      return;
    }
    const float d = static_cast<float>(options_.decay), w = static_cast<float>(1 - options_.decay);
    for (int64_t i = 0; i < q_len; ++i) {
      const float* row = probs + i * k_len;
      for (int64_t j = 0; j < k_len; ++j) s.sum[static_cast<size_t>(j)] = d * s.sum[static_cast<size_t>(j)] + w * row[j];
    }
    return;
  }
  for (int64_t i = std::max<int64_t>(0, q_len - options_.window); i < q_len; ++i) {
    s.rows.emplace_back(probs + i * k_len, probs + (i + 1) * k_len);
    if (static_cast<int64_t>(s.rows.size()) > options_.window) s.rows.pop_front();
  }
}

void AttentionScorer::raw(int layer, int q_head, int64_t length, std::vector<float>& acc) {
  const QueryHead& s = state(layer, q_head);
  auto add = [&](const std::vector<float>& v) {
    require(static_cast<int64_t>(v.size()) <= length, "kv scorer '", name_, "': layer ", layer, " query head ",
            q_head, " observed ", v.size(), " tokens but the cache holds ", length,
            " (was the cache compacted without telling the scorer?)");
    const auto n = static_cast<int64_t>(v.size());
    kernels::kv_accumulate_rows(v.data(), 1, n, n, acc.data());
  };
  if (options_.window == 0) add(s.sum);
  else
    for (const auto& r : s.rows) add(r);
}

void AttentionScorer::score(const Cache& cache, int layer, int head, std::span<float> out) {
  require(!state_.empty(), "kv scorer '", name_, "': score() before bind()");
  const int64_t n = cache.length(layer, head);
  require(static_cast<int64_t>(out.size()) == n, "kv scorer '", name_, "': ", out.size(), " outputs for ", n,
          " tokens");
  const int64_t group = layout_.group(), r = options_.pool_kernel / 2;
  const size_t un = static_cast<size_t>(n);
  std::vector<float> acc(un), pooled(un);
  std::vector<double> prefix(un + 1);
  for (int64_t g = 0; g < group; ++g) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    raw(layer, static_cast<int>(head * group + g), n, acc);
    if (r == 0) {
      pooled = acc;
    } else if (options_.pool == AttentionOptions::Pool::avg) {
      for (size_t j = 0; j < un; ++j) prefix[j + 1] = prefix[j] + acc[j];
      const double kernel = static_cast<double>(options_.pool_kernel);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t lo = std::max<int64_t>(0, j - r), hi = std::min(n, j + r + 1);
        pooled[static_cast<size_t>(j)] =
            static_cast<float>((prefix[static_cast<size_t>(hi)] - prefix[static_cast<size_t>(lo)]) / kernel);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t lo = std::max<int64_t>(0, j - r), hi = std::min(n, j + r + 1);
        pooled[static_cast<size_t>(j)] = *std::max_element(acc.begin() + lo, acc.begin() + hi);
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const float v = pooled[static_cast<size_t>(j)];
      float& o = out[static_cast<size_t>(j)];
      if (options_.reduce == GroupReduce::mean) o = (g == 0 ? 0.0f : o) + v / static_cast<float>(group);
      else o = g == 0 ? v : std::max(o, v);
    }
  }
}

void AttentionScorer::kept(int layer, int head, std::span<const int64_t> indices) {
  if (state_.empty()) return;
  const int64_t group = layout_.group();
  for (int64_t g = 0; g < group; ++g) {
    QueryHead& s = state(layer, static_cast<int>(head * group + g));
    compact(s.sum, indices);
    for (auto& row : s.rows) compact(row, indices);
  }
}

int64_t AttentionScorer::state_floats() const {
  int64_t n = 0;
  for (const QueryHead& s : state_) {
    n += static_cast<int64_t>(s.sum.size());
    for (const auto& r : s.rows) n += static_cast<int64_t>(r.size());
  }
  return n;
}

// ---- keys only -----------------------------------------------------------------------------------

void KeyNorm::score(const Cache& cache, int layer, int head, std::span<float> out) {
  const int64_t n = cache.length(layer, head), d = cache.head_dim();
  require(static_cast<int64_t>(out.size()) == n, "kv scorer 'keynorm': ", out.size(), " outputs for ", n, " tokens");
  if (cache.format().key_format(layer) == KvFormat::f32 && !cache.rotation()) {
    kernels::kv_row_norms(cache.keys(layer, head), n, d, d, out.data());
  } else {
    // A quantized or rotated cache: the norms of the keys it holds, as read back.
    std::vector<float> keys(static_cast<size_t>(n * d));
    cache.read_keys(layer, head, 0, n, keys.data());
    kernels::kv_row_norms(keys.data(), n, d, d, out.data());
  }
  for (float& x : out) x = -x;
}

void RandomScorer::score(const Cache& cache, int layer, int head, std::span<float> out) {
  const auto pos = cache.positions(layer, head);
  require(out.size() == pos.size(), "kv scorer 'random': ", out.size(), " outputs for ", pos.size(), " tokens");
  // A hash of the token's identity, not a stream: the same token keeps its score from one
  // compression to the next, whatever else was evicted in between.
  const uint64_t where = (static_cast<uint64_t>(layer) << 32) | static_cast<uint32_t>(head);
  const uint64_t base = splitmix64(seed_ ^ splitmix64(where));
  for (size_t j = 0; j < pos.size(); ++j)
    out[j] = static_cast<float>(splitmix64(base ^ static_cast<uint64_t>(pos[j])) >> 40) * 0x1.0p-24f;
}

// ---- ChunkKV -------------------------------------------------------------------------------------

ChunkKV::ChunkKV(std::shared_ptr<Scorer> inner, int64_t chunk, int64_t reuse)
    : inner_(inner ? std::move(inner) : std::make_shared<SnapKV>()), chunk_(chunk), reuse_(reuse) {
  require(chunk >= 1, "kv scorer 'chunkkv': chunk size must be positive, got ", chunk);
  require(reuse >= 1, "kv scorer 'chunkkv': reuse must be at least 1 layer, got ", reuse);
}

std::shared_ptr<Scorer> ChunkKV::clone() const {
  auto copy = std::make_shared<ChunkKV>(*this);
  copy->inner_ = inner_->clone();
  return copy;
}

void ChunkKV::bind(const Layout& layout) {
  Scorer::bind(layout);
  inner_->bind(layout);
  chunk_scores_.assign(static_cast<size_t>(layout.n_layers), {});
  fresh_.assign(static_cast<size_t>(layout.n_layers), 0);
}

void ChunkKV::reset() {
  inner_->reset();
  for (auto& c : chunk_scores_) c.clear();
  std::fill(fresh_.begin(), fresh_.end(), 0);
}

bool ChunkKV::wants_attention(int layer) const { return scores_layer(layer) && inner_->wants_attention(layer); }

void ChunkKV::observe(int layer, int q_head, const float* probs, int64_t q_len, int64_t k_len, int64_t q_pos0) {
  if (scores_layer(layer)) inner_->observe(layer, q_head, probs, q_len, k_len, q_pos0);
}

void ChunkKV::kept(int layer, int head, std::span<const int64_t> indices) {
  if (scores_layer(layer)) inner_->kept(layer, head, indices);
}

void ChunkKV::begin_pass() {
  inner_->begin_pass();
  std::fill(fresh_.begin(), fresh_.end(), 0);
}

void ChunkKV::score_chunks(const Cache& cache, int layer) {
  std::vector<std::vector<float>> tokens;
  inner_->score_layer(cache, layer, tokens);
  // Sum over heads of each head's mean token score in the chunk.
  std::map<int64_t, float> chunks;
  for (int h = 0; h < cache.n_kv_heads(); ++h) {
    const auto pos = cache.positions(layer, h);
    const auto& s = tokens[static_cast<size_t>(h)];
    for (size_t b = 0; b < pos.size();) {
      const int64_t c = pos[b] / chunk_;
      size_t e = b;
      double sum = 0;
      for (; e < pos.size() && pos[e] / chunk_ == c; ++e) sum += s[e];
      chunks[c] += static_cast<float>(sum / static_cast<double>(e - b));
      b = e;
    }
  }
  chunk_scores_[static_cast<size_t>(layer)].assign(chunks.begin(), chunks.end());
  fresh_[static_cast<size_t>(layer)] = 1;
}

void ChunkKV::score_layer(const Cache& cache, int layer, std::vector<std::vector<float>>& out) {
  require(!chunk_scores_.empty(), "kv scorer 'chunkkv': score() before bind()");
  const int heads = static_cast<int>(cache.n_kv_heads());
  const int ref = static_cast<int>(layer - layer % reuse_);
  if (layer == ref || !fresh_[static_cast<size_t>(ref)]) score_chunks(cache, ref);
  const auto& table = chunk_scores_[static_cast<size_t>(ref)];
  // A token whose chunk the scoring layer no longer holds ranks below every scored chunk.
  out.resize(static_cast<size_t>(heads));
  for (int h = 0; h < heads; ++h) {
    const auto pos = cache.positions(layer, h);
    auto& o = out[static_cast<size_t>(h)];
    o.resize(pos.size());
    for (size_t j = 0; j < pos.size(); ++j) {
      const int64_t c = pos[j] / chunk_;
      auto it = std::lower_bound(table.begin(), table.end(), c, [](const auto& e, int64_t id) { return e.first < id; });
      o[j] = (it != table.end() && it->first == c) ? it->second : std::numeric_limits<float>::lowest();
    }
  }
}

void ChunkKV::score(const Cache& cache, int layer, int head, std::span<float> out) {
  std::vector<std::vector<float>> all;
  score_layer(cache, layer, all);
  const auto& mine = all[static_cast<size_t>(head)];
  require(out.size() == mine.size(), "kv scorer 'chunkkv': ", out.size(), " outputs for ", mine.size(), " tokens");
  std::copy(mine.begin(), mine.end(), out.begin());
}

// ---- by name -------------------------------------------------------------------------------------

std::span<const std::string_view> scorer_names() {
  static constexpr std::string_view names[] = {"h2o", "tova", "tova-ema", "snapkv", "keynorm", "chunkkv", "random"};
  return names;
}

std::shared_ptr<Scorer> make_scorer(std::string_view name, uint64_t seed) {
  if (name == "h2o") return std::make_shared<H2O>();
  if (name == "tova") return std::make_shared<TOVA>();
  if (name == "tova-ema") return std::make_shared<TovaEma>();
  if (name.starts_with("tova-ema:")) {
    const std::string d(name.substr(9));
    char* end = nullptr;
    const double decay = std::strtod(d.c_str(), &end);
    require(!d.empty() && end == d.c_str() + d.size() && decay > 0 && decay < 1, "kv: scorer '", name,
            "': the decay after 'tova-ema:' must be a number in (0, 1)");
    return std::make_shared<TovaEma>(decay);
  }
  if (name == "snapkv") return std::make_shared<SnapKV>();
  if (name == "keynorm") return std::make_shared<KeyNorm>();
  if (name == "chunkkv") return std::make_shared<ChunkKV>();
  if (name == "random") return std::make_shared<RandomScorer>(seed);
  std::string known;
  for (auto n : scorer_names()) known += (known.empty() ? "" : ", ") + std::string(n);
  fail("kv: unknown scorer '", name, "' (known: ", known, ")");
}

}  // namespace strata::kv
