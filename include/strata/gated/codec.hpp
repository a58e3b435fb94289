#pragma once
// The compression stage of a gated model: a sequence's hidden states [tokens, dim] become a small
// byte buffer that the rest of the network (another core, another device) decodes and continues from.
//
//   x (one token, dim floats) -> c = P (x - mu)              PCA projection to `rank` coordinates
//                                                          (rank 0: c = x - mu, all dim coordinates)
//                             -> keep the `keep` largest |c_j| (0: all), drop |c_j| < `threshold`
//                             -> q_j = round(c_j / s), s = max_j |c_j| / 127   (8 bits, per-token scale)
//   decode: x' = mu + P^T c',  c'_j = s q_j on kept coordinates, 0 elsewhere
//
// mu and P (orthonormal rows) are fitted on calibration states and known to both sides; the payload
// carries only the quantized coordinates.
//
// Payload layout (little-endian):
//   0  magic "SGC1"        4  u16 version (1)     6  u16 flags (bit 0: sparse)
//   8  u32 dim             12 u32 coordinates (rank, or dim without projection)
//   16 u32 tokens          20 u32 FNV-1a hash of the whole payload, these 4 bytes skipped
//   24 body, per token:  dense:  f32 scale, coordinates x i8
//                        sparse: f32 scale, u16 count, count x index (u8 when coordinates <= 256,
//                                else u16), count x i8
// Decoding checks the magic, version, sizes against the codec and the buffer length, every index,
// and the hash, and throws strata::Error naming "payload" on any mismatch.
#include <cstdint>
#include <span>
#include <vector>

#include "strata/core/eigen.hpp"

namespace strata::gated {

struct PcaBasis {
  Vector<float> mean;            // dim
  RowMatrix<float> components;   // rank x dim, orthonormal rows, by decreasing variance
  Vector<double> variances;      // rank: variance of the calibration rows along each component
};

// Principal components of the rows of `rows` [n, dim] (mean removed), from the eigenvectors of their
// covariance in double precision; each component's sign is fixed so its largest entry is positive.
// Throws strata::Error naming "rank" outside [1, dim] and "rows" when empty or non-finite.
PcaBasis fit_pca(const RowMatrix<float>& rows, int64_t rank);

struct CodecOptions {
  int64_t rank = 0;        // PCA coordinates kept; 0 = no projection (the centred activations)
  int64_t keep = 0;        // per token, the `keep` largest-magnitude coordinates; 0 = all
  float threshold = 0.0f;  // per token, coordinates with |c| below it dropped; 0 = none
};

class ActivationCodec {
 public:
  // Fits mu (and the PCA basis when options.rank > 0) on calibration states [n, dim]. Throws
  // strata::Error naming "rank", "keep", "threshold" or "calibration" when they do not fit.
  static ActivationCodec fit(const RowMatrix<float>& calibration, const CodecOptions& options);

  int64_t dim() const { return mean_.size(); }
  int64_t coordinates() const { return options_.rank > 0 ? options_.rank : dim(); }
  bool sparse() const { return options_.keep > 0 || options_.threshold > 0; }
  const CodecOptions& options() const { return options_; }
  const Vector<float>& mean() const { return mean_; }
  const RowMatrix<float>& components() const { return basis_; }

  // The coordinates before sparsification and quantization, [tokens, coordinates()].
  RowMatrix<float> coordinates_of(const float* rows, int64_t tokens) const;
  // mu + P^T c for coordinates c [tokens, coordinates()] -> [tokens, dim].
  RowMatrix<float> reconstruct(const RowMatrix<float>& coords) const;

  // rows: tokens x dim floats, row-major.
  std::vector<uint8_t> encode(const float* rows, int64_t tokens) const;
  // The states a payload carries, [tokens, dim].
  RowMatrix<float> decode(std::span<const uint8_t> payload) const;
  // Tokens in a payload, after checking its header.
  int64_t tokens_in(std::span<const uint8_t> payload) const;

  static constexpr std::size_t kHeaderBytes = 24;

 private:
  CodecOptions options_;
  Vector<float> mean_;
  RowMatrix<float> basis_;  // rank x dim; empty without projection
};

}  // namespace strata::gated
