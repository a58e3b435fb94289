// libFuzzer target for the safetensors reader, its dtype converters and the header writer.
//
// Every input is parsed from memory, as a mapped file would be. Whatever the parser accepts must
// describe data that tiles the rest of the input exactly; every small tensor is converted to float32;
// and the header is written back (in the same order, with the same metadata), which must parse again
// to the same tensors. The only acceptable failure is strata::Error; a crash, a sanitizer report,
// another exception or a broken invariant is a finding.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/safetensors.hpp"

namespace {

// Conversion is linear in the element count; larger tensors add time, not coverage.
constexpr int64_t kMaxConvertElements = int64_t{1} << 16;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  io::SafetensorsHeader h;
  try {
    h = io::parse_safetensors(input, "fuzz.safetensors");
  } catch (const Error&) {
    return 0;  // malformed input, reported as it should be
  }

  uint64_t end = 8 + h.header_size;
  std::vector<io::SafetensorsEntry> entries;
  std::vector<float> out;
  for (const auto& t : h.tensors) {
    check(t.offset == end && t.nbytes <= size - end);
    end += t.nbytes;
    const auto bytes = input.subspan(t.offset, t.nbytes);
    entries.push_back({t.name, t.type, t.shape, bytes});
    if (t.numel() > kMaxConvertElements) continue;
    out.resize(static_cast<std::size_t>(t.numel()));
    try {
      io::safetensors_convert_to_f32(t.type, bytes.data(), out.data(), static_cast<uint64_t>(t.numel()), t.name);
    } catch (const Error&) {
      // Types strata stores but does not decode (F4, F6_*, C64).
    }
  }
  check(end == size);

  // A header the reader accepted is one the writer can reproduce, and the result reads back the same.
  const std::string header = io::safetensors_header_bytes(entries, h.has_metadata ? &h.metadata : nullptr,
                                                          io::TensorOrder::as_given);
  std::vector<std::byte> rewritten(header.size());
  std::memcpy(rewritten.data(), header.data(), header.size());
  for (const auto& e : entries) rewritten.insert(rewritten.end(), e.data.begin(), e.data.end());
  const io::SafetensorsHeader again = io::parse_safetensors(rewritten, "rewritten.safetensors");
  check(again.metadata == h.metadata && again.has_metadata == h.has_metadata);
  check(again.tensors.size() == h.tensors.size());
  for (std::size_t i = 0; i < h.tensors.size(); ++i) {
    const auto& a = h.tensors[i];
    const auto& b = again.tensors[i];
    check(a.name == b.name && a.type == b.type && a.shape == b.shape && a.nbytes == b.nbytes);
  }
  return 0;
}
