// The SIMD Q2_K, Q3_K, Q4_K, Q5_K and Q6_K quantizers, on every Highway target this CPU supports, against the
// scalar references of ggml_quantize.cc: the same bytes for every row, with and without importance
// (hand-made corner rows, many random rows of mixed sub-blocks, and SmolLM2's dequantized weights
// when the model is present); and the whole-tensor path (compress::ggml::quantize, rows over
// strata's threads) against the references row by row, at one and two threads.
//
// STRATA_QUANTIZE_K_ROWS=N raises the random rows from 3,000 to N; STRATA_QUANTIZE_K_MODEL_ROWS=N
// takes N rows of every SmolLM2 matrix instead of 8 (0: every row). The defaults keep the test a
// few seconds long; docs/kernels.md gives the larger runs.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ggml_quantize_k_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ggml_quantize_k-inl.h"
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "quantize_check.hpp"

#ifndef STRATA_GGML_QUANTIZE_K_TEST_ROWS_ONCE
#define STRATA_GGML_QUANTIZE_K_TEST_ROWS_ONCE
namespace strata::ggml_k_test {

struct Row {
  std::string name;
  std::vector<float> x;
};

// Rows that exercise the searches' corners: ordinary and heavy-tailed weights, flat and all-zero
// sub-blocks, values near the float limits (tiny ranges overflow iscale, huge ones overflow x^2),
// lone outliers that squash every other scale to 0, sign-only data.
inline std::vector<Row> rows() {
  std::vector<Row> out;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::cauchy_distribution<float> cauchy(0.f, 0.01f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  const int64_t lengths[] = {256, 512, 768, 1280, 2048, 4096, 8192};
  for (int64_t n : lengths) {
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
    make("tiny", [&](int64_t) { return 1e-39f * normal(rng); });
    make("subnormal_range", [&](int64_t j) { return 1.0f + static_cast<float>(j % 3) * 1e-7f; });
    make("huge", [&](int64_t) { return 1e37f * normal(rng); });
    make("outlier", [&](int64_t j) { return j == n / 3 ? 50.f : 0.01f * normal(rng); });
    make("negative_outlier", [&](int64_t j) { return j % 256 == 7 ? -80.f : 0.01f * normal(rng); });
    make("positive", [&](int64_t) { return 0.5f + unit(rng); });
    make("sparse", [&](int64_t) { return unit(rng) < 0.9f ? 0.f : normal(rng); });
    make("signs", [&](int64_t) { return unit(rng) < 0.5f ? -1.f : 1.f; });
    make("mixed_scales", [&](int64_t j) { return std::ldexp(normal(rng), static_cast<int>(j / 16 % 40) - 20); });
  }
  return out;
}

// Importance vectors for a row of n: absent, positive, with zeros (some whole sub-blocks), all zero.
inline std::vector<std::vector<float>> importances(int64_t n) {
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::exponential_distribution<float> e(1.f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::vector<std::vector<float>> out(4, std::vector<float>(static_cast<std::size_t>(n)));
  out[0].clear();
  for (int64_t j = 0; j < n; ++j) {
    const auto k = static_cast<std::size_t>(j);
    out[1][k] = e(rng);
    out[2][k] = (j / 32) % 5 == 1 || unit(rng) < 0.3f ? 0.f : e(rng);
    out[3][k] = 0.f;
  }
  return out;
}

// The environment's count, or `fallback`.
inline int64_t env_count(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

// `count` rows of one super-block (256), each sub-block of 16 drawn from its own family: normal at a
// random scale (2^-30 .. 2^30), positive only, negative only, values on a coarse grid (exact ties
// in the searches' rounding), a lone outlier, all zero, constant, or sparse; so that one row mixes
// sub-blocks whose searches take different clamp modes.
inline std::vector<float> random_rows(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::uniform_int_distribution<int> family(0, 9), grid(-8, 8), exponent(-30, 30);
  std::vector<float> x(static_cast<std::size_t>(count) * kernels::kQK_K);
  for (std::size_t s = 0; s < x.size(); s += 16) {
    const float scale = std::ldexp(1.f, exponent(rng));
    const int f = family(rng);
    const float c = scale * normal(rng);
    for (std::size_t j = s; j < s + 16; ++j) {
      float v;
      switch (f) {
        case 0: case 1: v = normal(rng); break;
        case 2: v = 0.1f + unit(rng); break;
        case 3: v = -0.1f - unit(rng); break;
        case 4: v = 0.125f * static_cast<float>(grid(rng)); break;
        case 5: v = j == s + 5 ? 40.f : 0.01f * normal(rng); break;
        case 6: v = 0.f; break;
        case 7: v = c / scale; break;
        case 8: v = unit(rng) < 0.8f ? 0.f : normal(rng); break;
        default: v = std::fabs(normal(rng)) - 2.f; break;  // mostly negative, a few positive
      }
      x[j] = scale * v;
    }
  }
  return x;
}

}  // namespace strata::ggml_k_test
#endif

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {

template <class Block, class Fast>
void ExpectSameBytes(kernels::QuantizeRowFn reference, Fast fast, const char* type) {
  for (const auto& row : ggml_k_test::rows()) {
    const auto n = static_cast<int64_t>(row.x.size());
    const auto qws = ggml_k_test::importances(n);
    for (std::size_t v = 0; v < qws.size(); ++v) {
      const float* qw = qws[v].empty() ? nullptr : qws[v].data();
      std::vector<Block> want(static_cast<std::size_t>(n / kernels::kQK_K)), got(want.size());
      std::memset(static_cast<void*>(got.data()), 0xA5, got.size() * sizeof(Block));
      reference(row.x.data(), n, want.data(), qw);
      fast(row.x.data(), n, got.data(), qw);
      for (std::size_t b = 0; b < want.size(); ++b)
        ASSERT_EQ(0, std::memcmp(&want[b], &got[b], sizeof(Block)))
            << type << " row " << row.name << ", importance " << v << ", block " << b;
    }
  }
}

void TestQ2KMatchesReference() {
  ExpectSameBytes<kernels::BlockQ2_K>(&kernels::detail::quantize_row_q2_k, &QuantizeRowQ2K, "q2_k");
}

void TestQ3KMatchesReference() {
  ExpectSameBytes<kernels::BlockQ3_K>(&kernels::detail::quantize_row_q3_k, &QuantizeRowQ3K, "q3_k");
}

void TestQ4KMatchesReference() {
  ExpectSameBytes<kernels::BlockQ4_K>(&kernels::detail::quantize_row_q4_k, &QuantizeRowQ4K, "q4_k");
}

void TestQ5KMatchesReference() {
  ExpectSameBytes<kernels::BlockQ5_K>(&kernels::detail::quantize_row_q5_k, &QuantizeRowQ5K, "q5_k");
}

void TestQ6KMatchesReference() {
  ExpectSameBytes<kernels::BlockQ6_K>(&kernels::detail::quantize_row_q6_k, &QuantizeRowQ6K, "q6_k");
}

// Rows of x (each of cols) through the reference and the SIMD quantizer, without importance and with
// `importance` (cols values), compared block by block.
template <class Block, class Fast>
void ExpectSameRows(kernels::QuantizeRowFn reference, Fast fast, const char* type, const std::vector<float>& x,
                    int64_t cols, const std::vector<float>& importance, const std::string& what) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols, nb = cols / kernels::kQK_K;
  std::vector<Block> want(static_cast<std::size_t>(rows * nb)), got(want.size());
  for (const float* qw : {static_cast<const float*>(nullptr), importance.data()}) {
    for (int64_t r = 0; r < rows; ++r) {
      reference(x.data() + r * cols, cols, want.data() + r * nb, qw);
      fast(x.data() + r * cols, cols, got.data() + r * nb, qw);
    }
    for (std::size_t b = 0; b < want.size(); ++b)
      ASSERT_EQ(0, std::memcmp(&want[b], &got[b], sizeof(Block)))
          << type << " " << what << ", row " << static_cast<int64_t>(b) / nb << ", block "
          << static_cast<int64_t>(b) % nb << (qw ? ", importance" : "");
  }
}

void TestRandomRowsMatchReference() {
  const int64_t rows = ggml_k_test::env_count("STRATA_QUANTIZE_K_ROWS", 3000);
  const auto x = ggml_k_test::random_rows(rows, 77);
  std::vector<float> qw(kernels::kQK_K);
  std::mt19937 rng(78);
  std::exponential_distribution<float> e(1.f);
  for (std::size_t j = 0; j < qw.size(); ++j) qw[j] = j % 37 == 3 ? 0.f : e(rng);
  const std::string what = std::to_string(rows) + " random rows";
  ExpectSameRows<kernels::BlockQ2_K>(&kernels::detail::quantize_row_q2_k, &QuantizeRowQ2K, "q2_k", x, kernels::kQK_K,
                                     qw, what);
  ExpectSameRows<kernels::BlockQ3_K>(&kernels::detail::quantize_row_q3_k, &QuantizeRowQ3K, "q3_k", x, kernels::kQK_K,
                                     qw, what);
  ExpectSameRows<kernels::BlockQ4_K>(&kernels::detail::quantize_row_q4_k, &QuantizeRowQ4K, "q4_k", x, kernels::kQK_K,
                                     qw, what);
  ExpectSameRows<kernels::BlockQ5_K>(&kernels::detail::quantize_row_q5_k, &QuantizeRowQ5K, "q5_k", x, kernels::kQK_K,
                                     qw, what);
  ExpectSameRows<kernels::BlockQ6_K>(&kernels::detail::quantize_row_q6_k, &QuantizeRowQ6K, "q6_k", x, kernels::kQK_K,
                                     qw, what);
}

// Real weights: the first rows of every SmolLM2-135M matrix, dequantized from its Q4_1 file, with an
// importance vector of sums of x^2 over the rows (the shape of llama.cpp's imatrix). Matrices whose
// rows (576) are not whole super-blocks are read as consecutive rows of 256.
void TestSmolLM2RowsMatchReference() {
  const auto path = io::DataPaths::resolve(STRATA_SOURCE_DIR).smollm2();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  const int64_t want_rows = ggml_k_test::env_count("STRATA_QUANTIZE_K_MODEL_ROWS", 8);
  const auto model = io::open_model(path);
  int tested = 0;
  for (const io::TensorInfo& t : model->tensors()) {
    const auto type = kernels::ggml_type_from_name(t.type);
    if (t.shape.rank() != 2 || !type || !kernels::ggml_codec(*type).can_dequantize()) continue;
    const int64_t file_cols = t.shape.dims()[1];
    const int64_t rows = want_rows <= 0 ? t.shape.dims()[0] : std::min(want_rows, t.shape.dims()[0]);
    const kernels::GgmlCodec& c = kernels::ggml_codec(*type);
    const auto raw = model->raw(t);
    std::vector<float> x(static_cast<std::size_t>(rows * file_cols));
    for (int64_t r = 0; r < rows; ++r)
      c.dequantize_row(raw.data() + static_cast<std::size_t>(r) * c.row_bytes(file_cols), file_cols,
                       x.data() + r * file_cols);
    const int64_t cols = file_cols % kernels::kQK_K == 0 ? file_cols : kernels::kQK_K;
    x.resize(x.size() / static_cast<std::size_t>(cols) * static_cast<std::size_t>(cols));
    if (x.empty()) continue;
    std::vector<float> qw(static_cast<std::size_t>(cols), 0.f);
    for (std::size_t i = 0; i < x.size(); ++i) qw[i % qw.size()] += x[i] * x[i];
    ExpectSameRows<kernels::BlockQ2_K>(&kernels::detail::quantize_row_q2_k, &QuantizeRowQ2K, "q2_k", x, cols, qw,
                                       t.name);
    ExpectSameRows<kernels::BlockQ3_K>(&kernels::detail::quantize_row_q3_k, &QuantizeRowQ3K, "q3_k", x, cols, qw,
                                       t.name);
    ExpectSameRows<kernels::BlockQ4_K>(&kernels::detail::quantize_row_q4_k, &QuantizeRowQ4K, "q4_k", x, cols, qw,
                                       t.name);
    ExpectSameRows<kernels::BlockQ5_K>(&kernels::detail::quantize_row_q5_k, &QuantizeRowQ5K, "q5_k", x, cols, qw,
                                       t.name);
    ExpectSameRows<kernels::BlockQ6_K>(&kernels::detail::quantize_row_q6_k, &QuantizeRowQ6K, "q6_k", x, cols, qw,
                                       t.name);
    if (::testing::Test::HasFatalFailure()) return;
    ++tested;
  }
  EXPECT_GE(tested, 30 * 7 + 1) << "SmolLM2's 30 blocks have 7 matrices each, and the embedding";
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata {
HWY_BEFORE_TEST(GgmlQuantizeKTest);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestQ2KMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestQ3KMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestQ4KMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestQ5KMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestQ6KMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestRandomRowsMatchReference);
HWY_EXPORT_AND_TEST_P(GgmlQuantizeKTest, TestSmolLM2RowsMatchReference);

// The codec table routes Q2_K, Q3_K, Q4_K, Q5_K and Q6_K to the dispatched SIMD quantizers, misaligned output
// included.
const std::pair<kernels::GgmlType, kernels::QuantizeRowFn> kReferences[] = {
    {kernels::GgmlType::Q2_K, &kernels::detail::quantize_row_q2_k},
    {kernels::GgmlType::Q3_K, &kernels::detail::quantize_row_q3_k},
    {kernels::GgmlType::Q4_K, &kernels::detail::quantize_row_q4_k},
    {kernels::GgmlType::Q5_K, &kernels::detail::quantize_row_q5_k},
    {kernels::GgmlType::Q6_K, &kernels::detail::quantize_row_q6_k},
};

TEST(GgmlQuantizeK, CodecRowsMatchReference) {
  const auto rows = ggml_k_test::rows();
  for (auto [t, reference] : kReferences)
    quantize_check::expect_codec_rows_equal_reference(t, reference, rows, 5, ggml_k_test::importances);
}

// A whole tensor of 37 rows of 1280 (rows of mixed kinds, so that the threads' chunks differ), with
// and without importance, at one and two threads: each row's bytes are the reference's for that row.
TEST(GgmlQuantizeK, TensorMatchesReferenceRows) {
  using kernels::GgmlType;
  constexpr int64_t rows = 37, cols = 1280;
  std::vector<float> x;
  for (const auto& row : ggml_k_test::rows())
    if (row.x.size() == static_cast<std::size_t>(cols)) x.insert(x.end(), row.x.begin(), row.x.end());
  ASSERT_GE(x.size(), static_cast<std::size_t>(cols) * 5);
  for (std::size_t i = 0; x.size() < static_cast<std::size_t>(rows * cols); ++i) x.push_back(x[i] * -0.5f);
  x.resize(static_cast<std::size_t>(rows * cols));
  for (auto [t, reference] : kReferences)
    quantize_check::expect_tensor_rows_equal_reference(t, reference, x, rows, cols, ggml_k_test::importances);
  const int threads_before = num_threads();
  // A value that is not finite, deep in the tensor: refused, naming its row and column.
  x[static_cast<std::size_t>(20 * cols + 1000)] = -INFINITY;
  x[static_cast<std::size_t>(31 * cols + 3)] = std::nanf("");
  set_num_threads(2);
  try {
    compress::ggml::quantize(GgmlType::Q4_K, x.data(), rows, cols, {});
    ADD_FAILURE() << "a tensor holding -inf and NaN was quantized";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 20, column 1000"), std::string::npos) << e.what();
  }
  set_num_threads(threads_before);
}

// Every quantizable type through both whole-tensor entry points: the caller's buffer (filled with
// garbage first) receives the bytes the returned vector holds, a buffer of the wrong size is
// refused, and a NaN or an infinity is refused naming its row and column, for every type (the rows
// are checked after they are quantized, so every quantizer meets the value first).
TEST(GgmlQuantizeK, TensorIntoBufferAndNonFiniteEveryType) {
  constexpr int64_t rows = 9, cols = 512;
  const auto expect_error = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one naming '" << part << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 0.03f);
  std::vector<float> x(static_cast<std::size_t>(rows * cols)), qw(static_cast<std::size_t>(cols));
  for (auto& v : x) v = normal(rng);
  for (auto& v : qw) v = std::fabs(normal(rng)) * 100.f;
  const int threads_before = num_threads();
  set_num_threads(1);
  for (kernels::GgmlType t : compress::ggml::quantizable_types())
    for (bool use : {false, true}) {
      SCOPED_TRACE(kernels::lower_name(t) + (use ? " imatrix" : ""));
      const std::span<const float> imp = use ? std::span<const float>(qw) : std::span<const float>();
      const auto want = compress::ggml::quantize(t, x.data(), rows, cols, imp);
      std::vector<std::byte> got(want.size(), std::byte{0xAB});
      compress::ggml::quantize(t, x.data(), rows, cols, imp, got);
      EXPECT_TRUE(got == want);
      std::vector<std::byte> short_buf(want.size() - 1);
      expect_error([&] { compress::ggml::quantize(t, x.data(), rows, cols, imp, short_buf); },
                   "output of " + std::to_string(want.size() - 1) + " bytes");
      for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
        std::vector<float> y = x;
        y[static_cast<std::size_t>(6 * cols + 300)] = bad;
        expect_error([&] { compress::ggml::quantize(t, y.data(), rows, cols, imp); }, "row 6, column 300");
        expect_error([&] { compress::ggml::quantize(t, y.data(), rows, cols, imp, got); }, "row 6, column 300");
      }
    }
  set_num_threads(threads_before);
}
}  // namespace strata
#endif
