// Speed of strata's ggml row quantizers on one thread, in GB/s of float input: every type the codec
// table writes, with and without an importance vector, the scalar Q4_K / Q6_K reference beside the
// routed (SIMD) path, and a memcpy of the same input bytes measured in the same run as the ceiling.
// The input is 4 MiB of float rows of 4096 (larger than L2, so the copy is not a cache-only figure):
// normal values with a few outliers per row, the shape of real weights. Rates are per second of the
// thread's CPU time, so that other processes on a shared machine do not count against them.
// Usage: bench_quantize [benchmark flags].
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <time.h>

#include "../src/kernels/cpu/ggml_rows.hpp"  // the scalar references, to compare against
#include "strata/core/blas.hpp"
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

std::string key(const sk::GgmlCodec& c, bool imatrix) { return sk::lower_name(c.type) + (imatrix ? "/imatrix" : ""); }

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
      {sk::GgmlType::Q4_K, &sk::detail::quantize_row_q4_k},
      {sk::GgmlType::Q6_K, &sk::detail::quantize_row_q6_k},
  };
  for (const auto& [t, fn] : refs)
    for (bool imatrix : {false, true})
      register_quantizer("reference/" + key(sk::ggml_codec(t), imatrix), fn, sk::ggml_codec(t).row_bytes(kCols),
                         imatrix);

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
  return 0;
}
