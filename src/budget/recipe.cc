// Recipe files: strict parsing (every error names the recipe and the field), the JSON they are
// written back as, rule lookup by glob, and the budget they imply for a table.
#include "strata/budget/recipe.hpp"

#include <cmath>
#include <set>

#include "strata/budget/json_reader.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/core/error.hpp"
#include "strata/nn/dataset.hpp"

namespace strata::budget {

bool glob_match(std::string_view pattern, std::string_view text) {
  // Iterative matching with one backtrack point: on a mismatch, let the last '*' swallow one more
  // character. Linear in practice, O(|pattern| |text|) at worst, no recursion.
  size_t p = 0, t = 0;
  size_t star = std::string_view::npos, star_t = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || (pattern[p] != '*' && pattern[p] == text[t]))) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_t = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_t;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::pair<std::string, std::string> split_pin(std::string_view pin, std::string_view where) {
  // Knobs may hold ':' themselves ("pattern=2:4"); compressor names never do.
  const size_t colon = pin.find(':');
  require(colon != std::string_view::npos && colon > 0 && colon + 1 < pin.size(), where, ": '", pin,
          "' is not COMPRESSOR:KNOB (e.g. quant.ggml:q8_0)");
  return {std::string(pin.substr(0, colon)), std::string(pin.substr(colon + 1))};
}

namespace {

void check_compressor(const JsonReader& r, const std::string& name) {
  try {
    compress::find_compressor(name);
  } catch (const Error& e) {
    r.fail(e.what());
  }
}

MethodSpec read_method(const JsonReader& r) {
  MethodSpec m;
  if (r.value().is_string()) {
    m.compressor = r.as_nonempty_string();
    check_compressor(r, m.compressor);
    return m;
  }
  r.allow_only({"compressor", "knobs"});
  const JsonReader c = r.at("compressor");
  m.compressor = c.as_nonempty_string();
  check_compressor(c, m.compressor);
  if (auto ks = r.find("knobs")) {
    std::set<std::string> seen;
    for (size_t i = 0; i < ks->size(); ++i) {
      const JsonReader k = (*ks)[i];
      std::string knob = k.as_nonempty_string();
      if (!seen.insert(knob).second) k.fail("knob '", knob, "' is listed twice");
      m.knobs.push_back(std::move(knob));
    }
  }
  return m;
}

Rule read_rule(const JsonReader& r) {
  r.allow_only({"match", "methods", "pin", "min_bits", "skip"});
  Rule rule;
  rule.match = r.at("match").as_nonempty_string();
  if (auto s = r.find("skip")) rule.skip = s->as_bool();
  if (auto p = r.find("pin")) {
    const std::string pin = p->as_nonempty_string();
    const auto [compressor, knob] = split_pin(pin, p->where());
    check_compressor(*p, compressor);
    rule.pin = pin;
  }
  if (auto ms = r.find("methods")) {
    if (ms->size() == 0) ms->fail("is empty; list at least one compressor");
    std::set<std::string> seen;
    for (size_t i = 0; i < ms->size(); ++i) {
      MethodSpec m = read_method((*ms)[i]);
      if (!seen.insert(m.compressor).second)
        (*ms)[i].fail("compressor '", m.compressor, "' appears twice in this rule; list its knobs once");
      rule.methods.push_back(std::move(m));
    }
  }
  if (auto b = r.find("min_bits")) {
    rule.min_bits = b->as_number();
    if (*rule.min_bits <= 0) b->fail("must be > 0, got ", *rule.min_bits);
    if (rule.methods.empty()) b->fail("applies only to a rule with methods");
  }
  if (rule.skip && (rule.pin || !rule.methods.empty()))
    r.at("skip").fail("a skipped tensor takes no pin or methods");
  if (rule.pin && !rule.methods.empty()) r.at("pin").fail("give either pin or methods, not both");
  if (!rule.skip && !rule.pin && rule.methods.empty()) r.fail("needs methods, pin or skip");
  return rule;
}

int read_count(const JsonReader& r, int64_t least) {
  const int64_t v = r.as_int();
  if (v < least || v > 1000000000) r.fail("must be in ", least, "..1000000000, got ", v);
  return static_cast<int>(v);
}

}  // namespace

Recipe Recipe::from_json(const nlohmann::json& j, std::string_view source) {
  const JsonReader root(j, std::string(source));
  root.allow_only({"name", "description", "rules", "bits_per_weight", "bytes", "params", "flops", "like", "solver",
                   "evolve", "generations", "offspring", "max_swaps", "seed", "calib_text", "calib_slice", "calib_sequences",
                   "calib_length", "error_mode"});
  Recipe r;
  if (auto v = root.find("name")) r.name = v->as_string();
  if (auto v = root.find("description")) r.description = v->as_string();
  const JsonReader rules = root.at("rules");
  if (rules.size() == 0) rules.fail("is empty; a recipe needs at least one rule");
  for (size_t i = 0; i < rules.size(); ++i) r.rules.push_back(read_rule(rules[i]));

  const char* budget_key = nullptr;
  for (auto [key, field] : {std::pair<const char*, std::optional<double>*>{"bits_per_weight", &r.bits_per_weight},
                            {"bytes", &r.bytes},
                            {"params", &r.params},
                            {"flops", &r.flops}}) {
    auto v = root.find(key);
    if (!v) continue;
    if (budget_key) v->fail("a second budget (", budget_key, " is given too); a recipe has one budget");
    budget_key = key;
    const double x = v->as_number();
    if (x <= 0) v->fail("budget must be > 0, got ", x);
    *field = x;
  }

  if (auto v = root.find("like")) {
    if (budget_key) v->fail("a second budget (", budget_key, " is given too); a recipe has one budget");
    r.like = v->as_string();
    if (r.like->empty()) v->fail("is empty; give a uniform request such as \"quant.ggml:q3_k\"");
  }

  if (auto v = root.find("solver")) {
    r.solver = v->as_string();
    try {
      parse_solver(r.solver);
    } catch (const Error& e) {
      v->fail(e.what());
    }
  }
  if (auto v = root.find("evolve")) r.evolve = v->as_bool();
  if (auto v = root.find("generations")) r.generations = read_count(*v, 0);
  if (auto v = root.find("offspring")) r.offspring = read_count(*v, 1);
  if (auto v = root.find("max_swaps")) r.max_swaps = read_count(*v, 1);
  if (auto v = root.find("seed")) r.seed = v->as_uint();
  if (auto v = root.find("calib_text")) r.calib_text = v->as_string();
  if (auto v = root.find("calib_slice")) {
    r.calib_slice = v->as_nonempty_string();
    try {
      nn::TextSlice::parse({}, r.calib_slice);
    } catch (const Error& e) {
      v->fail(e.what());
    }
  }
  if (auto v = root.find("calib_sequences")) r.calib_sequences = read_count(*v, 1);
  if (auto v = root.find("calib_length")) r.calib_length = read_count(*v, 2);
  if (auto v = root.find("error_mode")) {
    r.error_mode = v->as_string();
    if (r.error_mode != "output" && r.error_mode != "weight" && r.error_mode != "kl")
      v->fail("unknown error mode '", r.error_mode, "'; known: output weight kl");
  }
  return r;
}

Recipe Recipe::load(const std::filesystem::path& path) {
  Recipe r = from_json(read_json_file(path), path.string());
  if (r.name.empty()) r.name = path.stem().string();
  return r;
}

nlohmann::json Recipe::to_json() const {
  nlohmann::json rs = nlohmann::json::array();
  for (const Rule& rule : rules) {
    nlohmann::json j = {{"match", rule.match}};
    if (rule.skip) j["skip"] = true;
    if (rule.pin) j["pin"] = *rule.pin;
    if (!rule.methods.empty()) {
      nlohmann::json ms = nlohmann::json::array();
      for (const MethodSpec& m : rule.methods) {
        nlohmann::json mj = {{"compressor", m.compressor}};
        if (!m.knobs.empty()) mj["knobs"] = m.knobs;
        ms.push_back(std::move(mj));
      }
      j["methods"] = std::move(ms);
    }
    if (rule.min_bits) j["min_bits"] = *rule.min_bits;
    rs.push_back(std::move(j));
  }
  nlohmann::json j = {{"name", name}, {"description", description}, {"rules", std::move(rs)}};
  if (bits_per_weight) j["bits_per_weight"] = *bits_per_weight;
  if (bytes) j["bytes"] = *bytes;
  if (params) j["params"] = *params;
  if (flops) j["flops"] = *flops;
  if (like) j["like"] = *like;
  j["solver"] = solver;
  j["evolve"] = evolve;
  j["generations"] = generations;
  j["offspring"] = offspring;
  j["max_swaps"] = max_swaps;
  j["seed"] = seed;
  j["calib_text"] = calib_text;
  j["calib_slice"] = calib_slice;
  j["calib_sequences"] = calib_sequences;
  j["calib_length"] = calib_length;
  j["error_mode"] = error_mode;
  return j;
}

const Rule* Recipe::rule_for(std::string_view tensor) const {
  for (const Rule& r : rules)
    if (glob_match(r.match, tensor)) return &r;
  return nullptr;
}

std::optional<Constraint> Recipe::constraint(const Table& table) const {
  if (bits_per_weight) return budget::bits_per_weight(table, *bits_per_weight);
  if (bytes) return Constraint{Metric::bytes, *bytes};
  if (params) return Constraint{Metric::params, *params};
  if (flops) return Constraint{Metric::flops, *flops};
  return std::nullopt;
}

EvolveOptions Recipe::evolve_options() const {
  EvolveOptions o;
  o.generations = generations;
  o.offspring = offspring;
  o.max_swaps = max_swaps;
  o.seed = seed;
  return o;
}

}  // namespace strata::budget
