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
// Knobs (damping, column order, scale refit) are chosen with --eval-slice 0.7:0.8 (the tuning slice
// here); figures are read on the default 0.9:1.0. Without --damps, --orders or --refits each type
// runs with its defaults (ggml::gptq_defaults); a list given replaces that setting's default and
// every combination runs. --heldout-error also collects the Gram matrices of the evaluation text
// and reports each method's mean layer output error on it next to the calibration one.
//
//   ggml_gptq_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//                  [--eval TXT] [--eval-slice 0.9:1.0] [--eval-tokens 4096] [--types q4_0,iq4_nl,q3_k,q2_k]
//                  [--damps D,...] [--orders natural,act,act_block] [--refits 0,1] [--heldout-error]
//                  [--minilm DIR] [--minilm-types q4_0] [--minilm-sentences 512] [--no-minilm] [--no-smollm]
#include <algorithm>
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
  std::vector<int> refits;
  bool heldout_error = false, per_layer = false, no_kl = false;
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
    app.add_flag("--heldout-error", heldout_error, "also report the mean layer error on the evaluation text's Gram matrices");
    app.add_flag("--no-kl", no_kl, "skip the KL evaluation (layer errors only: a quick screen with --heldout-error)");
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

// One way of writing the type: ggml's imatrix rounding, or GPTQ with its knob.
struct Method {
  std::string label, compressor, knob_suffix;
};

// imatrix rounding, then GPTQ at every combination of the settings given (the type's default for a
// setting not given). Labels name every setting, so rows of different runs compare.
std::vector<Method> methods_of(const Args& a, kernels::GgmlType t) {
  const ggml::GgmlGptqOptions def = ggml::gptq_defaults(t);
  std::vector<Method> out{{"imatrix rounding", "quant.ggml", ""}};
  const std::vector<double> damps = a.damps.empty() ? std::vector<double>{def.damp} : a.damps;
  std::vector<std::string> orders = a.orders;
  if (orders.empty()) orders.emplace_back(ggml::order_name(def.order));
  const std::vector<int> refits = a.refits.empty() ? std::vector<int>{def.refit} : a.refits;
  const bool defaults = a.damps.empty() && a.orders.empty() && a.refits.empty();
  for (double d : damps)
    for (const auto& o : orders)
      for (int rf : refits) {
        char buf[128];
        std::snprintf(buf, sizeof buf, ",damp=%g,order=%s,refit=%d", d, ggml::order_name(ggml::parse_order(o)).data(), rf);
        out.push_back({std::string("gptq") + buf + (defaults ? " (defaults)" : ""), "quant.ggml_gptq", defaults ? "" : buf});
      }
  return out;
}

struct Quantized {
  double bytes = 0, weights = 0, seconds = 0, cpu_seconds = 0, error_sum = 0, heldout_sum = 0;
  int layers = 0;
  std::vector<std::string> lines;  // per layer: "name calib held-out"
  double mean_error() const { return layers > 0 ? error_sum / layers : 0; }
  double mean_heldout() const { return layers > 0 ? heldout_sum / layers : 0; }
};

// Quantizes the named layers with `m` at type `t`; `set` installs each compressed layer. With
// `heldout`, each layer's output error is also measured on its Gram matrix.
Quantized quantize_layers(const std::vector<std::string>& names,
                          const std::function<RowMatrix<float>(const std::string&)>& weight_of,
                          const nn::Calibration& calib, kernels::GgmlType t, const Method& m,
                          const std::function<void(const std::string&, std::shared_ptr<const nn::Linear>)>& set,
                          const nn::Calibration* heldout = nullptr) {
  const auto& comp = compress::find_compressor(m.compressor);
  const std::string knob = ggml::lower_name(t) + m.knob_suffix;
  Quantized q;
  for (const auto& name : names) {
    const RowMatrix<float> w = weight_of(name);
    const nn::InputStats& st = calib.stats(name);
    const Matrix<double> h = st.hessian();
    const Vector<double> ms = st.mean_sq();
    const compress::LayerCalibration lc{&h, &ms, nullptr, st.tokens};
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();  // CPU time of every thread of the process
    const compress::Compressed c = comp.apply({name, &w}, lc, knob);
    q.cpu_seconds += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    q.seconds += seconds_since(t0);
    const RowMatrix<float> wq = comp.reconstruct(c);
    const double e = compress::output_error(w, wq, &h);
    q.error_sum += e;
    double eh = 0;
    if (heldout != nullptr) {
      const Matrix<double> he = heldout->stats(name).hessian();
      eh = compress::output_error(w, wq, &he);
      q.heldout_sum += eh;
    }
    char line[160];
    std::snprintf(line, sizeof line, "%s calib %.5f held-out %.5f", name.c_str(), e, eh);
    q.lines.emplace_back(line);
    ++q.layers;
    q.bytes += static_cast<double>(c.stored_bytes());
    q.weights += static_cast<double>(w.size());
    set(name, comp.to_linear(c));
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

void run_smollm(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  std::printf("== SmolLM2: %s\n", a.model.c_str());
  const auto file = io::open_model(a.model);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  nn::Calibration calib(nn::CalibrationOptions{true, false});
  a.calibrate(dense, a.calibration_sequences(tok, cs), cs, calib, "calibration (Gram matrices and imatrix)");
  calib.pack();
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
  std::unique_ptr<nn::Calibration> heldout;
  if (a.heldout_error) {
    heldout = std::make_unique<nn::Calibration>(nn::CalibrationOptions{true, false});
    size_t next = 0;
    const auto t0 = std::chrono::steady_clock::now();
    nn::calibrate(
        dense,
        [&](std::vector<int32_t>& s) {
          if (next == windows.size()) return false;
          s = windows[next++];
          return true;
        },
        *heldout);
    heldout->pack();
    std::printf("held-out Gram matrices: the evaluation windows (%.0f s)\n", seconds_since(t0));
  }
  std::printf("threads: %d; %s\n\n", num_threads(), blas_info().describe().c_str());
  std::printf("| type | layers | method | bits/weight | bytes | quantize s (wall) | quantize s (CPU) | mean layer err "
              "(calib) | mean layer err (held-out) | perplexity | KL mean | KL p99 | top-1 |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::string, std::map<std::string, double>> kl, held_err;
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
          heldout.get());
      nn::KlResult r{};
      if (judge) {
        r = (*judge)(model);
        kl[type + " (" + scope + ")"][m.label] = r.mean_kl;
      }
      char held[32] = "-", judged[96] = "- | - | - | -";
      if (heldout) {
        std::snprintf(held, sizeof held, "%.5f", q.mean_heldout());
        held_err[type + " (" + scope + ")"][m.label] = q.mean_heldout();
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
