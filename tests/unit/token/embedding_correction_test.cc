// Embedding correction: the mean shift recovered exactly from data shifted by a known vector, the ridge affine
// map against a stacked least-squares problem solved by QR in the test, the limits of the ridge (no ridge: the
// exact map; a huge ridge: the shift), the held-out choice of the ridge, mean pooling and the corrected
// embedding of MiniLM against the encoder's own pooling, and the refusals.
#include "strata/token/correction.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <Eigen/QR>
#include <cmath>
#include <cstdio>

#include "strata/core/error.hpp"
#include "test_util.hpp"

namespace strata::token {
namespace {

using ::testing::HasSubstr;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;

RowMatrix<float> gaussian(int64_t n, int64_t d, uint64_t seed, float scale = 1) {
  const std::vector<float> v = testing::gaussian_floats(static_cast<size_t>(n * d), seed);
  return scale * Eigen::Map<const RowMatrix<float>>(v.data(), n, d);
}

// argmin over [W; b] of ||X W + 1 b - Y||^2 + lambda ||W - I||^2 (b unpenalised), as one least-squares problem:
// the rows [X 1] over the rows [sqrt(lambda) I 0], against [Y] over [sqrt(lambda) I], solved by Householder QR.
MatrixD stacked_ridge(const RowMatrix<float>& x, const RowMatrix<float>& y, double lambda) {
  const int64_t n = x.rows(), d = x.cols(), k = y.cols();
  MatrixD a = MatrixD::Zero(n + d, d + 1), t = MatrixD::Zero(n + d, k);
  a.topLeftCorner(n, d) = x.cast<double>();
  a.topRightCorner(n, 1).setOnes();
  a.bottomLeftCorner(d, d) = std::sqrt(lambda) * MatrixD::Identity(d, d);
  t.topRows(n) = y.cast<double>();
  t.bottomRows(d) = std::sqrt(lambda) * MatrixD::Identity(d, k);
  return a.householderQr().solve(t);  // [d + 1, k]: W over b
}

// The relative ridge's lambda, from its definition: ridge times the summed squared deviations of X over d.
double lambda_of(const RowMatrix<float>& x, double ridge) {
  const MatrixD xd = x.cast<double>();
  const MatrixD c = xd.rowwise() - xd.colwise().mean();
  return ridge * c.squaredNorm() / static_cast<double>(x.cols());
}

TEST(EmbeddingCorrection, ShiftRecoversAKnownVector) {
  const RowMatrix<float> merged = gaussian(50, 16, 1);
  const Eigen::RowVectorXf v = gaussian(1, 16, 2, 3).row(0);
  const RowMatrix<float> dense = merged.rowwise() + v;
  const EmbeddingCorrection c = EmbeddingCorrection::shift(merged, dense);
  EXPECT_EQ(c.kind(), CorrectionKind::shift);
  for (int64_t j = 0; j < 16; ++j) EXPECT_NEAR(c.bias()(j), v(j), 1e-5) << j;
  RowMatrix<float> p = merged;
  c.apply(p);
  EXPECT_LT((p - dense).cwiseAbs().maxCoeff(), 1e-5);
  // The corrected embedding is the unit-length dense pool.
  const RowMatrix<float> e = c.embed(merged);
  for (int64_t i = 0; i < 50; ++i)
    for (int64_t j = 0; j < 16; ++j) EXPECT_NEAR(e(i, j), dense(i, j) / dense.row(i).norm(), 1e-5);
}

TEST(EmbeddingCorrection, AffineMatchesStackedLeastSquares) {
  const int64_t n = 40, d = 6;
  const RowMatrix<float> x = gaussian(n, d, 3);
  const RowMatrix<float> a = RowMatrix<float>::Identity(d, d) + gaussian(d, d, 4, 0.3f);
  const Eigen::RowVectorXf b = gaussian(1, d, 5).row(0);
  const RowMatrix<float> y = RowMatrix<float>((x * a).rowwise() + b) + gaussian(n, d, 6, 0.2f);
  for (double ridge : {1e-3, 0.1, 2.0}) {
    const EmbeddingCorrection c = EmbeddingCorrection::affine(x, y, ridge);
    const MatrixD want = stacked_ridge(x, y, lambda_of(x, ridge));
    ASSERT_EQ(c.map().rows(), d);
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(c.map()(i, j), want(i, j), 1e-4) << ridge << " W " << i << "," << j;
    for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(c.bias()(j), want(d, j), 1e-4) << ridge << " b " << j;
    EXPECT_EQ(c.ridge(), ridge);
  }
}

TEST(EmbeddingCorrection, RidgeLimits) {
  const int64_t n = 30, d = 5;
  const RowMatrix<float> x = gaussian(n, d, 7);
  const RowMatrix<float> a = gaussian(d, d, 8);
  const Eigen::RowVectorXf b = gaussian(1, d, 9).row(0);
  const RowMatrix<float> y = (x * a).rowwise() + b;
  // A vanishing ridge recovers an exact affine relation.
  const EmbeddingCorrection exact = EmbeddingCorrection::affine(x, y, 1e-9);
  EXPECT_LT((exact.map() - a).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_LT((exact.bias() - b).cwiseAbs().maxCoeff(), 1e-4);
  // A huge ridge leaves W = I, and the intercept is then the mean shift.
  const EmbeddingCorrection stiff = EmbeddingCorrection::affine(x, y, 1e9);
  EXPECT_LT((stiff.map() - RowMatrix<float>::Identity(d, d)).cwiseAbs().maxCoeff(), 1e-6);
  const Eigen::RowVectorXf shift = y.colwise().mean() - x.colwise().mean();
  EXPECT_LT((stiff.bias() - shift).cwiseAbs().maxCoeff(), 1e-4);
}

TEST(EmbeddingCorrection, FitChoosesTheBestHeldOutRidge) {
  // Few pairs for the width and strong noise: the least ridge overfits, the largest leaves the map out.
  const int64_t n = 48, d = 16;
  const RowMatrix<float> x = gaussian(n, d, 10);
  const RowMatrix<float> a = RowMatrix<float>::Identity(d, d) + gaussian(d, d, 11, 0.3f);
  const RowMatrix<float> y = RowMatrix<float>(x * a) + gaussian(n, d, 12, 1.5f);
  CorrectionOptions o;
  o.ridges = {1e-6, 0.01, 1, 100};
  o.holdout_every = 4;
  const EmbeddingCorrection c = EmbeddingCorrection::fit(x, y, o);
  ASSERT_EQ(c.holdout_cosine().size(), o.ridges.size());
  // Each held-out score from the stacked reference fitted on the other pairs.
  RowMatrix<float> xt(n - n / 4, d), yt(n - n / 4, d), xh(n / 4, d), yh(n / 4, d);
  for (int64_t i = 0, t = 0, h = 0; i < n; ++i)
    if (i % 4 == 0) {
      xh.row(h) = x.row(i);
      yh.row(h++) = y.row(i);
    } else {
      xt.row(t) = x.row(i);
      yt.row(t++) = y.row(i);
    }
  size_t best = 0;
  for (size_t r = 0; r < o.ridges.size(); ++r) {
    const MatrixD wb = stacked_ridge(xt, yt, lambda_of(xt, o.ridges[r]));
    double sum = 0;
    for (int64_t i = 0; i < xh.rows(); ++i) {
      const Eigen::RowVectorXd p = xh.row(i).cast<double>() * wb.topRows(d) + wb.row(d);
      const Eigen::RowVectorXd q = yh.row(i).cast<double>();
      sum += p.dot(q) / (p.norm() * q.norm());
    }
    EXPECT_NEAR(c.holdout_cosine()[r], sum / static_cast<double>(xh.rows()), 1e-5) << o.ridges[r];
    if (c.holdout_cosine()[r] > c.holdout_cosine()[best]) best = r;
  }
  EXPECT_EQ(c.ridge(), o.ridges[best]);
  // The chosen ridge refitted on every pair.
  const MatrixD all = stacked_ridge(x, y, lambda_of(x, c.ridge()));
  EXPECT_LT((c.map().cast<double>() - all.topRows(d)).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_NE(best, 0u);
  EXPECT_NE(best, o.ridges.size() - 1);
}

TEST(EmbeddingCorrection, NoneLeavesPoolsAlone) {
  const RowMatrix<float> x = gaussian(10, 4, 13);
  CorrectionOptions o;
  o.kind = CorrectionKind::none;
  RowMatrix<float> p = x;
  EmbeddingCorrection::fit(x, x, o).apply(p);
  EXPECT_EQ(p, x);
}

TEST(EmbeddingCorrection, Refusals) {
  const RowMatrix<float> x = gaussian(10, 4, 14), y = gaussian(9, 4, 15);
  EXPECT_THAT([&] { EmbeddingCorrection::shift(x, y); },
              ::testing::ThrowsMessage<Error>(HasSubstr("they must match row for row")));
  EXPECT_THAT([&] { EmbeddingCorrection::affine(x, x, 0); },
              ::testing::ThrowsMessage<Error>(HasSubstr("ridge is 0")));
  CorrectionOptions o;
  o.holdout_every = 8;  // 10 pairs hold out too few
  EXPECT_THAT([&] { EmbeddingCorrection::fit(x, x, o); },
              ::testing::ThrowsMessage<Error>(HasSubstr("at least 16 are needed")));
  o.holdout_every = 1;
  EXPECT_THAT([&] { EmbeddingCorrection::fit(x, x, o); },
              ::testing::ThrowsMessage<Error>(HasSubstr("holdout_every")));
  const RowMatrix<float> same = RowMatrix<float>::Ones(10, 4);
  EXPECT_THAT([&] { EmbeddingCorrection::affine(same, same, 1); },
              ::testing::ThrowsMessage<Error>(HasSubstr("do not vary")));
  RowMatrix<float> narrow = gaussian(3, 2, 16);
  EXPECT_THAT([&] { EmbeddingCorrection::shift(x, x).apply(narrow); },
              ::testing::ThrowsMessage<Error>(HasSubstr("fitted on width 4")));
  EXPECT_THAT([&] { parse_correction("scale"); }, ::testing::ThrowsMessage<Error>(HasSubstr("'scale' is unknown")));
}

// Mean pooling and the corrected embedding through the real encoder: no correction gives encoder.embed, a
// shift gives the normalised sum of the pool (averaged here over the forward pass's rows) and the shift.
TEST(EmbeddingCorrection, MiniLMPoolingAndCorrectedEmbedding) {
  const auto dir = testing::models_dir() / "all-minilm-l6-v2";
  STRATA_REQUIRE_FILE(dir / "model.safetensors", "scripts/fetch-models.sh");
  const nn::SentenceEncoder se = nn::SentenceEncoder::open(dir);
  const std::vector<std::string> s = {"Call me Ishmael.", "It is a way I have of driving off the spleen.",
                                      "Whenever I find myself growing grim about the mouth, I go to sea."};
  const nn::TokenBatch batch = se.tokenizer().encode_batch(s);
  const nn::BertEncoder& enc = se.encoder();
  const Tensor states = enc.forward(batch);
  const RowMatrix<float> pools = mean_pool(batch, states);
  const float* h = states.view<const float>().data();
  const int64_t d = enc.config().dim;
  int64_t first = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    for (int64_t j = 0; j < d; j += 37) {
      double sum = 0;
      for (int64_t t = 0; t < batch.tokens(i); ++t) sum += h[(first + t) * d + j];
      EXPECT_NEAR(pools(i, j), sum / static_cast<double>(batch.tokens(i)), 1e-5);
    }
    first += batch.tokens(i);
  }
  const Tensor plain = enc.embed(batch), same = embed_corrected(enc, batch, nullptr, {});
  ASSERT_EQ(same.shape(), plain.shape());
  for (int64_t k = 0; k < plain.numel(); ++k)
    EXPECT_NEAR(same.view<const float>().data()[k], plain.view<const float>().data()[k], 1e-6);
  const Eigen::RowVectorXf v = gaussian(1, d, 17, 0.1f).row(0);
  const RowMatrix<float> shifted = pools.rowwise() + v;
  const Tensor e = embed_corrected(enc, batch, nullptr, EmbeddingCorrection::shift(pools, shifted));
  for (int64_t i = 0; i < batch.size; ++i)
    for (int64_t j = 0; j < d; ++j)
      EXPECT_NEAR(e.view<const float>().data()[i * d + j], shifted(i, j) / shifted.row(i).norm(), 1e-5);
}

}  // namespace
}  // namespace strata::token
