#pragma once
// Cross-layer KV merging after MiniCache (Liu et al. 2024, "MiniCache: KV cache compression in depth
// dimension"): adjacent layers' caches of the same head and tokens point in similar directions, so a
// pair of layers can share one direction per token and keep only their own norms.
//
// For token i with rows a_i (layer l - 1) and b_i (layer l): u = a_i / |a_i|, v = b_i / |b_i|,
// Omega = arccos(u . v), and the shared direction is the spherical interpolation
//   e = [sin((1 - t) Omega) u + sin(t Omega) v] / sin Omega,
// a unit vector between the two. Layer l - 1 is restored as |a_i| e, layer l as |b_i| e: the norms
// are exact, only the direction is approximate. Tokens whose directions are far apart
// (angular distance Omega / pi above a threshold) are retained: both layers' rows kept exactly.
//
// Per head and token pair, a merged token stores head_dim + 2 floats instead of 2 head_dim.
//
// This works on recorded caches (examples/kv_quant_eval); kv::Session does not run it.
#include <cstdint>
#include <span>
#include <vector>

#include "strata/core/eigen.hpp"

namespace strata::kv {

struct MergeOptions {
  // Interpolation weight of the second layer: 0 gives layer l - 1's direction, 1 layer l's.
  double t = 0.5;
  // Tokens with angular distance Omega / pi (in [0, 1]) above this are retained unmerged; 1 merges
  // every token.
  double retain_distance = 0.5;
};

// Omega / pi per token for two [tokens, head_dim] caches (0 for a token whose row is zero in either).
Vector<float> angular_distances(const RowMatrix<float>& a, const RowMatrix<float>& b);
// MiniCache's relative rule: d_min + gamma (d_max - d_min) over the given distances, as a
// retain_distance (gamma = 0.05 in the paper's setting; gamma = 1 retains nothing).
double relative_threshold(const Vector<float>& distances, double gamma);

struct MergedPair {
  int64_t tokens = 0, head_dim = 0;
  RowMatrix<float> direction;     // [merged tokens, head_dim] unit rows (zero where both rows were zero)
  Vector<float> norm_a, norm_b;   // [merged tokens] |a_i|, |b_i|
  std::vector<int32_t> retained;  // ascending token indices kept unmerged
  RowMatrix<float> retained_a, retained_b;  // [retained, head_dim] their exact rows

  int64_t merged_tokens() const { return direction.rows(); }
  // Layer 0 (the first argument of merge) or 1: [tokens, head_dim], merged tokens as norm * direction.
  RowMatrix<float> restore(int layer) const;
  // Directions, norms, retained indices (4 bytes each) and retained rows, as held.
  uint64_t bytes() const;
};

// Merges two layers' caches of one head over the same tokens, a and b both [tokens, head_dim].
MergedPair merge(const RowMatrix<float>& a, const RowMatrix<float>& b, const MergeOptions& options = {});

}  // namespace strata::kv
