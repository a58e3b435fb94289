#pragma once
// llama.cpp importance matrices ("imatrix" files): per linear layer, the sum over calibration tokens
// of x_j^2 for each input channel j, and how many tokens (or chunks) the sum covers. llama-quantize
// weighs its rounding by sum / count = E[x_j^2], the same statistic strata's calibration keeps
// (nn::InputStats::mean_sq), so a llama.cpp user's calibration carries over, and strata's can be
// handed to llama-quantize.
//
// Two layouts, both read (by content) and written (by extension):
//   GGUF (llama.cpp's llama-imatrix default since mid 2025): general.type = "imatrix", string array
//     imatrix.datasets, u32 imatrix.chunk_count and imatrix.chunk_size; per entry NAME an F32 tensor
//     "NAME.in_sum2" of ne {n_in, n_mat} (sums of x^2) and an F32 tensor "NAME.counts" of ne
//     {1, n_mat} (tokens); newer writers add "NAME.in_sum" (sums of x), which is read and ignored.
//   legacy binary (.dat): int32 entry count; per entry int32 name length, the name, int32 ncall,
//     int32 nval, float values[nval] holding E[x^2] * ncall; then, optionally, int32 chunk count and
//     int32 dataset-name length + the name. All little-endian.
// Every count and length is checked against the bytes left before anything is allocated, so a forged
// file fails with strata::Error naming the file and the field.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strata::io {

struct ImatrixEntry {
  std::string name;            // the weight tensor: "blk.0.attn_q.weight"
  int64_t columns = 0;         // input channels per matrix (the weight's columns)
  std::vector<float> sums;     // [n_mat * columns]: sums of x^2 (GGUF), or E[x^2] * ncall (legacy)
  std::vector<float> counts;   // [n_mat]: tokens (GGUF), or ncall (legacy)
  int64_t matrices() const { return static_cast<int64_t>(counts.size()); }
  // E[x_j^2] per value (sums / counts of its matrix); a matrix with count 0 gives 1 (llama.cpp's
  // stand-in for missing data).
  std::vector<double> mean_sq() const;
};

struct Imatrix {
  std::vector<ImatrixEntry> entries;  // sorted by name, as llama.cpp writes them
  std::vector<std::string> datasets;
  int64_t chunk_count = 0;  // chunks the statistics cover
  int64_t chunk_size = 0;   // tokens per chunk (0 where the file does not say: the legacy layout)
  bool legacy = false;      // read from (or meant for) the legacy layout: counts are ncall

  const ImatrixEntry* find(std::string_view name) const;
};

// By content: GGUF by its magic, the legacy layout otherwise. Throws strata::Error naming the file
// and the field for a malformed or truncated file, a GGUF that is not an imatrix (no ".in_sum2"
// tensors), an entry with sums but no counts (or the other way round), sizes that disagree, a
// repeated entry, or a non-finite or negative value.
Imatrix read_imatrix(const std::filesystem::path& path);
Imatrix parse_imatrix(std::span<const std::byte> bytes, std::string name = "<memory>");

// ".dat" -> the legacy layout (ncall = ceil(tokens / chunk_size) per entry, values E[x^2] * ncall,
// as llama-imatrix --output-format dat writes them); anything else -> GGUF. Atomic. Throws for an
// empty imatrix or an entry whose sizes disagree.
void write_imatrix(const Imatrix& imatrix, const std::filesystem::path& path);
std::vector<std::byte> imatrix_gguf_bytes(const Imatrix& imatrix);
std::vector<std::byte> imatrix_legacy_bytes(const Imatrix& imatrix);

// Checks that `imatrix` was made for a model whose linear layers are `layers` (tensor name, input
// columns): every entry must name one of them, with one matrix of that many columns. Throws
// strata::Error naming `file` and the first mismatching entry (in the file's order), and when no
// entry matches any layer. Layers without an entry are allowed (llama.cpp leaves the output head
// out unless asked).
void check_imatrix(const Imatrix& imatrix, std::span<const std::pair<std::string, int64_t>> layers,
                   std::string_view file);

}  // namespace strata::io
