// Recipes: globs, strict parsing with errors naming the recipe and the field, presets.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "strata/budget/recipe.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/core/error.hpp"
#include "test_util.hpp"

namespace strata::budget {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Glob, Cases) {
  EXPECT_TRUE(glob_match("blk.*.weight", "blk.3.ffn_down.weight"));
  EXPECT_TRUE(glob_match("blk.*.weight", "blk..weight"));
  EXPECT_FALSE(glob_match("blk.*.weight", "blk.3.ffn_down.bias"));
  EXPECT_FALSE(glob_match("blk.*.weight", "output.weight"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("*", "anything.at.all"));
  EXPECT_TRUE(glob_match("", ""));
  EXPECT_FALSE(glob_match("", "a"));
  EXPECT_FALSE(glob_match("?", ""));
  EXPECT_TRUE(glob_match("blk.?.attn_q.weight", "blk.7.attn_q.weight"));
  EXPECT_FALSE(glob_match("blk.?.attn_q.weight", "blk.17.attn_q.weight"));
  EXPECT_TRUE(glob_match("blk.??.attn_q.weight", "blk.17.attn_q.weight"));
  EXPECT_TRUE(glob_match("*_norm.weight", "blk.0.attn_norm.weight"));
  EXPECT_TRUE(glob_match("*_norm.weight", "output_norm.weight"));
  EXPECT_FALSE(glob_match("*_norm.weight", "blk.0.attn_norm.weight.x"));
  EXPECT_TRUE(glob_match("a*b*c", "aXXbYYbZZc"));
  EXPECT_FALSE(glob_match("a*b*c", "aXXbYYbZZ"));
  EXPECT_TRUE(glob_match("**x**", "yyxyy"));
  EXPECT_TRUE(glob_match("*ab", "aaab"));  // needs backtracking past a partial match
  EXPECT_FALSE(glob_match("token_embd.weight", "token_embd.weights"));
  EXPECT_FALSE(glob_match("Blk.*", "blk.0"));  // case matters
  // Many stars against a long non-match stays fast (no exponential backtracking).
  EXPECT_FALSE(glob_match("*a*a*a*a*a*a*a*a*b", std::string(5000, 'a')));
}

TEST(Recipe, ParsesEveryFieldAndRoundTrips) {
  const nlohmann::json j = nlohmann::json::parse(R"({
    "name": "r", "description": "d",
    "rules": [
      {"match": "*_norm.weight", "skip": true},
      {"match": "token_embd.weight", "pin": "quant.ggml:q8_0"},
      {"match": "blk.0.*", "pin": "prune.sparsegpt:pattern=2:4"},
      {"match": "blk.*.weight", "min_bits": 3,
       "methods": ["lowrank.svdllm", {"compressor": "quant.ggml", "knobs": ["q4_k", "q6_k"]}]}
    ],
    "flops": 1e9, "solver": "minimax", "evolve": true, "generations": 7, "offspring": 3, "max_swaps": 2,
    "seed": 99, "calib_text": "moby.txt", "calib_slice": "0.1:0.2", "calib_sequences": 4, "calib_length": 64,
    "error_mode": "weight"
  })");
  const Recipe r = Recipe::from_json(j, "test");
  EXPECT_EQ(r.name, "r");
  ASSERT_EQ(r.rules.size(), 4u);
  EXPECT_TRUE(r.rules[0].skip);
  EXPECT_EQ(*r.rules[1].pin, "quant.ggml:q8_0");
  EXPECT_EQ(split_pin(*r.rules[2].pin, "x"), (std::pair<std::string, std::string>{"prune.sparsegpt", "pattern=2:4"}));
  ASSERT_EQ(r.rules[3].methods.size(), 2u);
  EXPECT_EQ(r.rules[3].methods[0].compressor, "lowrank.svdllm");
  EXPECT_TRUE(r.rules[3].methods[0].knobs.empty());
  EXPECT_EQ(r.rules[3].methods[1].knobs, (std::vector<std::string>{"q4_k", "q6_k"}));
  EXPECT_EQ(*r.rules[3].min_bits, 3);
  EXPECT_EQ(*r.flops, 1e9);
  EXPECT_FALSE(r.bits_per_weight || r.bytes || r.params);
  EXPECT_EQ(r.solver_kind(), Solver::minimax);
  EXPECT_TRUE(r.evolve);
  const EvolveOptions eo = r.evolve_options();
  EXPECT_EQ(eo.generations, 7);
  EXPECT_EQ(eo.offspring, 3);
  EXPECT_EQ(eo.max_swaps, 2);
  EXPECT_EQ(eo.seed, 99u);
  EXPECT_EQ(r.calib_text, "moby.txt");
  EXPECT_EQ(r.calib_slice, "0.1:0.2");
  EXPECT_EQ(r.calib_sequences, 4);
  EXPECT_EQ(r.calib_length, 64);
  EXPECT_EQ(r.error_mode, "weight");
  const Recipe again = Recipe::from_json(r.to_json(), "again");
  EXPECT_EQ(again.to_json(), r.to_json());

  // First matching rule wins; unmatched tensors get none.
  EXPECT_EQ(r.rule_for("blk.0.attn_norm.weight"), &r.rules[0]);
  EXPECT_EQ(r.rule_for("blk.0.attn_q.weight"), &r.rules[2]);
  EXPECT_EQ(r.rule_for("blk.1.attn_q.weight"), &r.rules[3]);
  EXPECT_EQ(r.rule_for("output.weight"), nullptr);

  // Defaults.
  const Recipe d = Recipe::from_json(nlohmann::json::parse(R"({"rules": [{"match": "*", "skip": true}]})"), "d");
  EXPECT_EQ(d.solver, "greedy");
  EXPECT_FALSE(d.evolve);
  EXPECT_EQ(d.calib_slice, "0:0.5");
  EXPECT_EQ(d.calib_sequences, 32);
  EXPECT_EQ(d.calib_length, 512);
  EXPECT_EQ(d.error_mode, "output");
  EXPECT_EQ(d.evolve_options().generations, 50);
}

TEST(Recipe, ConstraintFromTheBudget) {
  Table t;
  t.layers.push_back({"a", 1000, {{"quant.ggml", "q8_0", {1062.5, 1000, 2000}, 0}}});
  const auto with = [](const char* key, double v) {
    nlohmann::json j = {{"rules", {{{"match", "*"}, {"pin", "quant.ggml:q8_0"}}}}};
    if (key) j[key] = v;
    return Recipe::from_json(j, "t");
  };
  EXPECT_FALSE(with(nullptr, 0).constraint(t).has_value());
  const Constraint bpw = *with("bits_per_weight", 4).constraint(t);
  EXPECT_EQ(bpw.metric, Metric::bytes);
  EXPECT_EQ(bpw.budget, 500);
  EXPECT_EQ(with("bytes", 9).constraint(t)->budget, 9);
  EXPECT_EQ(with("params", 8).constraint(t)->metric, Metric::params);
  EXPECT_EQ(with("flops", 7).constraint(t)->metric, Metric::flops);
}

// Each malformed recipe fails with the recipe's name and the field's path in the message.
TEST(Recipe, ErrorsNameTheSourceAndTheField) {
  const auto msg = [](const std::string& text) {
    return error_of([&] { Recipe::from_json(nlohmann::json::parse(text), "my.json"); });
  };
  const std::string ok_rule = R"({"match": "blk.*", "methods": ["quant.ggml"]})";
  struct Case {
    std::string json, expect;
  };
  const std::vector<Case> cases = {
      {R"({"rules": [)" + ok_rule + R"(], "bits_per_weigth": 4})", "my.json: bits_per_weigth: unknown key"},
      {R"({"rules": [{"match": "x", "skip": true, "skp": 1}]})", "my.json: rules[0].skp: unknown key"},
      {R"({"rules": [{"match": "x", "methods": [{"compressor": "quant.ggml", "knob": ["q4_k"]}]}]})",
       "my.json: rules[0].methods[0].knob: unknown key"},
      {R"({"rules": [{"match": "x", "methods": ["quant.ggmll"]}]})",
       "my.json: rules[0].methods[0]: unknown compressor 'quant.ggmll'"},
      {R"({"rules": [{"match": "x", "methods": [{"compressor": "nope"}]}]})",
       "my.json: rules[0].methods[0].compressor: unknown compressor 'nope'"},
      {R"({"rules": [{"match": "x", "pin": "quant.nope:q8_0"}]})", "my.json: rules[0].pin: unknown compressor"},
      {R"({"rules": [{"match": "x", "pin": "q8_0"}]})", "my.json: rules[0].pin: 'q8_0' is not COMPRESSOR:KNOB"},
      {R"({"rules": [{"match": "x", "skip": true}], "bits_per_weight": 4, "like": "quant.ggml:q3_k"})",
       "my.json: like: a second budget"},
      {R"({"rules": [{"match": "x", "skip": true}], "like": ""})", "my.json: like: is empty"},
      {R"({"rules": [{"match": "x", "pin": "quant.ggml:"}]})", "rules[0].pin: 'quant.ggml:' is not COMPRESSOR:KNOB"},
      {R"({"rules": [{"match": "", "skip": true}]})", "my.json: rules[0].match: must not be empty"},
      {R"({"rules": [{"skip": true}]})", "my.json: rules[0].match: missing"},
      {R"({"rules": [{"match": 3, "skip": true}]})", "rules[0].match: expected a string, got an integer"},
      {R"({"rules": [)" + ok_rule + R"(], "bits_per_weight": -4})", "my.json: bits_per_weight: budget must be > 0"},
      {R"({"rules": [)" + ok_rule + R"(], "bytes": 0})", "my.json: bytes: budget must be > 0"},
      {R"({"rules": [)" + ok_rule + R"(], "bits_per_weight": 4, "flops": 1e9})",
       "my.json: flops: a second budget (bits_per_weight is given too)"},
      {R"({"rules": [)" + ok_rule + R"(], "params": "1e9"})", "my.json: params: expected a number, got a string"},
      {R"({"rules": [)" + ok_rule + R"(], "solver": "evo"})", "my.json: solver: unknown solver 'evo'"},
      {R"({"rules": [)" + ok_rule + R"(], "evolve": "yes"})", "my.json: evolve: expected true or false"},
      {R"({"rules": [)" + ok_rule + R"(], "generations": 2.5})", "my.json: generations: expected an integer"},
      {R"({"rules": [)" + ok_rule + R"(], "offspring": 0})", "my.json: offspring: must be in 1..1000000000"},
      {R"({"rules": [)" + ok_rule + R"(], "seed": -1})", "my.json: seed: must be >= 0"},
      {R"({"rules": [)" + ok_rule + R"(], "calib_slice": "0.5"})", "my.json: calib_slice: text slice '0.5'"},
      {R"({"rules": [)" + ok_rule + R"(], "calib_slice": "0.6:0.5"})", "need 0 <= begin < end <= 1"},
      {R"({"rules": [)" + ok_rule + R"(], "calib_length": 1})", "my.json: calib_length: must be in 2.."},
      {R"({"rules": [)" + ok_rule + R"(], "error_mode": "kld"})", "my.json: error_mode: unknown error mode 'kld'"},
      {R"({"rules": []})", "my.json: rules: is empty"},
      {R"({"name": "x"})", "my.json: rules: missing"},
      {R"({"rules": {}})", "my.json: rules: expected an array, got an object"},
      {R"([1])", "my.json: expected an object, got an array"},
      {R"({"rules": [{"match": "x"}]})", "my.json: rules[0]: needs methods, pin or skip"},
      {R"({"rules": [{"match": "x", "methods": []}]})", "my.json: rules[0].methods: is empty"},
      {R"({"rules": [{"match": "x", "skip": true, "pin": "quant.ggml:q8_0"}]})", "my.json: rules[0].skip: a skipped"},
      {R"({"rules": [{"match": "x", "pin": "quant.ggml:q8_0", "methods": ["quant.ggml"]}]})",
       "my.json: rules[0].pin: give either pin or methods"},
      {R"({"rules": [{"match": "x", "pin": "quant.ggml:q8_0", "min_bits": 4}]})",
       "my.json: rules[0].min_bits: applies only to a rule with methods"},
      {R"({"rules": [{"match": "x", "methods": ["quant.ggml"], "min_bits": -1}]})", "rules[0].min_bits: must be > 0"},
      {R"({"rules": [{"match": "x", "methods": [{"compressor": "quant.ggml", "knobs": ["q4_k", "q4_k"]}]}]})",
       "my.json: rules[0].methods[0].knobs[1]: knob 'q4_k' is listed twice"},
      {R"({"rules": [{"match": "x", "methods": [{"compressor": "quant.ggml", "knobs": [""]}]}]})",
       "rules[0].methods[0].knobs[0]: must not be empty"},
      {R"({"rules": [{"match": "x", "methods": ["quant.ggml", "quant.ggml"]}]})",
       "my.json: rules[0].methods[1]: compressor 'quant.ggml' appears twice"},
  };
  for (const Case& c : cases) {
    const std::string m = msg(c.json);
    EXPECT_NE(m.find(c.expect), std::string::npos) << c.json << "\n  gave: " << m;
  }
}

TEST(Recipe, LoadNamesTheFileAndTakesItsStem) {
  const auto dir = std::filesystem::temp_directory_path() / ("strata_recipe_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "q4-everywhere.json";
  std::ofstream(path) << R"({"rules": [{"match": "blk.*", "pin": "quant.ggml:q4_0"}], "bits_per_weight": 4.5})";
  const Recipe r = Recipe::load(path);
  EXPECT_EQ(r.name, "q4-everywhere");
  EXPECT_EQ(find_recipe(path.string()).name, "q4-everywhere");
  std::ofstream(path) << R"({"rules": [{"match": "blk.*", "pin": "quant.ggml:q4_0"}], "solver": 3})";
  const std::string m = error_of([&] { Recipe::load(path); });
  EXPECT_NE(m.find(path.string() + ": solver: expected a string"), std::string::npos) << m;
  std::ofstream(path) << R"({"rules": [)";
  EXPECT_NE(error_of([&] { Recipe::load(path); }).find(path.string() + ": invalid JSON"), std::string::npos);
  EXPECT_NE(error_of([&] { find_recipe((dir / "none.json").string()); }).find("neither a preset (gguf gguf-evolve mixed)"),
            std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Presets, ParseAndMatchTheDocumentedShape) {
  EXPECT_EQ(preset_names(), (std::vector<std::string>{"gguf", "gguf-evolve", "mixed"}));
  for (const std::string& name : preset_names()) {
    const Recipe r = preset(name);
    EXPECT_EQ(r.name, name);
    EXPECT_FALSE(r.description.empty());
    EXPECT_EQ(Recipe::from_json(r.to_json(), "again").to_json(), r.to_json());
    EXPECT_EQ(find_recipe(name).name, name);
  }
  const Recipe g = preset("gguf");
  EXPECT_FALSE(g.bits_per_weight.has_value());
  EXPECT_EQ(*g.like, "quant.ggml:q3_k");
  EXPECT_EQ(g.error_mode, "kl");
  EXPECT_EQ(g.solver, "greedy");
  EXPECT_FALSE(g.evolve);
  EXPECT_TRUE(preset("gguf-evolve").evolve);
  EXPECT_FALSE(g.rule_for("token_embd.weight")->skip);
  EXPECT_EQ(g.rule_for("token_embd.weight")->methods.at(0).compressor, "quant.ggml");
  EXPECT_TRUE(g.rule_for("blk.3.attn_norm.weight")->skip);
  EXPECT_TRUE(g.rule_for("output_norm.weight")->skip);
  const Rule* blk = g.rule_for("blk.3.ffn_down.weight");
  ASSERT_NE(blk, nullptr);
  ASSERT_EQ(blk->methods.size(), 1u);
  EXPECT_EQ(blk->methods[0].compressor, "quant.ggml");
  EXPECT_EQ(blk->methods[0].knobs, (std::vector<std::string>{"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0", "q4_0",
                                                             "q4_1", "q5_0", "q5_1", "iq4_nl"}));
  const Recipe m = preset("mixed");
  for (const char* tensor : {"blk.2.attn_q.weight", "model.layers.2.self_attn.q_proj.weight"}) {
    const Rule* r = m.rule_for(tensor);
    ASSERT_NE(r, nullptr) << tensor;
    std::vector<std::string> names;
    for (const MethodSpec& s : r->methods) names.push_back(s.compressor);
    EXPECT_EQ(names, (std::vector<std::string>{"quant.ggml", "prune.sparsegpt", "lowrank.svdllm"}));
  }
  EXPECT_TRUE(m.rule_for("model.layers.0.input_layernorm.weight")->skip);
  EXPECT_NE(error_of([] { preset("q4"); }).find("presets: gguf gguf-evolve mixed"), std::string::npos);
}

// The example recipe in docs/budget.md is a valid recipe.
TEST(Recipe, DocumentedExampleParses) {
  const auto path = strata::testing::test_data_dir() / ".." / ".." / "docs" / "budget.md";
  STRATA_REQUIRE_FILE(path, "part of the source tree");
  std::ifstream in(path);
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t begin = doc.find("```json\n{\n  \"name\": \"ffn-heavy\"");
  ASSERT_NE(begin, std::string::npos);
  const size_t end = doc.find("```", begin + 7);
  const Recipe r = Recipe::from_json(nlohmann::json::parse(doc.substr(begin + 7, end - begin - 7)), "docs/budget.md");
  EXPECT_EQ(r.name, "ffn-heavy");
  EXPECT_EQ(r.rules.size(), 4u);
  EXPECT_EQ(*r.rule_for("blk.3.attn_q.weight")->min_bits, 4);
  EXPECT_EQ(r.rule_for("blk.3.ffn_up.weight")->methods.size(), 2u);
  EXPECT_EQ(*r.bits_per_weight, 4.25);
  EXPECT_EQ(r.solver_kind(), Solver::dp);
}

// Every knob a preset names is one its compressor accepts (on a layer whose rows are whole
// super-blocks), so a preset can never fail on a typo of its own.
TEST(Presets, KnobsAreAcceptedByTheirCompressors) {
  RowMatrix<float> w(4, 512);
  w.setZero();
  const compress::Layer layer{"probe", &w};
  for (const std::string& name : preset_names()) {
    const Recipe r = preset(name);
    for (const Rule& rule : r.rules) {
      if (rule.pin) {
        const auto [c, knob] = split_pin(*rule.pin, name);
        EXPECT_GT(compress::find_compressor(c).cost(layer, knob).bytes, 0) << name << " " << *rule.pin;
      }
      for (const MethodSpec& s : rule.methods)
        for (const std::string& knob : s.knobs)
          EXPECT_GT(compress::find_compressor(s.compressor).cost(layer, knob).bytes, 0) << name << " " << knob;
    }
  }
}

}  // namespace
}  // namespace strata::budget
