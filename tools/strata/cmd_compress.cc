// `strata plan` and `strata compress`: calibrate a model, measure every option a recipe allows for
// every tensor, spend one global budget with a solver, write the plan, the compressed model and a
// report comparing it with the dense model and with uniform compression at the same size.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "commands.hpp"
#include "pipeline.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/mapped_file.hpp"

namespace strata::cli {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Options {
  std::string model, recipe_file, preset = "gguf";
  std::optional<double> bpw, bytes;
  std::string like;    // budget = size of this uniform request ("q3_k" or "quant.ggml:q3_k")
  std::string solver;  // overrides the recipe's
  std::string error_mode;
  std::optional<double> max_error;
  bool evolve = false, no_evolve = false;
  int generations = -1, offspring = -1;
  int64_t probe_windows = 2, probe_length = 64;
  std::string calib_text, calib_slice;
  int64_t sequences = -1, length = -1;
  std::string eval_text, eval_slice = "0.9:1.0";
  int64_t eval_tokens = 2048, context = 512;
  std::string compare = "q2_k,q3_k,q4_k,q6_k";
  std::string out, plan_in, plan_out, table_out, table_in, report_dir;
  bool no_eval = false;
  int64_t threads = 0;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::pair<std::string, std::string> method_knob(const std::string& request) {
  const auto colon = request.find(':');
  if (colon == std::string::npos) return {"quant.ggml", request};
  require(colon > 0 && colon + 1 < request.size(), "'", request, "': expected METHOD:KNOB or a ggml type");
  return {request.substr(0, colon), request.substr(colon + 1)};
}

enum class OutputKind { none, gguf, safetensors };

OutputKind output_kind(const std::string& out) {
  if (out.empty()) return OutputKind::none;
  const std::string ext = std::filesystem::path(out).extension().string();
  if (ext == ".gguf") return OutputKind::gguf;
  if (ext == ".safetensors") return OutputKind::safetensors;
  fail("output '", out, "': the extension must be .gguf (ggml types, for llama.cpp) or .safetensors (any method)");
}

void require_writable_dir(const std::string& file, const char* what) {
  if (file.empty()) return;
  std::filesystem::path dir = std::filesystem::path(file).parent_path();
  if (dir.empty()) dir = ".";
  require(std::filesystem::is_directory(dir), what, " '", file, "': directory ", dir.string(), " does not exist");
}

budget::Recipe load_recipe(const Options& o) {
  budget::Recipe r = o.recipe_file.empty() ? budget::preset(o.preset) : budget::Recipe::load(o.recipe_file);
  if (!o.calib_text.empty()) r.calib_text = o.calib_text;
  if (!o.calib_slice.empty()) r.calib_slice = o.calib_slice;
  if (o.sequences > 0) r.calib_sequences = o.sequences;
  if (o.length > 0) r.calib_length = o.length;
  if (!o.solver.empty()) r.solver = o.solver;
  if (!o.error_mode.empty()) {
    require(o.error_mode == "output" || o.error_mode == "weight" || o.error_mode == "kl", "--error-mode '",
            o.error_mode, "': known modes are output, weight and kl");
    r.error_mode = o.error_mode;
  }
  if (o.evolve) r.evolve = true;
  if (o.no_evolve) r.evolve = false;
  if (o.generations > 0) r.generations = o.generations;
  if (o.offspring > 0) r.offspring = o.offspring;
  return r;
}

// The cheapest total cost the recipe allows, from the compressors' exact costs alone: an impossible
// budget is refused before anything expensive runs.
double cheapest_cost(const DenseModel& dense, const budget::Recipe& recipe, budget::Metric metric) {
  double total = 0;
  for (const auto& [tensor, params] : covered_tensors(dense, recipe)) {
    const budget::Rule& rule = *recipe.rule_for(tensor);
    const auto [rows, cols] = weight_shape(*dense.model, tensor);
    const RowMatrix<float> shape_only(rows, cols);  // cost() reads only the shape
    const compress::Layer layer{tensor, &shape_only};
    double best = std::numeric_limits<double>::infinity();
    std::vector<budget::MethodSpec> specs = rule.methods;
    if (rule.pin) {
      const auto [m, k] = method_knob(*rule.pin);
      specs = {budget::MethodSpec{m, {k}}};
    }
    for (const auto& spec : specs) {
      const auto& c = compress::find_compressor(spec.compressor);
      const auto knobs = spec.knobs.empty() ? c.knobs(layer) : spec.knobs;
      for (const auto& k : knobs) {
        budget::Candidate cand;
        cand.cost = c.cost(layer, effective_knob(spec.compressor, k, cols));
        best = std::min(best, cand.cost_of(metric));
      }
    }
    total += best;
  }
  return total;
}

struct Solved {
  budget::Plan plan;
  std::optional<budget::EvolveResult> evolved;
};

budget::Constraint constraint_for(const Options& o, const budget::Recipe& recipe, const budget::Table& table,
                                  const DenseModel& dense) {
  int given = (o.bpw ? 1 : 0) + (o.bytes ? 1 : 0) + (o.like.empty() ? 0 : 1);
  require(given <= 1, "give at most one of --bpw, --bytes and --like");
  if (o.bpw) return budget::bits_per_weight(table, *o.bpw);
  if (o.bytes) return {budget::Metric::bytes, *o.bytes};
  if (!o.like.empty()) {
    const auto [m, k] = method_knob(o.like);
    return {budget::Metric::bytes, uniform_plan(table, m, k, *dense.model).total_cost().bytes};
  }
  if (recipe.like) {
    const auto [m, k] = method_knob(*recipe.like);
    return {budget::Metric::bytes, uniform_plan(table, m, k, *dense.model).total_cost().bytes};
  }
  if (recipe.bits_per_weight) return budget::bits_per_weight(table, *recipe.bits_per_weight);
  if (recipe.bytes) return {budget::Metric::bytes, *recipe.bytes};
  if (recipe.params) return {budget::Metric::params, *recipe.params};
  if (recipe.flops) return {budget::Metric::flops, *recipe.flops};
  fail("recipe '", recipe.name, "' sets no budget: give --bpw, --bytes or --like");
}

std::string describe(const budget::Constraint& c, const budget::Table& table) {
  std::ostringstream o;
  if (c.metric == budget::Metric::bytes)
    o << c.budget / (1024.0 * 1024.0) << " MiB (" << 8.0 * c.budget / static_cast<double>(table.params())
      << " bits per weight over " << table.layers.size() << " tensors)";
  else
    o << c.budget << " " << budget::metric_name(c.metric);
  return o.str();
}

budget::Plan solve_plain(const budget::Table& table, const budget::Constraint& c, const std::string& solver,
                         const Options& o) {
  if (solver == "error") {
    require(o.max_error.has_value(), "solver 'error' needs --max-error");
    return budget::solve_error_constrained(table, c.metric, *o.max_error);
  }
  return budget::solve(table, c, budget::parse_solver(solver));
}

void print_plan(const budget::Plan& plan, const budget::Table& table) {
  std::printf("plan (%s): %.2f MiB, %.4f bits per weight, total predicted error %.5g\n", plan.solver.c_str(),
              plan.total_cost().bytes / (1024.0 * 1024.0), plan.bits_per_weight(table.params()), plan.total_error());
  std::map<std::string, int> counts;
  for (const auto& ch : plan.choices) ++counts[ch.method + ":" + ch.knob];
  std::printf("choices:");
  for (const auto& [k, n] : counts) std::printf(" %s x%d", k.c_str(), n);
  std::printf("\n");
}

void run(const Options& o, bool compress_model) {
  const auto t0 = Clock::now();
  if (o.threads > 0) set_num_threads(static_cast<int>(o.threads));
  Report report;
  // ---- everything that can be refused cheaply is refused before calibration ----
  const OutputKind kind = output_kind(o.out);
  require(!compress_model || kind != OutputKind::none, "strata compress needs --out FILE.gguf|FILE.safetensors");
  require_writable_dir(o.out, "output");
  require_writable_dir(o.plan_out, "plan output");
  require_writable_dir(o.table_out, "table output");
  const budget::Recipe recipe = load_recipe(o);
  if (kind == OutputKind::gguf)
    for (const auto& rule : recipe.rules) {
      for (const auto& m : rule.methods)
        require(m.compressor.rfind("quant.ggml", 0) == 0, "recipe '", recipe.name, "': rule '", rule.match,
                "' allows ", m.compressor, ", which GGUF cannot hold; write .safetensors or use ggml types only");
      if (rule.pin)
        require(method_knob(*rule.pin).first.rfind("quant.ggml", 0) == 0, "recipe '", recipe.name, "': rule '",
                rule.match, "' pins ", *rule.pin, ", which GGUF cannot hold");
    }
  std::optional<budget::Plan> given_plan;
  if (!o.plan_in.empty()) given_plan = budget::Plan::load(o.plan_in);

  const DenseModel dense = load_dense(o.model);
  if (kind == OutputKind::gguf)
    require(dense.file->format() == io::FileFormat::gguf, o.model, ": writing GGUF needs a GGUF source model");
  report.model = o.model;
  report.recipe = recipe.name;
  std::printf("model: %s (%lld layers, dim %lld, vocab %lld)\n", o.model.c_str(),
              static_cast<long long>(dense.model->config().n_layers), static_cast<long long>(dense.model->config().dim),
              static_cast<long long>(dense.model->config().vocab_size));
  if (!given_plan) {
    const double cheapest = cheapest_cost(dense, recipe, budget::Metric::bytes);
    if (o.bytes) require(*o.bytes >= cheapest, "budget of ", *o.bytes, " bytes is impossible: recipe '", recipe.name,
                         "' cannot go below ", static_cast<uint64_t>(cheapest), " bytes");
    if (o.bpw || (!o.bytes && o.like.empty() && !recipe.like && recipe.bits_per_weight)) {
      int64_t params = 0;
      for (const auto& [t, p] : covered_tensors(dense, recipe)) params += p;
      const double bpw = o.bpw ? *o.bpw : *recipe.bits_per_weight;
      require(bpw * static_cast<double>(params) / 8.0 >= cheapest, "budget of ", bpw,
              " bits per weight is impossible: recipe '", recipe.name, "' cannot go below ",
              8.0 * cheapest / static_cast<double>(params), " bits per weight on this model (",
              static_cast<double>(params) / 1e6, "M weights covered)");
    }
  }
  require(!recipe.calib_text.empty(), "no calibration text: give --calib-text FILE (or set it in the recipe)");
  const nn::TextSlice calib_slice = nn::TextSlice::parse(recipe.calib_text, recipe.calib_slice);
  std::optional<nn::TextSlice> eval_slice;
  if (!o.no_eval) {
    require(!o.eval_text.empty(), "no evaluation text: give --eval-text FILE (or --no-eval)");
    eval_slice = nn::TextSlice::parse(o.eval_text, o.eval_slice);
    require(!calib_slice.overlaps(*eval_slice), "calibration (", calib_slice.describe(), ") and evaluation (",
            eval_slice->describe(), ") overlap");
  }

  // ---- calibrate, measure, solve ----
  auto t = Clock::now();
  const auto calib = calibrate_on(dense, calib_slice, recipe.calib_sequences, recipe.calib_length);
  report.seconds.emplace_back("calibration", since(t));
  report.calibration = calib_slice.describe() + ", " + std::to_string(recipe.calib_sequences) + " x " +
                       std::to_string(recipe.calib_length) + " tokens";
  LayerBank bank(*dense.model, calib->stats, dense.file->find("output.weight") == nullptr);

  budget::Table table;
  budget::Plan plan;
  std::optional<budget::Constraint> constraint;
  std::unique_ptr<Judge> probe;
  if (given_plan) {
    plan = *given_plan;
    report.solver = "plan from " + o.plan_in;
    report.budget = "as planned";
  } else {
    t = Clock::now();
    if (!o.table_in.empty()) {
      std::ifstream in(o.table_in);
      require(static_cast<bool>(in), o.table_in, ": cannot read");
      nlohmann::json j;
      try {
        in >> j;
      } catch (const std::exception& e) {
        fail(o.table_in, ": not JSON: ", e.what());
      }
      table = budget::Table::from_json(j);
    } else {
      table = build_candidates(dense, recipe, bank);
    }
    report.seconds.emplace_back("measuring options", since(t));
    if (!o.table_out.empty()) {
      io::AtomicFileWriter w(o.table_out);
      const std::string s = table.to_json().dump(1) + "\n";
      w.write(s.data(), s.size());
      w.commit();
    }
    auto make_probe = [&] {
      if (probe) return;
      // KL to the dense model on the first calibration windows: the statistics are averages over
      // many tokens, so reusing a few of them costs little and keeps the evaluation text untouched.
      std::vector<std::vector<int32_t>> windows;
      for (int64_t i = 0; i < o.probe_windows && i < static_cast<int64_t>(calib->sequences.size()); ++i) {
        const auto& s = calib->sequences[static_cast<size_t>(i)];
        windows.emplace_back(s.begin(), s.begin() + std::min<int64_t>(o.probe_length, static_cast<int64_t>(s.size())));
      }
      probe = std::make_unique<Judge>(*dense.model, windows);
    };
    if (recipe.error_mode == "kl") {
      t = Clock::now();
      make_probe();
      const auto sens = weight_errors_by_kl(table, *dense.model, bank, *probe);
      report.seconds.emplace_back("measuring sensitivities", since(t));
      report.notes.push_back("errors are relative output errors scaled per layer by a measured KL sensitivity (" +
                             std::to_string(probe->tokens()) + " probe tokens)");
    }
    constraint = constraint_for(o, recipe, table, dense);
    const budget::Table front = table.pareto(constraint->metric);
    report.budget = describe(*constraint, table);
    std::printf("budget: %s\n", report.budget.c_str());
    t = Clock::now();
    plan = solve_plain(front, *constraint, recipe.solver, o);
    report.solver = recipe.solver;
    report.seconds.emplace_back("solving", since(t));
    print_plan(plan, table);
    if (recipe.evolve) {
      t = Clock::now();
      make_probe();
      auto fitness = [&](const budget::Plan& p) { return probe->kl(apply_plan(*dense.model, p, bank)); };
      // Start from the best of the per-layer-error solvers, as measured.
      budget::Plan start = plan;
      double start_fit = fitness(plan);
      for (const char* s : {"greedy", "dp", "minimax"}) {
        if (s == recipe.solver) continue;
        budget::Plan alt = budget::solve(front, *constraint, budget::parse_solver(s));
        const double f = fitness(alt);
        std::printf("probe KL: %s %.5f (%s %.5f)\n", s, f, start.solver.c_str(), start_fit);
        if (f < start_fit) {
          start = alt;
          start_fit = f;
        }
      }
      budget::EvolveOptions eo;
      eo.generations = recipe.generations;
      eo.offspring = recipe.offspring;
      eo.seed = recipe.seed;
      Progress bar("evolutionary search", eo.generations);
      eo.progress = [&](int g, double) { bar.update(g + 1); };
      budget::EvolveResult er = budget::evolve(front, *constraint, start, fitness, eo);
      report.evolve = {{"start_solver", start.solver}, {"start_fitness", er.start_fitness},
                       {"best_fitness", er.best_fitness}, {"evaluations", er.evaluations},
                       {"generations", eo.generations}, {"offspring", eo.offspring},
                       {"probe_tokens", probe->tokens()}, {"history", er.history}};
      std::printf("evolutionary search: probe KL %.5f -> %.5f (%d evaluations)\n", er.start_fitness, er.best_fitness,
                  er.evaluations);
      report.seconds.emplace_back("evolutionary search", since(t));
      report.notes.push_back("the evolutionary search started from the " + start.solver +
                             " plan, the best of the per-layer-error solvers on the probe");
      plan = er.best;
      plan.solver = "evolve (from " + start.solver + ")";
      report.solver = plan.solver;
    }
  }
  const std::string plan_out = !o.plan_out.empty() ? o.plan_out : (compress_model ? o.out + ".plan.json" : "");
  require(!plan_out.empty(), "strata plan needs --out PLAN.json");
  plan.save(plan_out);
  std::printf("plan written to %s\n", plan_out.c_str());

  // ---- apply and write ----
  if (compress_model) {
    t = Clock::now();
    compress::LayerMap layers;
    {
      Progress bar("compressing", static_cast<int64_t>(plan.choices.size()));
      int64_t done = 0;
      for (const auto& ch : plan.choices) {
        layers.emplace(ch.tensor, copy_of(bank.compressed(ch.tensor, ch.method, ch.knob)));
        bar.update(++done);
      }
    }
    const std::vector<std::pair<std::string, std::string>> extra = {{"strata.plan", plan.to_json().dump()}};
    if (kind == OutputKind::gguf) {
      const io::GgufFile src = io::GgufFile::open(o.model);
      const auto info = compress::write_gguf(src, layers, o.out, extra);
      report.output_bytes = info.file_bytes;
      std::printf("wrote %s: %.2f MiB (tensors %.2f MiB + %llu bytes of metadata), llama.cpp file type %d\n",
                  o.out.c_str(), static_cast<double>(info.file_bytes) / (1024.0 * 1024.0),
                  static_cast<double>(info.tensor_bytes) / (1024.0 * 1024.0),
                  static_cast<unsigned long long>(info.overhead_bytes), info.file_type);
    } else {
      compress::write_strata_safetensors(*dense.file, layers, o.out, {{"strata.plan", plan.to_json().dump()}});
      report.output_bytes = std::filesystem::file_size(o.out);
      std::printf("wrote %s: %.2f MiB\n", o.out.c_str(), static_cast<double>(report.output_bytes) / (1024.0 * 1024.0));
    }
    report.output = o.out;
    report.seconds.emplace_back("compressing and writing", since(t));
  }
  if (o.no_eval) return;

  // ---- evaluate and report ----
  t = Clock::now();
  const auto eval_tokens = nn::tokenize_slice(*dense.tokenizer, *eval_slice, o.eval_tokens);
  const int64_t n_windows = static_cast<int64_t>(eval_tokens.size()) / o.context;
  require(n_windows >= 1, "evaluation slice ", eval_slice->describe(), " has ", eval_tokens.size(),
          " tokens, fewer than one window of ", o.context);
  const auto windows = nn::cut_sequences(eval_tokens, n_windows, o.context, -1);
  const Judge judge(*dense.model, windows);
  report.evaluation = eval_slice->describe() + ", " + std::to_string(judge.tokens()) + " scored tokens in " +
                      std::to_string(n_windows) + " windows of " + std::to_string(o.context);
  int64_t params = 0;
  for (const auto& ch : plan.choices) {
    const auto [rows, cols] = weight_shape(*dense.model, ch.tensor);
    params += rows * cols;
  }
  report.params = params;
  // One judgement per variant: the plan, then a uniform and an allocated plan per --compare request.
  std::vector<std::string> likes = split_list(o.compare);
  if (!o.like.empty() && std::find(likes.begin(), likes.end(), o.like) == likes.end()) likes.push_back(o.like);
  Progress eval_bar("evaluating", given_plan ? 1 : 1 + 2 * static_cast<int64_t>(likes.size()));
  int64_t judged = 0;
  auto measure = [&](const budget::Plan& p, const std::string& label) {
    const Judgement j = judge(apply_plan(*dense.model, p, bank));
    eval_bar.update(++judged);
    report.dense_perplexity = j.dense_perplexity;
    VariantResult v;
    v.label = label;
    v.bytes = p.total_cost().bytes;
    v.bits_per_weight = p.bits_per_weight(params);
    v.perplexity = j.perplexity;
    v.mean_kl = j.mean_kl;
    v.p99_kl = j.p99_kl;
    v.top1 = j.top1;
    v.predicted_error = p.total_error();
    std::printf("  %-44s %8.3f bpw  ppl %8.3f  KL %.5f\n", label.c_str(), v.bits_per_weight, v.perplexity, v.mean_kl);
    return v;
  };
  std::printf("evaluating on %s\n", report.evaluation.c_str());
  report.variants.push_back(measure(plan, "allocated (" + report.solver + ")"));
  if (!given_plan) {
    // Uniform requests for the curve, and the one of the plan's size for the headline comparison.
    struct Sized {
      std::string like;
      budget::Plan uniform;
    };
    std::vector<Sized> sized;
    for (const auto& l : likes) {
      const auto [m, k] = method_knob(l);
      try {
        sized.push_back({l, uniform_plan(table, m, k, *dense.model)});
      } catch (const Error& e) {
        report.notes.push_back(std::string("no uniform point for ") + l + ": " + e.what());
      }
    }
    std::sort(sized.begin(), sized.end(),
              [](const Sized& a, const Sized& b) { return a.uniform.total_cost().bytes < b.uniform.total_cost().bytes; });
    const budget::Table front = table.pareto(budget::Metric::bytes);
    for (const auto& s : sized) {
      const VariantResult u = measure(s.uniform, "uniform " + s.like);
      const budget::Constraint c{budget::Metric::bytes, s.uniform.total_cost().bytes};
      budget::Plan a;
      try {
        a = budget::solve(front, c, budget::parse_solver(recipe.solver == "error" ? "greedy" : recipe.solver));
      } catch (const Error& e) {
        report.notes.push_back("allocation at the size of " + s.like + " failed: " + e.what());
        continue;
      }
      const VariantResult v = measure(a, "allocated at the size of " + s.like);
      report.curve.push_back({s.like, u.bits_per_weight, u.mean_kl, v.bits_per_weight, v.mean_kl});
      // The uniform plan the budget was sized by (or that happens to match it) joins the headline table.
      const double budget_bytes = constraint && constraint->metric == budget::Metric::bytes ? constraint->budget
                                                                                            : plan.total_cost().bytes;
      if (std::abs(u.bytes - budget_bytes) <= 0.5 * 0.001 * u.bytes) report.variants.push_back(u);
    }
  }
  report.seconds.emplace_back("evaluation", since(t));

  // Per tensor: the predicted error (calibration inputs) next to the error on held-out inputs.
  t = Clock::now();
  nn::Calibration held_out;
  size_t next = 0;
  nn::calibrate(*dense.model,
                [&](std::vector<int32_t>& s) {
                  if (next == windows.size()) return false;
                  s = windows[next++];
                  return true;
                },
                held_out);
  std::vector<double> predicted(plan.choices.size());
  for (size_t i = 0; i < plan.choices.size(); ++i) {
    const auto& ch = plan.choices[i];
    TensorRow row;
    row.tensor = ch.tensor;
    row.method = ch.method;
    row.knob = ch.knob;
    row.bytes = ch.cost.bytes;
    const RowMatrix<float>& w = bank.weight(ch.tensor);
    row.bits_per_weight = 8.0 * ch.cost.bytes / static_cast<double>(w.size());
    row.predicted_error = ch.predicted_error;
    row.measured_error = std::numeric_limits<double>::quiet_NaN();
    if (held_out.has(ch.tensor)) {
      const Matrix<double> h = held_out.stats(ch.tensor).hessian();
      const auto& c = bank.compressed(ch.tensor, ch.method, ch.knob);
      row.measured_error = compress::output_error(w, compress::find_compressor(ch.method).reconstruct(c), &h);
    }
    report.tensors.push_back(row);
  }
  report.seconds.emplace_back("held-out layer errors", since(t));
  report.seconds.emplace_back("total", since(t0));
  const std::string dir = !o.report_dir.empty() ? o.report_dir : (o.out.empty() ? "strata-report" : o.out + ".report");
  write_report(report, dir);
  std::printf("\n%s\nreport: %s/report.md (plots: allocation.png, rate_distortion.png)\n",
              summary_markdown(report).c_str(), dir.c_str());
}

void add_options(CLI::App* cmd, Options& o) {
  cmd->add_option("model", o.model, "GGUF llama model with its tokenizer")->required()->check(CLI::ExistingFile);
  cmd->add_option("--recipe", o.recipe_file, "recipe file (JSON)")->check(CLI::ExistingFile);
  cmd->add_option("--preset", o.preset, "built-in recipe when no --recipe is given")->capture_default_str();
  cmd->add_option("--bpw", o.bpw, "budget: bits per weight over the tensors the recipe covers");
  cmd->add_option("--bytes", o.bytes, "budget: total bytes of the tensors the recipe covers");
  cmd->add_option("--like", o.like, "budget: the size of a uniform request, e.g. q3_k or quant.ggml:q3_k");
  cmd->add_option("--solver", o.solver, "uniform, greedy, dp, minimax or error (with --max-error)");
  cmd->add_option("--error-mode", o.error_mode, "output, weight or kl (overrides the recipe)");
  cmd->add_option("--max-error", o.max_error, "error-constrained mode: smallest plan with total error <= this");
  cmd->add_flag("--evolve", o.evolve, "refine the plan by an evolutionary search on measured KL");
  cmd->add_flag("--no-evolve", o.no_evolve, "do not run the evolutionary search even if the recipe asks");
  cmd->add_option("--generations", o.generations, "evolutionary search generations");
  cmd->add_option("--offspring", o.offspring, "evolutionary search offspring per generation");
  cmd->add_option("--probe-windows", o.probe_windows, "calibration windows the search measures KL on")
      ->capture_default_str();
  cmd->add_option("--probe-length", o.probe_length, "tokens per probe window")->capture_default_str();
  cmd->add_option("--calib-text", o.calib_text, "calibration text (overrides the recipe)")->check(CLI::ExistingFile);
  cmd->add_option("--calib-slice", o.calib_slice, "calibration slice BEGIN:END (overrides the recipe)");
  cmd->add_option("--sequences", o.sequences, "calibration sequences (overrides the recipe)");
  cmd->add_option("--length", o.length, "tokens per calibration sequence (overrides the recipe)");
  cmd->add_option("--table", o.table_out, "also write the candidate table (JSON) here");
  cmd->add_option("--table-in", o.table_in, "reuse a candidate table written by --table (same model and recipe)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--threads", o.threads, "threads (0 = all)");
}

}  // namespace

void register_compress(CLI::App& app) {
  {
    static Options o;
    auto* cmd = app.add_subcommand("plan", "Measure every option a recipe allows and solve for a budget; write the plan");
    add_options(cmd, o);
    cmd->add_option("--out,-o", o.plan_out, "plan file (JSON) to write")->required();
    cmd->callback([] {
      Options run_o = o;
      run_o.no_eval = true;
      run(run_o, false);
    });
  }
  {
    static Options o;
    auto* cmd = app.add_subcommand("compress", "Calibrate, plan, compress and write a model, then report");
    add_options(cmd, o);
    cmd->add_option("--out,-o", o.out, "output model: .gguf (llama.cpp) or .safetensors (strata)")->required();
    cmd->add_option("--plan", o.plan_in, "apply this plan instead of solving")->check(CLI::ExistingFile);
    cmd->add_option("--plan-out", o.plan_out, "where to write the plan (default: OUT.plan.json)");
    cmd->add_option("--report", o.report_dir, "report directory (default: OUT.report)");
    cmd->add_option("--eval-text", o.eval_text, "evaluation text")->check(CLI::ExistingFile);
    cmd->add_option("--eval-slice", o.eval_slice, "evaluation slice BEGIN:END")->capture_default_str();
    cmd->add_option("--eval-tokens", o.eval_tokens, "tokens to evaluate on")->capture_default_str();
    cmd->add_option("--context", o.context, "evaluation window")->capture_default_str();
    cmd->add_option("--compare", o.compare, "uniform requests for the rate-distortion curve, comma-separated")
        ->capture_default_str();
    cmd->add_flag("--no-eval", o.no_eval, "skip evaluation and the report");
    cmd->callback([] { run(o, true); });
  }
}

}  // namespace strata::cli
