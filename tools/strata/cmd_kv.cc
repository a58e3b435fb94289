// `strata kv-eval`: how far KV-cache eviction moves a model, for every scorer x budget policy at a
// few budgets, on long real text. The evaluation is the library's (kv/evaluate.hpp: decode-time KL,
// needle retrieval, per-layer attention error); this command parses options, prints the tables and
// writes the report (Markdown, JSON, gnuplot data and scripts, plots).
// Budgets are fractions of the prompt (P tokens for decode, the haystack's tokens for the needle),
// in tokens per KV head; "allocated" is strata's budget allocator over measured per-layer
// sensitivities (kv/allocate.hpp) on calibration text that does not overlap the evaluation text.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "plot.hpp"
#include "strata/core/error.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/evaluate.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::cli {

namespace {

struct Options {
  // STRATA_MODELS_DIR and STRATA_SHARED_DATA win over the working directory's models/ and ../shared/data.
  std::string model = io::DataPaths::resolve().smollm2().string();
  std::string text = io::DataPaths::resolve().moby_dick().string();
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

std::string fmt(double v, int digits = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string percent(double f) { return fmt(100 * f, 0) + "%"; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// "  decode 12/78 forks, 34 s" on one line that each call overwrites.
kv::Progress progress_line(const char* what, const char* unit) {
  const auto t0 = std::chrono::steady_clock::now();
  return [=](int64_t done, int64_t total) {
    std::printf("\r  %s: %lld/%lld %s, %.0f s%s", what, static_cast<long long>(done), static_cast<long long>(total),
                unit, seconds_since(t0), done == total ? "\n" : "");
    std::fflush(stdout);
  };
}

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

// Every report file appears whole or not at all.
void write_file(const std::filesystem::path& path, const std::string& text) {
  io::AtomicFileWriter w(path);
  w.write(text.data(), text.size());
  w.commit();
}

// One gnuplot data block per line ("# label", then "x y" rows), and the script that plots them.
void write_plot(const std::filesystem::path& dir, const std::string& name, const std::string& title,
                const std::string& xlabel, const std::string& ylabel, bool logscale,
                const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& lines) {
  std::ostringstream dat, gp;
  for (const auto& [label, points] : lines) {
    dat << "# " << label << '\n';
    for (const auto& [x, y] : points) dat << x << ' ' << y << '\n';
    dat << "\n\n";
  }
  write_file(dir / (name + ".dat"), dat.str());
  gp << "set terminal pngcairo size 1000,700 font 'sans,10' noenhanced\nset output '" << name << ".png'\n"
     << "set title '" << title << "'\nset xlabel '" << xlabel << "'\nset ylabel '" << ylabel << "'\n"
     << (logscale ? "set logscale y\n" : "") << "set key outside right\nset grid\nplot ";
  for (size_t i = 0; i < lines.size(); ++i)
    gp << (i ? ", " : "") << "'" << name << ".dat' index " << i << " using 1:2 with linespoints "
       << (lines[i].first == "streaming-llm" ? "lw 3 dt 2 " : "") << "title '" << lines[i].first << "'";
  gp << '\n';
  write_file(dir / (name + ".gp"), gp.str());
}

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
    std::vector<kv::Budgeting> rules;
    for (const auto& p : o.policies) rules.push_back(kv::parse_budgeting(p));
    for (const double w : o.recent_shares)
      require(w >= 0 && w < 1, "kv-eval: --recent-share ", w, " is not in [0, 1)");
    const auto decode_configs = kv::eval_configs(o.scorers, rules, o.recent_shares);
    const auto needle_configs = kv::eval_configs(o.needle_scorers, rules, o.recent_shares);
    for (const auto* fractions : {&o.budgets, &o.needle_budgets})
      for (const double f : *fractions) require(f > 0 && f <= 1, "kv-eval: budget ", f, " is not in (0, 1]");
    for (const double d : o.depths) require(d >= 0 && d <= 1, "kv-eval: needle depth ", d, " is not in [0, 1]");
    const std::shared_ptr<const io::Model> file = io::open_model(o.model);
    const nn::LlamaModel model = nn::LlamaModel::load_stored(file);  // the file's own types, no float32 copy
    require(file->metadata().contains("tokenizer.ggml.tokens"), o.model, ": no tokenizer in the file");
    const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
    const nn::TextSlice es = nn::TextSlice::parse(o.text, o.eval_slice);
    const nn::TextSlice cs = nn::TextSlice::parse(o.text, o.calib_slice);
    const nn::TextSlice ns = nn::TextSlice::parse(o.text, o.needle_slice);
    require(!cs.overlaps(es) && !cs.overlaps(ns), "kv-eval: the calibration slice (", cs.describe(),
            ") overlaps the evaluation or needle text");
    kv::EvictionSettings settings;
    settings.sinks = o.sinks;
    settings.recent = o.recent;
    settings.probe = o.probe;
    kv::AllocationTables tables(model, nn::tokenize_slice(tok, cs, std::max(o.prefill, o.needle_tokens) + o.probe),
                                settings);
    const std::filesystem::path dir(o.report);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    require(!ec, o.report, ": cannot create the report directory: ", ec.message());
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
    std::vector<std::string> plots;

    // ---- (a) decode-time KL and perplexity ----
    if (!o.skip_decode) {
      const int64_t len = o.prefill + o.decode + 1;
      const auto text = nn::tokenize_slice(tok, es, o.windows * len);
      require(static_cast<int64_t>(text.size()) >= o.windows * len, "kv-eval: ", es.describe(), " has ", text.size(),
              " tokens, ", o.windows, " windows need ", o.windows * len);
      std::printf("decode: %lld windows of %s, P = %lld prompt tokens compressed at prefill, then D = %lld tokens "
                  "one at a time with the cache held at the budget\n",
                  static_cast<long long>(o.windows), es.describe().c_str(), static_cast<long long>(o.prefill),
                  static_cast<long long>(o.decode));
      kv::DecodeOptions options;
      options.prefill = o.prefill;
      options.budgets = o.budgets;
      options.eviction = settings;
      const kv::DecodeResult d = kv::evaluate_decode(model, kv::split_windows(text, len, o.windows), decode_configs,
                                                     options, &tables, progress_line("decode", "forks"));
      for (const auto& r : d.rows) {
        std::string per_window;
        for (const double k : r.window_kl) per_window += " " + fmt(k, 4);
        std::printf("  %-18s %4s (%lld tokens): KL %.4f, per window%s\n", r.config.label().c_str(),
                    percent(r.budget).c_str(), static_cast<long long>(r.tokens), r.mean_kl(), per_window.c_str());
      }
      Table kl{"Decode-time KL(full || compressed), nats per token (" + std::to_string(d.count) +
                   " positions; budget = fraction of the P = " + std::to_string(o.prefill) + "-token prompt)",
               {"policy"},
               {}};
      Table ppl{"Decode-time perplexity (full cache: " + fmt(d.full_perplexity(), 2) +
                    ") / top-1 agreement with the full cache",
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
      json["decode"]["full_perplexity"] = d.full_perplexity();
      for (const auto& c : decode_configs) {
        std::vector<std::string> kr = {c.label()}, pr = {c.label()};
        for (const double f : o.budgets) {
          const auto& r = d.row(c.label(), f);
          kr.push_back(fmt(r.mean_kl(), 4));
          pr.push_back(fmt(r.perplexity(), 2) + " / " + fmt(100 * r.top1_rate(), 1) + "%");
          json["decode"]["results"].push_back({{"policy", c.label()},
                                               {"budget", f},
                                               {"tokens", r.tokens},
                                               {"kl", r.mean_kl()},
                                               {"window_kl", r.window_kl},
                                               {"perplexity", r.perplexity()},
                                               {"top1", r.top1_rate()}});
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
        auto mean_kl = [&](const std::string& label) { return d.row(label, f).mean_kl(); };
        const double base = mean_kl("streaming-llm");
        std::string best, best_aware;
        for (const auto& c : decode_configs) {
          if (c.streaming()) continue;
          if (best.empty() || mean_kl(c.label()) < mean_kl(best)) best = c.label();
          const bool aware = c.scorer == "h2o" || c.scorer == "tova" || c.scorer == "snapkv";
          if (aware && (c.budgeting == kv::Budgeting::pyramid || c.budgeting == kv::Budgeting::adakv) &&
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
      std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> lines;
      for (const auto& c : decode_configs) {
        lines.push_back({c.label(), {}});
        for (const double f : o.budgets) lines.back().second.push_back({100 * f, d.row(c.label(), f).mean_kl()});
      }
      write_plot(dir, "kl_vs_budget", "Decode-time KL to the full cache vs KV budget", "budget (% of the prompt)",
                 "KL (nats / token)", true, lines);
      plots.push_back("kl_vs_budget");
    }

    // ---- (b) needle in a haystack ----
    if (!o.skip_needle) {
      const auto haystack = nn::tokenize_slice(tok, ns, o.needle_tokens);
      const auto prompts = kv::needle_prompts(tok, kv::chat_format(*file), haystack, o.depths, o.needle, o.question);
      std::printf("\nneedle: \"%s\" in %lld tokens of %s; question \"%s\"; correct if the answer contains \"%s\"\n",
                  o.needle.c_str(), static_cast<long long>(haystack.size()), ns.describe().c_str(), o.question.c_str(),
                  o.answer.c_str());
      kv::NeedleOptions options;
      options.budgets = o.needle_budgets;
      options.answer = o.answer;
      options.answer_tokens = o.answer_tokens;
      options.decode = o.needle_decode;
      options.eviction = settings;
      const int64_t hay = static_cast<int64_t>(haystack.size());
      const kv::NeedleResult r = kv::evaluate_needle(model, tok, prompts, hay, needle_configs, options, &tables,
                                                     progress_line("needle", "prompts"));
      for (const auto& a : r.answers) {
        std::printf("  %-18s %4s depth %s: %s %s\n", a.label.c_str(), percent(a.budget).c_str(),
                    percent(a.depth).c_str(), a.correct ? "ok " : "-- ", a.answer.c_str());
        json["needle"]["answers"].push_back({{"policy", a.label},
                                             {"budget", a.budget},
                                             {"depth", a.depth},
                                             {"answer", a.answer},
                                             {"correct", a.correct}});
      }
      std::string depths;
      for (const auto& p : prompts) depths += (depths.empty() ? "" : "/") + percent(p.depth);
      Table t{"Needle retrieval, " + std::to_string(hay) + "-token haystack, depths " + depths +
                  " (correct depths marked 1)",
              {"policy", "budget", "accuracy", "per depth"},
              {}};
      auto row = [&](const std::string& label, double f) {
        const double acc = r.accuracy(label, f);
        const std::string budget =
            f == 1.0 ? "100%" : percent(f) + " (" + std::to_string(std::llround(f * static_cast<double>(hay))) + ")";
        t.rows.push_back({label, budget, percent(acc), r.per_depth(label, f)});
        json["needle"]["results"].push_back(
            {{"policy", label}, {"budget", f}, {"accuracy", acc}, {"per_depth", r.per_depth(label, f)}});
      };
      row("full cache", 1.0);
      for (const double f : o.needle_budgets)
        for (const auto& c : needle_configs) row(c.label(), f);
      json["needle"]["needle"] = o.needle;
      json["needle"]["question"] = o.question;
      json["needle"]["haystack"] = ns.describe();
      emit(t);
      // The best policy at each budget against the full cache.
      const double full = r.accuracy("full cache", 1.0);
      Table best{"Needle: the best policy at each budget against the full cache (" + percent(full) + ")",
                 {"budget", "best policy", "accuracy", "of the full cache's", "streaming-llm"},
                 {}};
      for (const double f : o.needle_budgets) {
        std::string top;
        for (const auto& c : needle_configs)
          if (!c.streaming() && (top.empty() || r.accuracy(c.label(), f) > r.accuracy(top, f))) top = c.label();
        if (top.empty()) continue;
        best.rows.push_back({percent(f), top, percent(r.accuracy(top, f)),
                             full > 0 ? percent(r.accuracy(top, f) / full) : "-",
                             percent(r.accuracy("streaming-llm", f))});
      }
      emit(best);
    }

    // ---- (c) per-layer attention-output error ----
    if (!o.skip_layers) {
      const auto text = nn::tokenize_slice(tok, es, o.prefill + o.probe);
      require(static_cast<int64_t>(text.size()) >= o.prefill + o.probe, "kv-eval: ", es.describe(),
              " is too short for the layer probe");
      const std::span<const int32_t> all_tokens(text);
      kv::LayerErrorOptions options;
      options.budget = o.layer_budget;
      options.eviction = settings;
      const kv::LayerErrorResult r = kv::layer_errors(
          model, all_tokens.first(static_cast<size_t>(o.prefill)),
          all_tokens.subspan(static_cast<size_t>(o.prefill), static_cast<size_t>(o.probe)), decode_configs, options,
          &tables, progress_line("layers", "probe passes"));
      Table t{"Relative attention-output error per layer, only that layer compressed to " + percent(o.layer_budget) +
                  " (" + std::to_string(r.tokens) + " tokens per KV head on average), " + std::to_string(o.probe) +
                  " probe queries after the first window's prompt",
              {"layer"},
              {}};
      Table summary{"Attention-output error over layers at " + percent(o.layer_budget) + ": mean / worst layer",
                    {"policy", "mean", "worst", "worst layer"},
                    {}};
      std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> lines;
      for (const auto& c : r.columns) {
        t.header.push_back(c.label);
        const int64_t worst = c.worst_layer();
        summary.rows.push_back(
            {c.label, fmt(c.mean()), fmt(c.errors[static_cast<size_t>(worst)]), std::to_string(worst)});
        json["layers"]["errors"][c.label] = c.errors;
        lines.push_back({c.label, {}});
        for (size_t l = 0; l < c.errors.size(); ++l) lines.back().second.push_back({static_cast<double>(l), c.errors[l]});
      }
      for (int64_t l = 0; l < model.config().n_layers; ++l) {
        std::vector<std::string> row = {std::to_string(l)};
        for (const auto& c : r.columns) row.push_back(fmt(c.errors[static_cast<size_t>(l)]));
        t.rows.push_back(row);
      }
      json["layers"]["budget"] = o.layer_budget;
      json["layers"]["tokens"] = r.tokens;
      emit(summary);
      md += markdown(t) + "\n";
      write_plot(dir, "layer_error", "Relative attention-output error per layer at " + percent(o.layer_budget), "layer",
                 "relative error", false, lines);
      plots.push_back("layer_error");
      // The allocations themselves, for the record.
      if (std::find(rules.begin(), rules.end(), kv::Budgeting::allocated) != rules.end())
        for (const auto& s : o.scorers)
          for (const double w : o.recent_shares)
            for (const double f : o.budgets)
              json["allocations"][s][percent(w)][fmt(f, 2)] = kv::allocate_layer_budgets(
                  tables.table(s, o.prefill, w), std::llround(f * static_cast<double>(o.prefill)));
    }

    write_file(dir / "report.md", md);
    json["seconds"] = seconds_since(t_start);
    write_file(dir / "report.json", json.dump(2) + "\n");
    if (!have_gnuplot()) {
      std::printf("gnuplot is not installed: plots not rendered (.dat and .gp files are in the report)\n");
    } else {
      for (const auto& p : plots)
        if (!run_gnuplot(dir, p + ".gp")) std::printf("gnuplot failed on %s.gp; see gnuplot.log\n", p.c_str());
    }
    std::printf("\nreport: %s/report.md, report.json, kl_vs_budget.png, layer_error.png (%.0f s)\n",
                o.report.c_str(), seconds_since(t_start));
  });
}

}  // namespace strata::cli
