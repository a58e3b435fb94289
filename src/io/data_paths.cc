#include "strata/io/data_paths.hpp"

#include <cstdlib>

namespace strata::io {

namespace {

std::filesystem::path from_env(const char* var) {
  const char* v = std::getenv(var);
  return (v != nullptr && *v != '\0') ? std::filesystem::path(v) : std::filesystem::path();
}

}  // namespace

DataPaths DataPaths::resolve(const std::filesystem::path& root) {
  DataPaths p;
  p.models = from_env("STRATA_MODELS_DIR");
  p.shared = from_env("STRATA_SHARED_DATA");
  if (p.models.empty()) p.models = root.empty() ? std::filesystem::path("models") : root / "models";
  if (p.shared.empty())
    p.shared = root.empty() ? std::filesystem::path("../shared/data") : (root / "../shared/data").lexically_normal();
  return p;
}

}  // namespace strata::io
