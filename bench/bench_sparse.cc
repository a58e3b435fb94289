// Decode speed (one token, one thread) of pruned and group-quantized layers computing in their
// compressed form, against the dense float32 layer of the same shape (cblas_sgemv through
// nn::DenseLinear). Each case cycles through copies of one layer whose bytes together exceed twice
// the last-level cache, so that every product streams its weights from memory as an engine's
// decode step does. Usage: bench_sparse [--rows N] [--cols N] [benchmark flags].
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/nn/group_quant_linear.hpp"
#include "strata/nn/linear.hpp"
#include "strata/nn/sparse_linear.hpp"

namespace {

int64_t g_rows = 4096, g_cols = 4096;
std::map<std::string, double> g_rate;   // tokens/s per case
std::map<std::string, double> g_bytes;  // weight bytes of one layer per case

// The last-level cache, as the OS reports it; 32 MiB when it does not.
uint64_t l3_bytes() {
  const long s = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (s > 0) return static_cast<uint64_t>(s);
  std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
  std::string text;
  if (in >> text && !text.empty()) {
    uint64_t v = std::strtoull(text.c_str(), nullptr, 10);
    if (text.back() == 'K') v <<= 10;
    if (text.back() == 'M') v <<= 20;
    if (v > 0) return v;
  }
  return uint64_t{32} << 20;
}

// One case's layers, built on first use and kept while its benchmark runs (Google Benchmark calls
// the function several times); the previous case's are freed first.
std::string g_built;
std::vector<std::shared_ptr<const strata::nn::Linear>> g_layers;

template <class Layer>
std::vector<std::shared_ptr<const strata::nn::Linear>> copies(const strata::nn::Linear& one) {
  const auto& layer = dynamic_cast<const Layer&>(one);
  const uint64_t want = 2 * l3_bytes();
  const size_t n = static_cast<size_t>(std::max<uint64_t>(2, want / layer.weight_bytes() + 1));
  std::vector<std::shared_ptr<const strata::nn::Linear>> out;
  for (size_t i = 0; i < n; ++i) out.push_back(std::make_shared<Layer>(layer));
  return out;
}

const strata::RowMatrix<float>& weight() {
  static const strata::RowMatrix<float> w = [] {
    std::mt19937_64 rng(7);
    std::normal_distribution<float> g(0.0f, 0.02f);
    strata::RowMatrix<float> m(g_rows, g_cols);
    for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
  }();
  return w;
}

std::shared_ptr<const strata::nn::Linear> compressed(const char* method, const char* knob) {
  const auto& comp = strata::compress::find_compressor(method);
  const strata::compress::Layer layer{"bench.weight", &weight()};
  return comp.to_linear(comp.apply(layer, {}, knob));
}

void build(const std::string& name) {
  if (g_built == name) return;
  g_layers.clear();
  g_built = name;
  if (name == "dense f32") {
    g_layers = copies<strata::nn::DenseLinear>(strata::nn::DenseLinear(weight()));
    return;
  }
  static const std::map<std::string, std::pair<const char*, const char*>> kinds = {
      {"2:4 f16", {"prune.magnitude", "pattern=2:4"}},
      {"2:4 f32", {"prune.magnitude", "pattern=2:4,values=f32"}},
      {"50% bitmask f16", {"prune.magnitude", "sparsity=0.5"}},
      {"90% CSR f16", {"prune.magnitude", "sparsity=0.9"}},
      {"int4 g128", {"quant.rtn", "bits=4,group=128,asym"}},
      {"int8 g128", {"quant.rtn", "bits=8,group=128,asym"}},
  };
  const auto& [method, knob] = kinds.at(name);
  const auto one = compressed(method, knob);
  if (std::string(method).starts_with("prune"))
    g_layers = copies<strata::nn::SparseLinear>(*one);
  else
    g_layers = copies<strata::nn::GroupQuantLinear>(*one);
}

void BM_Gemv(benchmark::State& state, const std::string& name) {
  strata::set_num_threads(1);
  build(name);
  std::vector<float> x(static_cast<size_t>(g_cols), 0.5f), y(static_cast<size_t>(g_rows));
  size_t i = 0;
  for (auto _ : state) {
    g_layers[i]->forward(x.data(), 1, y.data());
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % g_layers.size();
  }
  const double bytes = static_cast<double>(g_layers.front()->weight_bytes());
  state.SetItemsProcessed(state.iterations());
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GB/s"] =
      benchmark::Counter(bytes * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(g_layers.front()->describe() + ", " + std::to_string(g_layers.size()) + " layers");
  g_bytes[name] = bytes;
}

// Google Benchmark reports rates only through its reporter; this one keeps them for the summary.
class Keeper : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      const auto it = run.counters.find("tok/s");
      if (it == run.counters.end() || run.run_type != Run::RT_Iteration) continue;
      // "Gemv/<case>/min_time:..." -> "<case>"
      std::string name = run.benchmark_name();
      name = name.substr(name.find('/') + 1);
      name = name.substr(0, name.find('/'));
      g_rate[name] = it->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      g_rows = std::atoll(argv[++i]);
      continue;
    }
    if (std::strcmp(argv[i], "--cols") == 0 && i + 1 < argc) {
      g_cols = std::atoll(argv[++i]);
      continue;
    }
    rest.push_back(argv[i]);
  }
  int rest_argc = static_cast<int>(rest.size());
  std::printf("layer [%lld, %lld], one thread, one token; L3 %.0f MiB, each case cycles through > %.0f MiB\nBLAS: %s\n",
              static_cast<long long>(g_rows), static_cast<long long>(g_cols), static_cast<double>(l3_bytes()) / 1048576.0,
              2.0 * static_cast<double>(l3_bytes()) / 1048576.0, strata::blas_info().describe().c_str());
  const std::vector<std::string> cases = {"dense f32",       "2:4 f16",     "2:4 f32",   "50% bitmask f16",
                                          "90% CSR f16",     "int4 g128",   "int8 g128"};
  for (const auto& name : cases)
    benchmark::RegisterBenchmark(("Gemv/" + name).c_str(), BM_Gemv, name)->MinTime(1.0)->Unit(benchmark::kMillisecond);
  benchmark::Initialize(&rest_argc, rest.data());
  Keeper reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  g_layers.clear();

  std::printf("\nSummary (same run; target: 2:4 >= 1.6x dense float32)\n");
  std::printf("%-18s %12s %10s %10s %12s\n", "layer", "MiB/layer", "tok/s", "GB/s", "vs dense f32");
  const double dense = g_rate.count("dense f32") ? g_rate["dense f32"] : 0;
  for (const auto& name : cases) {
    if (!g_rate.count(name)) continue;
    const double mib = g_bytes[name] / 1048576.0;
    std::printf("%-18s %12.1f %10.1f %10.2f %11.2fx\n", name.c_str(), mib, g_rate[name],
                g_rate[name] * g_bytes[name] / 1e9, dense > 0 ? g_rate[name] / dense : 0.0);
  }
  return 0;
}
