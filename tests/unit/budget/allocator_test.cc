// The budget solvers against brute force on many small random tables, and their edge cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <random>

#include "strata/budget/allocator.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {
namespace {

Candidate opt(std::string knob, double bytes, double error, std::string method = "m") {
  Candidate c;
  c.method = std::move(method);
  c.knob = std::move(knob);
  c.cost = {bytes, bytes / 2, bytes * 3};
  c.error = error;
  return c;
}

// prefix + i, appended (GCC 12 warns falsely about "k" + std::to_string(i) at -O3).
std::string numbered(std::string prefix, int i) {
  prefix += std::to_string(i);
  return prefix;
}

struct RandomSpec {
  int max_layers = 5, max_options = 5;
  bool integer_costs = true;
  bool integer_errors = false;
  bool pinned = true;  // allow single-option layers
};

// Small random tables with ties (costs and errors drawn from small sets), duplicate points,
// dominated options, zero-cost options and single-option layers. Every layer offers the same knobs
// k0..k{n-1} (so uniform has pairs), except pinned layers.
Table random_table(std::mt19937_64& rng, const RandomSpec& s) {
  std::uniform_int_distribution<int> nl(1, s.max_layers), no(1, s.max_options), ci(0, 12), ei(0, 9);
  std::uniform_real_distribution<double> cr(0.0, 12.0), er(0.0, 3.0), coin(0.0, 1.0);
  Table t;
  const int layers = nl(rng);
  const int shared = std::max(2, no(rng));
  for (int l = 0; l < layers; ++l) {
    LayerCandidates lc;
    lc.tensor = numbered("t", l);
    lc.params = 16;
    const int n = (s.pinned && coin(rng) < 0.2) ? 1 : shared;
    for (int k = 0; k < n; ++k) {
      const double c = s.integer_costs ? ci(rng) : (coin(rng) < 0.15 ? std::floor(cr(rng)) : cr(rng));
      const double e = s.integer_errors ? ei(rng) : (coin(rng) < 0.15 ? std::floor(er(rng)) : er(rng));
      lc.options.push_back(opt(numbered("k", k), c, e));
    }
    t.layers.push_back(std::move(lc));
  }
  return t;
}

double sum_cost(const Table& t, const std::vector<size_t>& pick, Metric m) {
  double s = 0;
  for (size_t l = 0; l < pick.size(); ++l) s += t.layers[l].options[pick[l]].cost_of(m);
  return s;
}

// Calls f(pick) for every combination of options.
void for_each_plan(const Table& t, const std::function<void(const std::vector<size_t>&)>& f) {
  std::vector<size_t> pick(t.layers.size(), 0);
  for (;;) {
    f(pick);
    size_t l = 0;
    while (l < pick.size() && ++pick[l] == t.layers[l].options.size()) pick[l++] = 0;
    if (l == pick.size()) return;
  }
}

double brute_min_error(const Table& t, double budget, Metric m = Metric::bytes) {
  double best = std::numeric_limits<double>::infinity();
  for_each_plan(t, [&](const std::vector<size_t>& p) {
    if (sum_cost(t, p, m) > budget) return;
    double e = 0;
    for (size_t l = 0; l < p.size(); ++l) e += t.layers[l].options[p[l]].error;
    best = std::min(best, e);
  });
  return best;
}

double brute_min_max_error(const Table& t, double budget) {
  double best = std::numeric_limits<double>::infinity();
  for_each_plan(t, [&](const std::vector<size_t>& p) {
    if (sum_cost(t, p, Metric::bytes) > budget) return;
    double e = 0;
    for (size_t l = 0; l < p.size(); ++l) e = std::max(e, t.layers[l].options[p[l]].error);
    best = std::min(best, e);
  });
  return best;
}

double brute_min_cost(const Table& t, double max_error, Metric m = Metric::bytes) {
  double best = std::numeric_limits<double>::infinity();
  for_each_plan(t, [&](const std::vector<size_t>& p) {
    double e = 0;
    for (size_t l = 0; l < p.size(); ++l) e += t.layers[l].options[p[l]].error;
    if (e <= max_error) best = std::min(best, sum_cost(t, p, m));
  });
  return best;
}

// The plan names a real option of every layer, in table order, with its cost and error.
void expect_consistent(const Table& t, const Plan& p) {
  ASSERT_EQ(p.choices.size(), t.layers.size());
  for (size_t l = 0; l < t.layers.size(); ++l) {
    const Choice& c = p.choices[l];
    EXPECT_EQ(c.tensor, t.layers[l].tensor);
    const auto& os = t.layers[l].options;
    auto it = std::find_if(os.begin(), os.end(), [&](const Candidate& o) { return o.method == c.method && o.knob == c.knob; });
    ASSERT_NE(it, os.end()) << c.tensor << " " << c.knob;
    EXPECT_EQ(it->cost.bytes, c.cost.bytes);
    EXPECT_EQ(it->error, c.predicted_error);
    EXPECT_TRUE(std::isnan(c.measured_error));
  }
}

// No single layer can move to a more accurate option and still fit: what the greedy fill leaves.
void expect_no_upgrade_fits(const Table& t, const Plan& p, double budget) {
  for (size_t l = 0; l < t.layers.size(); ++l)
    for (const Candidate& o : t.layers[l].options) {
      if (o.error >= p.choices[l].predicted_error) continue;
      double total = 0;  // added in table order, as the solvers add
      for (size_t k = 0; k < t.layers.size(); ++k) total += k == l ? o.cost.bytes : p.choices[k].cost.bytes;
      EXPECT_GT(total, budget) << p.choices[l].tensor << " -> " << o.knob;
    }
}

// Largest error drop of one step along any layer's lower convex hull: greedy's documented bound.
double largest_hull_step(const Table& t, Metric m) {
  double d = 0;
  for (const LayerCandidates& l : t.layers) {
    const auto h = lower_convex_hull(l, m);
    for (size_t k = 0; k + 1 < h.size(); ++k) d = std::max(d, l.options[h[k]].error - l.options[h[k + 1]].error);
  }
  return d;
}

TEST(Metric, NamesRoundTripAndUnknownIsAnError) {
  for (Metric m : {Metric::bytes, Metric::params, Metric::flops}) EXPECT_EQ(parse_metric(metric_name(m)), m);
  try {
    parse_metric("bits");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bytes params flops"), std::string::npos) << e.what();
  }
  for (Solver s : {Solver::uniform, Solver::greedy, Solver::dp, Solver::minimax})
    EXPECT_EQ(parse_solver(solver_name(s)), s);
  EXPECT_THROW(parse_solver("evopress"), Error);
  const Candidate c = opt("q", 8, 0);
  EXPECT_EQ(c.cost_of(Metric::bytes), 8);
  EXPECT_EQ(c.cost_of(Metric::params), 4);
  EXPECT_EQ(c.cost_of(Metric::flops), 24);
}

TEST(Pareto, DropsDominatedAndTiedOptionsKeepsFirstDuplicate) {
  Table t;
  t.layers.push_back({"a", 10,
                      {opt("dear_bad", 10, 5), opt("cheap", 2, 4), opt("dup1", 5, 1), opt("dup2", 5, 1),
                       opt("same_cost_worse", 5, 2), opt("same_err_dearer", 7, 1), opt("best", 9, 0.5)}});
  t.layers.push_back({"b", 10, {opt("only", 3, 7)}});
  const Table p = t.pareto(Metric::bytes);
  ASSERT_EQ(p.layers.size(), 2u);
  std::vector<std::string> knobs;
  for (const auto& o : p.layers[0].options) knobs.push_back(o.knob);
  EXPECT_EQ(knobs, (std::vector<std::string>{"cheap", "dup1", "best"}));
  ASSERT_EQ(p.layers[1].options.size(), 1u);
  EXPECT_EQ(p.layers[0].tensor, "a");
  EXPECT_EQ(p.layers[0].params, 10);
}

TEST(Pareto, RandomTablesFrontProperties) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const Table t = random_table(rng, {6, 8, trial % 2 == 0, false, true});
    for (Metric m : {Metric::bytes, Metric::flops}) {
      const Table p = t.pareto(m);
      ASSERT_EQ(p.layers.size(), t.layers.size());
      for (size_t l = 0; l < t.layers.size(); ++l) {
        const auto& f = p.layers[l].options;
        ASSERT_FALSE(f.empty());
        for (size_t k = 1; k < f.size(); ++k) {
          EXPECT_LT(f[k - 1].cost_of(m), f[k].cost_of(m));
          EXPECT_GT(f[k - 1].error, f[k].error);
        }
        // Every option of the layer is matched or beaten by a survivor, and a survivor is beaten by none.
        for (const Candidate& o : t.layers[l].options) {
          bool covered = false;
          for (const Candidate& s : f) covered = covered || (s.cost_of(m) <= o.cost_of(m) && s.error <= o.error);
          EXPECT_TRUE(covered);
        }
        for (const Candidate& s : f)
          for (const Candidate& o : t.layers[l].options)
            EXPECT_FALSE(o.cost_of(m) <= s.cost_of(m) && o.error <= s.error &&
                         (o.cost_of(m) < s.cost_of(m) || o.error < s.error));
      }
    }
  }
}

TEST(ConvexHull, HandExampleAndRandomProperties) {
  const LayerCandidates l{"x", 1, {opt("a", 0, 10), opt("b", 1, 9.5), opt("c", 2, 4), opt("d", 4, 2), opt("e", 6, 0),
                                   opt("f", 3, 5), opt("g", 8, 0)}};
  // b lies above the chord a-c, f is dominated by c, d is on the chord c-e (kept), g is dominated.
  const auto h = lower_convex_hull(l, Metric::bytes);
  std::vector<std::string> knobs;
  for (size_t i : h) knobs.push_back(l.options[i].knob);
  EXPECT_EQ(knobs, (std::vector<std::string>{"a", "c", "d", "e"}));

  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const Table t = random_table(rng, {1, 9, trial % 2 == 0, false, false});
    const LayerCandidates& lc = t.layers[0];
    const auto hull = lower_convex_hull(lc, Metric::bytes);
    const auto front = t.pareto(Metric::bytes).layers[0].options;
    ASSERT_FALSE(hull.empty());
    EXPECT_EQ(lc.options[hull.front()].cost.bytes, front.front().cost.bytes);
    EXPECT_EQ(lc.options[hull.front()].error, front.front().error);
    EXPECT_EQ(lc.options[hull.back()].error, front.back().error);
    for (size_t k = 2; k < hull.size(); ++k) {
      const auto& a = lc.options[hull[k - 2]];
      const auto& b = lc.options[hull[k - 1]];
      const auto& c = lc.options[hull[k]];
      const double r1 = (a.error - b.error) / (b.cost.bytes - a.cost.bytes);
      const double r2 = (b.error - c.error) / (c.cost.bytes - b.cost.bytes);
      EXPECT_GE(r1, r2 - 1e-12);
    }
    // No option lies below the hull polyline.
    for (const Candidate& o : lc.options)
      for (size_t k = 0; k + 1 < hull.size(); ++k) {
        const auto& a = lc.options[hull[k]];
        const auto& b = lc.options[hull[k + 1]];
        if (o.cost.bytes < a.cost.bytes || o.cost.bytes > b.cost.bytes) continue;
        const double on = a.error + (b.error - a.error) * (o.cost.bytes - a.cost.bytes) / (b.cost.bytes - a.cost.bytes);
        EXPECT_GE(o.error, on - 1e-9);
      }
  }
}

TEST(Solve, DpIsExactOnIntegerCosts) {
  std::mt19937_64 rng(1);
  int checked = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const Table t = random_table(rng, {});
    const double lo = t.min_cost(Metric::bytes), hi = t.max_cost(Metric::bytes);
    for (double budget : {lo, std::floor((lo + hi) / 2), hi, lo + 1, hi + 3}) {
      const Plan p = solve(t, {Metric::bytes, budget}, Solver::dp);
      expect_consistent(t, p);
      EXPECT_LE(p.total_cost().bytes, budget);
      EXPECT_NEAR(p.total_error(), brute_min_error(t, budget), 1e-9) << "trial " << trial << " budget " << budget;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2000);
}

TEST(Solve, DpOnRealCostsNeverExceedsAndIsOptimalForTheRoundedBudget) {
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<double> frac(0.0, 1.0);
  for (int trial = 0; trial < 400; ++trial) {
    const Table t = random_table(rng, {5, 5, false, false, true});
    const double lo = t.min_cost(Metric::bytes), hi = t.max_cost(Metric::bytes);
    const double budget = lo + frac(rng) * (hi - lo);
    const int64_t resolution = trial % 2 ? 16 : 4096;
    const Plan p = solve(t, {Metric::bytes, budget}, Solver::dp, {resolution});
    expect_consistent(t, p);
    EXPECT_LE(p.total_cost().bytes, budget);
    const double opt = brute_min_error(t, budget);
    EXPECT_GE(p.total_error(), opt - 1e-9);
    expect_no_upgrade_fits(t, p, budget);
    // Rounding up costs at most one unit per layer: the DP is at least as good as the optimum of a
    // budget tightened by that much.
    const double unit = (budget - lo) / static_cast<double>(resolution);
    const double tight = budget - unit * static_cast<double>(t.layers.size());
    if (tight >= lo) {
      EXPECT_LE(p.total_error(), brute_min_error(t, tight) + 1e-9) << "trial " << trial;
    }
  }
}

TEST(Solve, GreedyWithinTheHullStepBoundAndNeverOverBudget) {
  std::mt19937_64 rng(3);
  int optimal = 0, total = 0;
  for (int trial = 0; trial < 500; ++trial) {
    const Table t = random_table(rng, {5, 5, trial % 2 == 0, false, true});
    const double lo = t.min_cost(Metric::bytes), hi = t.max_cost(Metric::bytes);
    for (double f : {0.0, 0.1, 0.35, 0.6, 0.9, 1.0}) {
      const double budget = lo + f * (hi - lo);
      const Plan p = solve(t, {Metric::bytes, budget}, Solver::greedy);
      expect_consistent(t, p);
      EXPECT_LE(p.total_cost().bytes, budget);
      const double opt = brute_min_error(t, budget);
      EXPECT_GE(p.total_error(), opt - 1e-9);
      EXPECT_LE(p.total_error(), opt + largest_hull_step(t, Metric::bytes) + 1e-9) << "trial " << trial;
      expect_no_upgrade_fits(t, p, budget);
      optimal += p.total_error() <= opt + 1e-9;
      ++total;
    }
  }
  // The bound is loose in practice: greedy finds the optimum on most small tables.
  EXPECT_GT(optimal, total * 3 / 4) << optimal << " of " << total;
  std::printf("  greedy optimal on %d of %d random tables\n", optimal, total);
}

TEST(Solve, GreedyIsOptimalOnConvexLaddersAtHullBreakpoints) {
  // Every option on its layer's hull and every budget a sum of per-layer hull points reachable by
  // taking steps in rate order: the Lagrangian solution is then exactly optimal.
  Table t;
  t.layers.push_back({"a", 8, {opt("1", 1, 8), opt("2", 2, 4), opt("3", 3, 2), opt("4", 4, 1)}});
  t.layers.push_back({"b", 8, {opt("1", 2, 9), opt("2", 4, 3), opt("3", 6, 1.5)}});
  t.layers.push_back({"c", 8, {opt("1", 1, 1), opt("2", 5, 0.2)}});
  for (double budget = t.min_cost(Metric::bytes); budget <= t.max_cost(Metric::bytes); budget += 1) {
    const Plan p = solve(t, {Metric::bytes, budget}, Solver::greedy);
    EXPECT_LE(p.total_error(), brute_min_error(t, budget) + largest_hull_step(t, Metric::bytes) + 1e-12) << budget;
    EXPECT_LE(p.total_cost().bytes, budget);
  }
  // Steps in rate order, from the cheapest plan (cost 4): a1->2 (4 per unit, +1), b1->2 (3, +2),
  // a2->3 (2, +1), a3->4 (1, +1), b2->3 (0.75, +2), c1->2 (0.2, +4).
  for (double budget : {4.0, 5.0, 7.0, 8.0, 9.0, 11.0, 15.0}) {
    const Plan p = solve(t, {Metric::bytes, budget}, Solver::greedy);
    EXPECT_NEAR(p.total_error(), brute_min_error(t, budget), 1e-12) << budget;
  }
}

TEST(Solve, MinimaxIsOptimalAndTakesTheCheapestOptionsUnderTheThreshold) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 400; ++trial) {
    const Table t = random_table(rng, {5, 5, trial % 2 == 0, false, true});
    const double lo = t.min_cost(Metric::bytes), hi = t.max_cost(Metric::bytes);
    for (double f : {0.0, 0.3, 0.7, 1.0}) {
      const double budget = lo + f * (hi - lo);
      const Plan p = solve(t, {Metric::bytes, budget}, Solver::minimax);
      expect_consistent(t, p);
      EXPECT_LE(p.total_cost().bytes, budget);
      double worst = 0;
      for (const Choice& c : p.choices) worst = std::max(worst, c.predicted_error);
      EXPECT_EQ(worst, brute_min_max_error(t, budget)) << "trial " << trial;
      // Cheapest under the threshold: no layer has a cheaper option within it.
      for (size_t l = 0; l < t.layers.size(); ++l)
        for (const Candidate& o : t.layers[l].options)
          if (o.error <= worst) {
            EXPECT_GE(o.cost.bytes, p.choices[l].cost.bytes);
          }
    }
  }
}

TEST(Solve, UniformPicksTheBestCommonKnobThatFits) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const Table t = random_table(rng, {5, 5, trial % 2 == 0, false, true});
    const double budget = t.max_cost(Metric::bytes) * 0.8;
    // Brute force over the shared knobs; pinned layers keep their single option.
    std::map<std::string, std::pair<double, double>> by_knob;  // knob -> (cost, error)
    size_t knobs = 0;
    for (const auto& l : t.layers) knobs = std::max(knobs, l.options.size());
    bool any_fits = false;
    double best_error = 0;
    for (size_t k = 0; k < knobs && knobs > 1; ++k) {
      double c = 0, e = 0;
      for (const auto& l : t.layers) {
        const Candidate& o = l.options.size() == 1 ? l.options[0] : l.options[k];
        c += o.cost.bytes;
        e += o.error;
      }
      if (c <= budget && (!any_fits || e < best_error)) best_error = e, any_fits = true;
    }
    if (knobs == 1) {
      any_fits = t.min_cost(Metric::bytes) <= budget;
      best_error = 0;
      for (const auto& l : t.layers) best_error += l.options[0].error;
    }
    if (!any_fits) {
      EXPECT_THROW(solve(t, {Metric::bytes, budget}, Solver::uniform), Error);
      continue;
    }
    const Plan p = solve(t, {Metric::bytes, budget}, Solver::uniform);
    expect_consistent(t, p);
    EXPECT_LE(p.total_cost().bytes, budget);
    EXPECT_NEAR(p.total_error(), best_error, 1e-12);
    std::string knob;
    for (size_t l = 0; l < t.layers.size(); ++l) {
      if (t.layers[l].options.size() == 1) continue;
      if (knob.empty()) knob = p.choices[l].knob;
      EXPECT_EQ(p.choices[l].knob, knob);
    }
  }
}

TEST(Solve, UniformNeedsAKnobEveryLayerOffers) {
  Table t;
  t.layers.push_back({"a", 8, {opt("q4", 4, 1), opt("q8", 8, 0)}});
  t.layers.push_back({"b", 8, {opt("q5", 5, 1), opt("q8", 8, 0)}});
  t.layers.push_back({"pinned", 8, {opt("q6", 6, 0.5)}});
  EXPECT_EQ(solve(t, {Metric::bytes, 22}, Solver::uniform).choices[0].knob, "q8");
  try {
    solve(t, {Metric::bytes, 21}, Solver::uniform);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("smallest uniform plan, 22 bytes"), std::string::npos) << e.what();
  }
  t.layers[1].options[1].knob = "q8_0";
  try {
    solve(t, {Metric::bytes, 100}, Solver::uniform);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'b' lacks it"), std::string::npos) << e.what();
  }
  // The same method name must match too: "q8" from another compressor is another option.
  t.layers[1].options[1] = opt("q8", 8, 0, "other");
  EXPECT_THROW(solve(t, {Metric::bytes, 100}, Solver::uniform), Error);
}

TEST(Solve, ErrorConstrainedMatchesBruteForce) {
  std::mt19937_64 rng(6);
  std::uniform_real_distribution<double> frac(0.0, 1.0);
  for (int trial = 0; trial < 400; ++trial) {
    const bool integral = trial % 2 == 0;
    const Table t = random_table(rng, {5, 5, false, integral, true});
    double least = 0, most = 0;
    for (const auto& l : t.layers) {
      double lo = l.options[0].error, hi = lo;
      for (const auto& o : l.options) lo = std::min(lo, o.error), hi = std::max(hi, o.error);
      least += lo;
      most += hi;
    }
    const double cap = integral ? std::floor(least + frac(rng) * (most - least)) : least + frac(rng) * (most - least);
    if (cap < least) continue;
    const int64_t resolution = integral ? 4096 : 64;
    const Plan p = solve_error_constrained(t, Metric::bytes, cap, {resolution});
    expect_consistent(t, p);
    EXPECT_LE(p.total_error(), cap);
    ASSERT_TRUE(p.max_error.has_value());
    EXPECT_EQ(*p.max_error, cap);
    EXPECT_EQ(p.constraint.budget, p.total_cost().bytes);
    const double opt = brute_min_cost(t, cap);
    EXPECT_GE(p.total_cost().bytes, opt - 1e-9);
    if (integral) {
      EXPECT_EQ(p.total_cost().bytes, opt) << "trial " << trial;
    } else {
      const double unit = (cap - least) / static_cast<double>(resolution);
      const double tight = cap - unit * static_cast<double>(t.layers.size());
      if (tight >= least) {
        EXPECT_LE(p.total_cost().bytes, brute_min_cost(t, tight) + 1e-9) << "trial " << trial;
      }
    }
  }
  Table t;
  t.layers.push_back({"a", 8, {opt("q4", 4, 1), opt("q8", 8, 0.25)}});
  try {
    solve_error_constrained(t, Metric::bytes, 0.2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("least achievable total error, 0.25"), std::string::npos) << e.what();
  }
}

TEST(Solve, EveryPlanFitsOnManyRandomTablesAndOtherMetrics) {
  std::mt19937_64 rng(8);
  std::uniform_real_distribution<double> frac(0.0, 1.0);
  for (int trial = 0; trial < 600; ++trial) {
    const Table t = random_table(rng, {7, 6, trial % 3 == 0, false, true});
    for (Metric m : {Metric::bytes, Metric::params, Metric::flops}) {
      const double lo = t.min_cost(m), hi = t.max_cost(m);
      for (double budget : {lo, lo + frac(rng) * (hi - lo), hi}) {
        for (Solver s : {Solver::greedy, Solver::dp, Solver::minimax}) {
          const Plan p = solve(t, {m, budget}, s);
          expect_consistent(t, p);
          EXPECT_LE(cost_of(p.total_cost(), m), budget) << solver_name(s);
          EXPECT_EQ(p.solver, solver_name(s));
          EXPECT_EQ(p.constraint.budget, budget);
          EXPECT_EQ(p.constraint.metric, m);
        }
      }
    }
  }
}

TEST(Solve, BudgetExactlyTheMinimumAndTheMaximum) {
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 200; ++trial) {
    const Table t = random_table(rng, {6, 6, false, false, true});
    const double lo = t.min_cost(Metric::bytes);
    const Table p = t.pareto(Metric::bytes);
    double cheapest_error = 0, best_error = 0;
    for (const auto& l : p.layers) cheapest_error += l.options.front().error, best_error += l.options.back().error;
    for (Solver s : {Solver::greedy, Solver::dp, Solver::minimax}) {
      const Plan at_min = solve(t, {Metric::bytes, lo}, s);
      EXPECT_EQ(at_min.total_cost().bytes, lo) << solver_name(s);
      EXPECT_NEAR(at_min.total_error(), cheapest_error, 1e-9) << solver_name(s);
    }
    for (Solver s : {Solver::greedy, Solver::dp}) {
      const Plan at_max = solve(t, {Metric::bytes, t.max_cost(Metric::bytes)}, s);
      EXPECT_NEAR(at_max.total_error(), best_error, 1e-9) << solver_name(s);
    }
  }
}

TEST(Solve, InfeasibleBudgetNamesTheBudgetTheMinimumAndTheMetric) {
  Table t;
  t.layers.push_back({"a", 1000, {opt("q2", 300, 2), opt("q4", 600, 1)}});
  t.layers.push_back({"b", 1000, {opt("q8", 1100, 0)}});
  for (Solver s : {Solver::uniform, Solver::greedy, Solver::dp, Solver::minimax}) {
    try {
      solve(t, {Metric::bytes, 1399}, s);
      FAIL() << solver_name(s);
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("budget 1399 bytes"), std::string::npos) << msg;
      EXPECT_NE(msg.find("1400 bytes"), std::string::npos) << msg;
      EXPECT_NE(msg.find("bits per weight"), std::string::npos) << msg;
    }
  }
  try {
    solve(t, {Metric::flops, 10}, Solver::greedy);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4200 flops"), std::string::npos) << e.what();
  }
  EXPECT_THROW(solve(t, {Metric::bytes, std::nan("")}, Solver::dp), Error);
  EXPECT_THROW(solve(t, {Metric::bytes, -1}, Solver::dp), Error);
  EXPECT_THROW(solve(t, {Metric::bytes, 2000}, Solver::dp, {0}), Error);
}

TEST(Solve, SingleOptionLayersTiesAndEmptyTables) {
  Table t;
  t.layers.push_back({"pinned", 8, {opt("q8", 8, 0.5)}});
  t.layers.push_back({"tie", 8, {opt("x", 4, 1), opt("y", 4, 1), opt("z", 6, 1)}});
  t.layers.push_back({"free", 8, {opt("zero", 0, 3), opt("q4", 4, 0)}});
  for (Solver s : {Solver::greedy, Solver::dp, Solver::minimax}) {
    const Plan p = solve(t, {Metric::bytes, 16}, s);
    expect_consistent(t, p);
    EXPECT_LE(p.total_cost().bytes, 16);
    EXPECT_EQ(p.choices[0].knob, "q8");
    // Of tied options the cheapest listed first is taken.
    EXPECT_EQ(p.choices[1].knob, "x") << solver_name(s);
    EXPECT_EQ(p.choices[2].knob, "q4") << solver_name(s);
  }
  EXPECT_EQ(solve(t, {Metric::bytes, 16}, Solver::dp).total_error(), 1.5);
  const Table empty;
  for (Solver s : {Solver::uniform, Solver::greedy, Solver::dp, Solver::minimax})
    EXPECT_TRUE(solve(empty, {Metric::bytes, 0}, s).choices.empty());
}

TEST(Table, ValidationNamesTheTensorAndOption) {
  const auto message = [](const Table& t) {
    try {
      t.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  Table t;
  t.layers.push_back({"a", 8, {opt("q4", 4, 1)}});
  t.layers.push_back({"a", 8, {opt("q4", 4, 1)}});
  EXPECT_NE(message(t).find("'a' appears twice"), std::string::npos);
  t.layers[1].tensor = "b";
  t.layers[1].options.push_back(opt("q4", 5, 0));
  EXPECT_NE(message(t).find("tensor 'b': option m:q4 appears twice"), std::string::npos) << message(t);
  t.layers[1].options[1].knob = "q5";
  t.layers[1].options[1].error = std::nan("");
  EXPECT_NE(message(t).find("tensor 'b': option m:q5: error is nan"), std::string::npos) << message(t);
  t.layers[1].options[1].error = 0;
  t.layers[1].options[1].cost.flops = -1;
  EXPECT_NE(message(t).find("cost.flops is -1"), std::string::npos) << message(t);
  t.layers[1].options.clear();
  EXPECT_NE(message(t).find("tensor 'b': no options"), std::string::npos);
  EXPECT_THROW(solve(t, {Metric::bytes, 100}, Solver::greedy), Error);
}

TEST(Table, CostsParamsAndBitsPerWeight) {
  Table t;
  t.layers.push_back({"a", 1000, {opt("q4", 500, 1), opt("q8", 1000, 0)}});
  t.layers.push_back({"b", 3000, {opt("q8", 3000, 0)}});
  EXPECT_EQ(t.min_cost(Metric::bytes), 3500);
  EXPECT_EQ(t.max_cost(Metric::bytes), 4000);
  EXPECT_EQ(t.params(), 4000);
  EXPECT_EQ(t.find("b"), &t.layers[1]);
  EXPECT_EQ(t.find("c"), nullptr);
  const Constraint c = bits_per_weight(t, 7.5);
  EXPECT_EQ(c.metric, Metric::bytes);
  EXPECT_EQ(c.budget, 3750);
  EXPECT_THROW(bits_per_weight(t, 0), Error);
  EXPECT_THROW(bits_per_weight(Table{}, 4), Error);
  const Plan p = solve(t, c, Solver::dp);
  EXPECT_EQ(p.bits_per_weight(t.params()), 7.0);
  EXPECT_EQ(p.find("a")->knob, "q4");
  EXPECT_EQ(p.find("zzz"), nullptr);
  EXPECT_THROW(p.bits_per_weight(0), Error);
}

// A table the size of a 7B model's (224 linear layers x 11 ggml types) with byte costs in the
// millions: every solver answers in well under a second, within budget.
TEST(Solve, RealisticTableIsFast) {
  std::mt19937_64 rng(10);
  std::uniform_real_distribution<double> u(0.5, 2.0);
  const double bpw[] = {2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5, 4.5, 5.0, 5.5, 6.0, 4.5};
  Table t;
  for (int l = 0; l < 224; ++l) {
    const int64_t params = (l % 7 < 4) ? 4096 * 4096 : 4096 * 11008;
    LayerCandidates lc{numbered(numbered("blk.", l / 7) + ".w", l % 7), params, {}};
    const double scale = u(rng);
    for (int k = 0; k < 11; ++k) {
      const double bytes = bpw[k] * static_cast<double>(params) / 8;
      lc.options.push_back(opt(numbered("k", k), bytes, scale * std::exp2(-2 * bpw[k]) * (k >= 6 ? 1.3 : 1.0)));
    }
    t.layers.push_back(std::move(lc));
  }
  const Constraint c = bits_per_weight(t, 4.0);
  for (Solver s : {Solver::uniform, Solver::greedy, Solver::dp, Solver::minimax}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Plan p = solve(t, c, s);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LE(p.total_cost().bytes, c.budget);
    EXPECT_LT(ms, 1000) << solver_name(s);
    std::printf("  %-8s %7.2f ms  %.4f bpw  total error %.6g\n", std::string(solver_name(s)).c_str(), ms,
                p.bits_per_weight(t.params()), p.total_error());
  }
  const Plan greedy = solve(t, c, Solver::greedy), dp = solve(t, c, Solver::dp, {1 << 16});
  const Plan uniform = solve(t, c, Solver::uniform);
  EXPECT_LT(greedy.total_error(), uniform.total_error());
  // Greedy's slack is at most one hull step, small next to the total here.
  EXPECT_NEAR(greedy.total_error(), dp.total_error(), 0.01 * dp.total_error());
}

}  // namespace
}  // namespace strata::budget
