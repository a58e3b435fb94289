#pragma once
// TensorView<T>: a non-owning, strided N-d view (pointer, shape, strides in elements).
// Tensor: an owning, 64-byte aligned, contiguous buffer of any DType, from which views are taken.
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"

namespace strata {

inline constexpr int kMaxRank = 8;
inline constexpr std::size_t kTensorAlignment = 64;

// Shape of up to kMaxRank dimensions, stored inline so that views never allocate.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : Shape(std::span<const int64_t>(dims.begin(), dims.size())) {}
  explicit Shape(std::span<const int64_t> dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(i)]; }
  int64_t& operator[](int i) { return dims_[static_cast<std::size_t>(i)]; }
  // Product of the dimensions (1 for rank 0). Throws strata::Error if it overflows int64.
  int64_t numel() const;
  std::span<const int64_t> dims() const { return {dims_.data(), static_cast<std::size_t>(rank_)}; }
  std::string str() const;  // "[4, 576]"
  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.dims_[static_cast<std::size_t>(i)] != b.dims_[static_cast<std::size_t>(i)]) return false;
    return true;
  }

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

// Row-major (C order) strides of a shape, in elements.
Shape contiguous_strides(const Shape& shape);

template <class T>
class TensorView {
 public:
  using value_type = T;

  TensorView() = default;
  TensorView(T* data, const Shape& shape) : data_(data), shape_(shape), strides_(contiguous_strides(shape)) {}
  TensorView(T* data, const Shape& shape, const Shape& strides) : data_(data), shape_(shape), strides_(strides) {
    require(shape.rank() == strides.rank(), "TensorView: shape ", shape.str(), " and strides ",
            strides.str(), " differ in rank");
    for (int i = 0; i < shape.rank(); ++i) require(shape[i] >= 0, "TensorView: negative dimension in ", shape.str());
  }
  // A view of T converts to a view of const T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  TensorView(const TensorView<U>& other) : data_(other.data()), shape_(other.shape()), strides_(other.strides()) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t stride(int i) const { return strides_[i]; }
  int64_t numel() const { return shape_.numel(); }
  bool empty() const { return numel() == 0; }
  static constexpr DType dtype() { return dtype_of_v<T>; }

  bool is_contiguous() const {
    int64_t expected = 1;
    for (int i = rank() - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != expected) return false;
      expected *= shape_[i];
    }
    return true;
  }

  // Element access; indices are not bounds-checked (use at() for that).
  template <class... Idx>
  T& operator()(Idx... idx) const {
    static_assert((std::is_integral_v<Idx> && ...), "indices must be integers");
    const int64_t ids[] = {static_cast<int64_t>(idx)...};
    int64_t off = 0;
    for (std::size_t i = 0; i < sizeof...(Idx); ++i) off += ids[i] * strides_[static_cast<int>(i)];
    return data_[off];
  }
  // Bounds-checked element access.
  T& at(std::span<const int64_t> idx) const {
    require(static_cast<int>(idx.size()) == rank(), "TensorView::at: ", idx.size(), " indices for rank ", rank());
    int64_t off = 0;
    for (int i = 0; i < rank(); ++i) {
      const int64_t v = idx[static_cast<std::size_t>(i)];
      require(v >= 0 && v < shape_[i], "TensorView::at: index ", v, " out of range for dimension ", i,
              " of shape ", shape_.str());
      off += v * strides_[i];
    }
    return data_[off];
  }

  // Sub-range [begin, end) along one dimension; shares the data.
  TensorView slice(int dim, int64_t begin, int64_t end) const {
    check_dim(dim, "slice");
    require(0 <= begin && begin <= end && end <= shape_[dim], "TensorView::slice: range [", begin, ", ", end,
            ") out of bounds for dimension ", dim, " of shape ", shape_.str());
    TensorView out = *this;
    out.data_ = data_ + begin * strides_[dim];
    out.shape_[dim] = end - begin;
    return out;
  }
  // Drops dimension 0 by fixing its index (row i of a matrix).
  TensorView operator[](int64_t i) const {
    require(rank() >= 1, "TensorView::operator[] on a rank-0 view");
    require(i >= 0 && i < shape_[0], "TensorView: index ", i, " out of range for shape ", shape_.str());
    std::array<int64_t, kMaxRank> d{}, s{};
    for (int k = 1; k < rank(); ++k) {
      d[static_cast<std::size_t>(k - 1)] = shape_[k];
      s[static_cast<std::size_t>(k - 1)] = strides_[k];
    }
    return TensorView(data_ + i * strides_[0], Shape(std::span<const int64_t>(d.data(), rank() - 1)),
                      Shape(std::span<const int64_t>(s.data(), rank() - 1)));
  }
  // Swaps two dimensions without moving data.
  TensorView transpose(int a, int b) const {
    check_dim(a, "transpose");
    check_dim(b, "transpose");
    TensorView out = *this;
    std::swap(out.shape_[a], out.shape_[b]);
    std::swap(out.strides_[a], out.strides_[b]);
    return out;
  }
  // Same data, new shape; only for contiguous views.
  TensorView reshape(const Shape& shape) const {
    require(is_contiguous(), "TensorView::reshape needs a contiguous view, got strides ", strides_.str());
    require(shape.numel() == numel(), "TensorView::reshape: ", shape_.str(), " has ", numel(),
            " elements, ", shape.str(), " has ", shape.numel());
    return TensorView(data_, shape);
  }

 private:
  void check_dim(int d, const char* what) const {
    require(d >= 0 && d < rank(), "TensorView::", what, ": dimension ", d, " out of range for rank ", rank());
  }
  T* data_ = nullptr;
  Shape shape_;
  Shape strides_;
};

// Owning tensor: contiguous, 64-byte aligned, any DType (i4 packs two elements per byte).
class Tensor {
 public:
  Tensor() = default;
  // Zero-initialised tensor. Throws strata::Error if the size overflows or cannot be allocated.
  Tensor(DType dtype, const Shape& shape);
  template <class T>
  static Tensor zeros(const Shape& shape) { return Tensor(dtype_of_v<T>, shape); }
  // Copies a view (of any strides) into a new contiguous tensor.
  template <class T>
  static Tensor copy_of(TensorView<const T> src) {
    Tensor t(dtype_of_v<T>, src.shape());
    copy_strided(src, t.view<T>());
    return t;
  }

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  uint64_t nbytes() const { return nbytes_; }
  std::byte* raw() { return data_.get(); }
  const std::byte* raw() const { return data_.get(); }

  template <class T>
  TensorView<T> view() {
    check_dtype(dtype_of_v<T>);
    return TensorView<T>(reinterpret_cast<T*>(data_.get()), shape_);
  }
  template <class T>
  TensorView<const T> view() const {
    check_dtype(dtype_of_v<T>);
    return TensorView<const T>(reinterpret_cast<const T*>(data_.get()), shape_);
  }
  Tensor clone() const;

  template <class T>
  static void copy_strided(TensorView<const T> src, TensorView<T> dst);

 private:
  struct AlignedFree {
    void operator()(std::byte* p) const;
  };
  void check_dtype(DType want) const;

  DType dtype_ = DType::f32;
  Shape shape_;
  uint64_t nbytes_ = 0;
  std::unique_ptr<std::byte[], AlignedFree> data_;
};

template <class T>
void Tensor::copy_strided(TensorView<const T> src, TensorView<T> dst) {
  require(src.shape() == dst.shape(), "copy: shapes differ, ", src.shape().str(), " vs ", dst.shape().str());
  const int r = src.rank();
  const int64_t n = src.numel();
  if (n == 0) return;
  std::array<int64_t, kMaxRank> idx{};
  for (int64_t k = 0; k < n; ++k) {
    int64_t so = 0, d_off = 0;
    for (int i = 0; i < r; ++i) {
      so += idx[static_cast<std::size_t>(i)] * src.stride(i);
      d_off += idx[static_cast<std::size_t>(i)] * dst.stride(i);
    }
    dst.data()[d_off] = src.data()[so];
    for (int i = r - 1; i >= 0; --i) {
      if (++idx[static_cast<std::size_t>(i)] < src.dim(i)) break;
      idx[static_cast<std::size_t>(i)] = 0;
    }
  }
}

}  // namespace strata
