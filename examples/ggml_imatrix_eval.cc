// What llama.cpp's importance matrix buys at 2-3 bits (docs/ggml-quantization.md): SmolLM2-135M's
// linear layers quantized to Q2_K and Q3_K by strata's byte-exact ggml quantizers, once without and
// once with the imatrix (mean x^2 per input column from calibration on State of the Union text),
// judged by perplexity and KL divergence to the dense model on a disjoint slice of Moby-Dick.
//
// K-quants need rows of whole 256-element super-blocks. SmolLM2's 576-column layers (attention q,
// k, v, o and ffn gate, up) cannot take them, so they get the type llama.cpp falls back to
// (llama_tensor_get_type: Q2_K, Q3_K -> IQ4_NL), with the same imatrix choice; ffn_down (1536
// columns) takes the K-quant. A second scope quantizes only the K-quant-eligible layers and keeps
// the others dense, to show the K-quant's own share. Token embeddings (the tied output head) stay
// dense. Every layer gets the one type (as `llama-quantize --pure` does), not llama.cpp's mixes.
//
//   ggml_imatrix_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//                     [--eval TXT] [--eval-slice 0.7:0.8] [--eval-tokens 4096] [--types q2_k,q3_k]
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;
namespace fs = std::filesystem;
namespace ggml = strata::compress::ggml;
using strata::examples::seconds_since;

struct Args : strata::examples::RealDataArgs {
  std::vector<std::string> types = {"q2_k", "q3_k"};

  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    examples::add_list(app, "--types", types, "ggml types to quantize to");
  }
};

// One quantized variant of the model and what it cost.
struct Variant {
  nn::LlamaModel model;
  double bytes = 0, weights = 0, seconds = 0;
  double weighted_error = 0;  // mean over layers of the imatrix-weighted relative weight error
  int k_layers = 0, fallback_layers = 0;
};

// sum_j ms_j sum_i (W - W')_ij^2 / sum_j ms_j sum_i W_ij^2: the output error under a diagonal input
// covariance, the quantity the imatrix weighting minimises.
double imatrix_weighted_error(const RowMatrix<float>& w, const RowMatrix<float>& w_hat, const Vector<double>& ms) {
  double num = 0, den = 0;
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t c = 0; c < w.cols(); ++c) {
      const double d = static_cast<double>(w(r, c)) - w_hat(r, c);
      num += ms[c] * d * d;
      den += ms[c] * static_cast<double>(w(r, c)) * w(r, c);
    }
  return den > 0 ? num / den : 0;
}

Variant quantize_model(const nn::LlamaModel& dense, const nn::Calibration& calib, const std::string& type_name,
                       bool use_imatrix, bool k_only) {
  const auto& comp = compress::find_compressor(use_imatrix ? "quant.ggml" : "quant.ggml_noimatrix");
  const kernels::GgmlType wanted = ggml::quantizable_type(type_name);
  Variant v{dense.clone()};
  const auto t0 = std::chrono::steady_clock::now();
  int layers = 0;
  for (const auto& name : dense.linear_names()) {
    if (name.rfind("blk.", 0) != 0) continue;  // the tied embedding / output head stays dense
    const RowMatrix<float> w = dense.linear(name).dense_weight();
    const kernels::GgmlType t = ggml::fallback_type(wanted, w.cols());
    if (t == kernels::GgmlType::F16 || (k_only && t != wanted)) continue;
    const auto& st = calib.stats(name);
    const Vector<double> ms = st.mean_sq();
    const compress::LayerCalibration lc{nullptr, &ms, nullptr, st.tokens};
    const compress::Compressed c = comp.apply({name, &w}, lc, ggml::lower_name(t));
    const RowMatrix<float> w_hat = comp.reconstruct(c);
    v.weighted_error += imatrix_weighted_error(w, w_hat, ms);
    ++layers;
    (t == wanted ? v.k_layers : v.fallback_layers)++;
    v.bytes += static_cast<double>(c.stored_bytes());
    v.weights += static_cast<double>(w.size());
    v.model.set_linear(name, comp.to_linear(c));
  }
  v.seconds = seconds_since(t0);
  if (layers > 0) v.weighted_error /= layers;
  return v;
}

void run(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  std::printf("model: %s\n", a.model.c_str());
  const auto file = io::open_model(a.model);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);

  // Only the per-channel statistics are needed: no Gram matrices.
  nn::Calibration calib(nn::CalibrationOptions{false, false});
  a.calibrate(dense, a.calibration_sequences(tok, cs), cs, calib, "calibration (imatrix = mean x^2 per input column)");
  const auto eval_toks = nn::tokenize_slice(tok, es, a.eval_tokens);
  const nn::WindowOptions window{512, 512, 0};
  std::printf("evaluation: %s, %zu tokens, context 512, stride 512\n", es.describe().c_str(), eval_toks.size());
  std::printf("threads: %d; %s\n\n", num_threads(), blas_info().describe().c_str());

  std::printf("| type | layers quantized | imatrix | bits/weight | quantize s | mean weighted layer err | perplexity | "
              "KL mean | KL p99 | top-1 |\n|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::pair<std::string, bool>, std::map<bool, double>> kl;  // (type, k_only) -> imatrix -> KL
  double dense_ppl = 0;
  for (bool k_only : {false, true}) {
    for (const auto& type : a.types) {
      for (bool use_imatrix : {false, true}) {
        const Variant v = quantize_model(dense, calib, type, use_imatrix, k_only);
        const nn::KlResult r = nn::kl_divergence(dense, v.model, eval_toks, window);
        dense_ppl = r.reference.perplexity;
        kl[{type, k_only}][use_imatrix] = r.mean_kl;
        const std::string fallback = ggml::lower_name(ggml::fallback_type(ggml::quantizable_type(type), 576));
        const std::string scope = k_only ? std::to_string(v.k_layers) + " " + type + " (rest dense)"
                                         : std::to_string(v.k_layers) + " " + type + " + " +
                                               std::to_string(v.fallback_layers) + " " + fallback;
        std::printf("| %s | %s | %s | %.3f | %.1f | %.5f | %.3f | %.5f | %.4f | %.2f%% |\n", type.c_str(),
                    scope.c_str(), use_imatrix ? "yes" : "no", 8.0 * v.bytes / v.weights, v.seconds, v.weighted_error,
                    r.model.perplexity, r.mean_kl, r.p99_kl, 100.0 * r.top1_agreement);
        std::fflush(stdout);
      }
    }
  }
  std::printf("\ndense perplexity: %.3f\n", dense_ppl);
  for (const auto& [key, by] : kl) {
    if (!by.count(false) || !by.count(true)) continue;
    const double ratio = by.at(true) / by.at(false);
    std::printf("%s, %s: KL with imatrix / without = %.5f / %.5f = %.3f (acceptance <= 0.8: %s)\n", key.first.c_str(),
                key.second ? "K-quant layers only" : "all layers (with fallback)", by.at(true), by.at(false), ratio,
                ratio <= 0.8 ? "met" : "NOT met");
  }
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"llama.cpp's importance matrix at 2-3 bits on SmolLM2-135M", "ggml_imatrix_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
