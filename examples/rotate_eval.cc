// Does the residual rotation (compress/rotate.hpp, docs/rotation.md) help SmolLM2-135M at 2-4 bits?
// The model as it is and rotated (norms folded, randomized Hadamard or random orthogonal Q), each
// calibrated on the same text (imatrix = mean x^2 per input column, measured on the model being
// quantized), every block linear layer quantized to one ggml type with that imatrix (llama.cpp's
// fallback for 576-column rows: Q3_K, Q2_K -> IQ4_NL; Q4_0 stays Q4_0), token embedding and output
// head kept dense in both. Judged by KL divergence to the original dense model on a disjoint slice.
//
// SmolLM2's published weights sit on a Q4_1 grid, so the unrotated model's rows are exactly
// representable in Q4_1/Q5_1; rotation destroys that grid. Only types other than q4_1/q5_1 are
// meaningful here.
//
//   rotate_eval [--model GGUF] [--calib TXT] [--calib-slice 0:0.5] [--eval TXT] [--eval-slice 0.9:1.0]
//               [--types q4_0,q3_k,q2_k] [--kind hadamard|random] [--seed 0] [--fold-only]
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/compress/rotate.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/eval.hpp"

namespace {

using namespace strata;
namespace ggml = strata::compress::ggml;

struct Args : examples::RealDataArgs {
  std::vector<std::string> types = {"q4_0", "q3_k", "q2_k"};
  std::string kind = "hadamard";
  uint64_t seed = 0;
  bool fold_only = false;
  void add_options(CLI::App& app) {
    RealDataArgs::add_options(app);
    examples::add_list(app, "--types", types, "ggml types every block layer is quantized to");
    app.add_option("--kind", kind, "rotation: hadamard or random")->capture_default_str();
    app.add_option("--seed", seed, "rotation seed")->capture_default_str();
    app.add_flag("--fold-only", fold_only, "fold the norms without rotating: the folding's own share");
  }
};

// Every block linear layer of `dense` at `type` (or llama.cpp's fallback for its row length), rounded
// with the imatrix of `calib`. Returns the model and the bits per weight of those layers.
std::pair<nn::LlamaModel, double> quantize_blocks(const nn::LlamaModel& dense, const nn::Calibration& calib,
                                                  const std::string& type) {
  const auto& comp = compress::find_compressor("quant.ggml");
  nn::LlamaModel out = dense.clone();
  double bytes = 0, weights = 0;
  for (const auto& name : dense.linear_names()) {
    if (name.rfind("blk.", 0) != 0) continue;
    const RowMatrix<float> w = dense.linear(name).dense_weight();
    const auto t = ggml::fallback_type(ggml::quantizable_type(type), w.cols());
    const auto& st = calib.stats(name);
    const Vector<double> ms = st.mean_sq();
    const compress::Compressed c = comp.apply({name, &w}, {nullptr, &ms, nullptr, st.tokens}, ggml::lower_name(t));
    bytes += static_cast<double>(c.stored_bytes());
    weights += static_cast<double>(w.size());
    out.set_linear(name, comp.to_linear(c));
  }
  return {std::move(out), 8.0 * bytes / weights};
}

void run(const Args& a) {
  const auto [cs, es] = a.disjoint_slices();
  const auto file = io::open_model(a.model);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  compress::RotateOptions ro;
  ro.kind = compress::parse_rotation_kind(a.kind);
  ro.seed = a.seed;
  ro.rotate = !a.fold_only;
  compress::check_rotatable(*file, ro);
  const auto t0 = std::chrono::steady_clock::now();
  const auto rotated_file = compress::rotate_model(*file, ro);
  std::printf("model: %s; %s (%s, seed %llu) in %.1f s\n", a.model.c_str(), a.fold_only ? "norms folded, not rotated" : "rotated",
              a.kind.c_str(), static_cast<unsigned long long>(a.seed), examples::seconds_since(t0));
  std::fflush(stdout);
  const nn::LlamaModel dense = nn::LlamaModel::load(*file);
  const nn::LlamaModel rotated = nn::LlamaModel::load(*rotated_file);
  const auto seqs = a.calibration_sequences(tok, cs);
  const auto eval_toks = nn::tokenize_slice(tok, es, a.eval_tokens);
  const int64_t n_windows = static_cast<int64_t>(eval_toks.size()) / 512;
  require(n_windows >= 1, "evaluation slice ", es.describe(), " has fewer than 512 tokens");
  // The original dense model's log-probabilities, computed once: every variant is judged against them.
  const nn::KlEvaluator judge(dense, nn::cut_sequences(eval_toks, n_windows, 512, -1));
  std::printf("evaluation: %s, %lld windows of 512 (%lld scored tokens); threads %d\n", es.describe().c_str(),
              static_cast<long long>(n_windows), static_cast<long long>(judge.tokens()), num_threads());
  std::fflush(stdout);
  {
    const nn::KlResult same = judge(rotated);
    std::printf("dense rotated vs dense original: KL %.3g, top-1 %.4f, perplexity %.4f vs %.4f\n\n", same.mean_kl,
                same.top1_agreement, same.model.perplexity, judge.reference().perplexity);
    std::fflush(stdout);
  }
  nn::Calibration calib_plain(nn::CalibrationOptions{false, false}), calib_rot(nn::CalibrationOptions{false, false});
  a.calibrate(dense, seqs, cs, calib_plain, "calibration, original");
  a.calibrate(rotated, seqs, cs, calib_rot, "calibration, rotated");

  std::printf("\n| type (576-col fallback) | bits/weight | KL original | KL rotated | rotated / original | "
              "top-1 original | top-1 rotated | ppl original | ppl rotated |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& type : a.types) {
    const auto [qp, bpw] = quantize_blocks(dense, calib_plain, type);
    const auto [qr, bpw_r] = quantize_blocks(rotated, calib_rot, type);
    const nn::KlResult rp = judge(qp);
    const nn::KlResult rr = judge(qr);
    const std::string fb = ggml::lower_name(ggml::fallback_type(ggml::quantizable_type(type), 576));
    std::printf("| %s (%s) | %.3f | %.5f | %.5f | %.3f | %.4f | %.4f | %.3f | %.3f |\n", type.c_str(), fb.c_str(), bpw,
                rp.mean_kl, rr.mean_kl, rr.mean_kl / rp.mean_kl, rp.top1_agreement, rr.top1_agreement,
                rp.model.perplexity, rr.model.perplexity);
    std::fflush(stdout);
    require(bpw == bpw_r, "the two models' layers took different sizes at ", type);
  }
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"residual rotation at 2-4 bits on SmolLM2-135M", "rotate_eval"};
  Args a;
  a.eval_slice = "0.9:1.0";
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
