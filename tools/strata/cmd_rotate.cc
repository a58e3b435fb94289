// `strata rotate`: a Llama model with its RMSNorm weights folded and its residual stream rotated
// (compress/rotate.hpp), written as an all-F32 GGUF llama.cpp runs unchanged, checked against the
// original.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "commands.hpp"
#include "strata/compress/rotate.hpp"
#include "strata/core/error.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/nn/llama.hpp"

namespace strata::cli {

namespace {

struct RotateArgs {
  std::string model, out, kind = "hadamard";
  uint64_t seed = 0;
  bool fold_only = false;
  int64_t check_tokens = 32;
  std::string check_out;  // the check's tokens and the written file's logits, for another engine
};

// Largest logit difference over the largest logit magnitude, on `n` fixed token ids. With `out`,
// writes int32 n, int32 vocab, the n token ids (int32) and b's logits [n, vocab] (float32) there.
double compare_logits(const nn::LlamaModel& a, const nn::LlamaModel& b, int64_t n, const std::string& out) {
  const int64_t vocab = a.config().vocab_size;
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>((1 + 37 * i * i + 11 * i) % vocab));
  std::vector<float> la(static_cast<size_t>(n * vocab)), lb(la.size());
  nn::LlamaSession(a, n).forward(tokens, la.data(), nn::Logits::all);
  nn::LlamaSession(b, n).forward(tokens, lb.data(), nn::Logits::all);
  if (!out.empty()) {
    io::AtomicFileWriter w(out);
    const int32_t head[2] = {static_cast<int32_t>(n), static_cast<int32_t>(vocab)};
    w.write(head, sizeof(head));
    w.write(tokens.data(), tokens.size() * sizeof(int32_t));
    w.write(lb.data(), lb.size() * sizeof(float));
    w.commit();
  }
  double worst = 0, scale = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(la[i]) - lb[i]));
    scale = std::max(scale, std::abs(static_cast<double>(la[i])));
  }
  return worst / scale;
}

void run_rotate(const RotateArgs& a) {
  require(a.check_out.empty() || a.check_tokens > 0, "--check-out needs --check-tokens above 0");
  require(std::filesystem::path(a.out).extension() == ".gguf", "--out '", a.out, "': the rotated model is written as .gguf");
  compress::RotateOptions o;
  o.kind = compress::parse_rotation_kind(a.kind);
  o.seed = a.seed;
  o.rotate = !a.fold_only;
  const auto file = io::open_model(a.model);
  compress::check_rotatable(*file, o);  // before any work
  const auto t0 = std::chrono::steady_clock::now();
  const auto rotated = compress::rotate_model(*file, o);
  const std::string note = a.fold_only ? std::string("norms folded")
                                       : "norms folded, residual rotated by " +
                                             std::string(compress::rotation_kind_name(o.kind)) + " seed " +
                                             std::to_string(o.seed);
  compress::write_f32_gguf(*rotated, *file, a.out, note);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s (%s; all F32, output.weight untied) in %.1f s\n", a.out.c_str(), note.c_str(), seconds);
  if (a.check_tokens > 0) {
    const auto reread = io::open_model(a.out);
    const double d =
        compare_logits(nn::LlamaModel::load(*file), nn::LlamaModel::load(*reread), a.check_tokens, a.check_out);
    std::printf("logits of the written file vs the original on %lld tokens: max difference %.3g of the largest logit\n",
                static_cast<long long>(a.check_tokens), d);
    require(d < 1e-4, "the rotated model's logits differ from the original's by ", d, " (relative)");
  }
}

}  // namespace

void register_rotate(CLI::App& app) {
  {
    static RotateArgs a;
    auto* cmd = app.add_subcommand("rotate", "Fold the RMSNorm weights and rotate the residual stream of a Llama model; write an F32 GGUF");
    cmd->add_option("model", a.model, "Llama model (GGUF or llama2.c)")->required()->check(CLI::ExistingPath);
    cmd->add_option("--out,-o", a.out, "output .gguf")->required();
    cmd->add_option("--kind", a.kind, "hadamard (randomized Hadamard) or random (Haar orthogonal)")->capture_default_str();
    cmd->add_option("--seed", a.seed, "seed of the random signs or matrix")->capture_default_str();
    cmd->add_flag("--fold-only", a.fold_only, "fold the norms, do not rotate");
    cmd->add_option("--check-tokens", a.check_tokens, "compare logits with the original on this many tokens (0: skip)")
        ->capture_default_str();
    cmd->add_option("--check-out", a.check_out, "write the check's token ids and the written file's logits here");
    cmd->callback([] { run_rotate(a); });
  }
}

}  // namespace strata::cli
