// libFuzzer target for the llama2.c checkpoint reader: the header arithmetic (overflow, divisibility,
// the exact-size rule) and the tensor layout. Whatever the parser accepts must lay its tensors out
// back to back from byte 28 (with the RoPE tables' gap before a separate classifier), inside the
// input, with shapes that agree with the configuration.
#include <cstddef>
#include <cstdint>
#include <span>

#include "strata/core/error.hpp"
#include "strata/io/llama2c.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  try {
    const io::Llama2cLayout layout = io::parse_llama2c(input, "fuzz.bin");
    const auto& c = layout.config;
    uint64_t end = 28;
    for (const auto& t : layout.tensors) {
      // The separate classifier follows the skipped legacy RoPE tables.
      if (t.name == "output.weight") end += 2 * static_cast<uint64_t>(c.context_length * (c.head_dim / 2)) * 4;
      if (t.offset != end || t.nbytes != static_cast<uint64_t>(t.numel()) * 4 || t.nbytes > size - end)
        __builtin_trap();
      end += t.nbytes;
    }
    if (static_cast<int64_t>(layout.tensors.size()) != 2 + 9 * c.n_layers + (c.tied_embeddings ? 0 : 1))
      __builtin_trap();
    if (c.head_dim * c.n_heads != c.dim) __builtin_trap();
  } catch (const Error&) {
    // Malformed input, reported as it should be.
  }
  return 0;
}
