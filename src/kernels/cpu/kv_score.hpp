#pragma once
// The loops KV-cache scoring and eviction spend their time in (kv/scorers.cc, kv/policy.cc), SIMD
// through Highway's dynamic dispatch. Each has a scalar reference: the oracle the tests hold the
// SIMD versions to, and the baseline bench_kv times them against.
#include <cstdint>

namespace strata::kernels {

// scores[j] = sum_i q[i] k[j * stride + i] for j < n, i < d: one query against a block of cached
// keys, rows `stride` floats apart. Sums in float (the reference in double).
void kv_row_dots(const float* q, const float* k, int64_t n, int64_t d, int64_t stride, float* scores);
void kv_row_dots_reference(const float* q, const float* k, int64_t n, int64_t d, int64_t stride, float* scores);

// norms[j] = ||k[j * stride .. j * stride + d)||_2.
void kv_row_norms(const float* k, int64_t n, int64_t d, int64_t stride, float* norms);
void kv_row_norms_reference(const float* k, int64_t n, int64_t d, int64_t stride, float* norms);

// acc[j] += sum_i rows[i * stride + j] for i < m, j < n: attention rows summed into per-token
// scores. The rows are summed first, then added to acc, as Eigen's colwise().sum() is.
void kv_accumulate_rows(const float* rows, int64_t m, int64_t n, int64_t stride, float* acc);
void kv_accumulate_rows_reference(const float* rows, int64_t m, int64_t n, int64_t stride, float* acc);

// The indices of the k largest of scores[0, n), ties going to the lower index, written to out in
// increasing order (k clamped to [0, n]; returns how many were written). Scores must not be NaN.
// The same set as a stable sort by decreasing score cut after k, whatever the order of the input.
int64_t kv_top_k(const float* scores, int64_t n, int64_t k, int64_t* out);
int64_t kv_top_k_reference(const float* scores, int64_t n, int64_t k, int64_t* out);

}  // namespace strata::kernels
