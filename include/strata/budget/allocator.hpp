#pragma once
// Layer-wise budget allocation: every layer offers options (a compressor and its knob, with the
// option's cost and its relative output error); the allocator picks one option per layer so that
// the summed cost meets one global budget and the damage is least. It never sees a tensor, so one
// allocator mixes quantization, pruning and low-rank forms under one budget.
//
// Solvers (docs/budget.md has the math, the complexity and the guarantees):
//   uniform  the same (method, knob) everywhere: the baseline every mixed plan must beat
//   greedy   Lagrangian on each layer's lower convex hull, then a greedy fill of what is left
//   dp       exact multiple-choice knapsack on costs rounded up to budget units
//   minimax  the smallest worst-layer error that fits
// and two searches built on them: the cheapest plan under a total-error cap, and an evolutionary
// search that ranks whole plans by a measured fitness (the summed per-layer error is only a proxy).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/compress/compressor.hpp"

namespace strata::budget {

enum class Metric { bytes, params, flops };
// "bytes", "params", "flops"; throws strata::Error listing them for anything else.
Metric parse_metric(std::string_view name);
std::string_view metric_name(Metric m);
double cost_of(const compress::Cost& cost, Metric m);

class JsonReader;
// A cost as {"bytes": .., "params": .., "flops": ..}; reading checks each is finite and >= 0.
nlohmann::json cost_to_json(const compress::Cost& cost);
compress::Cost cost_from_json(const JsonReader& reader);

// One option of one layer.
struct Candidate {
  std::string method;  // compressor registry name, e.g. "quant.ggml"
  std::string knob;    // e.g. "q3_k"
  compress::Cost cost;
  double error = 0;  // additive damage proxy the solvers minimise (finite, >= 0)
  double cost_of(Metric m) const { return budget::cost_of(cost, m); }
};

struct LayerCandidates {
  std::string tensor;  // "blk.3.ffn_down.weight"
  int64_t params = 0;  // dense weight count (for bits per weight)
  std::vector<Candidate> options;
};

struct Table {
  std::vector<LayerCandidates> layers;

  // Drops, per layer, options that another option beats or ties in both cost (under m) and error;
  // the survivors sorted by cost ascending (so errors strictly descending). Of exact duplicates the
  // first listed survives. Keeps at least one option per layer.
  Table pareto(Metric m) const;
  // Sums over layers of each layer's cheapest / dearest option, added in table order (the order
  // every plan total is added in, so that a budget equal to min_cost() is met exactly).
  double min_cost(Metric m) const;
  double max_cost(Metric m) const;
  int64_t params() const;  // sum of the layers' dense weight counts
  const LayerCandidates* find(std::string_view tensor) const;

  // Throws strata::Error naming the tensor (and option) unless: tensor names are unique and
  // non-empty, every layer has an option, params >= 0, costs are finite and >= 0, errors finite
  // and >= 0, and no (method, knob) appears twice in a layer. Every solver calls it first.
  void validate() const;

  nlohmann::json to_json() const;
  static Table from_json(const nlohmann::json& j);  // errors name the field ("layers[3].options[1].error")
};

// Indices into `layer.options` of its lower convex hull in the (cost under m, error) plane,
// cheapest first: the points a Lagrangian relaxation can ever pick. Starts at the cheapest option
// (least error among equally cheap ones) and ends at the least-error option; along it the error
// decrease per unit cost never grows. Collinear points are kept.
std::vector<size_t> lower_convex_hull(const LayerCandidates& layer, Metric m);

// A budget on the total cost over the table's layers.
struct Constraint {
  Metric metric = Metric::bytes;
  double budget = 0;
};
// Bits per weight -> a bytes budget for the table's layers: bpw * params / 8.
Constraint bits_per_weight(const Table& table, double bpw);

struct Choice {
  std::string tensor, method, knob;
  compress::Cost cost;
  double predicted_error = 0;  // the table's error for this option
  double measured_error = std::numeric_limits<double>::quiet_NaN();  // filled in after applying, if measured

  // The choice of `option` for `tensor`, as a solver records it.
  static Choice of(const std::string& tensor, const Candidate& option) {
    return {tensor, option.method, option.knob, option.cost, option.error};
  }
};

struct Plan {
  std::string solver;  // "greedy", "dp", ..., "greedy+evolve"
  Constraint constraint;
  std::vector<Choice> choices;  // one per table layer, in table order
  // Set by solve_error_constrained: the cap on the total predicted error the plan was solved for.
  std::optional<double> max_error;

  compress::Cost total_cost() const;  // added in choice order
  double total_error() const;         // sum of predicted errors, in choice order
  double bits_per_weight(int64_t params) const;  // 8 * total bytes / params
  const Choice* find(std::string_view tensor) const;

  nlohmann::json to_json() const;
  static Plan from_json(const nlohmann::json& j);  // errors name the field ("choices[2].cost.bytes")
  // Written atomically (a crash never leaves a half-written plan), as indented JSON.
  void save(const std::filesystem::path& path) const;
  static Plan load(const std::filesystem::path& path);  // errors name the file and the field
};

enum class Solver { uniform, greedy, dp, minimax };
// "uniform", "greedy", "dp", "minimax"; throws strata::Error listing them for anything else.
Solver parse_solver(std::string_view name);
std::string_view solver_name(Solver s);

struct SolveOptions {
  // DP resolution: the budget above the cheapest plan is cut into this many units and every cost
  // above its layer's cheapest is rounded up to whole units. When all costs are integers and the
  // budget above the cheapest plan is at most this many multiples of their common divisor, the
  // units are that divisor and the DP is exact. Memory: layers x (resolution + 1) x 2 bytes.
  int64_t dp_resolution = 4096;
};

// One option per layer with total cost (under constraint.metric, added in table order) <= budget.
// Throws strata::Error naming the budget, the smallest achievable cost and the metric when no plan
// fits (for uniform: the smallest uniform plan), and naming the tensor for a malformed table.
Plan solve(const Table& table, const Constraint& constraint, Solver solver, const SolveOptions& options = {});

// The cheapest plan (under metric) whose total predicted error is <= max_error: exact DP over
// errors rounded up to units of (max_error - least achievable error) / dp_resolution, so the cap
// always holds; its cost is at most that of the best plan under a cap tightened by layers x unit,
// and optimal when all errors are integers that fit the resolution (as for dp above). Throws when
// even the most accurate plan exceeds max_error, naming both. plan.constraint.budget is the cost
// the plan reached; plan.max_error is the cap.
Plan solve_error_constrained(const Table& table, Metric metric, double max_error, const SolveOptions& options = {});

// EvoPress-style search over whole plans. Each layer's options are levels ordered by cost (under
// constraint.metric). An offspring makes 1..max_swaps swaps to its parent: one layer goes up one
// level, then other layers, drawn at random, go down one level each until the total fits the
// budget again. The parent survives until an offspring's fitness is strictly lower (elitist), so
// the best fitness never gets worse. Plans already evaluated are not evaluated again. The same
// seed gives the same sequence of plans on every platform.
struct EvolveOptions {
  int generations = 50;
  int offspring = 8;  // offspring per generation
  int max_swaps = 3;  // each offspring makes 1..max_swaps swaps
  uint64_t seed = 1;
  std::function<void(int generation, double best)> progress;  // after each generation, from 1
  // The start plan's fitness when the caller has measured it already (finite): not measured again.
  double start_fitness = std::numeric_limits<double>::quiet_NaN();
};
struct EvolveResult {
  Plan best;
  double best_fitness = 0, start_fitness = 0;
  int evaluations = 0;          // plans measured, the start plan's included unless its fitness was given
  std::vector<double> history;  // best fitness after each generation
};
// `fitness` is the measured damage of a whole plan (lower is better, e.g. KL divergence of the
// compressed model to the dense one); it must return a finite number. `start` must choose an option
// of the table for every layer, in table order, and fit the constraint.
EvolveResult evolve(const Table& table, const Constraint& constraint, const Plan& start,
                    const std::function<double(const Plan&)>& fitness, const EvolveOptions& options = {});
// The same search with the fitness of a generation's offspring measured together (one value per
// plan, in order), for a fitness that is cheaper over several plans at once (a variant pass over
// models sharing most layers). Draws, selection and the result are those of the one-plan form.
using BatchFitness = std::function<std::vector<double>(const std::vector<Plan>&)>;
EvolveResult evolve(const Table& table, const Constraint& constraint, const Plan& start, const BatchFitness& fitness,
                    const EvolveOptions& options = {});

}  // namespace strata::budget
