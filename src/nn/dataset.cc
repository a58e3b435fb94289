#include "strata/nn/dataset.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "strata/core/error.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::nn {

namespace {

uint64_t size_of(const std::filesystem::path& p) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(p, ec);
  require(!ec, p.string(), ": cannot read: ", ec.message());
  return size;
}

// Moves `pos` forward to the first byte of a line (or the end of the file).
uint64_t align_to_line(std::ifstream& in, uint64_t pos, uint64_t size) {
  if (pos == 0 || pos >= size) return std::min(pos, size);
  in.clear();
  in.seekg(static_cast<std::streamoff>(pos - 1));
  char c;
  while (in.get(c)) {
    ++pos;
    if (c == '\n') return pos;  // the byte after the newline
  }
  return size;
}

std::string with_commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace

TextSlice TextSlice::parse(const std::filesystem::path& path, const std::string& range) {
  TextSlice s{path, 0.0, 1.0};
  const auto colon = range.find(':');
  require(colon != std::string::npos, "text slice '", range, "': expected BEGIN:END as fractions, e.g. 0.9:1.0");
  try {
    size_t used = 0;
    s.begin = std::stod(range.substr(0, colon), &used);
    require(used == colon, "");
    const std::string tail = range.substr(colon + 1);
    s.end = std::stod(tail, &used);
    require(used == tail.size(), "");
  } catch (const std::exception&) {
    fail("text slice '", range, "': expected BEGIN:END as fractions, e.g. 0.9:1.0");
  }
  require(0.0 <= s.begin && s.begin < s.end && s.end <= 1.0, "text slice '", range,
          "': need 0 <= begin < end <= 1");
  return s;
}

std::pair<uint64_t, uint64_t> TextSlice::byte_range() const {
  const uint64_t size = size_of(path);
  std::ifstream in(path, std::ios::binary);
  require(static_cast<bool>(in), path.string(), ": cannot open");
  const auto at = [&](double f) {
    return align_to_line(in, static_cast<uint64_t>(std::floor(f * static_cast<double>(size))), size);
  };
  return {at(begin), end >= 1.0 ? size : at(end)};
}

std::string TextSlice::read() const {
  const auto [first, last] = byte_range();
  std::ifstream in(path, std::ios::binary);
  require(static_cast<bool>(in), path.string(), ": cannot open");
  std::string text(last - first, '\0');
  in.seekg(static_cast<std::streamoff>(first));
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  require(static_cast<uint64_t>(in.gcount()) == text.size(), path.string(), ": short read");
  return text;
}

std::string TextSlice::describe() const {
  const auto [first, last] = byte_range();
  char pct[64];
  std::snprintf(pct, sizeof pct, " (%g%%-%g%%)", begin * 100, end * 100);
  return path.filename().string() + " bytes " + with_commas(first) + "-" + with_commas(last) + pct;
}

bool TextSlice::overlaps(const TextSlice& other) const {
  std::error_code ec;
  if (!std::filesystem::equivalent(path, other.path, ec)) return false;
  const auto a = byte_range(), b = other.byte_range();
  return a.first < b.second && b.first < a.second;
}

std::vector<int32_t> tokenize_slice(const BpeTokenizer& tokenizer, const TextSlice& slice, int64_t max_tokens) {
  // The whole slice in one call: cutting the text into pieces would change the tokens at each cut
  // (a newline followed by spaces pre-tokenizes differently when split), and encoding is fast
  // (the 10 MB SOTU corpus takes under a second).
  BpeEncodeOptions opt;
  opt.add_special = false;
  std::vector<int32_t> out = tokenizer.encode(slice.read(), opt);
  if (max_tokens > 0 && static_cast<int64_t>(out.size()) > max_tokens) out.resize(static_cast<size_t>(max_tokens));
  return out;
}

std::vector<std::vector<int32_t>> cut_sequences(const std::vector<int32_t>& tokens, int64_t count, int64_t length,
                                                int32_t bos) {
  require(count > 0 && length > 0, "cut_sequences: need count > 0 and length > 0");
  require(static_cast<int64_t>(tokens.size()) >= count * length, "the text has ", tokens.size(),
          " tokens, fewer than the ", count, " x ", length, " requested");
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<int32_t> s;
    if (bos >= 0) s.push_back(bos);
    s.insert(s.end(), tokens.begin() + i * length, tokens.begin() + (i + 1) * length);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace strata::nn
