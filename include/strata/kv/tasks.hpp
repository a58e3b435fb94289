#pragma once
// Long-context tasks for judging KV-cache compression by what a model answers, in the families of
// RULER (Hsieh et al. 2024) that kvpress reports, generated from real text and a seed:
//   niah_single      one "special magic number" sentence for a key, asked for that key.
//   niah_multikey    several such sentences with different keys; one key is asked.
//   niah_multivalue  several values for one key; all of them are asked.
//   vt               variable tracking: "VAR X = 12345." and a chain "VAR Y = VAR X." ... spread
//                    through the text, plus distracting chains of other values; asked which
//                    variables are assigned the value.
//   cwe              common-word extraction: a numbered list of words from the corpus, a few of them
//                    repeated far more often than the rest; asked for the most common ones.
//   qa               question answering over a passage of templated facts ("Ada Moreau lives in
//                    Lisbon and works as a baker.") placed among facts about other people and the
//                    corpus text; asked where one person lives. The facts are synthetic (there is no
//                    QA set in the corpora): this is RULER's QA shape, not SQuAD or HotpotQA.
// Everything is placed on the corpus text at word boundaries at the exact depth asked
// (word_boundary), so no depth collapses to the end on text whose sentences end otherwise. Each
// instance is a pure function of (family, index, seed, corpus, length, settings): the same seed
// gives the same prompt, byte for byte.
//
// Prompts use the model's chat format (ChatFormat from its chat template) and, as RULER does, the
// start of the answer in the assistant's turn ("The special magic number for X mentioned in the
// provided text is"). An answer is correct when every expected string occurs in it as a whole word
// (not inside a longer word or number), case-insensitively.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/kv/evaluate.hpp"

namespace strata::kv {

enum class TaskKind { niah_single, niah_multikey, niah_multivalue, variable_tracking, common_words, passage_qa };
// "niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe", "qa".
std::string_view task_name(TaskKind kind);
// strata::Error naming the value when it is none of task_name's.
TaskKind parse_task(std::string_view name);
std::vector<TaskKind> all_tasks();

// How hard each family is. At these defaults SmolLM2-135M with a full cache retrieves single and
// multi-key needles but not vt or cwe (docs/kv-cache.md, measured on a tuning seed): size them to the
// model with these knobs.
struct TaskSettings {
  int64_t value_digits = 4;       // digits of a needle's value (RULER: 7)
  int64_t multikey_keys = 4;      // needles in niah_multikey (one asked, the others distract)
  int64_t multivalue_values = 2;  // values of the key in niah_multivalue (all asked)
  int64_t vt_hops = 1;            // assignments after the first in the asked chain (RULER: 4)
  int64_t vt_chains = 1;          // chains of other values that distract
  int64_t cwe_words = 1;          // most common words asked (RULER: 10)
  int64_t cwe_common = 20, cwe_rare = 2;  // occurrences of a common / an ordinary word in the list
  int64_t qa_distractors = 3;     // facts about other people
};
// strata::Error naming the field when a setting is out of range.
void check(const TaskSettings& settings);

struct TaskInstance {
  TaskKind kind = TaskKind::niah_single;
  int64_t index = 0;
  std::string context;        // the text the question is about
  std::string question;       // after the context in the user's turn
  std::string answer_prefix;  // the start of the assistant's turn
  std::vector<std::string> answers;  // all of them must be in a correct answer
  std::vector<double> depths;        // where each inserted sentence starts, fractions of the haystack

  // chat.before + context + "\n\n" + question + chat.after + answer_prefix.
  std::string prompt(const ChatFormat& chat) const;
};

// The offset in `text` nearest to depth x text.size() at which a word starts (0, text.size(), or an
// offset whose previous byte is white space and whose own byte is not); ties go to the earlier one.
// strata::Error when depth is outside [0, 1].
size_t word_boundary(std::string_view text, double depth);

struct Insertion {
  double depth = 0;
  std::string sentence;
};
// `text` with each sentence placed at word_boundary(text, depth), followed by a space (preceded by
// one at the very end), in depth order; `achieved` gets where each one landed, as a fraction of
// text.size(), in the insertions' order.
std::string insert_sentences(std::string_view text, std::span<const Insertion> insertions,
                             std::vector<double>* achieved = nullptr);

// The distinct lower-case alphabetic words of 4 to 10 letters in `text`, in order of first
// occurrence: keys and list words are drawn from them.
std::vector<std::string> corpus_words(std::string_view text);

// Counts a prompt's tokens (the tokenizer's encode; tests pass a word count).
using TokenCounter = std::function<int64_t(std::string_view prompt)>;

// Instance `index` of `kind` for a prompt of at most `tokens` tokens (as counted), from `corpus`
// (the haystack starts at a word the seed picks) and its words. strata::Error when the corpus is too
// short for the length or has too few words.
TaskInstance make_task(TaskKind kind, int64_t index, uint64_t seed, std::string_view corpus,
                       std::span<const std::string> words, int64_t tokens, const ChatFormat& chat,
                       const TaskSettings& settings, const TokenCounter& count);

// Whether `output` contains every expected answer as a whole word, case-insensitively.
bool answer_correct(const TaskInstance& instance, std::string_view output);

// Wilson score interval of k successes in n trials at z (1.96: 95%). {0, 1} when n is 0.
struct Interval {
  double low = 0, high = 1;
};
Interval wilson(int64_t k, int64_t n, double z = 1.96);

// ---- evaluation ----

struct TaskPrompt {
  TaskInstance instance;
  int64_t length = 0;  // the context length asked for (tokens); budgets are fractions of it
  std::vector<int32_t> tokens;
};
// `count` instances of every kind at every length, encoded with the chat template's special tokens.
std::vector<TaskPrompt> task_prompts(const nn::BpeTokenizer& tok, const ChatFormat& chat, std::string_view corpus,
                                     std::span<const TaskKind> kinds, std::span<const int64_t> lengths,
                                     int64_t count, uint64_t seed, const TaskSettings& settings);

struct TaskOptions {
  std::vector<double> budgets = {0.2};  // fractions of the instance's length
  int64_t answer_tokens = 24;
  bool decode = false;  // also hold the budget while answering
  EvictionSettings eviction;
  // Stored KV formats (name, format): the full cache and every evicted cache are also answered with
  // the cache re-stored in each format after the prompt (Session::with_format: the prompt attends in
  // float32, the answer decodes from the stored form, as KIVI runs), under "LABEL [NAME]". Needs
  // decode == false (a re-stored session answers without further eviction).
  std::vector<std::pair<std::string, CacheFormat>> formats;
};

struct TaskAnswer {
  TaskKind kind = TaskKind::niah_single;
  int64_t length = 0, instance = 0;
  std::string label;  // "full cache" or a config's label
  double budget = 1;  // 1 for the full cache
  std::string answer;
  bool correct = false;
};

struct TaskScore {
  int64_t correct = 0, total = 0;
  double rate() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0; }
  Interval interval() const { return wilson(correct, total); }
};

struct TaskResult {
  std::vector<TaskAnswer> answers;  // per prompt: the full cache and every config x budget
  // strata::Error when nothing was asked under that label and budget (for that kind and length).
  TaskScore score(TaskKind kind, int64_t length, const std::string& label, double budget) const;
  // Over every kind at `length`.
  TaskScore overall(int64_t length, const std::string& label, double budget) const;
};

// Every prompt answered greedily with the full cache and under every config and budget (one prompt
// pass per scorer, for_each_fork; the full cache is the first group's parent session). Progress
// counts prompts.
TaskResult evaluate_tasks(const nn::LlamaModel& model, const nn::BpeTokenizer& tok, std::span<const TaskPrompt> prompts,
                          std::span<const EvalConfig> configs, const TaskOptions& options,
                          AllocationTables* tables = nullptr, const Progress& progress = {});

}  // namespace strata::kv
