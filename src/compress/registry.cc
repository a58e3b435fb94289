#include "strata/compress/registry.hpp"

#include <sstream>

#include "strata/compress/prune/prune.hpp"

namespace strata::compress {

const std::vector<std::unique_ptr<WeightCompressor>>& registry() {
  static const Registry all = [] {
    Registry r;
    add_lowrank_compressors(r);
    add_prune_compressors(r);
    // Structured pruning, per tensor: input channels (FFN neurons on ffn_down) and whole layers.
    r.push_back(prune::make_channel_compressor());
    r.push_back(prune::make_remove_compressor());
    add_quant_compressors(r);
    add_ggml_compressors(r);
    return r;
  }();
  return all;
}

const WeightCompressor& find_compressor(std::string_view name) {
  std::ostringstream known;
  for (const auto& c : registry()) {
    if (c->name() == name) return *c;
    known << ' ' << c->name();
  }
  fail("unknown compressor '", name, "'; known:", known.str());
}

}  // namespace strata::compress
