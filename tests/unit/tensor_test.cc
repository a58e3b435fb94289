#include "strata/core/tensor.hpp"

#include <gtest/gtest.h>

#include "strata/core/eigen.hpp"

namespace strata {
namespace {

TEST(Tensor, ZerosAreAlignedAndContiguous) {
  Tensor t = Tensor::zeros<float>({3, 5});
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % kTensorAlignment, 0u);
  auto v = t.view<float>();
  EXPECT_TRUE(v.is_contiguous());
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 5; ++j) EXPECT_EQ(v(i, j), 0.0f);
}

}  // namespace
}  // namespace strata
