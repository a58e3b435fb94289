// `strata generate`, `strata eval`, `strata calibrate`: the reference engine on a real model.
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>

#include "commands.hpp"
#include "progress.hpp"
#include "strata/compress/model_io.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::cli {

namespace {

struct Loaded {
  std::shared_ptr<const io::Model> file;
  std::unique_ptr<nn::LlamaModel> model;
  std::optional<nn::BpeTokenizer> tokenizer;  // absent for llama2.c checkpoints
};

Loaded load(const std::string& path) {
  Loaded l;
  // GGUF, llama2.c, or a strata safetensors whose compressed layers run as their compressors say.
  compress::LoadedModel loaded = compress::load_llama(path);
  l.file = std::move(loaded.file);
  l.model = std::make_unique<nn::LlamaModel>(std::move(loaded.model));
  if (l.file->metadata().contains("tokenizer.ggml.tokens")) l.tokenizer = nn::BpeTokenizer::from_model(*l.file);
  const auto& c = l.model->config();
  std::printf("model: %s (%s, %lld layers, dim %lld, %lld heads / %lld KV heads, vocab %lld)\n", path.c_str(),
              std::string(io::format_name(l.file->format())).c_str(), static_cast<long long>(c.n_layers),
              static_cast<long long>(c.dim), static_cast<long long>(c.n_heads), static_cast<long long>(c.n_kv_heads),
              static_cast<long long>(c.vocab_size));
  return l;
}

// Evaluation tokens: the text slice through the model's tokenizer, or (no tokenizer, e.g.
// stories260K) sequences sampled from the dense model itself at temperature 1.
std::vector<int32_t> eval_tokens(const Loaded& ref, const std::string& text, const std::string& slice, int64_t max_tokens,
                                 int64_t context, int64_t sampled, uint64_t seed, std::string& description) {
  if (ref.tokenizer) {
    require(!text.empty(), "this model has a tokenizer: pass --text FILE (and --slice BEGIN:END)");
    const nn::TextSlice s = nn::TextSlice::parse(text, slice);
    auto toks = nn::tokenize_slice(*ref.tokenizer, s, max_tokens);
    description = s.describe() + ", " + std::to_string(toks.size()) + " tokens";
    return toks;
  }
  const auto seqs = nn::sample_sequences(*ref.model, sampled, context, 1, seed);
  std::vector<int32_t> toks;
  for (const auto& q : seqs) toks.insert(toks.end(), q.begin(), q.end());
  description = std::to_string(sampled) + " sequences of " + std::to_string(context) +
                " tokens sampled from the reference model (temperature 1, seed " + std::to_string(seed) +
                "), one window each";
  return toks;
}

}  // namespace

void register_engine(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("generate", "Continue a prompt with the reference engine");
    static std::string model, prompt = "Once upon a time";
    static int64_t n = 48;
    static float temperature = 0.0f;
    static uint64_t seed = 1;
    cmd->add_option("model", model, "GGUF (llama) or llama2.c file")->required()->check(CLI::ExistingFile);
    cmd->add_option("--prompt,-p", prompt, "prompt text (token ids separated by spaces for llama2.c models)");
    cmd->add_option("-n", n, "tokens to generate")->check(CLI::Range(1, 4096));
    cmd->add_option("--temperature,-t", temperature, "0 = greedy");
    cmd->add_option("--seed", seed);
    cmd->callback([] {
      const Loaded l = load(model);
      std::vector<int32_t> ids;
      if (l.tokenizer) {
        ids = l.tokenizer->encode(prompt);
      } else {
        std::istringstream in(prompt);
        for (int32_t v; in >> v;) ids.push_back(v);
        if (ids.empty()) ids.push_back(1);
      }
      const auto t0 = std::chrono::steady_clock::now();
      const auto out = nn::generate(*l.model, ids, n, temperature, seed,
                                    l.tokenizer ? l.tokenizer->eos_id() : -1);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (l.tokenizer) {
        std::printf("%s%s\n", prompt.c_str(), l.tokenizer->decode(out).c_str());
      } else {
        for (int32_t t : out) std::printf("%d ", t);
        std::printf("\n");
      }
      std::printf("[%zu tokens in %.2f s]\n", out.size(), s);
    });
  }
  {
    auto* cmd = app.add_subcommand("eval", "Perplexity of a model, and KL divergence to a reference model");
    static std::string model, reference, text, slice = "0.9:1.0";
    static int64_t context = 512, stride = 256, max_tokens = 16384, sampled = 16, threads = 0;
    static uint64_t seed = 1234;
    cmd->add_option("model", model, "model to evaluate")->required()->check(CLI::ExistingFile);
    cmd->add_option("--reference,-r", reference, "dense reference model for KL divergence")->check(CLI::ExistingFile);
    cmd->add_option("--text", text, "evaluation text file")->check(CLI::ExistingFile);
    cmd->add_option("--slice", slice, "part of the text, as fractions BEGIN:END")->capture_default_str();
    cmd->add_option("--context", context, "window length")->capture_default_str();
    cmd->add_option("--stride", stride, "window step")->capture_default_str();
    cmd->add_option("--max-tokens", max_tokens, "tokens to score (0 = the whole slice)")->capture_default_str();
    cmd->add_option("--sampled", sampled, "sequences to sample when the model has no tokenizer")->capture_default_str();
    cmd->add_option("--seed", seed, "seed for sampled sequences")->capture_default_str();
    cmd->add_option("--threads", threads, "threads (0 = all)");
    cmd->callback([] {
      if (threads > 0) set_num_threads(static_cast<int>(threads));
      const Loaded m = load(model);
      std::optional<Loaded> r;
      if (!reference.empty()) r = load(reference);
      const Loaded& ref = r ? *r : m;
      std::string description;
      const auto toks = eval_tokens(ref, text, slice, max_tokens, context, sampled, seed, description);
      nn::WindowOptions w{context, ref.tokenizer ? stride : context, 0};
      std::printf("evaluation data: %s; context %lld, stride %lld\n", description.c_str(),
                  static_cast<long long>(w.context), static_cast<long long>(w.stride));
      const auto t0 = std::chrono::steady_clock::now();
      if (r) {
        const auto kl = nn::kl_divergence(*r->model, *m.model, toks, w);
        std::printf("tokens scored:      %lld\n", static_cast<long long>(kl.tokens));
        std::printf("perplexity:         %.4f (reference %.4f)\n", kl.model.perplexity, kl.reference.perplexity);
        std::printf("KL divergence:      mean %.6f  median %.6f  p99 %.6f  max %.6f nats\n", kl.mean_kl, kl.median_kl,
                    kl.p99_kl, kl.max_kl);
        std::printf("top-1 agreement:    %.2f%%\n", 100.0 * kl.top1_agreement);
      } else {
        const auto p = nn::perplexity(*m.model, toks, w);
        std::printf("tokens scored:      %lld\n", static_cast<long long>(p.tokens));
        std::printf("perplexity:         %.4f (mean NLL %.4f nats/token)\n", p.perplexity, p.mean_nll);
      }
      std::printf("[%.1f s]\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    });
  }
  {
    auto* cmd = app.add_subcommand("calibrate", "Collect calibration statistics (Gram matrices, imatrix, block influence)");
    static std::string model, text, slice = "0:0.5";
    static int64_t sequences = 128, length = 512;
    static std::string imatrix_out;
    cmd->add_option("model", model, "GGUF (llama) model with a tokenizer")->required()->check(CLI::ExistingFile);
    cmd->add_option("--imatrix-out", imatrix_out,
                    "also write the mean x^2 statistics as a llama.cpp importance matrix (.gguf, or legacy .dat)");
    cmd->add_option("--text", text, "calibration text file")->required()->check(CLI::ExistingFile);
    cmd->add_option("--slice", slice, "part of the text, as fractions BEGIN:END")->capture_default_str();
    cmd->add_option("--sequences", sequences)->capture_default_str()->check(CLI::Range(1, 100000));
    cmd->add_option("--length", length, "tokens per sequence")->capture_default_str()->check(CLI::Range(2, 1 << 16));
    cmd->callback([] {
      if (!imatrix_out.empty()) {
        const auto dir = std::filesystem::absolute(imatrix_out).parent_path();
        require(std::filesystem::is_directory(dir), "--imatrix-out '", imatrix_out, "': directory ", dir.string(),
                " does not exist");
      }
      const Loaded l = load(model);
      require(l.tokenizer.has_value(), model, ": no tokenizer in the file; calibrate needs text");
      const nn::TextSlice s = nn::TextSlice::parse(text, slice);
      const auto toks = nn::tokenize_slice(*l.tokenizer, s, sequences * length);
      const auto seqs = nn::cut_sequences(toks, sequences, length, -1);
      std::printf("calibration data: %s, %lld sequences x %lld tokens\n", s.describe().c_str(),
                  static_cast<long long>(sequences), static_cast<long long>(length));
      nn::Calibration calib;
      Progress bar("calibrating", sequences);
      size_t next = 0;
      const auto report = nn::calibrate(
          *l.model,
          [&](std::vector<int32_t>& out) {
            if (next == seqs.size()) return false;
            out = seqs[next++];
            return true;
          },
          calib, [&](int64_t done) { bar.update(done); });
      std::printf("calibrated %lld sequences x %lld tokens in %.1f s (%.0f tokens/s)\n",
                  static_cast<long long>(report.sequences), static_cast<long long>(report.tokens_per_sequence),
                  report.seconds, static_cast<double>(calib.tokens) / report.seconds);
      std::printf("statistics memory: %.1f MiB (Gram matrices in double; independent of the sequence count)\n",
                  static_cast<double>(report.statistics_bytes) / (1024.0 * 1024.0));
      std::printf("%-28s %6s %9s %12s %14s\n", "tensor", "in", "tokens", "trace(H)", "max/mean x^2");
      for (const auto& name : l.model->linear_names()) {
        if (!calib.has(name)) continue;
        const auto& st = calib.stats(name);
        const auto ms = st.mean_sq();
        std::printf("%-28s %6lld %9lld %12.4g %14.1f\n", name.c_str(), static_cast<long long>(st.features),
                    static_cast<long long>(st.tokens), ms.sum(), ms.maxCoeff() / ms.mean());
      }
      std::printf("block influence (1 - cos(in, out)):");
      for (double b : calib.block_influence()) std::printf(" %.3f", b);
      std::printf("\n");
      if (!imatrix_out.empty()) {
        io::Imatrix m = nn::to_imatrix(calib, length, std::filesystem::path(text).filename().string());
        m.chunk_count = static_cast<int64_t>(seqs.size());
        io::write_imatrix(m, imatrix_out);
        std::printf("importance matrix: %s (%zu entries, %lld chunks of %lld tokens)\n", imatrix_out.c_str(),
                    m.entries.size(), static_cast<long long>(m.chunk_count), static_cast<long long>(length));
      }
    });
  }
}

}  // namespace strata::cli
