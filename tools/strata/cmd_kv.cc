// `strata kv-eval`: how far KV-cache eviction moves a model, for every scorer x budget policy at a
// few budgets, on long real text:
//   decode   windows of the text: the first P tokens are read and the cache compressed to the
//            budget, then the next D tokens are read one at a time with the cache held at the
//            budget after every step; each step's next-token distribution is compared with the
//            full-cache model's (KL, perplexity, top-1 agreement).
//   needle   a fact sentence inserted at several depths of real text, a question at the end (chat
//            template), the greedy answer checked by string match.
//   layers   each layer's relative attention-output error when only that layer is compressed.
// Budgets are fractions of the prompt (P tokens for decode, the haystack's tokens for the needle),
// in tokens per KV head; "allocated" is strata's budget allocator over measured per-layer
// sensitivities (kv/allocate.hpp) on calibration text that does not overlap the evaluation text.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/allocate.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::cli {

namespace {

struct Options {
  std::string model = "models/smollm2-135m-instruct-q4_1.gguf";
  std::string text = "../shared/data/corpora/moby_dick.txt";
  std::string eval_slice = "0.5:0.6", calib_slice = "0.1:0.2", needle_slice = "0.3:0.4";
  std::string report = "kv-eval-report";
  std::vector<double> budgets = {0.1, 0.2, 0.5}, needle_budgets = {0.2},
                      depths = {0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95};
  std::vector<std::string> scorers = {"h2o", "tova", "snapkv", "keynorm", "chunkkv", "random"};
  std::vector<std::string> policies = {"uniform", "pyramid", "adakv", "allocated"};
  std::vector<std::string> needle_scorers = {"snapkv", "tova", "h2o", "chunkkv"};
  std::string needle = "The special magic number is 4721.";
  std::string question = "What is the special magic number mentioned in the text above?";
  std::string answer = "4721";
  // Windows of 2,048 tokens: a 2,000-token prompt, 47 tokens read one at a time, and the last's target.
  int64_t prefill = 2000, decode = 47, windows = 3, needle_tokens = 1024, probe = 16, answer_tokens = 20;
  int64_t sinks = 4, recent = 16;
  // Protected recent window as a share of each layer's budget (H2O: 0.5); several values: every
  // scored policy is measured with each (the scorer's prompt pass is shared).
  std::vector<double> recent_shares = {0.5};
  double layer_budget = 0.2;
  bool skip_decode = false, skip_needle = false, skip_layers = false;
  bool needle_decode = false;  // also hold the budget while answering (default: compress the prompt only)
};

// "snapkv/adakv", "snapkv/adakv w75%" (when several recent-window shares are measured), or
// "streaming-llm" (no scorer).
struct Config {
  std::string scorer, policy;
  double recent_share = 0;
  bool show_share = false;
  std::string label() const {
    if (scorer.empty()) return "streaming-llm";
    char share[32];
    std::snprintf(share, sizeof share, " w%.0f%%", 100 * recent_share);
    return scorer + "/" + policy + (show_share ? share : "");
  }
};

std::vector<Config> configs(const std::vector<std::string>& scorers, const std::vector<std::string>& policies,
                            const std::vector<double>& shares) {
  std::vector<Config> out = {{"", "streaming"}};
  for (const auto& s : scorers)
    for (const double w : shares)
      for (const auto& p : policies) out.push_back({s, p, w, shares.size() > 1});
  return out;
}

kv::Policy within_layer(const Options& o, double recent_share) {
  kv::Policy p = kv::Policy::uniform(o.sinks, o.recent);
  p.recent_share = recent_share;
  return p;
}

// Per-layer sensitivity tables, one per scorer and prompt length, measured on calibration text.
class Allocator {
 public:
  Allocator(const nn::LlamaModel& model, std::vector<int32_t> calib, const Options& o)
      : model_(model), calib_(std::move(calib)), o_(o) {}

  const budget::Table& table(const std::string& scorer, int64_t prompt, double recent_share) {
    auto& t = tables_[{scorer, prompt, recent_share}];
    if (!t) {
      require(static_cast<int64_t>(calib_.size()) >= prompt + o_.probe, "kv-eval: the calibration slice has ",
              calib_.size(), " tokens, ", prompt + o_.probe, " are needed");
      auto& probe_ptr = probes_[{scorer, prompt}];
      if (!probe_ptr) {
        const std::span<const int32_t> all(calib_);
        probe_ptr = std::make_unique<kv::AttentionProbe>(
            model_, all.first(static_cast<size_t>(prompt)),
            all.subspan(static_cast<size_t>(prompt), static_cast<size_t>(o_.probe)), kv::make_scorer(scorer));
      }
      const kv::AttentionProbe& probe = *probe_ptr;
      std::vector<int64_t> grid;
      for (const double f : {0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75})
        grid.push_back(std::max(o_.sinks + o_.recent + 1, static_cast<int64_t>(std::llround(f * prompt))));
      t = std::make_unique<budget::Table>(kv::sensitivity_table(probe, within_layer(o_, recent_share), grid));
    }
    return *t;
  }

 private:
  const nn::LlamaModel& model_;
  std::vector<int32_t> calib_;
  const Options& o_;
  std::map<std::pair<std::string, int64_t>, std::unique_ptr<kv::AttentionProbe>> probes_;
  std::map<std::tuple<std::string, int64_t, double>, std::unique_ptr<budget::Table>> tables_;
};

// The policy of a config at `budget` tokens per KV head (the scorer comes from the prompt pass).
kv::Policy policy_for(const Config& c, int64_t budget, int64_t prompt, const Options& o, Allocator& alloc) {
  if (c.scorer.empty()) return kv::Policy::streaming_llm(o.sinks);
  kv::Policy p;
  if (c.policy == "uniform") p = kv::Policy::uniform(o.sinks, o.recent);
  else if (c.policy == "pyramid") p = kv::Policy::pyramid(20, o.sinks, o.recent);
  else if (c.policy == "adakv") p = kv::Policy::adakv(0.2, o.sinks, o.recent);
  else if (c.policy == "allocated")
    p = kv::allocated_policy(alloc.table(c.scorer, prompt, c.recent_share), budget, within_layer(o, c.recent_share));
  else fail("kv-eval: policy '", c.policy, "' is not uniform, pyramid, adakv or allocated");
  p.recent_share = c.recent_share;
  return p;
}

// Reads `prompt` once per scorer (evicting nothing), then forks that session for every config of the
// scorer and every budget and compresses the fork: each fork is then in the state of a session that
// read the prompt under that compressor (kv::Session::fork), without a prefill of its own. `visit`
// gets the config, the budget fraction, the fork and the prompt's last logits (computed over the full
// cache, as a session that compresses after its prefill computes them).
// Budgets are fractions of `base` tokens (the prompt, or the needle's haystack inside its prompt).
void for_each_fork(const nn::LlamaModel& model, std::span<const int32_t> prompt, int64_t max_tokens,
                   const std::vector<Config>& all, const std::vector<double>& budgets, int64_t base,
                   kv::Schedule schedule, const Options& o, Allocator& alloc,
                   const std::function<void(const Config&, double, kv::Session&, const std::vector<float>&)>& visit) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  for (size_t i = 0; i < all.size();) {
    size_t end = i;
    while (end < all.size() && all[end].scorer == all[i].scorer) ++end;
    std::optional<kv::Eviction> observe;
    if (!all[i].scorer.empty()) observe = kv::Eviction{kv::make_scorer(all[i].scorer), kv::Policy::uniform(0, 0), n};
    kv::Session parent(model, max_tokens, std::move(observe), kv::Schedule{.prefill = false});
    parent.forward(prompt, logits.data(), nn::Logits::last);
    for (; i < end; ++i)
      for (const double f : budgets) {
        const int64_t budget = std::llround(f * static_cast<double>(base));
        auto fork = parent.fork(policy_for(all[i], budget, base, o, alloc), budget, schedule);
        fork->compress();
        visit(all[i], f, *fork, logits);
      }
  }
}

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

std::string fmt(double v, int digits = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- decode-time KL and perplexity ----

struct DecodeResult {
  double kl = 0, nll = 0, top1 = 0;
  int64_t count = 0;
};

// A window: tokens [0, P) are the prompt, which `session` has read (and compressed); tokens P .. P +
// D - 1 are read one at a time and each step predicts the token after it.
DecodeResult decode_rest(kv::Session& session, std::span<const int32_t> window, int64_t prompt,
                         const std::vector<std::vector<double>>* reference, std::vector<std::vector<double>>* record) {
  const int64_t vocab = session.model().config().vocab_size, steps = static_cast<int64_t>(window.size()) - prompt - 1;
  std::vector<float> logits(static_cast<size_t>(vocab));
  DecodeResult r;
  std::vector<double> q;
  for (int64_t t = 0; t < steps; ++t) {
    session.forward(window.subspan(static_cast<size_t>(prompt + t), 1), logits.data(), nn::Logits::last);
    nn::log_softmax(logits.data(), vocab, q);
    const int32_t target = window[static_cast<size_t>(prompt + t + 1)];
    r.nll -= q[static_cast<size_t>(target)];
    if (reference) {
      const auto& p = (*reference)[static_cast<size_t>(t)];
      double kl = 0;
      for (int64_t v = 0; v < vocab; ++v) kl += std::exp(p[static_cast<size_t>(v)]) * (p[static_cast<size_t>(v)] - q[static_cast<size_t>(v)]);
      r.kl += kl;
      r.top1 += (std::max_element(p.begin(), p.end()) - p.begin()) == (std::max_element(q.begin(), q.end()) - q.begin());
    }
    if (record) record->push_back(q);
    ++r.count;
  }
  return r;
}

// ---- needle in a haystack ----

struct NeedlePrompt {
  std::vector<int32_t> tokens;
  double depth = 0;
};

// How the model wants a user turn: ChatML when its chat template writes <|im_start|> (with the
// template's default system message, when it has one, as an unedited chat would get it); plain text
// otherwise.
struct ChatFormat {
  std::string before, after;
};

ChatFormat chat_format(const io::Model& file) {
  const auto& meta = file.metadata();
  const auto it = meta.find("tokenizer.chat_template");
  const std::string tmpl = it != meta.end() && it->is_string() ? it->get<std::string>() : std::string();
  if (tmpl.find("<|im_start|>") == std::string::npos) return {"", "\n\nAnswer:"};
  ChatFormat f;
  const std::string sys_open = "<|im_start|>system\n";
  const size_t s = tmpl.find(sys_open);
  const size_t e = s == std::string::npos ? s : tmpl.find("<|im_end|>", s);
  if (e != std::string::npos) {
    const std::string message = tmpl.substr(s + sys_open.size(), e - s - sys_open.size());
    // A literal message only: a template that fills it from a variable has none of its own.
    if (message.find_first_of("{}'\"+") == std::string::npos) f.before = sys_open + message + "<|im_end|>\n";
  }
  f.before += "<|im_start|>user\n";
  f.after = "<|im_end|>\n<|im_start|>assistant\n";
  return f;
}

std::vector<NeedlePrompt> needle_prompts(const nn::BpeTokenizer& tok, const ChatFormat& chat,
                                         const std::vector<int32_t>& haystack, const Options& o) {
  const std::string text = tok.decode(haystack);
  std::vector<NeedlePrompt> out;
  for (const double d : o.depths) {
    require(d >= 0 && d <= 1, "kv-eval: needle depth ", d, " is not in [0, 1]");
    // At the first sentence end after the depth, so the needle does not cut a sentence.
    size_t at = text.find(". ", static_cast<size_t>(d * static_cast<double>(text.size())));
    at = at == std::string::npos ? text.size() : at + 2;
    const std::string prompt =
        chat.before + text.substr(0, at) + o.needle + " " + text.substr(at) + "\n\n" + o.question + chat.after;
    out.push_back({tok.encode(prompt, nn::BpeEncodeOptions{.parse_special = true, .add_special = false}),
                   static_cast<double>(at) / static_cast<double>(text.size())});
  }
  return out;
}

// Greedy answer of `session`, which has read the prompt (and compressed it); `logits` are the prompt's
// last logits, computed over the full cache as in a session that compresses after its prefill.
std::string answer(kv::Session& session, const nn::BpeTokenizer& tok, std::vector<float> logits, const Options& o) {
  const auto im_end = tok.find("<|im_end|>");
  std::vector<int32_t> out;
  for (int64_t i = 0; i < o.answer_tokens; ++i) {
    const int32_t next = argmax(logits);
    if (next == tok.eos_id() || (im_end && next == *im_end)) break;
    out.push_back(next);
    if (i + 1 < o.answer_tokens) session.forward(std::span<const int32_t>(&next, 1), logits.data(), nn::Logits::last);
  }
  return tok.decode(out, true);
}

// ---- report ----

struct Table {
  std::string title;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

std::string markdown(const Table& t) {
  std::ostringstream s;
  s << "### " << t.title << "\n\n|";
  for (const auto& h : t.header) s << ' ' << h << " |";
  s << "\n|";
  for (size_t i = 0; i < t.header.size(); ++i) s << "---|";
  s << '\n';
  for (const auto& r : t.rows) {
    s << '|';
    for (const auto& c : r) s << ' ' << c << " |";
    s << '\n';
  }
  return s.str();
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path);
  require(static_cast<bool>(f), "kv-eval: cannot write ", path.string());
  f << text;
  require(static_cast<bool>(f), "kv-eval: writing ", path.string(), " failed");
}

std::string percent(double f) { return fmt(100 * f, 0) + "%"; }

}  // namespace

void register_kv(CLI::App& app) {
  auto* cmd = app.add_subcommand("kv-eval", "Measure KV-cache eviction: decode-time KL/perplexity, needle retrieval, "
                                            "per-layer attention error, for every scorer x budget policy");
  static Options o;
  cmd->add_option("--model", o.model, "GGUF llama model with a tokenizer and a chat template")->capture_default_str();
  cmd->add_option("--text", o.text, "long text (evaluation windows, calibration, needle haystack)")
      ->capture_default_str();
  cmd->add_option("--eval-slice", o.eval_slice, "decode-time windows come from here")->capture_default_str();
  cmd->add_option("--calib-slice", o.calib_slice, "per-layer sensitivities for 'allocated' are measured here")
      ->capture_default_str();
  cmd->add_option("--needle-slice", o.needle_slice, "the needle's haystack")->capture_default_str();
  cmd->add_option("--report", o.report, "report directory (tables as .md and .json, plots)")->capture_default_str();
  cmd->add_option("--budgets", o.budgets, "budgets as fractions of the prompt, tokens per KV head")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--scorers", o.scorers, "h2o, tova, snapkv, keynorm, chunkkv, random")->delimiter(',');
  cmd->add_option("--policies", o.policies, "uniform, pyramid, adakv, allocated (StreamingLLM always runs)")
      ->delimiter(',');
  cmd->add_option("--prefill,-P", o.prefill, "prompt tokens per window, compressed after prefill")
      ->capture_default_str();
  cmd->add_option("--decode,-D", o.decode, "tokens then read one at a time and scored")->capture_default_str();
  cmd->add_option("--windows", o.windows, "consecutive windows of P + D + 1 tokens")->capture_default_str();
  cmd->add_option("--sinks", o.sinks)->capture_default_str();
  cmd->add_option("--recent", o.recent, "newest tokens every head keeps")->capture_default_str();
  cmd->add_option("--recent-share", o.recent_shares,
                  "or this share of each layer's budget when more (0.5: H2O's half heavy hitters, half recent); "
                  "a list measures each")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--probe", o.probe, "probe queries for per-layer attention errors")->capture_default_str();
  cmd->add_option("--needle-tokens", o.needle_tokens, "haystack tokens")->capture_default_str();
  cmd->add_option("--needle-budgets", o.needle_budgets, "fractions of the haystack")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--needle-scorers", o.needle_scorers)->delimiter(',');
  cmd->add_option("--depths", o.depths, "needle depths, fractions of the haystack")->delimiter(',');
  cmd->add_option("--needle", o.needle, "the fact sentence")->capture_default_str();
  cmd->add_option("--question", o.question)->capture_default_str();
  cmd->add_option("--answer", o.answer, "a correct answer contains this")->capture_default_str();
  cmd->add_option("--layer-budget", o.layer_budget, "budget of the per-layer error table")->capture_default_str();
  cmd->add_flag("--skip-decode", o.skip_decode);
  cmd->add_flag("--skip-needle", o.skip_needle);
  cmd->add_flag("--skip-layers", o.skip_layers);
  cmd->add_flag("--needle-decode", o.needle_decode,
                "hold the cache at the budget while answering too (default: compress the prompt once, as SnapKV)");
  cmd->callback([] {
    const auto t_start = std::chrono::steady_clock::now();
    require(o.prefill > o.sinks + o.recent && o.decode >= 1 && o.windows >= 1, "kv-eval: need P > sinks + recent (",
            o.sinks + o.recent, "), D >= 1 and at least one window");
    // Settings are checked before the model is read, not when the first window needs them.
    for (const auto& p : o.policies)
      require(p == "uniform" || p == "pyramid" || p == "adakv" || p == "allocated", "kv-eval: policy '", p,
              "' is not uniform, pyramid, adakv or allocated");
    for (const auto* names : {&o.scorers, &o.needle_scorers})
      for (const auto& s : *names) kv::make_scorer(s);
    for (const double w : o.recent_shares)
      require(w >= 0 && w < 1, "kv-eval: --recent-share ", w, " is not in [0, 1)");
    for (const auto* fractions : {&o.budgets, &o.needle_budgets})
      for (const double f : *fractions) require(f > 0 && f <= 1, "kv-eval: budget ", f, " is not in (0, 1]");
    const auto file = io::open_model(o.model);
    const nn::LlamaModel model = nn::LlamaModel::load(*file);
    require(file->metadata().contains("tokenizer.ggml.tokens"), o.model, ": no tokenizer in the file");
    const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
    const nn::TextSlice es = nn::TextSlice::parse(o.text, o.eval_slice);
    const nn::TextSlice cs = nn::TextSlice::parse(o.text, o.calib_slice);
    const nn::TextSlice ns = nn::TextSlice::parse(o.text, o.needle_slice);
    require(!cs.overlaps(es) && !cs.overlaps(ns), "kv-eval: the calibration slice (", cs.describe(),
            ") overlaps the evaluation or needle text");
    const int64_t calib_len = std::max(o.prefill, o.needle_tokens) + o.probe;
    Allocator alloc(model, nn::tokenize_slice(tok, cs, calib_len), o);
    const int64_t n_layers = model.config().n_layers;
    std::filesystem::create_directories(o.report);
    nlohmann::json json;
    json["model"] = o.model;
    json["sinks"] = o.sinks;
    json["recent"] = o.recent;
    json["recent_shares"] = o.recent_shares;
    std::string md = "# KV-cache eviction: " + o.model + "\n\n";
    auto emit = [&](const Table& t) {
      const std::string s = markdown(t);
      std::printf("\n%s", s.c_str());
      std::fflush(stdout);
      md += s + "\n";
    };
    std::string shares;
    for (const double w : o.recent_shares) shares += (shares.empty() ? "" : ", ") + percent(w);
    std::printf("model %s; sinks %lld, recent window %lld tokens or %s of a layer's budget, whichever is more\n",
                o.model.c_str(), static_cast<long long>(o.sinks), static_cast<long long>(o.recent), shares.c_str());

    // ---- (a) decode-time KL and perplexity ----
    std::map<std::string, std::map<double, DecodeResult>> decode;
    DecodeResult dense_total;
    if (!o.skip_decode) {
      const int64_t len = o.prefill + o.decode + 1;
      const auto text = nn::tokenize_slice(tok, es, o.windows * len);
      require(static_cast<int64_t>(text.size()) >= o.windows * len, "kv-eval: ", es.describe(), " has ", text.size(),
              " tokens, ", o.windows, " windows need ", o.windows * len);
      std::printf("decode: %lld windows of %s, P = %lld prompt tokens compressed at prefill, then D = %lld tokens "
                  "one at a time with the cache held at the budget\n",
                  static_cast<long long>(o.windows), es.describe().c_str(), static_cast<long long>(o.prefill),
                  static_cast<long long>(o.decode));
      const auto all = configs(o.scorers, o.policies, o.recent_shares);
      for (int64_t w = 0; w < o.windows; ++w) {
        const std::span<const int32_t> window(text.data() + w * len, static_cast<size_t>(len));
        const auto prompt = window.first(static_cast<size_t>(o.prefill));
        std::vector<std::vector<double>> reference;
        {
          kv::Session dense(model, len);
          std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
          dense.forward(prompt, logits.data(), nn::Logits::last);
          const auto dr = decode_rest(dense, window, o.prefill, nullptr, &reference);
          dense_total.nll += dr.nll;
          dense_total.count += dr.count;
        }
        auto t0 = std::chrono::steady_clock::now();
        for_each_fork(model, prompt, len, all, o.budgets, o.prefill,
                      kv::Schedule{.prefill = true, .decode = true, .every = 1}, o, alloc, [&](const Config& c, double f, kv::Session& session, const std::vector<float>&) {
                        const auto r = decode_rest(session, window, o.prefill, &reference, nullptr);
                        auto& acc = decode[c.label()][f];
                        acc.kl += r.kl;
                        acc.nll += r.nll;
                        acc.top1 += r.top1;
                        acc.count += r.count;
                        std::printf("  window %lld %-18s %4s (%lld tokens): KL %.4f  (%.1f s)\n",
                                    static_cast<long long>(w), c.label().c_str(), percent(f).c_str(),
                                    static_cast<long long>(session.eviction()->budget),
                                    r.kl / static_cast<double>(r.count), seconds_since(t0));
                        std::fflush(stdout);
                        t0 = std::chrono::steady_clock::now();
                      });
      }
      const double dense_ppl = std::exp(dense_total.nll / static_cast<double>(dense_total.count));
      Table kl{"Decode-time KL(full || compressed), nats per token (" + std::to_string(dense_total.count) +
                   " positions; budget = fraction of the P = " + std::to_string(o.prefill) + "-token prompt)",
               {"policy"},
               {}};
      Table ppl{"Decode-time perplexity (full cache: " + fmt(dense_ppl, 2) + ") / top-1 agreement with the full cache",
                {"policy"},
                {}};
      for (const double f : o.budgets) {
        const std::string h = percent(f) + " (" + std::to_string(std::llround(f * static_cast<double>(o.prefill))) + ")";
        kl.header.push_back(h);
        ppl.header.push_back(h);
      }
      json["decode"]["prefill"] = o.prefill;
      json["decode"]["decode"] = o.decode;
      json["decode"]["windows"] = o.windows;
      json["decode"]["slice"] = es.describe();
      json["decode"]["full_perplexity"] = dense_ppl;
      for (const auto& c : all) {
        std::vector<std::string> kr = {c.label()}, pr = {c.label()};
        for (const double f : o.budgets) {
          const auto& r = decode[c.label()][f];
          const double n = static_cast<double>(r.count);
          kr.push_back(fmt(r.kl / n, 4));
          pr.push_back(fmt(std::exp(r.nll / n), 2) + " / " + fmt(100 * r.top1 / n, 1) + "%");
          json["decode"]["results"].push_back({{"policy", c.label()},
                                               {"budget", f},
                                               {"tokens", std::llround(f * static_cast<double>(o.prefill))},
                                               {"kl", r.kl / n},
                                               {"perplexity", std::exp(r.nll / n)},
                                               {"top1", r.top1 / n}});
        }
        kl.rows.push_back(kr);
        ppl.rows.push_back(pr);
      }
      emit(kl);
      emit(ppl);
      // Against StreamingLLM at each budget: the best policy of all, and the best attention-aware
      // scorer (H2O, TOVA, SnapKV) with a pyramid or head-wise budget.
      Table vs{"Against StreamingLLM: KL of the best policy, and of the best H2O/TOVA/SnapKV with pyramid or "
               "head-wise (AdaKV) budgets; change = (KL - StreamingLLM's) / StreamingLLM's",
               {"budget", "streaming-llm", "best policy", "KL", "change", "best attention-aware pyramid/adakv", "KL",
                "change"},
               {}};
      for (const double f : o.budgets) {
        auto mean_kl = [&](const std::string& label) {
          const auto& r = decode[label][f];
          return r.kl / static_cast<double>(r.count);
        };
        const double base = mean_kl("streaming-llm");
        std::string best, best_aware;
        for (const auto& c : all) {
          if (c.scorer.empty()) continue;
          if (best.empty() || mean_kl(c.label()) < mean_kl(best)) best = c.label();
          const bool aware = c.scorer == "h2o" || c.scorer == "tova" || c.scorer == "snapkv";
          if (aware && (c.policy == "pyramid" || c.policy == "adakv") &&
              (best_aware.empty() || mean_kl(c.label()) < mean_kl(best_aware)))
            best_aware = c.label();
        }
        auto change = [&](const std::string& label) {
          return label.empty() ? std::string("-") : fmt(100 * (mean_kl(label) - base) / base, 1) + "%";
        };
        auto kl_of = [&](const std::string& label) { return label.empty() ? std::string("-") : fmt(mean_kl(label), 4); };
        vs.rows.push_back({percent(f), fmt(base, 4), best.empty() ? "-" : best, kl_of(best), change(best),
                           best_aware.empty() ? "-" : best_aware, kl_of(best_aware), change(best_aware)});
        json["decode"]["versus_streaming"].push_back({{"budget", f},
                                                      {"streaming_llm", base},
                                                      {"best", best},
                                                      {"best_attention_aware_pyramid_or_adakv", best_aware}});
      }
      emit(vs);
      // KL vs budget, one line per policy (StreamingLLM and the attention-aware scorers).
      std::ostringstream dat, gp;
      for (const auto& c : all) {
        dat << "# " << c.label() << "\n";
        for (const double f : o.budgets) {
          const auto& r = decode[c.label()][f];
          dat << 100 * f << ' ' << r.kl / static_cast<double>(r.count) << '\n';
        }
        dat << "\n\n";
      }
      write_file(std::filesystem::path(o.report) / "kl_vs_budget.dat", dat.str());
      gp << "set terminal pngcairo size 1000,700 font 'sans,10'\nset output 'kl_vs_budget.png'\n"
         << "set title 'Decode-time KL to the full cache vs KV budget'\nset xlabel 'budget (% of the prompt)'\n"
         << "set ylabel 'KL (nats / token)'\nset logscale y\nset key outside right\nset grid\nplot ";
      for (size_t i = 0; i < all.size(); ++i)
        gp << (i ? ", " : "") << "'kl_vs_budget.dat' index " << i << " using 1:2 with linespoints "
           << (all[i].scorer.empty() ? "lw 3 dt 2 " : "") << "title '" << all[i].label() << "'";
      gp << '\n';
      write_file(std::filesystem::path(o.report) / "kl_vs_budget.gp", gp.str());
    }

    // ---- (b) needle in a haystack ----
    if (!o.skip_needle) {
      const auto haystack = nn::tokenize_slice(tok, ns, o.needle_tokens);
      const auto prompts = needle_prompts(tok, chat_format(*file), haystack, o);
      std::printf("\nneedle: \"%s\" in %lld tokens of %s; question \"%s\"; correct if the answer contains \"%s\"\n",
                  o.needle.c_str(), static_cast<long long>(haystack.size()), ns.describe().c_str(), o.question.c_str(),
                  o.answer.c_str());
      const auto all = configs(o.needle_scorers, o.policies, o.recent_shares);
      Table t{"Needle retrieval, " + std::to_string(haystack.size()) + "-token haystack, depths " +
                  [&] {
                    std::string s;
                    for (const auto& p : prompts) s += (s.empty() ? "" : "/") + percent(p.depth);
                    return s;
                  }() +
                  " (correct depths marked 1)",
              {"policy", "budget", "accuracy", "per depth"},
              {}};
      const int64_t hay = static_cast<int64_t>(haystack.size());
      // Per (policy, budget): one character per depth, '1' where the answer was right.
      std::map<std::pair<std::string, double>, std::string> per_depth;
      auto record = [&](const std::string& label, double f, const NeedlePrompt& p, const std::string& a) {
        const bool ok = a.find(o.answer) != std::string::npos;
        per_depth[{label, f}] += ok ? '1' : '0';
        json["needle"]["answers"].push_back(
            {{"policy", label}, {"budget", f}, {"depth", p.depth}, {"answer", a}, {"correct", ok}});
        std::printf("  %-18s %4s depth %s: %s %s\n", label.c_str(), percent(f).c_str(), percent(p.depth).c_str(),
                    ok ? "ok " : "-- ", a.c_str());
        std::fflush(stdout);
      };
      const kv::Schedule schedule{.prefill = true, .decode = o.needle_decode, .every = 1};
      for (const auto& p : prompts) {
        const int64_t max_tokens = static_cast<int64_t>(p.tokens.size()) + o.answer_tokens;
        {
          kv::Session full(model, max_tokens);
          std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
          full.forward(p.tokens, logits.data(), nn::Logits::last);
          record("full cache", 1.0, p, answer(full, tok, logits, o));
        }
        for_each_fork(model, p.tokens, max_tokens, all, o.needle_budgets, hay, schedule, o, alloc,
                      [&](const Config& c, double f, kv::Session& session, const std::vector<float>& logits) {
                        record(c.label(), f, p, answer(session, tok, logits, o));
                      });
      }
      auto row = [&](const std::string& label, double f) {
        const std::string& per = per_depth[{label, f}];
        const double acc = static_cast<double>(std::count(per.begin(), per.end(), '1')) /
                           static_cast<double>(per.size());
        const std::string budget = f == 1.0 ? "100%" : percent(f) + " (" + std::to_string(std::llround(f * static_cast<double>(hay))) + ")";
        t.rows.push_back({label, budget, percent(acc), per});
        json["needle"]["results"].push_back({{"policy", label}, {"budget", f}, {"accuracy", acc}, {"per_depth", per}});
      };
      row("full cache", 1.0);
      for (const double f : o.needle_budgets)
        for (const auto& c : all) row(c.label(), f);
      json["needle"]["needle"] = o.needle;
      json["needle"]["question"] = o.question;
      json["needle"]["haystack"] = ns.describe();
      emit(t);
      // The best policy at each budget against the full cache.
      auto accuracy = [&](const std::string& label, double f) {
        const std::string& per = per_depth[{label, f}];
        return static_cast<double>(std::count(per.begin(), per.end(), '1')) / static_cast<double>(per.size());
      };
      const double full = accuracy("full cache", 1.0);
      Table best{"Needle: the best policy at each budget against the full cache (" + percent(full) + ")",
                 {"budget", "best policy", "accuracy", "of the full cache's", "streaming-llm"},
                 {}};
      for (const double f : o.needle_budgets) {
        std::string top;
        for (const auto& c : all)
          if (!c.scorer.empty() && (top.empty() || accuracy(c.label(), f) > accuracy(top, f))) top = c.label();
        if (top.empty()) continue;
        best.rows.push_back({percent(f), top, percent(accuracy(top, f)),
                             full > 0 ? percent(accuracy(top, f) / full) : "-", percent(accuracy("streaming-llm", f))});
      }
      emit(best);
    }

    // ---- (c) per-layer attention-output error ----
    if (!o.skip_layers) {
      const auto text = nn::tokenize_slice(tok, es, o.prefill + o.probe);
      require(static_cast<int64_t>(text.size()) >= o.prefill + o.probe, "kv-eval: ", es.describe(),
              " is too short for the layer probe");
      const std::span<const int32_t> all_tokens(text);
      const auto prompt = all_tokens.first(static_cast<size_t>(o.prefill));
      const auto probe = all_tokens.subspan(static_cast<size_t>(o.prefill), static_cast<size_t>(o.probe));
      const int64_t b = std::llround(o.layer_budget * static_cast<double>(o.prefill));
      std::vector<std::pair<std::string, std::vector<double>>> cols;
      for (const auto& s : o.scorers) {
        const kv::AttentionProbe ap(model, prompt, probe, kv::make_scorer(s));
        if (cols.empty()) cols.push_back({"streaming-llm", ap.errors(kv::Policy::streaming_llm(o.sinks), b)});
        for (const auto& c : configs({s}, o.policies, o.recent_shares)) {
          if (c.scorer.empty()) continue;
          cols.push_back({c.label(), ap.errors(policy_for(c, b, o.prefill, o, alloc), b)});
        }
      }
      Table t{"Relative attention-output error per layer, only that layer compressed to " + percent(o.layer_budget) +
                  " (" + std::to_string(b) + " tokens per KV head on average), " + std::to_string(o.probe) +
                  " probe queries after the first window's prompt",
              {"layer"},
              {}};
      Table summary{"Attention-output error over layers at " + percent(o.layer_budget) + ": mean / worst layer",
                    {"policy", "mean", "worst", "worst layer"},
                    {}};
      for (const auto& c : cols) {
        t.header.push_back(c.first);
        const auto worst = std::max_element(c.second.begin(), c.second.end());
        double mean = 0;
        for (const double e : c.second) mean += e / static_cast<double>(c.second.size());
        summary.rows.push_back({c.first, fmt(mean), fmt(*worst), std::to_string(worst - c.second.begin())});
        json["layers"]["errors"][c.first] = c.second;
      }
      for (int64_t l = 0; l < n_layers; ++l) {
        std::vector<std::string> r = {std::to_string(l)};
        for (const auto& c : cols) r.push_back(fmt(c.second[static_cast<size_t>(l)]));
        t.rows.push_back(r);
      }
      json["layers"]["budget"] = o.layer_budget;
      json["layers"]["tokens"] = b;
      emit(summary);
      md += markdown(t) + "\n";
      std::ostringstream dat, gp;
      for (const auto& c : cols) {
        dat << "# " << c.first << '\n';
        for (size_t l = 0; l < c.second.size(); ++l) dat << l << ' ' << c.second[l] << '\n';
        dat << "\n\n";
      }
      write_file(std::filesystem::path(o.report) / "layer_error.dat", dat.str());
      gp << "set terminal pngcairo size 1000,700 font 'sans,10'\nset output 'layer_error.png'\n"
         << "set title 'Relative attention-output error per layer at " << percent(o.layer_budget)
         << "'\nset xlabel 'layer'\nset ylabel 'relative error'\nset key outside right\nset grid\nplot ";
      for (size_t i = 0; i < cols.size(); ++i)
        gp << (i ? ", " : "") << "'layer_error.dat' index " << i << " using 1:2 with linespoints title '"
           << cols[i].first << "'";
      gp << '\n';
      write_file(std::filesystem::path(o.report) / "layer_error.gp", gp.str());
      // The allocations themselves, for the record.
      if (std::find(o.policies.begin(), o.policies.end(), "allocated") != o.policies.end())
        for (const auto& s : o.scorers)
          for (const double w : o.recent_shares)
            for (const double f : o.budgets) {
              const int64_t tokens = std::llround(f * static_cast<double>(o.prefill));
              json["allocations"][s][percent(w)][fmt(f, 2)] =
                  kv::allocate_layer_budgets(alloc.table(s, o.prefill, w), tokens);
            }
    }

    write_file(std::filesystem::path(o.report) / "report.md", md);
    json["seconds"] = seconds_since(t_start);
    write_file(std::filesystem::path(o.report) / "report.json", json.dump(2) + "\n");
    if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
      for (const char* gp : {"kl_vs_budget.gp", "layer_error.gp"}) {
        if (!std::filesystem::exists(std::filesystem::path(o.report) / gp)) continue;
        const std::string cmd = "cd '" + o.report + "' && gnuplot " + gp + " 2>>gnuplot.log";
        if (std::system(cmd.c_str()) != 0) std::printf("gnuplot failed on %s; see gnuplot.log\n", gp);
      }
    } else {
      std::printf("gnuplot is not installed: plots not rendered (.dat and .gp files are in the report)\n");
    }
    std::printf("\nreport: %s/report.md, report.json, kl_vs_budget.png, layer_error.png (%.0f s)\n",
                o.report.c_str(), seconds_since(t_start));
  });
}

}  // namespace strata::cli
