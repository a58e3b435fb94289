// Generates with a compressed KV cache next to the dense cache: SmolLM2-135M reads a passage of
// Moby-Dick (or --prompt), its cache is cut to --budget tokens per KV head after the prompt (and,
// with --decode, kept there while generating), and both continuations are printed with the cache
// bytes each held, where the compressed one first departs from the dense one, and the speed.
// With --score-next N it also measures, over --passages consecutive passages of the text, how far the
// compressed cache moves the next-token distributions of the N tokens that follow each prompt
// (teacher-forced in one batch): mean KL(dense || compressed) and top-1 agreement.
//
//   kv_generate [--model GGUF] [--prompt TEXT | --eval TXT --eval-slice 0.95:0.952 --prompt-tokens 400]
//               [-n 48] [--scorer snapkv] [--policy uniform|pyramid|adakv|streaming] [--budget 96]
//               [--sinks 4] [--recent 16] [--decode] [--every 1] [--score-next 0] [--passages 1]
//               [--threads N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;

// Only what the program reads: it calibrates nothing, so the calibration options are refused.
struct Args {
  std::filesystem::path model = examples::data_paths().smollm2(), eval = examples::data_paths().moby_dick();
  std::string eval_slice = "0.95:0.952", prompt, scorer = "snapkv", policy = "uniform";
  int64_t n = 48, budget = 96, sinks = 4, recent = 16, every = 1, prompt_tokens = 400, threads = 0;
  int64_t score_next = 0, passages = 1;
  bool decode = false;

  void add_options(CLI::App& app) {
    examples::add_model_option(app, model);
    app.add_option("--prompt", prompt, "prompt text, instead of a passage of --eval");
    app.add_option("--eval", eval, "text the prompt passages come from")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--eval-slice", eval_slice, "slice BEGIN:END of --eval")->capture_default_str();
    app.add_option("--prompt-tokens", prompt_tokens, "prompt tokens taken from --eval")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("-n", n, "tokens to generate (0: none)")->check(CLI::NonNegativeNumber)->capture_default_str();
    app.add_option("--scorer", scorer, "token scorer (kv::make_scorer)")->capture_default_str();
    app.add_option("--policy", policy, "uniform, pyramid, adakv or streaming")
        ->check(CLI::IsMember({"uniform", "pyramid", "adakv", "streaming"}))
        ->capture_default_str();
    app.add_option("--budget", budget, "tokens kept per KV head")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--sinks", sinks, "first tokens always kept")->check(CLI::NonNegativeNumber)->capture_default_str();
    app.add_option("--recent", recent, "last tokens always kept")->check(CLI::NonNegativeNumber)->capture_default_str();
    app.add_flag("--decode", decode, "also compress while generating");
    app.add_option("--every", every, "with --decode: compress every this many steps")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--score-next", score_next, "next tokens scored per passage (0: no scoring)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--passages", passages, "passages scored with --score-next")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--threads", threads, "threads (0 = all)")->check(CLI::NonNegativeNumber);
  }
};

kv::Policy make_policy(const Args& a) {
  if (a.policy == "uniform") return kv::Policy::uniform(a.sinks, a.recent);
  if (a.policy == "pyramid") return kv::Policy::pyramid(20, a.sinks, a.recent);
  if (a.policy == "adakv") return kv::Policy::adakv(0.2, a.sinks, a.recent);
  if (a.policy == "streaming") return kv::Policy::streaming_llm(a.sinks);
  fail("--policy: '", a.policy, "' is not uniform, pyramid, adakv or streaming");
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Greedy continuation of `prompt` by `session`; returns the new tokens and the decode seconds.
template <class S>
std::pair<std::vector<int32_t>, double> greedy(S& session, const std::vector<int32_t>& prompt, int64_t n,
                                               int64_t vocab, int32_t eos) {
  std::vector<float> logits(static_cast<size_t>(vocab));
  session.forward(prompt, logits.data(), nn::Logits::last);
  std::vector<int32_t> out;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t next = argmax(logits);
    out.push_back(next);
    if (next == eos || i + 1 == n) break;
    const int32_t tok[1] = {next};
    session.forward(tok, logits.data(), nn::Logits::last);
  }
  return {out, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

// Each passage is `prompt` tokens then `next`: the dense session runs it whole, the compressed one
// compresses after the prompt and then reads the continuation in one batch; the distributions for
// continuation tokens 2 .. next are compared (the first is predicted before any compression).
void score_next(const nn::LlamaModel& model, const kv::Eviction& comp, const std::vector<int32_t>& text,
                int64_t prompt, int64_t next, int64_t passages) {
  const int64_t vocab = model.config().vocab_size, len = prompt + next;
  require(next >= 2, "--score-next needs at least 2 tokens");
  require(static_cast<int64_t>(text.size()) >= passages * len, "--score-next: the text has ", text.size(),
          " tokens, ", passages, " passages need ", passages * len);
  double kl = 0;
  int64_t agree = 0, count = 0;
  std::vector<double> p, q;
  for (int64_t k = 0; k < passages; ++k) {
    const std::span<const int32_t> seq(text.data() + k * len, static_cast<size_t>(len));
    nn::LlamaSession dense(model, len);
    std::vector<float> want(static_cast<size_t>(len * vocab)), got(static_cast<size_t>((next - 1) * vocab));
    dense.forward(seq, want.data(), nn::Logits::all);
    kv::Session session(model, len, comp);
    std::vector<float> last(static_cast<size_t>(vocab));
    session.forward(seq.first(static_cast<size_t>(prompt)), last.data(), nn::Logits::last);
    session.forward(seq.subspan(static_cast<size_t>(prompt), static_cast<size_t>(next - 1)), got.data(),
                    nn::Logits::all);
    for (int64_t t = 0; t + 1 < next; ++t) {
      nn::log_softmax(want.data() + (prompt + t) * vocab, vocab, p);
      nn::log_softmax(got.data() + t * vocab, vocab, q);
      for (int64_t v = 0; v < vocab; ++v)
        kl += std::exp(p[static_cast<size_t>(v)]) * (p[static_cast<size_t>(v)] - q[static_cast<size_t>(v)]);
      agree += std::max_element(p.begin(), p.end()) - p.begin() == std::max_element(q.begin(), q.end()) - q.begin();
      ++count;
    }
  }
  std::printf("next-token KL(dense || compressed) over %lld positions of %lld passages: %.4f nats; top-1 "
              "agreement %.1f%%\n",
              static_cast<long long>(count), static_cast<long long>(passages), kl / static_cast<double>(count),
              100.0 * static_cast<double>(agree) / static_cast<double>(count));
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"Generation with a compressed KV cache next to the dense one, on SmolLM2-135M", "kv_generate"};
  Args a;
  a.add_options(app);
  return examples::run_main(app, argc, argv, [&] {
    if (a.threads > 0) set_num_threads(static_cast<int>(a.threads));
    const auto file = io::open_model(a.model);
    const nn::LlamaModel model = nn::LlamaModel::load(*file);
    const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
    const auto& c = model.config();

    std::vector<int32_t> prompt, text;
    std::string source;
    if (!a.prompt.empty()) {
      prompt = tok.encode(a.prompt);
      source = "--prompt";
    } else {
      const auto slice = nn::TextSlice::parse(a.eval, a.eval_slice);
      const int64_t want = a.score_next > 0 ? a.passages * (a.prompt_tokens + a.score_next) : a.prompt_tokens;
      text = nn::tokenize_slice(tok, slice, want);
      prompt.assign(text.begin(), text.begin() + std::min<int64_t>(a.prompt_tokens, static_cast<int64_t>(text.size())));
      source = slice.describe();
    }
    const int64_t max_tokens = static_cast<int64_t>(prompt.size()) + a.n;

    kv::Eviction comp{a.policy == "streaming" ? nullptr : kv::make_scorer(a.scorer), make_policy(a), a.budget};
    std::printf("model: %s (%lld layers x %lld KV heads, head_dim %lld)\nprompt: %zu tokens from %s\n"
                "compressor: %s; compress after the prompt%s\n\n",
                a.model.filename().string().c_str(), static_cast<long long>(c.n_layers),
                static_cast<long long>(c.n_kv_heads), static_cast<long long>(c.head_dim), prompt.size(),
                source.c_str(), kv::describe(comp).c_str(),
                a.decode ? (" and every " + std::to_string(a.every) + " decode step(s)").c_str() : "");

    if (a.score_next > 0) {
      require(!text.empty(), "--score-next reads its passages from --eval, not --prompt");
      score_next(model, comp, text, a.prompt_tokens, a.score_next, a.passages);
    }
    if (a.n <= 0) return;

    nn::LlamaSession dense(model, max_tokens);
    const auto [want, dense_s] = greedy(dense, prompt, a.n, c.vocab_size, tok.eos_id());
    kv::Session session(model, max_tokens, comp, kv::Schedule{true, a.decode, a.every});
    const auto [got, kv_s] = greedy(session, prompt, a.n, c.vocab_size, tok.eos_id());

    // What a dense cache of the same per-head layout holds for the same tokens.
    const uint64_t full = static_cast<uint64_t>(session.position() * c.n_layers * c.n_kv_heads) *
                          session.cache().bytes_per_token();
    size_t agree = 0;
    while (agree < std::min(want.size(), got.size()) && want[agree] == got[agree]) ++agree;
    std::printf("dense cache:\n%s\n\ncompressed cache:\n%s\n\n", tok.decode(want).c_str(), tok.decode(got).c_str());
    std::printf("identical for the first %zu of %zu generated tokens\n", agree, got.size());
    const double held = static_cast<double>(session.cache_bytes());
    std::printf("cache after generation: %lld tokens, %.2f MB held vs %.2f MB for every token (%.1f%%); "
                "%lld tokens evicted\n",
                static_cast<long long>(session.cache().total_tokens()), held / 1e6, static_cast<double>(full) / 1e6,
                100.0 * held / static_cast<double>(full), static_cast<long long>(session.evicted()));
    std::printf("decode: %.1f tok/s dense, %.1f tok/s compressed\n", static_cast<double>(want.size()) / dense_s,
                static_cast<double>(got.size()) / kv_s);
  });
}
