// The library's pipeline stages on a real model (stories260K): each stage alone, checked against a
// direct computation of what it promises.
#include "strata/pipeline/pipeline.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "strata/core/error.hpp"
#include "test_util.hpp"

namespace strata::pipeline {
namespace {

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}

budget::Recipe mixed_recipe(double bpw = 5.0) {
  nlohmann::json j = nlohmann::json::parse(R"({
    "name": "test-mixed",
    "rules": [
      {"match": "blk.*.weight", "methods": [
        {"compressor": "quant.rtn"},
        {"compressor": "prune.sparsegpt", "knobs": ["pattern=2:4"]},
        {"compressor": "lowrank.svdllm"}]}
    ],
    "solver": "greedy"
  })");
  j["bits_per_weight"] = bpw;
  return budget::Recipe::from_json(j, "test recipe");
}

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
    if (!model_) {
      model_ = std::make_unique<Model>(Model::load(stories_path()));
      const auto samples = nn::sample_sequences(*model_->dense, 10, 48, 1, 11);
      calib_seqs_.assign(samples.begin(), samples.begin() + 6);
      probe_seqs_.assign(samples.begin() + 6, samples.end());
      calib_ = std::make_unique<Calibration>(calibrate(*model_, calib_seqs_));
    }
  }
  static void TearDownTestSuite() {
    calib_.reset();
    model_.reset();
  }

  static std::unique_ptr<Model> model_;
  static std::unique_ptr<Calibration> calib_;
  static std::vector<std::vector<int32_t>> calib_seqs_, probe_seqs_;
};
std::unique_ptr<Model> PipelineTest::model_;
std::unique_ptr<Calibration> PipelineTest::calib_;
std::vector<std::vector<int32_t>> PipelineTest::calib_seqs_, PipelineTest::probe_seqs_;

TEST_F(PipelineTest, KlFromALaterBlockEqualsTheWholeForwardPass) {
  // Perturb one layer of block 3: the evaluator may start at block 3 on its cached hidden states.
  const nn::KlEvaluator probe(*model_->dense, probe_seqs_, /*keep_hidden=*/true);
  nn::LlamaModel changed = model_->dense->clone();
  RowMatrix<float> w = model_->dense->linear("blk.3.ffn_up.weight").dense_weight();
  w *= 0.7f;
  changed.set_linear("blk.3.ffn_up.weight", std::make_shared<nn::DenseLinear>(w));
  const nn::KlResult whole = probe(changed, 0), late = probe(changed, 3);
  EXPECT_GT(whole.mean_kl, 1e-4);
  EXPECT_NEAR(late.mean_kl, whole.mean_kl, 1e-5 * whole.mean_kl);
  EXPECT_NEAR(late.p99_kl, whole.p99_kl, 1e-5 * whole.p99_kl);
  EXPECT_EQ(late.top1_agreement, whole.top1_agreement);
  // And the reference judged against itself from any block is exactly 0.
  EXPECT_EQ(probe(*model_->dense, 4).mean_kl, 0.0);
}

TEST_F(PipelineTest, EvaluatorAgreesWithTheSlidingWindowKl) {
  // Windows of L tokens cut back to back are what kl_divergence scores with context = stride = L.
  std::vector<int32_t> tokens;
  for (const auto& s : probe_seqs_) tokens.insert(tokens.end(), s.begin(), s.end());
  const int64_t len = static_cast<int64_t>(probe_seqs_.front().size());
  nn::LlamaModel changed = model_->dense->clone();
  RowMatrix<float> w = model_->dense->linear("blk.1.attn_v.weight").dense_weight();
  w.array() += 0.05f;
  changed.set_linear("blk.1.attn_v.weight", std::make_shared<nn::DenseLinear>(w));
  const nn::KlEvaluator judge(*model_->dense, probe_seqs_);
  const nn::KlResult a = judge(changed);
  const nn::KlResult b = nn::kl_divergence(*model_->dense, changed, tokens, {len, len, 0});
  ASSERT_EQ(a.tokens, b.tokens);
  EXPECT_NEAR(a.mean_kl, b.mean_kl, 1e-4 * b.mean_kl);
  EXPECT_NEAR(a.p99_kl, b.p99_kl, 1e-3 * b.p99_kl);
  EXPECT_NEAR(a.model.perplexity, b.model.perplexity, 1e-4 * b.model.perplexity);
  EXPECT_NEAR(a.reference.perplexity, b.reference.perplexity, 1e-4 * b.reference.perplexity);
}

TEST_F(PipelineTest, CheapestCostIsTheTablesCheapestPlan) {
  const budget::Recipe recipe = mixed_recipe();
  LayerBank bank(*model_, &calib_->stats);
  const budget::Table table = measure(*model_, recipe, bank);
  for (auto m : {budget::Metric::bytes, budget::Metric::params, budget::Metric::flops})
    EXPECT_DOUBLE_EQ(cheapest_cost(*model_, recipe, m), table.min_cost(m)) << budget::metric_name(m);
}

TEST_F(PipelineTest, MeasuredErrorsAreTheOutputErrorsOfTheAppliedForms) {
  // The fast curves (SVD-LLM from one factorization, SparseGPT from one Hessian factorization) must
  // report what applying the option and measuring it directly gives.
  const budget::Recipe recipe = mixed_recipe();
  LayerBank bank(*model_, &calib_->stats);
  const budget::Table table = measure(*model_, recipe, bank);
  const auto& layer = *table.find("blk.2.ffn_down.weight");
  const RowMatrix<float> w = model_->weight(layer.tensor);
  const Matrix<double> h = calib_->stats.stats(layer.tensor).hessian();
  for (const auto& o : layer.options) {
    const auto c = bank.compressed(layer.tensor, o.method, o.knob);
    const double direct = compress::output_error(w, compress::find_compressor(o.method).reconstruct(*c), &h);
    EXPECT_NEAR(o.error, direct, 1e-6 + 1e-4 * direct) << o.method << ":" << o.knob;
  }
}

TEST_F(PipelineTest, SensitivitiesAreKlOverTheWorstOptionsError) {
  const budget::Recipe recipe = mixed_recipe();
  LayerBank bank(*model_, &calib_->stats);
  budget::Table table = measure(*model_, recipe, bank);
  const budget::Table before = table;
  const nn::KlEvaluator probe(*model_->dense, probe_seqs_, /*keep_hidden=*/true);
  const std::vector<double> s = weigh_by_kl(table, bank, probe);
  ASSERT_EQ(s.size(), table.layers.size());
  for (size_t i : {size_t{0}, size_t{9}, table.layers.size() - 1}) {
    const auto& layer = before.layers[i];
    // Independently, per kind: the whole model with the layer at that kind's worst option, judged
    // from token 0; every option of the kind scaled by KL / error.
    std::map<std::string, double> ratio;
    for (const auto& o : layer.options) {
      const budget::Candidate* worst = &o;
      for (const auto& p : layer.options)
        if (p.method == o.method && p.error > worst->error) worst = &p;
      if (ratio.count(o.method)) continue;
      nn::LlamaModel m = model_->dense->clone();
      const auto c = bank.compressed(layer.tensor, worst->method, worst->knob);
      m.set_linear(layer.tensor, compress::find_compressor(worst->method).to_linear(*c));
      ratio[o.method] = probe(m, 0).mean_kl / worst->error;
    }
    ASSERT_EQ(ratio.size(), 3u) << layer.tensor;
    double largest = 0;
    for (const auto& [method, r] : ratio) largest = std::max(largest, r);
    EXPECT_NEAR(s[i], largest, 1e-4 * largest) << layer.tensor;
    for (size_t k = 0; k < layer.options.size(); ++k) {
      const double expect = layer.options[k].error * ratio[layer.options[k].method];
      EXPECT_NEAR(table.layers[i].options[k].error, expect, 1e-9 + 1e-4 * expect)
          << layer.tensor << " " << layer.options[k].method << ":" << layer.options[k].knob;
    }
  }
}

TEST_F(PipelineTest, ChecksRefuseBadRequestsWithoutMeasuring) {
  const budget::Recipe recipe = mixed_recipe();
  EXPECT_THROW(check_budget(*model_, recipe, {std::nullopt, std::nullopt, "q3_kk"}), Error);
  EXPECT_THROW(check_budget(*model_, recipe, {std::nullopt, std::nullopt, "quant.nope:bits=3"}), Error);
  EXPECT_THROW(check_budget(*model_, recipe, {4.0, 1000.0, ""}), Error);
  try {
    check_budget(*model_, recipe, {0.5, std::nullopt, ""});
    FAIL() << "an impossible bits-per-weight budget was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("impossible"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(check_budget(*model_, recipe, {5.0, std::nullopt, ""}));
  PlanOptions typo;
  typo.solver = "gredy";
  EXPECT_THROW(typo.check(), Error);
  PlanOptions cap;
  cap.solver = "error";
  EXPECT_THROW(cap.check(), Error);
  cap.max_error = 1.0;
  EXPECT_NO_THROW(cap.check());
}

TEST(PlanOptions, CarryTheRecipesSearchSettings) {
  budget::Recipe r;
  r.solver = "dp";
  r.evolve = true;
  r.generations = 7;
  r.offspring = 3;
  r.max_swaps = 5;
  r.seed = 42;
  const PlanOptions o = PlanOptions::from(r);
  EXPECT_EQ(o.solver, "dp");
  EXPECT_TRUE(o.evolve);
  EXPECT_EQ(o.evolve_options.generations, 7);
  EXPECT_EQ(o.evolve_options.offspring, 3);
  EXPECT_EQ(o.evolve_options.max_swaps, 5);
  EXPECT_EQ(o.evolve_options.seed, 42u);
}

TEST_F(PipelineTest, BankKeepsItsCacheWithinTheLimit) {
  const uint64_t limit = 64 << 10;
  LayerBank bank(*model_, &calib_->stats, limit);
  for (const auto& name : model_->dense->linear_names()) {
    if (name.rfind("blk.", 0) != 0) continue;
    const auto c = bank.compressed(name, "quant.rtn", "bits=8,group=32");
    EXPECT_LE(bank.cached_bytes(), limit);
    // Asking again gives the same form (cached or made again: deterministic either way).
    const auto again = bank.compressed(name, "quant.rtn", "bits=8,group=32");
    EXPECT_EQ(again->stored_bytes(), c->stored_bytes());
    // The layer object made from a form counts against the same limit.
    const auto layer = bank.linear(name, "quant.rtn", "bits=8,group=32");
    EXPECT_LE(bank.cached_bytes(), limit);
  }
  EXPECT_GT(bank.cached_bytes(), 0u);
}

TEST_F(PipelineTest, ApplyingAPlanChangesExactlyItsLayers) {
  const budget::Recipe recipe = mixed_recipe(4.0);
  LayerBank bank(*model_, &calib_->stats);
  const budget::Table table = measure(*model_, recipe, bank);
  const auto constraint = resolve_budget(*model_, recipe, table, {});
  const PlanResult r = plan(table, constraint, PlanOptions::from(recipe), bank);
  EXPECT_LE(r.plan.total_cost().bytes, constraint.budget);
  const nn::LlamaModel m = apply(r.plan, bank);
  for (const auto& ch : r.plan.choices) {
    const auto c = bank.compressed(ch.tensor, ch.method, ch.knob);
    const RowMatrix<float> expect = compress::find_compressor(ch.method).reconstruct(*c);
    EXPECT_TRUE(m.linear(ch.tensor).dense_weight().isApprox(expect, 1e-6f)) << ch.tensor;
  }
  EXPECT_TRUE(m.linear("output.weight").dense_weight().isApprox(model_->dense->linear("output.weight").dense_weight()));
  // Applied again, the plan's layers are the same objects (variant passes run shared layers once).
  const nn::LlamaModel again = apply(r.plan, bank);
  for (const auto& ch : r.plan.choices) EXPECT_EQ(&again.linear(ch.tensor), &m.linear(ch.tensor)) << ch.tensor;
}

// Records the inputs one linear layer receives.
class InputsOf final : public nn::ForwardHooks {
 public:
  explicit InputsOf(std::string tensor) : tensor_(std::move(tensor)) {}
  void on_linear_input(int, std::span<const std::string> tensors, const float* x, int64_t tokens, int64_t dim) override {
    for (const auto& t : tensors)
      if (t == tensor_)
        for (int64_t r = 0; r < tokens; ++r) rows.emplace_back(x + r * dim, x + (r + 1) * dim);
  }
  std::vector<std::vector<float>> rows;

 private:
  std::string tensor_;
};

// Held-out errors measured on the judge's own dense pass equal those of a pass of their own, and a
// layer's value is ||(W - W') X||^2 / ||W X||^2 on the inputs that pass hands it, computed directly.
TEST_F(PipelineTest, HeldOutErrorsRideTheJudgesPass) {
  const budget::Recipe recipe = mixed_recipe(4.0);
  LayerBank bank(*model_, &calib_->stats);
  const budget::Table table = measure(*model_, recipe, bank);
  const auto constraint = resolve_budget(*model_, recipe, table, {});
  const budget::Plan p = plan(table, constraint, PlanOptions::from(recipe), bank).plan;
  const compress::LayerMap layers = compressed_layers(p, bank);
  HeldOutErrors hooks(*model_, p, layers);
  const nn::KlEvaluator judge(*model_->dense, probe_seqs_, /*keep_hidden=*/false, &hooks);
  const std::vector<double> riding = hooks.errors();
  const std::vector<double> own = held_out_errors(*model_, p, layers, probe_seqs_);
  ASSERT_EQ(riding.size(), p.choices.size());
  for (size_t i = 0; i < own.size(); ++i) EXPECT_DOUBLE_EQ(riding[i], own[i]) << p.choices[i].tensor;

  const std::string tensor = "blk.2.ffn_down.weight";
  InputsOf inputs(tensor);
  for (const auto& w : probe_seqs_) {
    nn::LlamaSession s(*model_->dense, static_cast<int64_t>(w.size()));
    s.forward(w, nullptr, nn::Logits::none, &inputs);
  }
  size_t at = 0;
  while (p.choices[at].tensor != tensor) ++at;
  const RowMatrix<float> w = model_->weight(tensor);
  const RowMatrix<float> w_hat = compress::find_compressor(layers.at(tensor).method).reconstruct(layers.at(tensor));
  double num = 0, den = 0;
  for (const auto& x : inputs.rows)
    for (int64_t o = 0; o < w.rows(); ++o) {
      double y = 0, y_hat = 0;
      for (int64_t j = 0; j < w.cols(); ++j) {
        y += static_cast<double>(w(o, j)) * x[static_cast<size_t>(j)];
        y_hat += static_cast<double>(w_hat(o, j)) * x[static_cast<size_t>(j)];
      }
      num += (y - y_hat) * (y - y_hat);
      den += y * y;
    }
  ASSERT_GT(num, 0);
  EXPECT_NEAR(riding[at], num / den, 1e-3 * num / den);
  EXPECT_THROW(nn::KlEvaluator(*model_->dense, probe_seqs_, /*keep_hidden=*/true, &hooks), Error);
}

TEST_F(PipelineTest, BlockByBlockMeasuresAndCompressesAsTheWholeModel) {
  // Statistics collected one block (or two) at a time on carried hidden states are those of a whole
  // forward pass: the same table and, in the dense (non-sequential) mode, the same compressed bytes.
  const budget::Recipe recipe = mixed_recipe();
  LayerBank bank(*model_, &calib_->stats);
  const budget::Table whole = measure(*model_, recipe, bank);
  for (int step : {1, 2}) {
    StreamOptions o;
    o.blocks_per_step = step;
    const budget::Table by_blocks = measure_by_blocks(*model_, recipe, calib_seqs_, o);
    ASSERT_EQ(by_blocks.layers.size(), whole.layers.size());
    for (size_t i = 0; i < whole.layers.size(); ++i) {
      ASSERT_EQ(by_blocks.layers[i].tensor, whole.layers[i].tensor);
      ASSERT_EQ(by_blocks.layers[i].options.size(), whole.layers[i].options.size());
      for (size_t k = 0; k < whole.layers[i].options.size(); ++k) {
        const double a = by_blocks.layers[i].options[k].error, b = whole.layers[i].options[k].error;
        EXPECT_NEAR(a, b, 1e-9 + 1e-5 * b) << whole.layers[i].tensor << " " << whole.layers[i].options[k].knob;
      }
    }
  }
  const auto constraint = resolve_budget(*model_, recipe, whole, {});
  const budget::Plan p = budget::solve(whole.pareto(constraint.metric), constraint, budget::Solver::greedy);
  const compress::LayerMap a = compressed_layers(p, bank);
  const compress::LayerMap b = compressed_layers_by_blocks(*model_, p, calib_seqs_);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, form] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_EQ(b.at(name).stored_bytes(), form.stored_bytes()) << name;
    const RowMatrix<float> wa = compress::find_compressor(form.method).reconstruct(form);
    const RowMatrix<float> wb = compress::find_compressor(form.method).reconstruct(b.at(name));
    EXPECT_LE((wa - wb).norm(), 1e-4 * wa.norm()) << name;
  }
  // Sequential mode compresses later blocks for the compressed earlier blocks' outputs: SparseGPT's
  // updates (which depend on the inputs) differ from block 1 on, block 0's not at all.
  const budget::Plan sparse = uniform_plan(*model_, whole, "prune.sparsegpt:pattern=2:4");
  const compress::LayerMap dense_inputs = compressed_layers_by_blocks(*model_, sparse, calib_seqs_);
  StreamOptions seq;
  seq.sequential = true;
  const compress::LayerMap c = compressed_layers_by_blocks(*model_, sparse, calib_seqs_, seq);
  for (const auto& [name, form] : dense_inputs)
    if (name.rfind("blk.0.", 0) == 0) EXPECT_EQ(compress::find_compressor(form.method).reconstruct(form),
                                                compress::find_compressor(form.method).reconstruct(c.at(name)))
                                          << name;
  double moved = 0;
  for (const auto& [name, form] : dense_inputs)
    if (name.rfind("blk.0.", 0) != 0)
      moved += (compress::find_compressor(form.method).reconstruct(form) -
                compress::find_compressor(form.method).reconstruct(c.at(name)))
                   .norm();
  EXPECT_GT(moved, 0.0);
  budget::Recipe kl = recipe;
  kl.error_mode = "kl";
  EXPECT_THROW(measure_by_blocks(*model_, kl, calib_seqs_), Error);
}

TEST_F(PipelineTest, AWiderMenuIsNeverWorseOnHeldOutText) {
  // quant alone vs quant + 2:4 + low rank, every solver, the same budget: the guard measures the plan
  // of each kind's menu alone on the probe, so the wider menu keeps the narrower one's plan unless
  // its own measures better.
  auto recipe_of = [](bool mixed) {
    nlohmann::json j = nlohmann::json::parse(R"({"name": "menu", "rules": [{"match": "blk.*.weight", "methods": [
      {"compressor": "quant.rtn", "knobs": ["bits=2,group=32", "bits=3,group=32", "bits=4,group=32", "bits=8,group=32"]}]}],
      "bits_per_weight": 4.6, "error_mode": "kl"})");
    if (mixed) {
      j["rules"][0]["methods"].push_back({{"compressor", "prune.sparsegpt"}, {"knobs", {"pattern=2:4"}}});
      j["rules"][0]["methods"].push_back({{"compressor", "lowrank.svdllm"}});
    }
    return budget::Recipe::from_json(j, "menu");
  };
  const auto held_out_seqs = nn::sample_sequences(*model_->dense, 8, 48, 1, 99);
  const nn::KlEvaluator held_out(*model_->dense, held_out_seqs);
  const nn::KlEvaluator probe(*model_->dense, calib_seqs_, /*keep_hidden=*/true);
  LayerBank bank(*model_, &calib_->stats);
  budget::Table narrow = measure(*model_, recipe_of(false), bank);
  budget::Table wide = measure(*model_, recipe_of(true), bank);
  weigh_by_kl(narrow, bank, probe);
  weigh_by_kl(wide, bank, probe);
  const auto constraint = resolve_budget(*model_, recipe_of(true), wide, {});
  ASSERT_EQ(constraint.budget, resolve_budget(*model_, recipe_of(false), narrow, {}).budget);
  ASSERT_GE(single_kind_menus(wide, constraint).size(), 2u);
  for (const char* solver : {"greedy", "dp", "minimax"}) {
    PlanOptions o;
    o.solver = solver;
    const PlanResult a = plan(narrow, constraint, o, bank, &probe);
    const PlanResult b = plan(wide, constraint, o, bank, &probe);
    EXPECT_LE(b.plan.total_cost().bytes, constraint.budget) << solver;
    const double kl_narrow = held_out(apply(a.plan, bank)).mean_kl, kl_wide = held_out(apply(b.plan, bank)).mean_kl;
    EXPECT_LE(kl_wide, kl_narrow * (1 + 1e-9)) << solver << ": wide " << kl_wide << " (" << b.plan.solver
                                               << ") vs narrow " << kl_narrow;
    EXPECT_LE(probe.mean_kl(apply(b.plan, bank)), probe.mean_kl(apply(a.plan, bank)) * (1 + 1e-9)) << solver;
  }
}

}  // namespace
}  // namespace strata::pipeline
