#include "strata/kv/allocate.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "strata/core/error.hpp"
#include "strata/kv/session.hpp"

namespace strata::kv {

namespace {

// Records the probe queries' attention rows; each (layer, query head) writes only its own buffer.
class ProbeHooks : public nn::ForwardHooks {
 public:
  ProbeHooks(std::vector<std::vector<float>>& rows, int64_t n_heads) : rows_(rows), n_heads_(n_heads) {}
  bool wants_attention(int) const override { return true; }
  void on_attention(int layer, int head, const float* probs, int64_t q_len, int64_t k_len, int64_t) override {
    rows_[static_cast<size_t>(layer * n_heads_ + head)].assign(probs, probs + q_len * k_len);
  }

 private:
  std::vector<std::vector<float>>& rows_;
  int64_t n_heads_;
};

}  // namespace

AttentionProbe::AttentionProbe(const nn::LlamaModel& model, std::span<const int32_t> prompt,
                               std::span<const int32_t> probe, std::shared_ptr<Scorer> scorer) {
  const nn::LlamaConfig& c = model.config();
  layout_ = Layout{c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim};
  prompt_ = static_cast<int64_t>(prompt.size());
  probe_ = static_cast<int64_t>(probe.size());
  require(prompt_ > 0 && probe_ > 0, "kv::AttentionProbe: needs a prompt and probe tokens, got ", prompt_, " and ",
          probe_);
  const int64_t total = prompt_ + probe_;
  // A budget above every length: the session binds and feeds the scorer but never evicts.
  std::optional<Eviction> comp;
  if (scorer) comp = Eviction{scorer, Policy::uniform(0, 0), total};
  Session session(model, total, comp, Schedule{.prefill = false, .decode = false});
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  session.forward(prompt, logits.data(), nn::Logits::last);

  scores_.assign(static_cast<size_t>(c.n_layers), {});
  if (scorer) {
    scorer->begin_pass();
    for (int l = 0; l < c.n_layers; ++l) scorer->score_layer(session.cache(), l, scores_[static_cast<size_t>(l)]);
  } else {
    for (auto& s : scores_) s.assign(static_cast<size_t>(c.n_kv_heads), {});
  }

  attention_.assign(static_cast<size_t>(c.n_layers * c.n_heads), {});
  ProbeHooks hooks(attention_, c.n_heads);
  session.forward(probe, logits.data(), nn::Logits::last, &hooks);
  for (const auto& rows : attention_)
    require(static_cast<int64_t>(rows.size()) == probe_ * total, "kv::AttentionProbe: attention rows of ",
            rows.size() / static_cast<size_t>(probe_), " tokens, expected ", total);

  values_.resize(static_cast<size_t>(c.n_layers * c.n_kv_heads));
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const float* v = session.cache().values(l, h);
      values_[static_cast<size_t>(l * c.n_kv_heads + h)].assign(v, v + total * c.head_dim);
    }
}

const std::vector<std::vector<float>>& AttentionProbe::scores(int layer) const {
  require(layer >= 0 && layer < layout_.n_layers, "kv::AttentionProbe: layer ", layer, " of ", layout_.n_layers);
  return scores_[static_cast<size_t>(layer)];
}

double AttentionProbe::error(int layer, std::span<const std::vector<int64_t>> kept) const {
  require(layer >= 0 && layer < layout_.n_layers, "kv::AttentionProbe: layer ", layer, " of ", layout_.n_layers);
  require(static_cast<int64_t>(kept.size()) == layout_.n_kv_heads, "kv::AttentionProbe: kept sets for ", kept.size(),
          " KV heads, the model has ", layout_.n_kv_heads);
  const int64_t total = prompt_ + probe_, hd = layout_.head_dim;
  double err = 0, ref = 0;
  std::vector<double> o(static_cast<size_t>(hd)), os(static_cast<size_t>(hd));
  std::vector<char> in(static_cast<size_t>(total));
  for (int64_t kvh = 0; kvh < layout_.n_kv_heads; ++kvh) {
    std::fill(in.begin(), in.end(), 0);
    for (const int64_t j : kept[static_cast<size_t>(kvh)]) {
      require(j >= 0 && j < prompt_, "kv::AttentionProbe: kept index ", j, " of KV head ", kvh, " is outside the ",
              prompt_, "-token prompt");
      in[static_cast<size_t>(j)] = 1;
    }
    std::fill(in.begin() + prompt_, in.end(), 1);
    const float* v = values_[static_cast<size_t>(layer * layout_.n_kv_heads + kvh)].data();
    for (int64_t g = 0; g < layout_.group(); ++g) {
      const int64_t qh = kvh * layout_.group() + g;
      const float* rows = attention_[static_cast<size_t>(layer * layout_.n_heads + qh)].data();
      for (int64_t t = 0; t < probe_; ++t) {
        const float* a = rows + t * total;
        std::fill(o.begin(), o.end(), 0.0);
        std::fill(os.begin(), os.end(), 0.0);
        double all = 0, mass = 0;
        for (int64_t j = 0; j < prompt_ + t + 1; ++j) {
          const float* vj = v + j * hd;
          all += a[j];
          for (int64_t d = 0; d < hd; ++d) o[static_cast<size_t>(d)] += static_cast<double>(a[j]) * vj[d];
          if (!in[static_cast<size_t>(j)]) continue;
          mass += a[j];
          for (int64_t d = 0; d < hd; ++d) os[static_cast<size_t>(d)] += static_cast<double>(a[j]) * vj[d];
        }
        // The query's own token is always kept, so the kept mass is positive. Both sides are
        // normalised by their own sums, so keeping everything gives exactly zero.
        for (int64_t d = 0; d < hd; ++d) {
          const double od = o[static_cast<size_t>(d)] / all;
          const double diff = od - os[static_cast<size_t>(d)] / mass;
          err += diff * diff;
          ref += od * od;
        }
      }
    }
  }
  return ref > 0 ? std::sqrt(err / ref) : 0.0;
}

std::vector<double> AttentionProbe::errors(const Policy& policy, int64_t budget) const {
  const auto budgets = layer_budgets(policy, budget, layout_.n_layers);
  const std::vector<int64_t> lengths(static_cast<size_t>(layout_.n_kv_heads), prompt_);
  std::vector<double> out;
  for (int l = 0; l < layout_.n_layers; ++l) {
    const auto kept = select(policy, budgets[static_cast<size_t>(l)], lengths, scores(l));
    out.push_back(error(l, kept));
  }
  return out;
}

budget::Table sensitivity_table(const AttentionProbe& probe, const Policy& within_layer,
                                std::span<const int64_t> budgets) {
  Policy p = within_layer;
  p.layers = LayerBudget::uniform;
  p.per_layer.clear();
  const std::vector<int64_t> lengths(static_cast<size_t>(probe.layout().n_kv_heads), probe.prompt_tokens());
  std::vector<int64_t> grid;
  for (const int64_t b : budgets) {
    require(b > 0, "kv::sensitivity_table: budget ", b, " must be positive");
    if (b < probe.prompt_tokens()) grid.push_back(b);
  }
  grid.push_back(probe.prompt_tokens());
  std::sort(grid.begin(), grid.end());
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());

  budget::Table table;
  for (int l = 0; l < probe.n_layers(); ++l) {
    budget::LayerCandidates row;
    row.tensor = "blk." + std::to_string(l) + ".attn_kv";
    for (const int64_t b : grid) {
      double e = 0;
      if (b < probe.prompt_tokens()) {
        e = probe.error(l, select(p, b, lengths, probe.scores(l)));
        e *= e;
      }
      row.options.push_back(budget::Candidate{"kv.evict", "tokens=" + std::to_string(b),
                                              compress::Cost{static_cast<double>(b), 0, 0}, e});
    }
    table.layers.push_back(std::move(row));
  }
  return table;
}

std::vector<int64_t> allocate_layer_budgets(const budget::Table& table, int64_t budget, budget::Solver solver) {
  require(budget > 0, "kv::allocate_layer_budgets: budget ", budget, " must be positive");
  const double total = static_cast<double>(budget) * static_cast<double>(table.layers.size());
  const budget::Plan plan = budget::solve(table, budget::Constraint{budget::Metric::bytes, total}, solver);
  std::vector<int64_t> out;
  for (const auto& choice : plan.choices) out.push_back(static_cast<int64_t>(std::llround(choice.cost.bytes)));
  return out;
}

Policy allocated_policy(const budget::Table& table, int64_t budget, const Policy& within_layer,
                        budget::Solver solver) {
  Policy p = within_layer;  // sinks, window, head-wise allocation: as the table was measured with
  p.layers = LayerBudget::layerwise;
  p.per_layer = allocate_layer_budgets(table, budget, solver);
  return p;
}

}  // namespace strata::kv
