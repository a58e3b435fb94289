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
#include "progress.hpp"
#include "report.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/imatrix.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/pipeline/pipeline.hpp"

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
  std::string imatrix;  // a llama.cpp importance matrix replacing the calibration's mean x^2
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

std::string describe(const budget::Constraint& c, const budget::Table& table) {
  std::ostringstream o;
  if (c.metric == budget::Metric::bytes)
    o << c.budget / (1024.0 * 1024.0) << " MiB (" << 8.0 * c.budget / static_cast<double>(table.params())
      << " bits per weight over " << table.layers.size() << " tensors)";
  else
    o << c.budget << " " << budget::metric_name(c.metric);
  return o.str();
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

budget::Table read_table(const std::string& path) {
  std::ifstream in(path);
  require(static_cast<bool>(in), path, ": cannot read");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    fail(path, ": not JSON: ", e.what());
  }
  return budget::Table::from_json(j);
}

VariantResult to_row(const pipeline::Variant& v) {
  VariantResult r;
  r.label = v.label;
  r.bytes = v.bytes;
  r.bits_per_weight = v.bits_per_weight;
  r.perplexity = v.result.model.perplexity;
  r.mean_kl = v.result.mean_kl;
  r.p99_kl = v.result.p99_kl;
  r.top1 = v.result.top1_agreement;
  r.predicted_error = v.plan.total_error();
  return r;
}

void run(const Options& o, bool compress_model) {
  const auto t0 = Clock::now();
  if (o.threads > 0) set_num_threads(static_cast<int>(o.threads));
  const auto progress = stage_bars();
  Report report;
  // ---- everything that can be refused cheaply is refused before the model is read ----
  require(!compress_model || !o.out.empty(), "strata compress needs --out FILE.gguf|FILE.safetensors");
  require_writable_dir(o.out, "output");
  require_writable_dir(o.plan_out, "plan output");
  require_writable_dir(o.table_out, "table output");
  const budget::Recipe recipe = load_recipe(o);
  pipeline::PlanOptions plan_options = pipeline::PlanOptions::from(recipe);
  plan_options.max_error = o.max_error;
  plan_options.check();
  const pipeline::BudgetRequest request{o.bpw, o.bytes, o.like};
  for (const auto& l : split_list(o.compare)) pipeline::check_request(l);
  if (!o.like.empty()) pipeline::check_request(o.like);
  std::optional<budget::Plan> given_plan;
  if (!o.plan_in.empty()) given_plan = budget::Plan::load(o.plan_in);
  require(!recipe.calib_text.empty(), "no calibration text: give --calib-text FILE (or set it in the recipe)");
  const nn::TextSlice calib_slice = nn::TextSlice::parse(recipe.calib_text, recipe.calib_slice);
  std::optional<nn::TextSlice> eval_slice;
  if (!o.no_eval) {
    require(!o.eval_text.empty(), "no evaluation text: give --eval-text FILE (or --no-eval)");
    eval_slice = nn::TextSlice::parse(o.eval_text, o.eval_slice);
    require(!calib_slice.overlaps(*eval_slice), "calibration (", calib_slice.describe(), ") and evaluation (",
            eval_slice->describe(), ") overlap");
  }

  std::optional<io::Imatrix> imatrix;
  if (!o.imatrix.empty()) imatrix = io::read_imatrix(o.imatrix);

  const pipeline::Model model = pipeline::Model::load(o.model, /*need_tokenizer=*/true);
  if (!o.out.empty()) pipeline::check_output(model, recipe, o.out);
  if (imatrix) {
    std::vector<std::pair<std::string, int64_t>> layers;
    for (const auto& name : model.dense->linear_names())
      layers.emplace_back(name, model.dense->linear(name).in_features());
    io::check_imatrix(*imatrix, layers, o.imatrix);
  }
  if (!given_plan) pipeline::check_budget(model, recipe, request);
  report.model = o.model;
  report.recipe = recipe.name;
  std::printf("model: %s (%lld layers, dim %lld, vocab %lld)\n", o.model.c_str(),
              static_cast<long long>(model.dense->config().n_layers), static_cast<long long>(model.dense->config().dim),
              static_cast<long long>(model.dense->config().vocab_size));

  // ---- calibrate, measure, plan ----
  auto t = Clock::now();
  pipeline::Calibration calib =
      pipeline::calibrate(model, calib_slice, {recipe.calib_sequences, recipe.calib_length, {}}, progress);
  report.seconds.emplace_back("calibration", since(t));
  report.calibration = calib.source;
  if (imatrix) {
    // Rounding weighs by the imported importance; errors are still measured on the calibration.
    nn::apply_imatrix(*imatrix, calib.stats);
    report.calibration += "; importance (mean x^2) of " + std::to_string(imatrix->entries.size()) +
                          " tensors from the llama.cpp imatrix " + o.imatrix;
  }
  pipeline::LayerBank bank(model, &calib.stats);

  budget::Table table;
  budget::Plan plan;
  std::optional<budget::Constraint> constraint;
  std::unique_ptr<nn::KlEvaluator> probe;
  auto make_probe = [&] {
    if (probe) return;
    // KL to the dense model on the first calibration windows: the statistics are averages over many
    // tokens, so reusing a few of them costs little and keeps the evaluation text untouched.
    std::vector<std::vector<int32_t>> windows;
    for (int64_t i = 0; i < o.probe_windows && i < static_cast<int64_t>(calib.sequences.size()); ++i) {
      const auto& s = calib.sequences[static_cast<size_t>(i)];
      windows.emplace_back(s.begin(), s.begin() + std::min<int64_t>(o.probe_length, static_cast<int64_t>(s.size())));
    }
    probe = std::make_unique<nn::KlEvaluator>(*model.dense, windows, /*keep_hidden=*/true);
  };
  if (given_plan) {
    plan = *given_plan;
    report.solver = "plan from " + o.plan_in;
    report.budget = "as planned";
  } else {
    t = Clock::now();
    table = o.table_in.empty() ? pipeline::measure(model, recipe, bank, {}, progress) : read_table(o.table_in);
    report.seconds.emplace_back("measuring options", since(t));
    if (!o.table_out.empty()) {
      io::AtomicFileWriter w(o.table_out);
      const std::string s = table.to_json().dump(1) + "\n";
      w.write(s.data(), s.size());
      w.commit();
    }
    if (recipe.error_mode == "kl") {
      t = Clock::now();
      make_probe();
      pipeline::weigh_by_kl(table, bank, *probe, progress);
      report.seconds.emplace_back("measuring sensitivities", since(t));
      report.notes.push_back("errors are relative output errors scaled per layer and kind of option by a measured KL sensitivity (" +
                             std::to_string(probe->tokens()) + " probe tokens)");
    }
    constraint = pipeline::resolve_budget(model, recipe, table, request);
    report.budget = describe(*constraint, table);
    std::printf("budget: %s\n", report.budget.c_str());
    t = Clock::now();
    // The guard measures candidate plans on the probe when the menu mixes kinds.
    if (plan_options.evolve || (plan_options.guard && !pipeline::single_kind_menus(table, *constraint).empty()))
      make_probe();
    pipeline::PlanResult solved = pipeline::plan(table, *constraint, plan_options, bank, probe.get(), progress);
    plan = std::move(solved.plan);
    report.solver = plan.solver;
    report.seconds.emplace_back(solved.evolved ? "solving and evolutionary search" : "solving", since(t));
    for (const auto& [s, kl] : solved.probe_kl) {
      std::printf("probe KL: %s %.5f\n", s.c_str(), kl);
      if (solved.probe_kl.size() > 1)
        report.notes.push_back("candidate plan '" + s + "': probe KL " + std::to_string(kl));
    }
    if (solved.probe_kl.size() > 1 && !solved.evolved)
      report.notes.push_back("kept '" + plan.solver + "', the candidate with the lowest probe KL (the guard against "
                             "a wider menu doing worse than one kind alone)");
    if (solved.evolved) {
      const budget::EvolveResult& er = *solved.evolved;
      report.evolve = {{"start_solver", solved.start_solver}, {"start_fitness", er.start_fitness},
                       {"best_fitness", er.best_fitness}, {"evaluations", er.evaluations},
                       {"generations", plan_options.evolve_options.generations},
                       {"offspring", plan_options.evolve_options.offspring},
                       {"max_swaps", plan_options.evolve_options.max_swaps},
                       {"probe_tokens", probe->tokens()}, {"history", er.history}};
      std::printf("evolutionary search: probe KL %.5f -> %.5f (%d evaluations)\n", er.start_fitness, er.best_fitness,
                  er.evaluations);
      report.notes.push_back("the evolutionary search started from the " + solved.start_solver +
                             " plan, the best of the per-layer-error solvers on the probe");
    }
    print_plan(plan, table);
  }
  const std::string plan_out = !o.plan_out.empty() ? o.plan_out : (compress_model ? o.out + ".plan.json" : "");
  require(!plan_out.empty(), "strata plan needs --out PLAN.json");
  plan.save(plan_out);
  std::printf("plan written to %s\n", plan_out.c_str());

  // ---- apply and write ----
  compress::LayerMap planned_layers;  // kept for the held-out errors
  if (compress_model) {
    t = Clock::now();
    planned_layers = pipeline::compressed_layers(plan, bank, progress);
    const pipeline::Written w = pipeline::write(model, planned_layers, o.out, plan);
    report.output_bytes = w.file_bytes;
    report.output = o.out;
    std::printf("wrote %s: %.2f MiB (tensors %.2f MiB + %llu bytes of metadata)", o.out.c_str(),
                static_cast<double>(w.file_bytes) / (1024.0 * 1024.0),
                static_cast<double>(w.tensor_bytes) / (1024.0 * 1024.0),
                static_cast<unsigned long long>(w.overhead_bytes));
    if (w.file_type >= 0) std::printf(", llama.cpp file type %d", w.file_type);
    std::printf("\n");
    report.seconds.emplace_back("compressing and writing", since(t));
  }
  if (o.no_eval) return;

  // ---- evaluate and report ----
  t = Clock::now();
  const auto eval_tokens = nn::tokenize_slice(*model.tokenizer, *eval_slice, o.eval_tokens);
  const int64_t n_windows = static_cast<int64_t>(eval_tokens.size()) / o.context;
  require(n_windows >= 1, "evaluation slice ", eval_slice->describe(), " has ", eval_tokens.size(),
          " tokens, fewer than one window of ", o.context);
  const auto windows = nn::cut_sequences(eval_tokens, n_windows, o.context, -1);
  // The per-tensor errors on held-out inputs ride along the judge's dense pass over the same windows.
  std::optional<pipeline::HeldOutErrors> held_out;
  if (compress_model) held_out.emplace(model, plan, planned_layers);
  const nn::KlEvaluator judge(*model.dense, windows, /*keep_hidden=*/false, held_out ? &*held_out : nullptr);
  report.evaluation = eval_slice->describe() + ", " + std::to_string(judge.tokens()) + " scored tokens in " +
                      std::to_string(n_windows) + " windows of " + std::to_string(o.context);
  std::vector<std::string> likes = split_list(o.compare);
  if (!o.like.empty() && std::find(likes.begin(), likes.end(), o.like) == likes.end()) likes.push_back(o.like);
  pipeline::EvaluateOptions eo;
  eo.compare = likes;
  eo.solver = recipe.solver;
  std::printf("evaluating on %s\n", report.evaluation.c_str());
  const pipeline::Evaluation ev =
      pipeline::evaluate(plan, bank, judge, given_plan ? nullptr : &table, eo, progress);
  report.dense_perplexity = ev.dense_perplexity;
  for (const auto& n : ev.notes) report.notes.push_back(n);
  {
    // The sensitivities, the search and this evaluation ran the compressed layers in their own forms.
    std::string forms;
    for (const auto& [form, count_bytes] : ev.plan_forms)
      forms += (forms.empty() ? "" : ", ") + std::to_string(count_bytes.first) + " x " + form + " (" +
               std::to_string(count_bytes.second / 1024) + " KiB)";
    report.notes.push_back("the compressed models ran on their compressed layers, no float32 copy: " + forms);
  }
  for (const auto& v : ev.variants)
    std::printf("  %-44s %8.3f bpw  ppl %8.3f  KL %.5f\n", v.label.c_str(), v.bits_per_weight,
                v.result.model.perplexity, v.result.mean_kl);
  report.variants.push_back(to_row(ev.variants.front()));
  int64_t params = 0;
  for (const auto& ch : plan.choices) {
    const auto [rows, cols] = model.weight_shape(ch.tensor);
    params += rows * cols;
  }
  report.params = params;
  // Variants after the plan come in pairs: uniform, then allocated at its size.
  const double budget_bytes =
      constraint && constraint->metric == budget::Metric::bytes ? constraint->budget : plan.total_cost().bytes;
  for (size_t i = 1; i + 1 < ev.variants.size(); i += 2) {
    const pipeline::Variant& u = ev.variants[i];
    const pipeline::Variant& a = ev.variants[i + 1];
    report.curve.push_back({u.label.substr(std::string("uniform ").size()), u.bits_per_weight, u.result.mean_kl,
                            a.bits_per_weight, a.result.mean_kl});
    // The uniform plan the budget was sized by (or that happens to match it) joins the headline table.
    if (std::abs(u.bytes - budget_bytes) <= 0.5 * 0.001 * u.bytes) report.variants.push_back(to_row(u));
  }
  report.seconds.emplace_back("evaluation and held-out layer errors", since(t));

  // Per tensor: the predicted error (calibration inputs) next to the error on held-out inputs.
  const std::vector<double> measured =
      held_out ? held_out->errors() : pipeline::held_out_errors(model, plan, planned_layers, windows);
  for (size_t i = 0; i < plan.choices.size(); ++i) {
    const auto& ch = plan.choices[i];
    TensorRow row;
    row.tensor = ch.tensor;
    row.method = ch.method;
    row.knob = ch.knob;
    row.bytes = ch.cost.bytes;
    const auto [rows, cols] = model.weight_shape(ch.tensor);
    row.bits_per_weight = 8.0 * ch.cost.bytes / static_cast<double>(rows * cols);
    row.predicted_error = ch.predicted_error;
    row.measured_error = measured[i];
    report.tensors.push_back(row);
  }
  report.seconds.emplace_back("total", since(t0));
  report.peak_resident_bytes = pipeline::peak_resident_bytes();
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
  cmd->add_option("--like", o.like, "budget: the size of a uniform request (q3_k, quant.ggml:q3_k) or of llama-quantize's mix (Q3_K_M)");
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
  cmd->add_option("--imatrix", o.imatrix, "llama.cpp importance matrix (.gguf or legacy .dat) to weigh the rounding by")
      ->check(CLI::ExistingFile);
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
    cmd->add_option("--compare", o.compare, "uniform requests and llama.cpp mixes (Q3_K_M) to compare, comma-separated")
        ->capture_default_str();
    cmd->add_flag("--no-eval", o.no_eval, "skip evaluation and the report");
    cmd->callback([] { run(o, true); });
  }
}

}  // namespace strata::cli
