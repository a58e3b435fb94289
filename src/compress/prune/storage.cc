// Knob parsing and the stored form of a pruned layer: the kept values row by row, plus where they
// sit (a bitmask, or per-group position indices for 2:4 as NVIDIA's sparse tensor cores store it).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "strata/compress/prune/prune.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::prune {

namespace {

// Bits of a position inside a group of m.
int index_bits(int m) { return std::max(1, static_cast<int>(std::bit_width(static_cast<unsigned>(m - 1)))); }

// Positions as indices cost (m - n) * b bits per group, a bitmask m bits: take the smaller (2:4 ties
// at 4 bits and uses indices, the layout sparse tensor cores read).
bool uses_indices(const Pattern& p) { return p.semi_structured() && (p.m - p.n) * index_bits(p.m) <= p.m; }

int64_t metadata_bytes_per_row(int64_t cols, const Pattern& p) {
  if (uses_indices(p)) return (p.kept_per_row(cols) * index_bits(p.m) + 7) / 8;
  return (cols + 7) / 8;
}

int64_t value_size(ValueType v) { return v == ValueType::f16 ? 2 : 4; }

// Parses "N:M" strictly (digits only).
bool parse_ratio(const std::string& s, int& n, int& m) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) return false;
  const auto digits = [](const std::string& t) {
    return !t.empty() && t.size() <= 3 && std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  const std::string a = s.substr(0, colon), b = s.substr(colon + 1);
  if (!digits(a) || !digits(b)) return false;
  n = std::stoi(a);
  m = std::stoi(b);
  return true;
}

// Where each row's kept values start in the row-major sequence of all kept values, and the total.
std::vector<int64_t> row_starts(const Mask& mask) {
  std::vector<int64_t> start(static_cast<size_t>(mask.rows()) + 1, 0);
  for (int64_t r = 0; r < mask.rows(); ++r) {
    int64_t n = 0;
    for (int64_t j = 0; j < mask.cols(); ++j) n += mask(r, j) != 0;
    start[static_cast<size_t>(r) + 1] = start[static_cast<size_t>(r)] + n;
  }
  return start;
}

}  // namespace

Setting parse_setting(std::string_view knob, std::string_view layer) {
  const auto kv = parse_knob(knob);
  Setting s;
  for (const auto& [key, value] : kv)
    require(key == "sparsity" || key == "pattern" || key == "values" || key == "mask", "layer '", layer, "': knob '",
            knob, "': unknown key '", key, "' (expected sparsity=F, pattern=N:M, values=f16|f32, mask=block|row)");
  require(kv.count("sparsity") || kv.count("pattern"), "layer '", layer, "': knob '", knob,
          "' needs sparsity=F or pattern=N:M");
  if (auto it = kv.find("pattern"); it != kv.end()) {
    int n = 0, m = 0;
    require(parse_ratio(it->second, n, m), "layer '", layer, "': knob '", knob, "': pattern must be N:M, got '",
            it->second, "'");
    try {
      s.pattern = Pattern::n_of_m(n, m);
    } catch (const Error& e) {
      fail("layer '", layer, "': knob '", knob, "': ", e.what());
    }
    if (kv.count("sparsity")) {
      const double sp = knob_double(kv, "sparsity", knob);
      require(std::abs(sp - s.pattern.sparsity) < 1e-9, "layer '", layer, "': knob '", knob, "': sparsity ", sp,
              " contradicts pattern ", n, ":", m);
    }
  } else {
    double sp = 0;
    try {
      sp = knob_double(kv, "sparsity", knob);
      s.pattern = Pattern::unstructured(sp);
    } catch (const Error& e) {
      fail("layer '", layer, "': ", e.what());
    }
  }
  if (auto it = kv.find("mask"); it != kv.end()) {
    require(it->second == "block" || it->second == "row", "layer '", layer, "': knob '", knob,
            "': mask must be block or row, got '", it->second, "'");
    s.mask = it->second == "block" ? SparseGptMask::block : SparseGptMask::row;
    s.mask_given = true;
  }
  if (auto it = kv.find("values"); it != kv.end()) {
    require(it->second == "f16" || it->second == "f32", "layer '", layer, "': knob '", knob,
            "': values must be f16 or f32, got '", it->second, "'");
    s.values = it->second == "f16" ? ValueType::f16 : ValueType::f32;
  }
  return s;
}

uint64_t stored_bytes(int64_t rows, int64_t cols, const Setting& setting) {
  const int64_t kept = setting.pattern.kept_per_row(cols);
  return static_cast<uint64_t>(rows) *
         static_cast<uint64_t>(kept * value_size(setting.values) + metadata_bytes_per_row(cols, setting.pattern));
}

Compressed encode(const Pruned& pruned, const Setting& setting, std::string method, std::string knob) {
  const int64_t rows = pruned.weight.rows(), cols = pruned.weight.cols();
  const Pattern& p = setting.pattern;
  const int64_t kept = p.kept_per_row(cols);
  require(pruned.mask.rows() == rows && pruned.mask.cols() == cols, method, ": mask is [", pruned.mask.rows(), ", ",
          pruned.mask.cols(), "] for a weight [", rows, ", ", cols, "]");
  Compressed c;
  c.method = std::move(method);
  c.knob = std::move(knob);
  c.rows = rows;
  c.cols = cols;
  const bool indices = uses_indices(p);
  const int64_t meta_bytes = metadata_bytes_per_row(cols, p);
  Tensor values(setting.values == ValueType::f16 ? DType::f16 : DType::f32, Shape{rows, kept});
  Tensor meta(DType::i8, Shape{rows, meta_bytes});
  const int bits = indices ? index_bits(p.m) : 0;
  const int64_t per_group = indices ? p.m - p.n : 0;
  std::byte* vbase = values.raw();
  auto* mbase = reinterpret_cast<uint8_t*>(meta.raw());
  // Where each row's values start in the row-major sequence: rows of a bitmask form may keep different
  // counts (SparseGPT's per-block rule) as long as the layer keeps rows * kept in all.
  const std::vector<int64_t> start = row_starts(pruned.mask);
  require(start.back() == rows * kept, c.method, ": the mask keeps ", start.back(), " weights, the pattern says ",
          rows * kept, " (", kept, " per row)");
  parallel_for(rows, 32, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* mr = pruned.mask.data() + r * cols;
      const float* wr = pruned.weight.data() + r * cols;
      uint8_t* out = mbase + r * meta_bytes;
      const int64_t row_kept = start[static_cast<size_t>(r + 1)] - start[static_cast<size_t>(r)];
      require(!p.semi_structured() || row_kept == kept, c.method, ": row ", r, " keeps ", row_kept, " weights, the pattern says ",
              kept);
      int64_t k = 0;
      for (int64_t j = 0; j < cols; ++j) {
        if (!mr[j]) continue;
        if (indices) {
          require(k / per_group == j / p.m, c.method, ": row ", r, " breaks the ", p.n, ":", p.m, " pattern at column ", j);
          const uint64_t field = static_cast<uint64_t>(j % p.m);
          for (int b = 0; b < bits; ++b)
            if (field >> b & 1u) {
              const int64_t bit = k * bits + b;
              out[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
            }
        } else {
          out[j / 8] |= static_cast<uint8_t>(1u << (j % 8));
        }
        row[static_cast<size_t>(k++)] = wr[j];
      }
      const int64_t at = start[static_cast<size_t>(r)];
      if (setting.values == ValueType::f16) {
        convert_f32_to_f16(row.data(), reinterpret_cast<f16*>(vbase) + at, static_cast<uint64_t>(k));
      } else {
        std::memcpy(reinterpret_cast<float*>(vbase) + at, row.data(), static_cast<size_t>(k) * sizeof(float));
      }
    }
  });
  c.tensors.emplace("values", std::move(values));
  c.tensors.emplace(indices ? "indices" : "mask", std::move(meta));
  c.meta = {{"pattern", p.str()},
            {"values", setting.values == ValueType::f16 ? "f16" : "f32"},
            {"positions", indices ? "indices" : "mask"},
            {"kept", rows * kept}};
  return c;
}

RowMatrix<float> decode(const Compressed& c) {
  const Setting setting = parse_setting(c.knob, c.method);
  const Pattern& p = setting.pattern;
  const int64_t rows = c.rows, cols = c.cols;
  require(rows > 0 && cols > 0, c.method, ": compressed layer has shape [", rows, ", ", cols, "]");
  const int64_t kept = p.kept_per_row(cols);
  const bool indices = uses_indices(p);
  const int64_t meta_bytes = metadata_bytes_per_row(cols, p);
  const auto vit = c.tensors.find("values");
  const auto mit = c.tensors.find(indices ? "indices" : "mask");
  require(vit != c.tensors.end() && mit != c.tensors.end(), c.method, " (", c.knob, "): missing tensor '",
          vit == c.tensors.end() ? "values" : (indices ? "indices" : "mask"), "'");
  const DType vt = setting.values == ValueType::f16 ? DType::f16 : DType::f32;
  require(vit->second.dtype() == vt && vit->second.shape() == Shape{rows, kept}, c.method, " (", c.knob,
          "): values are ", dtype_name(vit->second.dtype()), " ", vit->second.shape().str(), ", expected ",
          dtype_name(vt), " [", rows, ", ", kept, "]");
  require(mit->second.dtype() == DType::i8 && mit->second.shape() == Shape{rows, meta_bytes}, c.method, " (", c.knob,
          "): position tensor is ", dtype_name(mit->second.dtype()), " ", mit->second.shape().str(), ", expected i8 [",
          rows, ", ", meta_bytes, "]");
  const std::byte* vbase = vit->second.raw();
  const auto* mbase = reinterpret_cast<const uint8_t*>(mit->second.raw());
  const int bits = indices ? index_bits(p.m) : 0;
  const int64_t per_group = indices ? p.m - p.n : 0;
  // Where each row's values start: r * kept for indices; for a bitmask, the bits set in the rows above
  // (rows may keep different counts, the layer rows * kept in all).
  std::vector<int64_t> start(static_cast<size_t>(rows) + 1, 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t n = kept;
    if (!indices) {
      const uint8_t* in = mbase + r * meta_bytes;
      n = 0;
      for (int64_t j = 0; j < cols; ++j) n += in[j / 8] >> (j % 8) & 1u;
      require(!p.semi_structured() || n == kept, c.method, " (", c.knob, "): row ", r, " of the mask has ", n,
              " bits set, the pattern keeps ", kept);
    }
    start[static_cast<size_t>(r) + 1] = start[static_cast<size_t>(r)] + n;
  }
  require(start.back() == rows * kept, c.method, " (", c.knob, "): the mask has ", start.back(),
          " bits set, expected ", rows * kept, " (", kept, " per row)");
  RowMatrix<float> w = RowMatrix<float>::Zero(rows, cols);
  parallel_for(rows, 32, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t at = start[static_cast<size_t>(r)], n = start[static_cast<size_t>(r) + 1] - at;
      if (setting.values == ValueType::f16) {
        convert_f16_to_f32(reinterpret_cast<const f16*>(vbase) + at, row.data(), static_cast<uint64_t>(n));
      } else {
        std::memcpy(row.data(), reinterpret_cast<const float*>(vbase) + at, static_cast<size_t>(n) * sizeof(float));
      }
      const uint8_t* in = mbase + r * meta_bytes;
      float* wr = w.data() + r * cols;
      if (indices) {
        int64_t prev = -1;
        for (int64_t k = 0; k < kept; ++k) {
          int64_t field = 0;
          for (int b = 0; b < bits; ++b) {
            const int64_t bit = k * bits + b;
            field |= static_cast<int64_t>(in[bit / 8] >> (bit % 8) & 1u) << b;
          }
          const int64_t group = k / per_group;
          const int64_t j = group * p.m + field;
          require(field < p.m && (k % per_group == 0 || j > prev), c.method, " (", c.knob, "): bad position index ",
                  field, " in row ", r);
          wr[j] = row[static_cast<size_t>(k)];
          prev = j;
        }
      } else {
        int64_t k = 0;
        for (int64_t j = 0; j < cols; ++j)
          if (in[j / 8] >> (j % 8) & 1u) wr[j] = row[static_cast<size_t>(k++)];
      }
    }
  });
  return w;
}

}  // namespace strata::compress::prune
