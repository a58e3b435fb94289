// bench_cuda_gemv: products with compressed 8192 x 8192 layers (Q4_0, Q8_0, Q4_K, int4 groups of
// 128, 2:4 sparse in f16 and f32) for 1, 4 and 8 tokens, and key scoring + top-k over 32K and 128K
// keys, against the device's own copy bandwidth measured in the same run.
//
// Each format cycles through enough distinct matrices to hold >= 1 GiB, so that every product reads
// its weights from device memory, not from the L2 cache (~50 MB on an H100/H200). Times are CUDA
// events around the launches alone (manual time). The summary prints each product's weight bytes/s
// next to the copy bandwidth (cudaMemcpy device to device of 1 GiB, counting bytes read + written as
// STREAM does; bytes copied/s is half of that) and the ratio; a product that only reads should reach
// >= 70% of it.
//
// Usage: bench_cuda_gemv [Google Benchmark flags]. Without a CUDA device it says so and exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/kernels/cuda.hpp"
#include "strata/kernels/ggml_dequant.hpp"

namespace {

namespace cu = strata::cuda;
using strata::kernels::GgmlType;

constexpr int64_t kRows = 8192, kCols = 8192;
constexpr uint64_t kCycleBytes = uint64_t{1} << 30;
constexpr int kMaxTokens = 8;

std::map<std::string, double> g_bytes_per_s, g_items_per_s;  // benchmark name -> its last run's rates

// Enough copies of one layer's arrays to cycle through >= 1 GiB; contents are a fixed byte pattern
// (every scale a small finite number), which costs the kernels the same as real weights.
struct Layers {
  std::vector<std::unique_ptr<cu::DeviceBuffer>> a, b;  // per matrix: main array, side array
  uint64_t bytes_each = 0;
};
Layers make_layers(uint64_t a_bytes, uint64_t b_bytes) {
  Layers l;
  l.bytes_each = a_bytes + b_bytes;
  const uint64_t n = (kCycleBytes + l.bytes_each - 1) / l.bytes_each;
  for (uint64_t i = 0; i < n; ++i) {
    l.a.push_back(std::make_unique<cu::DeviceBuffer>(a_bytes));
    cudaMemset(l.a.back()->data(), 0x11, a_bytes);
    if (b_bytes) {
      l.b.push_back(std::make_unique<cu::DeviceBuffer>(b_bytes));
      cudaMemset(l.b.back()->data(), 0x11, b_bytes);
    }
  }
  return l;
}

struct Activations {
  cu::DeviceBuffer x{kMaxTokens * kCols * sizeof(float)};
  cu::DeviceBuffer y{kMaxTokens * kRows * sizeof(float)};
  Activations() {
    std::vector<float> h(kMaxTokens * kCols);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    for (auto& v : h) v = nd(rng);
    x.upload(h.data(), h.size() * sizeof(float));
  }
  const float* xp() const { return static_cast<const float*>(x.data()); }
  float* yp() const { return static_cast<float*>(y.data()); }
};
Activations& acts() {
  static Activations a;
  return a;
}

// Runs `pass` (one launch per matrix of the cycle) under CUDA events, one warm-up pass first.
template <class Pass>
void run_timed(benchmark::State& state, uint64_t bytes_per_pass, int64_t items_per_pass, Pass pass) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  try {
    pass();
    cudaDeviceSynchronize();
    for (auto _ : state) {
      cudaEventRecord(start);
      pass();
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(ms / 1e3);
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) state.SkipWithError(cudaGetErrorString(e));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes_per_pass));
  state.SetItemsProcessed(state.iterations() * items_per_pass);
}

void BM_Ggml(benchmark::State& state, GgmlType type) {
  static std::map<GgmlType, Layers> layers;
  if (!layers.count(type)) layers[type] = make_layers(strata::kernels::ggml_nbytes(type, kRows * kCols), 0);
  const Layers& l = layers[type];
  const int64_t tokens = state.range(0);
  run_timed(state, l.bytes_each * l.a.size(), static_cast<int64_t>(l.a.size()) * kRows, [&] {
    for (const auto& m : l.a) cu::ggml_gemv(type, m->data(), kRows, kCols, acts().xp(), tokens, acts().yp(), kRows);
  });
}

void BM_Int4Groups(benchmark::State& state) {
  constexpr int64_t kGroup = 128;
  static const Layers l = make_layers(kRows * kCols / 2, kRows * (kCols / kGroup) * 2 * sizeof(float));
  const int64_t tokens = state.range(0);
  run_timed(state, l.bytes_each * l.a.size(), static_cast<int64_t>(l.a.size()) * kRows, [&] {
    for (size_t i = 0; i < l.a.size(); ++i) {
      const cu::Int4Groups w{kRows, kCols, kGroup, static_cast<const uint8_t*>(l.a[i]->data()),
                             static_cast<const float*>(l.b[i]->data())};
      cu::int4_group_gemv(w, acts().xp(), nullptr, tokens, acts().yp(), kRows);
    }
  });
}

void BM_Sparse24(benchmark::State& state, bool half) {
  static std::map<bool, Layers> layers;
  if (!layers.count(half)) layers[half] = make_layers(kRows * kCols / 2 * (half ? 2 : 4), kRows * kCols / 8);
  const Layers& l = layers[half];
  const int64_t tokens = state.range(0);
  run_timed(state, l.bytes_each * l.a.size(), static_cast<int64_t>(l.a.size()) * kRows, [&] {
    for (size_t i = 0; i < l.a.size(); ++i) {
      const cu::Sparse24 w{kRows, kCols, half, l.a[i]->data(), static_cast<const uint8_t*>(l.b[i]->data())};
      cu::sparse24_gemv(w, acts().xp(), tokens, acts().yp(), kRows);
    }
  });
}

// One head's scoring + top-k per key cache, cycling through caches totalling >= 256 MiB.
void BM_KvTopK(benchmark::State& state) {
  constexpr int64_t kHeadDim = 128, kTopK = 2048;
  const int64_t n = state.range(0);
  static std::map<int64_t, Layers> caches;
  if (!caches.count(n)) {
    const uint64_t bytes = static_cast<uint64_t>(n * kHeadDim) * sizeof(float);
    Layers l;
    l.bytes_each = bytes;
    for (uint64_t total = 0; total < (uint64_t{256} << 20); total += bytes) {
      l.a.push_back(std::make_unique<cu::DeviceBuffer>(bytes));
      std::vector<float> h(static_cast<size_t>(n * kHeadDim));
      std::mt19937 rng(static_cast<uint32_t>(l.a.size()));
      std::normal_distribution<float> nd;
      for (auto& v : h) v = nd(rng);
      l.a.back()->upload(h.data(), bytes);
    }
    caches[n] = std::move(l);
  }
  const Layers& l = caches[n];
  cu::DeviceBuffer scores(static_cast<uint64_t>(n) * sizeof(float)), indices(kTopK * sizeof(int32_t));
  run_timed(state, l.bytes_each * l.a.size(), n * static_cast<int64_t>(l.a.size()), [&] {
    for (const auto& keys : l.a)
      cu::kv_score_top_k(acts().xp(), static_cast<const float*>(keys->data()), n, kHeadDim, kTopK,
                         static_cast<float*>(scores.data()), static_cast<int32_t*>(indices.data()));
  });
}

void BM_DeviceCopy(benchmark::State& state) {
  const uint64_t bytes = kCycleBytes;
  try {
    for (auto _ : state) state.SetIterationTime(cu::time_device_copy(bytes, 4));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * bytes));  // read + written
}

// Keeps each run's bytes/s for the summary.
class Collector : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      const auto it = r.counters.find("bytes_per_second");
      if (it != r.counters.end()) g_bytes_per_s[r.benchmark_name()] = it->second.value;
      const auto items = r.counters.find("items_per_second");
      if (items != r.counters.end()) g_items_per_s[r.benchmark_name()] = items->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (cu::device_count() == 0) {
    std::printf("bench_cuda_gemv: no CUDA device, nothing to measure\n");
    return 0;
  }
  std::printf("device: %s; layers of %lld x %lld, >= 1 GiB of weights cycled per format\n",
              cu::device_description().c_str(), static_cast<long long>(kRows), static_cast<long long>(kCols));
  benchmark::RegisterBenchmark("BM_DeviceCopy", BM_DeviceCopy)->Unit(benchmark::kMillisecond)->UseManualTime();
  const std::pair<const char*, GgmlType> ggml[] = {
      {"BM_Gemv_Q4_0", GgmlType::Q4_0}, {"BM_Gemv_Q8_0", GgmlType::Q8_0}, {"BM_Gemv_Q4_K", GgmlType::Q4_K}};
  for (const auto& [name, type] : ggml)
    benchmark::RegisterBenchmark(name, BM_Ggml, type)->Arg(1)->Arg(4)->Arg(8)->Unit(benchmark::kMicrosecond)->UseManualTime();
  benchmark::RegisterBenchmark("BM_Gemv_Int4G128", BM_Int4Groups)->Arg(1)->Arg(4)->Arg(8)->Unit(benchmark::kMicrosecond)->UseManualTime();
  benchmark::RegisterBenchmark("BM_Gemv_Sparse24_F16", BM_Sparse24, true)->Arg(1)->Arg(4)->Arg(8)->Unit(benchmark::kMicrosecond)->UseManualTime();
  benchmark::RegisterBenchmark("BM_Gemv_Sparse24_F32", BM_Sparse24, false)->Arg(1)->Arg(4)->Arg(8)->Unit(benchmark::kMicrosecond)->UseManualTime();
  benchmark::RegisterBenchmark("BM_KvTopK", BM_KvTopK)->Arg(32768)->Arg(131072)->Unit(benchmark::kMicrosecond)->UseManualTime();

  benchmark::Initialize(&argc, argv);
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  const auto find = [](const std::string& prefix) {
    for (const auto& [k, v] : g_bytes_per_s)
      if (k.rfind(prefix, 0) == 0) return v;
    return 0.0;
  };
  const double copy = find("BM_DeviceCopy");
  std::printf("\nsummary: device copy %.1f GB/s read + written (%.1f GB/s copied)\n", copy / 1e9, copy / 2e9);
  std::printf("  %-22s %6s %12s %10s\n", "weights", "tokens", "GB/s read", "of copy");
  for (const auto& [name, v] : g_bytes_per_s) {
    if (name.rfind("BM_Gemv_", 0) != 0) continue;
    const auto slash = name.find('/');
    const std::string fmt = name.substr(8, slash - 8);
    const std::string tokens = slash == std::string::npos ? "" : name.substr(slash + 1, name.find('/', slash + 1) - slash - 1);
    std::printf("  %-22s %6s %12.1f %9.0f%%\n", fmt.c_str(), tokens.c_str(), v / 1e9, copy > 0 ? 100 * v / copy : 0.0);
  }
  std::printf("  (target: >= 70%% of the copy bandwidth for one token)\n");
  for (const auto& [name, v] : g_items_per_s)
    if (name.rfind("BM_KvTopK", 0) == 0)
      std::printf("  key scoring + top-2048 over %s keys of 128: %.2f G tokens/s, keys read at %.1f GB/s\n",
                  name.substr(name.find('/') + 1, name.find('/', name.find('/') + 1) - name.find('/') - 1).c_str(),
                  v / 1e9, g_bytes_per_s[name] / 1e9);
  return 0;
}
