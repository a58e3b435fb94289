// The hand-off codec: PCA against an SVD computed independently, round-trip errors within the
// quantization step computed directly, payload sizes from the layout, corrupted payloads refused.
#include "strata/gated/codec.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/linalg/svd.hpp"

namespace strata::gated {
namespace {

using ::testing::HasSubstr;

// Rows with a few strong directions, an offset and one loud channel, like encoder states.
RowMatrix<float> states(int64_t n, int64_t d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t latent = 6;
  RowMatrix<float> mix(latent, d), x(n, d);
  for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = g(rng) * static_cast<float>(latent - i / d);
  for (int64_t i = 0; i < n; ++i) {
    Vector<float> z(latent);
    for (auto& v : z) v = g(rng);
    x.row(i) = z.transpose() * mix;
    for (int64_t j = 0; j < d; ++j) x(i, j) += 0.2f * g(rng) + 0.5f;
    x(i, 3) += 8.0f;
  }
  return x;
}

// Calibration rows and held-out rows of the same distribution (the same strong directions).
std::pair<RowMatrix<float>, RowMatrix<float>> cal_and_test(int64_t n_cal, int64_t n_test, int64_t d, uint64_t seed) {
  const RowMatrix<float> all = states(n_cal + n_test, d, seed);
  return {all.topRows(n_cal), all.bottomRows(n_test)};
}

TEST(Pca, MatchesAnIndependentSvd) {
  const RowMatrix<float> x = states(400, 24, 1);
  const int64_t rank = 5;
  const PcaBasis b = fit_pca(x, rank);
  Matrix<double> c = x.cast<double>();
  const Vector<double> mu = c.colwise().mean().transpose();
  c.rowwise() -= mu.transpose();
  const auto svd = linalg::svd<double>(c);
  EXPECT_LT((b.mean.cast<double>() - mu).cwiseAbs().maxCoeff(), 1e-4);
  for (int64_t k = 0; k < rank; ++k) {
    const double dot = b.components.row(k).cast<double>().dot(svd.V.col(k));
    EXPECT_NEAR(std::abs(dot), 1.0, 1e-5) << "component " << k;
    EXPECT_NEAR(b.variances[k], svd.S[k] * svd.S[k] / 400.0, 1e-6 * svd.S[0] * svd.S[0]) << "component " << k;
  }
  const RowMatrix<float> gram = b.components * b.components.transpose();
  EXPECT_LT((gram - RowMatrix<float>::Identity(rank, rank)).cwiseAbs().maxCoeff(), 1e-5);
}

TEST(Codec, DenseRoundTripIsWithinHalfAStep) {
  const auto [cal, x] = cal_and_test(300, 20, 32, 2);
  const ActivationCodec codec = ActivationCodec::fit(cal, {});
  const std::vector<uint8_t> p = codec.encode(x.data(), x.rows());
  EXPECT_EQ(p.size(), ActivationCodec::kHeaderBytes + 20u * (4 + 32));
  const RowMatrix<float> y = codec.decode(p);
  ASSERT_EQ(y.rows(), 20);
  // The mean of the calibration rows, computed here, and each token's step max|x - mean| / 127.
  Vector<double> mu = Vector<double>::Zero(32);
  for (int64_t i = 0; i < cal.rows(); ++i) mu += cal.row(i).transpose().cast<double>();
  mu /= static_cast<double>(cal.rows());
  for (int64_t t = 0; t < x.rows(); ++t) {
    double amax = 0;
    for (int64_t j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x(t, j) - mu[j]));
    const double step = amax / 127.0;
    for (int64_t j = 0; j < 32; ++j)
      EXPECT_LE(std::abs(y(t, j) - x(t, j)), step / 2 + 1e-5 * (1 + std::abs(x(t, j)))) << t << "," << j;
  }
}

TEST(Codec, ProjectedRoundTripIsTheProjectionPlusAtMostHalfAStepPerCoordinate) {
  const auto [cal, x] = cal_and_test(500, 16, 40, 4);
  CodecOptions o;
  o.rank = 8;
  const ActivationCodec codec = ActivationCodec::fit(cal, o);
  const std::vector<uint8_t> p = codec.encode(x.data(), x.rows());
  EXPECT_EQ(p.size(), ActivationCodec::kHeaderBytes + 16u * (4 + 8));
  const RowMatrix<float> y = codec.decode(p);
  const RowMatrix<float>& P = codec.components();
  for (int64_t t = 0; t < x.rows(); ++t) {
    const Vector<float> c = P * (x.row(t).transpose() - codec.mean());
    const Vector<float> exact = codec.mean() + P.transpose() * c;
    const double step = c.cwiseAbs().maxCoeff() / 127.0;
    // P has orthonormal rows: ||P^T e|| = ||e|| <= sqrt(rank) * step / 2.
    EXPECT_LE((y.row(t).transpose() - exact).norm(), std::sqrt(8.0) * step / 2 + 1e-4) << "token " << t;
  }
  // Eight components of these states (six strong directions) keep most of their variance.
  const RowMatrix<float> centred = x.rowwise() - codec.mean().transpose();
  EXPECT_LT((y - x).squaredNorm(), 0.05 * centred.squaredNorm());
}

TEST(Codec, TopKKeepsTheLargestCoordinates) {
  const auto [cal, x] = cal_and_test(300, 10, 48, 6);
  CodecOptions o;
  o.keep = 6;
  const ActivationCodec codec = ActivationCodec::fit(cal, o);
  const std::vector<uint8_t> p = codec.encode(x.data(), x.rows());
  // Per token: scale, count, 6 one-byte indices, 6 values.
  EXPECT_EQ(p.size(), ActivationCodec::kHeaderBytes + 10u * (4 + 2 + 6 + 6));
  const RowMatrix<float> y = codec.decode(p);
  for (int64_t t = 0; t < x.rows(); ++t) {
    std::vector<std::pair<float, int>> mag;
    for (int j = 0; j < 48; ++j) mag.emplace_back(std::abs(x(t, j) - codec.mean()[j]), j);
    std::sort(mag.rbegin(), mag.rend());
    const double step = mag[0].first / 127.0;
    std::vector<bool> top(48, false);
    for (int k = 0; k < 6; ++k) top[static_cast<std::size_t>(mag[static_cast<std::size_t>(k)].second)] = true;
    for (int j = 0; j < 48; ++j) {
      if (top[static_cast<std::size_t>(j)]) {
        EXPECT_LE(std::abs(y(t, j) - x(t, j)), step / 2 + 1e-5) << t << "," << j;
      } else {
        EXPECT_FLOAT_EQ(y(t, j), codec.mean()[j]) << t << "," << j;
      }
    }
  }
}

TEST(Codec, ThresholdDropsSmallCoordinates) {
  const auto [cal, x] = cal_and_test(300, 8, 20, 8);
  CodecOptions o;
  o.threshold = 1.5f;
  const ActivationCodec codec = ActivationCodec::fit(cal, o);
  const RowMatrix<float> y = codec.decode(codec.encode(x.data(), x.rows()));
  int64_t dropped = 0;
  for (int64_t t = 0; t < x.rows(); ++t) {
    for (int j = 0; j < 20; ++j) {
      if (std::abs(x(t, j) - codec.mean()[j]) < 1.5f) {
        EXPECT_FLOAT_EQ(y(t, j), codec.mean()[j]);
        ++dropped;
      }
    }
  }
  EXPECT_GT(dropped, 0);
}

TEST(Codec, CorruptedPayloadsAreRefused) {
  const auto [cal, x] = cal_and_test(200, 3, 16, 10);
  for (int64_t keep : {0, 4}) {
    CodecOptions o;
    o.keep = keep;
    const ActivationCodec codec = ActivationCodec::fit(cal, o);
    const std::vector<uint8_t> good = codec.encode(x.data(), x.rows());
    // Every single-byte change and every truncation is refused with an error naming the payload.
    for (std::size_t i = 0; i < good.size(); ++i)
      for (uint8_t mask : {uint8_t{1}, uint8_t{0x80}, uint8_t{0xff}}) {
        std::vector<uint8_t> bad = good;
        bad[i] ^= mask;
        try {
          codec.decode(bad);
          ADD_FAILURE() << "byte " << i << " ^ " << int{mask} << " accepted";
        } catch (const Error& e) {
          EXPECT_THAT(e.what(), HasSubstr("payload"));
        }
      }
    for (std::size_t n = 0; n < good.size(); ++n)
      EXPECT_THROW(codec.decode(std::span(good).first(n)), Error) << "truncated to " << n;
    std::vector<uint8_t> longer = good;
    longer.push_back(0);
    EXPECT_THROW(codec.decode(longer), Error);
  }
  // A payload of one codec given to another of a different shape.
  CodecOptions o;
  o.rank = 4;
  const ActivationCodec a = ActivationCodec::fit(cal, {}), b = ActivationCodec::fit(cal, o);
  try {
    b.decode(a.encode(x.data(), x.rows()));
    ADD_FAILURE() << "a dense payload accepted by a rank-4 codec";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("payload header says dim 16, 16 coordinates"));
  }
}

TEST(Codec, RefusesBadOptions) {
  const RowMatrix<float> cal = states(50, 16, 12);
  const auto message = [&](CodecOptions o) {
    try {
      ActivationCodec::fit(cal, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(message({.rank = 17}), HasSubstr("rank 17"));
  EXPECT_THAT(message({.rank = -1}), HasSubstr("rank -1"));
  EXPECT_THAT(message({.rank = 4, .keep = 5}), HasSubstr("keep 5"));
  EXPECT_THAT(message({.threshold = -1.0f}), HasSubstr("threshold"));
  EXPECT_THROW(ActivationCodec::fit(RowMatrix<float>(0, 16), {}), Error);
  EXPECT_THROW(fit_pca(cal, 0), Error);
}

}  // namespace
}  // namespace strata::gated
