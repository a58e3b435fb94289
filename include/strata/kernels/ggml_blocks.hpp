#pragma once
// ggml's tensor types and the byte layouts of their quantized blocks, as they appear in GGUF files.
// The structs are plain data with the exact sizes of the on-disk blocks (static_assert'ed), so CPU
// and CUDA code can both view a tensor's bytes as an array of blocks. Half-precision fields are kept
// as raw uint16 bit patterns: the host decodes them with strata::f16_to_f32, a device with its own
// intrinsics, and neither needs the other's half type. Multi-byte fields are little-endian, which is
// the only byte order strata reads.
#include <cstdint>
#include <optional>
#include <string_view>

namespace strata::kernels {

// Type ids as stored in a GGUF tensor info. Ids 4, 5 and 31..33, 36..38 belonged to layouts ggml has
// since removed; files using them are rejected.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

// Elements per block and bytes per block of one type; name as gguf-py spells it ("Q4_K").
struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;
  uint32_t block_size;  // elements
  uint32_t type_size;   // bytes
};

inline constexpr int kQK = 32;     // elements per block of the legacy formats (Q4_0 ... Q8_1, IQ4_NL)
inline constexpr int kQK_K = 256;  // elements per super-block of the k-quants and i-quants
inline constexpr int kKScaleSize = 12;

inline constexpr GgmlTypeTraits kGgmlTypes[] = {
    {GgmlType::F32, "F32", 1, 4},
    {GgmlType::F16, "F16", 1, 2},
    {GgmlType::Q4_0, "Q4_0", 32, 18},
    {GgmlType::Q4_1, "Q4_1", 32, 20},
    {GgmlType::Q5_0, "Q5_0", 32, 22},
    {GgmlType::Q5_1, "Q5_1", 32, 24},
    {GgmlType::Q8_0, "Q8_0", 32, 34},
    {GgmlType::Q8_1, "Q8_1", 32, 36},
    {GgmlType::Q2_K, "Q2_K", 256, 84},
    {GgmlType::Q3_K, "Q3_K", 256, 110},
    {GgmlType::Q4_K, "Q4_K", 256, 144},
    {GgmlType::Q5_K, "Q5_K", 256, 176},
    {GgmlType::Q6_K, "Q6_K", 256, 210},
    {GgmlType::Q8_K, "Q8_K", 256, 292},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66},
    {GgmlType::IQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98},
    {GgmlType::IQ1_S, "IQ1_S", 256, 50},
    {GgmlType::IQ4_NL, "IQ4_NL", 32, 18},
    {GgmlType::IQ3_S, "IQ3_S", 256, 110},
    {GgmlType::IQ2_S, "IQ2_S", 256, 82},
    {GgmlType::IQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::I8, "I8", 1, 1},
    {GgmlType::I16, "I16", 1, 2},
    {GgmlType::I32, "I32", 1, 4},
    {GgmlType::I64, "I64", 1, 8},
    {GgmlType::F64, "F64", 1, 8},
    {GgmlType::IQ1_M, "IQ1_M", 256, 56},
    {GgmlType::BF16, "BF16", 1, 2},
    {GgmlType::TQ1_0, "TQ1_0", 256, 54},
    {GgmlType::TQ2_0, "TQ2_0", 256, 66},
    {GgmlType::MXFP4, "MXFP4", 32, 17},
};

// Traits of a raw type id, or nullptr for an id ggml does not (or no longer) define.
constexpr const GgmlTypeTraits* ggml_type_traits(uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}
// Traits of a known type (every enumerator has an entry).
constexpr const GgmlTypeTraits& ggml_traits(GgmlType t) { return *ggml_type_traits(static_cast<uint32_t>(t)); }
constexpr std::string_view ggml_type_name(GgmlType t) { return ggml_traits(t).name; }
constexpr uint32_t ggml_block_size(GgmlType t) { return ggml_traits(t).block_size; }
constexpr uint32_t ggml_type_size(GgmlType t) { return ggml_traits(t).type_size; }
// Parses a type name, case-insensitively ("q4_k" and "Q4_K" both work).
std::optional<GgmlType> ggml_type_from_name(std::string_view name);

// ---- block layouts ------------------------------------------------------------------------------
// Field order and sizes follow ggml's ggml-common.h. `d`, `m`, `dmin` are binary16 bit patterns.

struct BlockQ4_0 {  // x = d * (q - 8)
  uint16_t d;
  uint8_t qs[kQK / 2];  // element j in the low nibble of qs[j], element j+16 in the high nibble
};
struct BlockQ4_1 {  // x = d * q + m
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {  // x = d * (q - 16), q's fifth bit from qh (bit j for element j)
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {  // x = d * q + m
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {  // x = d * q
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ8_1 {  // x = d * q; s = d * sum(q), kept for dot products
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK];
};

// 16 sub-blocks of 16: x = d * scale * q - dmin * min, 4-bit scale and min per sub-block.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];  // low nibble scale, high nibble min
  uint8_t qs[kQK_K / 4];       // 2-bit quants
  uint16_t d;
  uint16_t dmin;
};
// 16 sub-blocks of 16: x = d * (scale - 32) * (q - 4 * !hbit), 6-bit scales packed in 12 bytes.
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];  // high bit of each quant
  uint8_t qs[kQK_K / 4];     // low two bits
  uint8_t scales[12];
  uint16_t d;
};
// 8 sub-blocks of 32: x = d * scale * q - dmin * min, 6-bit scales and mins packed in 12 bytes.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];  // fifth bit
  uint8_t qs[kQK_K / 2];  // low four bits
};
// 16 sub-blocks of 16: x = d * scale * (q - 32), 8-bit signed scales.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];  // low four bits
  uint8_t qh[kQK_K / 4];  // high two bits
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
// Intermediate format of ggml's dot products; its scale is a full float.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
// Non-linear 4-bit: x = d * kIq4nlValues[q].
struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kQK_K / 64];
  uint8_t qs[kQK_K / 2];
};

// The 16 levels of IQ4_NL / IQ4_XS.
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockIQ4_XS) == 136);

// The struct sizes and the traits table must agree, or views of tensor bytes would be misaligned.
static_assert(sizeof(BlockQ4_0) == ggml_type_size(GgmlType::Q4_0));
static_assert(sizeof(BlockQ4_1) == ggml_type_size(GgmlType::Q4_1));
static_assert(sizeof(BlockQ5_0) == ggml_type_size(GgmlType::Q5_0));
static_assert(sizeof(BlockQ5_1) == ggml_type_size(GgmlType::Q5_1));
static_assert(sizeof(BlockQ8_0) == ggml_type_size(GgmlType::Q8_0));
static_assert(sizeof(BlockQ8_1) == ggml_type_size(GgmlType::Q8_1));
static_assert(sizeof(BlockQ2_K) == ggml_type_size(GgmlType::Q2_K));
static_assert(sizeof(BlockQ3_K) == ggml_type_size(GgmlType::Q3_K));
static_assert(sizeof(BlockQ4_K) == ggml_type_size(GgmlType::Q4_K));
static_assert(sizeof(BlockQ5_K) == ggml_type_size(GgmlType::Q5_K));
static_assert(sizeof(BlockQ6_K) == ggml_type_size(GgmlType::Q6_K));
static_assert(sizeof(BlockQ8_K) == ggml_type_size(GgmlType::Q8_K));
static_assert(sizeof(BlockIQ4_NL) == ggml_type_size(GgmlType::IQ4_NL));
static_assert(sizeof(BlockIQ4_XS) == ggml_type_size(GgmlType::IQ4_XS));

}  // namespace strata::kernels
