#include "strata/core/dtype.hpp"

#include <limits>

#include "strata/core/error.hpp"

namespace strata {

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  int bits;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::f32, "f32", 32}, {DType::f64, "f64", 64}, {DType::f16, "f16", 16}, {DType::bf16, "bf16", 16},
    {DType::i8, "i8", 8},    {DType::i32, "i32", 32}, {DType::i4, "i4", 4},
};
const DTypeInfo& info(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d;
  fail("unknown dtype code ", static_cast<int>(t));
}
}  // namespace

std::string_view dtype_name(DType t) { return info(t).name; }
int dtype_bits(DType t) { return info(t).bits; }

DType dtype_from_name(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.type;
  fail("unknown dtype '", name, "' (expected f32, f64, f16, bf16, i8, i32 or i4)");
}

uint64_t dtype_bytes(DType t, uint64_t n) {
  const uint64_t bits = static_cast<uint64_t>(dtype_bits(t));
  require(n <= std::numeric_limits<uint64_t>::max() / bits, "dtype_bytes: ", n, " elements overflow");
  return (n * bits + 7) / 8;
}

}  // namespace strata
