// Speed of the reference engine on SmolLM2-135M (float32 weights): prefill and decode tokens/s on
// 1 and 2 threads, with the two baselines that bound them measured in the same run: memory-copy
// bandwidth (decode streams every weight once per token) and the BLAS sgemm rate (prefill is
// matrix products). Usage: bench_engine [--model PATH] [benchmark flags].
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/llama.hpp"

namespace {

std::unique_ptr<strata::nn::LlamaModel> g_model;
std::map<std::string, double> g_rate;  // last measured rate per benchmark name

std::vector<int32_t> prompt_tokens(int64_t n, int64_t vocab) {
  std::mt19937 rng(42);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// memcpy of a 1 GiB buffer, split over the threads; far beyond any cache.
void BM_MemCopy(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  strata::set_num_threads(threads);
  const size_t bytes = size_t{1} << 30;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    strata::parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const size_t chunk = bytes / static_cast<size_t>(threads);
        std::memcpy(dst.data() + static_cast<size_t>(i) * chunk, src.data() + static_cast<size_t>(i) * chunk, chunk);
      }
    });
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(dst.data());
  }
  // Copy bandwidth counts bytes read plus bytes written, as STREAM does.
  const double gbps = 2.0 * static_cast<double>(bytes) * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  g_rate["copy/" + std::to_string(threads)] = gbps;
}

void BM_Sgemm(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  strata::set_num_threads(threads);
  const int n = 2048;
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double gflops = 2.0 * n * n * static_cast<double>(n) * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GFLOP/s"] = gflops;
  g_rate["sgemm/" + std::to_string(threads)] = gflops;
}

double forward_flops(const strata::nn::LlamaModel& m, int64_t tokens) {
  double params = 0;
  for (const auto& name : m.linear_names()) {
    const auto& l = m.linear(name);
    params += static_cast<double>(l.in_features() * l.out_features());
  }
  // Linear layers dominate; attention adds 4 * tokens^2/2 * dim per layer for a causal prefill.
  const auto& c = m.config();
  return 2.0 * params * static_cast<double>(tokens) +
         2.0 * static_cast<double>(c.n_layers * c.n_heads * c.head_dim) * static_cast<double>(tokens * tokens);
}

void BM_Prefill(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const int64_t n = state.range(1);
  strata::set_num_threads(threads);
  const auto toks = prompt_tokens(n, g_model->config().vocab_size);
  std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
  strata::nn::LlamaSession session(*g_model, n);
  double seconds = 0;
  for (auto _ : state) {
    session.reset();
    const auto t0 = std::chrono::steady_clock::now();
    session.forward(toks, logits.data(), strata::nn::Logits::last);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double per_run = seconds / static_cast<double>(state.iterations());
  state.counters["tok/s"] = static_cast<double>(n) / per_run;
  const double gflops = forward_flops(*g_model, n) / per_run / 1e9;
  state.counters["GFLOP/s"] = gflops;
  g_rate["prefill_tok/" + std::to_string(threads)] = static_cast<double>(n) / per_run;
  g_rate["prefill_gflops/" + std::to_string(threads)] = gflops;
}

void BM_Decode(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  strata::set_num_threads(threads);
  const int64_t context = 128, steps = 32;
  const auto toks = prompt_tokens(context + steps, g_model->config().vocab_size);
  std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
  strata::nn::LlamaSession session(*g_model, context + steps);
  double seconds = 0;
  for (auto _ : state) {
    session.reset();
    session.forward(std::span<const int32_t>(toks).first(static_cast<size_t>(context)), logits.data(),
                    strata::nn::Logits::last);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i)
      session.forward(std::span<const int32_t>(toks).subspan(static_cast<size_t>(context + i), 1), logits.data(),
                      strata::nn::Logits::last);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double per_token = seconds / static_cast<double>(state.iterations() * steps);
  double bytes = 0;
  for (const auto& name : g_model->linear_names()) bytes += static_cast<double>(g_model->linear(name).weight_bytes());
  state.counters["tok/s"] = 1.0 / per_token;
  state.counters["weights GB/s"] = bytes / per_token / 1e9;
  g_rate["decode_tok/" + std::to_string(threads)] = 1.0 / per_token;
  g_rate["decode_gbps/" + std::to_string(threads)] = bytes / per_token / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  std::filesystem::path model_path = strata::io::DataPaths::resolve().smollm2();
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      model_path = argv[++i];
      continue;
    }
    rest.push_back(argv[i]);
  }
  int rest_argc = static_cast<int>(rest.size());
  if (!std::filesystem::exists(model_path)) {
    std::fprintf(stderr, "bench_engine: %s not found (run scripts/fetch-models.sh, or pass --model PATH)\n",
                 model_path.c_str());
    return 1;
  }
  auto file = strata::io::open_model(model_path);
  g_model = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load(*file));
  std::printf("model: %s (float32 weights)\nBLAS: %s\n", model_path.c_str(), strata::blas_info().describe().c_str());

  for (int t : {1, 2}) {
    benchmark::RegisterBenchmark(("MemCopy/threads:" + std::to_string(t)).c_str(), BM_MemCopy)->Arg(t)->Iterations(3)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Sgemm2048/threads:" + std::to_string(t)).c_str(), BM_Sgemm)->Arg(t)->Iterations(3)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Prefill512/threads:" + std::to_string(t)).c_str(), BM_Prefill)->Args({t, 512})->Iterations(2)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Decode/threads:" + std::to_string(t)).c_str(), BM_Decode)->Arg(t)->Iterations(2)->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  std::printf("\nSummary (same run; targets: decode >= 50%% of copy bandwidth, prefill >= 40%% of sgemm)\n");
  std::printf("%-8s %12s %12s %10s %12s %12s %12s %10s\n", "threads", "decode tok/s", "weights GB/s", "copy GB/s",
              "decode/copy", "prefill tok/s", "prefill GF/s", "sgemm GF/s");
  for (int t : {1, 2}) {
    const std::string k = "/" + std::to_string(t);
    if (!g_rate.count("decode_gbps" + k) || !g_rate.count("copy" + k) || !g_rate.count("sgemm" + k)) continue;
    std::printf("%-8d %12.1f %12.2f %10.2f %11.0f%% %12.1f %12.1f %10.1f  prefill/sgemm %.0f%%\n", t,
                g_rate["decode_tok" + k], g_rate["decode_gbps" + k], g_rate["copy" + k],
                100.0 * g_rate["decode_gbps" + k] / g_rate["copy" + k], g_rate["prefill_tok" + k],
                g_rate["prefill_gflops" + k], g_rate["sgemm" + k],
                100.0 * g_rate["prefill_gflops" + k] / g_rate["sgemm" + k]);
  }
  return 0;
}
