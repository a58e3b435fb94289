// EvoPress-style evolutionary search over whole plans, ranked by a measured fitness: the summed
// per-layer error is only a proxy for what compression does to a model's output, and the layer
// interactions it misses are what this search exploits.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <set>

#include "strata/budget/allocator.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {

namespace {

// SplitMix64: a tiny generator whose output is fixed by its seed on every platform (the standard
// library's distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0, without modulo bias.
  uint64_t below(uint64_t n) {
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};

using Levels = std::vector<uint16_t>;  // position in the layer's cost order, per layer

struct Ladder {
  const Table* table;
  Metric metric;
  std::vector<std::vector<size_t>> order;  // per layer: option indices by (cost, error, listed order)

  double cost(const Levels& lv) const {
    double s = 0;
    for (size_t l = 0; l < lv.size(); ++l) s += option(l, lv[l]).cost_of(metric);
    return s;
  }
  const Candidate& option(size_t l, size_t level) const { return table->layers[l].options[order[l][level]]; }
  size_t top(size_t l) const { return order[l].size() - 1; }
};

Plan to_plan(const Ladder& ladder, const Levels& lv, const std::string& solver, const Constraint& c) {
  Plan plan;
  plan.solver = solver;
  plan.constraint = c;
  for (size_t l = 0; l < lv.size(); ++l) {
    plan.choices.push_back(Choice::of(ladder.table->layers[l].tensor, ladder.option(l, lv[l])));
  }
  return plan;
}

// One offspring: 1..max_swaps swaps, each one layer up a level and then random other layers down a
// level until the total fits again. nullopt when a swap cannot be completed.
std::optional<Levels> mutate(const Ladder& ladder, const Levels& parent, double budget, int max_swaps, Rng& rng) {
  Levels lv = parent;
  const size_t n = lv.size();
  const int swaps = 1 + static_cast<int>(rng.below(static_cast<uint64_t>(max_swaps)));
  std::vector<size_t> can;
  for (int s = 0; s < swaps; ++s) {
    can.clear();
    for (size_t l = 0; l < n; ++l)
      if (lv[l] < ladder.top(l)) can.push_back(l);
    if (can.empty()) return std::nullopt;
    const size_t up = can[rng.below(can.size())];
    ++lv[up];
    while (ladder.cost(lv) > budget) {
      can.clear();
      for (size_t l = 0; l < n; ++l)
        if (l != up && lv[l] > 0) can.push_back(l);
      if (can.empty()) return std::nullopt;
      --lv[can[rng.below(can.size())]];
    }
  }
  return lv;
}

}  // namespace

EvolveResult evolve(const Table& table, const Constraint& constraint, const Plan& start,
                    const std::function<double(const Plan&)>& fitness, const EvolveOptions& options) {
  require(static_cast<bool>(fitness), "evolve: no fitness function");
  return evolve(
      table, constraint, start,
      BatchFitness([&](const std::vector<Plan>& plans) {
        std::vector<double> out;
        for (const Plan& p : plans) out.push_back(fitness(p));
        return out;
      }),
      options);
}

EvolveResult evolve(const Table& table, const Constraint& constraint, const Plan& start, const BatchFitness& fitness,
                    const EvolveOptions& options) {
  table.validate();
  require(std::isfinite(constraint.budget) && constraint.budget >= 0, "evolve: budget must be finite and >= 0, got ",
          constraint.budget);
  require(static_cast<bool>(fitness), "evolve: no fitness function");
  require(options.generations >= 0, "evolve: generations must be >= 0, got ", options.generations);
  require(options.offspring >= 1, "evolve: offspring must be >= 1, got ", options.offspring);
  require(options.max_swaps >= 1, "evolve: max_swaps must be >= 1, got ", options.max_swaps);
  const size_t n = table.layers.size();
  require(start.choices.size() == n, "evolve: the start plan has ", start.choices.size(), " choices for ", n,
          " table layers");

  Ladder ladder{&table, constraint.metric, {}};
  Levels lv(n);
  for (size_t l = 0; l < n; ++l) {
    const LayerCandidates& layer = table.layers[l];
    std::vector<size_t> ord(layer.options.size());
    std::iota(ord.begin(), ord.end(), size_t{0});
    std::stable_sort(ord.begin(), ord.end(), [&](size_t a, size_t b) {
      const double ca = layer.options[a].cost_of(constraint.metric), cb = layer.options[b].cost_of(constraint.metric);
      if (ca != cb) return ca < cb;
      return layer.options[a].error < layer.options[b].error;
    });
    const Choice& ch = start.choices[l];
    require(ch.tensor == layer.tensor, "evolve: start plan choice ", l, " is for tensor '", ch.tensor,
            "', the table's layer ", l, " is '", layer.tensor, "'");
    size_t at = ord.size();
    for (size_t k = 0; k < ord.size(); ++k)
      if (layer.options[ord[k]].method == ch.method && layer.options[ord[k]].knob == ch.knob) at = k;
    require(at < ord.size(), "evolve: start plan: tensor '", ch.tensor, "': ", ch.method, ":", ch.knob,
            " is not an option in the table");
    lv[l] = static_cast<uint16_t>(at);
    ladder.order.push_back(std::move(ord));
  }
  require(ladder.cost(lv) <= constraint.budget, "evolve: the start plan costs ", ladder.cost(lv), " ",
          metric_name(constraint.metric), ", over the budget of ", constraint.budget);

  const std::string solver = start.solver.empty() ? "evolve" : start.solver + "+evolve";
  EvolveResult result;
  const auto evaluate = [&](const std::vector<Levels>& xs, const char* what) {
    std::vector<Plan> plans;
    for (const Levels& x : xs) plans.push_back(to_plan(ladder, x, solver, constraint));
    std::vector<double> f = fitness(plans);
    require(f.size() == plans.size(), "evolve: the fitness gave ", f.size(), " values for ", plans.size(), " plans");
    result.evaluations += static_cast<int>(plans.size());
    for (double v : f) require(std::isfinite(v), "evolve: fitness of ", what, " is ", v, " (must be finite)");
    return f;
  };
  Levels best = lv;
  double best_f =
      std::isfinite(options.start_fitness) ? options.start_fitness : evaluate({best}, "the start plan")[0];
  result.start_fitness = best_f;
  std::set<Levels> seen{best};
  Rng rng(options.seed);
  // Identical offspring are drawn again rather than evaluated twice; a parent whose neighbourhood
  // is exhausted yields fewer offspring.
  constexpr int kDrawsPerOffspring = 64;
  for (int g = 1; g <= options.generations; ++g) {
    // All offspring are drawn before any is measured: the draws do not depend on the measurements,
    // so measuring them together changes nothing but the cost.
    std::vector<Levels> children;
    for (int o = 0; o < options.offspring; ++o) {
      for (int draw = 0; draw < kDrawsPerOffspring; ++draw) {
        std::optional<Levels> child = mutate(ladder, best, constraint.budget, options.max_swaps, rng);
        if (!child || !seen.insert(*child).second) continue;
        children.push_back(std::move(*child));
        break;
      }
    }
    Levels gen_best;
    double gen_f = 0;
    bool have = false;
    const std::vector<double> f = children.empty() ? std::vector<double>{} : evaluate(children, "an offspring");
    for (size_t c = 0; c < children.size(); ++c)
      if (!have || f[c] < gen_f) {
        gen_best = std::move(children[c]);
        gen_f = f[c];
        have = true;
      }
    if (have && gen_f < best_f) {
      best = std::move(gen_best);
      best_f = gen_f;
    }
    result.history.push_back(best_f);
    if (options.progress) options.progress(g, best_f);
  }
  result.best = to_plan(ladder, best, solver, constraint);
  result.best_fitness = best_f;
  return result;
}

}  // namespace strata::budget
