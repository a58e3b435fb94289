#include "strata/kv/tasks.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "strata/core/error.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/evaluate.hpp"
#include "strata/kv/policy.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"
#include "test_util.hpp"

namespace strata::kv {
namespace {

io::DataPaths paths() { return {strata::testing::models_dir(), strata::testing::shared_data_dir()}; }

// Prose without a single sentence period: words separated by spaces, commas, semicolons, dashes and
// line breaks, as a corpus whose sentences end otherwise (or not at all) would be.
std::string text_without_periods(size_t words) {
  static const char* kWords[] = {"whale", "harpoon", "sea", "captain", "rope", "deck", "storm", "lantern",
                                 "oil", "compass", "tide", "sailor", "mast", "anchor", "wind", "gale",
                                 "ocean", "keel", "timber", "voyage", "island", "harbor", "fog", "crew"};
  static const char* kSeps[] = {" ", " ", " ", ", ", "; ", " - ", "\n", " "};
  std::string s;
  uint64_t x = 12345;
  for (size_t i = 0; i < words; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s += kWords[(x >> 33) % std::size(kWords)];
    if (i + 1 < words) s += kSeps[(x >> 45) % std::size(kSeps)];
  }
  return s;
}

// Every offset where a word starts, by a plain scan.
std::vector<size_t> all_boundaries(const std::string& t) {
  std::vector<size_t> b = {0};
  for (size_t p = 1; p < t.size(); ++p)
    if (std::isspace(static_cast<unsigned char>(t[p - 1])) && !std::isspace(static_cast<unsigned char>(t[p])))
      b.push_back(p);
  b.push_back(t.size());
  return b;
}

int64_t word_count(std::string_view s) {
  std::istringstream in{std::string(s)};
  std::string w;
  int64_t n = 0;
  while (in >> w) ++n;
  return n;
}

const ChatFormat kChat{"<u>", "</u><a>"};

TEST(KvTasks, WordBoundaryIsTheNearestWordStartOnTextWithoutPeriods) {
  const std::string text = text_without_periods(400);
  ASSERT_EQ(text.find('.'), std::string::npos);
  const auto bounds = all_boundaries(text);
  for (int i = 0; i <= 100; ++i) {
    const double depth = i / 100.0;
    const size_t p = word_boundary(text, depth);
    const double target = std::round(depth * static_cast<double>(text.size()));
    double nearest = 1e18;
    for (const size_t b : bounds) nearest = std::min(nearest, std::abs(static_cast<double>(b) - target));
    EXPECT_TRUE(std::binary_search(bounds.begin(), bounds.end(), p)) << depth;
    EXPECT_EQ(std::abs(static_cast<double>(p) - target), nearest) << depth;
    // No word here is longer than 8 letters plus a 3-byte separator.
    EXPECT_LE(std::abs(static_cast<double>(p) - target), 11.0) << depth;
    if (depth < 0.99) EXPECT_LT(p, text.size()) << depth;
  }
  EXPECT_EQ(word_boundary(text, 0), 0u);
  EXPECT_EQ(word_boundary(text, 1), text.size());
  EXPECT_THROW(word_boundary(text, 1.5), Error);
  EXPECT_THROW(word_boundary(text, -0.1), Error);
}

TEST(KvTasks, InsertionsLandAtTheirDepthsAndLeaveTheTextWhole) {
  const std::string text = text_without_periods(600);
  std::vector<Insertion> ins;
  for (int i = 0; i < 10; ++i) ins.push_back({0.05 + 0.1 * i, "NEEDLE" + std::to_string(i) + " sits here."});
  std::reverse(ins.begin(), ins.end());  // any order
  std::vector<double> achieved;
  const std::string out = insert_sentences(text, ins, &achieved);
  ASSERT_EQ(achieved.size(), ins.size());
  for (size_t i = 0; i < ins.size(); ++i) {
    EXPECT_NEAR(achieved[i], ins[i].depth, 12.0 / static_cast<double>(text.size())) << i;
    // The sentence is in the output where the depth says, cutting no word.
    const size_t at = out.find(ins[i].sentence);
    ASSERT_NE(at, std::string::npos);
    EXPECT_TRUE(at == 0 || std::isspace(static_cast<unsigned char>(out[at - 1])));
    EXPECT_EQ(out[at + ins[i].sentence.size()], ' ');
  }
  // No depth collapsed to the end: the ten sentences are spread, the last one well before the end.
  EXPECT_LT(out.find("NEEDLE9"), out.size() * 96 / 100);
  // Taking the sentences out again gives the text back.
  std::string back = out;
  for (const auto& i : ins) back.erase(back.find(i.sentence), i.sentence.size() + 1);
  EXPECT_EQ(back, text);
  const std::vector<Insertion> end = {{1.0, "LAST."}};
  EXPECT_EQ(insert_sentences("a b", end), "a b LAST.");
  const std::vector<Insertion> start = {{0.0, "FIRST."}};
  EXPECT_EQ(insert_sentences("a b", start), "FIRST. a b");
}

// The answers of each family, recomputed from the prompt text by a parser that knows nothing of the
// generator.
std::vector<std::string> parse_answers(const TaskInstance& t) {
  const std::string& ctx = t.context;
  std::smatch m;
  std::vector<std::string> out;
  switch (t.kind) {
    case TaskKind::niah_single:
    case TaskKind::niah_multikey:
    case TaskKind::niah_multivalue: {
      EXPECT_TRUE(std::regex_search(t.question, m, std::regex("numbers? for (\\w+) mentioned")));
      const std::string key = m[1];
      const std::regex needle("One of the special magic numbers for (\\w+) is: (\\d+)\\.");
      for (auto it = std::sregex_iterator(ctx.begin(), ctx.end(), needle); it != std::sregex_iterator(); ++it)
        if ((*it)[1] == key) out.push_back((*it)[2]);
      break;
    }
    case TaskKind::variable_tracking: {
      EXPECT_TRUE(std::regex_search(t.question, m, std::regex("the value (\\d+) in")));
      const std::string value = m[1];
      std::map<std::string, std::string> value_of, alias_of;
      const std::regex direct("VAR ([A-Z]{5}) = (\\d+)\\."), alias("VAR ([A-Z]{5}) = VAR ([A-Z]{5})\\.");
      for (auto it = std::sregex_iterator(ctx.begin(), ctx.end(), direct); it != std::sregex_iterator(); ++it)
        value_of[(*it)[1]] = (*it)[2];
      for (auto it = std::sregex_iterator(ctx.begin(), ctx.end(), alias); it != std::sregex_iterator(); ++it)
        alias_of[(*it)[1]] = (*it)[2];
      for (bool changed = true; changed;) {
        changed = false;
        for (const auto& [var, src] : alias_of)
          if (!value_of.count(var) && value_of.count(src)) {
            value_of[var] = value_of[src];
            changed = true;
          }
      }
      for (const auto& [var, v] : value_of)
        if (v == value) out.push_back(var);
      break;
    }
    case TaskKind::common_words: {
      std::map<std::string, int> counts;
      const std::regex entry("\\d+\\. ([a-z]+)");
      for (auto it = std::sregex_iterator(ctx.begin(), ctx.end(), entry); it != std::sregex_iterator(); ++it)
        ++counts[(*it)[1]];
      int top = 0;
      for (const auto& [w, c] : counts) top = std::max(top, c);
      for (const auto& [w, c] : counts)
        if (c == top) out.push_back(w);
      break;
    }
    case TaskKind::passage_qa: {
      EXPECT_TRUE(std::regex_search(t.question, m, std::regex("does (\\w+ \\w+) live")));
      const std::string who = m[1];
      const std::regex fact("(\\w+ \\w+) lives in (\\w+) and works");
      for (auto it = std::sregex_iterator(ctx.begin(), ctx.end(), fact); it != std::sregex_iterator(); ++it)
        if ((*it)[1] == who) out.push_back((*it)[2]);
      break;
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(KvTasks, InstancesAreReproducibleSizedAndCheckableByAParser) {
  const std::string corpus = text_without_periods(20000);
  std::vector<std::string> words = corpus_words(corpus);
  for (int i = 0; i < 300; ++i) words.push_back("word" + std::string(1, static_cast<char>('a' + i % 26)) +
                                                std::string(1, static_cast<char>('a' + i / 26)));
  const TokenCounter count = word_count;
  TaskSettings s;
  s.cwe_words = 2;
  s.vt_hops = 2;
  for (const TaskKind k : all_tasks()) {
    for (int64_t i = 0; i < 3; ++i) {
      const TaskInstance a = make_task(k, i, 42, corpus, words, 600, kChat, s, count);
      const TaskInstance b = make_task(k, i, 42, corpus, words, 600, kChat, s, count);
      const TaskInstance c = make_task(k, i, 43, corpus, words, 600, kChat, s, count);
      EXPECT_EQ(a.prompt(kChat), b.prompt(kChat)) << task_name(k);
      EXPECT_EQ(a.answers, b.answers);
      EXPECT_NE(a.prompt(kChat), c.prompt(kChat)) << task_name(k);
      const int64_t n = word_count(a.prompt(kChat));
      EXPECT_LE(n, 600) << task_name(k);
      EXPECT_GE(n, 590) << task_name(k);
      EXPECT_EQ(a.prompt(kChat).rfind(a.answer_prefix), a.prompt(kChat).size() - a.answer_prefix.size());
      std::vector<std::string> want = a.answers;
      std::sort(want.begin(), want.end());
      EXPECT_EQ(parse_answers(a), want) << task_name(k) << " " << i;
      EXPECT_EQ(want.size(), k == TaskKind::niah_multivalue   ? 2u
                             : k == TaskKind::variable_tracking ? 3u
                             : k == TaskKind::common_words      ? 2u
                                                                : 1u);
      std::string all;
      for (const auto& w : a.answers) all += w + ", ";
      EXPECT_TRUE(answer_correct(a, "They are " + all + "and nothing else."));
      // Missing one answer, or an answer inside a longer word, is wrong.
      EXPECT_FALSE(answer_correct(a, all.substr(0, all.rfind(a.answers.back())))) << task_name(k);
      EXPECT_FALSE(answer_correct(a, "x" + all + a.answers.back() + "7")) << task_name(k);
    }
  }
  EXPECT_THROW(make_task(TaskKind::niah_single, 0, 1, corpus.substr(0, 2000), words, 600, kChat, s, count), Error);
}

TEST(KvTasks, WilsonIntervalMatchesTheFormula) {
  // Published values (Wilson 1927 score interval, z = 1.96): 8/10 -> [0.4902, 0.9433]; 0/10 -> [0, 0.2775].
  EXPECT_NEAR(wilson(8, 10).low, 0.4902, 1e-4);
  EXPECT_NEAR(wilson(8, 10).high, 0.9433, 1e-4);
  EXPECT_NEAR(wilson(0, 10).low, 0.0, 1e-12);
  EXPECT_NEAR(wilson(0, 10).high, 0.2775, 1e-4);
  EXPECT_NEAR(wilson(10, 10).high, 1.0, 1e-12);
  EXPECT_NEAR(wilson(10, 10).low, 0.7225, 1e-4);
  EXPECT_EQ(wilson(0, 0).low, 0.0);
  EXPECT_EQ(wilson(0, 0).high, 1.0);
}

TEST(KvTasks, BadSettingsAreRefusedNamingThem) {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { parse_task("needle"); }).find("'needle'"), std::string::npos);
  EXPECT_EQ(parse_task("vt"), TaskKind::variable_tracking);
  for (const TaskKind k : all_tasks()) EXPECT_EQ(parse_task(task_name(k)), k);
  TaskSettings s;
  s.value_digits = 1;
  EXPECT_NE(message([&] { check(s); }).find("value digits"), std::string::npos);
  s = {};
  s.cwe_common = 2;
  EXPECT_NE(message([&] { check(s); }).find("cwe"), std::string::npos);
  s = {};
  s.vt_hops = -1;
  EXPECT_NE(message([&] { check(s); }).find("vt hops"), std::string::npos);
  s = {};
  s.multikey_keys = 1;
  EXPECT_NE(message([&] { check(s); }).find("multikey keys"), std::string::npos);
  Policy p = Policy::thresholded(0.5, 1, 1);
  p.headwise = true;
  EXPECT_NE(message([&] { layer_budgets(p, 8, 2); }).find("threshold"), std::string::npos);
  p = Policy::thresholded(std::numeric_limits<double>::quiet_NaN(), 1, 1);
  EXPECT_NE(message([&] { layer_budgets(p, 8, 2); }).find("threshold"), std::string::npos);
}

// Threshold mode keeps the protected tokens and exactly the others scoring above the threshold,
// whatever the budget, up to the budget as a ceiling.
TEST(KvTasks, ThresholdKeepsExactlyTheTokensAboveIt) {
  const std::vector<int64_t> lengths = {40, 25, 33};
  std::vector<std::vector<float>> scores;
  uint64_t x = 7;
  for (const int64_t n : lengths) {
    scores.emplace_back();
    for (int64_t j = 0; j < n; ++j) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      scores.back().push_back(static_cast<float>((x >> 40) % 1000) / 1000.0f);
    }
  }
  const Policy p = Policy::thresholded(0.7, 2, 3);
  const auto keep = select(p, 100, lengths, scores);
  for (size_t h = 0; h < lengths.size(); ++h) {
    std::vector<int64_t> want;
    for (int64_t j = 0; j < lengths[h]; ++j)
      if (j < 2 || j >= lengths[h] - 3 || scores[h][static_cast<size_t>(j)] > 0.7f) want.push_back(j);
    EXPECT_EQ(keep[h], want) << h;
    EXPECT_LT(static_cast<int64_t>(want.size()), lengths[h]);  // under its budget, it still evicted
  }
  // A ceiling of 12 per head: the protected 5 and the 7 best.
  const auto capped = select(Policy::thresholded(0.0, 2, 3), 12, lengths, scores);
  for (size_t h = 0; h < lengths.size(); ++h) {
    ASSERT_EQ(capped[h].size(), 12u);
    std::vector<float> mid(scores[h].begin() + 2, scores[h].end() - 3);
    std::sort(mid.rbegin(), mid.rend());
    for (const int64_t j : capped[h])
      if (j >= 2 && j < lengths[h] - 3) EXPECT_GE(scores[h][static_cast<size_t>(j)], mid[6]);
  }
}

// A scorer that scores a token by its position: kept sets are known in advance.
class PositionScorer : public Scorer {
 public:
  std::string name() const override { return "position"; }
  void score(const Cache& cache, int layer, int head, std::span<float> out) override {
    const auto pos = cache.positions(layer, head);
    for (size_t j = 0; j < out.size(); ++j) out[j] = static_cast<float>((pos[j] * 37 + layer * 11 + head) % 100);
  }
};

TEST(KvTasks, ThresholdEvictionOnACacheScoresEveryLayer) {
  Cache cache(3, 2, 4, 0);
  std::vector<float> k(2 * 4 * 50), v(2 * 4 * 50);
  for (int l = 0; l < 3; ++l) cache.append(l, k.data(), v.data(), 50, 0);
  auto scorer = std::make_shared<PositionScorer>();
  scorer->bind({3, 2, 2, 4});
  const Eviction e{scorer, Policy::thresholded(60, 1, 2), 1000};  // the ceiling never binds
  e.compress(cache);
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 2; ++h) {
      std::vector<int64_t> want;
      for (int64_t p = 0; p < 50; ++p)
        if (p < 1 || p >= 48 || (p * 37 + l * 11 + h) % 100 > 60) want.push_back(p);
      const auto got = cache.positions(l, h);
      EXPECT_EQ(std::vector<int64_t>(got.begin(), got.end()), want) << l << " " << h;
    }
}

// Long generations on stories260K: a budget above the sequence, or a threshold below every score,
// keeps everything and gives KL exactly 0; a budget below it holds every head within budget + every - 1.
TEST(KvTasks, GenerationRowsOnARealModel) {
  STRATA_REQUIRE_FILE(paths().stories260k(), "shared data: ../shared/data/models/stories260K");
  const auto file = io::open_model(paths().stories260k());
  const auto model = nn::LlamaModel::load(*file);
  const std::vector<std::vector<int32_t>> prompts = {{1, 50, 60, 70, 80, 90, 100, 110}};
  GenerationOptions o;
  o.prompt = 8;
  o.steps = 120;
  o.budgets = {2.0, 0.3};
  o.thresholds = {-1.0};
  o.every = 4;
  o.eviction.sinks = 2;
  o.eviction.recent = 4;
  o.seed = 3;
  const auto configs = eval_configs(std::vector<std::string>{"tova"}, std::vector<Budgeting>{Budgeting::uniform},
                                    std::vector<double>{0});
  const GenerationResult r = evaluate_generation(model, prompts, configs, o);
  ASSERT_EQ(r.rows.size(), 5u);  // 2 configs x 2 budgets, 1 threshold row
  EXPECT_EQ(r.tokens[0].size(), 128u);  // the prompt, and the 120 tokens predicted
  for (const auto& row : r.rows) {
    EXPECT_EQ(row.count, 120);
    if (row.budget == 2.0 || row.threshold) {
      EXPECT_EQ(row.kl, 0.0) << row.label();
      EXPECT_EQ(row.top1, 120) << row.label();
    } else {
      EXPECT_GT(row.kl, 0.0) << row.label();
      EXPECT_LE(row.max_held, row.tokens + o.every - 1) << row.label();
    }
  }
  EXPECT_EQ(r.row("tova/uniform t>-1", 0).tokens, 128);
  // The same seed samples the same sequence.
  EXPECT_EQ(evaluate_generation(model, prompts, configs, o).tokens, r.tokens);
  GenerationOptions bad = o;
  bad.every = 0;
  EXPECT_THROW(evaluate_generation(model, prompts, configs, bad), Error);
  bad = o;
  bad.temperature = 0;
  EXPECT_THROW(evaluate_generation(model, prompts, configs, bad), Error);
  const auto allocated = eval_configs(std::vector<std::string>{"tova"}, std::vector<Budgeting>{Budgeting::allocated},
                                      std::vector<double>{0});
  EXPECT_THROW(evaluate_generation(model, prompts, allocated, o), Error);  // no calibration tables

  // With tables measured on calibration prompts of the generation's length (128), the fullest head
  // is one of the layer with the largest allocated budget, between compressions (B_max + every - 1),
  // where a uniform budget caps every head at B + every - 1.
  EvictionSettings s = o.eviction;
  s.probe = 8;
  AllocationTables tables(model, nn::sample_sequences(model, 1, 128 + 8, 1, 9)[0], s);
  GenerationOptions ao = o;
  ao.budgets = {0.15};
  ao.thresholds.clear();
  const GenerationResult a = evaluate_generation(model, prompts, allocated, ao, &tables);
  const GenerationRow& row = a.row("tova/allocated", 0.15);
  const Policy p = eval_policy(allocated[1], row.tokens, 128, s, &tables);
  const int64_t most = *std::max_element(p.per_layer.begin(), p.per_layer.end());
  ASSERT_GT(most, row.tokens);       // the allocation is not uniform here
  ASSERT_LT(most + ao.every, 120);   // and the largest budget binds during the generation
  EXPECT_EQ(row.max_held, most + ao.every - 1);
  EXPECT_GT(row.kl, 0.0);
  EXPECT_EQ(a.row("streaming-llm", 0.15).max_held, row.tokens + ao.every - 1);
}

// SmolLM2's tokenizer and chat template: prompts sized to the length in tokens, the answers in the
// text; at a budget above the prompt every policy answers as the full cache does.
TEST(KvTasks, SmolLM2PromptsAndFullBudgetAnswers) {
  STRATA_REQUIRE_FILE(paths().smollm2(), "scripts/fetch-models.sh");
  STRATA_REQUIRE_FILE(paths().moby_dick(), "shared data: ../shared/data/corpora");
  const auto file = io::open_model(paths().smollm2());
  const auto model = nn::LlamaModel::load(*file);
  const auto tok = nn::BpeTokenizer::from_model(*file);
  const std::string corpus = nn::TextSlice{paths().moby_dick(), 0.6, 0.62}.read();
  const std::vector<TaskKind> kinds = {TaskKind::niah_single};
  const std::vector<int64_t> lengths = {192};
  const auto prompts = task_prompts(tok, chat_format(*file), corpus, kinds, lengths, 1, 5, TaskSettings{});
  ASSERT_EQ(prompts.size(), 1u);
  for (const auto& p : prompts) {
    EXPECT_LE(p.tokens.size(), 192u);
    EXPECT_GE(p.tokens.size(), 184u);
    const std::string text = tok.decode(p.tokens);
    for (const auto& a : p.instance.answers) EXPECT_NE(text.find(a), std::string::npos);
    EXPECT_NE(text.find("<|im_start|>assistant\n"), std::string::npos);
  }
  TaskOptions o;
  o.budgets = {2.0};
  o.answer_tokens = 6;
  o.eviction.sinks = 2;
  o.eviction.recent = 4;
  const auto configs = eval_configs(std::vector<std::string>{"snapkv"}, std::vector<Budgeting>{Budgeting::uniform},
                                    std::vector<double>{0});
  const TaskResult r = evaluate_tasks(model, tok, prompts, configs, o);
  ASSERT_EQ(r.answers.size(), 3u);  // 2 configs and the full cache
  for (const auto& p : prompts) {
    std::string full;
    for (const auto& a : r.answers)
      if (a.kind == p.instance.kind && a.label == "full cache") full = a.answer;
    EXPECT_FALSE(full.empty());
    for (const auto& a : r.answers)
      if (a.kind == p.instance.kind) {
        EXPECT_EQ(a.answer, full) << a.label;
        EXPECT_EQ(a.correct, answer_correct(p.instance, a.answer));
      }
  }
  EXPECT_EQ(r.score(TaskKind::niah_single, 192, "full cache", 1.0).total, 1);
  EXPECT_THROW(r.score(TaskKind::common_words, 192, "full cache", 1.0), Error);

  // Stored formats crossed with every row: the float32 format is the plain cache (so the same
  // answers), q8_0 gets its own rows; refused with eviction while answering, or a KIVI window
  // larger than the budget allows.
  CacheFormat f32, q8;
  q8.key = q8.value = KvFormat::q8_0;
  TaskOptions of = o;
  of.formats = {{"f32", f32}, {"q8_0", q8}};
  const TaskResult rf = evaluate_tasks(model, tok, prompts, configs, of);
  ASSERT_EQ(rf.answers.size(), 9u);  // (2 configs + the full cache) x (float32 + 2 formats)
  for (const auto& a : rf.answers) {
    const std::string base = a.label.substr(0, a.label.find(" ["));
    const auto same = std::find_if(r.answers.begin(), r.answers.end(), [&](const TaskAnswer& b) { return b.label == base; });
    ASSERT_NE(same, r.answers.end()) << a.label;
    if (a.label == base || a.label.ends_with(" [f32]")) EXPECT_EQ(a.answer, same->answer) << a.label;
  }
  EXPECT_EQ(rf.score(TaskKind::niah_single, 192, "full cache [q8_0]", 1.0).total, 1);
  TaskOptions decode = of;
  decode.decode = true;
  EXPECT_THROW(evaluate_tasks(model, tok, prompts, configs, decode), Error);
  CacheFormat kivi;
  kivi.key = kivi.value = KvFormat::kivi4;
  kivi.kivi_residual = 512;
  TaskOptions wide = o;
  wide.budgets = {0.5};
  wide.formats = {{"kivi4", kivi}};
  EXPECT_THROW(evaluate_tasks(model, tok, prompts, configs, wide), Error);
}

}  // namespace
}  // namespace strata::kv
