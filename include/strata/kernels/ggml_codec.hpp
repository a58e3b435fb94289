#pragma once
// One codec per ggml type, ggml's type_traits in C++: a row per type with its sizes and the row
// functions that write and read it. io (GGUF tensors to float), compress (the quant.ggml
// compressors) and kv (llama.cpp cache types) all go through this table, so a format is defined
// once, in kernels, below all three.
//
//   const kernels::GgmlCodec& c = kernels::ggml_codec(kernels::GgmlType::Q4_K);
//   std::vector<std::byte> row(c.row_bytes(4096));             // throws unless 4096 % 256 == 0
//   c.quantize_row(x, 4096, row.data(), imatrix_or_null);     // the bytes ggml writes
//   c.dequantize_row(row.data(), 4096, y);                    // the floats ggml reads back
//
// The row functions are unchecked (a row of whole blocks, an output of row_bytes(n)), so an engine
// can call them per token without paying for validation; quantize_row() and dequantize() below are
// the checked entry points. Both row functions accept bytes at any alignment.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "strata/kernels/ggml_blocks.hpp"
#include "strata/kernels/ggml_dequant.hpp"

namespace strata::kernels {

// x: n floats (n a whole number of blocks); out: row_bytes(n) bytes; importance: n non-negative
// weights for the same columns (llama.cpp's imatrix), or nullptr. Types without a weighted search
// (Q8_0, F32, F16, BF16) ignore it.
using QuantizeRowFn = void (*)(const float* x, int64_t n, void* out, const float* importance);
// in: row_bytes(n) bytes; out: n floats.
using DequantizeRowFn = void (*)(const void* in, int64_t n, float* out);

struct GgmlCodec {
  GgmlType type;
  std::string_view name;    // as gguf-py spells it: "Q4_K"
  uint32_t block_size;      // elements per block
  uint32_t type_size;       // bytes per block
  bool whole_blocks;        // rows must be whole blocks of more than one element (every quantized type)
  QuantizeRowFn quantize_row;      // nullptr: strata does not write this type
  DequantizeRowFn dequantize_row;  // nullptr: strata does not read this type

  bool can_quantize() const { return quantize_row != nullptr; }
  bool can_dequantize() const { return dequantize_row != nullptr; }
  // Bytes of n elements: ggml_nbytes(type, n), with its checks.
  uint64_t row_bytes(int64_t n) const { return ggml_nbytes(type, n); }
};

// The codec of a type. Throws strata::Error for a value that is no GgmlType enumerator.
const GgmlCodec& ggml_codec(GgmlType t);
// The codec of a raw type id (as read from a file), or nullptr for an id ggml does not define.
const GgmlCodec* find_ggml_codec(uint32_t id);
// Every row, in type id order.
std::span<const GgmlCodec> ggml_codecs();

// "q4_k": the spelling knobs, cache-type options and metadata use.
std::string lower_name(GgmlType t);

// One checked row: x.size() elements into exactly ggml_row_size(t, x.size()) bytes. `importance` is
// empty or has x.size() finite, non-negative values. Throws strata::Error naming the type when the
// type cannot be written, the row is empty or not a whole number of blocks, a size disagrees, or a
// value is NaN/Inf.
void quantize_row(GgmlType t, std::span<const float> x, std::span<const float> importance, std::span<std::byte> out);

}  // namespace strata::kernels
