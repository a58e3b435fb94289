#pragma once
// strata::cuda: optional GPU kernels (target strata::cuda, built with STRATA_ENABLE_CUDA=ON).
// CPU-only engines never include this header nor link cudart. Device pointers are plain pointers
// from cudaMalloc; every function checks CUDA's status and throws strata::Error naming the call.
#include <cstdint>
#include <string>

#include "strata/core/dtype.hpp"

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

}  // namespace strata::cuda
