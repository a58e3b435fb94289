// An engine's use of the compression pipeline through the installed library alone: calibrate
// stories260K on its own samples, measure a mixed menu, plan at 5 bits per weight, write a strata
// safetensors, read it back and evaluate it against the dense model.
// Usage: pipeline_consumer STORIES260K.bin OUT_DIR (exits 77, a skip, when the model is missing).
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <strata/strata.hpp>

namespace {

int check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s STORIES260K.bin OUT_DIR\n", argv[0]);
    return 2;
  }
  if (!std::filesystem::exists(argv[1])) {
    std::printf("skipped: %s not found (STRATA_SHARED_DATA)\n", argv[1]);
    return 77;
  }
  namespace pl = strata::pipeline;
  try {
    const pl::Model model = pl::Model::load(argv[1]);
    const auto samples = strata::nn::sample_sequences(*model.dense, 12, 64, 1, 7);
    const std::vector<std::vector<int32_t>> calib_seqs(samples.begin(), samples.begin() + 8);
    const std::vector<std::vector<int32_t>> eval_seqs(samples.begin() + 8, samples.end());
    const pl::Calibration calib = pl::calibrate(model, calib_seqs);

    const auto recipe = strata::budget::Recipe::from_json(nlohmann::json::parse(R"({
      "name": "consumer",
      "rules": [
        {"match": "blk.*.weight", "methods": [
          {"compressor": "quant.rtn"},
          {"compressor": "prune.sparsegpt", "knobs": ["pattern=2:4"]},
          {"compressor": "lowrank.svdllm"}]}
      ],
      "bits_per_weight": 5,
      "solver": "dp"
    })"), "consumer recipe");
    pl::LayerBank bank(model, &calib.stats);
    const strata::budget::Table table = pl::measure(model, recipe, bank);
    const auto constraint = pl::resolve_budget(model, recipe, table, {});
    const pl::PlanResult planned = pl::plan(table, constraint, pl::PlanOptions::from(recipe), bank);
    const auto out = std::filesystem::path(argv[2]) / "stories260K-5bpw.safetensors";
    const pl::Written w = pl::write(model, pl::compressed_layers(planned.plan, bank), out, planned.plan);

    const strata::nn::KlEvaluator judge(*model.dense, eval_seqs);
    const pl::Evaluation ev = pl::evaluate(planned.plan, bank, judge);
    const auto reloaded = strata::compress::load_llama(out);
    const strata::nn::KlResult from_file = judge(reloaded.model);
    const double kl = ev.variants.front().result.mean_kl;
    std::printf("%zu tensors, plan %.3f bits per weight, %llu bytes written, KL %.5f (from the file %.5f), "
                "perplexity %.3f (dense %.3f)\n",
                table.layers.size(), planned.plan.bits_per_weight(table.params()),
                static_cast<unsigned long long>(w.file_bytes), kl, from_file.mean_kl,
                ev.variants.front().result.model.perplexity, ev.dense_perplexity);
    int failures = 0;
    failures += check(planned.plan.total_cost().bytes <= constraint.budget, "the plan fits its budget");
    failures += check(std::filesystem::file_size(out) == w.file_bytes, "written size as reported");
    failures += check(kl > 0 && std::isfinite(kl), "compression changed the model, finitely");
    failures += check(std::abs(from_file.mean_kl - kl) <= 1e-9 + 1e-6 * kl, "the file computes what the plan did");
    return failures == 0 ? 0 : 1;
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
