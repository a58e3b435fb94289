#pragma once
// A KV cache whose every (layer, KV head) holds its own list of tokens, so that eviction can keep
// different tokens, and different numbers of them, per head (AdaKV, PyramidKV). Each head's keys and
// values are contiguous [length, head_dim] row-major, the layout attention reads directly.
//
// Keys are stored after RoPE: a kept token keeps the rotation of its original position, so eviction
// never re-rotates anything. Positions are kept beside the rows for bookkeeping and scorers; new
// tokens take their positions from the caller (the session's counter), not from the cache length.
//
// Stored forms (CacheFormat): per layer, keys and values each in one of
//   f32     the rows as given (the default: then the cache is exactly the float cache it always was)
//   f16     binary16 rows
//   q8_0    ggml Q8_0 rows (blocks of 32: an f16 scale, 32 int8), 8.5 bits per element
//   q4_0    ggml Q4_0 rows (blocks of 32: an f16 scale, 32 4-bit codes), 4.5 bits per element
//   kivi2 / kivi4   KIVI (Liu et al. 2024): keys per channel in groups of G tokens, values per token
//           in groups of G channels, asymmetric (x' = min + scale q, scale and min in binary16), the
//           newest tokens in float32 (values: the last R; keys: the last R to R + G - 1, flushed G
//           at a time once R + G are waiting).
// With CacheFormat::rotate, each head's keys and values are stored as R x (R a randomized Hadamard
// rotation, kernels::HadamardRotation): queries are rotated the same way, so q.k is unchanged, and
// the attention output, a mix of rotated values, is rotated back. Outlier channels are spread over
// the whole head before quantization.
// Attention reads the stored form directly (attend_scores / attend_values, over all of a head's tokens
// or a range of them). A few queries (a decode step's query heads of one KV head, up to 16) read each
// row once for all of them: q8_0 / q4_0 keys through kernels::ggml_matmul, KIVI keys and values from
// their codes (kernels/cpu/kivi_attention.hpp: q . min + (q .* scale) . code per key group, no
// dequantized rows), float32 rows and the other forms' dequantized 64-row tiles through
// kernels/cpu/attention_decode.hpp. More queries go through Eigen's products over tiles. The decode
// path allocates nothing once each thread's scratch has grown to the largest shapes.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "strata/kernels/hadamard.hpp"

namespace strata::kv {

enum class KvFormat { f32, f16, q8_0, q4_0, kivi2, kivi4 };
std::string_view to_string(KvFormat f);
// "f32", "f16", "q8_0", "q4_0", "kivi2", "kivi4". Anything else throws strata::Error naming
// `option` (the field or command-line option the name came from) and the accepted names.
KvFormat parse_kv_format(std::string_view name, std::string_view option);
std::span<const KvFormat> kv_formats();
bool is_kivi(KvFormat f);

// How a Cache stores its rows. The default is float32 without rotation.
struct CacheFormat {
  KvFormat key = KvFormat::f32;    // every layer's keys, unless `layers` says otherwise
  KvFormat value = KvFormat::f32;  // every layer's values, unless `layers` says otherwise
  std::vector<std::pair<KvFormat, KvFormat>> layers;  // empty, or (key, value) per layer
  int64_t kivi_group = 32;     // G: tokens per key group (one scale and minimum per channel), channels per value group
  int64_t kivi_residual = 32;  // R: the newest tokens kept in float32
  bool rotate = false;         // randomized Hadamard rotation per head (head_dim a power of two)
  uint64_t rotation_seed = 0;

  KvFormat key_format(int layer) const;
  KvFormat value_format(int layer) const;
  bool any_kivi() const;
  // Float32 everywhere and no rotation: the cache is the plain float cache.
  bool full_precision() const;
  // The fewest tokens a head must be allowed to keep for the float32 window to fit: R when some
  // layer uses KIVI, else 0. An eviction budget below it is refused.
  int64_t min_budget() const { return any_kivi() ? kivi_residual : 0; }
  // Throws strata::Error naming the field: a layer list whose length is not n_layers, a group below
  // 1 or a residual below 0, rotation on a head_dim that is not a power of two, ggml formats on a
  // head_dim that is not a multiple of 32.
  void validate(int64_t n_layers, int64_t head_dim) const;
  // "k=q4_0 v=q4_0 rot" / "k=kivi2 v=kivi2 g32 r32" for reports.
  std::string describe() const;
};

class Cache {
 public:
  // `reserve_tokens` sizes every head up front (no reallocation until a head grows past it).
  Cache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t reserve_tokens = 0,
        CacheFormat format = {});
  // Deep copies: every head's rows, positions and capacity (so bytes() is equal), and the headroom.
  Cache(const Cache& other);
  Cache& operator=(const Cache& other);
  Cache(Cache&&) noexcept = default;
  Cache& operator=(Cache&&) noexcept = default;

  int64_t n_layers() const { return n_layers_; }
  int64_t n_kv_heads() const { return n_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  const CacheFormat& format() const { return format_; }
  // The rotation applied before storing, or null.
  const kernels::HadamardRotation* rotation() const { return rotation_ ? &*rotation_ : nullptr; }

  // Appends `tokens` rows of keys and values, each row [n_kv_heads * head_dim] (head h at columns
  // h * head_dim ..), at positions pos0, pos0 + 1, ...; every head of the layer gets them. Positions
  // must exceed every position the layer already holds.
  void append(int layer, const float* k, const float* v, int64_t tokens, int64_t pos0);
  // The same for one row per position of `positions` (increasing, not necessarily consecutive: a
  // pruned prefill's kept tokens).
  void append(int layer, const float* k, const float* v, std::span<const int64_t> positions);

  // The same tokens of every head, at the same positions, stored in `format`: each head's rows read
  // back from this cache (read_keys / read_values) and appended in the new form. The headroom is
  // kept. Converting a float32 cache after a prompt gives KIVI's setting: the prompt attended in
  // full precision, its keys and values then held quantized.
  Cache converted(CacheFormat format) const;

  int64_t length(int layer, int head) const { return at(layer, head).length; }
  int64_t capacity(int layer, int head) const { return at(layer, head).capacity; }
  // Contiguous [length, head_dim] row-major; valid until the next append, keep or clear of the head.
  // Only for a layer stored in float32 without rotation (throws otherwise: use read_keys).
  const float* keys(int layer, int head) const;
  const float* values(int layer, int head) const;
  // Tokens [begin, begin + count) of the head as float32 [count, head_dim], dequantized and rotated
  // back: what the stored form holds for the rows that were appended.
  void read_keys(int layer, int head, int64_t begin, int64_t count, float* out) const;
  void read_values(int layer, int head, int64_t begin, int64_t count, float* out) const;

  // Attention over one KV head's stored tokens, for `n` queries of the model's basis (rows q_stride
  // apart). attend_scores: scores [n, length] row-major = scale * q . k for every stored key.
  // attend_values: out row i (out_stride apart) = sum_j probs[i, j] v_j over the stored values,
  // rotated back to the model's basis.
  void attend_scores(int layer, int head, const float* q, int64_t n, int64_t q_stride, float scale,
                     float* scores) const;
  void attend_values(int layer, int head, const float* probs, int64_t n, float* out, int64_t out_stride) const;
  // The same over the head's tokens [begin, end) only (a chunk of a split decode step):
  // attend_scores writes scores[i * score_stride + j - begin] for j in [begin, end); attend_values
  // reads probs[i * prob_stride + j - begin] and writes out row i = the sum over those tokens.
  void attend_scores(int layer, int head, const float* q, int64_t n, int64_t q_stride, float scale, int64_t begin,
                     int64_t end, float* scores, int64_t score_stride) const;
  void attend_values(int layer, int head, const float* probs, int64_t prob_stride, int64_t n, int64_t begin,
                     int64_t end, float* out, int64_t out_stride) const;
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

  // Bytes actually held, summed over layers and heads: per head its capacity times the bytes of a
  // stored key row, a stored value row and a position, plus for KIVI the float32 window buffers
  // (R + G - 1 key rows, R value rows, allocated with the head) and the key groups' parameters
  // (4 bytes per channel and group, 4 bytes of group length). For float32: capacity *
  // (2 * head_dim * 4 + 8) per head.
  uint64_t bytes() const;
  int64_t total_tokens() const;  // sum of lengths over layers x heads
  // Bytes per cached token of one head of layer 0 (keys, values and the position): the float32 rows
  // for a float32 layer, the stored rows for a quantized one (KIVI keys: codes only, the group
  // parameters are counted by bytes()).
  uint64_t bytes_per_token() const { return bytes_per_token(0); }
  uint64_t bytes_per_token(int layer) const;

 private:
  // One head's keys or values. Quantized rows are the oldest `quantized` tokens, float rows the
  // newest `window` ones (every row for f32; KIVI's float32 window).
  struct Rows {
    std::unique_ptr<float[]> fp;       // f32: [capacity, head_dim]; KIVI: [window capacity, head_dim]
    std::unique_ptr<std::byte[]> q;    // [capacity, row bytes]
    std::vector<uint16_t> group_params;  // KIVI keys: per group and channel, binary16 scale then minimum
    std::vector<int32_t> group_len;      // KIVI keys: tokens per group, oldest first
    int64_t quantized = 0, window = 0;
  };
  struct Head {
    Rows k, v;
    std::unique_ptr<int64_t[]> positions;
    int64_t length = 0, capacity = 0;
  };
  const Head& at(int layer, int head) const;
  Head& at(int layer, int head);
  void reallocate(Head& h, int layer, int64_t capacity) const;
  void reallocate_rows(Rows& r, KvFormat f, bool keys, int64_t old_capacity, int64_t capacity) const;
  // One head: `tokens` rows of keys and values [tokens, head_dim] at `positions` (the head's
  // capacity grown as append() grows it), rotated and stored.
  void append_head(int layer, int head, float* k, float* v, int64_t tokens, const int64_t* positions);
  void push(Rows& r, KvFormat f, bool keys, const float* x, int64_t tokens) const;
  void keep_rows(Rows& r, KvFormat f, bool keys, std::span<const int64_t> indices) const;
  void read_head(int layer, int head, bool keys, int64_t begin, int64_t count, float* out) const;
  void read_rows(const Rows& r, KvFormat f, bool keys, int64_t begin, int64_t count, float* out) const;
  // fn(rows, t0, m) over the stored rows [begin, end) as float32, oldest first: tiles of dequantized
  // rows, then the float32 rows in place.
  template <class Fn>
  void for_each_tile(const Rows& r, KvFormat f, bool keys, int64_t begin, int64_t end, Fn&& fn) const;
  uint64_t rows_bytes(const Rows& r, KvFormat f, bool keys, int64_t capacity) const;
  int64_t window_capacity(KvFormat f, bool keys) const;
  int64_t row_bytes(KvFormat f, bool keys) const;

  int64_t n_layers_, n_kv_heads_, head_dim_;
  int64_t headroom_ = 0;
  CacheFormat format_;
  std::optional<kernels::HadamardRotation> rotation_;
  std::vector<Head> heads_;  // layer-major
};

}  // namespace strata::kv
