// libFuzzer target for the GGUF reader, the ggml dequantizers and the writer.
//
// Every input is parsed from memory. Anything the parser accepts is then used the way a consumer
// would use it (metadata to JSON, every small tensor dequantized) and written back; the written
// bytes must parse again and write back identically. The only acceptable failure is strata::Error;
// anything else (a crash, a sanitizer report, another exception, a broken round trip) is a finding.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"
#include "strata/kernels/ggml_dequant.hpp"

namespace {

// Dequantizing is linear in the element count; larger tensors add time, not coverage.
constexpr int64_t kMaxDequantElements = int64_t{1} << 16;
// Rewriting pads to the alignment; past this the zero fill dominates the run time.
constexpr uint32_t kMaxRewriteAlignment = 4096;

void exercise(const strata::io::GgufFile& f) {
  using namespace strata;
  for (const auto& kv : f.metadata()) {
    (void)io::gguf_as_int(kv.value);
    (void)io::gguf_as_float(kv.value);
    (void)io::gguf_to_json(kv.value).dump();
  }
  std::vector<float> out;
  for (const auto& t : f.tensors()) {
    const auto bytes = f.data(t);
    (void)t.shape();
    const int64_t n = t.numel();
    if (!kernels::ggml_can_dequantize(t.type) || n > kMaxDequantElements) continue;
    out.resize(static_cast<std::size_t>(n));
    kernels::dequantize(t.type, bytes, out.data(), n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  try {
    const io::GgufFile f = io::GgufFile::parse(input, "fuzz.gguf");
    exercise(f);
    if (f.alignment() > kMaxRewriteAlignment) return 0;
    const std::vector<std::byte> once = io::GgufWriter::from(f).to_bytes();
    const io::GgufFile g = io::GgufFile::parse(once, "rewritten.gguf");
    if (g.metadata().size() != f.metadata().size() || g.tensors().size() != f.tensors().size())
      __builtin_trap();
    const std::vector<std::byte> twice = io::GgufWriter::from(g).to_bytes();
    if (twice != once) __builtin_trap();
  } catch (const Error&) {
    // Malformed input, reported as it should be.
  }
  return 0;
}
