// BERT's WordPiece: the basic tokenizer (clean, isolate CJK, fold case and accents, split on white
// space and punctuation) followed by greedy longest-match-first splitting of each word into pieces.
#include <algorithm>
#include <fstream>
#include <functional>
#include <unordered_map>

#include "strata/core/error.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::nn {

namespace {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceIndex = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// BERT counts every non-alphanumeric printable ASCII character as punctuation ("$", "+", "^" are
// symbols to Unicode), and the P* categories elsewhere.
bool is_bert_punctuation(char32_t cp) {
  if (cp < 0x80)
    return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  return unicode::category(cp) == unicode::Category::punctuation;
}

bool is_bert_space(char32_t cp) {
  return unicode::is_white_space(cp) || unicode::category(cp) == unicode::Category::space_separator;
}

// Removed before anything else: control and format characters (Cc, Cf) except tab, newline and
// carriage return, and private-use code points. Because removal comes first, U+0085 (a control that
// is also white space) vanishes instead of separating words, as in the reference normaliser.
bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  if ((cp >= 0xE000 && cp <= 0xF8FF) || cp >= 0xF0000) return true;
  return unicode::category(cp) == unicode::Category::control;
}

// NFD splits a precomposed Hangul syllable into two or three conjoining jamo, arithmetically
// (Unicode 15, section 3.12); the uncased vocabulary holds the jamo, not the syllables.
int decompose_hangul(char32_t cp, char32_t out[3]) {
  constexpr char32_t kBase = 0xAC00, kCount = 11172, kL = 0x1100, kV = 0x1161, kT = 0x11A7;
  constexpr char32_t kVCount = 21, kTCount = 28;
  if (cp < kBase || cp >= kBase + kCount) return 0;
  const char32_t s = cp - kBase;
  out[0] = kL + s / (kVCount * kTCount);
  out[1] = kV + (s % (kVCount * kTCount)) / kTCount;
  if (s % kTCount == 0) return 2;
  out[2] = kT + s % kTCount;
  return 3;
}

}  // namespace

// Word-initial pieces and continuation pieces (stored without their "##") in separate maps, so that
// a lookup is a view of the word with no string built per candidate.
struct WordPieceTokenizer::Index {
  PieceIndex initial, continuation;
  std::vector<std::pair<std::string, int32_t>> specials;  // texts matched in the input
};

int64_t TokenBatch::tokens(int64_t row) const {
  require(row >= 0 && row < size, "TokenBatch: row ", row, " is outside [0, ", size, ")");
  int64_t n = 0;
  for (int64_t j = 0; j < length; ++j) n += attention_mask[static_cast<std::size_t>(row * length + j)] != 0;
  return n;
}

WordPieceTokenizer::WordPieceTokenizer(std::vector<std::string> vocab, WordPieceOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  require(!vocab_.empty(), "WordPiece vocabulary: no tokens");
  require(vocab_.size() < static_cast<std::size_t>(INT32_MAX), "WordPiece vocabulary: too many tokens");
  require(options_.max_length >= 2, "WordPiece: max_length ", options_.max_length,
          " leaves no room for [CLS] and [SEP]");
  require(options_.max_word_chars >= 1, "WordPiece: max_word_chars must be positive");
  auto index = std::make_shared<Index>();
  const std::string& cont = options_.continuation;
  for (std::size_t i = 0; i < vocab_.size(); ++i) {
    const std::string& t = vocab_[i];
    const auto id = static_cast<int32_t>(i);
    // A duplicate keeps its first id, as the reference loader's dictionary does.
    if (!cont.empty() && t.size() > cont.size() && t.starts_with(cont))
      index->continuation.try_emplace(t.substr(cont.size()), id);
    else
      index->initial.try_emplace(t, id);
  }
  auto special = [&](const std::string& text, const char* role) {
    auto it = index->initial.find(text);
    require(it != index->initial.end(), "WordPiece vocabulary: no ", role, " token '", text, "'");
    index->specials.emplace_back(text, it->second);
    return it->second;
  };
  unk_ = special(options_.unk_token, "unknown");
  cls_ = special(options_.cls_token, "[CLS]");
  sep_ = special(options_.sep_token, "[SEP]");
  pad_ = special(options_.pad_token, "padding");
  if (index->initial.contains(options_.mask_token)) special(options_.mask_token, "mask");
  std::sort(index->specials.begin(), index->specials.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  index_ = std::move(index);
}

WordPieceTokenizer WordPieceTokenizer::from_file(const std::filesystem::path& vocab_txt, WordPieceOptions options) {
  std::ifstream in(vocab_txt, std::ios::binary);
  require(in.good(), vocab_txt.string(), ": cannot open the WordPiece vocabulary");
  std::vector<std::string> vocab;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab.push_back(line);
  }
  require(!in.bad(), vocab_txt.string(), ": read error");
  try {
    return WordPieceTokenizer(std::move(vocab), std::move(options));
  } catch (const Error& e) {
    fail(vocab_txt.string(), ": ", e.what());
  }
}

std::vector<std::string> WordPieceTokenizer::basic_tokenize(std::string_view text) const {
  std::vector<std::string> words;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) words.push_back(std::move(cur));
    cur.clear();
  };
  auto alone = [&](char32_t cp) {
    flush();
    std::string w;
    unicode::append_utf8(w, cp);
    words.push_back(std::move(w));
  };
  for (std::size_t pos = 0; pos < text.size();) {
    char32_t cp = unicode::next_code_point(text, pos);
    if (cp == 0 || cp == unicode::kReplacement || is_bert_control(cp)) continue;
    if (is_bert_space(cp)) {
      flush();
      continue;
    }
    if (options_.split_cjk && unicode::is_cjk(cp)) {
      alone(cp);
      continue;
    }
    if (options_.lower_case) {
      if (unicode::is_combining_mark(cp)) continue;
      char32_t jamo[3];
      if (const int n = decompose_hangul(cp, jamo); n > 0) {
        for (int i = 0; i < n; ++i) unicode::append_utf8(cur, jamo[i]);
        continue;
      }
      cp = unicode::fold_case_and_accents(cp);
    }
    if (is_bert_punctuation(cp)) {
      alone(cp);
      continue;
    }
    unicode::append_utf8(cur, cp);
  }
  flush();
  return words;
}

void WordPieceTokenizer::word_pieces(std::string_view word, std::vector<int32_t>& out) const {
  // Code point boundaries: pieces never cut a character.
  std::vector<std::size_t> cuts;
  for (std::size_t pos = 0; pos < word.size();) {
    cuts.push_back(pos);
    unicode::next_code_point(word, pos);
  }
  cuts.push_back(word.size());
  const std::size_t chars = cuts.size() - 1;
  if (chars > static_cast<std::size_t>(options_.max_word_chars)) {
    out.push_back(unk_);
    return;
  }
  const std::size_t mark = out.size();
  for (std::size_t start = 0; start < chars;) {
    const PieceIndex& map = start == 0 ? index_->initial : index_->continuation;
    int32_t found = -1;
    std::size_t end = chars;
    for (; end > start; --end) {
      auto it = map.find(word.substr(cuts[start], cuts[end] - cuts[start]));
      if (it != map.end()) {
        found = it->second;
        break;
      }
    }
    if (found < 0) {  // one unmatched remainder makes the whole word unknown
      out.resize(mark);
      out.push_back(unk_);
      return;
    }
    out.push_back(found);
    start = end;
  }
}

std::vector<int32_t> WordPieceTokenizer::tokenize(std::string_view text) const {
  std::vector<int32_t> out;
  auto plain = [&](std::string_view part) {
    for (const auto& w : basic_tokenize(part)) word_pieces(w, out);
  };
  if (!options_.match_special) {
    plain(text);
    return out;
  }
  std::size_t from = 0;
  for (std::size_t pos = text.find('['); pos != std::string_view::npos; pos = text.find('[', pos)) {
    const auto& specials = index_->specials;
    auto hit = std::find_if(specials.begin(), specials.end(),
                            [&](const auto& s) { return text.substr(pos).starts_with(s.first); });
    if (hit == specials.end()) {
      ++pos;
      continue;
    }
    plain(text.substr(from, pos - from));
    out.push_back(hit->second);
    pos += hit->first.size();
    from = pos;
  }
  plain(text.substr(from));
  return out;
}

std::vector<int32_t> WordPieceTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> pieces = tokenize(text);
  const auto keep = static_cast<std::size_t>(options_.max_length - 2);
  if (pieces.size() > keep) pieces.resize(keep);
  std::vector<int32_t> out;
  out.reserve(pieces.size() + 2);
  out.push_back(cls_);
  out.insert(out.end(), pieces.begin(), pieces.end());
  out.push_back(sep_);
  return out;
}

TokenBatch WordPieceTokenizer::encode_batch(std::span<const std::string> texts) const {
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(texts.size());
  std::size_t longest = 0;
  for (const auto& t : texts) {
    rows.push_back(encode(t));
    longest = std::max(longest, rows.back().size());
  }
  TokenBatch b;
  b.size = static_cast<int64_t>(rows.size());
  b.length = static_cast<int64_t>(longest);
  b.ids.assign(rows.size() * longest, pad_);
  b.attention_mask.assign(rows.size() * longest, 0);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    std::copy(rows[r].begin(), rows[r].end(), b.ids.begin() + static_cast<std::ptrdiff_t>(r * longest));
    std::fill_n(b.attention_mask.begin() + static_cast<std::ptrdiff_t>(r * longest), rows[r].size(), 1);
  }
  return b;
}

std::string WordPieceTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  const std::string& cont = options_.continuation;
  for (int32_t id : ids) {
    const std::string& t = token(id);
    if (id == cls_ || id == sep_ || id == pad_) continue;
    if (!cont.empty() && t.size() > cont.size() && t.starts_with(cont)) {
      out.append(t, cont.size());
    } else {
      if (!out.empty()) out.push_back(' ');
      out += t;
    }
  }
  return out;
}

const std::string& WordPieceTokenizer::token(int32_t id) const {
  require(id >= 0 && id < vocab_size(), "WordPiece: token id ", id, " is outside the vocabulary of ", vocab_size());
  return vocab_[static_cast<std::size_t>(id)];
}

std::optional<int32_t> WordPieceTokenizer::find(std::string_view token) const {
  const std::string_view cont = options_.continuation;
  if (!cont.empty() && token.size() > cont.size() && token.starts_with(cont)) {
    auto it = index_->continuation.find(token.substr(cont.size()));
    if (it != index_->continuation.end()) return it->second;
  }
  auto it = index_->initial.find(token);
  if (it == index_->initial.end()) return std::nullopt;
  return it->second;
}

}  // namespace strata::nn
