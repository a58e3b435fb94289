#include "strata/nn/prefill_pruning.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "strata/core/error.hpp"
#include "strata/nn/llama.hpp"

namespace strata::nn {

namespace {
constexpr std::string_view kScoreNames[] = {"prompt", "window"};
constexpr std::string_view kModeNames[] = {"drop", "merge"};
}  // namespace

PruneScore parse_prune_score(std::string_view name, std::string_view option) {
  for (size_t i = 0; i < std::size(kScoreNames); ++i)
    if (name == kScoreNames[i]) return static_cast<PruneScore>(i);
  fail(option, ": prefill pruning score '", name, "' is not prompt or window");
}

PruneMode parse_prune_mode(std::string_view name, std::string_view option) {
  for (size_t i = 0; i < std::size(kModeNames); ++i)
    if (name == kModeNames[i]) return static_cast<PruneMode>(i);
  fail(option, ": prefill pruning mode '", name, "' is not drop or merge");
}

std::string_view prune_score_name(PruneScore s) { return kScoreNames[static_cast<size_t>(s)]; }
std::string_view prune_mode_name(PruneMode m) { return kModeNames[static_cast<size_t>(m)]; }

PrefillPruning PrefillPruning::at(int layer, double drop) {
  PrefillPruning p;
  p.steps.push_back({layer, drop});
  return p;
}

void PrefillPruning::validate(int64_t n_layers) const {
  for (size_t s = 0; s < steps.size(); ++s) {
    const PruneStep& st = steps[s];
    require(st.drop >= 0 && st.drop < 1, "PrefillPruning: steps[", s, "].drop = ", st.drop,
            " is outside [0, 1) (the fraction of the prompt's tokens dropped)");
    if (n_layers > 0)
      require(st.layer >= 1 && st.layer < n_layers, "PrefillPruning: steps[", s, "].layer = ", st.layer,
              " is outside [1, ", n_layers, ") (the first block that runs on the kept tokens)");
    if (s > 0) {
      require(st.layer > steps[s - 1].layer, "PrefillPruning: steps[", s, "].layer = ", st.layer,
              " does not follow steps[", s - 1, "].layer = ", steps[s - 1].layer, " (layers must increase)");
      require(st.drop >= steps[s - 1].drop, "PrefillPruning: steps[", s, "].drop = ", st.drop, " is below steps[",
              s - 1, "].drop = ", steps[s - 1].drop, " (drops are cumulative fractions of the prompt)");
    }
  }
  require(sinks >= 0, "PrefillPruning: sinks = ", sinks, " must be >= 0");
  require(window >= 1, "PrefillPruning: window = ", window,
          " must be >= 1 (the last prompt token carries the next-token distribution)");
  require(pool >= 1 && pool % 2 == 1, "PrefillPruning: pool = ", pool, " must be odd and positive");
}

int64_t PrefillPruning::kept_tokens(int64_t tokens, size_t step) const {
  return tokens - std::llround(steps[step].drop * static_cast<double>(tokens));
}

void PrefillPruning::check_prompt(int64_t tokens) const {
  const int64_t protect = std::min(tokens, sinks + window);
  for (size_t s = 0; s < steps.size(); ++s) {
    const int64_t kept = kept_tokens(tokens, s);
    require(kept >= protect, "PrefillPruning: steps[", s, "].drop = ", steps[s].drop, " keeps ", kept, " of ",
            tokens, " prompt tokens, fewer than the ", protect, " protected ones (sinks = ", sinks,
            ", window = ", window, ")");
  }
}

std::string PrefillPruning::describe() const {
  if (steps.empty()) return "no pruning";
  std::ostringstream s;
  s << (mode == PruneMode::drop ? "drop" : "merge");
  for (size_t i = 0; i < steps.size(); ++i)
    s << (i ? "," : "") << " " << std::llround(100 * steps[i].drop) << "% @" << steps[i].layer;
  s << " " << prune_score_name(score);
  if (pool > 1) s << " pool" << pool;
  if (evict_early_layers) s << " evict-early";
  return s.str();
}

double prefill_flops(const LlamaConfig& c, std::span<const int64_t> rows) {
  const double q_dim = static_cast<double>(c.n_heads * c.head_dim), kv_dim = static_cast<double>(c.n_kv_heads * c.head_dim);
  const double dim = static_cast<double>(c.dim), hidden = static_cast<double>(c.hidden_dim);
  const double per_row = 2 * (dim * q_dim + 2 * dim * kv_dim + q_dim * dim + 3 * dim * hidden);
  double f = 2 * dim * static_cast<double>(c.vocab_size);
  for (int64_t r : rows) {
    const double n = static_cast<double>(r);
    f += n * per_row + 4 * q_dim * n * n;
  }
  return f;
}

PrefillPruner::PrefillPruner(PrefillPruning options) : options_(std::move(options)) { options_.validate(); }

int PrefillPruner::step_at(int layer) const {
  for (size_t s = 0; s < options_.steps.size(); ++s)
    if (options_.steps[s].layer == layer) return static_cast<int>(s);
  return -1;
}

bool PrefillPruner::wants_attention(int layer) const { return tokens_ > 0 && layer == scoring_layer_; }

void PrefillPruner::on_attention(int layer, int head, const float* probs, int64_t q_len, int64_t k_len,
                                 int64_t /*q_pos0*/) {
  if (tokens_ == 0 || layer != scoring_layer_) return;
  // The current rows are the last q_len keys (earlier columns: what the cache held before the prompt).
  std::vector<double>& acc = head_scores_[static_cast<size_t>(head)];
  const int64_t rows = static_cast<int64_t>(acc.size());
  // Called from worker threads: nothing may throw here. The engine hands the current rows only.
  if (q_len != rows || k_len < rows) return;
  const int64_t first = options_.score == PruneScore::window ? std::max<int64_t>(0, q_len - options_.window) : 0;
  const int64_t offset = k_len - rows;
  for (int64_t i = first; i < q_len; ++i) {
    const float* row = probs + i * k_len + offset;
    for (int64_t j = 0; j <= i; ++j) acc[static_cast<size_t>(j)] += row[j];
  }
}

void PrefillPruner::begin(const LlamaConfig& config, int64_t tokens, int64_t pos0) {
  options_.validate(config.n_layers);
  options_.check_prompt(tokens);
  n_layers_ = config.n_layers;
  n_heads_ = config.n_heads;
  tokens_ = tokens;
  pos0_ = pos0;
  index_.resize(static_cast<size_t>(tokens));
  std::iota(index_.begin(), index_.end(), int64_t{0});
  size_.assign(static_cast<size_t>(tokens), 1.0);
  head_scores_.assign(static_cast<size_t>(n_heads_), std::vector<double>(static_cast<size_t>(tokens), 0.0));
  kept_.assign(options_.steps.size(), {});
  rows_per_layer_.assign(static_cast<size_t>(n_layers_), tokens);
  scoring_layer_ = options_.steps.empty() ? -1 : options_.steps.front().layer - 1;
}

bool PrefillPruner::reduce(int layer, RowMatrix<float>& x, std::vector<int64_t>& positions) {
  require(tokens_ > 0, "PrefillPruner::reduce: no prompt begun");
  const int s = step_at(layer);
  const int64_t rows = x.rows();
  if (s < 0) {
    rows_per_layer_[static_cast<size_t>(layer)] = rows;
    return false;
  }
  require(static_cast<int64_t>(positions.size()) == rows && static_cast<int64_t>(index_.size()) == rows,
          "PrefillPruner::reduce: ", rows, " rows, ", positions.size(), " positions, ", index_.size(), " tracked");
  // Scores: attention received, averaged over the query heads, then pooled.
  std::vector<double> score(static_cast<size_t>(rows), 0.0);
  for (const auto& h : head_scores_)
    for (int64_t j = 0; j < rows; ++j) score[static_cast<size_t>(j)] += h[static_cast<size_t>(j)];
  for (auto& v : score) v /= static_cast<double>(n_heads_);
  if (options_.pool > 1) {
    const int64_t half = options_.pool / 2;
    std::vector<double> pooled(static_cast<size_t>(rows), 0.0);
    for (int64_t j = 0; j < rows; ++j) {
      double sum = 0;
      for (int64_t t = std::max<int64_t>(0, j - half); t <= std::min(rows - 1, j + half); ++t)
        sum += score[static_cast<size_t>(t)];
      pooled[static_cast<size_t>(j)] = sum / static_cast<double>(options_.pool);  // zero padding
    }
    score.swap(pooled);
  }
  const int64_t target = options_.kept_tokens(tokens_, static_cast<size_t>(s));
  std::vector<char> keep(static_cast<size_t>(rows), 0);
  std::vector<int64_t> candidates;
  int64_t kept = 0;
  for (int64_t j = 0; j < rows; ++j) {
    const int64_t i = index_[static_cast<size_t>(j)];
    if (i < options_.sinks || i >= tokens_ - options_.window) {
      keep[static_cast<size_t>(j)] = 1;
      ++kept;
    } else {
      candidates.push_back(j);
    }
  }
  const int64_t extra = std::clamp<int64_t>(target - kept, 0, static_cast<int64_t>(candidates.size()));
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](int64_t a, int64_t b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
  for (int64_t c = 0; c < extra; ++c) keep[static_cast<size_t>(candidates[static_cast<size_t>(c)])] = 1;

  // Compact in place, in order (row r moves to out <= r).
  const int64_t dim = x.cols();
  int64_t out = 0;
  double pending = 0;  // merge: size of the dropped rows waiting for the next kept one
  std::vector<double> sum;
  if (options_.mode == PruneMode::merge) sum.assign(static_cast<size_t>(dim), 0.0);
  for (int64_t j = 0; j < rows; ++j) {
    const double sz = size_[static_cast<size_t>(j)];
    if (!keep[static_cast<size_t>(j)]) {
      if (options_.mode == PruneMode::merge) {
        for (int64_t d = 0; d < dim; ++d) sum[static_cast<size_t>(d)] += sz * x(j, d);
        pending += sz;
      }
      continue;
    }
    if (options_.mode == PruneMode::merge && pending > 0) {
      const double total = pending + sz;
      for (int64_t d = 0; d < dim; ++d) {
        x(j, d) = static_cast<float>((sum[static_cast<size_t>(d)] + sz * x(j, d)) / total);
        sum[static_cast<size_t>(d)] = 0;
      }
      size_[static_cast<size_t>(j)] = total;
      pending = 0;
    }
    if (out != j) {
      x.row(out) = x.row(j);
      positions[static_cast<size_t>(out)] = positions[static_cast<size_t>(j)];
      index_[static_cast<size_t>(out)] = index_[static_cast<size_t>(j)];
      size_[static_cast<size_t>(out)] = size_[static_cast<size_t>(j)];
    }
    ++out;
  }
  x.conservativeResize(out, dim);
  positions.resize(static_cast<size_t>(out));
  index_.resize(static_cast<size_t>(out));
  size_.resize(static_cast<size_t>(out));
  auto& k = kept_[static_cast<size_t>(s)];
  k.assign(positions.begin(), positions.end());
  rows_per_layer_[static_cast<size_t>(layer)] = out;
  for (int l = layer + 1; l < n_layers_; ++l) rows_per_layer_[static_cast<size_t>(l)] = out;

  const bool last = static_cast<size_t>(s) + 1 == options_.steps.size();
  scoring_layer_ = last ? -1 : options_.steps[static_cast<size_t>(s) + 1].layer - 1;
  for (auto& h : head_scores_) h.assign(static_cast<size_t>(out), 0.0);
  return true;
}

std::span<const int64_t> PrefillPruner::kept_positions(size_t step) const {
  require(step < kept_.size(), "PrefillPruner::kept_positions: step ", step, " of ", kept_.size());
  return kept_[step];
}

std::span<const int64_t> PrefillPruner::kept_positions() const {
  require(!kept_.empty(), "PrefillPruner::kept_positions: no step");
  return kept_.back();
}

}  // namespace strata::nn
