// Building candidate tables from recipes, with a stand-in options callback and with the real
// SmolLM2-135M tensor list and the ggml compressor's exact byte costs.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "strata/budget/table.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
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

Recipe test_recipe() {
  return Recipe::from_json(nlohmann::json::parse(R"({
    "name": "t",
    "rules": [
      {"match": "*_norm.weight", "skip": true},
      {"match": "token_embd.weight", "pin": "quant.ggml:q8_0"},
      {"match": "blk.*.weight", "min_bits": 4,
       "methods": [{"compressor": "quant.ggml", "knobs": ["q2_k", "q4_0", "q8_0"]}, "prune.sparsegpt"]}
    ]
  })"),
                           "t");
}

// Knob -> bits per weight; q2_k only applies to tensors whose name holds "down".
Candidate fake(const std::string& method, const std::string& knob, double bits, int64_t params) {
  Candidate c;
  c.method = method;
  c.knob = knob;
  c.cost = {bits * static_cast<double>(params) / 8, static_cast<double>(params), 2.0 * static_cast<double>(params)};
  c.error = std::exp2(-2 * bits);
  return c;
}

const std::vector<std::pair<std::string, int64_t>> kTensors = {
    {"token_embd.weight", 1024}, {"blk.0.attn_norm.weight", 64}, {"blk.0.attn_q.weight", 4096},
    {"blk.0.ffn_down.weight", 8192}, {"output.weight", 1024}};

std::vector<Candidate> fake_options(const std::string& tensor, const MethodSpec& spec) {
  const int64_t params = [&] {
    for (const auto& [n, p] : kTensors)
      if (n == tensor) return p;
    return int64_t{0};
  }();
  std::vector<Candidate> out;
  if (spec.compressor == "prune.sparsegpt") {
    EXPECT_TRUE(spec.knobs.empty());  // "every knob it offers"
    out.push_back(fake("", "sparsity=0.5", 9, params));
    return out;
  }
  const std::map<std::string, double> bits = {{"q2_k", 2.625}, {"q4_0", 4.5}, {"q8_0", 8.5}};
  for (const auto& k : spec.knobs) {
    if (k == "q2_k" && tensor.find("down") == std::string::npos) continue;
    out.push_back(fake(spec.compressor, k, bits.at(k), params));
  }
  return out;
}

TEST(BuildTable, CoversPinsSkipsAndFilters) {
  const Table t = build_table(test_recipe(), kTensors, fake_options);
  ASSERT_EQ(t.layers.size(), 3u);  // norm skipped, output.weight matched by no rule
  EXPECT_EQ(t.layers[0].tensor, "token_embd.weight");
  ASSERT_EQ(t.layers[0].options.size(), 1u);
  EXPECT_EQ(t.layers[0].options[0].knob, "q8_0");
  EXPECT_EQ(t.layers[0].params, 1024);
  EXPECT_EQ(t.layers[1].tensor, "blk.0.attn_q.weight");
  std::vector<std::string> knobs;
  for (const auto& o : t.layers[1].options) knobs.push_back(o.method + ":" + o.knob);
  EXPECT_EQ(knobs, (std::vector<std::string>{"quant.ggml:q4_0", "quant.ggml:q8_0", "prune.sparsegpt:sparsity=0.5"}));
  // q2_k applies to ffn_down but falls below min_bits 4.
  knobs.clear();
  for (const auto& o : t.layers[2].options) knobs.push_back(o.knob);
  EXPECT_EQ(knobs, (std::vector<std::string>{"q4_0", "q8_0", "sparsity=0.5"}));
  EXPECT_EQ(t.params(), 1024 + 4096 + 8192);
  const Plan p = solve(t, bits_per_weight(t, 6), Solver::dp);
  EXPECT_EQ(p.choices.size(), 3u);
}

TEST(BuildTable, ErrorsNameTheRecipeRuleAndTensor) {
  const Recipe r = test_recipe();
  auto tensors = kTensors;
  tensors.push_back({"blk.0.attn_q.weight", 4096});
  EXPECT_NE(error_of([&] { build_table(r, tensors, fake_options); }).find("recipe 't': tensor 'blk.0.attn_q.weight' is listed twice"),
            std::string::npos);

  // A misspelt knob applies to no tensor the rule covers.
  Recipe typo = r;
  typo.rules[2].methods[0].knobs.push_back("q4_kk");
  const auto lenient = [](const std::string& tensor, const MethodSpec& spec) {
    MethodSpec known = spec;
    std::erase(known.knobs, "q4_kk");
    return fake_options(tensor, known);
  };
  std::string m = error_of([&] { build_table(typo, kTensors, lenient); });
  EXPECT_NE(m.find("recipe 't': rules[2].methods[0]: knob 'q4_kk' of quant.ggml applies to none of the 2 tensors"),
            std::string::npos)
      << m;

  // A callback may answer a knob with a substitute (llama.cpp's fallback types); the misspelt-knob
  // check then leaves that method to the callback.
  const auto substituting = [](const std::string& tensor, const MethodSpec& spec) {
    auto out = fake_options(tensor, spec);
    for (auto& c : out)
      if (c.knob == "q4_0") c.knob = "iq4_nl";
    return out;
  };
  const Table sub = build_table(r, kTensors, substituting);
  EXPECT_EQ(sub.find("blk.0.attn_q.weight")->options[0].knob, "iq4_nl");
  EXPECT_NO_THROW(build_table(typo, kTensors, [&](const std::string& tensor, const MethodSpec& spec) {
    MethodSpec known = spec;
    std::erase(known.knobs, "q4_kk");
    return substituting(tensor, known);
  }));
  // A substitute that collides with a knob already there is a malformed table.
  m = error_of([&] {
    build_table(r, kTensors, [](const std::string& tensor, const MethodSpec& spec) {
      auto out = fake_options(tensor, spec);
      for (auto& c : out)
        if (c.knob == "q4_0") c.knob = "q8_0";
      return out;
    });
  });
  EXPECT_NE(m.find("tensor 'blk.0.attn_q.weight': option quant.ggml:q8_0 appears twice"), std::string::npos) << m;
  // A pinned knob must come back as itself.
  m = error_of([&] {
    build_table(r, kTensors, [](const std::string& tensor, const MethodSpec& spec) {
      auto out = fake_options(tensor, spec);
      if (tensor == "token_embd.weight") out[0].knob = "q6_k";
      return out;
    });
  });
  EXPECT_NE(m.find("tensor 'token_embd.weight': asked for pinned quant.ggml:q8_0, the options include knob 'q6_k'"),
            std::string::npos)
      << m;
  m = error_of([&] {
    build_table(r, kTensors, [](const std::string& tensor, const MethodSpec& spec) {
      auto out = fake_options(tensor, spec);
      for (auto& c : out) c.method = "quant.rtn";
      return out;
    });
  });
  EXPECT_NE(m.find("the options of quant.ggml include one of 'quant.rtn'"), std::string::npos) << m;

  // The callback's own errors get the recipe, rule and tensor in front.
  m = error_of([&] {
    build_table(r, kTensors, [](const std::string& tensor, const MethodSpec& spec) -> std::vector<Candidate> {
      if (tensor == "blk.0.ffn_down.weight") fail("no Hessian");
      return fake_options(tensor, spec);
    });
  });
  EXPECT_NE(m.find("recipe 't': rules[2] ('blk.*.weight'): tensor 'blk.0.ffn_down.weight': quant.ggml: no Hessian"),
            std::string::npos)
      << m;

  // A pin that does not apply, and a rule that leaves nothing.
  m = error_of([&] {
    build_table(r, kTensors, [](const std::string& tensor, const MethodSpec& spec) {
      return tensor == "token_embd.weight" ? std::vector<Candidate>{} : fake_options(tensor, spec);
    });
  });
  EXPECT_NE(m.find("tensor 'token_embd.weight': pinned quant.ggml:q8_0 does not apply to this tensor"),
            std::string::npos)
      << m;
  Recipe strict = r;
  strict.rules[2].min_bits = 10;
  m = error_of([&] { build_table(strict, kTensors, fake_options); });
  EXPECT_NE(m.find("tensor 'blk.0.attn_q.weight': no option left at or above min_bits 10"), std::string::npos) << m;
  Recipe loose = r;
  loose.rules[2].min_bits.reset();
  m = error_of([&] {
    build_table(loose, kTensors, [](const std::string& tensor, const MethodSpec& spec) {
      return tensor == "blk.0.attn_q.weight" ? std::vector<Candidate>{} : fake_options(tensor, spec);
    });
  });
  EXPECT_NE(m.find("tensor 'blk.0.attn_q.weight': none of the rule's methods applies"), std::string::npos) << m;

  // NaN errors from the callback are caught by the table's validation.
  m = error_of([&] {
    build_table(r, kTensors, [](const std::string& tensor, const MethodSpec& spec) {
      auto out = fake_options(tensor, spec);
      for (auto& c : out) c.error = std::nan("");
      return out;
    });
  });
  EXPECT_NE(m.find("recipe 't': tensor 'token_embd.weight': option quant.ggml:q8_0: error is nan"), std::string::npos)
      << m;
  tensors = kTensors;
  tensors[2].second = 0;
  EXPECT_NE(error_of([&] { build_table(r, tensors, fake_options); }).find("0 weights (must be > 0)"), std::string::npos);
}

// The gguf preset on SmolLM2-135M with the ggml compressor's exact costs: 211 layers (the tied
// embedding and 30 x 7 block linears); rows of 576 columns are not whole 256-element super-blocks,
// so only ffn_down (1536 columns) can take k-quants: 3.5 bits per weight is out of reach for this
// model and the solver says so.
TEST(BuildTable, GgufPresetOnSmolLM2WithRealCosts) {
  const auto path = strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf";
  STRATA_REQUIRE_FILE(path, "scripts/fetch-models.sh");
  const auto model = io::open_model(path);
  std::vector<std::pair<std::string, int64_t>> tensors;
  std::map<std::string, std::pair<int64_t, int64_t>> shapes;
  for (const io::TensorInfo& ti : model->tensors()) {
    tensors.emplace_back(ti.name, ti.numel());
    if (ti.shape.rank() == 2) shapes[ti.name] = {ti.shape[0], ti.shape[1]};
  }
  const Recipe recipe = preset("gguf");
  const auto options_for = [&](const std::string& tensor, const MethodSpec& spec) {
    const auto [rows, cols] = shapes.at(tensor);
    // Costs read only the shape; the weights are never touched.
    const RowMatrix<float> w(rows, cols);
    const compress::Layer layer{tensor, &w};
    const compress::WeightCompressor& c = compress::find_compressor(spec.compressor);
    std::vector<Candidate> out;
    std::set<std::string> seen;
    for (const std::string& requested : spec.knobs.empty() ? c.knobs(layer) : spec.knobs) {
      // As strata compress does: a type the rows cannot hold becomes llama.cpp's fallback type,

      const std::string knob = compress::ggml::lower_name(
          compress::ggml::fallback_type(compress::ggml::quantizable_type(requested), cols));
      if (!seen.insert(knob).second) continue;
      Candidate cand;
      cand.cost = c.cost(layer, knob);
      cand.method = spec.compressor;
      cand.knob = knob;
      // A stand-in for the measured error: 4^-bits, the rate-distortion slope of a good quantizer.
      cand.error = std::exp2(-2.0 * 8.0 * cand.cost.bytes / (static_cast<double>(rows) * static_cast<double>(cols)));
      out.push_back(cand);
    }
    return out;
  };
  const Table t = build_table(recipe, tensors, options_for);
  ASSERT_EQ(t.layers.size(), 211u);
  EXPECT_NE(t.find("blk.0.attn_q.weight"), nullptr);
  ASSERT_NE(t.find("token_embd.weight"), nullptr);
  EXPECT_EQ(t.find("token_embd.weight")->options.size(), 6u);
  EXPECT_FALSE(recipe.constraint(t).has_value());  // the preset's budget is "like": resolved by the caller
  EXPECT_EQ(*recipe.like, "quant.ggml:q3_k");
  EXPECT_EQ(t.find("blk.0.attn_q.weight")->options.size(), 6u);    // q4_0 q4_1 q5_0 q5_1 q8_0 iq4_nl
  EXPECT_EQ(t.find("blk.0.ffn_down.weight")->options.size(), 11u);  // all of them
  EXPECT_EQ(t.params(), 134479872);
  const double least_bpw = 8.0 * t.min_cost(Metric::bytes) / static_cast<double>(t.params());
  EXPECT_NEAR(least_bpw, 4.13, 0.01);
  const std::string m = error_of([&] { solve(t, bits_per_weight(t, 3.5), Solver::greedy); });
  EXPECT_NE(m.find("(3.5 bits per weight) is below the smallest achievable cost"), std::string::npos) << m;
  for (Solver s : {Solver::uniform, Solver::greedy, Solver::dp, Solver::minimax}) {
    const Plan p = solve(t, bits_per_weight(t, 5.5), s);
    EXPECT_LE(p.bits_per_weight(t.params()), 5.5);
    std::printf("  %-8s %.4f bpw  proxy error %.5g\n", std::string(solver_name(s)).c_str(),
                p.bits_per_weight(t.params()), p.total_error());
  }
  std::printf("  smallest achievable: %.4f bpw over %lld weights\n", least_bpw, static_cast<long long>(t.params()));
}

}  // namespace
}  // namespace strata::budget
