// Speed of the reference engine on SmolLM2-135M per weight form: float32, the file's own types
// (Q4_1, embedding Q8_0) run as blocks, every linear layer re-encoded as Q8_0, Q4_0, Q4_K (IQ4_NL
// where rows are no whole super-blocks, as llama.cpp falls back), strata's int4 groups, 2:4 sparse
// and low-rank factors. Prefill and decode tokens/s on 1 and 2 threads, with the baselines that bound
// them measured in the same run: memory-copy bandwidth (decode streams every weight once per token)
// and the BLAS sgemm rate (prefill is matrix products); and, when llama.cpp is installed
// (scripts/install-llama-cpp.sh), llama.cpp's own decode and prefill of the same GGUF file, run by
// scripts/bench_llama_cpp.py from here, with the ratio.
// Usage: bench_engine [--model PATH] [--forms f32,file,...] [--llama-cpp-python PATH] [benchmark flags].
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/nn/llama.hpp"
#include "llama_cpp_runner.hpp"

extern char** environ;

namespace {

std::map<std::string, std::unique_ptr<strata::nn::LlamaModel>> g_forms;  // weight form -> model
std::map<std::string, double> g_rate;  // last measured rate per benchmark name

std::vector<int32_t> prompt_tokens(int64_t n, int64_t vocab) {
  std::mt19937 rng(42);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// memcpy of a 1 GiB buffer, split over the threads; far beyond any cache.
void BM_MemCopy(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  strata::set_num_threads(threads);
  const size_t bytes = size_t{1} << 30;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    strata::parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const size_t chunk = bytes / static_cast<size_t>(threads);
        std::memcpy(dst.data() + static_cast<size_t>(i) * chunk, src.data() + static_cast<size_t>(i) * chunk, chunk);
      }
    });
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(dst.data());
  }
  // Copy bandwidth counts bytes read plus bytes written, as STREAM does.
  const double gbps = 2.0 * static_cast<double>(bytes) * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  g_rate["copy/" + std::to_string(threads)] = gbps;
}

void BM_Sgemm(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  strata::set_num_threads(threads);
  const int n = 2048;
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double gflops = 2.0 * n * n * static_cast<double>(n) * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GFLOP/s"] = gflops;
  g_rate["sgemm/" + std::to_string(threads)] = gflops;
}

double forward_flops(const strata::nn::LlamaModel& m, int64_t tokens) {
  double params = 0;
  for (const auto& name : m.linear_names()) {
    const auto& l = m.linear(name);
    params += static_cast<double>(l.in_features() * l.out_features());
  }
  // Linear layers dominate; attention adds 4 * tokens^2/2 * dim per layer for a causal prefill.
  const auto& c = m.config();
  return 2.0 * params * static_cast<double>(tokens) +
         2.0 * static_cast<double>(c.n_layers * c.n_heads * c.head_dim) * static_cast<double>(tokens * tokens);
}

void BM_Prefill(benchmark::State& state, const std::string& form) {
  const int threads = static_cast<int>(state.range(0));
  const int64_t n = state.range(1);
  const strata::nn::LlamaModel* g_model = g_forms.at(form).get();
  strata::set_num_threads(threads);
  const auto toks = prompt_tokens(n, g_model->config().vocab_size);
  std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
  strata::nn::LlamaSession session(*g_model, n);
  double seconds = 0;
  for (auto _ : state) {
    session.reset();
    const auto t0 = std::chrono::steady_clock::now();
    session.forward(toks, logits.data(), strata::nn::Logits::last);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double per_run = seconds / static_cast<double>(state.iterations());
  state.counters["tok/s"] = static_cast<double>(n) / per_run;
  const double gflops = forward_flops(*g_model, n) / per_run / 1e9;
  state.counters["GFLOP/s"] = gflops;
  g_rate[form + "/prefill_tok/" + std::to_string(threads)] = static_cast<double>(n) / per_run;
  g_rate[form + "/prefill_gflops/" + std::to_string(threads)] = gflops;
}

void BM_Decode(benchmark::State& state, const std::string& form) {
  const int threads = static_cast<int>(state.range(0));
  const strata::nn::LlamaModel* g_model = g_forms.at(form).get();
  strata::set_num_threads(threads);
  const int64_t context = 128, steps = 32;
  const auto toks = prompt_tokens(context + steps, g_model->config().vocab_size);
  std::vector<float> logits(static_cast<size_t>(g_model->config().vocab_size));
  strata::nn::LlamaSession session(*g_model, context + steps);
  double seconds = 0;
  for (auto _ : state) {
    session.reset();
    session.forward(std::span<const int32_t>(toks).first(static_cast<size_t>(context)), logits.data(),
                    strata::nn::Logits::last);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i)
      session.forward(std::span<const int32_t>(toks).subspan(static_cast<size_t>(context + i), 1), logits.data(),
                      strata::nn::Logits::last);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double per_token = seconds / static_cast<double>(state.iterations() * steps);
  // Bytes a decoded token reads: every linear layer once (the embedding lookup reads one row).
  double bytes = 0;
  for (const auto& name : g_model->linear_names()) bytes += static_cast<double>(g_model->linear(name).weight_bytes());
  state.counters["tok/s"] = 1.0 / per_token;
  state.counters["weights GB/s"] = bytes / per_token / 1e9;
  g_rate[form + "/decode_tok/" + std::to_string(threads)] = 1.0 / per_token;
  g_rate[form + "/decode_gbps/" + std::to_string(threads)] = bytes / per_token / 1e9;
}

// Every block linear layer of `base` (and the embedding with its tied head, for ggml types) through
// one compressor setting, without calibration data: a speed benchmark needs the form, not the best
// weights. Other forms keep the file's embedding and head, so that only the blocks differ.
std::unique_ptr<strata::nn::LlamaModel> recode(const strata::nn::LlamaModel& stored, const strata::nn::LlamaModel& base,
                                               const std::string& method, const std::string& knob, bool ggml_fallback) {
  using namespace strata;
  auto m = std::make_unique<nn::LlamaModel>(stored.clone());
  const compress::WeightCompressor& comp = compress::find_compressor(method);
  auto knob_for = [&](int64_t cols) {
    if (!ggml_fallback) return knob;
    const auto t = kernels::ggml_type_from_name(knob);
    return kernels::lower_name(compress::ggml::fallback_type(*t, cols));
  };
  for (const auto& name : base.linear_names()) {
    if (name == "output.weight") continue;  // the tied head follows the embedding below
    const RowMatrix<float> w = base.linear(name).dense_weight();
    const compress::Layer layer{name, &w};
    m->set_linear(name, comp.to_linear(comp.apply(layer, {}, knob_for(w.cols()))));
  }
  if (ggml_fallback) {
    const RowMatrix<float> e = base.token_embedding().dense();
    auto emb = comp.to_embedding(comp.apply(compress::Layer{"token_embd.weight", &e}, {}, knob_for(e.cols())));
    m->set_linear("output.weight", emb->as_linear());
    m->set_token_embedding(std::move(emb));
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  std::filesystem::path model_path = strata::io::DataPaths::resolve().smollm2();
  std::string forms_arg = "f32,file,q8_0,q4_0,q4_k,int4,2:4,lowrank";
  std::string llama_python = strata::bench::llama_cpp_python();
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      model_path = argv[++i];
      continue;
    }
    if (std::strcmp(argv[i], "--forms") == 0 && i + 1 < argc) {
      forms_arg = argv[++i];
      continue;
    }
    if (std::strcmp(argv[i], "--llama-cpp-python") == 0 && i + 1 < argc) {
      llama_python = argv[++i];
      continue;
    }
    rest.push_back(argv[i]);
  }
  int rest_argc = static_cast<int>(rest.size());
  if (!std::filesystem::exists(model_path)) {
    std::fprintf(stderr, "bench_engine: %s not found (run scripts/fetch-models.sh, or pass --model PATH)\n",
                 model_path.c_str());
    return 1;
  }
  std::shared_ptr<const strata::io::Model> file = strata::io::open_model(model_path);
  const auto f32 = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load(*file));
  const auto stored = std::make_unique<strata::nn::LlamaModel>(strata::nn::LlamaModel::load_stored(file));
  std::printf("model: %s\nBLAS: %s\n", model_path.c_str(), strata::blas_info().describe().c_str());
  // Form name -> (method, knob, ggml fallback for rows that are no whole super-blocks).
  const std::map<std::string, std::tuple<std::string, std::string, bool>> recipes = {
      {"q8_0", {"quant.ggml_noimatrix", "q8_0", true}}, {"q4_0", {"quant.ggml_noimatrix", "q4_0", true}},
      {"q4_k", {"quant.ggml_noimatrix", "q4_k", true}}, {"int4", {"quant.rtn", "bits=4,group=32", false}},
      {"2:4", {"prune.magnitude", "pattern=2:4", false}}, {"lowrank", {"lowrank.svd", "keep=0.5", false}}};
  std::vector<std::string> forms;
  for (size_t b = 0; b <= forms_arg.size();) {
    const size_t e = std::min(forms_arg.find(',', b), forms_arg.size());
    const std::string f = forms_arg.substr(b, e - b);
    b = e + 1;
    if (f.empty()) continue;
    if (f == "f32") {
      g_forms[f] = std::make_unique<strata::nn::LlamaModel>(f32->clone());
    } else if (f == "file") {
      g_forms[f] = std::make_unique<strata::nn::LlamaModel>(stored->clone());
    } else if (auto it = recipes.find(f); it != recipes.end()) {
      const auto& [method, knob, fallback] = it->second;
      g_forms[f] = recode(*stored, *f32, method, knob, fallback);
    } else {
      std::fprintf(stderr, "bench_engine: unknown form '%s' (known: f32, file, q8_0, q4_0, q4_k, int4, 2:4, lowrank)\n",
                   f.c_str());
      return 1;
    }
    forms.push_back(f);
    std::printf("form %-8s %8.1f MiB of weights, e.g. blk.0.ffn_up: %s\n", f.c_str(),
                static_cast<double>(g_forms[f]->weight_bytes()) / (1024.0 * 1024.0),
                g_forms[f]->linear("blk.0.ffn_up.weight").describe().c_str());
  }

  for (int t : {1, 2}) {
    const std::string ts = "/threads:" + std::to_string(t);
    benchmark::RegisterBenchmark(("MemCopy" + ts).c_str(), BM_MemCopy)->Arg(t)->Iterations(3)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Sgemm2048" + ts).c_str(), BM_Sgemm)->Arg(t)->Iterations(3)->Unit(benchmark::kMillisecond);
    for (const auto& f : forms) {
      benchmark::RegisterBenchmark(("Prefill512/" + f + ts).c_str(), BM_Prefill, f)->Args({t, 512})->Iterations(2)->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("Decode/" + f + ts).c_str(), BM_Decode, f)->Arg(t)->Iterations(2)->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  std::map<int, nlohmann::json> llama;
  for (int t : {1, 2})
    if (auto j = strata::bench::run_llama_cpp(llama_python,
                                              {"--model", model_path.string(), "--threads", std::to_string(t)}))
      llama[t] = *j;

  std::printf("\nSummary (same run). decode/copy: weight bytes read per second over the copy bandwidth (read +\n"
              "written, as STREAM counts); x f32: tokens/s over the float32 form's\n");
  for (int t : {1, 2}) {
    const std::string k = "/" + std::to_string(t);
    if (!g_rate.count("copy" + k) || !g_rate.count("sgemm" + k)) continue;
    std::printf("\n%d thread%s: copy %.2f GB/s, sgemm %.1f GFLOP/s\n", t, t == 1 ? "" : "s", g_rate["copy" + k],
                g_rate["sgemm" + k]);
    std::printf("%-10s %10s %12s %12s %9s %13s %9s %13s\n", "form", "MiB", "decode tok/s", "weights GB/s",
                "x f32", "prefill tok/s", "x f32", "prefill/sgemm");
    for (const auto& f : forms) {
      if (!g_rate.count(f + "/decode_tok" + k) || !g_rate.count(f + "/prefill_tok" + k)) continue;
      const double dec = g_rate[f + "/decode_tok" + k], pre = g_rate[f + "/prefill_tok" + k];
      const double dec32 = g_rate.count("f32/decode_tok" + k) ? g_rate["f32/decode_tok" + k] : NAN;
      const double pre32 = g_rate.count("f32/prefill_tok" + k) ? g_rate["f32/prefill_tok" + k] : NAN;
      std::printf("%-10s %10.1f %12.1f %12.2f %8.2fx %13.1f %8.2fx %12.0f%%\n", f.c_str(),
                  static_cast<double>(g_forms[f]->weight_bytes()) / (1024.0 * 1024.0), dec,
                  g_rate[f + "/decode_gbps" + k], dec / dec32, pre, pre / pre32,
                  100.0 * g_rate[f + "/prefill_gflops" + k] / g_rate["sgemm" + k]);
    }
    if (llama.count(t)) {
      const auto& j = llama[t];
      const double dec = j.at("decode_tok_s").get<double>(), pre = j.at("prefill_tok_s").get<double>();
      std::printf("%-10s %10s %12.1f %12s %9s %13.1f\n", "llama.cpp", "", dec, "", "", pre);
      if (g_rate.count("file/decode_tok" + k))
        std::printf("strata (file's types) / llama.cpp on the same file: decode %.2fx, prefill %.2fx  [%s]\n",
                    g_rate["file/decode_tok" + k] / dec, g_rate["file/prefill_tok" + k] / pre,
                    j.at("engine").get<std::string>().c_str());
    }
  }
  if (llama.empty())
    std::printf("\nllama.cpp: not measured (no %s; run scripts/install-llama-cpp.sh or pass --llama-cpp-python)\n",
                llama_python.c_str());
  return 0;
}
