// Dynamic dispatch of the sparse products to the best SIMD target of the running CPU, and their
// scalar references.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/sparse_matmul.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/sparse_matmul-inl.h"

#if HWY_ONCE
#include <cstring>

namespace strata::kernels {

HWY_EXPORT(Sparse24Matmul);
HWY_EXPORT(SparseBitmaskMatmul);
HWY_EXPORT(SparseCsrMatmul);

void sparse24_matmul(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(Sparse24Matmul)(w, x, tokens, y, r0, r1);
}
void sparse_bitmask_matmul(const SparseBitmask& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(SparseBitmaskMatmul)(w, x, tokens, y, r0, r1);
}
void sparse_csr_matmul(const SparseCsr& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(SparseCsrMatmul)(w, x, tokens, y, r0, r1);
}

namespace {

// The input of kept value k of a 2:4 row.
int64_t position24(const uint8_t* row_positions, int64_t k) {
  const int64_t bit = 2 * k;
  return 4 * (k / 2) + (row_positions[bit / 8] >> (bit % 8) & 3);
}

bool kept_bit(const uint8_t* row_mask, int64_t j) { return (row_mask[j / 8] >> (j % 8) & 1) != 0; }

int64_t csr_column(const SparseCsr& w, int64_t k) {
  return w.col16 != nullptr ? static_cast<int64_t>(w.col16[k]) : static_cast<int64_t>(w.col32[k]);
}

}  // namespace

void sparse24_matmul_reference(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  const int64_t kept = w.cols / 2;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* pr = w.positions + r * w.position_stride;
      float s = 0;
      for (int64_t k = 0; k < kept; ++k) s += sparse_value(w.values, w.half, r * kept + k) * x[t * w.cols + position24(pr, k)];
      y[t * w.rows + r] = s;
    }
}

void sparse_bitmask_matmul_reference(const SparseBitmask& w, const float* x, int64_t tokens, float* y, int64_t r0,
                                     int64_t r1) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* mr = w.mask + r * w.mask_stride;
      int64_t k = w.row_start[r];
      float s = 0;
      for (int64_t j = 0; j < w.cols; ++j)
        if (kept_bit(mr, j)) s += sparse_value(w.values, w.half, k++) * x[t * w.cols + j];
      y[t * w.rows + r] = s;
    }
}

void sparse_csr_matmul_reference(const SparseCsr& w, const float* x, int64_t tokens, float* y, int64_t r0,
                                 int64_t r1) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      float s = 0;
      for (int64_t k = w.row_start[r]; k < w.row_start[r + 1]; ++k)
        s += sparse_value(w.values, w.half, k) * x[t * w.cols + csr_column(w, k)];
      y[t * w.rows + r] = s;
    }
}

void sparse24_densify(const Sparse24& w, int64_t r0, int64_t r1, float* out) {
  const int64_t kept = w.cols / 2;
  std::memset(out, 0, static_cast<size_t>((r1 - r0) * w.cols) * sizeof(float));
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* pr = w.positions + r * w.position_stride;
    float* o = out + (r - r0) * w.cols;
    for (int64_t k = 0; k < kept; ++k) o[position24(pr, k)] = sparse_value(w.values, w.half, r * kept + k);
  }
}

void sparse_bitmask_densify(const SparseBitmask& w, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* mr = w.mask + r * w.mask_stride;
    float* o = out + (r - r0) * w.cols;
    int64_t k = w.row_start[r];
    for (int64_t j = 0; j < w.cols; ++j) o[j] = kept_bit(mr, j) ? sparse_value(w.values, w.half, k++) : 0.0f;
  }
}

void sparse_csr_densify(const SparseCsr& w, int64_t r0, int64_t r1, float* out) {
  std::memset(out, 0, static_cast<size_t>((r1 - r0) * w.cols) * sizeof(float));
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * w.cols;
    for (int64_t k = w.row_start[r]; k < w.row_start[r + 1]; ++k) o[csr_column(w, k)] = sparse_value(w.values, w.half, k);
  }
}

}  // namespace strata::kernels
#endif  // HWY_ONCE
