// Products with compressed weights for decode and small batches (ggml blocks, strata's int4 groups,
// 2:4 sparse), attention key scoring with top-k, and the copy bandwidth they are measured against.
//
// A product of one token reads every weight byte once and does a handful of operations per weight,
// so it is bound by memory bandwidth only if the decode is cheap and enough bytes are in flight:
//   - each warp computes two rows at once, so every x value it loads serves two rows;
//   - weight bytes are read with coalesced 16-byte loads into a per-warp stage in shared memory,
//     the next step's loads issued before the current step is computed;
//   - small integers become floats by placing them in the mantissa of 2^23 and subtracting (one
//     byte permute and one add: int-to-float conversions run at a quarter of the FMA rate);
//   - weights are loaded with the evict-first hint: they are read once, x is read by every warp.
// The element values are those of the CPU dequantizers (src/kernels/cpu/ggml_dequant.cc) and of
// nn::GroupQuantLinear::densify, operation for operation.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>

#include "strata/core/error.hpp"
#include "strata/kernels/cuda.hpp"

namespace strata::cuda {

namespace {

using kernels::GgmlType;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail("CUDA ", what, ": ", cudaGetErrorString(status));
}

bool aligned(const void* p, uintptr_t to) { return reinterpret_cast<uintptr_t>(p) % to == 0; }

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kChunk = 256;  // columns a warp decodes at once, 8 a lane
constexpr int kChunksPerStep = 4;
constexpr int kMaxTokens = 8;

__device__ __forceinline__ float half_bits(const uint8_t* p) {
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}

// Byte k of `word` minus `bias`, exactly (bias an integer below 2^23).
template <int k>
__device__ __forceinline__ float byte_minus(uint32_t word, float biased_magic) {
  return __int_as_float(__byte_perm(word, 0x4B000000u, 0x7540u | k)) - biased_magic;
}
constexpr float kMagic = 8388608.0f;  // 2^23

// Eight bytes at a 2-byte aligned shared address (ggml blocks of 18 and 34 bytes).
__device__ __forceinline__ uint2 load8_a2(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return make_uint2(h[0] | (static_cast<uint32_t>(h[1]) << 16), h[2] | (static_cast<uint32_t>(h[3]) << 16));
}

// v[0..8) = scale(byte - bias) for the four bytes of lo, then the four of hi.
template <class Scale>
__device__ __forceinline__ void bytes8(uint32_t lo, uint32_t hi, float biased_magic, Scale scale, float v[8]) {
  v[0] = scale(byte_minus<0>(lo, biased_magic));
  v[1] = scale(byte_minus<1>(lo, biased_magic));
  v[2] = scale(byte_minus<2>(lo, biased_magic));
  v[3] = scale(byte_minus<3>(lo, biased_magic));
  v[4] = scale(byte_minus<0>(hi, biased_magic));
  v[5] = scale(byte_minus<1>(hi, biased_magic));
  v[6] = scale(byte_minus<2>(hi, biased_magic));
  v[7] = scale(byte_minus<3>(hi, biased_magic));
}

// The same for the eight low (or high) nibbles of q's bytes.
template <class Scale>
__device__ __forceinline__ void nibbles(uint2 q, bool high, float biased_magic, Scale scale, float v[8]) {
  const int shift = high ? 4 : 0;
  bytes8((q.x >> shift) & 0x0F0F0F0Fu, (q.y >> shift) & 0x0F0F0F0Fu, biased_magic, scale, v);
}

// The first of the kRowsPerWarp rows this warp computes.
__device__ __forceinline__ int64_t warp_row0() {
  return (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + static_cast<int>(threadIdx.x) / kWarp) * kRowsPerWarp;
}
// The warp's rows, a missing last row repeating the one before (its result is not stored), so that
// every lane runs the same loads.
__device__ __forceinline__ void warp_rows(int64_t row0, int64_t rows, int64_t (&row)[kRowsPerWarp]) {
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) row[r] = row0 + r < rows ? row0 + r : rows - 1;
}

// Sums each row's and token's partial dot products over the warp; lane 0 stores the existing rows.
template <int T>
__device__ __forceinline__ void reduce_store(float (&acc)[kRowsPerWarp][T], int lane, int64_t row0, int64_t rows,
                                             float* __restrict__ y, int64_t y_stride) {
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
      for (int o = kWarp / 2; o > 0; o /= 2) acc[r][t] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][t], o);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      if (row0 + r < rows)
#pragma unroll
        for (int t = 0; t < T; ++t) y[t * y_stride + row0 + r] = acc[r][t];
  }
}

// ---- formats: a chunk is 256 columns of one row; decode() gives a lane its 8 columns ------------

struct NoParams {};

// Eight Q4_0 blocks (144 bytes): x = d * (q - 8). Lane l reads block l / 4, columns 8 (l % 4) on.
struct Q4_0Format {
  static constexpr int kChunkBytes = 8 * 18;
  using Params = NoParams;
  __device__ static void decode(const uint8_t* chunk, int lane, int64_t, int64_t, const Params&, float v[8]) {
    const uint8_t* b = chunk + (lane >> 2) * 18;
    const float d = half_bits(b);
    const int o = (lane & 3) * 8;
    nibbles(load8_a2(b + 2 + (o & 15)), o >= 16, kMagic + 8.0f, [d](float q) { return q * d; }, v);
  }
};

// Eight Q8_0 blocks (272 bytes): x = d * q, q signed; flipping the sign bit makes it q + 128.
struct Q8_0Format {
  static constexpr int kChunkBytes = 8 * 34;
  using Params = NoParams;
  __device__ static void decode(const uint8_t* chunk, int lane, int64_t, int64_t, const Params&, float v[8]) {
    const uint8_t* b = chunk + (lane >> 2) * 34;
    const float d = half_bits(b);
    const uint2 q = load8_a2(b + 2 + (lane & 3) * 8);
    bytes8(q.x ^ 0x80808080u, q.y ^ 0x80808080u, kMagic + 128.0f, [d](float x) { return x * d; }, v);
  }
};

// One Q4_K super-block (144 bytes): four 64-column halves-pairs of 32 bytes, low nibbles for the
// first 32 columns (sub-block 2g), high nibbles for the next 32 (sub-block 2g + 1);
// x = (d * scale) * q - (dmin * min), with 6-bit scales and mins packed in 12 bytes.
struct Q4_KFormat {
  static constexpr int kChunkBytes = 144;
  using Params = NoParams;
  __device__ static void decode(const uint8_t* b, int lane, int64_t, int64_t, const Params&, float v[8]) {
    const float d = half_bits(b), dmin = half_bits(b + 2);
    const uint8_t* s = b + 4;
    const int g = lane >> 3, within = (lane & 7) * 8;
    const int j = 2 * g + (within >= 32 ? 1 : 0);
    int sc, m;
    if (j < 4) {
      sc = s[j] & 63;
      m = s[j + 4] & 63;
    } else {
      sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
      m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    const uint2 q = *reinterpret_cast<const uint2*>(b + 16 + g * 32 + (within & 31));
    nibbles(q, within >= 32, kMagic, [d1, m1](float x) { return d1 * x - m1; }, v);
  }
};

// strata's int4 groups (cuda.hpp): 128 bytes of codes in Q4_0's nibble order, a {scale, zero} pair
// per group; W = float(code - zero) * scale.
struct Int4Format {
  static constexpr int kChunkBytes = 128;
  struct Params {
    const float2* params;
    int64_t groups;
    int32_t group_stride;
  };
  __device__ static void decode(const uint8_t* chunk, int lane, int64_t row, int64_t c, const Params& p, float v[8]) {
    const int o = (lane & 3) * 8;
    const uint2 q = *reinterpret_cast<const uint2*>(chunk + (lane >> 2) * 16 + (o & 15));
    const auto col = static_cast<uint32_t>(c * kChunk + lane * 8);
    const float2 sz = p.params[row * p.groups + col / static_cast<uint32_t>(p.group_stride)];
    const float scale = sz.x;
    nibbles(q, o >= 16, kMagic + sz.y, [scale](float x) { return x * scale; }, v);
  }
};

// One warp: kRowsPerWarp rows, all tokens. kWide: rows start on 16-byte boundaries and are read as
// 16-byte pieces; otherwise bytes (same results, for shapes whose rows are not 16-byte multiples).
template <class Fmt, int T, bool kWide>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    block_gemv_kernel(const uint8_t* __restrict__ w, int64_t rows, int64_t cols, int64_t row_bytes,
                      typename Fmt::Params params, const float* __restrict__ x, const float* __restrict__ x_scale,
                      float* __restrict__ y, int64_t y_stride) {
  constexpr int kStepBytes = kChunksPerStep * Fmt::kChunkBytes;
  constexpr int kVecs = kStepBytes / 16;
  constexpr int kLoads = (kRowsPerWarp * kVecs + kWarp - 1) / kWarp;
  static_assert(kStepBytes % 16 == 0);
  __shared__ __align__(16) uint8_t stage_all[kWarpsPerBlock][kRowsPerWarp][kStepBytes];

  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t row0 = warp_row0();
  if (row0 >= rows) return;  // the whole warp: only warp-level barriers follow
  int64_t row[kRowsPerWarp];
  warp_rows(row0, rows, row);
  auto& stage = stage_all[threadIdx.x / kWarp];
  const uint8_t* src[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) src[r] = w + row[r] * row_bytes;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  const int64_t steps = (chunks + kChunksPerStep - 1) / kChunksPerStep;

  // r below depends on the lane: selecting among registers keeps src out of local memory.
  const auto source = [&](int r) {
    const uint8_t* p = src[0];
#pragma unroll
    for (int i = 1; i < kRowsPerWarp; ++i) p = r == i ? src[i] : p;
    return p;
  };
  uint4 buf[kLoads];
  auto fetch = [&](int64_t step) {
    const int64_t off = step * kStepBytes;
    const int64_t n = (row_bytes - off < kStepBytes ? row_bytes - off : kStepBytes) / 16;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = i * kWarp + lane, r = idx / kVecs, j = idx % kVecs;
      if (r < kRowsPerWarp && j < n) buf[i] = __ldcs(reinterpret_cast<const uint4*>(source(r) + off) + j);
    }
  };
  auto store = [&](int64_t step) {
    const int64_t off = step * kStepBytes;
    const int64_t n = (row_bytes - off < kStepBytes ? row_bytes - off : kStepBytes) / 16;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = i * kWarp + lane, r = idx / kVecs, j = idx % kVecs;
      if (r < kRowsPerWarp && j < n) reinterpret_cast<uint4*>(stage[r])[j] = buf[i];
    }
  };
  auto copy_bytes = [&](int64_t step) {
    const int64_t off = step * kStepBytes;
    const int64_t n = row_bytes - off < kStepBytes ? row_bytes - off : kStepBytes;
    for (int idx = lane; idx < kRowsPerWarp * kStepBytes; idx += kWarp) {
      const int r = idx / kStepBytes, j = idx % kStepBytes;
      if (j < n) stage[r][j] = source(r)[off + j];
    }
  };

  float acc[kRowsPerWarp][T];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;

  if constexpr (kWide) fetch(0);
  for (int64_t s = 0; s < steps; ++s) {
    if constexpr (kWide) {
      store(s);
      __syncwarp();
      if (s + 1 < steps) fetch(s + 1);
    } else {
      copy_bytes(s);
      __syncwarp();
    }
#pragma unroll
    for (int cc = 0; cc < kChunksPerStep; ++cc) {
      const int64_t c = s * kChunksPerStep + cc;
      const int64_t col = c * kChunk + lane * 8;
      if (col >= cols) break;
      float xv[T][8];
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const auto* xp = reinterpret_cast<const float4*>(x + t * cols + col);
        float4 a = xp[0], b = xp[1];
        if (x_scale != nullptr) {
          const auto* sp = reinterpret_cast<const float4*>(x_scale + col);
          const float4 sa = sp[0], sb = sp[1];
          a = make_float4(a.x * sa.x, a.y * sa.y, a.z * sa.z, a.w * sa.w);
          b = make_float4(b.x * sb.x, b.y * sb.y, b.z * sb.z, b.w * sb.w);
        }
        xv[t][0] = a.x, xv[t][1] = a.y, xv[t][2] = a.z, xv[t][3] = a.w;
        xv[t][4] = b.x, xv[t][5] = b.y, xv[t][6] = b.z, xv[t][7] = b.w;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        float v[8];
        Fmt::decode(stage[r] + cc * Fmt::kChunkBytes, lane, row[r], c, params, v);
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
          for (int k = 0; k < 8; ++k) acc[r][t] = fmaf(v[k], xv[t][k], acc[r][t]);
      }
    }
    __syncwarp();
  }

  reduce_store(acc, lane, row0, rows, y, y_stride);
}

int blocks_for(int64_t rows, int64_t rows_per_block) {
  const int64_t b = (rows + rows_per_block - 1) / rows_per_block;
  require(b <= INT_MAX, "cuda: ", rows, " rows is too many for one launch");
  return static_cast<int>(b);
}

// Checks shared by every product.
void check_product(const char* name, int64_t rows, int64_t cols, const float* x, int64_t tokens, const float* y,
                   int64_t y_stride) {
  require(rows > 0 && cols > 0, "cuda::", name, ": empty shape [", rows, ", ", cols, "]");
  require(cols <= (int64_t{1} << 30), "cuda::", name, ": ", cols, " columns is too many");
  require(tokens >= 0, "cuda::", name, ": negative token count ", tokens);
  require(y_stride >= rows, "cuda::", name, ": y_stride ", y_stride, " < rows ", rows);
  require(x != nullptr && y != nullptr, "cuda::", name, ": null device pointer");
  require(aligned(x, 16), "cuda::", name, ": x must be 16-byte aligned");
}

// Launches the staged kernel for `tokens` in groups of at most kMaxTokens.
template <class Fmt>
void launch_block_gemv(const char* name, const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes,
                       typename Fmt::Params params, const float* x, const float* x_scale, int64_t tokens, float* y,
                       int64_t y_stride, void* stream) {
  using Kernel = decltype(&block_gemv_kernel<Fmt, 1, true>);
  static const Kernel kWideKernels[kMaxTokens] = {
      block_gemv_kernel<Fmt, 1, true>, block_gemv_kernel<Fmt, 2, true>, block_gemv_kernel<Fmt, 3, true>,
      block_gemv_kernel<Fmt, 4, true>, block_gemv_kernel<Fmt, 5, true>, block_gemv_kernel<Fmt, 6, true>,
      block_gemv_kernel<Fmt, 7, true>, block_gemv_kernel<Fmt, 8, true>};
  const bool wide = aligned(w, 16) && row_bytes % 16 == 0;
  const int grid = blocks_for(rows, int64_t{kWarpsPerBlock} * kRowsPerWarp);
  const auto s = static_cast<cudaStream_t>(stream);
  for (int64_t t0 = 0; t0 < tokens;) {
    // The byte-wise path is a fallback for unusual shapes: one token a launch keeps it to one kernel.
    const int64_t n = wide ? std::min<int64_t>(kMaxTokens, tokens - t0) : 1;
    const Kernel k = wide ? kWideKernels[n - 1] : block_gemv_kernel<Fmt, 1, false>;
    k<<<grid, kWarpsPerBlock * kWarp, 0, s>>>(w, rows, cols, row_bytes, params, x + t0 * cols, x_scale,
                                               y + t0 * y_stride, y_stride);
    check(cudaGetLastError(), name);
    t0 += n;
  }
}

// ---- 2:4 sparse -------------------------------------------------------------------------------

// The value at position p (0..3) of a group of four inputs.
__device__ __forceinline__ float pick(const float* g, uint32_t p) {
  const float lo = (p & 1) ? g[1] : g[0], hi = (p & 1) ? g[3] : g[2];
  return (p & 2) ? hi : lo;
}

// One warp: kRowsPerWarp rows; a lane takes 16 columns at a time: 8 kept values (16 bytes of f16
// or 32 of float32, consecutive lanes reading consecutive bytes) and 16 bits of positions.
template <bool kHalf, int T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    sparse24_kernel(const void* __restrict__ values, const uint8_t* __restrict__ meta, int64_t rows, int64_t cols,
                    const float* __restrict__ x, float* __restrict__ y, int64_t y_stride) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t row0 = warp_row0();
  if (row0 >= rows) return;
  int64_t row[kRowsPerWarp];
  warp_rows(row0, rows, row);
  float acc[kRowsPerWarp][T];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0.0f;

  for (int64_t col = lane * 16; col < cols; col += kWarp * 16) {
    float v[kRowsPerWarp][8];
    uint32_t pos[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t first = row[r] * (cols / 2) + col / 2;
      if constexpr (kHalf) {
        const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(static_cast<const __half*>(values) + first));
        const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
          v[r][2 * i] = f.x;
          v[r][2 * i + 1] = f.y;
        }
      } else {
        const auto* p = reinterpret_cast<const float4*>(static_cast<const float*>(values) + first);
        const float4 a = __ldcs(p), b = __ldcs(p + 1);
        v[r][0] = a.x, v[r][1] = a.y, v[r][2] = a.z, v[r][3] = a.w;
        v[r][4] = b.x, v[r][5] = b.y, v[r][6] = b.z, v[r][7] = b.w;
      }
      pos[r] = __ldcs(reinterpret_cast<const unsigned short*>(meta + row[r] * (cols / 8) + col / 8));
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float xv[16];
      const auto* xp = reinterpret_cast<const float4*>(x + t * cols + col);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 a = xp[i];
        xv[4 * i] = a.x, xv[4 * i + 1] = a.y, xv[4 * i + 2] = a.z, xv[4 * i + 3] = a.w;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(v[r][i], pick(xv + 4 * (i / 2), (pos[r] >> (2 * i)) & 3), acc[r][t]);
    }
  }

  reduce_store(acc, lane, row0, rows, y, y_stride);
}

template <bool kHalf>
void launch_sparse24(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t y_stride, cudaStream_t s) {
  using Kernel = decltype(&sparse24_kernel<kHalf, 1>);
  static const Kernel kKernels[kMaxTokens] = {sparse24_kernel<kHalf, 1>, sparse24_kernel<kHalf, 2>,
                                                  sparse24_kernel<kHalf, 3>, sparse24_kernel<kHalf, 4>,
                                                  sparse24_kernel<kHalf, 5>, sparse24_kernel<kHalf, 6>,
                                                  sparse24_kernel<kHalf, 7>, sparse24_kernel<kHalf, 8>};
  const int grid = blocks_for(w.rows, int64_t{kWarpsPerBlock} * kRowsPerWarp);
  for (int64_t t0 = 0; t0 < tokens; t0 += kMaxTokens) {
    const int64_t n = std::min<int64_t>(kMaxTokens, tokens - t0);
    kKernels[n - 1]<<<grid, kWarpsPerBlock * kWarp, 0, s>>>(w.values, w.meta, w.rows, w.cols, x + t0 * w.cols,
                                                            y + t0 * y_stride, y_stride);
    check(cudaGetLastError(), "sparse24_gemv");
  }
}

// ---- key scoring and top-k --------------------------------------------------------------------

constexpr int kScoreRowsPerWarp = 4;
constexpr int kScoreWarps = 8;

// One warp: four keys at once, so that four rows' loads are in flight together.
template <bool kVec4>
__global__ void __launch_bounds__(kScoreWarps* kWarp)
    kv_scores_kernel(const float* __restrict__ q, const float* __restrict__ keys, int64_t n, int64_t dim,
                     float* __restrict__ scores) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp, warp = static_cast<int>(threadIdx.x) / kWarp;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kScoreWarps + warp) * kScoreRowsPerWarp;
  if (row0 >= n) return;
  float acc[kScoreRowsPerWarp] = {};
  if constexpr (kVec4) {
    const int64_t d4 = dim / 4;
    const auto* q4 = reinterpret_cast<const float4*>(q);
    const auto* k4 = reinterpret_cast<const float4*>(keys);
    for (int64_t c = lane; c < d4; c += kWarp) {
      const float4 a = q4[c];
#pragma unroll
      for (int r = 0; r < kScoreRowsPerWarp; ++r) {
        if (row0 + r >= n) break;
        const float4 b = __ldcs(k4 + (row0 + r) * d4 + c);
        acc[r] = fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc[r]))));
      }
    }
  } else {
    for (int64_t c = lane; c < dim; c += kWarp) {
      const float a = q[c];
#pragma unroll
      for (int r = 0; r < kScoreRowsPerWarp; ++r) {
        if (row0 + r >= n) break;
        acc[r] = fmaf(a, __ldcs(keys + (row0 + r) * dim + c), acc[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kScoreRowsPerWarp; ++r)
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) acc[r] += __shfl_xor_sync(0xFFFFFFFFu, acc[r], o);
  if (lane < kScoreRowsPerWarp && row0 + lane < n) {
    float mine = acc[0];
#pragma unroll
    for (int r = 1; r < kScoreRowsPerWarp; ++r)
      if (lane == r) mine = acc[r];
    scores[row0 + lane] = mine;
  }
}

// Unsigned keys in the order of the scores: -0 equals +0, NaN is below -inf.
__device__ __forceinline__ uint32_t order_key(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0;
  if ((u << 1) == 0) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kTopKThreads = 1024;

// Exclusive prefix sum over the block, in thread order.
__device__ uint32_t block_exclusive_sum(uint32_t v, uint32_t* warp_sums) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp, warp = static_cast<int>(threadIdx.x) / kWarp;
  uint32_t incl = v;
#pragma unroll
  for (int o = 1; o < kWarp; o *= 2) {
    const uint32_t u = __shfl_up_sync(0xFFFFFFFFu, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == kWarp - 1) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const uint32_t total = warp_sums[lane];
    uint32_t run = total;
#pragma unroll
    for (int o = 1; o < kWarp; o *= 2) {
      const uint32_t u = __shfl_up_sync(0xFFFFFFFFu, run, o);
      if (lane >= o) run += u;
    }
    warp_sums[lane] = run - total;
  }
  __syncthreads();
  const uint32_t r = warp_sums[warp] + incl - v;
  __syncthreads();
  return r;
}

// Radix selection of the k-th largest key (8 bits a pass, most significant first), then an ordered
// compaction: every key above it, and the lowest-positioned of those equal to it until k are taken.
__global__ void __launch_bounds__(kTopKThreads)
    top_k_kernel(const float* __restrict__ scores, uint32_t n, uint32_t k, int32_t* __restrict__ out) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t warp_sums[kWarp];
  __shared__ uint32_t shared_prefix, shared_remaining;
  const auto tid = static_cast<uint32_t>(threadIdx.x);
  const int lane = static_cast<int>(tid) % kWarp;
  uint32_t prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint32_t i = tid; i < 256; i += kTopKThreads) hist[i] = 0;
    __syncthreads();
    for (uint32_t base = 0; base < n; base += kTopKThreads) {
      const uint32_t i = base + tid;
      uint32_t bin = 256;  // no bin: out of range or outside the prefix
      if (i < n) {
        const uint32_t key = order_key(scores[i]);
        if ((key & mask) == prefix) bin = (key >> shift) & 255;
      }
      // Scores close together share bins: one atomic per distinct bin in the warp, not per lane.
      const uint32_t peers = __match_any_sync(0xFFFFFFFFu, bin);
      if (bin < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], static_cast<uint32_t>(__popc(peers)));
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t above = 0;
      int b = 255;
      for (; b > 0 && above + hist[b] < remaining; --b) above += hist[b];
      shared_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      shared_remaining = remaining - above;
    }
    __syncthreads();
    prefix = shared_prefix;
    remaining = shared_remaining;
    mask |= 255u << shift;
  }
  // Each thread a contiguous span, so that thread order is position order.
  const uint32_t span = (n + kTopKThreads - 1) / kTopKThreads;
  const uint32_t begin = min(n, tid * span), end = min(n, begin + span);
  uint32_t above = 0, equal = 0;
  for (uint32_t i = begin; i < end; ++i) {
    const uint32_t key = order_key(scores[i]);
    above += key > prefix;
    equal += key == prefix;
  }
  const uint32_t equal_before = block_exclusive_sum(equal, warp_sums);
  const uint32_t take_equal = equal_before >= remaining ? 0 : min(equal, remaining - equal_before);
  uint32_t at = block_exclusive_sum(above + take_equal, warp_sums);
  uint32_t taken_equal = 0;
  for (uint32_t i = begin; i < end; ++i) {
    const uint32_t key = order_key(scores[i]);
    if (key > prefix || (key == prefix && taken_equal++ < take_equal)) out[at++] = static_cast<int32_t>(i);
  }
}

void check_scores(const float* q, const float* keys, int64_t n_tokens, int64_t head_dim, const float* scores) {
  require(n_tokens > 0 && head_dim > 0, "cuda::kv_scores: empty key cache [", n_tokens, ", ", head_dim, "]");
  require(n_tokens < INT32_MAX, "cuda::kv_scores: ", n_tokens, " tokens is too many");
  require(q != nullptr && keys != nullptr && scores != nullptr, "cuda::kv_scores: null device pointer");
}

void launch_scores(const float* q, const float* keys, int64_t n, int64_t dim, float* scores, cudaStream_t s) {
  const int grid = blocks_for(n, int64_t{kScoreWarps} * kScoreRowsPerWarp);
  if (dim % 4 == 0 && aligned(q, 16) && aligned(keys, 16))
    kv_scores_kernel<true><<<grid, kScoreWarps * kWarp, 0, s>>>(q, keys, n, dim, scores);
  else
    kv_scores_kernel<false><<<grid, kScoreWarps * kWarp, 0, s>>>(q, keys, n, dim, scores);
  check(cudaGetLastError(), "kv_scores");
}

void check_top_k(const float* scores, int64_t n, int64_t k, const int32_t* indices) {
  require(n > 0 && n < INT32_MAX, "cuda::top_k: ", n, " scores");
  require(k >= 0 && k <= n, "cuda::top_k: k = ", k, " of ", n, " scores");
  require(scores != nullptr && indices != nullptr, "cuda::top_k: null device pointer");
}

void launch_top_k(const float* scores, int64_t n, int64_t k, int32_t* indices, cudaStream_t s) {
  if (k == 0) return;
  top_k_kernel<<<1, kTopKThreads, 0, s>>>(scores, static_cast<uint32_t>(n), static_cast<uint32_t>(k), indices);
  check(cudaGetLastError(), "top_k");
}

}  // namespace

bool ggml_gemv_supported(GgmlType type) {
  return type == GgmlType::Q4_0 || type == GgmlType::Q8_0 || type == GgmlType::Q4_K;
}

void ggml_gemv(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
               int64_t y_stride, void* stream) {
  require(ggml_gemv_supported(type), "cuda::ggml_gemv: no kernel for ", kernels::ggml_type_name(type));
  check_product("ggml_gemv", rows, cols, x, tokens, y, y_stride);
  const int64_t block = kernels::ggml_block_size(type);
  require(cols % block == 0, "cuda::ggml_gemv: ", kernels::ggml_type_name(type), " needs cols a multiple of ", block,
          ", got ", cols);
  require(w != nullptr, "cuda::ggml_gemv: null device pointer");
  const int64_t row_bytes = cols / block * kernels::ggml_type_size(type);
  const auto* wb = static_cast<const uint8_t*>(w);
  switch (type) {
    case GgmlType::Q4_0:
      launch_block_gemv<Q4_0Format>("ggml_gemv Q4_0", wb, rows, cols, row_bytes, {}, x, nullptr, tokens, y, y_stride,
                                    stream);
      break;
    case GgmlType::Q8_0:
      launch_block_gemv<Q8_0Format>("ggml_gemv Q8_0", wb, rows, cols, row_bytes, {}, x, nullptr, tokens, y, y_stride,
                                    stream);
      break;
    default:
      launch_block_gemv<Q4_KFormat>("ggml_gemv Q4_K", wb, rows, cols, row_bytes, {}, x, nullptr, tokens, y, y_stride,
                                    stream);
      break;
  }
}

void int4_group_gemv(const Int4Groups& w, const float* x, const float* x_scale, int64_t tokens, float* y,
                     int64_t y_stride, void* stream) {
  check_product("int4_group_gemv", w.rows, w.padded_cols, x, tokens, y, y_stride);
  require(w.group_stride > 0 && w.group_stride % 32 == 0 && w.padded_cols % w.group_stride == 0,
          "cuda::int4_group_gemv: group_stride ", w.group_stride, " must be a positive multiple of 32 dividing ",
          w.padded_cols, " columns");
  require(w.codes != nullptr && w.params != nullptr, "cuda::int4_group_gemv: null device pointer");
  require(aligned(w.params, 8), "cuda::int4_group_gemv: params must be 8-byte aligned");
  require(x_scale == nullptr || aligned(x_scale, 16), "cuda::int4_group_gemv: x_scale must be 16-byte aligned");
  const Int4Format::Params p{reinterpret_cast<const float2*>(w.params), w.padded_cols / w.group_stride,
                             static_cast<int32_t>(w.group_stride)};
  launch_block_gemv<Int4Format>("int4_group_gemv", w.codes, w.rows, w.padded_cols, w.padded_cols / 2, p, x, x_scale,
                                tokens, y, y_stride, stream);
}

Int4GroupsHost pack_int4_groups(int64_t rows, int64_t cols, int bits, int64_t group, const uint8_t* codes,
                                const float* scales, const uint8_t* zeros, const float* channel_scales) {
  require(rows > 0 && cols > 0, "cuda::pack_int4_groups: empty shape [", rows, ", ", cols, "]");
  require(bits >= 2 && bits <= 4, "cuda::pack_int4_groups: bits must be in [2, 4], got ", bits);
  require(codes != nullptr && scales != nullptr, "cuda::pack_int4_groups: null codes or scales");
  Int4GroupsHost h;
  h.rows = rows;
  h.cols = cols;
  h.group = group <= 0 || group >= cols ? cols : group;
  h.groups = (cols + h.group - 1) / h.group;
  h.group_stride = (h.group + 31) / 32 * 32;
  h.padded_cols = h.groups * h.group_stride;
  const int max_code = (1 << bits) - 1;
  const auto slot = [&](int64_t c) { return c / h.group * h.group_stride + c % h.group; };

  h.params.resize(static_cast<size_t>(rows * h.groups * 2));
  for (int64_t g = 0; g < rows * h.groups; ++g) {
    const int zero = zeros != nullptr ? zeros[g] : 1 << (bits - 1);
    require(std::isfinite(scales[g]) && zero <= max_code, "cuda::pack_int4_groups: group ", g, " has scale ",
            scales[g], " and zero point ", zero);
    h.params[static_cast<size_t>(2 * g)] = scales[g];
    h.params[static_cast<size_t>(2 * g + 1)] = static_cast<float>(zero);
  }
  h.codes.assign(static_cast<size_t>(rows * h.padded_cols / 2), 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = h.codes.data() + r * h.padded_cols / 2;
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t code = codes[r * cols + c];
      require(code <= max_code, "cuda::pack_int4_groups: code ", int{code}, " at (", r, ", ", c, ") exceeds ",
              max_code);
      const int64_t p = slot(c);
      row[p / 32 * 16 + p % 16] |= static_cast<uint8_t>(p % 32 < 16 ? code : code << 4);
    }
  }
  if (channel_scales != nullptr) {
    h.x_scale.assign(static_cast<size_t>(h.padded_cols), 0.0f);
    for (int64_t c = 0; c < cols; ++c) {
      require(std::isfinite(channel_scales[c]) && channel_scales[c] > 0, "cuda::pack_int4_groups: channel scale ",
              c, " is ", channel_scales[c]);
      h.x_scale[static_cast<size_t>(slot(c))] = 1.0f / channel_scales[c];
    }
  }
  return h;
}

void sparse24_gemv(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t y_stride, void* stream) {
  check_product("sparse24_gemv", w.rows, w.cols, x, tokens, y, y_stride);
  require(w.cols % 16 == 0, "cuda::sparse24_gemv: cols must be a multiple of 16, got ", w.cols);
  require(w.values != nullptr && w.meta != nullptr, "cuda::sparse24_gemv: null device pointer");
  require(aligned(w.values, 16) && aligned(w.meta, 2),
          "cuda::sparse24_gemv: values must be 16-byte aligned and meta 2-byte aligned");
  const auto s = static_cast<cudaStream_t>(stream);
  if (w.half)
    launch_sparse24<true>(w, x, tokens, y, y_stride, s);
  else
    launch_sparse24<false>(w, x, tokens, y, y_stride, s);
}

Sparse24Host pack_sparse24(const float* w, int64_t rows, int64_t cols, bool half) {
  require(rows > 0 && cols > 0, "cuda::pack_sparse24: empty shape [", rows, ", ", cols, "]");
  require(cols % 16 == 0, "cuda::pack_sparse24: cols must be a multiple of 16, got ", cols);
  require(w != nullptr, "cuda::pack_sparse24: null weight");
  Sparse24Host h;
  h.rows = rows;
  h.cols = cols;
  h.half = half;
  h.meta.assign(static_cast<size_t>(rows * cols / 8), 0);
  std::vector<float> values(static_cast<size_t>(rows * cols / 2));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols / 4; ++g) {
      const float* in = w + r * cols + 4 * g;
      unsigned kept = 0;
      for (int i = 0; i < 4; ++i) kept |= (std::bit_cast<uint32_t>(in[i]) != 0 ? 1u : 0u) << i;
      require(std::popcount(kept) <= 2, "cuda::pack_sparse24: row ", r, " keeps more than two of columns ", 4 * g,
              "..", 4 * g + 3);
      // Fewer than two kept: the lowest free positions fill up with their zeros.
      while (std::popcount(kept) < 2) kept |= ~kept & (kept + 1);
      const int p0 = std::countr_zero(kept), p1 = std::countr_zero(kept & (kept - 1));
      const int64_t i = r * cols / 2 + 2 * g;  // first of the group's two values
      values[static_cast<size_t>(i)] = in[p0];
      values[static_cast<size_t>(i + 1)] = in[p1];
      h.meta[static_cast<size_t>(i / 4)] |= static_cast<uint8_t>((p0 | p1 << 2) << (2 * (i % 4)));
    }
  }
  if (half) {
    h.values_f16.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) h.values_f16[i] = f32_to_f16(values[i]);
  } else {
    h.values_f32 = std::move(values);
  }
  return h;
}

void kv_scores(const float* q, const float* keys, int64_t n_tokens, int64_t head_dim, float* scores, void* stream) {
  check_scores(q, keys, n_tokens, head_dim, scores);
  launch_scores(q, keys, n_tokens, head_dim, scores, static_cast<cudaStream_t>(stream));
}

void top_k(const float* scores, int64_t n, int64_t k, int32_t* indices, void* stream) {
  check_top_k(scores, n, k, indices);
  launch_top_k(scores, n, k, indices, static_cast<cudaStream_t>(stream));
}

void kv_score_top_k(const float* q, const float* keys, int64_t n_tokens, int64_t head_dim, int64_t k, float* scores,
                    int32_t* indices, void* stream) {
  check_scores(q, keys, n_tokens, head_dim, scores);
  check_top_k(scores, n_tokens, k, indices);
  const auto s = static_cast<cudaStream_t>(stream);
  launch_scores(q, keys, n_tokens, head_dim, scores, s);
  launch_top_k(scores, n_tokens, k, indices, s);
}

double time_device_copy(uint64_t bytes, int repeats) {
  require(bytes > 0 && repeats > 0, "cuda::time_device_copy: ", bytes, " bytes, ", repeats, " repeats");
  DeviceBuffer a(bytes), b(bytes);
  check(cudaMemset(a.data(), 1, bytes), "cudaMemset");
  struct Events {
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Events() {
      if (start) cudaEventDestroy(start);
      if (stop) cudaEventDestroy(stop);
    }
  } e;
  check(cudaEventCreate(&e.start), "cudaEventCreate");
  check(cudaEventCreate(&e.stop), "cudaEventCreate");
  check(cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy device to device");
  check(cudaEventRecord(e.start), "cudaEventRecord");
  for (int i = 0; i < repeats; ++i)
    check(cudaMemcpyAsync(i % 2 ? a.data() : b.data(), i % 2 ? b.data() : a.data(), bytes, cudaMemcpyDeviceToDevice),
          "cudaMemcpyAsync device to device");
  check(cudaEventRecord(e.stop), "cudaEventRecord");
  check(cudaEventSynchronize(e.stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, e.start, e.stop), "cudaEventElapsedTime");
  return static_cast<double>(ms) / 1e3 / repeats;
}

}  // namespace strata::cuda
