// Runs over every registered weight compressor: round trip, error non-increasing along its knobs,
// reported bytes equal to stored bytes, determinism, bad input rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "strata/compress/compressor.hpp"

namespace strata::compress {
namespace {

// A layer with structure like a real one: heavy-tailed weights, inputs with correlated channels
// and a few outlier channels (so that activation-aware methods have something to work with).
struct TestLayer {
  RowMatrix<float> w;
  Matrix<double> h;
  Vector<double> mean_sq, mean_abs;
  LayerCalibration calib() const { return {&h, &mean_sq, &mean_abs, 4096}; }
};

const TestLayer& test_layer() {
  static const TestLayer layer = [] {
    const int64_t rows = 128, cols = 512, tokens = 4096, latent = 48;
    std::mt19937_64 rng(2024);
    std::student_t_distribution<float> heavy(4.0f);
    std::normal_distribution<double> gauss(0.0, 1.0);
    TestLayer l;
    l.w.resize(rows, cols);
    for (int64_t i = 0; i < l.w.size(); ++i) l.w.data()[i] = 0.02f * heavy(rng);
    Matrix<double> mix(latent, cols);
    for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = gauss(rng);
    Matrix<double> z(tokens, latent);
    for (int64_t i = 0; i < z.size(); ++i) z.data()[i] = gauss(rng);
    Matrix<double> x = z * mix;
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] += 0.3 * gauss(rng);
    for (int64_t j = 5; j < cols; j += 97) x.col(j) *= 20.0;  // outlier channels
    l.h = x.transpose() * x / static_cast<double>(tokens);
    l.mean_sq = x.array().square().colwise().mean().transpose();
    l.mean_abs = x.array().abs().colwise().mean().transpose();
    return l;
  }();
  return layer;
}

class Conformance : public ::testing::TestWithParam<const WeightCompressor*> {};

TEST_P(Conformance, RoundTripCostAndMonotoneError) {
  const WeightCompressor& c = *GetParam();
  const TestLayer& tl = test_layer();
  const Layer layer{"test.weight", &tl.w};
  const auto knobs = c.knobs(layer);
  ASSERT_FALSE(knobs.empty()) << c.name();
  double prev_error = std::numeric_limits<double>::infinity();
  double prev_bytes = 0;
  for (const auto& knob : knobs) {
    SCOPED_TRACE(std::string(c.name()) + " " + knob);
    const Compressed comp = c.apply(layer, tl.calib(), knob);
    EXPECT_EQ(comp.rows, tl.w.rows());
    EXPECT_EQ(comp.cols, tl.w.cols());
    const Cost cost = c.cost(layer, knob);
    EXPECT_EQ(static_cast<uint64_t>(cost.bytes), comp.stored_bytes()) << "reported bytes must equal stored bytes";
    EXPECT_GE(cost.bytes, 0);
    EXPECT_GE(cost.bytes, prev_bytes) << "knobs must be listed cheapest first";
    const RowMatrix<float> w_hat = c.reconstruct(comp);
    ASSERT_EQ(w_hat.rows(), tl.w.rows());
    ASSERT_EQ(w_hat.cols(), tl.w.cols());
    ASSERT_TRUE(w_hat.allFinite());
    if (cost.bytes == 0) {
      EXPECT_TRUE(w_hat.isZero(0)) << "only a layer that computes nothing may store nothing";
    }
    const double err = output_error(tl.w, w_hat, &tl.h);
    EXPECT_LT(err, 1.0 + 1e-9);
    EXPECT_LE(err, prev_error * (1 + 1e-6) + 1e-12) << "error must not grow with the budget";
    prev_error = err;
    prev_bytes = cost.bytes;
    // The engine-facing layer computes what the reconstruction says.
    const auto lin = c.to_linear(comp);
    std::vector<float> x(static_cast<size_t>(tl.w.cols()), 0.0f), y(static_cast<size_t>(tl.w.rows()));
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
    lin->forward(x.data(), 1, y.data());
    const Vector<float> want = w_hat * Eigen::Map<const Vector<float>>(x.data(), tl.w.cols());
    for (int64_t r = 0; r < tl.w.rows(); ++r) EXPECT_NEAR(y[static_cast<size_t>(r)], want[r], 1e-3f * (1 + std::abs(want[r])));
    // The layer made over a shared form computes the same, after the caller lets the form go, and
    // counts at most its own bytes beyond the form.
    auto shared = std::make_shared<const Compressed>(c.apply(layer, tl.calib(), knob));  // deterministic
    auto [over, extra] = c.linear_sharing(std::move(shared));
    EXPECT_LE(extra, over->weight_bytes());
    std::vector<float> y_over(y.size());
    over->forward(x.data(), 1, y_over.data());
    EXPECT_EQ(y_over, y) << c.name() << " " << knob;
  }
}

TEST_P(Conformance, OptionsMatchApplyAndAreDeterministic) {
  const WeightCompressor& c = *GetParam();
  const TestLayer& tl = test_layer();
  const Layer layer{"test.weight", &tl.w};
  const auto opts = c.options(layer, tl.calib());
  ASSERT_EQ(opts.size(), c.knobs(layer).size());
  const auto& mid = opts[opts.size() / 2];
  const Compressed a = c.apply(layer, tl.calib(), mid.knob), b = c.apply(layer, tl.calib(), mid.knob);
  EXPECT_EQ(c.reconstruct(a), c.reconstruct(b)) << "apply must be deterministic";
  const double err = output_error(tl.w, c.reconstruct(a), &tl.h);
  EXPECT_NEAR(mid.error, err, 1e-6 + 1e-4 * err) << c.name() << " " << mid.knob;
}

TEST_P(Conformance, BadInputIsRejected) {
  const WeightCompressor& c = *GetParam();
  const TestLayer& tl = test_layer();
  const Layer layer{"test.weight", &tl.w};
  EXPECT_THROW(c.apply(layer, tl.calib(), "no-such-knob=1"), Error);
  RowMatrix<float> bad = tl.w;
  bad(3, 7) = std::nanf("");
  const Layer bad_layer{"bad.weight", &bad};
  try {
    c.apply(bad_layer, tl.calib(), c.knobs(layer).front());
    ADD_FAILURE() << c.name() << " accepted a NaN weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.weight"), std::string::npos) << c.name() << ": " << e.what();
  }
  if (c.needs_hessian()) {
    LayerCalibration none;
    EXPECT_THROW(c.apply(layer, none, c.knobs(layer).front()), Error);
  }
}

// A compressor that declares it never reads the Hessian is applied without one by the pipeline (to
// save forming it): its result must then be the same, byte for byte.
TEST(ConformanceHessian, UnreadWhenDeclaredSo) {
  const TestLayer& tl = test_layer();
  const Layer layer{"test.weight", &tl.w};
  LayerCalibration without = tl.calib();
  without.hessian = nullptr;
  int declared = 0;
  for (const auto& c : registry()) {
    if (c->reads_hessian()) continue;
    ++declared;
    EXPECT_FALSE(c->needs_hessian()) << c->name() << " needs a Hessian it says it never reads";
    for (const auto& knob : c->knobs(layer)) {
      const Compressed a = c->apply(layer, tl.calib(), knob), b = c->apply(layer, without, knob);
      ASSERT_EQ(a.tensors.size(), b.tensors.size()) << c->name() << " " << knob;
      for (const auto& [name, t] : a.tensors) {
        const auto it = b.tensors.find(name);
        ASSERT_NE(it, b.tensors.end()) << c->name() << " " << knob << ": " << name;
        ASSERT_EQ(t.nbytes(), it->second.nbytes()) << c->name() << " " << knob << ": " << name;
        EXPECT_EQ(std::memcmp(t.raw(), it->second.raw(), static_cast<size_t>(t.nbytes())), 0)
            << c->name() << " " << knob << ": " << name << " differs without the Hessian";
      }
    }
  }
  EXPECT_GE(declared, 2) << "quant.ggml with and without the imatrix declare it";
}

std::vector<const WeightCompressor*> all() {
  std::vector<const WeightCompressor*> out;
  for (const auto& c : registry()) out.push_back(c.get());
  return out;
}

INSTANTIATE_TEST_SUITE_P(Registry, Conformance, ::testing::ValuesIn(all()),
                         [](const ::testing::TestParamInfo<const WeightCompressor*>& info) {
                           std::string n(info.param->name());
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(Knobs, ParseAndReject) {
  const auto kv = parse_knob("bits=4,group=128,sym");
  EXPECT_EQ(kv.at("bits"), "4");
  EXPECT_EQ(kv.at("sym"), "");
  EXPECT_EQ(knob_int(kv, "group", "k"), 128);
  EXPECT_THROW(knob_int(kv, "rank", "k"), Error);
  EXPECT_THROW(parse_knob("bits=4,bits=5"), Error);
  EXPECT_THROW(knob_int(parse_knob("bits=four"), "bits", "bits=four"), Error);
}

TEST(Registry, UnknownNameListsKnownOnes) {
  try {
    find_compressor("no.such");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown compressor 'no.such'"), std::string::npos);
  }
}

}  // namespace
}  // namespace strata::compress
