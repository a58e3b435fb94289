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
// Knobs (damping, act-order) are chosen with --eval-slice 0.7:0.8 (the tuning slice here); figures
// are read on the default 0.9:1.0.
//
//   ggml_gptq_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//                  [--eval TXT] [--eval-slice 0.9:1.0] [--eval-tokens 4096] [--types q4_0,iq4_nl,q3_k,q2_k]
//                  [--damps 0.01] [--act-orders 1] [--minilm DIR] [--minilm-types q4_0]
//                  [--minilm-sentences 512] [--no-minilm] [--no-smollm]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
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
  std::vector<double> damps = {0.01};
  std::vector<int> act_orders = {1};
  fs::path minilm = examples::data_paths().model("all-minilm-l6-v2");
  std::vector<std::string> minilm_types = {"q4_0"};
  int64_t minilm_sentences = 512;
  bool no_minilm = false, no_smollm = false;

  Args() { eval_slice = "0.9:1.0"; }

  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    examples::add_list(app, "--types", types, "ggml types for SmolLM2");
    examples::add_list(app, "--damps", damps, "GPTQ dampings to try (times the Hessian's mean diagonal)");
    examples::add_list(app, "--act-orders", act_orders, "act-order settings to try (0, 1)");
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

std::vector<Method> methods_of(const Args& a) {
  std::vector<Method> out{{"imatrix rounding", "quant.ggml", ""}};
  for (double d : a.damps)
    for (int ao : a.act_orders) {
      char buf[96];
      std::snprintf(buf, sizeof buf, ",damp=%g,act_order=%d", d, ao ? 1 : 0);
      out.push_back({std::string("gptq") + buf, "quant.ggml_gptq", buf});
    }
  return out;
}

struct Quantized {
  double bytes = 0, weights = 0, seconds = 0, error_sum = 0;
  int layers = 0;
  double mean_error() const { return layers > 0 ? error_sum / layers : 0; }
};

// Quantizes the named layers with `m` at type `t`; `set` installs each compressed layer.
Quantized quantize_layers(const std::vector<std::string>& names,
                          const std::function<RowMatrix<float>(const std::string&)>& weight_of,
                          const nn::Calibration& calib, kernels::GgmlType t, const Method& m,
                          const std::function<void(const std::string&, std::shared_ptr<const nn::Linear>)>& set) {
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
    const compress::Compressed c = comp.apply({name, &w}, lc, knob);
    q.seconds += seconds_since(t0);
    q.error_sum += compress::output_error(w, comp.reconstruct(c), &h);
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
  const nn::KlEvaluator judge(dense, nn::cut_sequences(eval_toks, static_cast<int64_t>(eval_toks.size()) / 512, 512, -1));
  std::printf("evaluation: %s, %lld tokens in windows of 512; dense perplexity %.3f\n", es.describe().c_str(),
              static_cast<long long>(judge.tokens()), judge.reference().perplexity);
  std::printf("threads: %d; %s\n\n", num_threads(), blas_info().describe().c_str());
  std::printf("| type | layers | method | bits/weight | bytes | quantize s | mean layer err | perplexity | KL mean | "
              "KL p99 | top-1 |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::string, std::map<std::string, double>> kl;
  for (const auto& type : a.types) {
    const kernels::GgmlType t = ggml::quantizable_type(type);
    std::vector<std::string> names;
    for (const auto& n : dense.linear_names())
      if (n.rfind("blk.", 0) == 0 && dense.linear(n).in_features() % kernels::ggml_block_size(t) == 0)
        names.push_back(n);
    const std::string scope = std::to_string(names.size()) + (names.size() == 30 ? " ffn_down" : " block layers");
    for (const Method& m : methods_of(a)) {
      nn::LlamaModel model = dense.clone();
      const Quantized q = quantize_layers(
          names, [&](const std::string& n) { return dense.linear(n).dense_weight(); }, calib, t, m,
          [&](const std::string& n, std::shared_ptr<const nn::Linear> l) { model.set_linear(n, std::move(l)); });
      const nn::KlResult r = judge(model);
      kl[type + " (" + scope + ")"][m.label] = r.mean_kl;
      std::printf("| %s | %s | %s | %.3f | %.0f | %.1f | %.5f | %.3f | %.5f | %.4f | %.2f%% |\n", type.c_str(),
                  scope.c_str(), m.label.c_str(), 8.0 * q.bytes / q.weights, q.bytes, q.seconds, q.mean_error(),
                  r.model.perplexity, r.mean_kl, r.p99_kl, 100.0 * r.top1_agreement);
      std::fflush(stdout);
    }
  }
  std::printf("\n");
  print_ratios(kl, "KL");
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
    for (const Method& m : methods_of(a)) {
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
