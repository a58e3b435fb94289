// Token merging and attention-score pruning between an encoder layer's attention and its MLP.
#include "strata/token/merge.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::token {

namespace {

// Indices [first, n) ordered by score, highest first, the lower index first on ties.
std::vector<int64_t> by_score(const std::vector<double>& score, int64_t first) {
  std::vector<int64_t> order(score.size() - static_cast<size_t>(first));
  std::iota(order.begin(), order.end(), first);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
  return order;
}

// dest for the tokens with keep[i] set, numbered in order; the others left at -1.
int64_t number_kept(const std::vector<char>& keep, std::vector<int64_t>& dest) {
  dest.assign(keep.size(), -1);
  int64_t out = 0;
  for (size_t i = 0; i < keep.size(); ++i)
    if (keep[i]) dest[i] = out++;
  return out;
}

Reduction identity(int64_t n) {
  Reduction r;
  r.dest.resize(static_cast<size_t>(n));
  std::iota(r.dest.begin(), r.dest.end(), int64_t{0});
  r.out = n;
  return r;
}

}  // namespace

int64_t max_merge(int64_t n, bool protect_first) {
  if (n <= 0) return 0;
  return (n + 1) / 2 - (protect_first ? 1 : 0);
}

Reduction bipartite_soft_matching(const float* metric, int64_t n, int64_t d, int64_t ld, int64_t r,
                                  bool protect_first) {
  require(r >= 0, "token merge: option 'r' is ", r, "; it must be >= 0");
  const int64_t most = max_merge(n, protect_first);
  require(r <= most, "token merge: option 'r' asks to merge ", r, " of ", n, " tokens; at most ", most,
          " can merge (the tokens at even positions", protect_first ? ", less the protected first token)" : ")");
  if (r == 0) return identity(n);
  require(d > 0 && ld >= d, "token merge: metric rows of width ", d, " with stride ", ld);

  // Unit rows of A (even positions) and B (odd positions); similarities as one product.
  const int64_t na = (n + 1) / 2, nb = n / 2;
  RowMatrix<float> a(na, d), b(nb, d);
  for (int64_t i = 0; i < n; ++i) {
    const Eigen::Map<const Eigen::RowVectorXf> row(metric + i * ld, d);
    const float norm = row.norm();
    auto unit = i % 2 == 0 ? a.row(i / 2) : b.row(i / 2);
    if (norm > 0) {
      unit = row / norm;
    } else {
      unit.setZero();
    }
  }
  const RowMatrix<float> sim = a * b.transpose();
  // Each A token's best B token; other positions score -inf so that by_score leaves them last.
  std::vector<double> score(static_cast<size_t>(n), -INFINITY);
  std::vector<int64_t> match(static_cast<size_t>(n), -1);
  for (int64_t ai = protect_first ? 1 : 0; ai < na; ++ai) {
    const int64_t i = 2 * ai;
    float best = -INFINITY;
    for (int64_t bi = 0; bi < nb; ++bi)
      if (sim(ai, bi) > best) {
        best = sim(ai, bi);
        match[static_cast<size_t>(i)] = 2 * bi + 1;
      }
    require(match[static_cast<size_t>(i)] >= 0, "token merge: metric row ", i, " is not finite");
    score[static_cast<size_t>(i)] = best;
  }
  const std::vector<int64_t> order = by_score(score, 0);
  std::vector<char> keep(static_cast<size_t>(n), 1);
  for (int64_t i = 0; i < r; ++i) keep[static_cast<size_t>(order[static_cast<size_t>(i)])] = 0;
  Reduction out;
  out.out = number_kept(keep, out.dest);
  for (int64_t i = 0; i < r; ++i) {
    const auto merged = static_cast<size_t>(order[static_cast<size_t>(i)]);
    out.dest[merged] = out.dest[static_cast<size_t>(match[merged])];
  }
  return out;
}

Reduction keep_top_fuse_rest(std::span<const float> score, int64_t remove) {
  const auto n = static_cast<int64_t>(score.size());
  require(remove >= 0, "token pruning: option 'remove' is ", remove, "; it must be >= 0");
  if (remove == 0) return identity(n);
  require(remove <= n - 2, "token pruning: option 'remove' asks to remove ", remove, " of ", n, " tokens; at most ",
          std::max<int64_t>(0, n - 2), " can go (the first token is kept and the removed ones fuse into one)");
  std::vector<double> s(score.begin(), score.end());
  for (int64_t i = 0; i < n; ++i)
    require(std::isfinite(s[static_cast<size_t>(i)]), "token pruning: score ", i, " is ", s[static_cast<size_t>(i)]);
  const std::vector<int64_t> order = by_score(s, 1);
  std::vector<char> keep(static_cast<size_t>(n), 0);
  keep[0] = 1;
  for (int64_t i = 0; i < n - remove - 2; ++i) keep[static_cast<size_t>(order[static_cast<size_t>(i)])] = 1;
  Reduction out;
  const int64_t kept = number_kept(keep, out.dest);
  for (auto& d : out.dest)
    if (d < 0) d = kept;
  out.out = kept + 1;
  return out;
}

void reduce_rows(const Reduction& r, const float* x, int64_t dim, std::span<const float> weights, float* y) {
  require(weights.size() == r.dest.size(), "reduce_rows: ", weights.size(), " weights for ", r.dest.size(), " rows");
  std::vector<double> sum(static_cast<size_t>(r.out * dim), 0.0), wsum(static_cast<size_t>(r.out), 0.0);
  for (size_t i = 0; i < r.dest.size(); ++i) {
    const double w = weights[i];
    require(w > 0 && std::isfinite(w), "reduce_rows: weight ", i, " is ", w, "; weights must be positive");
    const auto o = static_cast<size_t>(r.dest[i]);
    wsum[o] += w;
    const float* xi = x + static_cast<int64_t>(i) * dim;
    double* so = sum.data() + o * static_cast<size_t>(dim);
    for (int64_t c = 0; c < dim; ++c) so[c] += w * xi[c];
  }
  for (int64_t o = 0; o < r.out; ++o) {
    const double w = wsum[static_cast<size_t>(o)];
    require(w > 0, "reduce_rows: output row ", o, " receives no input row");
    for (int64_t c = 0; c < dim; ++c) y[o * dim + c] = static_cast<float>(sum[static_cast<size_t>(o * dim + c)] / w);
  }
}

// ---- schedules --------------------------------------------------------------------------------------

Schedule Schedule::constant(int64_t layers, double total) {
  require(layers > 0, "token schedule: option 'layers' is ", layers, "; it must be positive");
  Schedule s;
  s.fraction.assign(static_cast<size_t>(layers), total / static_cast<double>(layers));
  s.validate();
  return s;
}

Schedule Schedule::decreasing(int64_t layers, double total) {
  require(layers > 0, "token schedule: option 'layers' is ", layers, "; it must be positive");
  const double weights = static_cast<double>(layers * (layers + 1) / 2);
  Schedule s;
  for (int64_t l = 0; l < layers; ++l) s.fraction.push_back(total * static_cast<double>(layers - l) / weights);
  s.validate();
  return s;
}

double Schedule::total() const { return std::accumulate(fraction.begin(), fraction.end(), 0.0); }

void Schedule::validate() const {
  for (size_t l = 0; l < fraction.size(); ++l)
    require(std::isfinite(fraction[l]) && fraction[l] >= 0, "token schedule: option 'schedule' has ", fraction[l],
            " at layer ", l, "; each layer's fraction must be finite and >= 0");
  require(total() < 1.0, "token schedule: option 'schedule' (", str(), ") removes ", total(),
          " of the tokens in all; the total must be < 1");
}

std::string Schedule::str() const {
  std::ostringstream out;
  out.precision(3);
  for (size_t l = 0; l < fraction.size(); ++l) out << (l ? "," : "") << fraction[l];
  return out.str();
}

Method parse_method(std::string_view name) {
  if (name == "merge") return Method::merge;
  if (name == "prune") return Method::prune;
  fail("token reduction: option 'method' is '", name, "'; expected merge or prune");
}

std::string_view method_name(Method m) { return m == Method::merge ? "merge" : "prune"; }

Metric parse_metric(std::string_view name) {
  if (name == "keys") return Metric::keys;
  if (name == "hidden") return Metric::hidden;
  fail("token merge: option 'metric' is '", name, "'; expected keys or hidden");
}

std::string_view metric_name(Metric m) { return m == Metric::keys ? "keys" : "hidden"; }

// ---- the reducer ------------------------------------------------------------------------------------

Reducer::Reducer(ReducerOptions options) : options_(std::move(options)) { options_.schedule.validate(); }

std::vector<int64_t> Reducer::removals(int64_t length) const {
  const auto& f = options_.schedule.fraction;
  std::vector<int64_t> out(f.size(), 0);
  double cum = 0;
  int64_t current = length, target = length;
  for (size_t l = 0; l < f.size(); ++l) {
    cum += f[l];
    target = length - std::llround(static_cast<double>(length) * cum);
    const int64_t cap = options_.method == Method::merge ? max_merge(current, options_.protect_first)
                                                         : std::max<int64_t>(0, current - 2);
    out[l] = std::clamp<int64_t>(current - target, 0, cap);
    current -= out[l];
  }
  require(current <= target || options_.allow_shortfall, "token reduction: option 'schedule' (",
          options_.schedule.str(), ") asks a sequence of ", length, " tokens to end with ", target, "; ",
          method_name(options_.method), " can bring it down to ", current, " only");
  return out;
}

void Reducer::begin(std::span<const int64_t> lengths) {
  seqs_.assign(lengths.size(), {});
  for (size_t s = 0; s < lengths.size(); ++s) {
    Sequence& q = seqs_[s];
    q.length = lengths[s];
    q.removals = removals(q.length);
    q.size.assign(static_cast<size_t>(q.length), 1.0f);
    q.source.resize(static_cast<size_t>(q.length));
    std::iota(q.source.begin(), q.source.end(), int64_t{0});
  }
  biased_ = false;
  bias_.clear();
}

const float* Reducer::key_bias() const { return biased_ && options_.proportional_attention ? bias_.data() : nullptr; }

bool Reducer::wants_first_attention(int layer) const {
  if (options_.method != Method::prune) return false;
  return std::any_of(seqs_.begin(), seqs_.end(), [&](const Sequence& q) {
    return static_cast<size_t>(layer) < q.removals.size() && q.removals[static_cast<size_t>(layer)] > 0;
  });
}

void Reducer::reduce(const nn::ReductionInput& in, RowMatrix<float>& x, std::vector<int64_t>& lengths) {
  require(lengths.size() == seqs_.size(), "token reduction: ", lengths.size(), " sequences, begin() saw ",
          seqs_.size());
  const auto layer = static_cast<size_t>(in.layer);
  const int64_t dim = x.cols();
  const size_t n_seq = seqs_.size();
  std::vector<int64_t> start(n_seq), new_start(n_seq), new_len(n_seq);
  int64_t total = 0, new_total = 0;
  double pairs = 0;
  for (size_t s = 0; s < n_seq; ++s) {
    const int64_t r = layer < seqs_[s].removals.size() ? seqs_[s].removals[layer] : 0;
    start[s] = total;
    new_start[s] = new_total;
    new_len[s] = lengths[s] - r;
    total += lengths[s];
    new_total += new_len[s];
    pairs += static_cast<double>(lengths[s]) * static_cast<double>(lengths[s]);
  }
  require(total == x.rows(), "token reduction: ", x.rows(), " rows for sequences of ", total, " tokens");
  if (stats_.size() <= layer) stats_.resize(layer + 1);
  stats_[layer].tokens_in += total;
  stats_[layer].tokens_out += new_total;
  stats_[layer].attention_pairs += pairs;
  if (new_total == total) return;

  const bool merge = options_.method == Method::merge;
  require(!merge || (in.keys && in.keys->rows() == total && in.n_heads > 0 && dim % in.n_heads == 0),
          "token merge: layer ", in.layer, " needs its keys [", total, ", ", dim, "] and the head count");
  require(merge || in.first_attention, "token pruning: layer ", in.layer, " needs the first token's attention");
  RowMatrix<float> y(new_total, dim);
  parallel_for(static_cast<int64_t>(n_seq), 1, [&](int64_t b, int64_t e) {
    std::vector<float> metric, weights;
    for (int64_t si = b; si < e; ++si) {
      const auto s = static_cast<size_t>(si);
      Sequence& q = seqs_[s];
      const int64_t n = lengths[s], r = n - new_len[s];
      const float* xs = x.data() + start[s] * dim;
      float* ys = y.data() + new_start[s] * dim;
      if (r == 0) {
        std::copy(xs, xs + n * dim, ys);
        continue;
      }
      Reduction red;
      if (merge && options_.metric == Metric::hidden) {
        red = bipartite_soft_matching(xs, n, dim, dim, r, options_.protect_first);
        weights = q.size;
      } else if (merge) {
        // Keys averaged over heads: [n, head_dim].
        const int64_t hd = dim / in.n_heads;
        metric.assign(static_cast<size_t>(n * hd), 0.0f);
        for (int64_t i = 0; i < n; ++i) {
          const float* k = in.keys->data() + (start[s] + i) * dim;
          for (int64_t h = 0; h < in.n_heads; ++h)
            for (int64_t c = 0; c < hd; ++c) metric[static_cast<size_t>(i * hd + c)] += k[h * hd + c];
        }
        red = bipartite_soft_matching(metric.data(), n, hd, hd, r, options_.protect_first);
        weights = q.size;
      } else {
        const std::span<const float> score(in.first_attention + start[s], static_cast<size_t>(n));
        red = keep_top_fuse_rest(score, r);
        // EViT fuses by attention; a probability that underflowed still counts a little.
        weights.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          weights[static_cast<size_t>(i)] = std::max(score[static_cast<size_t>(i)], 1e-30f);
      }
      reduce_rows(red, xs, dim, weights, ys);
      std::vector<float> size(static_cast<size_t>(red.out), 0.0f);
      for (int64_t i = 0; i < n; ++i)
        size[static_cast<size_t>(red.dest[static_cast<size_t>(i)])] += q.size[static_cast<size_t>(i)];
      q.size = std::move(size);
      for (auto& src : q.source) src = red.dest[static_cast<size_t>(src)];
    }
  });
  x.swap(y);
  lengths = new_len;
  bias_.resize(static_cast<size_t>(new_total));
  for (size_t s = 0; s < n_seq; ++s)
    for (size_t i = 0; i < seqs_[s].size.size(); ++i)
      bias_[static_cast<size_t>(new_start[s]) + i] = std::log(seqs_[s].size[i]);
  biased_ = true;
}

void Reducer::restore(const RowMatrix<float>& x, RowMatrix<float>& full) const {
  int64_t original = 0, current = 0;
  for (const auto& q : seqs_) {
    original += q.length;
    current += static_cast<int64_t>(q.size.size());
  }
  require(x.rows() == current, "token reduction: restore got ", x.rows(), " rows, the sequences hold ", current);
  full.resize(original, x.cols());
  int64_t o0 = 0, c0 = 0;
  for (const auto& q : seqs_) {
    for (int64_t o = 0; o < q.length; ++o) full.row(o0 + o) = x.row(c0 + q.source[static_cast<size_t>(o)]);
    o0 += q.length;
    c0 += static_cast<int64_t>(q.size.size());
  }
}

std::span<const float> Reducer::sizes(int64_t s) const {
  require(s >= 0 && s < static_cast<int64_t>(seqs_.size()), "token reduction: no sequence ", s);
  return seqs_[static_cast<size_t>(s)].size;
}

double encoder_flops(const nn::BertConfig& c, const std::vector<LayerStats>& stats) {
  const auto dim = static_cast<double>(c.dim), hidden = static_cast<double>(c.hidden_dim);
  double flops = 0;
  for (const auto& l : stats)
    flops += 2.0 * (static_cast<double>(l.tokens_in) * 4.0 * dim * dim + l.attention_pairs * 2.0 * dim +
                    static_cast<double>(l.tokens_out) * 2.0 * dim * hidden);
  return flops;
}

double dense_encoder_flops(const nn::BertConfig& c, std::span<const int64_t> lengths) {
  LayerStats l;
  for (int64_t n : lengths) {
    l.tokens_in += n;
    l.tokens_out += n;
    l.attention_pairs += static_cast<double>(n) * static_cast<double>(n);
  }
  return encoder_flops(c, std::vector<LayerStats>(static_cast<size_t>(c.n_layers), l));
}

}  // namespace strata::token
