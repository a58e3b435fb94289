// The candidate table: metrics, validation, Pareto fronts, lower convex hulls and its JSON form.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <utility>

#include "strata/budget/allocator.hpp"
#include "strata/budget/json_reader.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {

Metric parse_metric(std::string_view name) {
  if (name == "bytes") return Metric::bytes;
  if (name == "params") return Metric::params;
  if (name == "flops") return Metric::flops;
  fail("unknown budget metric '", name, "'; known: bytes params flops");
}

std::string_view metric_name(Metric m) {
  switch (m) {
    case Metric::bytes: return "bytes";
    case Metric::params: return "params";
    case Metric::flops: return "flops";
  }
  return "bytes";
}

double cost_of(const compress::Cost& cost, Metric m) {
  switch (m) {
    case Metric::bytes: return cost.bytes;
    case Metric::params: return cost.params;
    case Metric::flops: return cost.flops;
  }
  return cost.bytes;
}

namespace {

// Option indices of a layer sorted by (cost, error), first listed first among equals.
std::vector<size_t> by_cost(const LayerCandidates& layer, Metric m) {
  std::vector<size_t> order(layer.options.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const double ca = layer.options[a].cost_of(m), cb = layer.options[b].cost_of(m);
    if (ca != cb) return ca < cb;
    return layer.options[a].error < layer.options[b].error;
  });
  return order;
}

// Indices of the Pareto front, cheapest first (errors strictly falling).
std::vector<size_t> front_of(const LayerCandidates& layer, Metric m) {
  std::vector<size_t> front;
  for (size_t i : by_cost(layer, m)) {
    // Sorted by cost then error, an option survives only if it is more accurate than everything
    // at most as expensive; an equally cheap one listed earlier already has an error <= its own.
    if (front.empty() || layer.options[i].error < layer.options[front.back()].error) front.push_back(i);
  }
  return front;
}

void check_cost(const compress::Cost& c, const std::string& where) {
  for (auto [name, v] : {std::pair<const char*, double>{"bytes", c.bytes}, {"params", c.params}, {"flops", c.flops}})
    require(std::isfinite(v) && v >= 0, where, ": cost.", name, " is ", v, " (must be finite and >= 0)");
}

}  // namespace

nlohmann::json cost_to_json(const compress::Cost& c) {
  return {{"bytes", c.bytes}, {"params", c.params}, {"flops", c.flops}};
}

compress::Cost cost_from_json(const JsonReader& r) {
  r.allow_only({"bytes", "params", "flops"});
  compress::Cost c;
  c.bytes = r.at("bytes").as_nonnegative_number();
  c.params = r.at("params").as_nonnegative_number();
  c.flops = r.at("flops").as_nonnegative_number();
  return c;
}

Table Table::pareto(Metric m) const {
  validate();
  Table out;
  out.layers.reserve(layers.size());
  for (const LayerCandidates& l : layers) {
    LayerCandidates p{l.tensor, l.params, {}};
    for (size_t i : front_of(l, m)) p.options.push_back(l.options[i]);
    out.layers.push_back(std::move(p));
  }
  return out;
}

namespace {

// Sum over layers of each layer's cheapest (want_max false) or dearest option under metric m.
double extreme_cost(const std::vector<LayerCandidates>& layers, Metric m, bool want_max) {
  double total = 0;
  for (const LayerCandidates& l : layers) {
    require(!l.options.empty(), "tensor '", l.tensor, "': no options");
    double c = l.options[0].cost_of(m);
    for (const Candidate& o : l.options) c = want_max ? std::max(c, o.cost_of(m)) : std::min(c, o.cost_of(m));
    total += c;
  }
  return total;
}

}  // namespace

double Table::min_cost(Metric m) const { return extreme_cost(layers, m, false); }
double Table::max_cost(Metric m) const { return extreme_cost(layers, m, true); }

int64_t Table::params() const {
  int64_t n = 0;
  for (const LayerCandidates& l : layers) n += l.params;
  return n;
}

const LayerCandidates* Table::find(std::string_view tensor) const {
  for (const LayerCandidates& l : layers)
    if (l.tensor == tensor) return &l;
  return nullptr;
}

void Table::validate() const {
  std::set<std::string_view> names;
  for (size_t li = 0; li < layers.size(); ++li) {
    const LayerCandidates& l = layers[li];
    require(!l.tensor.empty(), "candidate table: layer ", li, " has no tensor name");
    require(names.insert(l.tensor).second, "candidate table: tensor '", l.tensor, "' appears twice");
    require(l.params >= 0, "tensor '", l.tensor, "': params is ", l.params, " (must be >= 0)");
    require(!l.options.empty(), "tensor '", l.tensor, "': no options");
    require(l.options.size() <= 65535, "tensor '", l.tensor, "': ", l.options.size(), " options (at most 65535)");
    std::set<std::pair<std::string_view, std::string_view>> seen;
    for (const Candidate& o : l.options) {
      const std::string where = "tensor '" + l.tensor + "': option " + o.method + ":" + o.knob;
      require(!o.method.empty(), "tensor '", l.tensor, "': an option has no method");
      require(seen.emplace(o.method, o.knob).second, where, " appears twice");
      check_cost(o.cost, where);
      require(std::isfinite(o.error) && o.error >= 0, where, ": error is ", o.error, " (must be finite and >= 0)");
    }
  }
}

std::vector<size_t> lower_convex_hull(const LayerCandidates& layer, Metric m) {
  require(!layer.options.empty(), "tensor '", layer.tensor, "': no options");
  const std::vector<size_t> front = front_of(layer, m);
  const auto& o = layer.options;
  const auto c = [&](size_t i) { return o[i].cost_of(m); };
  const auto e = [&](size_t i) { return o[i].error; };
  std::vector<size_t> hull;
  for (size_t i : front) {
    // Drop the last hull point while it lies strictly above the chord from the one before it to i,
    // i.e. while the step into it saves less error per cost than the step out of it would.
    while (hull.size() >= 2) {
      const size_t a = hull[hull.size() - 2], b = hull.back();
      // (e_a - e_b) / (c_b - c_a) < (e_b - e_i) / (c_i - c_b), cross-multiplied (denominators > 0).
      if ((e(a) - e(b)) * (c(i) - c(b)) < (e(b) - e(i)) * (c(b) - c(a)))
        hull.pop_back();
      else
        break;
    }
    hull.push_back(i);
  }
  return hull;
}

Constraint bits_per_weight(const Table& table, double bpw) {
  require(std::isfinite(bpw) && bpw > 0, "bits per weight must be finite and > 0, got ", bpw);
  const int64_t n = table.params();
  require(n > 0, "bits per weight: the candidate table has no weights (params sum to ", n, ")");
  return {Metric::bytes, bpw * static_cast<double>(n) / 8.0};
}

nlohmann::json Table::to_json() const {
  nlohmann::json ls = nlohmann::json::array();
  for (const LayerCandidates& l : layers) {
    nlohmann::json os = nlohmann::json::array();
    for (const Candidate& o : l.options)
      os.push_back({{"method", o.method}, {"knob", o.knob}, {"cost", cost_to_json(o.cost)}, {"error", o.error}});
    ls.push_back({{"tensor", l.tensor}, {"params", l.params}, {"options", std::move(os)}});
  }
  return {{"format", "strata.candidates"}, {"version", 1}, {"layers", std::move(ls)}};
}

Table Table::from_json(const nlohmann::json& j) {
  const JsonReader root(j, "candidate table");
  root.allow_only({"format", "version", "layers"});
  if (auto f = root.find("format"); f && f->as_string() != "strata.candidates")
    f->fail("expected \"strata.candidates\", got \"", f->as_string(), "\"");
  if (auto v = root.find("version"); v && v->as_int() != 1) v->fail("unsupported version ", v->as_int());
  Table t;
  const JsonReader ls = root.at("layers");
  for (size_t i = 0; i < ls.size(); ++i) {
    const JsonReader lr = ls[i];
    lr.allow_only({"tensor", "params", "options"});
    LayerCandidates l;
    l.tensor = lr.at("tensor").as_nonempty_string();
    if (auto p = lr.find("params")) {
      l.params = p->as_int();
      if (l.params < 0) p->fail("must be >= 0, got ", l.params);
    }
    const JsonReader os = lr.at("options");
    if (os.size() == 0) os.fail("no options for tensor '", l.tensor, "'");
    for (size_t k = 0; k < os.size(); ++k) {
      const JsonReader orr = os[k];
      orr.allow_only({"method", "knob", "cost", "error"});
      Candidate c;
      c.method = orr.at("method").as_nonempty_string();
      c.knob = orr.at("knob").as_string();
      c.cost = cost_from_json(orr.at("cost"));
      c.error = orr.at("error").as_nonnegative_number();
      l.options.push_back(std::move(c));
    }
    t.layers.push_back(std::move(l));
  }
  try {
    t.validate();
  } catch (const Error& e) {
    fail("candidate table: ", e.what());
  }
  return t;
}

}  // namespace strata::budget
