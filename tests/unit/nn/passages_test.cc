// Sentence passages of a text slice and their batches, on a hand-made text and vocabulary: the expected
// passages and token counts are worked out by hand from the rules in passages.hpp.
#include "strata/nn/passages.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "strata/core/error.hpp"

namespace strata::nn {
namespace {

WordPieceTokenizer tiny_vocab() {
  return WordPieceTokenizer({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cafe"}, WordPieceOptions{});
}

struct TextFile {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("strata_passages_" + std::to_string(std::random_device{}()) + ".txt");
  explicit TextFile(const std::string& text) { std::ofstream(path) << text; }
  ~TextFile() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
};

TEST(SentencePassages, WholeSentencesUpToTheWordLimitAndTheShortOnesDropped) {
  // Paragraph 1: sentences of 2, 2 and 3 words; paragraph 2: one sentence of 10 words (longer than the
  // limit, kept whole); paragraph 3: one word. Tokens: words, '.' and '!' as [UNK], [CLS] and [SEP].
  const TextFile f("the cafe. a cafe!\nthe the the.\n\na a a a a a a a a a.\n\ncafe.\n");
  const auto tok = tiny_vocab();
  const TextSlice all = TextSlice::parse(f.path, "0:1");
  PassageOptions o;
  o.max_words = 5;
  o.min_tokens = 6;
  const std::vector<std::string> got = sentence_passages(all, tok, o);
  EXPECT_EQ(got, (std::vector<std::string>{"the cafe. a cafe!", "the the the.", "a a a a a a a a a a."}));
  o.limit = 2;
  EXPECT_EQ(sentence_passages(all, tok, o).size(), 2u);
  // A larger word limit joins paragraph 1 into one passage of 7 words and 12 tokens.
  o.limit = 10;
  o.max_words = 7;
  EXPECT_EQ(sentence_passages(all, tok, o).front(), "the cafe. a cafe! the the the.");

  const PassageBatches b = batch_by_length(tok, got, 2);
  EXPECT_EQ(b.lengths, (std::vector<int64_t>{8, 6, 13}));
  EXPECT_EQ(b.order, (std::vector<int64_t>{1, 0, 2}));  // shortest first
  ASSERT_EQ(b.batches.size(), 2u);
  EXPECT_EQ(b.batches[0].size, 2);
  EXPECT_EQ(b.batches[0].length, 8);
  EXPECT_EQ(b.batches[1].size, 1);
  EXPECT_EQ(b.batches[1].length, 13);
}

TEST(SentencePassages, RefusalsNameTheOption) {
  const TextFile f("the cafe.\n");
  const auto tok = tiny_vocab();
  const TextSlice all = TextSlice::parse(f.path, "0:1");
  const auto expect_error = [&](PassageOptions o, const std::string& option) {
    try {
      sentence_passages(all, tok, o);
      ADD_FAILURE() << "no error; expected one naming " << option;
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr(option));
    }
  };
  PassageOptions o;
  expect_error(o, "'min_tokens'");  // 5 tokens, 64 asked
  o.min_tokens = 0;
  expect_error(o, "'min_tokens'");
  o.min_tokens = 1;
  o.max_words = -1;
  expect_error(o, "'max_words'");
  o.max_words = 5;
  o.limit = 0;
  expect_error(o, "'limit'");
  EXPECT_THROW(batch_by_length(tok, {"the"}, 0), Error);
}

}  // namespace
}  // namespace strata::nn
