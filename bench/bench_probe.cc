// bench_probe: judging several compressed variants of one model together (a variant pass,
// nn::KlEvaluator::mean_kl of several models) against judging them one at a time, as `strata
// compress` does for its sensitivities: SmolLM2-135M in its stored types, the probe of the main job
// (2 windows of 64 tokens of SOTU text, keep_hidden), and per starting block the 7 variants that
// each replace one linear layer of that block (ggml q4_k where rows are whole super-blocks, else
// iq4_nl, imatrix-weighted from the same windows). Cases per block b:
//   probe/alone/from:b     the 7 variants one after the other (the baseline)
//   probe/together/from:b  the 7 in one variant pass
// The summary prints each pair's ratio (wall and process CPU) and checks the KL values agree.
//
// Usage: bench_probe [--model GGUF] [--text TXT] [--blocks 0,15,29] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "min_seconds.hpp"
#include "strata/core/blas.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/pipeline/pipeline.hpp"

namespace {

using namespace strata;

std::unique_ptr<pipeline::Model> g_model;
std::unique_ptr<nn::KlEvaluator> g_probe;
std::map<int, std::vector<nn::LlamaModel>> g_variants;

std::vector<const nn::LlamaModel*> pointers(int block) {
  std::vector<const nn::LlamaModel*> out;
  for (const auto& m : g_variants.at(block)) out.push_back(&m);
  return out;
}

void BM_Alone(benchmark::State& state, int block) {
  const auto models = pointers(block);
  for (auto _ : state)
    for (const auto* m : models) benchmark::DoNotOptimize(g_probe->mean_kl(*m, block));
}

void BM_Together(benchmark::State& state, int block) {
  const auto models = pointers(block);
  for (auto _ : state) benchmark::DoNotOptimize(g_probe->mean_kl(models, block));
}

std::string case_name(const char* kind, int block) { return std::string("probe/") + kind + "/from:" + std::to_string(block); }

}  // namespace

int main(int argc, char** argv) {
  ensure_fast_blas(argc, argv);
  const auto paths = io::DataPaths::resolve(STRATA_SOURCE_DIR);
  std::filesystem::path model = paths.smollm2(), text = paths.sotu();
  std::vector<int> blocks = {0, 15, 29};
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string_view flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (has_value && flag == "--model") {
      model = argv[++i];
    } else if (has_value && flag == "--text") {
      text = argv[++i];
    } else if (has_value && flag == "--blocks") {
      blocks.clear();
      std::stringstream list(argv[++i]);
      for (std::string b; std::getline(list, b, ',');) blocks.push_back(std::stoi(b));
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (!std::filesystem::exists(model) || !std::filesystem::exists(text)) {
    std::fprintf(stderr, "bench_probe: %s or %s not found (scripts/fetch-models.sh)\n", model.c_str(), text.c_str());
    return 1;
  }
  std::unique_ptr<pipeline::Calibration> calib;
  std::unique_ptr<pipeline::LayerBank> bank;
  try {
    g_model = std::make_unique<pipeline::Model>(pipeline::Model::load(model, true));
    calib = std::make_unique<pipeline::Calibration>(
        pipeline::calibrate(*g_model, nn::TextSlice::parse(text, "0:0.5"), {2, 64, {}}));
    g_probe = std::make_unique<nn::KlEvaluator>(*g_model->dense, calib->sequences, /*keep_hidden=*/true);
    bank = std::make_unique<pipeline::LayerBank>(*g_model, &calib->stats);
    const int64_t n_layers = g_model->dense->config().n_layers;
    for (int b : blocks) {
      require(b >= 0 && b < n_layers, "bench_probe: --blocks: block ", b, " outside [0, ", n_layers, ")");
      for (const char* slot : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}) {
        budget::Choice c;
        c.tensor = "blk." + std::to_string(b) + "." + slot + ".weight";
        c.method = "quant.ggml";
        c.knob = g_model->weight_shape(c.tensor).second % 256 == 0 ? "q4_k" : "iq4_nl";
        budget::Plan one;
        one.choices.push_back(c);
        g_variants[b].push_back(pipeline::apply(one, *bank));
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_probe: %s\n", e.what());
    return 1;
  }
  for (int b : blocks)
    for (auto [kind, fn] : {std::pair{"alone", &BM_Alone}, std::pair{"together", &BM_Together}})
      benchmark::RegisterBenchmark(case_name(kind, b).c_str(), fn, b)
          ->Unit(benchmark::kMillisecond)
          ->MeasureProcessCPUTime()
          ->UseRealTime();
  const auto seconds = bench::run_benchmarks(rest);
  std::printf("\n7 one-layer variants judged on the probe (%lld tokens), the least over the repetitions:\n",
              static_cast<long long>(g_probe->tokens()));
  std::printf("%-6s %12s %12s %8s %12s %12s %8s %14s\n", "block", "alone ms", "together ms", "ratio", "alone CPU",
              "together CPU", "ratio", "max KL diff");
  for (int b : blocks) {
    const auto a = seconds.find(case_name("alone", b)), t = seconds.find(case_name("together", b));
    if (a == seconds.end() || t == seconds.end()) continue;
    const auto models = pointers(b);
    const std::vector<double> together = g_probe->mean_kl(models, b);
    double diff = 0;
    for (size_t v = 0; v < models.size(); ++v) diff = std::max(diff, std::abs(together[v] - g_probe->mean_kl(*models[v], b)));
    std::printf("%-6d %12.1f %12.1f %7.2fx %12.1f %12.1f %7.2fx %14.2g\n", b, 1e3 * a->second.wall,
                1e3 * t->second.wall, a->second.wall / t->second.wall, 1e3 * a->second.cpu, 1e3 * t->second.cpu,
                a->second.cpu / t->second.cpu, diff);
  }
  return 0;
}
