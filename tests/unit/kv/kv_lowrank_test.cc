#include "strata/kv/lowrank.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/linalg/svd.hpp"

namespace strata::kv {
namespace {

RowMatrix<float> gaussian(int64_t n, int64_t d, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, scale);
  RowMatrix<float> x(n, d);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
  return x;
}

double rel_error2(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  return (a.cast<double>() - b.cast<double>()).squaredNorm() / a.cast<double>().squaredNorm();
}

TEST(KvLowRank, FullRankIsExact) {
  const RowMatrix<float> x = gaussian(200, 48, 1, 2.0f), y = gaussian(30, 48, 2);
  const LowRankBasis b = LowRankBasis::fit(x);
  EXPECT_EQ(b.rank(), 48);
  EXPECT_EQ(b.features(), 48);
  EXPECT_LT(rel_error2(x, b.reconstruct(b.project(x))), 1e-10);
  // With as many components as features the basis spans everything, unseen rows too.
  EXPECT_LT(rel_error2(y, b.reconstruct(b.project(y))), 1e-10);
  EXPECT_TRUE((b.basis().transpose() * b.basis()).isApprox(RowMatrix<float>::Identity(48, 48), 1e-5f));
  EXPECT_NEAR(b.relative_error(48), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(b.relative_error(0), 1.0);
}

TEST(KvLowRank, ErrorIsTheDiscardedSpectrumEnergy) {
  const int64_t n = 300, f = 64;
  Vector<double> s(f);
  for (int64_t i = 0; i < f; ++i) s(i) = 10.0 * std::pow(0.9, static_cast<double>(i));
  const RowMatrix<float> x = linalg::matrix_with_singular_values<double>(n, f, s, 3).cast<float>();
  const LowRankBasis b = LowRankBasis::fit(x);
  const double total = s.squaredNorm();
  const std::vector<double> curve = b.error_curve();
  ASSERT_EQ(curve.size(), static_cast<size_t>(f + 1));
  for (int64_t r : {1, 4, 16, 32, 63}) {
    const double discarded = s.tail(f - r).squaredNorm() / total;
    EXPECT_NEAR(b.relative_error(r), discarded, 1e-6 * discarded + 1e-9) << "rank " << r;
    EXPECT_EQ(curve[static_cast<size_t>(r)], b.relative_error(r));
    const LowRankBasis t = b.truncated(r);
    const RowMatrix<float> p = t.project(x);
    ASSERT_EQ(p.cols(), r);
    EXPECT_NEAR(rel_error2(x, t.reconstruct(p)), discarded, 1e-4 * discarded + 1e-7) << "rank " << r;
    EXPECT_EQ(t.coefficient_bytes(n), static_cast<uint64_t>(n * r * 4));
    EXPECT_EQ(t.basis_bytes(), static_cast<uint64_t>(f * r * 4));
  }
  // The randomized solver finds the same subspace on a decaying spectrum.
  LowRankOptions ro;
  ro.rank = 16;
  ro.solver = SvdSolver::randomized;
  const LowRankBasis rb = LowRankBasis::fit(x, ro);
  EXPECT_EQ(rb.rank(), 16);
  EXPECT_EQ(rb.spectrum().size(), 16);
  EXPECT_NEAR(rel_error2(x, rb.reconstruct(rb.project(x))), b.relative_error(16), 1e-2 * b.relative_error(16));
  EXPECT_NEAR(rb.relative_error(16), b.relative_error(16), 1e-2 * b.relative_error(16));
}

TEST(KvLowRank, StackedCachesAndHeads) {
  // A layer cache of 3 heads of 16; each head lives in its own 4-dimensional subspace.
  const int64_t n = 120, hd = 16, heads = 3;
  RowMatrix<float> layer(n, heads * hd);
  for (int64_t h = 0; h < heads; ++h)
    layer.middleCols(h * hd, hd) = gaussian(n, 4, 10 + static_cast<uint64_t>(h)) * gaussian(4, hd, 20 + static_cast<uint64_t>(h));
  for (int64_t h = 0; h < heads; ++h) {
    const RowMatrix<float> x = head_slice(layer, h, hd);
    EXPECT_TRUE(x == layer.middleCols(h * hd, hd));
    LowRankOptions o;
    o.rank = 4;
    const LowRankBasis b = LowRankBasis::fit(x, o);
    EXPECT_LT(rel_error2(x, b.reconstruct(b.project(x))), 1e-10) << "head " << h;
  }
  // The whole layer needs 12 components.
  const LowRankBasis whole = LowRankBasis::fit(layer);
  EXPECT_LT(whole.relative_error(12), 1e-10);
  EXPECT_GT(whole.relative_error(11), 1e-3);
  // Several calibration caches fit as one stacked along tokens.
  const std::vector<RowMatrix<float>> parts = {layer.topRows(50), layer.bottomRows(70)};
  LowRankOptions o;
  o.rank = 12;
  const LowRankBasis stacked = LowRankBasis::fit(parts, o);
  EXPECT_NEAR(stacked.calibration_energy(), whole.calibration_energy(), 1e-9 * whole.calibration_energy());
  EXPECT_LT(rel_error2(layer, stacked.reconstruct(stacked.project(layer))), 1e-10);
  EXPECT_THROW(head_slice(layer, 3, hd), Error);
  EXPECT_THROW(head_slice(layer, 0, 20), Error);
}

TEST(KvLowRank, CrossLayerBasisSharesCoefficients) {
  // Four layers whose caches are different mixes of the same 6 latent token features, plus noise.
  const int64_t n = 256, hd = 32, latent = 6, group = 4;
  const RowMatrix<float> z = gaussian(n, latent, 30);
  std::vector<RowMatrix<float>> layers;
  for (int64_t l = 0; l < group; ++l)
    layers.push_back(z * gaussian(latent, hd, 40 + static_cast<uint64_t>(l)) +
                     gaussian(n, hd, 50 + static_cast<uint64_t>(l), 0.01f));
  LowRankOptions o;
  o.rank = latent;
  const CrossLayerBasis shared = CrossLayerBasis::fit(layers, o);
  EXPECT_EQ(shared.layers(), group);
  const RowMatrix<float> p = shared.project(layers);
  ASSERT_EQ(p.cols(), latent);
  double shared_err = 0, separate_err = 0;
  for (int64_t l = 0; l < group; ++l) {
    const RowMatrix<float>& x = layers[static_cast<size_t>(l)];
    shared_err = std::max(shared_err, rel_error2(x, shared.reconstruct(p, l)));
    // The same coefficient budget spent per layer: 6 / 4 -> 1 or 2 each.
    LowRankOptions po;
    po.rank = l < 2 ? 2 : 1;
    const LowRankBasis b = LowRankBasis::fit(x, po);
    separate_err = std::max(separate_err, rel_error2(x, b.reconstruct(b.project(x))));
  }
  EXPECT_LT(shared_err, 1e-3);
  EXPECT_GT(separate_err, 0.1);
  // The group's error curve is the discarded energy of the joint spectrum.
  const CrossLayerBasis full = CrossLayerBasis::fit(layers);
  EXPECT_EQ(full.rank(), group * hd);
  const RowMatrix<float> pf = full.project(layers);
  for (int64_t l = 0; l < group; ++l)
    EXPECT_LT(rel_error2(layers[static_cast<size_t>(l)], full.reconstruct(pf, l)), 1e-10);
  for (int64_t r : {3, 6, 10}) {
    const CrossLayerBasis t = full.truncated(r);
    const RowMatrix<float> pt = t.project(layers);
    double err = 0, energy = 0;
    for (int64_t l = 0; l < group; ++l) {
      err += (layers[static_cast<size_t>(l)] - t.reconstruct(pt, l)).cast<double>().squaredNorm();
      energy += layers[static_cast<size_t>(l)].cast<double>().squaredNorm();
    }
    EXPECT_NEAR(err / energy, full.joint().relative_error(r), 1e-4 * full.joint().relative_error(r) + 1e-8) << r;
  }
}

TEST(KvLowRank, RejectsBadInput) {
  const RowMatrix<float> x = gaussian(10, 8, 60);
  LowRankOptions o;
  o.rank = 9;
  EXPECT_THROW(LowRankBasis::fit(x, o), Error);
  o.rank = 0;
  o.solver = SvdSolver::randomized;
  EXPECT_THROW(LowRankBasis::fit(x, o), Error);
  const std::vector<RowMatrix<float>> mixed = {x, gaussian(10, 6, 61)};
  EXPECT_THROW(LowRankBasis::fit(mixed), Error);
  RowMatrix<float> bad = x;
  bad(2, 3) = INFINITY;
  EXPECT_THROW(LowRankBasis::fit(bad), Error);
  const LowRankBasis b = LowRankBasis::fit(x);
  EXPECT_THROW(b.project(gaussian(3, 7, 62)), Error);
  EXPECT_THROW(b.reconstruct(gaussian(3, 9, 63)), Error);
  EXPECT_THROW(b.truncated(0), Error);
  const std::vector<RowMatrix<float>> uneven = {x, gaussian(11, 8, 64)};
  EXPECT_THROW(CrossLayerBasis::fit(uneven), Error);
  const CrossLayerBasis c = CrossLayerBasis::fit(mixed);
  EXPECT_THROW(c.reconstruct(c.project(mixed), 2), Error);
  EXPECT_THROW(c.project(std::vector<RowMatrix<float>>{x}), Error);
}

}  // namespace
}  // namespace strata::kv
