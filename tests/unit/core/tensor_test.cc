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

namespace strata {
namespace {

TEST(TensorView, SliceTransposeReshapeAndIndex) {
  Tensor t = Tensor::zeros<int32_t>({2, 3, 4});
  auto v = t.view<int32_t>();
  for (int64_t i = 0; i < 24; ++i) v.data()[i] = static_cast<int32_t>(i);
  EXPECT_EQ(v(1, 2, 3), 23);
  EXPECT_EQ(v[1](0, 1), 13);
  auto s = v.slice(2, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s(1, 1, 0), 17);
  auto tr = v.transpose(0, 2);
  EXPECT_EQ(tr(3, 2, 1), 23);
  auto r = v.reshape({6, 4});
  EXPECT_EQ(r(5, 3), 23);
  EXPECT_THROW(s.reshape({12}), Error);
  const int64_t idx[] = {1, 2, 3};
  EXPECT_EQ(v.at(idx), 23);
  const int64_t bad[] = {1, 3, 0};
  EXPECT_THROW(v.at(bad), Error);
  TensorView<const int32_t> cv = v;
  EXPECT_EQ(cv(0, 0, 1), 1);
}

TEST(Tensor, CopyOfStridedViewIsContiguous) {
  Tensor t = Tensor::zeros<float>({3, 2});
  auto v = t.view<float>();
  for (int64_t i = 0; i < 6; ++i) v.data()[i] = static_cast<float>(i);
  Tensor c = Tensor::copy_of<float>(TensorView<const float>(v.transpose(0, 1)));
  EXPECT_EQ(c.shape(), (Shape{2, 3}));
  EXPECT_EQ(c.view<float>()(1, 2), 5.0f);
  EXPECT_TRUE(c.view<float>().is_contiguous());
}

TEST(Tensor, ErrorsNameTheProblem) {
  Tensor t = Tensor::zeros<float>({2, 2});
  try {
    t.view<double>();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds f32, not f64"), std::string::npos) << e.what();
  }
  // A forged size must fail cleanly, not attempt the allocation.
  EXPECT_THROW(Tensor(DType::f32, Shape{int64_t{1} << 40, int64_t{1} << 20}), Error);
  EXPECT_THROW(Tensor(DType::f32, Shape{int64_t{1} << 62, 8}), Error);
  EXPECT_THROW(Tensor(DType::f32, Shape{-1, 2}), Error);
  EXPECT_THROW(t.view<float>().slice(0, 1, 3), Error);
  EXPECT_THROW(t.view<float>().transpose(0, 2), Error);
  EXPECT_THROW((Shape{1, 2, 3, 4, 5, 6, 7, 8, 9}), Error);
}

TEST(Tensor, PackedInt4Storage) {
  Tensor t(DType::i4, Shape{3, 5});
  EXPECT_EQ(t.nbytes(), 8u);
  auto* p = reinterpret_cast<uint8_t*>(t.raw());
  int4_set(p, 14, -3);
  EXPECT_EQ(int4_get(p, 14), -3);
  EXPECT_THROW(t.view<int8_t>(), Error);
}

}  // namespace
}  // namespace strata
