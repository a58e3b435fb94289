#pragma once
// Each family adds its compressors to the registry through one function, called from
// src/compress/registry.cc in a fixed order (so the registry's order is deterministic).
#include <memory>
#include <vector>

#include "strata/compress/compressor.hpp"

namespace strata::compress {

using Registry = std::vector<std::unique_ptr<WeightCompressor>>;

void add_lowrank_compressors(Registry& registry);  // src/compress/lowrank/
void add_prune_compressors(Registry& registry);    // src/compress/prune/
void add_quant_compressors(Registry& registry);    // src/compress/quant/ (RTN, GPTQ, AWQ)
void add_ggml_compressors(Registry& registry);     // src/compress/ggml/ (llama.cpp block formats)

}  // namespace strata::compress
