#pragma once
// Writing a compressed model to disk and loading it back into the reference engine.
//
//   write_gguf                layers in llama.cpp's block formats (quant.ggml, quant.ggml_noimatrix)
//                             replace their tensors in a copy of the source GGUF: a file llama.cpp
//                             loads and runs unchanged.
//   write_strata_safetensors  any compressed form (low-rank factors, sparse values and masks, GPTQ /
//                             AWQ groups, ggml blocks), each layer's tensors stored as they are, with
//                             what is needed to rebuild the layer and the model in __metadata__.
//   load_llama                either file (or a plain GGUF) as an nn::LlamaModel.
//
// The safetensors layout is specified in docs/formats.md ("Compressed model files").
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/compress/compressor.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/llama.hpp"

namespace strata::compress {

using LayerMap = std::map<std::string, Compressed, std::less<>>;  // by tensor name

// The version written to "strata.format" and the only one load_llama reads.
inline constexpr std::string_view kStrataFormatVersion = "1";

// llama.cpp's GGML_QNT_VERSION, written to general.quantization_version.
inline constexpr uint32_t kGgmlQuantizationVersion = 2;

// llama.cpp's llama_ftype for a file whose weights are mostly of type `t`: F32 0, F16 1, Q4_0 2,
// Q4_1 3, Q8_0 7, Q5_0 8, Q5_1 9, Q2_K 10, Q3_K 12 (Q3_K_M), Q4_K 15 (Q4_K_M), Q5_K 17 (Q5_K_M),
// Q6_K 18, IQ2_XXS 19, IQ2_XS 20, IQ3_XXS 23, IQ1_S 24, IQ4_NL 25, IQ3_S 26, IQ2_S 28, IQ4_XS 30,
// IQ1_M 31, BF16 32, TQ1_0 36, TQ2_0 37; any other type 0, as in llama.cpp's own guess.
int llama_file_type(kernels::GgmlType t);

struct GgufWriteInfo {
  uint64_t file_bytes = 0, tensor_bytes = 0, overhead_bytes = 0;
  int file_type = 0;
};

// `source` with the tensors in `layers` replaced by their ggml blocks (other tensors copied byte for
// byte, every metadata key kept in order), general.file_type set to llama_file_type() of the type
// that holds the most weights (elements) over all tensors and general.quantization_version = 2, both
// u32, replaced in place when the source has them; `extra` string keys appended (or replaced in
// place when the source has the key). Throws strata::Error naming the tensor when a layer is not a
// ggml form (quant.ggml*), is not a tensor of `source` or its shape disagrees, and naming the key
// when `extra` repeats a key or names one of the two keys set here. Written atomically: on any
// failure nothing is left at `out` (an existing file there is left as it was).
GgufWriteInfo write_gguf(const io::GgufFile& source, const LayerMap& layers, const std::filesystem::path& out,
                         const std::vector<std::pair<std::string, std::string>>& extra = {});

// Bytes write_gguf would add beyond the tensor data (header, metadata, tensor infos, alignment
// padding), so callers can predict the file size exactly: file_bytes == tensor bytes + this. Makes
// the same checks as write_gguf.
uint64_t gguf_overhead_bytes(const io::GgufFile& source, const LayerMap& layers,
                             const std::vector<std::pair<std::string, std::string>>& extra = {});

// Any compressed form: every tensor of `source` that is not in `layers` stored as it is in the
// source when safetensors can hold its type (F32, F16, BF16, ...) or, for GGUF block types, as raw
// U8 bytes with the ggml type and shape recorded in "strata.tensors"; each compressed layer's
// tensors as "<tensor>#<part>". __metadata__ holds "strata.format" (kStrataFormatVersion),
// "strata.config" (the source's io::ModelConfig), "strata.source_format", "strata.source_metadata"
// (the source's metadata() JSON, so the tokenizer and architecture survive), "strata.layers" (per
// layer: method, knob, rows, cols, meta and each part's dtype and shape), and the keys of `extra`
// (strings as they are, other JSON values dumped). Tensors keep the source's order. Throws
// strata::Error naming the tensor for a layer that is not a matrix of `source` of the same shape,
// and naming the key when `extra` is not an object or collides with a key written here. Atomic.
void write_strata_safetensors(const io::Model& source, const LayerMap& layers, const std::filesystem::path& out,
                              const nlohmann::json& extra = nlohmann::json::object());

// A model ready for the reference engine: a GGUF or llama2.c file run in its stored types
// (LlamaModel::load_stored: ggml blocks as blocks, no float32 copy; `layers` is empty), or a strata safetensors written above (`layers` holds the decoded compressed layers; each
// becomes its compressor's to_linear(); a compressed token_embd.weight is reconstructed for the
// embedding and, when the output head is tied to it, its to_linear() is the head). `file` is the file
// as io::open_model opens it: for a strata safetensors, metadata() and config() are the source's
// (see io::SafetensorsModel), so nn::BpeTokenizer::from_model(*file) works for both. Throws
// strata::Error naming the file and the tensor or field at fault.
struct LoadedModel {
  std::shared_ptr<const io::Model> file;
  nn::LlamaModel model;
  LayerMap layers;
};
LoadedModel load_llama(const std::filesystem::path& path);

// Whether `file` carries "strata.format" in its safetensors __metadata__.
bool is_strata_safetensors(const io::Model& file);

}  // namespace strata::compress
