// Sentence passages of a text slice, and batches of similar length.
#include "strata/nn/passages.hpp"

#include <algorithm>
#include <cctype>
#include <numeric>
#include <sstream>

#include "strata/core/error.hpp"

namespace strata::nn {

std::vector<std::string> sentence_passages(const TextSlice& slice, const WordPieceTokenizer& tok,
                                           const PassageOptions& o) {
  require(o.min_tokens > 0, "passages: option 'min_tokens' is ", o.min_tokens, "; it must be positive");
  require(o.max_words > 0, "passages: option 'max_words' is ", o.max_words, "; it must be positive");
  require(o.limit > 0, "passages: option 'limit' is ", o.limit, "; it must be positive");
  const std::string text = slice.read();
  std::vector<std::string> out;
  std::string para, chunk, sentence;
  int64_t chunk_words = 0, sentence_words = 0;
  const auto full = [&] { return static_cast<int64_t>(out.size()) >= o.limit; };
  const auto emit = [&] {
    if (!chunk.empty() && !full() && static_cast<int64_t>(tok.encode(chunk).size()) >= o.min_tokens)
      out.push_back(chunk);
    chunk.clear();
    chunk_words = 0;
  };
  const auto end_sentence = [&] {
    if (sentence.empty()) return;
    if (chunk_words + sentence_words > o.max_words) emit();
    chunk += (chunk.empty() ? "" : " ") + sentence;
    chunk_words += sentence_words;
    sentence.clear();
    sentence_words = 0;
  };
  const auto end_paragraph = [&] {
    size_t i = 0;
    while (i < para.size()) {
      while (i < para.size() && std::isspace(static_cast<unsigned char>(para[i]))) ++i;
      size_t j = i;
      while (j < para.size() && !std::isspace(static_cast<unsigned char>(para[j]))) ++j;
      if (j > i) {
        const std::string word = para.substr(i, j - i);
        sentence += (sentence.empty() ? "" : " ") + word;
        ++sentence_words;
        const char last = word.back() == '"' && word.size() > 1 ? word[word.size() - 2] : word.back();
        if (last == '.' || last == '!' || last == '?') end_sentence();
      }
      i = j;
    }
    end_sentence();
    emit();
    para.clear();
  };
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      end_paragraph();
      if (full()) break;
    } else {
      para += line + "\n";
    }
  }
  end_paragraph();
  require(!out.empty(), "passages: no passage of ", o.min_tokens, " tokens or more in ", slice.describe(),
          " (option 'min_tokens')");
  return out;
}

PassageBatches batch_by_length(const WordPieceTokenizer& tok, const std::vector<std::string>& texts,
                               int64_t batch_size) {
  require(batch_size > 0, "passages: option 'batch_size' is ", batch_size, "; it must be positive");
  PassageBatches b;
  std::vector<std::vector<int32_t>> ids;
  for (const auto& t : texts) ids.push_back(tok.encode(t));
  b.order.resize(texts.size());
  std::iota(b.order.begin(), b.order.end(), int64_t{0});
  std::stable_sort(b.order.begin(), b.order.end(), [&](int64_t x, int64_t y) {
    return ids[static_cast<size_t>(x)].size() < ids[static_cast<size_t>(y)].size();
  });
  for (size_t first = 0; first < b.order.size(); first += static_cast<size_t>(batch_size)) {
    std::vector<std::string> group;
    const size_t last = std::min(b.order.size(), first + static_cast<size_t>(batch_size));
    for (size_t i = first; i < last; ++i) group.push_back(texts[static_cast<size_t>(b.order[i])]);
    b.batches.push_back(tok.encode_batch(group));
  }
  for (const auto& i : ids) b.lengths.push_back(static_cast<int64_t>(i.size()));
  return b;
}

}  // namespace strata::nn
