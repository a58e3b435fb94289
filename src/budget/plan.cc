// A plan: one choice per layer, its totals, and its JSON file form (written atomically).
#include <cmath>
#include <set>

#include "strata/budget/allocator.hpp"
#include "strata/budget/json_reader.hpp"
#include "strata/io/mapped_file.hpp"

namespace strata::budget {

compress::Cost Plan::total_cost() const {
  compress::Cost t;
  for (const Choice& c : choices) {
    t.bytes += c.cost.bytes;
    t.params += c.cost.params;
    t.flops += c.cost.flops;
  }
  return t;
}

double Plan::total_error() const {
  double e = 0;
  for (const Choice& c : choices) e += c.predicted_error;
  return e;
}

double Plan::bits_per_weight(int64_t params) const {
  require(params > 0, "plan: bits per weight needs a positive weight count, got ", params);
  return 8.0 * total_cost().bytes / static_cast<double>(params);
}

const Choice* Plan::find(std::string_view tensor) const {
  for (const Choice& c : choices)
    if (c.tensor == tensor) return &c;
  return nullptr;
}

namespace {

// One layout for both JSON flavours: nlohmann::json (keys sorted) for callers, ordered_json for
// the file, which people read top-down: what it is, the budget, the totals, then the choices.
template <class Json>
Json cost_json(const compress::Cost& c) {
  Json j;
  j["bytes"] = c.bytes;
  j["params"] = c.params;
  j["flops"] = c.flops;
  return j;
}

template <class Json>
Json plan_json(const Plan& p) {
  Json j;
  j["format"] = "strata.plan";
  j["version"] = 1;
  j["solver"] = p.solver;
  Json c;
  c["metric"] = std::string(metric_name(p.constraint.metric));
  c["budget"] = p.constraint.budget;
  j["constraint"] = std::move(c);
  if (p.max_error) j["max_error"] = *p.max_error;
  // Totals are for the reader of the file; loading recomputes them from the choices.
  j["total_cost"] = cost_json<Json>(p.total_cost());
  j["total_error"] = p.total_error();
  Json cs = Json::array();
  for (const Choice& ch : p.choices) {
    Json x;
    x["tensor"] = ch.tensor;
    x["method"] = ch.method;
    x["knob"] = ch.knob;
    x["cost"] = cost_json<Json>(ch.cost);
    x["predicted_error"] = ch.predicted_error;
    // NaN has no JSON spelling: an unmeasured layer is written as null.
    x["measured_error"] = std::isnan(ch.measured_error) ? Json(nullptr) : Json(ch.measured_error);
    cs.push_back(std::move(x));
  }
  j["choices"] = std::move(cs);
  return j;
}

}  // namespace

nlohmann::json Plan::to_json() const { return plan_json<nlohmann::json>(*this); }

namespace {

Plan plan_from(const JsonReader& root) {
  root.allow_only({"format", "version", "solver", "constraint", "max_error", "total_cost", "total_error", "choices"});
  if (auto f = root.find("format"); f && f->as_string() != "strata.plan")
    f->fail("expected \"strata.plan\", got \"", f->as_string(), "\"");
  if (auto v = root.find("version"); v && v->as_int() != 1) v->fail("unsupported version ", v->as_int());
  Plan p;
  p.solver = root.at("solver").as_string();
  const JsonReader cr = root.at("constraint");
  cr.allow_only({"metric", "budget"});
  const JsonReader mr = cr.at("metric");
  try {
    p.constraint.metric = parse_metric(mr.as_string());
  } catch (const Error& e) {
    mr.fail(e.what());
  }
  p.constraint.budget = cr.at("budget").as_nonnegative_number();
  if (auto m = root.find("max_error")) p.max_error = m->as_nonnegative_number();
  const JsonReader cs = root.at("choices");
  std::set<std::string> seen;
  for (size_t i = 0; i < cs.size(); ++i) {
    const JsonReader r = cs[i];
    r.allow_only({"tensor", "method", "knob", "cost", "predicted_error", "measured_error"});
    Choice c;
    c.tensor = r.at("tensor").as_nonempty_string();
    if (!seen.insert(c.tensor).second) r.at("tensor").fail("tensor '", c.tensor, "' is chosen twice");
    c.method = r.at("method").as_nonempty_string();
    c.knob = r.at("knob").as_string();
    c.cost = cost_from_json(r.at("cost"));
    c.predicted_error = r.at("predicted_error").as_nonnegative_number();
    if (auto m = r.find("measured_error")) c.measured_error = m->as_nonnegative_number();
    p.choices.push_back(std::move(c));
  }
  return p;
}

}  // namespace

Plan Plan::from_json(const nlohmann::json& j) { return plan_from(JsonReader(j, "plan")); }

void Plan::save(const std::filesystem::path& path) const {
  const std::string text = plan_json<nlohmann::ordered_json>(*this).dump(2) + "\n";
  io::AtomicFileWriter w(path);
  w.write(text.data(), text.size());
  w.commit();
}

Plan Plan::load(const std::filesystem::path& path) {
  const nlohmann::json j = read_json_file(path);
  return plan_from(JsonReader(j, path.string()));
}

}  // namespace strata::budget
