// GPTQ into ggml blocks against ggml's imatrix rounding of the same type (docs/ggml-quantization.md):
// both write the same type, so the same bytes, and differ only in how the codes are chosen.
//
// SmolLM2-135M: calibrated on State of the Union text (Gram matrices and the imatrix), every block
// layer whose rows are whole blocks of the type is quantized (all 210 for the 32-element types; the
// 30 ffn_down layers, 1536 columns, for the k-quants, the 576-column layers staying dense), the
// others and the tied embedding stay as they are; judged by KL divergence to the unquantized model
// on held-out Moby-Dick text. SmolLM2's weights sit on a Q4_1 grid (the file is Q4_1), so q4_1 and
// q5_1 reproduce them exactly and are no comparison; the default types leave them out.
// all-MiniLM-L6-v2 (float32): every linear layer at the type, judged by the cosine of each held-out
// sentence's embedding to the float model's.
//
// Knobs (damping, column order, scale refit, least-squares scales) are chosen with --eval-slice 0.7:0.8 (the tuning slice
// here); figures are read on the default 0.9:1.0. Without --damps, --orders or --refits each type
// runs with its defaults (ggml::gptq_defaults); a list given replaces that setting's default and
// every combination runs. --gram-skips and --gram-clips build GPTQ's Hessian (not the imatrix, not
// the Hessian errors are measured on) without the first tokens of each calibration window or with
// each token clipped to a quantile of its window's token norms (nn::CalibrationOptions), one extra
// calibration pass each. --heldout-error also collects the Gram matrices of the evaluation text
// (with and without each window's first token) and reports each method's mean layer output error on
// them next to the calibration one. --token-norms only prints how much of each input's X^T X the
// first positions and the loudest tokens carry.
//
//   ggml_gptq_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//                  [--eval TXT] [--eval-slice 0.9:1.0] [--eval-tokens 4096] [--types q4_0,iq4_nl,q3_k,q2_k]
//                  [--damps D,...] [--orders natural,act,act_block] [--refits 0,1] [--ls-scales 0,1] [--shrinks A,...]
//                  [--gram-skips N,...] [--gram-clips Q,...] [--heldout-error] [--no-kl] [--token-norms]
//                  [--minilm DIR] [--minilm-types q4_0] [--minilm-sentences 512] [--no-minilm] [--no-smollm]
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/gptq.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/ggml_linear.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;
namespace fs = std::filesystem;
namespace ggml = strata::compress::ggml;
using strata::examples::seconds_since;

struct Args : strata::examples::RealDataArgs {
  std::vector<std::string> types = {"q4_0", "iq4_nl", "q3_k", "q2_k"};
  std::vector<double> damps;
  std::vector<std::string> orders;
  std::vector<int> refits, ls_scales;
  std::vector<double> shrinks, gram_clips;
  std::vector<int64_t> gram_skips;
  bool heldout_error = false, per_layer = false, no_kl = false, token_norms = false;
  fs::path minilm = examples::data_paths().model("all-minilm-l6-v2");
  std::vector<std::string> minilm_types = {"q4_0"};
  int64_t minilm_sentences = 512;
  bool no_minilm = false, no_smollm = false;

  Args() { eval_slice = "0.9:1.0"; }

  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    examples::add_list(app, "--types", types, "ggml types for SmolLM2");
    examples::add_list(app, "--damps", damps, "GPTQ dampings to try (times the Hessian's mean diagonal); none: the type's");
    examples::add_list(app, "--orders", orders, "GPTQ column orders to try (natural, act, act_block); none: the type's");
    examples::add_list(app, "--refits", refits, "GPTQ scale refit passes to try (0 .. 4); none: the type's");
    examples::add_list(app, "--ls-scales", ls_scales,
                       "GPTQ least-squares scale refit after the loop, 0 or 1, to try; none: the type's");
    examples::add_list(app, "--shrinks", shrinks,
                       "GPTQ Hessian shrinkages toward its diagonal to try (0 .. 1); none: the type's");
    examples::add_list(app, "--gram-skips", gram_skips,
                       "GPTQ's Hessian without the first N tokens of each calibration window, N to try (SmolLM2 only)");
    examples::add_list(app, "--gram-clips", gram_clips,
                       "GPTQ's Hessian with each token clipped to this quantile of its window's token norms, to try "
                       "(0: none; SmolLM2 only)");
    app.add_flag("--heldout-error", heldout_error, "also report the mean layer error on the evaluation text's Gram matrices");
    app.add_flag("--no-kl", no_kl, "skip the KL evaluation (layer errors only: a quick screen with --heldout-error)");
    app.add_flag("--token-norms", token_norms,
                 "only print how much of each input's X^T X a few tokens carry (calibration and evaluation windows)");
    app.add_flag("--per-layer", per_layer, "print every layer's errors (calibration, held-out with --heldout-error)");
    app.add_option("--minilm", minilm, "all-MiniLM-L6-v2 directory")->capture_default_str();
    examples::add_list(app, "--minilm-types", minilm_types, "ggml types for MiniLM");
    app.add_option("--minilm-sentences", minilm_sentences, "MiniLM calibration and evaluation sentences")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_flag("--no-minilm", no_minilm, "skip MiniLM");
    app.add_flag("--no-smollm", no_smollm, "skip SmolLM2");
  }
};

// How GPTQ's Hessian is built from the calibration windows (nn::CalibrationOptions): every token, or
// the first tokens of each window left out, or each token's x x^T clipped to a quantile of its
// window's token norms. The imatrix, and the Hessian the layer errors are measured on, always come
// from every token.
struct HessianVariant {
  int64_t skip_first = 0;
  double clip_quantile = 0;
  bool plain() const { return skip_first == 0 && (clip_quantile <= 0 || clip_quantile >= 1); }
  std::string label() const {
    std::string out;
    char buf[64];
    if (skip_first > 0) {
      std::snprintf(buf, sizeof buf, ", H without the first %lld token%s", static_cast<long long>(skip_first),
                    skip_first > 1 ? "s" : "");
      out += buf;
    }
    if (clip_quantile > 0 && clip_quantile < 1) {
      std::snprintf(buf, sizeof buf, ", H clipped at q%g", clip_quantile);
      out += buf;
    }
    return out;
  }
};

// One way of writing the type: ggml's imatrix rounding (quant.ggml), or ggml::gptq with its options
// on one Hessian variant.
struct Method {
  std::string label;
  bool gptq = false;
  ggml::GgmlGptqOptions options;
  HessianVariant hessian;
};

// Hands every observation to each of `hooks`: several Calibrations from one forward pass per window.
struct FanOut final : nn::ForwardHooks {
  std::vector<nn::Calibration*> hooks;
  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t in) override {
    for (auto* h : hooks) h->on_linear_input(layer, tensors, x, tokens, in);
  }
  void on_block(int layer, const float* in, const float* out, int64_t tokens, int64_t dim) override {
    for (auto* h : hooks) h->on_block(layer, in, out, tokens, dim);
  }
};

// nn::calibrate into every one of `calibs` at once (the same windows, one forward each), then packs
// them.
void calibrate_all(const nn::LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                   const std::vector<nn::Calibration*>& calibs) {
  FanOut fan;
  fan.hooks = calibs;
  std::unique_ptr<nn::LlamaSession> session;
  for (const auto& w : windows) {
    const auto n = static_cast<int64_t>(w.size());
    if (!session || session->capacity() < n) session = std::make_unique<nn::LlamaSession>(model, n);
    session->reset();
    session->forward(w, nullptr, nn::Logits::none, &fan);
    for (auto* c : calibs) {
      ++c->sequences;
      c->tokens += n;
    }
  }
  for (auto* c : calibs) c->pack();
}

// The Hessian variants asked for (every token when none is).
std::vector<HessianVariant> hessian_variants(const Args& a) {
  const std::vector<int64_t> skips = a.gram_skips.empty() ? std::vector<int64_t>{0} : a.gram_skips;
  const std::vector<double> clips = a.gram_clips.empty() ? std::vector<double>{0} : a.gram_clips;
  std::vector<HessianVariant> out;
  for (int64_t s : skips)
    for (double c : clips) out.push_back({s, c});
  return out;
}

// imatrix rounding, then GPTQ at every combination of the settings given (the type's default for a
// setting not given). Labels name every setting, so rows of different runs compare.
std::vector<Method> methods_of(const Args& a, kernels::GgmlType t) {
  const ggml::GgmlGptqOptions def = ggml::gptq_defaults(t);
  std::vector<Method> out{{"imatrix rounding", false, {}, {}}};
  const std::vector<double> damps = a.damps.empty() ? std::vector<double>{def.damp} : a.damps;
  std::vector<std::string> orders = a.orders;
  if (orders.empty()) orders.emplace_back(ggml::order_name(def.order));
  const std::vector<int> refits = a.refits.empty() ? std::vector<int>{def.refit} : a.refits;
  const std::vector<double> shrinks = a.shrinks.empty() ? std::vector<double>{def.shrink} : a.shrinks;
  const std::vector<int> ls = a.ls_scales.empty() ? std::vector<int>{def.ls_scales ? 1 : 0} : a.ls_scales;
  const bool defaults =
      a.damps.empty() && a.orders.empty() && a.refits.empty() && a.shrinks.empty() && a.ls_scales.empty();
  for (const HessianVariant& hv : hessian_variants(a))
    for (double d : damps)
      for (const auto& o : orders)
        for (int rf : refits)
          for (double sh : shrinks)
            for (int l : ls) {
              require(l == 0 || l == 1, "--ls-scales: ", l, " is not 0 or 1");
              ggml::GgmlGptqOptions opt = def;
              opt.damp = d;
              opt.order = ggml::parse_order(o);
              opt.refit = rf;
              opt.shrink = sh;
              opt.ls_scales = l == 1;
              char buf[128];
              std::snprintf(buf, sizeof buf, "gptq,damp=%g,order=%s,refit=%d,shrink=%g%s", d,
                            ggml::order_name(opt.order).data(), rf, sh, opt.ls_scales ? ",ls_scales" : "");
              out.push_back({std::string(buf) + hv.label() + (defaults ? " (defaults)" : ""), true, opt, hv});
            }
  return out;
}

struct Quantized {
  double bytes = 0, weights = 0, seconds = 0, cpu_seconds = 0, error_sum = 0, heldout_sum = 0, heldout_rest_sum = 0;
  int layers = 0;
  std::vector<std::string> lines;  // per layer: "name calib held-out"
  double mean_error() const { return layers > 0 ? error_sum / layers : 0; }
  double mean_heldout() const { return layers > 0 ? heldout_sum / layers : 0; }
  double mean_heldout_rest() const { return layers > 0 ? heldout_rest_sum / layers : 0; }
};

// The held-out inputs' Gram matrices: of every token, and without each window's first token.
struct Heldout {
  const nn::Calibration* all = nullptr;
  const nn::Calibration* rest = nullptr;
};

// Quantizes the named layers with `m` at type `t`; `set` installs each compressed layer. GPTQ runs
// on `gptq_hessian`'s Hessians (calib's when null), with calib's imatrix; errors are measured on
// calib's Hessians and, given `heldout`, on the held-out inputs'.
Quantized quantize_layers(const std::vector<std::string>& names,
                          const std::function<RowMatrix<float>(const std::string&)>& weight_of,
                          const nn::Calibration& calib, kernels::GgmlType t, const Method& m,
                          const std::function<void(const std::string&, std::shared_ptr<const nn::Linear>)>& set,
                          const Heldout& heldout = {}, const nn::Calibration* gptq_hessian = nullptr) {
  const auto& rounding = compress::find_compressor("quant.ggml");
  Quantized q;
  for (const auto& name : names) {
    const RowMatrix<float> w = weight_of(name);
    const nn::InputStats& st = calib.stats(name);
    const Matrix<double> h = st.hessian();
    const Vector<double> ms = st.mean_sq();
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();  // CPU time of every thread of the process
    RowMatrix<float> wq;
    std::shared_ptr<const nn::Linear> layer;
    double bytes = 0;
    if (m.gptq) {
      const Matrix<double> hg = gptq_hessian != nullptr ? gptq_hessian->stats(name).hessian() : Matrix<double>();
      std::vector<float> imp(static_cast<size_t>(ms.size()));
      for (int64_t j = 0; j < ms.size(); ++j) imp[static_cast<size_t>(j)] = static_cast<float>(ms[j]);
      ggml::GgmlGptqResult r = ggml::gptq(t, w, gptq_hessian != nullptr ? hg : h, imp, m.options, name);
      q.cpu_seconds += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
      q.seconds += seconds_since(t0);
      bytes = static_cast<double>(r.blocks.size());
      wq = std::move(r.values);
      layer = std::make_shared<nn::GgmlLinear>(t, w.rows(), w.cols(), std::move(r.blocks));
    } else {
      const compress::LayerCalibration lc{&h, &ms, nullptr, st.tokens};
      const compress::Compressed c = rounding.apply({name, &w}, lc, ggml::lower_name(t));
      q.cpu_seconds += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
      q.seconds += seconds_since(t0);
      bytes = static_cast<double>(c.stored_bytes());
      wq = rounding.reconstruct(c);
      layer = rounding.to_linear(c);
    }
    const double e = compress::output_error(w, wq, &h);
    q.error_sum += e;
    double eh = 0, er = 0;
    if (heldout.all != nullptr) {
      const Matrix<double> he = heldout.all->stats(name).hessian();
      eh = compress::output_error(w, wq, &he);
      q.heldout_sum += eh;
    }
    if (heldout.rest != nullptr) {
      const Matrix<double> hr = heldout.rest->stats(name).hessian();
      er = compress::output_error(w, wq, &hr);
      q.heldout_rest_sum += er;
    }
    char line[200];
    std::snprintf(line, sizeof line, "%s calib %.5f held-out %.5f held-out without first %.5f", name.c_str(), e, eh,
                  er);
    q.lines.emplace_back(line);
    ++q.layers;
    q.bytes += bytes;
    q.weights += static_cast<double>(w.size());
    set(name, std::move(layer));
  }
  return q;
}

void print_ratios(const std::map<std::string, std::map<std::string, double>>& by_type, const char* what) {
  for (const auto& [type, by] : by_type) {
    const auto base = by.find("imatrix rounding");
    if (base == by.end()) continue;
    for (const auto& [label, v] : by) {
      if (label == base->first) continue;
      std::printf("%s, %s: %s %s / imatrix rounding = %.5f / %.5f = %.3f\n", type.c_str(), label.c_str(), what,
                  label.c_str(), v, base->second, base->second > 0 ? v / base->second : 0.0);
    }
  }
}

// Per-token squared norms of every linear input over a set of windows (one forward each, so row 0 of
// an input is the window's first position): how much of trace(X^T X) a few tokens carry.
struct TokenNormProbe final : nn::ForwardHooks {
  std::map<std::string, std::vector<std::vector<double>>> norms;  // first tensor of the input -> per window

  void on_linear_input(int, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t in) override {
    std::vector<double> n(static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) {
      double s = 0;
      for (int64_t j = 0; j < in; ++j) s += static_cast<double>(x[t * in + j]) * x[t * in + j];
      n[static_cast<size_t>(t)] = s;
    }
    norms[tensors[0]].push_back(std::move(n));
  }
};

// For each input: the share of trace(X^T X) at each window's first position, at its second, in the
// top 0.1% and top 1% of tokens, and the largest token norm over the median one; then the mean of
// each over the layers of a kind.
void print_token_norms(const nn::LlamaModel& dense, const std::vector<std::vector<int32_t>>& windows,
                       const char* what) {
  TokenNormProbe probe;
  nn::LlamaSession session(dense, static_cast<int64_t>(windows.front().size()));
  for (const auto& w : windows) {
    session.reset();
    session.forward(w, nullptr, nn::Logits::none, &probe);
  }
  std::printf("token norms of the linear inputs, %s (%zu windows): share of sum_t ||x_t||^2\n", what, windows.size());
  std::printf("| input | position 0 | position 1 | top 0.1%% tokens | top 1%% tokens | max / median ||x||^2 |\n"
              "|---|---|---|---|---|---|\n");
  std::map<std::string, std::array<double, 6>> kinds;  // sums of the five columns, then the count
  for (const auto& [name, per_window] : probe.norms) {
    std::vector<double> all;
    double total = 0, first = 0, second = 0;
    for (const auto& n : per_window) {
      for (double v : n) total += v;
      first += n.empty() ? 0 : n[0];
      second += n.size() < 2 ? 0 : n[1];
      all.insert(all.end(), n.begin(), n.end());
    }
    std::sort(all.begin(), all.end(), std::greater<>());
    const auto top = [&](double frac) {
      const size_t k = std::max<size_t>(1, static_cast<size_t>(frac * static_cast<double>(all.size())));
      double s = 0;
      for (size_t i = 0; i < k; ++i) s += all[i];
      return s / total;
    };
    const double cols[5] = {first / total, second / total, top(0.001), top(0.01), all.front() / all[all.size() / 2]};
    std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.0f |\n", name.c_str(), cols[0], cols[1], cols[2], cols[3],
                cols[4]);
    const size_t dot = name.find('.', 4);
    auto& k = kinds[name.substr(dot + 1)];
    for (int i = 0; i < 5; ++i) k[static_cast<size_t>(i)] += cols[i];
    k[5] += 1;
  }
  for (const auto& [kind, k] : kinds)
    std::printf("| mean over %s (%.0f) | %.3f | %.3f | %.3f | %.3f | %.0f |\n", kind.c_str(), k[5], k[0] / k[5],
                k[1] / k[5], k[2] / k[5], k[3] / k[5], k[4] / k[5]);
  std::printf("\n");
}

void run_smollm(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  std::printf("== SmolLM2: %s\n", a.model.c_str());
  const auto file = io::open_model(a.model);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  if (a.token_norms) {
    const auto eval_toks = nn::tokenize_slice(tok, es, a.eval_tokens);
    print_token_norms(dense, a.calibration_sequences(tok, cs), "calibration");
    print_token_norms(dense, nn::cut_sequences(eval_toks, static_cast<int64_t>(eval_toks.size()) / 512, 512, -1),
                      "evaluation");
    return;
  }
  // The calibration (Gram matrices and imatrix) and GPTQ's Hessian variants, from the same passes.
  nn::Calibration calib(nn::CalibrationOptions{true, false});
  std::map<std::pair<int64_t, double>, std::unique_ptr<nn::Calibration>> variant_calib;
  std::vector<nn::Calibration*> all_calib{&calib};
  for (const HessianVariant& hv : hessian_variants(a)) {
    if (hv.plain()) continue;
    auto& c = variant_calib[{hv.skip_first, hv.clip_quantile}];
    c = std::make_unique<nn::Calibration>(nn::CalibrationOptions{true, false, hv.skip_first, hv.clip_quantile});
    all_calib.push_back(c.get());
  }
  const auto t_calib = std::chrono::steady_clock::now();
  calibrate_all(dense, a.calibration_sequences(tok, cs), all_calib);
  std::printf("calibration (Gram matrices and imatrix; %zu GPTQ Hessian variants): %s, %lld sequences x %lld tokens "
              "(%.0f s)\n",
              variant_calib.size(), cs.describe().c_str(), static_cast<long long>(a.sequences),
              static_cast<long long>(a.length), seconds_since(t_calib));
  const auto eval_toks = nn::tokenize_slice(tok, es, a.eval_tokens);
  const auto windows = nn::cut_sequences(eval_toks, static_cast<int64_t>(eval_toks.size()) / 512, 512, -1);
  std::optional<nn::KlEvaluator> judge;
  if (!a.no_kl) {
    judge.emplace(dense, windows);
    std::printf("evaluation: %s, %lld tokens in windows of 512; dense perplexity %.3f\n", es.describe().c_str(),
                static_cast<long long>(judge->tokens()), judge->reference().perplexity);
  }
  // The evaluation windows' own Gram matrices: how far each method's calibration error carries to
  // text it did not see, layer by layer.
  // The same without each window's first token, whose inputs are the largest by far (see
  // --token-norms): the error on the other tokens.
  std::unique_ptr<nn::Calibration> heldout, heldout_rest;
  if (a.heldout_error) {
    const auto t0 = std::chrono::steady_clock::now();
    heldout = std::make_unique<nn::Calibration>(nn::CalibrationOptions{true, false});
    heldout_rest = std::make_unique<nn::Calibration>(nn::CalibrationOptions{true, false, 1});
    calibrate_all(dense, windows, {heldout.get(), heldout_rest.get()});
    std::printf("held-out Gram matrices: the evaluation windows, with and without their first token (%.0f s)\n",
                seconds_since(t0));
  }
  std::printf("threads: %d; %s\n\n", num_threads(), blas_info().describe().c_str());
  std::printf("| type | layers | method | bits/weight | bytes | quantize s (wall) | quantize s (CPU) | mean layer err "
              "(calib) | mean layer err (held-out) | held-out, first token left out | perplexity | KL mean | KL p99 | "
              "top-1 |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::string, std::map<std::string, double>> kl, held_err, held_rest_err;
  for (const auto& type : a.types) {
    const kernels::GgmlType t = ggml::quantizable_type(type);
    std::vector<std::string> names;
    for (const auto& n : dense.linear_names())
      if (n.rfind("blk.", 0) == 0 && dense.linear(n).in_features() % kernels::ggml_block_size(t) == 0)
        names.push_back(n);
    const std::string scope = std::to_string(names.size()) + (names.size() == 30 ? " ffn_down" : " block layers");
    for (const Method& m : methods_of(a, t)) {
      nn::LlamaModel model = dense.clone();
      const Quantized q = quantize_layers(
          names, [&](const std::string& n) { return dense.linear(n).dense_weight(); }, calib, t, m,
          [&](const std::string& n, std::shared_ptr<const nn::Linear> l) { model.set_linear(n, std::move(l)); },
          Heldout{heldout.get(), heldout_rest.get()},
          m.hessian.plain() ? nullptr : variant_calib.at({m.hessian.skip_first, m.hessian.clip_quantile}).get());
      nn::KlResult r{};
      if (judge) {
        r = (*judge)(model);
        kl[type + " (" + scope + ")"][m.label] = r.mean_kl;
      }
      char held[64] = "- | -", judged[96] = "- | - | - | -";
      if (heldout) {
        std::snprintf(held, sizeof held, "%.5f | %.5f", q.mean_heldout(), q.mean_heldout_rest());
        held_err[type + " (" + scope + ")"][m.label] = q.mean_heldout();
        held_rest_err[type + " (" + scope + ")"][m.label] = q.mean_heldout_rest();
      }
      if (judge)
        std::snprintf(judged, sizeof judged, "%.3f | %.5f | %.4f | %.2f%%", r.model.perplexity, r.mean_kl, r.p99_kl,
                      100.0 * r.top1_agreement);
      std::printf("| %s | %s | %s | %.3f | %.0f | %.1f | %.1f | %.5f | %s | %s |\n", type.c_str(), scope.c_str(),
                  m.label.c_str(), 8.0 * q.bytes / q.weights, q.bytes, q.seconds, q.cpu_seconds, q.mean_error(), held,
                  judged);
      if (a.per_layer)
        for (const auto& l : q.lines) std::printf("  %s: %s\n", m.label.c_str(), l.c_str());
      std::fflush(stdout);
    }
  }
  std::printf("\n");
  print_ratios(kl, "KL");
  print_ratios(held_err, "held-out layer err");
  print_ratios(held_rest_err, "held-out layer err without first token");
}

// Sentences of a slice: cut after '.', '?' or '!' followed by white space, white space collapsed,
// five to sixty words each.
std::vector<std::string> slice_sentences(const nn::TextSlice& slice, int64_t count) {
  const std::string text = slice.read();
  std::vector<std::string> out;
  std::string cur;
  int words = 0;
  for (size_t i = 0; i < text.size() && static_cast<int64_t>(out.size()) < count; ++i) {
    const char ch = text[i];
    const bool space = ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
    if (space) {
      if (!cur.empty() && cur.back() != ' ') {
        cur.push_back(' ');
        ++words;
      }
    } else {
      cur.push_back(ch);
    }
    const bool end = (ch == '.' || ch == '?' || ch == '!') && (i + 1 == text.size() || text[i + 1] == ' ' || text[i + 1] == '\n');
    if (end) {
      if (words >= 4 && words < 60) out.push_back(cur);
      cur.clear();
      words = 0;
    }
  }
  return out;
}

void run_minilm(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  std::printf("\n== all-MiniLM-L6-v2: %s\n", a.minilm.c_str());
  require(fs::is_directory(a.minilm), "--minilm: ", a.minilm.string(), " is not a directory");
  nn::SentenceEncoder enc = nn::SentenceEncoder::open(a.minilm);
  const nn::BertEncoder dense = enc.encoder().clone();
  const auto calib_sentences = slice_sentences(cs, a.minilm_sentences);
  const auto eval_sentences = slice_sentences(es, a.minilm_sentences);
  require(!calib_sentences.empty() && !eval_sentences.empty(), "MiniLM: no sentences in the calibration or evaluation slice");
  nn::Calibration calib(nn::CalibrationOptions{true, false});
  enc.encode(calib_sentences, 32, &calib);
  const Tensor ref = enc.encode(eval_sentences);
  std::printf("calibration: %zu sentences of %s; evaluation: %zu sentences of %s, cosine to the float model\n\n",
              calib_sentences.size(), cs.describe().c_str(), eval_sentences.size(), es.describe().c_str());
  std::printf("| type | method | bits/weight | quantize s | mean layer err | mean cosine | min cosine | 1 - mean cos |\n"
              "|---|---|---|---|---|---|---|---|\n");
  std::map<std::string, std::map<std::string, double>> dist;
  const auto& names = dense.linear_names();
  for (const auto& type : a.minilm_types) {
    const kernels::GgmlType t = ggml::quantizable_type(type);
    for (const Method& m : methods_of(a, t)) {
      if (!m.hessian.plain()) continue;  // a batch of sentences is one input: no first token per window
      enc.encoder() = dense.clone();
      const Quantized q = quantize_layers(
          names, [&](const std::string& n) { return dense.linear(n).dense_weight(); }, calib, t, m,
          [&](const std::string& n, std::shared_ptr<const nn::Linear> l) { enc.encoder().set_linear(n, std::move(l)); });
      const Tensor e = enc.encode(eval_sentences);
      const auto dim = static_cast<size_t>(e.dim(1));
      double sum = 0, worst = 1;
      for (int64_t i = 0; i < e.dim(0); ++i) {
        const double c = nn::cosine({ref.view<const float>().data() + i * e.dim(1), dim},
                                    {e.view<const float>().data() + i * e.dim(1), dim});
        sum += c;
        worst = std::min(worst, c);
      }
      const double mean = sum / static_cast<double>(e.dim(0));
      dist[type][m.label] = 1 - mean;
      std::printf("| %s | %s | %.3f | %.1f | %.5f | %.6f | %.6f | %.6f |\n", type.c_str(), m.label.c_str(),
                  8.0 * q.bytes / q.weights, q.seconds, q.mean_error(), mean, worst, 1 - mean);
      std::fflush(stdout);
    }
  }
  std::printf("\n");
  print_ratios(dist, "(1 - cos)");
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"GPTQ into ggml blocks against ggml's imatrix rounding (SmolLM2-135M, all-MiniLM-L6-v2)",
               "ggml_gptq_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] {
    if (!a.no_smollm) run_smollm(a);
    if (!a.no_minilm) run_minilm(a);
  });
}
