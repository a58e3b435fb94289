#include "strata/nn/sparse_linear.hpp"

#include <algorithm>
#include <bit>
#include <sstream>

#include "nn/dense_blocks.hpp"
#include "kernels/cpu/sparse_matmul.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::nn {

namespace {

// Bytes past the last row that the kernels may read: the 2:4 positions and the bitmask load a
// 32-bit word at a chunk's first byte.
constexpr int64_t kMetaPadding = 8;
// Values past the last one that the bitmask kernel may read: a whole vector at the last chunk's
// first value.
constexpr int64_t kValuePadding = 16;

// A pruned weight is a zero with its sign bit clear; -0.0 is a stored value.
bool is_kept(float v) { return std::bit_cast<uint32_t>(v) != 0; }

const char* layout_name(SparseLinear::Layout layout) {
  switch (layout) {
    case SparseLinear::Layout::two_four: return "2:4";
    case SparseLinear::Layout::bitmask: return "bitmask";
    case SparseLinear::Layout::csr: return "CSR";
    case SparseLinear::Layout::automatic: break;
  }
  return "automatic";
}

}  // namespace

SparseLinear::SparseLinear(const RowMatrix<float>& weight, bool half, Layout layout)
    : rows_(weight.rows()), cols_(weight.cols()), half_(half) {
  require(rows_ > 0 && cols_ > 0, "SparseLinear: empty weight matrix [", rows_, ", ", cols_, "]");
  const float* w = weight.data();
  int64_t nonzero = 0;
  bool fits24 = cols_ % 4 == 0;
  for (int64_t r = 0; r < rows_; ++r)
    for (int64_t j = 0; j < cols_; j += 4) {
      int n = 0;
      for (int64_t i = j; i < std::min(cols_, j + 4); ++i) n += is_kept(w[r * cols_ + i]);
      nonzero += n;
      fits24 = fits24 && n <= 2;
    }
  const double density = static_cast<double>(nonzero) / static_cast<double>(rows_ * cols_);
  if (layout == Layout::automatic) {
    if (fits24 && density > 0.25)
      layout = Layout::two_four;
    else
      layout = density >= kCsrBelow ? Layout::bitmask : Layout::csr;
  }
  require(layout != Layout::two_four || fits24, "SparseLinear: the weight [", rows_, ", ", cols_,
          "] does not fit 2:4 (", cols_ % 4 != 0 ? "inputs not a multiple of 4" : "a group of four keeps more than two",
          ")");
  layout_ = layout;

  std::vector<float> values;
  if (layout_ == Layout::two_four) {
    // Groups keeping fewer than two take zeros at their lowest free positions, so every group has two.
    kept_ = rows_ * cols_ / 2;
    meta_stride_ = (cols_ + 7) / 8;
    meta_.assign(static_cast<size_t>(rows_ * meta_stride_ + kMetaPadding), 0);
    values.reserve(static_cast<size_t>(kept_));
    for (int64_t r = 0; r < rows_; ++r) {
      uint8_t* pr = meta_.data() + r * meta_stride_;
      int64_t k = 0;
      for (int64_t j = 0; j < cols_; j += 4) {
        int pos[2], n = 0;
        for (int i = 0; i < 4; ++i)
          if (is_kept(w[r * cols_ + j + i])) pos[n++] = i;
        for (int i = 0; i < 4 && n < 2; ++i)
          if (!is_kept(w[r * cols_ + j + i])) pos[n++] = i;
        std::sort(pos, pos + 2);
        for (int p : pos) {
          values.push_back(w[r * cols_ + j + p]);
          const int64_t bit = 2 * k++;
          pr[bit / 8] |= static_cast<uint8_t>(p << (bit % 8));
        }
      }
    }
  } else {
    kept_ = nonzero;
    row_start_.assign(static_cast<size_t>(rows_) + 1, 0);
    values.reserve(static_cast<size_t>(kept_));
    if (layout_ == Layout::bitmask) {
      meta_stride_ = (cols_ + 7) / 8;
      meta_.assign(static_cast<size_t>(rows_ * meta_stride_ + kMetaPadding), 0);
    } else if (cols_ <= 65536) {
      col16_.reserve(static_cast<size_t>(kept_));
    } else {
      col32_.reserve(static_cast<size_t>(kept_));
    }
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t j = 0; j < cols_; ++j) {
        const float v = w[r * cols_ + j];
        if (!is_kept(v)) continue;
        values.push_back(v);
        if (layout_ == Layout::bitmask)
          meta_[static_cast<size_t>(r * meta_stride_ + j / 8)] |= static_cast<uint8_t>(1u << (j % 8));
        else if (cols_ <= 65536)
          col16_.push_back(static_cast<uint16_t>(j));
        else
          col32_.push_back(static_cast<uint32_t>(j));
      }
      row_start_[static_cast<size_t>(r) + 1] = static_cast<int64_t>(values.size());
    }
  }
  values.resize(values.size() + kValuePadding, 0.0f);
  if (half_) {
    values_f16_.resize(values.size());
    convert_f32_to_f16(values.data(), values_f16_.data(), values.size());
    for (size_t k = 0; k < values.size(); ++k)
      require(std::bit_cast<uint32_t>(f16_to_f32(values_f16_[k])) == std::bit_cast<uint32_t>(values[k]),
              "SparseLinear: value ", values[k], " is not exact in f16 (keep float32 values)");
  } else {
    values_f32_ = std::move(values);
  }
}

void SparseLinear::kernel(const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) const {
  const void* values = half_ ? static_cast<const void*>(values_f16_.data()) : values_f32_.data();
  switch (layout_) {
    case Layout::two_four:
      kernels::sparse24_matmul({rows_, cols_, values, half_, meta_.data(), meta_stride_}, x, tokens, y, r0, r1);
      return;
    case Layout::bitmask:
      kernels::sparse_bitmask_matmul({rows_, cols_, values, half_, row_start_.data(), meta_.data(), meta_stride_}, x,
                                     tokens, y, r0, r1);
      return;
    default:
      kernels::sparse_csr_matmul({rows_, cols_, values, half_, row_start_.data(), col16_.empty() ? nullptr : col16_.data(),
                                  col32_.empty() ? nullptr : col32_.data()},
                                 x, tokens, y, r0, r1);
      return;
  }
}

void SparseLinear::densify(int64_t r0, int64_t r1, float* out) const {
  const void* values = half_ ? static_cast<const void*>(values_f16_.data()) : values_f32_.data();
  switch (layout_) {
    case Layout::two_four:
      kernels::sparse24_densify({rows_, cols_, values, half_, meta_.data(), meta_stride_}, r0, r1, out);
      return;
    case Layout::bitmask:
      kernels::sparse_bitmask_densify({rows_, cols_, values, half_, row_start_.data(), meta_.data(), meta_stride_}, r0,
                                      r1, out);
      return;
    default:
      kernels::sparse_csr_densify({rows_, cols_, values, half_, row_start_.data(),
                                   col16_.empty() ? nullptr : col16_.data(), col32_.empty() ? nullptr : col32_.data()},
                                  r0, r1, out);
      return;
  }
}

void SparseLinear::forward(const float* x, int64_t tokens, float* y) const {
  if (tokens <= 0) return;
  if (tokens <= kMaxKernelTokens) {
    parallel_for(rows_, detail::kernel_row_chunk(cols_),
                 [&](int64_t r0, int64_t r1) { kernel(x, tokens, y, r0, r1); });
    return;
  }
  detail::dense_block_matmul(rows_, cols_, x, tokens, y,
                             [&](int64_t r0, int64_t r1, float* out) { densify(r0, r1, out); });
}

RowMatrix<float> SparseLinear::dense_weight() const {
  RowMatrix<float> w(rows_, cols_);
  parallel_for(rows_, 64, [&](int64_t r0, int64_t r1) { densify(r0, r1, w.data() + r0 * cols_); });
  return w;
}

uint64_t SparseLinear::weight_bytes() const {
  const auto bytes = [](const auto& v) { return static_cast<uint64_t>(v.size() * sizeof(v[0])); };
  return bytes(values_f32_) + bytes(values_f16_) + bytes(meta_) + bytes(row_start_) + bytes(col16_) + bytes(col32_);
}

std::string SparseLinear::describe() const {
  std::ostringstream out;
  out << "sparse " << layout_name(layout_) << " " << (half_ ? "f16" : "f32") << " [" << rows_ << ", " << cols_
      << "], " << kept_ << " kept (" << 100.0 * static_cast<double>(kept_) / static_cast<double>(rows_ * cols_)
      << "%), " << weight_bytes() << " bytes";
  return out.str();
}

}  // namespace strata::nn
