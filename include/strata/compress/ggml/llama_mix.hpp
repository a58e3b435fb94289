#pragma once
// llama-quantize's file types ("Q3_K_M", "Q4_K_S", ...) as per-tensor type tables: the type
// llama.cpp's quantizer gives each tensor of a Llama-architecture model for one file type, so that
// strata can use llama.cpp's mixes as budgets and baselines and write what llama-quantize would.
//
// The rules are llama.cpp's llama_tensor_get_type (src/llama-quant.cpp, as vendored by
// llama-cpp-python 0.3.36), for a dense (no experts) Llama model:
//  - the output head, and a tied token embedding (a model without output.weight), get Q6_K, or Q8_0
//    when the file type is Q8_0 or the head's rows are not whole 256-element super-blocks;
//    an untied token embedding keeps the file type's base type;
//  - attn_v: Q2_K -> Q3_K (Q4_K when n_head / n_head_kv >= 4); Q3_K_M -> Q5_K for the first two
//    layers, Q4_K after; Q3_K_L -> Q5_K; Q4_K_M and Q5_K_M -> Q6_K on the layers use_more_bits picks
//    (the first and last eighth and every third layer between); Q4_K_S -> Q5_K on the first four;
//    IQ4_NL -> Q5_K when n_head / n_head_kv >= 4;
//  - ffn_down by layer position: Q2_K -> Q3_K; Q3_K_M -> Q5_K on the first sixteenth, Q4_K after;
//    Q3_K_L -> Q5_K; Q4_K_M, Q5_K_M -> Q6_K where use_more_bits; Q4_K_S -> Q5_K on the first eighth;
//    IQ4_NL without an imatrix -> Q5_K on the first eighth; Q4_0 / Q5_0 with an imatrix -> Q4_1 /
//    Q5_1 on the first eighth;
//  - attn_output: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K;
//  - then, for rows that are not whole blocks of the chosen type, llama.cpp's fallback: Q2_K, Q3_K ->
//    Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; IQ4_XS -> IQ4_NL; F16 when even that does not fit.
// Not reproduced: the Falcon, mixture-of-experts and Llama-70B special cases, the IQ1/IQ2/IQ3 file
// types, and user overrides (--tensor-type, --output-tensor-type, --pure). IQ4_XS is refused: strata
// cannot write its blocks.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/kernels/ggml_codec.hpp"

namespace strata::compress::ggml {

// One llama.cpp file type (llama_ftype): its name as llama-quantize spells it, its number (stored
// as general.file_type) and the base type its tensors get unless a rule says otherwise.
struct LlamaFileType {
  std::string_view name;  // "Q3_K_M"
  int ftype;              // LLAMA_FTYPE_MOSTLY_Q3_K_M = 12
  kernels::GgmlType base;
};

// Every file type strata reproduces (Q4_0 ... Q8_0, Q2_K ... Q6_K with their _S/_M/_L mixes, IQ4_NL).
std::span<const LlamaFileType> llama_file_types();
// The file type named exactly as llama.cpp spells it ("Q3_K_M"; case matters: "q3_k" is a ggml type,
// not a file type); nullopt for any other name. Throws strata::Error for IQ4_XS, which strata cannot
// write, saying so.
std::optional<LlamaFileType> find_llama_file_type(std::string_view name);

// What the rules need to know about the model.
struct MixModel {
  int64_t n_layers = 0;
  int64_t n_head = 0, n_head_kv = 0;  // n_head / n_head_kv is llama.cpp's n_gqa
  bool has_imatrix = false;           // the quantizer is given an importance matrix
};

// A tensor of the model: its GGUF name and its row length (ggml's ne[0], the input features).
struct MixTensor {
  std::string name;
  int64_t cols = 0;
};

// The type llama-quantize gives each tensor for `file_type`, in the order of `tensors`. Tensors it
// does not quantize (norms, 1-D vectors: names not ending in "weight" or ending in "_norm.weight")
// are not expected here and get nullopt. The output head is "output.weight"; a list without it is a
// model whose head is tied to token_embd.weight. Layer positions come from "blk.N." (0 <= N <
// n_layers); a tensor with another layer number is refused naming it.
std::vector<std::optional<kernels::GgmlType>> llama_mix(const LlamaFileType& file_type, const MixModel& model,
                                                        std::span<const MixTensor> tensors);

}  // namespace strata::compress::ggml
