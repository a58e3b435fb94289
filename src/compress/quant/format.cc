// The integer format shared by RTN, GPTQ and AWQ: group fitting, bit packing, dequantization, RTN.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "strata/compress/quant/quant.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::quant {

std::string QuantSpec::knob() const {
  std::ostringstream out;
  out << "bits=" << bits << ",group=";
  if (group <= 0)
    out << "row";
  else
    out << group;
  out << (symmetric ? ",sym" : ",asym");
  return out.str();
}

void check_spec(const QuantSpec& spec, std::string_view what) {
  require(spec.bits >= kMinBits && spec.bits <= kMaxBits, what, ": bits must be in [", kMinBits, ", ", kMaxBits,
          "], got ", spec.bits);
  require(spec.group >= 0, what, ": group must be >= 0 (0 = whole row), got ", spec.group);
}

namespace {

// The nearest f16 value, as a float: the scale that is stored is the scale that is used.
float round_to_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// Rows per parallel chunk for element-wise work: small layers run on one thread, since waking a
// thread team costs more than they take (and much more on a loaded machine).
int64_t row_chunk(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, cols)); }

// The scale and zero point of the range [lo, hi] (lo <= 0 <= hi), or of max|w| = hi when symmetric.
GroupParams params_for_range(float lo, float hi, const QuantSpec& spec) {
  GroupParams p;
  if (spec.symmetric) {
    const int half = 1 << (spec.bits - 1);
    p.zero = half;
    p.scale = round_to_f16(hi / static_cast<float>(half - 1));
    return p;
  }
  const int max_code = spec.max_code();
  p.scale = round_to_f16((hi - lo) / static_cast<float>(max_code));
  if (p.scale > 0 && std::isfinite(p.scale)) {
    const float z = std::nearbyint(-lo / p.scale);
    p.zero = static_cast<int>(std::clamp(z, 0.0f, static_cast<float>(max_code)));
  }
  return p;
}

// sum_i (x_i - dequant(quant(x_i)))^2 over a contiguous group, the arithmetic of quantize_value and
// dequantize_value written so that the compiler vectorises it (the search calls it ~80 times a group).
float squared_error(const float* x, const float* importance, int64_t n, const GroupParams& p, int max_code) {
  const float s = p.scale, z = static_cast<float>(p.zero), top = static_cast<float>(max_code);
  float acc = 0;
  if (importance) {
    for (int64_t i = 0; i < n; ++i) {
      const float c = std::min(std::max(std::nearbyint(x[i] / s) + z, 0.0f), top);
      const float e = x[i] - s * (c - z);
      acc += importance[i] * e * e;
    }
    return acc;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float c = std::min(std::max(std::nearbyint(x[i] / s) + z, 0.0f), top);
    const float e = x[i] - s * (c - z);
    acc += e * e;
  }
  return acc;
}

}  // namespace

GroupParams fit_group(const float* x, int64_t n, int64_t stride, const QuantSpec& spec) {
  return fit_group(x, n, stride, spec, ClipSearch{});
}

GroupParams fit_group(const float* x, int64_t n, int64_t stride, const QuantSpec& spec, const ClipSearch& clip,
                      const float* importance) {
  require(clip.grid >= 0, "quant: clip grid must be >= 0, got ", clip.grid);
  require(clip.max_shrink >= 0 && clip.max_shrink < 1, "quant: clip max_shrink must be in [0, 1), got ",
          clip.max_shrink);
  // The range always holds 0 so that the zero point is a code, and 0 is exactly representable
  // (pruned or dead weights stay 0). Symmetric grids use hi = max|w|.
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i * stride];
    if (spec.symmetric) {
      hi = std::max(hi, std::abs(v));
    } else {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  const GroupParams full = params_for_range(lo, hi, spec);
  if (spec.symmetric)
    require(std::isfinite(full.scale), "quant: a group's scale overflows f16 (largest |weight| ", hi, ")");
  else
    require(std::isfinite(full.scale), "quant: a group's scale overflows f16 (weights in [", lo, ", ", hi, "])");
  if (!clip.enabled() || full.scale == 0.0f || n == 0) return full;

  std::vector<float> buf;
  const float* g = x;
  if (stride != 1) {
    buf.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) buf[static_cast<size_t>(i)] = x[i * stride];
    g = buf.data();
  }
  const int max_code = spec.max_code();
  GroupParams best = full;
  float best_err = squared_error(g, importance, n, full, max_code);
  const auto steps = static_cast<int>(std::ceil(clip.max_shrink * clip.grid - 1e-9));
  GroupParams last = full;
  for (int i = 1; i < steps; ++i) {
    const float f = 1.0f - static_cast<float>(i) / static_cast<float>(clip.grid);
    const GroupParams p = params_for_range(f * lo, f * hi, spec);
    // Neighbouring factors often round to the same f16 scale.
    if (p.scale == 0.0f || (p.scale == last.scale && p.zero == last.zero)) continue;
    last = p;
    const float err = squared_error(g, importance, n, p, max_code);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

StorageSize storage_size(int64_t rows, int64_t cols, const QuantSpec& spec, bool channel_scales) {
  const auto bits = static_cast<uint64_t>(spec.bits);
  const auto r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
  const auto g = static_cast<uint64_t>(spec.groups(cols));
  StorageSize s;
  s.codes = (r * c * bits + 7) / 8;
  s.scales = r * g * sizeof(f16);
  s.zeros = spec.symmetric ? 0 : (r * g * bits + 7) / 8;
  s.channel_scales = channel_scales ? c * sizeof(f16) : 0;
  return s;
}

std::vector<uint8_t> pack_bits(std::span<const uint8_t> values, int bits) {
  require(bits >= 1 && bits <= 8, "pack_bits: bits must be in [1, 8], got ", bits);
  const uint64_t n = values.size();
  std::vector<uint8_t> out((n * static_cast<uint64_t>(bits) + 7) / 8, 0);
  const unsigned limit = 1u << bits;
  uint32_t acc = 0;
  int filled = 0;
  size_t o = 0;
  for (uint64_t k = 0; k < n; ++k) {
    require(values[k] < limit, "pack_bits: value ", static_cast<int>(values[k]), " at index ", k, " does not fit in ",
            bits, " bits");
    acc |= static_cast<uint32_t>(values[k]) << filled;
    filled += bits;
    while (filled >= 8) {
      out[o++] = static_cast<uint8_t>(acc & 0xFFu);
      acc >>= 8;
      filled -= 8;
    }
  }
  if (filled > 0) out[o] = static_cast<uint8_t>(acc & 0xFFu);
  return out;
}

std::vector<uint8_t> unpack_bits(std::span<const uint8_t> packed, uint64_t count, int bits) {
  require(bits >= 1 && bits <= 8, "unpack_bits: bits must be in [1, 8], got ", bits);
  const uint64_t want = (count * static_cast<uint64_t>(bits) + 7) / 8;
  require(packed.size() == want, "unpack_bits: ", count, " values of ", bits, " bits need ", want, " bytes, got ",
          packed.size());
  std::vector<uint8_t> out(count);
  const uint32_t mask = (1u << bits) - 1u;
  uint32_t acc = 0;
  int filled = 0;
  size_t in = 0;
  for (uint64_t k = 0; k < count; ++k) {
    while (filled < bits) {
      acc |= static_cast<uint32_t>(packed[in++]) << filled;
      filled += 8;
    }
    out[k] = static_cast<uint8_t>(acc & mask);
    acc >>= bits;
    filled -= bits;
  }
  return out;
}

void check_weight(const RowMatrix<float>& w, std::string_view name) {
  require(w.rows() > 0 && w.cols() > 0, "layer '", name, "': weight is empty (", w.rows(), " x ", w.cols(), ")");
  if (w.allFinite()) return;
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t c = 0; c < w.cols(); ++c)
      if (!std::isfinite(w(r, c))) fail("layer '", name, "': weight has a non-finite value (", w(r, c), ") at (", r, ", ", c, ")");
}

RowMatrix<float> dequantize(const QuantizedMatrix& q) {
  check_spec(q.spec, "dequantize");
  const int64_t rows = q.rows, cols = q.cols;
  require(rows > 0 && cols > 0, "dequantize: empty matrix (", rows, " x ", cols, ")");
  const int64_t g = q.spec.group_size(cols), ng = q.spec.groups(cols);
  const auto n = static_cast<size_t>(rows * cols), ns = static_cast<size_t>(rows * ng);
  require(q.codes.size() == n, "dequantize: ", q.codes.size(), " codes for a ", rows, " x ", cols, " matrix");
  require(q.scales.size() == ns, "dequantize: ", q.scales.size(), " scales, expected ", ns);
  require(q.spec.symmetric ? q.zeros.empty() : q.zeros.size() == ns, "dequantize: ", q.zeros.size(),
          " zero points, expected ", q.spec.symmetric ? 0 : ns);
  require(q.channel_scales.empty() || q.channel_scales.size() == static_cast<size_t>(cols), "dequantize: ",
          q.channel_scales.size(), " channel scales for ", cols, " inputs");
  const int max_code = q.spec.max_code();
  std::vector<float> inv_channel;
  if (!q.channel_scales.empty()) {
    inv_channel.resize(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) {
      const float s = f16_to_f32(q.channel_scales[static_cast<size_t>(c)]);
      require(std::isfinite(s) && s > 0, "dequantize: channel scale ", c, " is ", s, ", must be finite and > 0");
      inv_channel[static_cast<size_t>(c)] = 1.0f / s;
    }
  }
  RowMatrix<float> out(rows, cols);
  parallel_for(rows, row_chunk(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t k = 0; k < ng; ++k) {
        const size_t gi = static_cast<size_t>(r * ng + k);
        GroupParams p{f16_to_f32(q.scales[gi]), q.spec.symmetric ? 1 << (q.spec.bits - 1) : q.zeros[gi]};
        require(std::isfinite(p.scale), "dequantize: scale of row ", r, " group ", k, " is ", p.scale);
        require(p.zero <= max_code, "dequantize: zero point ", p.zero, " of row ", r, " group ", k, " exceeds ",
                max_code);
        const int64_t c1 = std::min(cols, (k + 1) * g);
        for (int64_t c = k * g; c < c1; ++c) {
          const int code = q.codes[static_cast<size_t>(r * cols + c)];
          require(code <= max_code, "dequantize: code ", code, " at (", r, ", ", c, ") exceeds ", max_code);
          out(r, c) = dequantize_value(code, p);
        }
      }
      if (!inv_channel.empty())
        for (int64_t c = 0; c < cols; ++c) out(r, c) *= inv_channel[static_cast<size_t>(c)];
    }
  });
  return out;
}

QuantizedMatrix rtn(const RowMatrix<float>& w, const QuantSpec& spec, std::string_view name) {
  return rtn(w, spec, ClipSearch{}, name);
}

QuantizedMatrix rtn(const RowMatrix<float>& w, const QuantSpec& spec, const ClipSearch& clip, std::string_view name,
                    std::span<const float> importance) {
  check_spec(spec, std::string("layer '") + std::string(name) + "'");
  check_weight(w, name);
  require(importance.empty() || static_cast<int64_t>(importance.size()) == w.cols(), "layer '", name, "': ",
          importance.size(), " importance weights for ", w.cols(), " inputs");
  for (size_t j = 0; j < importance.size(); ++j)
    require(std::isfinite(importance[j]) && importance[j] >= 0, "layer '", name, "': importance weight ", j, " is ",
            importance[j], ", must be finite and >= 0");
  QuantizedMatrix q;
  q.rows = w.rows();
  q.cols = w.cols();
  q.spec = spec;
  const int64_t cols = q.cols, g = spec.group_size(cols), ng = spec.groups(cols);
  q.codes.resize(static_cast<size_t>(q.rows * cols));
  q.scales.resize(static_cast<size_t>(q.rows * ng));
  if (!spec.symmetric) q.zeros.resize(static_cast<size_t>(q.rows * ng));
  const int max_code = spec.max_code();
  try {
    parallel_for(q.rows, row_chunk(cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = w.data() + r * cols;
        for (int64_t k = 0; k < ng; ++k) {
          const int64_t c0 = k * g, c1 = std::min(cols, c0 + g);
          const GroupParams p =
              fit_group(row + c0, c1 - c0, 1, spec, clip, importance.empty() ? nullptr : importance.data() + c0);
          const size_t gi = static_cast<size_t>(r * ng + k);
          q.scales[gi] = f32_to_f16(p.scale);
          if (!spec.symmetric) q.zeros[gi] = static_cast<uint8_t>(p.zero);
          for (int64_t c = c0; c < c1; ++c)
            q.codes[static_cast<size_t>(r * cols + c)] = static_cast<uint8_t>(quantize_value(row[c], p, max_code));
        }
      }
    });
  } catch (const Error& e) {
    fail("layer '", name, "': ", e.what());
  }
  return q;
}

}  // namespace strata::compress::quant
