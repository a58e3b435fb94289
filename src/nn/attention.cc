#include "strata/nn/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/kernels/softmax.hpp"

namespace strata::nn {

void causal_softmax_rows(float* scores, int64_t n, int64_t len, int64_t visible0) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t visible = visible0 + t + 1;
    float* row = scores + t * len;
    const float mx = kernels::row_max(row, visible);
    const double sum = kernels::exp_shift(row, visible, mx);
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
    for (int64_t j = visible; j < len; ++j) row[j] = 0.0f;
  }
}

void causal_attention(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride, int64_t n,
                      int64_t len, int64_t d, float scale, float* out, int64_t out_stride, float* probs) {
  require(n >= 0 && len >= n && d >= 1, "causal_attention: ", n, " query rows over ", len, " keys of width ", d);
  using Strided = Eigen::Map<const RowMatrix<float>, 0, Eigen::OuterStride<>>;
  using StridedOut = Eigen::Map<RowMatrix<float>, 0, Eigen::OuterStride<>>;
  thread_local std::vector<float> block;
  const int64_t before = len - n;
  for (int64_t r0 = 0; r0 < n; r0 += kCausalRowBlock) {
    const int64_t rows = std::min(kCausalRowBlock, n - r0), seen = before + r0 + rows;
    float* s = nullptr;
    int64_t stride = seen;
    if (probs) {
      s = probs + r0 * len, stride = len;
    } else {
      block.resize(static_cast<size_t>(rows * seen));
      s = block.data();
    }
    StridedOut scores(s, rows, seen, Eigen::OuterStride<>(stride));
    scores.noalias() = (Strided(q + r0 * q_stride, rows, d, Eigen::OuterStride<>(q_stride)) *
                        Strided(k, seen, d, Eigen::OuterStride<>(kv_stride)).transpose()) *
                       scale;
    // With probs the columns past `seen` hold stale values: the softmax writes 0 over them.
    causal_softmax_rows(s, rows, stride, before + r0);
    StridedOut(out + r0 * out_stride, rows, d, Eigen::OuterStride<>(out_stride)).noalias() =
        scores * Strided(v, seen, d, Eigen::OuterStride<>(kv_stride));
  }
}

void SplitAttention::run(std::span<const int64_t> lens, int64_t group, int64_t n, int64_t d, bool parallel,
                         bool probs, const ScoresFn& scores, const ValuesFn& values, float* out) {
  const int64_t heads = static_cast<int64_t>(lens.size()), m = group * n;
  require(group >= 1 && n >= 1 && d >= 1, "SplitAttention: group ", group, ", tokens ", n, " and head_dim ", d,
          " must be positive");
  // Tasks are (head, chunk), head after head; task_of[h] is head h's first.
  std::vector<int64_t> task_of(static_cast<size_t>(heads + 1), 0);
  offsets_.assign(static_cast<size_t>(heads), 0);
  int64_t total = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t len = lens[static_cast<size_t>(h)];
    require(len >= n, "SplitAttention: KV head ", h, " holds ", len, " tokens, fewer than the ", n, " new ones");
    offsets_[static_cast<size_t>(h)] = total;
    total += m * len;
    task_of[static_cast<size_t>(h + 1)] = task_of[static_cast<size_t>(h)] + (len + kChunk - 1) / kChunk;
  }
  const int64_t tasks = task_of.back();
  if (static_cast<int64_t>(scores_.size()) < total) scores_.resize(static_cast<size_t>(total));
  acc_.resize(static_cast<size_t>(tasks * m * d));
  max_.resize(static_cast<size_t>(tasks * m));
  sum_.resize(static_cast<size_t>(tasks * m));

  parallel_for(tasks, parallel ? 1 : tasks, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t h = std::upper_bound(task_of.begin(), task_of.end(), task) - task_of.begin() - 1;
      const int64_t len = lens[static_cast<size_t>(h)];
      const int64_t begin = (task - task_of[static_cast<size_t>(h)]) * kChunk, end = std::min(begin + kChunk, len);
      float* s = scores_.data() + offsets_[static_cast<size_t>(h)] + begin;
      scores(static_cast<int>(h), begin, end, s, len);
      for (int64_t r = 0; r < m; ++r) {
        float* row = s + r * len;
        const int64_t visible = std::min(len - n + r % n + 1, end) - begin;
        float& mx = max_[static_cast<size_t>(task * m + r)];
        double& sum = sum_[static_cast<size_t>(task * m + r)];
        if (visible <= 0) {
          mx = -std::numeric_limits<float>::infinity();
          sum = 0;
          std::fill(row, row + (end - begin), 0.0f);
          continue;
        }
        mx = kernels::row_max(row, visible);
        sum = kernels::exp_shift(row, visible, mx);
        std::fill(row + visible, row + (end - begin), 0.0f);
      }
      values(static_cast<int>(h), begin, end, s, len, acc_.data() + task * m * d);
    }
  });

  // Each row: its chunks rescaled to the row's maximum and divided by the row's total.
  std::vector<float> weight;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t len = lens[static_cast<size_t>(h)], first = task_of[static_cast<size_t>(h)];
    const int64_t chunks = task_of[static_cast<size_t>(h + 1)] - first;
    weight.resize(static_cast<size_t>(chunks));
    for (int64_t r = 0; r < m; ++r) {
      float row_max = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) row_max = std::max(row_max, max_[static_cast<size_t>((first + c) * m + r)]);
      double total_sum = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const size_t i = static_cast<size_t>((first + c) * m + r);
        if (sum_[i] > 0) total_sum += sum_[i] * std::exp(static_cast<double>(max_[i]) - row_max);
      }
      float* o = out + (h * m + r) * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const size_t i = static_cast<size_t>((first + c) * m + r);
        const float w = sum_[i] > 0 ? static_cast<float>(std::exp(static_cast<double>(max_[i]) - row_max) / total_sum)
                                    : 0.0f;
        weight[static_cast<size_t>(c)] = w;
        if (w == 0.0f) continue;
        const float* a = acc_.data() + ((first + c) * m + r) * d;
        for (int64_t e = 0; e < d; ++e) o[e] += w * a[e];
      }
      if (!probs) continue;
      float* row = scores_.data() + offsets_[static_cast<size_t>(h)] + r * len;
      for (int64_t c = 0; c < chunks; ++c) {
        const float w = weight[static_cast<size_t>(c)];
        for (int64_t j = c * kChunk; j < std::min((c + 1) * kChunk, len); ++j) row[j] *= w;
      }
    }
  }
}

void attention_reference(const float* q, int64_t group, int64_t n, const float* k, const float* v, int64_t len,
                         int64_t d, float scale, float* out, float* probs) {
  const int64_t m = group * n;
  std::vector<double> p(static_cast<size_t>(len));
  for (int64_t r = 0; r < m; ++r) {
    const int64_t visible = len - n + r % n + 1;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < visible; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += static_cast<double>(q[r * d + c]) * k[j * d + c];
      p[static_cast<size_t>(j)] = s * scale;
      mx = std::max(mx, p[static_cast<size_t>(j)]);
    }
    double sum = 0;
    for (int64_t j = 0; j < visible; ++j) sum += p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - mx);
    for (int64_t c = 0; c < d; ++c) {
      double o = 0;
      for (int64_t j = 0; j < visible; ++j) o += p[static_cast<size_t>(j)] * v[j * d + c];
      out[r * d + c] = static_cast<float>(o / sum);
    }
    if (probs)
      for (int64_t j = 0; j < len; ++j)
        probs[r * len + j] = j < visible ? static_cast<float>(p[static_cast<size_t>(j)] / sum) : 0.0f;
  }
}

void SplitAttention::run_heads(const float* q, int64_t q_stride, std::span<const int64_t> lens, int64_t group, int64_t n,
                               int64_t d, bool parallel, bool probs, const ScoresFn& scores, const ValuesFn& values,
                               float* out, int64_t out_stride) {
  const int64_t n_heads = static_cast<int64_t>(lens.size()) * group;
  group_ = group, n_ = n, d_ = d;
  lens_.assign(lens.begin(), lens.end());
  queries_.resize(static_cast<size_t>(n_heads * n * d));
  outputs_.resize(queries_.size());
  // Row g * n + t of a KV head's block is token t of its query head g.
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t t = 0; t < n; ++t)
      std::memcpy(queries_.data() + (h * n + t) * d, q + t * q_stride + h * d, static_cast<size_t>(d) * sizeof(float));
  run(lens_, group, n, d, parallel, probs, scores, values, outputs_.data());
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t t = 0; t < n; ++t)
      std::memcpy(out + t * out_stride + h * d, outputs_.data() + (h * n + t) * d, static_cast<size_t>(d) * sizeof(float));
}

}  // namespace strata::nn
