// Tokenizers: Unicode helpers, byte-level BPE (hand-made vocabularies and SmolLM2's), WordPiece
// (hand-made and all-MiniLM-L6-v2's). Expected ids for the real vocabularies come from Hugging Face
// tokenizers 0.23 (SmolLM2's built from the GGUF's tokens and merges with the Digits + ByteLevel
// pre-tokenizers of its tokenizer.json; MiniLM's from its own tokenizer.json).
#include "strata/nn/tokenizer.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "test_util.hpp"

namespace strata::nn {
namespace {

using strata::testing::models_dir;
using strata::testing::shared_data_dir;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// FNV-1a over token ids, as the reference script computed it (ids as Python ints xor-ed in whole).
uint64_t fnv1a(const std::vector<int32_t>& ids, uint64_t h = 0xcbf29ce484222325ull) {
  for (int32_t id : ids) {
    h ^= static_cast<uint64_t>(id);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::vector<std::string> strings(const std::vector<std::string_view>& v) { return {v.begin(), v.end()}; }

// ---- Unicode ---------------------------------------------------------------------------------------

TEST(Unicode, DecodesUtf8AndReplacesMalformedBytesOneByOne) {
  const std::string s = "a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x8E\x89";  // a é 中 🎉
  std::size_t pos = 0;
  std::vector<char32_t> cps;
  while (pos < s.size()) cps.push_back(unicode::next_code_point(s, pos));
  EXPECT_EQ(cps, (std::vector<char32_t>{U'a', U'é', U'中', U'🎉'}));

  for (const std::string& bad : {std::string("\xC3"), std::string("\xC0\xAF"), std::string("\xED\xA0\x80"),
                                 std::string("\xF4\x90\x80\x80"), std::string("\xFF"), std::string("\xE4\xB8")}) {
    std::size_t p = 0;
    EXPECT_EQ(unicode::next_code_point(bad, p), unicode::kReplacement);
    EXPECT_EQ(p, 1u) << "a malformed sequence must advance by exactly one byte";
  }
  std::string round;
  for (char32_t cp : cps) unicode::append_utf8(round, cp);
  EXPECT_EQ(round, s);
}

TEST(Unicode, Categories) {
  using unicode::Category;
  EXPECT_EQ(unicode::category(U'a'), Category::letter);
  EXPECT_EQ(unicode::category(U'é'), Category::letter);
  EXPECT_EQ(unicode::category(U'中'), Category::letter);
  EXPECT_EQ(unicode::category(U'ж'), Category::letter);
  EXPECT_EQ(unicode::category(U'7'), Category::number);
  EXPECT_EQ(unicode::category(U'٣'), Category::number);  // Arabic-Indic digit: a number, not a letter
  EXPECT_EQ(unicode::category(U'½'), Category::number);
  EXPECT_EQ(unicode::category(U'²'), Category::number);
  EXPECT_EQ(unicode::category(U'¿'), Category::punctuation);
  EXPECT_EQ(unicode::category(U'—'), Category::punctuation);
  EXPECT_EQ(unicode::category(U'$'), Category::other);
  EXPECT_EQ(unicode::category(U'🎉'), Category::other);
  EXPECT_EQ(unicode::category(U'\u0301'), Category::other);  // combining mark
  EXPECT_EQ(unicode::category(U'\u00A0'), Category::space_separator);
  EXPECT_EQ(unicode::category(U'\u200B'), Category::control);
  EXPECT_TRUE(unicode::is_white_space(U'\u3000'));
  EXPECT_TRUE(unicode::is_white_space(U'\n'));
  EXPECT_FALSE(unicode::is_white_space(U'\u200B'));
  EXPECT_EQ(unicode::fold_case_and_accents(U'É'), U'e');
  EXPECT_EQ(unicode::fold_case_and_accents(U'ç'), U'c');
  EXPECT_EQ(unicode::fold_case_and_accents(U'Ά'), U'α');
  EXPECT_EQ(unicode::fold_case_and_accents(U'Й'), U'и');
  EXPECT_EQ(unicode::fold_case_and_accents(U'ß'), U'ß');
}

// ---- byte-level BPE on a hand-made vocabulary ---------------------------------------------------

// The 256 byte tokens (GPT-2 alphabet) plus the merges given, in rank order.
BpeVocab tiny_vocab(const std::vector<std::string>& merges, BpePreTokenizer pre = BpePreTokenizer::gpt2) {
  BpeVocab v;
  v.pre = pre;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    std::string t;
    unicode::append_utf8(t, printable ? static_cast<char32_t>(b) : next++);
    v.tokens.push_back(t);
  }
  for (const auto& m : merges) {
    const auto sp = m.find(' ');
    const std::string joined = m.substr(0, sp) + m.substr(sp + 1);
    if (std::find(v.tokens.begin(), v.tokens.end(), joined) == v.tokens.end()) v.tokens.push_back(joined);
    v.merges.push_back(m);
  }
  return v;
}

std::vector<std::string> token_texts(const BpeTokenizer& t, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.emplace_back(t.token(id));
  return out;
}

TEST(BpeTokenizer, MergesByRankLeftmostFirst) {
  const BpeTokenizer t(tiny_vocab({"a a", "b c", "aa b"}));
  // "aaa": "a a" applies at the leftmost pair first -> "aa", "a".
  EXPECT_EQ(token_texts(t, t.encode("aaa")), (std::vector<std::string>{"aa", "a"}));
  // "aabc": rank 0 "a a" -> aa b c; rank 1 "b c" -> aa bc; "aa b" no longer has a "b" to its right.
  EXPECT_EQ(token_texts(t, t.encode("aabc")), (std::vector<std::string>{"aa", "bc"}));
  // "aab": rank 0 then rank 2.
  EXPECT_EQ(token_texts(t, t.encode("aab")), (std::vector<std::string>{"aab"}));
  // A space becomes Ġ and, with no merge for it, stays a token of its own.
  EXPECT_EQ(token_texts(t, t.encode("a a")), (std::vector<std::string>{"a", "Ġ", "a"}));
  EXPECT_EQ(t.decode(t.encode("a a\n\t\x01\xFF")), "a a\n\t\x01\xFF");
}

TEST(BpeTokenizer, Gpt2PreTokenizer) {
  const BpeTokenizer t(tiny_vocab({}));
  EXPECT_EQ(strings(t.pre_tokenize("Hello world")), (std::vector<std::string>{"Hello", " world"}));
  EXPECT_EQ(strings(t.pre_tokenize("I'm here, you're not. He'll go!")),
            (std::vector<std::string>{"I", "'m", " here", ",", " you", "'re", " not", ".", " He", "'ll", " go", "!"}));
  // Contractions are lower-case only; an upper-case one splits as punctuation then letters.
  EXPECT_EQ(strings(t.pre_tokenize("IT'S")), (std::vector<std::string>{"IT", "'", "S"}));
  // \s+(?!\S): a run of spaces gives all but its last to the run, the last prefixes the next word.
  EXPECT_EQ(strings(t.pre_tokenize("a   b")), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(strings(t.pre_tokenize("a\n\nb ")), (std::vector<std::string>{"a", "\n", "\n", "b", " "}));
  EXPECT_EQ(strings(t.pre_tokenize("x 2024 y")), (std::vector<std::string>{"x", " 2024", " y"}));
  EXPECT_EQ(strings(t.pre_tokenize("...!!! ---")), (std::vector<std::string>{"...!!!", " ---"}));
  EXPECT_EQ(strings(t.pre_tokenize("naïve 東京")), (std::vector<std::string>{"naïve", " 東京"}));
  EXPECT_TRUE(t.pre_tokenize("").empty());
}

TEST(BpeTokenizer, SmollmPreTokenizerIsolatesEveryDigit) {
  const BpeTokenizer t(tiny_vocab({}, BpePreTokenizer::smollm));
  EXPECT_EQ(strings(t.pre_tokenize("2024")), (std::vector<std::string>{"2", "0", "2", "4"}));
  // The space before a number is left alone: the digit split comes first.
  EXPECT_EQ(strings(t.pre_tokenize("in 2024.")), (std::vector<std::string>{"in", " ", "2", "0", "2", "4", "."}));
  EXPECT_EQ(strings(t.pre_tokenize("x²")), (std::vector<std::string>{"x", "²"}));
  EXPECT_EQ(strings(t.pre_tokenize("a  1")), (std::vector<std::string>{"a", "  ", "1"}));
}

TEST(BpeTokenizer, SpecialTokensOnlyWhenAsked) {
  BpeVocab v = tiny_vocab({});
  v.tokens.push_back("<|im_start|>");
  v.token_types.assign(v.tokens.size(), static_cast<int32_t>(TokenType::normal));
  v.token_types.back() = static_cast<int32_t>(TokenType::control);
  const int32_t special = static_cast<int32_t>(v.tokens.size()) - 1;
  const BpeTokenizer t(std::move(v));
  const auto plain = t.encode("<|im_start|>hi");
  EXPECT_EQ(std::count(plain.begin(), plain.end(), special), 0);
  BpeEncodeOptions parse;
  parse.parse_special = true;
  const auto parsed = t.encode("x<|im_start|>hi", parse);
  ASSERT_EQ(parsed.size(), 4u);
  EXPECT_EQ(parsed[1], special);
  EXPECT_EQ(t.decode(parsed), "x<|im_start|>hi");
  EXPECT_EQ(t.decode(parsed, /*skip_special=*/true), "xhi");
}

TEST(BpeTokenizer, RejectsBrokenVocabularies) {
  BpeVocab v = tiny_vocab({});
  v.merges.push_back("zz qq");  // neither side is a token
  EXPECT_THROW(BpeTokenizer{v}, Error);

  nlohmann::json meta = nlohmann::json::object();
  try {
    (void)BpeTokenizer::from_gguf_metadata(meta, "x.gguf");
    FAIL() << "no tokenizer.ggml.model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.model"), std::string::npos) << e.what();
  }
  meta["tokenizer.ggml.model"] = "llama";
  EXPECT_THROW((void)BpeTokenizer::from_gguf_metadata(meta, "x.gguf"), Error);
  meta["tokenizer.ggml.model"] = "gpt2";
  meta["tokenizer.ggml.tokens"] = {"a", "b"};
  meta["tokenizer.ggml.merges"] = nlohmann::json::array();
  meta["tokenizer.ggml.pre"] = "qwen2";
  try {
    (void)BpeTokenizer::from_gguf_metadata(meta, "x.gguf");
    FAIL() << "unsupported pre-tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qwen2"), std::string::npos) << e.what();
  }
}

// ---- SmolLM2 ------------------------------------------------------------------------------------

class SmolLM2Tokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto path = models_dir() / "smollm2-135m-instruct-q4_1.gguf";
    if (!std::filesystem::exists(path)) return;
    const auto model = io::open_model(path);
    tok_ = new BpeTokenizer(BpeTokenizer::from_model(*model));
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  void SetUp() override {
    STRATA_REQUIRE_FILE(models_dir() / "smollm2-135m-instruct-q4_1.gguf", "scripts/fetch-models.sh");
  }
  static BpeTokenizer* tok_;
};
BpeTokenizer* SmolLM2Tokenizer::tok_ = nullptr;

TEST_F(SmolLM2Tokenizer, Vocabulary) {
  const BpeTokenizer& t = *tok_;
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_EQ(t.pre_tokenizer(), BpePreTokenizer::smollm);
  EXPECT_EQ(t.token(1), "<|im_start|>");
  EXPECT_EQ(t.token_type(1), TokenType::control);
  EXPECT_EQ(t.find("Ġworld"), std::optional<int32_t>(905));
  EXPECT_EQ(t.token_bytes(905), " world");
}

TEST_F(SmolLM2Tokenizer, KnownEncodings) {
  const BpeTokenizer& t = *tok_;
  const auto hello = t.encode("Hello world");
  EXPECT_EQ(hello, (std::vector<int32_t>{19556, 905}));
  EXPECT_EQ(token_texts(t, hello), (std::vector<std::string>{"Hello", "Ġworld"}));
  EXPECT_EQ(token_texts(t, t.encode("2024")), (std::vector<std::string>{"2", "0", "2", "4"}));
  EXPECT_EQ(t.encode(" 2024"), (std::vector<int32_t>{216, 34, 32, 34, 36}));
  EXPECT_EQ(t.encode("I'm here, you're not. He'll go!"),
            (std::vector<int32_t>{57, 5248, 1535, 28, 346, 2316, 441, 30, 909, 3060, 685, 17}));
  EXPECT_EQ(t.encode("  spaces   and\ttabs\n\nnewlines\n"),
            (std::vector<int32_t>{216, 5600, 256, 284, 197, 100, 7366, 198, 198, 2241, 5110, 198}));
  EXPECT_EQ(t.encode("naïve café 東京 ١٢٣ ½"), (std::vector<int32_t>{3546, 46494, 37366, 17097, 247, 126, 16736, 122,
                                                                     216, 164, 111, 164, 112, 164, 113, 216, 16738}));
  EXPECT_EQ(t.encode("émoji 🎉 ok"), (std::vector<int32_t>{2756, 15771, 10381, 15107, 232, 227, 10907}));
  EXPECT_EQ(t.encode("\u00a0nbsp\u2003em"), (std::vector<int32_t>{15442, 94, 32093, 321, 221, 391}));

  BpeEncodeOptions parse;
  parse.parse_special = true;
  EXPECT_EQ(t.encode("<|im_start|>user\nHi<|im_end|>", parse), (std::vector<int32_t>{1, 4093, 198, 26843, 2}));
  // Without parse_special the markers are ordinary text, and still decode to themselves.
  const auto plain = t.encode("<|im_start|>user");
  EXPECT_GT(plain.size(), 2u);
  EXPECT_EQ(t.decode(plain), "<|im_start|>user");
}

TEST_F(SmolLM2Tokenizer, BytesWithoutATokenAreDropped) {
  // SmolLM2 has no token for byte 0x04; the references drop it, and so do we.
  EXPECT_EQ(tok_->decode(tok_->encode("a\x04"
                                      "b")),
            "ab");
  EXPECT_EQ(tok_->decode(tok_->encode(std::string("a\0b", 3))), std::string("a\0b", 3));
}

// Whole corpora: decode(encode(text)) == text, and the ids equal Hugging Face's (count and FNV-1a of
// the whole id sequence, computed by the reference script described at the top of this file).
void check_corpus(const BpeTokenizer& t, const std::filesystem::path& path, std::size_t want_tokens, uint64_t want_hash,
                  double max_seconds) {
  const std::string text = read_file(path);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = t.encode(text);
  const auto t1 = std::chrono::steady_clock::now();
  const std::string back = t.decode(ids);
  const double secs = std::chrono::duration<double>(t1 - t0).count();
  std::cout << "[ info ] " << path.filename().string() << ": " << text.size() << " bytes -> " << ids.size()
            << " tokens, encode " << secs << " s (" << text.size() / secs / 1e6 << " MB/s)\n";
  EXPECT_EQ(ids.size(), want_tokens);
  EXPECT_EQ(fnv1a(ids), want_hash);
  EXPECT_TRUE(back == text) << "round trip differs";
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(secs, max_seconds) << "encode is much slower than measured (about 0.15 s for Moby Dick)";
#endif
}

TEST_F(SmolLM2Tokenizer, MobyDickRoundTripAndMatchesReference) {
  const auto path = shared_data_dir() / "corpora" / "moby_dick.txt";
  STRATA_REQUIRE_FILE(path, "shared data folder");
  check_corpus(*tok_, path, 312006, 0x6ed16131b7b58f12ull, 2.0);
}

TEST_F(SmolLM2Tokenizer, StateOfTheUnionRoundTripAndMatchesReference) {
  const auto path = shared_data_dir() / "corpora" / "sotu_1790-2021.txt";
  STRATA_REQUIRE_FILE(path, "shared data folder");
  check_corpus(*tok_, path, 2124415, 0xb8e00fbac49ca051ull, 10.0);
}

// ---- WordPiece on a hand-made vocabulary ---------------------------------------------------------

WordPieceTokenizer tiny_wordpiece(int64_t max_length = 512) {
  WordPieceOptions o;
  o.max_length = max_length;
  return WordPieceTokenizer({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "runn", "##ing",
                             "the", ",", "!", "cafe", "a", "##a", "中"},
                            o);
}

TEST(WordPieceTokenizer, BasicTokenizer) {
  const auto t = tiny_wordpiece();
  EXPECT_EQ(t.basic_tokenize("  Hello,  WORLD!\tCafé\n"),
            (std::vector<std::string>{"hello", ",", "world", "!", "cafe"}));
  EXPECT_EQ(t.basic_tokenize("don't $5"), (std::vector<std::string>{"don", "'", "t", "$", "5"}));
  EXPECT_EQ(t.basic_tokenize("ab中cd"), (std::vector<std::string>{"ab", "中", "cd"}));
  using namespace std::string_literals;
  EXPECT_EQ(t.basic_tokenize("e\u0301te\u200B\0x"s), (std::vector<std::string>{"etex"}));  // marks, controls, NUL go
}

TEST(WordPieceTokenizer, GreedyLongestMatchFirst) {
  const auto t = tiny_wordpiece();
  auto pieces = [&](std::string_view s) {
    std::vector<std::string> out;
    for (int32_t id : t.tokenize(s)) out.push_back(t.token(id));
    return out;
  };
  EXPECT_EQ(pieces("unaffable"), (std::vector<std::string>{"un", "##aff", "##able"}));
  EXPECT_EQ(pieces("running, UNAFFABLE!"),
            (std::vector<std::string>{"runn", "##ing", ",", "un", "##aff", "##able", "!"}));
  EXPECT_EQ(pieces("unaffablex"), (std::vector<std::string>{"[UNK]"}));  // an unmatched rest spoils the word
  std::vector<std::string> hundred(100, "##a");
  hundred[0] = "a";
  EXPECT_EQ(pieces(std::string(100, 'a')), hundred);                              // exactly max_word_chars: still split
  EXPECT_EQ(pieces(std::string(101, 'a')), (std::vector<std::string>{"[UNK]"}));  // over max_word_chars
  EXPECT_EQ(pieces("[CLS] a [MASK]"), (std::vector<std::string>{"[CLS]", "a", "[MASK]"}));
}

TEST(WordPieceTokenizer, SpecialTokensTruncationAndBatch) {
  const auto t = tiny_wordpiece(5);
  EXPECT_EQ(t.encode("the cafe"), (std::vector<int32_t>{2, 10, 13, 3}));
  EXPECT_EQ(t.encode("the cafe the cafe"), (std::vector<int32_t>{2, 10, 13, 10, 3}));  // cut to 5
  const std::vector<std::string> texts = {"the", "the cafe , cafe", ""};
  const TokenBatch b = t.encode_batch(texts);
  EXPECT_EQ(b.size, 3);
  EXPECT_EQ(b.length, 5);
  EXPECT_EQ(b.ids, (std::vector<int32_t>{2, 10, 3, 0, 0, 2, 10, 13, 11, 3, 2, 3, 0, 0, 0}));
  EXPECT_EQ(b.attention_mask, (std::vector<int32_t>{1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(b.tokens(0), 3);
  EXPECT_EQ(b.tokens(2), 2);
  EXPECT_EQ(tiny_wordpiece().decode(tiny_wordpiece().encode("unaffable cafe")), "unaffable cafe");
  EXPECT_THROW(WordPieceTokenizer({"a", "b"}), Error);  // no [UNK] / [CLS] / [SEP] / [PAD]
}

// ---- all-MiniLM-L6-v2's vocabulary ------------------------------------------------------------------

class MiniLMTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    vocab_ = models_dir() / "all-minilm-l6-v2" / "vocab.txt";
    STRATA_REQUIRE_FILE(vocab_, "scripts/fetch-models.sh");
  }
  std::filesystem::path vocab_;
};

TEST_F(MiniLMTokenizer, KnownEncodings) {
  const auto t = WordPieceTokenizer::from_file(vocab_);
  EXPECT_EQ(t.vocab_size(), 30522);
  EXPECT_EQ(t.encode("unaffable"), (std::vector<int32_t>{101, 14477, 20961, 3468, 102}));
  EXPECT_EQ(t.token(20961), "##ffa");
  EXPECT_EQ(t.encode("Hello, world!"), (std::vector<int32_t>{101, 7592, 1010, 2088, 999, 102}));
  EXPECT_EQ(t.encode("naïve café résumé"), (std::vector<int32_t>{101, 15743, 7668, 13746, 102}));
  EXPECT_EQ(t.encode("I can't believe it's 2024!"),
            (std::vector<int32_t>{101, 1045, 2064, 1005, 1056, 2903, 2009, 1005, 1055, 16798, 2549, 999, 102}));
  EXPECT_EQ(t.encode("东京 Tokyo"), (std::vector<int32_t>{101, 100, 1755, 5522, 102}));
  EXPECT_EQ(t.encode("[CLS] hi [MASK]"), (std::vector<int32_t>{101, 101, 7632, 103, 102}));
  EXPECT_EQ(t.encode("한국어 텍스트"), (std::vector<int32_t>{101, 1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008,
                                                             1467, 30009, 30020, 29997, 30017, 30003, 30017, 102}));
  EXPECT_EQ(t.encode("Ελληνικά κείμενα"),
            (std::vector<int32_t>{101, 1159, 29727, 29727, 24824, 16177, 18199, 29726, 14608, 1164, 29723, 18199, 29728,
                                  29723, 16177, 14608, 102}));
  EXPECT_EQ(t.encode("Привет, мир!"),
            (std::vector<int32_t>{101, 1194, 16856, 10325, 25529, 15290, 22919, 1010, 1191, 10325, 16856, 999, 102}));
  EXPECT_EQ(t.encode("a\u0085b\u2028c\u200bd"), (std::vector<int32_t>{101, 11113, 3729, 102}));
  EXPECT_EQ(t.encode("Straße İstanbul"), (std::vector<int32_t>{101, 2358, 27807, 9960, 102}));
  EXPECT_EQ(t.encode("$100 + 50% = ?"), (std::vector<int32_t>{101, 1002, 2531, 1009, 2753, 1003, 1027, 1029, 102}));
}

TEST_F(MiniLMTokenizer, MobyDickLinesMatchReference) {
  const auto path = shared_data_dir() / "corpora" / "moby_dick.txt";
  STRATA_REQUIRE_FILE(path, "shared data folder");
  const auto t = WordPieceTokenizer::from_file(vocab_);
  std::istringstream in(read_file(path));
  std::string line;
  uint64_t h = 0xcbf29ce484222325ull;
  std::size_t lines = 0, tokens = 0, unknown = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r\n\v\f") == std::string::npos) continue;
    const auto ids = t.encode(line);
    h = fnv1a(ids, h);
    ++lines;
    tokens += ids.size();
    unknown += static_cast<std::size_t>(std::count(ids.begin(), ids.end(), t.unk_id()));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ info ] WordPiece, Moby Dick: " << lines << " lines -> " << tokens << " tokens in " << secs << " s\n";
  EXPECT_EQ(lines, 18330u);
  EXPECT_EQ(tokens, 322321u);
  EXPECT_EQ(unknown, 0u);
  EXPECT_EQ(h, 0x411ebc830ca9274dull);
}

}  // namespace
}  // namespace strata::nn
