// Acceptance figures for the low-rank compressors (docs/lowrank.md): every linear layer of
// SmolLM2-135M's 30 blocks replaced by float32 factors A B keeping a fraction of its parameters,
// with plain SVD, ASVD and SVD-LLM, the compressed model computing with the factors
// (LowRankLinear, two products per layer), judged by perplexity and KL divergence to the dense
// model on text disjoint from the calibration text.
//
//   lowrank_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//                [--eval TXT] [--eval-slice 0.7:0.8] [--eval-tokens 4096] [--keep 0.8[,0.6...]]
//                [--methods svd,asvd,svdllm] [--rsvd]
// --rsvd computes each layer's factors with the randomized SVD instead of the full one.
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;
using strata::examples::seconds_since;
namespace fs = std::filesystem;


struct Args : strata::examples::RealDataArgs {
  std::vector<std::string> keeps = {"0.8"};
  std::vector<std::string> methods = {"svd", "asvd", "svdllm"};
  bool rsvd = false;

  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    examples::add_list(app, "--keep", keeps, "fractions of each layer's parameters kept");
    examples::add_list(app, "--methods", methods, "low-rank compressors (lowrank.NAME)");
    app.add_flag("--rsvd", rsvd, "factorize with the randomized SVD instead of the full one");
  }
};

// tr(D H D^T) in single precision BLAS: a report-only figure, so float is enough.
double weighted_trace(const RowMatrix<float>& d, const Matrix<float>& h) {
  RowMatrix<float> dh(d.rows(), d.cols());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(d.rows()), static_cast<int>(d.cols()),
              static_cast<int>(d.cols()), 1.0f, d.data(), static_cast<int>(d.cols()), h.data(),
              static_cast<int>(h.rows()), 0.0f, dh.data(), static_cast<int>(d.cols()));
  return (dh.cast<double>().array() * d.cast<double>().array()).sum();
}

struct Totals {
  double seconds = 0, bytes = 0, dense_bytes = 0, flops = 0, dense_flops = 0, mean_layer_error = 0;
};

void run(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  std::printf("%s; %d threads\n", blas_info().describe().c_str(), num_threads());
  std::printf("== SmolLM2-135M: %s\n", a.model.c_str());
  const auto file = io::open_model(a.model);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);

  nn::Calibration calib;
  a.calibrate(dense, a.calibration_sequences(tok, cs), cs, calib);
  const auto eval_toks = nn::tokenize_slice(tok, es, a.eval_tokens);
  const nn::WindowOptions window{512, 512, 0};
  std::printf("evaluation: %s, %zu tokens, context 512, stride 512\n", es.describe().c_str(), eval_toks.size());

  std::vector<std::string> names;
  for (const auto& n : dense.linear_names())
    if (n.rfind("blk.", 0) == 0) names.push_back(n);
  std::printf("factorizing %zu linear layers (the 30 blocks; embeddings / tied output head stay dense)%s\n\n",
              names.size(), a.rsvd ? ", randomized SVD" : ", full SVD");

  // Per layer: H in float for the error figure, and tr(W H W^T).
  std::map<std::string, std::pair<Matrix<float>, double>> h_cache;
  const nn::PerplexityResult dense_ppl = nn::perplexity(dense, eval_toks, window);
  std::printf("dense perplexity: %.3f (%lld tokens scored)\n\n", dense_ppl.perplexity,
              static_cast<long long>(dense_ppl.tokens));
  std::fflush(stdout);
  std::printf("| method | keep | bytes vs dense | flops vs dense | factorize s | mean layer err | perplexity | "
              "ppl increase | KL mean | KL p99 | top-1 |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::string, std::map<std::string, double>> increase;  // keep -> method -> ppl - dense ppl
  for (const auto& keep : a.keeps) {
    for (const auto& m : a.methods) {
      const auto& c = compress::find_compressor("lowrank." + m);
      const std::string knob = "keep=" + keep + (a.rsvd ? ",rsvd" : "");
      nn::LlamaModel lr = dense.clone();
      Totals out;
      double error_sum = 0;
      for (const auto& name : names) {
        const RowMatrix<float> w = dense.linear(name).dense_weight();
        const auto& st = calib.stats(name);
        const Matrix<double> h = st.hessian();
        const Vector<double> mean_sq = st.mean_sq(), mean_abs = st.mean_abs();
        const compress::LayerCalibration lc{&h, &mean_sq, &mean_abs, st.tokens};
        const compress::Layer layer{name, &w};
        const auto t1 = std::chrono::steady_clock::now();
        const compress::Compressed comp = c.apply(layer, lc, knob);
        auto lin = c.to_linear(comp);
        out.seconds += seconds_since(t1);
        const compress::Cost cost = c.cost(layer, knob);
        out.bytes += static_cast<double>(comp.stored_bytes());
        out.dense_bytes += 4.0 * static_cast<double>(w.size());
        out.flops += cost.flops;
        out.dense_flops += 2.0 * static_cast<double>(w.size());
        auto it = h_cache.find(name);
        if (it == h_cache.end()) {
          Matrix<float> hf = h.cast<float>();
          const double denom = weighted_trace(w, hf);
          it = h_cache.emplace(name, std::make_pair(std::move(hf), denom)).first;
        }
        error_sum += weighted_trace(w - lin->dense_weight(), it->second.first) / it->second.second;
        lr.set_linear(name, std::move(lin));
      }
      out.mean_layer_error = error_sum / static_cast<double>(names.size());
      const nn::KlResult kl = nn::kl_divergence(dense, lr, eval_toks, window);
      increase[keep][m] = kl.model.perplexity - kl.reference.perplexity;
      std::printf("| %s | %s | %.3f | %.3f | %.1f | %.4f | %.3f | %+.3f | %.4f | %.3f | %.2f%% |\n", c.name().data(),
                  keep.c_str(), out.bytes / out.dense_bytes, out.flops / out.dense_flops, out.seconds,
                  out.mean_layer_error, kl.model.perplexity, increase[keep][m], kl.mean_kl, kl.p99_kl,
                  100.0 * kl.top1_agreement);
      std::fflush(stdout);
    }
  }
  std::printf("\n");
  for (const auto& [keep, inc] : increase) {
    if (!inc.count("svd")) continue;
    for (const auto& [m, v] : inc)
      if (m != "svd")
        std::printf("keep=%s: perplexity increase of %s / that of plain SVD = %.3g\n", keep.c_str(), m.c_str(),
                    v / inc.at("svd"));
  }
}

}  // namespace

int main(int argc, char** argv) {
  ensure_fast_blas(argc, argv);
  CLI::App app{"Low-rank compressors (SVD, ASVD, SVD-LLM) on SmolLM2-135M", "lowrank_eval"};
  Args a;
  a.add_options(app);
  return examples::run_main(app, argc, argv, [&] { run(a); });
}
