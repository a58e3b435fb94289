#pragma once
// ggml's (llama.cpp's) block quantizers, written so that they produce exactly the bytes ggml's own
// quantizers write (ggml_quantize_chunk, llama.cpp commit c392e509, February 2025), with and without
// an importance vector (llama.cpp's imatrix: the mean of x_j^2 over calibration tokens, one value
// per column). A tensor written with them is what `llama-quantize` would have written for the same
// float32 weights and imatrix, so llama.cpp loads and runs it unchanged.
//
// Which algorithm runs follows ggml_quantize_chunk: without importance, the legacy types (Q4_0 ...
// Q5_1, Q8_0) and the k-quants take ggml's *_ref path; IQ4_NL always takes its weighted search (with
// x^2 as the weights when there is no importance); Q8_0 ignores the importance, as ggml does.
//
// Bit-exactness needs ggml's float operation order and its rounding helpers: every product is
// rounded to float before it is added (the implementation blocks FMA contraction explicitly, so
// -march=native builds give the same bytes), nearest_int is the 1.5 * 2^23 trick, and scales go to
// binary16 with round-to-nearest-even (strata::f32_to_f16).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/kernels/ggml_codec.hpp"

namespace strata::compress {
struct Compressed;
}

namespace strata::compress::ggml {

using kernels::GgmlType;

// The block types quantize() and the quant.ggml compressors write, in ascending bits per weight
// within each family (the codec table also writes F32, F16 and BF16 rows, which are no compression).
std::span<const GgmlType> quantizable_types();
bool can_quantize(GgmlType t);
// Parses a lowercase or uppercase type name ("q4_k"); throws strata::Error listing the quantizable
// types when the name is unknown or the type cannot be written.
GgmlType quantizable_type(std::string_view name);
// "q4_k": the spelling knobs and metadata use (kernels::lower_name).
using kernels::lower_name;

// The type llama.cpp writes when `wanted` does not fit a tensor whose rows have `cols` elements
// (llama_tensor_get_type's fallback): `wanted` itself when cols is a multiple of its block size;
// else Q2_K, Q3_K -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; F16 when even that does not
// fit. Other types that do not fit throw strata::Error, as llama.cpp refuses them.
GgmlType fallback_type(GgmlType wanted, int64_t cols);

// ---- checked entry points -----------------------------------------------------------------------
// One row through the codec table: kernels::quantize_row (strata/kernels/ggml_codec.hpp).
using kernels::quantize_row;

// A row-major matrix [rows, cols] into rows * ggml_row_size(t, cols) bytes, the rows in parallel
// (each row is independent, so the bytes do not depend on the thread count). `importance`: empty or
// `cols` values, applied to every row as llama.cpp applies an imatrix. Same checks as quantize_row.
std::vector<std::byte> quantize(GgmlType t, const float* x, int64_t rows, int64_t cols,
                                std::span<const float> importance = {});
// The same bytes written into `out`, which must hold exactly rows * ggml_row_size(t, cols) bytes
// (throws strata::Error naming the sizes otherwise): for callers that quantize many matrices into
// one reused buffer, which saves the allocation, zeroing and first-touch page faults of a new one.
void quantize(GgmlType t, const float* x, int64_t rows, int64_t cols, std::span<const float> importance,
              std::span<std::byte> out);

// ---- for the GGUF writer ------------------------------------------------------------------------
// What to put in a GGUF tensor for a layer compressed by quant.ggml / quant.ggml_noimatrix: its
// ggml type and its blocks (rows of `cols` elements, ggml's layout, ne = {cols, rows}), ready for
// io::GgufWriter::replace_tensor. Throws strata::Error when `c` did not come from these compressors
// or its bytes do not match its shape.
struct GgufTensorData {
  GgmlType type;
  std::vector<std::byte> bytes;
};
GgufTensorData gguf_tensor_data(const Compressed& c);
// The same blocks borrowed from `c` (no copy), for writers that keep `c` alive.
struct GgufTensorView {
  GgmlType type;
  std::span<const std::byte> bytes;
};
GgufTensorView gguf_tensor_view(const Compressed& c);

}  // namespace strata::compress::ggml
