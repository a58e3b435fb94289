// Cost of KV-cache eviction inside the decode loop, SmolLM2-135M at a 2K-token context: each
// scorer's compression (scoring, selection, moving the kept rows) timed beside the decode step it
// belongs to, compressing every step and every 8 steps, with the dense decode step over the full
// 2K cache measured in the same run as the baseline. Times are wall clock, medians over the
// iterations (the step and its compression alternate, so both see the same machine load).
// Before them, the SIMD scoring helpers (src/kernels/cpu/kv_score.hpp) are timed against their
// scalar references, and top-k against the std::partial_sort the eviction policy used, at the
// sizes a decode step gives them; they need no model.
// Then the stored KV formats in the decode loop (kv::CacheFormat): SmolLM2 run in its file's types
// (LlamaModel::load_stored), a prompt of 2K and of 4K random tokens read once with the float32
// cache, then for each format a session continuing from it with its cache re-stored in that format
// (Session::with_format) decodes, the formats taking turns step by step; the median step is compared
// with the float32 cache's in the same run, with the Hadamard rotation's own work per step timed beside it, and llama.cpp's decode step
// at the same depth on the same file when scripts/install-llama-cpp.sh has installed it. Beside them,
// decode attention alone over float32 rows in SmolLM2's shape: the per-query-head products
// kv::Session used before against nn::SplitAttention, side by side.
// Usage: bench_kv [--model PATH] [--budget 410] [--contexts 2048,4096] [--no-formats]
//                 [--llama-cpp-python PATH] [benchmark flags].
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
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

#include "../src/kernels/cpu/attention_decode.hpp"
#include "../src/kernels/cpu/kivi_attention.hpp"
#include "../src/kernels/cpu/kv_score.hpp"  // the helpers and their scalar references
#include "llama_cpp_runner.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/eigen.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/hadamard.hpp"
#include "strata/kv/cache.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/attention.hpp"
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


// ---- stored KV formats in the decode loop ----------------------------------------------------------

constexpr int64_t kFormatSteps = 32;
std::unique_ptr<strata::nn::LlamaModel> g_stored;  // the file's types
std::map<int64_t, std::unique_ptr<strata::kv::Session>> g_prefilled;  // per context, float32 cache
struct FormatRun {
  double step_ms = 0;
  double cpu_ms = 0;  // CPU time of the whole process (all threads) per step
  double cache_mib = 0;
};

// CPU time of the process, all threads: on a shared machine a step's wall clock includes waiting for
// a core, its CPU time does not.
double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return 1e3 * static_cast<double>(ts.tv_sec) + 1e-6 * static_cast<double>(ts.tv_nsec);
}
std::map<int64_t, std::map<std::string, FormatRun>> g_format_runs;  // context -> format name -> run
std::vector<std::pair<std::string, strata::kv::CacheFormat>> g_formats;
std::map<int64_t, double> g_llama_ms;  // context -> llama.cpp's decode step

std::vector<int32_t> stored_tokens(int64_t n) {
  std::mt19937 rng(11);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = static_cast<int32_t>(rng() % static_cast<uint32_t>(g_stored->config().vocab_size));
  return t;
}

strata::kv::Session& prefilled(int64_t context) {
  auto& s = g_prefilled[context];
  if (!s) {
    s = std::make_unique<strata::kv::Session>(*g_stored, context + kFormatSteps);
    std::vector<float> logits(static_cast<size_t>(g_stored->config().vocab_size));
    const auto prompt = stored_tokens(context);
    s->forward(prompt, logits.data(), strata::nn::Logits::last);
  }
  return *s;
}

// Every format's session continues from the same prompt; the steps go round robin over the formats
// (step i of each, then step i + 1), so that a change in the machine's load falls on all of them.
void BM_FormatsDecode(benchmark::State& state, int64_t context) {
  strata::kv::Session& base = prefilled(context);
  const auto next = stored_tokens(context + kFormatSteps);
  std::vector<float> logits(static_cast<size_t>(g_stored->config().vocab_size));
  std::vector<std::vector<double>> steps(g_formats.size()), cpu(g_formats.size());
  std::vector<double> mib(g_formats.size());
  for (auto _ : state) {
    std::vector<std::unique_ptr<strata::kv::Session>> sessions;
    for (const auto& [name, format] : g_formats) sessions.push_back(base.with_format(format));
    for (int64_t i = 0; i < kFormatSteps; ++i)
      for (size_t f = 0; f < sessions.size(); ++f) {
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = process_cpu_ms();
        sessions[f]->forward(std::span<const int32_t>(next).subspan(static_cast<size_t>(context + i), 1),
                             logits.data(), strata::nn::Logits::last);
        steps[f].push_back(ms_since(t0));
        cpu[f].push_back(process_cpu_ms() - c0);
      }
    for (size_t f = 0; f < sessions.size(); ++f) mib[f] = static_cast<double>(sessions[f]->cache_bytes()) / (1 << 20);
  }
  for (size_t f = 0; f < g_formats.size(); ++f) {
    g_format_runs[context][g_formats[f].first] = {median(steps[f]), median(cpu[f]), mib[f]};
    state.counters[g_formats[f].first + "_ms"] = median(steps[f]);
  }
}

// The rotation's own work in one decode step, in the calls and shapes the session makes them: per
// layer and KV head, its new key row and value row rotated as they are stored, its query heads'
// rows rotated before scoring and their outputs rotated back.
double g_rotation_us = 0;
void BM_RotationWork(benchmark::State& state) {
  const auto& c = g_stored->config();
  const int64_t group = c.n_heads / c.n_kv_heads;
  const strata::kernels::HadamardRotation rot(c.head_dim, 0);
  std::vector<float> row(static_cast<size_t>(group * c.head_dim), 0.5f);
  int64_t calls = 0;
  const double c0 = process_cpu_ms();
  for (auto _ : state) {
    for (int64_t l = 0; l < c.n_layers; ++l)
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        rot.rotate(row.data(), 1, c.head_dim);
        rot.rotate(row.data(), 1, c.head_dim);
        rot.rotate(row.data(), group, c.head_dim);
        rot.unrotate(row.data(), group, c.head_dim);
      }
    benchmark::DoNotOptimize(row.data());
    ++calls;
  }
  g_rotation_us = 1000 * (process_cpu_ms() - c0) / static_cast<double>(std::max<int64_t>(calls, 1));
}

// Decode attention alone, in SmolLM2's shape (30 layers of 9 query heads over 3 KV heads of 64),
// float32 rows: the way kv::Session attended before (one Eigen product per query head, nine tasks
// over the threads) against nn::SplitAttention (each KV head's rows read once for its three query
// heads, tasks of KV head x 256-token chunk). The two take turns, one 30-layer pass each; medians
// of wall and CPU time per pass.
struct AttentionRun {
  double per_head_ms = 0, per_head_cpu = 0, split_ms = 0, split_cpu = 0;
};
std::map<int64_t, AttentionRun> g_attention;

void BM_AttentionOnly(benchmark::State& state, int64_t context) {
  constexpr int64_t layers = 30, n_heads = 9, n_kv = 3, group = 3, d = 64, m = group;
  const float scale = 0.125f;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> k(static_cast<size_t>(layers * n_kv * context * d)), v(k.size());
  std::vector<float> q(static_cast<size_t>(n_heads * d)), out(q.size());
  for (auto& x : k) x = g(rng);
  for (auto& x : v) x = g(rng);
  for (auto& x : q) x = g(rng);
  auto rows = [&](const std::vector<float>& x, int64_t l, int64_t h) { return x.data() + (l * n_kv + h) * context * d; };
  auto per_head = [&](int64_t l) {
    strata::parallel_for(n_heads, 1, [&](int64_t h0, int64_t h1) {
      strata::RowMatrix<float> scores(1, context);
      for (int64_t h = h0; h < h1; ++h) {
        Eigen::Map<const strata::RowMatrix<float>> qh(q.data() + h * d, 1, d);
        Eigen::Map<const strata::RowMatrix<float>> kh(rows(k, l, h / group), context, d);
        Eigen::Map<const strata::RowMatrix<float>> vh(rows(v, l, h / group), context, d);
        scores.noalias() = (qh * kh.transpose()) * scale;
        strata::nn::causal_softmax_rows(scores.data(), 1, context, context - 1);
        Eigen::Map<strata::RowMatrix<float>>(out.data() + h * d, 1, d).noalias() = scores * vh;
      }
    });
  };
  strata::nn::SplitAttention split;
  const std::vector<int64_t> lens(n_kv, context);
  auto split_pass = [&](int64_t l) {
    split.run(
        lens, group, 1, d, true, false,
        [&](int h, int64_t b, int64_t e, float* s, int64_t stride) {
          strata::kernels::attention_scores(q.data() + h * m * d, m, d, rows(k, l, h) + b * d, e - b, d, d, scale, s,
                                            stride);
        },
        [&](int h, int64_t b, int64_t e, const float* p, int64_t stride, float* acc) {
          std::fill(acc, acc + m * d, 0.0f);
          strata::kernels::attention_values(p, m, stride, rows(v, l, h) + b * d, e - b, d, d, acc, d);
        },
        out.data());
  };
  std::vector<double> a_ms, a_cpu, b_ms, b_cpu;
  for (auto _ : state) {
    for (int rep = 0; rep < 24; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      double c0 = process_cpu_ms();
      for (int64_t l = 0; l < layers; ++l) per_head(l);
      a_ms.push_back(ms_since(t0));
      a_cpu.push_back(process_cpu_ms() - c0);
      t0 = std::chrono::steady_clock::now();
      c0 = process_cpu_ms();
      for (int64_t l = 0; l < layers; ++l) split_pass(l);
      b_ms.push_back(ms_since(t0));
      b_cpu.push_back(process_cpu_ms() - c0);
    }
  }
  g_attention[context] = {median(a_ms), median(a_cpu), median(b_ms), median(b_cpu)};
  state.counters["per_head_ms"] = median(a_ms);
  state.counters["split_ms"] = median(b_ms);
}

// Decode attention alone over a kv::Cache in each stored format, SmolLM2's shape (30 layers, 3 KV
// heads of 64, 3 query heads each, one new token), random rows with a few loud channels: the step's
// attention as kv::Session runs it (nn::SplitAttention over Cache::attend_scores / attend_values;
// the float32 cache through the float kernels on its rows, as the session's plain path does). The
// formats take turns, one 30-layer pass each; medians of wall and CPU time per pass.
struct CacheAttentionRun {
  double ms = 0, cpu = 0;
};
std::map<int64_t, std::vector<std::pair<std::string, CacheAttentionRun>>> g_cache_attention;

void BM_CacheAttention(benchmark::State& state, int64_t context) {
  using strata::kv::Cache;
  using strata::kv::CacheFormat;
  using strata::kv::KvFormat;
  constexpr int64_t layers = 30, n_kv = 3, group = 3, d = 64, m = group;
  const float scale = 0.125f;
  std::mt19937 rng(9);
  std::normal_distribution<float> g;
  Cache base(layers, n_kv, d, context);
  {
    std::vector<float> k(static_cast<size_t>(context * n_kv * d)), v(k.size());
    for (int64_t l = 0; l < layers; ++l) {
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = g(rng) * (i % d == 5 ? 12.0f : 1.0f);
        v[i] = g(rng);
      }
      base.append(static_cast<int>(l), k.data(), v.data(), context, 0);
    }
  }
  auto fmt = [](KvFormat f, bool rotate) {
    CacheFormat c;
    c.key = c.value = f;
    c.rotate = rotate;
    return c;
  };
  const std::vector<std::pair<std::string, CacheFormat>> formats = {
      {"f32", fmt(KvFormat::f32, false)},     {"q4_0", fmt(KvFormat::q4_0, false)},
      {"kivi4", fmt(KvFormat::kivi4, false)}, {"kivi4+rot", fmt(KvFormat::kivi4, true)},
      {"kivi2", fmt(KvFormat::kivi2, false)}, {"kivi2+rot", fmt(KvFormat::kivi2, true)}};
  std::vector<Cache> caches;
  for (const auto& [name, f] : formats) caches.push_back(f.full_precision() ? Cache(base) : base.converted(f));
  std::vector<float> q(static_cast<size_t>(n_kv * m * d)), out(q.size());
  for (auto& x : q) x = g(rng);
  strata::nn::SplitAttention split;
  const std::vector<int64_t> lens(n_kv, context);
  auto pass = [&](const Cache& c) {
    const bool plain = c.format().full_precision();
    for (int l = 0; l < layers; ++l)
      split.run(
          lens, group, 1, d, true, false,
          [&](int h, int64_t b, int64_t e, float* s, int64_t stride) {
            if (plain)
              strata::kernels::attention_scores(q.data() + h * m * d, m, d, c.keys(l, h) + b * d, e - b, d, d, scale,
                                                s, stride);
            else
              c.attend_scores(l, h, q.data() + h * m * d, m, d, scale, b, e, s, stride);
          },
          [&](int h, int64_t b, int64_t e, const float* p, int64_t stride, float* acc) {
            if (plain) {
              std::fill(acc, acc + m * d, 0.0f);
              strata::kernels::attention_values(p, m, stride, c.values(l, h) + b * d, e - b, d, d, acc, d);
            } else {
              c.attend_values(l, h, p, stride, m, b, e, acc, d);
            }
          },
          out.data());
  };
  std::vector<std::vector<double>> ms(formats.size()), cpu(formats.size());
  for (auto _ : state)
    for (int rep = 0; rep < 24; ++rep)
      for (size_t f = 0; f < formats.size(); ++f) {
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = process_cpu_ms();
        pass(caches[f]);
        ms[f].push_back(ms_since(t0));
        cpu[f].push_back(process_cpu_ms() - c0);
      }
  auto& runs = g_cache_attention[context];
  runs.clear();
  for (size_t f = 0; f < formats.size(); ++f) {
    runs.emplace_back(formats[f].first, CacheAttentionRun{median(ms[f]), median(cpu[f])});
    state.counters[formats[f].first + "_ms"] = median(ms[f]);
  }
}

void register_formats(const std::vector<int64_t>& contexts) {
  using strata::kv::CacheFormat;
  using strata::kv::KvFormat;
  auto fmt = [](KvFormat f, bool rotate) {
    CacheFormat c;
    c.key = c.value = f;
    c.rotate = rotate;
    return c;
  };
  g_formats = {{"f32", fmt(KvFormat::f32, false)},     {"f32+rot", fmt(KvFormat::f32, true)},
               {"f16", fmt(KvFormat::f16, false)},     {"q8_0", fmt(KvFormat::q8_0, false)},
               {"q4_0", fmt(KvFormat::q4_0, false)},   {"q4_0+rot", fmt(KvFormat::q4_0, true)},
               {"kivi4", fmt(KvFormat::kivi4, false)}, {"kivi4+rot", fmt(KvFormat::kivi4, true)},
               {"kivi2", fmt(KvFormat::kivi2, false)}, {"kivi2+rot", fmt(KvFormat::kivi2, true)}};
  for (const int64_t context : contexts) {
    const std::string bm = "FormatDecode/" + std::to_string(context);
    benchmark::RegisterBenchmark(bm.c_str(), BM_FormatsDecode, context)->Iterations(1)->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("FormatDecode/rotation_work_per_step", BM_RotationWork)->Unit(benchmark::kMicrosecond);
  for (const int64_t context : contexts) {
    const std::string bm = "FormatDecode/attention_only/" + std::to_string(context);
    benchmark::RegisterBenchmark(bm.c_str(), BM_AttentionOnly, context)->Iterations(1)->Unit(benchmark::kMillisecond);
  }
  for (const int64_t context : contexts) {
    const std::string bm = "FormatDecode/attention_cache/" + std::to_string(context);
    benchmark::RegisterBenchmark(bm.c_str(), BM_CacheAttention, context)->Iterations(1)->Unit(benchmark::kMillisecond);
  }
}

void print_formats() {
  if (!g_attention.empty()) {
    std::printf("\nDecode attention alone, 30 layers x 9 query heads over 3 KV heads of 64, float32 rows (same run; "
                "medians of 24 passes; %d threads)\n", strata::num_threads());
    std::printf("%-8s %16s %16s %14s %14s %12s %12s\n", "context", "per-head ms", "per-head CPU ms", "split ms",
                "split CPU ms", "wall ratio", "CPU ratio");
    for (const auto& [context, a] : g_attention)
      std::printf("%-8lld %16.2f %16.2f %14.2f %14.2f %11.2fx %11.2fx\n", static_cast<long long>(context),
                  a.per_head_ms, a.per_head_cpu, a.split_ms, a.split_cpu, a.per_head_ms / a.split_ms,
                  a.per_head_cpu / a.split_cpu);
  }
  if (!g_cache_attention.empty()) {
    std::printf("\nDecode attention alone over a kv::Cache per stored format, 30 layers x 3 KV heads of 64 x 3 query "
                "heads, one token (same run; medians of 24 passes; %d threads)\n", strata::num_threads());
    std::printf("%-8s %-10s %10s %12s %16s %16s\n", "context", "format", "pass ms", "pass CPU ms", "f32 pass / this",
                "f32 CPU / this");
    for (const auto& [context, runs] : g_cache_attention) {
      const CacheAttentionRun f32 = runs.front().second;
      for (const auto& [name, r] : runs)
        std::printf("%-8lld %-10s %10.2f %12.2f %15.2fx %15.2fx\n", static_cast<long long>(context), name.c_str(),
                    r.ms, r.cpu, f32.ms / r.ms, f32.cpu / r.cpu);
    }
  }
  if (g_format_runs.empty()) return;
  std::printf("\nStored KV formats, decode step after a prompt (same run; medians of %lld steps; SmolLM2 in its "
              "file's types, %d threads)\n",
              static_cast<long long>(kFormatSteps), strata::num_threads());
  std::printf("%-8s %-10s %10s %14s %11s %16s %16s %12s\n", "context", "format", "step ms", "step CPU ms",
              "cache MiB", "f32 step / this", "f32 CPU / this", "cache ratio");
  for (const auto& [context, runs] : g_format_runs) {
    const auto f32 = runs.count("f32") ? runs.at("f32") : FormatRun{};
    for (const auto& [name, format] : g_formats) {
      if (!runs.count(name)) continue;
      const FormatRun& r = runs.at(name);
      std::printf("%-8lld %-10s %10.2f %14.2f %11.2f %15.2fx %15.2fx %11.3fx\n", static_cast<long long>(context),
                  name.c_str(), r.step_ms, r.cpu_ms, r.cache_mib, f32.step_ms / r.step_ms, f32.cpu_ms / r.cpu_ms,
                  f32.cache_mib > 0 ? r.cache_mib / f32.cache_mib : 0);
    }
    if (g_llama_ms.count(context))
      std::printf("%-8lld %-10s %10.2f %11s %14.2fx   (llama.cpp / strata f32: %.2fx)\n", static_cast<long long>(context),
                  "llama.cpp", g_llama_ms[context], "", f32.step_ms / g_llama_ms[context],
                  g_llama_ms[context] / f32.step_ms);
    if (g_rotation_us > 0 && runs.count("q4_0+rot") && runs.count("q4_0"))
      std::printf("rotation at %lld: its own work %.1f us CPU per step = %.2f%% of the q4_0+rot step's CPU time "
                  "(%.2f ms); CPU time q4_0+rot - q4_0 = %+.2f ms (%+.1f%%)\n",
                  static_cast<long long>(context), g_rotation_us, 0.1 * g_rotation_us / runs.at("q4_0+rot").cpu_ms,
                  runs.at("q4_0+rot").cpu_ms, runs.at("q4_0+rot").cpu_ms - runs.at("q4_0").cpu_ms,
                  100 * (runs.at("q4_0+rot").cpu_ms - runs.at("q4_0").cpu_ms) / runs.at("q4_0").cpu_ms);
  }
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
std::vector<HelperCase> g_kivi_cases;  // runs: from the codes, then the float kernel on float32 rows

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
  // Decode attention's kernels over one 256-token chunk of a KV head, 3 query heads: from KIVI codes
  // (keys a group of 32 tokens per call) against the float kernels over float32 rows.
  constexpr int64_t chunk = 256, m = 3, group = 32;
  auto qm = random(m * d), probs = random(m * chunk), scores = random(m * chunk), outs = random(m * d);
  for (auto& x : *probs) x = std::abs(x) / chunk;
  for (const int bits : {4, 2}) {
    const int64_t code_bytes = d * bits / 8, value_bytes = code_bytes + d / group * 4;
    auto codes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(chunk * value_bytes));
    for (auto& b : *codes) b = static_cast<uint8_t>(rng());
    auto params = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(chunk / group * 2 * d));
    for (size_t i = 0; i < params->size(); ++i) (*params)[i] = strata::f32_to_f16(i % 2 ? -1.0f : 0.1f).bits;
    for (int64_t j = 0; j < chunk; ++j)
      for (int64_t gg = 0; gg < d / group; ++gg) {
        const uint16_t prm[2] = {strata::f32_to_f16(0.1f).bits, strata::f32_to_f16(-1.0f).bits};
        std::memcpy(codes->data() + j * value_bytes + code_bytes + gg * 4, prm, 4);
      }
    const std::string kivi = "kivi" + std::to_string(bits);
    g_kivi_cases.push_back(
        {kivi + " scores", "256 x 64, 3 queries",
         {add("KvHelper/" + kivi + "_scores/codes",
              [=] {
                for (int64_t t0 = 0; t0 < chunk; t0 += group)
                  kivi_key_scores(qm->data(), m, d, codes->data() + t0 * code_bytes, group, code_bytes, d, bits,
                                  params->data() + t0 / group * 2 * d, 0.125f, scores->data() + t0, chunk);
              }),
          add("KvHelper/" + kivi + "_scores/f32", [=] {
            attention_scores(qm->data(), m, d, keys->data(), chunk, d, d, 0.125f, scores->data(), chunk);
          })}});
    g_kivi_cases.push_back(
        {kivi + " values", "256 x 64, 3 queries",
         {add("KvHelper/" + kivi + "_values/codes",
              [=] {
                kivi_values(probs->data(), m, chunk, codes->data(), chunk, value_bytes, d, bits, group, outs->data(), d);
              }),
          add("KvHelper/" + kivi + "_values/f32", [=] {
            attention_values(probs->data(), m, chunk, keys->data(), chunk, d, d, outs->data(), d);
          })}});
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
  std::printf("\nDecode attention kernels, KIVI codes against float32 rows (same run; microseconds per call)\n");
  std::printf("%-18s %-22s %10s %10s %14s\n", "kernel", "size", "codes us", "f32 us", "f32 / codes");
  for (const auto& c : g_kivi_cases) {
    if (!g_helper_us.count(c.runs[0]) || !g_helper_us.count(c.runs[1])) continue;
    const double codes = g_helper_us[c.runs[0]], f32 = g_helper_us[c.runs[1]];
    std::printf("%-18s %-22s %10.2f %10.2f %13.2fx\n", c.what.c_str(), c.size.c_str(), codes, f32, f32 / codes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  std::filesystem::path model_path = strata::io::DataPaths::resolve().smollm2();
  std::vector<int64_t> contexts = {2048, 4096};
  bool formats = true;
  std::string llama_python = strata::bench::llama_cpp_python();
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
    if (std::strcmp(argv[i], "--contexts") == 0 && i + 1 < argc) {
      contexts.clear();
      for (std::string list = argv[++i]; !list.empty();) {
        const size_t comma = list.find(',');
        contexts.push_back(std::atoll(list.substr(0, comma).c_str()));
        list = comma == std::string::npos ? "" : list.substr(comma + 1);
      }
      continue;
    }
    if (std::strcmp(argv[i], "--no-formats") == 0) {
      formats = false;
      continue;
    }
    if (std::strcmp(argv[i], "--llama-cpp-python") == 0 && i + 1 < argc) {
      llama_python = argv[++i];
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
  std::shared_ptr<const strata::io::Model> file = strata::io::open_model(model_path);
  g_model = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load(*file));
  if (formats) {
    g_stored = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load_stored(file));
    register_formats(contexts);
    for (const int64_t context : contexts) {
      const auto j = strata::bench::run_llama_cpp(
          llama_python, {"--model", model_path.string(), "--threads", std::to_string(strata::num_threads()),
                         "--context", std::to_string(context), "--steps", std::to_string(kFormatSteps), "--prefill",
                         "64", "--repeats", "1"});
      if (j) g_llama_ms[context] = 1000.0 / (*j)["decode_tok_s"].get<double>();
    }
    if (g_llama_ms.empty())
      std::printf("llama.cpp: not measured (no %s; run scripts/install-llama-cpp.sh or pass --llama-cpp-python)\n",
                  llama_python.c_str());
  }
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
  print_formats();
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
