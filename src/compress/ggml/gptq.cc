// GPTQ whose rounding step is a ggml block format's own (see strata/compress/ggml/gptq.hpp).
#include "strata/compress/ggml/gptq.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <string>

#include <Eigen/Cholesky>

#include "compress/gptq_feedback.hpp"
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::ggml {

namespace {

using kernels::BlockIQ4_NL;
using kernels::BlockQ2_K;
using kernels::BlockQ3_K;
using kernels::BlockQ4_0;
using kernels::BlockQ4_1;
using kernels::BlockQ4_K;
using kernels::BlockQ5_0;
using kernels::BlockQ5_1;
using kernels::BlockQ5_K;
using kernels::BlockQ6_K;
using kernels::BlockQ8_0;

// How a type's block holds its codes: `unit` elements per block (the scales the loop fits at once),
// `sub` consecutive elements share one scale (and min), codes run over [0, levels).
struct Format {
  int unit, sub, levels;
};

Format format_of(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::IQ4_NL: return {32, 32, 16};
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: return {32, 32, 32};
    case GgmlType::Q8_0: return {32, 32, 256};
    case GgmlType::Q2_K: return {256, 16, 4};
    case GgmlType::Q3_K: return {256, 16, 8};
    case GgmlType::Q4_K: return {256, 32, 16};
    case GgmlType::Q5_K: return {256, 32, 32};
    case GgmlType::Q6_K: return {256, 16, 64};
    default: fail("ggml gptq: type ", kernels::ggml_type_name(t), " is not supported");
  }
}

// Four-bit codes of the 32-element blocks: element e < 16 in the low nibble of qs[e], e >= 16 in the
// high nibble of qs[e - 16].
int nibble32(const uint8_t* qs, int e) { return e < 16 ? qs[e] & 0xF : qs[e - 16] >> 4; }
void set_nibble32(uint8_t* qs, int e, int c) {
  if (e < 16)
    qs[e] = static_cast<uint8_t>((qs[e] & 0xF0) | (c & 0xF));
  else
    qs[e - 16] = static_cast<uint8_t>((qs[e - 16] & 0x0F) | ((c & 0xF) << 4));
}
// Fifth bits of Q5_0 / Q5_1: bit e of the little-endian qh.
int bit5(const uint8_t* qh, int e) { return (qh[e / 8] >> (e % 8)) & 1; }
void set_bit5(uint8_t* qh, int e, int b) {
  qh[e / 8] = static_cast<uint8_t>((qh[e / 8] & ~(1 << (e % 8))) | (b << (e % 8)));
}
// Two-bit planes of Q2_K / Q3_K: element e at byte (e / 128) * 32 + e % 32, bits 2 * ((e % 128) / 32).
int plane2(const uint8_t* qs, int e) { return (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3; }
void set_plane2(uint8_t* qs, int e, int c) {
  uint8_t& b = qs[(e / 128) * 32 + e % 32];
  const int s = 2 * ((e % 128) / 32);
  b = static_cast<uint8_t>((b & ~(3 << s)) | ((c & 3) << s));
}
// Four-bit codes of Q4_K / Q5_K: element e at byte (e / 64) * 32 + e % 32, high nibble when e % 64 >= 32.
int nibble_k(const uint8_t* qs, int e) {
  const uint8_t b = qs[(e / 64) * 32 + e % 32];
  return (e % 64) >= 32 ? b >> 4 : b & 0xF;
}
void set_nibble_k(uint8_t* qs, int e, int c) {
  uint8_t& b = qs[(e / 64) * 32 + e % 32];
  b = (e % 64) >= 32 ? static_cast<uint8_t>((b & 0x0F) | ((c & 0xF) << 4)) : static_cast<uint8_t>((b & 0xF0) | (c & 0xF));
}
// Q5_K's fifth bits: qh[e % 32], bit 2 * (e / 64) + (e % 64 >= 32).
int qh_bit_k(int e) { return 2 * (e / 64) + ((e % 64) >= 32 ? 1 : 0); }
// Q6_K: low four bits in ql[(e / 128) * 64 + e % 32 + 32 * (quarter & 1)] (high nibble for quarters
// 2 and 3, quarter = (e % 128) / 32), high two bits in qh[(e / 128) * 32 + e % 32] at 2 * quarter.
struct Q6Pos {
  int ql, ql_shift, qh, qh_shift;
};
Q6Pos q6_pos(int e) {
  const int half = e / 128, quarter = (e % 128) / 32, l = e % 32;
  return {half * 64 + l + 32 * (quarter & 1), quarter >= 2 ? 4 : 0, half * 32 + l, 2 * quarter};
}

// The code of element e of the block at b.
int get_code(GgmlType t, const std::byte* b, int e) {
  switch (t) {
    case GgmlType::Q4_0: return nibble32(reinterpret_cast<const BlockQ4_0*>(b)->qs, e);
    case GgmlType::Q4_1: return nibble32(reinterpret_cast<const BlockQ4_1*>(b)->qs, e);
    case GgmlType::IQ4_NL: return nibble32(reinterpret_cast<const BlockIQ4_NL*>(b)->qs, e);
    case GgmlType::Q5_0: {
      const auto* y = reinterpret_cast<const BlockQ5_0*>(b);
      return nibble32(y->qs, e) | (bit5(y->qh, e) << 4);
    }
    case GgmlType::Q5_1: {
      const auto* y = reinterpret_cast<const BlockQ5_1*>(b);
      return nibble32(y->qs, e) | (bit5(y->qh, e) << 4);
    }
    case GgmlType::Q8_0: return reinterpret_cast<const BlockQ8_0*>(b)->qs[e] + 128;
    case GgmlType::Q2_K: return plane2(reinterpret_cast<const BlockQ2_K*>(b)->qs, e);
    case GgmlType::Q3_K: {
      const auto* y = reinterpret_cast<const BlockQ3_K*>(b);
      return plane2(y->qs, e) | (((y->hmask[e % 32] >> (e / 32)) & 1) << 2);
    }
    case GgmlType::Q4_K: return nibble_k(reinterpret_cast<const BlockQ4_K*>(b)->qs, e);
    case GgmlType::Q5_K: {
      const auto* y = reinterpret_cast<const BlockQ5_K*>(b);
      return nibble_k(y->qs, e) | (((y->qh[e % 32] >> qh_bit_k(e)) & 1) << 4);
    }
    case GgmlType::Q6_K: {
      const auto* y = reinterpret_cast<const BlockQ6_K*>(b);
      const Q6Pos p = q6_pos(e);
      return ((y->ql[p.ql] >> p.ql_shift) & 0xF) | (((y->qh[p.qh] >> p.qh_shift) & 3) << 4);
    }
    default: fail("ggml gptq: type ", kernels::ggml_type_name(t), " is not supported");
  }
}

// Sets the code of element e of the block at b, leaving every other bit as it is.
void set_code(GgmlType t, std::byte* b, int e, int c) {
  switch (t) {
    case GgmlType::Q4_0: return set_nibble32(reinterpret_cast<BlockQ4_0*>(b)->qs, e, c);
    case GgmlType::Q4_1: return set_nibble32(reinterpret_cast<BlockQ4_1*>(b)->qs, e, c);
    case GgmlType::IQ4_NL: return set_nibble32(reinterpret_cast<BlockIQ4_NL*>(b)->qs, e, c);
    case GgmlType::Q5_0: {
      auto* y = reinterpret_cast<BlockQ5_0*>(b);
      set_nibble32(y->qs, e, c);
      return set_bit5(y->qh, e, c >> 4);
    }
    case GgmlType::Q5_1: {
      auto* y = reinterpret_cast<BlockQ5_1*>(b);
      set_nibble32(y->qs, e, c);
      return set_bit5(y->qh, e, c >> 4);
    }
    case GgmlType::Q8_0: reinterpret_cast<BlockQ8_0*>(b)->qs[e] = static_cast<int8_t>(c - 128); return;
    case GgmlType::Q2_K: return set_plane2(reinterpret_cast<BlockQ2_K*>(b)->qs, e, c);
    case GgmlType::Q3_K: {
      auto* y = reinterpret_cast<BlockQ3_K*>(b);
      set_plane2(y->qs, e, c);
      uint8_t& h = y->hmask[e % 32];
      h = static_cast<uint8_t>((h & ~(1 << (e / 32))) | (((c >> 2) & 1) << (e / 32)));
      return;
    }
    case GgmlType::Q4_K: return set_nibble_k(reinterpret_cast<BlockQ4_K*>(b)->qs, e, c);
    case GgmlType::Q5_K: {
      auto* y = reinterpret_cast<BlockQ5_K*>(b);
      set_nibble_k(y->qs, e, c);
      uint8_t& h = y->qh[e % 32];
      const int s = qh_bit_k(e);
      h = static_cast<uint8_t>((h & ~(1 << s)) | (((c >> 4) & 1) << s));
      return;
    }
    case GgmlType::Q6_K: {
      auto* y = reinterpret_cast<BlockQ6_K*>(b);
      const Q6Pos p = q6_pos(e);
      y->ql[p.ql] = static_cast<uint8_t>((y->ql[p.ql] & ~(0xF << p.ql_shift)) | ((c & 0xF) << p.ql_shift));
      y->qh[p.qh] = static_cast<uint8_t>((y->qh[p.qh] & ~(3 << p.qh_shift)) | (((c >> 4) & 3) << p.qh_shift));
      return;
    }
    default: fail("ggml gptq: type ", kernels::ggml_type_name(t), " is not supported");
  }
}

// The grid of a fitted block: for every sub-block s and code c, the value the dequantizer gives,
// at grid[s * levels + c]. The dequantizer maps each element through its own code and its
// sub-block's scales only, so element p of a sub-block can carry code k * sub + p: ceil(levels /
// sub) dequantizations read the whole grid.
void read_grid(GgmlType t, const Format& f, const kernels::GgmlCodec& codec, const std::byte* block, float* grid) {
  static_assert(sizeof(BlockQ6_K) <= 256 && sizeof(BlockQ5_K) <= 256 && sizeof(BlockQ3_K) <= 256);
  alignas(8) std::byte aligned[256];
  std::memcpy(aligned, block, codec.type_size);
  float out[256];
  for (int k = 0; k * f.sub < f.levels; ++k) {
    for (int e = 0; e < f.unit; ++e) set_code(t, aligned, e, std::min(k * f.sub + e % f.sub, f.levels - 1));
    codec.dequantize_row(aligned, f.unit, out);
    for (int e = 0; e < f.unit; ++e) {
      const int c = k * f.sub + e % f.sub;
      if (c < f.levels) grid[(e / f.sub) * f.levels + c] = out[e];
    }
  }
}

// The code whose grid value is nearest to w on a monotone grid g[0..levels); `fallback` when the
// grid is flat (a zero scale: every code gives the same value).
int nearest_code(const float* g, int levels, float w, int fallback) {
  const float lo = g[0], hi = g[levels - 1];
  if (lo == hi) return fallback;
  const bool asc = hi > lo;
  // First index whose value is at or past w in the grid's direction.
  int a = 0, b = levels;
  while (a < b) {
    const int m = (a + b) / 2;
    if (asc ? g[m] < w : g[m] > w)
      a = m + 1;
    else
      b = m;
  }
  if (a == 0) return 0;
  if (a == levels) return levels - 1;
  return std::fabs(g[a - 1] - w) <= std::fabs(g[a] - w) ? a - 1 : a;
}

// ---- least-squares scale refit ------------------------------------------------------------------
// With the codes fixed, element i of sub-block j dequantizes to a_j * level(code_i) + min_sign * b_j:
// linear in the sub-block's scale a_j and min b_j. The legacy types hold a_j (= d) and b_j (= m) as
// binary16 per block; the k-quants hold a_j = d * s_j and b_j = dmin * m_j, integers s_j, m_j in a
// fixed range under a binary16 d and dmin per super-block.
struct ScaleModel {
  bool k = false;  // integer sub-scales under a super-block d (and dmin)
  bool has_min = false;
  double min_sign = 0;
  int s_lo = 0, s_hi = 0, m_hi = 0;
};

ScaleModel scale_model(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1: return {false, true, 1, 0, 0, 0};
    case GgmlType::Q2_K: return {true, true, -1, 0, 15, 15};
    case GgmlType::Q3_K: return {true, false, 0, -32, 31, 0};
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: return {true, true, -1, 0, 63, 63};
    case GgmlType::Q6_K: return {true, false, 0, -128, 127, 0};
    default: return {};
  }
}

// The level a code multiplies its sub-block's scale by.
double level(GgmlType t, int c) {
  switch (t) {
    case GgmlType::Q4_0: return c - 8;
    case GgmlType::Q5_0: return c - 16;
    case GgmlType::Q8_0: return c - 128;
    case GgmlType::IQ4_NL: return kernels::kIq4nlValues[c];
    case GgmlType::Q3_K: return c - 4;
    case GgmlType::Q6_K: return c - 32;
    default: return c;  // q4_1, q5_1, q2_k, q4_k, q5_k: the min is separate
  }
}

// A block's continuous parameters as stored: binary16 d (and dmin, or the legacy m), and for the
// k-quants the integer sub-scales s and mins m.
struct BlockParams {
  uint16_t d = 0, dmin = 0;
  int s[16] = {}, m[16] = {};
};

uint16_t f16_bits(double v) { return f32_to_f16(static_cast<float>(v)).bits; }
double f16_value(uint16_t bits) { return f16_to_f32(f16{bits}); }

BlockParams get_params(GgmlType t, const std::byte* b) {
  BlockParams p;
  switch (t) {
    case GgmlType::Q4_0: p.d = reinterpret_cast<const BlockQ4_0*>(b)->d; break;
    case GgmlType::Q5_0: p.d = reinterpret_cast<const BlockQ5_0*>(b)->d; break;
    case GgmlType::Q8_0: p.d = reinterpret_cast<const BlockQ8_0*>(b)->d; break;
    case GgmlType::IQ4_NL: p.d = reinterpret_cast<const BlockIQ4_NL*>(b)->d; break;
    case GgmlType::Q4_1: {
      const auto* y = reinterpret_cast<const BlockQ4_1*>(b);
      p.d = y->d;
      p.dmin = y->m;
      break;
    }
    case GgmlType::Q5_1: {
      const auto* y = reinterpret_cast<const BlockQ5_1*>(b);
      p.d = y->d;
      p.dmin = y->m;
      break;
    }
    case GgmlType::Q2_K: {
      const auto* y = reinterpret_cast<const BlockQ2_K*>(b);
      p.d = y->d;
      p.dmin = y->dmin;
      for (int j = 0; j < 16; ++j) {
        p.s[j] = y->scales[j] & 0xF;
        p.m[j] = y->scales[j] >> 4;
      }
      break;
    }
    case GgmlType::Q3_K: {
      const auto* y = reinterpret_cast<const BlockQ3_K*>(b);
      p.d = y->d;
      for (int j = 0; j < 16; ++j) {
        const int low = j < 8 ? (y->scales[j] & 0xF) : (y->scales[j - 8] >> 4);
        const int high = (y->scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        p.s[j] = (low | (high << 4)) - 32;
      }
      break;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool q4 = t == GgmlType::Q4_K;
      const uint8_t* sc = q4 ? reinterpret_cast<const BlockQ4_K*>(b)->scales : reinterpret_cast<const BlockQ5_K*>(b)->scales;
      p.d = q4 ? reinterpret_cast<const BlockQ4_K*>(b)->d : reinterpret_cast<const BlockQ5_K*>(b)->d;
      p.dmin = q4 ? reinterpret_cast<const BlockQ4_K*>(b)->dmin : reinterpret_cast<const BlockQ5_K*>(b)->dmin;
      for (int j = 0; j < 8; ++j) {
        uint8_t s, m;
        kernels::detail::unpack_scale_min_k4(j, sc, s, m);
        p.s[j] = s;
        p.m[j] = m;
      }
      break;
    }
    case GgmlType::Q6_K: {
      const auto* y = reinterpret_cast<const BlockQ6_K*>(b);
      p.d = y->d;
      for (int j = 0; j < 16; ++j) p.s[j] = y->scales[j];
      break;
    }
    default: fail("ggml gptq: type ", kernels::ggml_type_name(t), " is not supported");
  }
  return p;
}

// Writes p into the block at b (ggml's packing), leaving the codes as they are.
void set_params(GgmlType t, std::byte* b, const BlockParams& p) {
  switch (t) {
    case GgmlType::Q4_0: reinterpret_cast<BlockQ4_0*>(b)->d = p.d; return;
    case GgmlType::Q5_0: reinterpret_cast<BlockQ5_0*>(b)->d = p.d; return;
    case GgmlType::Q8_0: reinterpret_cast<BlockQ8_0*>(b)->d = p.d; return;
    case GgmlType::IQ4_NL: reinterpret_cast<BlockIQ4_NL*>(b)->d = p.d; return;
    case GgmlType::Q4_1: {
      auto* y = reinterpret_cast<BlockQ4_1*>(b);
      y->d = p.d;
      y->m = p.dmin;
      return;
    }
    case GgmlType::Q5_1: {
      auto* y = reinterpret_cast<BlockQ5_1*>(b);
      y->d = p.d;
      y->m = p.dmin;
      return;
    }
    case GgmlType::Q2_K: {
      auto* y = reinterpret_cast<BlockQ2_K*>(b);
      y->d = p.d;
      y->dmin = p.dmin;
      for (int j = 0; j < 16; ++j) y->scales[j] = static_cast<uint8_t>(p.s[j] | (p.m[j] << 4));
      return;
    }
    case GgmlType::Q3_K: {
      auto* y = reinterpret_cast<BlockQ3_K*>(b);
      y->d = p.d;
      std::memset(y->scales, 0, sizeof y->scales);
      for (int j = 0; j < 16; ++j) {
        const int l = p.s[j] + 32;
        if (j < 8)
          y->scales[j] = static_cast<uint8_t>(l & 0xF);
        else
          y->scales[j - 8] = static_cast<uint8_t>(y->scales[j - 8] | ((l & 0xF) << 4));
        y->scales[8 + j % 4] = static_cast<uint8_t>(y->scales[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
      }
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool q4 = t == GgmlType::Q4_K;
      uint8_t* sc = q4 ? reinterpret_cast<BlockQ4_K*>(b)->scales : reinterpret_cast<BlockQ5_K*>(b)->scales;
      if (q4) {
        reinterpret_cast<BlockQ4_K*>(b)->d = p.d;
        reinterpret_cast<BlockQ4_K*>(b)->dmin = p.dmin;
      } else {
        reinterpret_cast<BlockQ5_K*>(b)->d = p.d;
        reinterpret_cast<BlockQ5_K*>(b)->dmin = p.dmin;
      }
      for (int j = 0; j < 8; ++j) {
        const int ls = p.s[j], lm = p.m[j];
        if (j < 4) {
          sc[j] = static_cast<uint8_t>(ls);
          sc[j + 4] = static_cast<uint8_t>(lm);
        } else {
          sc[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
          sc[j - 4] = static_cast<uint8_t>(sc[j - 4] | ((ls >> 4) << 6));
          sc[j] = static_cast<uint8_t>(sc[j] | ((lm >> 4) << 6));
        }
      }
      return;
    }
    case GgmlType::Q6_K: {
      auto* y = reinterpret_cast<BlockQ6_K*>(b);
      y->d = p.d;
      for (int j = 0; j < 16; ++j) y->scales[j] = static_cast<int8_t>(p.s[j]);
      return;
    }
    default: fail("ggml gptq: type ", kernels::ggml_type_name(t), " is not supported");
  }
}

// The row's parameter vector theta: the scale of sub-block j at j, its min at nsub + j.
void params_to_theta(const ScaleModel& sm, int spb, const std::vector<BlockParams>& ps, int64_t nsub, Vector<double>& th) {
  for (std::size_t u = 0; u < ps.size(); ++u) {
    const BlockParams& p = ps[u];
    const double d = f16_value(p.d), dm = f16_value(p.dmin);
    for (int j = 0; j < spb; ++j) {
      const int64_t g = static_cast<int64_t>(u) * spb + j;
      th[g] = sm.k ? d * p.s[j] : d;
      if (sm.has_min) th[nsub + g] = sm.k ? dm * p.m[j] : dm;
    }
  }
}

// theta^T G theta - 2 c^T theta: the row's objective less its constant w^T H w.
double objective(const Matrix<double>& g, const Vector<double>& c, const Vector<double>& th) {
  return th.dot(g.selfadjointView<Eigen::Lower>() * th) - 2 * c.dot(th);
}

// Integers n in [lo, hi] and a scale d with d * n close to a in the metric g: candidates map a's
// largest-magnitude entry to hi (and to lo when the range is signed), give or take a step in
// quarters, round the rest, and each candidate's d is the best for its integers.
double encode_ints(const Vector<double>& a, const Matrix<double>& g, int lo, int hi, int* n) {
  const int64_t m = a.size();
  int64_t ext = 0;
  for (int64_t j = 1; j < m; ++j)
    if (std::fabs(a[j]) > std::fabs(a[ext])) ext = j;
  if (a[ext] == 0) {
    for (int64_t j = 0; j < m; ++j) n[j] = std::clamp(0, lo, hi);
    return 0;
  }
  const Vector<double> ga = g * a;
  const double aga = a.dot(ga);
  double best = std::numeric_limits<double>::infinity(), best_d = 0;
  Vector<double> nv(m);
  for (const int target : {hi, lo}) {
    if (target == 0) continue;
    for (int q = -4; q <= 4; ++q) {
      const double den = target + 0.25 * q;
      if (den == 0) continue;
      const double d0 = a[ext] / den;
      for (int64_t j = 0; j < m; ++j) nv[j] = std::clamp<double>(std::nearbyint(a[j] / d0), lo, hi);
      const double ngn = nv.dot(g * nv), nga = nv.dot(ga);
      if (!(ngn > 0)) continue;
      const double d = nga / ngn, e = aga - 2 * d * nga + d * d * ngn;
      if (e < best) {
        best = e;
        best_d = d;
        for (int64_t j = 0; j < m; ++j) n[j] = static_cast<int>(nv[j]);
      }
    }
  }
  if (!std::isfinite(best))
    for (int64_t j = 0; j < m; ++j) n[j] = std::clamp(0, lo, hi);
  return best_d;
}

// Solves (G + ridge) x = c + ridge * x0 for x: the ridge, tiny against G's diagonal, keeps directions
// G does not determine (a sub-block whose codes all sit at level 0) at x0.
bool ridge_solve(const Matrix<double>& g, const Vector<double>& c, const Vector<double>& x0, Vector<double>& x) {
  const int64_t n = g.rows();
  const double mean = n > 0 ? g.diagonal().cwiseAbs().mean() : 0;
  const double lambda = 1e-10 * mean + 1e-300;
  Matrix<double> a = g;
  a.diagonal().array() += lambda;
  const Eigen::LDLT<Matrix<double>, Eigen::Lower> ldlt(a);
  if (ldlt.info() != Eigen::Success) return false;
  x = ldlt.solve(c + lambda * x0);
  return x.allFinite();
}

// What the refit of a layer shares across its rows.
struct RefitLayer {
  GgmlType type;
  Format f;
  ScaleModel sm;
  const kernels::GgmlCodec* codec;
  const Matrix<double>* hd;  // the damped Hessian, original column order
  int64_t cols, nsub, units;
  int spb;                    // sub-blocks per block
  uint64_t row_bytes;
  Matrix<double> hsum;  // [cols, nsub]: hsum(i, j) = sum of hd(i, k) over k in sub-block j (types with a min)
  Matrix<double> msum;  // [nsub, nsub]: the sums of hd over pairs of sub-blocks
};

RefitLayer refit_layer(GgmlType t, const Matrix<double>& hd) {
  RefitLayer L{t, format_of(t), scale_model(t), &kernels::ggml_codec(t), &hd, hd.cols(), 0, 0, 0, 0, {}, {}};
  L.nsub = L.cols / L.f.sub;
  L.units = L.cols / L.f.unit;
  L.spb = L.f.unit / L.f.sub;
  L.row_bytes = L.codec->row_bytes(L.cols);
  if (L.sm.has_min) {
    L.hsum.resize(L.cols, L.nsub);
    for (int64_t j = 0; j < L.nsub; ++j) L.hsum.col(j) = hd.middleCols(j * L.f.sub, L.f.sub).rowwise().sum();
    L.msum.resize(L.nsub, L.nsub);
    for (int64_t a = 0; a < L.nsub; ++a) L.msum.row(a) = L.hsum.middleRows(a * L.f.sub, L.f.sub).colwise().sum();
  }
  return L;
}

// The k-quants' encoding of a continuous theta: per super-block integer sub-scales (and mins) from
// theta (ints_from_theta) or kept as they are, then every super-block's d (and dmin) re-solved
// together for those integers and rounded to binary16.
void solve_super_scales(const RefitLayer& L, const Matrix<double>& g, const Vector<double>& c,
                        std::vector<BlockParams>& ps) {
  const int64_t nsb = L.units, np = nsb * (L.sm.has_min ? 2 : 1), n = g.rows();
  Matrix<double> p = Matrix<double>::Zero(n, np);
  Vector<double> phi0(np);
  for (int64_t u = 0; u < nsb; ++u) {
    for (int j = 0; j < L.spb; ++j) {
      p(u * L.spb + j, u) = ps[static_cast<std::size_t>(u)].s[j];
      if (L.sm.has_min) p(L.nsub + u * L.spb + j, nsb + u) = ps[static_cast<std::size_t>(u)].m[j];
    }
    phi0[u] = f16_value(ps[static_cast<std::size_t>(u)].d);
    if (L.sm.has_min) phi0[nsb + u] = f16_value(ps[static_cast<std::size_t>(u)].dmin);
  }
  const Matrix<double> gp = g.selfadjointView<Eigen::Lower>() * p;
  const Matrix<double> gphi = p.transpose() * gp;
  Vector<double> phi;
  if (!ridge_solve(gphi, p.transpose() * c, phi0, phi)) return;
  for (int64_t u = 0; u < nsb; ++u) {
    ps[static_cast<std::size_t>(u)].d = f16_bits(phi[u]);
    if (L.sm.has_min) ps[static_cast<std::size_t>(u)].dmin = f16_bits(phi[nsb + u]);
  }
}

// Refits one row from its normal equations g theta = c (g's lower triangle filled): ps holds the
// row's block parameters as written and, on return, those to write. Returns whether they changed.
bool refit_row(const RefitLayer& L, const Matrix<double>& g, const Vector<double>& c, std::vector<BlockParams>& ps) {
  const int64_t n = g.rows();
  Vector<double> th0(n), th(n), star;
  params_to_theta(L.sm, L.spb, ps, L.nsub, th0);
  const double f0 = objective(g, c, th0);
  if (!ridge_solve(g, c, th0, star)) return false;
  std::vector<std::vector<BlockParams>> candidates;
  if (!L.sm.k) {
    std::vector<BlockParams> q = ps;
    for (int64_t u = 0; u < L.units; ++u) {
      q[static_cast<std::size_t>(u)].d = f16_bits(star[u]);
      if (L.sm.has_min) q[static_cast<std::size_t>(u)].dmin = f16_bits(star[L.nsub + u]);
    }
    candidates.push_back(std::move(q));
  } else {
    // New integers from the continuous optimum, each super-block in its own part of the metric; and
    // the integers as written, with only d and dmin re-solved.
    std::vector<BlockParams> q = ps;
    const Matrix<double> gf = g.selfadjointView<Eigen::Lower>();
    for (int64_t u = 0; u < L.units; ++u) {
      BlockParams& b = q[static_cast<std::size_t>(u)];
      const int64_t s0 = u * L.spb;
      encode_ints(star.segment(s0, L.spb), gf.block(s0, s0, L.spb, L.spb), L.sm.s_lo, L.sm.s_hi, b.s);
      if (L.sm.has_min)
        encode_ints(star.segment(L.nsub + s0, L.spb), gf.block(L.nsub + s0, L.nsub + s0, L.spb, L.spb), 0, L.sm.m_hi,
                    b.m);
    }
    solve_super_scales(L, g, c, q);
    candidates.push_back(std::move(q));
    std::vector<BlockParams> kept = ps;
    solve_super_scales(L, g, c, kept);
    candidates.push_back(std::move(kept));
  }
  double best = f0;
  const std::vector<BlockParams>* chosen = nullptr;
  for (const auto& q : candidates) {
    params_to_theta(L.sm, L.spb, q, L.nsub, th);
    if (!th.allFinite()) continue;
    const double fq = objective(g, c, th);
    if (fq < best) {
      best = fq;
      chosen = &q;
    }
  }
  if (chosen == nullptr) return false;
  ps = *chosen;
  return true;
}

// Refits rows [0, rc) of a chunk: weights at w (row-major, `cols` apart), bytes at blocks (row_bytes
// apart). changed[r] says whether row r's bytes changed.
void refit_rows(const RefitLayer& L, const float* w, int64_t rc, std::byte* blocks, std::vector<char>& changed) {
  const int64_t cols = L.cols, nsub = L.nsub, sub = L.f.sub;
  const int64_t n = nsub * (L.sm.has_min ? 2 : 1);
  const Matrix<double>& hd = *L.hd;
  // Each element's level, and the weights.
  RowMatrix<double> lev(rc, cols);
  Matrix<double> wt(cols, rc);
  for (int64_t r = 0; r < rc; ++r) {
    const std::byte* row = blocks + static_cast<uint64_t>(r) * L.row_bytes;
    for (int64_t c = 0; c < cols; ++c) {
      lev(r, c) = level(L.type, get_code(L.type, row + static_cast<uint64_t>(c / L.f.unit) * L.codec->type_size,
                                         static_cast<int>(c % L.f.unit)));
      wt(c, r) = w[r * cols + c];
    }
  }
  // Normal equations, lower triangles: G(a, j) = lev_a^T H[a, j] lev_j for a >= j from the product of
  // H's columns of sub-block j (rows from j on) with the levels there.
  std::vector<Matrix<double>> g(static_cast<std::size_t>(rc), Matrix<double>::Zero(n, n));
  std::vector<Vector<double>> c(static_cast<std::size_t>(rc), Vector<double>::Zero(n));
  Matrix<double> s;
  for (int64_t j = 0; j < nsub; ++j) {
    const int64_t j0 = j * sub;
    s.noalias() = hd.block(j0, j0, cols - j0, sub) * lev.middleCols(j0, sub).transpose();
    for (int64_t r = 0; r < rc; ++r) {
      Matrix<double>& gr = g[static_cast<std::size_t>(r)];
      for (int64_t a = j; a < nsub; ++a) gr(a, j) = lev.row(r).segment(a * sub, sub).dot(s.col(r).segment(a * sub - j0, sub).transpose());
    }
  }
  const Matrix<double> hw = hd * wt;
  for (int64_t r = 0; r < rc; ++r) {
    Matrix<double>& gr = g[static_cast<std::size_t>(r)];
    Vector<double>& cr = c[static_cast<std::size_t>(r)];
    for (int64_t a = 0; a < nsub; ++a) cr[a] = lev.row(r).segment(a * sub, sub).dot(hw.col(r).segment(a * sub, sub).transpose());
    if (L.sm.has_min) {
      const double sg = L.sm.min_sign;
      for (int64_t a = 0; a < nsub; ++a) {
        cr[nsub + a] = sg * hw.col(r).segment(a * sub, sub).sum();
        // min of a against the scale of every j; the mins against each other are row-independent.
        for (int64_t j = 0; j < nsub; ++j)
          gr(nsub + a, j) = sg * lev.row(r).segment(j * sub, sub).dot(L.hsum.col(a).segment(j * sub, sub).transpose());
        for (int64_t b = 0; b <= a; ++b) gr(nsub + a, nsub + b) = L.msum(a, b);
      }
    }
  }
  changed.assign(static_cast<std::size_t>(rc), 0);
  std::vector<BlockParams> ps(static_cast<std::size_t>(L.units));
  for (int64_t r = 0; r < rc; ++r) {
    std::byte* row = blocks + static_cast<uint64_t>(r) * L.row_bytes;
    for (int64_t u = 0; u < L.units; ++u)
      ps[static_cast<std::size_t>(u)] = get_params(L.type, row + static_cast<uint64_t>(u) * L.codec->type_size);
    if (!refit_row(L, g[static_cast<std::size_t>(r)], c[static_cast<std::size_t>(r)], ps)) continue;
    for (int64_t u = 0; u < L.units; ++u)
      set_params(L.type, row + static_cast<uint64_t>(u) * L.codec->type_size, ps[static_cast<std::size_t>(u)]);
    changed[static_cast<std::size_t>(r)] = 1;
  }
}

}  // namespace

// Tuned by KL on SmolLM2 with Moby-Dick 0.7:0.8 (docs/ggml-quantization.md): act-order,
// except q3_k whose blocks do better fitted on their updated weights (act-order inside blocks); a
// larger damping where it lowered the held-out KL. The types not listed were not tuned and keep
// GPTQ's usual 0.01 and act-order.
GgmlGptqOptions gptq_defaults(GgmlType type) {
  GgmlGptqOptions o;
  if (type == GgmlType::Q2_K) o.damp = 0.3;
  if (type == GgmlType::Q3_K || type == GgmlType::IQ4_NL) o.damp = 0.1;
  if (type == GgmlType::Q3_K) o.order = GptqOrder::act_order_in_blocks;
  // Least-squares scales lowered the KL of each type they were measured on; q3_k also gained from one
  // refit pass on them.
  if (type == GgmlType::IQ4_NL || type == GgmlType::Q2_K || type == GgmlType::Q3_K) o.ls_scales = true;
  if (type == GgmlType::Q3_K) o.refit = 1;
  return o;
}

std::string_view order_name(GptqOrder order) {
  switch (order) {
    case GptqOrder::natural: return "natural";
    case GptqOrder::act_order: return "act";
    case GptqOrder::act_order_in_blocks: return "act_block";
  }
  return "?";
}

GptqOrder parse_order(std::string_view name) {
  for (const GptqOrder o : {GptqOrder::natural, GptqOrder::act_order, GptqOrder::act_order_in_blocks})
    if (name == order_name(o)) return o;
  fail("order '", name, "' is not one of natural, act, act_block");
}

GgmlGptqResult gptq(GgmlType type, const RowMatrix<float>& w, const Matrix<double>& h, std::span<const float> importance) {
  return gptq(type, w, h, importance, gptq_defaults(type));
}

GgmlGptqResult gptq(GgmlType type, const RowMatrix<float>& w, const Matrix<double>& h,
                    std::span<const float> importance, const GgmlGptqOptions& options, std::string_view name) {
  const std::string what = "layer '" + std::string(name) + "'";
  require(can_quantize(type), what, ": ggml gptq cannot write type ", kernels::ggml_type_name(type));
  const Format f = format_of(type);
  const kernels::GgmlCodec& codec = kernels::ggml_codec(type);
  const int64_t rows = w.rows(), cols = w.cols();
  require(cols > 0 && cols % f.unit == 0, what, ": ", cols, " columns are not a whole number of ", lower_name(type),
          " blocks (", f.unit, " elements)");
  require(h.rows() == cols && h.cols() == cols, what, ": Hessian is [", h.rows(), ", ", h.cols(), "] for a weight with ",
          cols, " inputs");
  require(h.allFinite(), what, ": Hessian has a non-finite value");
  require(importance.empty() || static_cast<int64_t>(importance.size()) == cols, what, ": imatrix has ",
          importance.size(), " values for ", cols, " input columns");
  for (std::size_t j = 0; j < importance.size(); ++j)
    require(std::isfinite(importance[j]) && importance[j] >= 0, what, ": imatrix[", j, "] is ", importance[j],
            " (must be finite and non-negative)");
  require(options.damp >= 0 && std::isfinite(options.damp), what, ": damp must be finite and >= 0, got ", options.damp);
  require(options.shrink >= 0 && options.shrink <= 1, what, ": shrink must be in [0, 1], got ", options.shrink);
  require(options.block >= 1, what, ": block must be >= 1, got ", options.block);
  require(options.refit >= 0 && options.refit <= kMaxGptqRefit, what, ": refit must be in [0, ", kMaxGptqRefit, "], got ",
          options.refit);
  require(options.order == GptqOrder::natural || options.order == GptqOrder::act_order ||
              options.order == GptqOrder::act_order_in_blocks,
          what, ": unknown column order ", static_cast<int>(options.order));
  if (!w.allFinite())
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        require(std::isfinite(w(r, c)), what, ": weight [", r, ", ", c, "] is ", w(r, c));

  Matrix<double> hess = h;
  for (int64_t j = 0; j < cols; ++j) {
    require(hess(j, j) >= 0, what, ": Hessian diagonal ", j, " is negative (", hess(j, j), ")");
    // An input that is always zero on the calibration data: its weights reach no output, and its
    // row and column of H are zero, so no error flows through it.
    if (hess(j, j) == 0) hess(j, j) = 1;
  }
  // perm[i]: the original column the loop visits i-th.
  std::vector<int64_t> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  const auto louder = [&](int64_t a, int64_t b) { return hess(a, a) > hess(b, b); };
  if (options.order == GptqOrder::act_order) std::stable_sort(perm.begin(), perm.end(), louder);
  if (options.order == GptqOrder::act_order_in_blocks)
    for (int64_t c0 = 0; c0 < cols; c0 += f.unit) std::stable_sort(perm.begin() + c0, perm.begin() + c0 + f.unit, louder);
  Matrix<double> hp(cols, cols);
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) hp(j, i) = hess(perm[static_cast<std::size_t>(j)], perm[static_cast<std::size_t>(i)]);
  if (options.shrink > 0)
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j)
        if (i != j) hp(j, i) *= 1 - options.shrink;
  hp.diagonal().array() += options.damp * hp.diagonal().mean();
  Matrix<float> u;
  try {
    u = compress::detail::inverse_upper_factor(hp).cast<float>();
  } catch (const Error& e) {
    fail(what, ": ggml gptq: ", e.what());
  }

  // With act-order over the whole row every block is fitted before the loop; otherwise a block is
  // fitted when the loop reaches it, and the lazy batches hold whole blocks so that a block's
  // weights carry every earlier update when it is fitted.
  const bool fit_first = options.order == GptqOrder::act_order;
  const int64_t block = fit_first ? options.block : f.unit * std::max<int64_t>(1, options.block / f.unit);
  const int64_t units = cols / f.unit, subs = cols / f.sub;
  const uint64_t row_bytes = codec.row_bytes(cols);
  const bool legacy = type == GgmlType::Q4_0 || type == GgmlType::Q4_1 || type == GgmlType::Q5_0 || type == GgmlType::Q5_1;
  const float* imp = importance.empty() ? nullptr : importance.data();

  // The refit's objective uses the Hessian the loop factored (shrunk and damped), in column order.
  Matrix<double> hd;
  std::optional<RefitLayer> refit;
  if (options.ls_scales) {
    hd = hess;
    if (options.shrink > 0) {
      const Vector<double> diag = hd.diagonal();
      hd *= 1 - options.shrink;
      hd.diagonal() = diag;
    }
    hd.diagonal().array() += options.damp * hess.diagonal().mean();
    refit.emplace(refit_layer(type, hd));
  }

  GgmlGptqResult out;
  out.blocks.resize(row_bytes * static_cast<uint64_t>(rows));
  out.values.resize(rows, cols);
  const Matrix<float> w0 = w;  // column-major: the loop walks columns

  constexpr int64_t kRowChunk = 32;
  parallel_for(rows, kRowChunk, [&](int64_t r0, int64_t r1) {
    const int64_t rc = r1 - r0;
    Matrix<float> wc(rc, cols);
    std::vector<float> sigma2(static_cast<std::size_t>(rc));
    for (int64_t r = 0; r < rc; ++r) sigma2[static_cast<std::size_t>(r)] = legacy ? kernels::detail::legacy_row_sigma2(&w(r0 + r, 0), cols) : 0.f;
    // Per row of the chunk, in original column order: the grid of every sub-block, the weights each
    // block was fitted on and the codes ggml gave them, and the weights the loop rounded.
    std::vector<float> grid(static_cast<std::size_t>(rc * subs * f.levels));
    std::vector<float> fit_x(static_cast<std::size_t>(rc * cols)), rounded(static_cast<std::size_t>(rc * cols));
    std::vector<uint8_t> fit_code(static_cast<std::size_t>(rc * cols));
    auto row_blocks = [&](int64_t r) { return out.blocks.data() + static_cast<uint64_t>(r0 + r) * row_bytes; };
    // Records block k of row r, just written from x (the block's weights, original order): the
    // weights, ggml's codes and the grid.
    auto record = [&](int64_t r, int64_t k, const float* x) {
      const std::byte* dst = row_blocks(r) + static_cast<uint64_t>(k) * codec.type_size;
      const int64_t c0 = k * f.unit;
      for (int e = 0; e < f.unit; ++e) {
        fit_x[static_cast<std::size_t>(r * cols + c0 + e)] = x[e];
        fit_code[static_cast<std::size_t>(r * cols + c0 + e)] = static_cast<uint8_t>(get_code(type, dst, e));
      }
      read_grid(type, f, codec, dst, &grid[static_cast<std::size_t>((r * subs + c0 / f.sub) * f.levels)]);
    };
    // Fits every block of row r on x (the whole row, original order) with the row's sigma^2 s2, as
    // ggml quantizes a row.
    auto fit_row = [&](int64_t r, const float* x, float s2) {
      kernels::detail::quantize_blocks_legacy(type, x, cols, row_blocks(r), imp, s2);
      for (int64_t k = 0; k < units; ++k) record(r, k, x + k * f.unit);
    };
    std::vector<float> xrow(static_cast<std::size_t>(cols));
    float x[256];

    Matrix<float> err(rc, block);
    for (int pass = 0; pass <= options.refit; ++pass) {
      // Pass 0 fits as its order says; each refit pass fits every block first, on the weights the
      // previous pass rounded (sigma^2 then theirs: ggml's quantizer on those rows).
      const bool static_fit = fit_first || pass > 0;
      for (int64_t i = 0; i < cols; ++i) wc.col(i) = w0.col(perm[static_cast<std::size_t>(i)]).segment(r0, rc);
      if (static_fit) {
        for (int64_t r = 0; r < rc; ++r) {
          if (pass == 0) {
            for (int64_t c = 0; c < cols; ++c) xrow[static_cast<std::size_t>(c)] = w(r0 + r, c);
            fit_row(r, xrow.data(), sigma2[static_cast<std::size_t>(r)]);
          } else {
            const float* xr = &rounded[static_cast<std::size_t>(r * cols)];
            fit_row(r, xr, legacy ? kernels::detail::legacy_row_sigma2(xr, cols) : 0.f);
          }
        }
      }
      for (int64_t i1 = 0; i1 < cols; i1 += block) {
        const int64_t nb = std::min(block, cols - i1);
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t col = i1 + i, orig = perm[static_cast<std::size_t>(col)];
          if (!static_fit && col % f.unit == 0) {
            // The block's columns are the loop's col .. col + unit (in its own order inside the block).
            const int64_t k = orig / f.unit;
            for (int64_t r = 0; r < rc; ++r) {
              for (int e = 0; e < f.unit; ++e) x[perm[static_cast<std::size_t>(col + e)] - k * f.unit] = wc(r, col + e);
              std::byte* dst = row_blocks(r) + static_cast<uint64_t>(k) * codec.type_size;
              kernels::detail::quantize_blocks_legacy(type, x, f.unit, dst, imp ? imp + k * f.unit : nullptr,
                                                      sigma2[static_cast<std::size_t>(r)]);
              record(r, k, x);
            }
          }
          const float d = u(col, col);
          float* wcol = &wc(0, col);
          float* ecol = &err(0, i);
          const int64_t k = orig / f.unit;
          const int e = static_cast<int>(orig % f.unit);
          for (int64_t r = 0; r < rc; ++r) {
            const std::size_t at = static_cast<std::size_t>(r * cols + orig);
            const float* g = &grid[static_cast<std::size_t>((r * subs + orig / f.sub) * f.levels)];
            const int code = wcol[r] == fit_x[at] ? fit_code[at] : nearest_code(g, f.levels, wcol[r], fit_code[at]);
            const float q = g[code];
            set_code(type, row_blocks(r) + static_cast<uint64_t>(k) * codec.type_size, e, code);
            out.values(r0 + r, orig) = q;
            rounded[at] = wcol[r];
            ecol[r] = (wcol[r] - q) / d;
          }
          compress::detail::feedback_in_batch(wc, err, u, i1, i, nb);
        }
        compress::detail::feedback_after_batch(wc, err, u, i1, nb);
      }
    }
    if (refit) {
      std::vector<char> changed;
      refit_rows(*refit, &w(r0, 0), rc, row_blocks(0), changed);
      for (int64_t r = 0; r < rc; ++r)
        if (changed[static_cast<std::size_t>(r)] != 0) codec.dequantize_row(row_blocks(r), cols, &out.values(r0 + r, 0));
    }
  });
  return out;
}

namespace detail {

int64_t refit_scales(GgmlType type, const RowMatrix<float>& w, const Matrix<double>& hd, std::span<std::byte> blocks) {
  require(can_quantize(type), "ggml scale refit: cannot write type ", kernels::ggml_type_name(type));
  const Format f = format_of(type);
  const int64_t rows = w.rows(), cols = w.cols();
  require(cols > 0 && cols % f.unit == 0, "ggml scale refit: ", cols, " columns are not whole ", lower_name(type),
          " blocks");
  require(hd.rows() == cols && hd.cols() == cols, "ggml scale refit: Hessian is [", hd.rows(), ", ", hd.cols(),
          "] for ", cols, " columns");
  const RefitLayer layer = refit_layer(type, hd);
  require(blocks.size() == layer.row_bytes * static_cast<uint64_t>(rows), "ggml scale refit: ", blocks.size(),
          " bytes for ", rows, " rows of ", layer.row_bytes);
  std::vector<int64_t> count(static_cast<std::size_t>((rows + 31) / 32), 0);
  parallel_for(rows, 32, [&](int64_t r0, int64_t r1) {
    std::vector<char> changed;
    refit_rows(layer, &w(r0, 0), r1 - r0, blocks.data() + static_cast<uint64_t>(r0) * layer.row_bytes, changed);
    count[static_cast<std::size_t>(r0 / 32)] = std::count(changed.begin(), changed.end(), 1);
  });
  return std::accumulate(count.begin(), count.end(), int64_t{0});
}

}  // namespace detail

}  // namespace strata::compress::ggml
