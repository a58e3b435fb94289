#include "strata/kv/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::kv {

namespace {

using kernels::GgmlType;

int64_t param_size(ParamType p) { return p == ParamType::f16 ? 2 : 4; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t packed_bytes(int64_t codes, int bits) { return ceil_div(codes * bits, 8); }

void check_options(const KiviOptions& o, int64_t head_dim) {
  require(head_dim >= 1, "kv::QuantizedKV: head_dim must be positive, got ", head_dim);
  for (int b : {o.key_bits, o.value_bits})
    require(b == 2 || b == 4 || b == 8, "kv::QuantizedKV: bits must be 2, 4 or 8, got ", b);
  require(o.group >= 1, "kv::QuantizedKV: group must be positive, got ", o.group);
  require(o.residual >= 0, "kv::QuantizedKV: residual must be non-negative, got ", o.residual);
}

// binary16 neighbours of a bit pattern, for rounding in a chosen direction.
uint16_t f16_next_down(uint16_t h) {
  if ((h & 0x7FFFu) == 0) return 0x8001u;
  return (h & 0x8000u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
}
uint16_t f16_next_up(uint16_t h) {
  if ((h & 0x7FFFu) == 0) return 0x0001u;
  return (h & 0x8000u) ? static_cast<uint16_t>(h - 1) : static_cast<uint16_t>(h + 1);
}
bool f16_finite(uint16_t h) { return (h & 0x7C00u) != 0x7C00u; }

// The largest binary16 value <= v and the smallest >= v.
uint16_t f16_round_down(double v) {
  uint16_t h = f32_to_f16(static_cast<float>(v)).bits;
  while (f16_finite(h) && static_cast<double>(f16_to_f32(f16{h})) > v) h = f16_next_down(h);
  return h;
}
uint16_t f16_round_up(double v) {
  uint16_t h = f32_to_f16(static_cast<float>(v)).bits;
  while (f16_finite(h) && static_cast<double>(f16_to_f32(f16{h})) < v) h = f16_next_up(h);
  return h;
}
float round_up_f32(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

struct Grid {
  float scale = 0, min = 0;
};

// Scale and minimum of one group as they will be stored, chosen so that min + L * scale >= max in
// exact arithmetic: then every element lies on [min, min + L scale] and rounds to within scale / 2.
Grid fit_grid(const float* x, int64_t n, int64_t stride, int bits, ParamType pt) {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  const double levels = static_cast<double>((1 << bits) - 1);
  Grid g;
  if (pt == ParamType::f32) {
    g.min = lo;
    g.scale = round_up_f32((static_cast<double>(hi) - lo) / levels);
    return g;
  }
  const uint16_t mh = f16_round_down(lo);
  require(f16_finite(mh) && f16_finite(f32_to_f16(hi).bits) && std::fabs(hi) <= 65504.0f,
          "kv::QuantizedKV: values in [", lo, ", ", hi, "] exceed binary16's range of parameters (use ParamType::f32)");
  g.min = f16_to_f32(f16{mh});
  uint16_t sh = f16_round_up((static_cast<double>(hi) - g.min) / levels);
  while (static_cast<double>(g.min) + levels * f16_to_f32(f16{sh}) < hi) sh = f16_next_up(sh);
  require(f16_finite(sh), "kv::QuantizedKV: the range [", lo, ", ", hi,
          "] needs a scale beyond binary16 (use ParamType::f32)");
  g.scale = f16_to_f32(f16{sh});
  return g;
}

uint8_t quantize_value(float x, const Grid& g, int bits) {
  if (g.scale == 0.0f) return 0;
  const double q = std::nearbyint((static_cast<double>(x) - g.min) / g.scale);
  return static_cast<uint8_t>(std::clamp(q, 0.0, static_cast<double>((1 << bits) - 1)));
}
float dequantize_value(uint8_t q, const Grid& g) {
  return static_cast<float>(static_cast<double>(g.min) + static_cast<double>(g.scale) * q);
}

// Codes packed little-end first: code i sits at bit (i * bits) % 8 of byte i * bits / 8 (bits
// divides 8, so none straddles two bytes).
void put_code(uint8_t* packed, int64_t i, uint8_t q, int bits) {
  const int64_t per = 8 / bits;
  packed[i / per] |= static_cast<uint8_t>(q << ((i % per) * bits));
}
uint8_t get_code(const uint8_t* packed, int64_t i, int bits) {
  const int64_t per = 8 / bits;
  return static_cast<uint8_t>((packed[i / per] >> ((i % per) * bits)) & ((1 << bits) - 1));
}

void put_grid(std::vector<std::byte>& out, const Grid& g, ParamType pt) {
  const size_t at = out.size();
  if (pt == ParamType::f16) {
    const uint16_t v[2] = {f32_to_f16(g.scale).bits, f32_to_f16(g.min).bits};
    out.resize(at + sizeof v);
    std::memcpy(out.data() + at, v, sizeof v);
  } else {
    const float v[2] = {g.scale, g.min};
    out.resize(at + sizeof v);
    std::memcpy(out.data() + at, v, sizeof v);
  }
}
Grid get_grid(const std::vector<std::byte>& in, int64_t index, ParamType pt) {
  Grid g;
  if (pt == ParamType::f16) {
    uint16_t v[2];
    std::memcpy(v, in.data() + index * sizeof v, sizeof v);
    g.scale = f16_to_f32(f16{v[0]});
    g.min = f16_to_f32(f16{v[1]});
  } else {
    float v[2];
    std::memcpy(v, in.data() + index * sizeof v, sizeof v);
    g.scale = v[0];
    g.min = v[1];
  }
  return g;
}

void check_row(std::span<const float> row, int64_t head_dim, const char* what) {
  require(static_cast<int64_t>(row.size()) == head_dim, "kv: ", what, " row has ", row.size(),
          " values, expected head_dim = ", head_dim);
  for (size_t i = 0; i < row.size(); ++i)
    require(std::isfinite(row[i]), "kv: ", what, " row has a non-finite value (", row[i], ") at channel ", i);
}

// Bytes of one per-token quantized row and of `n` of them with `fp` more in float32.
uint64_t token_rows_bytes(int64_t quantized, int64_t fp, int64_t head_dim, int bits, int64_t group, ParamType pt) {
  const int64_t row = packed_bytes(head_dim, bits) + ceil_div(head_dim, group) * 2 * param_size(pt);
  return static_cast<uint64_t>(quantized * row + fp * head_dim * 4);
}

}  // namespace

std::string to_string(KeyMode m) { return m == KeyMode::per_channel ? "per-channel" : "per-token"; }

std::string describe(const KiviOptions& o) {
  std::ostringstream s;
  s << "kivi k" << o.key_bits << "v" << o.value_bits << " g" << o.group << " r" << o.residual << ' '
    << to_string(o.key_mode) << ' ' << (o.params == ParamType::f16 ? "f16" : "f32");
  return s.str();
}

// ---- QuantizedKV ------------------------------------------------------------------------------------

QuantizedKV::QuantizedKV(int64_t head_dim, const KiviOptions& options) : head_dim_(head_dim), opt_(options) {
  check_options(opt_, head_dim_);
}

void QuantizedKV::append(std::span<const float> key, std::span<const float> value) {
  check_row(key, head_dim_, "key");
  check_row(value, head_dim_, "value");
  if (opt_.key_mode == KeyMode::per_channel) {
    key_pending_.insert(key_pending_.end(), key.begin(), key.end());
    if (static_cast<int64_t>(key_pending_.size()) == (opt_.residual + opt_.group) * head_dim_) flush_key_group();
  } else {
    push_token_row(token_keys_, key.data(), opt_.key_bits);
  }
  push_token_row(values_, value.data(), opt_.value_bits);
  ++tokens_;
}

void QuantizedKV::append(const float* keys, const float* values, int64_t tokens) {
  require(tokens >= 0, "kv::QuantizedKV::append: negative token count ", tokens);
  for (int64_t t = 0; t < tokens; ++t)
    append(std::span<const float>(keys + t * head_dim_, static_cast<size_t>(head_dim_)),
           std::span<const float>(values + t * head_dim_, static_cast<size_t>(head_dim_)));
}

void QuantizedKV::append(const RowMatrix<float>& keys, const RowMatrix<float>& values) {
  require(keys.cols() == head_dim_ && values.cols() == head_dim_ && keys.rows() == values.rows(),
          "kv::QuantizedKV::append: keys [", keys.rows(), ", ", keys.cols(), "] and values [", values.rows(), ", ",
          values.cols(), "] must both be [tokens, ", head_dim_, "]");
  append(keys.data(), values.data(), keys.rows());
}

void QuantizedKV::push_token_row(TokenRows& rows, const float* x, int bits) {
  rows.pending.insert(rows.pending.end(), x, x + head_dim_);
  if (static_cast<int64_t>(rows.pending.size()) > opt_.residual * head_dim_) flush_token_row(rows, bits);
}

void QuantizedKV::flush_token_row(TokenRows& rows, int bits) {
  const int64_t d = head_dim_, g = opt_.group;
  const size_t at = rows.codes.size();
  rows.codes.resize(at + static_cast<size_t>(packed_bytes(d, bits)), 0);
  uint8_t* packed = rows.codes.data() + at;
  const float* x = rows.pending.data();
  for (int64_t c0 = 0; c0 < d; c0 += g) {
    const int64_t n = std::min(g, d - c0);
    const Grid grid = fit_grid(x + c0, n, 1, bits, opt_.params);
    put_grid(rows.params, grid, opt_.params);
    for (int64_t c = c0; c < c0 + n; ++c) put_code(packed, c, quantize_value(x[c], grid, bits), bits);
  }
  rows.pending.erase(rows.pending.begin(), rows.pending.begin() + d);
  ++rows.quantized;
}

void QuantizedKV::flush_key_group() {
  const int64_t d = head_dim_, g = opt_.group, bits = opt_.key_bits;
  const size_t at = key_codes_.size();
  key_codes_.resize(at + static_cast<size_t>(packed_bytes(g * d, static_cast<int>(bits))), 0);
  uint8_t* packed = key_codes_.data() + at;
  const float* x = key_pending_.data();
  for (int64_t c = 0; c < d; ++c) {
    const Grid grid = fit_grid(x + c, g, d, static_cast<int>(bits), opt_.params);
    put_grid(key_params_, grid, opt_.params);
    for (int64_t t = 0; t < g; ++t)
      put_code(packed, t * d + c, quantize_value(x[t * d + c], grid, static_cast<int>(bits)), static_cast<int>(bits));
  }
  key_pending_.erase(key_pending_.begin(), key_pending_.begin() + g * d);
  ++key_groups_;
}

int64_t QuantizedKV::key_quantized_tokens() const {
  return opt_.key_mode == KeyMode::per_channel ? key_groups_ * opt_.group : token_keys_.quantized;
}
int64_t QuantizedKV::value_quantized_tokens() const { return values_.quantized; }

RowMatrix<float> QuantizedKV::dequantize_rows(const TokenRows& rows, int bits) const {
  const int64_t d = head_dim_, g = opt_.group, groups = ceil_div(d, g), row_bytes = packed_bytes(d, bits);
  RowMatrix<float> out(tokens_, d);
  for (int64_t t = 0; t < rows.quantized; ++t) {
    const uint8_t* packed = rows.codes.data() + t * row_bytes;
    for (int64_t j = 0; j < groups; ++j) {
      const Grid grid = get_grid(rows.params, t * groups + j, opt_.params);
      for (int64_t c = j * g; c < std::min(d, (j + 1) * g); ++c) out(t, c) = dequantize_value(get_code(packed, c, bits), grid);
    }
  }
  const int64_t fp = tokens_ - rows.quantized;
  if (fp > 0) std::memcpy(out.data() + rows.quantized * d, rows.pending.data(), static_cast<size_t>(fp * d) * sizeof(float));
  return out;
}

RowMatrix<float> QuantizedKV::keys_dequantized() const {
  if (opt_.key_mode == KeyMode::per_token) return dequantize_rows(token_keys_, opt_.key_bits);
  const int64_t d = head_dim_, g = opt_.group, bits = opt_.key_bits;
  const int64_t group_bytes = packed_bytes(g * d, static_cast<int>(bits));
  RowMatrix<float> out(tokens_, d);
  for (int64_t k = 0; k < key_groups_; ++k) {
    const uint8_t* packed = key_codes_.data() + k * group_bytes;
    for (int64_t c = 0; c < d; ++c) {
      const Grid grid = get_grid(key_params_, k * d + c, opt_.params);
      for (int64_t t = 0; t < g; ++t)
        out(k * g + t, c) = dequantize_value(get_code(packed, t * d + c, static_cast<int>(bits)), grid);
    }
  }
  const int64_t q = key_groups_ * g;
  if (tokens_ > q)
    std::memcpy(out.data() + q * d, key_pending_.data(), static_cast<size_t>((tokens_ - q) * d) * sizeof(float));
  return out;
}

RowMatrix<float> QuantizedKV::values_dequantized() const { return dequantize_rows(values_, opt_.value_bits); }

float QuantizedKV::token_row_scale(const TokenRows& rows, int64_t token, int64_t channel) const {
  if (token >= rows.quantized) return 0.0f;
  const int64_t groups = ceil_div(head_dim_, opt_.group);
  return get_grid(rows.params, token * groups + channel / opt_.group, opt_.params).scale;
}

float QuantizedKV::key_scale(int64_t token, int64_t channel) const {
  require(token >= 0 && token < tokens_ && channel >= 0 && channel < head_dim_, "kv::QuantizedKV::key_scale: (",
          token, ", ", channel, ") outside [", tokens_, ", ", head_dim_, "]");
  if (opt_.key_mode == KeyMode::per_token) return token_row_scale(token_keys_, token, channel);
  if (token >= key_groups_ * opt_.group) return 0.0f;
  return get_grid(key_params_, (token / opt_.group) * head_dim_ + channel, opt_.params).scale;
}

float QuantizedKV::value_scale(int64_t token, int64_t channel) const {
  require(token >= 0 && token < tokens_ && channel >= 0 && channel < head_dim_, "kv::QuantizedKV::value_scale: (",
          token, ", ", channel, ") outside [", tokens_, ", ", head_dim_, "]");
  return token_row_scale(values_, token, channel);
}

uint64_t QuantizedKV::bytes() const {
  uint64_t b = key_codes_.size() + key_params_.size() + key_pending_.size() * sizeof(float);
  for (const TokenRows* r : {&values_, &token_keys_})
    b += r->codes.size() + r->params.size() + r->pending.size() * sizeof(float);
  return b;
}

// ---- ggml block types ---------------------------------------------------------------------------------

namespace {

constexpr GgmlType kCacheTypes[] = {GgmlType::F32,  GgmlType::F16,    GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                                    GgmlType::Q4_1, GgmlType::IQ4_NL, GgmlType::Q5_0, GgmlType::Q5_1};

void check_cache_type(GgmlType t, int64_t head_dim, const char* which) {
  require(std::find(std::begin(kCacheTypes), std::end(kCacheTypes), t) != std::end(kCacheTypes),
          "kv::BlockQuantizedKV: ", which, " type ", kernels::ggml_type_name(t),
          " is not a llama.cpp cache type (f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)");
  require(head_dim >= 1 && head_dim % kernels::ggml_block_size(t) == 0, "kv::BlockQuantizedKV: head_dim ", head_dim,
          " is not a whole number of ", kernels::ggml_type_name(t), " blocks (", kernels::ggml_block_size(t), ")");
}

// check_cache_type() and check_row() have vetted the type, the row length and the values, so the
// codec's unchecked row function writes the token.
void write_row(const kernels::GgmlCodec& codec, const float* x, int64_t n, std::vector<std::byte>& out) {
  const size_t at = out.size();
  out.resize(at + codec.row_bytes(n));
  codec.quantize_row(x, n, out.data() + at, nullptr);
}

RowMatrix<float> read_rows(GgmlType t, const std::vector<std::byte>& blocks, int64_t tokens, int64_t d) {
  RowMatrix<float> out(tokens, d);
  if (tokens > 0) kernels::dequantize(t, blocks, out.data(), tokens * d);
  return out;
}

}  // namespace

std::string describe(const GgmlCacheTypes& t) {
  return "ggml k=" + kernels::lower_name(t.key) + " v=" + kernels::lower_name(t.value);
}

std::span<const kernels::GgmlType> ggml_cache_types() { return kCacheTypes; }

BlockQuantizedKV::BlockQuantizedKV(int64_t head_dim, const GgmlCacheTypes& types) : head_dim_(head_dim), types_(types) {
  check_cache_type(types.key, head_dim, "key");
  check_cache_type(types.value, head_dim, "value");
}

void BlockQuantizedKV::append(std::span<const float> key, std::span<const float> value) {
  check_row(key, head_dim_, "key");
  check_row(value, head_dim_, "value");
  write_row(kernels::ggml_codec(types_.key), key.data(), head_dim_, keys_);
  write_row(kernels::ggml_codec(types_.value), value.data(), head_dim_, values_);
  ++tokens_;
}

void BlockQuantizedKV::append(const float* keys, const float* values, int64_t tokens) {
  require(tokens >= 0, "kv::BlockQuantizedKV::append: negative token count ", tokens);
  for (int64_t t = 0; t < tokens; ++t)
    append(std::span<const float>(keys + t * head_dim_, static_cast<size_t>(head_dim_)),
           std::span<const float>(values + t * head_dim_, static_cast<size_t>(head_dim_)));
}

void BlockQuantizedKV::append(const RowMatrix<float>& keys, const RowMatrix<float>& values) {
  require(keys.cols() == head_dim_ && values.cols() == head_dim_ && keys.rows() == values.rows(),
          "kv::BlockQuantizedKV::append: keys [", keys.rows(), ", ", keys.cols(), "] and values [", values.rows(),
          ", ", values.cols(), "] must both be [tokens, ", head_dim_, "]");
  append(keys.data(), values.data(), keys.rows());
}

RowMatrix<float> BlockQuantizedKV::keys_dequantized() const { return read_rows(types_.key, keys_, tokens_, head_dim_); }
RowMatrix<float> BlockQuantizedKV::values_dequantized() const {
  return read_rows(types_.value, values_, tokens_, head_dim_);
}

// ---- byte budget ------------------------------------------------------------------------------------------

std::string describe(const QuantSetting& s) {
  return std::visit([](const auto& v) { return describe(v); }, s);
}

double bytes_per_token(const QuantSetting& s, int64_t head_dim) {
  require(head_dim >= 1, "kv::bytes_per_token: head_dim must be positive, got ", head_dim);
  if (const auto* g = std::get_if<GgmlCacheTypes>(&s)) {
    check_cache_type(g->key, head_dim, "key");
    check_cache_type(g->value, head_dim, "value");
    return static_cast<double>(kernels::ggml_row_size(g->key, head_dim) + kernels::ggml_row_size(g->value, head_dim));
  }
  const auto& o = std::get<KiviOptions>(s);
  check_options(o, head_dim);
  const double values = static_cast<double>(token_rows_bytes(1, 0, head_dim, o.value_bits, o.group, o.params));
  if (o.key_mode == KeyMode::per_token)
    return values + static_cast<double>(token_rows_bytes(1, 0, head_dim, o.key_bits, o.group, o.params));
  const double group = static_cast<double>(packed_bytes(o.group * head_dim, o.key_bits) + head_dim * 2 * param_size(o.params));
  return values + group / static_cast<double>(o.group);
}

uint64_t cache_bytes(const QuantSetting& s, int64_t head_dim, int64_t tokens) {
  require(tokens >= 0, "kv::cache_bytes: negative token count ", tokens);
  if (std::holds_alternative<GgmlCacheTypes>(s))
    return static_cast<uint64_t>(tokens) * static_cast<uint64_t>(bytes_per_token(s, head_dim));
  const auto& o = std::get<KiviOptions>(s);
  check_options(o, head_dim);
  const int64_t q_rows = std::max<int64_t>(0, tokens - o.residual);
  uint64_t b = token_rows_bytes(q_rows, tokens - q_rows, head_dim, o.value_bits, o.group, o.params);
  if (o.key_mode == KeyMode::per_token) return b + token_rows_bytes(q_rows, tokens - q_rows, head_dim, o.key_bits, o.group, o.params);
  const int64_t groups = tokens > o.residual ? (tokens - o.residual) / o.group : 0;
  const int64_t fp = tokens - groups * o.group;
  return b + static_cast<uint64_t>(groups * (packed_bytes(o.group * head_dim, o.key_bits) + head_dim * 2 * param_size(o.params)) +
                                   fp * head_dim * 4);
}

int64_t tokens_within(const QuantSetting& s, int64_t head_dim, uint64_t bytes) {
  // cache_bytes is not monotone: a flushed key group replaces G float32 rows with packed codes, so
  // the count drops. From n0 = R on it is periodic plus linear instead: G more tokens always add one
  // key group (or G per-token key rows) and G value rows, the same `period` bytes. Below n0 every
  // count is tried; above it, each residue class mod G is linear in the number of periods.
  int64_t n0 = 0, g = 1;
  if (const auto* o = std::get_if<KiviOptions>(&s)) {
    n0 = o->residual;
    g = o->group;
  }
  const uint64_t base = cache_bytes(s, head_dim, n0), period = cache_bytes(s, head_dim, n0 + g) - base;
  int64_t best = 0;
  for (int64_t n = 1; n < n0; ++n)
    if (cache_bytes(s, head_dim, n) <= bytes) best = n;
  for (int64_t j = 0; j < g; ++j) {
    const uint64_t first = cache_bytes(s, head_dim, n0 + j);
    if (first > bytes) continue;
    const int64_t periods = static_cast<int64_t>((bytes - first) / period);
    best = std::max(best, n0 + j + periods * g);
  }
  return best;
}

// ---- attention ----------------------------------------------------------------------------------------------

RowMatrix<float> attention(const RowMatrix<float>& q, const RowMatrix<float>& k, const RowMatrix<float>& v,
                           int64_t q_pos0) {
  const int64_t nq = q.rows(), d = q.cols(), n = k.rows();
  require(k.cols() == d && v.cols() == d && v.rows() == n, "kv::attention: q [", nq, ", ", d, "], k [", n, ", ",
          k.cols(), "] and v [", v.rows(), ", ", v.cols(), "] disagree");
  require(q_pos0 >= 0 && q_pos0 + nq <= n, "kv::attention: queries at positions ", q_pos0, "..", q_pos0 + nq - 1,
          " need that many keys, have ", n);
  const int64_t visible_max = q_pos0 + nq;
  const RowMatrix<float> scores =
      (q * k.topRows(visible_max).transpose()) * (1.0f / std::sqrt(static_cast<float>(d)));
  RowMatrix<float> probs = RowMatrix<float>::Zero(nq, visible_max);
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t visible = q_pos0 + i + 1;
    const float mx = scores.row(i).head(visible).maxCoeff();
    double sum = 0;
    for (int64_t j = 0; j < visible; ++j) {
      probs(i, j) = std::exp(scores(i, j) - mx);
      sum += probs(i, j);
    }
    probs.row(i).head(visible) *= static_cast<float>(1.0 / sum);
  }
  return probs * v.topRows(visible_max);
}

}  // namespace strata::kv
