// Scalar reference dequantizers, written from the block layouts in ggml-common.h and the arithmetic
// of ggml's reference to_float functions (dequantize_row_*), in the same operation order.
//
// Why the results are bit-exact whatever the compiler does: the scales are binary16 (11 significant
// bits) or small integers and the quants have at most 8 bits, so every intermediate (d * sc, dmin * m,
// q * d before a min is added) is exact in binary32, and each output is a single rounding of the exact
// mathematical value. Fusing a multiply into the following add (FMA), or re-associating d * sc * q
// (Q6_K, whose final product is the one that rounds), therefore cannot change a bit, and SIMD or CUDA
// variants have the same freedom. Q8_K's scale is a full float, but d * q is one rounding there too.
#include "strata/kernels/ggml_dequant.hpp"

#include <cstring>
#include <limits>
#include <string>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"

namespace strata::kernels {

namespace {

inline float h2f(uint16_t bits) { return f16_to_f32(f16{bits}); }

// Scale and min of sub-block j from the 12 bytes that pack eight 6-bit scales and eight 6-bit mins
// of Q4_K / Q5_K: sub-blocks 0..3 sit in the low six bits of bytes 0..3 (scales) and 4..7 (mins);
// sub-blocks 4..7 keep their low four bits in bytes 8..11 and their top two bits in the spare high
// bits of bytes 0..7.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

inline uint32_t load_le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

}  // namespace

void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (x[i].qs[j] & 0x0F) - 8;
      const int hi = (x[i].qs[j] >> 4) - 8;
      y[j] = static_cast<float>(lo) * d;
      y[j + kQK / 2] = static_cast<float>(hi) * d;
    }
  }
}

void dequantize_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    const float m = h2f(x[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(x[i].qs[j] & 0x0F) * d + m;
      y[j + kQK / 2] = static_cast<float>(x[i].qs[j] >> 4) * d + m;
    }
  }
}

void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    const uint32_t qh = load_le32(x[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const uint32_t h0 = ((qh >> j) << 4) & 0x10;
      const uint32_t h1 = (qh >> (j + 12)) & 0x10;
      const int lo = static_cast<int>((x[i].qs[j] & 0x0Fu) | h0) - 16;
      const int hi = static_cast<int>((x[i].qs[j] >> 4) | h1) - 16;
      y[j] = static_cast<float>(lo) * d;
      y[j + kQK / 2] = static_cast<float>(hi) * d;
    }
  }
}

void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    const float m = h2f(x[i].m);
    const uint32_t qh = load_le32(x[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const uint32_t h0 = ((qh >> j) << 4) & 0x10;
      const uint32_t h1 = (qh >> (j + 12)) & 0x10;
      const uint32_t lo = (x[i].qs[j] & 0x0Fu) | h0;
      const uint32_t hi = (x[i].qs[j] >> 4) | h1;
      y[j] = static_cast<float>(lo) * d + m;
      y[j + kQK / 2] = static_cast<float>(hi) * d + m;
    }
  }
}

void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void dequantize_q2_k(const BlockQ2_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float dmin = h2f(x[i].dmin);
    const uint8_t* q = x[i].qs;
    int is = 0;
    // Two halves of 128; in each, four 2-bit planes of 32 bytes, each plane two sub-blocks of 16.
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part) {
          const uint8_t sc = x[i].scales[is++];
          const float dl = d * static_cast<float>(sc & 0xF);
          const float ml = dmin * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; ++l)
            *y++ = dl * static_cast<float>((q[l + 16 * part] >> shift) & 3) - ml;
        }
      }
    }
  }
}

void dequantize_q3_k(const BlockQ3_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d_all = h2f(x[i].d);
    // Unpack sixteen 6-bit scales: low four bits from bytes 0..7 (low nibbles for 0..7, high nibbles
    // for 8..15), top two bits from bytes 8..11, two bits per scale.
    const uint8_t* s = x[i].scales;
    int8_t scales[16];
    for (int k = 0; k < 16; ++k) {
      const int low = (k < 8) ? (s[k] & 0xF) : (s[k - 8] >> 4);
      const int high = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
      scales[k] = static_cast<int8_t>((low | (high << 4)) - 32);
    }
    const uint8_t* q = x[i].qs;
    const uint8_t* hm = x[i].hmask;
    uint8_t bit = 1;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, bit = static_cast<uint8_t>(bit << 1)) {
        for (int part = 0; part < 2; ++part) {
          const float dl = d_all * static_cast<float>(scales[is++]);
          for (int l = 0; l < 16; ++l) {
            const int idx = l + 16 * part;
            const int v = ((q[idx] >> shift) & 3) - ((hm[idx] & bit) ? 0 : 4);
            *y++ = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

void dequantize_q4_k(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float dmin = h2f(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (int is = 0; is < 8; is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, x[i].scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      scale_min_k4(is + 1, x[i].scales, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q5_k(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float dmin = h2f(x[i].dmin);
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < 8; is += 2, ql += 32) {
      uint8_t sc, m;
      scale_min_k4(is, x[i].scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      scale_min_k4(is + 1, x[i].scales, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l)
        *y++ = d1 * static_cast<float>((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l)
        *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
      u1 = static_cast<uint8_t>(u1 << 2);
      u2 = static_cast<uint8_t>(u2 << 2);
    }
  }
}

void dequantize_q6_k(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

void dequantize_q8_k(const BlockQ8_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK_K)
    for (int j = 0; j < kQK_K; ++j) y[j] = x[i].d * static_cast<float>(x[i].qs[j]);
}

void dequantize_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * static_cast<float>(kIq4nlValues[x[i].qs[j] & 0xF]);
      y[j + kQK / 2] = d * static_cast<float>(kIq4nlValues[x[i].qs[j] >> 4]);
    }
  }
}

void dequantize_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const uint8_t* qs = x[i].qs;
    for (int ib = 0; ib < kQK_K / 32; ++ib, y += 32, qs += 16) {
      const int ls = ((x[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((x[i].scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d * static_cast<float>(ls - 32);
      for (int j = 0; j < 16; ++j) {
        y[j] = dl * static_cast<float>(kIq4nlValues[qs[j] & 0xF]);
        y[j + 16] = dl * static_cast<float>(kIq4nlValues[qs[j] >> 4]);
      }
    }
  }
}

// ---- dispatch -----------------------------------------------------------------------------------

namespace {

// Runs a block decoder over raw bytes. Tensor data in a GGUF file is aligned, but bytes handed in
// from elsewhere (a fuzzer, a network buffer) need not be; those are staged through an aligned
// buffer so no block is read through a misaligned pointer.
template <class Block>
void run_blocks(void (*fn)(const Block*, float*, int64_t), std::span<const std::byte> bytes, float* out,
                int64_t nb, int64_t per_block) {
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(Block) == 0) {
    fn(reinterpret_cast<const Block*>(bytes.data()), out, nb);
    return;
  }
  constexpr int64_t kChunk = 64;
  Block staged[kChunk];
  for (int64_t b = 0; b < nb; b += kChunk) {
    const int64_t n = std::min(kChunk, nb - b);
    std::memcpy(staged, bytes.data() + b * static_cast<int64_t>(sizeof(Block)), static_cast<std::size_t>(n) * sizeof(Block));
    fn(staged, out + b * per_block, n);
  }
}

template <class T>
void convert_plain(std::span<const std::byte> bytes, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, bytes.data() + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
    out[i] = static_cast<float>(v);
  }
}

}  // namespace

bool ggml_can_dequantize(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::F64:
    case GgmlType::I8: case GgmlType::I16: case GgmlType::I32: case GgmlType::I64:
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
    case GgmlType::Q8_0: case GgmlType::Q2_K: case GgmlType::Q3_K:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: case GgmlType::Q8_K:
    case GgmlType::IQ4_NL: case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

uint64_t ggml_nbytes(GgmlType t, int64_t n) {
  const auto* traits = ggml_type_traits(static_cast<uint32_t>(t));
  require(traits != nullptr, "ggml type id ", static_cast<uint32_t>(t), " is unknown");
  require(n >= 0, traits->name, ": negative element count ", n);
  require(n % traits->block_size == 0, traits->name, ": ", n, " elements are not a whole number of ",
          traits->block_size, "-element blocks");
  const uint64_t blocks = static_cast<uint64_t>(n) / traits->block_size;
  require(blocks <= std::numeric_limits<uint64_t>::max() / traits->type_size, traits->name, ": ", n,
          " elements overflow a byte count");
  return blocks * traits->type_size;
}

void dequantize(GgmlType t, std::span<const std::byte> blocks, float* out, int64_t n) {
  const auto* traits = ggml_type_traits(static_cast<uint32_t>(t));
  require(traits != nullptr, "dequantize: ggml type id ", static_cast<uint32_t>(t), " is unknown");
  require(ggml_can_dequantize(t), "dequantize: type ", traits->name, " is not supported");
  const uint64_t want = ggml_nbytes(t, n);
  require(blocks.size() == want, "dequantize ", traits->name, ": ", n, " elements need ", want, " bytes, got ",
          blocks.size());
  if (n == 0) return;  // `out` may then be null, which memcpy must never see
  const int64_t nb = n / traits->block_size;
  switch (t) {
    case GgmlType::F32:
      std::memcpy(out, blocks.data(), static_cast<std::size_t>(want));
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, blocks.data() + 2 * i, 2);
        out[i] = f16_to_f32(f16{h});
      }
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, blocks.data() + 2 * i, 2);
        out[i] = bf16_to_f32(bf16{h});
      }
      return;
    case GgmlType::F64: return convert_plain<double>(blocks, out, n);
    case GgmlType::I8: return convert_plain<int8_t>(blocks, out, n);
    case GgmlType::I16: return convert_plain<int16_t>(blocks, out, n);
    case GgmlType::I32: return convert_plain<int32_t>(blocks, out, n);
    case GgmlType::I64: return convert_plain<int64_t>(blocks, out, n);
    case GgmlType::Q4_0: return run_blocks(dequantize_q4_0, blocks, out, nb, kQK);
    case GgmlType::Q4_1: return run_blocks(dequantize_q4_1, blocks, out, nb, kQK);
    case GgmlType::Q5_0: return run_blocks(dequantize_q5_0, blocks, out, nb, kQK);
    case GgmlType::Q5_1: return run_blocks(dequantize_q5_1, blocks, out, nb, kQK);
    case GgmlType::Q8_0: return run_blocks(dequantize_q8_0, blocks, out, nb, kQK);
    case GgmlType::Q2_K: return run_blocks(dequantize_q2_k, blocks, out, nb, kQK_K);
    case GgmlType::Q3_K: return run_blocks(dequantize_q3_k, blocks, out, nb, kQK_K);
    case GgmlType::Q4_K: return run_blocks(dequantize_q4_k, blocks, out, nb, kQK_K);
    case GgmlType::Q5_K: return run_blocks(dequantize_q5_k, blocks, out, nb, kQK_K);
    case GgmlType::Q6_K: return run_blocks(dequantize_q6_k, blocks, out, nb, kQK_K);
    case GgmlType::Q8_K: return run_blocks(dequantize_q8_k, blocks, out, nb, kQK_K);
    case GgmlType::IQ4_NL: return run_blocks(dequantize_iq4_nl, blocks, out, nb, kQK);
    case GgmlType::IQ4_XS: return run_blocks(dequantize_iq4_xs, blocks, out, nb, kQK_K);
    default:
      fail("dequantize: type ", traits->name, " is not supported");
  }
}

std::optional<GgmlType> ggml_type_from_name(std::string_view name) {
  for (const auto& t : kGgmlTypes) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < name.size() && same; ++i) {
      const char a = t.name[i], b = name[i];
      same = a == b || (a >= 'A' && a <= 'Z' && b == a - 'A' + 'a');
    }
    if (same) return t.type;
  }
  return std::nullopt;
}

}  // namespace strata::kernels
