// Sentence streams from two real texts, split by position, for the gated-compression task.
#include "strata/gated/task.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "strata/core/error.hpp"

namespace strata::gated {

namespace {

bool closing(char c) { return c == '"' || c == '\'' || c == ')' || c == ']'; }
bool opening(char c) {
  return std::isupper(static_cast<unsigned char>(c)) || c == '"' || c == '\'' || c == '(' || c == '[';
}

int count_words(std::string_view s) {
  int words = 0;
  bool in = false;
  for (char c : s) {
    const bool space = c == ' ';
    if (!space && !in) ++words;
    in = !space;
  }
  return words;
}

std::string read_text(const std::filesystem::path& path, const char* option) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "build_source_task: ", option, " file ", path.string(), " cannot be read");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

std::vector<std::string> split_sentences(std::string_view text, int min_words, int max_words) {
  require(min_words >= 1 && max_words >= min_words, "split_sentences: min_words ", min_words, " and max_words ",
          max_words, " must satisfy 1 <= min_words <= max_words");
  // One space for every run of white space.
  std::string flat;
  flat.reserve(text.size());
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!flat.empty() && flat.back() != ' ') flat.push_back(' ');
    } else {
      flat.push_back(c);
    }
  }
  std::vector<std::string> out;
  const auto emit = [&](std::size_t begin, std::size_t end) {
    while (begin < end && flat[begin] == ' ') ++begin;
    while (end > begin && flat[end - 1] == ' ') --end;
    const std::string_view s(flat.data() + begin, end - begin);
    const int words = count_words(s);
    if (words >= min_words && words <= max_words) out.emplace_back(s);
  };
  std::size_t begin = 0;
  for (std::size_t i = 0; i < flat.size(); ++i) {
    const char c = flat[i];
    if (c != '.' && c != '!' && c != '?') continue;
    std::size_t end = i + 1;
    while (end < flat.size() && closing(flat[end])) ++end;
    if (end + 1 < flat.size() && flat[end] == ' ' && opening(flat[end + 1])) {
      emit(begin, end);
      begin = end + 1;
      i = end;
    }
  }
  if (begin < flat.size()) emit(begin, flat.size());
  return out;
}

SourceTask build_source_task(const SourceTaskOptions& o) {
  require(o.positive_fraction > 0 && o.positive_fraction <= 0.1,
          "build_source_task: positive_fraction must be in (0, 0.1], got ", o.positive_fraction);
  for (const auto& [name, size] : {std::pair{"train", o.train}, std::pair{"calibration", o.calibration},
                                   std::pair{"test", o.test}})
    require(size > 0, "build_source_task: ", name, " is ", size, " sentences; every split needs some (an empty split)");
  require(o.block > 0, "build_source_task: block must be positive, got ", o.block);
  require(o.train_share > 0 && o.calibration_share > 0 && o.train_share + o.calibration_share < 1,
          "build_source_task: train_share ", o.train_share, " and calibration_share ", o.calibration_share,
          " must be positive and leave a share for test");
  require(o.min_words >= 1 && o.max_words >= o.min_words, "build_source_task: min_words ", o.min_words,
          " and max_words ", o.max_words, " must satisfy 1 <= min_words <= max_words");

  const std::vector<std::string> sources[2] = {
      split_sentences(read_text(o.negatives, "negatives"), o.min_words, o.max_words),
      split_sentences(read_text(o.positives, "positives"), o.min_words, o.max_words)};
  SourceTask task;
  task.negative_sentences = static_cast<int64_t>(sources[0].size());
  task.positive_sentences = static_cast<int64_t>(sources[1].size());

  TaskSplit* splits[3] = {&task.train, &task.calibration, &task.test};
  const int64_t sizes[3] = {o.train, o.calibration, o.test};
  const char* names[3] = {"train", "calibration", "test"};
  const char* files[2] = {"negatives", "positives"};
  std::mt19937_64 rng(o.seed);
  for (int src = 0; src < 2; ++src) {
    const auto n = static_cast<int64_t>(sources[src].size());
    const int64_t blocks = (n + o.block - 1) / o.block;
    std::vector<int64_t> order(static_cast<std::size_t>(blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const auto n_train = static_cast<int64_t>(std::llround(o.train_share * static_cast<double>(blocks)));
    const auto n_cal = static_cast<int64_t>(std::llround(o.calibration_share * static_cast<double>(blocks)));
    for (int sp = 0; sp < 3; ++sp) {
      const int64_t first = sp == 0 ? 0 : sp == 1 ? n_train : n_train + n_cal;
      const int64_t last = sp == 0 ? n_train : sp == 1 ? n_train + n_cal : blocks;
      std::vector<int64_t> pool;
      for (int64_t b = std::min(first, blocks); b < std::min(last, blocks); ++b)
        for (int64_t i = order[static_cast<std::size_t>(b)] * o.block;
             i < std::min(n, (order[static_cast<std::size_t>(b)] + 1) * o.block); ++i)
          pool.push_back(i);
      const auto positives = static_cast<int64_t>(std::llround(o.positive_fraction * static_cast<double>(sizes[sp])));
      require(positives >= 1, "build_source_task: positive_fraction ", o.positive_fraction, " of ", sizes[sp], " ",
              names[sp], " sentences rounds to no positive");
      const int64_t need = src == 1 ? positives : sizes[sp] - positives;
      require(static_cast<int64_t>(pool.size()) >= need, "build_source_task: the ", files[src], " file ",
              (src ? o.positives : o.negatives).string(), " has ", pool.size(), " sentences in the ", names[sp],
              " split's runs, ", need, " are needed (lower ", names[sp], ")");
      // A partial Fisher-Yates draw of `need` sentences.
      for (int64_t i = 0; i < need; ++i) {
        std::uniform_int_distribution<int64_t> pick(i, static_cast<int64_t>(pool.size()) - 1);
        std::swap(pool[static_cast<std::size_t>(i)], pool[static_cast<std::size_t>(pick(rng))]);
        const int64_t at = pool[static_cast<std::size_t>(i)];
        splits[sp]->text.push_back(sources[src][static_cast<std::size_t>(at)]);
        splits[sp]->label.push_back(static_cast<uint8_t>(src));
        splits[sp]->position.push_back(at);
      }
    }
  }
  // Positives interleaved with negatives, as a stream would have them.
  for (TaskSplit* s : splits) {
    std::vector<std::size_t> perm(s->text.size());
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    TaskSplit shuffled;
    for (std::size_t i : perm) {
      shuffled.text.push_back(std::move(s->text[i]));
      shuffled.label.push_back(s->label[i]);
      shuffled.position.push_back(s->position[i]);
    }
    *s = std::move(shuffled);
  }
  return task;
}

}  // namespace strata::gated
