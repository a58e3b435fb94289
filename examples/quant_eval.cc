// Acceptance figures for the integer quantizers (docs/quantization.md): every linear layer of
// SmolLM2-135M's 30 blocks quantized with RTN, GPTQ and AWQ, judged by perplexity and KL divergence
// to the dense model on text disjoint from the calibration text; then the same quantizers on
// all-MiniLM-L6-v2 (float32 weights), judged by embedding cosine to the dense encoder.
//
//   quant_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--sequences 32] [--length 512]
//              [--eval TXT] [--eval-slice 0.7:0.8] [--eval-tokens 4096] [--configs 4:128,3:128]
//              [--methods rtn,rtn_clip,rtn_clip_w,gptq,gptq_minmax,gptq_natural,awq,COMPRESSOR:KEY+KEY,METHOD@seqK]
//              [--minilm DIR] [--paraphrases TSV] [--no-minilm] [--no-smollm]
//              [--no-grid-check] [--calib-cache FILE]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/compress/compressor.hpp"
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

using strata::examples::seconds_since;
using strata::examples::split;

struct Args : strata::examples::RealDataArgs {
  fs::path minilm = examples::data_paths().model("all-minilm-l6-v2");
  fs::path paraphrases = fs::path(STRATA_SOURCE_DIR) / "tests/data/paraphrases.tsv";
  int64_t minilm_sentences = 512;
  std::vector<std::pair<int, int>> configs = {{4, 128}, {3, 128}};
  std::vector<std::string> methods = {"rtn", "rtn_clip_w", "gptq", "gptq_minmax", "gptq_natural", "awq"};
  bool no_minilm = false, no_smollm = false, no_grid_check = false;
  fs::path calib_cache;  // SmolLM2's calibration statistics, reused when the file exists

  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    app.add_option_function<std::string>(
        "--configs",
        [this](const std::string& v) {
          configs.clear();
          for (const auto& c : split(v, ',')) {
            const auto parts = split(c, ':');
            if (parts.size() != 2) throw CLI::ConversionError("--configs: expected BITS:GROUP, got '" + c + "'");
            configs.emplace_back(examples::to_value<int>("--configs", parts[0]),
                                 examples::to_value<int>("--configs", parts[1]));
          }
        },
        "BITS:GROUP,... [4:128,3:128]");
    examples::add_list(app, "--methods", methods,
                       "rtn, rtn_clip, rtn_clip_w, gptq, gptq_minmax, gptq_natural, awq, COMPRESSOR:KEY+KEY, METHOD@seqK");
    app.add_option("--minilm", minilm, "all-MiniLM-L6-v2 directory")->check(CLI::ExistingDirectory)->capture_default_str();
    app.add_option("--paraphrases", paraphrases, "MiniLM evaluation sentences (TSV)")
        ->check(CLI::ExistingFile)
        ->capture_default_str();
    app.add_option("--minilm-sentences", minilm_sentences, "MiniLM calibration sentences")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_flag("--no-minilm", no_minilm, "skip the MiniLM table");
    app.add_flag("--no-smollm", no_smollm, "skip the SmolLM2 table");
    app.add_flag("--no-grid-check", no_grid_check, "skip the RTN row on Q4_1's own grid");
    app.add_option("--calib-cache", calib_cache, "SmolLM2's calibration statistics: read if the file exists, else written");
  }
};

constexpr const char* kRtnLabel = "RTN (min/max)";
constexpr const char* kRtnClipLabel = "RTN + weighted clip search";

struct MethodSpec {
  std::string label, compressor, suffix;
};

// A named method, or COMPRESSOR[:KEYS] with KEYS ('+'-separated, since ',' separates methods)
// appended to "bits=B,group=G,asym" (for example quant.gptq:act_order+clip+damp=0.05), labelled by
// itself.
MethodSpec method_spec(const std::string& m) {
  if (m == "rtn") return {kRtnLabel, "quant.rtn", ""};
  if (m == "rtn_clip") return {"RTN + clip search", "quant.rtn", ",clip"};
  if (m == "rtn_clip_w") return {kRtnClipLabel, "quant.rtn", ",clip=w"};
  if (m == "gptq") return {"GPTQ (defaults: act-order, weighted clip, damp 0.1)", "quant.gptq", ""};
  if (m == "gptq_minmax") return {"GPTQ act-order, min/max, damp 0.01", "quant.gptq", ",act_order,clip=0,damp=0.01"};
  if (m == "gptq_natural") return {"GPTQ natural order, weighted clip, damp 0.1", "quant.gptq", ",act_order=0"};
  if (m == "awq") return {"AWQ", "quant.awq", ""};
  if (m.rfind("quant.", 0) == 0) {
    const auto colon = m.find(':');
    if (colon == std::string::npos) return {m, m, ""};
    std::string keys = m.substr(colon + 1);
    std::replace(keys.begin(), keys.end(), '+', ',');
    return {m, m.substr(0, colon), "," + keys};
  }
  fail("unknown method '", m,
       "' (rtn, rtn_clip, rtn_clip_w, gptq, gptq_minmax, gptq_natural, awq, or COMPRESSOR:KEYS)");
}

// tr(D H D^T) in single precision BLAS: a report-only figure, so float is enough and it keeps the
// 210 layers x 5 quantizations affordable.
double weighted_trace(const RowMatrix<float>& d, const Matrix<float>& h) {
  RowMatrix<float> dh(d.rows(), d.cols());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(d.rows()), static_cast<int>(d.cols()),
              static_cast<int>(d.cols()), 1.0f, d.data(), static_cast<int>(d.cols()), h.data(),
              static_cast<int>(h.rows()), 0.0f, dh.data(), static_cast<int>(d.cols()));
  return (dh.cast<double>().array() * d.cast<double>().array()).sum();
}

// The statistics of one layer input that the quantizers read (shared by the layers reading it).
struct InputStatistics {
  Matrix<double> h;  // X^T X / N
  Vector<double> mean_sq, mean_abs;
  int64_t tokens = 0;
};
using Statistics = std::map<std::string, std::shared_ptr<const InputStatistics>>;

Statistics statistics_of(const nn::Calibration& calib, const std::vector<std::string>& names) {
  Statistics out;
  std::map<const nn::InputStats*, std::shared_ptr<const InputStatistics>> by_input;
  for (const auto& name : names) {
    const nn::InputStats& st = calib.stats(name);
    auto& s = by_input[&st];
    if (!s)
      s = std::make_shared<const InputStatistics>(
          InputStatistics{st.hessian(), st.mean_sq(), st.mean_abs(), st.tokens});
    out[name] = s;
  }
  return out;
}

// The calibration cache: a key line (model, text slice, sequences) and, per distinct input, the
// names reading it and its statistics in double precision, so that a second run with the same key
// skips the calibration.
constexpr const char* kCacheMagic = "quant_eval calibration cache v1";

template <class T>
void write_pod(std::ofstream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof v);
}
template <class T>
T read_pod(std::ifstream& in) {
  T v{};
  in.read(reinterpret_cast<char*>(&v), sizeof v);
  return v;
}

void save_statistics(const fs::path& path, const std::string& key, const Statistics& stats) {
  std::ofstream out(path, std::ios::binary);
  require(out.good(), "cannot write the calibration cache ", path.string());
  out << kCacheMagic << '\n' << key << '\n';
  std::map<const InputStatistics*, std::vector<std::string>> names_of;
  for (const auto& [name, s] : stats) names_of[s.get()].push_back(name);
  write_pod(out, static_cast<uint64_t>(names_of.size()));
  for (const auto& [s, names] : names_of) {
    write_pod(out, static_cast<uint64_t>(names.size()));
    for (const auto& n : names) out << n << '\n';
    const int64_t n = s->h.rows();
    write_pod(out, n);
    write_pod(out, s->tokens);
    out.write(reinterpret_cast<const char*>(s->h.data()), static_cast<std::streamsize>(n * n * sizeof(double)));
    out.write(reinterpret_cast<const char*>(s->mean_sq.data()), static_cast<std::streamsize>(n * sizeof(double)));
    out.write(reinterpret_cast<const char*>(s->mean_abs.data()), static_cast<std::streamsize>(n * sizeof(double)));
  }
  require(out.good(), "writing the calibration cache ", path.string(), " failed");
}

// Empty when the file does not exist; throws when it belongs to another key or is damaged.
std::optional<Statistics> load_statistics(const fs::path& path, const std::string& key) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return std::nullopt;
  std::string magic, file_key;
  std::getline(in, magic);
  std::getline(in, file_key);
  require(magic == kCacheMagic, path.string(), " is not a quant_eval calibration cache");
  require(file_key == key, path.string(), " was written for '", file_key, "', not '", key,
          "': delete it or pass another --calib-cache");
  Statistics out;
  const auto inputs = read_pod<uint64_t>(in);
  for (uint64_t i = 0; i < inputs && in.good(); ++i) {
    const auto count = read_pod<uint64_t>(in);
    std::vector<std::string> names(count);
    for (auto& n : names) std::getline(in, n);
    auto s = std::make_shared<InputStatistics>();
    const auto n = read_pod<int64_t>(in);
    s->tokens = read_pod<int64_t>(in);
    require(n > 0 && n < (1 << 20), path.string(), ": bad input size ", n);
    s->h.resize(n, n);
    s->mean_sq.resize(n);
    s->mean_abs.resize(n);
    in.read(reinterpret_cast<char*>(s->h.data()), static_cast<std::streamsize>(n * n * sizeof(double)));
    in.read(reinterpret_cast<char*>(s->mean_sq.data()), static_cast<std::streamsize>(n * sizeof(double)));
    in.read(reinterpret_cast<char*>(s->mean_abs.data()), static_cast<std::streamsize>(n * sizeof(double)));
    for (const auto& name : names) out[name] = s;
  }
  require(in.good(), path.string(), " is truncated");
  return out;
}

// What one quantization of a whole model cost and how far its layers moved.
struct Quantized {
  double seconds = 0, bytes = 0, weights = 0, mean_layer_error = 0;
};

// Quantizes every named layer with `knob`, handing each reconstructed weight to `install`.
template <class GetWeight, class Install>
Quantized quantize_layers(const std::vector<std::string>& names, const Statistics& stats,
                          const compress::WeightCompressor& c, const std::string& knob, GetWeight get_weight,
                          Install install, std::map<std::string, std::pair<Matrix<float>, double>>& h_cache) {
  Quantized out;
  double error_sum = 0;
  for (const auto& name : names) {
    const RowMatrix<float> w = get_weight(name);
    const InputStatistics& st = *stats.at(name);
    const Matrix<double>& h = st.h;
    const compress::LayerCalibration lc{&st.h, &st.mean_sq, &st.mean_abs, st.tokens};
    const compress::Layer layer{name, &w};
    const auto t0 = std::chrono::steady_clock::now();
    const compress::Compressed comp = c.apply(layer, lc, knob);
    RowMatrix<float> w_hat = c.reconstruct(comp);
    out.seconds += seconds_since(t0);
    out.bytes += static_cast<double>(comp.stored_bytes());
    out.weights += static_cast<double>(w.size());
    auto it = h_cache.find(name);
    if (it == h_cache.end()) {
      Matrix<float> hf = h.cast<float>();
      const double denom = weighted_trace(w, hf);
      it = h_cache.emplace(name, std::make_pair(std::move(hf), denom)).first;
    }
    error_sum += weighted_trace(w - w_hat, it->second.first) / it->second.second;
    install(name, std::move(w_hat));
  }
  out.mean_layer_error = error_sum / static_cast<double>(names.size());
  return out;
}

// Thrown by StageHook after the last block of a stage: the rest of the forward pass is not needed.
struct StageDone {};

// Collects the statistics of the inputs of blocks [first, last] and ends the forward pass after
// block `last`.
class StageHook final : public nn::ForwardHooks {
 public:
  StageHook(int first, int last, nn::Calibration& calib) : first_(first), last_(last), calib_(calib) {}
  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t in) override {
    if (layer >= first_ && layer <= last_) calib_.on_linear_input(layer, tensors, x, tokens, in);
  }
  void on_block(int layer, const float*, const float*, int64_t, int64_t) override {
    if (layer == last_) throw StageDone{};
  }

 private:
  int first_, last_;
  nn::Calibration& calib_;
};

// Sequential calibration, as GPTQ's reference code runs it: blocks are quantized in stages of
// `stage_blocks`, and each stage's input statistics come from the model whose earlier blocks are
// already quantized, so that a layer also corrects the error its inputs carry. Each stage costs a
// forward pass up to its last block over every calibration sequence.
Quantized quantize_sequential(nn::LlamaModel& q, const std::vector<std::vector<int32_t>>& seqs, int stage_blocks,
                              const compress::WeightCompressor& c, const std::string& knob, double& calib_seconds) {
  const int n_blocks = static_cast<int>(q.config().n_layers);
  Quantized total;
  double error_sum = 0;
  int64_t layers = 0;
  calib_seconds = 0;
  for (int first = 0; first < n_blocks; first += stage_blocks) {
    const int last = std::min(n_blocks, first + stage_blocks) - 1;
    const auto t0 = std::chrono::steady_clock::now();
    nn::Calibration calib;
    StageHook hook(first, last, calib);
    {
      nn::LlamaSession session(q, static_cast<int64_t>(seqs.front().size()));
      for (const auto& seq : seqs) {
        session.reset();
        try {
          session.forward(seq, nullptr, nn::Logits::none, &hook);
        } catch (const StageDone&) {
        }
      }
    }
    calib_seconds += seconds_since(t0);
    std::vector<std::string> names;
    for (const auto& n : q.linear_names())
      for (int b = first; b <= last; ++b)
        if (n.rfind("blk." + std::to_string(b) + ".", 0) == 0) names.push_back(n);
    // The error is measured on the Hessians this stage quantized with, so no cache across stages.
    std::map<std::string, std::pair<Matrix<float>, double>> h_cache;
    const Quantized part = quantize_layers(
        names, statistics_of(calib, names), c, knob, [&](const std::string& n) { return q.linear(n).dense_weight(); },
        [&](const std::string& n, RowMatrix<float> w) {
          q.set_linear(n, std::make_shared<nn::DenseLinear>(std::move(w)));
        },
        h_cache);
    total.seconds += part.seconds;
    total.bytes += part.bytes;
    total.weights += part.weights;
    error_sum += part.mean_layer_error * static_cast<double>(names.size());
    layers += static_cast<int64_t>(names.size());
  }
  total.mean_layer_error = error_sum / static_cast<double>(layers);
  return total;
}

// Every method's figure over plain RTN's, and over RTN with the weighted clipping search (the fair
// comparison for methods that search their group ranges too), per configuration.
void print_ratios(const std::map<std::pair<int, int>, std::map<std::string, double>>& by_config, const char* what) {
  for (const auto& [cfg, values] : by_config) {
    for (const char* base : {kRtnLabel, kRtnClipLabel}) {
      if (!values.count(base)) continue;
      for (const auto& [label, v] : values)
        if (label != base)
          std::printf("%d bits, group %d: %s(%s) / %s(%s) = %.3f\n", cfg.first, cfg.second, what, label.c_str(), what,
                      base, v / values.at(base));
    }
  }
}

std::string knob_for(int bits, int group, const MethodSpec& m) {
  return "bits=" + std::to_string(bits) + ",group=" + std::to_string(group) + ",asym" + m.suffix;
}

void run_smollm(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  std::printf("== SmolLM2-135M: %s\n", a.model.c_str());
  const auto file = io::open_model(a.model);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);

  std::vector<std::string> names;
  for (const auto& n : dense.linear_names())
    if (n.rfind("blk.", 0) == 0) names.push_back(n);
  const std::string cache_key = fs::absolute(a.model).string() + " | " + cs.describe() + " | " +
                                std::to_string(a.sequences) + " x " + std::to_string(a.length);
  const auto seqs = a.calibration_sequences(tok, cs);
  std::optional<Statistics> cached;
  if (!a.calib_cache.empty()) cached = load_statistics(a.calib_cache, cache_key);
  Statistics stats;
  if (cached) {
    stats = std::move(*cached);
    std::printf("calibration: %s, %lld sequences x %lld tokens (read from %s)\n", cs.describe().c_str(),
                static_cast<long long>(a.sequences), static_cast<long long>(a.length), a.calib_cache.c_str());
  } else {
    nn::Calibration calib;
    a.calibrate(dense, seqs, cs, calib);
    stats = statistics_of(calib, names);
    if (!a.calib_cache.empty()) save_statistics(a.calib_cache, cache_key, stats);
  }
  const auto eval_toks = nn::tokenize_slice(tok, es, a.eval_tokens);
  const nn::WindowOptions window{512, 512, 0};
  std::printf("evaluation: %s, %zu tokens, context 512, stride 512\n", es.describe().c_str(), eval_toks.size());
  std::printf("quantizing %zu linear layers (the 30 blocks; embeddings / tied output head stay dense)\n\n",
              names.size());

  std::map<std::string, std::pair<Matrix<float>, double>> h_cache;
  std::printf("| method | bits | group | bits/weight | quantize s | layer err (calib) | perplexity | KL mean | KL p99 | "
              "top-1 |\n|---|---|---|---|---|---|---|---|---|---|\n");
  double dense_ppl = 0;
  std::vector<std::string> notes;
  std::map<std::pair<int, int>, std::map<std::string, double>> kl_of;
  for (const auto& [bits, group] : a.configs) {
    for (const auto& m : a.methods) {
      // METHOD@seqK: sequential calibration in stages of K blocks.
      const auto at = m.find("@seq");
      const int stage_blocks = at == std::string::npos ? 0 : std::stoi(m.substr(at + 4));
      require(at == std::string::npos || stage_blocks >= 1, "method '", m, "': @seq needs a number of blocks >= 1");
      MethodSpec ms = method_spec(m.substr(0, at));
      if (stage_blocks) ms.label = m;
      const auto& c = compress::find_compressor(ms.compressor);
      nn::LlamaModel q = dense.clone();
      const std::string knob = knob_for(bits, group, ms);
      double seq_calib_s = 0;
      Quantized qz;
      if (stage_blocks) {
        qz = quantize_sequential(q, seqs, stage_blocks, c, knob, seq_calib_s);
      } else {
        qz = quantize_layers(
            names, stats, c, knob, [&](const std::string& n) { return dense.linear(n).dense_weight(); },
            [&](const std::string& n, RowMatrix<float> w) {
              q.set_linear(n, std::make_shared<nn::DenseLinear>(std::move(w)));
            },
            h_cache);
      }
      const nn::KlResult kl = nn::kl_divergence(dense, q, eval_toks, window);
      dense_ppl = kl.reference.perplexity;
      kl_of[{bits, group}][ms.label] = kl.mean_kl;
      std::printf("| %s | %d | %d | %.3f | %.1f | %.5f | %.3f | %.5f | %.4f | %.2f%% |\n", ms.label.c_str(), bits, group,
                  8.0 * qz.bytes / qz.weights, qz.seconds, qz.mean_layer_error, kl.model.perplexity, kl.mean_kl,
                  kl.p99_kl, 100.0 * kl.top1_agreement);
      if (stage_blocks) notes.push_back(m + ": the sequential calibration (" +
                                        std::to_string((dense.config().n_layers + stage_blocks - 1) / stage_blocks) +
                                        " stages) took " + std::to_string(static_cast<int>(seq_calib_s)) + " s");
      std::fflush(stdout);
    }
  }
  // SmolLM2's weights are Q4_1 blocks (32 weights, asymmetric 4-bit): RTN at 4 bits in groups of
  // 32 lands on almost the same grid, which is why groups of 128 and 3 bits are the comparisons.
  if (!a.no_grid_check) {
    const auto& c = compress::find_compressor("quant.rtn");
    nn::LlamaModel q = dense.clone();
    const Quantized qz = quantize_layers(
        names, stats, c, "bits=4,group=32,asym", [&](const std::string& n) { return dense.linear(n).dense_weight(); },
        [&](const std::string& n, RowMatrix<float> w) { q.set_linear(n, std::make_shared<nn::DenseLinear>(std::move(w))); },
        h_cache);
    const nn::KlResult kl = nn::kl_divergence(dense, q, eval_toks, window);
    std::printf("| RTN (Q4_1's grid) | 4 | 32 | %.3f | %.1f | %.5f | %.3f | %.5f | %.4f | %.2f%% |\n",
                8.0 * qz.bytes / qz.weights, qz.seconds, qz.mean_layer_error, kl.model.perplexity, kl.mean_kl, kl.p99_kl,
                100.0 * kl.top1_agreement);
  }
  std::printf("\ndense perplexity: %.3f\n", dense_ppl);
  for (const auto& n : notes) std::printf("%s\n", n.c_str());
  print_ratios(kl_of, "KL");
}

// Unique sentences of the paraphrase set, in file order.
std::vector<std::string> paraphrase_sentences(const fs::path& path) {
  std::ifstream in(path);
  require(in.good(), "cannot open ", path.string());
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto f = split(line, '\t');
    if (f.size() != 3) continue;
    for (size_t i = f[0] == "retrieval" ? 2 : 1; i < 3; ++i)
      if (seen.insert(f[i]).second) out.push_back(f[i]);
  }
  return out;
}

// Sentences of a text slice (cut after ". ", "? ", "! "), at least five words each.
std::vector<std::string> text_sentences(const nn::TextSlice& slice, int64_t count) {
  const std::string text = slice.read();
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i + 1 < text.size() && static_cast<int64_t>(out.size()) < count; ++i) {
    const char ch = text[i];
    if ((ch == '.' || ch == '?' || ch == '!' || ch == '\n') && (text[i + 1] == ' ' || text[i + 1] == '\n')) {
      std::string s = text.substr(start, i + 1 - start);
      while (!s.empty() && (s.front() == ' ' || s.front() == '\n')) s.erase(s.begin());
      if (std::count(s.begin(), s.end(), ' ') >= 4) out.push_back(s);
      start = i + 1;
    }
  }
  return out;
}

void run_minilm(const Args& a) {
  std::printf("\n== all-MiniLM-L6-v2: %s\n", a.minilm.c_str());
  nn::SentenceEncoder enc = nn::SentenceEncoder::open(a.minilm);
  const nn::BertEncoder dense = enc.encoder().clone();
  const nn::TextSlice cs = nn::TextSlice::parse(a.calib, a.calib_slice);
  const auto calib_sentences = text_sentences(cs, a.minilm_sentences);
  nn::Calibration calib;
  enc.encode(calib_sentences, 32, &calib);
  std::printf("calibration: %zu sentences (%lld tokens) from %s\n", calib_sentences.size(),
              static_cast<long long>(calib.stats(dense.linear_names().front()).tokens), cs.describe().c_str());
  const auto sentences = paraphrase_sentences(a.paraphrases);
  const Tensor ref = enc.encode(sentences);
  std::printf("evaluation: %zu sentences of %s, cosine of each embedding to the dense model's\n\n", sentences.size(),
              a.paraphrases.c_str());
  const auto& names = dense.linear_names();
  const Statistics stats = statistics_of(calib, names);
  std::map<std::string, std::pair<Matrix<float>, double>> h_cache;
  std::printf("| method | bits | group | bits/weight | quantize s | layer err (calib) | mean cosine | min cosine | "
              "1 - mean cos |\n|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::pair<int, int>, std::map<std::string, double>> dist_of;
  for (const auto& [bits, group] : a.configs) {
    for (const auto& m : a.methods) {
      const MethodSpec ms = method_spec(m);
      const auto& c = compress::find_compressor(ms.compressor);
      enc.encoder() = dense.clone();
      const Quantized qz = quantize_layers(
          names, stats, c, knob_for(bits, group, ms),
          [&](const std::string& n) { return dense.linear(n).dense_weight(); },
          [&](const std::string& n, RowMatrix<float> w) { enc.encoder().set_weight(n, std::move(w)); }, h_cache);
      const Tensor e = enc.encode(sentences);
      double sum = 0, worst = 1;
      for (int64_t i = 0; i < e.dim(0); ++i) {
        const auto dim = static_cast<size_t>(e.dim(1));
        const float cs_i = nn::cosine({ref.view<const float>().data() + i * e.dim(1), dim},
                                      {e.view<const float>().data() + i * e.dim(1), dim});
        sum += cs_i;
        worst = std::min(worst, static_cast<double>(cs_i));
      }
      const double mean = sum / static_cast<double>(e.dim(0));
      dist_of[{bits, group}][ms.label] = 1 - mean;
      std::printf("| %s | %d | %d | %.3f | %.1f | %.5f | %.5f | %.5f | %.5f |\n", ms.label.c_str(), bits, group,
                  8.0 * qz.bytes / qz.weights, qz.seconds, qz.mean_layer_error, mean, worst, 1 - mean);
      std::fflush(stdout);
    }
  }
  print_ratios(dist_of, "(1 - cos)");
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"Integer quantizers (RTN, GPTQ, AWQ) on SmolLM2-135M and all-MiniLM-L6-v2", "quant_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] {
    std::printf("%s; %d threads\n", strata::blas_info().describe().c_str(), strata::num_threads());
    if (!a.no_smollm) run_smollm(a);
    if (!a.no_minilm) run_minilm(a);
  });
}
