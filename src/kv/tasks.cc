#include "strata/kv/tasks.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <set>
#include <unordered_set>

#include "strata/core/error.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::kv {

namespace {

constexpr std::string_view kTaskNames[] = {"niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe", "qa"};

// SplitMix64: the same stream on every platform (std's distributions are not).
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  template <class T>
  const T& pick(std::span<const T> v) {
    return v[below(v.size())];
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

bool space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string number(Rng& rng, int64_t digits) {
  std::string s(1, static_cast<char>('1' + rng.below(9)));
  for (int64_t i = 1; i < digits; ++i) s += static_cast<char>('0' + rng.below(10));
  return s;
}

// `n` distinct items drawn from `pool`, each passing `ok`.
std::vector<std::string> distinct(Rng& rng, std::span<const std::string> pool, size_t n,
                                  const std::function<bool(const std::string&)>& ok = {}) {
  std::vector<std::string> out;
  for (int tries = 0; out.size() < n; ++tries) {
    require(tries < 100000, "kv tasks: cannot draw ", n, " distinct words from ", pool.size());
    const std::string& w = rng.pick(pool);
    if (std::find(out.begin(), out.end(), w) == out.end() && (!ok || ok(w))) out.push_back(w);
  }
  return out;
}

// Distinct numbers of `digits` digits.
std::vector<std::string> numbers(Rng& rng, int64_t digits, size_t n) {
  std::vector<std::string> out;
  while (out.size() < n) {
    std::string v = number(rng, digits);
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(std::move(v));
  }
  return out;
}

std::string variable(Rng& rng) {
  std::string s;
  for (int i = 0; i < 5; ++i) s += static_cast<char>('A' + rng.below(26));
  return s;
}

// Names for the passage facts (first names and surnames combine; the cities and trades are plain
// nouns a small model knows).
constexpr std::string_view kFirst[] = {"Ada",   "Bruno", "Clara", "Daniel", "Elena", "Felix", "Greta", "Hugo",
                                       "Irene", "Jonas", "Karin", "Leo",    "Maria", "Nils",  "Olga",  "Pavel"};
constexpr std::string_view kLast[] = {"Moreau", "Lindqvist", "Okafor", "Rossi",  "Novak",  "Haddad",
                                      "Tanaka", "Brennan",   "Silva",  "Kowal",  "Dupont", "Weber"};
constexpr std::string_view kCities[] = {"Lisbon", "Oslo",   "Cairo",  "Madrid", "Vienna", "Dublin", "Prague",
                                        "Lima",   "Athens", "Zurich", "Warsaw", "Nairobi", "Seoul", "Havana"};
constexpr std::string_view kTrades[] = {"baker",  "carpenter", "nurse",   "pilot",  "teacher",
                                        "farmer", "tailor",    "plumber", "lawyer", "painter"};

template <size_t N>
std::string_view pick(Rng& rng, const std::string_view (&a)[N]) {
  return a[rng.below(N)];
}

// What a family inserts and asks, before the haystack is sized.
struct Content {
  std::vector<std::string> sentences;  // inserted at random depths (niah, vt, qa)
  std::string list;                    // the whole context (cwe); empty otherwise
  std::string question, answer_prefix;
  std::vector<std::string> answers;
};

std::string needle_sentence(const std::string& key, const std::string& value) {
  return "One of the special magic numbers for " + key + " is: " + value + ".";
}

Content needle_content(TaskKind kind, Rng& rng, std::span<const std::string> words, const TaskSettings& s) {
  Content c;
  const size_t keys = kind == TaskKind::niah_multikey ? static_cast<size_t>(s.multikey_keys) : 1;
  const size_t values = kind == TaskKind::niah_multivalue ? static_cast<size_t>(s.multivalue_values) : 1;
  const auto k = distinct(rng, words, keys);
  const auto v = numbers(rng, s.value_digits, keys * values);
  for (size_t i = 0; i < keys; ++i)
    for (size_t j = 0; j < (i == 0 ? values : 1); ++j) c.sentences.push_back(needle_sentence(k[i], v[i == 0 ? j : values + i - 1]));
  if (kind == TaskKind::niah_multivalue) {
    c.question = "What are all the special magic numbers for " + k[0] + " mentioned in the provided text?";
    c.answer_prefix = "The special magic numbers for " + k[0] + " mentioned in the provided text are";
    c.answers.assign(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(values));
  } else {
    c.question = "What is the special magic number for " + k[0] + " mentioned in the provided text?";
    c.answer_prefix = "The special magic number for " + k[0] + " mentioned in the provided text is";
    c.answers = {v[0]};
  }
  return c;
}

Content vt_content(Rng& rng, const TaskSettings& s) {
  Content c;
  const auto values = numbers(rng, 5, static_cast<size_t>(1 + s.vt_chains));
  std::set<std::string> used;
  auto fresh = [&] {
    for (;;) {
      std::string v = variable(rng);
      if (used.insert(v).second) return v;
    }
  };
  for (size_t chain = 0; chain < values.size(); ++chain) {
    std::string prev = fresh();
    c.sentences.push_back("VAR " + prev + " = " + values[chain] + ".");
    if (chain == 0) c.answers.push_back(prev);
    for (int64_t h = 0; h < s.vt_hops; ++h) {
      const std::string next = fresh();
      c.sentences.push_back("VAR " + next + " = VAR " + prev + ".");
      if (chain == 0) c.answers.push_back(next);
      prev = next;
    }
  }
  c.question = "Find all variables that are assigned the value " + values[0] + " in the text above.";
  c.answer_prefix = "Answer: According to the chain(s) of variable assignment in the text above, " +
                    std::to_string(c.answers.size()) + " variables are assigned the value " + values[0] +
                    ", they are:";
  return c;
}

// A numbered list of `entries` words: the common ones cwe_common times each, the others cwe_rare
// times, shuffled.
Content cwe_content(Rng& rng, std::span<const std::string> words, const TaskSettings& s, int64_t entries) {
  Content c;
  const auto common = distinct(rng, words, static_cast<size_t>(s.cwe_words));
  std::vector<std::string> list;
  for (const auto& w : common)
    for (int64_t i = 0; i < s.cwe_common; ++i) list.push_back(w);
  const int64_t rare = std::max<int64_t>(0, (entries - static_cast<int64_t>(list.size())) / s.cwe_rare);
  const auto others = distinct(rng, words, static_cast<size_t>(rare), [&](const std::string& w) {
    return std::find(common.begin(), common.end(), w) == common.end();
  });
  for (const auto& w : others)
    for (int64_t i = 0; i < s.cwe_rare; ++i) list.push_back(w);
  rng.shuffle(list);
  for (size_t i = 0; i < list.size(); ++i) c.list += std::to_string(i + 1) + ". " + list[i] + (i + 1 < list.size() ? " " : "");
  const std::string n = std::to_string(s.cwe_words);
  c.question = s.cwe_words == 1 ? "What is the most common word in the above list?"
                                : "What are the " + n + " most common words in the above list?";
  c.answer_prefix = s.cwe_words == 1 ? "Answer: The most common word in the list is:"
                                     : "Answer: The top " + n + " words that appear most often in the list are:";
  c.answers = common;
  return c;
}

Content qa_content(Rng& rng, const TaskSettings& s) {
  Content c;
  std::set<std::string> names;
  std::vector<std::string> cities;
  const size_t people = static_cast<size_t>(1 + s.qa_distractors);
  std::vector<std::string> who;
  while (who.size() < people) {
    std::string n = std::string(pick(rng, kFirst)) + " " + std::string(pick(rng, kLast));
    if (names.insert(n).second) who.push_back(std::move(n));
  }
  while (cities.size() < people) {
    std::string city(pick(rng, kCities));
    if (std::find(cities.begin(), cities.end(), city) == cities.end()) cities.push_back(std::move(city));
  }
  for (size_t i = 0; i < people; ++i)
    c.sentences.push_back(who[i] + " lives in " + cities[i] + " and works as a " + std::string(pick(rng, kTrades)) + ".");
  c.question = "In which city does " + who[0] + " live, according to the text above?";
  c.answer_prefix = who[0] + " lives in";
  c.answers = {cities[0]};
  return c;
}

// The corpus from a word boundary the seed picks, `chars` bytes long, cut back to a word boundary.
std::string_view haystack(std::string_view corpus, size_t start, size_t chars) {
  std::string_view h = corpus.substr(start, chars);
  const size_t end = word_boundary(h, 1.0);
  h = h.substr(0, end);
  while (!h.empty() && space(h.back())) h.remove_suffix(1);
  return h;
}

}  // namespace

std::string_view task_name(TaskKind kind) { return kTaskNames[static_cast<size_t>(kind)]; }

TaskKind parse_task(std::string_view name) {
  for (size_t i = 0; i < std::size(kTaskNames); ++i)
    if (name == kTaskNames[i]) return static_cast<TaskKind>(i);
  fail("kv tasks: task '", name, "' is not niah_single, niah_multikey, niah_multivalue, vt, cwe or qa");
}

std::vector<TaskKind> all_tasks() {
  std::vector<TaskKind> out;
  for (size_t i = 0; i < std::size(kTaskNames); ++i) out.push_back(static_cast<TaskKind>(i));
  return out;
}

void check(const TaskSettings& s) {
  require(s.value_digits >= 2 && s.value_digits <= 12, "kv tasks: value digits ", s.value_digits,
          " is not in [2, 12]");
  require(s.multikey_keys >= 2, "kv tasks: multikey keys ", s.multikey_keys, " must be >= 2");
  require(s.multivalue_values >= 2, "kv tasks: multivalue values ", s.multivalue_values, " must be >= 2");
  require(s.vt_hops >= 0 && s.vt_chains >= 0, "kv tasks: vt hops (", s.vt_hops, ") and chains (", s.vt_chains,
          ") must be >= 0");
  require(s.cwe_words >= 1 && s.cwe_rare >= 1 && s.cwe_common > s.cwe_rare, "kv tasks: cwe words (", s.cwe_words,
          ") and rare count (", s.cwe_rare, ") must be >= 1 and the common count (", s.cwe_common,
          ") above the rare one");
  require(s.qa_distractors >= 0 && s.qa_distractors < 12, "kv tasks: qa distractors ", s.qa_distractors,
          " is not in [0, 12)");
}

std::string TaskInstance::prompt(const ChatFormat& chat) const {
  return chat.before + context + "\n\n" + question + chat.after + answer_prefix;
}

size_t word_boundary(std::string_view text, double depth) {
  require(depth >= 0 && depth <= 1, "kv tasks: depth ", depth, " is not in [0, 1]");
  const size_t n = text.size();
  const auto target = static_cast<size_t>(std::llround(depth * static_cast<double>(n)));
  auto boundary = [&](size_t p) { return p == 0 || p == n || (space(text[p - 1]) && !space(text[p])); };
  // The nearest boundary: search outwards, the earlier side first at equal distance.
  for (size_t d = 0;; ++d) {
    if (d <= target && boundary(target - d)) return target - d;
    if (target + d <= n && boundary(target + d)) return target + d;
  }
}

std::string insert_sentences(std::string_view text, std::span<const Insertion> insertions,
                             std::vector<double>* achieved) {
  std::vector<size_t> at(insertions.size()), order(insertions.size());
  for (size_t i = 0; i < insertions.size(); ++i) at[i] = word_boundary(text, insertions[i].depth);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return at[a] < at[b]; });
  std::string out;
  size_t from = 0;
  for (const size_t i : order) {
    out.append(text.substr(from, at[i] - from));
    if (at[i] == text.size() && !text.empty() && !space(text.back())) out += ' ';
    out.append(insertions[i].sentence);
    if (at[i] < text.size()) out += ' ';
    from = at[i];
  }
  out.append(text.substr(from));
  if (achieved) {
    achieved->clear();
    for (const size_t p : at)
      achieved->push_back(text.empty() ? 0 : static_cast<double>(p) / static_cast<double>(text.size()));
  }
  return out;
}

std::vector<std::string> corpus_words(std::string_view text) {
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  size_t i = 0;
  while (i < text.size()) {
    if (!word_char(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    bool alpha = true;
    for (; j < text.size() && word_char(text[j]); ++j) alpha = alpha && std::islower(static_cast<unsigned char>(text[j]));
    const size_t len = j - i;
    if (alpha && len >= 4 && len <= 10) {
      std::string w(text.substr(i, len));
      if (seen.insert(w).second) out.push_back(std::move(w));
    }
    i = j;
  }
  return out;
}

TaskInstance make_task(TaskKind kind, int64_t index, uint64_t seed, std::string_view corpus,
                       std::span<const std::string> words, int64_t tokens, const ChatFormat& chat,
                       const TaskSettings& settings, const TokenCounter& count) {
  check(settings);
  require(tokens >= 64, "kv tasks: a context of ", tokens, " tokens is too short (at least 64)");
  require(words.size() >= 200, "kv tasks: the corpus has ", words.size(), " distinct words; at least 200 are needed");
  // One stream per (seed, family, index): an instance does not depend on which others are made.
  Rng rng{seed * 0x100000001B3ull ^ (static_cast<uint64_t>(kind) + 1) * 0x9E3779B97F4A7C15ull ^
          static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull};
  for (int i = 0; i < 4; ++i) rng.next();
  TaskInstance t;
  t.kind = kind;
  t.index = index;
  Content c;
  switch (kind) {
    case TaskKind::niah_single:
    case TaskKind::niah_multikey:
    case TaskKind::niah_multivalue: c = needle_content(kind, rng, words, settings); break;
    case TaskKind::variable_tracking: c = vt_content(rng, settings); break;
    case TaskKind::common_words: break;  // sized below
    case TaskKind::passage_qa: c = qa_content(rng, settings); break;
  }
  std::vector<Insertion> ins;
  for (auto& s : c.sentences) ins.push_back({rng.uniform(), std::move(s)});
  // Variable assignments come in chain order, so that each names a variable already assigned.
  if (kind == TaskKind::variable_tracking) {
    std::vector<double> d;
    for (const auto& i : ins) d.push_back(i.depth);
    for (size_t k = 0, pos = 0; k <= static_cast<size_t>(settings.vt_chains); ++k) {
      const size_t len = static_cast<size_t>(settings.vt_hops) + 1;
      std::sort(d.begin() + static_cast<std::ptrdiff_t>(pos), d.begin() + static_cast<std::ptrdiff_t>(pos + len));
      pos += len;
    }
    for (size_t k = 0; k < ins.size(); ++k) ins[k].depth = d[k];
  }
  const uint64_t start_draw = rng.next();
  const uint64_t list_seed = rng.next();
  // The prompt with `chars` bytes of context.
  auto build = [&](double chars) {
    if (kind == TaskKind::common_words) {
      Rng list_rng{list_seed};
      const auto entries = static_cast<int64_t>(chars / 12.0);  // "123. word " is about 12 bytes
      c = cwe_content(list_rng, words, settings, std::max<int64_t>(entries, settings.cwe_words * settings.cwe_common));
      t.context = c.list;
    } else {
      const auto want = static_cast<size_t>(chars);
      require(corpus.size() > want + 1, "kv tasks: the corpus (", corpus.size(), " bytes) is too short for a ",
              tokens, "-token context");
      const size_t start = word_boundary(corpus, static_cast<double>(start_draw % (corpus.size() - want)) /
                                                     static_cast<double>(corpus.size()));
      t.context = insert_sentences(haystack(corpus, start, want), ins, &t.depths);
    }
    t.question = c.question;
    t.answer_prefix = c.answer_prefix;
    t.answers = c.answers;
    return count(t.prompt(chat));
  };
  // Size the context to the token count: rescale from 4 bytes a token by what was counted, then
  // bisect between the longest context that fits and the shortest that does not.
  const int64_t slack = std::max<int64_t>(8, tokens / 100);
  double chars = 4.0 * static_cast<double>(tokens), fits = 0, over = 0;
  for (int iter = 0; iter < 40; ++iter) {
    const int64_t n = build(chars);
    if (n <= tokens && n >= tokens - slack) return t;
    if (n <= tokens) fits = std::max(fits, chars);
    else over = over == 0 ? chars : std::min(over, chars);
    const double scaled = chars * (static_cast<double>(tokens) - static_cast<double>(slack) / 2) /
                          static_cast<double>(std::max<int64_t>(n, 1));
    chars = fits > 0 && over > 0 ? (scaled > fits && scaled < over ? scaled : (fits + over) / 2) : scaled;
    if (over > 0 && over - fits < 1) break;
  }
  require(fits > 0, "kv tasks: cannot size a ", task_name(kind), " prompt to ", tokens, " tokens");
  build(fits);
  return t;
}

bool answer_correct(const TaskInstance& t, std::string_view output) {
  const std::string out = lower(output);
  for (const auto& a : t.answers) {
    const std::string want = lower(a);
    bool found = false;
    for (size_t p = out.find(want); p != std::string::npos && !found; p = out.find(want, p + 1)) {
      const bool left = p == 0 || !word_char(out[p - 1]);
      const bool right = p + want.size() == out.size() || !word_char(out[p + want.size()]);
      found = left && right;
    }
    if (!found) return false;
  }
  return true;
}

Interval wilson(int64_t k, int64_t n, double z) {
  if (n <= 0) return {0, 1};
  const double p = static_cast<double>(k) / static_cast<double>(n), nn = static_cast<double>(n);
  const double denom = 1 + z * z / nn;
  const double center = (p + z * z / (2 * nn)) / denom;
  const double half = z * std::sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn)) / denom;
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

std::vector<TaskPrompt> task_prompts(const nn::BpeTokenizer& tok, const ChatFormat& chat, std::string_view corpus,
                                     std::span<const TaskKind> kinds, std::span<const int64_t> lengths,
                                     int64_t count, uint64_t seed, const TaskSettings& settings) {
  require(count >= 1, "kv tasks: instances per task must be >= 1, got ", count);
  const nn::BpeEncodeOptions special{.parse_special = true, .add_special = false};
  const TokenCounter counter = [&](std::string_view p) { return static_cast<int64_t>(tok.encode(p, special).size()); };
  const auto words = corpus_words(corpus);
  std::vector<TaskPrompt> out;
  for (const int64_t len : lengths)
    for (const TaskKind k : kinds)
      for (int64_t i = 0; i < count; ++i) {
        TaskPrompt p;
        // The seed and the length pick the instance: 2K and 4K instances differ.
        p.instance = make_task(k, i, seed ^ static_cast<uint64_t>(len) << 32, corpus, words, len, chat, settings, counter);
        p.length = len;
        p.tokens = tok.encode(p.instance.prompt(chat), special);
        out.push_back(std::move(p));
      }
  return out;
}

TaskScore TaskResult::score(TaskKind kind, int64_t length, const std::string& label, double budget) const {
  TaskScore s;
  for (const auto& a : answers)
    if (a.kind == kind && a.length == length && a.label == label && a.budget == budget) {
      s.correct += a.correct;
      ++s.total;
    }
  require(s.total > 0, "kv tasks: no answers for ", task_name(kind), " at ", length, " tokens under '", label,
          "' at budget ", budget);
  return s;
}

TaskScore TaskResult::overall(int64_t length, const std::string& label, double budget) const {
  TaskScore s;
  for (const auto& a : answers)
    if (a.length == length && a.label == label && a.budget == budget) {
      s.correct += a.correct;
      ++s.total;
    }
  require(s.total > 0, "kv tasks: no answers at ", length, " tokens under '", label, "' at budget ", budget);
  return s;
}

TaskResult evaluate_tasks(const nn::LlamaModel& model, const nn::BpeTokenizer& tok, std::span<const TaskPrompt> prompts,
                          std::span<const EvalConfig> configs, const TaskOptions& o, AllocationTables* tables,
                          const Progress& progress) {
  require(!configs.empty(), "kv tasks: no configurations to evaluate");
  require(o.answer_tokens >= 1, "kv tasks: answer tokens must be >= 1, got ", o.answer_tokens);
  require(o.formats.empty() || !o.decode, "kv tasks: stored KV formats are applied once after the prompt; they "
                                          "cannot be combined with eviction while answering (decode)");
  for (const auto& [name, format] : o.formats) {
    require(!name.empty(), "kv tasks: a KV format without a name");
    format.validate(model.config().n_layers, model.config().head_dim);
    for (const double f : o.budgets)
      for (const auto& p : prompts)
        require(static_cast<double>(p.length) * f >= static_cast<double>(format.min_budget()), "kv tasks: format '",
                name, "' keeps ", format.min_budget(), " tokens in float32, more than budget ", f, " of ", p.length,
                " tokens allows");
  }
  TaskResult result;
  const Schedule schedule{.prefill = true, .decode = o.decode, .every = 1};
  int64_t done = 0;
  for (const auto& p : prompts) {
    auto record = [&](std::string label, double budget, std::string answer) {
      const bool ok = answer_correct(p.instance, answer);
      result.answers.push_back({p.instance.kind, p.length, p.instance.index, std::move(label), budget, std::move(answer), ok});
    };
    const int64_t max_tokens = static_cast<int64_t>(p.tokens.size()) + o.answer_tokens;
    for_each_fork(
        model, p.tokens, max_tokens, configs, o.budgets, p.length, schedule, o.eviction, tables,
        [&](const EvalConfig& c, double f, Session& fork, std::span<const float> logits) {
          const std::vector<float> first(logits.begin(), logits.end());
          for (const auto& [name, format] : o.formats)
            record(c.label() + " [" + name + "]", f, greedy_answer(*fork.with_format(format), tok, first, o.answer_tokens));
          record(c.label(), f, greedy_answer(fork, tok, first, o.answer_tokens));
        },
        [&](Session& full, std::span<const float> logits) {
          const std::vector<float> first(logits.begin(), logits.end());
          for (const auto& [name, format] : o.formats)
            record("full cache [" + name + "]", 1.0, greedy_answer(*full.with_format(format), tok, first, o.answer_tokens));
          record("full cache", 1.0, greedy_answer(full, tok, first, o.answer_tokens));
        });
    if (progress) progress(++done, static_cast<int64_t>(prompts.size()));
  }
  return result;
}

}  // namespace strata::kv
