#pragma once
// Helpers shared by strata's tests: where the real data and models are, and skipping without them.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace strata::testing {

inline std::filesystem::path env_path(const char* var) {
  const char* v = std::getenv(var);
  return (v && *v) ? std::filesystem::path(v) : std::filesystem::path();
}

// ../shared/data (corpora, stories260K, golden vectors), or STRATA_SHARED_DATA.
inline std::filesystem::path shared_data_dir() {
  if (auto p = env_path("STRATA_SHARED_DATA"); !p.empty()) return p;
  return STRATA_DEFAULT_SHARED_DATA_DIR;
}

// Models fetched by scripts/fetch-models.sh, or STRATA_MODELS_DIR.
inline std::filesystem::path models_dir() {
  if (auto p = env_path("STRATA_MODELS_DIR"); !p.empty()) return p;
  return STRATA_DEFAULT_MODELS_DIR_PATH;
}

// Small files committed with the tests.
inline std::filesystem::path test_data_dir() { return STRATA_TEST_DATA_DIR; }

}  // namespace strata::testing

// Skips the current test with a message naming the missing file and how to get it.
#define STRATA_REQUIRE_FILE(path, how_to_get)                                                     \
  do {                                                                                            \
    if (!std::filesystem::exists(path))                                                           \
      GTEST_SKIP() << "missing " << (path).string() << " (" << (how_to_get) << ")";               \
  } while (0)
