// Per-layer token-reduction rates from measured sensitivity and the budget allocator.
#include "strata/token/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "strata/core/error.hpp"

namespace strata::token {

namespace {

std::string knob(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", fraction);
  return buf;
}

// FLOPs one token removed at layer l saves over the rest of the encoder (the token-linear terms): that
// layer's MLP and every later layer's projections and MLP.
double saving_per_token(const nn::BertConfig& c, int64_t l) {
  const auto dim = static_cast<double>(c.dim), hidden = static_cast<double>(c.hidden_dim);
  const double attention = 2.0 * 4.0 * dim * dim, mlp = 2.0 * 2.0 * dim * hidden;
  return mlp + (attention + mlp) * static_cast<double>(c.n_layers - 1 - l);
}

double top_fraction(const Sensitivity& s) { return *std::max_element(s.fractions.begin(), s.fractions.end()); }

// Whole FLOPs, so that the knapsack is exact whenever the costs' common divisor allows.
double layer_cost(const Sensitivity& s, const nn::BertConfig& c, int64_t l, double fraction) {
  return std::round(s.mean_length * saving_per_token(c, l) * (top_fraction(s) - fraction));
}

void check(const Sensitivity& s, const nn::BertConfig& c) {
  require(!s.fractions.empty() && static_cast<int64_t>(s.loss.size()) == c.n_layers && s.mean_length > 0,
          "token schedule: the sensitivity table has ", s.loss.size(), " layers and ", s.fractions.size(),
          " rates; the encoder has ", c.n_layers, " layers");
  for (const auto& row : s.loss)
    require(row.size() == s.fractions.size(), "token schedule: a sensitivity row has ", row.size(), " losses for ",
            s.fractions.size(), " rates");
}

// 1 - mean cosine between the embeddings with `options`' reduction and the dense ones, over every sequence.
double reduction_loss(const nn::BertEncoder& encoder, std::span<const nn::TokenBatch> batches,
                      const std::vector<Tensor>& dense, const ReducerOptions& options) {
  const int64_t dim = encoder.config().dim;
  Reducer reducer(options);
  double cos = 0;
  int64_t sequences = 0;
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const Tensor e = encoder.embed(batches[bi], &reducer);
    const float* a = e.view<const float>().data();
    const float* d = dense[bi].view<const float>().data();
    for (int64_t i = 0; i < batches[bi].size; ++i)
      cos += nn::cosine({a + i * dim, static_cast<size_t>(dim)}, {d + i * dim, static_cast<size_t>(dim)});
    sequences += batches[bi].size;
  }
  return std::max(0.0, 1.0 - cos / static_cast<double>(std::max<int64_t>(1, sequences)));
}

}  // namespace

Sensitivity measure_sensitivity(const nn::BertEncoder& encoder, std::span<const nn::TokenBatch> batches,
                                const SensitivityOptions& options) {
  require(!options.fractions.empty(), "token sensitivity: option 'fractions' is empty");
  for (double f : options.fractions)
    require(f > 0 && f < 0.5, "token sensitivity: option 'fractions' holds ", f, "; each rate must be in (0, 0.5)");
  require(!batches.empty(),
          "token sensitivity: option 'batches' is empty; "
          "calibration passages are needed");
  const nn::BertConfig& c = encoder.config();
  Sensitivity s;
  s.method = options.method;
  s.fractions = options.fractions;
  std::vector<Tensor> dense;
  int64_t sequences = 0, tokens = 0;
  for (const auto& b : batches) {
    dense.push_back(encoder.embed(b));
    sequences += b.size;
    for (int64_t i = 0; i < b.size; ++i) tokens += b.tokens(i);
  }
  require(sequences > 0, "token sensitivity: option 'batches' holds no sequence");
  s.mean_length = static_cast<double>(tokens) / static_cast<double>(sequences);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    std::vector<double> row;
    for (double f : options.fractions) {
      ReducerOptions ro;
      ro.method = options.method;
      ro.metric = options.metric;
      ro.proportional_attention = options.proportional_attention;
      ro.schedule.fraction.assign(static_cast<size_t>(c.n_layers), 0.0);
      ro.schedule.fraction[static_cast<size_t>(l)] = f;
      row.push_back(reduction_loss(encoder, batches, dense, ro));
    }
    s.loss.push_back(std::move(row));
  }
  return s;
}

budget::Table sensitivity_table(const Sensitivity& s, const nn::BertConfig& c) {
  check(s, c);
  const std::string method = std::string("token.") + std::string(method_name(s.method));
  budget::Table t;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    budget::LayerCandidates layer;
    layer.tensor = "encoder.layer." + std::to_string(l);
    layer.options.push_back({method, knob(0.0), {0, 0, layer_cost(s, c, l, 0.0)}, 0.0});
    for (size_t i = 0; i < s.fractions.size(); ++i)
      layer.options.push_back({method,
                               knob(s.fractions[i]),
                               {0, 0, layer_cost(s, c, l, s.fractions[i])},
                               s.loss[static_cast<size_t>(l)][i]});
    t.layers.push_back(std::move(layer));
  }
  return t;
}

double schedule_cost(const Sensitivity& s, const nn::BertConfig& c, const Schedule& schedule) {
  check(s, c);
  double cost = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const double f = static_cast<size_t>(l) < schedule.fraction.size() ? schedule.fraction[static_cast<size_t>(l)] : 0;
    cost += layer_cost(s, c, l, f);
  }
  return cost;
}

Schedule allocate_schedule(const Sensitivity& s, const nn::BertConfig& c, double budget, double max_total) {
  require(max_total > 0 && max_total < 1, "token schedule: option 'max_total' is ", max_total,
          "; it must be in (0, 1)");
  const budget::Table table = sensitivity_table(s, c);
  // The plan with each option's error raised by penalty x its rate.
  const auto solve = [&](double penalty) {
    budget::Table t = table;
    for (auto& layer : t.layers)
      for (auto& option : layer.options) option.error += penalty * std::stod(option.knob);
    const budget::Plan plan = budget::solve(t, {budget::Metric::flops, budget}, budget::Solver::dp);
    Schedule out;
    for (const auto& choice : plan.choices) out.fraction.push_back(std::stod(choice.knob));
    return out;
  };
  constexpr double kSlack = 1e-9;
  Schedule out = solve(0);
  if (out.total() > max_total + kSlack) {
    double lo = 0, hi = 1e-3;
    while (solve(hi).total() > max_total + kSlack) {
      lo = hi;
      hi *= 4;
      require(hi < 1e6, "token schedule: no plan within option 'budget' ", budget, " removes at most option 'max_total' ",
              max_total, " of the tokens");
    }
    for (int i = 0; i < 40; ++i) {
      const double mid = 0.5 * (lo + hi);
      (solve(mid).total() > max_total + kSlack ? lo : hi) = mid;
    }
    out = solve(hi);
  }
  return out;
}

double schedule_flops(const nn::BertConfig& c, const ReducerOptions& reducer, std::span<const int64_t> lengths) {
  const Reducer r(reducer);
  std::vector<LayerStats> stats(static_cast<size_t>(c.n_layers));
  for (int64_t n : lengths) {
    const std::vector<int64_t> removed = r.removals(n);
    int64_t current = n;
    for (size_t l = 0; l < stats.size(); ++l) {
      stats[l].tokens_in += current;
      stats[l].attention_pairs += static_cast<double>(current) * static_cast<double>(current);
      if (l < removed.size()) current -= removed[l];
      stats[l].tokens_out += current;
    }
  }
  return encoder_flops(c, stats);
}

SearchResult search_schedule(const nn::BertEncoder& encoder, std::span<const nn::TokenBatch> batches,
                             const SearchOptions& o) {
  require(!batches.empty(), "token schedule search: option 'batches' is empty; calibration passages are needed");
  require(o.total > 0 && o.total < 1, "token schedule search: option 'total' is ", o.total, "; it must be in (0, 1)");
  require(o.step > 0 && o.step <= o.total, "token schedule search: option 'step' is ", o.step,
          "; it must be in (0, total]");
  const nn::BertConfig& c = encoder.config();
  std::vector<int64_t> lengths;
  std::vector<Tensor> dense;
  for (const auto& b : batches) {
    dense.push_back(encoder.embed(b));
    for (int64_t i = 0; i < b.size; ++i) lengths.push_back(b.tokens(i));
  }
  const double dense_flops = dense_encoder_flops(c, lengths);
  ReducerOptions ro = o.reducer;
  // FLOPs relative to dense, or infinity for a schedule the sequences cannot take.
  const auto flops = [&](const Schedule& s) {
    ro.schedule = s;
    try {
      return schedule_flops(c, ro, lengths) / dense_flops;
    } catch (const Error&) {
      return static_cast<double>(INFINITY);
    }
  };
  SearchResult out;
  const auto loss = [&](const Schedule& s) {
    ro.schedule = s;
    ++out.evaluations;
    return reduction_loss(encoder, batches, dense, ro);
  };
  // The start: the constant schedule moved toward the decreasing one as far as the FLOPs need.
  const Schedule constant = Schedule::constant(c.n_layers, o.total), decreasing = Schedule::decreasing(c.n_layers, o.total);
  require(flops(decreasing) <= o.max_flops, "token schedule search: option 'max_flops' is ", o.max_flops,
          "; even the decreasing schedule of total ", o.total, " needs ", flops(decreasing));
  const auto blend = [&](double a) {
    Schedule s;
    for (size_t l = 0; l < constant.fraction.size(); ++l)
      s.fraction.push_back((1 - a) * constant.fraction[l] + a * decreasing.fraction[l]);
    return s;
  };
  double lo = 0, hi = 1;
  if (flops(constant) <= o.max_flops) hi = 0;
  for (int i = 0; i < 30 && hi > 0; ++i) {
    const double mid = 0.5 * (lo + hi);
    (flops(blend(mid)) <= o.max_flops ? hi : lo) = mid;
  }
  out.schedule = blend(hi);
  out.loss = loss(out.schedule);
  // Moves of `step` (from, to): one to a neighbouring layer, or two in opposite directions (i to i + 1 and j to
  // j - 1, or back), which leave the FLOPs about where they were.
  std::vector<std::vector<std::pair<size_t, size_t>>> moves;
  const size_t layers = out.schedule.fraction.size();
  for (size_t i = 0; i + 1 < layers; ++i) {
    moves.push_back({{i, i + 1}});
    moves.push_back({{i + 1, i}});
    for (size_t j = i + 2; j < layers; ++j) {
      moves.push_back({{i, i + 1}, {j, j - 1}});
      moves.push_back({{i + 1, i}, {j - 1, j}});
    }
  }
  for (int64_t round = 0; round < o.max_rounds; ++round) {
    Schedule best = out.schedule;
    double best_loss = out.loss;
    for (const auto& move : moves) {
      Schedule s = out.schedule;
      bool valid = true;
      for (const auto& [from, to] : move) {
        valid = valid && s.fraction[from] >= o.step - 1e-12;
        s.fraction[from] = std::max(0.0, s.fraction[from] - o.step);
        s.fraction[to] += o.step;
      }
      if (!valid || flops(s) > o.max_flops) continue;
      const double l = loss(s);
      if (l < best_loss) {
        best_loss = l;
        best = s;
      }
    }
    if (best_loss >= out.loss) break;
    out.schedule = best;
    out.loss = best_loss;
  }
  out.flops = flops(out.schedule);
  return out;
}

}  // namespace strata::token
