#pragma once
// Where the benchmarks find real data when run from the repository root: models/ and ../shared/data,
// or the directories STRATA_MODELS_DIR and STRATA_SHARED_DATA name.
#include <cstdlib>
#include <filesystem>

namespace strata::bench {

inline std::filesystem::path env_path(const char* var, const char* fallback, const char* rel) {
  if (const char* v = std::getenv(var)) return std::filesystem::path(v) / rel;
  return std::filesystem::path(fallback) / rel;
}

inline std::filesystem::path default_smollm2() {
  return env_path("STRATA_MODELS_DIR", "models", "smollm2-135m-instruct-q4_1.gguf");
}

}  // namespace strata::bench
