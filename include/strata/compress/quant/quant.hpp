#pragma once
// Integer weight quantization: round-to-nearest (RTN), GPTQ (Frantar et al. 2022, error feedback
// through the inverse Hessian) and AWQ (Lin et al. 2023: activation-aware scales searched per group of
// layers that share an input and folded into what precedes them, then a clipping search; per tensor
// with stored scales in the registry).
//
// One format serves all three, so one reconstruction serves all three:
//   - weights W [rows, cols] are cut, per row, into groups of `group` consecutive inputs (the last
//     group of a row is shorter when `group` does not divide cols; group 0 = the whole row);
//   - each group has an f16 scale s and an integer zero point z; a weight is stored as a code
//     c in [0, 2^bits) and stands for s (c - z);
//   - asymmetric: s = (max - min) / (2^bits - 1) over the group with min <= 0 <= max (the range is
//     widened to hold 0, so that z = round(-min / s) always fits in `bits` bits), z stored;
//     symmetric: s = max|w| / (2^(bits-1) - 1), z = 2^(bits-1) implicit (not stored);
//   - a clipping search (ClipSearch, below) may fit a group on a narrower range than min/max; the
//     weights outside it take the end codes, and the format does not change;
//   - per-tensor AWQ adds one f16 scale per input channel: W' = dequant(codes) diag(channel_scales)^-1
//     (folded AWQ stores none: its codes stand for W diag(s) and s lives in the preceding operation).
// Scales are rounded to f16 before the codes are chosen, so codes are optimal for the scale that is
// stored, and what is reconstructed is exactly what the algorithms evaluated.
//
// Storage (see docs/quantization.md): codes as one LSB-first bitstream over the row-major matrix,
// exactly ceil(rows * cols * bits / 8) bytes; scales f16 [rows, groups]; zero points (asymmetric
// only) as a second bitstream of `bits`-bit values, ceil(rows * groups * bits / 8) bytes; AWQ's
// channel scales f16 [cols].
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/core/eigen.hpp"

namespace strata::compress::quant {

inline constexpr int kMinBits = 2;
inline constexpr int kMaxBits = 8;

struct QuantSpec {
  int bits = 4;          // kMinBits..kMaxBits
  int64_t group = 128;   // inputs per scale; 0 (or >= cols) = one group per row
  bool symmetric = false;

  // The group length for a layer with `cols` inputs (the last group may be shorter).
  int64_t group_size(int64_t cols) const { return group <= 0 || group >= cols ? cols : group; }
  int64_t groups(int64_t cols) const {
    const int64_t g = group_size(cols);
    return g > 0 ? (cols + g - 1) / g : 0;
  }
  int max_code() const { return (1 << bits) - 1; }
  // "bits=4,group=128,asym"; group 0 prints as "group=row".
  std::string knob() const;
};

// Throws strata::Error (naming `what`) unless bits is in [kMinBits, kMaxBits] and group >= 0.
void check_spec(const QuantSpec& spec, std::string_view what);

// Scale and zero point of one group. `scale` is already an f16 value (exactly representable).
struct GroupParams {
  float scale = 0;
  int zero = 0;  // symmetric: 2^(bits-1)
};

// Fits a group of n values x[0], x[stride], ... (RTN's formulas above). A group of zeros gets
// scale 0 (every code then stands for 0). Throws strata::Error when the scale overflows f16.
GroupParams fit_group(const float* x, int64_t n, int64_t stride, const QuantSpec& spec);

// A search over clipped ranges for a group's scale and zero point. With the full range, one outlier
// stretches the grid for the whole group; at 2-3 bits a grid that clips the outlier and resolves
// the other weights finely often reproduces the group better. Candidates are the full range scaled
// by 1 - i / grid for i = 0 .. ceil(max_shrink * grid) - 1 (asymmetric: both ends, which keep
// holding 0; symmetric: max|w|), each with its f16 scale, and the one with the least squared error
// sum_i (x_i - dequant(quant(x_i)))^2 wins (the full range on ties). GPTQ's reference quantizer
// searches the same kind of grid (100 steps, shrinking to 0.2).
struct ClipSearch {
  int grid = 0;             // 0: no search (the full range, RTN's formulas)
  double max_shrink = 0.8;  // the smallest candidate range is (1 - max_shrink) of the full one
  bool enabled() const { return grid > 0; }
};
inline constexpr ClipSearch kMseClip{100, 0.8};

// fit_group with a clipping search (the plain fit when `clip` is disabled). `importance` is null or
// n weights >= 0, one per value in group order (contiguous, whatever the stride): the search then
// minimises sum_i importance_i (x_i - dequant(quant(x_i)))^2, so that the weights of inputs with large
// activations (importance E[x_j^2], the diagonal of H) are not clipped to resolve the others. Never
// worse than the plain fit on that error. Throws strata::Error for a grid < 0 or max_shrink outside
// [0, 1), and when the full range's scale overflows f16.
GroupParams fit_group(const float* x, int64_t n, int64_t stride, const QuantSpec& spec, const ClipSearch& clip,
                      const float* importance = nullptr);

// The code of x under p: clamp(round(x / s) + z, 0, 2^bits - 1) (ties to even); z when s = 0.
inline int quantize_value(float x, const GroupParams& p, int max_code) {
  if (p.scale == 0.0f) return p.zero;
  const float r = std::nearbyint(x / p.scale) + static_cast<float>(p.zero);
  return r < 0.0f ? 0 : (r > static_cast<float>(max_code) ? max_code : static_cast<int>(r));
}
// s (c - z).
inline float dequantize_value(int code, const GroupParams& p) { return p.scale * static_cast<float>(code - p.zero); }

// A quantized matrix with its codes unpacked (one byte each); pack_bits gives the stored form.
struct QuantizedMatrix {
  int64_t rows = 0, cols = 0;
  QuantSpec spec;
  std::vector<uint8_t> codes;        // [rows * cols], row-major
  std::vector<f16> scales;           // [rows * groups], row-major
  std::vector<uint8_t> zeros;        // [rows * groups], asymmetric only
  std::vector<f16> channel_scales;   // [cols], AWQ only; empty otherwise
};

// The float32 weights a quantized matrix stands for. Throws strata::Error when its arrays do not
// match its shape and spec.
RowMatrix<float> dequantize(const QuantizedMatrix& q);

// Bytes each part of the stored form takes.
struct StorageSize {
  uint64_t codes = 0, scales = 0, zeros = 0, channel_scales = 0;
  uint64_t total() const { return codes + scales + zeros + channel_scales; }
};
StorageSize storage_size(int64_t rows, int64_t cols, const QuantSpec& spec, bool channel_scales);

// Packs values (each < 2^bits, 1 <= bits <= 8) into an LSB-first bitstream: value k occupies bits
// [k bits, (k + 1) bits) counted from bit 0 of byte 0; ceil(n bits / 8) bytes, unused high bits of
// the last byte zero. Throws strata::Error for a value out of range.
std::vector<uint8_t> pack_bits(std::span<const uint8_t> values, int bits);
// The inverse: `count` values from a bitstream of exactly ceil(count bits / 8) bytes.
std::vector<uint8_t> unpack_bits(std::span<const uint8_t> packed, uint64_t count, int bits);

// Throws strata::Error naming `name` unless w is non-empty and finite.
void check_weight(const RowMatrix<float>& w, std::string_view name);

// Round to nearest, group by group, on the full range of each group.
QuantizedMatrix rtn(const RowMatrix<float>& w, const QuantSpec& spec, std::string_view name = "weight");
// Round to nearest with each group's range from a clipping search; `importance` is empty (plain
// squared error) or one weight >= 0 per input channel [cols] for the search (e.g. E[x_j^2]).
QuantizedMatrix rtn(const RowMatrix<float>& w, const QuantSpec& spec, const ClipSearch& clip,
                    std::string_view name = "weight", std::span<const float> importance = {});

struct GptqOptions {
  double damp = 0.01;     // H += damp * mean(diag H) I
  int64_t block = 128;    // columns per lazy batch (rounded to a multiple of the group length)
  // Process columns by descending diag(H). Groups stay static: their scales come from the original
  // weights in the original column order, before the loop, so the stored format is unchanged.
  bool act_order = false;
  // How each group's scale and zero point are chosen (a static group: on the original weights; a
  // dynamic one: on the weights as updated when the loop reaches it).
  ClipSearch clip;
  // The search weighs the error of input j by H_jj: the output error of the group's rounding alone,
  // without the cross terms.
  bool clip_weighted = false;
};

// GPTQ with H = X^T X / N [cols, cols] (any positive multiple gives the same result). Inputs with
// H_jj = 0 never reach the output: their weights are zeroed and H_jj set to 1. Without act-order,
// a group's scale is fitted when the loop reaches its first column, on the weights as updated by
// the error feedback so far; whole-row groups are fitted before the loop.
QuantizedMatrix gptq(const RowMatrix<float>& w, const Matrix<double>& h, const QuantSpec& spec,
                     const GptqOptions& options = {}, std::string_view name = "weight");

struct AwqOptions {
  int grid = 20;  // alpha = i / grid for i = 0 .. grid - 1
  // The search scores each alpha on this many evenly spaced rows (all rows when the layer has no
  // more): every row shares the channel scales, so a row sample ranks the candidates almost as the
  // whole matrix does, at a fraction of the R C^2 cost per candidate. 0 = all rows.
  int64_t search_rows = 128;
};

// AWQ's weight clipping search (llm-awq's auto_clip), run after the scales are chosen: for each
// group of each row, the candidates clamp the group to [-m, m] with m = max|w| (1 - i / grid),
// i = 0 .. floor(max_shrink * grid) - 1, and fit the group on the clamped weights (RTN's formulas);
// the one whose rounding and clipping error d minimises the group's output error d^T H_gg d (H_gg:
// the group's block of the input's H, cross terms inside the group included) wins, the full range
// on ties.
struct AwqClip {
  int grid = 20;
  double max_shrink = 0.5;
};

// The channel scales of one input: s_j = max(mean_abs_j, 1e-6 max(mean_abs))^alpha, normalised so
// that max(s) min(s) = 1, rounded to f16 (the floor keeps every scale positive and inside f16's range).
std::vector<f16> awq_channel_scales(const Vector<double>& mean_abs, double alpha);

// What the scale search found for a group of weights that read one input (AWQ's q/k/v after the
// attention norm, gate/up after the FFN norm, o_proj, down_proj; a group of one is a single layer).
struct AwqScales {
  std::vector<f16> scales;  // s [cols]
  double alpha = 0;
  // The joint relative output error of plain RTN of every W_i diag(s), unscaled:
  // sum_i tr(dW_i H dW_i^T) / sum_i tr(W_i H W_i^T) (or the diagonal proxy without H).
  double error = 0;
};

// AWQ's scale search over a group: alpha = i / grid, i = 0 .. grid - 1, scales awq_channel_scales,
// each candidate scored by the group's joint output error above (every matrix on up to
// options.search_rows evenly spaced rows); the winner is checked against alpha = 0 (plain RTN) on
// all rows, so the group is never worse than RTN on that objective. The error is tr(dW H dW^T) with
// `h`, else sum_j d_j ||dW[:, j]||^2 with d = mean_sq (or mean_abs^2 when mean_sq is null). Every
// matrix must have mean_abs.size() inputs. `name` (the group) starts every error message.
AwqScales awq_search_scales(std::span<const RowMatrix<float>* const> ws, const Vector<double>& mean_abs,
                            const Matrix<double>* h, const Vector<double>* mean_sq, const QuantSpec& spec,
                            const AwqOptions& options = {}, std::string_view name = "group");

// W diag(s): the weights a folded model stores (and quantizes) for a layer whose input is divided by s.
RowMatrix<float> scale_columns(const RowMatrix<float>& w, std::span<const f16> scales, std::string_view name = "weight");

// Quantizes W diag(s) (no channel_scales: the scales are folded elsewhere). With `clip`, each group's
// range comes from AWQ's clipping search on the output error of the scaled layer's input x / s, whose
// second moment is diag(s)^-1 H diag(s)^-1; without, plain RTN. `h` is [cols, cols] (a diagonal one
// when only per-channel statistics exist).
QuantizedMatrix awq_quantize(const RowMatrix<float>& w, std::span<const f16> scales, const Matrix<double>& h,
                             const QuantSpec& spec, const AwqClip* clip, std::string_view name = "weight");

// AWQ on a group as the paper runs it: the scale search, then every W_i diag(s) quantized with the
// clipping search (clip = nullptr: without). q[i] stands for W_i diag(s); the model computes the same
// function once s is folded into what precedes the group (fold_scales_into_norm / _rows).
struct AwqGroupResult {
  AwqScales scales;
  std::vector<QuantizedMatrix> q;
};
AwqGroupResult awq_group(std::span<const RowMatrix<float>* const> ws, const Vector<double>& mean_abs,
                         const Matrix<double>& h, const QuantSpec& spec, const AwqOptions& options = {},
                         const AwqClip* clip = nullptr, std::string_view name = "group");

// Folding: the group's input x becomes x / s, so nothing runs at inference time.
// An RMSNorm (or any elementwise-scaled norm) before the group: g_j <- g_j / s_j.
void fold_scales_into_norm(Vector<float>& norm_weight, std::span<const f16> scales, std::string_view name = "norm");
// A linear layer whose output is the group's input, elementwise (v_proj before o_proj when every
// attention head has its own value head; up_proj before down_proj, since silu(gate) * up is linear in
// up's output): row j <- row j / s_j. Throws unless the layer has scales.size() outputs.
void fold_scales_into_rows(RowMatrix<float>& previous, std::span<const f16> scales, std::string_view name = "weight");

struct AwqResult {
  QuantizedMatrix q;   // with channel_scales
  double alpha = 0;    // the exponent chosen
  double error = 0;    // its objective: tr(dW H dW^T) / tr(W H W^T), or the diagonal proxy
};

// AWQ per tensor, what the registry's quant.awq runs (a per-layer compressor cannot change the
// layer before it): awq_search_scales on a group of one, so alpha is this layer's own (not the
// group's), and the scales are stored as f16 channel_scales that reconstruction divides out,
// W' = dequant(q) diag(s)^-1, instead of being folded. With `clip`, the clipping search runs on
// `h`, else on the diagonal of mean_sq (or mean_abs^2); without, plain RTN of W diag(s).
AwqResult awq(const RowMatrix<float>& w, const Vector<double>& mean_abs, const Matrix<double>* h,
              const Vector<double>* mean_sq, const QuantSpec& spec, const AwqOptions& options = {},
              std::string_view name = "weight", const AwqClip* clip = nullptr);

}  // namespace strata::compress::quant
