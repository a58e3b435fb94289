// bench_compress: what compressing costs, per layer and per model.
//
//  1. layer/...: every registered compressor at a representative knob (lowrank keep=0.5, pruning
//     sparsity=0.5, integer quantizers 4 bits, ggml q4_k) on one 576 x 1536 layer, SmolLM2-135M's
//     blk.0.ffn_down.weight with the Hessian and channel statistics of its input from calibration
//     on SOTU text. Baselines in the same run: one dense forward of 512 tokens through the layer
//     (the engine's own product) and RTN; the summary gives every time as a multiple of both.
//     layer/quant.gptq:paper is GPTQ as published (natural order, min/max groups, 1% dampening),
//     for what the registered defaults cost on top. Without the model file, a synthetic layer of
//     the same shape (heavy-tailed weights, inputs with correlated channels and a few loud ones)
//     stands in, and the output says so.
//  2. model/...: SparseGPT at 50% and GPTQ at 4 bits with the registered defaults (groups of 128,
//     act-order, weighted clipping search, 10% dampening) over every linear layer of SmolLM2's 30
//     blocks (210 layers), each from the same calibration. Baseline: the calibration itself
//     (model/calibrate), timed in the same run. Then GPTQ into q4_0 blocks (quant.ggml_gptq) over
//     the same 210 layers, with ggml's imatrix rounding to q4_0 (quant.ggml) as its baseline.
//
// Usage (from the repository root; the model from models/ or STRATA_MODELS_DIR, the text from
// ../shared/data or STRATA_SHARED_DATA):
//   bench_compress [--model GGUF] [--calib TXT] [--sequences 8] [--length 512] [Google Benchmark flags]
// e.g. --benchmark_filter=layer/ for the per-layer part only (it skips the whole-model passes, not
// the calibration its Hessian comes from).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/linear.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
using namespace strata;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr int64_t kForwardTokens = 512;
constexpr const char* kLayerName = "blk.0.ffn_down.weight";

struct Config {
  fs::path model, calib;
  int64_t sequences = 8, length = 512;
};
Config g_config;

// The layer of part 1 with its calibration statistics.
struct LayerData {
  std::string source;  // what the layer and its statistics are, for the output
  RowMatrix<float> w;
  Matrix<double> h;
  Vector<double> mean_sq, mean_abs;
  int64_t tokens = 0;
  compress::LayerCalibration calib() const { return {&h, &mean_sq, &mean_abs, tokens}; }
};

// The model, its calibration and what the calibration took, loaded once whatever the filter.
struct ModelData {
  std::unique_ptr<io::Model> file;
  std::unique_ptr<nn::LlamaModel> model;
  std::vector<std::vector<int32_t>> sequences;
  nn::Calibration calib;
  double calibrate_s = 0;
  bool calibrated = false;
};
std::unique_ptr<ModelData> g_model;

// Results for the summary.
std::map<std::string, double> g_seconds;      // mean seconds per iteration by benchmark name
std::map<std::string, std::string> g_knobs;   // layer benchmark name -> compressor and knob
std::vector<std::string> g_layer_order;

bool load_model() {
  if (g_model) return true;
  if (!fs::exists(g_config.model) || !fs::exists(g_config.calib)) return false;
  auto d = std::make_unique<ModelData>();
  d->file = io::open_model(g_config.model);
  d->model = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*d->file));
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*d->file);
  const nn::TextSlice slice = nn::TextSlice::parse(g_config.calib, "0:0.5");
  d->sequences = nn::cut_sequences(nn::tokenize_slice(tok, slice, g_config.sequences * g_config.length),
                                   g_config.sequences, g_config.length, -1);
  g_model = std::move(d);
  return true;
}

// One calibration of the whole model on the SOTU sequences: Gram matrices and channel statistics
// of every linear layer's input.
double run_calibration(nn::Calibration& calib) {
  size_t next = 0;
  const auto t0 = Clock::now();
  nn::calibrate(*g_model->model,
                [&](std::vector<int32_t>& s) {
                  if (next == g_model->sequences.size()) return false;
                  s = g_model->sequences[next++];
                  return true;
                },
                calib);
  return seconds_since(t0);
}

ModelData& calibrated_model() {
  if (!g_model->calibrated) {
    g_model->calibrate_s = run_calibration(g_model->calib);
    g_model->calibrated = true;
  }
  return *g_model;
}

// Heavy-tailed weights and H = X^T X / N for inputs with correlated channels and a few loud ones.
LayerData synthetic_layer(int64_t rows, int64_t cols) {
  LayerData d;
  d.source = "SYNTHETIC layer (model or calibration text not found): heavy-tailed weights, correlated inputs";
  std::mt19937_64 rng(1);
  std::student_t_distribution<float> t(4.0f);
  d.w.resize(rows, cols);
  for (int64_t i = 0; i < d.w.size(); ++i) d.w.data()[i] = 0.02f * t(rng);
  std::normal_distribution<double> gauss(0.0, 1.0);
  const int64_t tokens = 2 * cols, latent = cols / 8;
  Matrix<double> mix(latent, cols), z(tokens, latent);
  for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = gauss(rng);
  for (int64_t i = 0; i < z.size(); ++i) z.data()[i] = gauss(rng);
  Matrix<double> x = z * mix;
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] += 0.3 * gauss(rng);
  for (int64_t j = 3; j < cols; j += 41) x.col(j) *= 10.0;
  d.h = x.transpose() * x / static_cast<double>(tokens);
  d.mean_sq = d.h.diagonal();
  d.mean_abs = x.cwiseAbs().colwise().mean().transpose();
  d.tokens = tokens;
  return d;
}

const LayerData& layer_data() {
  static const LayerData d = [] {
    if (!load_model()) return synthetic_layer(576, 1536);
    ModelData& m = calibrated_model();
    LayerData out;
    out.w = m.model->linear(kLayerName).dense_weight();
    const auto& st = m.calib.stats(kLayerName);
    out.h = st.hessian();
    out.mean_sq = st.mean_sq();
    out.mean_abs = st.mean_abs();
    out.tokens = st.tokens;
    out.source = "SmolLM2 " + std::string(kLayerName) + " [" + std::to_string(out.w.rows()) + " x " +
                 std::to_string(out.w.cols()) + "], statistics from " + std::to_string(st.tokens) + " SOTU tokens";
    return out;
  }();
  return d;
}

template <class Fn>
double timed_loop(benchmark::State& state, Fn&& fn) {
  double total = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    fn();
    total += seconds_since(t0);
    ++iters;
  }
  return iters ? total / static_cast<double>(iters) : 0.0;
}

// ------------------------------------------------------------------------------------ per layer

void bm_dense_forward(benchmark::State& state) {
  const LayerData& d = layer_data();
  const nn::DenseLinear layer(d.w);
  std::mt19937 rng(3);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kForwardTokens * d.w.cols()));
  std::vector<float> y(static_cast<size_t>(kForwardTokens * d.w.rows()));
  for (auto& v : x) v = gauss(rng);
  const double t = timed_loop(state, [&] {
    layer.forward(x.data(), kForwardTokens, y.data());
    benchmark::DoNotOptimize(y.data());
  });
  g_seconds["layer/dense_forward_512tok"] = t;
  state.counters["GFLOP/s"] = 2.0 * static_cast<double>(d.w.size() * kForwardTokens) / t / 1e9;
}

// The knob a compressor is timed at: the first of its own ladder that starts like one of these, so
// that it carries the compressor's defaults; the middle of the ladder otherwise.
std::string representative_knob(const compress::WeightCompressor& c, const compress::Layer& layer) {
  const auto knobs = c.knobs(layer);
  for (const char* prefix : {"keep=0.5", "sparsity=0.5", "bits=4,", "q4_k"})
    for (const auto& k : knobs)
      if (k.rfind(prefix, 0) == 0) return k;
  return knobs[knobs.size() / 2];
}

// `knob` empty: the representative knob.
void bm_compress_layer(benchmark::State& state, const compress::WeightCompressor* c, std::string knob,
                       std::string bench_name) {
  const LayerData& d = layer_data();
  const compress::Layer layer{kLayerName, &d.w};
  if (knob.empty()) knob = representative_knob(*c, layer);
  g_knobs[bench_name] = std::string(c->name()) + ":" + knob;
  const compress::LayerCalibration calib = d.calib();
  compress::Compressed comp;
  const double t = timed_loop(state, [&] {
    comp = c->apply(layer, calib, knob);
    benchmark::DoNotOptimize(comp.tensors.size());
  });
  g_seconds[bench_name] = t;
  // The relative output error on the calibration inputs, so that a fast compressor is seen to do
  // its job.
  state.counters["output_err"] = compress::output_error(d.w, c->reconstruct(comp), &d.h);
  state.SetLabel(knob);
}

// ------------------------------------------------------------------------------------ per model

void bm_calibrate(benchmark::State& state) {
  double t = 0;
  for (auto _ : state) {
    nn::Calibration fresh;
    t = run_calibration(fresh);
    if (!g_model->calibrated) {
      g_model->calib = std::move(fresh);
      g_model->calibrate_s = t;
      g_model->calibrated = true;
    }
  }
  g_seconds["model/calibrate"] = t;
  state.counters["tok/s"] = static_cast<double>(g_config.sequences * g_config.length) / t;
}

// `knob` empty: the compressor's own 4-bit knob (for GPTQ: groups of 128, act-order, its defaults).
void bm_compress_model(benchmark::State& state, std::string compressor, std::string knob, std::string bench_name) {
  ModelData& m = calibrated_model();
  const compress::WeightCompressor& c = compress::find_compressor(compressor);
  std::vector<std::string> names;
  for (const auto& n : m.model->linear_names())
    if (n.rfind("blk.", 0) == 0) names.push_back(n);
  const RowMatrix<float> w0 = m.model->linear(names.front()).dense_weight();
  if (knob.empty()) knob = representative_knob(c, {names.front(), &w0});
  double t = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (const auto& name : names) {
      // Everything a pipeline does per layer: the weight, its input statistics, the compression.
      const RowMatrix<float> w = m.model->linear(name).dense_weight();
      const auto& st = m.calib.stats(name);
      const Matrix<double> h = st.hessian();
      const Vector<double> mean_sq = st.mean_sq(), mean_abs = st.mean_abs();
      const compress::Compressed comp = c.apply({name, &w}, {&h, &mean_sq, &mean_abs, st.tokens}, knob);
      benchmark::DoNotOptimize(comp.tensors.size());
    }
    t = seconds_since(t0);
  }
  g_seconds[bench_name] = t;
  g_knobs[bench_name] = compressor + ":" + knob;
  state.counters["layers"] = static_cast<double>(names.size());
  state.counters["s/layer"] = t / static_cast<double>(names.size());
}

// ------------------------------------------------------------------------------------ summary

void print_summary() {
  const LayerData& d = layer_data();
  std::printf("\nPer layer (%s), %d threads\n", d.source.c_str(), num_threads());
  const auto fwd = g_seconds.find("layer/dense_forward_512tok");
  const auto rtn = g_seconds.find("layer/quant.rtn");
  if (fwd != g_seconds.end())
    std::printf("baseline: one dense forward of %lld tokens through the layer %.3f ms\n",
                static_cast<long long>(kForwardTokens), 1e3 * fwd->second);
  std::printf("%-22s %-50s %10s %16s %8s\n", "compressor", "knob", "ms/layer", "x dense fwd 512", "x RTN");
  for (const auto& name : g_layer_order) {
    const auto s = g_seconds.find(name);
    if (s == g_seconds.end()) continue;
    const std::string& ck = g_knobs[name];
    const auto colon = ck.find(':');
    char vs_fwd[32] = "-", vs_rtn[32] = "-";
    if (fwd != g_seconds.end()) std::snprintf(vs_fwd, sizeof vs_fwd, "%.1f", s->second / fwd->second);
    if (rtn != g_seconds.end()) std::snprintf(vs_rtn, sizeof vs_rtn, "%.1f", s->second / rtn->second);
    std::printf("%-22s %-50s %10.2f %16s %8s\n", ck.substr(0, colon).c_str(), ck.substr(colon + 1).c_str(),
                1e3 * s->second, vs_fwd, vs_rtn);
  }
  if (!g_model || !g_model->calibrated) return;
  const auto cal = g_seconds.find("model/calibrate");
  const double cal_s = cal != g_seconds.end() ? cal->second : g_model->calibrate_s;
  std::printf("\nWhole model (SmolLM2-135M, 210 block linear layers), %d threads\n", num_threads());
  std::printf("baseline: calibration on %lld x %lld SOTU tokens %.1f s\n", static_cast<long long>(g_config.sequences),
              static_cast<long long>(g_config.length), cal_s);
  for (const char* name : {"model/sparsegpt_50", "model/gptq_4bit", "model/quant.ggml:q4_0", "model/quant.ggml_gptq:q4_0"}) {
    const auto s = g_seconds.find(name);
    if (s == g_seconds.end()) continue;
    std::printf("%-26s %-54s %8.1f s  (%.2f min, %.1fx the calibration)\n", name, g_knobs[name].c_str(), s->second,
                s->second / 60, s->second / cal_s);
  }
  const auto plain = g_seconds.find("model/quant.ggml:q4_0"), gptq = g_seconds.find("model/quant.ggml_gptq:q4_0");
  if (plain != g_seconds.end() && gptq != g_seconds.end())
    std::printf("GPTQ into q4_0 blocks / imatrix rounding to q4_0, 210 layers: %.1f s / %.2f s = %.1fx\n", gptq->second,
                plain->second, gptq->second / plain->second);
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  const auto paths = strata::io::DataPaths::resolve();
  g_config.model = paths.smollm2();
  g_config.calib = paths.sotu();
  std::vector<char*> rest;
  try {
    for (int i = 0; i < argc; ++i) {
      const std::string k = argv[i];
      auto value = [&]() -> std::string {
        require(i + 1 < argc, k, " needs a value");
        return argv[++i];
      };
      if (k == "--model") g_config.model = value();
      else if (k == "--calib") g_config.calib = value();
      else if (k == "--sequences") g_config.sequences = std::stoll(value());
      else if (k == "--length") g_config.length = std::stoll(value());
      else rest.push_back(argv[i]);
    }
    require(g_config.sequences >= 1 && g_config.length >= 1, "--sequences and --length must be >= 1");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_compress: %s\n", e.what());
    return 1;
  }
  int rest_argc = static_cast<int>(rest.size());
  std::printf("BLAS: %s; %d threads\n", strata::blas_info().describe().c_str(), strata::num_threads());
  bool have_model = false;
  try {
    have_model = load_model();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_compress: %s\n", e.what());
    return 1;
  }
  if (have_model)
    std::printf("model: %s; calibration: %s slice 0:0.5, %lld x %lld tokens\n", g_config.model.c_str(),
                g_config.calib.c_str(), static_cast<long long>(g_config.sequences),
                static_cast<long long>(g_config.length));
  else
    std::printf("%s or %s not found: the per-layer part runs on a SYNTHETIC 576 x 1536 layer and the whole-model "
                "part is skipped (scripts/fetch-models.sh fetches the model)\n",
                g_config.model.c_str(), g_config.calib.c_str());
  std::fflush(stdout);

  // The calibration first, so that its time is measured as a benchmark and not inside another one.
  if (have_model)
    benchmark::RegisterBenchmark("model/calibrate", bm_calibrate)
        ->Iterations(1)
        ->Unit(benchmark::kSecond)
        ->UseRealTime();
  benchmark::RegisterBenchmark("layer/dense_forward_512tok", bm_dense_forward)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const auto& c : compress::registry()) {
    const std::string name = "layer/" + std::string(c->name());
    g_layer_order.push_back(name);
    // At least a second of runs each: a compressor of a second or more per layer is timed once
    // (its spread is small next to the ratios), and the default run stays within minutes.
    benchmark::RegisterBenchmark(name.c_str(), bm_compress_layer, c.get(), std::string(), name)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(1.0);
    // What GPTQ's clipping search and act-order cost: the paper's configuration next to the default.
    if (c->name() == "quant.gptq") {
      const std::string plain = name + ":paper";
      g_layer_order.push_back(plain);
      benchmark::RegisterBenchmark(plain.c_str(), bm_compress_layer, c.get(),
                                   std::string("bits=4,group=128,asym,act_order=0,clip=0,damp=0.01"), plain)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(1.0);
    }
  }
  if (have_model) {
    benchmark::RegisterBenchmark("model/sparsegpt_50", bm_compress_model, std::string("prune.sparsegpt"),
                                 std::string("sparsity=0.5"), std::string("model/sparsegpt_50"))
        ->Iterations(1)
        ->Unit(benchmark::kSecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark("model/gptq_4bit", bm_compress_model, std::string("quant.gptq"),
                                 std::string(), std::string("model/gptq_4bit"))
        ->Iterations(1)
        ->Unit(benchmark::kSecond)
        ->UseRealTime();
    // GPTQ into ggml blocks against ggml's imatrix rounding of the same type, both at q4_0 (every
    // block layer takes it; the k-quants would leave the 576-column layers out).
    for (const char* c : {"quant.ggml", "quant.ggml_gptq"}) {
      const std::string bench = std::string("model/") + c + ":q4_0";
      benchmark::RegisterBenchmark(bench.c_str(), bm_compress_model, std::string(c), std::string("q4_0"), bench)
          ->Iterations(1)
          ->Unit(benchmark::kSecond)
          ->UseRealTime();
    }
  }
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 1;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_compress: %s\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  print_summary();
  return 0;
}
