// Token merging's cost and what it saves. First ToMe's bipartite soft matching alone on 128..512 tokens of
// width 384 (MiniLM's hidden width; the encoder matches on the 32-wide keys averaged over heads, timed too),
// then all-MiniLM-L6-v2's encoder on one batch of real passages with and without token reduction: the dense
// forward is timed in the same run as the baseline and the ratio printed.
// Usage: bench_token [--model DIR] [--text FILE] [--batch 32] [--length 128] [benchmark flags], e.g.
// --benchmark_repetitions=3: the summary takes the least time of the repetitions.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "min_seconds.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/tokenizer.hpp"
#include "strata/token/merge.hpp"

namespace {

std::unique_ptr<strata::nn::BertEncoder> g_encoder;
strata::nn::TokenBatch g_batch;
void BM_Matching(benchmark::State& state) {
  const int64_t n = state.range(0), d = state.range(1);
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> x(static_cast<size_t>(n * d));
  for (auto& v : x) v = g(rng);
  // On one thread, as the encoder runs it (one sequence per worker): Eigen's product would otherwise open a
  // parallel region per call, which costs more than the product at these sizes.
  const int threads = strata::num_threads();
  strata::set_num_threads(1);
  for (auto _ : state) {
    auto r = strata::token::bipartite_soft_matching(x.data(), n, d, d, n / 4);
    benchmark::DoNotOptimize(r.dest.data());
  }
  strata::set_num_threads(threads);
  state.counters["tokens"] = static_cast<double>(n);
}

void BM_Encoder(benchmark::State& state, strata::token::Method method, int schedule, double rate) {
  const auto& c = g_encoder->config();
  std::unique_ptr<strata::token::Reducer> reducer;
  if (rate > 0) {
    strata::token::ReducerOptions o;
    o.method = method;
    o.schedule = schedule == 0 ? strata::token::Schedule::constant(c.n_layers, rate)
                               : strata::token::Schedule::decreasing(c.n_layers, rate);
    reducer = std::make_unique<strata::token::Reducer>(o);
  }
  for (auto _ : state) {
    const strata::Tensor e = g_encoder->embed(g_batch, reducer.get());
    benchmark::DoNotOptimize(e.view<const float>().data());
  }
  state.counters["tokens"] = static_cast<double>(g_batch.size * g_batch.length);
}

// `batch` windows of `length` tokens ([CLS] ... [SEP]) of real text.
strata::nn::TokenBatch passages(const std::filesystem::path& model, const std::filesystem::path& text, int64_t batch,
                                int64_t length) {
  strata::nn::WordPieceOptions o;
  o.max_length = 1 << 30;
  const auto tok = strata::nn::WordPieceTokenizer::from_file(model / "vocab.txt", o);
  const auto slice = strata::nn::TextSlice::parse(text, "0.7:0.8");
  const std::vector<int32_t> ids = tok.encode(slice.read());
  strata::nn::TokenBatch b;
  b.size = batch;
  b.length = length;
  for (int64_t s = 0; s < batch; ++s) {
    b.ids.push_back(tok.cls_id());
    for (int64_t j = 1; j + 1 < length; ++j)
      b.ids.push_back(ids[static_cast<size_t>(1 + (s * (length - 2) + j - 1) % static_cast<int64_t>(ids.size() - 2))]);
    b.ids.push_back(tok.sep_id());
  }
  b.attention_mask.assign(b.ids.size(), 1);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  const auto paths = strata::io::DataPaths::resolve(STRATA_SOURCE_DIR);
  std::filesystem::path model = paths.models / "all-minilm-l6-v2", text = paths.moby_dick();
  int64_t batch = 32, length = 128;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const auto value = [&](const char* flag) { return std::strcmp(argv[i], flag) == 0 && i + 1 < argc; };
    if (value("--model")) {
      model = argv[++i];
    } else if (value("--text")) {
      text = argv[++i];
    } else if (value("--batch")) {
      batch = std::atoll(argv[++i]);
    } else if (value("--length")) {
      length = std::atoll(argv[++i]);
    } else {
      rest.push_back(argv[i]);
    }
  }
  for (int64_t n : {128, 256, 384, 512}) {
    benchmark::RegisterBenchmark(("matching/width384/" + std::to_string(n)).c_str(), BM_Matching)->Args({n, 384});
    benchmark::RegisterBenchmark(("matching/width32/" + std::to_string(n)).c_str(), BM_Matching)->Args({n, 32});
  }
  const bool have_model = std::filesystem::exists(model / "model.safetensors") && std::filesystem::exists(text);
  if (have_model) {
    const auto file = strata::io::open_model(model / "model.safetensors");
    g_encoder = std::make_unique<strata::nn::BertEncoder>(strata::nn::BertEncoder::load(*file));
    g_batch = passages(model, text, batch, length);
    benchmark::RegisterBenchmark("encoder/dense", BM_Encoder, strata::token::Method::merge, 0, 0.0)
        ->Unit(benchmark::kMillisecond)
        ->MeasureProcessCPUTime()
        ->UseRealTime();
    for (double rate : {0.25, 0.5, 0.75})
      for (int schedule : {0, 1})
        for (auto m : {strata::token::Method::merge, strata::token::Method::prune}) {
          const std::string name = "encoder/" + std::string(strata::token::method_name(m)) + "/" +
                                   (schedule ? "decreasing/" : "constant/") +
                                   std::to_string(static_cast<int>(100 * rate));
          benchmark::RegisterBenchmark(name.c_str(), BM_Encoder, m, schedule, rate)
              ->Unit(benchmark::kMillisecond)
              ->MeasureProcessCPUTime()
              ->UseRealTime();
        }
  } else {
    std::fprintf(stderr,
                 "bench_token: %s or %s not found, timing the matching only "
                 "(scripts/fetch-models.sh)\n",
                 model.c_str(), text.c_str());
  }
  const auto g_seconds = strata::bench::run_benchmarks(rest);
  const auto dense = g_seconds.find("encoder/dense");
  if (dense != g_seconds.end()) {
    // On a shared machine the process CPU time (all threads) tracks the work better than the wall clock.
    const strata::bench::Seconds& d = dense->second;
    std::printf("\nencoder forward, batch %lld x %lld tokens, the least over the repetitions: dense %.1f ms wall, "
                "%.1f ms process CPU\n",
                static_cast<long long>(batch), static_cast<long long>(length), 1e3 * d.wall, 1e3 * d.cpu);
    for (const auto& [name, s] : g_seconds)
      if (name != "encoder/dense" && name.starts_with("encoder/"))
        std::printf("  %-28s wall %8.1f ms (%.2fx)   process CPU %8.1f ms (%.2fx)\n", name.c_str(), 1e3 * s.wall,
                    d.wall / s.wall, 1e3 * s.cpu, d.cpu / s.cpu);
  }
  return 0;
}
