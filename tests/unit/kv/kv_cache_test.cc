#include "strata/kv/cache.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "strata/core/error.hpp"

namespace strata::kv {
namespace {

// Rows [tokens, heads * dim] whose value encodes (position, head, channel, key/value), so that any
// misplaced copy shows.
struct Rows {
  std::vector<float> k, v;
};
float code(int64_t pos, int64_t head, int64_t ch, bool value) {
  return static_cast<float>(pos * 1000 + head * 100 + ch) * (value ? -1.0f : 1.0f);
}
Rows rows(int64_t pos0, int64_t tokens, int64_t heads, int64_t dim) {
  Rows r;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c = 0; c < dim; ++c) {
        r.k.push_back(code(pos0 + t, h, c, false));
        r.v.push_back(code(pos0 + t, h, c, true));
      }
  return r;
}

void expect_head(const Cache& cache, int layer, int head, const std::vector<int64_t>& positions) {
  ASSERT_EQ(cache.length(layer, head), static_cast<int64_t>(positions.size()));
  const auto pos = cache.positions(layer, head);
  const int64_t d = cache.head_dim();
  for (size_t i = 0; i < positions.size(); ++i) {
    EXPECT_EQ(pos[i], positions[i]);
    for (int64_t c = 0; c < d; ++c) {
      EXPECT_EQ(cache.keys(layer, head)[static_cast<int64_t>(i) * d + c], code(positions[i], head, c, false));
      EXPECT_EQ(cache.values(layer, head)[static_cast<int64_t>(i) * d + c], code(positions[i], head, c, true));
    }
  }
}

TEST(KvCache, AppendSplitsHeadsAndKeepsPositions) {
  Cache cache(2, 3, 4);
  const Rows a = rows(0, 5, 3, 4);
  cache.append(0, a.k.data(), a.v.data(), 5, 0);
  const Rows b = rows(5, 2, 3, 4);
  cache.append(0, b.k.data(), b.v.data(), 2, 5);
  for (int h = 0; h < 3; ++h) expect_head(cache, 0, h, {0, 1, 2, 3, 4, 5, 6});
  EXPECT_EQ(cache.length(1, 0), 0);
  EXPECT_EQ(cache.total_tokens(), 3 * 7);
  // Positions come from the caller: after an eviction the next token is not at the cache length.
  const int64_t keep[] = {0, 6};
  cache.keep(0, 1, keep);
  const Rows c = rows(7, 1, 3, 4);
  cache.append(0, c.k.data(), c.v.data(), 1, 7);
  expect_head(cache, 0, 1, {0, 6, 7});
  expect_head(cache, 0, 0, {0, 1, 2, 3, 4, 5, 6, 7});
  // Positions must increase.
  EXPECT_THROW(cache.append(0, c.k.data(), c.v.data(), 1, 7), Error);
  EXPECT_THROW(cache.length(2, 0), Error);
  EXPECT_THROW(cache.length(0, 3), Error);
}

TEST(KvCache, CopiesAreDeepAndHoldTheSameBytes) {
  Cache cache(2, 2, 3);
  cache.set_headroom(2);
  const Rows a = rows(0, 6, 2, 3);
  cache.append(1, a.k.data(), a.v.data(), 6, 0);
  const int64_t keep[] = {1, 4};
  cache.keep(1, 0, keep);
  Cache copy(cache);
  EXPECT_EQ(copy.bytes(), cache.bytes());
  EXPECT_EQ(copy.headroom(), 2);
  expect_head(copy, 1, 0, {1, 4});
  expect_head(copy, 1, 1, {0, 1, 2, 3, 4, 5});
  EXPECT_EQ(copy.length(0, 0), 0);
  // Changing one leaves the other alone.
  const Rows b = rows(6, 1, 2, 3);
  copy.append(1, b.k.data(), b.v.data(), 1, 6);
  expect_head(copy, 1, 0, {1, 4, 6});
  expect_head(cache, 1, 0, {1, 4});
  Cache assigned(1, 1, 1);
  assigned = copy;
  expect_head(assigned, 1, 1, {0, 1, 2, 3, 4, 5, 6});
  EXPECT_EQ(assigned.n_kv_heads(), 2);
  EXPECT_EQ(assigned.bytes(), copy.bytes());
}

TEST(KvCache, KeepMovesRowsAndValidatesIndices) {
  Cache cache(1, 2, 3);
  const Rows a = rows(10, 8, 2, 3);
  cache.append(0, a.k.data(), a.v.data(), 8, 10);
  const int64_t keep[] = {1, 2, 5, 7};
  cache.keep(0, 0, keep);
  expect_head(cache, 0, 0, {11, 12, 15, 17});
  expect_head(cache, 0, 1, {10, 11, 12, 13, 14, 15, 16, 17});
  const int64_t unsorted[] = {2, 1}, dup[] = {1, 1}, out_of_range[] = {0, 4}, negative[] = {-1};
  EXPECT_THROW(cache.keep(0, 0, unsorted), Error);
  EXPECT_THROW(cache.keep(0, 0, dup), Error);
  EXPECT_THROW(cache.keep(0, 0, out_of_range), Error);
  EXPECT_THROW(cache.keep(0, 0, negative), Error);
  expect_head(cache, 0, 0, {11, 12, 15, 17});  // a rejected keep changes nothing
  cache.keep(0, 0, {});
  EXPECT_EQ(cache.length(0, 0), 0);
  EXPECT_EQ(cache.capacity(0, 0), 0);
}

TEST(KvCache, BytesAreTheStorageHeld) {
  const int64_t layers = 2, heads = 3, dim = 8;
  Cache cache(layers, heads, dim);
  const uint64_t per_token = 2 * dim * sizeof(float) + sizeof(int64_t);
  EXPECT_EQ(cache.bytes_per_token(), per_token);
  EXPECT_EQ(cache.bytes(), 0u);
  auto held = [&] {
    uint64_t b = 0;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < heads; ++h) b += static_cast<uint64_t>(cache.capacity(l, h)) * per_token;
    return b;
  };
  const Rows a = rows(0, 10, heads, dim);
  cache.append(0, a.k.data(), a.v.data(), 10, 0);
  EXPECT_EQ(cache.capacity(0, 0), 10);  // an empty head grows to exactly what it needs
  EXPECT_EQ(cache.bytes(), held());
  EXPECT_EQ(cache.bytes(), 3 * 10 * per_token);
  // Growth: one more token grows a full head to 3/2 of its capacity.
  const Rows b = rows(10, 1, heads, dim);
  cache.append(0, b.k.data(), b.v.data(), 1, 10);
  EXPECT_EQ(cache.capacity(0, 0), 15);
  EXPECT_EQ(cache.bytes(), held());
  // Compaction frees memory: shrink to fit.
  const int64_t keep[] = {0, 3, 10};
  cache.keep(0, 0, keep);
  EXPECT_EQ(cache.capacity(0, 0), 3);
  EXPECT_EQ(cache.bytes(), held());
  EXPECT_EQ(cache.bytes(), (3 + 2 * 15) * per_token);
  // With headroom k, keep leaves k spare rows and appends within them do not reallocate.
  cache.set_headroom(4);
  const int64_t keep2[] = {0, 1, 2, 3, 4};
  cache.keep(0, 1, keep2);
  EXPECT_EQ(cache.capacity(0, 1), 9);
  const float* before = cache.keys(0, 1);
  const Rows c = rows(11, 4, heads, dim);
  cache.append(0, c.k.data(), c.v.data(), 4, 11);
  EXPECT_EQ(cache.keys(0, 1), before);
  EXPECT_EQ(cache.capacity(0, 1), 9);
  expect_head(cache, 0, 1, {0, 1, 2, 3, 4, 11, 12, 13, 14});
  EXPECT_EQ(cache.bytes(), held());
  cache.clear();
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.total_tokens(), 0);
}

TEST(KvCache, ReserveSizesEveryHead) {
  Cache cache(3, 2, 4, 16);
  EXPECT_EQ(cache.bytes(), 3u * 2 * 16 * cache.bytes_per_token());
  const Rows a = rows(0, 16, 2, 4);
  cache.append(2, a.k.data(), a.v.data(), 16, 0);
  EXPECT_EQ(cache.capacity(2, 1), 16);
  expect_head(cache, 2, 1, std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15});
  EXPECT_THROW(Cache(0, 2, 4), Error);
}

}  // namespace
}  // namespace strata::kv
