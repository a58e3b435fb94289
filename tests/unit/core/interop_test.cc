// Zero-copy interop of TensorView with Eigen and xtensor: both see and write the same memory.
#include <gtest/gtest.h>

#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include "strata/core/eigen.hpp"
#include "strata/core/xtensor.hpp"

namespace strata {
namespace {

TEST(Eigen, MapSharesMemoryWithTensor) {
  Tensor t = Tensor::zeros<float>({2, 3});
  auto m = as_eigen(t.view<float>());
  m << 1, 2, 3, 4, 5, 6;
  EXPECT_EQ(t.view<float>()(1, 0), 4.0f);
  EXPECT_EQ(m.data(), reinterpret_cast<float*>(t.raw()));
}

TEST(Eigen, TransposedAndSlicedViewsMapWithoutCopy) {
  Tensor t = Tensor::zeros<double>({3, 4});
  auto v = t.view<double>();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) v(i, j) = static_cast<double>(10 * i + j);
  auto mt = as_eigen(v.transpose(0, 1));
  ASSERT_EQ(mt.rows(), 4);
  EXPECT_EQ(mt(3, 2), 23.0);
  auto cols = as_eigen(v.slice(1, 1, 3));
  EXPECT_EQ(cols.cols(), 2);
  EXPECT_EQ(cols(2, 0), 21.0);
  cols(0, 1) = -1.0;
  EXPECT_EQ(v(0, 2), -1.0);
}

TEST(Eigen, ViewOfEigenMatrix) {
  RowMatrix<float> rm(2, 3);
  rm << 1, 2, 3, 4, 5, 6;
  auto v = view_of(rm);
  EXPECT_EQ(v(1, 2), 6.0f);
  Matrix<float> cm = rm;  // column-major copy
  auto cv = view_of(cm);
  EXPECT_EQ(cv(1, 2), 6.0f);
  EXPECT_EQ(cv.stride(0), 1);
}

TEST(Eigen, RankMismatchIsAnError) {
  Tensor t = Tensor::zeros<float>({2, 3, 4});
  EXPECT_THROW(as_eigen(t.view<float>()), Error);
}

TEST(XTensor, AdaptSharesMemoryAndStrides) {
  Tensor t = Tensor::zeros<float>({3, 4});
  auto v = t.view<float>();
  for (int64_t i = 0; i < 12; ++i) v.data()[i] = static_cast<float>(i);
  auto x = as_xtensor(v);
  EXPECT_EQ(x(2, 3), 11.0f);
  EXPECT_EQ(xt::sum(x)(), 66.0f);
  x(0, 0) = 100.0f;
  EXPECT_EQ(v(0, 0), 100.0f);
  auto xt_t = as_xtensor(v.transpose(0, 1));
  EXPECT_EQ(xt_t(3, 2), 11.0f);
}

TEST(XTensor, ViewOfXArray) {
  xt::xarray<float> a = {{1, 2}, {3, 4}, {5, 6}};
  auto v = view_of_xtensor(a);
  ASSERT_EQ(v.shape(), (Shape{3, 2}));
  EXPECT_EQ(v(2, 1), 6.0f);
}

}  // namespace
}  // namespace strata
