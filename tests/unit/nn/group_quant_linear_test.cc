// Group-quantized layers: the SIMD kernel on every Highway target this CPU supports against its
// scalar reference, and nn::GroupQuantLinear (as the quantizers' to_linear() builds it) against the
// reconstructed dense weights times x.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "nn/group_quant_linear_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/group_matmul-inl.h"
#include "nn/linear_test_util.hpp"

#ifndef STRATA_GROUP_QUANT_LINEAR_TEST_HELPERS
#define STRATA_GROUP_QUANT_LINEAR_TEST_HELPERS
namespace strata::group_test {

// The kernel's input built independently of nn::GroupQuantLinear: random codes and group
// parameters packed into the kernel layout, the dense weights and the padded input beside them.
struct Packed {
  kernels::GroupQuant w;
  std::vector<uint8_t> codes;
  std::vector<float> params;
  std::vector<float> dense;  // [rows, padded cols]
};

inline Packed make(int64_t rows, int64_t cols, int bits, int64_t group, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  Packed p;
  const int64_t g = group >= cols ? cols : group, ng = (cols + g - 1) / g;
  const int64_t gp = (g + kernels::kQuantBlock - 1) / kernels::kQuantBlock * kernels::kQuantBlock;
  p.w = {rows, cols, bits, g, ng, gp, nullptr, nullptr};
  const int64_t row_bytes = ng * gp * bits / 8;
  p.codes.assign(static_cast<size_t>(rows * row_bytes), 0);
  p.params.resize(static_cast<size_t>(rows * ng * 2));
  p.dense.assign(static_cast<size_t>(rows * ng * gp), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < ng; ++k) {
      const float s = scale(rng), z = static_cast<float>(rng() % (1u << bits));
      p.params[static_cast<size_t>((r * ng + k) * 2)] = s;
      p.params[static_cast<size_t>((r * ng + k) * 2 + 1)] = z;
      for (int64_t i = 0; i < gp; ++i) {
        // Codes in the padding too: the zero input there must cancel them.
        const auto code = static_cast<uint8_t>(rng() % (1u << bits));
        const int64_t pos = k * gp + i;
        uint8_t* row = p.codes.data() + r * row_bytes;
        if (bits == 8) {
          row[pos] = code;
        } else {
          const int64_t block = pos / 32, j = pos % 32;
          row[block * 16 + j % 16] |= static_cast<uint8_t>(j < 16 ? code : code << 4);
        }
        if (k * g + i < cols && i < g) p.dense[static_cast<size_t>(r * ng * gp + pos)] = s * (code - z);
      }
    }
  p.w.codes = p.codes.data();
  p.w.params = p.params.data();
  return p;
}

// Inputs in the padded layout, zero in the padding.
inline std::vector<float> padded_inputs(const kernels::GroupQuant& w, int64_t tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss;
  std::vector<float> x(static_cast<size_t>(tokens * w.padded_cols()), 0.0f);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t k = 0; k < w.groups; ++k)
      for (int64_t i = 0; i < w.group && k * w.group + i < w.cols; ++i)
        x[static_cast<size_t>(t * w.padded_cols() + k * w.padded_group + i)] = gauss(rng);
  return x;
}

}  // namespace strata::group_test
#endif

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {

void TestGroupMatmulMatchesReference() {
  struct Shape {
    int64_t rows, cols, group;
  };
  for (int bits : {4, 8})
    for (const Shape s : {Shape{17, 256, 32}, Shape{9, 256, 128}, Shape{5, 100, 32}, Shape{6, 300, 128},
                          Shape{3, 70, 40}, Shape{4, 45, 1000}})
      for (int64_t tokens : {1, 2, 3, 4, 5, 16}) {
        const group_test::Packed p = group_test::make(s.rows, s.cols, bits, s.group, 41 + s.cols + bits);
        const auto xp = group_test::padded_inputs(p.w, tokens, 43 + tokens);
        std::vector<float> simd(static_cast<size_t>(tokens * s.rows), NAN), ref(simd.size(), NAN);
        kernels::HWY_NAMESPACE::GroupMatmul(p.w, xp.data(), tokens, simd.data(), 0, s.rows);
        kernels::group_matmul_reference(p.w, xp.data(), tokens, ref.data(), 0, s.rows);
        linear_test::expect_close(simd, ref, p.dense.data(), xp.data(), s.rows, p.w.padded_cols(), tokens, 1e-6,
                                 "int" + std::to_string(bits) + " group " + std::to_string(s.group));
      }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata {
HWY_BEFORE_TEST(GroupKernelTest);
HWY_EXPORT_AND_TEST_P(GroupKernelTest, TestGroupMatmulMatchesReference);
}  // namespace strata

// After the per-target registration: Highway's macros name an unqualified testing::, which
// strata::testing would hide.
#include <memory>

#include "strata/compress/compressor.hpp"
#include "strata/nn/group_quant_linear.hpp"
#include "test_util.hpp"

namespace strata {
namespace {

using nn::GroupQuantLinear;

struct Case {
  const char* compressor;
  const char* knob;
  int64_t rows, cols;
  int kernel_bits;
};

class GroupQuantLinearTest : public ::testing::TestWithParam<Case> {};

TEST_P(GroupQuantLinearTest, ForwardMatchesReconstructedWeights) {
  const Case& c = GetParam();
  const RowMatrix<float> weight = testing::heavy_tailed(c.rows, c.cols, 51 + c.cols);
  const Matrix<double> h = testing::correlated_hessian(c.cols, 52);
  const Vector<double> ms = h.diagonal();
  const Vector<double> ma = ms.cwiseSqrt();
  const compress::Layer layer{"blk.0.attn_v.weight", &weight};
  const auto& comp = compress::find_compressor(c.compressor);
  const compress::Compressed stored = comp.apply(layer, {&h, &ms, &ma, 1000}, c.knob);
  const RowMatrix<float> dense = comp.reconstruct(stored);
  const auto linear = comp.to_linear(stored);
  const auto* quant = dynamic_cast<const GroupQuantLinear*>(linear.get());
  ASSERT_NE(quant, nullptr) << linear->describe();
  EXPECT_EQ(quant->kernel_bits(), c.kernel_bits) << linear->describe();
  EXPECT_LT(linear->weight_bytes(), static_cast<uint64_t>(c.rows * c.cols) * 4) << linear->describe();
  EXPECT_EQ(linear->in_features(), c.cols);
  EXPECT_EQ(linear->out_features(), c.rows);
  const RowMatrix<float> back = linear->dense_weight();
  ASSERT_EQ(back.rows(), c.rows);
  ASSERT_EQ(back.cols(), c.cols);
  for (int64_t i = 0; i < dense.size(); ++i) ASSERT_EQ(back.data()[i], dense.data()[i]) << "weight " << i;
  for (int64_t tokens : {1, 5, 16, 40}) {
    const auto x = linear_test::inputs(tokens * c.cols, 61 + tokens);
    std::vector<float> y(static_cast<size_t>(tokens * c.rows), NAN);
    linear->forward(x.data(), tokens, y.data());
    linear_test::expect_close(y, linear_test::plain_product(dense, x, tokens), dense.data(), x.data(), c.rows, c.cols,
                              tokens, 1e-5, linear->describe());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Knobs, GroupQuantLinearTest,
    ::testing::Values(Case{"quant.rtn", "bits=4,group=32,asym", 48, 256, 4},
                      Case{"quant.rtn", "bits=4,group=128,asym", 33, 384, 4},
                      Case{"quant.rtn", "bits=4,group=32,sym", 21, 100, 4},
                      Case{"quant.rtn", "bits=4,group=128,sym", 40, 300, 4},
                      Case{"quant.rtn", "bits=8,group=32,asym", 19, 96, 8},
                      Case{"quant.rtn", "bits=8,group=128,asym", 35, 200, 8},
                      Case{"quant.rtn", "bits=8,group=128,sym", 64, 512, 8},
                      Case{"quant.rtn", "bits=8,group=32,sym", 7, 45, 8},
                      Case{"quant.rtn", "bits=3,group=128,asym", 30, 256, 4},
                      Case{"quant.rtn", "bits=2,group=64,sym", 12, 130, 4},
                      Case{"quant.rtn", "bits=6,group=row,asym", 10, 77, 8},
                      Case{"quant.gptq", "bits=4,group=128,asym", 24, 256, 4},
                      Case{"quant.awq", "bits=4,group=32,asym", 24, 160, 4},
                      Case{"quant.awq", "bits=8,group=128,asym", 16, 200, 8}));

TEST(GroupQuantLinear, RefusesInconsistentArrays) {
  nn::GroupQuantWeights w;
  w.rows = 2;
  w.cols = 4;
  w.bits = 4;
  w.group = 2;
  w.codes.assign(8, 3);
  w.scales.assign(4, 0.5f);
  EXPECT_NO_THROW(GroupQuantLinear{w});
  w.codes[5] = 16;
  EXPECT_THROW(GroupQuantLinear{w}, Error);
  w.codes[5] = 1;
  w.scales.pop_back();
  EXPECT_THROW(GroupQuantLinear{w}, Error);
  w.scales.push_back(0.5f);
  w.channel_scales = {1.0f, 2.0f, 0.0f, 1.0f};
  EXPECT_THROW(GroupQuantLinear{w}, Error);
}

}  // namespace
}  // namespace strata
#endif  // HWY_ONCE
