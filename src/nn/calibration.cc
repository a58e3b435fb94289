#include "strata/nn/calibration.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <vector>

#include "strata/nn/llama.hpp"

namespace strata::nn {

InputStats::InputStats(int64_t n, bool keep_gram)
    : features(n), has_gram(keep_gram), sum_abs(Vector<double>::Zero(n)), sum_sq(Vector<double>::Zero(n)) {
  if (keep_gram) gram = Matrix<double>::Zero(n, n);
}

void InputStats::add(const float* x, int64_t n_tokens, int64_t n_features) {
  require(n_features == features, "InputStats: input has ", n_features, " features, statistics were started with ",
          features);
  require(packed_gram.size() == 0, "InputStats: statistics were packed (finished); no more inputs can be added");
  if (n_tokens == 0) return;
  RowMatrix<double> xd = Eigen::Map<const RowMatrix<float>>(x, n_tokens, n_features).cast<double>();
  sum_abs += xd.cwiseAbs().colwise().sum().transpose();
  sum_sq += xd.cwiseAbs2().colwise().sum().transpose();
  tokens += n_tokens;
  if (!has_gram) return;
  const int64_t skip = std::min(std::max<int64_t>(gram_skip_first, 0), n_tokens), kept = n_tokens - skip;
  gram_skipped += skip;
  if (kept == 0) return;
  if (gram_clip_quantile > 0 && gram_clip_quantile < 1) {
    Vector<double> norms = xd.bottomRows(kept).rowwise().squaredNorm();
    std::vector<double> sorted(norms.data(), norms.data() + kept);
    const auto rank = static_cast<std::ptrdiff_t>(gram_clip_quantile * static_cast<double>(kept - 1));
    std::nth_element(sorted.begin(), sorted.begin() + rank, sorted.end());
    const double cap = sorted[static_cast<std::size_t>(rank)];
    for (int64_t t = 0; t < kept; ++t)
      if (norms[t] > cap) xd.row(skip + t) *= std::sqrt(cap / norms[t]);
  }
  // gram (column-major, lower) += X^T X; X row-major [tokens, features] is X^T column-major.
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, static_cast<int>(n_features), static_cast<int>(kept), 1.0,
              xd.data() + skip * n_features, static_cast<int>(n_features), 1.0, gram.data(),
              static_cast<int>(n_features));
}

Matrix<double> InputStats::hessian() const {
  require(has_gram, "InputStats::hessian: the Gram matrix was not collected (CalibrationOptions::gram)");
  require(tokens > gram_skipped, "InputStats::hessian: no tokens entered the Gram matrix");
  const double inv = 1.0 / static_cast<double>(tokens - gram_skipped);
  if (packed_gram.size() == 0) {
    Matrix<double> h = gram.selfadjointView<Eigen::Lower>();
    return h * inv;
  }
  Matrix<double> h(features, features);
  const double* p = packed_gram.data();
  for (int64_t j = 0; j < features; ++j)
    for (int64_t i = j; i < features; ++i) h(i, j) = h(j, i) = *p++ * inv;
  return h;
}

void InputStats::pack() {
  if (!has_gram || packed_gram.size() != 0) return;
  packed_gram.resize(features * (features + 1) / 2);
  double* p = packed_gram.data();
  for (int64_t j = 0; j < features; ++j)
    for (int64_t i = j; i < features; ++i) *p++ = gram(i, j);
  gram = Matrix<double>();
}

Vector<double> InputStats::mean_abs() const { return sum_abs / static_cast<double>(std::max<int64_t>(tokens, 1)); }
Vector<double> InputStats::mean_sq() const { return sum_sq / static_cast<double>(std::max<int64_t>(tokens, 1)); }
Vector<double> InputStats::channel_norm() const { return sum_sq.cwiseSqrt(); }

uint64_t InputStats::bytes() const {
  return static_cast<uint64_t>(gram.size() + packed_gram.size() + sum_abs.size() + sum_sq.size()) * sizeof(double);
}

Calibration::Calibration(CalibrationOptions options) : options_(options) {
  require(options.gram_skip_first >= 0, "Calibration: gram_skip_first must be >= 0, got ", options.gram_skip_first);
  require(options.gram_clip_quantile >= 0 && options.gram_clip_quantile <= 1,
          "Calibration: gram_clip_quantile must be in [0, 1], got ", options.gram_clip_quantile);
}

void Calibration::pack() {
  for (auto& in : inputs_) in->pack();
}

void Calibration::on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t n_tokens,
                                  int64_t in) {
  require(!tensors.empty(), "Calibration: an input with no tensors");
  auto it = by_tensor_.find(tensors[0]);
  std::shared_ptr<InputStats> stats;
  if (it == by_tensor_.end()) {
    stats = std::make_shared<InputStats>(in, options_.gram);
    stats->gram_skip_first = options_.gram_skip_first;
    stats->gram_clip_quantile = options_.gram_clip_quantile;
    inputs_.push_back(stats);
    for (const auto& t : tensors) by_tensor_[t] = stats;
  } else {
    stats = it->second;
  }
  stats->add(x, n_tokens, in);
}

void Calibration::on_block(int layer, const float* in, const float* out, int64_t n_tokens, int64_t dim) {
  if (!options_.block_influence) return;
  const size_t l = static_cast<size_t>(layer);
  if (cos_sum_.size() <= l) {
    cos_sum_.resize(l + 1, 0.0);
    cos_count_.resize(l + 1, 0);
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t i = 0; i < dim; ++i) {
      const double a = in[t * dim + i], b = out[t * dim + i];
      dot += a * b;
      na += a * a;
      nb += b * b;
    }
    cos_sum_[l] += dot / std::max(std::sqrt(na * nb), 1e-30);
  }
  cos_count_[l] += n_tokens;
}

bool Calibration::has(std::string_view tensor) const { return by_tensor_.find(tensor) != by_tensor_.end(); }

const InputStats& Calibration::stats(std::string_view tensor) const {
  auto it = by_tensor_.find(tensor);
  require(it != by_tensor_.end(), "Calibration: no statistics for tensor '", tensor, "'");
  return *it->second;
}

std::vector<std::string> Calibration::tensors() const {
  std::vector<std::string> out;
  for (const auto& [name, s] : by_tensor_) out.push_back(name);
  return out;
}

void Calibration::set_mean_sq(std::string_view tensor, const Vector<double>& mean_sq) {
  auto it = by_tensor_.find(tensor);
  require(it != by_tensor_.end(), "Calibration: no statistics for tensor '", tensor, "'");
  InputStats& st = *it->second;
  require(st.tokens > 0, "Calibration: no tokens were seen for tensor '", tensor, "'");
  require(mean_sq.size() == st.features, "Calibration: tensor '", tensor, "' has ", st.features,
          " input channels, the importance given has ", mean_sq.size());
  st.sum_sq = mean_sq * static_cast<double>(st.tokens);
}

io::Imatrix to_imatrix(const Calibration& calibration, int64_t chunk_size, const std::string& dataset) {
  io::Imatrix m;
  m.chunk_size = chunk_size;
  if (!dataset.empty()) m.datasets.push_back(dataset);
  for (const auto& name : calibration.tensors()) {
    const InputStats& st = calibration.stats(name);
    if (st.tokens == 0) continue;
    io::ImatrixEntry e;
    e.name = name;
    e.columns = st.features;
    e.sums.resize(static_cast<size_t>(st.features));
    for (int64_t j = 0; j < st.features; ++j) e.sums[static_cast<size_t>(j)] = static_cast<float>(st.sum_sq[j]);
    e.counts = {static_cast<float>(st.tokens)};
    m.chunk_count = std::max(m.chunk_count, chunk_size > 0 ? st.tokens / chunk_size : 0);
    m.entries.push_back(std::move(e));
  }
  require(!m.entries.empty(), "to_imatrix: the calibration holds no statistics");
  return m;
}

void apply_imatrix(const io::Imatrix& imatrix, Calibration& calibration) {
  for (const auto& e : imatrix.entries) {
    require(calibration.has(e.name), "imatrix entry '", e.name, "': the calibration has no statistics for it");
    require(e.matrices() == 1, "imatrix entry '", e.name, "' holds ", e.matrices(), " matrices; one is expected");
    const std::vector<double> mean = e.mean_sq();
    calibration.set_mean_sq(e.name, Eigen::Map<const Vector<double>>(mean.data(), static_cast<int64_t>(mean.size())));
  }
}

std::vector<double> Calibration::block_influence() const {
  std::vector<double> bi(cos_sum_.size(), 0.0);
  for (size_t l = 0; l < bi.size(); ++l)
    bi[l] = cos_count_[l] ? 1.0 - cos_sum_[l] / static_cast<double>(cos_count_[l]) : 0.0;
  return bi;
}

uint64_t Calibration::bytes() const {
  uint64_t total = 0;
  for (const auto& s : inputs_) total += s->bytes();
  return total;
}

CalibrationReport calibrate(const LlamaModel& model, const std::function<bool(std::vector<int32_t>&)>& next_sequence,
                            Calibration& calibration, const std::function<void(int64_t)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  CalibrationReport report;
  std::vector<int32_t> seq;
  std::unique_ptr<LlamaSession> session;
  while (next_sequence(seq)) {
    if (seq.empty()) continue;
    const int64_t n = static_cast<int64_t>(seq.size());
    if (!session || session->capacity() < n) session = std::make_unique<LlamaSession>(model, n);
    session->reset();
    session->forward(seq, nullptr, Logits::none, &calibration);
    ++report.sequences;
    report.tokens_per_sequence = std::max(report.tokens_per_sequence, n);
    ++calibration.sequences;
    calibration.tokens += n;
    if (progress) progress(report.sequences);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.statistics_bytes = calibration.bytes();
  return report;
}

}  // namespace strata::nn
