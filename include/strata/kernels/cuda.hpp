#pragma once
// strata::cuda: optional GPU kernels (target strata::cuda, built with STRATA_ENABLE_CUDA=ON).
// CPU-only engines never include this header nor link cudart. Device pointers are plain pointers
// from cudaMalloc; every function checks CUDA's status and throws strata::Error naming the call.
#include <cstdint>
#include <string>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/kernels/ggml_blocks.hpp"

namespace strata::cuda {

// Number of usable CUDA devices (0 when there is no driver or no device; never throws).
int device_count();
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for the current device.
std::string device_description();

// Element-wise conversions on device memory, bit-identical to the scalar reference in dtype.hpp.
// `stream` is a cudaStream_t passed as void* so that this header needs no CUDA headers.
void convert_f32_to_f16(const float* in, f16* out, uint64_t n, void* stream = nullptr);
void convert_f16_to_f32(const f16* in, float* out, uint64_t n, void* stream = nullptr);
void convert_f32_to_bf16(const float* in, bf16* out, uint64_t n, void* stream = nullptr);
void convert_bf16_to_f32(const bf16* in, float* out, uint64_t n, void* stream = nullptr);

// RAII device buffer for tests, tools and simple engines.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(uint64_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return ptr_; }
  uint64_t bytes() const { return bytes_; }
  void upload(const void* host, uint64_t bytes);
  void download(void* host, uint64_t bytes) const;

 private:
  void* ptr_ = nullptr;
  uint64_t bytes_ = 0;
};

// ---- products with compressed weights, for decode and small batches ----------------------------
// Every product below computes y[t * y_stride + r] = sum_c W[r, c] * x[t * x_cols + c] for r < rows,
// t < tokens, with W read in its compressed form and each weight widened to the exact float the CPU
// reference dequantizes, then accumulated in float32 (so results equal the CPU's up to the order of
// the float additions). x and y are float32 device arrays; x must be 16-byte aligned (any cudaMalloc
// pointer plus a multiple of 4 floats). The kernels are tuned for tokens = 1..8; more tokens run as
// successive groups of 8, each reading the weights again. Sizes, shapes and alignment are checked
// before anything is launched (strata::Error naming the function); the launch is asynchronous on
// `stream`.

// Whether ggml_gemv has a kernel for the type (Q4_0, Q8_0, Q4_K).
bool ggml_gemv_supported(kernels::GgmlType type);
// w: `rows` consecutive rows of ggml_nbytes(type, cols) bytes on the device, exactly as in a GGUF
// file. cols must be a whole number of the type's blocks. Rows that start on 16-byte boundaries
// (w 16-byte aligned and cols a multiple of 256) are read with 16-byte loads; other shapes take a
// slower byte-wise path with the same results.
void ggml_gemv(kernels::GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens,
               float* y, int64_t y_stride, void* stream = nullptr);

// strata's group-quantized integer weights (2- to 4-bit codes) on the device:
//   - columns are laid out group by group, each group padded with zero codes to `group_stride`
//     columns (a multiple of 32), so a row holds padded_cols = groups * group_stride codes; when
//     the group size is a multiple of 32 dividing cols, padded_cols == cols and nothing is padded;
//   - codes: [rows, padded_cols / 2] bytes; every 32 columns take 16 bytes, column i < 16 of them in
//     the low nibble of byte i and column i + 16 in its high nibble (ggml's Q4_0 order, and the
//     order nn::GroupQuantLinear keeps on the CPU);
//   - params: [rows, groups] pairs of float32 {scale, zero point}; W[r, c] = scale * (code - zero),
//     computed as float(code - zero) times scale, the value the CPU layer densifies to.
// x has padded_cols columns a token (zeros in the padding). A layer with channel scales (AWQ)
// computes W[r, c] / channel_scale[c]: pass x_scale = 1 / channel_scale in the padded layout
// (zeros in the padding), which multiplies x as it is read, as the CPU layer does; else nullptr.
struct Int4Groups {
  int64_t rows = 0;
  int64_t padded_cols = 0;
  int64_t group_stride = 0;
  const uint8_t* codes = nullptr;  // device
  const float* params = nullptr;   // device
};
void int4_group_gemv(const Int4Groups& w, const float* x, const float* x_scale, int64_t tokens, float* y,
                     int64_t y_stride, void* stream = nullptr);

// The device layout above built on the host from nn::GroupQuantWeights' arrays (codes [rows, cols]
// one a byte, scales and zero points [rows, groups], zeros empty for symmetric codes, channel
// scales [cols] or empty), for an engine to upload. Column c of group k = c / group sits at
// k * group_stride + c % group. Throws strata::Error for bits outside 2..4 or arrays that do not
// match the shape.
struct Int4GroupsHost {
  int64_t rows = 0, cols = 0, group = 0, group_stride = 0, groups = 0, padded_cols = 0;
  std::vector<uint8_t> codes;
  std::vector<float> params;
  std::vector<float> x_scale;  // [padded_cols], empty without channel scales
};
Int4GroupsHost pack_int4_groups(int64_t rows, int64_t cols, int bits, int64_t group, const uint8_t* codes,
                                const float* scales, const uint8_t* zeros, const float* channel_scales);

// 2:4 sparse weights on the device (the layout nn::SparseLinear keeps on the CPU): every group of
// four columns keeps exactly two values (a group that kept fewer takes zeros at its lowest free
// positions), in column order.
//   - values: [rows, cols / 2], f16 (half = true) or float32;
//   - meta: [rows, cols / 8] bytes; kept value i of a row has its position in its group (0..3) in
//     bits 2i..2i+1 of the row's meta, counted from bit 0 of byte 0.
// cols must be a multiple of 16; values and meta 16- and 2-byte aligned.
struct Sparse24 {
  int64_t rows = 0, cols = 0;
  bool half = false;
  const void* values = nullptr;  // device
  const uint8_t* meta = nullptr;  // device
};
void sparse24_gemv(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t y_stride,
                   void* stream = nullptr);

// The device layout above built on the host from a dense row-major weight whose zeros (+0.0) are the
// pruned entries. With `half` the kept values are rounded to f16. Throws strata::Error when cols is
// not a multiple of 16 or a group of four keeps more than two.
struct Sparse24Host {
  int64_t rows = 0, cols = 0;
  bool half = false;
  std::vector<float> values_f32;
  std::vector<f16> values_f16;
  std::vector<uint8_t> meta;
};
Sparse24Host pack_sparse24(const float* w, int64_t rows, int64_t cols, bool half);

// ---- attention key scoring and top-k ----------------------------------------------------------
// scores[j] = dot(q, keys[j]) for j < n_tokens over a [n_tokens, head_dim] float32 key cache
// (float32 accumulation; q and keys 16-byte aligned when head_dim is a multiple of 4).
void kv_scores(const float* q, const float* keys, int64_t n_tokens, int64_t head_dim, float* scores,
               void* stream = nullptr);
// indices[0..k) = the positions of the k largest scores in increasing position order; equal scores
// are taken lowest position first, +0 and -0 are equal, NaN ranks below every number. Radix
// selection in one thread block: meant for one head's n up to a few hundred thousand. k <= n.
void top_k(const float* scores, int64_t n, int64_t k, int32_t* indices, void* stream = nullptr);
// Both: scores (a device array of n_tokens floats, left holding the scores) then the top k.
void kv_score_top_k(const float* q, const float* keys, int64_t n_tokens, int64_t head_dim, int64_t k, float* scores,
                    int32_t* indices, void* stream = nullptr);

// ---- the device's own copy bandwidth -----------------------------------------------------------
// Times `repeats` cudaMemcpy device-to-device copies of `bytes` between two fresh buffers (after one
// untimed copy) and returns the seconds one copy took, the ceiling memory-bound kernels are
// measured against. Bytes moved by one copy: 2 * bytes (read + written, as STREAM counts).
double time_device_copy(uint64_t bytes, int repeats);

}  // namespace strata::cuda
