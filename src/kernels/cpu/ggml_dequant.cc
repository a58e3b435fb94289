// Scalar reference dequantizers, written from the block layouts in ggml-common.h and the arithmetic
// of ggml's reference to_float functions (dequantize_row_*), in the same operation order.
//
// Why the results are bit-exact whatever the compiler does: the scales are binary16 (11 significant
// bits) or small integers and the quants have at most 8 bits, so every intermediate (d * sc, dmin * m,
// q * d before a min is added) is exact in binary32, and each output is a single rounding of the exact
// mathematical value. Fusing a multiply into the following add (FMA), or re-associating d * sc * q
// (Q6_K, whose final product is the one that rounds), therefore cannot change a bit, and SIMD or CUDA
// variants have the same freedom. Q8_K's scale is a full float, but d * q is one rounding there too.
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/core/dtype.hpp"

namespace strata::kernels::detail {

namespace {

inline float h2f(uint16_t bits) { return f16_to_f32(f16{bits}); }

inline uint32_t load_le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

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
      unpack_scale_min_k4(is, x[i].scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      unpack_scale_min_k4(is + 1, x[i].scales, sc, m);
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
      unpack_scale_min_k4(is, x[i].scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      unpack_scale_min_k4(is + 1, x[i].scales, sc, m);
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

}  // namespace

// The codec's row functions, beside the kernels so that each kernel inlines into its row function.
void dequantize_row_q4_0(const void* in, int64_t n, float* out) {
  decode_units<BlockQ4_0, kQK>(in, n / kQK, out, dequantize_q4_0_simd);
}
void dequantize_row_q4_0_scalar(const void* in, int64_t n, float* out) {
  decode_units<BlockQ4_0, kQK>(in, n / kQK, out, dequantize_q4_0);
}
void dequantize_row_q4_1(const void* in, int64_t n, float* out) {
  decode_units<BlockQ4_1, kQK>(in, n / kQK, out, dequantize_q4_1_simd);
}
void dequantize_row_q4_1_scalar(const void* in, int64_t n, float* out) {
  decode_units<BlockQ4_1, kQK>(in, n / kQK, out, dequantize_q4_1);
}
void dequantize_row_q5_0(const void* in, int64_t n, float* out) {
  decode_units<BlockQ5_0, kQK>(in, n / kQK, out, dequantize_q5_0_simd);
}
void dequantize_row_q5_0_scalar(const void* in, int64_t n, float* out) {
  decode_units<BlockQ5_0, kQK>(in, n / kQK, out, dequantize_q5_0);
}
void dequantize_row_q5_1(const void* in, int64_t n, float* out) {
  decode_units<BlockQ5_1, kQK>(in, n / kQK, out, dequantize_q5_1_simd);
}
void dequantize_row_q5_1_scalar(const void* in, int64_t n, float* out) {
  decode_units<BlockQ5_1, kQK>(in, n / kQK, out, dequantize_q5_1);
}
void dequantize_row_q8_0(const void* in, int64_t n, float* out) {
  decode_units<BlockQ8_0, kQK>(in, n / kQK, out, dequantize_q8_0_simd);
}
void dequantize_row_q8_0_scalar(const void* in, int64_t n, float* out) {
  decode_units<BlockQ8_0, kQK>(in, n / kQK, out, dequantize_q8_0);
}
void dequantize_row_q2_k(const void* in, int64_t n, float* out) {
  decode_units<BlockQ2_K, kQK_K>(in, n / kQK_K, out, dequantize_q2_k);
}
void dequantize_row_q3_k(const void* in, int64_t n, float* out) {
  decode_units<BlockQ3_K, kQK_K>(in, n / kQK_K, out, dequantize_q3_k);
}
void dequantize_row_q4_k(const void* in, int64_t n, float* out) {
  decode_units<BlockQ4_K, kQK_K>(in, n / kQK_K, out, dequantize_q4_k);
}
void dequantize_row_q5_k(const void* in, int64_t n, float* out) {
  decode_units<BlockQ5_K, kQK_K>(in, n / kQK_K, out, dequantize_q5_k);
}
void dequantize_row_q6_k(const void* in, int64_t n, float* out) {
  decode_units<BlockQ6_K, kQK_K>(in, n / kQK_K, out, dequantize_q6_k);
}
void dequantize_row_q8_k(const void* in, int64_t n, float* out) {
  decode_units<BlockQ8_K, kQK_K>(in, n / kQK_K, out, dequantize_q8_k);
}
void dequantize_row_iq4_nl(const void* in, int64_t n, float* out) {
  decode_units<BlockIQ4_NL, kQK>(in, n / kQK, out, dequantize_iq4_nl);
}
void dequantize_row_iq4_xs(const void* in, int64_t n, float* out) {
  decode_units<BlockIQ4_XS, kQK_K>(in, n / kQK_K, out, dequantize_iq4_xs);
}

}  // namespace strata::kernels::detail
