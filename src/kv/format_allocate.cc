#include "strata/kv/format_allocate.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "strata/core/error.hpp"
#include "strata/kv/session.hpp"

namespace strata::kv {

namespace {

std::string row_name(int64_t layer, bool keys) {
  return "blk." + std::to_string(layer) + (keys ? ".cache_k" : ".cache_v");
}

// log-softmax of `n` rows of logits [n, vocab], in double: the table ranks formats whose KL is
// 1e-8 (f16), below what float log-probabilities (kernels::log_softmax_inplace) resolve.
std::vector<double> log_probs(const float* logits, int64_t n, int64_t vocab) {
  std::vector<double> out(static_cast<size_t>(n * vocab));
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * vocab;
    double* o = out.data() + i * vocab;
    const double mx = *std::max_element(row, row + vocab);
    double z = 0;
    for (int64_t v = 0; v < vocab; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
    const double lz = std::log(z) + mx;
    for (int64_t v = 0; v < vocab; ++v) o[v] = static_cast<double>(row[v]) - lz;
  }
  return out;
}

// Mean over the n rows of KL(p || q), both given as log-probabilities [n, vocab].
double mean_kl(const std::vector<double>& lp, const std::vector<double>& lq, int64_t n, int64_t vocab) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    double kl = 0;
    for (int64_t v = i * vocab; v < (i + 1) * vocab; ++v) {
      const size_t j = static_cast<size_t>(v);
      kl += std::exp(lp[j]) * (lp[j] - lq[j]);
    }
    total += std::max(kl, 0.0);  // rounding can leave an identical distribution a hair below 0
  }
  return total / static_cast<double>(n);
}

}  // namespace

double format_bits(KvFormat f, bool keys, int64_t kivi_group, int64_t head_dim) {
  switch (f) {
    case KvFormat::f32: return 32;
    case KvFormat::f16: return 16;
    case KvFormat::q8_0: return 8.5;  // 32 int8 + a binary16 scale per 32 elements
    case KvFormat::q4_0: return 4.5;  // 32 4-bit codes + a binary16 scale per 32 elements
    case KvFormat::kivi2:
    case KvFormat::kivi4: break;
  }
  require(kivi_group >= 1 && head_dim >= 1, "kv::format_bits: kivi_group (", kivi_group, ") and head_dim (", head_dim,
          ") must be positive");
  const double bits = f == KvFormat::kivi2 ? 2 : 4;
  // A binary16 scale and minimum (32 bits): keys per channel and G tokens; values per token and
  // group of min(G, head_dim) channels, ceil(head_dim / group) groups per row.
  if (keys) return bits + 32.0 / static_cast<double>(kivi_group);
  const int64_t group = std::min(kivi_group, head_dim), groups = (head_dim + group - 1) / group;
  return bits + 32.0 * static_cast<double>(groups) / static_cast<double>(head_dim);
}

double format_bits(const CacheFormat& format, int64_t n_layers, int64_t head_dim) {
  require(n_layers >= 1, "kv::format_bits: n_layers must be positive, got ", n_layers);
  format.validate(n_layers, head_dim);
  double total = 0;
  for (int l = 0; l < n_layers; ++l)
    total += format_bits(format.key_format(l), true, format.kivi_group, head_dim) +
             format_bits(format.value_format(l), false, format.kivi_group, head_dim);
  return total / static_cast<double>(2 * n_layers);
}

budget::Table format_table(const nn::LlamaModel& model, std::span<const std::vector<int32_t>> windows,
                           const FormatTableOptions& options,
                           const std::function<void(int64_t done, int64_t total)>& progress) {
  const nn::LlamaConfig& c = model.config();
  const auto& menu = options.formats;
  require(!menu.empty(), "kv::format_table: 'formats' is empty");
  require(!windows.empty(), "kv::format_table: no calibration windows");
  require(options.probe >= 1, "kv::format_table: 'probe' must be at least 1, got ", options.probe);
  for (size_t i = 0; i < menu.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      require(menu[i] != menu[j], "kv::format_table: 'formats' lists ", to_string(menu[i]), " twice");
  for (size_t w = 0; w < windows.size(); ++w)
    require(static_cast<int64_t>(windows[w].size()) > options.probe, "kv::format_table: window ", w, " has ",
            windows[w].size(), " tokens; 'probe' = ", options.probe, " needs at least ", options.probe + 1);
  CacheFormat base;
  base.kivi_group = options.kivi_group;
  base.kivi_residual = options.kivi_residual;
  base.rotate = options.rotate;
  base.rotation_seed = options.rotation_seed;
  for (KvFormat f : menu) {  // every format must fit the model's heads before any work
    CacheFormat all = base;
    all.key = all.value = f;
    all.validate(c.n_layers, c.head_dim);
  }

  const int64_t n_layers = c.n_layers, vocab = c.vocab_size, probe = options.probe;
  const size_t n_formats = menu.size();
  std::vector<std::vector<double>> error(static_cast<size_t>(2 * n_layers), std::vector<double>(n_formats, 0.0));
  const int64_t total = static_cast<int64_t>(windows.size()) * 2 * n_layers * static_cast<int64_t>(n_formats);
  int64_t done = 0;
  std::vector<float> logits(static_cast<size_t>(probe * vocab));
  for (const auto& window : windows) {
    const int64_t length = static_cast<int64_t>(window.size()), prompt = length - probe;
    const std::span<const int32_t> tokens(window);
    Session prefix(model, length);
    prefix.forward(tokens.first(static_cast<size_t>(prompt)), logits.data(), nn::Logits::last);
    const auto read_probe = [&](const CacheFormat& f) {
      auto s = prefix.with_format(f);
      s->forward(tokens.subspan(static_cast<size_t>(prompt)), logits.data(), nn::Logits::all);
      return log_probs(logits.data(), probe, vocab);
    };
    const std::vector<double> want = read_probe(CacheFormat{});
    for (int64_t l = 0; l < n_layers; ++l)
      for (const bool keys : {true, false})
        for (size_t i = 0; i < n_formats; ++i) {
          CacheFormat f = base;
          f.layers.assign(static_cast<size_t>(n_layers), {KvFormat::f32, KvFormat::f32});
          (keys ? f.layers[static_cast<size_t>(l)].first : f.layers[static_cast<size_t>(l)].second) = menu[i];
          error[static_cast<size_t>(2 * l + (keys ? 0 : 1))][i] +=
              mean_kl(want, read_probe(f), probe, vocab) / static_cast<double>(windows.size());
          if (progress) progress(++done, total);
        }
  }

  budget::Table table;
  const double elements = static_cast<double>(c.n_kv_heads * c.head_dim);
  for (int64_t l = 0; l < n_layers; ++l)
    for (const bool keys : {true, false}) {
      budget::LayerCandidates row;
      row.tensor = row_name(l, keys);
      row.params = c.n_kv_heads * c.head_dim;
      for (size_t i = 0; i < n_formats; ++i) {
        const double bits = format_bits(menu[i], keys, options.kivi_group, c.head_dim);
        row.options.push_back(budget::Candidate{"kv.format", std::string(to_string(menu[i])),
                                                compress::Cost{bits * elements / 8, elements, 0},
                                                error[static_cast<size_t>(2 * l + (keys ? 0 : 1))][i]});
      }
      table.layers.push_back(std::move(row));
    }
  table.validate();
  return table;
}

double min_bits(const budget::Table& table) {
  table.validate();
  require(table.params() > 0, "kv::min_bits: the table counts no elements");
  return 8 * table.min_cost(budget::Metric::bytes) / static_cast<double>(table.params());
}

void check_bits_budget(double bits_per_element, std::span<const KvFormat> menu, int64_t kivi_group,
                       std::string_view option) {
  require(std::isfinite(bits_per_element) && bits_per_element > 0, option, " = ", bits_per_element,
          ": a KV budget in bits per element must be a positive number");
  require(!menu.empty(), option, ": no KV formats to choose from");
  require(kivi_group >= 1, option, ": kivi_group must be at least 1, got ", kivi_group);
  double cheapest = 32;
  for (KvFormat f : menu) cheapest = std::min(cheapest, format_bits(f, true, kivi_group, kivi_group));
  require(bits_per_element >= cheapest, option, " = ", bits_per_element,
          " bits per element is below the cheapest format on the menu (", cheapest, " bits)");
}

FormatAllocation allocate_formats(const budget::Table& table, double bits_per_element, const CacheFormat& base,
                                  std::string_view option, budget::Solver solver) {
  table.validate();
  const int64_t rows = static_cast<int64_t>(table.layers.size()), n_layers = rows / 2;
  require(rows >= 2 && rows % 2 == 0, "kv::allocate_formats: the table has ", rows,
          " rows; it needs a keys and a values row per layer");
  for (int64_t i = 0; i < rows; ++i) {
    const std::string want = row_name(i / 2, i % 2 == 0);
    require(table.layers[static_cast<size_t>(i)].tensor == want, "kv::allocate_formats: row ", i, " is '",
            table.layers[static_cast<size_t>(i)].tensor, "', expected '", want, "'");
  }
  require(std::isfinite(bits_per_element), option, " = ", bits_per_element, ": not a number of bits per element");
  const double lowest = min_bits(table);
  require(bits_per_element >= lowest * (1 - 1e-12), option, " = ", bits_per_element,
          " bits per element is below the cheapest formats of the table (", lowest, " bits per element)");
  budget::Constraint constraint = budget::bits_per_weight(table, bits_per_element);
  // A budget equal to the cheapest plan meets it exactly, whatever the rounding of bits x elements.
  constraint.budget = std::max(constraint.budget, table.min_cost(budget::Metric::bytes));

  FormatAllocation out;
  out.plan = budget::solve(table, constraint, solver);
  out.format = base;
  out.format.layers.assign(static_cast<size_t>(n_layers), {KvFormat::f32, KvFormat::f32});
  for (int64_t i = 0; i < rows; ++i) {
    const budget::Choice& choice = out.plan.choices[static_cast<size_t>(i)];
    const KvFormat f = parse_kv_format(choice.knob, choice.tensor);
    auto& layer = out.format.layers[static_cast<size_t>(i / 2)];
    (i % 2 == 0 ? layer.first : layer.second) = f;
  }
  out.bits_per_element = out.plan.bits_per_weight(table.params());
  out.predicted_error = out.plan.total_error();
  return out;
}

}  // namespace strata::kv
