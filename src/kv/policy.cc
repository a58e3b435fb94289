#include "strata/kv/policy.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "kernels/cpu/kv_score.hpp"
#include "strata/core/error.hpp"

namespace strata::kv {

Policy Policy::uniform(int64_t sinks, int64_t recent) {
  Policy p;
  p.sinks = sinks;
  p.recent = recent;
  return p;
}

Policy Policy::pyramid(double beta, int64_t sinks, int64_t recent) {
  Policy p = uniform(sinks, recent);
  p.layers = LayerBudget::pyramid;
  p.pyramid_beta = beta;
  return p;
}

Policy Policy::adakv(double floor, int64_t sinks, int64_t recent) {
  Policy p = uniform(sinks, recent);
  p.headwise = true;
  p.adakv_floor = floor;
  return p;
}

Policy Policy::layerwise(std::vector<int64_t> per_layer, int64_t sinks, int64_t recent) {
  Policy p = uniform(sinks, recent);
  p.layers = LayerBudget::layerwise;
  p.per_layer = std::move(per_layer);
  return p;
}

Policy Policy::streaming_llm(int64_t sinks) {
  Policy p = uniform(sinks, 0);
  p.streaming = true;
  return p;
}

Policy Policy::thresholded(double threshold, int64_t sinks, int64_t recent) {
  Policy p = uniform(sinks, recent);
  p.threshold = threshold;
  return p;
}

std::string describe(const Policy& p) {
  std::ostringstream s;
  if (p.streaming) {
    s << "streaming-llm";
  } else {
    if (p.layers == LayerBudget::pyramid) s << "pyramid(beta=" << p.pyramid_beta << ")";
    else if (p.layers == LayerBudget::layerwise) s << "layerwise";
    else if (p.threshold) s << "threshold(" << *p.threshold << ")";
    else if (!p.headwise) s << "uniform";
    if (p.headwise) s << (p.layers == LayerBudget::uniform ? "" : "+") << "adakv(floor=" << p.adakv_floor << ")";
  }
  s << " sinks=" << p.sinks;
  if (!p.streaming) s << " recent=" << p.recent;
  if (!p.streaming && p.recent_share > 0) s << " recent_share=" << p.recent_share;
  return s.str();
}

int64_t recent_window(const Policy& p, int64_t layer_budget) {
  if (p.streaming) return std::max<int64_t>(0, layer_budget - p.sinks);
  const auto share = static_cast<int64_t>(std::floor(p.recent_share * static_cast<double>(layer_budget)));
  return std::max(p.recent, std::min(share, layer_budget - p.sinks));
}

namespace {

// Tokens of a head that are protected whatever the scores say. The streaming window is the budget
// itself, so only the sinks count against it; a share-sized window never exceeds the budget.
int64_t protected_tokens(const Policy& p) { return p.streaming ? p.sinks : p.sinks + p.recent; }
int64_t protected_tokens(const Policy& p, int64_t layer_budget) {
  return p.streaming ? p.sinks : p.sinks + recent_window(p, layer_budget);
}

void check(const Policy& p) {
  require(p.sinks >= 0 && p.recent >= 0, "kv policy: sinks (", p.sinks, ") and recent (", p.recent,
          ") must be >= 0");
  require(p.adakv_floor >= 0 && p.adakv_floor <= 1, "kv policy: AdaKV floor must be in [0, 1], got ", p.adakv_floor);
  require(p.recent_share >= 0 && p.recent_share < 1, "kv policy: recent_share must be in [0, 1), got ",
          p.recent_share);
  require(!(p.streaming && p.headwise), "kv policy: StreamingLLM keeps sinks + window in every head; it has no "
                                        "head-wise allocation");
  require(!p.threshold || (!p.streaming && !p.headwise && std::isfinite(*p.threshold)),
          "kv policy: a score threshold needs a finite value and a per-head, scored policy");
}

}  // namespace

std::vector<int64_t> layer_budgets(const Policy& p, int64_t budget, int64_t n_layers) {
  check(p);
  require(n_layers > 0, "kv policy: n_layers must be positive, got ", n_layers);
  const int64_t prot = protected_tokens(p);
  std::vector<int64_t> out(static_cast<size_t>(n_layers), budget);
  if (p.layers == LayerBudget::layerwise) {
    require(static_cast<int64_t>(p.per_layer.size()) == n_layers, "kv policy: layerwise budgets name ",
            p.per_layer.size(), " layers, the model has ", n_layers);
    out = p.per_layer;
  } else if (p.layers == LayerBudget::pyramid && n_layers > 1) {
    require(p.pyramid_beta >= 1, "kv policy: pyramid beta must be >= 1, got ", p.pyramid_beta);
    require(budget >= prot, "kv policy: budget ", budget, " cannot hold the ", prot, " protected tokens");
    const double r = static_cast<double>(budget - prot);
    const double lo = r / p.pyramid_beta, hi = 2 * r - lo;
    const double step = (hi - lo) / static_cast<double>(n_layers - 1);
    // Largest-remainder rounding keeps the total at exactly n_layers x budget.
    std::vector<double> exact(static_cast<size_t>(n_layers));
    int64_t assigned = 0;
    for (int64_t l = 0; l < n_layers; ++l) {
      exact[static_cast<size_t>(l)] = static_cast<double>(prot) + hi - static_cast<double>(l) * step;
      out[static_cast<size_t>(l)] = static_cast<int64_t>(std::floor(exact[static_cast<size_t>(l)]));
      assigned += out[static_cast<size_t>(l)];
    }
    std::vector<int64_t> order(static_cast<size_t>(n_layers));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      const double fa = exact[static_cast<size_t>(a)] - std::floor(exact[static_cast<size_t>(a)]);
      const double fb = exact[static_cast<size_t>(b)] - std::floor(exact[static_cast<size_t>(b)]);
      return fa > fb;
    });
    for (int64_t i = 0, left = n_layers * budget - assigned; i < left; ++i)
      ++out[static_cast<size_t>(order[static_cast<size_t>(i % n_layers)])];
  }
  for (int64_t l = 0; l < n_layers; ++l)
    require(out[static_cast<size_t>(l)] >= prot, "kv policy: layer ", l, " budget ", out[static_cast<size_t>(l)],
            " cannot hold its ", prot, " protected tokens (sinks ", p.sinks, p.streaming ? "" : " + recent ",
            p.streaming ? "" : std::to_string(p.recent), ")");
  return out;
}

std::vector<std::vector<int64_t>> select(const Policy& p, int64_t layer_budget, std::span<const int64_t> lengths,
                                         std::span<const std::vector<float>> scores) {
  check(p);
  const int64_t heads = static_cast<int64_t>(lengths.size());
  require(layer_budget >= protected_tokens(p), "kv policy: layer budget ", layer_budget, " cannot hold the ",
          protected_tokens(p), " protected tokens");
  const int64_t prot = protected_tokens(p, layer_budget);
  require(p.streaming || static_cast<int64_t>(scores.size()) == heads, "kv policy: ", scores.size(),
          " score vectors for ", heads, " heads");
  for (int64_t h = 0; h < heads && !p.streaming; ++h) {
    const auto& s = scores[static_cast<size_t>(h)];
    require(static_cast<int64_t>(s.size()) == lengths[static_cast<size_t>(h)], "kv policy: head ", h, " has ",
            lengths[static_cast<size_t>(h)], " tokens but ", s.size(), " scores");
    for (float v : s) require(!std::isnan(v), "kv policy: head ", h, " has a NaN score");
  }
  const int64_t recent = recent_window(p, layer_budget);

  std::vector<std::vector<int64_t>> keep(static_cast<size_t>(heads));
  int64_t total = 0;
  for (int64_t n : lengths) total += n;
  const bool layer_fits = total <= heads * layer_budget;
  // Candidates of head h: the tokens between its sinks and its recent window.
  std::vector<int64_t> cand_begin(static_cast<size_t>(heads)), cand_end(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t n = lengths[static_cast<size_t>(h)];
    const int64_t s = std::min(p.sinks, n);
    cand_begin[static_cast<size_t>(h)] = s;
    cand_end[static_cast<size_t>(h)] = n - std::min(recent, n - s);
  }
  // Head h's best `k` candidates, in index order.
  auto best = [&](int64_t h, int64_t k) {
    const int64_t b = cand_begin[static_cast<size_t>(h)], m = cand_end[static_cast<size_t>(h)] - b;
    std::vector<int64_t> c(static_cast<size_t>(std::clamp<int64_t>(k, 0, m)));
    kernels::kv_top_k(scores[static_cast<size_t>(h)].data() + b, m, k, c.data());
    for (int64_t& j : c) j += b;
    return c;
  };
  auto finish = [&](int64_t h, std::vector<int64_t> chosen) {
    const int64_t n = lengths[static_cast<size_t>(h)];
    for (int64_t j = 0; j < cand_begin[static_cast<size_t>(h)]; ++j) chosen.push_back(j);
    for (int64_t j = cand_end[static_cast<size_t>(h)]; j < n; ++j) chosen.push_back(j);
    std::sort(chosen.begin(), chosen.end());
    keep[static_cast<size_t>(h)] = std::move(chosen);
  };
  auto keep_all = [&](int64_t h) {
    keep[static_cast<size_t>(h)].resize(static_cast<size_t>(lengths[static_cast<size_t>(h)]));
    std::iota(keep[static_cast<size_t>(h)].begin(), keep[static_cast<size_t>(h)].end(), 0);
  };

  if (p.threshold) {
    // Every candidate above the threshold, then the ceiling on what the head holds.
    for (int64_t h = 0; h < heads; ++h) {
      const auto& s = scores[static_cast<size_t>(h)];
      std::vector<int64_t> above;
      for (int64_t j = cand_begin[static_cast<size_t>(h)]; j < cand_end[static_cast<size_t>(h)]; ++j)
        if (s[static_cast<size_t>(j)] > *p.threshold) above.push_back(j);
      const int64_t n = lengths[static_cast<size_t>(h)];
      const int64_t room = layer_budget - (n - (cand_end[static_cast<size_t>(h)] - cand_begin[static_cast<size_t>(h)]));
      finish(h, static_cast<int64_t>(above.size()) <= room ? std::move(above) : best(h, room));
    }
    return keep;
  }

  if (!p.headwise) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t n = lengths[static_cast<size_t>(h)];
      if (n <= layer_budget) {
        keep_all(h);
        continue;
      }
      const int64_t free = layer_budget - (n - (cand_end[static_cast<size_t>(h)] - cand_begin[static_cast<size_t>(h)]));
      if (p.streaming || free == 0) {
        finish(h, {});
        continue;
      }
      finish(h, best(h, free));
    }
    return keep;
  }

  // Head-wise (AdaKV): per-head floors first, then the best remaining candidates of the whole layer.
  if (layer_fits) {
    for (int64_t h = 0; h < heads; ++h) keep_all(h);
    return keep;
  }
  int64_t free = heads * layer_budget;
  for (int64_t h = 0; h < heads; ++h)
    free -= lengths[static_cast<size_t>(h)] - (cand_end[static_cast<size_t>(h)] - cand_begin[static_cast<size_t>(h)]);
  const auto floor = static_cast<int64_t>(std::floor(p.adakv_floor * static_cast<double>(layer_budget - prot)));
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(heads));
  // The pool lists the candidates left after the floors by head, then index: the order ties are
  // broken in, so its top entries by position are the layer's best.
  std::vector<float> pool;
  std::vector<std::pair<int64_t, int64_t>> where;  // (head, index) of each pool entry
  for (int64_t h = 0; h < heads; ++h) {
    auto& c = chosen[static_cast<size_t>(h)];
    c = best(h, floor);
    free -= static_cast<int64_t>(c.size());
    const auto& s = scores[static_cast<size_t>(h)];
    auto next = c.begin();
    for (int64_t j = cand_begin[static_cast<size_t>(h)]; j < cand_end[static_cast<size_t>(h)]; ++j) {
      if (next != c.end() && *next == j) {
        ++next;
        continue;
      }
      pool.push_back(s[static_cast<size_t>(j)]);
      where.emplace_back(h, j);
    }
  }
  const int64_t take = std::clamp<int64_t>(free, 0, static_cast<int64_t>(pool.size()));
  std::vector<int64_t> top(static_cast<size_t>(take));
  kernels::kv_top_k(pool.data(), static_cast<int64_t>(pool.size()), take, top.data());
  for (int64_t i : top) {
    const auto [h, j] = where[static_cast<size_t>(i)];
    chosen[static_cast<size_t>(h)].push_back(j);
  }
  for (int64_t h = 0; h < heads; ++h) finish(h, std::move(chosen[static_cast<size_t>(h)]));
  return keep;
}

int64_t Eviction::compress_layer(Cache& cache, int layer, int64_t layer_budget) const {
  const int heads = static_cast<int>(cache.n_kv_heads());
  std::vector<int64_t> lengths(static_cast<size_t>(heads));
  int64_t total = 0;
  bool over = false;
  for (int h = 0; h < heads; ++h) {
    lengths[static_cast<size_t>(h)] = cache.length(layer, h);
    total += lengths[static_cast<size_t>(h)];
    over = over || lengths[static_cast<size_t>(h)] > layer_budget;
  }
  if (!policy.threshold && (policy.headwise ? total <= heads * layer_budget : !over)) return 0;
  std::vector<std::vector<float>> scores;
  if (!policy.streaming) {
    require(scorer != nullptr, "kv::Eviction: policy '", describe(policy), "' needs a scorer");
    scorer->score_layer(cache, layer, scores);
  }
  const auto keep = select(policy, layer_budget, lengths, scores);
  int64_t evicted = 0;
  for (int h = 0; h < heads; ++h) {
    const auto& k = keep[static_cast<size_t>(h)];
    if (static_cast<int64_t>(k.size()) == lengths[static_cast<size_t>(h)]) continue;
    cache.keep(layer, h, k);
    if (scorer) scorer->kept(layer, h, k);
    evicted += lengths[static_cast<size_t>(h)] - static_cast<int64_t>(k.size());
  }
  return evicted;
}

int64_t Eviction::compress(Cache& cache) const {
  require(policy.layers == LayerBudget::layerwise || budget > 0, "kv::Eviction: budget must be positive, got ",
          budget);
  const auto budgets = layer_budgets(cache.n_layers());
  if (scorer) scorer->begin_pass();
  int64_t evicted = 0;
  for (int l = 0; l < cache.n_layers(); ++l) evicted += compress_layer(cache, l, budgets[static_cast<size_t>(l)]);
  return evicted;
}

std::string describe(const Eviction& c) {
  std::ostringstream s;
  if (c.scorer && !c.policy.streaming) s << c.scorer->name() << " + ";
  s << describe(c.policy) << ", budget " << c.budget;
  return s.str();
}

}  // namespace strata::kv
