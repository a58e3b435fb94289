#pragma once
// Calibration and evaluation data from real text: named slices of a corpus file, cut at line
// boundaries so that adjacent slices partition the file, tokenized lazily.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace strata::nn {

class BpeTokenizer;

struct TextSlice {
  std::filesystem::path path;
  double begin = 0.0, end = 1.0;  // fractions of the file's bytes

  // "0.9:1.0" -> {0.9, 1.0}; throws strata::Error for anything else.
  static TextSlice parse(const std::filesystem::path& path, const std::string& range);
  // Byte range [first, last) after aligning both ends to the start of a line.
  std::pair<uint64_t, uint64_t> byte_range() const;
  std::string read() const;
  // "moby_dick.txt bytes 1,101,234-1,223,593 (90%-100%)" for reports.
  std::string describe() const;
  bool overlaps(const TextSlice& other) const;
};

// Tokenizes the slice (no BOS/EOS added) and keeps the first `max_tokens` tokens (0 = all).
std::vector<int32_t> tokenize_slice(const BpeTokenizer& tokenizer, const TextSlice& slice, int64_t max_tokens = 0);

// `count` consecutive, non-overlapping sequences of `length` tokens from the start of `tokens`,
// each prefixed with `bos` when bos >= 0 (so its length is then length + 1). Throws strata::Error
// when the text is too short, saying how many tokens it has.
std::vector<std::vector<int32_t>> cut_sequences(const std::vector<int32_t>& tokens, int64_t count, int64_t length,
                                                int32_t bos);

}  // namespace strata::nn
