#pragma once
// Quantized KV caches for one layer and KV head: keys and values are [tokens, head_dim] row-major
// float32 as the engine produces them, appended one token (or a prefill's worth) at a time.
//
//   QuantizedKV    KIVI (Liu et al. 2024, "KIVI: a tuning-free asymmetric 2bit quantization for KV
//                  cache"): keys per channel in groups of G tokens, values per token in groups of G
//                  channels, b = 2, 4 or 8 bits, asymmetric (x' = min + scale q with
//                  scale = (max - min) / (2^b - 1)); the newest tokens stay in float32 until they
//                  make a whole group. Keys have a few channels far larger than the rest; a scale per
//                  channel keeps those outliers from flattening every other channel of the token,
//                  which is what a scale per token would do.
//   BlockQuantizedKV  llama.cpp's cache types (--cache-type-k / -v: f32, f16, bf16, q8_0, q4_0,
//                  q4_1, iq4_nl, q5_0, q5_1): each token's row of head_dim values is one row of ggml
//                  blocks, written by strata's byte-exact ggml quantizers.
//
// Both report bytes() = the bytes they hold (codes, scales, full-precision rows), so eviction (how
// many tokens) and quantization (bytes per token) can share one byte budget: see cache_bytes() and
// tokens_within() below.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/kernels/ggml_blocks.hpp"

namespace strata::kv {

// How keys are grouped. KIVI's choice is per_channel; per_token (the way values are always grouped)
// is there to compare against.
enum class KeyMode { per_channel, per_token };
// How each group's scale and minimum are stored: binary16 (KIVI's choice) or float32.
enum class ParamType { f16, f32 };

std::string to_string(KeyMode m);

struct KiviOptions {
  int key_bits = 2;    // 2, 4 or 8
  int value_bits = 2;  // 2, 4 or 8
  // G. Per-channel keys: tokens per group (one scale and minimum per channel per G tokens).
  // Per-token rows (values, per-token keys): channels per group, the last group of a row shorter
  // when G does not divide head_dim (G >= head_dim: one group per row).
  int64_t group = 32;
  // R: tokens kept in float32 beyond the incomplete key group. Per-channel keys are flushed G at a
  // time once R + G of them are unquantized, so the newest R to R + G - 1 keys are exact; per-token
  // rows are flushed one at a time once more than R are unquantized, so the newest R are exact.
  // R = 0: only the incomplete key group stays in float32 and every value is quantized at once.
  int64_t residual = 0;
  KeyMode key_mode = KeyMode::per_channel;
  ParamType params = ParamType::f16;
};

// "kivi k2v2 g32 r0 per-channel f16" for reports.
std::string describe(const KiviOptions& o);

// A KIVI-quantized cache of one KV head.
//
// Every quantized element satisfies |x - x'| <= scale / 2 (plus float rounding of x' = min + scale q,
// at most 2^-24 |x'|), scale being its group's stored scale. With f16 parameters the minimum is
// rounded down and the scale up to binary16, so the grid still covers [min, max] and the bound holds
// for the stored scale, which exceeds (max - min) / (2^b - 1) by at most one binary16 step plus the
// minimum's rounding, 2^-10 |min| / (2^b - 1).
// f16 parameters need |x| <= 65504; larger values throw (use ParamType::f32).
class QuantizedKV {
 public:
  QuantizedKV(int64_t head_dim, const KiviOptions& options);

  // One token's key and value rows (head_dim values each, finite).
  void append(std::span<const float> key, std::span<const float> value);
  // `tokens` rows of each, row-major [tokens, head_dim] (a prefill).
  void append(const float* keys, const float* values, int64_t tokens);
  void append(const RowMatrix<float>& keys, const RowMatrix<float>& values);

  int64_t tokens() const { return tokens_; }
  int64_t head_dim() const { return head_dim_; }
  const KiviOptions& options() const { return opt_; }
  // The oldest key_quantized_tokens() keys are quantized, the rest are float32; likewise values.
  int64_t key_quantized_tokens() const;
  int64_t value_quantized_tokens() const;

  RowMatrix<float> keys_dequantized() const;    // [tokens, head_dim]
  RowMatrix<float> values_dequantized() const;  // [tokens, head_dim]
  // The stored scale of the group that holds element (token, channel); 0 for a float32 element.
  float key_scale(int64_t token, int64_t channel) const;
  float value_scale(int64_t token, int64_t channel) const;

  // Packed codes + scales and minimums + float32 rows: exactly cache_bytes(options, head_dim, tokens).
  uint64_t bytes() const;

 private:
  // Rows quantized one at a time in groups of channels (values; keys in per-token mode).
  struct TokenRows {
    std::vector<uint8_t> codes;    // per row ceil(head_dim * bits / 8) bytes
    std::vector<std::byte> params; // per row and group: scale, minimum
    std::vector<float> pending;    // float32 rows not yet quantized, oldest first
    int64_t quantized = 0;
  };
  void push_token_row(TokenRows& rows, const float* x, int bits);
  void flush_token_row(TokenRows& rows, int bits);
  void flush_key_group();
  RowMatrix<float> dequantize_rows(const TokenRows& rows, int bits) const;
  float token_row_scale(const TokenRows& rows, int64_t token, int64_t channel) const;

  int64_t head_dim_;
  KiviOptions opt_;
  int64_t tokens_ = 0;
  TokenRows values_;
  TokenRows token_keys_;  // per-token key mode
  // Per-channel key mode: whole groups of G tokens, codes token-major within a group.
  std::vector<uint8_t> key_codes_;      // per group ceil(G * head_dim * bits / 8) bytes
  std::vector<std::byte> key_params_;   // per group and channel: scale, minimum
  std::vector<float> key_pending_;      // float32 keys not yet in a group, oldest first
  int64_t key_groups_ = 0;
};

// llama.cpp's K/V cache types.
struct GgmlCacheTypes {
  kernels::GgmlType key = kernels::GgmlType::Q8_0;
  kernels::GgmlType value = kernels::GgmlType::Q8_0;
};
// "ggml k=q8_0 v=q4_0" for reports.
std::string describe(const GgmlCacheTypes& t);
// The types llama.cpp accepts for its cache: F32, F16, BF16, Q8_0, Q4_0, Q4_1, IQ4_NL, Q5_0, Q5_1.
std::span<const kernels::GgmlType> ggml_cache_types();

// A cache of one KV head in ggml block types: each token is a row of head_dim values, written and
// read by the ggml codec table (kernels::ggml_codec: the bytes llama.cpp writes).
class BlockQuantizedKV {
 public:
  // head_dim must be a whole number of the types' blocks (32 for the quantized types).
  BlockQuantizedKV(int64_t head_dim, const GgmlCacheTypes& types);

  void append(std::span<const float> key, std::span<const float> value);
  void append(const float* keys, const float* values, int64_t tokens);
  void append(const RowMatrix<float>& keys, const RowMatrix<float>& values);

  int64_t tokens() const { return tokens_; }
  int64_t head_dim() const { return head_dim_; }
  const GgmlCacheTypes& types() const { return types_; }
  std::span<const std::byte> key_blocks() const { return keys_; }
  std::span<const std::byte> value_blocks() const { return values_; }

  RowMatrix<float> keys_dequantized() const;
  RowMatrix<float> values_dequantized() const;
  // tokens * (ggml_row_size(key, head_dim) + ggml_row_size(value, head_dim)).
  uint64_t bytes() const { return static_cast<uint64_t>(keys_.size() + values_.size()); }

 private:
  int64_t head_dim_;
  GgmlCacheTypes types_;
  int64_t tokens_ = 0;
  std::vector<std::byte> keys_, values_;
};

// ---- one byte budget for eviction and quantization ------------------------------------------------
// A cache setting: KIVI or ggml blocks.
using QuantSetting = std::variant<KiviOptions, GgmlCacheTypes>;
std::string describe(const QuantSetting& s);

// Bytes of one head's key and value per cached token once the cache is long, i.e. without the fixed
// float32 window KIVI keeps: per-channel keys cost (codes of a G-token group + 2 head_dim params) / G,
// per-token rows the row's codes plus 2 params per channel group, ggml types their row size.
double bytes_per_token(const QuantSetting& s, int64_t head_dim);
// Exact bytes of one head holding `tokens` tokens: what QuantizedKV / BlockQuantizedKV::bytes()
// report after that many appends (including KIVI's float32 window).
uint64_t cache_bytes(const QuantSetting& s, int64_t head_dim, int64_t tokens);
// The most tokens one head can hold within `bytes`: the largest n with cache_bytes(n) <= bytes, the
// eviction budget that a byte budget allows under a setting. (With per-channel keys cache_bytes is
// not monotone: it drops each time G float32 keys are flushed into a group; no larger n fits.)
int64_t tokens_within(const QuantSetting& s, int64_t head_dim, uint64_t bytes);

// ---- measuring ------------------------------------------------------------------------------------
// Causal scaled dot-product attention of one head: softmax(q k^T / sqrt(head_dim)) v, where query i
// sits at absolute position q_pos0 + i and sees keys 0 .. q_pos0 + i. q [nq, d], k and v [n, d] with
// q_pos0 + nq <= n. Softmax sums in double. The yardstick for a compressed cache: compare the output
// with the exact keys and values to the output with the reconstructed ones.
RowMatrix<float> attention(const RowMatrix<float>& q, const RowMatrix<float>& k, const RowMatrix<float>& v,
                           int64_t q_pos0);

}  // namespace strata::kv
