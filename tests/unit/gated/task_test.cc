// The sentence task: sentence splitting on hand-written text, splits disjoint by position with the
// requested sizes and positive share, determinism, and the refusals.
#include "strata/gated/task.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>

#include <unistd.h>

#include "strata/core/error.hpp"

namespace strata::gated {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(SplitSentences, CutsAtSentenceEnds) {
  const std::string text =
      "Call me Ishmael. Some years ago, never mind\nhow long precisely, I went to sea! Was it \"wise?\" "
      "Perhaps not. Mr. Smith paid 3.5 dollars. (A short aside.) the end";
  EXPECT_THAT(split_sentences(text, 1, 100),
              ElementsAre("Call me Ishmael.", "Some years ago, never mind how long precisely, I went to sea!",
                          "Was it \"wise?\"", "Perhaps not.", "Mr.", "Smith paid 3.5 dollars.", "(A short aside.) the end"));
  // Word limits leave sentences out.
  EXPECT_THAT(split_sentences(text, 3, 5), ElementsAre("Call me Ishmael.", "Was it \"wise?\"", "Smith paid 3.5 dollars.",
                                                     "(A short aside.) the end"));
  EXPECT_THROW(split_sentences(text, 0, 5), Error);
}

struct Files {
  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("strata_task_" + std::to_string(::getpid()));
  Files() {
    std::filesystem::create_directories(dir);
    std::ofstream neg(dir / "neg.txt"), pos(dir / "pos.txt");
    for (int i = 0; i < 3000; ++i) neg << "Negative sentence number " << i << " is here. ";
    for (int i = 0; i < 600; ++i) pos << "Positive line number " << i << " goes on.\n";
  }
  ~Files() { std::filesystem::remove_all(dir); }
};

int64_t number_in(const std::string& s) { return std::stoll(s.substr(s.find("number ") + 7)); }

TEST(SourceTask, SplitsAreDisjointByPositionWithTheRequestedShares) {
  const Files f;
  SourceTaskOptions o;
  o.negatives = f.dir / "neg.txt";
  o.positives = f.dir / "pos.txt";
  o.train = 500;
  o.calibration = 300;
  o.test = 200;
  o.positive_fraction = 0.1;
  o.block = 20;
  o.min_words = 3;
  const SourceTask t = build_source_task(o);
  EXPECT_EQ(t.negative_sentences, 3000);
  EXPECT_EQ(t.positive_sentences, 600);
  std::set<int64_t> blocks[3][2];
  const TaskSplit* splits[3] = {&t.train, &t.calibration, &t.test};
  const int64_t sizes[3] = {500, 300, 200};
  for (int s = 0; s < 3; ++s) {
    const TaskSplit& sp = *splits[s];
    ASSERT_EQ(static_cast<int64_t>(sp.text.size()), sizes[s]);
    int64_t positives = 0;
    for (std::size_t i = 0; i < sp.text.size(); ++i) {
      const int src = sp.label[i];
      positives += src;
      // The text is the sentence at its recorded position in its source.
      EXPECT_EQ(number_in(sp.text[i]), sp.position[i]);
      EXPECT_EQ(sp.text[i].starts_with("Positive"), src == 1);
      blocks[s][src].insert(sp.position[i] / o.block);
    }
    EXPECT_EQ(positives, sizes[s] / 10) << "split " << s;
    // Positives are spread through the stream, not gathered at one end.
    int64_t first_half = 0;
    for (std::size_t i = 0; i < sp.text.size() / 2; ++i) first_half += sp.label[i];
    EXPECT_GT(first_half, 0);
    EXPECT_LT(first_half, positives);
  }
  for (int src = 0; src < 2; ++src)
    for (int a = 0; a < 3; ++a)
      for (int b = a + 1; b < 3; ++b)
        for (int64_t blk : blocks[a][src]) EXPECT_EQ(blocks[b][src].count(blk), 0u) << "block " << blk;
  // Seeded: the same options give the same task, another seed another one.
  const SourceTask again = build_source_task(o);
  EXPECT_EQ(again.test.text, t.test.text);
  o.seed = 2;
  EXPECT_NE(build_source_task(o).test.text, t.test.text);
}

TEST(SourceTask, RefusesBadOptions) {
  const Files f;
  SourceTaskOptions o;
  o.negatives = f.dir / "neg.txt";
  o.positives = f.dir / "pos.txt";
  o.min_words = 3;
  const auto message = [](const SourceTaskOptions& opt) {
    try {
      build_source_task(opt);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Each case changes one option and names what the message must say.
  const std::vector<std::pair<std::function<void(SourceTaskOptions&)>, std::string>> cases = {
      {[](SourceTaskOptions& b) { b.positive_fraction = 0.2; }, "positive_fraction"},
      {[](SourceTaskOptions& b) { b.test = 0; }, "test is 0 sentences"},
      {[](SourceTaskOptions& b) { b.calibration = 0; }, "calibration is 0 sentences"},
      {[&](SourceTaskOptions& b) { b.positives = f.dir / "missing.txt"; }, "missing.txt"},
      {[](SourceTaskOptions& b) { b.train = 20000; }, "lower train"},
      {[](SourceTaskOptions& b) { b.train_share = 0.9; }, "train_share"},
  };
  for (const auto& [change, expected] : cases) {
    SourceTaskOptions b = o;
    change(b);
    EXPECT_THAT(message(b), HasSubstr(expected));
  }
}

}  // namespace
}  // namespace strata::gated
