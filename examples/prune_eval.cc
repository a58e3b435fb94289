// Acceptance figures for pruning (docs/pruning.md): every linear layer of SmolLM2-135M's 30 blocks
// (not the tied embedding / output head) pruned by magnitude, Wanda and SparseGPT, unstructured at
// 50% and semi-structured 2:4 and 4:8; then structured FFN-neuron pruning and block removal. Each
// variant is judged by perplexity and KL divergence to the dense model on text disjoint from the
// calibration text.
//
//   prune_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//              [--eval TXT] [--eval-slice 0.7:0.8] [--eval-tokens 4096] [--patterns 0.5,2:4,4:8]
//              [--methods magnitude,wanda,sparsegpt] [--ffn 0.1,0.25] [--ffn-damp 0.2] [--blocks 1,2,4]
//              [--threads N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/prune/prune.hpp"
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
namespace prune = strata::compress::prune;
namespace fs = std::filesystem;

using strata::examples::seconds_since;
using strata::examples::split;

struct Args : strata::examples::RealDataArgs {
  int64_t threads = 0;
  std::vector<std::string> patterns = {"0.5", "2:4", "4:8"};
  std::vector<std::string> methods = {"magnitude", "wanda", "sparsegpt"};
  std::vector<double> ffn = {0.1, 0.25};
  std::vector<double> ffn_damps = {prune::NeuronPruningOptions{}.damp};
  std::vector<int> blocks = {1, 2, 4};

  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    app.add_option("--threads", threads, "threads (0 = all)")->check(CLI::NonNegativeNumber);
    examples::add_list(app, "--patterns", patterns, "unstructured sparsities and N:M patterns");
    examples::add_list(app, "--methods", methods, "magnitude, wanda, sparsegpt")
        ->check(CLI::Validator(
            [](std::string& v) {
              for (const auto& m : split(v, ','))
                if (m != "magnitude" && m != "wanda" && m != "sparsegpt") return "unknown method '" + m + "'";
              return std::string();
            },
            "METHOD,..."));
    examples::add_list(app, "--ffn", ffn, "fractions of FFN neurons removed");
    examples::add_list(app, "--ffn-damp", ffn_damps, "dampings of the least-squares refit, each its own row");
    examples::add_list(app, "--blocks", blocks, "numbers of blocks removed");
  }
};

struct Row {
  std::string method, pattern;
  double ppl = 0, kl = 0, top1 = 0, layer_error = 0, seconds = 0;
  uint64_t bytes = 0;
};

// Every linear layer of the blocks pruned by `method`; the statistics of an input are shared by the
// layers that read it, and so is SparseGPT's Hessian factor.
nn::LlamaModel prune_model(const nn::LlamaModel& dense, const nn::Calibration& calib, const std::string& method,
                           const std::string& knob, Row& row) {
  nn::LlamaModel out = dense.clone();
  const prune::Setting setting = prune::parse_setting(knob, "all layers");
  std::map<const nn::InputStats*, prune::SparseGptFactor> factors;
  std::map<const nn::InputStats*, Matrix<double>> hessians;
  double err_sum = 0;
  int layers = 0;
  for (const auto& name : dense.linear_names()) {
    if (name == "output.weight") continue;  // tied to the embedding: not pruned
    const nn::InputStats& st = calib.stats(name);
    auto h = hessians.find(&st);
    if (h == hessians.end()) h = hessians.emplace(&st, st.hessian()).first;
    const RowMatrix<float> w = dense.linear(name).dense_weight();
    prune::Pruned p;
    if (method == "magnitude") {
      p = prune::magnitude(w, setting.pattern, name);
    } else if (method == "wanda") {
      p = prune::wanda(w, st.mean_sq(), setting.pattern, name);
    } else {
      auto f = factors.find(&st);
      if (f == factors.end()) f = factors.emplace(&st, prune::sparsegpt_factor(h->second, {}, name)).first;
      p = prune::sparsegpt(w, f->second, setting.pattern, {}, name);
    }
    const compress::Compressed c = prune::encode(p, setting, "prune." + method, knob);
    row.bytes += c.stored_bytes();
    RowMatrix<float> w_hat = prune::decode(c);
    err_sum += compress::output_error(w, w_hat, &h->second);
    ++layers;
    out.set_linear(name, std::make_shared<nn::DenseLinear>(std::move(w_hat)));
  }
  row.layer_error = err_sum / layers;
  return out;
}

void evaluate(const nn::LlamaModel& dense, const nn::LlamaModel& m, const std::vector<int32_t>& toks,
              const nn::WindowOptions& w, Row& row) {
  const nn::KlResult kl = nn::kl_divergence(dense, m, toks, w);
  row.ppl = kl.model.perplexity;
  row.kl = kl.mean_kl;
  row.top1 = kl.top1_agreement;
}

std::string pattern_knob(const std::string& p) {
  return p.find(':') != std::string::npos ? "pattern=" + p : "sparsity=" + p;
}

void run(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  for (double d : a.ffn_damps) require(std::isfinite(d) && d >= 0, "--ffn-damp: ", d, " is not a damping >= 0");
  if (a.threads > 0) set_num_threads(static_cast<int>(a.threads));
  std::printf("%s; %d threads\n", blas_info().describe().c_str(), num_threads());
  const auto file = io::open_model(a.model);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);

  nn::Calibration calib;
  a.calibrate(dense, a.calibration_sequences(tok, cs), cs, calib);

  // A few tokens beyond the scored ones so that the last window is full.
  const auto toks = nn::tokenize_slice(tok, es, a.eval_tokens + 16);
  const nn::WindowOptions w{512, 512, a.eval_tokens};
  auto t0 = std::chrono::steady_clock::now();
  const nn::PerplexityResult base = nn::perplexity(dense, toks, w);
  std::printf("evaluation: %s, %lld tokens scored, context 512, stride 512\n", es.describe().c_str(),
              static_cast<long long>(base.tokens));
  uint64_t dense_bytes = 0;
  for (const auto& name : dense.linear_names())
    if (name != "output.weight") dense_bytes += dense.linear(name).weight_bytes();
  std::printf("dense: perplexity %.4f; block linear weights %.1f MiB (float32) (%.0f s)\n\n", base.perplexity,
              static_cast<double>(dense_bytes) / (1 << 20), seconds_since(t0));

  if (!a.patterns.empty())
    std::printf("%-10s %-13s %10s %9s %10s %8s %7s %10s %9s %7s\n", "method", "pattern", "perplexity", "d ppl",
                "vs magn.", "KL", "top-1", "layer err", "MiB", "prune s");
  std::map<std::string, double> magnitude_increase;
  for (const auto& pat : a.patterns) {
    const std::string knob = pattern_knob(pat);
    for (const auto& method : a.methods) {
      Row row{method, knob};
      const auto tp = std::chrono::steady_clock::now();
      const nn::LlamaModel m = prune_model(dense, calib, method, knob, row);
      row.seconds = seconds_since(tp);
      evaluate(dense, m, toks, w, row);
      const double inc = row.ppl - base.perplexity;
      if (method == "magnitude") magnitude_increase[knob] = inc;
      const auto mi = magnitude_increase.find(knob);
      char ratio[32] = "-";
      if (mi != magnitude_increase.end() && method != "magnitude") std::snprintf(ratio, sizeof ratio, "%.3fx", inc / mi->second);
      std::printf("%-10s %-13s %10.3f %9.3f %10s %8.4f %6.1f%% %10.4f %9.1f %7.1f\n", method.c_str(), knob.c_str(),
                  row.ppl, inc, ratio, row.kl, 100 * row.top1, row.layer_error,
                  static_cast<double>(row.bytes) / (1 << 20), row.seconds);
      std::fflush(stdout);
    }
  }

  if (!a.ffn.empty()) std::printf("\nstructured: FFN neurons removed per block (importance ||down[:, i]|| * rms(h_i))\n");
  for (double f : a.ffn) {
    // The row without a refit, then one per damping.
    std::vector<std::optional<double>> damps = {std::nullopt};
    damps.insert(damps.end(), a.ffn_damps.begin(), a.ffn_damps.end());
    for (const auto& damp : damps) {
      const bool compensate = damp.has_value();
      prune::NeuronPruningReport rep;
      const auto tp = std::chrono::steady_clock::now();
      prune::NeuronPruningOptions o;
      o.fraction = f;
      o.compensate = compensate;
      if (compensate) o.damp = *damp;
      const nn::LlamaModel m = prune::prune_ffn_neurons(dense, calib, o, &rep);
      const double s = seconds_since(tp);
      Row row;
      evaluate(dense, m, toks, w, row);
      char variant[48] = "no refit";
      if (compensate) std::snprintf(variant, sizeof variant, "refit damp %g", *damp);
      std::printf("ffn %4.0f%% %-16s perplexity %8.3f  d ppl %8.3f  KL %.4f  top-1 %.1f%%  FFN MiB %.1f -> %.1f  (%.1f s)\n",
                  100 * f, variant, row.ppl, row.ppl - base.perplexity, row.kl,
                  100 * row.top1, static_cast<double>(rep.bytes_before) / (1 << 20),
                  static_cast<double>(rep.bytes_after) / (1 << 20), s);
      std::fflush(stdout);
    }
  }

  if (!a.blocks.empty()) {
    const std::vector<int> order = prune::rank_blocks_by_influence(calib, dense.config().n_layers);
    const auto bi = calib.block_influence();
    std::printf("\nblock influence, least first:");
    for (int b : order) std::printf(" %d:%.3f", b, bi[static_cast<size_t>(b)]);
    std::printf("\n");
    for (int k : a.blocks) {
      require(k >= 1 && k < dense.config().n_layers, "--blocks: cannot remove ", k, " blocks");
      const std::vector<int> chosen(order.begin(), order.begin() + k);
      const nn::LlamaModel m = prune::remove_blocks(dense, chosen);
      Row row;
      evaluate(dense, m, toks, w, row);
      std::string list;
      for (int b : chosen) list += (list.empty() ? "" : ",") + std::to_string(b);
      std::printf("remove %d block%s (%s): perplexity %.3f  d ppl %.3f  KL %.4f  top-1 %.1f%%  weights %.1f -> %.1f MiB\n",
                  k, k == 1 ? "" : "s", list.c_str(), row.ppl, row.ppl - base.perplexity, row.kl, 100 * row.top1,
                  static_cast<double>(dense.weight_bytes()) / (1 << 20), static_cast<double>(m.weight_bytes()) / (1 << 20));
      std::fflush(stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"Pruning (magnitude, Wanda, SparseGPT; FFN neurons; blocks) on SmolLM2-135M", "prune_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
