// Prefill token pruning's speed (nn/prefill_pruning.hpp): SmolLM2-135M reads a prompt of real text into a
// kv::Session, densely and with a fraction of the prompt dropped before a block, for every prompt length x
// block x fraction asked. The dense prefill of each length is timed in the same run as the baseline and the
// ratios printed, with the FLOPs ratio the pruning implies.
// Usage: bench_prefill [--model GGUF] [--text FILE] [--lengths 512,1024,2048] [--layers 15,8]
//                      [--fractions 0.25,0.5,0.75] [benchmark flags], e.g. --benchmark_repetitions=2: the
// summary takes the least time of the repetitions.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "min_seconds.hpp"
#include "strata/core/blas.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/prefill_pruning.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

std::unique_ptr<strata::io::Model> g_file;
std::unique_ptr<strata::nn::LlamaModel> g_model;
std::vector<int32_t> g_tokens;
std::map<std::string, double> g_flops;  // per benchmark: the prefill's FLOPs


void BM_Prefill(benchmark::State& state, const std::string& name, int64_t length, int layer, double drop) {
  const auto& c = g_model->config();
  const std::span<const int32_t> prompt(g_tokens.data(), static_cast<size_t>(length));
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  std::vector<int64_t> rows(static_cast<size_t>(c.n_layers), length);
  for (auto _ : state) {
    strata::kv::Session session(*g_model, length);
    if (drop > 0) {
      strata::nn::PrefillPruner pruner(strata::nn::PrefillPruning::at(layer, drop));
      session.forward(prompt, logits.data(), strata::nn::Logits::last, &pruner);
      rows = pruner.rows_per_layer();
    } else {
      session.forward(prompt, logits.data(), strata::nn::Logits::last);
    }
    benchmark::DoNotOptimize(logits.data());
  }
  g_flops[name] = strata::nn::prefill_flops(c, rows);
  state.counters["tokens"] = static_cast<double>(length);
}

template <class T>
std::vector<T> parse_list(const char* s) {
  std::vector<T> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(static_cast<T>(std::atof(item.c_str())));
  return out;
}

std::string case_name(int64_t length, int layer, double drop) {
  if (drop <= 0) return "prefill/" + std::to_string(length) + "/dense";
  return "prefill/" + std::to_string(length) + "/layer" + std::to_string(layer) + "/drop" +
         std::to_string(static_cast<int>(std::lround(100 * drop)));
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  const auto paths = strata::io::DataPaths::resolve(STRATA_SOURCE_DIR);
  std::filesystem::path model = paths.smollm2(), text = paths.moby_dick();
  std::vector<int64_t> lengths = {512, 1024, 2048};
  std::vector<int> layers = {15, 8};
  std::vector<double> fractions = {0.25, 0.5, 0.75};
  // Our flags take a value; everything else goes to Google Benchmark.
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string_view flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (has_value && flag == "--model") model = argv[++i];
    else if (has_value && flag == "--text") text = argv[++i];
    else if (has_value && flag == "--lengths") lengths = parse_list<int64_t>(argv[++i]);
    else if (has_value && flag == "--layers") layers = parse_list<int>(argv[++i]);
    else if (has_value && flag == "--fractions") fractions = parse_list<double>(argv[++i]);
    else rest.push_back(argv[i]);
  }
  if (!std::filesystem::exists(model) || !std::filesystem::exists(text)) {
    std::fprintf(stderr, "bench_prefill: %s or %s not found (scripts/fetch-models.sh)\n", model.c_str(), text.c_str());
    return 1;
  }
  try {
    g_file = strata::io::open_model(model);
    g_model = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load(*g_file));
    const auto tok = strata::nn::BpeTokenizer::from_model(*g_file);
    const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
    g_tokens = strata::nn::tokenize_slice(tok, strata::nn::TextSlice::parse(text, "0.7:0.8"), longest);
    strata::require(static_cast<int64_t>(g_tokens.size()) == longest, text.string(), " gives ",
                    g_tokens.size(), " tokens, ", longest, " asked");
    for (int64_t n : lengths)
      for (int layer : layers)
        for (double f : fractions) {
          auto p = strata::nn::PrefillPruning::at(layer, f);
          p.validate(g_model->config().n_layers);
          p.check_prompt(n);
        }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_prefill: %s\n", e.what());
    return 1;
  }
  for (int64_t n : lengths) {
    const std::string dense = case_name(n, 0, 0);
    benchmark::RegisterBenchmark(dense.c_str(), BM_Prefill, dense, n, 0, 0.0)
        ->Unit(benchmark::kMillisecond)
        ->MeasureProcessCPUTime()
        ->UseRealTime();
    for (int layer : layers)
      for (double f : fractions) {
        const std::string name = case_name(n, layer, f);
        benchmark::RegisterBenchmark(name.c_str(), BM_Prefill, name, n, layer, f)
            ->Unit(benchmark::kMillisecond)
            ->MeasureProcessCPUTime()
            ->UseRealTime();
      }
  }
  {
    // One untimed prefill first: the weights paged in and the thread pools started count for no case.
    strata::kv::Session warm(*g_model, lengths.front());
    std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
    warm.forward(std::span<const int32_t>(g_tokens.data(), static_cast<size_t>(lengths.front())), logits.data(),
                 strata::nn::Logits::last);
  }
  const auto g_seconds = strata::bench::run_benchmarks(rest);
  std::printf("\nprefill into kv::Session, SmolLM2-135M float32, the least over the repetitions:\n");
  std::printf("%-8s %-6s %-6s %12s %8s %14s %8s %10s\n", "tokens", "layer", "drop", "wall ms", "ratio",
              "process CPU ms", "ratio", "FLOPs");
  for (int64_t n : lengths) {
    const auto d = g_seconds.find(case_name(n, 0, 0));
    if (d == g_seconds.end()) continue;
    std::printf("%-8lld %-6s %-6s %12.1f %8s %14.1f %8s %10s\n", static_cast<long long>(n), "-", "0%",
                1e3 * d->second.wall, "1.00x", 1e3 * d->second.cpu, "1.00x", "1.000");
    for (int layer : layers)
      for (double f : fractions) {
        const std::string name = case_name(n, layer, f);
        const auto s = g_seconds.find(name);
        if (s == g_seconds.end()) continue;
        char drop[16];
        std::snprintf(drop, sizeof drop, "%d%%", static_cast<int>(std::lround(100 * f)));
        std::printf("%-8lld %-6d %-6s %12.1f %7.2fx %14.1f %7.2fx %10.3f\n", static_cast<long long>(n), layer, drop,
                    1e3 * s->second.wall, d->second.wall / s->second.wall, 1e3 * s->second.cpu,
                    d->second.cpu / s->second.cpu, g_flops.at(name) / g_flops.at(case_name(n, 0, 0)));
      }
  }
  return 0;
}
