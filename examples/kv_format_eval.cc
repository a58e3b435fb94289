// Measured figures for docs/kv-cache.md: SmolLM2-135M, run in its file's types, decoding real text
// with its KV cache stored in each kv::CacheFormat, against the float32 cache. Each window of the
// text is a prompt of --context tokens read once with the float32 cache (optionally evicted to
// --budget tokens per KV head at the prompt, SnapKV + AdaKV), then the next --steps tokens decoded
// one at a time (teacher-forced) by a session continuing from it with its cache re-stored in the
// format (kv::Session::with_format, KIVI's setting: the prompt attends in full precision, its keys
// and values are then held quantized, and every new token is stored in the format as it comes).
// Reported per format: mean KL(p_float || p_format) over the decoded tokens' next-token
// distributions, perplexity of the decoded tokens, and the cache's bytes.
//
//   kv_format_eval [--model GGUF] [--text TXT] [--slice 0.7:0.8] [--context 2048] [--steps 64]
//                  [--windows 2] [--formats f16,q8_0,q4_0,kivi4,kivi2] [--kivi-group 32]
//                  [--kivi-residual 32] [--seed 0] [--budget 0]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;
namespace fs = std::filesystem;
using strata::examples::seconds_since;

struct Args {
  fs::path model = examples::data_paths().smollm2();
  fs::path text = examples::data_paths().moby_dick();
  std::string slice = examples::kReportSlice;
  int64_t context = 2048, steps = 64, windows = 2, kivi_group = 32, kivi_residual = 32, budget = 0;
  uint64_t seed = 0;
  std::vector<std::string> formats = {"f16", "q8_0", "q4_0", "kivi4", "kivi2"};

  void add_options(CLI::App& app) {
    examples::add_model_option(app, model);
    app.add_option("--text", text, "text the windows are cut from")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--slice", slice, "slice BEGIN:END of --text")->capture_default_str();
    app.add_option("--context", context, "prompt tokens per window")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--steps", steps, "tokens decoded after each prompt")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--windows", windows, "windows of the text")->check(CLI::PositiveNumber)->capture_default_str();
    examples::add_list(app, "--formats", formats, "KV formats (keys and values), each run without and with rotation");
    app.add_option("--kivi-group", kivi_group, "KIVI group G")->capture_default_str();
    app.add_option("--kivi-residual", kivi_residual, "KIVI float32 window R")->capture_default_str();
    app.add_option("--seed", seed, "the rotation's random signs")->capture_default_str();
    app.add_option("--budget", budget, "tokens per KV head kept at the prompt (SnapKV, AdaKV); 0 = no eviction")
        ->capture_default_str();
  }
};

// The formats to run, checked before the model is read: names, KIVI knobs, and a budget that must
// hold KIVI's float32 window.
std::vector<std::pair<std::string, kv::CacheFormat>> parse_formats(const Args& a) {
  std::vector<std::pair<std::string, kv::CacheFormat>> out;
  for (const auto& name : a.formats)
    for (bool rotate : {false, true}) {
      kv::CacheFormat f;
      f.key = f.value = kv::parse_kv_format(name, "--formats");
      f.kivi_group = a.kivi_group;
      f.kivi_residual = a.kivi_residual;
      f.rotate = rotate;
      f.rotation_seed = a.seed;
      require(f.kivi_group >= 1, "--kivi-group must be at least 1, got ", f.kivi_group);
      require(f.kivi_residual >= 0, "--kivi-residual must be non-negative, got ", f.kivi_residual);
      require(a.budget == 0 || a.budget >= f.min_budget(), "--budget ", a.budget, " cannot hold --kivi-residual ",
              f.kivi_residual, " float32 tokens per KV head");
      out.emplace_back(name + (rotate ? "+rot" : ""), f);
    }
  return out;
}

// log-softmax of one row of logits.
std::vector<double> log_probs(const float* logits, int64_t vocab) {
  const double mx = *std::max_element(logits, logits + vocab);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += std::exp(logits[i] - mx);
  std::vector<double> out(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) out[static_cast<size_t>(i)] = logits[i] - mx - std::log(z);
  return out;
}

struct Result {
  double kl = 0, nll = 0, mib = 0, seconds = 0;
  int64_t tokens = 0;
};

// Decodes tokens [context, context + steps) from `session`; logits of every step appended to `out`.
void decode(kv::Session& s, const std::vector<int32_t>& window, int64_t context, int64_t steps, int64_t vocab,
            std::vector<float>& out) {
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < steps; ++t) {
    s.forward(std::span<const int32_t>(window).subspan(static_cast<size_t>(context + t - 1), 1), logits.data(),
              nn::Logits::last);
    out.insert(out.end(), logits.begin(), logits.end());
  }
}

void run(const Args& a) {
  const auto formats = parse_formats(a);
  const auto t0 = std::chrono::steady_clock::now();
  const nn::TextSlice slice = nn::TextSlice::parse(a.text, a.slice);
  std::shared_ptr<const io::Model> file = io::open_model(a.model);
  const nn::LlamaModel model = nn::LlamaModel::load_stored(file);
  const auto& c = model.config();
  for (const auto& [name, f] : formats) f.validate(c.n_layers, c.head_dim);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  const int64_t length = a.context + a.steps, vocab = c.vocab_size;
  const auto windows = nn::cut_sequences(nn::tokenize_slice(tok, slice, a.windows * length), a.windows, length, -1);
  std::printf("model: %s in its file's types (%lld layers, %lld KV heads of %lld), %d threads\n",
              a.model.filename().string().c_str(), static_cast<long long>(c.n_layers),
              static_cast<long long>(c.n_kv_heads), static_cast<long long>(c.head_dim), num_threads());
  std::printf("text: %s, %lld windows of %lld prompt + %lld decoded tokens; KIVI G %lld R %lld; rotation seed %llu; %s\n\n",
              slice.describe().c_str(), static_cast<long long>(a.windows), static_cast<long long>(a.context),
              static_cast<long long>(a.steps), static_cast<long long>(a.kivi_group),
              static_cast<long long>(a.kivi_residual), static_cast<unsigned long long>(a.seed),
              a.budget > 0 ? ("prompt evicted to " + std::to_string(a.budget) + " tokens per KV head (snapkv, adakv)").c_str()
                           : "no eviction");

  Result reference;
  std::vector<Result> results(formats.size());
  for (const auto& window : windows) {
    std::optional<kv::Eviction> eviction;
    if (a.budget > 0) eviction = kv::Eviction{kv::make_scorer("snapkv"), kv::Policy::adakv(), a.budget};
    kv::Session base(model, length, eviction, kv::Schedule{.prefill = true, .decode = false, .every = 1});
    std::vector<float> logits(static_cast<size_t>(vocab));
    // The prompt without its last token; each decode step feeds the previous token and predicts the next.
    base.forward(std::span<const int32_t>(window).first(static_cast<size_t>(a.context - 1)), logits.data(),
                 nn::Logits::last);
    std::vector<float> want;
    auto ts = std::chrono::steady_clock::now();
    {
      auto s = base.with_format(kv::CacheFormat{});
      decode(*s, window, a.context, a.steps, vocab, want);
      reference.mib += static_cast<double>(s->cache_bytes()) / (1 << 20) / static_cast<double>(a.windows);
    }
    reference.seconds += seconds_since(ts);
    for (int64_t t = 0; t < a.steps; ++t) {
      const auto lp = log_probs(want.data() + t * vocab, vocab);
      reference.nll -= lp[static_cast<size_t>(window[static_cast<size_t>(a.context + t)])];
    }
    reference.tokens += a.steps;
    for (size_t i = 0; i < formats.size(); ++i) {
      ts = std::chrono::steady_clock::now();
      auto s = base.with_format(formats[i].second);
      std::vector<float> got;
      decode(*s, window, a.context, a.steps, vocab, got);
      Result& r = results[i];
      r.seconds += seconds_since(ts);
      r.mib += static_cast<double>(s->cache_bytes()) / (1 << 20) / static_cast<double>(a.windows);
      for (int64_t t = 0; t < a.steps; ++t) {
        const auto p = log_probs(want.data() + t * vocab, vocab), q = log_probs(got.data() + t * vocab, vocab);
        double kl = 0;
        for (int64_t v = 0; v < vocab; ++v)
          kl += std::exp(p[static_cast<size_t>(v)]) * (p[static_cast<size_t>(v)] - q[static_cast<size_t>(v)]);
        r.kl += kl;
        r.nll -= q[static_cast<size_t>(window[static_cast<size_t>(a.context + t)])];
      }
      r.tokens += a.steps;
    }
  }
  const double ref_ppl = std::exp(reference.nll / static_cast<double>(reference.tokens));
  std::printf("%-11s %10s %10s %12s %10s %13s %9s\n", "format", "cache MiB", "vs f32", "mean KL", "ppl", "ppl vs f32",
              "decode s");
  std::printf("%-11s %10.2f %9.3fx %12s %10.3f %13s %9.1f\n", "f32", reference.mib, 1.0, "0", ref_ppl, "",
              reference.seconds);
  for (size_t i = 0; i < formats.size(); ++i) {
    const Result& r = results[i];
    const double ppl = std::exp(r.nll / static_cast<double>(r.tokens));
    std::printf("%-11s %10.2f %9.3fx %12.5f %10.3f %+12.2f%% %9.1f\n", formats[i].first.c_str(), r.mib,
                r.mib / reference.mib, r.kl / static_cast<double>(r.tokens), ppl, 100 * (ppl / ref_ppl - 1), r.seconds);
  }
  std::printf("\ntotal %.1f s\n", seconds_since(t0));
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"SmolLM2 decoding with its KV cache stored as f16, q8_0, q4_0 or KIVI, with and without rotation",
               "kv_format_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
