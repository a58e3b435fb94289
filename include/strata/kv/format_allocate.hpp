#pragma once
// Per-layer KV cache formats from strata's budget allocator: a budget in bits per cached element is
// spent where the measured cost of a cheaper format is lowest, for keys and values separately.
//
// Measurement (format_table): calibration windows are read with the float32 cache, the first
// `len - probe` tokens as a prompt; then, for every layer l, for keys and for values, and for every
// format f of the menu, a session continues from that prompt with only layer l's keys (or values)
// stored in f (every other layer and stream float32; with `rotate` the whole cache rotated) and
// reads the last `probe` tokens of the window in one batch, teacher-forced. The error of (l, K/V, f)
// is the mean KL(p_float || p_f) of the next-token distributions at those `probe` positions,
// averaged over the windows: the damage that layer's stream does alone, measured at the logits.
// The cost of an option is bits per element x elements per token (n_kv_heads x head_dim).
//
// The table has one row per layer and stream, "blk.L.cache_k" and "blk.L.cache_v" (method
// "kv.format", knob the format's name), so budget::solve picks one format per row under one global
// budget; allocate_formats turns the plan into a CacheFormat with `layers` filled.
//
// Bits per element are those of a long cache (format_bits): the stored rows with their scales, the
// KIVI float32 window and the per-token position left out.
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "strata/budget/allocator.hpp"
#include "strata/kv/cache.hpp"
#include "strata/nn/llama.hpp"

namespace strata::kv {

// Bits per stored element of keys (keys = true) or values in `f`, for rows of head_dim elements:
// f32 32, f16 16, q8_0 8.5 and q4_0 4.5 (ggml blocks of 32 with a binary16 scale); KIVI 2 or 4 bits
// of code plus its binary16 scale and minimum, for keys one pair per channel and kivi_group tokens
// (32 / G bits), for values one pair per min(kivi_group, head_dim) channels of a token. KIVI-4 at
// G = 32 is 5 bits, KIVI-2 3 bits.
double format_bits(KvFormat f, bool keys, int64_t kivi_group, int64_t head_dim);

// Mean bits per element of a whole cache stored in `format` (keys and values of every layer
// weighted alike, as every layer holds the same elements per token).
double format_bits(const CacheFormat& format, int64_t n_layers, int64_t head_dim);

struct FormatTableOptions {
  // The menu: every layer's keys and values may take any of these.
  std::vector<KvFormat> formats = {KvFormat::f16, KvFormat::q8_0, KvFormat::q4_0, KvFormat::kivi4, KvFormat::kivi2};
  // One global switch: every measurement, and the allocated format, rotated or not.
  bool rotate = false;
  uint64_t rotation_seed = 0;
  int64_t kivi_group = 32, kivi_residual = 32;
  // Tokens at the end of each window read over the stored cache and scored; the rest is the prompt.
  int64_t probe = 32;
};

// The measured table (see above). Each window holds at least probe + 1 tokens. progress(done,
// total) is called after each measured option. Throws strata::Error naming the field for an empty
// menu or window list, a format the model's head_dim cannot hold, or windows too short.
budget::Table format_table(const nn::LlamaModel& model, std::span<const std::vector<int32_t>> windows,
                           const FormatTableOptions& options,
                           const std::function<void(int64_t done, int64_t total)>& progress = {});

struct FormatAllocation {
  CacheFormat format;          // `layers` filled, the table's rotation and KIVI knobs
  budget::Plan plan;           // the solver's plan over the table's rows
  double bits_per_element = 0;  // what the format spends (<= the budget)
  double predicted_error = 0;  // summed table errors of the chosen options
};

// The smallest budget (bits per element) the table can meet: every row at its cheapest option.
double min_bits(const budget::Table& table);

// Spends `bits_per_element` over the table's rows with budget::solve and returns the CacheFormat
// (base's KIVI knobs and rotation, `layers` from the plan). The table's rows must be the
// 2 x n_layers rows format_table writes, in its order. A budget that is not a finite number, or is
// below min_bits(table), is refused with a strata::Error naming `option` (the field or command-line
// option it came from).
FormatAllocation allocate_formats(const budget::Table& table, double bits_per_element, const CacheFormat& base,
                                  std::string_view option = "bits_per_element",
                                  budget::Solver solver = budget::Solver::dp);

// The same refusal before any model work: a budget that is not finite, or is below the cheapest
// format of `menu` (its bits for a head_dim of at least kivi_group; allocate_formats checks the
// exact table later), names `option`.
void check_bits_budget(double bits_per_element, std::span<const KvFormat> menu, int64_t kivi_group,
                       std::string_view option);

}  // namespace strata::kv
