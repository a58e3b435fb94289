// bench_cuda_convert: the GPU f32 <-> f16 / bf16 conversions against the CPU's (Highway, every core)
// on the same 2^27 floats (512 MiB in, 256 MiB out: far beyond any cache), in one run. Both sides
// time the conversion alone, data already in the memory it is converted in: the GPU with CUDA
// events (manual time), the CPU with the wall clock. After the runs a summary prints each
// conversion's GB/s (bytes read + written) and the GPU / CPU speed ratio; the GPU's copy bandwidth
// (cudaMemcpy device to device, the same bytes) is the ceiling it is measured against.
//
// Usage: bench_cuda_convert [Google Benchmark flags]. Without a CUDA device it says so and exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/core/parallel.hpp"
#include "strata/kernels/cuda.hpp"

namespace {

constexpr uint64_t kCount = uint64_t{1} << 27;
std::map<std::string, double> g_gbps;  // benchmark name -> GB/s of its last run

struct Data {
  std::vector<float> host_f32;
  std::vector<strata::f16> host_f16;
  std::vector<strata::bf16> host_bf16;
  std::unique_ptr<strata::cuda::DeviceBuffer> dev_f32, dev_16, dev_f32_out;
};
Data& data() {
  static Data d = [] {
    Data r;
    r.host_f32.resize(kCount);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (auto& x : r.host_f32) x = normal(rng);
    r.host_f16.resize(kCount);
    r.host_bf16.resize(kCount);
    r.dev_f32 = std::make_unique<strata::cuda::DeviceBuffer>(kCount * 4);
    r.dev_16 = std::make_unique<strata::cuda::DeviceBuffer>(kCount * 2);
    r.dev_f32_out = std::make_unique<strata::cuda::DeviceBuffer>(kCount * 4);
    r.dev_f32->upload(r.host_f32.data(), kCount * 4);
    return r;
  }();
  return d;
}

void record(benchmark::State& state, double bytes_per_item) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kCount * bytes_per_item));
}

// The CPU side: the dispatched Highway kernels over all cores, in fixed chunks.
template <class Fn>
void cpu_chunks(Fn fn) {
  strata::parallel_for(static_cast<int64_t>(kCount), 1 << 20, [&](int64_t b, int64_t e) {
    fn(static_cast<uint64_t>(b), static_cast<uint64_t>(e - b));
  });
}

void BM_Cpu_F32ToF16(benchmark::State& state) {
  auto& d = data();
  for (auto _ : state) cpu_chunks([&](uint64_t o, uint64_t n) { strata::convert_f32_to_f16(d.host_f32.data() + o, d.host_f16.data() + o, n); });
  record(state, 6);
}
void BM_Cpu_F32ToBF16(benchmark::State& state) {
  auto& d = data();
  for (auto _ : state) cpu_chunks([&](uint64_t o, uint64_t n) { strata::convert_f32_to_bf16(d.host_f32.data() + o, d.host_bf16.data() + o, n); });
  record(state, 6);
}

// The GPU side, timed by events around the kernel alone.
template <class Launch>
void gpu_timed(benchmark::State& state, Launch launch, double bytes_per_item) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  launch();  // warm-up
  cudaDeviceSynchronize();
  for (auto _ : state) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  record(state, bytes_per_item);
}

void BM_Gpu_F32ToF16(benchmark::State& state) {
  auto& d = data();
  gpu_timed(state, [&] {
    strata::cuda::convert_f32_to_f16(static_cast<const float*>(d.dev_f32->data()), static_cast<strata::f16*>(d.dev_16->data()), kCount);
  }, 6);
}
void BM_Gpu_F32ToBF16(benchmark::State& state) {
  auto& d = data();
  gpu_timed(state, [&] {
    strata::cuda::convert_f32_to_bf16(static_cast<const float*>(d.dev_f32->data()), static_cast<strata::bf16*>(d.dev_16->data()), kCount);
  }, 6);
}
void BM_Gpu_F16ToF32(benchmark::State& state) {
  auto& d = data();
  gpu_timed(state, [&] {
    strata::cuda::convert_f16_to_f32(static_cast<const strata::f16*>(d.dev_16->data()), static_cast<float*>(d.dev_f32_out->data()), kCount);
  }, 6);
}
void BM_Gpu_CopyBaseline(benchmark::State& state) {
  auto& d = data();
  // The same 6 bytes per element: a device-to-device copy of 3 bytes per element reads 3 and
  // writes 3, the ceiling for a conversion that reads 4 and writes 2.
  gpu_timed(state, [&] {
    const cudaError_t e = cudaMemcpy(d.dev_f32_out->data(), d.dev_f32->data(), kCount * 3, cudaMemcpyDeviceToDevice);
    if (e != cudaSuccess) state.SkipWithError(cudaGetErrorString(e));
  }, 6);
}

BENCHMARK(BM_Cpu_F32ToF16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Cpu_F32ToBF16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gpu_F32ToF16)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_Gpu_F32ToBF16)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_Gpu_F16ToF32)->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_Gpu_CopyBaseline)->Unit(benchmark::kMillisecond)->UseManualTime();

// Keeps each run's bytes/s for the summary.
class Collector : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      const auto it = r.counters.find("bytes_per_second");
      if (it != r.counters.end()) g_gbps[r.benchmark_name()] = it->second.value / 1e9;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (strata::cuda::device_count() == 0) {
    std::printf("bench_cuda_convert: no CUDA device, nothing to measure\n");
    return 0;
  }
  std::printf("device: %s; %llu floats (%.0f MiB) per conversion\n", strata::cuda::device_description().c_str(),
              static_cast<unsigned long long>(kCount), kCount * 4.0 / (1 << 20));
  benchmark::Initialize(&argc, argv);
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  auto gbps = [](const char* name) {
    for (const auto& [k, v] : g_gbps)
      if (k.rfind(name, 0) == 0) return v;
    return 0.0;
  };
  std::printf("\nsummary (GB/s, bytes read + written)\n");
  const double cpu16 = gbps("BM_Cpu_F32ToF16"), gpu16 = gbps("BM_Gpu_F32ToF16");
  const double cpub = gbps("BM_Cpu_F32ToBF16"), gpub = gbps("BM_Gpu_F32ToBF16"), copy = gbps("BM_Gpu_CopyBaseline");
  std::printf("  f32 -> f16:  CPU %.1f, GPU %.1f  (GPU / CPU %.1fx; %.0f%% of the GPU's copy bandwidth %.1f)\n", cpu16,
              gpu16, cpu16 > 0 ? gpu16 / cpu16 : 0.0, copy > 0 ? 100 * gpu16 / copy : 0.0, copy);
  std::printf("  f32 -> bf16: CPU %.1f, GPU %.1f  (GPU / CPU %.1fx; %.0f%% of the copy bandwidth)\n", cpub, gpub,
              cpub > 0 ? gpub / cpub : 0.0, copy > 0 ? 100 * gpub / copy : 0.0);
  return 0;
}
