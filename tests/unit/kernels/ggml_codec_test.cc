// The ggml codec table, row by row: its sizes against ggml-common.h's block layouts, every writable
// row's round trip within its format's error bound and its exact byte count, its row functions
// against ggml's own bytes and floats (golden files in shared/data/golden/ggml-quants), and the
// refusals of the checked entry points.
#include "strata/kernels/ggml_codec.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/core/error.hpp"
#include "strata/io/mapped_file.hpp"
#include "test_util.hpp"

namespace strata::kernels {
namespace {

// Bytes per block as ggml-common.h declares the blocks (fp16 fields are 2 bytes, Q8_K's d a float),
// written out field by field, independently of the structs and of the traits table.
const std::map<GgmlType, uint32_t>& layout_bytes() {
  static const std::map<GgmlType, uint32_t> m = {
      {GgmlType::F32, 4},
      {GgmlType::F16, 2},
      {GgmlType::BF16, 2},
      {GgmlType::F64, 8},
      {GgmlType::I8, 1},
      {GgmlType::I16, 2},
      {GgmlType::I32, 4},
      {GgmlType::I64, 8},
      {GgmlType::Q4_0, 2 + 32 / 2},
      {GgmlType::Q4_1, 2 + 2 + 32 / 2},
      {GgmlType::Q5_0, 2 + 4 + 32 / 2},
      {GgmlType::Q5_1, 2 + 2 + 4 + 32 / 2},
      {GgmlType::Q8_0, 2 + 32},
      {GgmlType::Q2_K, 256 / 16 + 256 / 4 + 2 + 2},
      {GgmlType::Q3_K, 256 / 8 + 256 / 4 + 12 + 2},
      {GgmlType::Q4_K, 2 + 2 + 12 + 256 / 2},
      {GgmlType::Q5_K, 2 + 2 + 12 + 256 / 8 + 256 / 2},
      {GgmlType::Q6_K, 256 / 2 + 256 / 4 + 256 / 16 + 2},
      {GgmlType::Q8_K, 4 + 256 + 2 * 256 / 16},
      {GgmlType::IQ4_NL, 2 + 32 / 2},
      {GgmlType::IQ4_XS, 2 + 2 + 256 / 64 + 256 / 2},
  };
  return m;
}

// Bits of each element's code in the formats strata writes; quantization noise scales with 2^-bits.
int code_bits(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K: return 2;
    case GgmlType::Q3_K: return 3;
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q4_K: case GgmlType::IQ4_NL: return 4;
    case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q5_K: return 5;
    case GgmlType::Q6_K: return 6;
    case GgmlType::Q8_0: return 8;
    default: return 0;
  }
}

std::vector<const GgmlCodec*> writable_codecs() {
  std::vector<const GgmlCodec*> out;
  for (const GgmlCodec& c : ggml_codecs())
    if (c.can_quantize()) out.push_back(&c);
  return out;
}

std::vector<float> gaussian(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x) v = g(rng);
  return x;
}

TEST(GgmlCodec, RowsAgreeWithTheBlockLayouts) {
  ASSERT_EQ(ggml_codecs().size(), std::size(kGgmlTypes));
  for (const GgmlCodec& c : ggml_codecs()) {
    SCOPED_TRACE(std::string(c.name));
    EXPECT_EQ(&ggml_codec(c.type), &c);
    EXPECT_EQ(find_ggml_codec(static_cast<uint32_t>(c.type)), &c);
    EXPECT_EQ(ggml_type_from_name(c.name), c.type);
    EXPECT_EQ(c.whole_blocks, c.block_size > 1);
    const auto it = layout_bytes().find(c.type);
    if (it != layout_bytes().end()) {
      EXPECT_EQ(c.type_size, it->second);
    }
    // Everything strata reads or writes has its layout written out above.
    if (c.can_quantize() || c.can_dequantize()) {
      EXPECT_NE(it, layout_bytes().end());
    }
    EXPECT_EQ(c.can_dequantize(), ggml_can_dequantize(c.type));
  }
  // Q8_1 only ever exists inside ggml's dot products: nothing decodes it.
  EXPECT_FALSE(ggml_codec(GgmlType::Q8_1).can_dequantize());
  EXPECT_EQ(find_ggml_codec(4), nullptr);   // Q4_2, removed from ggml
  EXPECT_EQ(find_ggml_codec(36), nullptr);  // removed
  EXPECT_EQ(find_ggml_codec(1u << 20), nullptr);
  EXPECT_THROW(ggml_codec(static_cast<GgmlType>(31)), Error);
  EXPECT_EQ(lower_name(GgmlType::IQ4_NL), "iq4_nl");
  EXPECT_EQ(lower_name(GgmlType::BF16), "bf16");
}

// ---- every writable row ---------------------------------------------------------------------------

class WritableCodec : public ::testing::TestWithParam<const GgmlCodec*> {};

// Round trip within the format's bound, bytes written == row_bytes, checked == unchecked, and any
// alignment giving the same bytes and floats.
TEST_P(WritableCodec, RoundTripWithinBoundAndExactByteCount) {
  const GgmlCodec& c = *GetParam();
  const int64_t n = 1024;  // whole blocks of every type
  const uint64_t bytes = c.row_bytes(n);
  EXPECT_EQ(bytes, static_cast<uint64_t>(n) / c.block_size * layout_bytes().at(c.type));
  const auto x = gaussian(n, 11);
  std::vector<float> imp = gaussian(n, 12);
  for (float& v : imp) v = v * v + 0.01f;  // llama.cpp's imatrix: means of squares

  for (const float* qw : {static_cast<const float*>(nullptr), static_cast<const float*>(imp.data())}) {
    SCOPED_TRACE(qw ? "with importance" : "without importance");
    // Two fills: a byte the quantizer did not write keeps its fill and differs; a byte past the row
    // that it wrote would no longer hold its fill.
    constexpr std::size_t kGuard = 64;
    std::vector<std::byte> a(bytes + kGuard, std::byte{0x00}), b(bytes + kGuard, std::byte{0xFF});
    c.quantize_row(x.data(), n, a.data(), qw);
    c.quantize_row(x.data(), n, b.data(), qw);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), bytes), 0) << "some byte of the row was not written";
    for (std::size_t i = bytes; i < a.size(); ++i) {
      ASSERT_EQ(a[i], std::byte{0x00}) << "wrote past row_bytes at " << i;
      ASSERT_EQ(b[i], std::byte{0xFF}) << "wrote past row_bytes at " << i;
    }

    std::vector<std::byte> checked(bytes);
    quantize_row(c.type, x, qw ? std::span<const float>(imp) : std::span<const float>(), checked);
    EXPECT_EQ(std::memcmp(checked.data(), a.data(), bytes), 0);

    std::vector<float> y(static_cast<std::size_t>(n));
    c.dequantize_row(a.data(), n, y.data());
    double err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double xi = x[static_cast<std::size_t>(i)], d = xi - y[static_cast<std::size_t>(i)];
      err2 += d * d;
      ref2 += xi * xi;
      // Plain float types: one rounding per element, at most half an ulp of the format.
      double ulp_bound = -1;
      if (c.type == GgmlType::F32) ulp_bound = 0;
      if (c.type == GgmlType::F16) ulp_bound = std::ldexp(std::fabs(xi), -11) + std::ldexp(1.0, -25);
      if (c.type == GgmlType::BF16) ulp_bound = std::ldexp(std::fabs(xi), -8);
      if (ulp_bound >= 0) {
        ASSERT_LE(std::fabs(d), ulp_bound) << i;
      }
    }
    if (const int bits = code_bits(c.type)) {
      // A b-bit grid over a block of Gaussian values (range about 5 sigma for 32 of them) has a step
      // of about 5 sigma / (2^b - 1) and an RMS error of step / sqrt(12) ~ 1.5 sigma / (2^b - 1);
      // 2 / (2^b - 1) leaves room for clamped extremes and the 2-bit k-quant's coarse sub-scales.
      EXPECT_LE(std::sqrt(err2 / ref2), 2.0 / ((1 << bits) - 1));
    }

    // Misaligned bytes in and out: the same row.
    std::vector<std::byte> shifted(bytes + 1);
    c.quantize_row(x.data(), n, shifted.data() + 1, qw);
    EXPECT_EQ(std::memcmp(shifted.data() + 1, a.data(), bytes), 0);
    std::vector<float> y_shifted(static_cast<std::size_t>(n));
    c.dequantize_row(shifted.data() + 1, n, y_shifted.data());
    EXPECT_EQ(std::memcmp(y_shifted.data(), y.data(), y.size() * sizeof(float)), 0);
  }
}

// A row that is not whole blocks (or empty) is refused by every checked entry point, naming the type.
TEST_P(WritableCodec, RefusesRowsThatAreNotWholeBlocks) {
  const GgmlCodec& c = *GetParam();
  const auto x = gaussian(4 * c.block_size + 1, 3);
  std::vector<std::byte> out(c.type_size * 8);
  std::vector<float> y(x.size());
  if (c.whole_blocks) {
    for (int64_t n : {int64_t{c.block_size} + 1, int64_t{c.block_size} / 2, 3 * int64_t{c.block_size} - 1}) {
      SCOPED_TRACE(n);
      try {
        c.row_bytes(n);
        FAIL() << "row_bytes accepted " << n << " elements";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(c.name), std::string::npos) << e.what();
      }
      try {
        quantize_row(c.type, std::span<const float>(x.data(), static_cast<std::size_t>(n)), {}, out);
        FAIL() << "quantize_row accepted " << n << " elements";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(lower_name(c.type)), std::string::npos) << e.what();
      }
      EXPECT_THROW(dequantize(c.type, out, y.data(), n), Error);
    }
  }
  EXPECT_THROW(quantize_row(c.type, {}, {}, {}), Error);  // empty row
  EXPECT_THROW(c.row_bytes(-static_cast<int64_t>(c.block_size)), Error);
}

std::string codec_name(const ::testing::TestParamInfo<const GgmlCodec*>& info) { return std::string(info.param->name); }

INSTANTIATE_TEST_SUITE_P(EveryWritableType, WritableCodec, ::testing::ValuesIn(writable_codecs()), codec_name);

TEST(GgmlCodec, CheckedQuantizeRowRefusesBadArguments) {
  const auto x = gaussian(64, 5);
  std::vector<std::byte> out(ggml_row_size(GgmlType::Q4_0, 64));
  EXPECT_NO_THROW(quantize_row(GgmlType::Q4_0, x, {}, out));
  EXPECT_THROW(quantize_row(GgmlType::IQ4_XS, gaussian(256, 1), {}, out), Error);  // read, not written
  EXPECT_THROW(quantize_row(GgmlType::Q8_1, x, {}, out), Error);
  std::vector<std::byte> small(out.size() - 1);
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, x, {}, small), Error);
  std::vector<float> imp(63, 1.0f);
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, x, imp, out), Error);
  imp.assign(64, 1.0f);
  imp[7] = -1.0f;
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, x, imp, out), Error);
  imp[7] = NAN;
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, x, imp, out), Error);
  auto bad = x;
  bad[9] = INFINITY;
  try {
    quantize_row(GgmlType::Q4_0, bad, {}, out);
    FAIL() << "an infinite weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("column 9"), std::string::npos) << e.what();
  }
}

// ---- the rows against ggml's own output ------------------------------------------------------------

std::vector<float> floats_of(const io::MappedFile& f) {
  std::vector<float> out(f.size() / sizeof(float));
  if (!out.empty()) std::memcpy(out.data(), f.bytes().data(), out.size() * sizeof(float));
  return out;
}

// Each golden file through the table's row functions, one row per call as an engine calls them:
// quantize_row gives ggml's bytes, dequantize_row ggml's floats, bit for bit. Every block type the
// table writes must have golden files.
TEST(GgmlCodec, RowFunctionsReproduceGgmlGoldenFiles) {
  const auto dir = strata::testing::shared_data_dir() / "golden" / "ggml-quants";
  STRATA_REQUIRE_FILE(dir / "manifest.json", "the shared golden vectors (shared/data/golden/ggml-quants)");
  std::ifstream in(dir / "manifest.json");
  const auto m = nlohmann::json::parse(in);
  const int64_t rows = m.at("rows").get<int64_t>(), cols = m.at("cols").get<int64_t>();
  const auto imatrix = floats_of(io::MappedFile(dir / "imatrix.f32"));
  ASSERT_EQ(static_cast<int64_t>(imatrix.size()), cols);
  std::map<GgmlType, int> files_per_type;
  for (const auto& f : m.at("files")) {
    const std::string blocks_file = f.at("blocks").get<std::string>();
    SCOPED_TRACE(blocks_file);
    const auto type = ggml_type_from_name(f.at("type").get<std::string>());
    ASSERT_TRUE(type.has_value());
    const GgmlCodec& c = ggml_codec(*type);
    ASSERT_TRUE(c.can_quantize() && c.can_dequantize());
    const auto input = floats_of(io::MappedFile(dir / f.at("input").get<std::string>()));
    const io::MappedFile blocks(dir / blocks_file), floats(dir / f.at("dequantized").get<std::string>());
    const std::byte* want_bytes = blocks.bytes().data();
    const std::byte* want_floats = floats.bytes().data();
    ASSERT_EQ(static_cast<int64_t>(input.size()), rows * cols);
    const uint64_t rb = c.row_bytes(cols);
    ASSERT_EQ(blocks.size(), rb * static_cast<uint64_t>(rows));
    ASSERT_EQ(floats.size(), input.size() * sizeof(float));
    const float* qw = f.at("imatrix").get<bool>() ? imatrix.data() : nullptr;
    std::vector<std::byte> got(rb);
    std::vector<float> back(static_cast<std::size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      c.quantize_row(input.data() + r * cols, cols, got.data(), qw);
      EXPECT_EQ(std::memcmp(got.data(), want_bytes + r * rb, rb), 0) << "row " << r;
      c.dequantize_row(want_bytes + r * rb, cols, back.data());
      EXPECT_EQ(std::memcmp(back.data(), want_floats + r * cols * 4, back.size() * sizeof(float)), 0)
          << "row " << r;
    }
    ++files_per_type[*type];
  }
  for (const GgmlCodec* c : writable_codecs())
    if (c->whole_blocks) {
      EXPECT_GE(files_per_type[c->type], 2) << c->name << " has no golden files";
    }
}

}  // namespace
}  // namespace strata::kernels
