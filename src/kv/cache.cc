#include "strata/kv/cache.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <sstream>

#include "kernels/cpu/attention_decode.hpp"
#include "kernels/cpu/kivi_attention.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/eigen.hpp"
#include "strata/core/error.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/kernels/ggml_matmul.hpp"

namespace strata::kv {

namespace {

constexpr std::array<KvFormat, 6> kFormats = {KvFormat::f32,  KvFormat::f16,   KvFormat::q8_0,
                                              KvFormat::q4_0, KvFormat::kivi2, KvFormat::kivi4};
constexpr int64_t kTile = 64;  // tokens dequantized at a time by attention
// Up to this many queries, attention reads each row once for all of them (kernels/cpu/attention_decode);
// more go through Eigen's matrix products.
constexpr int64_t kFewQueries = 16;

kernels::GgmlType ggml_type(KvFormat f) {
  switch (f) {
    case KvFormat::f16: return kernels::GgmlType::F16;
    case KvFormat::q8_0: return kernels::GgmlType::Q8_0;
    case KvFormat::q4_0: return kernels::GgmlType::Q4_0;
    default: return kernels::GgmlType::F32;
  }
}
// Per-thread scratch of attention and of reading rows back, grown and never shrunk (and aligned as
// Eigen's matrices are): once the threads have seen the largest shapes, a decode step allocates
// nothing. One slot per use that can be live at the same time.
enum Scratch { kQueries, kOutputs, kTileRows, kGroupParams, kScratchSlots };
float* scratch(Scratch slot, int64_t n) {
  static thread_local std::array<Eigen::VectorXf, kScratchSlots> buffers;
  Eigen::VectorXf& b = buffers[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

bool is_ggml(KvFormat f) { return f == KvFormat::f16 || f == KvFormat::q8_0 || f == KvFormat::q4_0; }
int kivi_bits(KvFormat f) { return f == KvFormat::kivi2 ? 2 : 4; }

// ---- KIVI codes ------------------------------------------------------------------------------------
// A group's grid: x' = min + scale * code, code in [0, 2^bits - 1], scale = (max - min) / (2^bits - 1);
// scale and minimum are stored as binary16 (round to nearest) and the codes computed against the
// stored values, so that dequantizing needs nothing else.
struct Grid {
  uint16_t scale_h = 0, min_h = 0;
  float scale = 0, min = 0;
};

Grid make_grid(float lo, float hi, int bits) {
  Grid g;
  g.scale_h = f32_to_f16((hi - lo) / static_cast<float>((1 << bits) - 1)).bits;
  g.min_h = f32_to_f16(lo).bits;
  g.scale = f16_to_f32(f16{g.scale_h});
  g.min = f16_to_f32(f16{g.min_h});
  return g;
}

uint8_t code_of(float x, const Grid& g, int bits) {
  if (!(g.scale > 0.0f)) return 0;
  const float q = std::nearbyint((x - g.min) / g.scale);
  return static_cast<uint8_t>(std::clamp(q, 0.0f, static_cast<float>((1 << bits) - 1)));
}

// Code i of a row sits at bit (i % per) * bits of byte i / per, per = 8 / bits.
void put_code(std::byte* row, int64_t i, uint8_t code, int bits) {
  const int64_t per = 8 / bits;
  row[i / per] |= static_cast<std::byte>(code << ((i % per) * bits));
}
// Every byte's codes as floats, low code first: 4 per byte at 2 bits, 2 per byte at 4 bits.
struct CodeTables {
  float two[256][4];
  float four[256][2];
  CodeTables() {
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < 4; ++i) two[b][i] = static_cast<float>((b >> (2 * i)) & 3);
      for (int i = 0; i < 2; ++i) four[b][i] = static_cast<float>((b >> (4 * i)) & 15);
    }
  }
};
const CodeTables& code_tables() {
  static const CodeTables t;
  return t;
}

// All d codes of a row as floats.
void unpack_codes(const std::byte* row, int64_t d, int bits, float* out) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(row);
  const CodeTables& t = code_tables();
  if (bits == 4) {
    for (int64_t i = 0; i < d / 2; ++i) std::memcpy(out + 2 * i, t.four[b[i]], sizeof t.four[0]);
  } else {
    for (int64_t i = 0; i < d / 4; ++i) std::memcpy(out + 4 * i, t.two[b[i]], sizeof t.two[0]);
  }
}

}  // namespace

// ---- formats -----------------------------------------------------------------------------------------

std::string_view to_string(KvFormat f) {
  switch (f) {
    case KvFormat::f32: return "f32";
    case KvFormat::f16: return "f16";
    case KvFormat::q8_0: return "q8_0";
    case KvFormat::q4_0: return "q4_0";
    case KvFormat::kivi2: return "kivi2";
    case KvFormat::kivi4: return "kivi4";
  }
  return "?";
}

KvFormat parse_kv_format(std::string_view name, std::string_view option) {
  for (KvFormat f : kFormats)
    if (name == to_string(f)) return f;
  fail(option, ": unknown KV cache format '", name, "' (expected f32, f16, q8_0, q4_0, kivi2 or kivi4)");
}

std::span<const KvFormat> kv_formats() { return kFormats; }
bool is_kivi(KvFormat f) { return f == KvFormat::kivi2 || f == KvFormat::kivi4; }

KvFormat CacheFormat::key_format(int layer) const {
  return layers.empty() ? key : layers[static_cast<size_t>(layer)].first;
}
KvFormat CacheFormat::value_format(int layer) const {
  return layers.empty() ? value : layers[static_cast<size_t>(layer)].second;
}

bool CacheFormat::any_kivi() const {
  if (is_kivi(key) && layers.empty()) return true;
  if (is_kivi(value) && layers.empty()) return true;
  for (const auto& [k, v] : layers)
    if (is_kivi(k) || is_kivi(v)) return true;
  return false;
}

bool CacheFormat::full_precision() const {
  if (rotate) return false;
  if (layers.empty()) return key == KvFormat::f32 && value == KvFormat::f32;
  for (const auto& [k, v] : layers)
    if (k != KvFormat::f32 || v != KvFormat::f32) return false;
  return true;
}

void CacheFormat::validate(int64_t n_layers, int64_t head_dim) const {
  require(layers.empty() || static_cast<int64_t>(layers.size()) == n_layers, "kv cache format: 'layers' lists ",
          layers.size(), " layers, the model has ", n_layers);
  require(kivi_group >= 1, "kv cache format: kivi_group must be at least 1, got ", kivi_group);
  require(kivi_residual >= 0, "kv cache format: kivi_residual must be non-negative, got ", kivi_residual);
  require(!rotate || kernels::is_power_of_two(head_dim), "kv cache format: rotate needs a power-of-two head_dim, got ",
          head_dim);
  for (int l = 0; l < n_layers; ++l)
    for (KvFormat f : {key_format(l), value_format(l)}) {
      const bool blocks = f == KvFormat::q8_0 || f == KvFormat::q4_0;
      require(!blocks || head_dim % 32 == 0, "kv cache format: ", to_string(f), " (layer ", l,
              ") needs head_dim a multiple of 32, got ", head_dim);
      require(!is_kivi(f) || head_dim % 4 == 0, "kv cache format: ", to_string(f), " (layer ", l,
              ") needs head_dim a multiple of 4, got ", head_dim);
    }
}

std::string CacheFormat::describe() const {
  std::ostringstream s;
  if (layers.empty()) {
    s << "k=" << to_string(key) << " v=" << to_string(value);
  } else {
    s << "per-layer";
    for (const auto& [k, v] : layers) s << ' ' << to_string(k) << '/' << to_string(v);
  }
  if (any_kivi()) s << " g" << kivi_group << " r" << kivi_residual;
  if (rotate) s << " rot(seed " << rotation_seed << ")";
  return s.str();
}

// ---- the cache -----------------------------------------------------------------------------------------

Cache::Cache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t reserve_tokens, CacheFormat format)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim), format_(std::move(format)) {
  require(n_layers > 0 && n_kv_heads > 0 && head_dim > 0, "kv::Cache: layers (", n_layers, "), KV heads (",
          n_kv_heads, ") and head_dim (", head_dim, ") must be positive");
  require(reserve_tokens >= 0, "kv::Cache: reserve_tokens is negative (", reserve_tokens, ")");
  format_.validate(n_layers, head_dim);
  if (format_.rotate) rotation_.emplace(head_dim, format_.rotation_seed);
  heads_.resize(static_cast<size_t>(n_layers * n_kv_heads));
  if (reserve_tokens > 0)
    for (int l = 0; l < n_layers_; ++l)
      for (int h = 0; h < n_kv_heads_; ++h) reallocate(at(l, h), l, reserve_tokens);
}

Cache::Cache(const Cache& other)
    : n_layers_(other.n_layers_), n_kv_heads_(other.n_kv_heads_), head_dim_(other.head_dim_),
      headroom_(other.headroom_), format_(other.format_), rotation_(other.rotation_) {
  heads_.resize(other.heads_.size());
  const size_t d = static_cast<size_t>(head_dim_);
  for (int l = 0; l < n_layers_; ++l)
    for (int hh = 0; hh < n_kv_heads_; ++hh) {
      const Head& from = other.at(l, hh);
      Head& to = at(l, hh);
      reallocate(to, l, from.capacity);
      const size_t n = static_cast<size_t>(from.length);
      if (n > 0) std::memcpy(to.positions.get(), from.positions.get(), n * sizeof(int64_t));
      to.length = from.length;
      const std::pair<const Rows*, Rows*> streams[2] = {{&from.k, &to.k}, {&from.v, &to.v}};
      for (int s = 0; s < 2; ++s) {
        const Rows& a = *streams[s].first;
        Rows& b = *streams[s].second;
        const KvFormat f = s == 0 ? format_.key_format(l) : format_.value_format(l);
        if (a.window > 0) std::memcpy(b.fp.get(), a.fp.get(), static_cast<size_t>(a.window) * d * sizeof(float));
        if (a.quantized > 0)
          std::memcpy(b.q.get(), a.q.get(), static_cast<size_t>(a.quantized * row_bytes(f, s == 0)));
        // The same capacities, so that bytes() is equal.
        b.group_params.reserve(a.group_params.capacity());
        b.group_params.assign(a.group_params.begin(), a.group_params.end());
        b.group_len.reserve(a.group_len.capacity());
        b.group_len.assign(a.group_len.begin(), a.group_len.end());
        b.quantized = a.quantized;
        b.window = a.window;
      }
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

int64_t Cache::row_bytes(KvFormat f, bool keys) const {
  const int64_t d = head_dim_;
  if (f == KvFormat::f32) return d * 4;
  if (is_ggml(f)) return static_cast<int64_t>(kernels::ggml_codec(ggml_type(f)).row_bytes(d));
  const int64_t codes = d * kivi_bits(f) / 8;
  if (keys) return codes;  // per-channel keys: the parameters live with their group
  const int64_t group = std::min(format_.kivi_group, d);
  return codes + (d + group - 1) / group * 4;
}

int64_t Cache::window_capacity(KvFormat f, bool keys) const {
  if (!is_kivi(f)) return 0;
  return keys ? format_.kivi_residual + format_.kivi_group - 1 : format_.kivi_residual;
}

void Cache::reallocate_rows(Rows& r, KvFormat f, bool keys, int64_t old_capacity, int64_t capacity) const {
  const size_t d = static_cast<size_t>(head_dim_);
  if (capacity == 0) {
    r = Rows{};
    return;
  }
  if (f == KvFormat::f32) {
    auto fp = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(capacity) * d);
    if (r.window > 0) std::memcpy(fp.get(), r.fp.get(), static_cast<size_t>(r.window) * d * sizeof(float));
    r.fp = std::move(fp);
    return;
  }
  const size_t rb = static_cast<size_t>(row_bytes(f, keys));
  auto q = std::make_unique_for_overwrite<std::byte[]>(static_cast<size_t>(capacity) * rb);
  if (r.quantized > 0) std::memcpy(q.get(), r.q.get(), static_cast<size_t>(r.quantized) * rb);
  r.q = std::move(q);
  if (old_capacity == 0 && window_capacity(f, keys) > 0)
    r.fp = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(window_capacity(f, keys)) * d);
}

void Cache::reallocate(Head& h, int layer, int64_t capacity) const {
  if (capacity == h.capacity) return;
  reallocate_rows(h.k, format_.key_format(layer), true, h.capacity, capacity);
  reallocate_rows(h.v, format_.value_format(layer), false, h.capacity, capacity);
  if (capacity == 0) {
    h.positions.reset();
  } else {
    auto positions = std::make_unique_for_overwrite<int64_t[]>(static_cast<size_t>(capacity));
    if (h.length > 0) std::memcpy(positions.get(), h.positions.get(), static_cast<size_t>(h.length) * sizeof(int64_t));
    h.positions = std::move(positions);
  }
  h.capacity = capacity;
}

// Appends `tokens` rows x [tokens, head_dim] (the head's capacity already holds them).
void Cache::push(Rows& r, KvFormat f, bool keys, const float* x, int64_t tokens) const {
  const int64_t d = head_dim_;
  if (f == KvFormat::f32) {
    std::memcpy(r.fp.get() + r.window * d, x, static_cast<size_t>(tokens * d) * sizeof(float));
    r.window += tokens;
    return;
  }
  const int64_t rb = row_bytes(f, keys);
  if (is_ggml(f)) {
    const auto& codec = kernels::ggml_codec(ggml_type(f));
    for (int64_t t = 0; t < tokens; ++t) codec.quantize_row(x + t * d, d, r.q.get() + (r.quantized + t) * rb, nullptr);
    r.quantized += tokens;
    return;
  }
  // KIVI: the window and the new rows in one run, oldest first (row t of the run read in place, so a
  // decode step copies no window); the oldest leave for the codes.
  const int bits = kivi_bits(f);
  const int64_t total = r.window + tokens, R = format_.kivi_residual, G = format_.kivi_group;
  auto run = [&](int64_t t) { return t < r.window ? r.fp.get() + t * d : x + (t - r.window) * d; };
  int64_t flushed = 0;
  if (keys) {
    // Whole groups of G tokens while at least R + G wait: R to R + G - 1 stay in float32.
    const int64_t groups = total >= R + G ? (total - R) / G : 0;
    for (int64_t g = 0; g < groups; ++g) {
      std::byte* codes = r.q.get() + (r.quantized + g * G) * rb;
      std::memset(codes, 0, static_cast<size_t>(G * rb));
      for (int64_t c = 0; c < d; ++c) {
        float lo = run(g * G)[c], hi = lo;
        for (int64_t t = 1; t < G; ++t) {
          lo = std::min(lo, run(g * G + t)[c]);
          hi = std::max(hi, run(g * G + t)[c]);
        }
        const Grid grid = make_grid(lo, hi, bits);
        r.group_params.push_back(grid.scale_h);
        r.group_params.push_back(grid.min_h);
        for (int64_t t = 0; t < G; ++t) put_code(codes + t * rb, c, code_of(run(g * G + t)[c], grid, bits), bits);
      }
      r.group_len.push_back(static_cast<int32_t>(G));
    }
    flushed = groups * G;
  } else {
    // One token at a time while more than R wait: the newest R stay in float32.
    flushed = std::max<int64_t>(total - R, 0);
    const int64_t group = std::min(G, d), n_groups = (d + group - 1) / group, code_bytes = d * bits / 8;
    for (int64_t t = 0; t < flushed; ++t) {
      const float* row = run(t);
      std::byte* out = r.q.get() + (r.quantized + t) * rb;
      std::memset(out, 0, static_cast<size_t>(rb));
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t c0 = g * group, c1 = std::min(c0 + group, d);
        const auto [lo, hi] = std::minmax_element(row + c0, row + c1);
        const Grid grid = make_grid(*lo, *hi, bits);
        for (int64_t c = c0; c < c1; ++c) put_code(out, c, code_of(row[c], grid, bits), bits);
        const uint16_t params[2] = {grid.scale_h, grid.min_h};
        std::memcpy(out + code_bytes + g * 4, params, 4);
      }
    }
  }
  // The rest of the run becomes the window: the old window's rows moved down, then the new rows.
  const int64_t old_kept = std::max<int64_t>(r.window - flushed, 0), new_from = std::max<int64_t>(flushed - r.window, 0);
  if (flushed > 0 && old_kept > 0)
    std::memmove(r.fp.get(), r.fp.get() + flushed * d, static_cast<size_t>(old_kept * d) * sizeof(float));
  if (new_from < tokens)
    std::memcpy(r.fp.get() + old_kept * d, x + new_from * d, static_cast<size_t>((tokens - new_from) * d) * sizeof(float));
  r.quantized += flushed;
  r.window = total - flushed;
}

void Cache::append_head(int layer, int head, float* k, float* v, int64_t tokens, const int64_t* positions) {
  Head& s = at(layer, head);
  const int64_t needed = s.length + tokens;
  if (needed > s.capacity) reallocate(s, layer, std::max(needed + headroom_, s.capacity + s.capacity / 2));
  std::memcpy(s.positions.get() + s.length, positions, static_cast<size_t>(tokens) * sizeof(int64_t));
  if (rotation_) {
    rotation_->rotate(k, tokens, head_dim_);
    rotation_->rotate(v, tokens, head_dim_);
  }
  push(s.k, format_.key_format(layer), true, k, tokens);
  push(s.v, format_.value_format(layer), false, v, tokens);
  s.length = needed;
}

void Cache::append(int layer, const float* k, const float* v, int64_t tokens, int64_t pos0) {
  require(tokens >= 0 && pos0 >= 0, "kv::Cache::append: layer ", layer, ": bad token count ", tokens,
          " or position ", pos0);
  std::vector<int64_t> pos(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) pos[static_cast<size_t>(t)] = pos0 + t;
  append(layer, k, v, pos);
}

void Cache::append(int layer, const float* k, const float* v, std::span<const int64_t> pos) {
  const int64_t tokens = static_cast<int64_t>(pos.size());
  if (tokens == 0) return;
  require(k != nullptr && v != nullptr, "kv::Cache::append: layer ", layer, ": null keys or values");
  for (int64_t t = 0; t < tokens; ++t)
    require(pos[static_cast<size_t>(t)] >= 0 && (t == 0 || pos[static_cast<size_t>(t)] > pos[static_cast<size_t>(t - 1)]),
            "kv::Cache::append: layer ", layer, ": position ", pos[static_cast<size_t>(t)], " of new token ", t,
            " is negative or not after the previous one");
  const int64_t pos0 = pos[0];
  const int64_t stride = n_kv_heads_ * head_dim_, d = head_dim_;
  std::vector<float> kh(static_cast<size_t>(tokens * d)), vh(static_cast<size_t>(tokens * d));
  for (int h = 0; h < n_kv_heads_; ++h) {
    const Head& s = at(layer, h);
    const int64_t last = s.length > 0 ? s.positions[static_cast<size_t>(s.length - 1)] : -1;
    require(last < pos0, "kv::Cache::append: layer ", layer, " head ", h, " already holds position ", last,
            ", new tokens start at ", pos0);
    for (int64_t t = 0; t < tokens; ++t) {
      std::memcpy(kh.data() + t * d, k + t * stride + h * d, static_cast<size_t>(d) * sizeof(float));
      std::memcpy(vh.data() + t * d, v + t * stride + h * d, static_cast<size_t>(d) * sizeof(float));
    }
    append_head(layer, h, kh.data(), vh.data(), tokens, pos.data());
  }
}

Cache Cache::converted(CacheFormat format) const {
  Cache out(n_layers_, n_kv_heads_, head_dim_, 0, std::move(format));
  out.headroom_ = headroom_;
  std::vector<float> k, v;
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_heads_; ++h) {
      const int64_t n = length(l, h);
      if (n == 0) continue;
      k.resize(static_cast<size_t>(n * head_dim_));
      v.resize(static_cast<size_t>(n * head_dim_));
      read_keys(l, h, 0, n, k.data());
      read_values(l, h, 0, n, v.data());
      out.append_head(l, h, k.data(), v.data(), n, at(l, h).positions.get());
    }
  return out;
}

const float* Cache::keys(int layer, int head) const {
  require(format_.key_format(layer) == KvFormat::f32 && !rotation_, "kv::Cache::keys: layer ", layer,
          " stores keys as ", to_string(format_.key_format(layer)), rotation_ ? " rotated" : "",
          "; read them with read_keys");
  return at(layer, head).k.fp.get();
}

const float* Cache::values(int layer, int head) const {
  require(format_.value_format(layer) == KvFormat::f32 && !rotation_, "kv::Cache::values: layer ", layer,
          " stores values as ", to_string(format_.value_format(layer)), rotation_ ? " rotated" : "",
          "; read them with read_values");
  return at(layer, head).v.fp.get();
}

void Cache::read_rows(const Rows& r, KvFormat f, bool keys, int64_t begin, int64_t count, float* out) const {
  const int64_t d = head_dim_, end = begin + count;
  // Quantized rows first.
  const int64_t qend = std::min(end, r.quantized);
  if (begin < qend) {
    const int64_t rb = row_bytes(f, keys);
    if (is_ggml(f)) {
      kernels::ggml_codec(ggml_type(f)).dequantize_row(r.q.get() + begin * rb, (qend - begin) * d, out);
    } else if (keys) {
      const int bits = kivi_bits(f);
      float* scale = scratch(kGroupParams, 2 * d);
      float* min = scale + d;
      int64_t g0 = 0;  // first token of group g
      for (size_t g = 0; g < r.group_len.size() && g0 < qend; g0 += r.group_len[g], ++g) {
        const int64_t g1 = g0 + r.group_len[g];
        if (g1 <= begin) continue;
        const uint16_t* p = r.group_params.data() + g * static_cast<size_t>(2 * d);
        for (int64_t c = 0; c < d; ++c) {
          scale[c] = f16_to_f32(f16{p[2 * c]});
          min[c] = f16_to_f32(f16{p[2 * c + 1]});
        }
        for (int64_t t = std::max(g0, begin); t < std::min(g1, qend); ++t) {
          float* o = out + (t - begin) * d;
          unpack_codes(r.q.get() + t * rb, d, bits, o);
          for (int64_t c = 0; c < d; ++c) o[c] = min[c] + scale[c] * o[c];
        }
      }
    } else {
      const int bits = kivi_bits(f);
      const int64_t group = std::min(format_.kivi_group, d), code_bytes = d * bits / 8;
      for (int64_t t = begin; t < qend; ++t) {
        const std::byte* row = r.q.get() + t * rb;
        float* o = out + (t - begin) * d;
        unpack_codes(row, d, bits, o);
        for (int64_t c0 = 0, g = 0; c0 < d; c0 += group, ++g) {
          uint16_t params[2];
          std::memcpy(params, row + code_bytes + g * 4, 4);
          const float scale = f16_to_f32(f16{params[0]}), min = f16_to_f32(f16{params[1]});
          for (int64_t c = c0; c < std::min(c0 + group, d); ++c) o[c] = min + scale * o[c];
        }
      }
    }
  }
  // Then the float32 rows.
  const int64_t fbegin = std::max(begin, r.quantized);
  if (fbegin < end)
    std::memcpy(out + (fbegin - begin) * d, r.fp.get() + (fbegin - r.quantized) * d,
                static_cast<size_t>((end - fbegin) * d) * sizeof(float));
}

void Cache::read_head(int layer, int head, bool keys, int64_t begin, int64_t count, float* out) const {
  const Head& h = at(layer, head);
  require(begin >= 0 && count >= 0 && begin + count <= h.length, "kv::Cache::", keys ? "read_keys" : "read_values",
          ": tokens [", begin, ", ", begin + count, ") outside the head's ", h.length);
  read_rows(keys ? h.k : h.v, keys ? format_.key_format(layer) : format_.value_format(layer), keys, begin, count, out);
  if (rotation_ && count > 0) rotation_->unrotate(out, count, head_dim_);
}

void Cache::read_keys(int layer, int head, int64_t begin, int64_t count, float* out) const {
  read_head(layer, head, true, begin, count, out);
}

void Cache::read_values(int layer, int head, int64_t begin, int64_t count, float* out) const {
  read_head(layer, head, false, begin, count, out);
}

template <class Fn>
void Cache::for_each_tile(const Rows& r, KvFormat f, bool keys, int64_t begin, int64_t end, Fn&& fn) const {
  const int64_t qend = std::min(end, r.quantized);
  if (begin < qend) {
    float* tile = scratch(kTileRows, kTile * head_dim_);
    for (int64_t t0 = begin; t0 < qend; t0 += kTile) {
      const int64_t m = std::min(kTile, qend - t0);
      read_rows(r, f, keys, t0, m, tile);
      fn(tile, t0, m);
    }
  }
  const int64_t fbegin = std::max(begin, r.quantized);
  if (fbegin < end) fn(r.fp.get() + (fbegin - r.quantized) * head_dim_, fbegin, end - fbegin);
}

void Cache::attend_scores(int layer, int head, const float* q, int64_t n, int64_t q_stride, float scale,
                          float* scores) const {
  const int64_t len = length(layer, head);
  attend_scores(layer, head, q, n, q_stride, scale, 0, len, scores, len);
}

void Cache::attend_values(int layer, int head, const float* probs, int64_t n, float* out, int64_t out_stride) const {
  const int64_t len = length(layer, head);
  attend_values(layer, head, probs, len, n, 0, len, out, out_stride);
}

void Cache::attend_scores(int layer, int head, const float* q, int64_t n, int64_t q_stride, float scale,
                          int64_t begin, int64_t end, float* scores, int64_t score_stride) const {
  const Head& h = at(layer, head);
  require(begin >= 0 && begin <= end && end <= h.length, "kv::Cache::attend_scores: tokens [", begin, ", ", end,
          ") outside the head's ", h.length);
  const int64_t d = head_dim_;
  const KvFormat f = format_.key_format(layer);
  // The queries in the stored basis, contiguous.
  float* qs = scratch(kQueries, n * d);
  for (int64_t i = 0; i < n; ++i) std::memcpy(qs + i * d, q + i * q_stride, static_cast<size_t>(d) * sizeof(float));
  if (rotation_) rotation_->rotate(qs, n, d);
  using Map = Eigen::Map<const RowMatrix<float>>;
  using Out = Eigen::Map<RowMatrix<float>, 0, Eigen::OuterStride<>>;
  // scores[:, t0 .. t0 + m) from m float32 rows.
  auto from_rows = [&](const float* rows, int64_t t0, int64_t m) {
    float* s = scores + (t0 - begin);
    if (n <= kFewQueries) {
      kernels::attention_scores(qs, n, d, rows, m, d, d, scale, s, score_stride);
    } else {
      Out(s, n, m, Eigen::OuterStride<>(score_stride)).noalias() = (Map(qs, n, d) * Map(rows, m, d).transpose()) * scale;
    }
  };
  const Rows& r = h.k;
  const int64_t qend = std::min(end, r.quantized);
  if (begin < qend && (f == KvFormat::q8_0 || f == KvFormat::q4_0) && n <= 16) {
    const int64_t rb = row_bytes(f, true);
    kernels::ggml_matmul(ggml_type(f), r.q.get() + begin * rb, qend - begin, d, qs, n, scores, score_stride);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < qend - begin; ++j) scores[i * score_stride + j] *= scale;
    for_each_tile(r, f, true, qend, end, from_rows);
    return;
  }
  // A few queries score KIVI keys straight from the codes, a key group at a time (each group has
  // its own scales and minimums); many queries are better served by the matrix product over tiles.
  if (begin < qend && is_kivi(f) && n <= kFewQueries) {
    const int64_t rb = row_bytes(f, true);
    const auto* codes = reinterpret_cast<const uint8_t*>(r.q.get());
    int64_t g0 = 0;  // first token of group g
    for (size_t g = 0; g < r.group_len.size() && g0 < qend; g0 += r.group_len[g], ++g) {
      const int64_t t0 = std::max(g0, begin), t1 = std::min(g0 + r.group_len[g], qend);
      if (t0 >= t1) continue;
      kernels::kivi_key_scores(qs, n, d, codes + t0 * rb, t1 - t0, rb, d, kivi_bits(f),
                               r.group_params.data() + g * static_cast<size_t>(2 * d), scale, scores + (t0 - begin),
                               score_stride);
    }
    for_each_tile(r, f, true, qend, end, from_rows);
    return;
  }
  for_each_tile(r, f, true, begin, end, from_rows);
}

void Cache::attend_values(int layer, int head, const float* probs, int64_t prob_stride, int64_t n, int64_t begin,
                          int64_t end, float* out, int64_t out_stride) const {
  const Head& h = at(layer, head);
  require(begin >= 0 && begin <= end && end <= h.length, "kv::Cache::attend_values: tokens [", begin, ", ", end,
          ") outside the head's ", h.length);
  const int64_t d = head_dim_;
  const KvFormat f = format_.value_format(layer);
  float* acc = scratch(kOutputs, n * d);
  std::fill(acc, acc + n * d, 0.0f);
  using Map = Eigen::Map<const RowMatrix<float>>;
  using Probs = Eigen::Map<const RowMatrix<float>, 0, Eigen::OuterStride<>>;
  auto mix = [&](const float* rows, int64_t t0, int64_t m) {
    const float* p = probs + (t0 - begin);
    if (n <= kFewQueries) {
      kernels::attention_values(p, n, prob_stride, rows, m, d, d, acc, d);
    } else {
      Eigen::Map<RowMatrix<float>>(acc, n, d).noalias() += Probs(p, n, m, Eigen::OuterStride<>(prob_stride)) * Map(rows, m, d);
    }
  };
  const Rows& r = h.v;
  const int64_t qend = std::min(end, r.quantized);
  int64_t from = begin;
  // A few queries mix KIVI values straight from the codes; many go through tiles and the matrix product.
  if (begin < qend && is_kivi(f) && n <= kFewQueries) {
    const int64_t rb = row_bytes(f, false);
    kernels::kivi_values(probs, n, prob_stride, reinterpret_cast<const uint8_t*>(r.q.get()) + begin * rb, qend - begin,
                         rb, d, kivi_bits(f), format_.kivi_group, acc, d);
    from = qend;
  }
  for_each_tile(r, f, false, from, end, mix);
  if (rotation_) rotation_->unrotate(acc, n, d);
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * out_stride, acc + i * d, static_cast<size_t>(d) * sizeof(float));
}

std::span<const int64_t> Cache::positions(int layer, int head) const {
  const Head& h = at(layer, head);
  return {h.positions.get(), static_cast<size_t>(h.length)};
}

void Cache::keep_rows(Rows& r, KvFormat f, bool keys, std::span<const int64_t> indices) const {
  const int64_t d = head_dim_, n = static_cast<int64_t>(indices.size());
  // Indices are increasing, so destination i never lies past source indices[i]: moving rows down in
  // order never overwrites a row still to be read.
  int64_t nq = 0;
  if (r.quantized > 0) {
    const int64_t rb = row_bytes(f, keys);
    std::vector<int32_t> kept_per_group(r.group_len.size(), 0);
    size_t g = 0;
    int64_t g_end = r.group_len.empty() ? 0 : r.group_len[0];
    for (; nq < n && indices[static_cast<size_t>(nq)] < r.quantized; ++nq) {
      const int64_t j = indices[static_cast<size_t>(nq)];
      if (j != nq) std::memmove(r.q.get() + nq * rb, r.q.get() + j * rb, static_cast<size_t>(rb));
      if (!r.group_len.empty()) {
        while (j >= g_end) g_end += r.group_len[++g];
        ++kept_per_group[g];
      }
    }
    // Each key group keeps its scale and minimum for the tokens it still holds; an emptied group goes.
    if (!r.group_len.empty()) {
      size_t w = 0;
      for (size_t i = 0; i < r.group_len.size(); ++i) {
        if (kept_per_group[i] == 0) continue;
        if (w != i)
          std::copy_n(r.group_params.begin() + static_cast<std::ptrdiff_t>(i * 2 * d), 2 * d,
                      r.group_params.begin() + static_cast<std::ptrdiff_t>(w * 2 * d));
        r.group_len[w++] = kept_per_group[i];
      }
      r.group_len.resize(w);
      r.group_params.resize(w * static_cast<size_t>(2 * d));
    }
  }
  for (int64_t i = nq; i < n; ++i) {
    const int64_t src = indices[static_cast<size_t>(i)] - r.quantized, dst = i - nq;
    if (src != dst)
      std::memcpy(r.fp.get() + dst * d, r.fp.get() + src * d, static_cast<size_t>(d) * sizeof(float));
  }
  r.quantized = nq;
  r.window = n - nq;
}

void Cache::keep(int layer, int head, std::span<const int64_t> indices) {
  Head& h = at(layer, head);
  const int64_t n = static_cast<int64_t>(indices.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = indices[static_cast<size_t>(i)];
    require(j >= 0 && j < h.length && (i == 0 || j > indices[static_cast<size_t>(i - 1)]), "kv::Cache::keep: layer ",
            layer, " head ", head, ": index ", j, " at ", i, " is not sorted, unique and below the length ", h.length);
  }
  keep_rows(h.k, format_.key_format(layer), true, indices);
  keep_rows(h.v, format_.value_format(layer), false, indices);
  for (int64_t i = 0; i < n; ++i) h.positions[static_cast<size_t>(i)] = h.positions[static_cast<size_t>(indices[static_cast<size_t>(i)])];
  h.length = n;
  if (h.capacity > n + headroom_) reallocate(h, layer, n + headroom_);
}

void Cache::set_headroom(int64_t tokens) {
  require(tokens >= 0, "kv::Cache::set_headroom: negative headroom ", tokens);
  headroom_ = tokens;
}

void Cache::clear() {
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_heads_; ++h) {
      Head& s = at(l, h);
      s.length = 0;
      s.k.quantized = s.k.window = s.v.quantized = s.v.window = 0;
      s.k.group_len.clear();
      s.k.group_params.clear();
      reallocate(s, l, 0);
    }
}

uint64_t Cache::rows_bytes(const Rows& r, KvFormat f, bool keys, int64_t capacity) const {
  if (capacity == 0) return 0;
  uint64_t total = static_cast<uint64_t>(capacity * row_bytes(f, keys));
  if (is_kivi(f)) {
    total += static_cast<uint64_t>(window_capacity(f, keys) * head_dim_) * sizeof(float);
    total += r.group_params.capacity() * sizeof(uint16_t) + r.group_len.capacity() * sizeof(int32_t);
  }
  return total;
}

uint64_t Cache::bytes() const {
  uint64_t total = 0;
  for (int l = 0; l < n_layers_; ++l)
    for (int hh = 0; hh < n_kv_heads_; ++hh) {
      const Head& h = at(l, hh);
      total += static_cast<uint64_t>(h.capacity) * sizeof(int64_t) +
               rows_bytes(h.k, format_.key_format(l), true, h.capacity) +
               rows_bytes(h.v, format_.value_format(l), false, h.capacity);
    }
  return total;
}

uint64_t Cache::bytes_per_token(int layer) const {
  require(layer >= 0 && layer < n_layers_, "kv::Cache::bytes_per_token: layer ", layer, " outside ", n_layers_);
  return static_cast<uint64_t>(row_bytes(format_.key_format(layer), true) +
                               row_bytes(format_.value_format(layer), false)) +
         sizeof(int64_t);
}

int64_t Cache::total_tokens() const {
  int64_t total = 0;
  for (const Head& h : heads_) total += h.length;
  return total;
}

}  // namespace strata::kv
