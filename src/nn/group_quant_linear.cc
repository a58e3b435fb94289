#include "strata/nn/group_quant_linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "nn/dense_blocks.hpp"
#include "kernels/cpu/group_matmul.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::nn {

GroupQuantLinear::GroupQuantLinear(const GroupQuantWeights& q)
    : rows_(q.rows), cols_(q.cols), bits_(q.bits), symmetric_(q.zeros.empty()) {
  require(rows_ > 0 && cols_ > 0, "GroupQuantLinear: empty shape [", rows_, ", ", cols_, "]");
  require(bits_ >= 2 && bits_ <= 8, "GroupQuantLinear: bits must be in [2, 8], got ", bits_);
  kernel_bits_ = bits_ <= 4 ? 4 : 8;
  group_ = q.group <= 0 || q.group >= cols_ ? cols_ : q.group;
  groups_ = (cols_ + group_ - 1) / group_;
  padded_group_ = (group_ + kernels::kQuantBlock - 1) / kernels::kQuantBlock * kernels::kQuantBlock;
  const auto n = static_cast<size_t>(rows_ * cols_), ng = static_cast<size_t>(rows_ * groups_);
  require(q.codes.size() == n, "GroupQuantLinear: ", q.codes.size(), " codes for [", rows_, ", ", cols_, "]");
  require(q.scales.size() == ng, "GroupQuantLinear: ", q.scales.size(), " scales, expected ", ng);
  require(symmetric_ || q.zeros.size() == ng, "GroupQuantLinear: ", q.zeros.size(), " zero points, expected ", ng);
  require(q.channel_scales.empty() || q.channel_scales.size() == static_cast<size_t>(cols_), "GroupQuantLinear: ",
          q.channel_scales.size(), " channel scales for ", cols_, " inputs");
  const int max_code = (1 << bits_) - 1;

  params_.resize(ng * 2);
  for (size_t g = 0; g < ng; ++g) {
    const int zero = symmetric_ ? 1 << (bits_ - 1) : q.zeros[g];
    require(std::isfinite(q.scales[g]), "GroupQuantLinear: scale ", g, " is ", q.scales[g]);
    require(zero <= max_code, "GroupQuantLinear: zero point ", zero, " exceeds ", max_code);
    params_[2 * g] = q.scales[g];
    params_[2 * g + 1] = static_cast<float>(zero);
  }
  if (!q.channel_scales.empty()) {
    inv_channel_.resize(static_cast<size_t>(cols_));
    for (int64_t c = 0; c < cols_; ++c) {
      const float s = q.channel_scales[static_cast<size_t>(c)];
      require(std::isfinite(s) && s > 0, "GroupQuantLinear: channel scale ", c, " is ", s, ", must be finite and > 0");
      inv_channel_[static_cast<size_t>(c)] = 1.0f / s;
    }
  }

  // Padding codes are 0; the input's padding is 0 too, so they add nothing.
  const int64_t row_bytes = groups_ * padded_group_ * kernel_bits_ / 8;
  codes_.assign(static_cast<size_t>(rows_ * row_bytes), 0);
  for (int64_t r = 0; r < rows_; ++r) {
    uint8_t* out = codes_.data() + r * row_bytes;
    for (int64_t j = 0; j < cols_; ++j) {
      const uint8_t code = q.codes[static_cast<size_t>(r * cols_ + j)];
      require(code <= max_code, "GroupQuantLinear: code ", static_cast<int>(code), " at (", r, ", ", j, ") exceeds ",
              max_code);
      const int64_t k = j / group_, p = k * padded_group_ + (j - k * group_);
      if (kernel_bits_ == 8) {
        out[p] = code;
      } else {
        const int64_t block = p / kernels::kQuantBlock, i = p % kernels::kQuantBlock;
        constexpr int64_t half = kernels::kQuantBlock / 2;
        out[block * half + i % half] |= static_cast<uint8_t>(i < half ? code : code << 4);
      }
    }
  }
}

void GroupQuantLinear::pad_input(const float* x, int64_t tokens, float* xp) const {
  const int64_t xs = groups_ * padded_group_;
  std::fill(xp, xp + tokens * xs, 0.0f);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t k = 0; k < groups_; ++k) {
      const int64_t j0 = k * group_, j1 = std::min(cols_, j0 + group_);
      float* o = xp + t * xs + k * padded_group_;
      const float* in = x + t * cols_ + j0;
      if (inv_channel_.empty())
        std::memcpy(o, in, static_cast<size_t>(j1 - j0) * sizeof(float));
      else
        for (int64_t j = j0; j < j1; ++j) o[j - j0] = in[j - j0] * inv_channel_[static_cast<size_t>(j)];
    }
}

void GroupQuantLinear::densify(int64_t r0, int64_t r1, float* out) const {
  const kernels::GroupQuant w{rows_, cols_, kernel_bits_, group_, groups_, padded_group_, codes_.data(), params_.data()};
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * cols_;
    const float* pr = params_.data() + r * groups_ * 2;
    for (int64_t j = 0; j < cols_; ++j) {
      const int64_t k = j / group_;
      const int code = kernels::group_code(w, r, k * padded_group_ + (j - k * group_));
      // As quant::dequantize computes it, so that dense_weight() equals the reconstruction bit for bit.
      o[j] = pr[2 * k] * static_cast<float>(code - static_cast<int>(pr[2 * k + 1]));
      if (!inv_channel_.empty()) o[j] *= inv_channel_[static_cast<size_t>(j)];
    }
  }
}

void GroupQuantLinear::forward(const float* x, int64_t tokens, float* y) const {
  if (tokens <= 0) return;
  if (tokens <= kMaxKernelTokens) {
    const kernels::GroupQuant w{rows_, cols_, kernel_bits_, group_, groups_, padded_group_, codes_.data(),
                                params_.data()};
    std::vector<float> padded;
    const float* xp = x;
    if (groups_ * padded_group_ != cols_ || !inv_channel_.empty()) {
      padded.resize(static_cast<size_t>(tokens * groups_ * padded_group_));
      pad_input(x, tokens, padded.data());
      xp = padded.data();
    }
    parallel_for(rows_, detail::kernel_row_chunk(cols_),
                 [&](int64_t r0, int64_t r1) { kernels::group_matmul(w, xp, tokens, y, r0, r1); });
    return;
  }
  detail::dense_block_matmul(rows_, cols_, x, tokens, y,
                             [&](int64_t r0, int64_t r1, float* out) { densify(r0, r1, out); });
}

RowMatrix<float> GroupQuantLinear::dense_weight() const {
  RowMatrix<float> w(rows_, cols_);
  parallel_for(rows_, 64, [&](int64_t r0, int64_t r1) { densify(r0, r1, w.data() + r0 * cols_); });
  return w;
}

uint64_t GroupQuantLinear::weight_bytes() const {
  return static_cast<uint64_t>(codes_.size() + (params_.size() + inv_channel_.size()) * sizeof(float));
}

std::string GroupQuantLinear::describe() const {
  std::ostringstream out;
  out << "group-quantized int" << bits_;
  if (kernel_bits_ != bits_) out << " (codes held as " << kernel_bits_ << "-bit)";
  out << (symmetric_ ? " sym" : " asym") << ", groups of " << group_ << (inv_channel_.empty() ? "" : ", channel scales")
      << " [" << rows_ << ", " << cols_ << "], " << weight_bytes() << " bytes";
  return out.str();
}

}  // namespace strata::nn
