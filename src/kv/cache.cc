#include "strata/kv/cache.hpp"

#include <algorithm>
#include <cstring>

#include "strata/core/error.hpp"

namespace strata::kv {

Cache::Cache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t reserve_tokens)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim) {
  require(n_layers > 0 && n_kv_heads > 0 && head_dim > 0, "kv::Cache: layers (", n_layers, "), KV heads (",
          n_kv_heads, ") and head_dim (", head_dim, ") must be positive");
  require(reserve_tokens >= 0, "kv::Cache: reserve_tokens is negative (", reserve_tokens, ")");
  heads_.resize(static_cast<size_t>(n_layers * n_kv_heads));
  if (reserve_tokens > 0)
    for (Head& h : heads_) reallocate(h, reserve_tokens);
}

Cache::Cache(const Cache& other)
    : n_layers_(other.n_layers_), n_kv_heads_(other.n_kv_heads_), head_dim_(other.head_dim_),
      headroom_(other.headroom_) {
  heads_.resize(other.heads_.size());
  const size_t row = static_cast<size_t>(head_dim_);
  for (size_t i = 0; i < heads_.size(); ++i) {
    const Head& from = other.heads_[i];
    Head& to = heads_[i];
    reallocate(to, from.capacity);
    const size_t n = static_cast<size_t>(from.length);
    if (n > 0) {
      std::memcpy(to.keys.get(), from.keys.get(), n * row * sizeof(float));
      std::memcpy(to.values.get(), from.values.get(), n * row * sizeof(float));
      std::memcpy(to.positions.get(), from.positions.get(), n * sizeof(int64_t));
    }
    to.length = from.length;
  }
}

Cache& Cache::operator=(const Cache& other) {
  if (this != &other) *this = Cache(other);
  return *this;
}

const Cache::Head& Cache::at(int layer, int head) const {
  require(layer >= 0 && layer < n_layers_ && head >= 0 && head < n_kv_heads_, "kv::Cache: (layer ", layer,
          ", head ", head, ") outside ", n_layers_, " layers x ", n_kv_heads_, " KV heads");
  return heads_[static_cast<size_t>(layer * n_kv_heads_ + head)];
}

Cache::Head& Cache::at(int layer, int head) {
  return const_cast<Head&>(static_cast<const Cache&>(*this).at(layer, head));
}

void Cache::reallocate(Head& h, int64_t capacity) const {
  if (capacity == h.capacity) return;
  const size_t row = static_cast<size_t>(head_dim_);
  const size_t n = static_cast<size_t>(h.length);
  if (capacity == 0) {
    h.keys.reset();
    h.values.reset();
    h.positions.reset();
    h.capacity = 0;
    return;
  }
  auto keys = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(capacity) * row);
  auto values = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(capacity) * row);
  auto positions = std::make_unique_for_overwrite<int64_t[]>(static_cast<size_t>(capacity));
  if (n > 0) {
    std::memcpy(keys.get(), h.keys.get(), n * row * sizeof(float));
    std::memcpy(values.get(), h.values.get(), n * row * sizeof(float));
    std::memcpy(positions.get(), h.positions.get(), n * sizeof(int64_t));
  }
  h.keys = std::move(keys);
  h.values = std::move(values);
  h.positions = std::move(positions);
  h.capacity = capacity;
}

void Cache::append(int layer, const float* k, const float* v, int64_t tokens, int64_t pos0) {
  require(tokens >= 0 && pos0 >= 0, "kv::Cache::append: layer ", layer, ": bad token count ", tokens,
          " or position ", pos0);
  if (tokens == 0) return;
  require(k != nullptr && v != nullptr, "kv::Cache::append: layer ", layer, ": null keys or values");
  const int64_t stride = n_kv_heads_ * head_dim_;
  for (int h = 0; h < n_kv_heads_; ++h) {
    Head& s = at(layer, h);
    const int64_t last = s.length > 0 ? s.positions[static_cast<size_t>(s.length - 1)] : -1;
    require(last < pos0, "kv::Cache::append: layer ", layer, " head ", h, " already holds position ", last,
            ", new tokens start at ", pos0);
    const int64_t needed = s.length + tokens;
    if (needed > s.capacity) reallocate(s, std::max(needed + headroom_, s.capacity + s.capacity / 2));
    float* kd = s.keys.get() + s.length * head_dim_;
    float* vd = s.values.get() + s.length * head_dim_;
    for (int64_t t = 0; t < tokens; ++t) {
      std::memcpy(kd + t * head_dim_, k + t * stride + h * head_dim_, static_cast<size_t>(head_dim_) * sizeof(float));
      std::memcpy(vd + t * head_dim_, v + t * stride + h * head_dim_, static_cast<size_t>(head_dim_) * sizeof(float));
      s.positions[static_cast<size_t>(s.length + t)] = pos0 + t;
    }
    s.length = needed;
  }
}

std::span<const int64_t> Cache::positions(int layer, int head) const {
  const Head& h = at(layer, head);
  return {h.positions.get(), static_cast<size_t>(h.length)};
}

void Cache::keep(int layer, int head, std::span<const int64_t> indices) {
  Head& h = at(layer, head);
  const int64_t n = static_cast<int64_t>(indices.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = indices[static_cast<size_t>(i)];
    require(j >= 0 && j < h.length && (i == 0 || j > indices[static_cast<size_t>(i - 1)]), "kv::Cache::keep: layer ",
            layer, " head ", head, ": index ", j, " at ", i, " is not sorted, unique and below the length ", h.length);
  }
  // Indices are increasing, so destination i never lies past source indices[i]: moving rows down in
  // order never overwrites a row still to be read.
  const size_t row = static_cast<size_t>(head_dim_);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = indices[static_cast<size_t>(i)];
    if (j == i) continue;
    std::memcpy(h.keys.get() + i * head_dim_, h.keys.get() + j * head_dim_, row * sizeof(float));
    std::memcpy(h.values.get() + i * head_dim_, h.values.get() + j * head_dim_, row * sizeof(float));
    h.positions[static_cast<size_t>(i)] = h.positions[static_cast<size_t>(j)];
  }
  h.length = n;
  if (h.capacity > n + headroom_) reallocate(h, n + headroom_);
}

void Cache::set_headroom(int64_t tokens) {
  require(tokens >= 0, "kv::Cache::set_headroom: negative headroom ", tokens);
  headroom_ = tokens;
}

void Cache::clear() {
  for (Head& h : heads_) {
    h.length = 0;
    reallocate(h, 0);
  }
}

uint64_t Cache::bytes() const {
  uint64_t total = 0;
  for (const Head& h : heads_) total += static_cast<uint64_t>(h.capacity) * bytes_per_token();
  return total;
}

int64_t Cache::total_tokens() const {
  int64_t total = 0;
  for (const Head& h : heads_) total += h.length;
  return total;
}

}  // namespace strata::kv
