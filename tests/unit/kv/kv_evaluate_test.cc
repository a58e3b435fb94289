#include "strata/kv/evaluate.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"
#include "test_util.hpp"

namespace strata::kv {
namespace {

// The test binaries' data directories (environment first), with the library's file names.
io::DataPaths paths() { return {strata::testing::models_dir(), strata::testing::shared_data_dir()}; }
std::filesystem::path stories_path() { return paths().stories260k(); }

struct Stories {
  std::unique_ptr<io::Model> file;
  std::unique_ptr<nn::LlamaModel> model;
};
const Stories& stories() {
  static Stories s = [] {
    Stories r;
    if (!std::filesystem::exists(stories_path())) return r;
    r.file = io::open_model(stories_path());
    r.model = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*r.file));
    return r;
  }();
  return s;
}

#define REQUIRE_STORIES() STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K")

// log-softmax in double, written out.
std::vector<double> log_probs(const std::vector<float>& logits) {
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (const float x : logits) sum += std::exp(static_cast<double>(x) - top);
  std::vector<double> out;
  for (const float x : logits) out.push_back(static_cast<double>(x) - top - std::log(sum));
  return out;
}

// The steps after the prompt of `window` through `session`, which has read the prompt: the
// log-probabilities of each step.
std::vector<std::vector<double>> steps(Session& session, const std::vector<int32_t>& window, int64_t prompt) {
  std::vector<float> logits(static_cast<size_t>(session.model().config().vocab_size));
  std::vector<std::vector<double>> out;
  for (size_t t = static_cast<size_t>(prompt); t + 1 < window.size(); ++t) {
    session.forward(std::span<const int32_t>(&window[t], 1), logits.data(), nn::Logits::last);
    out.push_back(log_probs(logits));
  }
  return out;
}

// Windows of 40 tokens, a 30-token prompt; 2 sinks and a 4-token window.
DecodeOptions small_windows(std::vector<double> budgets) {
  DecodeOptions o;
  o.prefill = 30;
  o.budgets = std::move(budgets);
  o.eviction.sinks = 2;
  o.eviction.recent = 4;
  return o;
}

TEST(KvEvaluate, ConfigsLabelsAndBadNames) {
  const std::vector<std::string> scorers = {"h2o", "tova"};
  const std::vector<Budgeting> rules = {Budgeting::uniform, Budgeting::adakv};
  const std::vector<double> one = {0.5}, two = {0, 0.75};
  std::vector<std::string> labels;
  for (const auto& c : eval_configs(scorers, rules, one)) labels.push_back(c.label());
  EXPECT_EQ(labels, (std::vector<std::string>{"streaming-llm", "h2o/uniform", "h2o/adakv", "tova/uniform",
                                              "tova/adakv"}));
  const auto shared = eval_configs(std::vector<std::string>{"snapkv"}, std::vector<Budgeting>{Budgeting::pyramid}, two);
  ASSERT_EQ(shared.size(), 3u);
  EXPECT_EQ(shared[1].label(), "snapkv/pyramid w0%");
  EXPECT_EQ(shared[2].label(), "snapkv/pyramid w75%");
  EXPECT_EQ(parse_budgeting("allocated"), Budgeting::allocated);
  EXPECT_EQ(budgeting_name(Budgeting::pyramid), "pyramid");
  EXPECT_THROW(parse_budgeting("pyramids"), Error);
  EXPECT_THROW(eval_configs(std::vector<std::string>{"h3o"}, rules, one), Error);
  EXPECT_THROW(eval_configs(scorers, rules, std::vector<double>{1.0}), Error);
  // "allocated" needs calibration tables.
  EXPECT_THROW(eval_policy({"h2o", Budgeting::allocated}, 16, 64, {}, nullptr), Error);
  EXPECT_TRUE(eval_policy({}, 16, 64, {}, nullptr).streaming);
}

TEST(KvEvaluate, SplitWindows) {
  const std::vector<int32_t> t = {0, 1, 2, 3, 4, 5, 6};
  EXPECT_EQ(split_windows(t, 3, 2), (std::vector<std::vector<int32_t>>{{0, 1, 2}, {3, 4, 5}}));
  EXPECT_THROW(split_windows(t, 4, 2), Error);
}

// A budget above every window's length evicts nothing: the forks are the full cache, bit for bit.
TEST(KvEvaluate, DecodeAtFullBudgetHasZeroKL) {
  REQUIRE_STORIES();
  const nn::LlamaModel& m = *stories().model;
  const auto windows = nn::sample_sequences(m, 2, 40, 1, 3);
  const DecodeOptions o = small_windows({40.0 / 30.0});
  const auto configs =
      eval_configs(std::vector<std::string>{"h2o", "snapkv", "chunkkv"},
                   std::vector<Budgeting>{Budgeting::uniform, Budgeting::adakv}, std::vector<double>{0, 0.5});
  std::vector<std::pair<int64_t, int64_t>> calls;
  const DecodeResult r = evaluate_decode(m, windows, configs, o, nullptr,
                                         [&](int64_t done, int64_t total) { calls.push_back({done, total}); });
  ASSERT_EQ(r.rows.size(), configs.size());
  EXPECT_EQ(r.count, 2 * 9);
  for (const auto& row : r.rows) {
    EXPECT_EQ(row.tokens, 40);
    EXPECT_EQ(row.count, r.count);
    EXPECT_EQ(row.kl, 0.0) << row.config.label();
    EXPECT_EQ(row.top1, row.count) << row.config.label();
    EXPECT_EQ(row.nll, r.full_nll) << row.config.label();
    EXPECT_EQ(row.window_kl, (std::vector<double>{0, 0}));
  }
  const int64_t forks = 2 * static_cast<int64_t>(configs.size());
  ASSERT_EQ(static_cast<int64_t>(calls.size()), forks);
  EXPECT_EQ(calls.back(), std::make_pair(forks, forks));
  // The full cache's perplexity against nn::LlamaSession's logits, scored here.
  double nll = 0;
  for (const auto& w : windows) {
    nn::LlamaSession dense(m, 40);
    std::vector<float> logits(static_cast<size_t>(m.config().vocab_size));
    dense.forward(std::span<const int32_t>(w).first(30), logits.data(), nn::Logits::last);
    for (size_t t = 30; t + 1 < w.size(); ++t) {
      dense.forward(std::span<const int32_t>(&w[t], 1), logits.data(), nn::Logits::last);
      nll -= log_probs(logits)[static_cast<size_t>(w[t + 1])];
    }
  }
  EXPECT_NEAR(r.full_nll, nll, 1e-4 * nll);
  EXPECT_NEAR(r.full_perplexity(), std::exp(nll / 18), 1e-4 * std::exp(nll / 18));
}

// Below the window, every row equals a session built by hand with that eviction, read step by step,
// its KL to the full cache computed here.
TEST(KvEvaluate, DecodeEqualsASessionThatReadTheWindowItself) {
  REQUIRE_STORIES();
  const nn::LlamaModel& m = *stories().model;
  const auto windows = nn::sample_sequences(m, 2, 40, 1, 7);
  const DecodeOptions o = small_windows({0.4, 0.6});  // 12 and 18 tokens per KV head
  const auto configs = eval_configs(std::vector<std::string>{"h2o"},
                                    std::vector<Budgeting>{Budgeting::uniform, Budgeting::pyramid},
                                    std::vector<double>{0.5});
  const DecodeResult r = evaluate_decode(m, windows, configs, o);
  ASSERT_EQ(r.rows.size(), 6u);
  for (const auto& row : r.rows) {
    Policy p = Policy::streaming_llm(2);
    if (!row.config.streaming()) {
      p = row.config.budgeting == Budgeting::uniform ? Policy::uniform(2, 4) : Policy::pyramid(20, 2, 4);
      p.recent_share = 0.5;
    }
    double kl = 0, nll = 0;
    int64_t top1 = 0;
    std::vector<double> window_kl;
    for (const auto& w : windows) {
      Session full(m, 40);
      Session evicting(m, 40, Eviction{row.config.streaming() ? nullptr : make_scorer("h2o"), p, row.tokens},
                       Schedule{.prefill = true, .decode = true, .every = 1});
      std::vector<float> logits(static_cast<size_t>(m.config().vocab_size));
      full.forward(std::span<const int32_t>(w).first(30), logits.data(), nn::Logits::last);
      evicting.forward(std::span<const int32_t>(w).first(30), logits.data(), nn::Logits::last);
      const auto ps = steps(full, w, 30), qs = steps(evicting, w, 30);
      double wkl = 0;
      for (size_t t = 0; t < ps.size(); ++t) {
        for (size_t v = 0; v < ps[t].size(); ++v) wkl += std::exp(ps[t][v]) * (ps[t][v] - qs[t][v]);
        nll -= qs[t][static_cast<size_t>(w[30 + t + 1])];
        top1 += std::max_element(ps[t].begin(), ps[t].end()) - ps[t].begin() ==
                std::max_element(qs[t].begin(), qs[t].end()) - qs[t].begin();
      }
      kl += wkl;
      window_kl.push_back(wkl / static_cast<double>(ps.size()));
    }
    const std::string label = row.config.label();
    EXPECT_EQ(row.tokens, std::llround(row.budget * 30));
    EXPECT_GT(row.kl, 0) << label;
    // The same logits, summed in another order (and with FMA contractions under -march=native): equal to
    // a few parts in 1e9, far below any difference between two eviction policies.
    EXPECT_NEAR(row.kl, kl, 1e-9 + 1e-7 * kl) << label;
    EXPECT_NEAR(row.nll, nll, 1e-7 * nll) << label;
    EXPECT_EQ(row.top1, top1) << label;
    ASSERT_EQ(row.window_kl.size(), 2u);
    for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(row.window_kl[i], window_kl[i], 1e-9 + 1e-7 * window_kl[i]);
    EXPECT_EQ(&r.row(label, row.budget), &row);
  }
  EXPECT_THROW(r.row("tova/uniform", 0.4), Error);
}

TEST(KvEvaluate, LayerErrorsPerConfig) {
  REQUIRE_STORIES();
  const nn::LlamaModel& m = *stories().model;
  const auto tokens = nn::sample_sequences(m, 1, 80, 1, 5)[0];
  const std::span<const int32_t> all(tokens);
  const auto prompt = all.first(64), probe = all.subspan(64, 16);
  LayerErrorOptions o;
  o.budget = 0.25;
  o.eviction.sinks = 2;
  o.eviction.recent = 4;
  const auto configs = eval_configs(std::vector<std::string>{"h2o", "tova"},
                                    std::vector<Budgeting>{Budgeting::uniform, Budgeting::adakv},
                                    std::vector<double>{0});
  std::vector<int64_t> passes;
  const auto r = layer_errors(m, prompt, probe, configs, o, nullptr, [&](int64_t done, int64_t) { passes.push_back(done); });
  EXPECT_EQ(r.tokens, 16);
  EXPECT_EQ(passes, (std::vector<int64_t>{1, 2}));
  ASSERT_EQ(r.columns.size(), configs.size());
  // Each column is what a probe of its own scorer measures for the policy written out here.
  const AttentionProbe plain(m, prompt, probe, nullptr), h2o(m, prompt, probe, make_scorer("h2o")),
      tova(m, prompt, probe, make_scorer("tova"));
  EXPECT_EQ(r.columns[0].label, "streaming-llm");
  EXPECT_EQ(r.columns[0].errors, plain.errors(Policy::streaming_llm(2), 16));
  EXPECT_EQ(r.columns[1].errors, h2o.errors(Policy::uniform(2, 4), 16));
  EXPECT_EQ(r.columns[2].errors, h2o.errors(Policy::adakv(0.2, 2, 4), 16));
  EXPECT_EQ(r.columns[3].errors, tova.errors(Policy::uniform(2, 4), 16));
  EXPECT_EQ(r.columns[4].errors, tova.errors(Policy::adakv(0.2, 2, 4), 16));
  const auto& e = r.columns[1].errors;
  ASSERT_EQ(static_cast<int64_t>(e.size()), m.config().n_layers);
  double mean = 0;
  for (const double x : e) mean += x / static_cast<double>(e.size());
  EXPECT_NEAR(r.columns[1].mean(), mean, 1e-15);
  EXPECT_EQ(e[static_cast<size_t>(r.columns[1].worst_layer())], *std::max_element(e.begin(), e.end()));
  // The whole prompt kept: nothing to lose.
  o.budget = 1.0;
  for (const auto& c : layer_errors(m, prompt, probe, configs, o).columns)
    for (const double x : c.errors) EXPECT_LT(x, 1e-6) << c.label;
  // StreamingLLM alone gets a probe pass without a scorer.
  const std::vector<EvalConfig> streaming = {EvalConfig{}};
  o.budget = 0.25;
  EXPECT_EQ(layer_errors(m, prompt, probe, streaming, o).columns[0].errors, plain.errors(Policy::streaming_llm(2), 16));
}

TEST(KvEvaluate, AllocatedPolicyFromCalibrationTables) {
  REQUIRE_STORIES();
  const nn::LlamaModel& m = *stories().model;
  EvictionSettings s;
  s.sinks = 2;
  s.recent = 4;
  s.probe = 8;
  AllocationTables tables(m, nn::sample_sequences(m, 1, 72, 1, 9)[0], s);
  const Policy p = eval_policy({"tova", Budgeting::allocated, 0.5}, 20, 64, s, &tables);
  ASSERT_EQ(p.layers, LayerBudget::layerwise);
  ASSERT_EQ(static_cast<int64_t>(p.per_layer.size()), m.config().n_layers);
  int64_t sum = 0;
  for (const int64_t b : p.per_layer) sum += b;
  EXPECT_LE(sum, 20 * m.config().n_layers);
  EXPECT_EQ(p.recent_share, 0.5);
  EXPECT_EQ(&tables.table("tova", 64, 0.5), &tables.table("tova", 64, 0.5));  // measured once
  EXPECT_THROW(tables.table("tova", 70, 0.5), Error);                          // 70 + 8 > 72 tokens
}

TEST(KvEvaluate, ChatFormatFromTheTemplate) {
  const std::string chatml =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
      "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
      "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
  const ChatFormat f = chat_format(chatml);
  EXPECT_EQ(f.before,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\n");
  EXPECT_EQ(f.after, "<|im_end|>\n<|im_start|>assistant\n");
  // A system message filled from a variable is not the template's own.
  const ChatFormat v = chat_format("<|im_start|>system\n' + system_message + '<|im_end|>\n");
  EXPECT_EQ(v.before, "<|im_start|>user\n");
  const ChatFormat plain = chat_format("");
  EXPECT_EQ(plain.before, "");
  EXPECT_EQ(plain.after, "\n\nAnswer:");
}

TEST(KvEvaluate, NeedleGoesAfterASentenceEnd) {
  const ChatFormat chat{"<u>", "</u>"};
  // 22 characters; 30% is character 6, the next ". " ends "Two." at 8, so the needle goes at 10.
  const NeedleText t = insert_needle("One. Two. Three. Four.", 0.3, "N.", "Q?", chat);
  EXPECT_EQ(t.prompt, "<u>One. Two. N. Three. Four.\n\nQ?</u>");
  EXPECT_DOUBLE_EQ(t.depth, 10.0 / 22.0);
  EXPECT_EQ(insert_needle("One. Two.", 0, "N.", "Q?", chat).prompt, "<u>One. N. Two.\n\nQ?</u>");
  EXPECT_THROW(insert_needle("One.", 1.5, "N.", "Q?", chat), Error);
}

// With a budget above the prompt nothing is evicted, so every config answers as the full cache does.
TEST(KvEvaluate, NeedleAtFullBudgetAnswersAsTheFullCache) {
  STRATA_REQUIRE_FILE(paths().smollm2(), "scripts/fetch-models.sh");
  STRATA_REQUIRE_FILE(paths().moby_dick(), "shared data: ../shared/data/corpora");
  const auto file = io::open_model(paths().smollm2());
  const auto model = nn::LlamaModel::load(*file);
  const auto tok = nn::BpeTokenizer::from_model(*file);
  const auto haystack = nn::tokenize_slice(tok, nn::TextSlice{paths().moby_dick(), 0.3, 0.301}, 120);
  const std::vector<double> depths = {0.5};
  const auto prompts = needle_prompts(tok, chat_format(*file), haystack, depths, "The special magic number is 4721.",
                                      "What is the special magic number?");
  ASSERT_EQ(prompts.size(), 1u);
  const std::string text = tok.decode(prompts[0].tokens);
  EXPECT_NE(text.find("The special magic number is 4721."), std::string::npos);
  EXPECT_EQ(text.rfind("<|im_start|>assistant\n"), text.size() - 22);
  NeedleOptions o;
  o.budgets = {2.0};  // 240 tokens per head, more than the prompt and the answer
  o.answer_tokens = 8;
  o.eviction.sinks = 2;
  o.eviction.recent = 4;
  const auto configs = eval_configs(std::vector<std::string>{"snapkv"}, std::vector<Budgeting>{Budgeting::adakv},
                                    std::vector<double>{0});
  const auto r = evaluate_needle(model, tok, prompts, static_cast<int64_t>(haystack.size()), configs, o);
  ASSERT_EQ(r.answers.size(), 3u);
  EXPECT_EQ(r.answers[0].label, "full cache");
  EXPECT_FALSE(r.answers[0].answer.empty());
  for (const auto& a : r.answers) {
    EXPECT_EQ(a.answer, r.answers[0].answer) << a.label;
    EXPECT_EQ(a.correct, a.answer.find("4721") != std::string::npos);
    EXPECT_EQ(r.per_depth(a.label, a.budget), a.correct ? "1" : "0");
  }
  EXPECT_THROW(r.accuracy("tova/uniform", 2.0), Error);
}

}  // namespace
}  // namespace strata::kv
