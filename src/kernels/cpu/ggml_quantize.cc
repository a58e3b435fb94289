// ggml's block quantizers, written from the arithmetic of ggml-quants.c (llama.cpp c392e509, February
// 2025: quantize_row_*_ref, quantize_row_*_impl, make_qx_quants, make_q3_quants, make_qkx2_quants,
// make_qkx3_quants, make_qp_quants, quantize_row_iq4_nl_impl) in the same float operation order, and
// checked byte for byte against ggml's output (tests/unit/kernels/ggml_codec_test.cc,
// tests/unit/compress/ggml_quantize_test.cc). Callers reach them through the codec table.
//
// Reproducing ggml's bytes is a matter of reproducing every float rounding, because the searches
// compare sums of products and a one-ulp difference can pick another scale:
// - products are rounded before they are accumulated: `prod()` hides each product from the
//   optimiser, so a build with FMA cannot fuse it into a multiply-add (ggml's output is that of
//   unfused arithmetic). Without this, a -march=native GCC build changes 16 of the 42 golden
//   files; with it, GCC and Clang at -O2/-O3, with or without -march=native and
//   -ffp-contract=fast, all reproduce them;
// - nearest_int is the 1.5 * 2^23 trick (round half to even, and a defined bit-pattern result for
//   out-of-range input, which some degenerate searches hit); its argument is rounded first, for the
//   same reason as above;
// - integers are converted to float exactly where C converts them, and narrow integer stores
//   (uint8_t / int8_t) wrap as they do in C.
// Where ggml would divide by a zero sum and store a NaN scale (importance zero over a whole block),
// these quantizers store a finite scale instead; that is the only intended difference.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "kernels/cpu/ggml_rows.hpp"
#include "strata/core/dtype.hpp"

namespace strata::kernels::detail {

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: below this a group counts as all zero

// The value, with the compiler unable to see how it was computed: a product passed through here is
// rounded to float and cannot be contracted with a following add into an FMA.
inline float rounded(float v) {
#if defined(__GNUC__) && defined(__x86_64__)
  asm("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(v));
#else
  volatile float t = v;
  v = t;
#endif
  return v;
}
inline float prod(float a, float b) { return rounded(a * b); }

// ggml's nearest_int: adding 1.5 * 2^23 leaves round(x) (half to even) in the low mantissa bits.
inline int nearest_int(float fval) {
  const float val = rounded(fval) + 12582912.f;
  int32_t i;
  std::memcpy(&i, &val, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

// roundf (half away from zero) without a libm call: v - trunc(v) is exact, so the test is exact.
inline float round_half_away(float v) {
  const float t = std::trunc(v);
  return std::fabs(v - t) >= 0.5f ? t + std::copysign(1.0f, v) : t;
}

inline uint16_t to_half(float f) { return f32_to_f16(f).bits; }
inline float from_half(uint16_t h) { return f16_to_f32(f16{h}); }

// float(i): where ggml mixes an int into float arithmetic, C converts it; spelled out here.
inline float fl(int i) { return static_cast<float>(i); }

// ---- ggml's scale searches ----------------------------------------------------------------------

// Symmetric quants in [-nmax, nmax) with weighted least squares over 19 candidate scales
// (make_qx_quants with rmse_type 1: weights qw, or x^2 without). L receives l + nmax.
// ggml evaluates the candidates one after the other; their sums depend only on the block, so all
// are accumulated in one pass here (each in ggml's order) and compared afterwards in ggml's order.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  constexpr int n_cand = 19;  // the first guess -nmax / max, then is = -9 .. 9 without 0
  std::array<float, n_cand> iscale{}, sumlx{}, suml2{};
  iscale[0] = fl(-nmax) / max;
  for (int is = -9, c = 1; is <= 9; ++is)
    if (is != 0) iscale[static_cast<std::size_t>(c++)] = -(fl(nmax) + prod(0.1f, fl(is))) / max;
  for (int i = 0; i < n; ++i) {
    const float w = qw ? qw[i] : prod(x[i], x[i]);
    const float wx = prod(w, x[i]);
    for (std::size_t c = 0; c < n_cand; ++c) {
      const float l = fl(std::max(-nmax, std::min(nmax - 1, nearest_int(prod(iscale[c], x[i])))));
      sumlx[c] += prod(wx, l);
      suml2[c] += prod(prod(w, l), l);
    }
  }
  float scale = suml2[0] != 0 ? sumlx[0] / suml2[0] : 0.0f;
  float best = prod(scale, sumlx[0]);
  std::size_t chosen = 0;
  for (std::size_t c = 1; c < n_cand; ++c) {
    if (suml2[c] > 0 && prod(sumlx[c], sumlx[c]) > prod(best, suml2[c])) {
      scale = sumlx[c] / suml2[c];
      best = prod(scale, sumlx[c]);
      chosen = c;
    }
  }
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(prod(iscale[chosen], x[i]));
    L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
  }
  return scale;
}

// Q3_K's unweighted path (make_q3_quants with do_rmse): weights x^2, then coordinate descent on
// single quants. L receives l + nmax.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = fl(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(prod(iscale, x[i]));
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l);
    const float w = prod(x[i], x[i]);
    sumlx += prod(prod(w, x[i]), fl(l));
    suml2 += prod(prod(w, fl(l)), fl(l));
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = prod(x[i], x[i]);
      float slx = sumlx - prod(prod(w, x[i]), fl(L[i]));
      if (slx > 0) {
        float sl2 = suml2 - prod(prod(w, fl(L[i])), fl(L[i]));
        int new_l = nearest_int(prod(x[i], sl2) / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != L[i]) {
          slx += prod(prod(w, x[i]), fl(new_l));
          sl2 += prod(prod(w, fl(new_l)), fl(new_l));
          if (sl2 > 0 && prod(prod(slx, slx), suml2) > prod(prod(sumlx, sumlx), sl2)) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric quants in [0, nmax] with a min: weighted least-squares fits of (scale, min) over
// nstep + 1 candidate scales. This is ggml's make_qkx2_quants and, with weights given (as every
// caller gives them), its make_qkx3_quants: the two differ only in testing max == min or max <= min,
// which agree because max >= min once min is capped at 0. Returns the scale; *the_min receives -min.
// Each candidate's range depends on the best min found so far, as in ggml, so candidates are tried
// in order.
float make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                      uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = prod(sum_w, x[0]);
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += prod(w, x[i]);
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::memset(L, 0, static_cast<std::size_t>(n));
    *the_min = -min;
    return 0.f;
  }
  float xm[32];  // x - min for the current min (n <= 32)
  for (int i = 0; i < n; ++i) xm[i] = x[i] - min;
  float iscale = fl(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(prod(iscale, xm[i]));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = prod(scale, fl(L[i])) + min - x[i];
    diff = use_mad ? std::fabs(diff) : prod(diff, diff);
    best_error += prod(weights[i], diff);
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + prod(rdelta, fl(is)) + fl(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_int(prod(iscale, xm[i]))));
      Laux[i] = static_cast<uint8_t>(l);
      const float wl = prod(weights[i], fl(l));
      sum_l += wl;
      sum_l2 += prod(wl, fl(l));
      sum_xl += prod(wl, x[i]);
    }
    const float D = prod(sum_w, sum_l2) - prod(sum_l, sum_l);
    if (D > 0) {
      float this_scale = (prod(sum_w, sum_xl) - prod(sum_x, sum_l)) / D;
      float this_min = (prod(sum_l2, sum_x) - prod(sum_l, sum_xl)) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = prod(this_scale, fl(Laux[i])) + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : prod(diff, diff);
        cur_error += prod(weights[i], diff);
      }
      if (cur_error < best_error) {
        std::memcpy(L, Laux, static_cast<std::size_t>(n));
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
        for (int i = 0; i < n; ++i) xm[i] = x[i] - min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Non-negative quants in [0, nmax] of the sub-block scales (or mins) against one super-block scale,
// weighted by each sub-block's total weight (make_qp_quants).
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
  if (max < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = fl(nmax) / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nearest_int(prod(iscale, x[i])));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - prod(scale, fl(L[i]));
    best_mse += prod(prod(quant_weights[i], diff), diff);
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (prod(0.1f, fl(is)) + fl(nmax)) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(prod(iscale_is, x[i]));
      l = std::min(nmax, l);
      const float diff = x[i] - prod(scale_is, fl(l));
      mse += prod(prod(quant_weights[i], diff), diff);
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(prod(iscale, x[i]));
    l = std::min(nmax, l);
    L[i] = static_cast<uint8_t>(l);
    const float w = quant_weights[i];
    sumlx += prod(prod(w, x[i]), fl(l));
    suml2 += prod(prod(w, fl(l)), fl(l));
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = quant_weights[i];
      float slx = sumlx - prod(prod(w, x[i]), fl(L[i]));
      float sl2 = suml2 - prod(prod(w, fl(L[i])), fl(L[i]));
      if (slx > 0 && sl2 > 0) {
        int new_l = nearest_int(prod(x[i], sl2) / slx);
        new_l = std::min(nmax, new_l);
        if (new_l != L[i]) {
          slx += prod(prod(w, x[i]), fl(new_l));
          sl2 += prod(prod(w, fl(new_l)), fl(new_l));
          if (prod(prod(slx, slx), suml2) > prod(prod(sumlx, sumlx), sl2)) {
            L[i] = static_cast<uint8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// For integer v in [-127, 112]: the largest k with kIq4nlValues[k] <= v. Since the levels are
// integers, the same k is the largest with a level <= x for every x in [v, v + 1).
constexpr std::array<uint8_t, 240> kIq4nlFloorIndex = [] {
  std::array<uint8_t, 240> t{};
  for (int v = -127; v <= 112; ++v) {
    int k = 0;
    while (k + 1 < 16 && kIq4nlValues[k + 1] <= v) ++k;
    t[static_cast<std::size_t>(v + 127)] = static_cast<uint8_t>(k);
  }
  return t;
}();

constexpr std::array<float, 16> kIq4nlLevels = [] {
  std::array<float, 16> v{};
  for (int k = 0; k < 16; ++k) v[static_cast<std::size_t>(k)] = kIq4nlValues[k];
  return v;
}();

// Nearest IQ4_NL level to x, as ggml's best_index_int8 picks it: its binary search ends at the
// bracketing pair val[ml] <= x < val[ml + 1] (found here by table, without unpredictable branches),
// then compares the two distances in float, ties going up.
inline int best_index_iq4nl(float x) {
  x = rounded(x);
  if (!(x > kIq4nlLevels[0])) return x <= kIq4nlLevels[0] ? 0 : 15;  // below the range, or NaN
  if (x >= kIq4nlLevels[15]) return 15;
  const int ml = kIq4nlFloorIndex[static_cast<std::size_t>(static_cast<int>(std::floor(x)) + 127)];
  return ml + static_cast<int>(!(x - kIq4nlLevels[static_cast<std::size_t>(ml)] <
                                 kIq4nlLevels[static_cast<std::size_t>(ml + 1)] - x));
}

// Sum of x^2 over n values, in order.
inline float sum_sq(const float* x, int64_t n) {
  float s = 0;
  for (int64_t j = 0; j < n; ++j) s += prod(x[j], x[j]);
  return s;
}

// Importance-weighted least-squares weights of ggml's *_impl paths: qw_j * sqrt(sigma2 + x_j^2).
inline void imatrix_weights(const float* x, const float* qw, int n, float sigma2, float* weight) {
  for (int j = 0; j < n; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + prod(x[j], x[j]));
}

// Packs four 2-bit quants per byte as Q2_K and Q3_K lay them out (element j + 32k in bits 2k).
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK_K; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// The 12-byte layout of eight 6-bit scales and mins (Q4_K, Q5_K).
void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* scales) {
  if (j < 4) {
    scales[j] = ls;
    scales[j + 4] = lm;
  } else {
    scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    scales[j - 4] = static_cast<uint8_t>(scales[j - 4] | ((ls >> 4) << 6));
    scales[j] = static_cast<uint8_t>(scales[j] | ((lm >> 4) << 6));
  }
}

// The 12-byte layout of sixteen 6-bit Q3_K scales (stored + 32), and back (minus 32).
void pack_scale_q3k(int j, int l, uint8_t* scales) {
  if (j < 8)
    scales[j] = static_cast<uint8_t>(l & 0xF);
  else
    scales[j - 8] = static_cast<uint8_t>(scales[j - 8] | ((l & 0xF) << 4));
  l >>= 4;
  scales[j % 4 + 8] = static_cast<uint8_t>(scales[j % 4 + 8] | (l << (2 * (j / 4))));
}
int unpack_scale_q3k(int j, const uint8_t* scales) {
  int8_t sc = static_cast<int8_t>(j < 8 ? scales[j] & 0xF : scales[j - 8] >> 4);
  sc = static_cast<int8_t>((sc | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
  return sc;
}

// Final Q3_K quants against the stored scales, then the high-bit mask and the 2-bit planes.
void finish_q3k(const float* x, BlockQ3_K& y, int8_t* L) {
  for (int j = 0; j < kQK_K / 16; ++j) {
    const float d = from_half(y.d) * fl(unpack_scale_q3k(j, y.scales));
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      int l = nearest_int(x[16 * j + ii] / d);
      l = std::max(-4, std::min(3, l));
      L[16 * j + ii] = static_cast<int8_t>(l + 4);
    }
  }
  std::memset(y.hmask, 0, sizeof y.hmask);
  int m = 0;
  uint8_t hm = 1;
  uint8_t Lu[kQK_K];
  for (int j = 0; j < kQK_K; ++j) {
    if (L[j] > 3) {
      y.hmask[m] = static_cast<uint8_t>(y.hmask[m] | hm);
      L[j] = static_cast<int8_t>(L[j] - 4);
    }
    Lu[j] = static_cast<uint8_t>(L[j]);
    if (++m == kQK_K / 8) {
      m = 0;
      hm = static_cast<uint8_t>(hm << 1);
    }
  }
  pack_2bit(Lu, y.qs);
}

// Final Q4_K / Q5_K quants in [0, nmax] against the stored scales and mins.
void requantize_k4(const float* x, const uint16_t d_bits, const uint16_t dmin_bits, const uint8_t* scales, int nmax,
                   uint8_t* L) {
  for (int j = 0; j < kQK_K / 32; ++j) {
    uint8_t sc, m;
    unpack_scale_min_k4(j, scales, sc, m);
    const float d = from_half(d_bits) * fl(sc);
    if (!d) continue;
    const float dm = from_half(dmin_bits) * fl(m);
    for (int ii = 0; ii < 32; ++ii) {
      int l = nearest_int((x[32 * j + ii] + dm) / d);
      l = std::max(0, std::min(nmax, l));
      L[32 * j + ii] = static_cast<uint8_t>(l);
    }
  }
}

void pack_q5k(const uint8_t* L, BlockQ5_K& y) {
  uint8_t* qh = y.qh;
  uint8_t* ql = y.qs;
  std::memset(qh, 0, kQK_K / 8);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < kQK_K; n += 64) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j];
      if (l1 > 15) {
        l1 -= 16;
        qh[j] = static_cast<uint8_t>(qh[j] | m1);
      }
      int l2 = L[n + j + 32];
      if (l2 > 15) {
        l2 -= 16;
        qh[j] = static_cast<uint8_t>(qh[j] | m2);
      }
      ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
    }
    m1 = static_cast<uint8_t>(m1 << 2);
    m2 = static_cast<uint8_t>(m2 << 2);
    ql += 32;
  }
}

// Q5_0 / Q5_1: low nibbles of elements j and j+16 share a byte, fifth bits go to qh (bit j).
void pack_5bit(const uint8_t* L, uint8_t* qs, uint8_t* qh_out) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t xi0 = L[j], xi1 = L[j + kQK / 2];
    qs[j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
    qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
    qh |= ((xi1 & 0x10u) >> 4) << (j + kQK / 2);
  }
  for (int b = 0; b < 4; ++b) qh_out[b] = static_cast<uint8_t>(qh >> (8 * b));  // little-endian, as ggml's memcpy
}

// Absolute maximum of a block and the signed value that has it (the first one, on ties).
inline void signed_absmax(const float* x, int n, float& amax, float& max) {
  amax = 0;
  max = 0;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
}

// ---- reference (unweighted) paths of the legacy types ------------------------------------------

void q4_0_ref(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax, max;
    signed_absmax(x, kQK, amax, max);
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = to_half(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = prod(x[j], id), x1 = prod(x[kQK / 2 + j], id);
      const uint8_t xi0 = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x0 + 8.5f))));
      const uint8_t xi1 = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x1 + 8.5f))));
      y[i].qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

// The min and max of a block, as ggml's asymmetric reference quantizers find them.
inline void block_min_max(const float* x, int n, float& min, float& max) {
  min = 3.402823466e+38f;
  max = -3.402823466e+38f;
  for (int j = 0; j < n; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
}

void q4_1_ref(const float* x, BlockQ4_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float min, max;
    block_min_max(x, kQK, min, max);
    const float d = (max - min) / ((1 << 4) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = to_half(d);
    y[i].m = to_half(min);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = prod(x[j] - min, id), x1 = prod(x[kQK / 2 + j] - min, id);
      const uint8_t xi0 = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x0 + 0.5f))));
      const uint8_t xi1 = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x1 + 0.5f))));
      y[i].qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

void q5_0_ref(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax, max;
    signed_absmax(x, kQK, amax, max);
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = to_half(d);
    uint8_t L[kQK];
    for (int j = 0; j < kQK; ++j)
      L[j] = static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(prod(x[j], id) + 16.5f))));
    pack_5bit(L, y[i].qs, y[i].qh);
  }
}

void q5_1_ref(const float* x, BlockQ5_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float min, max;
    block_min_max(x, kQK, min, max);
    const float d = (max - min) / ((1 << 5) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = to_half(d);
    y[i].m = to_half(min);
    uint8_t L[kQK];
    for (int j = 0; j < kQK; ++j) L[j] = static_cast<uint8_t>(prod(x[j] - min, id) + 0.5f);
    pack_5bit(L, y[i].qs, y[i].qh);
  }
}

// sigma^2 of the legacy *_impl paths: the mean of x^2 over the whole row.
inline float row_sigma2(const float* x, int64_t n) { return sum_sq(x, n) / static_cast<float>(n); }

// ---- legacy types ---------------------------------------------------------------------------------

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t n, const float* importance,
                 const float* sigma2_given = nullptr) {
  const int64_t nb = n / kQK;
  if (!importance) return q4_0_ref(x, y, nb);
  const float sigma2 = sigma2_given ? *sigma2_given : row_sigma2(x, n);
  float weight[kQK];
  int8_t L[kQK];
  for (int64_t ib = 0; ib < nb; ++ib) {
    const float* xb = x + kQK * ib;
    imatrix_weights(xb, importance + kQK * ib, kQK, sigma2, weight);
    const float d = make_qx_quants(kQK, 8, xb, L, weight);
    y[ib].d = to_half(d);
    for (int j = 0; j < 16; ++j) y[ib].qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
  }
}

void quantize_q4_1(const float* x, BlockQ4_1* y, int64_t n, const float* importance,
                 const float* sigma2_given = nullptr) {
  const int64_t nb = n / kQK;
  if (!importance) return q4_1_ref(x, y, nb);
  const float sigma2 = sigma2_given ? *sigma2_given : row_sigma2(x, n);
  float weight[kQK];
  uint8_t L[kQK], Laux[kQK];
  for (int64_t ib = 0; ib < nb; ++ib) {
    const float* xb = x + kQK * ib;
    imatrix_weights(xb, importance + kQK * ib, kQK, sigma2, weight);
    float min;
    const float d = make_qkx_quants(kQK, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    y[ib].d = to_half(d);
    y[ib].m = to_half(-min);
    for (int j = 0; j < 16; ++j) y[ib].qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
  }
}

void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t n, const float* importance,
                 const float* sigma2_given = nullptr) {
  const int64_t nb = n / kQK;
  if (!importance) return q5_0_ref(x, y, nb);
  const float sigma2 = sigma2_given ? *sigma2_given : row_sigma2(x, n);
  float weight[kQK];
  int8_t L[kQK];
  uint8_t Lu[kQK];
  for (int64_t ib = 0; ib < nb; ++ib) {
    const float* xb = x + kQK * ib;
    imatrix_weights(xb, importance + kQK * ib, kQK, sigma2, weight);
    const float d = make_qx_quants(kQK, 16, xb, L, weight);
    y[ib].d = to_half(d);
    for (int j = 0; j < kQK; ++j) Lu[j] = static_cast<uint8_t>(L[j]);
    pack_5bit(Lu, y[ib].qs, y[ib].qh);
  }
}

void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t n, const float* importance,
                 const float* sigma2_given = nullptr) {
  const int64_t nb = n / kQK;
  if (!importance) return q5_1_ref(x, y, nb);
  const float sigma2 = sigma2_given ? *sigma2_given : row_sigma2(x, n);
  float weight[kQK];
  uint8_t L[kQK], Laux[kQK];
  for (int64_t ib = 0; ib < nb; ++ib) {
    const float* xb = x + kQK * ib;
    imatrix_weights(xb, importance + kQK * ib, kQK, sigma2, weight);
    float min;
    const float d = make_qkx_quants(kQK, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    y[ib].d = to_half(d);
    y[ib].m = to_half(-min);
    pack_5bit(L, y[ib].qs, y[ib].qh);
  }
}

void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t n, const float* /*importance*/) {
  const int64_t nb = n / kQK;
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = to_half(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = static_cast<int8_t>(round_half_away(x[j] * id));
  }
}

// ---- k-quants -----------------------------------------------------------------------------------

void quantize_q2_k(const float* x, BlockQ2_K* y, int64_t n, const float* importance) {
  const int64_t nb = n / kQK_K;
  uint8_t L[kQK_K], Laux[16];
  float weight[16], mins[kQK_K / 16], scales[kQK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    if (!importance) {
      // quantize_row_q2_K_ref: |x| weights, 4-bit sub-scales and mins against max / 15.
      for (int j = 0; j < kQK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l) weight[l] = std::fabs(x[16 * j + l]);
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      }
      encode_q2_k_scales(scales, mins, nullptr, y[i]);
    } else {
      // quantize_row_q2_K_impl: importance weights, scales and mins fitted jointly by make_qp_quants.
      const float* qw_row = importance + kQK_K * i;
      const float sigma2 = sum_sq(x, kQK_K) / kQK_K;
      float sw[kQK_K / 16];
      for (int j = 0; j < kQK_K / 16; ++j) {
        imatrix_weights(x + 16 * j, qw_row + 16 * j, 16, sigma2, weight);
        float s = 0;
        for (int l = 0; l < 16; ++l) s += weight[l];
        sw[j] = s;
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
      }
      encode_q2_k_scales(scales, mins, sw, y[i]);
    }
    // Both paths requantize against the stored (binary16) scales.
    const float dm = from_half(y[i].d), mm = from_half(y[i].dmin);
    for (int j = 0; j < kQK_K / 16; ++j) {
      const float d = dm * fl(y[i].scales[j] & 0xF);
      if (!d) continue;
      const float m = mm * fl(y[i].scales[j] >> 4);
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int((x[16 * j + ii] + m) / d);
        l = std::max(0, std::min(3, l));
        L[16 * j + ii] = static_cast<uint8_t>(l);
      }
    }
    pack_2bit(L, y[i].qs);
  }
}

void quantize_q3_k(const float* x, BlockQ3_K* y, int64_t n, const float* importance) {
  const int64_t nb = n / kQK_K;
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(y[i].scales, 0, sizeof y[i].scales);
    if (!importance) {
      // quantize_row_q3_K_ref: x^2-weighted fits per sub-block, 6-bit sub-scales against max / -32.
      for (int j = 0; j < kQK_K / 16; ++j) scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      encode_q3_k_scales(scales, y[i]);
    } else {
      // quantize_row_q3_K_impl: importance weights, then the 16 scales quantized by make_qx_quants.
      const float* qw_row = importance + kQK_K * i;
      const float sigma2 = 2 * sum_sq(x, kQK_K) / kQK_K;
      float weight[16], sw[kQK_K / 16];
      int8_t Ls[kQK_K / 16];
      for (int j = 0; j < kQK_K / 16; ++j) {
        imatrix_weights(x + 16 * j, qw_row + 16 * j, 16, sigma2, weight);
        float s = 0;
        for (int l = 0; l < 16; ++l) s += weight[l];
        sw[j] = s;
        scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weight);
      }
      const float d_block = make_qx_quants(kQK_K / 16, 32, scales, Ls, sw);
      pack_q3_k_scales(Ls, d_block, y[i]);
    }
    finish_q3k(x, y[i], L);
  }
}

void quantize_q4_k(const float* x, BlockQ4_K* y, int64_t n, const float* importance) {
  const int64_t nb = n / kQK_K;
  uint8_t L[kQK_K], Laux[32];
  float weights[32], mins[kQK_K / 32], scales[kQK_K / 32], sw[kQK_K / 32];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    if (!importance) {
      // quantize_row_q4_K_ref: weights av|x| + |x_l| per sub-block of 32.
      for (int j = 0; j < kQK_K / 32; ++j) {
        const float av_x = std::sqrt(sum_sq(x + 32 * j, 32) / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = make_qkx_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, false);
      }
    } else {
      // quantize_row_q4_K_impl: importance weights.
      const float* qw_row = importance + kQK_K * i;
      const float sigma2 = 2 * sum_sq(x, kQK_K) / kQK_K;
      for (int j = 0; j < kQK_K / 32; ++j) {
        imatrix_weights(x + 32 * j, qw_row + 32 * j, 32, sigma2, weights);
        float s = 0;
        for (int l = 0; l < 32; ++l) s += weights[l];
        sw[j] = s;
        scales[j] = make_qkx_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
      }
    }
    encode_q4_k_scales(scales, mins, importance ? sw : nullptr, y[i]);
    requantize_k4(x, y[i].d, y[i].dmin, y[i].scales, 15, L);
    uint8_t* q = y[i].qs;
    for (int j = 0; j < kQK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  }
}

void quantize_q5_k(const float* x, BlockQ5_K* y, int64_t n, const float* importance) {
  const int64_t nb = n / kQK_K;
  uint8_t L[kQK_K], Laux[32];
  float weights[32], mins[kQK_K / 32], scales[kQK_K / 32];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(y[i].scales, 0, sizeof y[i].scales);
    if (!importance) {
      // quantize_row_q5_K_ref.
      float max_scale = 0, max_min = 0;
      for (int j = 0; j < kQK_K / 32; ++j) {
        const float av_x = std::sqrt(sum_sq(x + 32 * j, 32) / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = make_qkx_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
      }
      const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
      const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
      for (int j = 0; j < kQK_K / 32; ++j) {
        uint8_t ls = static_cast<uint8_t>(nearest_int(prod(inv_scale, scales[j])));
        uint8_t lm = static_cast<uint8_t>(nearest_int(prod(inv_min, mins[j])));
        ls = std::min<uint8_t>(63, ls);
        lm = std::min<uint8_t>(63, lm);
        pack_scale_min_k4(j, ls, lm, y[i].scales);
      }
      y[i].d = to_half(max_scale / 63.f);
      y[i].dmin = to_half(max_min / 63.f);
    } else {
      // quantize_row_q5_K_impl.
      const float* qw_row = importance + kQK_K * i;
      const float sigma2 = 2 * sum_sq(x, kQK_K) / kQK_K;
      float sw[kQK_K / 32];
      uint8_t Ls[kQK_K / 32], Lm[kQK_K / 32];
      for (int j = 0; j < kQK_K / 32; ++j) {
        imatrix_weights(x + 32 * j, qw_row + 32 * j, 32, sigma2, weights);
        float s = 0;
        for (int l = 0; l < 32; ++l) s += weights[l];
        sw[j] = s;
        scales[j] = make_qkx_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
      }
      const float d_block = make_qp_quants(kQK_K / 32, 63, scales, Ls, sw);
      const float m_block = make_qp_quants(kQK_K / 32, 63, mins, Lm, sw);
      for (int j = 0; j < kQK_K / 32; ++j)
        pack_scale_min_k4(j, std::min<uint8_t>(63, Ls[j]), std::min<uint8_t>(63, Lm[j]), y[i].scales);
      y[i].d = to_half(d_block);
      y[i].dmin = to_half(m_block);
    }
    requantize_k4(x, y[i].d, y[i].dmin, y[i].scales, 31, L);
    pack_q5k(L, y[i]);
  }
}

void quantize_q6_k(const float* x, BlockQ6_K* y, int64_t n, const float* importance) {
  const int64_t nb = n / kQK_K;
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    // The ref and impl paths differ only in the weights of make_qx_quants (x^2 or the importance).
    for (int ib = 0; ib < kQK_K / 16; ++ib) {
      const float* qw = importance ? importance + kQK_K * i + 16 * ib : nullptr;
      scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw);
    }
    if (!encode_q6_k_scales(scales, y[i])) continue;
    for (int j = 0; j < kQK_K / 16; ++j) {
      const float d = from_half(y[i].d) * fl(y[i].scales[j]);
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int(x[16 * j + ii] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + ii] = static_cast<int8_t>(l + 32);
      }
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < kQK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF;
        const uint8_t q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF;
        const uint8_t q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = static_cast<uint8_t>(q1 | (q3 << 4));
        ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
        qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                     ((L[j + l + 96] >> 4) << 6));
      }
    }
  }
}

}  // namespace

// The super-block half of Q4_K: the eight sub-block scales and mins to 6 bits, against d and dmin.
// Without weights (quantize_row_q4_K_ref) the largest maps to 63; with the sub-blocks' total
// importance weights sw (quantize_row_q4_K_impl) make_qp_quants fits them.
void encode_q4_k_scales(const float* scales, const float* mins, const float* sw, BlockQ4_K& y) {
  std::memset(y.scales, 0, sizeof y.scales);
  if (!sw) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < kQK_K / 32; ++j) {
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < kQK_K / 32; ++j) {
      uint8_t ls = static_cast<uint8_t>(nearest_int(prod(inv_scale, scales[j])));
      uint8_t lm = static_cast<uint8_t>(nearest_int(prod(inv_min, mins[j])));
      ls = std::min<uint8_t>(63, ls);
      lm = std::min<uint8_t>(63, lm);
      pack_scale_min_k4(j, ls, lm, y.scales);
    }
    y.d = to_half(max_scale / 63.f);
    y.dmin = to_half(max_min / 63.f);
    return;
  }
  uint8_t Ls[kQK_K / 32], Lm[kQK_K / 32];
  const float d_block = make_qp_quants(kQK_K / 32, 63, scales, Ls, sw);
  const float m_block = make_qp_quants(kQK_K / 32, 63, mins, Lm, sw);
  pack_q4_k_scales(Ls, Lm, d_block, m_block, y);
}

void pack_q4_k_scales(const uint8_t* Ls, const uint8_t* Lm, float d_block, float m_block, BlockQ4_K& y) {
  std::memset(y.scales, 0, sizeof y.scales);
  for (int j = 0; j < kQK_K / 32; ++j) pack_scale_min_k4(j, Ls[j], Lm[j], y.scales);
  y.d = to_half(d_block);
  y.dmin = to_half(m_block);
}

void pack_q5_k_quants(const uint8_t* L, BlockQ5_K& y) { pack_q5k(L, y); }

// The super-block half of Q3_K without importance (quantize_row_q3_K_ref): the sixteen sub-block
// scales to signed 6 bits, the largest in magnitude at -32. y's scales must be zero.
void encode_q3_k_scales(const float* scales, BlockQ3_K& y) {
  float amax, max_scale;
  signed_absmax(scales, kQK_K / 16, amax, max_scale);
  if (!max_scale) {
    y.d = to_half(0.f);
    return;
  }
  const float iscale = -32.f / max_scale;
  for (int j = 0; j < kQK_K / 16; ++j) {
    int8_t l = static_cast<int8_t>(nearest_int(prod(iscale, scales[j])));
    l = static_cast<int8_t>(std::max(-32, std::min(31, static_cast<int>(l))) + 32);
    pack_scale_q3k(j, l, y.scales);
  }
  y.d = to_half(1 / iscale);
}

void pack_q3_k_scales(const int8_t* Ls, float d_block, BlockQ3_K& y) {
  for (int j = 0; j < kQK_K / 16; ++j) pack_scale_q3k(j, Ls[j], y.scales);
  y.d = to_half(d_block);
}

int unpack_q3_k_scale(int j, const uint8_t* scales) { return unpack_scale_q3k(j, scales); }

// The super-block half of Q2_K: the sixteen sub-block scales and mins to 4 bits, against d and dmin.
// Without weights (quantize_row_q2_K_ref) the largest of each maps to 15; with the sub-blocks' total
// importance weights sw (quantize_row_q2_K_impl) make_qp_quants fits them.
void encode_q2_k_scales(const float* scales, const float* mins, const float* sw, BlockQ2_K& y) {
  if (sw) {
    uint8_t Ls[kQK_K / 16], Lm[kQK_K / 16];
    const float d_block = make_qp_quants(kQK_K / 16, 15, scales, Ls, sw);
    const float m_block = make_qp_quants(kQK_K / 16, 15, mins, Lm, sw);
    return pack_q2_k_scales(Ls, Lm, d_block, m_block, y);
  }
  constexpr float q4scale = 15.f;
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < kQK_K / 16; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0) {
    const float iscale = q4scale / max_scale;
    for (int j = 0; j < kQK_K / 16; ++j) y.scales[j] = static_cast<uint8_t>(nearest_int(prod(iscale, scales[j])));
    y.d = to_half(max_scale / q4scale);
  } else {
    for (int j = 0; j < kQK_K / 16; ++j) y.scales[j] = 0;
    y.d = to_half(0.f);
  }
  if (max_min > 0) {
    const float iscale = q4scale / max_min;
    for (int j = 0; j < kQK_K / 16; ++j) {
      const int l = nearest_int(prod(iscale, mins[j]));
      y.scales[j] = static_cast<uint8_t>(y.scales[j] | (l << 4));
    }
    y.dmin = to_half(max_min / q4scale);
  } else {
    y.dmin = to_half(0.f);
  }
}

void pack_q2_k_scales(const uint8_t* Ls, const uint8_t* Lm, float d_block, float m_block, BlockQ2_K& y) {
  y.d = to_half(d_block);
  y.dmin = to_half(m_block);
  for (int j = 0; j < kQK_K / 16; ++j) y.scales[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
}

// The super-block half of Q6_K: the sixteen sub-block scales to signed 8 bits, the largest in
// magnitude at -128. Returns false, with the block zeroed, when every scale vanishes.
bool encode_q6_k_scales(const float* scales, BlockQ6_K& y) {
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < kQK_K / 16; ++ib) {
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(&y, 0, sizeof(BlockQ6_K));
    y.d = to_half(0.f);
    return false;
  }
  const float iscale = -128.f / max_scale;
  y.d = to_half(1 / iscale);
  for (int ib = 0; ib < kQK_K / 16; ++ib)
    y.scales[ib] = static_cast<int8_t>(std::min(127, nearest_int(prod(iscale, scales[ib]))));
  return true;
}

namespace {

// ---- IQ4_NL -------------------------------------------------------------------------------------

void quantize_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t n, const float* importance) {
  // quantize_row_iq4_nl_impl with one block per super-block and ntry = 7, which ggml runs with or
  // without importance (x^2 weights then). ggml tries its 16 scales one after the other; each
  // candidate's sums depend only on the block, so all 16 are accumulated in one pass here (every
  // sum still in ggml's order) and then compared in ggml's order.
  constexpr int ntry = 7, n_cand = 2 * ntry + 2;
  const int64_t nb = n / kQK;
  float weight[kQK];
  for (int64_t ib = 0; ib < nb; ++ib, x += kQK) {
    float sigma2 = sum_sq(x, kQK);
    sigma2 *= 2.f / kQK;
    if (importance)
      imatrix_weights(x, importance + kQK * ib, kQK, sigma2, weight);
    else
      for (int j = 0; j < kQK; ++j) weight[j] = prod(x[j], x[j]);
    float amax, max;
    signed_absmax(x, kQK, amax, max);
    float scale = 0;
    if (amax >= kGroupMaxEps) {
      // Candidate 0 maps the extreme value onto the extreme level; then ggml's itry = -7 .. 7.
      std::array<float, n_cand> id{}, sumqx{}, sumq2{};
      id[0] = 1 / (-max / kIq4nlLevels[0]);
      for (int itry = -ntry; itry <= ntry; ++itry)
        id[static_cast<std::size_t>(itry + ntry + 1)] = fl(itry + kIq4nlValues[0]) / max;
      for (int j = 0; j < kQK; ++j) {
        for (std::size_t c = 0; c < n_cand; ++c) {
          const float q = kIq4nlLevels[static_cast<std::size_t>(best_index_iq4nl(prod(id[c], x[j])))];
          const float wq = prod(weight[j], q);
          sumqx[c] += prod(wq, x[j]);
          sumq2[c] += prod(wq, q);
        }
      }
      // ggml divides unguarded; a zero sum (importance zero over the whole block) would store NaN.
      float d = sumq2[0] > 0 ? sumqx[0] / sumq2[0] : -max / kIq4nlLevels[0];
      float best = prod(d, sumqx[0]);
      for (std::size_t c = 1; c < n_cand; ++c) {
        if (sumq2[c] > 0 && prod(sumqx[c], sumqx[c]) > prod(best, sumq2[c])) {
          d = sumqx[c] / sumq2[c];
          best = prod(d, sumqx[c]);
        }
      }
      scale = d;
    }
    y[ib].d = to_half(scale);
    const float id = scale ? 1 / scale : 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = best_index_iq4nl(prod(id, x[j])), hi = best_index_iq4nl(prod(id, x[j + 16]));
      y[ib].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

}  // namespace

// The codec's row functions. A row is quantized in one call, never in pieces: the legacy types'
// imatrix path takes sigma^2 over the whole row.
void quantize_row_q4_0(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ4_0>(out, n / kQK, [&](BlockQ4_0* y) { quantize_q4_0(x, y, n, importance); });
}
void quantize_row_q4_1(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ4_1>(out, n / kQK, [&](BlockQ4_1* y) { quantize_q4_1(x, y, n, importance); });
}
void quantize_row_q5_0(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ5_0>(out, n / kQK, [&](BlockQ5_0* y) { quantize_q5_0(x, y, n, importance); });
}
void quantize_row_q5_1(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ5_1>(out, n / kQK, [&](BlockQ5_1* y) { quantize_q5_1(x, y, n, importance); });
}
void quantize_row_q8_0(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ8_0>(out, n / kQK, [&](BlockQ8_0* y) { quantize_q8_0(x, y, n, importance); });
}
void quantize_row_q2_k(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ2_K>(out, n / kQK_K, [&](BlockQ2_K* y) { quantize_q2_k(x, y, n, importance); });
}
void quantize_row_q3_k(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ3_K>(out, n / kQK_K, [&](BlockQ3_K* y) { quantize_q3_k(x, y, n, importance); });
}
void quantize_row_q4_k(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ4_K>(out, n / kQK_K, [&](BlockQ4_K* y) { quantize_q4_k(x, y, n, importance); });
}
void quantize_row_q5_k(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ5_K>(out, n / kQK_K, [&](BlockQ5_K* y) { quantize_q5_k(x, y, n, importance); });
}
void quantize_row_q6_k(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ6_K>(out, n / kQK_K, [&](BlockQ6_K* y) { quantize_q6_k(x, y, n, importance); });
}
void quantize_row_iq4_nl(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockIQ4_NL>(out, n / kQK, [&](BlockIQ4_NL* y) { quantize_iq4_nl(x, y, n, importance); });
}

float legacy_row_sigma2(const float* x, int64_t n) { return row_sigma2(x, n); }

void quantize_blocks_legacy(GgmlType t, const float* x, int64_t n, void* out, const float* importance, float sigma2) {
  switch (t) {
    case GgmlType::Q4_0:
      return encode_units<BlockQ4_0>(out, n / kQK, [&](BlockQ4_0* y) { quantize_q4_0(x, y, n, importance, &sigma2); });
    case GgmlType::Q4_1:
      return encode_units<BlockQ4_1>(out, n / kQK, [&](BlockQ4_1* y) { quantize_q4_1(x, y, n, importance, &sigma2); });
    case GgmlType::Q5_0:
      return encode_units<BlockQ5_0>(out, n / kQK, [&](BlockQ5_0* y) { quantize_q5_0(x, y, n, importance, &sigma2); });
    case GgmlType::Q5_1:
      return encode_units<BlockQ5_1>(out, n / kQK, [&](BlockQ5_1* y) { quantize_q5_1(x, y, n, importance, &sigma2); });
    default: return ggml_codec(t).quantize_row(x, n, out, importance);
  }
}

}  // namespace strata::kernels::detail
