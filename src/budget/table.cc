#include "strata/budget/table.hpp"

#include <algorithm>
#include <set>

#include "strata/core/error.hpp"

namespace strata::budget {

Table build_table(const Recipe& recipe, const std::vector<std::pair<std::string, int64_t>>& tensors_and_params,
                  const std::function<std::vector<Candidate>(const std::string& tensor, const MethodSpec& spec)>&
                      options_for) {
  const std::string source = "recipe '" + recipe.name + "'";
  require(static_cast<bool>(options_for), source, ": build_table needs an options callback");
  // Which listed knobs some covered tensor accepted, per rule and method: a knob no tensor accepts
  // is almost always a typo that would otherwise vanish silently.
  std::vector<std::vector<std::vector<bool>>> accepted(recipe.rules.size());
  // Methods for which the callback answered some knob with a substitute (llama.cpp's fallback types
  // for rows that are not whole blocks): a listed knob may then never come back by its own name,
  // and rejecting unknown knobs is the callback's (the compressor's) job.
  std::vector<std::vector<bool>> substituted(recipe.rules.size());
  std::vector<int64_t> covered(recipe.rules.size(), 0);
  for (size_t r = 0; r < recipe.rules.size(); ++r)
    for (const MethodSpec& m : recipe.rules[r].methods) {
      accepted[r].emplace_back(m.knobs.size(), false);
      substituted[r].push_back(false);
    }

  std::set<std::string> seen;
  Table table;
  for (const auto& [tensor, params] : tensors_and_params) {
    require(seen.insert(tensor).second, source, ": tensor '", tensor, "' is listed twice");
    const Rule* rule = recipe.rule_for(tensor);
    if (!rule || rule->skip) continue;
    const size_t ri = static_cast<size_t>(rule - recipe.rules.data());
    ++covered[ri];
    const std::string where =
        source + ": rules[" + std::to_string(ri) + "] ('" + rule->match + "'): tensor '" + tensor + "'";
    require(params > 0, where, ": ", params, " weights (must be > 0)");
    const auto call = [&](const MethodSpec& spec) {
      try {
        return options_for(tensor, spec);
      } catch (const Error& e) {
        fail(where, ": ", spec.compressor, ": ", e.what());
      }
    };
    const auto own = [&](Candidate& c, const MethodSpec& spec) {
      if (c.method.empty()) c.method = spec.compressor;
      require(c.method == spec.compressor, where, ": the options of ", spec.compressor, " include one of '", c.method,
              "'");
    };

    LayerCandidates layer{tensor, params, {}};
    if (rule->pin) {
      const auto [compressor, knob] = split_pin(*rule->pin, where);
      const MethodSpec spec{compressor, {knob}};
      for (Candidate& c : call(spec)) {
        own(c, spec);
        require(c.knob == knob, where, ": asked for pinned ", *rule->pin, ", the options include knob '", c.knob, "'");
        require(layer.options.empty(), where, ": pinned ", *rule->pin, " came back twice");
        layer.options.push_back(std::move(c));
      }
      require(!layer.options.empty(), where, ": pinned ", *rule->pin, " does not apply to this tensor");
    } else {
      for (size_t mi = 0; mi < rule->methods.size(); ++mi) {
        const MethodSpec& spec = rule->methods[mi];
        for (Candidate& c : call(spec)) {
          own(c, spec);
          if (!spec.knobs.empty()) {
            const auto it = std::find(spec.knobs.begin(), spec.knobs.end(), c.knob);
            if (it == spec.knobs.end())
              substituted[ri][mi] = true;
            else
              accepted[ri][mi][static_cast<size_t>(it - spec.knobs.begin())] = true;
          }
          if (rule->min_bits && 8.0 * c.cost.bytes / static_cast<double>(params) < *rule->min_bits) continue;
          layer.options.push_back(std::move(c));
        }
      }
      if (layer.options.empty()) {
        if (rule->min_bits) fail(where, ": no option left at or above min_bits ", *rule->min_bits);
        fail(where, ": none of the rule's methods applies to this tensor");
      }
    }
    table.layers.push_back(std::move(layer));
  }

  try {
    table.validate();
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
  for (size_t r = 0; r < recipe.rules.size(); ++r) {
    if (covered[r] == 0) continue;
    for (size_t mi = 0; mi < accepted[r].size(); ++mi) {
      if (substituted[r][mi]) continue;
      for (size_t k = 0; k < accepted[r][mi].size(); ++k)
        require(accepted[r][mi][k], source, ": rules[", r, "].methods[", mi, "]: knob '", recipe.rules[r].methods[mi].knobs[k],
                "' of ", recipe.rules[r].methods[mi].compressor, " applies to none of the ", covered[r],
                " tensors the rule covers");
    }
  }
  return table;
}

}  // namespace strata::budget
