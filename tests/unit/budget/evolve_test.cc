// The evolutionary search: elitism, the budget, determinism, and finding what an additive proxy
// misses.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <set>

#include "strata/budget/allocator.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {
namespace {

// A quantization-like table: per layer the ladder 2..8 bits at bytes = bits * params / 8 and an
// error that falls 4x per bit, scaled per layer.
Table ladder_table(int layers, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> scale(0.5, 2.0);
  Table t;
  for (int l = 0; l < layers; ++l) {
    LayerCandidates lc{"blk." + std::to_string(l) + ".weight", 1024, {}};
    const double s = scale(rng);
    for (int bits = 2; bits <= 8; ++bits) {
      Candidate c;
      c.method = "quant";
      c.knob = "bits=" + std::to_string(bits);
      c.cost = {bits * 1024.0 / 8, 1024, 2048};
      c.error = s * std::pow(4.0, -bits);
      lc.options.push_back(c);
    }
    t.layers.push_back(std::move(lc));
  }
  return t;
}

// The "measured" damage: layers interact and the first few matter far more than the proxy says,
// so the additive optimum is not the fitness optimum.
double synthetic_fitness(const Plan& p) {
  double f = 0;
  for (size_t l = 0; l < p.choices.size(); ++l) f += p.choices[l].predicted_error * (l < 3 ? 12.0 : 1.0);
  return f;
}

EvolveOptions options(int generations, int offspring = 8, int max_swaps = 3) {
  EvolveOptions o;
  o.generations = generations;
  o.offspring = offspring;
  o.max_swaps = max_swaps;
  return o;
}

TEST(Evolve, NeverWorsensKeepsTheBudgetAndImprovesOnANonAdditiveFitness) {
  const Table t = ladder_table(12, 1);
  const Constraint c = bits_per_weight(t, 4.0);
  const Plan start = solve(t, c, Solver::dp);
  int evaluated = 0;
  const auto fitness = [&](const Plan& p) {
    ++evaluated;
    EXPECT_EQ(p.choices.size(), t.layers.size());
    EXPECT_LE(p.total_cost().bytes, c.budget);
    for (size_t l = 0; l < p.choices.size(); ++l) EXPECT_EQ(p.choices[l].tensor, t.layers[l].tensor);
    return synthetic_fitness(p);
  };
  std::vector<int> generations;
  EvolveOptions o;
  o.generations = 60;
  o.offspring = 6;
  o.progress = [&](int g, double) { generations.push_back(g); };
  const EvolveResult r = evolve(t, c, start, fitness, o);
  EXPECT_EQ(r.start_fitness, synthetic_fitness(start));
  EXPECT_EQ(r.evaluations, evaluated);
  EXPECT_GT(r.evaluations, 100);
  ASSERT_EQ(r.history.size(), 60u);
  ASSERT_EQ(generations.size(), 60u);
  EXPECT_EQ(generations.front(), 1);
  EXPECT_EQ(generations.back(), 60);
  for (size_t g = 1; g < r.history.size(); ++g) EXPECT_LE(r.history[g], r.history[g - 1]);
  EXPECT_LE(r.history.front(), r.start_fitness);
  EXPECT_EQ(r.history.back(), r.best_fitness);
  EXPECT_EQ(synthetic_fitness(r.best), r.best_fitness);
  EXPECT_LE(r.best.total_cost().bytes, c.budget);
  EXPECT_EQ(r.best.solver, "dp+evolve");
  // The proxy optimum wastes bits on layers the fitness hardly weighs; the search moves them to the
  // first three layers and closes most of the gap to the true optimum of the weighted problem (the
  // exact DP on weighted errors).
  Table weighted = t;
  for (size_t l = 0; l < 3; ++l)
    for (Candidate& o2 : weighted.layers[l].options) o2.error *= 12.0;
  const double optimum = solve(weighted, c, Solver::dp).total_error();
  EXPECT_LT(optimum, 0.9 * r.start_fitness);
  EXPECT_LE(r.best_fitness, optimum + 0.1 * (r.start_fitness - optimum)) << optimum;
  EXPECT_GE(r.best_fitness, optimum - 1e-12);
  std::printf("  fitness %.6g -> %.6g (weighted optimum %.6g) in %d evaluations\n", r.start_fitness, r.best_fitness,
              optimum, r.evaluations);
}

TEST(Evolve, DeterministicPerSeed) {
  const Table t = ladder_table(8, 2);
  const Constraint c = bits_per_weight(t, 3.5);
  const Plan start = solve(t, c, Solver::greedy);
  const auto run = [&](uint64_t seed) {
    std::vector<std::string> seen;
    EvolveOptions o;
    o.generations = 20;
    o.seed = seed;
    evolve(t, c, start,
           [&](const Plan& p) {
             std::string key;
             for (const Choice& ch : p.choices) key += ch.knob + ";";
             seen.push_back(key);
             return synthetic_fitness(p);
           },
           o);
    return seen;
  };
  const auto a = run(7), b = run(7), other = run(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  // No plan is evaluated twice.
  EXPECT_EQ(std::set<std::string>(a.begin(), a.end()).size(), a.size());
}

// Measuring a generation's offspring together draws, measures and keeps exactly what measuring
// them one by one does; a start fitness the caller already has is not measured again.
TEST(Evolve, BatchedFitnessGivesTheSameSearch) {
  const Table t = ladder_table(10, 3);
  const Constraint c = bits_per_weight(t, 4.0);
  const Plan start = solve(t, c, Solver::greedy);
  const auto key = [](const Plan& p) {
    std::string k;
    for (const Choice& ch : p.choices) k += ch.knob + ";";
    return k;
  };
  std::vector<std::string> one_by_one, together;
  std::vector<size_t> batch_sizes;
  const EvolveResult a = evolve(
      t, c, start,
      [&](const Plan& p) {
        one_by_one.push_back(key(p));
        return synthetic_fitness(p);
      },
      options(25, 5));
  EvolveOptions o = options(25, 5);
  o.start_fitness = synthetic_fitness(start);
  const EvolveResult b = evolve(t, c, start,
                                BatchFitness([&](const std::vector<Plan>& plans) {
                                  batch_sizes.push_back(plans.size());
                                  std::vector<double> f;
                                  for (const Plan& p : plans) {
                                    together.push_back(key(p));
                                    f.push_back(synthetic_fitness(p));
                                  }
                                  return f;
                                }),
                                o);
  ASSERT_FALSE(one_by_one.empty());
  // The start plan was measured by the one-plan search only.
  EXPECT_EQ(one_by_one.front(), key(start));
  EXPECT_EQ(std::vector<std::string>(one_by_one.begin() + 1, one_by_one.end()), together);
  EXPECT_EQ(a.evaluations, b.evaluations + 1);
  EXPECT_EQ(key(a.best), key(b.best));
  EXPECT_EQ(a.best_fitness, b.best_fitness);
  EXPECT_EQ(a.history, b.history);
  EXPECT_EQ(b.start_fitness, synthetic_fitness(start));
  ASSERT_EQ(batch_sizes.size(), 25u);
  EXPECT_EQ(*std::max_element(batch_sizes.begin(), batch_sizes.end()), 5u);
}

TEST(Evolve, FitnessEqualToTheProxyCannotBeatTheExactOptimum) {
  const Table t = ladder_table(6, 3);
  const Constraint c = bits_per_weight(t, 5.0);
  const Plan start = solve(t, c, Solver::dp);
  const EvolveResult r = evolve(t, c, start, [](const Plan& p) { return p.total_error(); }, {});
  EXPECT_GE(r.best_fitness, start.total_error() - 1e-15);
  EXPECT_EQ(r.best_fitness, r.start_fitness);
}

TEST(Evolve, PinnedLayersStayAndZeroGenerationsReturnTheStart) {
  Table t = ladder_table(4, 4);
  t.layers[1].options.resize(1);
  t.layers[1].options[0].knob = "pinned";
  const Constraint c = bits_per_weight(t, 4.0);
  const Plan start = solve(t, c, Solver::greedy);
  const EvolveResult r = evolve(t, c, start, synthetic_fitness, options(30, 4));
  EXPECT_EQ(r.best.choices[1].knob, "pinned");
  const EvolveResult none = evolve(t, c, start, synthetic_fitness, options(0));
  EXPECT_EQ(none.evaluations, 1);
  EXPECT_TRUE(none.history.empty());
  for (size_t l = 0; l < t.layers.size(); ++l) EXPECT_EQ(none.best.choices[l].knob, start.choices[l].knob);
}

TEST(Evolve, RejectsBadStartsAndFitness) {
  const Table t = ladder_table(3, 5);
  const Constraint c = bits_per_weight(t, 4.0);
  const Plan start = solve(t, c, Solver::greedy);
  const auto message = [&](const Plan& s, const Constraint& cc, const std::function<double(const Plan&)>& f) {
    try {
      evolve(t, cc, s, f, options(2));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  Plan bad = start;
  bad.choices.pop_back();
  EXPECT_NE(message(bad, c, synthetic_fitness).find("2 choices for 3 table layers"), std::string::npos);
  bad = start;
  bad.choices[1].tensor = "other";
  EXPECT_NE(message(bad, c, synthetic_fitness).find("tensor 'other'"), std::string::npos);
  bad = start;
  bad.choices[2].knob = "bits=9";
  EXPECT_NE(message(bad, c, synthetic_fitness).find("quant:bits=9 is not an option"), std::string::npos);
  EXPECT_NE(message(start, {Metric::bytes, 10}, synthetic_fitness).find("over the budget"), std::string::npos);
  EXPECT_NE(message(start, c, [](const Plan&) { return std::nan(""); }).find("fitness of the start plan is nan"),
            std::string::npos);
  EXPECT_THROW(evolve(t, c, start, synthetic_fitness, options(50, 0)), Error);
  EXPECT_THROW(evolve(t, c, start, synthetic_fitness, options(50, 8, 0)), Error);
  EXPECT_THROW(evolve(t, c, start, std::function<double(const Plan&)>{}, {}), Error);
  EXPECT_THROW(evolve(t, c, start, BatchFitness([](const std::vector<Plan>&) { return std::vector<double>{1.0}; }),
                      options(3, 4)),
               Error);  // one value for several plans
}

}  // namespace
}  // namespace strata::budget
