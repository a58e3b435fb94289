// Speed of strata's ggml row quantizers on one thread, in GB/s of float input: every type the codec
// table writes, with and without an importance vector, the scalar Q2_K ... Q6_K references beside the
// routed (SIMD) path, and a memcpy of the same input bytes measured in the same run as the ceiling.
// The input is 4 MiB of float rows of 4096 (larger than L2, so the copy is not a cache-only figure):
// normal values with a few outliers per row, the shape of real weights. Rates are per second of the
// thread's CPU time, so that other processes on a shared machine do not count against them.
//
// Then the whole-tensor path compressors and engines call (compress::ggml::quantize: rows in
// parallel over strata's threads) for Q4_K, Q5_K and Q6_K at 1 and 2 threads, on a tensor larger than the
// L3 (1.25x the size the CPU reports, read at run time), beside a memcpy of that tensor with the
// same threads. These rates are per second of wall-clock time (what parallelism buys) and, beside
// them, per second of the process's CPU time (what a loaded machine does not distort). The tensor
// is written into one reused output buffer (the overload taking a span), and at one thread also
// through the overload that returns a new vector ("/new"), whose allocation, zeroing and page faults
// count too.
// Usage: bench_quantize [benchmark flags]; --benchmark_repetitions=N reports the median of N.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <time.h>

#include "../src/kernels/cpu/ggml_rows.hpp"  // the scalar references, to compare against
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace {

namespace sk = strata::kernels;

constexpr int64_t kCols = 4096;
constexpr int64_t kRows = 256;
constexpr int64_t kElems = kCols * kRows;
constexpr double kInputBytes = static_cast<double>(kElems) * sizeof(float);

std::map<std::string, double> g_gbps;  // last measured rate per benchmark name

const std::vector<float>& weights() {
  static const std::vector<float> w = [] {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.f, 0.02f);
    std::vector<float> v(static_cast<std::size_t>(kElems));
    for (auto& x : v) x = normal(rng);
    for (int64_t r = 0; r < kRows; ++r) v[static_cast<std::size_t>(r * kCols + (r * 97) % kCols)] = 0.5f;
    return v;
  }();
  return w;
}

const std::vector<float>& importance() {
  static const std::vector<float> q = [] {
    std::mt19937 rng(6);
    std::exponential_distribution<float> e(1.f);
    std::vector<float> v(static_cast<std::size_t>(kCols));
    for (auto& x : v) x = e(rng);
    return v;
  }();
  return q;
}

double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Times `body` (one pass over the whole input) and records GB/s of float input under `name`.
template <class Body>
void run(benchmark::State& state, const std::string& name, Body body) {
  double seconds = 0;
  for (auto _ : state) {
    const double t0 = thread_seconds();
    body();
    seconds += thread_seconds() - t0;
  }
  const double gbps = kInputBytes * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  g_gbps[name] = gbps;
}

std::string key(const sk::GgmlCodec& c, bool imatrix) { return sk::lower_name(c.type) + (imatrix ? "/imatrix" : ""); }

// ---- whole tensors, larger than the L3 --------------------------------------------------------------

std::map<std::string, std::vector<double>> g_wall, g_cpu;  // per repetition: wall-clock and CPU-time rates

double process_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

uint64_t l3_size() {
  uint64_t l3 = 0;
  for (const auto& c : benchmark::CPUInfo::Get().caches)
    if (c.level == 3) l3 = std::max<uint64_t>(l3, static_cast<uint64_t>(c.size));
  return l3 > 0 ? l3 : uint64_t{32} << 20;
}

// Rows of kCols floats spanning 1.25x the L3 (at least 64 MiB): the 4 MiB input tiled, so the
// values are those of the row benchmarks while no pass finds them in the cache.
const std::vector<float>& tensor() {
  static const std::vector<float> t = [] {
    const uint64_t bytes = std::max<uint64_t>(l3_size() / 4 * 5, uint64_t{64} << 20);
    const auto tiles = static_cast<std::size_t>((bytes + kInputBytes - 1) / kInputBytes);
    const auto& w = weights();
    std::vector<float> v(tiles * w.size());
    for (std::size_t i = 0; i < tiles; ++i) std::copy(w.begin(), w.end(), v.begin() + i * w.size());
    return v;
  }();
  return t;
}

int64_t tensor_rows() { return static_cast<int64_t>(tensor().size()) / kCols; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Times `body` (one pass over the whole tensor) with `threads` threads, by wall clock and by CPU time.
template <class Body>
void run_tensor(benchmark::State& state, const std::string& name, int threads, Body body) {
  strata::set_num_threads(threads);
  const double bytes = static_cast<double>(tensor().size()) * sizeof(float);
  double wall = 0, cpu = 0;
  for (auto _ : state) {
    const double c0 = process_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    body();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cpu += process_seconds() - c0;
    wall += dt;
    state.SetIterationTime(dt);
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["GB/s"] = bytes * n / wall / 1e9;
  state.counters["GB/s/cpu"] = bytes * n / cpu / 1e9;
  g_wall[name].push_back(bytes * n / wall / 1e9);
  g_cpu[name].push_back(bytes * n / cpu / 1e9);
}

void register_tensor(int threads) {
  const std::string suffix = "/threads:" + std::to_string(threads);
  benchmark::RegisterBenchmark(("tensor/memcpy" + suffix).c_str(), [=](benchmark::State& state) {
    const auto& x = tensor();
    std::vector<float> dst(x.size());
    std::fill(dst.begin(), dst.end(), 0.f);  // pages touched outside the timing
    const int64_t chunk = 1 << 20;
    run_tensor(state, "memcpy" + suffix, threads, [&] {
      strata::parallel_for(static_cast<int64_t>(x.size()), chunk, [&](int64_t b, int64_t e) {
        std::memcpy(dst.data() + b, x.data() + b, static_cast<std::size_t>(e - b) * sizeof(float));
      });
      benchmark::DoNotOptimize(dst.data());
      benchmark::ClobberMemory();
    });
  })->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseManualTime();
  for (sk::GgmlType t : {sk::GgmlType::Q4_K, sk::GgmlType::Q5_K, sk::GgmlType::Q6_K})
    for (bool imatrix : {false, true}) {
      // Into one output buffer, touched outside the timing as the copy's destination is.
      const std::string name = key(sk::ggml_codec(t), imatrix) + suffix;
      benchmark::RegisterBenchmark(("tensor/" + name).c_str(), [=](benchmark::State& state) {
        const std::span<const float> qw = imatrix ? std::span<const float>(importance()) : std::span<const float>();
        std::vector<std::byte> out(sk::ggml_codec(t).row_bytes(kCols) * static_cast<std::size_t>(tensor_rows()));
        run_tensor(state, name, threads, [&] {
          strata::compress::ggml::quantize(t, tensor().data(), tensor_rows(), kCols, qw, out);
          benchmark::DoNotOptimize(out.data());
        });
      })->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseManualTime();
      if (threads != 1) continue;
      // The overload that returns a new vector: its allocation, zeroing and page faults timed too.
      const std::string alloc = key(sk::ggml_codec(t), imatrix) + "/new" + suffix;
      benchmark::RegisterBenchmark(("tensor/" + alloc).c_str(), [=](benchmark::State& state) {
        const std::span<const float> qw = imatrix ? std::span<const float>(importance()) : std::span<const float>();
        run_tensor(state, alloc, threads, [&] {
          const auto out = strata::compress::ggml::quantize(t, tensor().data(), tensor_rows(), kCols, qw);
          benchmark::DoNotOptimize(out.data());
        });
      })->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseManualTime();
    }
}

void BM_MemCopy(benchmark::State& state) {
  const auto& x = weights();
  std::vector<float> dst(x.size());
  run(state, "memcpy", [&] {
    std::memcpy(dst.data(), x.data(), x.size() * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  });
}

// Quantizes every row with `fn`, importance given or not.
void quantize_rows(sk::QuantizeRowFn fn, std::size_t row_bytes, bool imatrix, std::vector<std::byte>& out) {
  const auto& x = weights();
  const float* qw = imatrix ? importance().data() : nullptr;
  for (int64_t r = 0; r < kRows; ++r)
    fn(x.data() + r * kCols, kCols, out.data() + static_cast<std::size_t>(r) * row_bytes, qw);
  benchmark::DoNotOptimize(out.data());
}

void register_quantizer(const std::string& name, sk::QuantizeRowFn fn, std::size_t row_bytes, bool imatrix) {
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    std::vector<std::byte> out(row_bytes * kRows);
    run(state, name, [&] { quantize_rows(fn, row_bytes, imatrix, out); });
  })->Unit(benchmark::kMillisecond)->MinTime(0.3);
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  benchmark::RegisterBenchmark("memcpy", BM_MemCopy)->Unit(benchmark::kMillisecond)->MinTime(0.3);
  std::vector<const sk::GgmlCodec*> writable;
  for (const sk::GgmlCodec& c : sk::ggml_codecs())
    if (c.can_quantize()) writable.push_back(&c);
  for (const sk::GgmlCodec* c : writable)
    for (bool imatrix : {false, true}) {
      if (imatrix && !c->whole_blocks) continue;  // the plain types ignore importance
      register_quantizer(key(*c, imatrix), c->quantize_row, c->row_bytes(kCols), imatrix);
    }
  const std::pair<sk::GgmlType, sk::QuantizeRowFn> refs[] = {
      {sk::GgmlType::Q2_K, &sk::detail::quantize_row_q2_k},
      {sk::GgmlType::Q3_K, &sk::detail::quantize_row_q3_k},
      {sk::GgmlType::Q4_K, &sk::detail::quantize_row_q4_k},
      {sk::GgmlType::Q5_K, &sk::detail::quantize_row_q5_k},
      {sk::GgmlType::Q6_K, &sk::detail::quantize_row_q6_k},
  };
  for (const auto& [t, fn] : refs)
    for (bool imatrix : {false, true})
      register_quantizer("reference/" + key(sk::ggml_codec(t), imatrix), fn, sk::ggml_codec(t).row_bytes(kCols),
                         imatrix);
  // The 32-element block types' scalar references, beside the SIMD quantizers the codec routes to:
  // Q4_0 ... Q5_1 with importance (without it they run the reference), IQ4_NL with and without.
  const std::pair<sk::GgmlType, sk::QuantizeRowFn> legacy_refs[] = {
      {sk::GgmlType::Q4_0, &sk::detail::quantize_row_q4_0},   {sk::GgmlType::Q4_1, &sk::detail::quantize_row_q4_1},
      {sk::GgmlType::Q5_0, &sk::detail::quantize_row_q5_0},   {sk::GgmlType::Q5_1, &sk::detail::quantize_row_q5_1},
      {sk::GgmlType::IQ4_NL, &sk::detail::quantize_row_iq4_nl},
  };
  for (const auto& [t, fn] : legacy_refs)
    for (bool imatrix : {false, true})
      if (imatrix || t == sk::GgmlType::IQ4_NL)
        register_quantizer("reference/" + key(sk::ggml_codec(t), imatrix), fn, sk::ggml_codec(t).row_bytes(kCols),
                           imatrix);

  for (int threads : {1, 2}) register_tensor(threads);

  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  const double copy = g_gbps.count("memcpy") ? g_gbps["memcpy"] : 0;
  std::printf("\nSummary (one thread, same run; GB/s of float input; memcpy of the same bytes: %.2f GB/s)\n", copy);
  std::printf("%-16s %10s %9s %16s %10s %9s %16s\n", "type", "GB/s", "of copy", "vs reference", "imatrix", "of copy",
              "vs reference");
  for (const sk::GgmlCodec* c : writable) {
    auto cell = [&](bool imatrix) {
      const std::string k = key(*c, imatrix);
      if (!g_gbps.count(k)) return std::string(37, ' ');
      char buf[64];
      const double r = g_gbps[k];
      const std::string ref = "reference/" + k;
      char vs[24] = "";
      if (g_gbps.count(ref)) std::snprintf(vs, sizeof vs, "%.1fx (%.3f)", r / g_gbps[ref], g_gbps[ref]);
      std::snprintf(buf, sizeof buf, "%10.3f %8.1f%% %16s", r, copy > 0 ? 100.0 * r / copy : 0.0, vs);
      return std::string(buf);
    };
    std::printf("%-16s %s %s\n", sk::lower_name(c->type).c_str(), cell(false).c_str(), cell(true).c_str());
  }

  if (!g_wall.empty()) {
    const double mib = static_cast<double>(tensor().size()) * sizeof(float) / (1 << 20);
    std::printf("\nWhole tensors (compress::ggml::quantize into one reused buffer; /new: into a new vector),\n"
                "%lld x %lld floats = %.0f MiB, L3 %llu MiB; median of repetitions; GB/s of float input per\n"
                "second of wall clock (per second of process CPU time), and as a share of a memcpy of the\n"
                "same tensor with the same threads in the same run\n",
                static_cast<long long>(tensor_rows()), static_cast<long long>(kCols), mib,
                static_cast<unsigned long long>(l3_size() >> 20));
    std::printf("%-16s %8s %18s %18s\n", "type", "threads", "GB/s wall (cpu)", "of copy wall (cpu)");
    for (int threads : {1, 2}) {
      const std::string suffix = "/threads:" + std::to_string(threads);
      if (!g_wall.count("memcpy" + suffix) && !g_wall.count("q4_k" + suffix)) continue;  // filtered out
      const double cw = median(g_wall["memcpy" + suffix]), cc = median(g_cpu["memcpy" + suffix]);
      for (const char* name : {"memcpy", "q4_k", "q4_k/imatrix", "q5_k", "q5_k/imatrix", "q6_k", "q6_k/imatrix",
                               "q4_k/new", "q4_k/imatrix/new", "q5_k/new", "q5_k/imatrix/new", "q6_k/new",
                               "q6_k/imatrix/new"}) {
        const std::string k = name + suffix;
        if (!g_wall.count(k)) continue;
        const double w = median(g_wall[k]), c = median(g_cpu[k]);
        std::printf("%-16s %8d %9.3f (%6.3f) %8.1f%% (%5.1f%%)\n", name, threads, w, c, cw > 0 ? 100 * w / cw : 0.0,
                    cc > 0 ? 100 * c / cc : 0.0);
      }
    }
    // The compressed-execution target: at least 1 GB/s of float input per thread for Q4_K and Q6_K,
    // read here from the one-thread whole-tensor runs (weights streamed from memory, not cached)
    // per second of CPU time, beside the same run's copy.
    std::printf("\nTarget: >= 1 GB/s of float input per thread, one thread, tensor larger than the L3 (CPU time);\n"
                "/new: the overload that returns a new vector, its allocation included\n");
    for (const char* name : {"q4_k", "q4_k/imatrix", "q5_k", "q5_k/imatrix", "q6_k", "q6_k/imatrix", "q4_k/new",
                             "q4_k/imatrix/new", "q5_k/new", "q5_k/imatrix/new", "q6_k/new", "q6_k/imatrix/new"}) {
      const std::string k = std::string(name) + "/threads:1";
      if (!g_cpu.count(k)) continue;
      const double c = median(g_cpu[k]);
      std::printf("%-16s %6.3f GB/s  %s\n", name, c, c >= 1.0 ? "meets it" : "short of it");
    }
  }
  return 0;
}
