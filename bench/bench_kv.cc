// Cost of KV-cache eviction inside the decode loop, SmolLM2-135M at a 2K-token context: each
// scorer's compression (scoring, selection, moving the kept rows) timed beside the decode step it
// belongs to, compressing every step and every 8 steps, with the dense decode step over the full
// 2K cache measured in the same run as the baseline. Times are wall clock, medians over the
// iterations (the step and its compression alternate, so both see the same machine load).
// Before them, the SIMD scoring helpers (src/kernels/cpu/kv_score.hpp) are timed against their
// scalar references, and top-k against the std::partial_sort the eviction policy used, at the
// sizes a decode step gives them; they need no model.
// Usage: bench_kv [--model PATH] [--budget 410] [benchmark flags].
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../src/kernels/cpu/kv_score.hpp"  // the helpers and their scalar references
#include "strata/core/blas.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/llama.hpp"

namespace {

constexpr int64_t kContext = 2048;
constexpr int64_t kSteps = 48;  // decode steps per benchmark (after a 2K-token prefill)

std::unique_ptr<strata::nn::LlamaModel> g_model;
int64_t g_budget = 410;  // tokens per KV head: 20% of the context
struct Timing {
  double step_ms = 0, compress_ms = 0;
};
std::map<std::string, Timing> g_time;  // per benchmark

std::vector<int32_t> tokens(int64_t n) {
  std::mt19937 rng(7);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = static_cast<int32_t>(rng() % static_cast<uint32_t>(g_model->config().vocab_size));
  return t;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Dense decode at 2K: the step every compressed step is compared with.
void BM_DenseDecode(benchmark::State& state) {
  const auto prompt = tokens(kContext + kSteps);
  std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
  std::vector<double> steps;
  for (auto _ : state) {
    strata::kv::Session session(*g_model, kContext + kSteps);
    session.forward(std::span<const int32_t>(prompt).first(kContext), logits.data(), strata::nn::Logits::last);
    for (int64_t i = 0; i < kSteps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      session.forward(std::span<const int32_t>(prompt).subspan(static_cast<size_t>(kContext + i), 1), logits.data(),
                      strata::nn::Logits::last);
      steps.push_back(ms_since(t0));
    }
  }
  g_time["dense"] = {median(steps), 0};
  state.counters["step_ms"] = median(steps);
}

// The compressed session reads the 2K prompt (compressed to the budget at prefill), then decodes:
// every `every` steps compress() runs, timed on its own. The session's decode schedule is set to a
// period longer than the run, so it never compresses by itself but keeps that many rows of headroom
// per head, as a scheduled session does: appends between compressions never reallocate, and the
// compaction moves rows without reallocating, as in kv::Session's own every-k schedule.
void BM_Compressed(benchmark::State& state, std::string name, std::string scorer, int64_t every) {
  const auto prompt = tokens(kContext + kSteps);
  std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
  std::vector<double> steps, compress;
  for (auto _ : state) {
    strata::kv::Eviction comp{scorer.empty() ? nullptr : strata::kv::make_scorer(scorer),
                              scorer.empty() ? strata::kv::Policy::streaming_llm()
                                             : strata::kv::Policy::adakv(0.2, 4, 16),
                              g_budget};
    strata::kv::Session session(*g_model, kContext + kSteps, comp, strata::kv::Schedule{.prefill = true, .decode = true, .every = 1024});
    session.forward(std::span<const int32_t>(prompt).first(kContext), logits.data(), strata::nn::Logits::last);
    for (int64_t i = 0; i < kSteps; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      session.forward(std::span<const int32_t>(prompt).subspan(static_cast<size_t>(kContext + i), 1), logits.data(),
                      strata::nn::Logits::last);
      steps.push_back(ms_since(t0));
      if ((i + 1) % every == 0) {
        t0 = std::chrono::steady_clock::now();
        session.compress();
        compress.push_back(ms_since(t0));
      }
    }
  }
  const double step = median(steps), comp_ms = median(compress) / static_cast<double>(every);
  g_time[name] = {step, comp_ms};
  state.counters["step_ms"] = step;
  state.counters["compress_ms_per_step"] = comp_ms;
  state.counters["overhead_%"] = 100 * comp_ms / step;
}


// ---- the scoring helpers -------------------------------------------------------------------------

std::map<std::string, double> g_helper_us;  // microseconds per call, per benchmark name

void BM_Helper(benchmark::State& state, std::string name, std::function<void()> fn) {
  int64_t calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    fn();
    ++calls;
  }
  g_helper_us[name] = 1000 * ms_since(t0) / static_cast<double>(std::max<int64_t>(calls, 1));
}

struct HelperCase {
  std::string what, size;  // what is timed and at which size
  std::vector<std::string> runs;  // benchmark names: the SIMD helper first, then what it replaces
};
std::vector<HelperCase> g_helper_cases;

// SmolLM2's shapes: head_dim 64, a 2K-token cache, a SnapKV window of 32 rows; top-k at the policy's
// per-head size (410 candidates, AdaKV floor 20% of them), at 4K and at 128K.
void register_helpers() {
  constexpr int64_t d = 64, n = 2048, window = 32;
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  auto random = [&](int64_t count) {
    auto v = std::make_shared<std::vector<float>>(static_cast<size_t>(count));
    for (auto& x : *v) x = g(rng);
    return v;
  };
  auto q = random(d), keys = random(n * d), rows = random(window * n), out = random(n), acc = random(n);
  auto add = [](const std::string& name, std::function<void()> fn) {
    benchmark::RegisterBenchmark(name.c_str(), BM_Helper, name, std::move(fn))->Unit(benchmark::kMicrosecond);
    return name;
  };
  using namespace strata::kernels;
  g_helper_cases.push_back(
      {"row dots q.K", "2048 x 64",
       {add("KvHelper/row_dots/simd", [=] { kv_row_dots(q->data(), keys->data(), n, d, d, out->data()); }),
        add("KvHelper/row_dots/reference",
            [=] { kv_row_dots_reference(q->data(), keys->data(), n, d, d, out->data()); })}});
  g_helper_cases.push_back(
      {"row norms", "2048 x 64",
       {add("KvHelper/row_norms/simd", [=] { kv_row_norms(keys->data(), n, d, d, out->data()); }),
        add("KvHelper/row_norms/reference", [=] { kv_row_norms_reference(keys->data(), n, d, d, out->data()); })}});
  for (const int64_t m : {int64_t{1}, window}) {
    const std::string tag = std::to_string(m) + (m == 1 ? " row" : " rows") + " x 2048";
    g_helper_cases.push_back(
        {"accumulate rows", tag,
         {add("KvHelper/accumulate/" + std::to_string(m) + "/simd",
              [=] { kv_accumulate_rows(rows->data(), m, n, n, acc->data()); }),
          add("KvHelper/accumulate/" + std::to_string(m) + "/reference",
              [=] { kv_accumulate_rows_reference(rows->data(), m, n, n, acc->data()); })}});
  }
  for (const auto& [size, k] : std::vector<std::pair<int64_t, int64_t>>{{390, 78}, {4096, 820}, {131072, 26214}}) {
    // Calls cycle through several score vectors, so that the branch predictor cannot learn one.
    constexpr int64_t kInputs = 8;
    auto s = random(kInputs * size);
    auto next = std::make_shared<int64_t>(0);
    auto input = [=] { return s->data() + (*next = (*next + 1) % kInputs) * size; };
    auto idx = std::make_shared<std::vector<int64_t>>(static_cast<size_t>(size));
    const std::string tag = std::to_string(size) + ", k " + std::to_string(k);
    // The policy's former selection: indices partially sorted by (score desc, index asc).
    auto partial = [=] {
      std::iota(idx->begin(), idx->end(), 0);
      const float* v = input();
      std::partial_sort(idx->begin(), idx->begin() + k, idx->end(),
                        [v](int64_t a, int64_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
      benchmark::DoNotOptimize(idx->data());
    };
    g_helper_cases.push_back(
        {"top-k indices", tag,
         {add("KvHelper/top_k/" + std::to_string(size) + "/simd", [=] { kv_top_k(input(), size, k, idx->data()); }),
          add("KvHelper/top_k/" + std::to_string(size) + "/reference",
              [=] { kv_top_k_reference(input(), size, k, idx->data()); }),
          add("KvHelper/top_k/" + std::to_string(size) + "/partial_sort", partial)}});
  }
}

void print_helpers() {
  if (g_helper_us.empty()) return;
  std::printf("\nScoring helpers (same run; microseconds per call; reference / SIMD)\n");
  std::printf("%-18s %-18s %10s %12s %8s %14s %8s\n", "helper", "size", "SIMD us", "reference us", "ratio",
              "partial_sort us", "ratio");
  for (const auto& c : g_helper_cases) {
    if (!g_helper_us.count(c.runs[0])) continue;
    const double simd = g_helper_us[c.runs[0]], ref = g_helper_us[c.runs[1]];
    std::printf("%-18s %-18s %10.2f %12.2f %7.1fx", c.what.c_str(), c.size.c_str(), simd, ref, ref / simd);
    if (c.runs.size() > 2) std::printf(" %14.2f %7.1fx", g_helper_us[c.runs[2]], g_helper_us[c.runs[2]] / simd);
    std::printf("\n");
  }
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
    if (std::strcmp(argv[i], "--budget") == 0 && i + 1 < argc) {
      g_budget = std::atoll(argv[++i]);
      continue;
    }
    rest.push_back(argv[i]);
  }
  int rest_argc = static_cast<int>(rest.size());
  register_helpers();
  if (!std::filesystem::exists(model_path)) {
    std::fprintf(stderr, "bench_kv: %s not found, timing the scoring helpers only (run scripts/fetch-models.sh, or "
                 "pass --model PATH)\n", model_path.c_str());
    benchmark::Initialize(&rest_argc, rest.data());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    print_helpers();
    return 0;
  }
  auto file = strata::io::open_model(model_path);
  g_model = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load(*file));
  std::printf("model: %s, context %lld, budget %lld tokens per KV head (AdaKV, sinks 4, recent 16), %lld decode "
              "steps per run\n",
              model_path.c_str(), static_cast<long long>(kContext), static_cast<long long>(g_budget),
              static_cast<long long>(kSteps));

  benchmark::RegisterBenchmark("DenseDecode2K", BM_DenseDecode)->Iterations(1)->Unit(benchmark::kMillisecond);
  const std::vector<std::string> scorers = {"snapkv", "h2o", "tova", ""};
  for (const int64_t every : {int64_t{1}, int64_t{8}})
    for (const auto& s : scorers) {
      const std::string name =
          "Compress2K/" + (s.empty() ? std::string("streaming") : s) + "/every:" + std::to_string(every);
      benchmark::RegisterBenchmark(name.c_str(), BM_Compressed, name, s, every)
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
    }
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  print_helpers();
  const double dense = g_time.count("dense") ? g_time["dense"].step_ms : 0;
  std::printf("\nSummary (same run; medians; target: compression <= 5%% of the decode step)\n");
  std::printf("%-32s %12s %14s %12s %14s\n", "run", "step ms", "compress ms", "of step", "of dense 2K step");
  if (dense > 0) std::printf("%-32s %12.2f\n", "dense decode, 2K cache", dense);
  for (const auto& [name, t] : g_time) {
    if (name == "dense") continue;
    std::printf("%-32s %12.2f %14.3f %11.1f%% %13.1f%%\n", name.c_str(), t.step_ms, t.compress_ms,
                100 * t.compress_ms / t.step_ms, dense > 0 ? 100 * t.compress_ms / dense : 0.0);
  }
  return 0;
}
