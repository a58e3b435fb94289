#include "strata/kv/evaluate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <random>

#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::kv {

namespace {

constexpr std::string_view kBudgetingNames[] = {"uniform", "pyramid", "adakv", "allocated"};

int64_t tokens_of(double fraction, int64_t base) { return std::llround(fraction * static_cast<double>(base)); }

int32_t argmax(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

void report(const Progress& progress, int64_t done, int64_t total) {
  if (progress) progress(done, total);
}

// Sums over the positions a session then reads one at a time: tokens [prompt, n - 1) of `window`,
// each predicting the token after it. `reference` (log-probabilities of the full cache per step)
// adds KL and top-1 agreement; `record` collects this session's.
struct Scored {
  double kl = 0, nll = 0;
  int64_t top1 = 0, count = 0;
};
Scored score_rest(Session& session, std::span<const int32_t> window, int64_t prompt,
                  const std::vector<std::vector<double>>* reference, std::vector<std::vector<double>>* record) {
  const int64_t vocab = session.model().config().vocab_size;
  const int64_t steps = static_cast<int64_t>(window.size()) - prompt - 1;
  std::vector<float> logits(static_cast<size_t>(vocab));
  std::vector<double> q;
  Scored r;
  for (int64_t t = 0; t < steps; ++t) {
    session.forward(window.subspan(static_cast<size_t>(prompt + t), 1), logits.data(), nn::Logits::last);
    nn::log_softmax(logits.data(), vocab, q);
    r.nll -= q[static_cast<size_t>(window[static_cast<size_t>(prompt + t + 1)])];
    if (reference) {
      const auto& p = (*reference)[static_cast<size_t>(t)];
      double kl = 0;
      for (size_t v = 0; v < p.size(); ++v) kl += std::exp(p[v]) * (p[v] - q[v]);
      r.kl += kl;
      r.top1 += std::max_element(p.begin(), p.end()) - p.begin() == std::max_element(q.begin(), q.end()) - q.begin();
    }
    if (record) record->push_back(q);
    ++r.count;
  }
  return r;
}

}  // namespace

Budgeting parse_budgeting(std::string_view name) {
  for (size_t i = 0; i < std::size(kBudgetingNames); ++i)
    if (name == kBudgetingNames[i]) return static_cast<Budgeting>(i);
  fail("kv evaluation: policy '", name, "' is not uniform, pyramid, adakv or allocated");
}

std::string_view budgeting_name(Budgeting b) { return kBudgetingNames[static_cast<size_t>(b)]; }

std::string EvalConfig::label() const {
  if (streaming()) return "streaming-llm";
  char share[32];
  std::snprintf(share, sizeof share, " w%.0f%%", 100 * recent_share);
  return scorer + "/" + std::string(budgeting_name(budgeting)) + (show_share ? share : "");
}

std::vector<EvalConfig> eval_configs(std::span<const std::string> scorers, std::span<const Budgeting> rules,
                                     std::span<const double> recent_shares) {
  for (const auto& s : scorers) make_scorer(s);  // throws on an unknown name
  for (const double w : recent_shares)
    require(w >= 0 && w < 1, "kv evaluation: recent share ", w, " is not in [0, 1)");
  std::vector<EvalConfig> out = {EvalConfig{}};
  for (const auto& s : scorers)
    for (const double w : recent_shares)
      for (const Budgeting r : rules) out.push_back({s, r, w, recent_shares.size() > 1});
  return out;
}

AllocationTables::AllocationTables(const nn::LlamaModel& model, std::vector<int32_t> calibration,
                                   EvictionSettings settings)
    : model_(model), calibration_(std::move(calibration)), settings_(std::move(settings)) {}

const budget::Table& AllocationTables::table(const std::string& scorer, int64_t prompt, double recent_share) {
  auto& t = tables_[{scorer, prompt, recent_share}];
  if (t) return *t;
  const int64_t probe = settings_.probe;
  require(static_cast<int64_t>(calibration_.size()) >= prompt + probe, "kv evaluation: the calibration text has ",
          calibration_.size(), " tokens, ", prompt + probe, " are needed (a ", prompt, "-token prompt and ", probe,
          " probe tokens)");
  auto& p = probes_[{scorer, prompt}];
  if (!p) {
    const std::span<const int32_t> all(calibration_);
    p = std::make_unique<AttentionProbe>(model_, all.first(static_cast<size_t>(prompt)),
                                         all.subspan(static_cast<size_t>(prompt), static_cast<size_t>(probe)),
                                         make_scorer(scorer));
  }
  // Each grid budget must hold the protected tokens and leave one to choose.
  std::vector<int64_t> grid;
  for (const double f : settings_.allocation_grid)
    grid.push_back(std::max(settings_.sinks + settings_.recent + 1, tokens_of(f, prompt)));
  t = std::make_unique<budget::Table>(sensitivity_table(*p, within_layer_policy(settings_, recent_share), grid));
  return *t;
}

Policy within_layer_policy(const EvictionSettings& s, double recent_share) {
  Policy p = Policy::uniform(s.sinks, s.recent);
  p.recent_share = recent_share;
  return p;
}

Policy eval_policy(const EvalConfig& c, int64_t budget, int64_t prompt, const EvictionSettings& s,
                   AllocationTables* tables) {
  if (c.streaming()) return Policy::streaming_llm(s.sinks);
  Policy p;
  switch (c.budgeting) {
    case Budgeting::uniform: p = Policy::uniform(s.sinks, s.recent); break;
    case Budgeting::pyramid: p = Policy::pyramid(s.pyramid_beta, s.sinks, s.recent); break;
    case Budgeting::adakv: p = Policy::adakv(s.adakv_floor, s.sinks, s.recent); break;
    case Budgeting::allocated:
      require(tables != nullptr, "kv evaluation: '", c.label(), "' needs calibration tables (AllocationTables)");
      p = allocated_policy(tables->table(c.scorer, prompt, c.recent_share), budget, within_layer_policy(s, c.recent_share));
      break;
  }
  p.recent_share = c.recent_share;
  return p;
}

void for_each_fork(const nn::LlamaModel& model, std::span<const int32_t> prompt, int64_t max_tokens,
                   std::span<const EvalConfig> configs, std::span<const double> fractions, int64_t base,
                   const Schedule& schedule, const EvictionSettings& settings, AllocationTables* tables,
                   const ForkVisitor& visit, const FullVisitor& full) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  size_t first_end = 0;
  for (size_t i = 0; i < configs.size();) {
    size_t end = i;
    while (end < configs.size() && configs[end].scorer == configs[i].scorer) ++end;
    if (i == 0) first_end = end;
    // The parent observes the prompt with the group's scorer and a budget it never exceeds.
    std::optional<Eviction> observe;
    if (!configs[i].streaming()) observe = Eviction{make_scorer(configs[i].scorer), Policy::uniform(0, 0), n};
    Session parent(model, max_tokens, std::move(observe), Schedule{.prefill = false});
    parent.forward(prompt, logits.data(), nn::Logits::last);
    for (; i < end; ++i)
      for (const double f : fractions) {
        require(f > 0, "kv evaluation: budget fraction ", f, " is not positive");
        const int64_t budget = tokens_of(f, base);
        auto fork = parent.fork(eval_policy(configs[i], budget, base, settings, tables), budget, schedule);
        fork->compress();
        visit(configs[i], f, *fork, logits);
      }
    if (full && i == first_end) full(parent, logits);
  }
}

// ---- decode ----

double DecodeRow::perplexity() const { return std::exp(nll / static_cast<double>(count)); }
double DecodeResult::full_perplexity() const { return std::exp(full_nll / static_cast<double>(count)); }

const DecodeRow& DecodeResult::row(const std::string& label, double budget) const {
  for (const auto& r : rows)
    if (r.budget == budget && r.config.label() == label) return r;
  fail("kv evaluation: no decode result for '", label, "' at budget ", budget);
}

std::vector<std::vector<int32_t>> split_windows(std::span<const int32_t> tokens, int64_t length, int64_t count) {
  require(length > 0 && count > 0, "kv evaluation: windows of ", length, " tokens, ", count, " of them");
  require(static_cast<int64_t>(tokens.size()) >= length * count, "kv evaluation: ", tokens.size(), " tokens, ",
          count, " windows of ", length, " need ", length * count);
  std::vector<std::vector<int32_t>> out;
  for (int64_t w = 0; w < count; ++w) {
    const auto s = tokens.subspan(static_cast<size_t>(w * length), static_cast<size_t>(length));
    out.emplace_back(s.begin(), s.end());
  }
  return out;
}

DecodeResult evaluate_decode(const nn::LlamaModel& model, std::span<const std::vector<int32_t>> windows,
                             std::span<const EvalConfig> configs, const DecodeOptions& o, AllocationTables* tables,
                             const Progress& progress) {
  require(!windows.empty(), "kv evaluation: no decode windows");
  for (const auto& w : windows)
    require(static_cast<int64_t>(w.size()) >= o.prefill + 2, "kv evaluation: a decode window of ", w.size(),
            " tokens; a ", o.prefill, "-token prompt needs at least ", o.prefill + 2);
  DecodeResult result;
  result.windows = static_cast<int64_t>(windows.size());
  result.prefill = o.prefill;
  for (const auto& c : configs)
    for (const double f : o.budgets) {
      DecodeRow r;
      r.config = c;
      r.budget = f;
      r.tokens = tokens_of(f, o.prefill);
      result.rows.push_back(std::move(r));
    }
  const int64_t total = result.windows * static_cast<int64_t>(result.rows.size());
  int64_t done = 0;
  for (const auto& window : windows) {
    const std::span<const int32_t> w(window);
    const int64_t len = static_cast<int64_t>(w.size());
    const auto prompt = w.first(static_cast<size_t>(o.prefill));
    std::vector<std::vector<double>> reference;
    {
      Session full(model, len);
      std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
      full.forward(prompt, logits.data(), nn::Logits::last);
      const Scored s = score_rest(full, w, o.prefill, nullptr, &reference);
      result.full_nll += s.nll;
      result.count += s.count;
    }
    // for_each_fork visits config-major, budgets in order: the rows' order.
    size_t k = 0;
    for_each_fork(model, prompt, len, configs, o.budgets, o.prefill, o.schedule, o.eviction, tables,
                  [&](const EvalConfig&, double, Session& fork, std::span<const float>) {
                    const Scored s = score_rest(fork, w, o.prefill, &reference, nullptr);
                    DecodeRow& r = result.rows[k++];
                    r.kl += s.kl;
                    r.nll += s.nll;
                    r.top1 += s.top1;
                    r.count += s.count;
                    r.window_kl.push_back(s.kl / static_cast<double>(s.count));
                    report(progress, ++done, total);
                  });
  }
  return result;
}

// ---- decode-time compression over a long generation ----

std::string GenerationRow::label() const {
  if (!threshold) return config.label();
  char t[48];
  std::snprintf(t, sizeof t, " t>%g", *threshold);
  return config.label() + t;
}

const GenerationRow& GenerationResult::row(const std::string& label, double budget) const {
  for (const auto& r : rows)
    if (r.budget == budget && r.label() == label) return r;
  fail("kv evaluation: no generation result for '", label, "' at budget ", budget);
}

GenerationResult evaluate_generation(const nn::LlamaModel& model, std::span<const std::vector<int32_t>> sequences,
                                     std::span<const EvalConfig> configs, const GenerationOptions& o,
                                     AllocationTables* tables, const Progress& progress) {
  require(o.prompt >= 1 && o.steps >= 1, "kv evaluation: generation needs a prompt (", o.prompt, ") and steps (",
          o.steps, ") of at least one token");
  require(o.every >= 1, "kv evaluation: generation compresses every ", o.every, " steps; must be >= 1");
  require(!o.sample || o.temperature > 0, "kv evaluation: generation temperature ", o.temperature, " must be > 0");
  require(!sequences.empty(), "kv evaluation: no generation sequences");
  const int64_t length = o.prompt + o.steps;
  for (const auto& q : sequences)
    require(static_cast<int64_t>(q.size()) >= (o.sample ? o.prompt : length), "kv evaluation: a sequence of ",
            q.size(), " tokens; generation needs ", o.sample ? o.prompt : length);
  GenerationResult result;
  result.sequences = static_cast<int64_t>(sequences.size());
  result.length = length;
  for (const auto& c : configs) {
    require(c.budgeting != Budgeting::allocated || c.streaming() || tables != nullptr, "kv evaluation: '",
            c.label(), "' needs calibration tables (AllocationTables) for its layer budgets");
    for (const double f : o.budgets) {
      require(f > 0, "kv evaluation: budget fraction ", f, " is not positive");
      GenerationRow r;
      r.config = c;
      r.budget = f;
      r.tokens = tokens_of(f, length);
      result.rows.push_back(std::move(r));
    }
  }
  for (const auto& c : configs)
    for (const double t : o.thresholds) {
      if (c.streaming() || c.budgeting != Budgeting::uniform) continue;
      GenerationRow r;
      r.config = c;
      r.threshold = t;
      r.tokens = length;
      result.rows.push_back(std::move(r));
    }
  const int64_t vocab = model.config().vocab_size;
  const Schedule schedule{.prefill = true, .decode = true, .every = o.every};
  const auto& c = model.config();
  const double heads = static_cast<double>(c.n_layers * c.n_kv_heads);
  int64_t done = 0;
  for (const auto& seq : sequences) {
    std::vector<int32_t> tokens(seq.begin(), seq.begin() + (o.sample ? o.prompt : length));
    Session full(model, length);
    std::vector<std::unique_ptr<Session>> sessions;
    for (const auto& r : result.rows) {
      Policy policy = r.threshold ? Policy::thresholded(*r.threshold, o.eviction.sinks, o.eviction.recent)
                                  : eval_policy(r.config, r.tokens, length, o.eviction, tables);
      std::shared_ptr<Scorer> scorer = r.config.streaming() ? nullptr : make_scorer(r.config.scorer);
      sessions.push_back(std::make_unique<Session>(model, length, Eviction{std::move(scorer), policy, r.tokens}, schedule));
    }
    std::vector<float> full_logits(static_cast<size_t>(vocab));
    std::vector<std::vector<float>> last(sessions.size(), std::vector<float>(static_cast<size_t>(vocab)));
    const std::span<const int32_t> prompt(tokens.data(), static_cast<size_t>(o.prompt));
    full.forward(prompt, full_logits.data(), nn::Logits::last);
    for (size_t k = 0; k < sessions.size(); ++k) sessions[k]->forward(prompt, last[k].data(), nn::Logits::last);
    std::mt19937_64 rng(o.seed + static_cast<uint64_t>(&seq - sequences.data()));
    std::vector<double> p, q;
    std::vector<double> seq_kl(sessions.size(), 0.0);
    for (int64_t t = 0; t < o.steps; ++t) {
      nn::log_softmax(full_logits.data(), vocab, p);
      const auto top = std::max_element(p.begin(), p.end()) - p.begin();
      for (size_t k = 0; k < sessions.size(); ++k) {
        nn::log_softmax(last[k].data(), vocab, q);
        double kl = 0;
        for (size_t v = 0; v < p.size(); ++v) kl += std::exp(p[v]) * (p[v] - q[v]);
        GenerationRow& r = result.rows[k];
        r.kl += kl;
        seq_kl[k] += kl;
        r.top1 += std::max_element(q.begin(), q.end()) - q.begin() == top;
        ++r.count;
        const Cache& cache = sessions[k]->cache();
        int64_t most = 0;
        for (int l = 0; l < c.n_layers; ++l)
          for (int h = 0; h < c.n_kv_heads; ++h) most = std::max(most, cache.length(l, h));
        r.held += static_cast<double>(cache.total_tokens()) / heads;
        r.max_held = std::max(r.max_held, most);
      }
      int32_t next;
      if (o.sample) {
        // Inverse CDF of softmax(log p / T), 53 random bits.
        double z = 0;
        for (const double lp : p) z += std::exp(lp / o.temperature);
        double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * z;
        next = static_cast<int32_t>(vocab - 1);
        for (int64_t v = 0; v < vocab; ++v)
          if ((u -= std::exp(p[static_cast<size_t>(v)] / o.temperature)) < 0) {
            next = static_cast<int32_t>(v);
            break;
          }
        tokens.push_back(next);
      } else {
        next = tokens[static_cast<size_t>(o.prompt + t)];
      }
      if (t + 1 == o.steps) break;
      const std::span<const int32_t> one(&next, 1);
      full.forward(one, full_logits.data(), nn::Logits::last);
      for (size_t k = 0; k < sessions.size(); ++k) sessions[k]->forward(one, last[k].data(), nn::Logits::last);
      report(progress, ++done, result.sequences * o.steps);
    }
    report(progress, ++done, result.sequences * o.steps);
    for (size_t k = 0; k < sessions.size(); ++k)
      result.rows[k].sequence_kl.push_back(seq_kl[k] / static_cast<double>(o.steps));
    result.tokens.push_back(std::move(tokens));
  }
  return result;
}

// ---- needle ----

ChatFormat chat_format(std::string_view tmpl) {
  if (tmpl.find("<|im_start|>") == std::string_view::npos) return {"", "\n\nAnswer:"};
  ChatFormat f;
  constexpr std::string_view sys_open = "<|im_start|>system\n";
  const size_t s = tmpl.find(sys_open);
  const size_t e = s == std::string_view::npos ? s : tmpl.find("<|im_end|>", s);
  if (e != std::string_view::npos) {
    const std::string_view message = tmpl.substr(s + sys_open.size(), e - s - sys_open.size());
    // A literal message only: a template that fills it from a variable has none of its own.
    if (message.find_first_of("{}'\"+") == std::string_view::npos)
      f.before = std::string(sys_open) + std::string(message) + "<|im_end|>\n";
  }
  f.before += "<|im_start|>user\n";
  f.after = "<|im_end|>\n<|im_start|>assistant\n";
  return f;
}

ChatFormat chat_format(const io::Model& file) {
  const auto& meta = file.metadata();
  const auto it = meta.find("tokenizer.chat_template");
  return chat_format(it != meta.end() && it->is_string() ? it->get<std::string>() : std::string());
}

NeedleText insert_needle(std::string_view text, double depth, std::string_view needle, std::string_view question,
                         const ChatFormat& chat) {
  require(depth >= 0 && depth <= 1, "kv evaluation: needle depth ", depth, " is not in [0, 1]");
  // At a sentence end, so the needle does not cut a sentence.
  size_t at = text.find(". ", static_cast<size_t>(depth * static_cast<double>(text.size())));
  at = at == std::string_view::npos ? text.size() : at + 2;
  NeedleText out;
  out.prompt = chat.before;
  out.prompt.append(text.substr(0, at)).append(needle).append(" ").append(text.substr(at)).append("\n\n");
  out.prompt.append(question).append(chat.after);
  out.depth = text.empty() ? 0 : static_cast<double>(at) / static_cast<double>(text.size());
  return out;
}

std::vector<NeedlePrompt> needle_prompts(const nn::BpeTokenizer& tok, const ChatFormat& chat,
                                         std::span<const int32_t> haystack, std::span<const double> depths,
                                         std::string_view needle, std::string_view question) {
  const std::string text = tok.decode(haystack);
  std::vector<NeedlePrompt> out;
  for (const double d : depths) {
    const NeedleText t = insert_needle(text, d, needle, question, chat);
    out.push_back({tok.encode(t.prompt, nn::BpeEncodeOptions{.parse_special = true, .add_special = false}), t.depth});
  }
  return out;
}

std::string greedy_answer(Session& session, const nn::BpeTokenizer& tok, std::vector<float> logits,
                          int64_t max_tokens) {
  const auto im_end = tok.find("<|im_end|>");
  std::vector<int32_t> out;
  for (int64_t i = 0; i < max_tokens; ++i) {
    const int32_t next = argmax(logits);
    if (next == tok.eos_id() || (im_end && next == *im_end)) break;
    out.push_back(next);
    if (i + 1 < max_tokens) session.forward(std::span<const int32_t>(&next, 1), logits.data(), nn::Logits::last);
  }
  return tok.decode(out, true);
}

std::string NeedleResult::per_depth(const std::string& label, double budget) const {
  std::string s;
  for (const auto& a : answers)
    if (a.label == label && a.budget == budget) s += a.correct ? '1' : '0';
  return s;
}

double NeedleResult::accuracy(const std::string& label, double budget) const {
  const std::string s = per_depth(label, budget);
  require(!s.empty(), "kv evaluation: no needle answers for '", label, "' at budget ", budget);
  return static_cast<double>(std::count(s.begin(), s.end(), '1')) / static_cast<double>(s.size());
}

NeedleResult evaluate_needle(const nn::LlamaModel& model, const nn::BpeTokenizer& tok,
                             std::span<const NeedlePrompt> prompts, int64_t haystack_tokens,
                             std::span<const EvalConfig> configs, const NeedleOptions& o, AllocationTables* tables,
                             const Progress& progress) {
  require(haystack_tokens > 0, "kv evaluation: the needle's haystack has no tokens");
  NeedleResult result;
  result.haystack_tokens = haystack_tokens;
  auto record = [&](std::string label, double budget, const NeedlePrompt& p, std::string answer) {
    const bool ok = answer.find(o.answer) != std::string::npos;
    result.answers.push_back({std::move(label), budget, p.depth, std::move(answer), ok});
  };
  const Schedule schedule{.prefill = true, .decode = o.decode, .every = 1};
  int64_t done = 0;
  for (const auto& p : prompts) {
    const int64_t max_tokens = static_cast<int64_t>(p.tokens.size()) + o.answer_tokens;
    {
      Session full(model, max_tokens);
      std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
      full.forward(p.tokens, logits.data(), nn::Logits::last);
      record("full cache", 1.0, p, greedy_answer(full, tok, logits, o.answer_tokens));
    }
    for_each_fork(model, p.tokens, max_tokens, configs, o.budgets, haystack_tokens, schedule, o.eviction, tables,
                  [&](const EvalConfig& c, double f, Session& fork, std::span<const float> logits) {
                    record(c.label(), f, p,
                           greedy_answer(fork, tok, std::vector<float>(logits.begin(), logits.end()), o.answer_tokens));
                  });
    report(progress, ++done, static_cast<int64_t>(prompts.size()));
  }
  return result;
}

// ---- per-layer attention-output error ----

double LayerErrorColumn::mean() const {
  double m = 0;
  for (const double e : errors) m += e / static_cast<double>(errors.size());
  return m;
}

int64_t LayerErrorColumn::worst_layer() const {
  return std::max_element(errors.begin(), errors.end()) - errors.begin();
}

LayerErrorResult layer_errors(const nn::LlamaModel& model, std::span<const int32_t> prompt,
                              std::span<const int32_t> probe, std::span<const EvalConfig> configs,
                              const LayerErrorOptions& o, AllocationTables* tables, const Progress& progress) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  LayerErrorResult result;
  result.tokens = tokens_of(o.budget, n);
  result.columns.resize(configs.size());
  for (size_t i = 0; i < configs.size(); ++i) result.columns[i].label = configs[i].label();
  std::vector<std::string> scorers;
  for (const auto& c : configs)
    if (!c.streaming() && std::find(scorers.begin(), scorers.end(), c.scorer) == scorers.end())
      scorers.push_back(c.scorer);
  bool streaming_pending = std::any_of(configs.begin(), configs.end(), [](const EvalConfig& c) { return c.streaming(); });
  // Without any scorer, StreamingLLM gets a probe pass of its own.
  if (scorers.empty() && streaming_pending) scorers.push_back("");
  int64_t done = 0;
  for (const auto& s : scorers) {
    const AttentionProbe ap(model, prompt, probe, s.empty() ? nullptr : make_scorer(s));
    for (size_t i = 0; i < configs.size(); ++i) {
      const EvalConfig& c = configs[i];
      if (c.streaming() ? !streaming_pending : c.scorer != s) continue;
      result.columns[i].errors = ap.errors(eval_policy(c, result.tokens, n, o.eviction, tables), result.tokens);
    }
    streaming_pending = false;
    report(progress, ++done, static_cast<int64_t>(scorers.size()));
  }
  return result;
}

}  // namespace strata::kv
