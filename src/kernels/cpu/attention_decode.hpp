#pragma once
// The two products of attention over a few queries (a decode step, where the query heads that share
// a KV head attend together), SIMD through Highway's dynamic dispatch. Each cached key and value row
// is read once for all the queries, so a KV head shared by g query heads costs one pass over its
// rows instead of g. The `_reference` versions sum in double: the oracle the tests hold them to.
#include <cstdint>

namespace strata::kernels {

// scores[i * score_stride + j] = scale * sum_c q[i * q_stride + c] k[j * k_stride + c] for i < m,
// j < n, c < d. Sums in float.
void attention_scores(const float* q, int64_t m, int64_t q_stride, const float* k, int64_t n, int64_t k_stride,
                      int64_t d, float scale, float* scores, int64_t score_stride);
void attention_scores_reference(const float* q, int64_t m, int64_t q_stride, const float* k, int64_t n,
                                int64_t k_stride, int64_t d, float scale, float* scores, int64_t score_stride);

// out[i * out_stride + c] += sum_j p[i * p_stride + j] v[j * v_stride + c] for i < m, j < n, c < d.
// Sums in float, in order of j (the reference: in double, then added).
void attention_values(const float* p, int64_t m, int64_t p_stride, const float* v, int64_t n, int64_t v_stride,
                      int64_t d, float* out, int64_t out_stride);
void attention_values_reference(const float* p, int64_t m, int64_t p_stride, const float* v, int64_t n,
                                int64_t v_stride, int64_t d, float* out, int64_t out_stride);

}  // namespace strata::kernels
