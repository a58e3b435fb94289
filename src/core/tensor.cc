#include "strata/core/tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>

namespace strata {

Shape::Shape(std::span<const int64_t> dims) {
  require(dims.size() <= static_cast<std::size_t>(kMaxRank), "Shape: rank ", dims.size(),
          " exceeds the maximum of ", kMaxRank);
  rank_ = static_cast<int>(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i) dims_[i] = dims[i];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) {
    const int64_t d = dims_[static_cast<std::size_t>(i)];
    require(d >= 0, "Shape ", str(), ": negative dimension");
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) fail("Shape ", str(), ": element count overflows");
    n *= d;
  }
  return n;
}

std::string Shape::str() const {
  std::ostringstream out;
  out << '[';
  for (int i = 0; i < rank_; ++i) out << (i ? ", " : "") << dims_[static_cast<std::size_t>(i)];
  out << ']';
  return out.str();
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides = shape;
  int64_t s = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

void Tensor::AlignedFree::operator()(std::byte* p) const { std::free(p); }

Tensor::Tensor(DType dtype, const Shape& shape) : dtype_(dtype), shape_(shape) {
  const int64_t n = shape.numel();
  const uint64_t bytes = dtype_bytes(dtype, static_cast<uint64_t>(n));
  require(bytes <= (uint64_t{1} << 46), "Tensor ", shape.str(), " of ", dtype_name(dtype), ": ", bytes,
          " bytes is beyond any memory this process can have");
  nbytes_ = bytes;
  const std::size_t padded = ((bytes + kTensorAlignment - 1) / kTensorAlignment) * kTensorAlignment;
  if (padded == 0) return;
  auto* p = static_cast<std::byte*>(std::aligned_alloc(kTensorAlignment, padded));
  require(p != nullptr, "Tensor ", shape.str(), " of ", dtype_name(dtype), ": cannot allocate ", bytes, " bytes");
  std::memset(p, 0, padded);
  data_.reset(p);
}

Tensor Tensor::clone() const {
  Tensor t(dtype_, shape_);
  if (nbytes_) std::memcpy(t.data_.get(), data_.get(), nbytes_);
  return t;
}

void Tensor::check_dtype(DType want) const {
  require(want == dtype_, "Tensor ", shape_.str(), " holds ", dtype_name(dtype_), ", not ", dtype_name(want));
}

}  // namespace strata
