#include "strata/core/parallel.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "strata/core/error.hpp"

namespace strata {
namespace {

// A float sum is order-sensitive: the result must be bit-identical for any thread count.
float chunked_sum(const std::vector<float>& x, int threads) {
  set_num_threads(threads);
  return parallel_reduce(
      static_cast<int64_t>(x.size()), 1000, 0.0f,
      [&](int64_t b, int64_t e) {
        float s = 0;
        for (int64_t i = b; i < e; ++i) s += x[static_cast<size_t>(i)];
        return s;
      },
      [](float a, float b) { return a + b; });
}

TEST(Parallel, ReductionIsIdenticalForAnyThreadCount) {
  std::vector<float> x(1'000'003);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i)) * 1e3f + 1e-3f;
  const int saved = num_threads();
  const float one = chunked_sum(x, 1);
  EXPECT_EQ(chunked_sum(x, 2), one);
  EXPECT_EQ(chunked_sum(x, 3), one);
  EXPECT_EQ(chunked_sum(x, 8), one);
  set_num_threads(saved);
}

TEST(Parallel, ForVisitsEveryIndexOnce) {
  std::vector<std::atomic<int>> hits(10'007);
  parallel_for(static_cast<int64_t>(hits.size()), 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(Parallel, ExceptionFromLowestChunkReachesCaller) {
  try {
    parallel_chunks(100, [](int64_t c) {
      if (c % 10 == 3) fail("chunk ", c, " failed");
    });
    FAIL() << "expected strata::Error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "chunk 3 failed");
  }
}

TEST(Parallel, RejectsZeroThreads) { EXPECT_THROW(set_num_threads(0), Error); }

}  // namespace
}  // namespace strata
