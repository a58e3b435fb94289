// Token merging's cost and what it saves. First the matchings alone (ToMe's bipartite matching at width 384,
// MiniLM's hidden width, and 32, its keys averaged over heads; the greedy pairs at 384), then all-MiniLM-L6-v2's
// whole encoder (embeddings, layers, pooling) over the passages token_merge_eval reports on (Moby-Dick 70%-80%,
// runs of whole sentences of at least 64 tokens, batches of similar length), with and without token reduction:
// the dense encoder is timed in the same run as the baseline and the ratios printed, with the FLOPs.
// Usage: bench_token [--model DIR] [--text FILE] [--slice 0.7:0.8] [--passages 120] [--batch 32]
//                    [--matching bipartite|greedy] [--schedule F0,F1,...] [benchmark flags]
// e.g. --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true: the summary takes the least time
// of the repetitions. --schedule adds a merge schedule of per-layer fractions (encoder/merge/schedule).
// correction/{shift,affine} time token::EmbeddingCorrection on as many pooled rows as there are passages, against
// the dense encoder over them.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "min_seconds.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/passages.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/tokenizer.hpp"
#include "strata/token/correction.hpp"
#include "strata/token/merge.hpp"

namespace {

std::unique_ptr<strata::nn::BertEncoder> g_encoder;
strata::nn::PassageBatches g_passages;
std::map<std::string, double> g_flops;  // benchmark name -> encoder FLOPs per iteration

// One matching of n / 4 tokens out of n random rows of width d.
void BM_Matching(benchmark::State& state, strata::token::Matching matching) {
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
    auto r = matching == strata::token::Matching::greedy
                 ? strata::token::greedy_pair_matching(x.data(), n, d, d, n / 4)
                 : strata::token::bipartite_soft_matching(x.data(), n, d, d, n / 4);
    benchmark::DoNotOptimize(r.dest.data());
  }
  strata::set_num_threads(threads);
  state.counters["tokens"] = static_cast<double>(n);
}

// An embedding correction (fitted on random pairs: its cost does not depend on the values) applied to one pooled
// row per passage, with the L2 normalisation that follows it.
void BM_Correction(benchmark::State& state, strata::token::CorrectionKind kind) {
  const int64_t n = state.range(0), d = state.range(1);
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  strata::RowMatrix<float> x(2 * d, d), y(2 * d, d), pools(n, d);
  for (auto* m : {&x, &y, &pools})
    for (int64_t i = 0; i < m->size(); ++i) m->data()[i] = g(rng);
  const auto c = kind == strata::token::CorrectionKind::affine ? strata::token::EmbeddingCorrection::affine(x, y, 0.01)
                                                               : strata::token::EmbeddingCorrection::shift(x, y);
  for (auto _ : state) {
    const strata::RowMatrix<float> e = c.embed(pools);
    benchmark::DoNotOptimize(e.data());
  }
}

// The whole encoder (embeddings, every layer, pooling) over every batch of the passages; null options: dense.
void BM_Encoder(benchmark::State& state, const std::string& name, std::optional<strata::token::ReducerOptions> o) {
  std::unique_ptr<strata::token::Reducer> reducer;
  if (o) reducer = std::make_unique<strata::token::Reducer>(*o);
  int64_t tokens = 0;
  for (const auto& b : g_passages.batches) tokens += static_cast<int64_t>(std::count(b.attention_mask.begin(), b.attention_mask.end(), 1));
  for (auto _ : state)
    for (const auto& b : g_passages.batches) {
      const strata::Tensor e = g_encoder->embed(b, reducer.get());
      benchmark::DoNotOptimize(e.view<const float>().data());
    }
  const auto& c = g_encoder->config();
  const double flops = reducer ? strata::token::encoder_flops(c, reducer->stats())
                               : strata::token::dense_encoder_flops(c, g_passages.lengths) *
                                     static_cast<double>(state.iterations());
  g_flops[name] = flops / static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
  state.counters["tokens"] = static_cast<double>(tokens);
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  const auto paths = strata::io::DataPaths::resolve(STRATA_SOURCE_DIR);
  std::filesystem::path model = paths.models / "all-minilm-l6-v2", text = paths.moby_dick();
  std::string slice = "0.7:0.8", schedule, matching = "greedy";
  int64_t batch = 32, passages = 120;
  std::vector<char*> rest;
  const auto fail = [](const std::string& what) {
    std::fprintf(stderr, "bench_token: %s\n", what.c_str());
    std::exit(2);
  };
  const auto number = [&](const char* flag, const char* v) {
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    if (end == v || *end != '\0' || n <= 0) fail(std::string("option ") + flag + " needs a positive integer, got '" + v + "'");
    return static_cast<int64_t>(n);
  };
  for (int i = 0; i < argc; ++i) {
    const auto value = [&](const char* flag) { return std::strcmp(argv[i], flag) == 0 && i + 1 < argc; };
    if (value("--model")) {
      model = argv[++i];
    } else if (value("--text")) {
      text = argv[++i];
    } else if (value("--slice")) {
      slice = argv[++i];
    } else if (value("--passages")) {
      passages = number("--passages", argv[++i]);
    } else if (value("--batch")) {
      batch = number("--batch", argv[++i]);
    } else if (value("--schedule")) {
      schedule = argv[++i];
    } else if (value("--matching")) {
      matching = argv[++i];
    } else {
      rest.push_back(argv[i]);
    }
  }
  for (int64_t n : {128, 256, 384, 512}) {
    using strata::token::Matching;
    benchmark::RegisterBenchmark(("matching/width384/" + std::to_string(n)).c_str(), BM_Matching, Matching::bipartite)
        ->Args({n, 384});
    benchmark::RegisterBenchmark(("matching/width32/" + std::to_string(n)).c_str(), BM_Matching, Matching::bipartite)
        ->Args({n, 32});
    benchmark::RegisterBenchmark(("matching/greedy/width384/" + std::to_string(n)).c_str(), BM_Matching,
                                 Matching::greedy)
        ->Args({n, 384});
  }
  const bool have_model = std::filesystem::exists(model / "model.safetensors") && std::filesystem::exists(text);
  if (have_model) {
    try {
      const auto file = strata::io::open_model(model / "model.safetensors");
      g_encoder = std::make_unique<strata::nn::BertEncoder>(strata::nn::BertEncoder::load(*file));
      const auto tok = strata::nn::WordPieceTokenizer::from_file(model / "vocab.txt");
      strata::nn::PassageOptions po;
      po.limit = passages;
      g_passages = strata::nn::batch_by_length(
          tok, strata::nn::sentence_passages(strata::nn::TextSlice::parse(text, slice), tok, po), batch);
      const auto& c = g_encoder->config();
      const auto add = [](const std::string& name, std::optional<strata::token::ReducerOptions> o) {
        benchmark::RegisterBenchmark(name.c_str(), BM_Encoder, name, std::move(o))
            ->Unit(benchmark::kMillisecond)
            ->MeasureProcessCPUTime()
            ->UseRealTime();
      };
      add("encoder/dense", std::nullopt);
      const auto rows = static_cast<int64_t>(g_passages.lengths.size());
      for (auto [name, kind] : {std::pair{"correction/shift", strata::token::CorrectionKind::shift},
                                std::pair{"correction/affine", strata::token::CorrectionKind::affine}})
        benchmark::RegisterBenchmark(name, BM_Correction, kind)
            ->Args({rows, c.dim})
            ->Unit(benchmark::kMillisecond)
            ->MeasureProcessCPUTime()
            ->UseRealTime();
      // As token_merge_eval runs them: merging on the hidden states, greedy pairs unless --matching says.
      strata::token::ReducerOptions base;
      base.metric = strata::token::Metric::hidden;
      base.matching = strata::token::parse_matching(matching);
      for (double rate : {0.25, 0.5, 0.75})
        for (int decreasing : {0, 1})
          for (auto m : {strata::token::Method::merge, strata::token::Method::prune}) {
            if (m == strata::token::Method::prune && rate != 0.5) continue;
            strata::token::ReducerOptions o = base;
            o.method = m;
            o.schedule = decreasing ? strata::token::Schedule::decreasing(c.n_layers, rate)
                                    : strata::token::Schedule::constant(c.n_layers, rate);
            add("encoder/" + std::string(strata::token::method_name(m)) + "/" +
                    (decreasing ? "decreasing/" : "constant/") + std::to_string(static_cast<int>(100 * rate)),
                o);
          }
      if (!schedule.empty()) {
        strata::token::ReducerOptions o = base;
        for (size_t at = 0; at <= schedule.size();) {
          const size_t comma = std::min(schedule.find(',', at), schedule.size());
          char* end = nullptr;
          const std::string item = schedule.substr(at, comma - at);
          o.schedule.fraction.push_back(std::strtod(item.c_str(), &end));
          if (item.empty() || *end != '\0') fail("option --schedule holds '" + item + "'; expected numbers like 0.1,0.1");
          at = comma + 1;
        }
        o.allow_shortfall = true;
        add("encoder/merge/schedule", o);
      }
    } catch (const strata::Error& e) {
      fail(e.what());
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
    int64_t tokens = 0;
    for (int64_t n : g_passages.lengths) tokens += n;
    std::printf("\nencoder, %zu passages of %s %s (%lld tokens) in batches of %lld, the least over the repetitions: "
                "dense %.1f ms wall, %.1f ms process CPU\n",
                g_passages.lengths.size(), text.filename().c_str(), slice.c_str(), static_cast<long long>(tokens),
                static_cast<long long>(batch), 1e3 * d.wall, 1e3 * d.cpu);
    const double dense_flops = g_flops["encoder/dense"];
    for (const auto& [name, s] : g_seconds)
      if (name != "encoder/dense" && name.starts_with("encoder/"))
        std::printf("  %-28s FLOPs %5.1f%%   wall %8.1f ms (%.2fx)   process CPU %8.1f ms (%.2fx)\n", name.c_str(),
                    100 * g_flops[name] / dense_flops, 1e3 * s.wall, d.wall / s.wall, 1e3 * s.cpu, d.cpu / s.cpu);
    for (const auto& [name, s] : g_seconds)
      if (name.starts_with("correction/"))
        std::printf("  %-28s %.3f ms process CPU for %zu passages: %.4f%% of the dense encoder's\n", name.c_str(),
                    1e3 * s.cpu, g_passages.lengths.size(), 100 * s.cpu / d.cpu);
  }
  return 0;
}
