#include "strata/io/data_paths.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "test_util.hpp"

namespace strata::io {
namespace {

namespace fs = std::filesystem;

// Sets (or, given nullopt, unsets) an environment variable for one scope and puts back what was
// there, so that these tests leave the others' data lookups as they found them.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value->c_str(), 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(DataPaths, WithoutTheEnvironmentDirectoriesAreFoundUnderTheRoot) {
  const ScopedEnv models("STRATA_MODELS_DIR", std::nullopt), shared("STRATA_SHARED_DATA", std::nullopt);
  const DataPaths p = DataPaths::resolve("/src/strata");
  EXPECT_EQ(p.models, fs::path("/src/strata/models"));
  EXPECT_EQ(p.shared, fs::path("/src/shared/data"));
  EXPECT_EQ(p.smollm2(), fs::path("/src/strata/models/smollm2-135m-instruct-q4_1.gguf"));
  EXPECT_EQ(p.moby_dick(), fs::path("/src/shared/data/corpora/moby_dick.txt"));
  EXPECT_EQ(p.sotu(), fs::path("/src/shared/data/corpora/sotu_1790-2021.txt"));
  EXPECT_EQ(p.stories260k(), fs::path("/src/shared/data/models/stories260K/stories260K.bin"));
}

TEST(DataPaths, AnEmptyRootIsTheWorkingDirectory) {
  const ScopedEnv models("STRATA_MODELS_DIR", std::nullopt), shared("STRATA_SHARED_DATA", std::nullopt);
  const DataPaths p = DataPaths::resolve();
  EXPECT_EQ(p.models, fs::path("models"));
  EXPECT_EQ(p.shared, fs::path("../shared/data"));
}

TEST(DataPaths, TheEnvironmentWinsOverTheRoot) {
  const ScopedEnv models("STRATA_MODELS_DIR", "/data/models"), shared("STRATA_SHARED_DATA", "/data/shared");
  for (const fs::path& root : {fs::path(), fs::path("/src/strata")}) {
    const DataPaths p = DataPaths::resolve(root);
    EXPECT_EQ(p.models, fs::path("/data/models"));
    EXPECT_EQ(p.shared, fs::path("/data/shared"));
    EXPECT_EQ(p.model("all-minilm-l6-v2"), fs::path("/data/models/all-minilm-l6-v2"));
    EXPECT_EQ(p.corpus("moby_dick.txt"), fs::path("/data/shared/corpora/moby_dick.txt"));
  }
}

TEST(DataPaths, EachVariableStandsAlone) {
  {
    const ScopedEnv models("STRATA_MODELS_DIR", "/data/models"), shared("STRATA_SHARED_DATA", std::nullopt);
    const DataPaths p = DataPaths::resolve("/src/strata");
    EXPECT_EQ(p.models, fs::path("/data/models"));
    EXPECT_EQ(p.shared, fs::path("/src/shared/data"));
  }
  {
    const ScopedEnv models("STRATA_MODELS_DIR", std::nullopt), shared("STRATA_SHARED_DATA", "/data/shared");
    const DataPaths p = DataPaths::resolve("/src/strata");
    EXPECT_EQ(p.models, fs::path("/src/strata/models"));
    EXPECT_EQ(p.shared, fs::path("/data/shared"));
  }
}

// `STRATA_MODELS_DIR= ctest` clears a variable rather than naming the working directory.
TEST(DataPaths, AnEmptyVariableCountsAsUnset) {
  const ScopedEnv models("STRATA_MODELS_DIR", ""), shared("STRATA_SHARED_DATA", "");
  const DataPaths p = DataPaths::resolve("/src/strata");
  EXPECT_EQ(p.models, fs::path("/src/strata/models"));
  EXPECT_EQ(p.shared, fs::path("/src/shared/data"));
}

TEST(DataPaths, ScopedEnvPutsBackWhatWasThere) {
  const ScopedEnv outer("STRATA_MODELS_DIR", "/outer");
  { const ScopedEnv inner("STRATA_MODELS_DIR", std::nullopt); }
  ASSERT_NE(std::getenv("STRATA_MODELS_DIR"), nullptr);
  EXPECT_STREQ(std::getenv("STRATA_MODELS_DIR"), "/outer");
}

// The tests' own lookups go through DataPaths over the source tree.
TEST(DataPaths, TheTestsFindTheDataBesideTheSourceTree) {
  const ScopedEnv models("STRATA_MODELS_DIR", std::nullopt), shared("STRATA_SHARED_DATA", std::nullopt);
  const fs::path source(STRATA_SOURCE_DIR);
  EXPECT_EQ(testing::models_dir(), source / "models");
  EXPECT_EQ(testing::shared_data_dir(), source.parent_path() / "shared" / "data");
  const ScopedEnv elsewhere("STRATA_SHARED_DATA", "/data/shared");
  EXPECT_EQ(testing::shared_data_dir(), fs::path("/data/shared"));
}

}  // namespace
}  // namespace strata::io
