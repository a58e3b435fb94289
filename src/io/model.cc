// The format-independent parts of io::Model, and opening a model file by its content.
#include "strata/io/model.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <map>

#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/llama2c.hpp"
#include "strata/io/safetensors.hpp"

namespace strata::io {

std::string_view format_name(FileFormat f) {
  switch (f) {
    case FileFormat::gguf: return "gguf";
    case FileFormat::safetensors: return "safetensors";
    case FileFormat::llama2c: return "llama2c";
  }
  return "unknown";
}

const TensorInfo* Model::find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorInfo& Model::tensor(std::string_view name) const {
  const TensorInfo* t = find(name);
  require(t != nullptr, path_.string(), ": no tensor named '", name, "'");
  return *t;
}

int block_index(std::string_view name) {
  // A block number is a whole dot-separated component right after one of these components, as in
  // "blk.3.attn_q.weight", "model.layers.3.mlp.up_proj.weight", "encoder.layer.3.output.dense.bias"
  // or "transformer.h.3.attn.c_attn.weight".
  static constexpr std::array<std::string_view, 4> kMarkers = {"blk.", "layers.", "layer.", "h."};
  for (std::size_t pos = 0; pos < name.size();) {
    for (const auto marker : kMarkers) {
      if (name.substr(pos, marker.size()) != marker) continue;
      std::size_t i = pos + marker.size();
      int64_t value = 0;
      std::size_t digits = 0;
      while (i < name.size() && name[i] >= '0' && name[i] <= '9' && digits < 9) {
        value = value * 10 + (name[i] - '0');
        ++i;
        ++digits;
      }
      if (digits > 0 && (i == name.size() || name[i] == '.')) return static_cast<int>(value);
    }
    const auto dot = name.find('.', pos);
    if (dot == std::string_view::npos) break;
    pos = dot + 1;
  }
  return -1;
}

std::vector<Block> Model::blocks() const {
  std::map<int, Block> by_index;
  for (const auto& t : tensors_) {
    const int b = block_index(t.name);
    auto& block = by_index[b];
    block.index = b;
    block.tensors.push_back(t.name);
  }
  std::vector<Block> out;
  out.reserve(by_index.size());
  for (auto& [index, block] : by_index) out.push_back(std::move(block));  // -1 sorts first
  return out;
}

uint64_t Model::total_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors_) n += t.nbytes;
  return n;
}

int64_t Model::total_params() const {
  int64_t n = 0;
  for (const auto& t : tensors_) n += t.numel();
  return n;
}

double Model::bits_per_weight() const {
  const int64_t params = total_params();
  return params > 0 ? 8.0 * static_cast<double>(total_bytes()) / static_cast<double>(params) : 0.0;
}

namespace {

// The first bytes of a file, without mapping it (open_model may be handed something large).
std::vector<unsigned char> read_prefix(const std::filesystem::path& path, std::size_t n) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), path.string(), ": cannot open");
  std::vector<unsigned char> buf(n);
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n));
  buf.resize(static_cast<std::size_t>(in.gcount()));
  return buf;
}

}  // namespace

std::unique_ptr<Model> open_model(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    // A Hugging Face model folder: the sharded index if there is one, else the single file.
    for (const char* name : {"model.safetensors.index.json", "model.safetensors"})
      if (std::filesystem::is_regular_file(path / name, ec)) return open_safetensors(path / name);
    fail(path.string(), ": a folder without model.safetensors or model.safetensors.index.json");
  }
  require(std::filesystem::exists(path, ec), path.string(), ": no such file");
  require(std::filesystem::is_regular_file(path, ec), path.string(), ": not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  require(!ec, path.string(), ": cannot read its size: ", ec.message());

  const auto head = read_prefix(path, 32);
  if (head.size() >= 4 && std::memcmp(head.data(), "GGUF", 4) == 0) return open_gguf(path);

  const std::string fname = path.filename().string();
  if (fname.ends_with(".json")) {
    const auto first = std::find_if(head.begin(), head.end(), [](unsigned char c) {
      return c != ' ' && c != '\n' && c != '\r' && c != '\t';
    });
    const bool looks_like_json = first != head.end() && *first == '{';
    require(looks_like_json, path.string(), ": a .json file that is not a JSON object");
    return open_safetensors(path);
  }

  if (head.size() >= 9) {
    uint64_t n = 0;
    std::memcpy(&n, head.data(), 8);
    // No llama2.c header can look like this: its first two int32 make a length of at least 2^32. A
    // length past the end of the file is left to the safetensors reader to report as truncation.
    if (n >= 2 && n <= kSafetensorsMaxHeader && head[8] == '{') return open_safetensors(path);
  }

  if (head.size() >= 28) {
    Llama2cHeader h;
    std::memcpy(&h.dim, head.data() + 0, 4);
    std::memcpy(&h.hidden_dim, head.data() + 4, 4);
    std::memcpy(&h.n_layers, head.data() + 8, 4);
    std::memcpy(&h.n_heads, head.data() + 12, 4);
    std::memcpy(&h.n_kv_heads, head.data() + 16, 4);
    std::memcpy(&h.vocab_size, head.data() + 20, 4);
    std::memcpy(&h.seq_len, head.data() + 24, 4);
    const Llama2cSize expected = llama2c_expected_size(h);
    if (expected.problem.empty()) {
      // A plausible header whose size is off is most likely a damaged checkpoint: say so.
      if (expected.bytes == size) return open_llama2c(path);
      fail(path.string(), ": looks like a llama2.c checkpoint (dim=", h.dim, ", n_layers=", h.n_layers,
           ", vocab_size=", h.vocab_size, ") but its header implies ", expected.bytes, " bytes and the file has ",
           size, size < expected.bytes ? " (truncated)" : "");
    }
  }
  fail(path.string(), ": not a GGUF, safetensors or llama2.c model file (", size, " bytes; no GGUF magic, no "
       "safetensors header, no plausible llama2.c header)");
}

}  // namespace strata::io
