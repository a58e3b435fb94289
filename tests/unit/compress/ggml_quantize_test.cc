// The ggml quantizers against ggml's own output (golden files in shared/data/golden/ggml-quants),
// byte for byte, with and without an imatrix; their round-trip error; the error paths; and the
// quant.ggml compressor on a real SmolLM2 layer with a real imatrix.
#include "strata/compress/ggml/quantize.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/compress/compressor.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"
#include "test_util.hpp"

namespace strata::compress::ggml {
namespace {

std::vector<std::byte> read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  if (!c.empty()) std::memcpy(out.data(), c.data(), c.size());
  return out;
}

std::vector<float> read_floats(const std::filesystem::path& p) {
  const auto b = read_bytes(p);
  std::vector<float> out(b.size() / sizeof(float));
  if (!out.empty()) std::memcpy(out.data(), b.data(), out.size() * sizeof(float));
  return out;
}

std::filesystem::path golden_dir() { return strata::testing::shared_data_dir() / "golden" / "ggml-quants"; }

nlohmann::json manifest() {
  std::ifstream in(golden_dir() / "manifest.json");
  return nlohmann::json::parse(in);
}

// Index of the first differing byte and which block it falls in, for a readable failure.
std::string first_difference(const std::vector<std::byte>& got, const std::vector<std::byte>& want, GgmlType t,
                             int64_t cols) {
  const uint64_t row_bytes = kernels::ggml_row_size(t, cols);
  const uint64_t block_bytes = kernels::ggml_type_size(t);
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (got[i] != want[i]) {
      return "first difference at byte " + std::to_string(i) + " (row " + std::to_string(i / row_bytes) + ", block " +
             std::to_string((i % row_bytes) / block_bytes) + ", offset " + std::to_string((i % row_bytes) % block_bytes) +
             "): got " + std::to_string(static_cast<int>(got[i])) + ", want " + std::to_string(static_cast<int>(want[i]));
    }
  }
  return "sizes " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
}

TEST(GgmlQuantize, GoldenBytesForEveryFile) {
  STRATA_REQUIRE_FILE(golden_dir() / "manifest.json", "shared data: ../shared/data/golden/ggml-quants");
  const auto m = manifest();
  const int64_t rows = m["rows"], cols = m["cols"];
  const auto imatrix = read_floats(golden_dir() / "imatrix.f32");
  ASSERT_EQ(static_cast<int64_t>(imatrix.size()), cols);
  int checked = 0, with_imatrix = 0;
  for (const auto& f : m["files"]) {
    const std::string type = f["type"];
    const bool use_imatrix = f["imatrix"];
    SCOPED_TRACE(std::string(f["blocks"]));
    const GgmlType t = quantizable_type(type);
    const auto input = read_floats(golden_dir() / std::string(f["input"]));
    ASSERT_EQ(static_cast<int64_t>(input.size()), rows * cols);
    const auto want = read_bytes(golden_dir() / std::string(f["blocks"]));
    ASSERT_EQ(want.size(), static_cast<size_t>(f["bytes"]));
    const auto got = quantize(t, input.data(), rows, cols, use_imatrix ? std::span<const float>(imatrix) : std::span<const float>());
    ASSERT_EQ(got.size(), want.size());
    EXPECT_TRUE(got == want) << first_difference(got, want, t, cols);
    ++checked;
    with_imatrix += use_imatrix;
  }
  EXPECT_GE(checked, 40);
  EXPECT_GE(with_imatrix, 18);
}

// One row at a time through the checked single-row entry point gives the same bytes as quantize().
TEST(GgmlQuantize, RowEntryPointMatchesMatrix) {
  STRATA_REQUIRE_FILE(golden_dir() / "manifest.json", "shared data: ../shared/data/golden/ggml-quants");
  const auto input = read_floats(golden_dir() / "input_heavy.f32");
  const auto imatrix = read_floats(golden_dir() / "imatrix.f32");
  const int64_t cols = 512, rows = 4;
  for (GgmlType t : quantizable_types()) {
    const auto whole = quantize(t, input.data(), rows, cols, imatrix);
    const uint64_t rb = kernels::ggml_row_size(t, cols);
    std::vector<std::byte> row(rb);
    for (int64_t r = 0; r < rows; ++r) {
      quantize_row(t, {input.data() + r * cols, static_cast<size_t>(cols)}, imatrix, row);
      EXPECT_EQ(0, std::memcmp(row.data(), whole.data() + r * rb, rb)) << lower_name(t) << " row " << r;
    }
  }
}

// Rows are independent, so the bytes do not depend on how many threads share them.
TEST(GgmlQuantize, SameBytesForAnyThreadCount) {
  STRATA_REQUIRE_FILE(golden_dir() / "manifest.json", "shared data: ../shared/data/golden/ggml-quants");
  const auto input = read_floats(golden_dir() / "input_gauss.f32");
  const auto imatrix = read_floats(golden_dir() / "imatrix.f32");
  const int saved = num_threads();
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::IQ4_NL}) {
    set_num_threads(1);
    const auto one = quantize(t, input.data(), 16, 512, imatrix);
    set_num_threads(3);
    const auto three = quantize(t, input.data(), 16, 512, imatrix);
    EXPECT_TRUE(one == three) << lower_name(t);
  }
  set_num_threads(saved);
}

TEST(GgmlQuantize, RoundTripErrorMatchesGgml) {
  STRATA_REQUIRE_FILE(golden_dir() / "manifest.json", "shared data: ../shared/data/golden/ggml-quants");
  const auto m = manifest();
  const int64_t rows = m["rows"], cols = m["cols"];
  const auto imatrix = read_floats(golden_dir() / "imatrix.f32");
  for (const auto& f : m["files"]) {
    SCOPED_TRACE(std::string(f["blocks"]));
    const GgmlType t = quantizable_type(std::string(f["type"]));
    const auto input = read_floats(golden_dir() / std::string(f["input"]));
    const bool use_imatrix = f["imatrix"];
    const auto blocks = quantize(t, input.data(), rows, cols, use_imatrix ? std::span<const float>(imatrix) : std::span<const float>());
    std::vector<float> back(input.size());
    kernels::dequantize(t, blocks, back.data(), static_cast<int64_t>(back.size()));
    double num = 0, den = 0;
    for (size_t i = 0; i < input.size(); ++i) {
      num += (double(input[i]) - back[i]) * (double(input[i]) - back[i]);
      den += double(input[i]) * input[i];
    }
    const double rel_rmse = std::sqrt(num / den), want = f["rel_rmse"];
    EXPECT_NEAR(rel_rmse, want, 1e-5 + 1e-3 * want);
  }
}

// strata's quantizers, run with and without the importance vector on ggml's golden inputs: the
// importance-weighted error sqrt(sum_j imp_j (x - x')^2 / sum_j imp_j x^2) is computed here from
// what strata writes and reads back, must drop when the imatrix is given, and must equal the figure
// ggml reported for the same file (manifest.json) in both cases.
TEST(GgmlQuantize, ImatrixLowersWeightedErrorOnGolden) {
  STRATA_REQUIRE_FILE(golden_dir() / "manifest.json", "shared data: ../shared/data/golden/ggml-quants");
  const auto m = manifest();
  const int64_t rows = m["rows"], cols = m["cols"];
  const auto imatrix = read_floats(golden_dir() / "imatrix.f32");
  ASSERT_EQ(static_cast<int64_t>(imatrix.size()), cols);
  const auto weighted_rel_rmse = [&](GgmlType t, const std::vector<float>& x, bool use_imatrix) {
    const auto blocks =
        quantize(t, x.data(), rows, cols, use_imatrix ? std::span<const float>(imatrix) : std::span<const float>());
    std::vector<float> back(x.size());
    kernels::dequantize(t, blocks, back.data(), static_cast<int64_t>(back.size()));
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double imp = imatrix[i % static_cast<size_t>(cols)], d = double(x[i]) - back[i];
      num += imp * d * d;
      den += imp * double(x[i]) * x[i];
    }
    return std::sqrt(num / den);
  };
  int compared = 0;
  for (const auto& f : m["files"]) {
    if (!f["imatrix"]) continue;
    for (const auto& g : m["files"]) {
      if (g["type"] != f["type"] || g["input"] != f["input"] || g["imatrix"]) continue;
      SCOPED_TRACE(std::string(f["blocks"]));
      const GgmlType t = quantizable_type(std::string(f["type"]));
      const auto input = read_floats(golden_dir() / std::string(f["input"]));
      ASSERT_EQ(static_cast<int64_t>(input.size()), rows * cols);
      const double with = weighted_rel_rmse(t, input, true), without = weighted_rel_rmse(t, input, false);
      EXPECT_LT(with, without);
      const double ggml_with = f["imatrix_weighted_rel_rmse"], ggml_without = g["imatrix_weighted_rel_rmse"];
      EXPECT_NEAR(with, ggml_with, 1e-5 + 1e-3 * ggml_with);
      EXPECT_NEAR(without, ggml_without, 1e-5 + 1e-3 * ggml_without);
      ++compared;
    }
  }
  EXPECT_GE(compared, 18);
}

TEST(GgmlQuantize, EdgeCasesAreDeterministicAndDecodable) {
  // All-zero rows, a constant row, tiny values and a single outlier: no NaN in the output, and the
  // same bytes every time (and from 1 or many threads: rows are independent).
  const int64_t cols = 512, rows = 6;
  std::vector<float> x(static_cast<size_t>(rows * cols), 0.0f);
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t j = 0; j < cols; ++j) {
    x[static_cast<size_t>(1 * cols + j)] = 0.25f;
    x[static_cast<size_t>(2 * cols + j)] = 1e-20f * g(rng);
    x[static_cast<size_t>(3 * cols + j)] = j == 100 ? 50.0f : 0.01f * g(rng);
    x[static_cast<size_t>(4 * cols + j)] = -std::abs(g(rng));
    x[static_cast<size_t>(5 * cols + j)] = std::abs(g(rng));
  }
  std::vector<float> imp(static_cast<size_t>(cols), 1.0f);
  for (GgmlType t : quantizable_types()) {
    for (bool use : {false, true}) {
      const std::span<const float> qw = use ? std::span<const float>(imp) : std::span<const float>();
      const auto a = quantize(t, x.data(), rows, cols, qw);
      const auto b = quantize(t, x.data(), rows, cols, qw);
      EXPECT_TRUE(a == b) << lower_name(t);
      std::vector<float> back(x.size());
      kernels::dequantize(t, a, back.data(), static_cast<int64_t>(back.size()));
      for (int64_t j = 0; j < cols; ++j) EXPECT_EQ(back[static_cast<size_t>(j)], 0.0f) << lower_name(t);
      for (float v : back) ASSERT_TRUE(std::isfinite(v)) << lower_name(t) << (use ? " imatrix" : "");
    }
  }
}

TEST(GgmlQuantize, BadInputIsRejected) {
  std::vector<float> x(300, 0.5f);
  EXPECT_THROW(quantize(GgmlType::Q4_K, x.data(), 1, 300, {}), Error);  // not whole 256-blocks
  EXPECT_THROW(quantize(GgmlType::Q4_0, x.data(), 1, 300, {}), Error);  // not whole 32-blocks
  EXPECT_NO_THROW(quantize(GgmlType::Q4_0, x.data(), 1, 288, {}));
  EXPECT_THROW(quantize(GgmlType::IQ4_XS, x.data(), 1, 256, {}), Error);  // decodable, not quantizable
  std::vector<float> imp(100, 1.0f);
  EXPECT_THROW(quantize(GgmlType::Q4_0, x.data(), 1, 288, imp), Error);  // importance size
  std::vector<float> neg(288, 1.0f);
  neg[5] = -1.0f;
  EXPECT_THROW(quantize(GgmlType::Q4_0, x.data(), 1, 288, neg), Error);
  x[17] = std::nanf("");
  EXPECT_THROW(quantize(GgmlType::Q8_0, x.data(), 1, 288, {}), Error);
  x[17] = INFINITY;
  EXPECT_THROW(quantize(GgmlType::Q2_K, x.data(), 1, 256, {}), Error);
  std::vector<std::byte> out(10);
  EXPECT_THROW(quantize_row(GgmlType::Q8_0, {x.data(), 32}, {}, out), Error);  // output size
  EXPECT_THROW(quantizable_type("q4_2"), Error);
  EXPECT_EQ(quantizable_type("Q4_K"), GgmlType::Q4_K);
  EXPECT_EQ(lower_name(GgmlType::IQ4_NL), "iq4_nl");
}

TEST(GgmlQuantize, LlamaCppFallbackTypes) {
  EXPECT_EQ(fallback_type(GgmlType::Q3_K, 1536), GgmlType::Q3_K);
  EXPECT_EQ(fallback_type(GgmlType::Q2_K, 576), GgmlType::IQ4_NL);
  EXPECT_EQ(fallback_type(GgmlType::Q3_K, 576), GgmlType::IQ4_NL);
  EXPECT_EQ(fallback_type(GgmlType::Q4_K, 576), GgmlType::Q5_0);
  EXPECT_EQ(fallback_type(GgmlType::Q5_K, 576), GgmlType::Q5_1);
  EXPECT_EQ(fallback_type(GgmlType::Q6_K, 576), GgmlType::Q8_0);
  EXPECT_EQ(fallback_type(GgmlType::Q4_K, 100), GgmlType::F16);
  EXPECT_EQ(fallback_type(GgmlType::Q4_0, 576), GgmlType::Q4_0);
  EXPECT_THROW(fallback_type(GgmlType::Q4_0, 100), Error);
}

// ---- the compressor -----------------------------------------------------------------------------

TEST(GgmlCompressor, KnobsCostsAndGgufBytes) {
  const auto& c = find_compressor("quant.ggml");
  RowMatrix<float> w(8, 512), w576(8, 576), w100(8, 100);
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 0.02f);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
  for (int64_t i = 0; i < w576.size(); ++i) w576.data()[i] = g(rng);
  w100.setZero();
  const Layer a{"a.weight", &w}, b{"b.weight", &w576}, bad{"c.weight", &w100};
  EXPECT_EQ(c.knobs(a), (std::vector<std::string>{"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0"}));
  EXPECT_EQ(c.knobs(b), (std::vector<std::string>{"q4_0", "q5_0", "q8_0"}));
  EXPECT_TRUE(c.knobs(bad).empty());
  EXPECT_EQ(c.cost(a, "q4_k").bytes, 8.0 * 2 * 144);
  EXPECT_THROW(c.cost(b, "q4_k"), Error);  // 576 columns are not whole super-blocks
  EXPECT_THROW(c.apply(b, {}, "q3_k"), Error);
  EXPECT_THROW(c.apply(a, {}, "q4_k+imatrix"), Error);  // asked for an imatrix, none given
  EXPECT_THROW(c.apply(a, {}, "bits=4"), Error);
  // Every quantizable type is accepted by apply(), not only the ladder's.
  for (const char* knob : {"q4_1", "q5_1", "iq4_nl", "q4_0"}) {
    const Compressed comp = c.apply(b, {}, knob);
    EXPECT_EQ(comp.stored_bytes(), static_cast<uint64_t>(c.cost(b, knob).bytes)) << knob;
    const auto data = gguf_tensor_data(comp);
    EXPECT_EQ(lower_name(data.type), knob);
    EXPECT_EQ(data.bytes, quantize(data.type, w576.data(), 8, 576));
  }
  // What the GGUF writer gets back decodes to what reconstruct() says.
  {
    const Compressed comp = c.apply(a, {}, "q3_k");
    const auto data = gguf_tensor_data(comp);
    io::GgufWriter writer;
    writer.add_tensor("blk.0.ffn_down.weight", data.type, {512, 8}, data.bytes);
    const auto bytes = writer.to_bytes();
    const auto file = io::GgufFile::parse(bytes);
    const auto& info = file.tensor("blk.0.ffn_down.weight");
    EXPECT_EQ(info.type, GgmlType::Q3_K);
    RowMatrix<float> back(8, 512);
    kernels::dequantize(info.type, file.data(info), back.data(), back.size());
    EXPECT_EQ(back, c.reconstruct(comp));
    Compressed other = c.apply(a, {}, "q3_k");
    other.method = "quant.rtn";
    EXPECT_THROW(gguf_tensor_data(other), Error);
  }
  Vector<double> ms = Vector<double>::Ones(512);
  ms[3] = std::nan("");
  LayerCalibration calib;
  calib.mean_sq = &ms;
  EXPECT_THROW(c.apply(a, calib, "q4_k"), Error);
  EXPECT_NO_THROW(find_compressor("quant.ggml_noimatrix").apply(a, calib, "q4_k"));  // it never reads mean_sq
  Vector<double> short_ms = Vector<double>::Ones(10);
  calib.mean_sq = &short_ms;
  EXPECT_THROW(c.apply(a, calib, "q4_k"), Error);
}

std::filesystem::path smollm_path() { return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }

// One real layer (blk.0.ffn_down.weight, [576, 1536]) with its real input statistics from a short
// SOTU calibration: the ladder's output error falls monotonically, and the imatrix lowers the output
// error of Q2_K and Q3_K as it does in llama.cpp.
TEST(GgmlCompressor, RealSmolLM2LayerWithRealImatrix) {
  STRATA_REQUIRE_FILE(smollm_path(), "run scripts/fetch-models.sh");
  const auto sotu = strata::testing::shared_data_dir() / "corpora" / "sotu_1790-2021.txt";
  STRATA_REQUIRE_FILE(sotu, "shared data: ../shared/data/corpora");
  auto file = io::open_model(smollm_path());
  const auto model = nn::LlamaModel::load(*file);
  const auto tokenizer = nn::BpeTokenizer::from_model(*file);
  const auto tokens = nn::tokenize_slice(tokenizer, nn::TextSlice::parse(sotu, "0:0.5"), 4 * 128);
  const auto seqs = nn::cut_sequences(tokens, 4, 128, -1);
  nn::Calibration calib;
  size_t next = 0;
  nn::calibrate(model, [&](std::vector<int32_t>& s) {
    if (next == seqs.size()) return false;
    s = seqs[next++];
    return true;
  }, calib);

  const std::string name = "blk.0.ffn_down.weight";
  const RowMatrix<float> w = model.linear(name).dense_weight();
  ASSERT_EQ(w.rows(), 576);
  ASSERT_EQ(w.cols(), 1536);
  const auto& st = calib.stats(name);
  const Matrix<double> h = st.hessian();
  const Vector<double> ms = st.mean_sq();
  const LayerCalibration lc{&h, &ms, nullptr, st.tokens};
  const Layer layer{name, &w};

  const auto& with = find_compressor("quant.ggml");
  const auto& without = find_compressor("quant.ggml_noimatrix");
  const auto opts = with.options(layer, lc);
  ASSERT_EQ(opts.size(), 6u);
  for (size_t i = 1; i < opts.size(); ++i) {
    EXPECT_GT(opts[i].cost.bytes, opts[i - 1].cost.bytes);
    EXPECT_LT(opts[i].error, opts[i - 1].error) << opts[i].knob;
  }
  for (const char* knob : {"q2_k", "q3_k"}) {
    const double e_with = output_error(w, with.reconstruct(with.apply(layer, lc, knob)), &h);
    const double e_without = output_error(w, without.reconstruct(without.apply(layer, lc, knob)), &h);
    RecordProperty(std::string(knob) + "_output_error_imatrix", std::to_string(e_with));
    RecordProperty(std::string(knob) + "_output_error_plain", std::to_string(e_without));
    EXPECT_LT(e_with, e_without) << knob << ": imatrix " << e_with << " vs plain " << e_without;
  }
}

}  // namespace
}  // namespace strata::compress::ggml
