// Byte-level BPE (GPT-2 family). Text is cut into words by a hand-written equivalent of the GPT-2
// regex, each word's bytes are mapped to their byte tokens, and the merge with the lowest rank is
// applied repeatedly (leftmost first among equal ranks), as Hugging Face tokenizers and llama.cpp do.
#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>

#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::nn {

namespace {

// Token texts packed into one buffer: a 49,152-token vocabulary as std::strings costs about 1.5 MB
// of string headers alone, and an engine holds the tokenizer for its whole lifetime.
class PackedStrings {
 public:
  void reserve(std::size_t n, std::size_t chars) {
    offsets_.reserve(n + 1);
    chars_.reserve(chars);
  }
  void push_back(std::string_view s) {
    chars_.append(s);
    require(chars_.size() <= UINT32_MAX, "BPE vocabulary: more than 4 GiB of token text");
    offsets_.push_back(static_cast<uint32_t>(chars_.size()));
  }
  std::size_t size() const { return offsets_.size() - 1; }
  std::string_view operator[](std::size_t i) const {
    return std::string_view(chars_).substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
  }
  void shrink_to_fit() {
    chars_.shrink_to_fit();
    offsets_.shrink_to_fit();
  }

 private:
  std::string chars_;
  std::vector<uint32_t> offsets_{0};
};

// Text -> id over a PackedStrings, open addressing with linear probing: four bytes per slot instead
// of a node with its own copy of the text per token.
class TokenIndex {
 public:
  void build(const PackedStrings& texts) {
    std::size_t slots = 16;
    while (slots < 2 * texts.size()) slots *= 2;
    slots_.assign(slots, -1);
    for (std::size_t i = 0; i < texts.size(); ++i) {
      std::size_t at = slot_of(texts, texts[i]);
      if (slots_[at] < 0) slots_[at] = static_cast<int32_t>(i);  // a duplicate keeps its first id, as llama.cpp does
    }
  }
  std::optional<int32_t> find(const PackedStrings& texts, std::string_view text) const {
    const int32_t id = slots_[slot_of(texts, text)];
    if (id < 0) return std::nullopt;
    return id;
  }

 private:
  // The slot holding `text`, or the empty slot where it would go.
  std::size_t slot_of(const PackedStrings& texts, std::string_view text) const {
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t at = std::hash<std::string_view>{}(text) & mask;; at = (at + 1) & mask) {
      const int32_t id = slots_[at];
      if (id < 0 || texts[static_cast<std::size_t>(id)] == text) return at;
    }
  }
  std::vector<int32_t> slots_;
};

// GPT-2's byte-to-unicode alphabet: printable Latin-1 bytes stand for themselves, the other 68
// bytes (controls, space, DEL, NBSP, soft hyphen) are moved to U+0100.. in byte order, so that
// every byte is a visible character and a token never contains a space.
std::array<char32_t, 256> byte_alphabet() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

// What the pre-tokenizer's regex classes see: \s, \p{L}, \p{N}, and everything else.
enum class Class : uint8_t { space, letter, number, other };

Class classify(char32_t cp) {
  if (unicode::is_white_space(cp)) return Class::space;
  switch (unicode::category(cp)) {
    case unicode::Category::letter:
      return Class::letter;
    case unicode::Category::number:
      return Class::number;
    default:
      return Class::other;
  }
}

// Cuts text[begin, end) the way 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does, treating `end` as the end of the input (the lookahead does not see past it).
template <class Emit>
void split_gpt2(std::string_view text, std::size_t begin, std::size_t end, Emit&& emit) {
  const std::string_view frag = text.substr(0, end);
  std::size_t pos = begin;
  while (pos < end) {
    std::size_t after = pos;
    const char32_t c = unicode::next_code_point(frag, after);

    if (c == '\'' && after < end) {
      const std::string_view rest = frag.substr(after);
      if (rest.starts_with("re") || rest.starts_with("ve") || rest.starts_with("ll")) {
        emit(pos, after + 2);
        pos = after + 2;
        continue;
      }
      const char n = rest[0];
      if (n == 's' || n == 't' || n == 'm' || n == 'd') {
        emit(pos, after + 1);
        pos = after + 1;
        continue;
      }
    }

    // " ?X+" for X in letters, numbers, other: an optional single ASCII space, then a run of one class.
    std::size_t run = pos;
    Class k = classify(c);
    if (c == ' ' && after < end) {
      std::size_t peek = after;
      const Class next = classify(unicode::next_code_point(frag, peek));
      if (next != Class::space) {
        k = next;
        run = after;
      }
    }
    if (k != Class::space) {
      std::size_t q = run;
      while (q < end) {
        std::size_t n = q;
        if (classify(unicode::next_code_point(frag, n)) != k) break;
        q = n;
      }
      emit(pos, q);
      pos = q;
      continue;
    }

    // White space: all of it when it reaches the end, else all but its last character (which then
    // prefixes the next word through " ?" or stands alone through \s+).
    std::size_t q = after, last_start = pos;
    while (q < end) {
      std::size_t n = q;
      if (!unicode::is_white_space(unicode::next_code_point(frag, n))) break;
      last_start = q;
      q = n;
    }
    const std::size_t stop = (q == end || last_start == pos) ? q : last_start;
    emit(pos, stop);
    pos = stop;
  }
}

// SmolLM2 (and StarCoder) first isolate every \p{N} code point, then run the GPT-2 split on the rest.
template <class Emit>
void split_digits_then_gpt2(std::string_view text, Emit&& emit) {
  std::size_t frag = 0, pos = 0;
  while (pos < text.size()) {
    std::size_t after = pos;
    const char32_t c = unicode::next_code_point(text, after);
    if (unicode::is_number(c)) {
      if (frag < pos) split_gpt2(text, frag, pos, emit);
      emit(pos, after);
      frag = after;
    }
    pos = after;
  }
  if (frag < text.size()) split_gpt2(text, frag, text.size(), emit);
}

struct Merge {
  int32_t rank;
  int32_t result;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

struct BpeTokenizer::Impl {
  PackedStrings tokens;
  PackedStrings bytes;  // what each token decodes to
  std::vector<TokenType> types;
  TokenIndex index;  // over `tokens`
  // (left, right) pair key -> merge, sorted by key: half the size of a hash map's nodes, and the
  // per-call word cache keeps lookups off the hot path.
  std::vector<std::pair<uint64_t, Merge>> merges;

  const Merge* find_merge(int32_t left, int32_t right) const {
    const uint64_t key = pair_key(left, right);
    auto it = std::lower_bound(merges.begin(), merges.end(), key,
                               [](const std::pair<uint64_t, Merge>& e, uint64_t k) { return e.first < k; });
    return it != merges.end() && it->first == key ? &it->second : nullptr;
  }
  std::optional<int32_t> find(std::string_view text) const { return index.find(tokens, text); }
  std::array<int32_t, 256> byte_token{};  // -1: the vocabulary has no token for the byte
  // Texts recognised in the input before pre-tokenization, longest first so that a special token
  // that is a prefix of another never wins over it.
  std::vector<int32_t> specials;
  std::array<bool, 256> special_first{};
  BpePreTokenizer pre = BpePreTokenizer::gpt2;
  int32_t bos = -1, eos = -1;
  bool add_bos = false, add_eos = false;

  void pre_tokenize(std::string_view text, std::vector<std::string_view>& out) const {
    auto emit = [&](std::size_t b, std::size_t e) { out.push_back(text.substr(b, e - b)); };
    if (pre == BpePreTokenizer::smollm)
      split_digits_then_gpt2(text, emit);
    else
      split_gpt2(text, 0, text.size(), emit);
  }

  // Merges one word. Symbols form a linked list over the word's bytes; candidate pairs wait in a
  // min-heap ordered by (rank, position) and are checked against the list when popped, so a merge
  // costs O(log n) instead of a rescan of the word.
  void merge_word(std::string_view word, std::vector<int32_t>& out) const {
    // Bytes without a token are left out, as Hugging Face tokenizers and llama.cpp leave them out.
    std::vector<int32_t> id;
    id.reserve(word.size());
    for (const char ch : word)
      if (const int32_t t = byte_token[static_cast<unsigned char>(ch)]; t >= 0) id.push_back(t);
    const int n = static_cast<int>(id.size());
    if (n <= 1) {
      out.insert(out.end(), id.begin(), id.end());
      return;
    }
    std::vector<int32_t> prev(static_cast<std::size_t>(n)), next(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      prev[static_cast<std::size_t>(i)] = i - 1;
      next[static_cast<std::size_t>(i)] = i + 1 < n ? i + 1 : -1;
    }
    struct Candidate {
      int32_t rank, pos, left, right;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    auto consider = [&](int32_t pos) {
      const int32_t r = next[static_cast<std::size_t>(pos)];
      if (r < 0) return;
      const int32_t a = id[static_cast<std::size_t>(pos)], b = id[static_cast<std::size_t>(r)];
      if (const Merge* m = find_merge(a, b)) heap.push({m->rank, pos, a, b});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      const auto p = static_cast<std::size_t>(c.pos);
      const int32_t r = next[p];
      if (id[p] != c.left || r < 0 || id[static_cast<std::size_t>(r)] != c.right) continue;  // stale
      id[p] = find_merge(c.left, c.right)->result;
      id[static_cast<std::size_t>(r)] = -1;
      next[p] = next[static_cast<std::size_t>(r)];
      if (next[p] >= 0) prev[static_cast<std::size_t>(next[p])] = c.pos;
      if (prev[p] >= 0) consider(prev[p]);
      consider(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = next[static_cast<std::size_t>(i)]) out.push_back(id[static_cast<std::size_t>(i)]);
  }

  // Encodes plain text (no special tokens inside). Words repeat a lot in prose, so each distinct
  // word is merged once per call; the cache keys are views into `text`, which outlives the call.
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const {
    std::vector<std::string_view> words;
    words.reserve(text.size() / 4 + 1);
    pre_tokenize(text, words);
    std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
    std::vector<int32_t> pool;
    for (const auto w : words) {
      auto [it, fresh] = cache.try_emplace(w);
      if (fresh) {
        const auto start = pool.size();
        merge_word(w, pool);
        it->second = {static_cast<uint32_t>(start), static_cast<uint32_t>(pool.size() - start)};
      }
      out.insert(out.end(), pool.begin() + it->second.first, pool.begin() + it->second.first + it->second.second);
    }
  }
};

BpePreTokenizer bpe_pre_tokenizer_from_name(std::string_view name) {
  for (std::string_view n : {"gpt2", "mpt", "olmo", "jais"})
    if (name == n) return BpePreTokenizer::gpt2;
  for (std::string_view n : {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})
    if (name == n) return BpePreTokenizer::smollm;
  fail("tokenizer.ggml.pre: unsupported pre-tokenizer '", name,
       "' (supported: gpt2, mpt, olmo, jais, smollm, starcoder, refact, command-r, codeshell, exaone, minerva)");
}

BpeTokenizer::BpeTokenizer(BpeVocab v) {
  auto impl = std::make_shared<Impl>();
  const auto n = v.tokens.size();
  require(n > 0, "BPE vocabulary: no tokens");
  require(n < static_cast<std::size_t>(INT32_MAX), "BPE vocabulary: ", n, " tokens is too many");
  require(v.token_types.empty() || v.token_types.size() == n, "BPE vocabulary: ", v.token_types.size(),
          " token types for ", n, " tokens");
  impl->pre = v.pre;
  impl->add_bos = v.add_bos;
  impl->add_eos = v.add_eos;
  auto check_id = [&](int32_t id, const char* what) {
    require(id >= -1 && id < static_cast<int32_t>(n), "BPE vocabulary: ", what, " id ", id, " is outside [0, ", n, ")");
    return id;
  };
  impl->bos = check_id(v.bos_id, "BOS");
  impl->eos = check_id(v.eos_id, "EOS");
  check_id(v.unk_id, "unknown-token");
  check_id(v.pad_id, "padding");

  impl->types.resize(n, TokenType::normal);
  for (std::size_t i = 0; i < v.token_types.size(); ++i) {
    const int32_t t = v.token_types[i];
    require(t >= 0 && t <= 6, "BPE vocabulary: token ", i, " has unknown type ", t);
    impl->types[i] = static_cast<TokenType>(t);
  }

  const auto alphabet = byte_alphabet();
  std::unordered_map<char32_t, unsigned char> from_alphabet;
  for (int b = 0; b < 256; ++b) from_alphabet[alphabet[static_cast<std::size_t>(b)]] = static_cast<unsigned char>(b);

  std::size_t chars = 0;
  for (const std::string& t : v.tokens) chars += t.size();
  impl->tokens.reserve(n, chars);
  impl->bytes.reserve(n, chars);
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& t = v.tokens[i];
    impl->tokens.push_back(t);
    const TokenType type = impl->types[i];
    if (type == TokenType::control || type == TokenType::user_defined) {
      impl->bytes.push_back(t);  // stored as plain text, not in the byte alphabet
      continue;
    }
    out.clear();
    for (std::size_t p = 0; p < t.size();) {
      const std::size_t start = p;
      const char32_t cp = unicode::next_code_point(t, p);
      if (auto it = from_alphabet.find(cp); it != from_alphabet.end())
        out.push_back(static_cast<char>(it->second));
      else
        out.append(t, start, p - start);  // outside the alphabet: keep the character's own bytes
    }
    impl->bytes.push_back(out);
  }
  impl->bytes.shrink_to_fit();
  impl->index.build(impl->tokens);

  std::string one(1, '\0');
  for (int b = 0; b < 256; ++b) {
    one.clear();
    unicode::append_utf8(one, alphabet[static_cast<std::size_t>(b)]);
    // Real vocabularies lack some bytes (SmolLM2 has no token for 21 of them: 0xC0, 0xC1, 0xF5-0xFF,
    // which UTF-8 never uses, and a few control characters); those bytes cannot be encoded.
    impl->byte_token[static_cast<std::size_t>(b)] = impl->find(one).value_or(-1);
  }

  impl->merges.reserve(v.merges.size());
  std::string joined;
  for (std::size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& m = v.merges[r];
    const auto space = m.find(' ', 1);
    require(space != std::string::npos && space + 1 < m.size(), "BPE merges: entry ", r, " ('", m,
            "') is not two tokens separated by a space");
    const std::string_view left = std::string_view(m).substr(0, space), right = std::string_view(m).substr(space + 1);
    joined.assign(left).append(right);
    const auto l = impl->find(left), rt = impl->find(right), j = impl->find(joined);
    require(l && rt && j, "BPE merges: entry ", r, " ('", m, "') names a token that is not in the vocabulary");
    impl->merges.push_back({pair_key(*l, *rt), Merge{static_cast<int32_t>(r), *j}});
  }
  // A repeated pair keeps its first (highest-priority) rank: a stable sort puts it first, and the
  // later copies are dropped.
  std::stable_sort(impl->merges.begin(), impl->merges.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  impl->merges.erase(std::unique(impl->merges.begin(), impl->merges.end(),
                                 [](const auto& a, const auto& b) { return a.first == b.first; }),
                     impl->merges.end());
  impl->merges.shrink_to_fit();

  for (std::size_t i = 0; i < n; ++i) {
    const TokenType type = impl->types[i];
    if ((type == TokenType::control || type == TokenType::user_defined) && !v.tokens[i].empty())
      impl->specials.push_back(static_cast<int32_t>(i));
  }
  std::stable_sort(impl->specials.begin(), impl->specials.end(), [&](int32_t a, int32_t b) {
    return v.tokens[static_cast<std::size_t>(a)].size() > v.tokens[static_cast<std::size_t>(b)].size();
  });
  for (int32_t s : impl->specials)
    impl->special_first[static_cast<unsigned char>(v.tokens[static_cast<std::size_t>(s)][0])] = true;

  impl_ = std::move(impl);
}

namespace {

const nlohmann::json* find_key(const nlohmann::json& meta, const char* key) {
  auto it = meta.find(key);
  return it == meta.end() || it->is_null() ? nullptr : &*it;
}

template <class T>
std::vector<T> json_array(const nlohmann::json& meta, const char* key, std::string_view what, bool required) {
  const nlohmann::json* v = find_key(meta, key);
  if (!v) {
    require(!required, what, ": metadata has no ", key);
    return {};
  }
  require(v->is_array(), what, ": ", key, " is not an array");
  std::vector<T> out;
  out.reserve(v->size());
  for (std::size_t i = 0; i < v->size(); ++i) {
    const auto& e = (*v)[i];
    if constexpr (std::is_same_v<T, std::string>) {
      require(e.is_string(), what, ": ", key, "[", i, "] is not a string");
      out.push_back(e.get<std::string>());
    } else {
      require(e.is_number_integer(), what, ": ", key, "[", i, "] is not an integer");
      out.push_back(e.get<T>());
    }
  }
  return out;
}

int32_t json_id(const nlohmann::json& meta, const char* key, std::string_view what) {
  const nlohmann::json* v = find_key(meta, key);
  if (!v) return -1;
  require(v->is_number_integer(), what, ": ", key, " is not an integer");
  const int64_t id = v->get<int64_t>();
  require(id >= -1 && id <= INT32_MAX, what, ": ", key, " = ", id, " is not a token id");
  return static_cast<int32_t>(id);
}

bool json_flag(const nlohmann::json& meta, const char* key, std::string_view what, bool fallback) {
  const nlohmann::json* v = find_key(meta, key);
  if (!v) return fallback;
  require(v->is_boolean(), what, ": ", key, " is not a boolean");
  return v->get<bool>();
}

}  // namespace

BpeTokenizer BpeTokenizer::from_gguf_metadata(const nlohmann::json& meta, std::string_view what) {
  require(meta.is_object(), what, ": metadata is not a JSON object");
  const nlohmann::json* model = find_key(meta, "tokenizer.ggml.model");
  require(model != nullptr, what, ": metadata has no tokenizer.ggml.model");
  require(model->is_string() && model->get<std::string>() == "gpt2", what, ": tokenizer.ggml.model is ", model->dump(),
          ", but only byte-level BPE (\"gpt2\") is supported");
  BpeVocab v;
  v.tokens = json_array<std::string>(meta, "tokenizer.ggml.tokens", what, true);
  v.merges = json_array<std::string>(meta, "tokenizer.ggml.merges", what, true);
  v.token_types = json_array<int32_t>(meta, "tokenizer.ggml.token_type", what, false);
  if (const nlohmann::json* pre = find_key(meta, "tokenizer.ggml.pre")) {
    require(pre->is_string(), what, ": tokenizer.ggml.pre is not a string");
    try {
      v.pre = bpe_pre_tokenizer_from_name(pre->get<std::string>());
    } catch (const Error& e) {
      fail(what, ": ", e.what());
    }
  }
  v.bos_id = json_id(meta, "tokenizer.ggml.bos_token_id", what);
  v.eos_id = json_id(meta, "tokenizer.ggml.eos_token_id", what);
  v.unk_id = json_id(meta, "tokenizer.ggml.unknown_token_id", what);
  v.pad_id = json_id(meta, "tokenizer.ggml.padding_token_id", what);
  v.add_bos = json_flag(meta, "tokenizer.ggml.add_bos_token", what, false);
  v.add_eos = json_flag(meta, "tokenizer.ggml.add_eos_token", what, false);
  try {
    return BpeTokenizer(std::move(v));
  } catch (const Error& e) {
    fail(what, ": ", e.what());
  }
}

BpeTokenizer BpeTokenizer::from_model(const io::Model& model) {
  return from_gguf_metadata(model.metadata(), model.path().string());
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, const BpeEncodeOptions& options) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (options.add_special && m.add_bos && m.bos >= 0) out.push_back(m.bos);

  auto matchable = [&](int32_t id) {
    return options.parse_special || m.types[static_cast<std::size_t>(id)] == TokenType::user_defined;
  };
  const bool any_special = std::any_of(m.specials.begin(), m.specials.end(), [&](int32_t id) { return matchable(id); });
  if (!any_special) {
    m.encode_plain(text, out);
  } else {
    std::size_t plain = 0;
    for (std::size_t pos = 0; pos < text.size();) {
      int32_t hit = -1;
      if (m.special_first[static_cast<unsigned char>(text[pos])]) {
        for (int32_t id : m.specials)
          if (matchable(id) && text.substr(pos).starts_with(m.tokens[static_cast<std::size_t>(id)])) {
            hit = id;
            break;
          }
      }
      if (hit < 0) {
        ++pos;
        continue;
      }
      if (plain < pos) m.encode_plain(text.substr(plain, pos - plain), out);
      out.push_back(hit);
      pos += m.tokens[static_cast<std::size_t>(hit)].size();
      plain = pos;
    }
    if (plain < text.size()) m.encode_plain(text.substr(plain), out);
  }

  if (options.add_special && m.add_eos && m.eos >= 0) out.push_back(m.eos);
  return out;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string out;
  for (int32_t id : ids) {
    require(id >= 0 && id < static_cast<int32_t>(m.tokens.size()), "BPE decode: token id ", id,
            " is outside the vocabulary of ", m.tokens.size());
    if (skip_special && m.types[static_cast<std::size_t>(id)] == TokenType::control) continue;
    out += m.bytes[static_cast<std::size_t>(id)];
  }
  return out;
}

std::vector<std::string_view> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string_view> out;
  impl_->pre_tokenize(text, out);
  return out;
}

int32_t BpeTokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }

std::string_view BpeTokenizer::token(int32_t id) const {
  require(id >= 0 && id < vocab_size(), "BPE: token id ", id, " is outside the vocabulary of ", vocab_size());
  return impl_->tokens[static_cast<std::size_t>(id)];
}

std::string_view BpeTokenizer::token_bytes(int32_t id) const {
  require(id >= 0 && id < vocab_size(), "BPE: token id ", id, " is outside the vocabulary of ", vocab_size());
  return impl_->bytes[static_cast<std::size_t>(id)];
}

TokenType BpeTokenizer::token_type(int32_t id) const {
  require(id >= 0 && id < vocab_size(), "BPE: token id ", id, " is outside the vocabulary of ", vocab_size());
  return impl_->types[static_cast<std::size_t>(id)];
}

std::optional<int32_t> BpeTokenizer::find(std::string_view token) const { return impl_->find(token); }

BpePreTokenizer BpeTokenizer::pre_tokenizer() const { return impl_->pre; }
int32_t BpeTokenizer::bos_id() const { return impl_->bos; }
int32_t BpeTokenizer::eos_id() const { return impl_->eos; }

}  // namespace strata::nn
