// The pipeline in bounded memory on a model larger than the memory it is given.
//   stream_check write OUT.gguf DIM HIDDEN LAYERS   a synthetic Llama GGUF with F32 weights
//   stream_check compress IN.gguf OUT.gguf          calibrate -> measure -> plan -> write, block by block
// tests/cli/larger_than_memory.sh runs the second under a data-size limit a fraction of the file.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "strata/strata.hpp"

namespace {

using strata::kernels::GgmlType;

int write_model(const std::string& out, int64_t dim, int64_t hidden, int64_t layers) {
  constexpr int64_t kVocab = 256, kHeads = 8;
  strata::io::GgufWriter w;
  w.set("general.architecture", std::string("llama"));
  w.set("general.name", std::string("synthetic"));
  w.set("llama.block_count", static_cast<uint32_t>(layers));
  w.set("llama.context_length", uint32_t{512});
  w.set("llama.embedding_length", static_cast<uint32_t>(dim));
  w.set("llama.feed_forward_length", static_cast<uint32_t>(hidden));
  w.set("llama.attention.head_count", static_cast<uint32_t>(kHeads));
  w.set("llama.attention.head_count_kv", static_cast<uint32_t>(kHeads));
  w.set("llama.rope.freq_base", 10000.0f);
  w.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  // One buffer per shape, shared by every tensor of that shape: the file is large, the writer's
  // memory is not. Values ~ N(0, 1/in) keep activations in range through many blocks.
  std::mt19937_64 rng(7);
  auto buffer = [&](int64_t rows, int64_t cols, float scale) {
    std::normal_distribution<float> g(0.0f, scale);
    std::vector<std::byte> b(static_cast<size_t>(rows * cols) * sizeof(float));
    auto* f = reinterpret_cast<float*>(b.data());
    for (int64_t i = 0; i < rows * cols; ++i) f[i] = g(rng);
    return b;
  };
  const auto square = buffer(dim, dim, 1.0f / std::sqrt(static_cast<float>(dim)));
  const auto up = buffer(hidden, dim, 1.0f / std::sqrt(static_cast<float>(dim)));
  const auto down = buffer(dim, hidden, 0.5f / std::sqrt(static_cast<float>(hidden)));
  const auto embd = buffer(kVocab, dim, 1.0f);
  std::vector<std::byte> ones(static_cast<size_t>(dim) * sizeof(float));
  for (int64_t i = 0; i < dim; ++i) reinterpret_cast<float*>(ones.data())[i] = 1.0f;
  w.add_tensor_view("token_embd.weight", GgmlType::F32, {dim, kVocab}, embd);
  w.add_tensor_view("output_norm.weight", GgmlType::F32, {dim}, ones);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    w.add_tensor_view(p + "attn_norm.weight", GgmlType::F32, {dim}, ones);
    w.add_tensor_view(p + "ffn_norm.weight", GgmlType::F32, {dim}, ones);
    for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output"})
      w.add_tensor_view(p + n + ".weight", GgmlType::F32, {dim, dim}, square);
    w.add_tensor_view(p + "ffn_gate.weight", GgmlType::F32, {dim, hidden}, up);
    w.add_tensor_view(p + "ffn_up.weight", GgmlType::F32, {dim, hidden}, up);
    w.add_tensor_view(p + "ffn_down.weight", GgmlType::F32, {hidden, dim}, down);
  }
  w.write(out);
  return 0;
}

// A /proc/self/status field in MiB ("?" where there is none).
std::string status_mib(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return "?";
  char line[256];
  std::string out = "?";
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::strncmp(line, field, std::strlen(field)) == 0) out = std::to_string(std::atoll(line + std::strlen(field)) / 1024);
  std::fclose(f);
  return out;
}

int compress_model(const std::string& in, const std::string& out) {
  namespace pl = strata::pipeline;
  const pl::Model model = pl::Model::load(in, /*need_tokenizer=*/false);
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(model.dense->config().vocab_size) - 1);
  std::vector<std::vector<int32_t>> windows(2, std::vector<int32_t>(48));
  for (auto& w : windows)
    for (auto& t : w) t = token(rng);
  const auto recipe = strata::budget::Recipe::from_json(nlohmann::json::parse(R"({
    "name": "stream", "rules": [{"match": "blk.*.weight", "methods": [
      {"compressor": "quant.ggml", "knobs": ["q4_0", "q8_0"]}]}],
    "bits_per_weight": 4.6, "solver": "greedy"})"), "stream recipe");
  const auto progress = [](std::string_view stage, int64_t done, int64_t total) {
    if (done == total || done % 4 == 0)
      std::fprintf(stderr, "%.*s %lld/%lld (data segment %s MiB, resident anonymous %s MiB)\n",
                   static_cast<int>(stage.size()), stage.data(), static_cast<long long>(done),
                   static_cast<long long>(total), status_mib("VmData:").c_str(), status_mib("RssAnon:").c_str());
  };
  const strata::budget::Table table = pl::measure_by_blocks(model, recipe, windows, {}, progress);
  const auto constraint = pl::resolve_budget(model, recipe, table, {});
  const auto planned = strata::budget::solve(table.pareto(constraint.metric), constraint, strata::budget::Solver::greedy);
  pl::StreamOptions sequential;
  sequential.sequential = true;
  const auto layers = pl::compressed_layers_by_blocks(model, planned, windows, sequential, progress);
  const pl::Written w = pl::write(model, layers, out, planned);
  std::printf("%zu tensors, plan %.3f bits per weight, wrote %llu bytes; peak resident %.1f MiB\n", table.layers.size(),
              planned.bits_per_weight(table.params()), static_cast<unsigned long long>(w.file_bytes),
              static_cast<double>(pl::peak_resident_bytes()) / (1 << 20));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "write" && argc == 6) return write_model(argv[2], std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5]));
    if (mode == "compress" && argc == 4) return compress_model(argv[2], argv[3]);
    std::fprintf(stderr, "usage: %s write OUT.gguf DIM HIDDEN LAYERS | compress IN.gguf OUT.gguf\n", argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
