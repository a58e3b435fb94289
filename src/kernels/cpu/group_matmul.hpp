#pragma once
// Products of a group-quantized weight matrix with a few tokens, read straight from the layout
// nn::GroupQuantLinear keeps: codes are widened to float in registers, group by group, so a
// product streams only the codes and one scale and zero point per group. The scalar reference is
// the oracle the SIMD versions are tested against (they differ only in the order of the additions).
#include <cstdint>

namespace strata::kernels {

// Codes come in blocks of this many inputs; a group occupies a whole number of blocks.
inline constexpr int64_t kQuantBlock = 32;

// W[r, j] = scale (code - zero) for input j of group k = j / group; the product is
// sum_k scale_k sum_j (code_j - zero_k) x[j], the difference exact in float.
struct GroupQuant {
  int64_t rows = 0, cols = 0;
  int bits = 4;  // 4: two codes a byte; 8: one
  int64_t group = 0;   // inputs a group covers (the last group of a row may cover fewer)
  int64_t groups = 0;  // groups a row
  // Codes a group occupies: group rounded up to kQuantBlock. Inputs past the end of a group take
  // codes that the (zero) padding of the input meets.
  int64_t padded_group = 0;
  // [rows, groups * padded_group] codes. 8-bit: a byte each. 4-bit: each block of 32 codes takes 16
  // bytes, byte i holding code i in its low nibble and code i + 16 in its high one, so that one
  // vector load yields two vectors of consecutive codes.
  const uint8_t* codes = nullptr;
  const float* params = nullptr;  // [rows, groups, 2]: scale, zero point
  int64_t row_bytes() const { return groups * padded_group * bits / 8; }
  int64_t padded_cols() const { return groups * padded_group; }
};

// y[t, r] = sum_j W[r, j] xp[t, j] for rows [r0, r1). xp is the input laid out like the codes:
// [tokens, padded_cols()], input j of group k at k * padded_group + (j - k * group), zero in the
// padding. y is [tokens, rows]; only y[t, r0..r1) is written.
void group_matmul(const GroupQuant& w, const float* xp, int64_t tokens, float* y, int64_t r0, int64_t r1);
void group_matmul_reference(const GroupQuant& w, const float* xp, int64_t tokens, float* y, int64_t r0, int64_t r1);

// The code of padded input p of row r.
inline int group_code(const GroupQuant& w, int64_t r, int64_t p) {
  const uint8_t* row = w.codes + r * w.row_bytes();
  if (w.bits == 8) return row[p];
  const int64_t block = p / kQuantBlock, i = p % kQuantBlock;
  const uint8_t byte = row[block * (kQuantBlock / 2) + i % (kQuantBlock / 2)];
  return i < kQuantBlock / 2 ? byte & 0xF : byte >> 4;
}

}  // namespace strata::kernels
