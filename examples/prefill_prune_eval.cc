// Prefill token pruning on SmolLM2 (nn/prefill_pruning.hpp) next to KV eviction at equal KV memory, on
// real text. Each passage is a prompt of --prompt-tokens tokens and the next --continuation tokens of the
// true text. For every (layer, fraction) the prompt is read with that fraction of its tokens dropped before
// block `layer`; SnapKV then evicts the dense prompt cache to the same KV memory, once with the pruned
// cache's per-layer token counts (layerwise) and once with their mean in every layer (uniform). Reported
// against the dense prefill: KL(dense || method) of the next-token distribution after the prompt and over
// the continuation (read in one batch over each cache), top-1 agreement, KV bytes held, prefill FLOPs and
// the prefill's wall time in this run (bench_prefill measures speed properly).
//
// The scoring knobs (score over the prompt's queries or the last window, pooling) are chosen on the tuning
// slice first, at 50% after the middle block, and the figures read on the disjoint report slice.
// --tasks N adds the long-context tasks of kv/tasks.hpp (N instances per task) for the same settings.
//
//   prefill_prune_eval                       (docs/token-merging.md shows the figures)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/evaluate.hpp"
#include "strata/kv/session.hpp"
#include "strata/kv/tasks.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/prefill_pruning.hpp"

namespace {

using namespace strata;
namespace ex = strata::examples;

struct Args {
  std::filesystem::path model = ex::data_paths().smollm2(), text = ex::data_paths().moby_dick();
  std::string tune_slice = ex::kTuningSlice, report_slice = ex::kReportSlice;
  int64_t prompt_tokens = 1024, continuation = 16, passages = 8, tune_passages = 4;
  std::vector<int> layers = {15, 8};
  std::vector<double> fractions = {0.25, 0.5, 0.75};
  std::vector<double> merge_fractions = {0.5};
  std::string score = "window";  // chosen on the tuning slice (docs/token-merging.md)
  int64_t pool = 1, sinks = 4, window = 32;
  bool tune = true;
  int64_t tasks = 0, task_length = 1024;
  std::vector<std::string> task_kinds = {"niah_single", "niah_multikey", "qa"};
  std::string task_slice = "0.7:0.8";
  uint64_t task_seed = 1;

  void add_options(CLI::App& app) {
    ex::add_model_option(app, model);
    app.add_option("--text", text, "corpus the passages come from")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--tune-slice", tune_slice, "slice BEGIN:END the scoring knobs are chosen on")->capture_default_str();
    app.add_option("--report-slice", report_slice, "slice BEGIN:END the figures are measured on (disjoint)")
        ->capture_default_str();
    app.add_option("--prompt-tokens", prompt_tokens, "tokens of each prompt")->check(CLI::Range(64, 8192))->capture_default_str();
    app.add_option("--continuation", continuation, "true tokens after the prompt scored over each cache")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app.add_option("--passages", passages, "passages of the report slice (0: only the tasks)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--tune-passages", tune_passages, "passages of the tuning slice")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    ex::add_list(app, "--layers", layers, "first blocks that run on the kept tokens");
    ex::add_list(app, "--fractions", fractions, "fractions of the prompt dropped");
    ex::add_list(app, "--merge-fractions", merge_fractions, "fractions also run with merging instead of dropping");
    app.add_option("--score", score, "prompt or window; used when --no-tune")->capture_default_str();
    app.add_option("--pool", pool, "score pooling width; used when --no-tune")->capture_default_str();
    app.add_option("--sinks", sinks, "first prompt tokens always kept (and SnapKV's sinks)")->capture_default_str();
    app.add_option("--window", window, "last prompt tokens always kept (and SnapKV's recent window)")
        ->capture_default_str();
    app.add_flag("--tune,!--no-tune", tune, "choose --score and --pool on the tuning slice first")->capture_default_str();
    app.add_option("--tasks", tasks, "instances per long-context task (0: none)")->capture_default_str();
    app.add_option("--task-length", task_length, "tokens of each task prompt")->capture_default_str();
    ex::add_list(app, "--task-kinds", task_kinds, "tasks (kv/tasks.hpp names)");
    app.add_option("--task-slice", task_slice, "slice of --text the task haystacks come from")->capture_default_str();
    app.add_option("--task-seed", task_seed, "instances are a function of this seed")->capture_default_str();
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) { return ex::seconds_since(t0); }

// Sums over passages for one method.
struct Sums {
  double kl_prompt = 0, kl_cont = 0, bytes = 0, seconds = 0, flops = 0;
  int64_t top1_prompt = 0, top1_cont = 0, prompts = 0, cont = 0;
};

// KL(p || softmax(logits)) for log-probabilities p; top1 says whether the argmaxes agree.
double kl_to(const std::vector<double>& p, const float* logits, int64_t vocab, bool& top1) {
  std::vector<double> q;
  nn::log_softmax(logits, vocab, q);
  double kl = 0;
  for (int64_t v = 0; v < vocab; ++v) kl += std::exp(p[static_cast<size_t>(v)]) * (p[static_cast<size_t>(v)] - q[static_cast<size_t>(v)]);
  top1 = std::max_element(p.begin(), p.end()) - p.begin() == std::max_element(q.begin(), q.end()) - q.begin();
  return kl;
}


struct Setting {
  std::string label;
  nn::PrefillPruning pruning;
};

class Evaluator {
 public:
  Evaluator(const nn::LlamaModel& model, const Args& a) : model_(model), a_(a), vocab_(model.config().vocab_size) {}

  // One passage: the dense prefill (with SnapKV observing), each pruned setting, and SnapKV at each
  // setting's KV memory when `eviction`.
  void passage(std::span<const int32_t> window, std::span<const Setting> settings, bool eviction,
               std::map<std::string, Sums>& sums) {
    const int64_t n = a_.prompt_tokens;
    const auto prompt = window.first(static_cast<size_t>(n));
    const auto cont = window.subspan(static_cast<size_t>(n), static_cast<size_t>(a_.continuation));
    const int64_t cap = n + a_.continuation;
    const nn::LlamaConfig& c = model_.config();

    kv::Session dense(model_, cap, kv::Eviction{kv::make_scorer("snapkv"), kv::Policy::uniform(a_.sinks, a_.window), n},
                      kv::Schedule{.prefill = false});
    std::vector<float> last(static_cast<size_t>(vocab_)), all(static_cast<size_t>(vocab_ * a_.continuation));
    auto t0 = std::chrono::steady_clock::now();
    dense.forward(prompt, last.data(), nn::Logits::last);
    const double dense_s = seconds_since(t0);
    std::vector<double> ref_prompt;
    nn::log_softmax(last.data(), vocab_, ref_prompt);
    std::vector<std::vector<double>> ref_cont(static_cast<size_t>(a_.continuation));
    {
      auto full = dense.fork(kv::Policy::uniform(a_.sinks, a_.window), n, kv::Schedule{.prefill = false});
      full->forward(cont, all.data(), nn::Logits::all);
      for (int64_t t = 0; t < a_.continuation; ++t) nn::log_softmax(all.data() + t * vocab_, vocab_, ref_cont[static_cast<size_t>(t)]);
    }
    const std::vector<int64_t> dense_rows(static_cast<size_t>(c.n_layers), n);
    Sums& d = sums["dense"];
    d.prompts += 1;
    d.cont += a_.continuation;
    d.top1_prompt += 1;
    d.top1_cont += a_.continuation;
    d.bytes += static_cast<double>(dense.cache_bytes());
    d.seconds += dense_s;
    d.flops += nn::prefill_flops(c, dense_rows);

    // Scores a session that has read the prompt (its last logits in `last`) over the continuation.
    const auto score = [&](kv::Session& s, Sums& out, bool prompt_logits) {
      bool top1 = true;
      if (prompt_logits) out.kl_prompt += kl_to(ref_prompt, last.data(), vocab_, top1);
      out.top1_prompt += top1;
      out.prompts += 1;
      out.bytes += static_cast<double>(s.cache_bytes());
      s.forward(cont, all.data(), nn::Logits::all);
      for (int64_t t = 0; t < a_.continuation; ++t) {
        out.kl_cont += kl_to(ref_cont[static_cast<size_t>(t)], all.data() + t * vocab_, vocab_, top1);
        out.top1_cont += top1;
      }
      out.cont += a_.continuation;
    };

    for (const Setting& st : settings) {
      nn::PrefillPruner pruner(st.pruning);
      kv::Session s(model_, cap);
      t0 = std::chrono::steady_clock::now();
      s.forward(prompt, last.data(), nn::Logits::last, &pruner);
      Sums& p = sums[st.label];
      p.seconds += seconds_since(t0);
      p.flops += nn::prefill_flops(c, pruner.rows_per_layer());
      score(s, p, true);
      if (!eviction) continue;
      // SnapKV at the same KV memory: the pruned cache's tokens per layer, and their mean everywhere.
      const std::vector<int64_t>& rows = pruner.rows_per_layer();
      const double mean = std::accumulate(rows.begin(), rows.end(), 0.0) / static_cast<double>(rows.size());
      {
        auto f = dense.fork(kv::Policy::layerwise(rows, a_.sinks, a_.window), 0, kv::Schedule{.prefill = false});
        f->compress();
        score(*f, sums[st.label + " | snapkv layerwise"], false);
      }
      {
        auto f = dense.fork(kv::Policy::uniform(a_.sinks, a_.window), std::llround(mean), kv::Schedule{.prefill = false});
        f->compress();
        score(*f, sums[st.label + " | snapkv uniform"], false);
      }
    }
  }

 private:
  const nn::LlamaModel& model_;
  const Args& a_;
  int64_t vocab_;
};

nn::PrefillPruning pruning(const Args& a, int layer, double drop, nn::PruneMode mode, nn::PruneScore score,
                           int64_t pool) {
  nn::PrefillPruning p = nn::PrefillPruning::at(layer, drop);
  p.mode = mode;
  p.score = score;
  p.pool = pool;
  p.sinks = a.sinks;
  p.window = a.window;
  return p;
}

void print_rows(const std::vector<std::string>& labels, std::map<std::string, Sums>& sums) {
  const Sums& d = sums["dense"];
  std::printf("| method | KV MiB | KV vs dense | FLOPs vs dense | prefill s | time vs dense | KL after prompt | "
              "top-1 after prompt | KL continuation | top-1 continuation |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& l : labels) {
    const Sums& s = sums[l];
    const bool evicts = l.find("| snapkv") != std::string::npos;
    const double p = static_cast<double>(s.prompts);
    char time[64] = "-", ratio[64] = "-", flops[64] = "-";
    if (!evicts) {
      std::snprintf(time, sizeof time, "%.2f", s.seconds / p);
      std::snprintf(ratio, sizeof ratio, "%.2fx", d.seconds / s.seconds);
      std::snprintf(flops, sizeof flops, "%.3f", s.flops / d.flops);
    }
    std::printf("| %s | %.2f | %.3f | %s | %s | %s | %.4f | %.1f%% | %.4f | %.1f%% |\n", l.c_str(),
                s.bytes / p / (1 << 20), s.bytes / d.bytes, flops, time, ratio, s.kl_prompt / p,
                100.0 * static_cast<double>(s.top1_prompt) / p, s.kl_cont / static_cast<double>(s.cont),
                100.0 * static_cast<double>(s.top1_cont) / static_cast<double>(s.cont));
  }
  std::fflush(stdout);
}

std::vector<std::vector<int32_t>> windows_of(const nn::BpeTokenizer& tok, const nn::TextSlice& slice, const Args& a,
                                             int64_t count) {
  const int64_t len = a.prompt_tokens + a.continuation;
  const auto ids = nn::tokenize_slice(tok, slice, len * count);
  return kv::split_windows(ids, len, count);
}

void run(Args a) {
  const nn::TextSlice tune = nn::TextSlice::parse(a.text, a.tune_slice), report = nn::TextSlice::parse(a.text, a.report_slice);
  require(!tune.overlaps(report), "--tune-slice ", tune.describe(), " overlaps --report-slice ",
          report.describe());
  const nn::PruneScore fixed_score = nn::parse_prune_score(a.score, "--score");
  std::vector<kv::TaskKind> kinds;
  for (const auto& k : a.task_kinds) kinds.push_back(kv::parse_task(k));
  // Every setting checked before the model is read, and its blocks against the model after.
  const auto check = [&](int64_t n_layers) {
    for (int layer : a.layers)
      for (double f : a.fractions)
        for (nn::PruneMode m : {nn::PruneMode::drop, nn::PruneMode::merge}) {
          const auto p = pruning(a, layer, f, m, fixed_score, a.pool);
          p.validate(n_layers);
          p.check_prompt(a.prompt_tokens);
        }
  };
  check(0);
  const auto file = io::open_model(a.model);
  const auto model = nn::LlamaModel::load(*file);
  const auto& c = model.config();
  check(c.n_layers);
  const auto tok = nn::BpeTokenizer::from_model(*file);
  Evaluator ev(model, a);
  const int middle = static_cast<int>(c.n_layers / 2);

  nn::PruneScore score = fixed_score;
  int64_t pool = a.pool;
  if (a.tune) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto windows = windows_of(tok, tune, a, a.tune_passages);
    std::vector<Setting> candidates;
    for (auto s : {nn::PruneScore::window, nn::PruneScore::prompt})
      for (int64_t pw : {int64_t{1}, int64_t{5}}) {
        Setting st{"drop 50% @" + std::to_string(middle) + " " + std::string(nn::prune_score_name(s)) + " pool" +
                       std::to_string(pw),
                   pruning(a, middle, 0.5, nn::PruneMode::drop, s, pw)};
        candidates.push_back(st);
      }
    std::map<std::string, Sums> sums;
    for (const auto& w : windows) ev.passage(w, candidates, false, sums);
    std::printf("tuning: %s, %lld passages of %lld + %lld tokens (%.0f s)\n", tune.describe().c_str(),
                static_cast<long long>(windows.size()), static_cast<long long>(a.prompt_tokens),
                static_cast<long long>(a.continuation), seconds_since(t0));
    std::vector<std::string> labels = {"dense"};
    double best = INFINITY;
    for (const auto& st : candidates) {
      labels.push_back(st.label);
      const Sums& s = sums[st.label];
      const double loss = s.kl_prompt / static_cast<double>(s.prompts) + s.kl_cont / static_cast<double>(s.cont);
      if (loss < best) {
        best = loss;
        score = st.pruning.score;
        pool = st.pruning.pool;
      }
    }
    print_rows(labels, sums);
    std::printf("chosen: score %s, pool %lld (least KL after the prompt + mean KL over the continuation)\n\n",
                std::string(nn::prune_score_name(score)).c_str(), static_cast<long long>(pool));
  }

  std::vector<Setting> settings;
  for (int layer : a.layers)
    for (double f : a.fractions) {
      const auto p = pruning(a, layer, f, nn::PruneMode::drop, score, pool);
      settings.push_back({p.describe(), p});
    }
  for (int layer : a.layers)
    for (double f : a.merge_fractions) {
      const auto p = pruning(a, layer, f, nn::PruneMode::merge, score, pool);
      settings.push_back({p.describe(), p});
    }
  if (a.passages > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto windows = windows_of(tok, report, a, a.passages);
    std::map<std::string, Sums> sums;
    for (size_t i = 0; i < windows.size(); ++i) {
      ev.passage(windows[i], settings, true, sums);
      std::fprintf(stderr, "\rpassage %zu/%zu", i + 1, windows.size());
    }
    std::fprintf(stderr, "\n");
    std::printf("report: %s, %lld passages of %lld + %lld tokens (%.0f s); sinks %lld, window %lld\n",
                report.describe().c_str(), static_cast<long long>(windows.size()),
                static_cast<long long>(a.prompt_tokens), static_cast<long long>(a.continuation), seconds_since(t0),
                static_cast<long long>(a.sinks), static_cast<long long>(a.window));
    std::vector<std::string> labels = {"dense"};
    for (const auto& st : settings) {
      labels.push_back(st.label);
      if (st.pruning.mode == nn::PruneMode::drop) {
        labels.push_back(st.label + " | snapkv layerwise");
        labels.push_back(st.label + " | snapkv uniform");
      }
    }
    print_rows(labels, sums);
  }

  if (a.tasks > 0) {
    const nn::TextSlice ts = nn::TextSlice::parse(a.text, a.task_slice);
    require(!ts.overlaps(tune), "--task-slice ", ts.describe(), " overlaps --tune-slice ",
            tune.describe());
    const std::string corpus = ts.read();
    const std::vector<int64_t> lengths = {a.task_length};
    const auto prompts = kv::task_prompts(tok, kv::chat_format(*file), corpus, kinds, lengths, a.tasks, a.task_seed,
                                          kv::TaskSettings{});
    std::map<std::string, std::pair<int64_t, int64_t>> right;  // label -> (correct, total)
    std::vector<std::string> labels = {"dense"};
    for (const auto& st : settings)
      if (st.pruning.mode == nn::PruneMode::drop) {
        labels.push_back(st.label);
        labels.push_back(st.label + " | snapkv layerwise");
      }
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto& tp = prompts[i];
      const int64_t n = static_cast<int64_t>(tp.tokens.size()), cap = n + 32;
      const auto tally = [&](const std::string& label, kv::Session& s, const std::vector<float>& logits) {
        const bool ok = kv::answer_correct(tp.instance, kv::greedy_answer(s, tok, logits, 24));
        right[label].first += ok;
        right[label].second += 1;
      };
      kv::Session dense(model, cap, kv::Eviction{kv::make_scorer("snapkv"), kv::Policy::uniform(a.sinks, a.window), n},
                        kv::Schedule{.prefill = false});
      std::vector<float> logits(static_cast<size_t>(c.vocab_size));
      dense.forward(tp.tokens, logits.data(), nn::Logits::last);
      for (const auto& st : settings) {
        if (st.pruning.mode != nn::PruneMode::drop) continue;
        nn::PrefillPruner pruner(st.pruning);
        kv::Session s(model, cap);
        std::vector<float> pl(logits.size());
        s.forward(tp.tokens, pl.data(), nn::Logits::last, &pruner);
        tally(st.label, s, pl);
        auto f = dense.fork(kv::Policy::layerwise(pruner.rows_per_layer(), a.sinks, a.window), 0,
                            kv::Schedule{.prefill = false});
        f->compress();
        tally(st.label + " | snapkv layerwise", *f, logits);
      }
      auto full = dense.fork(kv::Policy::uniform(a.sinks, a.window), n, kv::Schedule{.prefill = false});
      tally("dense", *full, logits);
      std::fprintf(stderr, "\rtask prompt %zu/%zu", i + 1, prompts.size());
    }
    std::fprintf(stderr, "\n");
    std::printf("\ntasks: %zu prompts of %lld tokens (%lld per task: ", prompts.size(),
                static_cast<long long>(a.task_length), static_cast<long long>(a.tasks));
    for (const auto& k : a.task_kinds) std::printf("%s ", k.c_str());
    std::printf("), seed %llu, %s (%.0f s)\n| method | correct | accuracy | 95%% interval |\n|---|---|---|---|\n",
                static_cast<unsigned long long>(a.task_seed), ts.describe().c_str(), seconds_since(t0));
    for (const auto& l : labels) {
      const auto [k, total] = right[l];
      const auto iv = kv::wilson(k, total);
      std::printf("| %s | %lld/%lld | %.1f%% | %.1f-%.1f%% |\n", l.c_str(), static_cast<long long>(k),
                  static_cast<long long>(total), 100.0 * static_cast<double>(k) / static_cast<double>(total),
                  100 * iv.low, 100 * iv.high);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"Prefill token pruning on SmolLM2 next to SnapKV eviction at equal KV memory", "prefill_prune_eval"};
  Args a;
  a.add_options(app);
  return ex::run_main(app, argc, argv, [&] { run(a); });
}
