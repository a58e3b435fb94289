// llama-quantize's per-tensor type rules for dense Llama models (see llama_mix.hpp for the list).
#include "strata/compress/ggml/llama_mix.hpp"

#include <algorithm>
#include <array>

#include "strata/core/error.hpp"

namespace strata::compress::ggml {

namespace {

using T = kernels::GgmlType;

constexpr std::array<LlamaFileType, 15> kFileTypes = {{
    {"Q4_0", 2, T::Q4_0},     {"Q4_1", 3, T::Q4_1},     {"Q8_0", 7, T::Q8_0},     {"Q5_0", 8, T::Q5_0},
    {"Q5_1", 9, T::Q5_1},     {"Q2_K", 10, T::Q2_K},    {"Q3_K_S", 11, T::Q3_K},  {"Q3_K_M", 12, T::Q3_K},
    {"Q3_K_L", 13, T::Q3_K},  {"Q4_K_S", 14, T::Q4_K},  {"Q4_K_M", 15, T::Q4_K},  {"Q5_K_S", 16, T::Q5_K},
    {"Q5_K_M", 17, T::Q5_K},  {"Q6_K", 18, T::Q6_K},    {"IQ4_NL", 25, T::IQ4_NL},
}};

enum class Role { token_embd, output, attn_v, attn_output, ffn_down, other };

Role role_of(std::string_view name) {
  if (name == "output.weight") return Role::output;
  if (name == "token_embd.weight") return Role::token_embd;
  if (name.find("attn_v.weight") != std::string_view::npos) return Role::attn_v;
  if (name.find("attn_output.weight") != std::string_view::npos) return Role::attn_output;
  if (name.find("ffn_down") != std::string_view::npos) return Role::ffn_down;
  return Role::other;
}

// "blk.N." -> N; -1 for tensors outside the blocks.
int64_t layer_of(std::string_view name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  int64_t n = 0;
  size_t i = 4;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) n = n * 10 + (name[i] - '0');
  return i > 4 && i < name.size() && name[i] == '.' ? n : -1;
}

// The first and last eighth of the layers, and every third layer between them.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// llama.cpp's fallback for rows that are not whole blocks of `t` (tensor_type_fallback).
T fit_rows(T t, int64_t cols) {
  if (cols % kernels::ggml_block_size(t) == 0) return t;
  T f = t;
  switch (t) {
    case T::Q2_K:
    case T::Q3_K: f = T::Q4_0; break;
    case T::Q4_K: f = T::Q5_0; break;
    case T::Q5_K: f = T::Q5_1; break;
    case T::Q6_K: f = T::Q8_0; break;
    case T::IQ4_XS: f = T::IQ4_NL; break;
    default: break;  // a 32-element type: nothing smaller to fall back to
  }
  return cols % kernels::ggml_block_size(f) == 0 ? f : T::F16;
}

bool named(const LlamaFileType& ft, std::string_view a) { return ft.name == a; }
bool any_of(const LlamaFileType& ft, std::initializer_list<std::string_view> names) {
  return std::any_of(names.begin(), names.end(), [&](std::string_view n) { return named(ft, n); });
}

}  // namespace

std::span<const LlamaFileType> llama_file_types() { return kFileTypes; }

std::optional<LlamaFileType> find_llama_file_type(std::string_view name) {
  require(name != "IQ4_XS", "llama.cpp file type IQ4_XS: strata cannot write IQ4_XS blocks (its IQ4_NL is the ",
          "32-element form of the same grid)");
  for (const LlamaFileType& ft : kFileTypes)
    if (ft.name == name) return ft;
  return std::nullopt;
}

std::vector<std::optional<T>> llama_mix(const LlamaFileType& ft, const MixModel& model,
                                        std::span<const MixTensor> tensors) {
  require(model.n_layers > 0, "llama mix ", ft.name, ": the model has ", model.n_layers, " layers");
  require(model.n_head > 0 && model.n_head_kv > 0 && model.n_head % model.n_head_kv == 0, "llama mix ", ft.name,
          ": bad head counts ", model.n_head, " / ", model.n_head_kv);
  const int64_t n_gqa = model.n_head / model.n_head_kv;
  const int64_t n = model.n_layers;

  bool tied = true;
  int64_t n_attn_v = 0;
  std::vector<int64_t> layer(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string& name = tensors[i].name;
    require(tensors[i].cols > 0, "llama mix ", ft.name, ": tensor '", name, "' has ", tensors[i].cols, " columns");
    layer[i] = layer_of(name);
    require(layer[i] < n, "llama mix ", ft.name, ": tensor '", name, "' is in layer ", layer[i], " of a model with ", n,
            " layers");
    if (name == "output.weight") tied = false;
    if (role_of(name) == Role::attn_v) ++n_attn_v;
  }

  std::vector<std::optional<T>> out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string& name = tensors[i].name;
    const int64_t cols = tensors[i].cols;
    const bool weight = name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
    if (!weight || name.find("_norm.weight") != std::string::npos) continue;
    const Role role = role_of(name);
    const int64_t il = layer[i];
    T t = ft.base;
    if (role == Role::output || (tied && role == Role::token_embd)) {
      if (cols % kernels::ggml_block_size(t) != 0)
        t = T::Q8_0;
      else if (t != T::Q8_0)
        t = T::Q6_K;
    } else if (role == Role::attn_v) {
      // llama.cpp counts attn_v tensors in layer order: the position is the rank among them.
      int64_t pos = 0;
      for (size_t j = 0; j < tensors.size(); ++j)
        if (role_of(tensors[j].name) == Role::attn_v && layer[j] < il) ++pos;
      if (named(ft, "Q2_K"))
        t = n_gqa >= 4 ? T::Q4_K : T::Q3_K;
      else if (named(ft, "Q3_K_M"))
        t = pos < 2 ? T::Q5_K : T::Q4_K;
      else if (named(ft, "Q3_K_L"))
        t = T::Q5_K;
      else if (named(ft, "IQ4_NL") && n_gqa >= 4)
        t = T::Q5_K;
      else if (any_of(ft, {"Q4_K_M", "Q5_K_M"}) && use_more_bits(pos, n_attn_v))
        t = T::Q6_K;
      else if (named(ft, "Q4_K_S") && pos < 4)
        t = T::Q5_K;
    } else if (role == Role::ffn_down) {
      require(il >= 0, "llama mix ", ft.name, ": ffn_down tensor '", name, "' is not in a blk.N. layer");
      if (named(ft, "Q2_K"))
        t = T::Q3_K;
      else if (named(ft, "Q3_K_M"))
        t = il < n / 16 ? T::Q5_K : T::Q4_K;
      else if (named(ft, "Q3_K_L"))
        t = T::Q5_K;
      else if (named(ft, "Q4_K_M")) {
        if (use_more_bits(il, n)) t = T::Q6_K;
      } else if (il < n / 8 && named(ft, "IQ4_NL") && !model.has_imatrix)
        t = T::Q5_K;
      else if (named(ft, "Q5_K_M") && use_more_bits(il, n))
        t = T::Q6_K;
      else if (named(ft, "Q4_K_S") && il < n / 8)
        t = T::Q5_K;
      else if (any_of(ft, {"Q4_0", "Q5_0"}) && model.has_imatrix && il < n / 8)
        t = named(ft, "Q4_0") ? T::Q4_1 : T::Q5_1;
    } else if (role == Role::attn_output) {
      if (named(ft, "Q2_K"))
        t = T::Q3_K;
      else if (named(ft, "Q3_K_M"))
        t = T::Q4_K;
      else if (named(ft, "Q3_K_L"))
        t = T::Q5_K;
    }
    out[i] = fit_rows(t, cols);
  }
  return out;
}

}  // namespace strata::compress::ggml
