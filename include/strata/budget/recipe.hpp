#pragma once
// A recipe says which compressors and knobs each tensor may use (first matching glob rule wins),
// what budget the whole plan must meet, which solver plans it, and how to calibrate. Recipes are
// JSON files (docs/budget.md has the format); a few are built in as presets. Parsing is strict:
// unknown keys, wrong types, unknown compressors, empty globs, negative or doubled budgets are
// errors naming the recipe and the field.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/budget/allocator.hpp"

namespace strata::budget {

struct MethodSpec {
  std::string compressor;          // registry name, e.g. "quant.ggml"
  std::vector<std::string> knobs;  // empty: every knob the compressor offers for the tensor
};

struct Rule {
  std::string match;  // glob over tensor names ('*' any run of characters, '?' one character)
  std::vector<MethodSpec> methods;
  std::optional<std::string> pin;  // "quant.ggml:q8_0": the tensor gets exactly this option
  std::optional<double> min_bits;  // drop options below this many bits per weight (8 bytes / params)
  bool skip = false;               // leave the tensor as it is
};

struct Recipe {
  std::string name, description;
  std::vector<Rule> rules;  // first matching rule wins; tensors no rule matches are left as they are
  // At most one budget; none means the caller must supply one.
  std::optional<double> bits_per_weight, bytes, params, flops;
  // Or: the bytes that one request applied to every covered tensor takes ("quant.ggml:q3_k", with
  // llama.cpp's fallback for rows that are not whole super-blocks), resolved by the caller, which
  // knows the tensors' shapes. constraint() returns nullopt for it.
  std::optional<std::string> like;
  std::string solver = "greedy";  // uniform, greedy, dp, minimax
  bool evolve = false;            // refine the solver's plan with evolve() on a measured fitness
  int generations = 50, offspring = 8, max_swaps = 3;
  uint64_t seed = 1;
  std::string calib_text;  // calibration corpus (a text file); empty: the caller's default
  std::string calib_slice = "0:0.5";  // "begin:end" fractions of the text
  int64_t calib_sequences = 32, calib_length = 512;
  // What Candidate::error measures: "output" (relative output error on the calibration inputs,
  // ||(W - W')X||^2 / ||WX||^2) or "weight" (relative weight error, ||W - W'||^2 / ||W||^2, which
  // needs no calibration).
  // "kl": the output error scaled per layer by a measured sensitivity, so that it estimates the KL
  // divergence the layer alone adds to the whole model (the caller measures it; see docs/compress-command.md).
  std::string error_mode = "output";

  // `source` names the recipe in errors ("my.json", "preset 'gguf'").
  static Recipe from_json(const nlohmann::json& j, std::string_view source);
  // Reads a recipe file; a recipe without a name takes the file's stem.
  static Recipe load(const std::filesystem::path& path);
  nlohmann::json to_json() const;

  const Rule* rule_for(std::string_view tensor) const;  // the first rule whose glob matches, or null
  // The recipe's budget for a table built from it (bits per weight become bytes over the table's
  // weights); nullopt when the recipe names none.
  std::optional<Constraint> constraint(const Table& table) const;
  Solver solver_kind() const { return parse_solver(solver); }
  EvolveOptions evolve_options() const;
};

// '*' matches any run of characters (dots included), '?' exactly one; everything else itself.
bool glob_match(std::string_view pattern, std::string_view text);

// Built-in recipes (docs/budget.md lists them): "gguf", "gguf-evolve", "mixed".
std::vector<std::string> preset_names();
// Throws strata::Error listing the preset names for an unknown one.
Recipe preset(std::string_view name);
// A preset by name, or else a recipe file by path (errors say neither matched).
Recipe find_recipe(std::string_view name_or_path);

// Splits "compressor:knob" (the pin syntax) at its first ':'; throws naming `where` when either
// part is empty.
std::pair<std::string, std::string> split_pin(std::string_view pin, std::string_view where);

}  // namespace strata::budget
