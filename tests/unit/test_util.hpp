#pragma once
// Helpers shared by strata's tests: where the real data and models are, and skipping without them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/io/data_paths.hpp"

namespace strata::testing {

// ../shared/data (corpora, stories260K, golden vectors), or STRATA_SHARED_DATA.
inline std::filesystem::path shared_data_dir() { return io::DataPaths::resolve(STRATA_SOURCE_DIR).shared; }

// Models fetched by scripts/fetch-models.sh, or STRATA_MODELS_DIR.
inline std::filesystem::path models_dir() { return io::DataPaths::resolve(STRATA_SOURCE_DIR).models; }

// Small files committed with the tests.
inline std::filesystem::path test_data_dir() { return STRATA_TEST_DATA_DIR; }

// n standard normal floats.
inline std::vector<float> gaussian_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// A weight matrix with heavy tails (Student t, 4 degrees of freedom), like a real layer's.
inline RowMatrix<float> heavy_tailed(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> t(4.0f);
  RowMatrix<float> w(rows, cols);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = 0.02f * t(rng);
  return w;
}

// H = X^T X / N for inputs with correlated channels and a few loud ones, like a real layer's.
inline Matrix<double> correlated_hessian(int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> gauss(0.0, 1.0);
  const int64_t tokens = 4 * cols, latent = std::max<int64_t>(4, cols / 8);
  Matrix<double> mix(latent, cols), z(tokens, latent);
  for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = gauss(rng);
  for (int64_t i = 0; i < z.size(); ++i) z.data()[i] = gauss(rng);
  Matrix<double> x = z * mix;
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] += 0.3 * gauss(rng);
  for (int64_t j = 3; j < cols; j += 41) x.col(j) *= 10.0;
  Matrix<double> h = x.transpose() * x / static_cast<double>(tokens);
  return (h + h.transpose()) / 2;
}

}  // namespace strata::testing

// Skips the current test with a message naming the missing file and how to get it.
#define STRATA_REQUIRE_FILE(path, how_to_get)                                                     \
  do {                                                                                            \
    if (!std::filesystem::exists(path))                                                           \
      GTEST_SKIP() << "missing " << (path).string() << " (" << (how_to_get) << ")";               \
  } while (0)
