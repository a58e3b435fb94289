#include "strata/pipeline/pipeline.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "strata/budget/table.hpp"
#include "strata/compress/ggml/llama_mix.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"

namespace strata::pipeline {

namespace {

void report(const Progress& progress, std::string_view stage, int64_t done, int64_t total) {
  if (progress) progress(stage, done, total);
}

bool is_ggml(std::string_view method) { return method.rfind("quant.ggml", 0) == 0; }

// Block index a tensor belongs to: blk.N.* -> N; the embedding -> 0 (everything after it changes);
// the output head -> the last block (its input is the last block's output).
int first_changed_block(std::string_view tensor, int64_t n_layers) {
  if (tensor.rfind("blk.", 0) == 0) {
    const size_t dot = tensor.find('.', 4);
    if (dot != std::string_view::npos) {
      int b = 0;
      for (char ch : tensor.substr(4, dot - 4)) {
        if (ch < '0' || ch > '9') return 0;
        b = b * 10 + (ch - '0');
      }
      return b;
    }
  }
  if (tensor == "output.weight") return static_cast<int>(std::max<int64_t>(0, n_layers - 1));
  return 0;
}

compress::Compressed deep_copy(const compress::Compressed& c) {
  compress::Compressed out;
  out.method = c.method;
  out.knob = c.knob;
  out.rows = c.rows;
  out.cols = c.cols;
  out.meta = c.meta;
  for (const auto& [k, t] : c.tensors) out.tensors.emplace(k, t.clone());
  return out;
}

}  // namespace

// ---- Model ----

namespace {

}  // namespace

Model Model::load(const std::filesystem::path& path, bool need_tokenizer) {
  Model m;
  m.path = path;
  m.file = io::open_model(path);
  m.dense = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load_stored(m.file));
  if (m.file->metadata().contains("tokenizer.ggml.tokens"))
    m.tokenizer = std::make_unique<nn::BpeTokenizer>(nn::BpeTokenizer::from_model(*m.file));
  else
    require(!need_tokenizer, path.string(), ": no tokenizer in the file (a GGUF llama model with its tokenizer is needed)");
  return m;
}

bool Model::tied_output() const { return file->find("output.weight") == nullptr; }

std::pair<int64_t, int64_t> Model::weight_shape(std::string_view tensor) const {
  if (tensor == "token_embd.weight") return {dense->config().vocab_size, dense->config().dim};
  const nn::Linear& l = dense->linear(tensor);
  return {l.out_features(), l.in_features()};
}

RowMatrix<float> Model::weight(std::string_view tensor) const {
  if (tensor == "token_embd.weight") return dense->token_embedding().dense();
  return dense->linear(tensor).dense_weight();
}

const nn::BpeTokenizer& Model::need_tokenizer() const {
  require(tokenizer != nullptr, path.string(), ": no tokenizer in the file");
  return *tokenizer;
}

// ---- calibrate ----

Calibration calibrate(const Model& model, std::vector<std::vector<int32_t>> sequences, const CalibrateOptions& options,
                      const Progress& progress) {
  Calibration c{nn::Calibration(options.statistics), std::move(sequences), {}, 0};
  const auto total = static_cast<int64_t>(c.sequences.size());
  size_t next = 0;
  report(progress, "calibrating", 0, total);
  const auto r = nn::calibrate(
      *model.dense,
      [&](std::vector<int32_t>& s) {
        if (next == c.sequences.size()) return false;
        s = c.sequences[next++];
        return true;
      },
      c.stats, [&](int64_t done) { report(progress, "calibrating", done, total); });
  c.stats.pack();  // complete: half the memory from here on
  c.seconds = r.seconds;
  c.source = std::to_string(total) + " sequences";
  return c;
}

Calibration calibrate(const Model& model, const nn::TextSlice& text, const CalibrateOptions& options,
                      const Progress& progress) {
  require(options.sequences > 0 && options.length > 1, "calibration: need sequences > 0 and length > 1, got ",
          options.sequences, " x ", options.length);
  const auto tokens = nn::tokenize_slice(model.need_tokenizer(), text, options.sequences * options.length);
  Calibration c = calibrate(model, nn::cut_sequences(tokens, options.sequences, options.length, -1), options, progress);
  c.source = text.describe() + ", " + std::to_string(options.sequences) + " x " + std::to_string(options.length) +
             " tokens";
  return c;
}

// ---- tensors, requests ----

std::vector<std::pair<std::string, int64_t>> covered_tensors(const Model& model, const budget::Recipe& recipe) {
  std::vector<std::pair<std::string, int64_t>> out;
  auto consider = [&](const std::string& name, int64_t params) {
    const budget::Rule* rule = recipe.rule_for(name);
    if (rule != nullptr && !rule->skip) out.emplace_back(name, params);
  };
  const auto& c = model.dense->config();
  consider("token_embd.weight", c.vocab_size * c.dim);
  const bool tied = model.tied_output();  // a tied head is token_embd itself, not a tensor of its own
  for (const auto& name : model.dense->linear_names()) {
    if (name == "output.weight" && tied) continue;
    const auto& l = model.dense->linear(name);
    consider(name, l.in_features() * l.out_features());
  }
  return out;
}

std::string effective_knob(std::string_view method, std::string_view knob, int64_t cols) {
  if (!is_ggml(method)) return std::string(knob);
  const auto type = compress::ggml::quantizable_type(knob);
  return compress::ggml::lower_name(compress::ggml::fallback_type(type, cols));
}

std::pair<std::string, std::string> parse_request(std::string_view request) {
  const auto colon = request.find(':');
  std::pair<std::string, std::string> mk;
  if (colon == std::string_view::npos) {
    mk = {"quant.ggml", std::string(request)};
  } else {
    require(colon > 0 && colon + 1 < request.size(), "'", request, "': expected METHOD:KNOB or a ggml type");
    mk = {std::string(request.substr(0, colon)), std::string(request.substr(colon + 1))};
  }
  compress::find_compressor(mk.first);  // throws listing the known names
  if (is_ggml(mk.first)) compress::ggml::quantizable_type(mk.second);  // throws listing the types
  return mk;
}

bool is_llama_mix(std::string_view request) { return compress::ggml::find_llama_file_type(request).has_value(); }

void check_request(std::string_view request) {
  if (!is_llama_mix(request)) parse_request(request);
}

// ---- LayerBank ----

LayerBank::LayerBank(const Model& model, const nn::Calibration* calibration, uint64_t cache_bytes)
    : model_(model), calibration_(calibration), cache_limit_(cache_bytes) {}

compress::LayerCalibration LayerBank::calibration(std::string_view tensor, bool with_hessian) {
  compress::LayerCalibration lc;
  if (calibration_ == nullptr || !calibration_->has(tensor)) return lc;  // the embedding: weight error
  const nn::InputStats& st = calibration_->stats(tensor);
  if (stats_for_ != &st) {
    mean_sq_ = st.mean_sq();
    mean_abs_ = st.mean_abs();
    stats_for_ = &st;
  }
  if (with_hessian && st.has_gram) {
    if (hessian_for_ != &st) {
      hessian_ = st.hessian();
      hessian_for_ = &st;
    }
    lc.hessian = &hessian_;
  }
  lc.mean_sq = &mean_sq_;
  lc.mean_abs = &mean_abs_;
  lc.tokens = st.tokens;
  return lc;
}

void LayerBank::make_room(uint64_t extra, const Entry* keep) {
  while (cached_bytes_ + extra > cache_limit_) {
    auto oldest = cache_.end();
    for (auto it = cache_.begin(); it != cache_.end(); ++it)
      if (&it->second != keep && (oldest == cache_.end() || it->second.last_use < oldest->second.last_use)) oldest = it;
    if (oldest == cache_.end()) return;
    cached_bytes_ -= oldest->second.bytes;
    cache_.erase(oldest);
  }
}

LayerBank::Entry* LayerBank::entry(const std::string& tensor, const std::string& method, const std::string& knob) {
  const Key key{tensor, method, knob};
  if (auto it = cache_.find(key); it != cache_.end()) {
    it->second.last_use = ++clock_;
    return &it->second;
  }
  const compress::WeightCompressor& c = compress::find_compressor(method);
  const RowMatrix<float> w = model_.weight(tensor);
  const compress::Layer layer{tensor, &w};
  auto value =
      std::make_shared<const compress::Compressed>(c.apply(layer, calibration(tensor, c.reads_hessian()), knob));
  const uint64_t bytes = value->stored_bytes();
  make_room(bytes, nullptr);
  // A form larger than the whole cache is kept only while this call's caller holds it.
  if (bytes > cache_limit_) {
    uncached_ = Entry{std::move(value), nullptr, nullptr, nullptr, bytes, ++clock_};
    return &uncached_;
  }
  cached_bytes_ += bytes;
  return &cache_.emplace(key, Entry{std::move(value), nullptr, nullptr, nullptr, bytes, ++clock_}).first->second;
}

std::shared_ptr<const compress::Compressed> LayerBank::compressed(const std::string& tensor, const std::string& method,
                                                                  const std::string& knob) {
  return entry(tensor, method, knob)->value;
}

std::shared_ptr<const nn::Linear> LayerBank::linear(const std::string& tensor, const std::string& method,
                                                    const std::string& knob) {
  Entry* e = entry(tensor, method, knob);
  if (!e->linear) {
    uint64_t extra = 0;
    std::tie(e->linear, extra) = compress::find_compressor(method).linear_sharing(e->value);
    if (e != &uncached_) {
      make_room(extra, e);
      e->bytes += extra;
      cached_bytes_ += extra;
    }
  }
  return e->linear;
}

std::pair<std::shared_ptr<const nn::Embedding>, std::shared_ptr<const nn::Linear>> LayerBank::embedding(
    const std::string& tensor, const std::string& method, const std::string& knob) {
  Entry* e = entry(tensor, method, knob);
  if (!e->embedding) {
    uint64_t extra = 0;
    std::tie(e->embedding, extra) = compress::find_compressor(method).embedding_sharing(e->value);
    e->head = e->embedding->as_linear();  // reads the table's own bytes
    if (e != &uncached_) {
      make_room(extra, e);
      e->bytes += extra;
      cached_bytes_ += extra;
    }
  }
  return {e->embedding, e->head};
}

// ---- measure ----

namespace {

budget::Table measure_tensors(const Model& model, const budget::Recipe& recipe,
                              const std::vector<std::pair<std::string, int64_t>>& tensors, LayerBank& bank,
                              const std::string& mode, const Progress& progress) {
  require(mode == "output" || mode == "weight" || mode == "kl", "error mode '", mode,
          "': known modes are output, weight and kl");
  const auto total = static_cast<int64_t>(tensors.size());
  int64_t done = 0;
  std::string last;
  RowMatrix<float> w;
  auto options_for = [&](const std::string& tensor, const budget::MethodSpec& spec) {
    if (tensor != last) {  // build_table asks tensor by tensor, every method of one tensor in a row
      report(progress, "measuring options", done++, total);
      w = model.weight(tensor);
      last = tensor;
    }
    const compress::WeightCompressor& c = compress::find_compressor(spec.compressor);
    const compress::Layer layer{tensor, &w};
    std::vector<std::string> knobs;
    std::set<std::string> seen;
    for (const auto& requested : spec.knobs.empty() ? c.knobs(layer) : spec.knobs) {
      std::string knob = effective_knob(spec.compressor, requested, layer.cols());
      if (seen.insert(knob).second) knobs.push_back(std::move(knob));
    }
    const compress::LayerCalibration lc = bank.calibration(tensor);
    std::vector<budget::Candidate> out;
    if (mode == "weight") {
      const compress::OutputErrorMeter error(w, nullptr);
      for (const auto& knob : knobs)
        out.push_back({spec.compressor, knob, c.cost(layer, knob), error(c.reconstruct(c.apply(layer, lc, knob)))});
      return out;
    }
    for (auto& o : c.options_for(layer, lc, knobs)) out.push_back({spec.compressor, o.knob, o.cost, o.error});
    return out;
  };
  budget::Table table = budget::build_table(recipe, tensors, options_for);
  report(progress, "measuring options", total, total);
  return table;
}

}  // namespace

budget::Table measure(const Model& model, const budget::Recipe& recipe, LayerBank& bank, const MeasureOptions& options,
                      const Progress& progress) {
  const auto tensors = covered_tensors(model, recipe);
  require(!tensors.empty(), "recipe '", recipe.name, "' covers no tensor of the model");
  return measure_tensors(model, recipe, tensors, bank, options.error_mode.empty() ? recipe.error_mode : options.error_mode,
                         progress);
}

double cheapest_cost(const Model& model, const budget::Recipe& recipe, budget::Metric metric) {
  double total = 0;
  for (const auto& [tensor, params] : covered_tensors(model, recipe)) {
    const budget::Rule& rule = *recipe.rule_for(tensor);
    const auto [rows, cols] = model.weight_shape(tensor);
    const compress::Layer layer = compress::Layer::shape_only(tensor, rows, cols);
    std::vector<budget::MethodSpec> specs = rule.methods;
    if (rule.pin) {
      const auto [m, k] = budget::split_pin(*rule.pin, "pin of rule '" + rule.match + "'");
      specs = {budget::MethodSpec{m, {k}}};
    }
    double best = std::numeric_limits<double>::infinity();
    for (const auto& spec : specs) {
      const auto& c = compress::find_compressor(spec.compressor);
      for (const auto& k : spec.knobs.empty() ? c.knobs(layer) : spec.knobs)
        best = std::min(best, budget::cost_of(c.cost(layer, effective_knob(spec.compressor, k, cols)), metric));
    }
    total += best;
  }
  return total;
}

std::vector<double> weigh_by_kl(budget::Table& table, LayerBank& bank, const nn::KlEvaluator& probe,
                                const Progress& progress) {
  std::vector<double> sensitivity(table.layers.size(), 0.0);
  const auto total = static_cast<int64_t>(table.layers.size());
  const int64_t n_layers = bank.model().dense->config().n_layers;
  // Each kind its own factor, from its own worst option: the errors of a rank cut, a sparsity
  // pattern and a rounding grid map to KL differently, and one factor measured at one kind's worst
  // point misprices the others. A kind's factor does not depend on which other kinds the menu has,
  // so the table of one kind alone is exactly that kind's part of a mixed table.
  struct Measurement {
    size_t layer;
    std::vector<budget::Candidate*> options;  // one kind's options
    const budget::Candidate* worst;
  };
  // Measurements that change the model from the same block on run together: their models share
  // every layer but one, so one variant pass judges them all (nn::KlEvaluator::mean_kl of several).
  std::map<int, std::vector<Measurement>> by_first_block;
  for (size_t i = 0; i < table.layers.size(); ++i) {
    auto& layer = table.layers[i];
    if (layer.options.size() < 2) continue;  // pinned: a constant, nothing to weigh
    const bool tied_head = layer.tensor == "token_embd.weight" && bank.model().tied_output();
    const int from = tied_head ? 0 : first_changed_block(layer.tensor, n_layers);
    std::map<std::string, std::vector<budget::Candidate*>> by_method;
    for (auto& o : layer.options) by_method[o.method].push_back(&o);
    for (auto& [method, opts] : by_method) {
      const budget::Candidate* worst =
          *std::max_element(opts.begin(), opts.end(), [](const auto* a, const auto* b) { return a->error < b->error; });
      if (worst->error > 0) by_first_block[from].push_back({i, opts, worst});
    }
  }
  int64_t done = 0;
  std::vector<char> counted(table.layers.size(), 0);
  for (auto& [from, measurements] : by_first_block) {
    report(progress, "measuring sensitivities", done, total);
    std::vector<nn::LlamaModel> models;
    models.reserve(measurements.size());
    for (const auto& m : measurements) {
      budget::Plan one;
      one.choices.push_back(budget::Choice::of(table.layers[m.layer].tensor, *m.worst));
      models.push_back(apply(one, bank));
    }
    std::vector<const nn::LlamaModel*> pointers;
    for (const auto& m : models) pointers.push_back(&m);
    const std::vector<double> kl = probe.mean_kl(pointers, from);
    for (size_t j = 0; j < measurements.size(); ++j) {
      const auto& m = measurements[j];
      const double ratio = std::max(kl[j], 0.0) / m.worst->error;
      for (auto* o : m.options) o->error *= ratio;
      sensitivity[m.layer] = std::max(sensitivity[m.layer], ratio);
      if (!counted[m.layer]) ++done, counted[m.layer] = 1;
    }
  }
  report(progress, "measuring sensitivities", total, total);
  return sensitivity;
}

// ---- plan ----

void check_budget(const Model& model, const budget::Recipe& recipe, const BudgetRequest& request) {
  const int given = (request.bits_per_weight ? 1 : 0) + (request.bytes ? 1 : 0) + (request.like.empty() ? 0 : 1);
  require(given <= 1, "give at most one of a bits-per-weight, a bytes and a like budget");
  if (!request.like.empty()) check_request(request.like);
  if (given == 0 && recipe.like) check_request(*recipe.like);
  require(given > 0 || recipe.like || recipe.bits_per_weight || recipe.bytes || recipe.params || recipe.flops,
          "recipe '", recipe.name, "' sets no budget: give bits per weight, bytes or a like request");
  const double cheapest = cheapest_cost(model, recipe, budget::Metric::bytes);
  if (request.bytes)
    require(*request.bytes >= cheapest, "budget of ", *request.bytes, " bytes is impossible: recipe '", recipe.name,
            "' cannot go below ", static_cast<uint64_t>(cheapest), " bytes");
  const std::optional<double> bpw =
      request.bits_per_weight ? request.bits_per_weight
                              : (given == 0 && !recipe.like ? recipe.bits_per_weight : std::optional<double>());
  if (bpw) {
    int64_t params = 0;
    for (const auto& [t, p] : covered_tensors(model, recipe)) params += p;
    require(*bpw * static_cast<double>(params) / 8.0 >= cheapest, "budget of ", *bpw,
            " bits per weight is impossible: recipe '", recipe.name, "' cannot go below ",
            8.0 * cheapest / static_cast<double>(params), " bits per weight on this model (",
            static_cast<double>(params) / 1e6, "M weights covered)");
  }
}

budget::Constraint resolve_budget(const Model& model, const budget::Recipe& recipe, const budget::Table& table,
                                  const BudgetRequest& request) {
  if (request.bits_per_weight) return budget::bits_per_weight(table, *request.bits_per_weight);
  if (request.bytes) return {budget::Metric::bytes, *request.bytes};
  if (!request.like.empty()) return {budget::Metric::bytes, uniform_plan(model, table, request.like).total_cost().bytes};
  if (recipe.like) return {budget::Metric::bytes, uniform_plan(model, table, *recipe.like).total_cost().bytes};
  if (auto c = recipe.constraint(table)) return *c;
  fail("recipe '", recipe.name, "' sets no budget: give bits per weight, bytes or a like request");
}

std::vector<std::pair<std::string, std::string>> llama_mix_types(const Model& model, std::string_view file_type,
                                                                 bool has_imatrix) {
  const auto ft = compress::ggml::find_llama_file_type(file_type);
  require(ft.has_value(), "'", file_type, "' is not a llama.cpp file type (known:", [] {
    std::string known;
    for (const auto& f : compress::ggml::llama_file_types()) known += " " + std::string(f.name);
    return known;
  }(), ")");
  const auto& c = model.dense->config();
  std::vector<compress::ggml::MixTensor> tensors{{"token_embd.weight", c.dim}};
  const bool tied = model.tied_output();
  for (const auto& name : model.dense->linear_names())
    if (name != "output.weight" || !tied) tensors.push_back({name, model.weight_shape(name).second});
  const auto types = compress::ggml::llama_mix(*ft, {c.n_layers, c.n_heads, c.n_kv_heads, has_imatrix}, tensors);
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (types[i]) out.emplace_back(tensors[i].name, compress::ggml::lower_name(*types[i]));
  return out;
}

budget::Plan llama_mix_plan(const Model& model, const budget::Table& table, std::string_view file_type) {
  const std::string method = "quant.ggml";
  const compress::WeightCompressor& quant = compress::find_compressor(method);
  std::map<std::string, std::string, std::less<>> types;
  for (auto& [tensor, type] : llama_mix_types(model, file_type, /*has_imatrix=*/true)) types[tensor] = type;
  budget::Plan plan;
  plan.solver = "llama.cpp " + std::string(file_type);
  for (const auto& layer : table.layers) {
    const auto it = types.find(layer.tensor);
    if (it == types.end()) {
      require(layer.options.size() == 1, "llama.cpp ", file_type, ": tensor '", layer.tensor,
              "' is not one llama-quantize quantizes, and the table gives it ", layer.options.size(), " options");
      plan.choices.push_back(budget::Choice::of(layer.tensor, layer.options.front()));  // pinned
      continue;
    }
    const budget::Candidate* pick = nullptr;
    for (const auto& o : layer.options)
      if (o.method == method && o.knob == it->second) pick = &o;
    if (pick != nullptr) {
      plan.choices.push_back(budget::Choice::of(layer.tensor, *pick));
      continue;
    }
    // The recipe's menu may leave out a type the mix uses (a menu without q5_1, say): the mix still
    // has it, at its exact cost, with no predicted error.
    const auto [rows, cols] = model.weight_shape(layer.tensor);
    const compress::Cost cost = quant.cost(compress::Layer::shape_only(layer.tensor, rows, cols), it->second);
    plan.choices.push_back({layer.tensor, method, it->second, cost, 0.0});
  }
  plan.constraint = {budget::Metric::bytes, plan.total_cost().bytes};
  return plan;
}

budget::Plan uniform_plan(const Model& model, const budget::Table& table, std::string_view request) {
  if (is_llama_mix(request)) return llama_mix_plan(model, table, request);
  const auto [method, knob] = parse_request(request);
  budget::Plan plan;
  plan.solver = "uniform " + method + ":" + knob;
  for (const auto& layer : table.layers) {
    const budget::Candidate* pick = nullptr;
    if (layer.options.size() == 1) {
      pick = &layer.options.front();  // pinned
    } else {
      const int64_t cols = model.weight_shape(layer.tensor).second;
      std::string want = effective_knob(method, knob, cols);
      // llama-quantize gives the output head (a tied token embedding is the head) q6_k whatever the
      // requested type, or q8_0 when its rows are not whole super-blocks.
      if (layer.tensor == "token_embd.weight" && is_ggml(method)) want = cols % 256 == 0 ? "q6_k" : "q8_0";
      for (const auto& o : layer.options)
        if (o.method == method && o.knob == want) pick = &o;
      require(pick != nullptr, "uniform ", method, ":", knob, ": tensor '", layer.tensor, "' has no option ", method,
              ":", want, " in the candidate table");
    }
    plan.choices.push_back(budget::Choice::of(layer.tensor, *pick));
  }
  plan.constraint = {budget::Metric::bytes, plan.total_cost().bytes};
  return plan;
}

PlanOptions PlanOptions::from(const budget::Recipe& recipe) {
  PlanOptions o;
  o.solver = recipe.solver;
  o.evolve = recipe.evolve;
  o.evolve_options = recipe.evolve_options();
  return o;
}

void PlanOptions::check() const {
  if (solver == "error") {
    require(max_error.has_value(), "solver 'error' needs a maximum total error");
    require(!evolve, "solver 'error' plans for an error cap; the evolutionary search needs a cost budget");
    return;
  }
  budget::parse_solver(solver);  // throws listing the solvers
  require(evolve_options.generations >= 1 && evolve_options.offspring >= 1 && evolve_options.max_swaps >= 1,
          "evolutionary search: generations, offspring and max_swaps must be >= 1");
}

std::vector<std::pair<std::string, budget::Table>> single_kind_menus(const budget::Table& table,
                                                                     const budget::Constraint& constraint) {
  std::set<std::string> methods;
  for (const auto& layer : table.layers)
    if (layer.options.size() > 1)
      for (const auto& o : layer.options) methods.insert(o.method);
  std::vector<std::pair<std::string, budget::Table>> out;
  if (methods.size() < 2) return out;
  for (const auto& m : methods) {
    budget::Table sub;
    for (const auto& layer : table.layers) {
      budget::LayerCandidates l = layer;
      l.options.clear();
      for (const auto& o : layer.options)
        if (o.method == m) l.options.push_back(o);
      if (l.options.empty()) l.options = layer.options;  // a layer the kind cannot serve keeps its menu
      sub.layers.push_back(std::move(l));
    }
    if (sub.min_cost(constraint.metric) <= constraint.budget) out.emplace_back(m, std::move(sub));
  }
  return out;
}

PlanResult plan(const budget::Table& table, const budget::Constraint& constraint, const PlanOptions& options,
                LayerBank& bank, const nn::KlEvaluator* probe, const Progress& progress) {
  options.check();
  PlanResult r;
  const budget::Table front = table.pareto(constraint.metric);
  if (options.solver == "error") {
    r.plan = budget::solve_error_constrained(front, constraint.metric, *options.max_error);
    return r;
  }
  r.plan = budget::solve(front, constraint, budget::parse_solver(options.solver));
  const std::vector<std::pair<std::string, budget::Table>> menus = single_kind_menus(table, constraint);
  if (probe == nullptr || (!options.evolve && (!options.guard || menus.empty()))) return r;
  // Plans are measured together: their models share the layers they choose alike, and a variant
  // pass runs each shared layer once (nn::KlEvaluator::mean_kl of several models).
  auto fitness = [&](const std::vector<budget::Plan>& plans) {
    std::vector<nn::LlamaModel> models;
    models.reserve(plans.size());
    for (const auto& p : plans) models.push_back(apply(p, bank));
    std::vector<const nn::LlamaModel*> pointers;
    for (const auto& m : models) pointers.push_back(&m);
    return probe->mean_kl(pointers);
  };
  // Candidates for the start, as measured: the plan, the other per-layer-error solvers' plans (with
  // the search), and the plans of each single kind's menu (the guard: a wider menu is never worse on
  // the probe than any one kind alone, whatever the per-layer estimates got wrong).
  std::vector<budget::Plan> candidates = {r.plan};
  std::vector<std::string> labels = {r.plan.solver};
  if (options.evolve)
    for (const char* s : {"greedy", "dp", "minimax"})
      if (s != options.solver) {
        candidates.push_back(budget::solve(front, constraint, budget::parse_solver(s)));
        labels.emplace_back(s);
      }
  if (options.guard)
    for (const auto& [method, sub] : menus) {
      budget::Plan alt = budget::solve(sub.pareto(constraint.metric), constraint, budget::parse_solver(options.solver));
      alt.solver = options.solver + " on " + method + " alone";
      candidates.push_back(std::move(alt));
      labels.push_back(options.solver + " on " + method + " alone");
    }
  const std::vector<double> measured = fitness(candidates);
  size_t chosen = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    r.probe_kl.emplace_back(labels[i], measured[i]);
    if (measured[i] < measured[chosen]) chosen = i;
  }
  budget::Plan start = std::move(candidates[chosen]);
  const double start_fit = measured[chosen];
  if (!options.evolve) {
    r.plan = std::move(start);
    return r;
  }
  budget::EvolveOptions eo = options.evolve_options;
  const auto user_progress = eo.progress;
  eo.progress = [&](int g, double best) {
    if (user_progress) user_progress(g, best);
    report(progress, "evolutionary search", g, eo.generations);
  };
  eo.start_fitness = start_fit;
  r.start_solver = start.solver;
  r.evolved = budget::evolve(front, constraint, start, budget::BatchFitness(fitness), eo);
  r.plan = r.evolved->best;
  r.plan.solver = "evolve (from " + start.solver + ")";
  return r;
}

// ---- apply, write ----

nn::LlamaModel apply(const budget::Plan& plan, LayerBank& bank) {
  const Model& model = bank.model();
  nn::LlamaModel m = model.dense->clone();
  for (const auto& ch : plan.choices) {
    if (ch.tensor == "token_embd.weight") {
      auto [table, head] = bank.embedding(ch.tensor, ch.method, ch.knob);
      if (model.tied_output()) m.set_linear("output.weight", std::move(head));
      m.set_token_embedding(std::move(table));
      continue;
    }
    m.set_linear(ch.tensor, bank.linear(ch.tensor, ch.method, ch.knob));
  }
  return m;
}

compress::LayerMap compressed_layers(const budget::Plan& plan, LayerBank& bank, const Progress& progress) {
  compress::LayerMap layers;
  const auto total = static_cast<int64_t>(plan.choices.size());
  int64_t done = 0;
  for (const auto& ch : plan.choices) {
    report(progress, "compressing", done++, total);
    layers.emplace(ch.tensor, deep_copy(*bank.compressed(ch.tensor, ch.method, ch.knob)));
  }
  report(progress, "compressing", total, total);
  return layers;
}

void check_output(const Model& model, const budget::Recipe& recipe, const std::filesystem::path& out) {
  const std::string ext = out.extension().string();
  require(ext == ".gguf" || ext == ".safetensors", "output '", out.string(),
          "': the extension must be .gguf (ggml types, for llama.cpp) or .safetensors (any method)");
  std::filesystem::path dir = out.parent_path();
  if (dir.empty()) dir = ".";
  require(std::filesystem::is_directory(dir), "output '", out.string(), "': directory ", dir.string(),
          " does not exist");
  if (ext != ".gguf") return;
  require(model.file->format() == io::FileFormat::gguf, model.path.string(),
          ": writing GGUF needs a GGUF source model");
  for (const auto& rule : recipe.rules) {
    for (const auto& m : rule.methods)
      require(is_ggml(m.compressor), "recipe '", recipe.name, "': rule '", rule.match, "' allows ", m.compressor,
              ", which GGUF cannot hold; write .safetensors or use ggml types only");
    if (rule.pin)
      require(is_ggml(budget::split_pin(*rule.pin, rule.match).first), "recipe '", recipe.name, "': rule '",
              rule.match, "' pins ", *rule.pin, ", which GGUF cannot hold");
  }
}

Written write(const Model& model, const compress::LayerMap& layers, const std::filesystem::path& out,
              const budget::Plan& plan) {
  Written w;
  w.path = out;
  const std::string ext = out.extension().string();
  if (ext == ".gguf") {
    require(model.file->format() == io::FileFormat::gguf, model.path.string(),
            ": writing GGUF needs a GGUF source model");
    const io::GgufFile src = io::GgufFile::open(model.path);
    const auto info = compress::write_gguf(src, layers, out, {{"strata.plan", plan.to_json().dump()}});
    w.file_bytes = info.file_bytes;
    w.tensor_bytes = info.tensor_bytes;
    w.overhead_bytes = info.overhead_bytes;
    w.file_type = info.file_type;
    return w;
  }
  require(ext == ".safetensors", "output '", out.string(), "': the extension must be .gguf or .safetensors");
  compress::write_strata_safetensors(*model.file, layers, out, {{"strata.plan", plan.to_json().dump()}});
  w.file_bytes = std::filesystem::file_size(out);
  for (const auto& [name, c] : layers) w.tensor_bytes += c.stored_bytes();
  w.overhead_bytes = w.file_bytes - std::min(w.file_bytes, w.tensor_bytes);
  return w;
}

// ---- bounded memory: block by block ----

namespace {

// The hidden states entering block 0 of every window: its tokens' embeddings.
std::vector<RowMatrix<float>> embed(const Model& model, const std::vector<std::vector<int32_t>>& sequences) {
  const auto& c = model.dense->config();
  std::vector<RowMatrix<float>> hidden;
  for (const auto& seq : sequences) {
    require(!seq.empty(), "calibration: an empty token window");
    RowMatrix<float> x(static_cast<int64_t>(seq.size()), c.dim);
    for (size_t t = 0; t < seq.size(); ++t) {
      require(seq[t] >= 0 && seq[t] < c.vocab_size, "calibration: token id ", seq[t], " outside the vocabulary of ",
              c.vocab_size);
      model.dense->token_embedding().lookup(seq[t], x.row(static_cast<int64_t>(t)).data());
    }
    hidden.push_back(std::move(x));
  }
  return hidden;
}

// Runs blocks [b0, b1) of `runner` on every window's hidden states, in place, collecting statistics
// into `stats` (may be null); with_head: through the head too, for its input's statistics (the
// states themselves are not needed after the last step).
void run_step(const nn::LlamaModel& runner, std::vector<RowMatrix<float>>& hidden, int b0, int b1,
              nn::Calibration* stats, bool with_head = false) {
  const auto& c = runner.config();
  std::vector<float> logits;
  for (auto& x : hidden) {
    nn::LlamaSession session(runner, x.rows());
    if (with_head && b1 == c.n_layers && stats != nullptr) {
      logits.resize(static_cast<size_t>(x.rows() * c.vocab_size));
      session.forward_hidden(b0, x.data(), x.rows(), logits.data(), nn::Logits::all, stats);
    } else {
      session.forward_blocks(b0, b1, x.data(), x.rows(), stats);
    }
  }
  if (stats != nullptr) stats->sequences += static_cast<int64_t>(hidden.size());
}

// The tensors of `all` that live in blocks [b0, b1) (the embedding with the first step, tensors
// outside the blocks with the last).
std::vector<std::pair<std::string, int64_t>> step_tensors(const std::vector<std::pair<std::string, int64_t>>& all,
                                                          int b0, int b1, int64_t n_layers) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& t : all) {
    int b = -1;
    if (t.first.rfind("blk.", 0) == 0) b = first_changed_block(t.first, n_layers);
    const bool inside = b >= b0 && b < b1;
    const bool embedding_first = t.first == "token_embd.weight" && b0 == 0;
    const bool other_last = b < 0 && t.first != "token_embd.weight" && b1 == n_layers;
    if (inside || embedding_first || other_last) out.push_back(t);
  }
  return out;
}

bool needs_head(const std::vector<std::pair<std::string, int64_t>>& tensors) {
  return std::any_of(tensors.begin(), tensors.end(), [](const auto& t) { return t.first == "output.weight"; });
}

void check_stream(const StreamOptions& o, const nn::LlamaModel& m) {
  require(o.blocks_per_step >= 1, "block-by-block: blocks_per_step must be >= 1, got ", o.blocks_per_step);
  require(m.config().n_layers >= 1, "block-by-block: the model has no blocks");
}

}  // namespace

budget::Table measure_by_blocks(const Model& model, const budget::Recipe& recipe,
                                const std::vector<std::vector<int32_t>>& sequences, const StreamOptions& options,
                                const Progress& progress) {
  check_stream(options, *model.dense);
  const std::string mode = options.measure.error_mode.empty() ? recipe.error_mode : options.measure.error_mode;
  require(mode != "kl", "block-by-block measurement gives output or weight errors; weigh them by KL afterwards with "
                        "weigh_by_kl (error mode 'kl' needs the whole model's statistics)");
  const auto all = covered_tensors(model, recipe);
  require(!all.empty(), "recipe '", recipe.name, "' covers no tensor of the model");
  const auto n_layers = static_cast<int>(model.dense->config().n_layers);
  std::vector<RowMatrix<float>> hidden = embed(model, sequences);
  budget::Table table;
  for (int b0 = 0; b0 < n_layers; b0 += options.blocks_per_step) {
    const int b1 = std::min(n_layers, b0 + options.blocks_per_step);
    report(progress, "measuring by blocks", b0, n_layers);
    const auto tensors = step_tensors(all, b0, b1, n_layers);
    nn::Calibration stats;
    run_step(*model.dense, hidden, b0, b1, &stats, needs_head(tensors));
    if (tensors.empty()) continue;
    // The step's part of the recipe's table, measured exactly as measure() does.
    LayerBank bank(model, &stats, 0);
    const budget::Table step = measure_tensors(model, recipe, tensors, bank, mode, {});
    for (const auto& layer : step.layers) table.layers.push_back(layer);
  }
  report(progress, "measuring by blocks", n_layers, n_layers);
  table.validate();
  return table;
}

compress::LayerMap compressed_layers_by_blocks(const Model& model, const budget::Plan& plan,
                                               const std::vector<std::vector<int32_t>>& sequences,
                                               const StreamOptions& options, const Progress& progress) {
  check_stream(options, *model.dense);
  const auto n_layers = static_cast<int>(model.dense->config().n_layers);
  std::vector<std::pair<std::string, int64_t>> all;
  for (const auto& ch : plan.choices) all.emplace_back(ch.tensor, 0);
  std::vector<RowMatrix<float>> hidden = embed(model, sequences);
  compress::LayerMap layers;
  for (int b0 = 0; b0 < n_layers; b0 += options.blocks_per_step) {
    const int b1 = std::min(n_layers, b0 + options.blocks_per_step);
    report(progress, "compressing by blocks", b0, n_layers);
    const auto tensors = step_tensors(all, b0, b1, n_layers);
    // The statistics of the step's inputs, on the states the (dense or compressed) earlier blocks
    // give; then the states carried on through the dense or the compressed step.
    std::vector<RowMatrix<float>> entering;
    if (options.sequential) entering = hidden;
    // Gram matrices only when a compressor of the step needs them (GPTQ, SparseGPT, SVD-LLM...): the
    // ggml types need the per-channel imatrix alone, a few kilobytes instead of in x in doubles.
    bool need_gram = false;
    for (const auto& [tensor, unused] : tensors)
      need_gram = need_gram || compress::find_compressor(plan.find(tensor)->method).needs_hessian();
    nn::CalibrationOptions what;
    what.gram = need_gram;
    what.block_influence = false;
    nn::Calibration stats(what);
    run_step(*model.dense, hidden, b0, b1, &stats, needs_head(tensors));
    LayerBank bank(model, &stats, 0);
    nn::LlamaModel compressed_step = model.dense->clone();
    for (const auto& [tensor, unused] : tensors) {
      const budget::Choice& ch = *plan.find(tensor);
      const auto c = bank.compressed(ch.tensor, ch.method, ch.knob);
      if (options.sequential && tensor != "token_embd.weight")
        compressed_step.set_linear(tensor, compress::find_compressor(ch.method).to_linear(*c));
      layers.emplace(tensor, deep_copy(*c));
    }
    if (options.sequential && b1 < n_layers) {
      hidden = std::move(entering);
      run_step(compressed_step, hidden, b0, b1, nullptr);
    }
  }
  report(progress, "compressing by blocks", n_layers, n_layers);
  return layers;
}

// ---- evaluate ----

std::map<std::string, std::pair<int64_t, uint64_t>> layer_forms(const nn::LlamaModel& model) {
  std::map<std::string, std::pair<int64_t, uint64_t>> forms;
  auto add = [&](const std::string& describe, uint64_t bytes) {
    auto& [count, total] = forms[describe.substr(0, describe.find(" ["))];
    ++count;
    total += bytes;
  };
  const nn::Embedding& e = model.token_embedding();
  add(e.describe(), e.bytes());
  for (const auto& name : model.linear_names()) {
    const nn::Linear& l = model.linear(name);
    if (!e.shares_bytes_with(l)) add(l.describe(), l.weight_bytes());
  }
  return forms;
}

Evaluation evaluate(const budget::Plan& plan, LayerBank& bank, const nn::KlEvaluator& judge, const budget::Table* table,
                    const EvaluateOptions& options, const Progress& progress) {
  if (options.solver != "error") budget::parse_solver(options.solver);
  Evaluation ev;
  ev.dense_perplexity = judge.reference().perplexity;
  int64_t params = 0;
  for (const auto& ch : plan.choices) {
    const auto [rows, cols] = bank.model().weight_shape(ch.tensor);
    params += rows * cols;
  }
  const int64_t total = 1 + (table != nullptr ? 2 * static_cast<int64_t>(options.compare.size()) : 0);
  int64_t done = 0;
  // Comparison points often land on a plan already judged (the allocation at the written plan's
  // size, or two sizes the allocator fills with the same choices): each distinct plan runs once.
  std::map<std::string, nn::KlResult> judged;
  auto judge_plan = [&](const budget::Plan& p, std::string label) {
    report(progress, "evaluating", done++, total);
    Variant v;
    v.label = std::move(label);
    v.plan = p;
    std::string key;
    for (const auto& ch : p.choices) key += ch.tensor + '\0' + ch.method + '\0' + ch.knob + '\n';
    if (auto it = judged.find(key); it != judged.end()) {
      v.result = it->second;
    } else {
      const nn::LlamaModel m = apply(p, bank);
      if (ev.variants.empty()) ev.plan_forms = layer_forms(m);
      v.result = judge(m);
      judged.emplace(std::move(key), v.result);
    }
    v.bytes = p.total_cost().bytes;
    v.bits_per_weight = p.bits_per_weight(params);
    return v;
  };
  ev.variants.push_back(judge_plan(plan, "allocated (" + plan.solver + ")"));
  if (table != nullptr) {
    std::vector<std::pair<std::string, budget::Plan>> sized;
    for (const auto& like : options.compare) {
      try {
        sized.emplace_back(like, uniform_plan(bank.model(), *table, like));
      } catch (const Error& e) {
        ev.notes.push_back("no uniform point for " + like + ": " + e.what());
      }
    }
    std::sort(sized.begin(), sized.end(),
              [](const auto& a, const auto& b) { return a.second.total_cost().bytes < b.second.total_cost().bytes; });
    const budget::Table front = table->pareto(budget::Metric::bytes);
    const std::string solver = options.solver == "error" ? "greedy" : options.solver;
    for (const auto& [like, uniform] : sized) {
      ev.variants.push_back(judge_plan(uniform, (is_llama_mix(like) ? "llama.cpp " : "uniform ") + like));
      budget::Plan a;
      try {
        a = budget::solve(front, {budget::Metric::bytes, uniform.total_cost().bytes}, budget::parse_solver(solver));
      } catch (const Error& e) {
        ev.notes.push_back("allocation at the size of " + like + " failed: " + e.what());
        continue;
      }
      ev.variants.push_back(judge_plan(a, "allocated at the size of " + like));
    }
  }
  report(progress, "evaluating", total, total);
  return ev;
}

HeldOutErrors::HeldOutErrors(const Model& model, const budget::Plan& plan, const compress::LayerMap& layers)
    : model_(model) {
  for (const auto& ch : plan.choices) {
    tensors_.push_back(ch.tensor);
    if (ch.tensor == "token_embd.weight") continue;  // a lookup: no input to weigh its error by
    auto it = layers.find(ch.tensor);
    require(it != layers.end(), "held-out errors: the plan's tensor '", ch.tensor, "' has no compressed layer");
    compressed_.emplace(ch.tensor, compress::find_compressor(it->second.method).to_linear(it->second));
  }
}

void HeldOutErrors::on_linear_input(int, std::span<const std::string> tensors, const float* x, int64_t tokens,
                                    int64_t) {
  for (const auto& name : tensors) {
    auto it = compressed_.find(name);
    if (it == compressed_.end()) continue;
    const nn::Linear& d = model_.dense->linear(name);
    const auto n = static_cast<size_t>(tokens * d.out_features());
    y_.resize(n);
    y_hat_.resize(n);
    d.forward(x, tokens, y_.data());
    it->second->forward(x, tokens, y_hat_.data());
    auto& [num, den] = sums_[name];
    for (size_t i = 0; i < n; ++i) {
      const double e = static_cast<double>(y_[i]) - y_hat_[i];
      num += e * e;
      den += static_cast<double>(y_[i]) * y_[i];
    }
  }
}

std::vector<double> HeldOutErrors::errors() const {
  std::vector<double> out;
  for (const auto& tensor : tensors_) {
    auto it = sums_.find(tensor);
    out.push_back(it == sums_.end() || !(it->second.second > 0) ? std::numeric_limits<double>::quiet_NaN()
                                                                  : it->second.first / it->second.second);
  }
  return out;
}

std::vector<double> held_out_errors(const Model& model, const budget::Plan& plan, const compress::LayerMap& layers,
                                    const std::vector<std::vector<int32_t>>& windows) {
  HeldOutErrors hook(model, plan, layers);
  for (const auto& w : windows) {
    nn::LlamaSession s(*model.dense, static_cast<int64_t>(w.size()));
    s.forward(w, nullptr, nn::Logits::none, &hook);
  }
  return hook.errors();
}

uint64_t peak_resident_bytes() {
  struct rusage u {};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;  // Linux reports kilobytes
}

}  // namespace strata::pipeline
