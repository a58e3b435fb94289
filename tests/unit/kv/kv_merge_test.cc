#include "strata/kv/merge.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "strata/core/error.hpp"

namespace strata::kv {
namespace {

RowMatrix<float> gaussian(int64_t n, int64_t d, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, scale);
  RowMatrix<float> x(n, d);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
  return x;
}

double angle_between(const Eigen::RowVectorXf& x, const Eigen::RowVectorXf& y) {
  const auto a = x.cast<double>(), b = y.cast<double>();
  return std::acos(std::clamp(a.dot(b) / (a.norm() * b.norm()), -1.0, 1.0));
}

TEST(MiniCacheMerge, EqualLayersRestoreExactly) {
  const RowMatrix<float> a = gaussian(50, 64, 1, 3.0f);
  const MergedPair m = merge(a, a);
  EXPECT_TRUE(m.retained.empty());
  EXPECT_EQ(m.merged_tokens(), 50);
  for (int layer : {0, 1}) {
    const RowMatrix<float> r = m.restore(layer);
    for (int64_t i = 0; i < a.rows(); ++i)
      for (int64_t c = 0; c < a.cols(); ++c)
        ASSERT_NEAR(r(i, c), a(i, c), 4e-7 * a.row(i).norm()) << "layer " << layer << " token " << i;
  }
}

TEST(MiniCacheMerge, NormsKeptAndDirectionsInterpolated) {
  const RowMatrix<float> a = gaussian(40, 32, 2), noise = gaussian(40, 32, 3, 0.6f);
  const RowMatrix<float> b = (a + noise) * 2.5f;
  for (double t : {0.5, 0.3, 0.0, 1.0}) {
    MergeOptions o;
    o.t = t;
    o.retain_distance = 1.0;
    const MergedPair m = merge(a, b, o);
    ASSERT_TRUE(m.retained.empty());
    const RowMatrix<float> ra = m.restore(0), rb = m.restore(1);
    for (int64_t i = 0; i < a.rows(); ++i) {
      EXPECT_NEAR(ra.row(i).norm(), a.row(i).norm(), 2e-6 * a.row(i).norm());
      EXPECT_NEAR(rb.row(i).norm(), b.row(i).norm(), 2e-6 * b.row(i).norm());
      EXPECT_NEAR(m.direction.row(i).norm(), 1.0f, 1e-6f);
      // SLERP: the shared direction sits at t Omega from layer 0's and (1 - t) Omega from layer 1's.
      const double omega = angle_between(a.row(i), b.row(i));
      EXPECT_NEAR(angle_between(m.direction.row(i), a.row(i)), t * omega, 2e-3) << "t " << t << " token " << i;
      EXPECT_NEAR(angle_between(m.direction.row(i), b.row(i)), (1 - t) * omega, 2e-3) << "t " << t << " token " << i;
    }
    // The endpoints restore one layer exactly.
    if (t == 0.0) {
      EXPECT_TRUE(ra.isApprox(a, 1e-6f));
    }
    if (t == 1.0) {
      EXPECT_TRUE(rb.isApprox(b, 1e-6f));
    }
  }
}

TEST(MiniCacheMerge, DistantTokensRetainedExactly) {
  const int64_t n = 30, d = 16;
  RowMatrix<float> a = gaussian(n, d, 4), b = a + gaussian(n, d, 5, 0.1f);
  // Opposite and orthogonal directions: distances 1 and 0.5 (plus the noise).
  b.row(3) = -a.row(3);
  b.row(17) = -2.0f * a.row(17);
  b.row(20) = Eigen::RowVectorXf::Zero(d);
  b(20, 0) = a(20, 1);
  b(20, 1) = -a(20, 0);  // orthogonal in the first two channels only
  a.row(20).tail(d - 2).setZero();
  const Vector<float> dist = angular_distances(a, b);
  EXPECT_NEAR(dist(3), 1.0f, 1e-6f);
  EXPECT_NEAR(dist(20), 0.5f, 1e-6f);
  MergeOptions o;
  o.retain_distance = 0.4;
  const MergedPair m = merge(a, b, o);
  EXPECT_EQ(m.retained, (std::vector<int32_t>{3, 17, 20}));
  EXPECT_EQ(m.merged_tokens(), n - 3);
  const RowMatrix<float> ra = m.restore(0), rb = m.restore(1);
  for (int32_t i : m.retained) {
    EXPECT_TRUE(ra.row(i) == a.row(i));
    EXPECT_TRUE(rb.row(i) == b.row(i));
  }
  // Merged tokens are close: the layers differ by 10% noise.
  double err = 0;
  for (int64_t i = 0; i < n; ++i)
    if (i != 3 && i != 17 && i != 20) err = std::max<double>(err, (ra.row(i) - a.row(i)).norm() / a.row(i).norm());
  EXPECT_LT(err, 0.1);
  EXPECT_GT(err, 0.0);
}

TEST(MiniCacheMerge, BytesAsHeld) {
  const int64_t n = 64, d = 32;
  RowMatrix<float> a = gaussian(n, d, 6), b = a + gaussian(n, d, 7, 0.2f);
  b.row(5) = -a.row(5);
  const MergedPair m = merge(a, b);
  ASSERT_EQ(m.retained.size(), 1u);
  // 63 merged tokens: a direction and two norms; 1 retained: its index and both rows.
  EXPECT_EQ(m.bytes(), 4u * (63 * (d + 2)) + 4u * (2 * d) + 4u);
  EXPECT_LT(m.bytes(), static_cast<uint64_t>(2 * n * d * 4) * 6 / 10);
}

TEST(MiniCacheMerge, ZeroRowsAndThresholds) {
  RowMatrix<float> a = gaussian(4, 8, 8), b = gaussian(4, 8, 9);
  a.row(0).setZero();
  b.row(0).setZero();
  b.row(1).setZero();
  MergeOptions o;
  o.retain_distance = 1.0;
  const MergedPair m = merge(a, b, o);
  EXPECT_TRUE(m.restore(0).row(0).isZero(0));
  EXPECT_TRUE(m.restore(1).row(0).isZero(0));
  // A zero row keeps the other layer's direction: that layer is restored exactly, the zero stays zero.
  EXPECT_TRUE(m.restore(0).row(1).isApprox(a.row(1), 1e-6f));
  EXPECT_TRUE(m.restore(1).row(1).isZero(0));

  Vector<float> dist(5);
  dist << 0.1f, 0.3f, 0.2f, 0.9f, 0.5f;
  EXPECT_NEAR(relative_threshold(dist, 0.05), 0.1 + 0.05 * 0.8, 1e-7);
  EXPECT_NEAR(relative_threshold(dist, 1.0), 0.9, 1e-7);
  EXPECT_THROW(relative_threshold(dist, 2.0), Error);
}

TEST(MiniCacheMerge, RejectsBadInput) {
  const RowMatrix<float> a = gaussian(4, 8, 10), b = gaussian(5, 8, 11);
  EXPECT_THROW(merge(a, b), Error);
  MergeOptions o;
  o.t = 1.5;
  EXPECT_THROW(merge(a, a, o), Error);
  RowMatrix<float> bad = a;
  bad(1, 2) = NAN;
  EXPECT_THROW(merge(a, bad), Error);
  EXPECT_THROW(merge(a, a).restore(2), Error);
}

}  // namespace
}  // namespace strata::kv
