#include "pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>

#include "progress.hpp"
#include "strata/budget/table.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::cli {

DenseModel load_dense(const std::string& path) {
  DenseModel d;
  d.file = io::open_model(path);
  require(d.file->metadata().contains("tokenizer.ggml.tokens"), path,
          ": no tokenizer in the file (strata compress needs a GGUF llama model with its tokenizer)");
  d.model = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*d.file));
  d.tokenizer = std::make_unique<nn::BpeTokenizer>(nn::BpeTokenizer::from_model(*d.file));
  return d;
}

std::unique_ptr<CalibrationSet> calibrate_on(const DenseModel& dense, const nn::TextSlice& slice, int64_t sequences,
                                             int64_t length) {
  auto set = std::make_unique<CalibrationSet>();
  const auto tokens = nn::tokenize_slice(*dense.tokenizer, slice, sequences * length);
  set->sequences = nn::cut_sequences(tokens, sequences, length, -1);
  Progress bar("calibrating", sequences);
  size_t next = 0;
  const auto report = nn::calibrate(
      *dense.model,
      [&](std::vector<int32_t>& s) {
        if (next == set->sequences.size()) return false;
        s = set->sequences[next++];
        return true;
      },
      set->stats, [&](int64_t done) { bar.update(done); });
  set->seconds = report.seconds;
  return set;
}

LayerBank::LayerBank(const nn::LlamaModel& dense, const nn::Calibration& calib, bool tied_output)
    : dense_(dense), calib_(calib), tied_output_(tied_output) {}

const RowMatrix<float>& LayerBank::weight(const std::string& tensor) {
  auto it = weights_.find(tensor);
  if (it == weights_.end()) {
    if (tensor == "token_embd.weight")
      it = weights_.emplace(tensor, dense_.token_embedding()).first;
    else
      it = weights_.emplace(tensor, dense_.linear(tensor).dense_weight()).first;
  }
  return it->second;
}

compress::LayerCalibration LayerBank::calibration(const std::string& tensor) {
  compress::LayerCalibration lc;
  if (!calib_.has(tensor)) return lc;  // e.g. the embedding: compressors fall back to weight error
  const nn::InputStats& st = calib_.stats(tensor);
  auto& s = stats_[&st];
  if (!s) {
    s = std::make_shared<Stats>();
    if (st.has_gram) s->hessian = st.hessian();
    s->mean_sq = st.mean_sq();
    s->mean_abs = st.mean_abs();
    s->tokens = st.tokens;
  }
  if (s->hessian.size() > 0) lc.hessian = &s->hessian;
  lc.mean_sq = &s->mean_sq;
  lc.mean_abs = &s->mean_abs;
  lc.tokens = s->tokens;
  return lc;
}

const compress::Compressed& LayerBank::compressed(const std::string& tensor, const std::string& method,
                                                  const std::string& knob) {
  const auto key = std::make_tuple(tensor, method, knob);
  auto it = compressed_.find(key);
  if (it == compressed_.end()) {
    const compress::WeightCompressor& c = compress::find_compressor(method);
    const compress::Layer layer{tensor, &weight(tensor)};
    it = compressed_.emplace(key, c.apply(layer, calibration(tensor), knob)).first;
  }
  return it->second;
}

std::shared_ptr<const nn::Linear> LayerBank::linear(const std::string& tensor, const std::string& method,
                                                    const std::string& knob) {
  const auto key = std::make_tuple(tensor, method, knob);
  auto it = linears_.find(key);
  if (it == linears_.end())
    it = linears_.emplace(key, compress::find_compressor(method).to_linear(compressed(tensor, method, knob))).first;
  return it->second;
}

void LayerBank::trim() {
  compressed_.clear();
  linears_.clear();
}

std::pair<int64_t, int64_t> weight_shape(const nn::LlamaModel& dense, const std::string& tensor) {
  if (tensor == "token_embd.weight") return {dense.config().vocab_size, dense.config().dim};
  const nn::Linear& l = dense.linear(tensor);
  return {l.out_features(), l.in_features()};
}

std::string effective_knob(const std::string& method, const std::string& knob, int64_t cols) {
  if (method.rfind("quant.ggml", 0) != 0) return knob;
  const auto type = compress::ggml::quantizable_type(knob);
  return compress::ggml::lower_name(compress::ggml::fallback_type(type, cols));
}

std::vector<std::pair<std::string, int64_t>> covered_tensors(const DenseModel& dense, const budget::Recipe& recipe) {
  std::vector<std::pair<std::string, int64_t>> out;
  auto consider = [&](const std::string& name, int64_t params) {
    const budget::Rule* rule = recipe.rule_for(name);
    if (rule != nullptr && !rule->skip) out.emplace_back(name, params);
  };
  const auto& c = dense.model->config();
  consider("token_embd.weight", c.vocab_size * c.dim);
  // A tied output head is token_embd itself, not a tensor of its own.
  const bool tied = dense.file->find("output.weight") == nullptr;
  for (const auto& name : dense.model->linear_names()) {
    if (name == "output.weight" && tied) continue;
    const auto& l = dense.model->linear(name);
    consider(name, l.in_features() * l.out_features());
  }
  return out;
}

budget::Table build_candidates(const DenseModel& dense, const budget::Recipe& recipe, LayerBank& bank) {
  const auto tensors = covered_tensors(dense, recipe);
  require(!tensors.empty(), "recipe '", recipe.name, "' covers no tensor of the model");
  Progress bar("measuring options", static_cast<int64_t>(tensors.size()));
  int64_t done = 0;
  auto options_for = [&](const std::string& tensor, const budget::MethodSpec& spec) {
    const compress::WeightCompressor& c = compress::find_compressor(spec.compressor);
    const RowMatrix<float>& w = bank.weight(tensor);
    const compress::Layer layer{tensor, &w};
    std::vector<std::string> knobs = spec.knobs.empty() ? c.knobs(layer) : spec.knobs;
    std::set<std::string> seen;
    std::vector<budget::Candidate> out;
    const compress::LayerCalibration lc = bank.calibration(tensor);
    for (const auto& requested : knobs) {
      const std::string knob = effective_knob(spec.compressor, requested, layer.cols());
      if (!seen.insert(knob).second) continue;
      budget::Candidate cand;
      cand.method = spec.compressor;
      cand.knob = knob;
      cand.cost = c.cost(layer, knob);
      const RowMatrix<float> w_hat = c.reconstruct(bank.compressed(tensor, spec.compressor, knob));
      cand.error = compress::output_error(w, w_hat, recipe.error_mode == "weight" ? nullptr : lc.hessian);
      out.push_back(std::move(cand));
    }
    return out;
  };
  std::string last;
  budget::Table table = budget::build_table(recipe, tensors, [&](const std::string& tensor, const budget::MethodSpec& s) {
    if (tensor != last) {
      last = tensor;
      bar.update(done++);
    }
    return options_for(tensor, s);
  });
  bar.update(static_cast<int64_t>(tensors.size()));
  return table;
}

std::vector<double> weight_errors_by_kl(budget::Table& table, const nn::LlamaModel& dense, LayerBank& bank,
                                        const Judge& probe) {
  std::vector<double> sensitivity(table.layers.size(), 0.0);
  Progress bar("measuring sensitivities", static_cast<int64_t>(table.layers.size()));
  for (size_t i = 0; i < table.layers.size(); ++i) {
    auto& layer = table.layers[i];
    bar.update(static_cast<int64_t>(i));
    if (layer.options.size() < 2) continue;  // pinned: a constant, nothing to weigh
    const auto worst = std::max_element(layer.options.begin(), layer.options.end(),
                                        [](const budget::Candidate& a, const budget::Candidate& b) { return a.error < b.error; });
    if (!(worst->error > 0)) continue;
    budget::Plan one;
    budget::Choice ch;
    ch.tensor = layer.tensor;
    ch.method = worst->method;
    ch.knob = worst->knob;
    one.choices.push_back(ch);
    const double kl = probe.kl(apply_plan(dense, one, bank));
    const double s = std::max(kl, 0.0) / worst->error;
    sensitivity[i] = s;
    for (auto& o : layer.options) o.error *= s;
  }
  bar.update(static_cast<int64_t>(table.layers.size()));
  return sensitivity;
}

budget::Plan uniform_plan(const budget::Table& table, const std::string& method, const std::string& knob,
                          const nn::LlamaModel& dense) {
  budget::Plan plan;
  plan.solver = "uniform " + method + ":" + knob;
  for (const auto& layer : table.layers) {
    const budget::Candidate* pick = nullptr;
    if (layer.options.size() == 1) {
      pick = &layer.options.front();  // pinned
    } else {
      const int64_t cols = weight_shape(dense, layer.tensor).second;
      std::string want = effective_knob(method, knob, cols);
      // llama-quantize gives the output head (a tied token embedding is the head) q6_k whatever the
      // requested type, or q8_0 when its rows are not whole super-blocks.
      if (layer.tensor == "token_embd.weight" && method.rfind("quant.ggml", 0) == 0)
        want = cols % 256 == 0 ? "q6_k" : "q8_0";
      for (const auto& o : layer.options)
        if (o.method == method && o.knob == want) pick = &o;
      require(pick != nullptr, "uniform ", method, ":", knob, ": tensor '", layer.tensor, "' has no option ", method,
              ":", want, " in the candidate table");
    }
    budget::Choice ch;
    ch.tensor = layer.tensor;
    ch.method = pick->method;
    ch.knob = pick->knob;
    ch.cost = pick->cost;
    ch.predicted_error = pick->error;
    plan.choices.push_back(std::move(ch));
  }
  plan.constraint = {budget::Metric::bytes, plan.total_cost().bytes};
  return plan;
}

compress::Compressed copy_of(const compress::Compressed& c) {
  compress::Compressed out;
  out.method = c.method;
  out.knob = c.knob;
  out.rows = c.rows;
  out.cols = c.cols;
  out.meta = c.meta;
  for (const auto& [k, t] : c.tensors) out.tensors.emplace(k, t.clone());
  return out;
}

compress::LayerMap plan_layers(const budget::Plan& plan, LayerBank& bank) {
  compress::LayerMap layers;
  for (const auto& ch : plan.choices) layers.emplace(ch.tensor, copy_of(bank.compressed(ch.tensor, ch.method, ch.knob)));
  return layers;
}

nn::LlamaModel apply_plan(const nn::LlamaModel& dense, const budget::Plan& plan, LayerBank& bank) {
  nn::LlamaModel m = dense.clone();
  for (const auto& ch : plan.choices) {
    if (ch.tensor == "token_embd.weight") {
      const auto& c = bank.compressed(ch.tensor, ch.method, ch.knob);
      auto e = std::make_shared<const RowMatrix<float>>(compress::find_compressor(ch.method).reconstruct(c));
      if (bank.tied_output()) m.set_linear("output.weight", std::make_shared<nn::DenseLinear>(*e));
      m.set_token_embedding(std::move(e));
      continue;
    }
    m.set_linear(ch.tensor, bank.linear(ch.tensor, ch.method, ch.knob));
  }
  return m;
}

namespace {

void log_softmax_rows(const float* logits, int64_t rows, int64_t vocab, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * vocab;
    float* y = out + r * vocab;
    const float mx = *std::max_element(x, x + vocab);
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(x[i] - mx));
    const float lse = mx + static_cast<float>(std::log(sum));
    for (int64_t i = 0; i < vocab; ++i) y[i] = x[i] - lse;
  }
}

}  // namespace

Judge::Judge(const nn::LlamaModel& dense, std::vector<std::vector<int32_t>> windows)
    : windows_(std::move(windows)), vocab_(dense.config().vocab_size) {
  double nll = 0;
  for (const auto& w : windows_) {
    const auto n = static_cast<int64_t>(w.size());
    require(n >= 2, "evaluation window of ", n, " tokens: need at least 2");
    std::vector<float> logits(static_cast<size_t>(n * vocab_));
    nn::LlamaSession session(dense, n);
    session.forward(w, logits.data(), nn::Logits::all);
    log_softmax_rows(logits.data(), n - 1, vocab_, logits.data());
    logits.resize(static_cast<size_t>((n - 1) * vocab_));
    for (int64_t r = 0; r + 1 < n; ++r) {
      const float* row = logits.data() + r * vocab_;
      dense_top1_.push_back(static_cast<int32_t>(std::max_element(row, row + vocab_) - row));
      nll -= row[w[static_cast<size_t>(r + 1)]];
    }
    dense_logp_.push_back(std::move(logits));
    tokens_ += n - 1;
  }
  dense_nll_ = nll / static_cast<double>(tokens_);
}

Judgement Judge::operator()(const nn::LlamaModel& model) const {
  std::vector<double> kl(static_cast<size_t>(tokens_));
  std::vector<char> agree(static_cast<size_t>(tokens_));
  double nll = 0;
  int64_t base = 0;
  for (size_t q = 0; q < windows_.size(); ++q) {
    const auto& w = windows_[q];
    const auto n = static_cast<int64_t>(w.size());
    std::vector<float> logits(static_cast<size_t>(n * vocab_));
    nn::LlamaSession session(model, n);
    session.forward(w, logits.data(), nn::Logits::all);
    log_softmax_rows(logits.data(), n - 1, vocab_, logits.data());
    const float* p = dense_logp_[q].data();
    const float* m = logits.data();
    parallel_for(n - 1, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double s = 0;
        const float* pr = p + r * vocab_;
        const float* mr = m + r * vocab_;
        for (int64_t i = 0; i < vocab_; ++i) s += std::exp(static_cast<double>(pr[i])) * static_cast<double>(pr[i] - mr[i]);
        kl[static_cast<size_t>(base + r)] = std::max(0.0, s);
        const auto top = static_cast<int32_t>(std::max_element(mr, mr + vocab_) - mr);
        agree[static_cast<size_t>(base + r)] = top == dense_top1_[static_cast<size_t>(base + r)];
      }
    });
    for (int64_t r = 0; r + 1 < n; ++r) nll -= m[r * vocab_ + w[static_cast<size_t>(r + 1)]];
    base += n - 1;
  }
  Judgement j;
  j.tokens = tokens_;
  double sum = 0, agreed = 0;
  for (size_t i = 0; i < kl.size(); ++i) {
    sum += kl[i];
    agreed += agree[i];
  }
  j.mean_kl = sum / static_cast<double>(tokens_);
  j.top1 = agreed / static_cast<double>(tokens_);
  std::vector<double> sorted = kl;
  const auto k99 = static_cast<size_t>(std::min<double>(static_cast<double>(sorted.size() - 1), 0.99 * static_cast<double>(sorted.size())));
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k99), sorted.end());
  j.p99_kl = sorted[k99];
  j.perplexity = std::exp(nll / static_cast<double>(tokens_));
  j.dense_perplexity = std::exp(dense_nll_);
  return j;
}

}  // namespace strata::cli
