// The SIMD quantizers of the 32-element block types (Q4_0, Q4_1, Q5_0 and Q5_1 with importance,
// IQ4_NL with and without), on every Highway target this CPU supports, against the scalar references
// of ggml_quantize.cc: the same bytes for hand-made corner rows, for many random rows of mixed
// blocks, and for SmolLM2's dequantized weights when the model is present; then the codec table's
// routing (misaligned output included) and the whole-tensor path at one and two threads.
//
// STRATA_QUANT_LEGACY_BLOCKS=N raises the random blocks (each through every type) from 60,000 to N;
// STRATA_QUANT_LEGACY_MODEL_ROWS=N takes N rows of every SmolLM2 matrix instead of 16 (0: every row).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ggml_quant_legacy_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ggml_quantize_legacy-inl.h"
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "quantize_check.hpp"
#include "test_util.hpp"

#ifndef STRATA_GGML_QUANT_LEGACY_TEST_ONCE
#define STRATA_GGML_QUANT_LEGACY_TEST_ONCE
namespace strata::legacy_test {

struct Row {
  std::string name;
  std::vector<float> x;
};

// Rows of the searches' corners: ordinary and heavy-tailed weights, all-zero and constant blocks,
// negative-only and positive-only data, values near the float limits (tiny ranges overflow iscale,
// huge values overflow x^2 and the importance weights), lone outliers, grid values (exact ties).
inline std::vector<Row> rows() {
  std::vector<Row> out;
  std::mt19937 rng(4321);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::cauchy_distribution<float> cauchy(0.f, 0.01f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::uniform_int_distribution<int> grid(-16, 16);
  for (int64_t n : {32, 64, 96, 576, 1536, 4096}) {
    auto make = [&](const std::string& what, const std::function<float(int64_t)>& f) {
      Row r{what + "/" + std::to_string(n), std::vector<float>(static_cast<std::size_t>(n))};
      for (int64_t j = 0; j < n; ++j) r.x[static_cast<std::size_t>(j)] = f(j);
      out.push_back(std::move(r));
    };
    make("normal", [&](int64_t) { return 0.02f * normal(rng); });
    make("heavy", [&](int64_t) { return std::clamp(cauchy(rng), -1e4f, 1e4f); });
    make("zero", [&](int64_t) { return 0.f; });
    make("constant", [&](int64_t) { return 0.375f; });
    make("negative_constant", [&](int64_t) { return -1.5f; });
    make("negative", [&](int64_t) { return -0.01f - unit(rng); });
    make("positive", [&](int64_t) { return 0.5f + unit(rng); });
    make("tiny", [&](int64_t) { return 1e-39f * normal(rng); });
    make("below_eps", [&](int64_t) { return 1e-16f * normal(rng); });
    make("subnormal_range", [&](int64_t j) { return 1.0f + static_cast<float>(j % 3) * 1e-7f; });
    make("huge", [&](int64_t) { return 1e37f * normal(rng); });
    make("large", [&](int64_t) { return 1e20f * normal(rng); });
    make("outlier", [&](int64_t j) { return j == n / 3 ? 50.f : 0.01f * normal(rng); });
    make("negative_outlier", [&](int64_t j) { return j % 32 == 7 ? -80.f : 0.01f * normal(rng); });
    make("grid", [&](int64_t) { return 0.125f * static_cast<float>(grid(rng)); });
    make("signs", [&](int64_t) { return unit(rng) < 0.5f ? -1.f : 1.f; });
    make("sparse", [&](int64_t) { return unit(rng) < 0.9f ? 0.f : normal(rng); });
    make("mixed_scales", [&](int64_t j) { return std::ldexp(normal(rng), static_cast<int>(j / 32 % 40) - 20); });
  }
  return out;
}

// Importance vectors for a row of n: absent, positive, with zeros (some whole blocks), all zero, huge.
inline std::vector<std::vector<float>> importances(int64_t n) {
  std::mt19937 rng(static_cast<uint32_t>(n) + 7);
  std::exponential_distribution<float> e(1.f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::vector<std::vector<float>> out(5, std::vector<float>(static_cast<std::size_t>(n)));
  out[0].clear();
  for (int64_t j = 0; j < n; ++j) {
    const auto k = static_cast<std::size_t>(j);
    out[1][k] = e(rng);
    out[2][k] = (j / 32) % 5 == 1 || unit(rng) < 0.3f ? 0.f : e(rng);
    out[3][k] = 0.f;
    out[4][k] = 1e30f * e(rng);
  }
  return out;
}

inline int64_t env_count(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

// `blocks` blocks of 32, each drawn from its own family at a random scale (2^-30 .. 2^30): normal,
// positive only, negative only, a coarse grid (exact ties in the roundings), a lone outlier, all
// zero, constant, sparse, heavy-tailed, or mostly negative.
inline std::vector<float> random_blocks(int64_t blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::cauchy_distribution<float> cauchy(0.f, 1.f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::uniform_int_distribution<int> family(0, 10), grid(-8, 8), exponent(-30, 30), spot(0, 31);
  std::vector<float> x(static_cast<std::size_t>(blocks) * kernels::kQK);
  for (std::size_t s = 0; s < x.size(); s += kernels::kQK) {
    const float scale = std::ldexp(1.f, exponent(rng));
    const int f = family(rng);
    const float c = normal(rng);
    const auto at = static_cast<std::size_t>(spot(rng));
    for (std::size_t j = s; j < s + kernels::kQK; ++j) {
      float v;
      switch (f) {
        case 0: case 1: v = normal(rng); break;
        case 2: v = 0.1f + unit(rng); break;
        case 3: v = -0.1f - unit(rng); break;
        case 4: v = 0.125f * static_cast<float>(grid(rng)); break;
        case 5: v = j == s + at ? 40.f * c : 0.01f * normal(rng); break;
        case 6: v = 0.f; break;
        case 7: v = c; break;
        case 8: v = unit(rng) < 0.8f ? 0.f : normal(rng); break;
        case 9: v = std::clamp(cauchy(rng), -1e6f, 1e6f); break;
        default: v = std::fabs(normal(rng)) - 2.f; break;
      }
      x[j] = scale * v;
    }
  }
  return x;
}

}  // namespace strata::legacy_test
#endif

HWY_BEFORE_NAMESPACE();
// Outside namespace strata, whose `testing` would hide GoogleTest's in the test macros.
namespace strata_legacy_simd_test {
namespace HWY_NAMESPACE {
namespace strata = ::strata;
namespace kernels = ::strata::kernels;
namespace io = ::strata::io;
namespace legacy_test = ::strata::legacy_test;
using ::strata::HWY_NAMESPACE::QuantizeRowIQ4NL;
using ::strata::HWY_NAMESPACE::QuantizeRowQ40;
using ::strata::HWY_NAMESPACE::QuantizeRowQ41;
using ::strata::HWY_NAMESPACE::QuantizeRowQ50;
using ::strata::HWY_NAMESPACE::QuantizeRowQ51;

// Rows of x (each of cols) through the reference and the SIMD quantizer with importance qw (cols
// values, or null), compared block by block.
template <class Block, class Fast>
void ExpectSameRows(kernels::QuantizeRowFn reference, Fast fast, const char* type, const float* x, int64_t rows,
                    int64_t cols, const float* qw, const std::string& what) {
  const int64_t nb = cols / kernels::kQK;
  std::vector<Block> want(static_cast<std::size_t>(rows * nb)), got(want.size());
  std::memset(static_cast<void*>(got.data()), 0xA5, got.size() * sizeof(Block));
  for (int64_t r = 0; r < rows; ++r) {
    reference(x + r * cols, cols, want.data() + r * nb, qw);
    fast(x + r * cols, cols, got.data() + r * nb, qw);
  }
  for (std::size_t b = 0; b < want.size(); ++b)
    ASSERT_EQ(0, std::memcmp(&want[b], &got[b], sizeof(Block)))
        << type << " " << what << ", row " << static_cast<int64_t>(b) / nb << ", block "
        << static_cast<int64_t>(b) % nb << (qw ? ", importance" : "");
}

// Every type, on rows of x (each of cols), with the importance vectors given (the Q4_0 ... Q5_1 paths
// only with one; IQ4_NL also without).
void ExpectAllTypes(const float* x, int64_t rows, int64_t cols, const std::vector<std::vector<float>>& qws,
                    const std::string& what) {
  namespace d = kernels::detail;
  for (const auto& qv : qws) {
    const float* qw = qv.empty() ? nullptr : qv.data();
    if (qw) {
      ExpectSameRows<kernels::BlockQ4_0>(&d::quantize_row_q4_0, &QuantizeRowQ40, "q4_0", x, rows, cols, qw, what);
      ExpectSameRows<kernels::BlockQ4_1>(&d::quantize_row_q4_1, &QuantizeRowQ41, "q4_1", x, rows, cols, qw, what);
      ExpectSameRows<kernels::BlockQ5_0>(&d::quantize_row_q5_0, &QuantizeRowQ50, "q5_0", x, rows, cols, qw, what);
      ExpectSameRows<kernels::BlockQ5_1>(&d::quantize_row_q5_1, &QuantizeRowQ51, "q5_1", x, rows, cols, qw, what);
    }
    ExpectSameRows<kernels::BlockIQ4_NL>(&d::quantize_row_iq4_nl, &QuantizeRowIQ4NL, "iq4_nl", x, rows, cols, qw,
                                         what);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void TestCornerRowsMatchReference() {
  for (const auto& row : legacy_test::rows()) {
    const auto n = static_cast<int64_t>(row.x.size());
    ExpectAllTypes(row.x.data(), 1, n, legacy_test::importances(n), row.name);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// Random blocks in rows of 4096 (sigma^2 over a row of mixed scales) and of 96 (short rows, partial
// lane groups), with a positive importance and one with zeros.
void TestRandomBlocksMatchReference() {
  const int64_t blocks = std::max<int64_t>(128, legacy_test::env_count("STRATA_QUANT_LEGACY_BLOCKS", 60000));
  const auto x = legacy_test::random_blocks(blocks, 99);
  std::mt19937 rng(100);
  std::exponential_distribution<float> e(1.f);
  std::vector<std::vector<float>> qws{{}, std::vector<float>(4096), std::vector<float>(4096)};
  for (std::size_t j = 0; j < 4096; ++j) {
    qws[1][j] = e(rng);
    qws[2][j] = j % 37 == 3 || (j / 32) % 11 == 4 ? 0.f : e(rng);
  }
  const int64_t long_rows = blocks * kernels::kQK / 4096 / 2;
  ExpectAllTypes(x.data(), long_rows, 4096, qws, std::to_string(long_rows) + " random rows of 4096");
  if (::testing::Test::HasFatalFailure()) return;
  for (auto& q : qws)
    if (!q.empty()) q.resize(96);
  const int64_t done = long_rows * 4096;
  const int64_t short_rows = (static_cast<int64_t>(x.size()) - done) / 96;
  ExpectAllTypes(x.data() + done, short_rows, 96, qws, std::to_string(short_rows) + " random rows of 96");
}

// Real weights: rows of every SmolLM2-135M matrix, dequantized from its Q4_1 file (so that Q4_1 meets
// values on its own grid), with an importance vector of sums of x^2 over the rows taken (the shape
// of llama.cpp's imatrix) and, for IQ4_NL, without.
void TestSmolLM2RowsMatchReference() {
  const auto path = strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  const int64_t want_rows = legacy_test::env_count("STRATA_QUANT_LEGACY_MODEL_ROWS", 16);
  const auto model = io::open_model(path);
  int tested = 0;
  for (const io::TensorInfo& t : model->tensors()) {
    const auto type = kernels::ggml_type_from_name(t.type);
    if (t.shape.rank() != 2 || !type || !kernels::ggml_codec(*type).can_dequantize()) continue;
    const int64_t cols = t.shape.dims()[1];
    if (cols % kernels::kQK != 0) continue;
    const int64_t rows = want_rows <= 0 ? t.shape.dims()[0] : std::min(want_rows, t.shape.dims()[0]);
    const kernels::GgmlCodec& c = kernels::ggml_codec(*type);
    const auto raw = model->raw(t);
    std::vector<float> x(static_cast<std::size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      c.dequantize_row(raw.data() + static_cast<std::size_t>(r) * c.row_bytes(cols), cols, x.data() + r * cols);
    std::vector<std::vector<float>> qws{{}, std::vector<float>(static_cast<std::size_t>(cols), 0.f)};
    for (std::size_t i = 0; i < x.size(); ++i) qws[1][i % qws[1].size()] += x[i] * x[i];
    ExpectAllTypes(x.data(), rows, cols, qws, t.name);
    if (::testing::Test::HasFatalFailure()) return;
    ++tested;
  }
  EXPECT_GE(tested, 30 * 7 + 1) << "SmolLM2's 30 blocks have 7 matrices each, and the embedding";
}

}  // namespace HWY_NAMESPACE
}  // namespace strata_legacy_simd_test
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata_legacy_simd_test {
HWY_BEFORE_TEST(GgmlQuantLegacyTest);
HWY_EXPORT_AND_TEST_P(GgmlQuantLegacyTest, TestCornerRowsMatchReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantLegacyTest, TestRandomBlocksMatchReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantLegacyTest, TestSmolLM2RowsMatchReference);
}  // namespace strata_legacy_simd_test

namespace strata {

namespace {
using kernels::GgmlType;
const std::pair<GgmlType, kernels::QuantizeRowFn> kReferences[] = {
    {GgmlType::Q4_0, &kernels::detail::quantize_row_q4_0}, {GgmlType::Q4_1, &kernels::detail::quantize_row_q4_1},
    {GgmlType::Q5_0, &kernels::detail::quantize_row_q5_0}, {GgmlType::Q5_1, &kernels::detail::quantize_row_q5_1},
    {GgmlType::IQ4_NL, &kernels::detail::quantize_row_iq4_nl},
};
}  // namespace

// The codec table routes these types to the dispatched SIMD quantizers (with and without importance),
// misaligned output included.
TEST(GgmlQuantLegacy, CodecRowsMatchReference) {
  const auto rows = legacy_test::rows();
  for (auto [t, reference] : kReferences)
    quantize_check::expect_codec_rows_equal_reference(t, reference, rows, 3, legacy_test::importances);
}

// A whole tensor of 41 rows of 576 (SmolLM2's width: 18 blocks, a partial lane group), with and
// without importance, at one and two threads: each row's bytes are the reference's for that row.
TEST(GgmlQuantLegacy, TensorMatchesReferenceRows) {
  constexpr int64_t rows = 41, cols = 576;
  const auto x = legacy_test::random_blocks(rows * cols / kernels::kQK, 5);
  for (auto [t, reference] : kReferences)
    quantize_check::expect_tensor_rows_equal_reference(t, reference, x, rows, cols, legacy_test::importances);
}
}  // namespace strata
#endif
