#pragma once
// A KV cache whose every (layer, KV head) holds its own list of tokens, so that eviction can keep
// different tokens, and different numbers of them, per head (AdaKV, PyramidKV). Each head's keys and
// values are contiguous [length, head_dim] row-major, the layout attention reads directly.
//
// Keys are stored after RoPE: a kept token keeps the rotation of its original position, so eviction
// never re-rotates anything. Positions are kept beside the rows for bookkeeping and scorers; new
// tokens take their positions from the caller (the session's counter), not from the cache length.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace strata::kv {

class Cache {
 public:
  // `reserve_tokens` sizes every head up front (no reallocation until a head grows past it).
  Cache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t reserve_tokens = 0);
  // Deep copies: every head's rows, positions and capacity (so bytes() is equal), and the headroom.
  Cache(const Cache& other);
  Cache& operator=(const Cache& other);
  Cache(Cache&&) noexcept = default;
  Cache& operator=(Cache&&) noexcept = default;

  int64_t n_layers() const { return n_layers_; }
  int64_t n_kv_heads() const { return n_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }

  // Appends `tokens` rows of keys and values, each row [n_kv_heads * head_dim] (head h at columns
  // h * head_dim ..), at positions pos0, pos0 + 1, ...; every head of the layer gets them. Positions
  // must exceed every position the layer already holds.
  void append(int layer, const float* k, const float* v, int64_t tokens, int64_t pos0);

  int64_t length(int layer, int head) const { return at(layer, head).length; }
  int64_t capacity(int layer, int head) const { return at(layer, head).capacity; }
  // Contiguous [length, head_dim] row-major; valid until the next append, keep or clear of the head.
  const float* keys(int layer, int head) const { return at(layer, head).keys.get(); }
  const float* values(int layer, int head) const { return at(layer, head).values.get(); }
  // Original positions of the cached tokens, increasing.
  std::span<const int64_t> positions(int layer, int head) const;

  // Keeps exactly the tokens at `indices` (sorted, unique, < length) of that head, in order. Rows are
  // moved down in place; then the head's storage is reallocated to length + headroom() when it holds
  // more than that, so evicted tokens give their memory back.
  void keep(int layer, int head, std::span<const int64_t> indices);

  // Growth policy. append() grows a full head to max(needed + headroom, 3/2 of its capacity); keep()
  // shrinks it to length + headroom. A session that compresses every k decode steps sets headroom k,
  // so that the head neither reallocates between compressions nor holds more than k spare rows after
  // one. Default 0: keep() shrinks to fit exactly.
  void set_headroom(int64_t tokens);
  int64_t headroom() const { return headroom_; }

  void clear();  // every head empty, storage freed

  // Bytes actually held: per head capacity * (2 * head_dim * sizeof(float) + sizeof(int64_t)) (keys,
  // values, positions), summed over layers and heads.
  uint64_t bytes() const;
  int64_t total_tokens() const;  // sum of lengths over layers x heads
  // Bytes per cached token of one head: keys, values and the position.
  uint64_t bytes_per_token() const { return static_cast<uint64_t>(2 * head_dim_) * sizeof(float) + sizeof(int64_t); }

 private:
  struct Head {
    std::unique_ptr<float[]> keys, values;
    std::unique_ptr<int64_t[]> positions;
    int64_t length = 0, capacity = 0;
  };
  const Head& at(int layer, int head) const;
  Head& at(int layer, int head);
  void reallocate(Head& h, int64_t capacity) const;

  int64_t n_layers_, n_kv_heads_, head_dim_;
  int64_t headroom_ = 0;
  std::vector<Head> heads_;  // layer-major
};

}  // namespace strata::kv
