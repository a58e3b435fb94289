// The built-in recipes, kept as the JSON a user would write so that they go through the same strict
// parser as recipe files (docs/budget.md shows them).
#include <array>
#include <sstream>

#include "strata/budget/json_reader.hpp"
#include "strata/budget/recipe.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {

namespace {

// Norm vectors are 1-D and tiny: every preset leaves them as they are.
constexpr std::string_view kGguf = R"json({
  "name": "gguf",
  "description": "llama.cpp block formats only, for a GGUF llama.cpp loads: block linear weights from q2_k to q8_0 (and the 32-element formats for rows that are not whole 256-element super-blocks) and the token embedding from the 32-element types, at the size llama.cpp's uniform Q3_K would take (which keeps a tied embedding at q6_k, or q8_0 when its rows are not whole super-blocks), errors weighed by measured KL sensitivity, greedy",
  "rules": [
    {"match": "*_norm.weight", "skip": true},
    {"match": "token_embd.weight", "methods": [{"compressor": "quant.ggml",
      "knobs": ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl"]}]},
    {"match": "blk.*.weight", "methods": [{"compressor": "quant.ggml",
      "knobs": ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]}]}
  ],
  "like": "quant.ggml:q3_k",
  "error_mode": "kl",
  "solver": "greedy",
  "evolve": false
})json";

// The gguf preset with the evolutionary search on: a JSON merge patch over kGguf.
constexpr std::string_view kGgufEvolve = R"json({
  "name": "gguf-evolve",
  "description": "the gguf preset, then an evolutionary search on the measured KL divergence of the whole model to the dense one",
  "evolve": true,
  "generations": 30,
  "offspring": 6,
  "max_swaps": 3,
  "seed": 1
})json";

constexpr std::string_view kMixed = R"json({
  "name": "mixed",
  "description": "llama.cpp block formats, SparseGPT 2:4 and SVD-LLM low rank mixed per layer under one budget, for safetensors output (GGUF and Hugging Face tensor names)",
  "rules": [
    {"match": "*norm*", "skip": true},
    {"match": "token_embd.weight", "pin": "quant.ggml:q8_0"},
    {"match": "model.embed_tokens.weight", "pin": "quant.ggml:q8_0"},
    {"match": "blk.*.weight", "methods": [
      {"compressor": "quant.ggml"},
      {"compressor": "prune.sparsegpt", "knobs": ["pattern=2:4"]},
      {"compressor": "lowrank.svdllm"}]},
    {"match": "model.layers.*.weight", "methods": [
      {"compressor": "quant.ggml"},
      {"compressor": "prune.sparsegpt", "knobs": ["pattern=2:4"]},
      {"compressor": "lowrank.svdllm"}]}
  ],
  "bits_per_weight": 4.5,
  "solver": "dp",
  "evolve": false
})json";

struct PresetText {
  std::string_view name, json;
  std::string_view base = {};  // when set, `json` is a merge patch (RFC 7386) over this JSON
};
constexpr std::array<PresetText, 3> kPresets = {
    {{"gguf", kGguf}, {"gguf-evolve", kGgufEvolve, kGguf}, {"mixed", kMixed}}};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const PresetText& p : kPresets) names.emplace_back(p.name);
  return names;
}

Recipe preset(std::string_view name) {
  std::ostringstream known;
  for (const PresetText& p : kPresets) {
    if (p.name == name) {
      const std::string source = "preset '" + std::string(name) + "'";
      nlohmann::json j = parse_json(p.json, source);
      if (!p.base.empty()) {
        nlohmann::json base = parse_json(p.base, source);
        base.merge_patch(j);
        j = std::move(base);
      }
      return Recipe::from_json(j, source);
    }
    known << ' ' << p.name;
  }
  fail("unknown recipe preset '", name, "'; presets:", known.str());
}

Recipe find_recipe(std::string_view name_or_path) {
  for (const PresetText& p : kPresets)
    if (p.name == name_or_path) return preset(name_or_path);
  const std::filesystem::path path(name_or_path);
  if (std::filesystem::is_regular_file(path)) return Recipe::load(path);
  std::ostringstream known;
  for (const PresetText& p : kPresets) known << ' ' << p.name;
  fail("recipe '", name_or_path, "' is neither a preset (", known.str().substr(1), ") nor a readable file");
}

}  // namespace strata::budget
