// Sparse layers: the SIMD kernels on every Highway target this CPU supports against their scalar
// references, and nn::SparseLinear (as the pruning compressors' to_linear() builds it) against the
// reconstructed dense weights times x.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "nn/sparse_linear_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/sparse_matmul-inl.h"
#include "nn/linear_test_util.hpp"
#include "strata/core/dtype.hpp"

#ifndef STRATA_SPARSE_LINEAR_TEST_HELPERS
#define STRATA_SPARSE_LINEAR_TEST_HELPERS
namespace strata::sparse_test {

// The kernels' inputs built independently of nn::SparseLinear, from a dense pruned matrix.
struct Packed {
  int64_t rows = 0, cols = 0;
  bool half = false;
  std::vector<float> w;  // dense, zero where pruned
  std::vector<float> v32;
  std::vector<f16> v16;
  std::vector<uint8_t> meta;
  int64_t stride = 0;
  std::vector<int64_t> start;
  std::vector<uint16_t> col16;
  std::vector<uint32_t> col32;
  const void* values() const { return half ? static_cast<const void*>(v16.data()) : v32.data(); }

  void set_values(std::vector<float> v) {
    v.resize(v.size() + 16, 0.0f);
    if (half) {
      for (float f : v) v16.push_back(f32_to_f16(f));
    } else {
      v32 = std::move(v);
    }
  }
};

// Pseudo-random 2:4 weights (values exact in f16 when `half`).
inline Packed two_four(int64_t rows, int64_t cols, bool half, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  Packed p;
  p.rows = rows;
  p.cols = cols;
  p.half = half;
  p.w.assign(static_cast<size_t>(rows * cols), 0.0f);
  p.stride = (cols + 7) / 8;
  p.meta.assign(static_cast<size_t>(rows * p.stride + 8), 0);
  std::vector<float> values;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = 0;
    for (int64_t j = 0; j < cols; j += 4) {
      const int a = static_cast<int>(rng() % 4);
      int b = static_cast<int>(rng() % 3);
      if (b >= a) ++b;
      for (int pos : {std::min(a, b), std::max(a, b)}) {
        const float v = half ? f16_to_f32(f32_to_f16(g(rng))) : g(rng);
        p.w[static_cast<size_t>(r * cols + j + pos)] = v;
        values.push_back(v);
        const int64_t bit = 2 * k++;
        p.meta[static_cast<size_t>(r * p.stride + bit / 8)] |= static_cast<uint8_t>(pos << (bit % 8));
      }
    }
  }
  p.set_values(std::move(values));
  return p;
}

// Pseudo-random unstructured weights keeping about `density`, as a bitmask or CSR.
inline Packed unstructured(int64_t rows, int64_t cols, double density, bool half, bool csr, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::uniform_real_distribution<double> u;
  Packed p;
  p.rows = rows;
  p.cols = cols;
  p.half = half;
  p.w.assign(static_cast<size_t>(rows * cols), 0.0f);
  p.stride = (cols + 7) / 8;
  if (!csr) p.meta.assign(static_cast<size_t>(rows * p.stride + 8), 0);
  p.start.push_back(0);
  std::vector<float> values;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      if (u(rng) >= density) continue;
      const float v = half ? f16_to_f32(f32_to_f16(g(rng))) : g(rng);
      p.w[static_cast<size_t>(r * cols + j)] = v;
      values.push_back(v);
      if (!csr)
        p.meta[static_cast<size_t>(r * p.stride + j / 8)] |= static_cast<uint8_t>(1u << (j % 8));
      else
        p.col16.push_back(static_cast<uint16_t>(j));
    }
    p.start.push_back(static_cast<int64_t>(values.size()));
  }
  p.set_values(std::move(values));
  return p;
}

}  // namespace strata::sparse_test
#endif

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {

using sparse_test::Packed;

constexpr int64_t kTokens[] = {1, 2, 3, 4, 5, 16};

void TestSparse24MatchesReference() {
  for (bool half : {false, true})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{33, 256}, {7, 100}, {5, 4}, {64, 516}}) {
      const Packed p = sparse_test::two_four(rows, cols, half, 3 + rows + cols);
      const kernels::Sparse24 w{rows, cols, p.values(), half, p.meta.data(), p.stride};
      for (int64_t tokens : kTokens) {
        const auto x = linear_test::inputs(tokens * cols, 7 + tokens);
        std::vector<float> simd(static_cast<size_t>(tokens * rows), NAN), ref(simd.size(), NAN);
        kernels::HWY_NAMESPACE::Sparse24Matmul(w, x.data(), tokens, simd.data(), 0, rows);
        kernels::sparse24_matmul_reference(w, x.data(), tokens, ref.data(), 0, rows);
        linear_test::expect_close(simd, ref, p.w.data(), x.data(), rows, cols, tokens, 1e-6, "2:4");
      }
    }
}

void TestSparseBitmaskMatchesReference() {
  for (bool half : {false, true})
    for (double density : {0.5, 0.1, 0.97})
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{33, 256}, {7, 101}, {3, 5}}) {
        const Packed p = sparse_test::unstructured(rows, cols, density, half, false, 11 + rows + cols);
        const kernels::SparseBitmask w{rows, cols, p.values(), half, p.start.data(), p.meta.data(), p.stride};
        for (int64_t tokens : kTokens) {
          const auto x = linear_test::inputs(tokens * cols, 13 + tokens);
          std::vector<float> simd(static_cast<size_t>(tokens * rows), NAN), ref(simd.size(), NAN);
          kernels::HWY_NAMESPACE::SparseBitmaskMatmul(w, x.data(), tokens, simd.data(), 0, rows);
          kernels::sparse_bitmask_matmul_reference(w, x.data(), tokens, ref.data(), 0, rows);
          linear_test::expect_close(simd, ref, p.w.data(), x.data(), rows, cols, tokens, 1e-6, "bitmask");
        }
      }
}

void TestSparseCsrMatchesReference() {
  for (bool half : {false, true})
    for (double density : {0.1, 0.3})
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{33, 512}, {7, 101}}) {
        const Packed p = sparse_test::unstructured(rows, cols, density, half, true, 17 + rows + cols);
        const kernels::SparseCsr w{rows, cols, p.values(), half, p.start.data(), p.col16.data(), nullptr};
        for (int64_t tokens : kTokens) {
          const auto x = linear_test::inputs(tokens * cols, 19 + tokens);
          std::vector<float> simd(static_cast<size_t>(tokens * rows), NAN), ref(simd.size(), NAN);
          kernels::HWY_NAMESPACE::SparseCsrMatmul(w, x.data(), tokens, simd.data(), 0, rows);
          kernels::sparse_csr_matmul_reference(w, x.data(), tokens, ref.data(), 0, rows);
          linear_test::expect_close(simd, ref, p.w.data(), x.data(), rows, cols, tokens, 1e-6, "CSR");
        }
      }
}

// A row range writes only its rows.
void TestSparseRowRange() {
  const Packed p = sparse_test::two_four(40, 64, false, 5);
  const kernels::Sparse24 w{40, 64, p.values(), false, p.meta.data(), p.stride};
  const auto x = linear_test::inputs(3 * 64, 9);
  std::vector<float> y(3 * 40, -7.0f), ref(3 * 40, -7.0f);
  kernels::HWY_NAMESPACE::Sparse24Matmul(w, x.data(), 3, y.data(), 10, 25);
  kernels::sparse24_matmul_reference(w, x.data(), 3, ref.data(), 10, 25);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t r = 0; r < 40; ++r) {
      const size_t i = static_cast<size_t>(t * 40 + r);
      if (r < 10 || r >= 25)
        EXPECT_EQ(y[i], -7.0f);
      else
        EXPECT_NEAR(y[i], ref[i], 1e-4);
    }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata {
HWY_BEFORE_TEST(SparseKernelTest);
HWY_EXPORT_AND_TEST_P(SparseKernelTest, TestSparse24MatchesReference);
HWY_EXPORT_AND_TEST_P(SparseKernelTest, TestSparseBitmaskMatchesReference);
HWY_EXPORT_AND_TEST_P(SparseKernelTest, TestSparseCsrMatchesReference);
HWY_EXPORT_AND_TEST_P(SparseKernelTest, TestSparseRowRange);
}  // namespace strata

// After the per-target registration: Highway's macros name an unqualified testing::, which
// strata::testing would hide.
#include <memory>

#include "strata/compress/compressor.hpp"
#include "strata/nn/sparse_linear.hpp"
#include "test_util.hpp"

namespace strata {
namespace {

using nn::SparseLinear;

struct Case {
  const char* compressor;
  const char* knob;
  int64_t rows, cols;
  SparseLinear::Layout layout;
};

class SparseLinearTest : public ::testing::TestWithParam<Case> {};

TEST_P(SparseLinearTest, ForwardMatchesReconstructedWeights) {
  const Case& c = GetParam();
  const RowMatrix<float> weight = testing::heavy_tailed(c.rows, c.cols, 21 + c.rows);
  const compress::Layer layer{"blk.0.ffn_up.weight", &weight};
  const auto& comp = compress::find_compressor(c.compressor);
  const compress::Compressed stored = comp.apply(layer, {}, c.knob);
  const RowMatrix<float> dense = comp.reconstruct(stored);
  const auto linear = comp.to_linear(stored);
  const auto* sparse = dynamic_cast<const SparseLinear*>(linear.get());
  ASSERT_NE(sparse, nullptr) << linear->describe();
  EXPECT_EQ(sparse->layout(), c.layout) << linear->describe();
  EXPECT_LT(linear->weight_bytes(), static_cast<uint64_t>(c.rows * c.cols) * 4) << linear->describe();
  EXPECT_EQ(linear->in_features(), c.cols);
  EXPECT_EQ(linear->out_features(), c.rows);
  const RowMatrix<float> back = linear->dense_weight();
  ASSERT_EQ(back.rows(), c.rows);
  ASSERT_EQ(back.cols(), c.cols);
  for (int64_t i = 0; i < dense.size(); ++i) ASSERT_EQ(back.data()[i], dense.data()[i]) << "weight " << i;
  for (int64_t tokens : {1, 5, 16, 40}) {
    const auto x = linear_test::inputs(tokens * c.cols, 31 + tokens);
    std::vector<float> y(static_cast<size_t>(tokens * c.rows), NAN);
    linear->forward(x.data(), tokens, y.data());
    linear_test::expect_close(y, linear_test::plain_product(dense, x, tokens), dense.data(), x.data(), c.rows, c.cols,
                              tokens, 1e-5, linear->describe());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Patterns, SparseLinearTest,
    ::testing::Values(Case{"prune.magnitude", "pattern=2:4", 96, 256, SparseLinear::Layout::two_four},
                      Case{"prune.magnitude", "pattern=2:4,values=f32", 37, 100, SparseLinear::Layout::two_four},
                      Case{"prune.magnitude", "pattern=2:4", 33, 516, SparseLinear::Layout::two_four},
                      Case{"prune.magnitude", "pattern=4:8", 45, 264, SparseLinear::Layout::bitmask},
                      Case{"prune.magnitude", "sparsity=0.5", 50, 301, SparseLinear::Layout::bitmask},
                      Case{"prune.magnitude", "sparsity=0.5,values=f32", 19, 77, SparseLinear::Layout::bitmask},
                      Case{"prune.magnitude", "sparsity=0.9", 70, 333, SparseLinear::Layout::csr},
                      Case{"prune.magnitude", "sparsity=0.9,values=f32", 16, 1000, SparseLinear::Layout::csr}));

// Wanda and SparseGPT need calibration statistics; their layers are the same type.
TEST(SparseLinear, CalibratedCompressorsReturnSparseLayers) {
  const RowMatrix<float> weight = testing::heavy_tailed(48, 128, 5);
  const Matrix<double> h = testing::correlated_hessian(128, 6);
  const Vector<double> ms = h.diagonal();
  const compress::Layer layer{"blk.1.attn_q.weight", &weight};
  for (const char* name : {"prune.wanda", "prune.sparsegpt"})
    for (const char* knob : {"pattern=2:4", "sparsity=0.5", "sparsity=0.9"}) {
      const auto& comp = compress::find_compressor(name);
      const compress::Compressed stored = comp.apply(layer, {&h, &ms, nullptr, 1000}, knob);
      const auto linear = comp.to_linear(stored);
      ASSERT_NE(dynamic_cast<const SparseLinear*>(linear.get()), nullptr) << name << " " << knob;
      const RowMatrix<float> dense = comp.reconstruct(stored);
      ASSERT_TRUE(linear->dense_weight() == dense) << name << " " << knob;
      const auto x = linear_test::inputs(3 * 128, 2);
      std::vector<float> y(3 * 48);
      linear->forward(x.data(), 3, y.data());
      linear_test::expect_close(y, linear_test::plain_product(dense, x, 3), dense.data(), x.data(), 48, 128, 3, 1e-5, knob);
    }
}

TEST(SparseLinear, RefusesWhatDoesNotFit) {
  RowMatrix<float> w = RowMatrix<float>::Ones(4, 8);
  EXPECT_THROW(SparseLinear(w, false, SparseLinear::Layout::two_four), Error);
  w(0, 0) = 1.0f + 1e-6f;  // not an f16 value
  EXPECT_THROW(SparseLinear(w, true), Error);
  EXPECT_THROW(SparseLinear(RowMatrix<float>(0, 4), false), Error);
}

// Groups keeping fewer than two weights, negative zeros, and an automatic choice of 2:4.
TEST(SparseLinear, TwoFourFillsSparseGroups) {
  RowMatrix<float> w = RowMatrix<float>::Zero(3, 12);
  w(0, 1) = 2.0f;
  w(1, 3) = -0.0f;
  w(1, 6) = 1.5f;
  w(1, 7) = -4.0f;
  w(2, 8) = 3.0f;
  w(2, 11) = 0.5f;
  w(0, 4) = 1.0f;
  w(0, 5) = 1.0f;
  w(1, 0) = 0.25f;
  w(2, 2) = 8.0f;
  const SparseLinear layer(w, true);
  EXPECT_EQ(layer.layout(), SparseLinear::Layout::two_four);
  const RowMatrix<float> back = layer.dense_weight();
  for (int64_t i = 0; i < w.size(); ++i)
    EXPECT_EQ(std::bit_cast<uint32_t>(back.data()[i]), std::bit_cast<uint32_t>(w.data()[i])) << i;
}

}  // namespace
}  // namespace strata
#endif  // HWY_ONCE
