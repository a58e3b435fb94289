#pragma once
// Tokenizers for the models strata evaluates on text:
//   BpeTokenizer        byte-level BPE of the GPT-2 family, read from GGUF metadata (SmolLM2).
//   WordPieceTokenizer  BERT's uncased WordPiece, read from vocab.txt (all-MiniLM-L6-v2).
// Both are immutable after construction and safe to call from several threads at once. Pre-
// tokenizers are written by hand over a small UTF-8 decoder and strata's own Unicode tables (see
// unicode:: below and docs/tokenizers-and-bert.md); no regex engine, no ICU, no locale.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace strata::io {
class Model;
}

namespace strata::nn {

// ---- Unicode helpers ------------------------------------------------------------------------------
namespace unicode {

inline constexpr char32_t kReplacement = 0xFFFD;

// Decodes the code point at s[pos] and advances pos past it. A byte that does not start a valid,
// shortest-form UTF-8 sequence decodes as U+FFFD and advances by one byte, so every input is walked
// to its end and byte offsets stay exact. Requires pos < s.size().
char32_t next_code_point(std::string_view s, std::size_t& pos);
void append_utf8(std::string& out, char32_t cp);

// The general-category classes the pre-tokenizers ask about (Unicode 14 tables; unassigned code
// points fall into the class of the run around them, see src/nn/tokenizer_unicode.cc).
enum class Category : uint8_t {
  other,            // symbols, marks, unassigned, private use, ...
  letter,           // L*   (regex \p{L})
  number,           // N*   (regex \p{N})
  punctuation,      // P*
  space_separator,  // Zs
  control,          // Cc, Cf
};
Category category(char32_t cp);
inline bool is_letter(char32_t cp) { return category(cp) == Category::letter; }
inline bool is_number(char32_t cp) { return category(cp) == Category::number; }
// The White_Space property: what \s matches in the Unicode-aware regex engines tokenizers use.
bool is_white_space(char32_t cp);
// Combining marks of U+0300-036F, U+0483-0489, U+1AB0-1AFF, U+1DC0-1DFF, U+20D0-20FF, U+FE20-FE2F:
// what BERT's accent stripping removes after decomposition, for the scripts fold_case_and_accents knows.
bool is_combining_mark(char32_t cp);
// CJK ideographs, as BERT's tokenizer defines them (each becomes a word of its own).
bool is_cjk(char32_t cp);
// Lower case without accents for ASCII, Latin (U+00C0-024F, U+1E00-1EFF), Greek, Cyrillic, Armenian
// capitals and fullwidth A-Z; other code points are returned unchanged.
char32_t fold_case_and_accents(char32_t cp);

}  // namespace unicode

// ---- byte-level BPE ---------------------------------------------------------------------------------

// GGUF's tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  undefined = 0,
  normal = 1,
  unknown = 2,
  control = 3,
  user_defined = 4,
  unused = 5,
  byte = 6
};

// How text is cut into words before BPE (GGUF tokenizer.ggml.pre):
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm  every \p{N} code point is first cut out on its own, then gpt2 runs on the pieces between
//           (so "2024" is four words and " 2024" is " ", "2", "0", "2", "4").
enum class BpePreTokenizer { gpt2, smollm };
// Maps a tokenizer.ggml.pre name to its pre-tokenizer: "gpt2", "mpt", "olmo", "jais" -> gpt2;
// "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva" -> smollm (llama.cpp
// groups them the same way). Throws strata::Error naming the value for anything else.
BpePreTokenizer bpe_pre_tokenizer_from_name(std::string_view name);

struct BpeVocab {
  std::vector<std::string> tokens;   // token texts in the byte-to-unicode alphabet ("Ġworld")
  std::vector<std::string> merges;   // "left right", highest priority first
  std::vector<int32_t> token_types;  // TokenType per token; empty means all normal
  BpePreTokenizer pre = BpePreTokenizer::gpt2;
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
};

struct BpeEncodeOptions {
  // Recognise the texts of control tokens ("<|im_start|>") in the input and emit their ids. Without
  // it they are encoded as ordinary text. User-defined tokens are always recognised, as llama.cpp does.
  bool parse_special = false;
  // Add BOS / EOS where the vocabulary asks for them (tokenizer.ggml.add_bos_token / add_eos_token).
  bool add_special = true;
};

class BpeTokenizer {
 public:
  // Throws strata::Error when a merge names a token that is not in the vocabulary, ids are out of
  // range or the arrays disagree in length. A byte with no token of its own in the vocabulary is
  // dropped by encode(), as Hugging Face tokenizers and llama.cpp drop it (SmolLM2 lacks 21 bytes,
  // none of which occurs in UTF-8 text except the controls 0x04 0x06 0x13 0x14 0x16 0x1D), so
  // decode(encode(text)) == text holds for every text without those bytes.
  explicit BpeTokenizer(BpeVocab vocab);
  // From GGUF key/values as JSON (io::Model::metadata() of a GGUF file): tokenizer.ggml.model must be
  // "gpt2"; tokens, merges, token_type, pre, bos/eos/unknown/padding ids and add_bos/add_eos_token are
  // read when present. `what` (the file name) starts every error message.
  static BpeTokenizer from_gguf_metadata(const nlohmann::json& metadata, std::string_view what);
  static BpeTokenizer from_model(const io::Model& model);

  std::vector<int32_t> encode(std::string_view text, const BpeEncodeOptions& options = {}) const;
  // Concatenates the bytes of the tokens. Control tokens are written as their text unless
  // skip_special. The result is a byte string: a cut through a multi-byte character stays cut.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // The words the pre-tokenizer cuts `text` into (views into `text`); their concatenation is `text`.
  std::vector<std::string_view> pre_tokenize(std::string_view text) const;

  int32_t vocab_size() const;
  std::string_view token(int32_t id) const;        // as stored in the vocabulary
  std::string_view token_bytes(int32_t id) const;  // the bytes it stands for
  TokenType token_type(int32_t id) const;
  std::optional<int32_t> find(std::string_view token) const;
  BpePreTokenizer pre_tokenizer() const;
  int32_t bos_id() const;
  int32_t eos_id() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// ---- WordPiece (BERT) -------------------------------------------------------------------------------

struct WordPieceOptions {
  bool lower_case = true;     // BERT "uncased": lower-case and strip accents
  bool split_cjk = true;      // every CJK ideograph is a word of its own
  bool match_special = true;  // "[CLS]", "[SEP]", "[MASK]", ... in the text map to their ids
  int max_word_chars = 100;   // longer words become [UNK] without being split
  int64_t max_length = 512;   // encode(): tokens per sequence, [CLS] and [SEP] included
  std::string unk_token = "[UNK]", cls_token = "[CLS]", sep_token = "[SEP]", pad_token = "[PAD]", mask_token = "[MASK]";
  std::string continuation = "##";
};

// Right-padded token ids of several sequences, row-major [size, length].
struct TokenBatch {
  int64_t size = 0;
  int64_t length = 0;
  std::vector<int32_t> ids;
  std::vector<int32_t> attention_mask;  // 1 for tokens, 0 for padding
  int64_t tokens(int64_t row) const;    // unpadded length of one sequence
};

class WordPieceTokenizer {
 public:
  // Throws strata::Error when a special token of `options` is missing from the vocabulary.
  WordPieceTokenizer(std::vector<std::string> vocab, WordPieceOptions options = {});
  // vocab.txt: one token per line, the line number is the id. Throws strata::Error naming the file.
  static WordPieceTokenizer from_file(const std::filesystem::path& vocab_txt, WordPieceOptions options = {});

  // BERT's basic tokenizer: drops control characters and U+FFFD, maps white space to spaces, isolates
  // CJK ideographs, folds case and accents, then splits on white space and punctuation.
  std::vector<std::string> basic_tokenize(std::string_view text) const;
  // Word pieces of `text` without [CLS] / [SEP] (greedy longest match first, "##" continuations).
  std::vector<int32_t> tokenize(std::string_view text) const;
  // [CLS] pieces [SEP], the pieces truncated so that the whole fits options().max_length.
  std::vector<int32_t> encode(std::string_view text) const;
  // encode() of each text, right-padded with [PAD] to the longest.
  TokenBatch encode_batch(std::span<const std::string> texts) const;
  // Pieces joined back into words ("##" glued to the previous piece); [PAD] / [CLS] / [SEP] skipped.
  std::string decode(std::span<const int32_t> ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.size()); }
  const std::string& token(int32_t id) const;
  std::optional<int32_t> find(std::string_view token) const;
  const WordPieceOptions& options() const { return options_; }
  int32_t unk_id() const { return unk_; }
  int32_t cls_id() const { return cls_; }
  int32_t sep_id() const { return sep_; }
  int32_t pad_id() const { return pad_; }

 private:
  struct Index;
  void word_pieces(std::string_view word, std::vector<int32_t>& out) const;

  std::vector<std::string> vocab_;
  WordPieceOptions options_;
  std::shared_ptr<const Index> index_;
  int32_t unk_ = -1, cls_ = -1, sep_ = -1, pad_ = -1;
};

}  // namespace strata::nn
