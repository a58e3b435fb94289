#pragma once
// Building a candidate table from a recipe. The options themselves come from a callback, so this
// library part needs no model or engine: the caller compresses (or costs) each tensor its own way.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "strata/budget/allocator.hpp"
#include "strata/budget/recipe.hpp"

namespace strata::budget {

// For every tensor the recipe covers (in the order given; tensors no rule matches and tensors of
// skip rules are left out): the options of each allowed compressor and knob, computed by
// `options_for(tensor, spec)`. options_for returns the candidates of spec.compressor for the knobs
// in spec.knobs (every knob the compressor offers for the tensor when spec.knobs is empty). For a
// knob that does not apply to this tensor (a k-quant on rows that are not whole super-blocks) it
// either leaves the knob out or answers with a substitute knob of the same compressor (llama.cpp's
// fallback type), under the substitute's name. A candidate's method may be left empty and is then
// spec.compressor. Pinned rules yield a single-option layer. Options below the rule's min_bits
// (8 * bytes / params) are dropped.
// Throws strata::Error naming the recipe, the rule and the tensor when: a tensor is listed twice,
// a covered tensor ends with no option, a pinned knob does not apply, options_for returns a
// candidate of another compressor or another knob than the pinned one, the table is malformed
// (Table::validate: e.g. the same knob twice, a NaN error), or a knob a rule lists came back for
// none of the tensors the rule covers (a misspelt knob that a leaving-out callback would drop
// silently; not checked for a method whose knobs the callback substituted, since a substituting
// callback must reject unknown knobs itself, as every compressor's cost() does).
Table build_table(const Recipe& recipe, const std::vector<std::pair<std::string, int64_t>>& tensors_and_params,
                  const std::function<std::vector<Candidate>(const std::string& tensor, const MethodSpec& spec)>&
                      options_for);

}  // namespace strata::budget
