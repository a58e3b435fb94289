// The ggml codec table: one row per type, its row functions wrapping the per-format kernels of
// ggml_quantize.cc and ggml_dequant.cc, and the checked entry points built on it.
#include "strata/kernels/ggml_codec.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "kernels/cpu/ggml_quantize_legacy.hpp"
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"

namespace strata::kernels {

namespace {

// ---- row functions of the plain types (the block types' are in ggml_dequant.cc and ggml_quantize.cc)

// F16 and BF16 through the SIMD converters (exact, identical to the scalar conversions).
template <class Half, void (*Convert)(const Half*, float*, uint64_t)>
void dequantize_halves(const void* in, int64_t n, float* out) {
  detail::decode_units<Half, 1>(in, n, out,
                                [](const Half* h, float* y, int64_t m) { Convert(h, y, static_cast<uint64_t>(m)); });
}

template <class Half, void (*Convert)(const float*, Half*, uint64_t)>
void quantize_halves(const float* x, int64_t n, void* out, const float* /*importance*/) {
  detail::encode_units<Half>(out, n, [&](Half* y) { Convert(x, y, static_cast<uint64_t>(n)); });
}

void quantize_f32(const float* x, int64_t n, void* out, const float* /*importance*/) {
  std::memcpy(out, x, static_cast<std::size_t>(n) * sizeof(float));
}
void dequantize_f32(const void* in, int64_t n, float* out) {
  std::memcpy(out, in, static_cast<std::size_t>(n) * sizeof(float));
}

// Integers and doubles, read element by element (memcpy: no alignment assumed) and converted as C does.
template <class T>
void dequantize_plain(const void* in, int64_t n, float* out) {
  const auto* bytes = static_cast<const std::byte*>(in);
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, bytes + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
    out[i] = static_cast<float>(v);
  }
}

// ---- the table ----------------------------------------------------------------------------------------

constexpr std::size_t kTypeCount = std::size(kGgmlTypes);

struct RowFns {
  GgmlType type;
  QuantizeRowFn quantize;
  DequantizeRowFn dequantize;
};

// Types strata decodes and, where the second pointer is set, encodes. Every other known type gets a
// row with both null.
constexpr RowFns kRowFns[] = {
    {GgmlType::F32, &quantize_f32, &dequantize_f32},
    {GgmlType::F16, &quantize_halves<f16, convert_f32_to_f16>, &dequantize_halves<f16, convert_f16_to_f32>},
    {GgmlType::BF16, &quantize_halves<bf16, convert_f32_to_bf16>, &dequantize_halves<bf16, convert_bf16_to_f32>},
    {GgmlType::F64, nullptr, &dequantize_plain<double>},
    {GgmlType::I8, nullptr, &dequantize_plain<int8_t>},
    {GgmlType::I16, nullptr, &dequantize_plain<int16_t>},
    {GgmlType::I32, nullptr, &dequantize_plain<int32_t>},
    {GgmlType::I64, nullptr, &dequantize_plain<int64_t>},
    {GgmlType::Q4_0, &detail::quantize_row_q4_0_simd, &detail::dequantize_row_q4_0},
    {GgmlType::Q4_1, &detail::quantize_row_q4_1_simd, &detail::dequantize_row_q4_1},
    {GgmlType::Q5_0, &detail::quantize_row_q5_0_simd, &detail::dequantize_row_q5_0},
    {GgmlType::Q5_1, &detail::quantize_row_q5_1_simd, &detail::dequantize_row_q5_1},
    {GgmlType::Q8_0, &detail::quantize_row_q8_0, &detail::dequantize_row_q8_0},
    {GgmlType::Q2_K, &detail::quantize_row_q2_k_simd, &detail::dequantize_row_q2_k},
    {GgmlType::Q3_K, &detail::quantize_row_q3_k_simd, &detail::dequantize_row_q3_k},
    {GgmlType::Q4_K, &detail::quantize_row_q4_k_simd, &detail::dequantize_row_q4_k},
    {GgmlType::Q5_K, &detail::quantize_row_q5_k_simd, &detail::dequantize_row_q5_k},
    {GgmlType::Q6_K, &detail::quantize_row_q6_k_simd, &detail::dequantize_row_q6_k},
    {GgmlType::Q8_K, nullptr, &detail::dequantize_row_q8_k},
    {GgmlType::IQ4_NL, &detail::quantize_row_iq4_nl_simd, &detail::dequantize_row_iq4_nl},
    {GgmlType::IQ4_XS, nullptr, &detail::dequantize_row_iq4_xs},
};

constexpr std::array<GgmlCodec, kTypeCount> kCodecs = [] {
  std::array<GgmlCodec, kTypeCount> rows{};
  for (std::size_t i = 0; i < kTypeCount; ++i) {
    const GgmlTypeTraits& t = kGgmlTypes[i];
    rows[i] = {t.type, t.name, t.block_size, t.type_size, t.block_size > 1, nullptr, nullptr};
    for (const RowFns& f : kRowFns) {
      if (f.type == t.type) {
        rows[i].quantize_row = f.quantize;
        rows[i].dequantize_row = f.dequantize;
      }
    }
  }
  return rows;
}();

// Row index by type id; -1 for ids ggml does not define. Lookups are per call (per token in a KV
// cache), so they index rather than search.
constexpr uint32_t kIdLimit = [] {
  uint32_t m = 0;
  for (const auto& t : kGgmlTypes) m = std::max(m, static_cast<uint32_t>(t.type) + 1);
  return m;
}();
constexpr std::array<int8_t, kIdLimit> kIndex = [] {
  std::array<int8_t, kIdLimit> a{};
  a.fill(-1);
  for (std::size_t i = 0; i < kTypeCount; ++i) a[static_cast<uint32_t>(kCodecs[i].type)] = static_cast<int8_t>(i);
  return a;
}();

static_assert(std::is_sorted(kCodecs.begin(), kCodecs.end(),
                             [](const GgmlCodec& a, const GgmlCodec& b) { return a.type < b.type; }),
              "kGgmlTypes is listed in type id order, and ggml_codecs() promises that order");

std::string writable_types() {
  std::ostringstream s;
  for (const GgmlCodec& c : kCodecs)
    if (c.can_quantize()) s << ' ' << lower_name(c.type);
  return s.str();
}

}  // namespace

const GgmlCodec* find_ggml_codec(uint32_t id) {
  if (id >= kIdLimit || kIndex[id] < 0) return nullptr;
  return &kCodecs[static_cast<std::size_t>(kIndex[id])];
}

const GgmlCodec& ggml_codec(GgmlType t) {
  const GgmlCodec* c = find_ggml_codec(static_cast<uint32_t>(t));
  require(c != nullptr, "ggml type id ", static_cast<uint32_t>(t), " is unknown");
  return *c;
}

std::span<const GgmlCodec> ggml_codecs() { return kCodecs; }

std::string lower_name(GgmlType t) {
  std::string s(ggml_codec(t).name);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::optional<GgmlType> ggml_type_from_name(std::string_view name) {
  for (const auto& t : kGgmlTypes) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < name.size() && same; ++i) {
      const char a = t.name[i], b = name[i];
      same = a == b || (a >= 'A' && a <= 'Z' && b == a - 'A' + 'a');
    }
    if (same) return t.type;
  }
  return std::nullopt;
}

bool ggml_can_dequantize(GgmlType t) {
  const GgmlCodec* c = find_ggml_codec(static_cast<uint32_t>(t));
  return c != nullptr && c->can_dequantize();
}

uint64_t ggml_nbytes(GgmlType t, int64_t n) {
  const auto* traits = ggml_type_traits(static_cast<uint32_t>(t));
  require(traits != nullptr, "ggml type id ", static_cast<uint32_t>(t), " is unknown");
  require(n >= 0, traits->name, ": negative element count ", n);
  require(n % traits->block_size == 0, traits->name, ": ", n, " elements are not a whole number of ",
          traits->block_size, "-element blocks");
  const uint64_t blocks = static_cast<uint64_t>(n) / traits->block_size;
  require(blocks <= std::numeric_limits<uint64_t>::max() / traits->type_size, traits->name, ": ", n,
          " elements overflow a byte count");
  return blocks * traits->type_size;
}

void dequantize(GgmlType t, std::span<const std::byte> blocks, float* out, int64_t n) {
  const GgmlCodec* c = find_ggml_codec(static_cast<uint32_t>(t));
  require(c != nullptr, "dequantize: ggml type id ", static_cast<uint32_t>(t), " is unknown");
  require(c->can_dequantize(), "dequantize: type ", c->name, " is not supported");
  const uint64_t want = c->row_bytes(n);
  require(blocks.size() == want, "dequantize ", c->name, ": ", n, " elements need ", want, " bytes, got ",
          blocks.size());
  if (n == 0) return;  // `out` may then be null, which memcpy must never see
  c->dequantize_row(blocks.data(), n, out);
}

void quantize_row(GgmlType t, std::span<const float> x, std::span<const float> importance, std::span<std::byte> out) {
  const GgmlCodec& c = ggml_codec(t);
  require(c.can_quantize(), "ggml quantize: type ", c.name, " is not quantizable (supported:", writable_types(), ")");
  const int64_t n = static_cast<int64_t>(x.size());
  detail::check_row_args(c, n, importance);
  const uint64_t bytes = c.row_bytes(n);
  require(out.size() == bytes, "ggml quantize ", lower_name(t), ": a row of ", n, " needs ", bytes,
          " bytes of output, got ", out.size());
  detail::check_finite(x.data(), n, "weight", t, 0);
  c.quantize_row(x.data(), n, out.data(), importance.empty() ? nullptr : importance.data());
}

void detail::check_finite(const float* x, int64_t n, const char* what, GgmlType t, int64_t row) {
  // A NaN or infinity has every exponent bit set; tested on the bits, the loop vectorizes (a loop
  // over std::isfinite does not), which matters where whole tensors stream through it.
  uint32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, x + j, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
  }
  if (!bad) return;
  for (int64_t j = 0; j < n; ++j)
    require(std::isfinite(x[j]), "ggml quantize ", lower_name(t), ": ", what, " value ", x[j], " at row ", row,
            ", column ", j);
}

void detail::check_row_args(const GgmlCodec& c, int64_t n, std::span<const float> importance) {
  require(n > 0 && n % c.block_size == 0, "ggml quantize ", lower_name(c.type), ": row length ", n,
          " is not a positive multiple of the block size ", c.block_size);
  if (importance.empty()) return;
  require(static_cast<int64_t>(importance.size()) == n, "ggml quantize ", lower_name(c.type), ": importance has ",
          importance.size(), " values for rows of ", n);
  check_finite(importance.data(), n, "importance", c.type, 0);
  for (std::size_t j = 0; j < importance.size(); ++j)
    require(importance[j] >= 0, "ggml quantize ", lower_name(c.type), ": negative importance ", importance[j],
            " at column ", j);
}

}  // namespace strata::kernels
