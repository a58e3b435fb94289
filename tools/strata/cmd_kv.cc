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
#include "strata/kv/tasks.hpp"
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
  // Long-context tasks (kv/tasks.hpp); none by default.
  std::vector<std::string> tasks;
  std::string task_slice = "0.7:0.9";
  std::vector<int64_t> task_lengths = {2048};
  int64_t task_instances = 4, task_answer_tokens = 24;
  uint64_t task_seed = 1;
  std::vector<double> task_budgets = {0.2};
  std::vector<std::string> task_scorers = {"snapkv", "chunkkv"}, task_policies = {"uniform", "adakv"};
  std::vector<std::string> task_formats;  // "q4_0+rot", "kivi4": stored KV formats crossed with the tasks
  kv::TaskSettings task_settings;
  // Decode-time compression over long generations; none by default.
  int64_t gen_sequences = 0, gen_prompt = 64, gen_steps = 2048, gen_every = 8;
  std::string gen_slice = "0.6:0.7";
  std::vector<double> gen_budgets = {0.1}, thresholds;
  std::vector<std::string> gen_scorers = {"tova", "h2o", "snapkv"}, gen_policies = {"uniform", "adakv"};
  bool gen_text = false;
  double temperature = 1.0;
  uint64_t gen_seed = 1;
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
  cmd->add_option("--tasks", o.tasks,
                  "long-context tasks to run: niah_single, niah_multikey, niah_multivalue, vt, cwe, qa, or all "
                  "(default none)")
      ->delimiter(',');
  cmd->add_option("--task-slice", o.task_slice, "the tasks' haystack and word list come from here")
      ->capture_default_str();
  cmd->add_option("--task-lengths", o.task_lengths, "prompt lengths in tokens")->delimiter(',')->capture_default_str();
  cmd->add_option("--task-instances", o.task_instances, "instances of each task at each length")
      ->capture_default_str();
  cmd->add_option("--task-seed", o.task_seed, "instances are a function of this seed")->capture_default_str();
  cmd->add_option("--task-budgets", o.task_budgets, "fractions of the task length")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--task-scorers", o.task_scorers, "scorers for the tasks ('none': full cache and StreamingLLM)")
      ->delimiter(',');
  cmd->add_option("--task-policies", o.task_policies)->delimiter(',');
  cmd->add_option("--task-formats", o.task_formats,
                  "stored KV formats (keys and values) crossed with the full cache and every policy x budget: "
                  "f16, q8_0, q4_0, kivi4, kivi2, each optionally +rot (randomized Hadamard rotation)")
      ->delimiter(',');
  cmd->add_option("--task-answer-tokens", o.task_answer_tokens)->capture_default_str();
  cmd->add_option("--value-digits", o.task_settings.value_digits, "digits of a needle's value")->capture_default_str();
  cmd->add_option("--multikey-keys", o.task_settings.multikey_keys)->capture_default_str();
  cmd->add_option("--multivalue-values", o.task_settings.multivalue_values)->capture_default_str();
  cmd->add_option("--vt-hops", o.task_settings.vt_hops, "assignments after the first in the asked chain")
      ->capture_default_str();
  cmd->add_option("--vt-chains", o.task_settings.vt_chains, "distracting chains")->capture_default_str();
  cmd->add_option("--cwe-words", o.task_settings.cwe_words, "most common words asked")->capture_default_str();
  cmd->add_option("--cwe-common", o.task_settings.cwe_common, "occurrences of a common word")->capture_default_str();
  cmd->add_option("--cwe-rare", o.task_settings.cwe_rare, "occurrences of any other word")->capture_default_str();
  cmd->add_option("--qa-distractors", o.task_settings.qa_distractors, "facts about other people")
      ->capture_default_str();
  cmd->add_option("--gen-sequences", o.gen_sequences,
                  "long generations with decode-time compression (default 0: none)")
      ->capture_default_str();
  cmd->add_option("--gen-prompt", o.gen_prompt, "prompt tokens of each generation")->capture_default_str();
  cmd->add_option("--gen-steps", o.gen_steps, "tokens generated after the prompt")->capture_default_str();
  cmd->add_option("--gen-every", o.gen_every, "compress every N generated tokens (a buffer of up to N - 1)")
      ->capture_default_str();
  cmd->add_option("--gen-slice", o.gen_slice, "the generations' prompts come from here")->capture_default_str();
  cmd->add_option("--gen-budgets", o.gen_budgets, "fractions of prompt + steps")->delimiter(',')->capture_default_str();
  cmd->add_option("--gen-scorers", o.gen_scorers, "as --scorers, and tova-ema or tova-ema:DECAY")->delimiter(',');
  cmd->add_option("--gen-policies", o.gen_policies,
                  "uniform, pyramid, adakv, allocated (layer budgets measured on --calib-slice prompts of the "
                  "generation's length)")->delimiter(',');
  cmd->add_option("--thresholds", o.thresholds, "score thresholds: a row per uniform scored policy and threshold")
      ->delimiter(',');
  cmd->add_flag("--gen-text", o.gen_text, "read the slice's own text after the prompt instead of sampling");
  cmd->add_option("--temperature", o.temperature, "sampling temperature of the full cache")->capture_default_str();
  cmd->add_option("--gen-seed", o.gen_seed)->capture_default_str();
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
    std::vector<kv::TaskKind> task_kinds;
    for (const auto& t : o.tasks) {
      if (t == "all") {
        task_kinds = kv::all_tasks();
        continue;
      }
      try {
        task_kinds.push_back(kv::parse_task(t));
      } catch (const Error& e) {
        fail("kv-eval: --tasks: ", e.what());
      }
    }
    std::vector<kv::EvalConfig> task_configs, gen_configs;
    std::vector<std::pair<std::string, kv::CacheFormat>> task_formats;
    if (!task_kinds.empty()) {
      kv::check(o.task_settings);
      require(o.task_instances >= 1, "kv-eval: --task-instances ", o.task_instances, " must be >= 1");
      require(o.task_answer_tokens >= 1, "kv-eval: --task-answer-tokens ", o.task_answer_tokens, " must be >= 1");
      for (const int64_t n : o.task_lengths)
        require(n >= 256, "kv-eval: --task-lengths ", n, " is below 256 tokens");
      for (const double f : o.task_budgets) require(f > 0 && f <= 1, "kv-eval: --task-budgets ", f, " is not in (0, 1]");
      std::vector<kv::Budgeting> task_rules;
      for (const auto& p : o.task_policies) task_rules.push_back(kv::parse_budgeting(p));
      // "none": the full cache and StreamingLLM only.
      std::vector<std::string> scorers;
      for (const auto& sc : o.task_scorers)
        if (sc != "none") scorers.push_back(sc);
      task_configs = kv::eval_configs(scorers, task_rules, o.recent_shares);
      for (const auto& name : o.task_formats) {
        const bool rot = name.size() > 4 && name.substr(name.size() - 4) == "+rot";
        kv::CacheFormat f;
        f.key = f.value = kv::parse_kv_format(rot ? name.substr(0, name.size() - 4) : name, "kv-eval: --task-formats");
        f.rotate = rot;
        for (const int64_t n : o.task_lengths)
          for (const double b : o.task_budgets)
            require(static_cast<double>(n) * b >= static_cast<double>(f.min_budget()), "kv-eval: --task-formats ",
                    name, " keeps the newest ", f.min_budget(), " tokens in float32, more than --task-budgets ", b,
                    " of ", n, " tokens allows");
        task_formats.emplace_back(name, f);
      }
      require(task_formats.empty() || !o.needle_decode, "kv-eval: --task-formats are stored once after the prompt; "
                                                        "they cannot be combined with --needle-decode");
    }
    if (o.gen_sequences > 0) {
      require(o.gen_prompt >= 1 && o.gen_steps >= 1, "kv-eval: --gen-prompt (", o.gen_prompt, ") and --gen-steps (",
              o.gen_steps, ") must be >= 1");
      require(o.gen_every >= 1, "kv-eval: --gen-every ", o.gen_every, " must be >= 1");
      require(o.gen_text || o.temperature > 0, "kv-eval: --temperature ", o.temperature, " must be > 0");
      for (const double f : o.gen_budgets) require(f > 0 && f <= 1, "kv-eval: --gen-budgets ", f, " is not in (0, 1]");
      for (const double t : o.thresholds) require(std::isfinite(t), "kv-eval: --thresholds ", t, " is not finite");
      std::vector<kv::Budgeting> gen_rules;
      for (const auto& p : o.gen_policies) gen_rules.push_back(kv::parse_budgeting(p));
      gen_configs = kv::eval_configs(o.gen_scorers, gen_rules, o.recent_shares);
    } else {
      require(o.gen_sequences == 0, "kv-eval: --gen-sequences ", o.gen_sequences, " is negative");
    }
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
    int64_t longest = std::max(o.prefill, o.needle_tokens);
    if (!task_kinds.empty())
      for (const int64_t n : o.task_lengths) longest = std::max(longest, n);
    // Allocated generation budgets are measured on calibration prompts of the generation's length.
    const bool gen_allocated =
        std::any_of(gen_configs.begin(), gen_configs.end(),
                    [](const kv::EvalConfig& c) { return !c.streaming() && c.budgeting == kv::Budgeting::allocated; });
    if (gen_allocated) {
      require(!cs.overlaps(nn::TextSlice::parse(o.text, o.gen_slice)), "kv-eval: the calibration slice (",
              cs.describe(), ") overlaps --gen-slice ", o.gen_slice);
      longest = std::max(longest, o.gen_prompt + o.gen_steps);
    }
    kv::AllocationTables tables(model, nn::tokenize_slice(tok, cs, longest + o.probe), settings);
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

    // ---- (d) long-context tasks ----
    if (!task_kinds.empty()) {
      const nn::TextSlice ts = nn::TextSlice::parse(o.text, o.task_slice);
      require(!cs.overlaps(ts), "kv-eval: the calibration slice (", cs.describe(), ") overlaps --task-slice (",
              ts.describe(), ")");
      for (const int64_t n : o.task_lengths)
        require(model.config().context_length <= 0 || n + o.task_answer_tokens <= model.config().context_length,
                "kv-eval: --task-lengths ", n, " and ", o.task_answer_tokens, " answer tokens exceed the model's ",
                model.config().context_length, "-token context");
      const std::string corpus = ts.read();
      const auto prompts = kv::task_prompts(tok, kv::chat_format(*file), corpus, task_kinds, o.task_lengths,
                                            o.task_instances, o.task_seed, o.task_settings);
      std::printf("\ntasks: %zu prompts (%lld per task and length, seed %llu) from %s\n", prompts.size(),
                  static_cast<long long>(o.task_instances), static_cast<unsigned long long>(o.task_seed),
                  ts.describe().c_str());
      kv::TaskOptions options;
      options.budgets = o.task_budgets;
      options.answer_tokens = o.task_answer_tokens;
      options.decode = o.needle_decode;
      options.eviction = settings;
      options.formats = task_formats;
      const kv::TaskResult r =
          kv::evaluate_tasks(model, tok, prompts, task_configs, options, &tables, progress_line("tasks", "prompts"));
      for (const auto& a : r.answers)
        json["tasks"]["answers"].push_back({{"task", kv::task_name(a.kind)},
                                            {"length", a.length},
                                            {"instance", a.instance},
                                            {"policy", a.label},
                                            {"budget", a.budget},
                                            {"answer", a.answer},
                                            {"correct", a.correct}});
      std::string csv = "task,length,policy,budget,correct,total,accuracy,wilson95_low,wilson95_high\n";
      auto cell = [](const kv::TaskScore& sc) {
        const kv::Interval i = sc.interval();
        return std::to_string(sc.correct) + "/" + std::to_string(sc.total) + " " + percent(sc.rate()) + " [" +
               percent(i.low) + ", " + percent(i.high) + "]";
      };
      std::vector<std::pair<std::string, double>> rows = {{"full cache", 1.0}};
      for (const auto& [name, fmt] : task_formats) rows.push_back({"full cache [" + name + "]", 1.0});
      for (const double f : o.task_budgets)
        for (const auto& c : task_configs) {
          rows.push_back({c.label(), f});
          for (const auto& [name, fmt] : task_formats) rows.push_back({c.label() + " [" + name + "]", f});
        }
      std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> lines;
      for (const int64_t len : o.task_lengths) {
        Table t{"Long-context tasks at " + std::to_string(len) + " tokens: correct/asked, accuracy [95% Wilson "
                    "interval]; budget = fraction of " + std::to_string(len) + " tokens",
                {"policy", "budget"},
                {}};
        for (const auto k : task_kinds) t.header.push_back(std::string(kv::task_name(k)));
        t.header.push_back("all tasks");
        for (const auto& [label, f] : rows) {
          std::vector<std::string> row = {label, f == 1.0 ? "100%" : percent(f)};
          for (const auto k : task_kinds) {
            const kv::TaskScore sc = r.score(k, len, label, f);
            row.push_back(cell(sc));
            const kv::Interval i = sc.interval();
            csv += std::string(kv::task_name(k)) + "," + std::to_string(len) + "," + label + "," + fmt(f, 4) + "," +
                   std::to_string(sc.correct) + "," + std::to_string(sc.total) + "," + fmt(sc.rate(), 4) + "," +
                   fmt(i.low, 4) + "," + fmt(i.high, 4) + "\n";
          }
          const kv::TaskScore all = r.overall(len, label, f);
          row.push_back(cell(all));
          const kv::Interval i = all.interval();
          csv += "all," + std::to_string(len) + "," + label + "," + fmt(f, 4) + "," + std::to_string(all.correct) + "," +
                 std::to_string(all.total) + "," + fmt(all.rate(), 4) + "," + fmt(i.low, 4) + "," + fmt(i.high, 4) +
                 "\n";
          t.rows.push_back(row);
          if (f != 1.0) {
            const std::string name = label + " @" + std::to_string(len);
            auto it = std::find_if(lines.begin(), lines.end(), [&](const auto& l) { return l.first == name; });
            if (it == lines.end()) it = lines.insert(lines.end(), {name, {}});
            it->second.push_back({100 * f, 100 * all.rate()});
          }
        }
        emit(t);
        lines.push_back({"full cache @" + std::to_string(len), {}});
        for (const double f : o.task_budgets)
          lines.back().second.push_back({100 * f, 100 * r.overall(len, "full cache", 1.0).rate()});
      }
      write_file(dir / "tasks.csv", csv);
      write_plot(dir, "tasks_vs_budget", "Long-context task accuracy (all tasks) vs KV budget",
                 "budget (% of the context)", "accuracy (%)", false, lines);
      plots.push_back("tasks_vs_budget");
    }

    // ---- (e) decode-time compression over long generations ----
    if (o.gen_sequences > 0) {
      const nn::TextSlice gs = nn::TextSlice::parse(o.text, o.gen_slice);
      const int64_t length = o.gen_prompt + o.gen_steps;
      require(model.config().context_length <= 0 || length <= model.config().context_length, "kv-eval: --gen-prompt + "
              "--gen-steps (", length, ") exceed the model's ", model.config().context_length, "-token context");
      const int64_t per = o.gen_text ? length : o.gen_prompt;
      const auto text = nn::tokenize_slice(tok, gs, o.gen_sequences * per);
      require(static_cast<int64_t>(text.size()) >= o.gen_sequences * per, "kv-eval: ", gs.describe(), " has ",
              text.size(), " tokens, ", o.gen_sequences, " sequences need ", o.gen_sequences * per);
      kv::GenerationOptions options;
      options.prompt = o.gen_prompt;
      options.steps = o.gen_steps;
      options.budgets = o.gen_budgets;
      options.thresholds = o.thresholds;
      options.every = o.gen_every;
      options.sample = !o.gen_text;
      options.temperature = o.temperature;
      options.seed = o.gen_seed;
      options.eviction = settings;
      std::printf("\ngeneration: %lld sequences, a %lld-token prompt from %s, then %lld tokens %s, compressed every "
                  "%lld\n",
                  static_cast<long long>(o.gen_sequences), static_cast<long long>(o.gen_prompt), gs.describe().c_str(),
                  static_cast<long long>(o.gen_steps),
                  o.gen_text ? "of the text read one at a time" : "sampled from the full cache",
                  static_cast<long long>(o.gen_every));
      const kv::GenerationResult g = kv::evaluate_generation(
          model, kv::split_windows(text, per, o.gen_sequences), gen_configs, options, &tables,
          progress_line("generation", "steps"));
      Table t{"Decode-time compression over " + std::to_string(o.gen_steps) + "-token generations (" +
                  std::to_string(o.gen_sequences) + " sequences, compressed every " + std::to_string(o.gen_every) +
                  " steps): KL(full || compressed), nats per token; ratio = KL / StreamingLLM's at the same budget",
              {"policy", "budget", "tokens per head (mean / max held)", "KL", "per sequence", "ratio", "top-1"},
              {}};
      std::string csv = "policy,budget,threshold,budget_tokens,mean_held,max_held,kl,top1,ratio_to_streaming\n";
      std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> lines;
      for (const auto& r : g.rows) {
        const double base = r.threshold ? 0.0 : g.row("streaming-llm", r.budget).mean_kl();
        std::string per_seq;
        for (const double k : r.sequence_kl) per_seq += (per_seq.empty() ? "" : " ") + fmt(k, 4);
        const std::string ratio = base > 0 ? fmt(r.mean_kl() / base, 3) + "x" : "-";
        t.rows.push_back({r.label(), r.threshold ? "threshold" : percent(r.budget) + " (" + std::to_string(r.tokens) + ")",
                          fmt(r.mean_held(), 1) + " / " + std::to_string(r.max_held), fmt(r.mean_kl(), 4), per_seq,
                          ratio, fmt(100 * r.top1_rate(), 1) + "%"});
        csv += r.label() + "," + fmt(r.budget, 4) + "," + (r.threshold ? fmt(*r.threshold, 6) : std::string()) + "," +
               std::to_string(r.tokens) + "," + fmt(r.mean_held(), 2) + "," + std::to_string(r.max_held) + "," +
               fmt(r.mean_kl(), 6) + "," + fmt(r.top1_rate(), 4) + "," + (base > 0 ? fmt(r.mean_kl() / base, 4) : "") +
               "\n";
        json["generation"]["results"].push_back({{"policy", r.label()},
                                                 {"budget", r.budget},
                                                 {"tokens", r.tokens},
                                                 {"mean_held", r.mean_held()},
                                                 {"max_held", r.max_held},
                                                 {"kl", r.mean_kl()},
                                                 {"sequence_kl", r.sequence_kl},
                                                 {"top1", r.top1_rate()}});
        const std::string name = r.threshold ? r.config.label() + " threshold" : r.config.label();
        auto it = std::find_if(lines.begin(), lines.end(), [&](const auto& l) { return l.first == name; });
        if (it == lines.end()) it = lines.insert(lines.end(), {name, {}});
        it->second.push_back({r.mean_held(), r.mean_kl()});
      }
      // The allocated layer budgets themselves, for the record (the tables are measured already).
      for (const auto& r : g.rows)
        if (!r.threshold && !r.config.streaming() && r.config.budgeting == kv::Budgeting::allocated) {
          const auto per_layer = kv::eval_policy(r.config, r.tokens, length, settings, &tables).per_layer;
          std::string list;
          for (const int64_t b : per_layer) list += (list.empty() ? "" : " ") + std::to_string(b);
          std::printf("%s at %s: tokens per KV head, layer 0 to %zu: %s\n", r.label().c_str(), percent(r.budget).c_str(),
                      per_layer.size() - 1, list.c_str());
          json["generation"]["allocations"][r.label()][fmt(r.budget, 2)] = per_layer;
        }
      json["generation"]["prompt"] = o.gen_prompt;
      json["generation"]["steps"] = o.gen_steps;
      json["generation"]["every"] = o.gen_every;
      json["generation"]["sampled"] = !o.gen_text;
      json["generation"]["slice"] = gs.describe();
      emit(t);
      write_file(dir / "generation.csv", csv);
      write_plot(dir, "generation_kl", "Decode-time KL over long generations vs tokens held",
                 "mean tokens held per KV head", "KL (nats / token)", true, lines);
      plots.push_back("generation_kl");
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
    std::string pngs;
    for (const auto& p : plots) pngs += ", " + p + ".png";
    std::printf("\nreport: %s/report.md, report.json%s (%.0f s)\n", o.report.c_str(), pngs.c_str(),
                seconds_since(t_start));
  });
}

}  // namespace strata::cli
