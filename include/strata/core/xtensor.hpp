#pragma once
// Zero-copy interop between TensorView and xtensor (header-only; include only where xtensor exists).
#include <array>
#include <vector>
#include <xtensor/xadapt.hpp>

#include "strata/core/tensor.hpp"

namespace strata {

// An xtensor expression over the view's memory, with the view's shape and strides (in elements).
template <class T>
auto as_xtensor(TensorView<T> v) {
  std::vector<std::size_t> shape(static_cast<std::size_t>(v.rank()));
  std::vector<std::ptrdiff_t> strides(static_cast<std::size_t>(v.rank()));
  for (int i = 0; i < v.rank(); ++i) {
    shape[static_cast<std::size_t>(i)] = static_cast<std::size_t>(v.dim(i));
    strides[static_cast<std::size_t>(i)] = static_cast<std::ptrdiff_t>(v.stride(i));
  }
  // The buffer size xtensor is told is the span the strides reach, not numel, for strided views.
  std::size_t span = 1;
  for (int i = 0; i < v.rank(); ++i)
    if (v.dim(i) > 0) span += static_cast<std::size_t>((v.dim(i) - 1) * v.stride(i));
  if (v.numel() == 0) span = 0;
  return xt::adapt(v.data(), span, xt::no_ownership(), shape, strides);
}

// A contiguous xtensor container (xt::xarray / xt::xtensor, row-major) as a TensorView.
template <class E>
auto view_of_xtensor(E& e) {
  using T = std::remove_reference_t<decltype(*e.data())>;
  std::vector<int64_t> d(e.shape().begin(), e.shape().end());
  std::vector<int64_t> s(e.strides().begin(), e.strides().end());
  return TensorView<T>(e.data(), Shape(std::span<const int64_t>(d)), Shape(std::span<const int64_t>(s)));
}

}  // namespace strata
