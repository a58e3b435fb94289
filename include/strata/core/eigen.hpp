#pragma once
// Zero-copy interop between TensorView and Eigen. strata stores matrices row-major ([out][in] for
// weights), so the maps are row-major with a run-time outer stride; a transposed view maps as
// column-major without a copy.
#include <Eigen/Core>

#include "strata/core/tensor.hpp"

namespace strata {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

template <class T>
using EigenMap = Eigen::Map<std::conditional_t<std::is_const_v<T>, const RowMatrix<std::remove_const_t<T>>,
                                               RowMatrix<std::remove_const_t<T>>>,
                            Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

// A rank-2 view as an Eigen expression (any strides). Writes through a non-const view land in the tensor.
template <class T>
EigenMap<T> as_eigen(TensorView<T> v) {
  require(v.rank() == 2, "as_eigen: need a rank-2 view, got shape ", v.shape().str());
  return EigenMap<T>(v.data(), v.dim(0), v.dim(1),
                     Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.stride(0), v.stride(1)));
}

template <class T>
using EigenVectorMap = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Vector<std::remove_const_t<T>>,
                                                     Vector<std::remove_const_t<T>>>,
                                  Eigen::Unaligned, Eigen::InnerStride<Eigen::Dynamic>>;

template <class T>
EigenVectorMap<T> as_eigen_vector(TensorView<T> v) {
  require(v.rank() == 1, "as_eigen_vector: need a rank-1 view, got shape ", v.shape().str());
  return EigenVectorMap<T>(v.data(), v.dim(0), Eigen::InnerStride<Eigen::Dynamic>(v.stride(0)));
}

// An Eigen dense object (matrix, map or block with direct access) as a TensorView, sharing its storage.
template <class Derived>
auto view_of(Eigen::PlainObjectBase<Derived>& m) {
  using T = typename Derived::Scalar;
  const int64_t rs = Derived::IsRowMajor ? m.outerStride() : 1;
  const int64_t cs = Derived::IsRowMajor ? 1 : m.outerStride();
  return TensorView<T>(m.data(), Shape{m.rows(), m.cols()}, Shape{rs, cs});
}
template <class Derived>
auto view_of(const Eigen::PlainObjectBase<Derived>& m) {
  using T = typename Derived::Scalar;
  const int64_t rs = Derived::IsRowMajor ? m.outerStride() : 1;
  const int64_t cs = Derived::IsRowMajor ? 1 : m.outerStride();
  return TensorView<const T>(m.data(), Shape{m.rows(), m.cols()}, Shape{rs, cs});
}

}  // namespace strata
