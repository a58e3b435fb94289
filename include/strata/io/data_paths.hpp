#pragma once
// Where strata looks for the real models and data it evaluates on, in one place for the command-line
// tool, the examples, the benchmarks and the tests. Environment variables win: STRATA_MODELS_DIR
// (downloaded models, e.g. by scripts/fetch-models.sh) and STRATA_SHARED_DATA (corpora, stories260K,
// golden vectors). Without them the directories are found under a root: the working directory for
// the tool, the source tree for programs built with it (they pass STRATA_SOURCE_DIR).
#include <filesystem>
#include <string_view>

namespace strata::io {

struct DataPaths {
  std::filesystem::path models;  // ROOT/models
  std::filesystem::path shared;  // ROOT/../shared/data

  // The environment's directories, else those under `root` (empty: the working directory).
  static DataPaths resolve(const std::filesystem::path& root = {});

  std::filesystem::path model(std::string_view file) const { return models / file; }
  std::filesystem::path corpus(std::string_view file) const { return shared / "corpora" / file; }
  std::filesystem::path data(std::string_view relative) const { return shared / relative; }

  // The model most of strata's evaluations use: SmolLM2-135M-Instruct as its package ships it.
  std::filesystem::path smollm2() const { return model("smollm2-135m-instruct-q4_1.gguf"); }
  std::filesystem::path stories260k() const { return data("models/stories260K/stories260K.bin"); }
  std::filesystem::path moby_dick() const { return corpus("moby_dick.txt"); }
  std::filesystem::path sotu() const { return corpus("sotu_1790-2021.txt"); }
};

}  // namespace strata::io
