// Speed of kernels::ggml_matmul, one thread, weights streamed from memory: decode (one token) and a
// small batch (eight tokens) through a 4096 x 4096 layer, for every ggml type the kernels support
// (taken from the codec table, so a new family shows up here without an edit). Two baselines from
// the same run bound it: the memory-copy bandwidth (a one-token product has to read every weight
// byte once) and float32 BLAS on the same shape (cblas_sgemv for one token, cblas_sgemm for eight),
// whose weights are 4-8x larger than the quantized ones.
//
// Each benchmark cycles through distinct copies of its weights totalling more than twice the last
// level cache, so that every product reads its weights from memory, as a decode step of a model much
// larger than the cache does.
//
// Usage: bench_kernels [Google Benchmark flags]. After the runs a summary gives each type's weight
// GB/s, its ratio to the memcpy rate (bytes copied per second) and its tokens/s over float32 BLAS's.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/kernels/ggml_matmul.hpp"

namespace {

using strata::kernels::GgmlType;

constexpr int64_t kRows = 4096, kCols = 4096;
constexpr int kTokenCounts[] = {1, 8};

std::map<std::string, double> g_rate;  // last measured rate per key

// Bytes of the last level cache: sysfs first (what the kernel reports for this CPU), then sysconf.
size_t l3_bytes() {
  std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
  std::string s;
  if (f >> s && !s.empty()) {
    size_t n = std::stoull(s);
    const char unit = s.back();
    if (unit == 'K') n <<= 10;
    if (unit == 'M') n <<= 20;
    if (n > 0) return n;
  }
  const long n = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return n > 0 ? static_cast<size_t>(n) : size_t{32} << 20;
}

// Bytes a set of weight copies must span to defeat the cache: 2.5x the L3, and at least 64 MiB.
size_t working_set_bytes() { return std::max(l3_bytes() / 2 * 5, size_t{64} << 20); }

// `copies` copies of one matrix, laid end to end in memory. The pages are touched here, outside
// the timed loops.
struct MatrixSet {
  std::unique_ptr<uint8_t[]> bytes;
  size_t matrix_bytes = 0;
  int64_t copies = 0;
  const uint8_t* matrix(int64_t i) const { return bytes.get() + static_cast<size_t>(i % copies) * matrix_bytes; }
};

MatrixSet make_set(size_t matrix_bytes, const uint8_t* tile, size_t tile_bytes) {
  MatrixSet s;
  s.matrix_bytes = matrix_bytes;
  s.copies = std::max<int64_t>(2, static_cast<int64_t>((working_set_bytes() + matrix_bytes - 1) / matrix_bytes));
  const size_t total = matrix_bytes * static_cast<size_t>(s.copies);
  s.bytes.reset(new uint8_t[total]);
  for (size_t off = 0; off < total; off += tile_bytes) std::memcpy(s.bytes.get() + off, tile, std::min(tile_bytes, total - off));
  return s;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Quantized weights of one type, kept while that type's benchmarks run (each set spans gigabytes on
// a machine with a large L3, so only one lives at a time).
GgmlType g_set_type = GgmlType::F32;
MatrixSet g_set;

const MatrixSet& quantized_set(GgmlType t) {
  if (g_set.bytes && g_set_type == t) return g_set;
  g_set = MatrixSet{};
  const auto& codec = strata::kernels::ggml_codec(t);
  // 64 rows of real quantized data, repeated: the kernels' speed does not depend on the values, and
  // quantizing all of a 4096 x 4096 matrix would take longer than the benchmark.
  constexpr int64_t kTileRows = 64;
  const size_t row_bytes = codec.row_bytes(kCols);
  const std::vector<float> src = random_floats(static_cast<size_t>(kTileRows * kCols), 3);
  std::vector<uint8_t> tile(row_bytes * kTileRows);
  for (int64_t r = 0; r < kTileRows; ++r)
    codec.quantize_row(src.data() + r * kCols, kCols, tile.data() + static_cast<size_t>(r) * row_bytes, nullptr);
  g_set = make_set(row_bytes * kRows, tile.data(), tile.size());
  g_set_type = t;
  return g_set;
}

std::string key(const std::string& what, int64_t tokens) { return what + "/" + std::to_string(tokens); }

// memcpy of a buffer beyond the cache, one thread. "GB/s" is the bytes copied per second (the rate
// the targets compare with); "r+w GB/s" counts the bytes read plus the bytes written, as STREAM and
// bench_engine do.
void BM_MemCopy(benchmark::State& state) {
  const size_t bytes = working_set_bytes();
  std::unique_ptr<uint8_t[]> src(new uint8_t[bytes]), dst(new uint8_t[bytes]);
  std::memset(src.get(), 1, bytes);
  std::memset(dst.get(), 0, bytes);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.get(), src.get(), bytes);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(dst.get());
    benchmark::ClobberMemory();
  }
  const double gbps = static_cast<double>(bytes) * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["r+w GB/s"] = 2 * gbps;
  state.counters["MiB"] = static_cast<double>(bytes >> 20);
  g_rate["copy"] = gbps;
}

// Float32 weights through OpenBLAS on one thread: sgemv for one token, sgemm for a batch.
void BM_F32Blas(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  const std::vector<float> tile = random_floats(static_cast<size_t>(64 * kCols), 5);
  const MatrixSet set = make_set(static_cast<size_t>(kRows * kCols) * sizeof(float),
                                 reinterpret_cast<const uint8_t*>(tile.data()), tile.size() * sizeof(float));
  const std::vector<float> x = random_floats(static_cast<size_t>(tokens * kCols), 7);
  std::vector<float> y(static_cast<size_t>(tokens * kRows));
  int64_t i = 0;
  double seconds = 0;
  for (auto _ : state) {
    const auto* a = reinterpret_cast<const float*>(set.matrix(i++));
    const auto t0 = std::chrono::steady_clock::now();
    if (tokens == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, kRows, kCols, 1.0f, a, kCols, x.data(), 1, 0.0f, y.data(), 1);
    } else {
      // Y[tokens, rows] = X[tokens, cols] * A^T, the layout ggml_matmul writes.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), kRows, kCols, 1.0f, x.data(),
                  kCols, a, kCols, 0.0f, y.data(), kRows);
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(y.data());
  }
  const double per_call = seconds / static_cast<double>(state.iterations());
  state.counters["tok/s"] = static_cast<double>(tokens) / per_call;
  state.counters["weight GB/s"] = static_cast<double>(set.matrix_bytes) / per_call / 1e9;
  g_rate[key("f32_tok", tokens)] = static_cast<double>(tokens) / per_call;
}

void BM_GgmlMatmul(benchmark::State& state, GgmlType t) {
  const int64_t tokens = state.range(0);
  const MatrixSet& set = quantized_set(t);
  const std::vector<float> x = random_floats(static_cast<size_t>(tokens * kCols), 7);
  std::vector<float> y(static_cast<size_t>(tokens * kRows));
  int64_t i = 0;
  double seconds = 0;
  for (auto _ : state) {
    const uint8_t* w = set.matrix(i++);
    const auto t0 = std::chrono::steady_clock::now();
    strata::kernels::ggml_matmul(t, w, kRows, kCols, x.data(), tokens, y.data(), kRows);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(y.data());
  }
  const double per_call = seconds / static_cast<double>(state.iterations());
  const double gbps = static_cast<double>(set.matrix_bytes) / per_call / 1e9;
  const std::string name(strata::kernels::ggml_type_name(t));
  state.counters["tok/s"] = static_cast<double>(tokens) / per_call;
  state.counters["weight GB/s"] = gbps;
  if (g_rate.count("copy")) state.counters["/copy"] = gbps / g_rate["copy"];
  if (g_rate.count(key("f32_tok", tokens)))
    state.counters["/f32"] = static_cast<double>(tokens) / per_call / g_rate[key("f32_tok", tokens)];
  g_rate[key(name + "_gbps", tokens)] = gbps;
  g_rate[key(name + "_tok", tokens)] = static_cast<double>(tokens) / per_call;
}

// Products per benchmark: two passes over the set, so that every one reads from memory, bounded so
// that a machine with a small cache still times enough of them.
int64_t iterations_for(size_t matrix_bytes) {
  const int64_t copies = static_cast<int64_t>((working_set_bytes() + matrix_bytes - 1) / matrix_bytes);
  return std::max<int64_t>(16, 2 * copies);
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  strata::set_num_threads(1);
  std::printf("BLAS: %s\nL3: %zu MiB, weight sets of %zu MiB, layer %lld x %lld, one thread\n",
              strata::blas_info().describe().c_str(), l3_bytes() >> 20, working_set_bytes() >> 20,
              static_cast<long long>(kRows), static_cast<long long>(kCols));

  benchmark::RegisterBenchmark("MemCopy", BM_MemCopy)->Iterations(3)->Unit(benchmark::kMillisecond);
  const size_t f32_bytes = static_cast<size_t>(kRows * kCols) * sizeof(float);
  for (int tokens : kTokenCounts)
    benchmark::RegisterBenchmark(("F32Blas/tokens:" + std::to_string(tokens)).c_str(), BM_F32Blas)
        ->Arg(tokens)
        ->Iterations(iterations_for(f32_bytes))
        ->Unit(benchmark::kMillisecond);
  std::vector<std::string> types;
  for (const auto& codec : strata::kernels::ggml_codecs()) {
    if (!strata::kernels::ggml_matmul_supported(codec.type) || !codec.can_quantize()) continue;
    types.emplace_back(codec.name);
    const size_t bytes = codec.row_bytes(kCols) * kRows;
    for (int tokens : kTokenCounts)
      benchmark::RegisterBenchmark(("GgmlMatmul/" + std::string(codec.name) + "/tokens:" + std::to_string(tokens)).c_str(),
                                   BM_GgmlMatmul, codec.type)
          ->Arg(tokens)
          ->Iterations(iterations_for(bytes))
          ->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  std::printf("\nSummary, one thread (target: one-token weight GB/s >= 70%% of memcpy's for Q4_0 and Q8_0)\n");
  std::printf("memcpy: %.2f GB/s copied (%.2f GB/s read + written)\n", g_rate["copy"], 2 * g_rate["copy"]);
  std::printf("float32 BLAS: %.1f tok/s (1 token, sgemv), %.1f tok/s (8 tokens, sgemm)\n", g_rate[key("f32_tok", 1)],
              g_rate[key("f32_tok", 8)]);
  const auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  std::printf("%-8s %11s %8s %10s %12s %11s %10s\n", "type", "1 tok GB/s", "/copy", "1 tok/f32", "8 tok tok/s",
              "8 tok GB/s", "8 tok/f32");
  for (const auto& name : types) {
    if (!g_rate.count(key(name + "_gbps", 1))) continue;
    const double gb1 = g_rate[key(name + "_gbps", 1)];
    std::printf("%-8s %11.2f %7.0f%% %9.2fx %12.1f %11.2f %9.2fx\n", name.c_str(), gb1,
                100 * ratio(gb1, g_rate["copy"]),
                ratio(g_rate[key(name + "_tok", 1)], g_rate[key("f32_tok", 1)]), g_rate[key(name + "_tok", 8)],
                g_rate[key(name + "_gbps", 8)], ratio(g_rate[key(name + "_tok", 8)], g_rate[key("f32_tok", 8)]));
  }
  return 0;
}
