#pragma once
// Passages of real text for sentence encoders: paragraphs cut into runs of whole sentences, and batches of
// similar length as SentenceEncoder forms them. token_merge_eval reports on them and bench_token times the
// encoder on the same ones.
#include <cstdint>
#include <string>
#include <vector>

#include "strata/nn/dataset.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::nn {

struct PassageOptions {
  int64_t min_tokens = 64;  // WordPiece tokens, [CLS] and [SEP] included
  int64_t max_words = 120;  // a passage is whole sentences of one paragraph, at most this many words
  int64_t limit = 120;      // passages taken, in text order
};

// Paragraphs (blank-line separated) of the slice cut into runs of whole sentences (a sentence ends at a word
// ending in . ! or ?, a closing quote aside) of at most max_words words; those of at least min_tokens tokens,
// up to `limit`. Throws strata::Error naming min_tokens when none qualifies, and the option at fault for
// non-positive options.
std::vector<std::string> sentence_passages(const TextSlice& slice, const WordPieceTokenizer& tokenizer,
                                           const PassageOptions& options = {});

// Texts in batches of at most batch_size, shortest first (similar lengths together); order[i] is the text
// behind the i-th row over all batches in turn, lengths[j] the token count of text j.
struct PassageBatches {
  std::vector<TokenBatch> batches;
  std::vector<int64_t> order;
  std::vector<int64_t> lengths;
};
PassageBatches batch_by_length(const WordPieceTokenizer& tokenizer, const std::vector<std::string>& texts,
                               int64_t batch_size);

}  // namespace strata::nn
