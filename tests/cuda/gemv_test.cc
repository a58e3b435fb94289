// GPU products with compressed weights and key scoring + top-k against the CPU references:
// ggml_matmul_reference for ggml blocks, the CPU layers' dense weights for int4 groups and 2:4, a
// brute-force sort for top-k. Float results must agree within 1e-5 * sum |w x| per output (only the
// order of the additions differs); top-k index sets exactly. Argument checks run before anything
// reaches the device, so those tests run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "strata/kernels/cuda.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "strata/kernels/ggml_matmul.hpp"
#include "strata/nn/group_quant_linear.hpp"
#include "strata/nn/sparse_linear.hpp"

namespace strata {
namespace {

using kernels::GgmlType;

class CudaGemv : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

template <class T>
std::unique_ptr<cuda::DeviceBuffer> upload(const std::vector<T>& v) {
  auto b = std::make_unique<cuda::DeviceBuffer>(std::max<uint64_t>(1, v.size() * sizeof(T)));
  if (!v.empty()) b->upload(v.data(), v.size() * sizeof(T));
  return b;
}

template <class T>
std::vector<T> download(const cuda::DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  b.download(v.data(), n * sizeof(T));
  return v;
}

std::vector<float> normal(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// y (tokens rows of y_stride) against w [rows, cols] dense times x [tokens, x_cols]; x_col(c) maps a
// weight column to its x column. Padding entries of y must still hold the sentinel.
template <class XCol>
void expect_product(const std::vector<float>& y, int64_t y_stride, const std::vector<float>& want,
                    const std::vector<float>& w, int64_t rows, int64_t cols, const std::vector<float>& x, int64_t x_cols,
                    int64_t tokens, XCol x_col, const char* what) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < y_stride; ++r) {
      const float got = y[static_cast<size_t>(t * y_stride + r)];
      if (r >= rows) {
        ASSERT_EQ(got, -7.0f) << what << ": wrote padding at token " << t << " row " << r;
        continue;
      }
      double mag = 0;
      for (int64_t c = 0; c < cols; ++c)
        mag += std::fabs(static_cast<double>(w[static_cast<size_t>(r * cols + c)]) * x[static_cast<size_t>(t * x_cols + x_col(c))]);
      ASSERT_NEAR(got, want[static_cast<size_t>(t * rows + r)], 1e-5 * mag + 1e-30)
          << what << ": token " << t << " row " << r;
    }
}

// ---- ggml blocks --------------------------------------------------------------------------------

// Random blocks with finite, moderate scales in every half-precision field.
std::vector<uint8_t> random_ggml(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  const uint64_t row_bytes = kernels::ggml_row_size(type, cols);
  std::vector<uint8_t> w(rows * row_bytes);
  std::mt19937 rng(seed);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  const uint32_t block_bytes = kernels::ggml_type_size(type);
  const int halves = type == GgmlType::Q4_K ? 2 : 1;  // d (and dmin) lead every block
  for (uint64_t off = 0; off < w.size(); off += block_bytes)
    for (int h = 0; h < halves; ++h) {
      const uint16_t bits = f32_to_f16(scale(rng)).bits;
      std::memcpy(&w[off + 2 * h], &bits, 2);
    }
  return w;
}

void check_ggml(GgmlType type, int64_t rows, int64_t cols, int64_t tokens, uint32_t seed) {
  SCOPED_TRACE(std::string(kernels::ggml_type_name(type)) + " " + std::to_string(rows) + "x" + std::to_string(cols) +
               " tokens " + std::to_string(tokens));
  const std::vector<uint8_t> w = random_ggml(type, rows, cols, seed);
  const std::vector<float> x = normal(static_cast<size_t>(tokens * cols), seed + 1);
  std::vector<float> dense(static_cast<size_t>(rows * cols));
  kernels::dequantize(type, std::as_bytes(std::span(w)), dense.data(), rows * cols);
  std::vector<float> want(static_cast<size_t>(tokens * rows));
  kernels::ggml_matmul_reference(type, w.data(), rows, cols, x.data(), tokens, want.data(), rows);

  const int64_t y_stride = rows + 3;
  const auto dw = upload(w), dx = upload(x);
  const auto dy = upload(std::vector<float>(static_cast<size_t>(tokens * y_stride), -7.0f));
  cuda::ggml_gemv(type, dw->data(), rows, cols, static_cast<const float*>(dx->data()), tokens,
                  static_cast<float*>(dy->data()), y_stride);
  expect_product(download<float>(*dy, static_cast<size_t>(tokens * y_stride)), y_stride, want, dense, rows, cols, x, cols,
                 tokens, [](int64_t c) { return c; }, "ggml_gemv");
}

TEST_F(CudaGemv, GgmlBlocksMatchReference) {
  uint32_t seed = 10;
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K}) {
    // 16-byte rows (cols a multiple of 256), an odd row count, a partial last step of chunks.
    for (int64_t tokens : {1, 2, 3, 5, 8, 11}) check_ggml(type, 37, 1280, tokens, ++seed);
    check_ggml(type, 1, 256, 1, ++seed);
    check_ggml(type, 256, 4096, 4, ++seed);
  }
  // Rows that are not 16-byte multiples take the byte-wise path.
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0})
    for (int64_t tokens : {1, 3}) check_ggml(type, 9, 96, tokens, ++seed);
}

// ---- int4 groups ----------------------------------------------------------------------------------

nn::GroupQuantWeights random_groups(int64_t rows, int64_t cols, int bits, int64_t group, bool asym, bool channel,
                                    uint32_t seed) {
  std::mt19937 rng(seed);
  nn::GroupQuantWeights q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  q.group = group;
  const int64_t g = group <= 0 || group >= cols ? cols : group;
  const int64_t groups = (cols + g - 1) / g;
  q.codes.resize(static_cast<size_t>(rows * cols));
  for (auto& c : q.codes) c = static_cast<uint8_t>(rng() % (1u << bits));
  std::uniform_real_distribution<float> scale(0.005f, 0.05f), channel_scale(0.5f, 2.0f);
  q.scales.resize(static_cast<size_t>(rows * groups));
  for (auto& s : q.scales) s = scale(rng);
  if (asym) {
    q.zeros.resize(q.scales.size());
    for (auto& z : q.zeros) z = static_cast<uint8_t>(rng() % (1u << bits));
  }
  if (channel) {
    q.channel_scales.resize(static_cast<size_t>(cols));
    for (auto& s : q.channel_scales) s = channel_scale(rng);
  }
  return q;
}

cuda::Int4GroupsHost pack(const nn::GroupQuantWeights& q) {
  return cuda::pack_int4_groups(q.rows, q.cols, q.bits, q.group, q.codes.data(), q.scales.data(),
                                q.zeros.empty() ? nullptr : q.zeros.data(),
                                q.channel_scales.empty() ? nullptr : q.channel_scales.data());
}

struct GroupCase {
  int64_t rows, cols;
  int bits;
  int64_t group;
  bool asym, channel;
};
const GroupCase kGroupCases[] = {
    {64, 1024, 4, 128, false, false},  // no padding
    {19, 300, 3, 48, true, true},      // groups padded to 64 columns, a partial last group, channel scales
    {7, 200, 2, 0, true, false},       // one group a row
};

// Unpacking the device layout on the host gives the CPU layer's dense weight bit for bit.
TEST(CudaGemvLayout, PackedInt4GroupsEqualTheCpuLayersWeights) {
  uint32_t seed = 40;
  for (const GroupCase& gc : kGroupCases) {
    const nn::GroupQuantWeights q = random_groups(gc.rows, gc.cols, gc.bits, gc.group, gc.asym, gc.channel, ++seed);
    const RowMatrix<float> want = nn::GroupQuantLinear(q).dense_weight();
    const cuda::Int4GroupsHost h = pack(q);
    ASSERT_EQ(h.group_stride % 32, 0);
    ASSERT_EQ(h.padded_cols, h.groups * h.group_stride);
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t c = 0; c < q.cols; ++c) {
        const int64_t k = c / h.group, p = k * h.group_stride + c % h.group;
        const uint8_t byte = h.codes[static_cast<size_t>(r * h.padded_cols / 2 + p / 32 * 16 + p % 16)];
        const int code = p % 32 < 16 ? byte & 0xF : byte >> 4;
        const float* sz = &h.params[static_cast<size_t>(2 * (r * h.groups + k))];
        float v = sz[0] * static_cast<float>(code - static_cast<int>(sz[1]));
        if (!h.x_scale.empty()) v *= h.x_scale[static_cast<size_t>(p)];
        ASSERT_EQ(v, want(r, c)) << r << " " << c;
      }
  }
}

TEST_F(CudaGemv, Int4GroupsMatchTheCpuLayer) {
  uint32_t seed = 50;
  for (const GroupCase& gc : kGroupCases) {
    const nn::GroupQuantWeights q = random_groups(gc.rows, gc.cols, gc.bits, gc.group, gc.asym, gc.channel, ++seed);
    const RowMatrix<float> dense_m = nn::GroupQuantLinear(q).dense_weight();
    const std::vector<float> dense(dense_m.data(), dense_m.data() + q.rows * q.cols);
    const cuda::Int4GroupsHost h = pack(q);
    const auto dcodes = upload(h.codes), dparams = upload(h.params), dscale = upload(h.x_scale);
    const cuda::Int4Groups w{h.rows, h.padded_cols, h.group_stride, static_cast<const uint8_t*>(dcodes->data()),
                             static_cast<const float*>(dparams->data())};
    for (int64_t tokens : {1, 4, 8, 9}) {
      SCOPED_TRACE(std::to_string(q.rows) + "x" + std::to_string(q.cols) + " tokens " + std::to_string(tokens));
      const std::vector<float> x = normal(static_cast<size_t>(tokens * q.cols), ++seed);
      std::vector<float> xp(static_cast<size_t>(tokens * h.padded_cols), 0.0f);  // the padded layout
      const auto slot = [&](int64_t c) { return c / h.group * h.group_stride + c % h.group; };
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t c = 0; c < q.cols; ++c) xp[static_cast<size_t>(t * h.padded_cols + slot(c))] = x[t * q.cols + c];
      std::vector<float> want(static_cast<size_t>(tokens * q.rows), 0.0f);
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t r = 0; r < q.rows; ++r) {
          double s = 0;
          for (int64_t c = 0; c < q.cols; ++c)
            s += static_cast<double>(dense[static_cast<size_t>(r * q.cols + c)]) * x[static_cast<size_t>(t * q.cols + c)];
          want[static_cast<size_t>(t * q.rows + r)] = static_cast<float>(s);
        }
      const int64_t y_stride = q.rows + 1;
      const auto dx = upload(xp);
      const auto dy = upload(std::vector<float>(static_cast<size_t>(tokens * y_stride), -7.0f));
      cuda::int4_group_gemv(w, static_cast<const float*>(dx->data()),
                            h.x_scale.empty() ? nullptr : static_cast<const float*>(dscale->data()), tokens,
                            static_cast<float*>(dy->data()), y_stride);
      expect_product(download<float>(*dy, static_cast<size_t>(tokens * y_stride)), y_stride, want, dense, q.rows, q.cols,
                     x, q.cols, tokens, [](int64_t c) { return c; }, "int4_group_gemv");
    }
  }
}

// ---- 2:4 sparse -----------------------------------------------------------------------------------

// A 2:4 weight: most groups keep two, some one or none, some keep a -0.0 (a stored value).
std::vector<float> random_24(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(rows * cols), 0.0f);
  for (int64_t g = 0; g < rows * cols / 4; ++g) {
    const int keep = rng() % 8 == 0 ? static_cast<int>(rng() % 2) : 2;
    int p[4] = {0, 1, 2, 3};
    std::shuffle(p, p + 4, rng);
    for (int i = 0; i < keep; ++i)
      w[static_cast<size_t>(4 * g + p[i])] = rng() % 50 == 0 ? -0.0f : f16_to_f32(f32_to_f16(nd(rng)));
  }
  return w;
}

std::vector<float> unpack_24(const cuda::Sparse24Host& h) {
  std::vector<float> w(static_cast<size_t>(h.rows * h.cols), 0.0f);
  for (int64_t i = 0; i < h.rows * h.cols / 2; ++i) {
    const int p = (h.meta[static_cast<size_t>(i / 4)] >> (2 * (i % 4))) & 3;
    const float v = h.half ? f16_to_f32(h.values_f16[static_cast<size_t>(i)]) : h.values_f32[static_cast<size_t>(i)];
    w[static_cast<size_t>(i / 2 * 4 + p)] = v;
  }
  return w;
}

TEST(CudaGemvLayout, Packed24RoundTripsAndMatchesTheCpuLayer) {
  for (bool half : {false, true}) {
    const std::vector<float> w = random_24(13, 96, 60 + half);
    const cuda::Sparse24Host h = cuda::pack_sparse24(w.data(), 13, 96, half);
    const std::vector<float> back = unpack_24(h);
    const RowMatrix<float> wm = RowMatrix<float>::Map(w.data(), 13, 96);
    const RowMatrix<float> cpu = nn::SparseLinear(wm, half, nn::SparseLinear::Layout::two_four).dense_weight();
    for (size_t i = 0; i < w.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(w[i])) << i;
      ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(cpu.data()[i])) << i;
    }
  }
}

TEST_F(CudaGemv, Sparse24MatchesDenseProduct) {
  uint32_t seed = 70;
  for (bool half : {false, true})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{33, 272}, {64, 2048}, {1, 16}}) {
      const std::vector<float> w = random_24(rows, cols, ++seed);
      const cuda::Sparse24Host h = cuda::pack_sparse24(w.data(), rows, cols, half);
      const auto dvals = half ? upload(h.values_f16) : upload(h.values_f32);
      const auto dmeta = upload(h.meta);
      const cuda::Sparse24 dw{rows, cols, half, dvals->data(), static_cast<const uint8_t*>(dmeta->data())};
      for (int64_t tokens : {1, 2, 7, 8, 10}) {
        SCOPED_TRACE(std::string(half ? "f16 " : "f32 ") + std::to_string(rows) + "x" + std::to_string(cols) +
                     " tokens " + std::to_string(tokens));
        const std::vector<float> x = normal(static_cast<size_t>(tokens * cols), ++seed);
        std::vector<float> want(static_cast<size_t>(tokens * rows));
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t r = 0; r < rows; ++r) {
            double s = 0;
            for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(w[r * cols + c]) * x[t * cols + c];
            want[static_cast<size_t>(t * rows + r)] = static_cast<float>(s);
          }
        const int64_t y_stride = rows + 2;
        const auto dx = upload(x);
        const auto dy = upload(std::vector<float>(static_cast<size_t>(tokens * y_stride), -7.0f));
        cuda::sparse24_gemv(dw, static_cast<const float*>(dx->data()), tokens, static_cast<float*>(dy->data()), y_stride);
        expect_product(download<float>(*dy, static_cast<size_t>(tokens * y_stride)), y_stride, want, w, rows, cols, x,
                       cols, tokens, [](int64_t c) { return c; }, "sparse24_gemv");
      }
    }
}

// ---- key scoring and top-k -------------------------------------------------------------------------

// The brute-force answer: positions sorted by score (NaN lowest, -0 == +0), ties by position; the
// first k, in position order.
std::vector<int32_t> brute_top_k(const std::vector<float>& s, int64_t k) {
  std::vector<int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  const auto rank = [&](int32_t i) { return std::isnan(s[i]) ? -std::numeric_limits<float>::infinity() : s[i]; };
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    const bool na = std::isnan(s[a]), nb = std::isnan(s[b]);
    if (na || nb) return !na && nb;
    return rank(a) > rank(b);
  });
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int32_t> device_top_k(const std::vector<float>& s, int64_t k) {
  const auto ds = upload(s);
  cuda::DeviceBuffer di(std::max<int64_t>(1, k) * 4);
  cuda::top_k(static_cast<const float*>(ds->data()), static_cast<int64_t>(s.size()), k,
              static_cast<int32_t*>(di.data()));
  return download<int32_t>(di, static_cast<size_t>(k));
}

TEST_F(CudaGemv, KvScoresAndTopKMatchBruteForce) {
  uint32_t seed = 90;
  for (auto [n, dim] : {std::pair<int64_t, int64_t>{5000, 128}, {1, 64}, {777, 7}, {40000, 96}}) {
    SCOPED_TRACE(std::to_string(n) + " keys of " + std::to_string(dim));
    const std::vector<float> q = normal(static_cast<size_t>(dim), ++seed);
    const std::vector<float> keys = normal(static_cast<size_t>(n * dim), ++seed);
    const auto dq = upload(q), dk = upload(keys);
    cuda::DeviceBuffer ds(n * 4), di(n * 4);
    for (int64_t k : {int64_t{1}, std::min<int64_t>(n, 17), std::min<int64_t>(n, 1000), n}) {
      cuda::kv_score_top_k(static_cast<const float*>(dq->data()), static_cast<const float*>(dk->data()), n, dim, k,
                           static_cast<float*>(ds.data()), static_cast<int32_t*>(di.data()));
      const std::vector<float> s = download<float>(ds, static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) {
        double want = 0, mag = 0;
        for (int64_t c = 0; c < dim; ++c) {
          want += static_cast<double>(q[c]) * keys[j * dim + c];
          mag += std::fabs(static_cast<double>(q[c]) * keys[j * dim + c]);
        }
        ASSERT_NEAR(s[j], want, 1e-5 * mag) << "score " << j;
      }
      // Against the scores the device computed, so that rounding cannot move the boundary.
      ASSERT_EQ(download<int32_t>(di, static_cast<size_t>(k)), brute_top_k(s, k)) << "k " << k;
    }
  }
}

TEST_F(CudaGemv, TopKBreaksTiesByLowerPosition) {
  std::mt19937 rng(7);
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::infinity(), 1.0f, -1.0f, 1e-38f};
  for (int64_t n : {1, 31, 1024, 1025, 100000, 131072}) {
    std::vector<float> s(static_cast<size_t>(n));
    // Few distinct values: most of the k-th largest's equals must be cut by position.
    for (auto& v : s) v = rng() % 4 == 0 ? specials[rng() % 8] : static_cast<float>(rng() % 16) * 0.25f;
    for (int64_t k : {int64_t{1}, std::min<int64_t>(n, 3), std::min<int64_t>(n, 3000), n / 2, n}) {
      if (k == 0) continue;
      ASSERT_EQ(device_top_k(s, k), brute_top_k(s, k)) << "n " << n << " k " << k;
    }
  }
  // All equal: the first k positions.
  const std::vector<float> same(50000, 0.5f);
  ASSERT_EQ(device_top_k(same, 1234), brute_top_k(same, 1234));
}

TEST_F(CudaGemv, CopyTimingIsPositive) {
  const double s = cuda::time_device_copy(uint64_t{64} << 20, 3);
  EXPECT_GT(s, 0.0);
  std::printf("device copy of 64 MiB: %.1f GB/s read + written\n", 2.0 * (64 << 20) / s / 1e9);
}

// ---- argument checks: none of these reach the device -----------------------------------------------

TEST(CudaGemvChecks, BadArgumentsThrowBeforeLaunching) {
  alignas(16) static float buf[64];
  float* x = buf;
  float* y = buf + 32;
  const void* w = buf;
  EXPECT_FALSE(cuda::ggml_gemv_supported(GgmlType::Q5_K));
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q5_K, w, 4, 256, x, 1, y, 4), Error);
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q4_0, w, 4, 48, x, 1, y, 4), Error);        // not whole blocks
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q4_K, w, 4, 128, x, 1, y, 4), Error);       // Q4_K blocks are 256
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q8_0, w, 0, 32, x, 1, y, 4), Error);        // no rows
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q8_0, w, 4, 32, x, 1, y, 3), Error);        // y_stride < rows
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q8_0, w, 4, 32, x + 1, 1, y, 4), Error);    // x not 16-byte aligned
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q8_0, nullptr, 4, 32, x, 1, y, 4), Error);
  EXPECT_THROW(cuda::ggml_gemv(GgmlType::Q8_0, w, 4, 32, x, -1, y, 4), Error);

  const auto* codes = reinterpret_cast<const uint8_t*>(buf);
  EXPECT_THROW(cuda::int4_group_gemv({4, 64, 48, codes, buf}, x, nullptr, 1, y, 4), Error);  // stride not /32
  EXPECT_THROW(cuda::int4_group_gemv({4, 96, 64, codes, buf}, x, nullptr, 1, y, 4), Error);  // not whole groups
  EXPECT_THROW(cuda::int4_group_gemv({4, 64, 32, codes, buf + 1}, x, nullptr, 1, y, 4), Error);  // params unaligned
  EXPECT_THROW(cuda::int4_group_gemv({4, 64, 32, nullptr, buf}, x, nullptr, 1, y, 4), Error);

  EXPECT_THROW(cuda::sparse24_gemv({4, 40, false, buf, codes}, x, 1, y, 4), Error);  // cols not /16
  EXPECT_THROW(cuda::sparse24_gemv({4, 32, true, buf + 1, codes}, x, 1, y, 4), Error);  // values unaligned
  EXPECT_THROW(cuda::sparse24_gemv({4, 32, true, buf, nullptr}, x, 1, y, 4), Error);

  int32_t* idx = reinterpret_cast<int32_t*>(y);
  EXPECT_THROW(cuda::top_k(x, 10, 11, idx), Error);  // k > n
  EXPECT_THROW(cuda::top_k(x, 0, 0, idx), Error);
  EXPECT_THROW(cuda::top_k(x, 10, -1, idx), Error);
  EXPECT_THROW(cuda::kv_scores(x, x, 0, 4, y), Error);
  EXPECT_THROW(cuda::kv_scores(x, x, 4, 0, y), Error);
  EXPECT_THROW(cuda::kv_score_top_k(x, x, 4, 4, 5, y, idx), Error);
  EXPECT_THROW(cuda::time_device_copy(0, 1), Error);

  std::vector<uint8_t> zero_codes(64, 0);
  std::vector<float> scales(4, 1.0f);
  EXPECT_THROW(cuda::pack_int4_groups(2, 32, 5, 32, zero_codes.data(), scales.data(), nullptr, nullptr), Error);
  zero_codes[3] = 16;
  EXPECT_THROW(cuda::pack_int4_groups(2, 32, 4, 32, zero_codes.data(), scales.data(), nullptr, nullptr), Error);
  std::vector<float> dense(4 * 16, 1.0f);  // every group keeps four
  EXPECT_THROW(cuda::pack_sparse24(dense.data(), 4, 16, false), Error);
  EXPECT_THROW(cuda::pack_sparse24(dense.data(), 4, 12, false), Error);
}

}  // namespace
}  // namespace strata
