// GPU conversions against the scalar reference, over every f16/bf16 bit pattern and tricky floats.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/kernels/cuda.hpp"

namespace strata {
namespace {

class CudaConvert : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

std::vector<float> inputs() {
  std::vector<float> v;
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = f16_to_f32(f16{static_cast<uint16_t>(b)});
    v.push_back(f);
    if (std::isfinite(f)) v.push_back(std::nextafter(f, INFINITY));
    uint32_t bf = (b << 16) | 0x8000u;
    float g;
    std::memcpy(&g, &bf, 4);
    v.push_back(g);
  }
  std::mt19937 rng(3);
  for (int i = 0; i < 1'000'003; ++i) {
    const uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    v.push_back(f);
  }
  return v;
}

TEST_F(CudaConvert, F16AndBF16MatchScalarReference) {
  const std::vector<float> in = inputs();
  const uint64_t n = in.size();
  cuda::DeviceBuffer d_in(n * 4), d_h(n * 2), d_b(n * 2), d_back(n * 4);
  d_in.upload(in.data(), n * 4);

  cuda::convert_f32_to_f16(static_cast<const float*>(d_in.data()), static_cast<f16*>(d_h.data()), n);
  std::vector<f16> h(n);
  d_h.download(h.data(), n * 2);
  for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(h[i].bits, f32_to_f16(in[i]).bits) << i;

  cuda::convert_f32_to_bf16(static_cast<const float*>(d_in.data()), static_cast<bf16*>(d_b.data()), n);
  std::vector<bf16> b(n);
  d_b.download(b.data(), n * 2);
  for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(b[i].bits, f32_to_bf16(in[i]).bits) << i;

  cuda::convert_f16_to_f32(static_cast<const f16*>(d_h.data()), static_cast<float*>(d_back.data()), n);
  std::vector<float> back(n);
  d_back.download(back.data(), n * 4);
  for (uint64_t i = 0; i < n; ++i) {
    const float want = f16_to_f32(h[i]);
    ASSERT_EQ(0, std::memcmp(&back[i], &want, 4)) << i;
  }
}

// Pointers one element into a buffer cannot take the wide accesses; lengths not a multiple of four
// leave a tail. Every combination must give the reference's bits.
TEST_F(CudaConvert, UnalignedPointersAndTailsMatchScalarReference) {
  const std::vector<float> in = inputs();
  const uint64_t n = 4099;
  cuda::DeviceBuffer d_in(in.size() * 4), d_h((n + 8) * 2), d_back((n + 8) * 4);
  d_in.upload(in.data(), in.size() * 4);
  for (uint64_t in_off : {0, 1, 2}) {
    for (uint64_t out_off : {0, 1, 3}) {
      for (uint64_t len : {n, n - 1, uint64_t{3}}) {
        const float* src = static_cast<const float*>(d_in.data()) + in_off;
        f16* dst = static_cast<f16*>(d_h.data()) + out_off;
        cuda::convert_f32_to_f16(src, dst, len);
        std::vector<f16> h(len + out_off);
        d_h.download(h.data(), (len + out_off) * 2);
        for (uint64_t i = 0; i < len; ++i)
          ASSERT_EQ(h[out_off + i].bits, f32_to_f16(in[in_off + i]).bits) << in_off << " " << out_off << " " << i;
        cuda::convert_f16_to_f32(dst, static_cast<float*>(d_back.data()) + in_off, len);
        std::vector<float> back(len + in_off);
        d_back.download(back.data(), (len + in_off) * 4);
        for (uint64_t i = 0; i < len; ++i) {
          const float want = f16_to_f32(h[out_off + i]);
          ASSERT_EQ(0, std::memcmp(&back[in_off + i], &want, 4)) << in_off << " " << out_off << " " << i;
        }
      }
    }
  }
}

TEST(CudaDevice, CountNeverThrows) {
  EXPECT_GE(cuda::device_count(), 0);
  if (cuda::device_count() > 0) std::printf("device: %s\n", cuda::device_description().c_str());
}

}  // namespace
}  // namespace strata
