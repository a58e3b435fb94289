// The quantizable types, llama.cpp's fallback rule and whole-matrix quantization; the row formats
// themselves are the kernels' codec table (src/kernels/cpu/ggml_quantize.cc).
#include "strata/compress/ggml/quantize.hpp"

#include <algorithm>
#include <array>
#include <sstream>

#include "kernels/cpu/ggml_rows.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::ggml {

namespace {

constexpr std::array<GgmlType, 11> kQuantizable = {
    GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL,
    GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

std::string quantizable_list() {
  std::ostringstream known;
  for (GgmlType q : kQuantizable) known << ' ' << lower_name(q);
  return known.str();
}

}  // namespace

std::span<const GgmlType> quantizable_types() { return kQuantizable; }

bool can_quantize(GgmlType t) { return std::find(kQuantizable.begin(), kQuantizable.end(), t) != kQuantizable.end(); }

GgmlType quantizable_type(std::string_view name) {
  const auto t = kernels::ggml_type_from_name(name);
  if (t && can_quantize(*t)) return *t;
  fail("unknown or unsupported ggml type '", name, "'; quantizable types:", quantizable_list());
}

GgmlType fallback_type(GgmlType wanted, int64_t cols) {
  require(cols > 0, "fallback_type: ", cols, " columns");
  if (cols % kernels::ggml_block_size(wanted) == 0) return wanted;
  GgmlType t;
  switch (wanted) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::IQ4_XS: t = GgmlType::IQ4_NL; break;
    case GgmlType::Q4_K: t = GgmlType::Q5_0; break;
    case GgmlType::Q5_K: t = GgmlType::Q5_1; break;
    case GgmlType::Q6_K: t = GgmlType::Q8_0; break;
    default:
      fail("fallback_type: ", cols, " columns do not fit ", lower_name(wanted), ", and llama.cpp has no fallback for it");
  }
  return cols % kernels::ggml_block_size(t) == 0 ? t : GgmlType::F16;
}

namespace {

// The checks both entry points make before writing anything; returns the bytes of one row.
uint64_t checked_row_bytes(GgmlType t, int64_t rows, int64_t cols, std::span<const float> importance) {
  require(can_quantize(t), "ggml quantize: type ", kernels::ggml_type_name(t), " is not quantizable (supported:",
          quantizable_list(), ")");
  const kernels::GgmlCodec& codec = kernels::ggml_codec(t);
  kernels::detail::check_row_args(codec, cols, importance);
  require(rows >= 0, "ggml quantize ", lower_name(t), ": negative row count ", rows);
  return codec.row_bytes(cols);
}

}  // namespace

void quantize(GgmlType t, const float* x, int64_t rows, int64_t cols, std::span<const float> importance,
              std::span<std::byte> out) {
  const uint64_t row_bytes = checked_row_bytes(t, rows, cols, importance);
  require(out.size() == row_bytes * static_cast<uint64_t>(rows), "ggml quantize ", lower_name(t), ": output of ",
          out.size(), " bytes for ", rows, " rows of ", row_bytes, " bytes");
  const kernels::GgmlCodec& codec = kernels::ggml_codec(t);
  const float* qw = importance.empty() ? nullptr : importance.data();
  // A few rows per chunk: enough work to amortise scheduling, small enough to balance two cores.
  const int64_t chunk = std::max<int64_t>(1, 16384 / cols);
  parallel_for(rows, chunk, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * cols;
      // Checked after the row is quantized, from the cache: checked first, a matrix larger than the
      // caches would be read from memory at the pace of the check, with nothing to overlap it. The
      // quantizers give defined bytes for any float, and a non-finite row still throws.
      codec.quantize_row(xr, cols, out.data() + static_cast<uint64_t>(r) * row_bytes, qw);
      kernels::detail::check_finite(xr, cols, "weight", t, r);
    }
  });
}

std::vector<std::byte> quantize(GgmlType t, const float* x, int64_t rows, int64_t cols, std::span<const float> importance) {
  std::vector<std::byte> out(checked_row_bytes(t, rows, cols, importance) * static_cast<uint64_t>(rows));
  quantize(t, x, rows, cols, importance, out);
  return out;
}

}  // namespace strata::compress::ggml
