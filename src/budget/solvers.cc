// The budget solvers. Every plan total is added in table order, the same order Plan::total_cost()
// and Table::min_cost() use, and every solver checks its final plan against the budget with that
// sum (repairing the rare plan that floating-point rounding pushed over it), so "fits" means the
// same thing to the solver and to whoever reads the plan.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>
#include <set>

#include "strata/budget/allocator.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {

Solver parse_solver(std::string_view name) {
  if (name == "uniform") return Solver::uniform;
  if (name == "greedy") return Solver::greedy;
  if (name == "dp") return Solver::dp;
  if (name == "minimax") return Solver::minimax;
  fail("unknown solver '", name, "'; known: uniform greedy dp minimax");
}

std::string_view solver_name(Solver s) {
  switch (s) {
    case Solver::uniform: return "uniform";
    case Solver::greedy: return "greedy";
    case Solver::dp: return "dp";
    case Solver::minimax: return "minimax";
  }
  return "greedy";
}

namespace {

// Costs are byte counts in the billions: print them whole, not as 1.23457e+09.
std::string num(double v) {
  char buf[64];
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 1e18)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

std::string amount(const Table& t, double v, Metric m) {
  std::string s = num(v) + " " + std::string(metric_name(m));
  if (m == Metric::bytes && t.params() > 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " (%.4g bits per weight)", 8.0 * v / static_cast<double>(t.params()));
    s += buf;
  }
  return s;
}

using Pick = std::vector<size_t>;  // option index per layer

// Running totals drift from the order-added total by rounding, so a step that lands exactly on the
// budget can look a hair over it. Screens use this much slack; the order-added total decides.
double slack(double budget) { return 1e-9 * (std::abs(budget) + 1.0); }

double c_of(const Table& t, size_t l, size_t k, Metric m) { return t.layers[l].options[k].cost_of(m); }
double e_of(const Table& t, size_t l, size_t k) { return t.layers[l].options[k].error; }

double total_cost(const Table& t, const Pick& p, Metric m) {
  double s = 0;
  for (size_t l = 0; l < p.size(); ++l) s += c_of(t, l, p[l], m);
  return s;
}

double total_error(const Table& t, const Pick& p) {
  double s = 0;
  for (size_t l = 0; l < p.size(); ++l) s += e_of(t, l, p[l]);
  return s;
}

Plan make_plan(const Table& t, const Pick& p, std::string solver, const Constraint& c) {
  Plan plan;
  plan.solver = std::move(solver);
  plan.constraint = c;
  plan.choices.reserve(p.size());
  for (size_t l = 0; l < p.size(); ++l) {
    plan.choices.push_back(Choice::of(t.layers[l].tensor, t.layers[l].options[p[l]]));
  }
  return plan;
}

void check_budget_value(const Constraint& c) {
  require(std::isfinite(c.budget) && c.budget >= 0, "budget must be finite and >= 0, got ", c.budget, " ",
          metric_name(c.metric));
}

void check_feasible(const Table& t, const Constraint& c) {
  const double least = t.min_cost(c.metric);
  require(least <= c.budget, "budget ", amount(t, c.budget, c.metric), " is below the smallest achievable cost, ",
          amount(t, least, c.metric), " with every layer at its cheapest option");
}

// On a Pareto table (options cheapest first): steps layers down to cheaper options, least error
// added per cost saved first, until the order-added total fits. Only rounding ever makes this run,
// and it stops at the cheapest plan, which fits.
void repair_cost(const Table& t, Pick& p, Metric m, double budget) {
  while (total_cost(t, p, m) > budget) {
    std::optional<size_t> best;
    double best_ratio = 0;
    for (size_t l = 0; l < p.size(); ++l) {
      if (p[l] == 0) continue;
      const double ratio = (e_of(t, l, p[l] - 1) - e_of(t, l, p[l])) / (c_of(t, l, p[l], m) - c_of(t, l, p[l] - 1, m));
      if (!best || ratio < best_ratio) best = l, best_ratio = ratio;
    }
    require(best.has_value(), "allocator: the cheapest plan exceeds the budget after the feasibility check");
    --p[*best];
  }
}

// The same for a cap on the total error: steps layers up to more accurate options, least cost added
// per error removed first.
void repair_error(const Table& t, Pick& p, Metric m, double max_error) {
  while (total_error(t, p) > max_error) {
    std::optional<size_t> best;
    double best_ratio = 0;
    for (size_t l = 0; l < p.size(); ++l) {
      if (p[l] + 1 >= t.layers[l].options.size()) continue;
      const double ratio = (c_of(t, l, p[l] + 1, m) - c_of(t, l, p[l], m)) / (e_of(t, l, p[l]) - e_of(t, l, p[l] + 1));
      if (!best || ratio < best_ratio) best = l, best_ratio = ratio;
    }
    require(best.has_value(), "allocator: the most accurate plan exceeds the error cap after the check");
    ++p[*best];
  }
}

// Spends what is left of the budget: the single-layer upgrade (to any dearer option of the layer's
// front, hull or not) that saves the most error per cost and still fits, until none fits.
void fill(const Table& p, Pick& pick, Metric m, double budget) {
  const size_t n = pick.size();
  std::set<std::pair<size_t, size_t>> rejected;  // upgrades that fitted only before rounding
  double total = total_cost(p, pick, m);
  for (;;) {
    std::optional<std::pair<size_t, size_t>> best;
    double best_rate = 0, best_de = 0;
    for (size_t l = 0; l < n; ++l) {
      const size_t cur = pick[l];
      for (size_t j = cur + 1; j < p.layers[l].options.size(); ++j) {
        const double dc = c_of(p, l, j, m) - c_of(p, l, cur, m);
        const double de = e_of(p, l, cur) - e_of(p, l, j);
        if (total + dc > budget + slack(budget) || rejected.count({l, j})) continue;
        const double rate = de / dc;
        if (!best || rate > best_rate || (rate == best_rate && de > best_de)) {
          best = std::make_pair(l, j);
          best_rate = rate;
          best_de = de;
        }
      }
    }
    if (!best) return;
    const size_t was = pick[best->first];
    pick[best->first] = best->second;
    const double t = total_cost(p, pick, m);
    if (t > budget) {
      pick[best->first] = was;
      rejected.insert(*best);
      continue;
    }
    total = t;
  }
}

// The mirror image for an error cap: the single-layer downgrade (to any cheaper option of the
// layer's front) that saves the most cost per error added and keeps the total error within the
// cap, until none does.
void thin(const Table& p, Pick& pick, Metric m, double max_error) {
  const size_t n = pick.size();
  std::set<std::pair<size_t, size_t>> rejected;
  double total = total_error(p, pick);
  for (;;) {
    std::optional<std::pair<size_t, size_t>> best;
    double best_rate = 0, best_dc = 0;
    for (size_t l = 0; l < n; ++l) {
      const size_t cur = pick[l];
      for (size_t j = 0; j < cur; ++j) {
        const double dc = c_of(p, l, cur, m) - c_of(p, l, j, m);
        const double de = e_of(p, l, j) - e_of(p, l, cur);
        if (total + de > max_error + slack(max_error) || rejected.count({l, j})) continue;
        const double rate = dc / de;
        if (!best || rate > best_rate || (rate == best_rate && dc > best_dc)) {
          best = std::make_pair(l, j);
          best_rate = rate;
          best_dc = dc;
        }
      }
    }
    if (!best) return;
    const size_t was = pick[best->first];
    pick[best->first] = best->second;
    const double t = total_error(p, pick);
    if (t > max_error) {
      pick[best->first] = was;
      rejected.insert(*best);
      continue;
    }
    total = t;
  }
}

// --- uniform ------------------------------------------------------------------------------------

Plan solve_uniform(const Table& t, const Constraint& c) {
  const Metric m = c.metric;
  const size_t n = t.layers.size();
  Pick fixed(n, 0);
  std::optional<size_t> first;
  for (size_t l = 0; l < n; ++l)
    if (t.layers[l].options.size() > 1 && !first) first = l;
  if (!first) return make_plan(t, fixed, "uniform", c);  // every layer pinned; feasibility was checked

  std::optional<Pick> best;
  double best_error = 0, best_cost = 0, least_cost = 0;
  bool any_common = false;
  std::string missing;
  for (const Candidate& cand : t.layers[*first].options) {
    Pick p = fixed;
    bool common = true;
    for (size_t l = 0; l < n && common; ++l) {
      const auto& os = t.layers[l].options;
      if (os.size() == 1) continue;
      auto it = std::find_if(os.begin(), os.end(),
                             [&](const Candidate& o) { return o.method == cand.method && o.knob == cand.knob; });
      if (it == os.end()) {
        common = false;
        if (missing.empty()) missing = cand.method + ":" + cand.knob + " (tensor '" + t.layers[l].tensor + "' lacks it)";
      } else {
        p[l] = static_cast<size_t>(it - os.begin());
      }
    }
    if (!common) continue;
    const double cost = total_cost(t, p, m), err = total_error(t, p);
    least_cost = any_common ? std::min(least_cost, cost) : cost;
    any_common = true;
    if (cost > c.budget) continue;
    if (!best || err < best_error || (err == best_error && cost < best_cost)) {
      best = p;
      best_error = err;
      best_cost = cost;
    }
  }
  require(any_common, "uniform: no method and knob is offered by every layer that has a choice; e.g. ", missing);
  require(best.has_value(), "budget ", amount(t, c.budget, m), " is below the smallest uniform plan, ",
          amount(t, least_cost, m), " (the smallest achievable cost is ", amount(t, t.min_cost(m), m), ")");
  return make_plan(t, *best, "uniform", c);
}

// --- greedy -------------------------------------------------------------------------------------

Plan solve_greedy(const Table& p, const Constraint& c) {
  const Metric m = c.metric;
  const size_t n = p.layers.size();
  struct Segment {
    double dc, de, rate;
    size_t layer, pos;
  };
  std::vector<std::vector<size_t>> hulls(n);
  std::vector<Segment> segs;
  for (size_t l = 0; l < n; ++l) {
    hulls[l] = lower_convex_hull(p.layers[l], m);
    const auto& h = hulls[l];
    for (size_t k = 0; k + 1 < h.size(); ++k) {
      const double dc = c_of(p, l, h[k + 1], m) - c_of(p, l, h[k], m);
      const double de = e_of(p, l, h[k]) - e_of(p, l, h[k + 1]);
      // Collinear hull points can round to a rate a hair above the previous step's; clamping keeps
      // each layer's steps in hull order after the sort.
      const double rate = k == 0 ? de / dc : std::min(de / dc, segs.back().rate);
      segs.push_back({dc, de, rate, l, k});
    }
  }
  // Taking every hull step whose error saved per cost exceeds lambda solves min sum e + lambda sum c;
  // sorting the steps by that rate lays out every lambda's solution as a prefix. Within a layer the
  // rates never grow along the hull, so the (rate, layer, position) order keeps each layer's steps
  // in hull order.
  std::stable_sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) {
    if (a.rate != b.rate) return a.rate > b.rate;
    if (a.layer != b.layer) return a.layer < b.layer;
    return a.pos < b.pos;
  });
  Pick pick(n, 0);
  // Bisection on lambda over the breakpoints: the prefix totals only grow (every step costs > 0).
  std::vector<double> prefix(segs.size() + 1);
  prefix[0] = total_cost(p, pick, m);
  for (size_t k = 0; k < segs.size(); ++k) prefix[k + 1] = prefix[k] + segs[k].dc;
  size_t lo = 0, hi = segs.size();  // prefix[lo] fits; find the largest such
  while (lo < hi) {
    const size_t mid = lo + (hi - lo + 1) / 2;
    if (prefix[mid] <= c.budget + slack(c.budget))
      lo = mid;
    else
      hi = mid - 1;
  }
  std::vector<size_t> steps(n, 0);
  for (size_t k = 0; k < lo; ++k) ++steps[segs[k].layer];
  for (size_t l = 0; l < n; ++l) pick[l] = hulls[l][steps[l]];
  repair_cost(p, pick, m, c.budget);

  fill(p, pick, m, c.budget);
  return make_plan(p, pick, "greedy", c);
}

// --- dp -----------------------------------------------------------------------------------------

// Integer weights for a knapsack over `excess` (>= 0 per option) with `room` to spend.
struct Quantized {
  std::vector<std::vector<int64_t>> w;  // capacity + 1 marks an option that can never fit
  int64_t capacity = 0;
  double unit = 0;
  bool exact = false;
};

Quantized quantize(const std::vector<std::vector<double>>& excess, double room, int64_t resolution) {
  Quantized q;
  q.w.resize(excess.size());
  constexpr double kExactLimit = 9007199254740992.0;  // 2^53: doubles hold every integer below it
  bool integral = std::isfinite(room);
  int64_t g = 0;
  for (const auto& layer : excess)
    for (double x : layer) {
      if (!(x == std::floor(x) && x < kExactLimit)) integral = false;
      if (integral && x > 0) g = std::gcd(g, static_cast<int64_t>(x));
    }
  if (integral && (g == 0 || std::floor(room / static_cast<double>(g)) <= static_cast<double>(resolution))) {
    // Integer costs on a grid the resolution covers: the knapsack is exact.
    q.exact = true;
    q.unit = g == 0 ? 1.0 : static_cast<double>(g);
    q.capacity = g == 0 ? 0 : static_cast<int64_t>(std::floor(room / q.unit));
    for (size_t l = 0; l < excess.size(); ++l)
      for (double x : excess[l]) q.w[l].push_back(g == 0 ? 0 : static_cast<int64_t>(x) / g);
    return q;
  }
  q.capacity = resolution;
  q.unit = room / static_cast<double>(resolution);
  for (size_t l = 0; l < excess.size(); ++l)
    for (double x : excess[l]) {
      int64_t w = q.capacity + 1;
      if (x == 0) {
        w = 0;
      } else if (q.unit > 0) {
        // Rounded up, so that whole units never undercount the true excess.
        const double r = std::ceil(x / q.unit);
        if (r <= static_cast<double>(q.capacity)) w = static_cast<int64_t>(r);
      }
      q.w[l].push_back(w);
    }
  return q;
}

// Multiple-choice knapsack: one option per layer, sum of weights <= capacity, least sum of
// `primary`, ties broken by the least sum of `secondary`, then by the cheaper option index.
// nullopt when nothing fits.
std::optional<Pick> knapsack(const Quantized& q, const std::vector<std::vector<double>>& primary,
                             const std::vector<std::vector<double>>& secondary) {
  const size_t n = q.w.size();
  const size_t width = static_cast<size_t>(q.capacity) + 1;
  require(static_cast<double>(n) * static_cast<double>(width) <= static_cast<double>(int64_t{1} << 28),
          "dp: ", n, " layers x ", width, " budget units is too large a table; lower dp_resolution");
  constexpr double inf = std::numeric_limits<double>::infinity();
  // best[r]: the best plan of the layers so far whose weights sum to at most r.
  std::vector<double> a(width, 0.0), a2(width, 0.0), b(width), b2(width);
  std::vector<uint16_t> choice(n * width, 0);
  for (size_t l = 0; l < n; ++l) {
    for (size_t r = 0; r < width; ++r) {
      double v = inf, v2 = inf;
      uint16_t arg = 0;
      for (size_t k = 0; k < q.w[l].size(); ++k) {
        const int64_t w = q.w[l][k];
        if (w > static_cast<int64_t>(r)) continue;
        const size_t from = r - static_cast<size_t>(w);
        if (a[from] == inf) continue;
        const double cand = a[from] + primary[l][k], cand2 = a2[from] + secondary[l][k];
        if (cand < v || (cand == v && cand2 < v2)) {
          v = cand;
          v2 = cand2;
          arg = static_cast<uint16_t>(k);
        }
      }
      b[r] = v;
      b2[r] = v2;
      choice[l * width + r] = arg;
    }
    std::swap(a, b);
    std::swap(a2, b2);
  }
  if (n > 0 && a[width - 1] == inf) return std::nullopt;
  Pick pick(n, 0);
  size_t r = width - 1;
  for (size_t l = n; l-- > 0;) {
    const uint16_t k = choice[l * width + r];
    pick[l] = k;
    r -= static_cast<size_t>(q.w[l][k]);
  }
  return pick;
}

void check_resolution(const SolveOptions& o) {
  require(o.dp_resolution >= 1 && o.dp_resolution <= (int64_t{1} << 26), "dp_resolution must be in 1..",
          int64_t{1} << 26, ", got ", o.dp_resolution);
}

Plan solve_dp(const Table& p, const Constraint& c, const SolveOptions& o) {
  check_resolution(o);
  const Metric m = c.metric;
  const size_t n = p.layers.size();
  const double base = p.min_cost(m);
  std::vector<std::vector<double>> excess(n), err(n), cost(n);
  for (size_t l = 0; l < n; ++l)
    for (size_t k = 0; k < p.layers[l].options.size(); ++k) {
      // Pareto options are cheapest first: option 0 is the layer's minimum.
      excess[l].push_back(c_of(p, l, k, m) - c_of(p, l, 0, m));
      err[l].push_back(e_of(p, l, k));
      cost[l].push_back(c_of(p, l, k, m));
    }
  const Quantized q = quantize(excess, std::max(0.0, c.budget - base), o.dp_resolution);
  std::optional<Pick> pick = knapsack(q, err, cost);
  require(pick.has_value(), "dp: the cheapest plan does not fit its own quantisation");
  repair_cost(p, *pick, m, c.budget);
  // Rounding costs up leaves up to a unit per layer unspent; hand it out greedily.
  fill(p, *pick, m, c.budget);
  return make_plan(p, *pick, "dp", c);
}

// --- minimax ------------------------------------------------------------------------------------

Plan solve_minimax(const Table& p, const Constraint& c) {
  const Metric m = c.metric;
  const size_t n = p.layers.size();
  std::vector<double> levels;
  for (const LayerCandidates& l : p.layers)
    for (const Candidate& o : l.options) levels.push_back(o.error);
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  // The cheapest option with error <= eps; on a front errors fall as cost rises, so it is the first.
  const auto pick_for = [&](double eps) -> std::optional<Pick> {
    Pick pick(n);
    for (size_t l = 0; l < n; ++l) {
      const auto& os = p.layers[l].options;
      size_t k = 0;
      while (k < os.size() && os[k].error > eps) ++k;
      if (k == os.size()) return std::nullopt;
      pick[l] = k;
    }
    return pick;
  };
  const auto fits = [&](size_t i) {
    const auto pick = pick_for(levels[i]);
    return pick && total_cost(p, *pick, m) <= c.budget;
  };
  if (n == 0) return make_plan(p, {}, "minimax", c);
  // Larger eps: every layer's pick gets cheaper. The largest error lets every layer take its
  // cheapest option, which fits (checked before), so a smallest fitting eps exists.
  size_t lo = 0, hi = levels.size() - 1;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    if (fits(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  return make_plan(p, *pick_for(levels[lo]), "minimax", c);
}

}  // namespace

Plan solve(const Table& table, const Constraint& constraint, Solver solver, const SolveOptions& options) {
  table.validate();
  check_budget_value(constraint);
  check_feasible(table, constraint);
  switch (solver) {
    case Solver::uniform: return solve_uniform(table, constraint);
    case Solver::greedy: return solve_greedy(table.pareto(constraint.metric), constraint);
    case Solver::dp: return solve_dp(table.pareto(constraint.metric), constraint, options);
    case Solver::minimax: return solve_minimax(table.pareto(constraint.metric), constraint);
  }
  fail("unknown solver");
}

Plan solve_error_constrained(const Table& table, Metric metric, double max_error, const SolveOptions& options) {
  table.validate();
  check_resolution(options);
  require(std::isfinite(max_error) && max_error >= 0, "max_error must be finite and >= 0, got ", max_error);
  const Table p = table.pareto(metric);
  const size_t n = p.layers.size();
  // The most accurate plan takes every layer's last front option.
  Pick best(n);
  for (size_t l = 0; l < n; ++l) best[l] = p.layers[l].options.size() - 1;
  const double least = total_error(p, best);
  require(least <= max_error, "max_error ", num(max_error), " is below the least achievable total error, ", num(least),
          " with every layer at its most accurate option");
  std::vector<std::vector<double>> excess(n), err(n), cost(n);
  for (size_t l = 0; l < n; ++l)
    for (size_t k = 0; k < p.layers[l].options.size(); ++k) {
      excess[l].push_back(e_of(p, l, k) - e_of(p, l, best[l]));
      err[l].push_back(e_of(p, l, k));
      cost[l].push_back(c_of(p, l, k, metric));
    }
  const Quantized q = quantize(excess, max_error - least, options.dp_resolution);
  std::optional<Pick> pick = knapsack(q, cost, err);
  require(pick.has_value(), "dp: the most accurate plan does not fit its own quantisation");
  repair_error(p, *pick, metric, max_error);
  thin(p, *pick, metric, max_error);
  Plan plan = make_plan(p, *pick, "dp", {metric, total_cost(p, *pick, metric)});
  plan.max_error = max_error;
  return plan;
}

}  // namespace strata::budget
