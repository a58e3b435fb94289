// The scalar dequantizers against ggml's own output (golden files in shared/data/golden/ggml-quants),
// bit for bit, plus the size rules and the error paths of dequantize().
#include "strata/kernels/ggml_dequant.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "test_util.hpp"

namespace strata::kernels {
namespace {

std::vector<std::byte> read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  std::memcpy(out.data(), c.data(), c.size());
  return out;
}

std::filesystem::path golden_dir() { return strata::testing::shared_data_dir() / "golden" / "ggml-quants"; }

TEST(GgmlTypes, TraitsAndNames) {
  EXPECT_EQ(ggml_type_name(GgmlType::Q4_K), "Q4_K");
  EXPECT_EQ(ggml_block_size(GgmlType::Q4_K), 256u);
  EXPECT_EQ(ggml_type_size(GgmlType::Q4_K), 144u);
  EXPECT_EQ(ggml_type_from_name("q4_k"), GgmlType::Q4_K);
  EXPECT_EQ(ggml_type_from_name("IQ4_NL"), GgmlType::IQ4_NL);
  EXPECT_EQ(ggml_type_from_name("bf16"), GgmlType::BF16);
  EXPECT_FALSE(ggml_type_from_name("Q4_2").has_value());
  EXPECT_EQ(ggml_type_traits(4), nullptr);   // Q4_2, removed from ggml
  EXPECT_EQ(ggml_type_traits(31), nullptr);  // Q4_0_4_4, removed
  EXPECT_EQ(ggml_type_traits(1000), nullptr);
  for (const auto& t : kGgmlTypes) {
    EXPECT_EQ(ggml_type_traits(static_cast<uint32_t>(t.type)), &t);
    EXPECT_EQ(ggml_type_from_name(t.name), t.type);
  }
}

TEST(GgmlTypes, Nbytes) {
  EXPECT_EQ(ggml_nbytes(GgmlType::F32, 10), 40u);
  EXPECT_EQ(ggml_nbytes(GgmlType::Q4_0, 64), 36u);
  EXPECT_EQ(ggml_nbytes(GgmlType::Q6_K, 512), 420u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q8_0, 576), 18u * 34u);
  EXPECT_EQ(ggml_nbytes(GgmlType::Q4_K, 0), 0u);
  EXPECT_THROW(ggml_nbytes(GgmlType::Q4_K, 100), Error);
  EXPECT_THROW(ggml_nbytes(GgmlType::F16, -1), Error);
  EXPECT_THROW(ggml_nbytes(GgmlType::F64, std::numeric_limits<int64_t>::max()), Error);
  try {
    ggml_nbytes(GgmlType::Q5_K, 255);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q5_K"), std::string::npos) << e.what();
  }
}

TEST(GgmlDequant, RejectsMismatchedByteCounts) {
  std::vector<std::byte> bytes(18);
  std::vector<float> out(64);
  EXPECT_NO_THROW(dequantize(GgmlType::Q4_0, bytes, out.data(), 32));
  try {
    dequantize(GgmlType::Q4_0, bytes, out.data(), 64);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dequantize(GgmlType::Q4_0, bytes, out.data(), 31), Error);
  EXPECT_THROW(dequantize(GgmlType::IQ2_XXS, std::span<const std::byte>(), out.data(), 0), Error);
  EXPECT_THROW(dequantize(GgmlType::Q8_1, std::vector<std::byte>(36), out.data(), 32), Error);
  // Nothing to decode: no output pointer needed.
  EXPECT_NO_THROW(dequantize(GgmlType::F32, std::span<const std::byte>(), nullptr, 0));
  EXPECT_NO_THROW(dequantize(GgmlType::Q4_K, std::span<const std::byte>(), nullptr, 0));
  EXPECT_THROW(dequantize(static_cast<GgmlType>(4), std::span<const std::byte>(), out.data(), 0), Error);
}

TEST(GgmlDequant, PlainTypes) {
  const float f[3] = {1.5f, -0.0f, 65504.0f};
  std::vector<float> out(3);
  dequantize(GgmlType::F32, std::as_bytes(std::span(f)), out.data(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(f[i]));

  const uint16_t h[3] = {f32_to_f16(1.5f).bits, f32_to_f16(-2.0f).bits, 0x0001};  // incl. a subnormal
  dequantize(GgmlType::F16, std::as_bytes(std::span(h)), out.data(), 3);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -24));

  const uint16_t b[2] = {f32_to_bf16(3.0f).bits, f32_to_bf16(-0.5f).bits};
  dequantize(GgmlType::BF16, std::as_bytes(std::span(b)), out.data(), 2);
  EXPECT_EQ(out[0], 3.0f);
  EXPECT_EQ(out[1], -0.5f);

  const int8_t i8[3] = {-128, 0, 127};
  dequantize(GgmlType::I8, std::as_bytes(std::span(i8)), out.data(), 3);
  EXPECT_EQ(out[0], -128.0f);
  EXPECT_EQ(out[2], 127.0f);
  const double f64[2] = {0.25, -1e300};
  dequantize(GgmlType::F64, std::as_bytes(std::span(f64)), out.data(), 2);
  EXPECT_EQ(out[0], 0.25f);
  EXPECT_TRUE(std::isinf(out[1]));
}

// Hand-built blocks whose values are easy to state.
TEST(GgmlDequant, HandBuiltBlocks) {
  BlockQ4_0 q40{};
  q40.d = f32_to_f16(0.5f).bits;
  for (int j = 0; j < 16; ++j) q40.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  std::vector<float> out(256);
  dequantize(GgmlType::Q4_0, std::as_bytes(std::span(&q40, 1)), out.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.5f * static_cast<float>(j - 8));
    EXPECT_EQ(out[j + 16], 0.5f * static_cast<float>(7 - j));
  }

  BlockQ8_0 q80{};
  q80.d = f32_to_f16(0.25f).bits;
  for (int j = 0; j < 32; ++j) q80.qs[j] = static_cast<int8_t>(j - 16);
  dequantize(GgmlType::Q8_0, std::as_bytes(std::span(&q80, 1)), out.data(), 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 0.25f * static_cast<float>(j - 16));

  BlockIQ4_NL iq{};
  iq.d = f32_to_f16(1.0f).bits;
  for (int j = 0; j < 16; ++j) iq.qs[j] = static_cast<uint8_t>(j | (j << 4));
  dequantize(GgmlType::IQ4_NL, std::as_bytes(std::span(&iq, 1)), out.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], static_cast<float>(kIq4nlValues[j]));
    EXPECT_EQ(out[j + 16], static_cast<float>(kIq4nlValues[j]));
  }

  // Q6_K with every quant at its top value 63 - 32 = 31 and scale s_k = k + 1.
  BlockQ6_K q6{};
  q6.d = f32_to_f16(0.125f).bits;
  std::memset(q6.ql, 0xFF, sizeof q6.ql);
  std::memset(q6.qh, 0xFF, sizeof q6.qh);
  for (int k = 0; k < 16; ++k) q6.scales[k] = static_cast<int8_t>(k + 1);
  dequantize(GgmlType::Q6_K, std::as_bytes(std::span(&q6, 1)), out.data(), 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(out[i], 0.125f * static_cast<float>(i / 16 + 1) * 31.0f) << i;
}

// IQ4_XS has no golden file; its 6-bit sub-block scales (low nibble in scales_l, top two bits in
// scales_h) are checked on values that are easy to state.
TEST(GgmlDequant, IQ4_XSScalePacking) {
  BlockIQ4_XS b{};
  b.d = f32_to_f16(0.5f).bits;
  for (int ib = 0; ib < 8; ++ib) {
    const int ls = 32 + (ib + 1) * ((ib % 2) ? -3 : 2);  // scale (ls - 32) of both signs
    b.scales_l[ib / 2] = static_cast<uint8_t>(b.scales_l[ib / 2] | ((ls & 0xF) << (4 * (ib % 2))));
    b.scales_h = static_cast<uint16_t>(b.scales_h | ((ls >> 4) << (2 * ib)));
  }
  for (int j = 0; j < 128; ++j) b.qs[j] = static_cast<uint8_t>((j % 16) | ((15 - j % 16) << 4));
  std::vector<float> out(256);
  dequantize(GgmlType::IQ4_XS, std::as_bytes(std::span(&b, 1)), out.data(), 256);
  for (int ib = 0; ib < 8; ++ib) {
    const float dl = 0.5f * static_cast<float>((ib + 1) * ((ib % 2) ? -3 : 2));
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(out[32 * ib + j], dl * static_cast<float>(kIq4nlValues[j])) << ib << "," << j;
      EXPECT_EQ(out[32 * ib + j + 16], dl * static_cast<float>(kIq4nlValues[15 - j])) << ib << "," << j;
    }
  }
}

TEST(GgmlDequant, Q8_KUsesAFloatScale) {
  BlockQ8_K b{};
  b.d = 0.1f;  // not representable in binary16: a float scale is read as a float
  for (int j = 0; j < 256; ++j) b.qs[j] = static_cast<int8_t>(j - 128);
  std::vector<float> out(256);
  dequantize(GgmlType::Q8_K, std::as_bytes(std::span(&b, 1)), out.data(), 256);
  for (int j = 0; j < 256; ++j) EXPECT_EQ(out[j], 0.1f * static_cast<float>(j - 128));
}

// Misaligned input takes the staging path and must give the same numbers.
TEST(GgmlDequant, MisalignedInputMatchesAligned) {
  std::mt19937 rng(7);
  const int64_t n = 256 * 70;  // more blocks than one staging chunk
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q8_K, GgmlType::Q4_1, GgmlType::Q6_K}) {
    const uint64_t nbytes = ggml_nbytes(t, n);
    std::vector<std::byte> buf(nbytes + 8);
    for (auto& b : buf) b = static_cast<std::byte>(rng());
    // Keep scales finite so that the comparison below is on numbers, not NaN payloads.
    if (t == GgmlType::Q8_K) {
      for (uint64_t off = 0; off + 292 <= nbytes; off += 292) {
        const float d = 0.01f;
        std::memcpy(buf.data() + 8 + off, &d, 4);
      }
    }
    std::vector<float> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
    std::vector<std::byte> aligned(buf.begin() + 8, buf.end());
    std::vector<std::byte> shifted(nbytes + 1);
    std::memcpy(shifted.data() + 1, aligned.data(), nbytes);
    dequantize(t, aligned, a.data(), n);
    dequantize(t, std::span<const std::byte>(shifted).subspan(1), b.data(), n);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << ggml_type_name(t);
  }
}

// Every golden .bin, dequantized, reproduces ggml's .dequant.f32 bit for bit.
TEST(GgmlDequant, GoldenFilesBitExact) {
  const auto dir = golden_dir();
  STRATA_REQUIRE_FILE(dir / "manifest.json", "the shared golden vectors (shared/data/golden/ggml-quants)");
  std::ifstream in(dir / "manifest.json");
  const auto manifest = nlohmann::json::parse(in);
  const int64_t rows = manifest.at("rows").get<int64_t>();
  const int64_t cols = manifest.at("cols").get<int64_t>();
  int checked = 0;
  for (const auto& f : manifest.at("files")) {
    const std::string type_name = f.at("type").get<std::string>();
    const auto type = ggml_type_from_name(type_name);
    ASSERT_TRUE(type.has_value()) << type_name;
    const auto blocks = read_bytes(dir / f.at("blocks").get<std::string>());
    const auto expected = read_bytes(dir / f.at("dequantized").get<std::string>());
    ASSERT_EQ(blocks.size(), f.at("bytes").get<uint64_t>());
    ASSERT_EQ(blocks.size(), ggml_nbytes(*type, rows * cols));
    ASSERT_EQ(expected.size(), static_cast<std::size_t>(rows * cols) * sizeof(float));

    // Row by row, as a GGUF reader would meet them, and the whole buffer at once.
    std::vector<float> got(static_cast<std::size_t>(rows * cols));
    const uint64_t row_bytes = ggml_row_size(*type, cols);
    for (int64_t r = 0; r < rows; ++r)
      dequantize(*type, std::span<const std::byte>(blocks).subspan(r * row_bytes, row_bytes),
                 got.data() + r * cols, cols);
    int64_t mismatches = 0, first = -1;
    for (std::size_t i = 0; i < got.size(); ++i) {
      uint32_t want;
      std::memcpy(&want, expected.data() + 4 * i, 4);
      if (std::bit_cast<uint32_t>(got[i]) != want) {
        if (first < 0) first = static_cast<int64_t>(i);
        ++mismatches;
      }
    }
    EXPECT_EQ(mismatches, 0) << f.at("blocks").get<std::string>() << ": first mismatch at element " << first;

    std::vector<float> whole(got.size());
    dequantize(*type, blocks, whole.data(), rows * cols);
    EXPECT_EQ(std::memcmp(whole.data(), got.data(), got.size() * sizeof(float)), 0);
    ++checked;
  }
  EXPECT_GE(checked, 40);
}

}  // namespace
}  // namespace strata::kernels
