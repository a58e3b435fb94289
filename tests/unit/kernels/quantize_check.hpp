#pragma once
// Checks shared by the SIMD quantizer tests: a type's codec rows and its whole-tensor path
// (compress::ggml::quantize, one and two threads) write exactly the bytes of the scalar reference.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/parallel.hpp"
#include "strata/kernels/ggml_codec.hpp"

namespace strata::quantize_check {

// Every `step`-th row (each with .x and .name), with each importance importances(n) gives (an
// empty one meaning none), through the codec's row at an odd output address.
template <class Row, class Importances>
void expect_codec_rows_equal_reference(kernels::GgmlType t, kernels::QuantizeRowFn reference,
                                       const std::vector<Row>& rows, std::size_t step, Importances importances) {
  const kernels::GgmlCodec& c = kernels::ggml_codec(t);
  for (std::size_t r = 0; r < rows.size(); r += step) {
    const auto& x = rows[r].x;
    const auto n = static_cast<int64_t>(x.size());
    for (const auto& qv : importances(n)) {
      const float* qw = qv.empty() ? nullptr : qv.data();
      std::vector<std::byte> want(c.row_bytes(n)), got(want.size() + 1);
      reference(x.data(), n, want.data(), qw);
      c.quantize_row(x.data(), n, got.data() + 1, qw);
      ASSERT_EQ(0, std::memcmp(want.data(), got.data() + 1, want.size())) << c.name << " " << rows[r].name;
    }
  }
}

// A [rows, cols] tensor through compress::ggml::quantize at one and two threads: each row's bytes
// are the reference's for that row. Leaves strata's thread count as it found it.
template <class Importances>
void expect_tensor_rows_equal_reference(kernels::GgmlType t, kernels::QuantizeRowFn reference,
                                        const std::vector<float>& x, int64_t rows, int64_t cols,
                                        Importances importances) {
  const int threads_before = num_threads();
  const uint64_t row_bytes = kernels::ggml_codec(t).row_bytes(cols);
  for (const auto& qv : importances(cols)) {
    std::vector<std::byte> want(row_bytes * static_cast<uint64_t>(rows));
    for (int64_t r = 0; r < rows; ++r)
      reference(x.data() + r * cols, cols, want.data() + r * row_bytes, qv.empty() ? nullptr : qv.data());
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      const auto got = compress::ggml::quantize(t, x.data(), rows, cols, qv);
      ASSERT_EQ(want.size(), got.size());
      for (int64_t r = 0; r < rows; ++r)
        ASSERT_EQ(0, std::memcmp(want.data() + r * row_bytes, got.data() + r * row_bytes, row_bytes))
            << kernels::lower_name(t) << " row " << r << ", " << threads << " threads"
            << (qv.empty() ? "" : ", importance");
    }
  }
  set_num_threads(threads_before);
}

}  // namespace strata::quantize_check
