#pragma once
// The SIMD row quantizers of the 32-element block types (ggml_quantize_legacy.cc), which the codec
// table routes to: the same bytes as the scalar references quantize_row_q4_0, _q4_1, _q5_0, _q5_1
// and _iq4_nl of ggml_rows.hpp (which stay the test oracle), faster. Q4_0, Q4_1, Q5_0 and Q5_1 run
// their searches in SIMD with an importance vector; without one they call the reference (a single
// pass, already cheap). IQ4_NL runs in SIMD either way. Same contracts as the codec's row functions.
#include <cstdint>

namespace strata::kernels::detail {

void quantize_row_q4_0_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q4_1_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q5_0_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q5_1_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_iq4_nl_simd(const float* x, int64_t n, void* out, const float* importance);

}  // namespace strata::kernels::detail
