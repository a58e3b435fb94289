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

// unit = the row of unit.size() floats at `row` scaled to unit length (zero stays zero); returns its norm.
float set_unit(Eigen::Ref<Eigen::RowVectorXf> unit, const float* row) {
  const Eigen::Map<const Eigen::RowVectorXf> x(row, unit.size());
  const float norm = x.norm();
  if (norm > 0) {
    unit = x / norm;
  } else {
    unit.setZero();
  }
  return norm;
}

// A matching's preconditions: 0 <= r <= most (`limit` says why) and, when something merges, metric rows of
// width d > 0 within a stride ld >= d.
void check_merge_count(int64_t r, int64_t n, int64_t most, int64_t d, int64_t ld, const char* limit) {
  require(r >= 0, "token merge: option 'r' is ", r, "; it must be >= 0");
  require(r <= most, "token merge: option 'r' asks to merge ", r, " of ", n, " tokens; at most ", most,
          " can merge ", limit);
  require(r == 0 || (d > 0 && ld >= d), "token merge: metric rows of width ", d, " with stride ", ld);
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
  check_merge_count(r, n, max_merge(n, protect_first), d, ld,
                    protect_first ? "(the tokens at even positions, less the protected first token)"
                                  : "(the tokens at even positions)");
  if (r == 0) return identity(n);

  // Unit rows of A (even positions) and B (odd positions); similarities as one product.
  const int64_t na = (n + 1) / 2, nb = n / 2;
  RowMatrix<float> a(na, d), b(nb, d);
  for (int64_t i = 0; i < n; ++i) set_unit(i % 2 == 0 ? a.row(i / 2) : b.row(i / 2), metric + i * ld);
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

int64_t max_pairs(int64_t n, bool protect_first) {
  return std::max<int64_t>(0, n - (protect_first ? 1 : 0)) / 2;
}

Reduction greedy_pair_matching(const float* metric, int64_t n, int64_t d, int64_t ld, int64_t r,
                               bool protect_first, std::span<const float> penalty) {
  require(penalty.empty() || static_cast<int64_t>(penalty.size()) == n, "token merge: ", penalty.size(),
          " penalties for ", n, " tokens");
  check_merge_count(r, n, max_pairs(n, protect_first), d, ld,
                    protect_first ? "(disjoint pairs, the first token kept)" : "(disjoint pairs)");
  if (r == 0) return identity(n);
  const int64_t first = protect_first ? 1 : 0, m = n - first;
  RowMatrix<float> u(m, d);
  for (int64_t i = 0; i < m; ++i)
    require(std::isfinite(set_unit(u.row(i), metric + (first + i) * ld)), "token merge: metric row ", first + i,
            " is not finite");
  RowMatrix<float> sim = u * u.transpose();
  if (!penalty.empty()) {
    const Eigen::Map<const Eigen::VectorXf> p(penalty.data() + first, m);
    sim.colwise() -= p;
    sim.rowwise() -= p.transpose();
  }
  // Each token's most similar free partner, kept in a heap by similarity; a token whose partner was taken
  // looks again among the free ones.
  std::vector<char> used(static_cast<size_t>(m), 0);
  const auto best_free = [&](int64_t i) {
    int64_t best = -1;
    for (int64_t j = 0; j < m; ++j)
      if (j != i && !used[static_cast<size_t>(j)] && (best < 0 || sim(i, j) > sim(i, best))) best = j;
    return best;
  };
  struct Candidate {
    float sim;
    int64_t i, j;
    // The heap's top: the highest similarity, then the lower pair.
    bool operator<(const Candidate& o) const {
      if (sim != o.sim) return sim < o.sim;
      const int64_t a = std::min(i, j), b = std::min(o.i, o.j);
      if (a != b) return a > b;
      return std::max(i, j) > std::max(o.i, o.j);
    }
  };
  std::vector<Candidate> heap;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t j = best_free(i);
    if (j >= 0) heap.push_back({sim(i, j), i, j});
  }
  std::make_heap(heap.begin(), heap.end());
  std::vector<int64_t> into(static_cast<size_t>(n), -1);  // merged token -> the token it joins
  for (int64_t pairs = 0; pairs < r;) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate c = heap.back();
    heap.pop_back();
    if (used[static_cast<size_t>(c.i)]) continue;
    if (used[static_cast<size_t>(c.j)]) {
      const int64_t j = best_free(c.i);
      if (j >= 0) {
        heap.push_back({sim(c.i, j), c.i, j});
        std::push_heap(heap.begin(), heap.end());
      }
      continue;
    }
    used[static_cast<size_t>(c.i)] = used[static_cast<size_t>(c.j)] = 1;
    into[static_cast<size_t>(first + std::max(c.i, c.j))] = first + std::min(c.i, c.j);
    ++pairs;
  }
  std::vector<char> keep(static_cast<size_t>(n), 1);
  for (int64_t i = 0; i < n; ++i) keep[static_cast<size_t>(i)] = into[static_cast<size_t>(i)] < 0;
  Reduction out;
  out.out = number_kept(keep, out.dest);
  for (int64_t i = 0; i < n; ++i)
    if (into[static_cast<size_t>(i)] >= 0)
      out.dest[static_cast<size_t>(i)] = out.dest[static_cast<size_t>(into[static_cast<size_t>(i)])];
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

Matching parse_matching(std::string_view name) {
  if (name == "bipartite") return Matching::bipartite;
  if (name == "greedy") return Matching::greedy;
  fail("token merge: option 'matching' is '", name, "'; expected bipartite or greedy");
}

std::string_view matching_name(Matching m) { return m == Matching::bipartite ? "bipartite" : "greedy"; }

// ---- the reducer ------------------------------------------------------------------------------------

Reducer::Reducer(ReducerOptions options) : options_(std::move(options)) {
  options_.schedule.validate();
  for (const auto& [name, rates] : {std::pair{"merge_attention", &options_.merge_attention},
                                    std::pair{"merge_mlp", &options_.merge_mlp}})
    for (size_t l = 0; l < rates->size(); ++l)
      require(std::isfinite((*rates)[l]) && (*rates)[l] >= 0 && (*rates)[l] <= 0.5, "token merge: option '", name,
              "' has ", (*rates)[l], " at layer ", l, "; each layer's fraction must be in [0, 0.5]");
  require(std::isfinite(options_.size_penalty) && options_.size_penalty >= 0, "token merge: option 'size_penalty' is ",
          options_.size_penalty, "; it must be finite and >= 0");
  const bool groups_attention = std::any_of(options_.merge_attention.begin(), options_.merge_attention.end(),
                                            [](double f) { return f > 0; });
  require(!(groups_attention && options_.method == Method::prune && options_.schedule.total() > 0),
          "token reduction: option 'merge_attention' cannot run with method prune, which reads each token's "
          "attention");
  require(!(groups_attention && options_.metric == Metric::keys && options_.schedule.total() > 0),
          "token reduction: option 'merge_attention' leaves no per-token keys for metric keys; use metric hidden");
}

std::vector<int64_t> Reducer::removals(int64_t length) const {
  const auto& f = options_.schedule.fraction;
  std::vector<int64_t> out(f.size(), 0);
  double cum = 0;
  int64_t current = length, target = length;
  for (size_t l = 0; l < f.size(); ++l) {
    cum += f[l];
    target = length - std::llround(static_cast<double>(length) * cum);
    const int64_t cap = options_.method == Method::merge ? merge_cap(current) : std::max<int64_t>(0, current - 2);
    out[l] = std::clamp<int64_t>(current - target, 0, cap);
    current -= out[l];
  }
  require(current <= target || options_.allow_shortfall, "token reduction: option 'schedule' (",
          options_.schedule.str(), ") asks a sequence of ", length, " tokens to end with ", target, "; ",
          method_name(options_.method), " can bring it down to ", current, " only");
  return out;
}

int64_t Reducer::merge_cap(int64_t n) const {
  // A protected last token takes no part in the matching.
  const int64_t matched = options_.protect_last && n > 1 ? n - 1 : n;
  return options_.matching == Matching::greedy ? max_pairs(matched, options_.protect_first)
                                               : max_merge(matched, options_.protect_first);
}

Reduction Reducer::match(const float* rows, int64_t n, int64_t d, int64_t ld, int64_t r, std::span<const float> sizes,
                         std::vector<float>& scratch) const {
  if (options_.protect_last && n > 1) {
    // The first n - 1 tokens matched among themselves, the last one kept after them.
    Reduction out = match_all(rows, n - 1, d, ld, r, sizes.first(static_cast<size_t>(n - 1)), scratch);
    out.dest.push_back(out.out++);
    return out;
  }
  return match_all(rows, n, d, ld, r, sizes, scratch);
}

Reduction Reducer::match_all(const float* rows, int64_t n, int64_t d, int64_t ld, int64_t r,
                             std::span<const float> sizes, std::vector<float>& scratch) const {
  if (r > 0 && options_.center) {
    scratch.resize(static_cast<size_t>(n * d));
    Eigen::Map<RowMatrix<float>> c(scratch.data(), n, d);
    c = Eigen::Map<const RowMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>(rows, n, d,
                                                                                   Eigen::OuterStride<>(ld));
    c.rowwise() -= c.colwise().mean();
    rows = scratch.data();
    ld = d;
  }
  if (options_.matching == Matching::greedy && options_.size_penalty > 0 && r > 0) {
    std::vector<float> penalty(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      penalty[static_cast<size_t>(i)] = static_cast<float>(options_.size_penalty) * std::log(sizes[static_cast<size_t>(i)]);
    return greedy_pair_matching(rows, n, d, ld, r, options_.protect_first, penalty);
  }
  return options_.matching == Matching::greedy ? greedy_pair_matching(rows, n, d, ld, r, options_.protect_first)
                                               : bipartite_soft_matching(rows, n, d, ld, r, options_.protect_first);
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

const nn::TokenGroups* Reducer::group(int layer, nn::Sublayer part, const RowMatrix<float>& x,
                                      std::span<const int64_t> lengths) {
  require(lengths.size() == seqs_.size(), "token reduction: ", lengths.size(), " sequences, begin() saw ",
          seqs_.size());
  const auto l = static_cast<size_t>(layer);
  const bool attention = part == nn::Sublayer::attention;
  if (attention) grouped_attention_ = false;
  const auto& rates = attention ? options_.merge_attention : options_.merge_mlp;
  const double f = l < rates.size() ? rates[l] : 0.0;
  const size_t n_seq = lengths.size();
  const int64_t dim = x.cols();
  std::vector<int64_t> start(n_seq), gstart(n_seq);
  int64_t total = 0;
  for (size_t s = 0; s < n_seq; ++s) {
    start[s] = total;
    total += lengths[s];
  }
  require(total == x.rows(), "token reduction: ", x.rows(), " rows for sequences of ", total, " tokens");
  if (stats_.size() <= l) stats_.resize(l + 1);
  if (f <= 0) {  // every row computes
    if (attention) {
      stats_[l].tokens_in += total;
      for (int64_t n : lengths) stats_[l].attention_pairs += static_cast<double>(n) * static_cast<double>(n);
    } else {
      stats_[l].tokens_out += total;
    }
    return nullptr;
  }
  // The matchings first, then the groups.
  reductions_.resize(n_seq);
  parallel_for(static_cast<int64_t>(n_seq), 1, [&](int64_t b, int64_t e) {
    std::vector<float> scratch;
    for (int64_t si = b; si < e; ++si) {
      const auto s = static_cast<size_t>(si);
      const int64_t n = lengths[s];
      const int64_t r = std::min<int64_t>(std::llround(f * static_cast<double>(n)), merge_cap(n));
      reductions_[s] = match(x.data() + start[s] * dim, n, dim, dim, r, seqs_[s].size, scratch);
    }
  });
  groups_.lengths.resize(n_seq);
  int64_t groups = 0;
  double pairs = 0;
  for (size_t s = 0; s < n_seq; ++s) {
    const int64_t m = reductions_[s].out;
    gstart[s] = groups;
    groups_.lengths[s] = m;
    groups += m;
    pairs += static_cast<double>(m) * static_cast<double>(m);
  }
  if (attention) {
    stats_[l].tokens_in += groups;
    stats_[l].attention_pairs += pairs;
  } else {
    stats_[l].tokens_out += groups;
  }
  if (groups == total) return nullptr;

  groups_.total = groups;
  groups_.dest.resize(static_cast<size_t>(total));
  groups_.weight.resize(static_cast<size_t>(total));
  group_size_.assign(static_cast<size_t>(groups), 0.0f);
  for (size_t s = 0; s < n_seq; ++s) {
    const int64_t n = lengths[s];
    const std::vector<float>& size = seqs_[s].size;
    const Reduction& red = reductions_[s];
    int64_t* dest = groups_.dest.data() + start[s];
    for (int64_t i = 0; i < n; ++i) {
      dest[i] = gstart[s] + red.dest[static_cast<size_t>(i)];
      group_size_[static_cast<size_t>(dest[i])] += size[static_cast<size_t>(i)];
    }
    float* weight = groups_.weight.data() + start[s];
    for (int64_t i = 0; i < n; ++i) weight[i] = size[static_cast<size_t>(i)] / group_size_[static_cast<size_t>(dest[i])];
  }
  if (attention) {
    group_bias_.resize(group_size_.size());
    for (size_t g = 0; g < group_size_.size(); ++g) group_bias_[g] = std::log(group_size_[g]);
    grouped_attention_ = true;
  }
  return &groups_;
}

const float* Reducer::key_bias() const {
  if (!options_.proportional_attention) return nullptr;
  if (grouped_attention_) return group_bias_.data();
  return biased_ ? bias_.data() : nullptr;
}

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
  std::vector<int64_t> start(n_seq), new_start(n_seq), new_len(n_seq), want(n_seq);
  int64_t total = 0;
  bool any = false;
  for (size_t s = 0; s < n_seq; ++s) {
    const Sequence& q = seqs_[s];
    want[s] = layer < q.removals.size() ? q.removals[layer] : 0;
    any = any || want[s] > 0;
    start[s] = total;
    total += lengths[s];
  }
  require(total == x.rows(), "token reduction: ", x.rows(), " rows for sequences of ", total, " tokens");
  if (!any) return;

  const bool merge = options_.method == Method::merge;
  require(!merge || options_.metric == Metric::hidden ||
              (in.keys && in.keys->rows() == total && in.n_heads > 0 && dim % in.n_heads == 0),
          "token merge: layer ", in.layer, " needs its keys [", total, ", ", dim, "] and the head count");
  require(merge || in.first_attention, "token pruning: layer ", in.layer, " needs the first token's attention");
  // The matchings first, then the rows.
  reductions_.resize(n_seq);
  weights_.resize(n_seq);
  parallel_for(static_cast<int64_t>(n_seq), 1, [&](int64_t b, int64_t e) {
    std::vector<float> metric, scratch;
    for (int64_t si = b; si < e; ++si) {
      const auto s = static_cast<size_t>(si);
      Sequence& q = seqs_[s];
      const int64_t n = lengths[s];
      const int64_t r = std::min(want[s], merge ? merge_cap(n) : std::max<int64_t>(0, n - 2));
      const float* xs = x.data() + start[s] * dim;
      Reduction& red = reductions_[s];
      std::vector<float>& weights = weights_[s];
      if (r == 0) {
        red = identity(n);
        weights = q.size;
      } else if (merge && options_.metric == Metric::hidden) {
        red = match(xs, n, dim, dim, r, q.size, scratch);
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
        red = match(metric.data(), n, hd, hd, r, q.size, scratch);
        weights = q.size;
      } else {
        const std::span<const float> score(in.first_attention + start[s], static_cast<size_t>(n));
        red = keep_top_fuse_rest(score, r);
        // EViT fuses by attention; a probability that underflowed still counts a little.
        weights.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          weights[static_cast<size_t>(i)] = std::max(score[static_cast<size_t>(i)], 1e-30f);
      }
    }
  });
  int64_t new_total = 0;
  for (size_t s = 0; s < n_seq; ++s) {
    new_start[s] = new_total;
    new_len[s] = reductions_[s].out;
    new_total += new_len[s];
  }
  if (new_total == total) return;
  y_.resize(new_total, dim);
  parallel_for(static_cast<int64_t>(n_seq), 1, [&](int64_t b, int64_t e) {
    for (int64_t si = b; si < e; ++si) {
      const auto s = static_cast<size_t>(si);
      Sequence& q = seqs_[s];
      const Reduction& red = reductions_[s];
      const int64_t n = lengths[s];
      const float* xs = x.data() + start[s] * dim;
      float* ys = y_.data() + new_start[s] * dim;
      if (red.identity()) {
        std::copy(xs, xs + n * dim, ys);
        continue;
      }
      reduce_rows(red, xs, dim, weights_[s], ys);
      std::vector<float> size(static_cast<size_t>(red.out), 0.0f);
      for (int64_t i = 0; i < n; ++i)
        size[static_cast<size_t>(red.dest[static_cast<size_t>(i)])] += q.size[static_cast<size_t>(i)];
      q.size = std::move(size);
      for (auto& src : q.source) src = red.dest[static_cast<size_t>(src)];
    }
  });
  x.swap(y_);
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
